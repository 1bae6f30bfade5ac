"""Exposure aggregation logic: the worked example of docs/exposure.md, marking, reconciliation,
bad input, and a Hypothesis property against a from-scratch recomputation."""

from __future__ import annotations

import math
import pickle
from typing import Any
from unittest.mock import patch

import msgspec
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from riskguard.connectors.placement import route_worker
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick
from riskguard.operators.exposure import (
    PROGRESS_KEY,
    CounterpartyLogic,
    CounterpartyState,
    ExposureConfig,
    FirmLogic,
    InstrumentsConfig,
    InstrumentSpec,
    LocalPipeline,
    Part,
    Progress,
    Router,
    ShardLogic,
    ShardPlace,
    ShardState,
    apply_fill,
    arrays,
    pack_for_wire,
    routing,
    valuation,
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

from riskguard.errors import ConfigError

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


def test_unknown_instrument_is_a_dead_letter_not_a_zero() -> None:
    """A fill on an undeclared instrument goes to errs with reason unknown_instrument."""
    pipe = LocalPipeline(worked_config())
    out = pipe.feed(fill("fx", "okx", "SOL-PERP", "buy", 1.0, 100.0, 5))
    assert [(d.reason, d.found, d.topic) for d in out.errs] == [
        ("unknown_instrument", "SOL-PERP", "fill")]
    assert out.exposures == []


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


def test_firm_vol_per_underlying_is_the_newest_exposures_first_in_order_on_ties() -> None:
    """The firm's vol per underlying comes from the newest exposure holding it; on a tie
    the first counterparty in name order wins, whether or not exposures share a dict."""
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
    firm = FirmLogic(worked_config()).on_batch(exps)[-1]
    assert firm.counterparty == "*"
    assert firm.vol_by_underlying == {"BTC": 0.1, "ETH": 0.9}
    later = Exposure(counterparty="e", ts=7, gross_notional=1.0, net_notional=1.0,
                     vol_by_underlying=shared, seq=1)
    firm = FirmLogic(worked_config()).on_batch([*exps, later])[-1]
    assert firm.vol_by_underlying == {"BTC": 0.5, "ETH": 0.9}


def test_an_old_layout_snapshot_is_refused_with_a_config_error() -> None:
    """Resuming stage 1 or 2 from a pre-shard (version 2) snapshot names the step and asks
    for a fresh recovery store instead of failing obscurely."""
    cfg = worked_config()
    old = ShardState(version=2)
    with pytest.raises(ConfigError, match="fresh recovery store"):
        ShardLogic(cfg, cfg.validate(), old)
    with pytest.raises(ConfigError, match="fresh recovery store"):
        CounterpartyLogic(cfg, CounterpartyState(version=2))


# ------------------------------------------------------------------ batched marks

BATCH_CFG = ExposureConfig(
    instruments=InstrumentsConfig(instruments={
        f"P{k}": InstrumentSpec(kind="perp", base=f"A{k % 2}", quote="USD") for k in range(3)}),
    vol_min_samples=1,
)
COLUMNS = ("mark", "mark_ts", "mark_id", "last_ts", "ewma_price", "ewma_ts", "ewma_var",
           "ewma_n")


@st.composite
def mark_batches(draw: st.DrawFn) -> list[object]:
    """Trades, quotes and fills with repeated, equal and out-of-order times."""
    evs: list[object] = []
    for k in range(draw(st.integers(0, 60))):
        inst = f"P{draw(st.integers(0, 2))}"
        ts = draw(st.integers(1, 30)) * S
        px = draw(st.sampled_from([10.0, 10.5, 11.0, 9.0, 100.0]))
        kind = draw(st.sampled_from(["trade", "trade", "trade", "quote", "fill"]))
        if kind == "trade":
            evs.append(Trade(id=f"t{k}", venue="v", instrument=inst, ts=ts, price=px, qty=1.0,
                             side="buy"))
        elif kind == "quote":
            evs.append(Quote(id=f"q{k}", venue="v", instrument=inst, ts=ts, bid=px, bid_size=1.0,
                             ask=px + 1.0, ask_size=1.0))
        else:
            evs.append(fill(f"f{k}", "a", inst, "buy", 1.0, px, ts))
    return evs


def _dup_fill_later() -> tuple[list[object], list[object]]:
    """Found by Hypothesis: a replayed fill (same id, later ts) after marks in its batch."""
    def trades() -> list[object]:
        return [Trade(id=f"t{k}", venue="v", instrument="P0", ts=S, price=10.0, qty=1.0,
                      side="buy") for k in range(2)]
    return ([*trades(), fill("f2", "a", "P0", "buy", 1.0, 10.0, S)],
            [*trades(), fill("f2", "a", "P0", "buy", 1.0, 10.0, 2 * S)])


# the EWMA recursion over a run: step by step across columns, or column by column
_RECURSIONS = {"steps": {"_STEP_COST": 0, "_COLUMN_COST": 10**9},
               "columns": {"_STEP_COST": 10**9, "_COLUMN_COST": 0}}


@pytest.mark.parametrize("recursion", sorted(_RECURSIONS))
@settings(max_examples=80, deadline=None)
@given(first=mark_batches(), second=mark_batches())
@example(**dict(zip(("first", "second"), _dup_fill_later(), strict=True)))
def test_batched_plain_marks_equal_marks_applied_one_by_one(
    first: list[object], second: list[object], recursion: str
) -> None:
    """Runs of plain marks applied whole-array (two batches) leave every mark and EWMA
    column bit-identical to the same records applied one at a time, and the parts agree.
    The whole-array threshold is lowered to 1 here so that every run takes that path,
    and the EWMA recursion is forced down each of its two ways of computing."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    batched = ShardLogic(BATCH_CFG, reg)
    single = ShardLogic(BATCH_CFG, reg)
    last: dict[str, Part] = {}
    for evs in (first, second):
        with (patch.object(valuation, "_VECTOR_MIN", 1),
              patch.multiple(arrays, **_RECURSIONS[recursion])):
            parts = [p for _k, pack in router.route_batch(evs)
                     for p in batched.on_batch([pack])]
        for ev in evs:
            for _k, item in router.route(ev):
                last.update((p.counterparty, p) for p in single.on_event(item)
                            if isinstance(p, Part))
        for p in parts:
            if isinstance(p, Part):
                q = last[p.counterparty]
                assert (p.gross, p.net, p.upnl, p.ts) == pytest.approx((q.gross, q.net, q.upnl,
                                                                          q.ts))
                assert p.positions() == pytest.approx(q.positions())
                assert p.vol_values == q.vol_values
    if batched.state.key:
        for name in COLUMNS:
            np.testing.assert_array_equal(getattr(batched.state, name),
                                          getattr(single.state, name), err_msg=name)


@settings(max_examples=80, deadline=None)
@given(evs=mark_batches(), cut=st.integers(0, 60), data=st.data())
def test_marks_sent_again_after_a_restart_change_no_column(
    evs: list[object], cut: int, data: st.DataObject
) -> None:
    """A resumed upstream (a tier that ships marks, a replayed topic) sends marks after
    its snapshot again: the same records, in the same order. A mark older than its
    column's is ignored, an equal one sets what it set before, and the EWMA needs a
    strictly newer time, so the marks, their times and the EWMA end exactly where they
    were: replayed marks need no id filter."""
    marks = [e for e in evs if not isinstance(e, Fill)]
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    shard = ShardLogic(BATCH_CFG, reg)

    def apply(batch: list[object]) -> None:
        for _k, pack in router.route_batch(batch):
            shard.on_batch([pack])

    size = data.draw(st.integers(1, 20))
    for lo in range(0, len(marks), size):
        apply(marks[lo:lo + size])
    if not shard.state.key:
        return
    before = {name: getattr(shard.state, name).copy() for name in COLUMNS}
    again = marks[min(cut, len(marks)):]
    for lo in range(0, len(again), size + 1):  # cut into other batches this time
        apply(again[lo:lo + size + 1])
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(shard.state, name), before[name], err_msg=name)


VOL_CFG = ExposureConfig(
    instruments=InstrumentsConfig(instruments={
        f"P{k}": InstrumentSpec(kind="perp", base=f"A{k % 3}", quote="USD") for k in range(8)}),
    vol_min_samples=2,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_realized_vols_ranked_in_a_loop_equal_the_whole_array_ranking(data: st.DataObject) -> None:
    """Few held instruments take the loop (:meth:`ShardLogic._und_vols_small`); its vols,
    times, tie-breaks and order are those of the whole-array path, bit for bit."""
    reg = VOL_CFG.validate()
    logic = ShardLogic(VOL_CFG, reg)
    router = Router(reg, VOL_CFG)
    for _k, pack in router.route_batch([Trade(id=f"t{k}", venue="v", instrument=f"P{k}", ts=S,
                                              price=10.0, qty=1.0, side="buy")
                                        for k in range(8)]):
        logic.on_batch([pack])
    state = logic.state
    n = len(state.insts)
    times = st.sampled_from([-1, 0, 5, 7, 7 * S])
    state.feature_vol = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.3, 0.8]),
                                                    min_size=n, max_size=n)))
    state.feature_vol_ts = np.array(data.draw(st.lists(times, min_size=n, max_size=n)))
    state.ewma_n = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    state.ewma_var = np.array(data.draw(st.lists(
        st.floats(0.0, 1e-3, allow_nan=False), min_size=n, max_size=n)))
    state.ewma_ts = np.array(data.draw(st.lists(times, min_size=n, max_size=n)))
    held = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    whole = logic._und_vols_whole(np.array(held, dtype=np.int64))
    small = logic._und_vols_small(held)
    assert small == whole
    assert list(small) == list(whole)


def test_a_long_run_of_marks_is_applied_whole_array_like_one_by_one() -> None:
    """A batch of 200 trades (above the whole-array threshold) with an out-of-order and a
    repeated time re-marks and updates the EWMA exactly as record-at-a-time does, without
    falling back to one-by-one for the column whose marks go back in time."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    evs: list[object] = [fill("f", "a", "P0", "buy", 1.0, 10.0, 1)]
    evs += [Trade(id=f"t{k}", venue="v", instrument=f"P{k % 3}", ts=(k + 2) * S,
                  price=10.0 + (k % 7) * 0.1, qty=1.0, side="buy") for k in range(200)]
    evs.insert(50, Trade(id="late", venue="v", instrument="P1", ts=3 * S, price=50.0,
                         qty=1.0, side="buy"))
    evs.insert(80, Trade(id="same", venue="v", instrument="P0", ts=79 * S, price=12.0,
                         qty=1.0, side="buy"))
    packs = router.route_batch(evs)
    assert [it[0] for it in packs[0][1]] == ["fill", "marks"]
    one_by_one: list[str] = []

    class Counted(ShardLogic):
        def _mark_one(self, j: int, ev: Any, changed: dict[int, str]) -> None:
            one_by_one.append(ev.instrument)
            super()._mark_one(j, ev, changed)

    batched = Counted(BATCH_CFG, reg)
    batched.on_batch([packs[0][1]])
    assert one_by_one == []  # the column whose marks go back in time too
    single = ShardLogic(BATCH_CFG, reg)
    for ev in evs:
        for _k, item in router.route(ev):
            single.on_event(item)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(batched.state, name),
                                      getattr(single.state, name), err_msg=name)
    assert int(batched.state.ewma_n[0]) > 50


