"""Exposure aggregation logic: the worked example of docs/exposure.md, marking, reconciliation,
bad input, a Hypothesis property against a from-scratch recomputation, and config changes
on resume (batched marks and ticked mode have their own files)."""

from __future__ import annotations

import pickle

import msgspec
import pytest
from exposure_pipeline import LocalPipeline
from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.operators.core.clock import ManualClock, Tick
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
from riskguard.operators.exposure import (
    STATE_VERSION,
    CounterpartyState,
    ExposureConfig,
    FirmLogic,
    InstrumentsConfig,
    InstrumentSpec,
    Part,
    Router,
    ShardLogic,
    ShardPlace,
    ShardState,
    apply_fill,
    routing,
)
from riskguard.schemas import (
    Balance,
    Exposure,
    FeatureVector,
    Fill,
    IndexPrice,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    Quote,
    Scope,
    ScopeKind,
    Trade,
)

from riskguard.errors import ConfigError, SnapshotError

S = 1_000_000_000


def worked_config(**kw: object) -> ExposureConfig:
    """Three venues; spot, perpetuals and options on BTC and ETH (docs/exposure.md)."""
    return ExposureConfig(
        instruments=InstrumentsConfig(
            reporting_currency="USD",
            fx_index={"USDC": "USDC-USD-INDEX", "BTC": "BTC-USD-INDEX", "ETH": "ETH-USD-INDEX"},
            instruments={
                "BTC-USDC": InstrumentSpec(kind="spot", base="BTC", quote="USDC"),
                "BTC-PERP": InstrumentSpec(kind="perp", base="BTC", quote="USD"),
                "ETH-PERP": InstrumentSpec(kind="perp", base="ETH", quote="USD"),
                "BTC-27JUN-60000-C": InstrumentSpec(
                    kind="option", base="BTC", quote="BTC", underlying="BTC",
                    underlying_quote="USD"),
                "ETH-27JUN-3000-P": InstrumentSpec(
                    kind="option", base="ETH", quote="ETH", underlying="ETH",
                    underlying_quote="USD"),
            },
        ),
        **kw,
    )


def idx(i: str, name: str, ts: int, price: float) -> IndexPrice:
    return IndexPrice(id=i, venue="index", instrument=name, ts=ts, price=price)


def fill(
    i: str, cp: str, inst: str, side: str, qty: float, price: float, ts: int
) -> Fill:
    return Fill(id=i, venue=cp, counterparty=cp, instrument=inst, side=side, qty=qty,
                price=price, ts=ts)


def oq(
    i: str, inst: str, und: str, ts: int, mark: float, delta: float, und_px: float,
    opt: str,
) -> OptionQuote:
    return OptionQuote(id=i, venue="deribit", instrument=inst, ts=ts, underlying=und,
                       expiry=10**18, strike=und_px, option_type=opt,
                       bid=mark * 0.99, ask=mark * 1.01, mark_price=mark, mark_iv=0.6,
                       underlying_price=und_px, delta=delta)


def worked_events() -> list[object]:
    t = 1_000 * S
    return [
        idx("i1", "BTC-USD-INDEX", t, 60_000.0),
        idx("i2", "ETH-USD-INDEX", t, 3_000.0),
        idx("i3", "USDC-USD-INDEX", t, 1.0),
        FeatureVector(key="okx/BTC-PERP", scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-PERP"),
                      ts=t, values={"realized_vol": 0.8}),
        Quote(id="q1", venue="binance", instrument="BTC-USDC", ts=t + 1, bid=59_990.0,
              bid_size=1.0, ask=60_010.0, ask_size=1.0),
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t + 2, price=60_000.0, qty=1.0,
              side="buy"),
        Trade(id="t2", venue="okx", instrument="ETH-PERP", ts=t + 3, price=3_000.0, qty=1.0,
              side="buy"),
        oq("o1", "BTC-27JUN-60000-C", "BTC", t + 4, 0.05, 0.5, 60_000.0, "call"),
        oq("o2", "ETH-27JUN-3000-P", "ETH", t + 5, 0.02, -0.3, 3_000.0, "put"),
        fill("f1", "binance", "BTC-USDC", "buy", 2.0, 58_000.0, t + 10),
        Balance(id="b1", venue="binance", counterparty="binance", asset="USDC", total=50_000.0,
                ts=t + 11),
        fill("f2", "okx", "BTC-PERP", "sell", 1.0, 61_000.0, t + 12),
        fill("f3", "okx", "ETH-PERP", "buy", 10.0, 2_900.0, t + 13),
        Balance(id="b2", venue="okx", counterparty="okx", asset="BTC", total=1.0, ts=t + 14),
        fill("f4", "deribit", "BTC-27JUN-60000-C", "buy", 5.0, 0.04, t + 15),
        fill("f5", "deribit", "ETH-27JUN-3000-P", "sell", 20.0, 0.025, t + 16),
        Balance(id="b3", venue="deribit", counterparty="deribit", asset="BTC", total=2.0,
                ts=t + 17),
    ]


