"""Logic-level tests of market and venue-health feature extraction (fixed clock)."""

from __future__ import annotations

import math
import random

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.detection import extract_features
from riskguard.operators.detection.features import (
    FEATURE_SCALES,
    MARKET_FEATURES,
    OPTION_FEATURES,
    VENUE_FEATURES,
    FeatureConfig,
    FeatureLogic,
    route,
)
from riskguard.schemas import (
    Bar,
    BookDepth,
    DeadLetter,
    FeatureVector,
    FundingRate,
    IndexPrice,
    OptionQuote,
    Quote,
    Side,
    Trade,
    VenueStatus,
    decode,
    encode,
)

from riskguard.errors import ConfigError

NS = 1_000_000_000
EV = FeatureConfig(venues=("okx", "binance"), cadence="event")


def quote(i: int, ts: int, bid: float = 99.0, ask: float = 101.0) -> Quote:
    return Quote(id=f"q{i}", venue="okx", instrument="BTC-USDT", ts=ts, bid=bid,
                 bid_size=1.0, ask=ask, ask_size=1.0)


def test_quote_features_spread_depth_and_staleness() -> None:
    """Spread in bps, depth imbalance, and quote age measured by a later index tick."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    fv = logic.on_event(quote(1, 1 * NS))[0]
    assert isinstance(fv, FeatureVector)
    assert fv.values["spread_bps"] == pytest.approx(200.0)
    assert fv.values["quote_age_s"] == 0.0
    idx = IndexPrice(id="i1", venue="index", instrument="BTC-USDT", ts=4 * NS, price=98.0)
    fv2 = logic.on_event(idx)[0]
    assert fv2.values["quote_age_s"] == pytest.approx(3.0)
    assert fv2.values["index_dev_bps"] == pytest.approx((100.0 - 98.0) / 98.0 * 1e4)


def test_index_prices_fan_out_to_every_configured_venue() -> None:
    """route() sends an index price to each venue's key and a trade to its own key."""
    ip = IndexPrice(id="i", venue="index", instrument="BTC-USDT", ts=1, price=5.0)
    assert [k for k, _ in route(ip, EV)] == ["okx/BTC-USDT", "binance/BTC-USDT"]
    hb = VenueStatus(id="h", venue="okx", ts=1)
    assert route(hb, EV) == [("okx", hb)]


def test_trade_features_flow_imbalance_and_return() -> None:
    """Buys push the order-flow imbalance positive; a price rise gives a positive return."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    out = []
    for i in range(10):
        out += logic.on_event(Trade(id=f"t{i}", venue="okx", instrument="BTC-USDT",
                                    ts=i * NS // 2, price=100.0 + i, qty=1.0, side=Side.BUY))
    last = out[-1].values
    assert last["ofi"] == pytest.approx(1.0)
    assert last["ret_bps"] > 0
    assert last["trade_rate"] > 0


def test_bar_cadence_emits_one_vector_per_bar_on_event_time() -> None:
    """Three quotes in bar 0 and one in bar 2 yield one vector for bar 0 with its evidence."""
    logic = FeatureLogic(FeatureConfig(venues=("okx",)), ManualClock(10**19))
    outs = []
    for i, ts in enumerate([0, NS // 3, 2 * NS // 3, 2 * NS + 1]):
        outs += logic.on_event(quote(i, ts))
    assert len(outs) == 1
    assert outs[0].evidence_ids == ["q0", "q1", "q2"]
    assert outs[0].ts == 2 * NS // 3
    assert [v.evidence_ids for v in logic.on_eof()] == [["q3"]]


def test_late_event_beyond_allowed_lateness_is_dead_lettered() -> None:
    """An event older than watermark - allowed lateness goes to errs with reason late."""
    logic = FeatureLogic(EV, ManualClock(5))
    logic.clock = ManualClock(10**19)
    logic.on_event(quote(1, 10 * NS))
    ok = logic.on_event(quote(2, 9 * NS))
    assert isinstance(ok[0], FeatureVector)
    dl = logic.on_event(quote(3, 7 * NS))[0]
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path, dl.step) == ("late", "$.ts", "features")
    assert decode("x", dl.raw) == quote(3, 7 * NS)


def test_future_event_beyond_allowed_skew_is_dead_lettered() -> None:
    """An event more than allowed_skew ahead of the injected clock is rejected as future."""
    logic = FeatureLogic(EV, ManualClock(100 * NS))
    assert isinstance(logic.on_event(quote(1, 104 * NS))[0], FeatureVector)
    dl = logic.on_event(quote(2, 106 * NS))[0]
    assert isinstance(dl, DeadLetter)
    assert dl.reason == "future"
    assert dl.ts == 100 * NS


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_record_never_reaches_the_state(bad: float) -> None:
    """A quote with a NaN/Inf bid becomes a non_finite dead letter; state is unchanged."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    logic.on_event(quote(1, NS))
    before = encode(logic.on_event(quote(2, NS))[0])
    dl = logic.on_event(quote(3, NS, bid=bad))[0]
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path) == ("non_finite", "$.bid")
    after = logic.on_event(quote(2, NS))[0]
    assert encode(after) == before