@settings(max_examples=40, deadline=None)
@given(first=mark_batches(), second=mark_batches())
@example(*_dup_fill_later())  # runs of marks and a fill: the wire path is taken
def test_packs_sent_to_another_process_value_exactly_as_local_ones(
    first: list[object], second: list[object]
) -> None:
    """A pack whose runs of marks crossed a process as msgpack bytes gives the same parts
    and state as the same pack handed over in memory, batched and ticked alike."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    for ticked in (False, True):
        local = ShardLogic(BATCH_CFG, reg, ticked=ticked)
        remote = ShardLogic(BATCH_CFG, reg, ticked=ticked)
        for evs in (first, second, [Tick(ts=31 * S)] if ticked else []):
            for _k, pack in router.route_batch(evs):
                wire = pickle.loads(pickle.dumps(pack_for_wire(pack)))
                assert all(type(it[3]) is bytes for it in wire if it[0] == "marks")
                assert remote.on_batch([wire]) == local.on_batch([pack])
        if local.state.key:
            for name in COLUMNS:
                np.testing.assert_array_equal(getattr(remote.state, name),
                                              getattr(local.state, name), err_msg=name)


def test_a_version_3_shard_snapshot_is_migrated_and_resumes_identically() -> None:
    """A stage-1 snapshot from state version 3 (per-instrument lists) resumes as version 4
    (numpy columns) and produces the same parts as the uninterrupted run."""
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    items = [it for ev in worked_events() for _k, it in router.route(ev)]
    key = items[0][1]
    mine = [it for it in items if it[1] == key]
    whole = ShardLogic(cfg, reg)
    ref = [o for it in mine for o in whole.on_event(it)]
    half = ShardLogic(cfg, reg)
    out = [o for it in mine[:8] for o in half.on_event(it)]
    snap = half.snapshot()
    v3 = ShardState(**{**snap.__dict__, "version": 3,
                       **{k: getattr(snap, k).tolist() for k in (
                           *COLUMNS, "opt_delta", "und_price", "feature_vol", "feature_vol_ts")}})
    resumed = ShardLogic(cfg, reg, pickle.loads(pickle.dumps(v3)))
    assert resumed.state.version == 4
    out += [o for it in mine[8:] for o in resumed.on_event(it)]
    assert out == ref
    parts = [p for p in ref if isinstance(p, Part)]
    cp_whole = CounterpartyLogic(cfg)
    cp_ref = [o for p in parts for o in cp_whole.on_event(p)]
    cp_half = CounterpartyLogic(cfg)
    cp_out = [o for p in parts[:2] for o in cp_half.on_event(p)]
    cp_snap = cp_half.snapshot()
    cp_snap.version = 3  # stage 2 kept its layout: a version-3 snapshot resumes as is
    cp_resumed = CounterpartyLogic(cfg, cp_snap)
    cp_out += [o for p in parts[2:] for o in cp_resumed.on_event(p)]
    assert cp_out == cp_ref and cp_resumed.state.version == 4


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


def _ticked_parts(cfg: ExposureConfig, stream: list[object]) -> list[Part]:
    """Stage-1 parts of a ticked single-shard run over ``stream`` (records and ticks; an
    int moves the processing clock on by that many ns)."""
    reg = cfg.validate()
    router = Router(reg, cfg)
    clock = ManualClock(0)
    logic = ShardLogic(cfg, reg, ticked=True, clock=clock)
    out: list[object] = []
    for ev in stream:
        if isinstance(ev, int):
            clock.advance(ev)
            continue
        for _key, item in router.route(ev):
            out.extend(logic.on_event(item))
    return [p for p in out if isinstance(p, Part)]


def test_ticked_fill_revalues_its_counterparty_at_the_next_position_boundary() -> None:
    """In ticked mode a fill does not wait for the tick: its counterparty is re-valued at
    the next ``position_revalue_ns`` boundary (as soon as a record at or past it
    arrives), stamped with the boundary; price moves still wait for the tick."""
    t = 1_000 * S
    ms = 1_000_000
    stream: list[object] = [
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0, qty=1.0,
              side="buy"),
        Tick(ts=t, source="p"),
        fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 3 * ms),
        Trade(id="t2", venue="okx", instrument="BTC-PERP", ts=t + 5 * ms, price=61_000.0,
              qty=1.0, side="buy"),
        # crosses the 10 ms boundary: okx is re-valued (with t2's price) before t3 applies
        Trade(id="t3", venue="okx", instrument="BTC-PERP", ts=t + 12 * ms, price=62_000.0,
              qty=1.0, side="buy"),
        Tick(ts=t + S, source="p"),
    ]
    fast = _ticked_parts(worked_config(), stream)
    assert [(p.counterparty, p.ts, p.net, p.evidence) for p in fast] == [
        ("okx", t + 10 * ms, 2 * 61_000.0, ["f1"]),  # the fill's boundary, mark t2
        ("okx", t + S, 2 * 62_000.0, ["t3"]),  # the tick re-values the price move
    ]
    # 0 turns it off: the fill waits for the tick
    slow = _ticked_parts(worked_config(position_revalue_ns=0), stream)
    assert [(p.ts, p.net, p.evidence) for p in slow] == [(t + S, 2 * 62_000.0, ["t3", "f1"])]


def test_in_a_live_run_a_fills_boundary_also_passes_by_wall_time() -> None:
    """With a wall clock (live runs), a fill on a shard no later record reaches is still
    re-valued once its boundary's wall time has gone by (the dataflow calls
    ``on_deadline``), stamped with the boundary as a crossing record would be. Without
    one (replays) nothing is due by wall time."""
    t = 1_000 * S
    ms = 1_000_000
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    wall = ManualClock(5 * S)
    live = ShardLogic(cfg, reg, ticked=True, wall_clock=wall)
    replay = ShardLogic(cfg, reg, ticked=True)
    stream = [Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0,
                    qty=1.0, side="buy"),
              Tick(ts=t, source="p"),
              fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 3 * ms)]
    for logic in (live, replay):
        for ev in stream:
            for _key, item in router.route(ev):
                assert logic.on_event(item) == []
    assert replay.next_deadline_ns() is None
    assert live.next_deadline_ns() == 5 * S + 7 * ms  # 7 ms of event time to the boundary
    wall.advance(7 * ms)
    parts = [p for p in live.on_deadline() if isinstance(p, Part)]
    assert [(p.counterparty, p.ts, p.net, p.evidence) for p in parts] == [
        ("okx", t + 10 * ms, 2 * 60_000.0, ["f1"])]
    assert live.next_deadline_ns() is None and live.on_deadline() == []


def test_ticked_shard_revalues_once_per_tick_of_the_slowest_process() -> None:
    """With two guard processes ticking, a price move is re-valued once per tick
    bucket, when the slower process's tick arrives (the processes' watermark), and
    gives the same parts as one process ticking. A process far behind in event time
    still holds it back (in a replay event time runs faster than processing time); one
    silent for ``TICK_IDLE_NS`` of processing time no longer does."""
    t = 1_000 * S

    def trade(i: int, ts: int, px: float) -> Trade:
        return Trade(id=f"t{i}", venue="okx", instrument="BTC-PERP", ts=ts, price=px,
                     qty=1.0, side="buy")

    head: list[object] = [fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, t - S)]
    one = [*head, trade(1, t, 60_000.0), Tick(ts=t, source="a"),
           trade(2, t + 1, 61_000.0), Tick(ts=t + S, source="a")]
    two = [*head, trade(1, t, 60_000.0), Tick(ts=t, source="a"), Tick(ts=t, source="b"),
           trade(2, t + 1, 61_000.0), Tick(ts=t + S, source="a"),
           Tick(ts=t + S, source="b")]
    cfg = worked_config(position_revalue_ns=0)
    single = [(p.ts, p.net, p.evidence) for p in _ticked_parts(cfg, one)]
    assert [(p.ts, p.net, p.evidence) for p in _ticked_parts(cfg, two)] == single
    assert len(single) == 2
    # a runs 31 s ahead of b in event time: b still holds re-valuation back
    behind = [*two, trade(3, t + 2 * S, 62_000.0), Tick(ts=t + 32 * S, source="a")]
    assert _ticked_parts(cfg, behind)[2:] == []
    # b falls silent for TICK_IDLE_NS of processing time: a's ticks alone re-value
    stale = [*two, trade(3, t + 2 * S, 62_000.0), TICK_IDLE_NS,
             Tick(ts=t + 32 * S, source="a")]
    parts = _ticked_parts(cfg, stale)
    assert [(p.ts, p.net) for p in parts[2:]] == [(t + 32 * S, 62_000.0)]


def _worker_stream(source: str, venue: str, inst: str, px: float, fill_s: int,
                   until_s: int, of: int = 2) -> list[object]:
    """One guard worker's share of the shard's input: a tick at each second, then that
    second's marks of its venue's instrument, and one fill on it."""
    t, ms = 1_000 * S, 1_000_000
    out: list[object] = [Tick(ts=t - S, source=source, of=of),
                         Balance(id=f"b-{venue}", venue=venue, counterparty=venue,
                                 asset="USDC", total=1e6, ts=t - S)]
    for k in range(until_s + 1):
        out.append(Tick(ts=t + k * S, source=source, of=of))
        second: list[Any] = [
            Trade(id=f"t-{venue}-{k}-{j}", venue=venue, instrument=inst,
                  ts=t + k * S + j * 250 * ms, price=px * (1 + 0.001 * k + j * 1e-4),
                  qty=1.0, side="buy") for j in range(4)]
        if k == fill_s:
            second.append(fill(f"f-{venue}", venue, inst, "buy", 3.0, px, t + k * S + 3 * ms))
        out.extend(sorted(second, key=lambda e: e.ts))
    return out


def _ahead(lead_s: float, a: list[object], b: list[object]) -> list[object]:
    """a's and b's inputs (each in event-time order) interleaved as they arrive when a
    runs ``lead_s`` ahead of b in event time."""
    keyed = [(e.ts - int(lead_s * S), n, e) for n, e in enumerate(a)]
    keyed += [(e.ts, len(a) + n, e) for n, e in enumerate(b)]
    return [e for _, _, e in sorted(keyed, key=lambda x: (x[0], x[1]))]


def test_how_far_a_process_runs_ahead_does_not_change_the_valuation() -> None:
    """Replaying a backlog, one process can run seconds or minutes ahead of the other in
    event time. Its records wait in the shard until the watermark is within
    ``reorder_slack_ns`` of them, so the parts are the same however far ahead it runs
    (beyond the slack), up to its whole input arriving first; without the wait, marks
    from the future would be valued at the slower process's ticks."""
    a = _worker_stream("a", "okx", "BTC-PERP", 60_000.0, 20, 40)
    b = _worker_stream("b", "binance", "ETH-PERP", 3_000.0, 7, 40)

    def parts(cfg: ExposureConfig, events: list[object]) -> list[tuple[object, ...]]:
        return [(p.counterparty, p.ts, p.net, p.gross, p.evidence)
                for p in _ticked_parts(cfg, events)]

    cfg, loose = worked_config(), worked_config(reorder_slack_ns=0)
    reference = parts(cfg, a + b)  # a's whole input first
    assert len(reference) > 50
    assert {p[0] for p in reference} == {"okx", "binance"}
    for lead_s in (2.5, 5, 20, 60):
        assert parts(cfg, _ahead(lead_s, a, b)) == reference, lead_s
    assert parts(loose, _ahead(5, a, b)) != parts(loose, a + b)


