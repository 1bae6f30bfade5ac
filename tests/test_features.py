"""Logic-level tests of market and venue-health feature extraction (fixed clock)."""

from __future__ import annotations

import math

import pytest
from riskguard.operators.clock import ManualClock
from riskguard.operators.features import FeatureConfig, FeatureLogic, route
from riskguard.schemas import (
    DeadLetter,
    FeatureVector,
    IndexPrice,
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
    with pytest.raises(ConfigError, match=r"features.bar_ns: must be a positive duration"):
        FeatureConfig(bar_ns=0).validate()


def test_each_key_class_emits_exactly_its_named_feature_set() -> None:
    """Market, option and venue vectors carry MARKET_FEATURES, OPTION_FEATURES and
    VENUE_FEATURES: the sets the guard builds detector models for at start-up."""
    from riskguard.operators.features import MARKET_FEATURES, OPTION_FEATURES, VENUE_FEATURES
    from riskguard.schemas import OptionQuote

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