def test_venue_heartbeat_gap_and_latency() -> None:
    """Venue-health features: heartbeat gap, sequence gap and exchange-to-receive latency."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    logic.on_event(VenueStatus(id="h1", venue="okx", ts=NS, recv_ts=NS + 4_000_000, seq=1))
    fv = logic.on_event(VenueStatus(id="h2", venue="okx", ts=4 * NS,
                                    recv_ts=4 * NS + 4_000_000, seq=4))[0]
    assert fv.key == "okx"
    assert fv.scope.kind.value == "venue"
    assert fv.values["hb_gap_s"] == pytest.approx(3.0)
    assert fv.values["seq_gap"] == 2.0
    assert fv.values["latency_ms"] == pytest.approx(4.0)


def test_bad_feature_config_names_the_key() -> None:
    """Config errors name the offending key path."""
    with pytest.raises(ConfigError, match=r"features.bar_ns: must be >= 1"):
        FeatureConfig(bar_ns=0).validate()


def test_each_key_class_emits_exactly_its_named_feature_set() -> None:
    """Market, option and venue vectors carry MARKET_FEATURES, OPTION_FEATURES and
    VENUE_FEATURES: the sets the guard builds detector models for at start-up."""
    from riskguard.operators.detection.features import (
        MARKET_FEATURES,
        OPTION_FEATURES,
        VENUE_FEATURES,
    )

    logic = FeatureLogic(EV, ManualClock(10**19))
    market = logic.on_event(quote(1, NS))[0]
    venue = FeatureLogic(EV, ManualClock(10**19)).on_event(
        VenueStatus(id="h1", venue="okx", ts=NS, seq=1))
    opt = FeatureLogic(EV, ManualClock(10**19)).on_event(OptionQuote(
        id="o1", venue="okx", instrument="BTC-27DEC26-70000-C", ts=NS, underlying="BTC",
        expiry=10**18, strike=70_000.0, option_type="call", bid=0.05, ask=0.06,
        mark_price=0.055, mark_iv=0.6, underlying_price=60_000.0, delta=0.4))
    assert set(market.values) == set(MARKET_FEATURES)
    assert [set(v.values) for v in venue] == [set(VENUE_FEATURES)]
    assert [set(v.values) for v in opt] == [set(OPTION_FEATURES)]


def bar(i: int, close: float, *, low: float | None = None, high: float | None = None,
        open_: float | None = None, minutes: int = 1, price_only: bool = True) -> Bar:
    ivl = minutes * 60 * NS
    o = close if open_ is None else open_
    return Bar(id=f"b{i}", venue="binance", instrument="BTCUSDT", ts=(i + 1) * ivl,
               start=i * ivl, interval_ns=ivl, open=o, close=close,
               low=min(o, close) if low is None else low,
               high=max(o, close) if high is None else high, price_only=price_only)


def test_a_bar_emits_its_vector_at_once_with_its_range_and_interval() -> None:
    """A bar is closed at its ts: its vector goes out on arrival (bar cadence), not when
    the next bar arrives, carrying the close, the bar's low and high and its interval."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    logic.on_event(bar(0, 100.0))
    out = logic.on_event(bar(1, 101.0, low=99.0, high=102.0))
    assert len(out) == 1
    fv = out[0]
    assert isinstance(fv, FeatureVector)
    assert (fv.ts, fv.price, fv.low, fv.high, fv.interval_ns) == (2 * 60 * NS, 101.0, 99.0,
                                                                   102.0, 60 * NS)
    assert fv.values["range_bps"] == pytest.approx(3 / 101.0 * 1e4)
    assert fv.values["ret_bps"] == pytest.approx(math.log(101.0 / 100.0) * 1e4)