def test_records_waiting_for_the_watermark_survive_a_snapshot_and_end_of_input() -> None:
    """Records held for the watermark are shard state: a resumed shard applies them when
    the watermark comes, and end of input applies whatever still waits. (No expected
    source count: the resumed shard meets the same source names here, not new ones.)"""
    a = _worker_stream("a", "okx", "BTC-PERP", 60_000.0, 20, 40, of=0)
    b = _worker_stream("b", "binance", "ETH-PERP", 3_000.0, 7, 40, of=0)
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    events = [b[0], b[1], *a, *b[2:]]  # b ticks once, then a runs 40 s ahead

    def run(logic: ShardLogic, evs: list[object]) -> list[object]:
        out: list[object] = []
        for ev in evs:
            for _key, item in router.route(ev):
                out.extend(logic.on_event(item))
        return out

    whole = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    straight = [*run(whole, events), *whole.on_eof()]
    first = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    cut = len(a) + 2
    head = run(first, events[:cut])
    assert first.snapshot().held  # a's records wait for b
    second = ShardLogic(cfg, reg, pickle.loads(pickle.dumps(first.snapshot())), ticked=True,
                        clock=ManualClock(0))
    resumed = [*head, *run(second, events[cut:]), *second.on_eof()]
    assert [(p.counterparty, p.ts, p.net) for p in resumed if isinstance(p, Part)] == [
        (p.counterparty, p.ts, p.net) for p in straight if isinstance(p, Part)]
    stopped = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    run(stopped, events[:cut])
    tail = [p for p in stopped.on_eof() if isinstance(p, Part)]
    assert {p.counterparty for p in tail} == {"okx"} and not stopped.snapshot().held