def test_worked_example_numbers_per_counterparty_and_firm() -> None:
    """Every number of docs/exposure.md's worked example comes out as documented."""
    pipe = LocalPipeline(worked_config())
    out = pipe.feed_all(worked_events())
    assert out.errs == [] and out.alerts == []
    got = pipe.latest()
    b, o, d, f = got["binance"], got["okx"], got["deribit"], got["*"]
    assert (b.gross_notional, b.net_notional, b.collateral, b.unrealized_pnl) == pytest.approx(
        (120_000.0, 120_000.0, 50_000.0, 4_000.0))
    assert b.delta_by_underlying == pytest.approx({"BTC": 120_000.0})
    assert (o.gross_notional, o.net_notional, o.collateral, o.unrealized_pnl) == pytest.approx(
        (90_000.0, -30_000.0, 60_000.0, 2_000.0))
    assert o.delta_by_underlying == pytest.approx({"BTC": -60_000.0, "ETH": 30_000.0})
    assert o.notional_by_instrument == pytest.approx({"BTC-PERP": -60_000.0, "ETH-PERP": 30_000.0})
    assert (d.gross_notional, d.net_notional, d.collateral, d.unrealized_pnl) == pytest.approx(
        (360_000.0, 240_000.0, 120_000.0, 3_300.0))
    assert d.delta_by_underlying == pytest.approx({"BTC": 150_000.0, "ETH": 18_000.0})
    assert (b.concentration, o.concentration, d.concentration) == pytest.approx(
        (0.2125, 0.1875, 0.6))
    assert (f.gross_notional, f.net_notional, f.collateral, f.unrealized_pnl) == pytest.approx(
        (570_000.0, 330_000.0, 230_000.0, 9_300.0))
    assert f.delta_by_underlying == pytest.approx({"BTC": 210_000.0, "ETH": 48_000.0})
    assert f.concentration == pytest.approx(0.6)
    assert f.vol_by_underlying == {"BTC": 0.8}
    assert not f.stale


def test_stablecoin_depeg_moves_every_usdc_quoted_mark_and_usdc_collateral() -> None:
    """USDC-USD at 0.98 revalues the BTC-USDC position and the USDC balance by 2%."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    pipe.feed(idx("i9", "USDC-USD-INDEX", 1_100 * S, 0.98))
    b = pipe.latest()["binance"]
    assert b.gross_notional == pytest.approx(120_000.0 * 0.98)
    assert b.collateral == pytest.approx(50_000.0 * 0.98)
    assert b.unrealized_pnl == pytest.approx(4_000.0 * 0.98)


def test_mark_update_remarks_positions_and_names_the_mark_as_evidence() -> None:
    """A new BTC-PERP trade re-marks okx's short; the mark id is in the evidence."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    out = pipe.feed(Trade(id="t9", venue="okx", instrument="BTC-PERP", ts=1_001 * S,
                          price=62_000.0, qty=1.0, side="buy"))
    okx = next(e for e in out.exposures if e.counterparty == "okx")
    assert okx.notional_by_instrument["BTC-PERP"] == pytest.approx(-62_000.0)
    assert okx.unrealized_pnl == pytest.approx(-1_000.0 + 1_000.0)
    assert "t9" in okx.evidence_ids


def test_stale_mark_flags_exposure_and_raises_one_alert() -> None:
    """A mark older than max_mark_age vs the counterparty's newest event is stale, once."""
    pipe = LocalPipeline(worked_config(max_mark_age_ns=60 * S))
    pipe.feed_all(worked_events())
    out = pipe.feed(Trade(id="t5", venue="okx", instrument="ETH-PERP", ts=1_200 * S,
                          price=3_100.0, qty=1.0, side="buy"))
    okx = next(e for e in out.exposures if e.counterparty == "okx")
    assert okx.stale and okx.stale_instruments == ["BTC-PERP"]
    assert [(a.kind, a.scope.value) for a in out.alerts] == [("stale_mark", "BTC-PERP")]
    again = pipe.feed(Trade(id="t6", venue="okx", instrument="ETH-PERP", ts=1_201 * S,
                            price=3_100.0, qty=1.0, side="buy"))
    assert again.alerts == []
    fresh = pipe.feed(Trade(id="t7", venue="okx", instrument="BTC-PERP", ts=1_202 * S,
                            price=60_000.0, qty=1.0, side="buy"))
    assert not next(e for e in fresh.exposures if e.counterparty == "okx").stale