def test_equal_bar_closes_are_not_a_frozen_price() -> None:
    """Two 1-minute bars closing at the same price, each with a range, are a live market:
    price_age_s restarts on every bar. Only a flat bar at the last price is frozen."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    logic.on_event(bar(0, 100.0))
    same = logic.on_event(bar(1, 100.0, low=99.5, high=100.5))[0]
    assert isinstance(same, FeatureVector)
    assert same.values["price_age_s"] == 0.0
    flat = logic.on_event(bar(2, 100.0))[0]
    assert isinstance(flat, FeatureVector)
    assert flat.values["price_age_s"] == 60.0


def test_a_bar_whose_low_and_high_do_not_hold_its_prices_is_a_dead_letter() -> None:
    """low <= open, close <= high is checked where bars are consumed."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    dead = logic.on_event(bar(0, 100.0, low=101.0, high=102.0))
    assert len(dead) == 1 and isinstance(dead[0], DeadLetter)
    assert (dead[0].reason, dead[0].path) == ("validation", "$.low")


def depth(i: int, bid: float, ask: float) -> BookDepth:
    return BookDepth(id=f"d{i}", venue="binance_um", instrument="BTCUSDT", ts=i * 30 * NS,
                     bands_pct=[1.0, 2.0], bid_depth=[bid, 2 * bid], ask_depth=[ask, 2 * ask],
                     mid=100.0 + i)


def test_book_depth_gives_band_depths_imbalance_and_how_long_each_side_is_frozen() -> None:
    """Each snapshot emits a vector at once; a side whose innermost band stays within
    0.1 % of its last value counts as frozen, the other side does not."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    vecs = [logic.on_event(depth(i, 17.654 if i % 2 else 17.652, 1000.0 + 50 * i))[0]
            for i in range(5)]
    last = vecs[-1]
    assert isinstance(last, FeatureVector)
    assert last.values["bid_stale_s"] == 120.0
    assert last.values["ask_stale_s"] == 0.0
    assert last.values["bid_depth_log"] == pytest.approx(math.log1p(17.652))
    assert last.values["depth_imb_band"] == pytest.approx((17.652 - 1200.0) / 1217.652)
    assert last.price == 104.0


def test_book_depth_with_mismatched_bands_is_a_dead_letter() -> None:
    """bands_pct, bid_depth and ask_depth must have one length."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    bad = BookDepth(id="d", venue="v", instrument="i", ts=NS, bands_pct=[1.0, 2.0],
                    bid_depth=[1.0], ask_depth=[1.0, 2.0])
    out = logic.on_event(bad)
    assert isinstance(out[0], DeadLetter) and out[0].path == "$.bands_pct"


def test_with_no_venues_configured_index_prices_go_to_the_venues_seen_in_the_data() -> None:
    """The default config routes an index price to each venue that has traded the
    instrument so far, so a first backtest runs without listing venues."""
    from riskguard.operators.detection.features import route_batch

    seen: dict[str, set[str]] = {}
    t = Trade(id="t", venue="kraken", instrument="BTC-USD", ts=1, price=1.0, qty=1.0,
              side=Side.BUY)
    ip = IndexPrice(id="i", venue="index", instrument="BTC-USD", ts=2, price=1.0)
    early = route_batch([ip], FeatureConfig(), seen=seen)
    keyed = route_batch([t, ip], FeatureConfig(), seen=seen)
    assert early == []
    assert [k for k, _ in keyed] == ["kraken/BTC-USD", "kraken/BTC-USD"]