def test_progress_passes_the_firm_at_the_slowest_counterparty_to_every_limits_key() -> None:
    """Ticked mode: a shard passes each tick on to every counterparty it holds and to
    PROGRESS_KEY; the firm passes a source's progress on only once every stage-2 key
    that carries it has passed it (behind that key's exposures), to the firm's limits
    key and each counterparty's, and a new counterparty's key hears it at once; the
    state survives a snapshot."""
    cfg = worked_config()
    firm = FirmLogic(cfg, ticked=True)

    def prog(cp: str, ts: int) -> Progress:
        return Progress(counterparty=cp, ts=ts * S, source="w0@s0", of=1)

    exp = Exposure(counterparty="okx", ts=5 * S, gross_notional=1.0, net_notional=1.0, seq=1)
    out = firm.on_batch([exp, prog(PROGRESS_KEY, 5), prog("okx", 5)])
    assert [type(x).__name__ for x in out] == ["Exposure", "Exposure", "Progress", "Progress"]
    assert [(p.counterparty, p.ts, p.of) for p in out[2:]] == [("*", 5 * S, 2), ("okx", 5 * S, 2)]
    assert firm.on_batch([prog(PROGRESS_KEY, 7)]) == []  # okx's key is still at 5
    resumed = FirmLogic(cfg, pickle.loads(pickle.dumps(firm.snapshot())), ticked=True)
    out = resumed.on_batch([prog("okx", 6)])
    assert [(p.counterparty, p.ts) for p in out] == [("*", 6 * S), ("okx", 6 * S)]
    # a new counterparty's key hears the progress so far at once, behind its exposure
    new = Exposure(counterparty="deribit", ts=6 * S, gross_notional=1.0, net_notional=1.0,
                   seq=1)
    out = resumed.on_batch([new])
    assert [(type(x).__name__, x.counterparty) for x in out][-1] == ("Progress", "deribit")
    assert (out[-1].ts, out[-1].of) == (6 * S, 3)
    # a key that joins in the batch another source moves in hears every source so far,
    # the one that moved and one that has finished (it will never move again)
    two = FirmLogic(cfg, ticked=True)
    done = Progress(counterparty=PROGRESS_KEY, ts=9 * S, source="w1@s0", of=2)
    assert [(p.counterparty, p.source) for p in two.on_batch([done])] == [("*", "w1@s0")]
    out = two.on_batch([exp, Progress(counterparty=PROGRESS_KEY, ts=5 * S, source="w0@s0",
                                      of=2)])
    heard = {(p.counterparty, p.source, p.ts) for p in out if isinstance(p, Progress)}
    assert heard == {("*", "w0@s0", 5 * S), ("okx", "w0@s0", 5 * S),
                     ("okx", "w1@s0", 9 * S)}
    # a counterparty that just joined a shard holds the source until its own copy comes
    # (its first part is on its way on that key, behind which its copy travels)
    joined = FirmLogic(cfg, ticked=True)
    assert joined.on_batch([Progress(counterparty=PROGRESS_KEY, ts=5 * S, source="w0@s0",
                                     of=1, via=("okx",))]) == []
    assert [p.ts for p in joined.on_batch([prog("okx", 5)])] == [5 * S]
    # a shard names its progress per shard and reaches every counterparty it holds
    reg = cfg.validate()
    router = Router(reg, cfg)
    shard = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0), forward_ticks=True)
    evs = [fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, S), Tick(ts=2 * S, source="w0",
                                                                      of=1)]
    outs = [o for ev in evs for _k, it in router.route(ev) for o in shard.on_event(it)]
    assert [(p.counterparty, p.source) for p in outs if isinstance(p, Progress)] == [
        (PROGRESS_KEY, "w0@s0"), ("okx", "w0@s0")]