def test_reconciliation_break_alerts_and_adopts_the_snapshot() -> None:
    """A snapshot of -3 against fills of -1 raises reconciliation_break and wins."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    out = pipe.feed(PositionSnapshot(id="p1", venue="okx", counterparty="okx",
                                     instrument="BTC-PERP", qty=-3.0, avg_price=61_000.0,
                                     ts=1_001 * S))
    assert [a.kind for a in out.alerts] == ["reconciliation_break"]
    assert out.alerts[0].details["fills_qty"] == -1.0
    assert out.alerts[0].details["snapshot_qty"] == -3.0
    okx = pipe.latest()["okx"]
    assert okx.notional_by_instrument["BTC-PERP"] == pytest.approx(-180_000.0)
    quiet = pipe.feed(PositionSnapshot(id="p2", venue="okx", counterparty="okx",
                                       instrument="BTC-PERP", qty=-3.0, ts=1_002 * S))
    assert quiet.alerts == []


def test_fills_at_or_before_a_snapshot_are_not_counted_twice() -> None:
    """A late fill older than the adopted snapshot does not move the position."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    pipe.feed(PositionSnapshot(id="p1", venue="okx", counterparty="okx",
                               instrument="BTC-PERP", qty=-1.0, ts=1_001 * S))
    pipe.feed(fill("late", "okx", "BTC-PERP", "sell", 1.0, 61_000.0, 1_000 * S + 100))
    assert pipe.latest()["okx"].notional_by_instrument["BTC-PERP"] == pytest.approx(-60_000.0)


def _btc_position(items: list[object]) -> float:
    pipe = LocalPipeline(worked_config())
    pipe.feed_all([idx("m", "BTC-PERP", S, 60_000.0), *items])
    return pipe.latest()["okx"].notional_by_instrument["BTC-PERP"]


def _snap(i: str, qty: float, ts: int) -> PositionSnapshot:
    return PositionSnapshot(id=i, venue="okx", counterparty="okx", instrument="BTC-PERP",
                            qty=qty, ts=ts)


def test_a_snapshot_arriving_after_newer_fills_keeps_them_whatever_the_order() -> None:
    """Positions and fills come on different topics, so a snapshot as of 100 s may arrive
    after a fill at 200 s: the position is the snapshot with that fill on top, as if they
    had come in time order; an older snapshot never replaces a newer one."""
    buy = fill("f200", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, 200 * S)
    in_order = _btc_position([_snap("s100", 0.0, 100 * S), buy])
    assert in_order == pytest.approx(60_000.0)
    assert _btc_position([buy, _snap("s100", 0.0, 100 * S)]) == in_order
    assert _btc_position([_snap("s200", 2.0, 200 * S), _snap("s100", 0.0, 100 * S)]) == \
        pytest.approx(120_000.0)


def test_a_late_snapshot_gives_the_average_price_of_time_order() -> None:
    """+1 at 100, a snapshot of +1 (no average) as of 20 s, +1 at 200 at 30 s: whichever
    way the snapshot and the second fill arrive, the average entry is 150 (the snapshot
    carries the fills' average from before the later fill, not after it)."""
    def avg_after(items: list[object]) -> float:
        pipe = LocalPipeline(worked_config())
        pipe.feed_all([idx("m", "BTC-PERP", S, 300.0), *items])
        return pipe.latest()["okx"].unrealized_pnl
    first = fill("f10", "okx", "BTC-PERP", "buy", 1.0, 100.0, 10 * S)
    second = fill("f30", "okx", "BTC-PERP", "buy", 1.0, 200.0, 30 * S)
    in_order = avg_after([first, _snap("s20", 1.0, 20 * S), second])
    assert in_order == pytest.approx(300.0)  # 2 x (300 - 150)
    assert avg_after([first, second, _snap("s20", 1.0, 20 * S)]) == pytest.approx(in_order)