def test_a_bar_after_a_gap_starts_the_price_path_at_its_own_open() -> None:
    """Bars more than two intervals apart: the close before the gap is no part of the
    next bar's range or return (a price from months ago would read as a crash). One
    missing bar is no gap: the return still runs from the previous close."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    for i in range(3):
        logic.on_event(bar(i, 100.0))
    fv = logic.on_event(bar(10, 151.0, open_=150.0, low=149.0, high=152.0))[0]
    assert isinstance(fv, FeatureVector)
    assert (fv.low, fv.high) == (149.0, 152.0)
    assert fv.values["ret_bps"] == pytest.approx(math.log(151.0 / 150.0) * 1e4)
    after_one_missing = logic.on_event(bar(12, 153.0, open_=152.0))[0]
    assert isinstance(after_one_missing, FeatureVector)
    assert after_one_missing.low == 151.0
    assert after_one_missing.values["ret_bps"] == pytest.approx(math.log(153.0 / 151.0) * 1e4)


def test_a_late_bar_is_no_gap_for_the_next_one() -> None:
    """A bar re-delivered late (within the allowed lateness) does not make the next
    contiguous bar look like one after a gap: its return still runs from the previous
    close."""
    logic = FeatureLogic(FeatureConfig(allowed_lateness_ns=600 * NS), ManualClock(10**19))
    for i in range(10):
        logic.on_event(bar(i, 100.0))
    logic.on_event(bar(6, 100.0))
    fv = logic.on_event(bar(10, 103.0, open_=102.0))[0]
    assert isinstance(fv, FeatureVector)
    assert fv.low == 100.0
    assert fv.values["ret_bps"] == pytest.approx(math.log(103.0 / 100.0) * 1e4)


def test_a_bar_of_no_stated_interval_is_never_a_gap() -> None:
    """``interval_ns`` 0 (a feed that does not say) gives no gap rule: the return runs
    from the previous close."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    first = bar(0, 100.0)
    logic.on_event(msgspec.structs.replace(first, interval_ns=0))
    later = msgspec.structs.replace(bar(5, 106.0, open_=105.0), interval_ns=0)
    fv = logic.on_event(later)[0]
    assert isinstance(fv, FeatureVector)
    assert fv.values["ret_bps"] == pytest.approx(math.log(106.0 / 100.0) * 1e4)


# -- valid fields whose features overflow ------------------------------------------

def test_a_quote_whose_bid_plus_ask_overflows_gives_a_finite_price() -> None:
    """bid = ask = 1e308: the mid is 1e308, not infinity, and the volatility it leaves
    behind stays a number (a later 10 % swing is no calm)."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    logic.on_event(quote(1, NS, 100.0, 101.0))
    fv = logic.on_event(quote(2, 2 * NS, 1e308, 1e308))[0]
    assert isinstance(fv, FeatureVector) and fv.price == 1e308
    assert isinstance(decode("features", encode(fv)), FeatureVector)
    vecs = [logic.on_event(quote(i, i * NS, 100.0 + i % 2 * 10, 101.0 + i % 2 * 10))[0]
            for i in range(3, 40)]
    assert math.isfinite(logic.s.rv_var)
    assert vecs[-1].values["rv_bps"] > 0.0


def test_quote_sizes_whose_sum_overflows_keep_their_depth_imbalance() -> None:
    """bid_size 1.5e308 against ask_size 0.5e308: an imbalance of 0.5, not 0."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    q = msgspec.structs.replace(quote(1, NS), bid_size=1.5e308, ask_size=0.5e308)
    assert logic.on_event(q)[0].values["depth_imb"] == 0.5