def test_in_a_live_run_a_held_fill_waits_at_most_max_hold_ns_of_wall_time() -> None:
    """Live, a fill held for a slower process's watermark is applied once it has waited
    ``max_hold_ns`` of wall time (the dataflow calls ``on_deadline``), and its position
    boundary then passes by wall time as usual: a breach still comes within seconds."""
    t, ms = 1_000 * S, 1_000_000
    cfg = worked_config(max_hold_ns=5 * S)
    reg = cfg.validate()
    router = Router(reg, cfg)
    wall = ManualClock(0)
    told: list[tuple[str, int]] = []
    shard = ShardLogic(cfg, reg, ticked=True, clock=wall, wall_clock=wall,
                       on_reorder=lambda outcome, n: told.append((outcome, n)))
    evs = [Tick(ts=t, source="a", of=2), Tick(ts=t, source="b", of=2),
           Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0, qty=1.0,
                 side="buy"),
           fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 30 * S)]  # a runs ahead
    for ev in evs:
        for _key, item in router.route(ev):
            assert not [p for p in shard.on_event(item) if isinstance(p, Part)]
    assert len(shard.snapshot().held) == 1 and shard.next_deadline_ns() == 5 * S
    wall.advance(5 * S)
    assert shard.on_deadline() == []  # applied; its boundary is 10 ms of wall time away
    assert shard.snapshot().forced == 1 and shard.snapshot().held == []
    assert told == [("held", 1), ("forced", 1)]  # riskguard_reorder_total in the guard
    wall.advance(10 * ms)
    parts = [p for p in shard.on_deadline() if isinstance(p, Part)]
    assert [(p.counterparty, p.ts, p.net) for p in parts] == [
        ("okx", t + 30 * S + 10 * ms, 2 * 60_000.0)]