def test_a_late_snapshot_still_finds_a_missed_fill() -> None:
    """A snapshot of +2 as of 100 s, arriving after our fill of +1 at 200 s when fills
    alone had +1: the venue had a fill we missed; the break is raised and the snapshot's
    position, with the later fill on it, is adopted."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all([idx("m", "BTC-PERP", S, 60_000.0),
                   fill("f200", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, 200 * S)])
    out = pipe.feed(_snap("s100", 2.0, 100 * S))
    (brk,) = out.alerts
    assert brk.kind == "reconciliation_break" and brk.details["fills_after_snapshot"] == 1.0
    assert pipe.latest()["okx"].notional_by_instrument["BTC-PERP"] == pytest.approx(180_000.0)


def test_unknown_instrument_is_a_dead_letter_not_a_zero() -> None:
    """A fill on an undeclared instrument goes to errs with reason unknown_instrument."""
    pipe = LocalPipeline(worked_config())
    out = pipe.feed(fill("fx", "okx", "SOL-PERP", "buy", 1.0, 100.0, 5))
    assert [(d.reason, d.found, d.topic) for d in out.errs] == [
        ("unknown_instrument", "SOL-PERP", "fill")]
    assert out.exposures == []


def test_a_snapshot_older_than_the_fills_kept_is_reported_not_adopted() -> None:
    """A position keeps its last MAX_FILLS_SINCE fills: a snapshot older than the ones
    dropped cannot be rebased, so it is not adopted, and a reconciliation_skipped warning
    says the positions topic lags the fills."""
    from riskguard.operators.exposure.shard_state import MAX_FILLS_SINCE

    fills = [fill(f"f{n}", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, (100 + n) * S)
             for n in range(MAX_FILLS_SINCE + 1)]
    pipe = LocalPipeline(worked_config())
    pipe.feed_all([idx("m", "BTC-PERP", S, 60_000.0), *fills])
    before = pipe.latest()["okx"].notional_by_instrument["BTC-PERP"]
    out = pipe.feed(_snap("s50", 0.0, 50 * S))
    assert [a.kind for a in out.alerts] == ["reconciliation_skipped"]
    assert pipe.latest()["okx"].notional_by_instrument["BTC-PERP"] == before


def test_a_fill_whose_notional_overflows_is_a_dead_letter_not_an_infinite_exposure() -> None:
    """1e160 at 1e160 is no amount: it would make the exposure infinite, which no limit
    can compare and no state can checkpoint. It is a dead letter; the position stands."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    before = pipe.latest()["okx"].gross_notional
    out = pipe.feed(fill("huge", "okx", "BTC-PERP", "buy", 1e160, 1e160, 1_001 * S))
    assert [(d.reason, d.path) for d in out.errs] == [("non_finite", "$.qty")]
    assert pipe.latest()["okx"].gross_notional == before


def test_balance_in_unconvertible_asset_is_a_dead_letter() -> None:
    """Collateral in an asset with no FX index is dead-lettered as missing_fx."""
    pipe = LocalPipeline(worked_config())
    out = pipe.feed(Balance(id="b", venue="okx", counterparty="okx", asset="DOGE", total=1.0,
                            ts=5))
    assert [d.reason for d in out.errs] == ["missing_fx"]


def test_missing_mark_and_missing_fx_make_exposure_stale_with_an_alert() -> None:
    """A position without a mark, or without its quote FX rate, is flagged, never zero."""
    pipe = LocalPipeline(worked_config())
    out = pipe.feed(fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, 5))
    assert [a.kind for a in out.alerts] == ["missing_mark"]
    okx = pipe.latest()["okx"]
    assert okx.stale and okx.stale_instruments == ["BTC-PERP"]
    out = pipe.feed(Quote(id="q", venue="binance", instrument="BTC-USDC", ts=6, bid=1.0,
                          bid_size=1.0, ask=1.0, ask_size=1.0))
    out = pipe.feed(fill("f2", "binance", "BTC-USDC", "buy", 1.0, 1.0, 7))
    assert [a.kind for a in out.alerts] == ["missing_fx"]
    assert pipe.latest()["binance"].stale_instruments == ["BTC-USDC"]