def test_a_funding_rate_that_overflows_in_bps_is_refused_not_read_as_zero() -> None:
    logic = FeatureLogic(EV, ManualClock(10**19))
    out = logic.on_event(FundingRate(id="f", venue="okx", instrument="BTC-PERP", ts=NS,
                                     rate=1e305))
    assert [(d.reason, d.path) for d in out] == [("non_finite", "$.rate")]
    out = logic.on_event(FundingRate(id="g", venue="okx", instrument="BTC-PERP", ts=NS,
                                     rate=1e-4, mark_price=2e300, index_price=1e-300))
    assert [(d.reason, d.path) for d in out] == [("non_finite", "$.index_price")]
    assert "basis_bps" in out[0].expected
    assert logic.s.kind == ""  # neither reached the state


def test_a_feature_that_cannot_be_computed_refuses_the_vector_naming_it() -> None:
    """An index price of 1e-306 against a price of 100: the deviation overflows; the
    vector is a dead letter, never a deviation of 0."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    logic.on_event(quote(1, NS))
    out = logic.on_event(IndexPrice(id="i", venue="index", instrument="BTC-USDT",
                                    ts=2 * NS, price=1e-306))
    assert [(d.reason, d.path) for d in out] == [("non_finite", "$.values.index_dev_bps")]
    assert isinstance(logic.on_event(IndexPrice(id="j", venue="index",
                                                instrument="BTC-USDT", ts=3 * NS,
                                                price=100.0))[0], FeatureVector)


def test_a_trade_too_large_to_square_is_refused_and_volume_z_keeps_working() -> None:
    """qty = 1e200 would make the volume variance infinite, and volume_z 0 for good."""
    logic = FeatureLogic(EV, ManualClock(10**19))

    def trade(i: int, qty: float) -> Trade:
        return Trade(id=f"t{i}", venue="okx", instrument="BTC-USDT", ts=i * NS // 10,
                     price=100.0, qty=qty, side=Side.BUY)
    dl = logic.on_event(trade(0, 1e200))[0]
    assert isinstance(dl, DeadLetter) and (dl.reason, dl.path) == ("non_finite", "$.qty")
    for i in range(1, 200):
        logic.on_event(trade(i, 1.0 + (i % 3) * 0.1))
    last = [logic.on_event(trade(i, 1000.0))[0] for i in range(200, 210)][-1]
    assert math.isfinite(logic.s.vol_var)
    assert last.values["volume_z"] > 3.0


# -- bounded histories ------------------------------------------------------------

def test_frozen_timestamps_do_not_grow_the_price_or_iv_history() -> None:
    logic = FeatureLogic(EV, ManualClock(10**19))
    for i in range(5000):
        logic.on_event(quote(i, NS, 100.0 + i % 7, 101.0 + i % 7))
    assert len(logic.s.hist) <= 2
    opt = FeatureLogic(EV, ManualClock(10**19))
    for i in range(5000):
        opt.on_event(OptionQuote(id=f"o{i}", venue="deribit", instrument="BTC-C", ts=NS,
                                 underlying="BTC", expiry=10**18, strike=1.0,
                                 option_type="call", bid=1.0, ask=1.1, mark_price=1.05,
                                 mark_iv=0.5 + i % 3 * 0.01, underlying_price=100.0,
                                 delta=0.5))
    assert len(opt.s.iv_hist) <= 2


def test_runs_of_one_timestamp_give_the_returns_a_full_history_gives() -> None:
    """Several prices per timestamp (trades at millisecond resolution): keeping only a
    run's first and last entry changes no return."""
    rng = random.Random(3)
    ts, recs = NS, []
    for i in range(3000):
        ts += rng.choice((0, 0, 0, 1, NS // 4, 2 * NS))
        recs.append(quote(i, ts, 100.0 + rng.random(), 101.0 + rng.random()))
    logic = FeatureLogic(EV, ManualClock(10**19))
    got = [logic.on_event(r)[0].values["ret_bps"] for r in recs]
    full: list[tuple[int, float]] = []
    want = []
    for r in recs:  # the history kept whole, trimmed as before
        lp = math.log(0.5 * r.bid + 0.5 * r.ask)
        full.append((r.ts, lp))
        while len(full) > 2 and full[1][0] <= r.ts - EV.return_window_ns:
            full.pop(0)
        want.append((lp - full[0][1]) * 1e4)
    assert got == want


# -- subnormal values -------------------------------------------------------------

def test_a_quote_at_the_smallest_positive_price_gives_its_own_price_not_a_crash() -> None:
    """bid = ask = 5e-324 (valid on the wire): half of each rounds to 0, so a mid of
    halves is 0 and the spread divides by it; the mid is the price itself, and a real
    bytewax run passes the quote on as a vector."""
    raw = (b'{"type":"quote","id":"q1","venue":"okx","instrument":"BTC-USDT",'
           b'"ts":1000000000,"bid":5e-324,"bid_size":1.0,"ask":5e-324,"ask_size":1.0}')
    tiny = decode("market", raw)
    assert isinstance(tiny, Quote) and tiny.bid == 5e-324
    fv = FeatureLogic(EV, ManualClock(10**19)).on_event(tiny)[0]
    assert isinstance(fv, FeatureVector) and fv.price == 5e-324
    assert fv.values["spread_bps"] == 0.0
    flow = Dataflow("subnormal")
    feats = extract_features("features", op.input("in", flow, TestingSource([tiny])),
                             config=EV, clock=lambda: 10**19)
    got: list[tuple[str, FeatureVector]] = []
    op.output("out", feats.oks, TestingSink(got))
    op.output("dead", feats.errs, TestingSink([]))
    run_main(flow)
    assert [(k, v.price) for k, v in got] == [("okx/BTC-USDT", 5e-324)]


def test_book_depth_of_the_smallest_positive_size_has_a_balanced_band() -> None:
    """bid and ask depth 5e-324: their halves round to 0; the band's imbalance is 0 (the
    sides are equal), not a division by zero."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    rec = BookDepth(id="d", venue="binance_um", instrument="BTCUSDT", ts=NS,
                    bands_pct=[1.0], bid_depth=[5e-324], ask_depth=[5e-324], mid=100.0)
    fv = logic.on_event(rec)[0]
    assert isinstance(fv, FeatureVector) and fv.values["depth_imb_band"] == 0.0
    tilted = msgspec.structs.replace(rec, id="e", ts=2 * NS, ask_depth=[1e-323])
    assert logic.on_event(tilted)[0].values["depth_imb_band"] == pytest.approx(-1 / 3)


def test_a_receive_lag_near_the_int64_limit_keeps_the_vector_on_the_wire() -> None:
    """A quote received at the largest time the schema allows, 0 ns after its own 0: the
    key's later vectors carried that lag on a later event time, past the int64 limit, and
    every reader of the features (and of the signals that copy recv_ts) refused them."""
    logic = FeatureLogic(EV, ManualClock(10**19))
    first = Quote(id="q0", venue="okx", instrument="BTC-USDT", ts=0, recv_ts=2**63 - 1,
                  bid=99.0, bid_size=1.0, ask=101.0, ask_size=1.0)
    logic.on_event(first)
    fv = logic.on_event(quote(1, 2**62))[0]
    assert isinstance(fv, FeatureVector) and fv.recv_ts == 2**63 - 1
    assert isinstance(decode("features", encode(fv)), FeatureVector)


def test_every_age_and_gap_feature_has_a_scale_of_its_own() -> None:
    """The detector measures an age or a gap in the key's ordinary time between vectors
    at least (and a missed sequence number in ones): every such feature the extractor
    makes is declared, and nothing else is."""
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    vec = logic.on_event(depth(0, 17.0, 18.0))[0]
    assert isinstance(vec, FeatureVector)
    names = {*vec.values, *MARKET_FEATURES, *OPTION_FEATURES, *VENUE_FEATURES}
    timed = {n for n in names if n.endswith(("_age_s", "_stale_s", "_gap_s"))}
    assert timed == {n for n, scale in FEATURE_SCALES.items() if scale == "interval"}
    assert {n for n, scale in FEATURE_SCALES.items() if scale == "count"} == {"seq_gap"}