def test_reorder_slack_ns_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="reorder_slack_ns"):
        worked_config(reorder_slack_ns=-1).validate()


def test_position_revalue_ns_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="position_revalue_ns"):
        worked_config(position_revalue_ns=-1).validate()


def _book_events(seed: int) -> list[Any]:
    """The random worked-example stream, with open orders, position snapshots (some
    breaking reconciliation) and marks of a never-declared FX rate mixed in."""
    from risk_flow_app import make_events

    rng = __import__("random").Random(seed)
    out: list[Any] = []
    for k, ev in enumerate(make_events(120, seed=seed)):
        out.append(ev)
        ts = getattr(ev, "ts", 0)
        r = rng.random()
        if r < 0.06:
            out.append(OpenOrders(id=f"oo{k}", venue="okx", counterparty="okx",
                                  instrument=rng.choice(["BTC-PERP", "ETH-PERP", "BTC-USDC"]),
                                  notional=rng.choice([0.0, 1_000.0, 25_000.0]), ts=ts))
        elif r < 0.1:
            out.append(PositionSnapshot(id=f"ps{k}", venue="binance", counterparty="binance",
                                        instrument=rng.choice(["BTC-PERP", "ETH-PERP"]),
                                        qty=rng.choice([0.0, -1.5, 2.0]), ts=ts))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), ticked=st.booleans())