def test_open_orders_and_duplicate_fills() -> None:
    """Open-order notional is converted and summed; a redelivered fill id counts once."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(worked_events())
    pipe.feed(fill("f2", "okx", "BTC-PERP", "sell", 1.0, 61_000.0, 1_000 * S + 12))
    pipe.feed(OpenOrders(id="oo", venue="okx", counterparty="okx", instrument="ETH-PERP",
                         notional=5_000.0, ts=1_001 * S))
    okx = pipe.latest()["okx"]
    assert okx.open_order_notional == pytest.approx(5_000.0)
    assert okx.notional_by_instrument["BTC-PERP"] == pytest.approx(-60_000.0)


def test_config_errors_name_the_key_path() -> None:
    """A zero multiplier or a quote currency without FX index is a ConfigError with its path."""
    bad = ExposureConfig(instruments=InstrumentsConfig(instruments={
        "X": InstrumentSpec(base="X", quote="USD", multiplier=0.0)}))
    with pytest.raises(ConfigError, match=r"exposure.instruments.instruments.X.multiplier"):
        LocalPipeline(bad)
    bad2 = ExposureConfig(instruments=InstrumentsConfig(instruments={
        "X": InstrumentSpec(base="X", quote="EUR")}))
    with pytest.raises(ConfigError, match=r"fx_index.EUR"):
        LocalPipeline(bad2)


# ------------------------------------------------------------------ property

PROP_CFG = ExposureConfig(
    instruments=InstrumentsConfig(
        fx_index={"USDC": "USDC-IDX"},
        instruments={
            "P": InstrumentSpec(kind="perp", base="BTC", quote="USD", multiplier=0.5),
            "S": InstrumentSpec(kind="spot", base="ETH", quote="USDC"),
        },
    ),
    max_mark_age_ns=10**15,
)
CPS = ("a", "b")


@st.composite
def sequences(draw: st.DrawFn) -> list[object]:
    n = draw(st.integers(1, 40))
    evs: list[object] = []
    for k in range(n):
        ts = (k + 1) * 1000
        kind = draw(st.sampled_from(["fill", "fill", "snap", "mark", "mark", "fx"]))
        inst = draw(st.sampled_from(["P", "S"]))
        cp = draw(st.sampled_from(CPS))
        px = draw(st.floats(1.0, 1000.0))
        if kind == "fill":
            evs.append(fill(f"f{k}", cp, inst, draw(st.sampled_from(["buy", "sell"])),
                            draw(st.floats(0.01, 10.0)), px, ts))
        elif kind == "snap":
            evs.append(PositionSnapshot(id=f"s{k}", venue=cp, counterparty=cp, instrument=inst,
                                        qty=draw(st.floats(-10.0, 10.0)), avg_price=px, ts=ts))
        elif kind == "mark":
            evs.append(Trade(id=f"m{k}", venue="x", instrument=inst, ts=ts, price=px, qty=1.0,
                             side="buy"))
        else:
            evs.append(idx(f"x{k}", "USDC-IDX", ts, draw(st.floats(0.9, 1.1))))
    return evs


def from_scratch(events: list[object]) -> dict[str, tuple[float, float, float]]:
    """Recompute (gross, net, upnl) per counterparty directly from the sequence."""
    pos: dict[tuple[str, str], tuple[float, float | None]] = {}
    marks: dict[str, float] = {}
    fx = {"USD": 1.0}
    for ev in events:
        if isinstance(ev, Fill):
            q, a = pos.get((ev.counterparty, ev.instrument), (0.0, None))
            pos[(ev.counterparty, ev.instrument)] = apply_fill(
                q, a, ev.qty if ev.side == "buy" else -ev.qty, ev.price)
        elif isinstance(ev, PositionSnapshot):
            pos[(ev.counterparty, ev.instrument)] = (ev.qty, ev.avg_price)
        elif isinstance(ev, Trade):
            marks[ev.instrument] = ev.price
        elif isinstance(ev, IndexPrice):
            fx["USDC"] = ev.price
    out: dict[str, tuple[float, float, float]] = {}
    for cp in CPS:
        gross = net = upnl = 0.0
        seen = False
        for inst, mult, ccy in (("P", 0.5, "USD"), ("S", 1.0, "USDC")):
            if (cp, inst) not in pos:
                continue
            seen = True
            q, a = pos[(cp, inst)]
            if inst in marks and ccy in fx:
                n = q * mult * marks[inst] * fx[ccy]
                gross += abs(n)
                net += n
                upnl += q * mult * (marks[inst] - (a if a is not None else marks[inst])) * fx[ccy]
        if seen:
            out[cp] = (gross, net, upnl)
    return out


def _close(x: float, y: float) -> bool:
    return abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y))


@settings(max_examples=60, deadline=None)
@given(events=sequences(), cuts=st.lists(st.integers(0, 40), max_size=3),
       shards=st.sampled_from([1, 3]))
def test_exposures_equal_from_scratch_recomputation_across_resumes(
    events: list[object], cuts: list[int], shards: int
) -> None:
    """For any fills/snapshots/marks/FX sequence, split across any resumes, with the
    instruments on one or several valuation shards, the final exposures equal a direct
    recomputation, and the outputs equal an uninterrupted run."""
    cfg = msgspec.structs.replace(PROP_CFG, valuation_shards=shards)
    whole = LocalPipeline(cfg)
    whole_out = whole.feed_all(events)
    pipe = LocalPipeline(cfg)
    outs = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(events)), len(events)]:
        outs.extend(pipe.feed_all(events[start:cut]).exposures)
        pipe = LocalPipeline(cfg, pickle.loads(pickle.dumps(pipe.snapshot())))
        start = max(start, cut)
    assert outs == whole_out.exposures
    expected = from_scratch(events)
    latest = pipe.latest()
    firm = [0.0, 0.0, 0.0]
    for cp, (g, n, u) in expected.items():
        e = latest[cp]
        valued = not e.stale_instruments
        if valued:
            assert _close(e.gross_notional, g) and _close(e.net_notional, n)
            assert _close(e.unrealized_pnl, u)
        firm = [firm[0] + e.gross_notional, firm[1] + e.net_notional,
                firm[2] + e.unrealized_pnl]
    if expected:
        f = latest["*"]
        assert _close(f.gross_notional, firm[0]) and _close(f.net_notional, firm[1])
        assert _close(f.unrealized_pnl, firm[2])


def _one_by_one_and_batched(cfg: ExposureConfig, evs: list[object],
                            ) -> tuple[dict[str, Part], list[Part]]:
    """Stage 1 over ``evs``: each counterparty's last part with the records applied one
    at a time, and the parts of one batch of them all."""
    reg = cfg.validate()
    router = Router(reg, cfg)
    items = [it for ev in evs for _k, it in router.route(ev)]
    one = ShardLogic(cfg, reg)
    last: dict[str, Part] = {}
    for it in items:
        for p in one.on_event(it):
            if isinstance(p, Part):
                last[p.counterparty] = p
    batched = [p for p in ShardLogic(cfg, reg).on_batch([items]) if isinstance(p, Part)]
    return last, batched


def test_a_batch_is_revalued_once_and_reflects_every_record() -> None:
    """ShardLogic fed a whole batch emits one part per counterparty whose sums equal
    feeding the same records one at a time (the last part of each counterparty)."""
    last, batched = _one_by_one_and_batched(worked_config(), worked_events())
    assert sorted(p.counterparty for p in batched) == ["binance", "deribit", "okx"]
    for p in batched:
        q = last[p.counterparty]
        assert (p.gross, p.net, p.upnl, p.collateral) == pytest.approx(
            (q.gross, q.net, q.upnl, q.collateral))
        assert p.positions() == pytest.approx(q.positions())


def test_a_batch_opening_many_counterparties_equals_records_one_by_one() -> None:
    """Rows grow (8 at first, doubling) while a batch is applied: fills, snapshots and
    balances of 20 new counterparties, interleaved with more fills of earlier ones, give
    the same parts, bit for bit, as the records applied one at a time."""
    evs: list[object] = [Trade(id="m", venue="x", instrument="P", ts=1, price=100.0,
                               qty=1.0, side="buy"),
                         Trade(id="n", venue="x", instrument="S", ts=1, price=10.0,
                               qty=1.0, side="buy"),
                         idx("u", "USDC-IDX", 1, 1.0)]
    for k in range(20):
        cp, ts = f"c{k:02d}", 10 + 10 * k
        evs.append(fill(f"f{k}", cp, "P", "buy", 1.0 + k, 90.0, ts))
        evs.append(Balance(id=f"b{k}", venue=cp, counterparty=cp, asset="USDC",
                           total=100.0 * k, ts=ts + 1))
        evs.append(fill(f"g{k}", f"c{k // 2:02d}", "S", "sell", 2.0, 11.0, ts + 2))
        if k % 3 == 0:
            evs.append(PositionSnapshot(id=f"s{k}", venue=cp, counterparty=cp,
                                        instrument="P", qty=float(k), avg_price=95.0,
                                        ts=ts + 3))
        evs.append(idx(f"x{k}", "USDC-IDX", ts + 4, 1.0 + k / 1000))
    last, batched = _one_by_one_and_batched(PROP_CFG, evs)
    assert sorted(p.counterparty for p in batched) == sorted(last) == [
        f"c{k:02d}" for k in range(20)]
    for p in batched:
        q = last[p.counterparty]
        assert (p.gross, p.net, p.upnl, p.collateral) == (q.gross, q.net, q.upnl,
                                                          q.collateral)
        assert p.positions() == q.positions()


def test_valuation_shards_must_be_positive() -> None:
    """valuation_shards = 0 is a config error naming the key."""
    with pytest.raises(ConfigError, match="valuation_shards"):
        LocalPipeline(worked_config(valuation_shards=0))


def test_firm_vol_per_underlying_is_the_newest_by_its_own_time_higher_on_ties() -> None:
    """The firm's vol per underlying is the newest any exposure brought, by the vol's own
    event time (an exposure's time for a vol without one), whichever counterparty
    brought it and however new that exposure is; on a tie in time the higher vol wins,
    whatever the order the exposures came in. A later exposure without it keeps it."""
    shared = {"BTC": 0.5}
    exps = [
        Exposure(counterparty="a", ts=5, gross_notional=1.0, net_notional=1.0,
                 vol_by_underlying={"BTC": 0.1, "ETH": 0.2}, seq=1),
        Exposure(counterparty="b", ts=5, gross_notional=1.0, net_notional=1.0,
                 vol_by_underlying={"BTC": 0.3}, seq=1),
        Exposure(counterparty="c", ts=4, gross_notional=1.0, net_notional=1.0,
                 vol_by_underlying=shared, seq=1),
        Exposure(counterparty="d", ts=6, gross_notional=1.0, net_notional=1.0,
                 vol_by_underlying={"ETH": 0.9}, seq=1),
    ]
    for order in (exps, exps[::-1]):
        firm = FirmLogic(worked_config()).on_batch(order)[-1]
        assert firm.counterparty == "*"
        assert (firm.vol_by_underlying, firm.vol_ts_by_underlying) == (
            {"BTC": 0.3, "ETH": 0.9}, {"BTC": 5, "ETH": 6})
    logic = FirmLogic(worked_config())
    logic.on_batch(exps)
    later = Exposure(counterparty="e", ts=7, gross_notional=1.0, net_notional=1.0,
                     vol_by_underlying=shared, seq=1)
    assert logic.on_batch([later])[-1].vol_by_underlying == {"BTC": 0.5, "ETH": 0.9}
    old_vol = Exposure(counterparty="f", ts=9, gross_notional=1.0, net_notional=1.0,
                       vol_by_underlying={"BTC": 0.7}, vol_ts_by_underlying={"BTC": 3}, seq=1)
    without = msgspec.structs.replace(later, ts=10, seq=2, vol_by_underlying={})
    out = logic.on_batch([old_vol, without])
    assert all(e.vol_by_underlying == {"BTC": 0.5, "ETH": 0.9} for e in out)
    assert FirmLogic(worked_config(), logic.snapshot()).on_batch(
        [msgspec.structs.replace(without, seq=3)])[-1].vol_ts_by_underlying == {
            "BTC": 7, "ETH": 6}


def test_a_snapshot_of_another_version_is_refused_by_name() -> None:
    """Resuming stage 1 or 2 from a snapshot of another state version stops naming the
    state and both versions, instead of patching the fields it lacks."""
    for old, name in ((ShardState(version=2), "riskguard.exposure.shard"),
                      (CounterpartyState(version=2), "riskguard.exposure.counterparty")):
        with pytest.raises(SnapshotError, match=f"version {STATE_VERSION} only; got version 2"
                           ) as err:
            decode_snapshot(encode_snapshot(old))
        assert err.value.name == name


def test_a_stablecoin_leaving_its_peg_raises_depeg_then_critical_then_restored():
    """The peg check on the FX index: warn at 50 bps, critical at 200, each level left
    only 25 bps below it (no flapping), peg_restored once back within 25 bps; each rise
    and the return are alerted once."""
    pipe = LocalPipeline(worked_config(pegs={"USDC": 1.0}))
    path = [1.0, 0.9952, 0.9949, 0.996, 0.9949, 0.979, 0.985, 0.9895, 0.996, 0.9976, 0.999]
    alerts = []
    for k, px in enumerate(path):
        alerts += [(a.kind, a.severity.value, a.scope.label())
                   for a in pipe.feed(idx(f"u{k}", "USDC-USD-INDEX", k + 1, px)).alerts]
    assert alerts == [("depeg", "warn", "underlying:USDC"),
                      ("depeg", "critical", "underlying:USDC"),
                      ("peg_restored", "info", "underlying:USDC")]


def test_peg_levels_are_checked_at_start_up():
    """A bad peg or level stops start-up naming the field."""
    with pytest.raises(ConfigError, match=r"exposure\.pegs\.USDC"):
        worked_config(pegs={"USDC": 0.0}).validate()
    with pytest.raises(ConfigError, match=r"exposure\.peg_warn_bps"):
        worked_config(peg_warn_bps=300.0).validate()


# ------------------------------------------------------------------ config changes on resume

NEW_INSTRUMENTS = ("BTC-PERP", "ETH-PERP")  # BTC-PERP sorts between held instruments


def _without_new_instruments() -> ExposureConfig:
    cfg = worked_config()
    kept = {k: v for k, v in cfg.instruments.instruments.items() if k not in NEW_INSTRUMENTS}
    return msgspec.structs.replace(cfg, instruments=msgspec.structs.replace(
        cfg.instruments, instruments=kept))


def _touches_new(ev: object) -> bool:
    name = getattr(ev, "instrument", None) or getattr(ev, "key", "").rsplit("/", 1)[-1]
    return name in NEW_INSTRUMENTS


def test_a_resumed_run_takes_in_instruments_configured_since_its_snapshot() -> None:
    """Instruments added to the config between a snapshot and its resume get columns of
    their own (one sorting between held ones, so every held column moves): the resumed run
    then equals one that had them configured from the start, bit for bit, and a record on
    a new instrument no longer crashes stage 1."""
    evs = worked_events()
    before = [ev for ev in evs if not _touches_new(ev)]
    after = [ev for ev in evs if _touches_new(ev)] + [
        fill("f9", "okx", "BTC-PERP", "buy", 3.0, 60_500.0, 2_000 * S),
        fill("f10", "binance", "BTC-USDC", "sell", 1.0, 60_400.0, 2_000 * S + 1),
        # disagrees with f1 + f10: the break's evidence is the moved column's fill ids
        PositionSnapshot(id="p1", venue="binance", counterparty="binance",
                         instrument="BTC-USDC", qty=5.0, ts=2_000 * S + 2)]
    assert before and after
    first = LocalPipeline(_without_new_instruments())
    first.feed_all(before)
    resumed = LocalPipeline(worked_config(), pickle.loads(pickle.dumps(first.snapshot())))
    got = resumed.feed_all(after)
    straight = LocalPipeline(worked_config())
    straight.feed_all(before)
    want = straight.feed_all(after)
    assert got.exposures == want.exposures and got.alerts == want.alerts and not got.errs
    assert "BTC-PERP" in resumed.latest()["okx"].instruments
    brk = [a for a in got.alerts if a.kind == "reconciliation_break"]
    assert brk and {"f1", "f10"} <= set(brk[0].evidence_ids)


def test_a_resumed_ticked_shard_moves_its_pending_columns_with_the_new_instruments() -> None:
    """Ticked mode keeps what moved since the last tick (columns by index) in the
    snapshot: resumed with an instrument inserted before them, the next tick's parts, their
    evidence ids included, equal an uninterrupted shard's."""
    t = 1_000 * S
    head = [idx("i1", "BTC-USD-INDEX", t, 60_000.0), idx("i3", "USDC-USD-INDEX", t, 1.0),
            fill("f1", "binance", "BTC-USDC", "buy", 2.0, 58_000.0, t + 1),
            Quote(id="q1", venue="binance", instrument="BTC-USDC", ts=t + 2, bid=59_990.0,
                  bid_size=1.0, ask=60_010.0, ask_size=1.0),
            oq("o1", "BTC-27JUN-60000-C", "BTC", t + 3, 0.05, 0.5, 60_000.0, "call"),
            fill("f4", "deribit", "BTC-27JUN-60000-C", "buy", 5.0, 0.04, t + 4),
            # never marked: the tick's missing-mark alert names its (moved) column's fill
            fill("f5", "okx", "ETH-27JUN-3000-P", "buy", 1.0, 0.02, t + 4)]
    tail = [Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t + 5, price=60_000.0,
                  qty=1.0, side="buy"),
            fill("f2", "okx", "BTC-PERP", "sell", 1.0, 61_000.0, t + 6),
            Tick(ts=t + S, source="w0", of=1)]

    def run(logic: ShardLogic, cfg: ExposureConfig, evs: list[object]) -> list[object]:
        router = Router(cfg.validate(), cfg)
        return [out for ev in evs for _key, item in router.route(ev)
                for out in logic.on_event(item)]

    old = msgspec.structs.replace(_without_new_instruments(), position_revalue_ns=0)
    new = worked_config(position_revalue_ns=0)
    first = ShardLogic(old, old.validate(), ticked=True, clock=ManualClock(0))
    assert not [p for p in run(first, old, head) if isinstance(p, Part)]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    assert snap.pending is not None and snap.pending.changed
    resumed = ShardLogic(new, new.validate(), snap, ticked=True, clock=ManualClock(0))
    straight = ShardLogic(new, new.validate(), ticked=True, clock=ManualClock(0))
    run(straight, new, head)
    got, want = run(resumed, new, tail), run(straight, new, tail)
    assert got == want
    assert any(isinstance(p, Part) and p.evidence for p in got)
    assert any(getattr(a, "evidence_ids", None) == ["f5"] for a in got)


def test_a_resumed_shard_whose_instruments_now_hash_elsewhere_is_a_config_error() -> None:
    """A snapshot taken with one ``valuation_shards`` resumed under another would count the
    positions of every instrument that moved shard twice: start-up stops, naming the field."""
    first = LocalPipeline(worked_config())
    first.feed_all(worked_events())
    with pytest.raises(ConfigError, match=r"exposure\.valuation_shards.*hashing elsewhere"):
        LocalPipeline(worked_config(valuation_shards=3), first.snapshot())


def test_a_resumed_market_shard_whose_collateral_moved_process_is_a_config_error() -> None:
    """A market process resumed after its owners changed: the balances it holds in an
    asset another process now owns would be counted by both, so start-up stops."""
    cfg = worked_config()
    reg = cfg.validate()
    everything = ShardPlace("m0.", lambda name: True, 2)
    logic = ShardLogic(cfg, reg, place=everything)
    router = Router(reg, cfg, place=everything)
    for ev in worked_events():
        for _key, item in router.route(ev):
            logic.on_event(item)
    snap = logic.snapshot()
    assert "USDC" in snap.balances
    ShardLogic(cfg, reg, snap, place=everything)  # the same owners resume
    no_usdc = ShardPlace("m0.", lambda name: name != "a:USDC", 2)
    with pytest.raises(ConfigError, match=r"valuation_shards.*USDC hashing elsewhere"):
        ShardLogic(cfg, reg, snap, place=no_usdc)


def test_valuation_shard_keys_are_named_by_index_with_a_market_processs_prefix() -> None:
    """Shard k of ``valuation_shards`` is keyed ``<prefix>s<k>``: distinct, stable across
    runs, and a market process's prefix makes its keys its own."""
    assert routing.shard_keys(3) == ("s0", "s1", "s2")
    assert routing.shard_keys(2, "m1.") == ("m1.s0", "m1.s1")
    assert routing.shard_key("i:BTC-PERP", 1) == "s0"