def test_a_small_book_revalued_in_python_gives_the_whole_array_bits(seed: int,
                                                                   ticked: bool) -> None:
    """Property: re-valuing a small book in Python (``_revalue_small``, what the demo
    book takes) and whole-array (``_revalue_whole``, forced by a zero small-book size)
    gives every part and alert the same bytes, the sign of a zero included: the same
    IEEE operations in the same order, numpy's short segmented sums included."""
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    stream: list[Any] = []
    for k, ev in enumerate(_book_events(seed)):
        if ticked and k and k % 7 == 0:
            stream.append(Tick(ts=ev.ts, source="w", of=1))
        stream.append(ev)

    def run() -> list[bytes]:
        shards: dict[str, ShardLogic] = {}
        out: list[bytes] = []
        for lo in range(0, len(stream), 10):
            for kv in router.route_batch(stream[lo:lo + 10]):
                if isinstance(kv, tuple):
                    logic = shards.setdefault(kv[0], ShardLogic(cfg, reg, ticked=ticked,
                                                                clock=lambda: 0))
                    out.extend(msgspec.json.encode(p) for p in logic.on_batch([kv[1]]))
        for logic in shards.values():
            out.extend(msgspec.json.encode(p) for p in logic.on_eof())
        return out

    small = run()
    with patch.object(valuation, "_SMALL_CELLS", -1):
        whole = run()
    assert len(small) > 20
    assert small == whole


@pytest.mark.parametrize("small_cells", [-1, 64], ids=["whole_array", "small_book"])
def test_a_row_revalued_beside_a_later_row_without_positions_sums_all_its_positions(
    small_cells: int,
) -> None:
    """Regression: a counterparty re-valued in the same batch as a later one that holds no
    position (only a balance) summed all but its last position: the segmented sum's
    trailing empty rows were clamped onto its segment (gross read 10 for 10 + 21)."""
    cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
        "P0": InstrumentSpec(kind="perp", base="BTC", quote="USD"),
        "P1": InstrumentSpec(kind="perp", base="ETH", quote="USD")}))
    reg = cfg.validate()
    router = Router(reg, cfg)
    batches = [
        [Trade(id="t0", venue="v", instrument="P0", ts=1, price=10.0, qty=1.0, side="buy"),
         Trade(id="t1", venue="v", instrument="P1", ts=1, price=20.0, qty=1.0, side="buy"),
         fill("f0", "a", "P0", "buy", 1.0, 10.0, 2), fill("f1", "a", "P1", "buy", 1.0, 20.0, 3),
         Balance(id="b1", venue="b", counterparty="b", asset="USD", total=5.0, ts=4)],
        [Trade(id="t2", venue="v", instrument="P1", ts=5, price=21.0, qty=-1.0, side="sell"),
         Balance(id="b2", venue="b", counterparty="b", asset="USD", total=6.0, ts=6)],
    ]
    logic = ShardLogic(cfg, reg)
    last: dict[str, Part] = {}
    with patch.object(valuation, "_SMALL_CELLS", small_cells):
        for batch in batches:
            for _key, pack in router.route_batch(batch):
                last.update((p.counterparty, p) for p in logic.on_batch([pack])
                            if isinstance(p, Part))
    a, b = last["a"], last["b"]
    assert (a.gross, a.net, a.upnl, a.ts) == (31.0, 31.0, 1.0, 5)
    assert (b.gross, b.collateral, b.names) == (0.0, 6.0, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["BTC", "ETH", "SOL", "USDT"]),
                                st.floats(-1e12, 1e12, allow_nan=False),
                                min_size=0, max_size=4), min_size=1, max_size=30),
       st.booleans())
def test_the_firms_dict_sums_equal_a_plain_loop_bit_for_bit(
        ds: list[dict[str, float]], same_keys: bool) -> None:
    """_sum_dicts (the firm's delta and by-asset rollups, with a fast path when every dict
    holds every key, in any order) equals a plain loop: keys in first-seen order, each
    summed from 0 in list order, a missing key adding nothing."""
    from riskguard.operators.exposure.rollup import _sum_dicts

    if same_keys:  # every dict holding every key, in its own order
        keys = sorted(set().union(*ds))
        ds = [{k: d.get(k, 1.5) for k in (keys if n % 2 else keys[::-1])}
              for n, d in enumerate(ds)]
    want: dict[str, float] = {}
    for d in ds:
        for k in d:
            want.setdefault(k, 0)
    for k in want:
        total: float = 0
        for d in ds:
            if k in d:
                total += d[k]
        want[k] = total
    got = _sum_dicts(ds)
    assert list(got) == list(want)
    assert [math.copysign(1, v) for v in got.values()] == [math.copysign(1, v)
                                                            for v in want.values()]
    assert got == want


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


@pytest.mark.parametrize("shards", [2, 3, 4, 6, 8, 48])
def test_valuation_shards_spread_one_per_worker_over_every_dividing_worker_count(
        shards: int) -> None:
    """Shard k of ``valuation_shards`` lives on worker ``k % W`` for each worker count W
    dividing it (past 32 shards, dividing its largest divisor up to 32), by bytewax's own
    routing (``route_worker``): with as many shards as workers each worker values one.
    Plain ``s0``/``s1`` both routed to worker 1 of 2. One shard keeps the key ``s0`` its
    snapshots carry, and a market process's prefix is part of the names searched."""
    cap = routing._SPREAD_MAX
    spread = max(d for d in range(1, min(shards, cap) + 1) if shards % d == 0)
    for prefix in ("", "m1."):
        keys = routing.shard_keys(shards, prefix)
        assert len(set(keys)) == shards and all(k.startswith(prefix + "s") for k in keys)
        for workers in (w for w in range(1, spread + 1) if spread % w == 0):
            assert [route_worker(k, workers) for k in keys] == [
                k % workers for k in range(shards)], (prefix, workers)
    assert routing.shard_keys(1) == ("s0",)
