"""An exposure that cannot be valued never counts as zero for a limit.

A position with no FX rate or no mark, collateral with no FX rate, or a measure that
is not a finite number: an ``unvalued_exposure`` alert at once, and each limit that
measures it breached once it has stayed unvalued for the limit's ``unvalued_grace_ns``
of event time, until it is valued again and inside the limit.
"""

from __future__ import annotations

import math
from typing import Any

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from contract import CHECKS, Case
from exposure_pipeline import LocalPipeline
from riskguard.operators.core.clock import Tick
from riskguard.operators.exposure import (
    ExposureConfig,
    InstrumentsConfig,
    InstrumentSpec,
    Progress,
)
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
)
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.exposure.ops import aggregate_exposure, enforce_limits
from riskguard.schemas import (
    Balance,
    Exposure,
    Fill,
    IndexPrice,
    LimitBreach,
    LimitLevel,
    LimitUpdate,
    PositionSnapshot,
    RiskAlert,
    SignedEnvelope,
    Trade,
    Utilization,
)
from signing_fixtures import AUD

from riskguard.errors import ConfigError, VerificationError

S = 1_000_000_000
T0 = 1_000 * S


def drive(logic: LimitsLogic, items: list[Any]) -> list[Any]:
    """Feed ``items`` to ``logic`` in order; every output."""
    return [out for it in items for out in logic.on_event(it)]
GRACE = 30 * S


def usdt_config() -> ExposureConfig:
    """BTC against USDT (and a USD perp): USDT is valued through its USD index only."""
    return ExposureConfig(instruments=InstrumentsConfig(
        reporting_currency="USD",
        fx_index={"USDT": "USDT-USD-INDEX", "BTC": "BTC-USD-INDEX"},
        instruments={
            "BTC-USDT": InstrumentSpec(kind="spot", base="BTC", quote="USDT"),
            "BTC-PERP": InstrumentSpec(kind="perp", base="BTC", quote="USD"),
        }))


def usd_limits(**spec: Any) -> LimitsConfig:
    """okx: gross 1M USD; the firm: gross 10M USD."""
    return LimitsConfig(
        firm={"gross_notional": LimitSpec(limit=10_000_000.0, **spec)},
        counterparties={"okx": CounterpartyLimits(limits={
            "gross_notional": LimitSpec(limit=1_000_000.0, **spec),
            "collateral": LimitSpec(limit=1_000_000.0, **spec)})})


def refuse(envelope: SignedEnvelope, now_ns: int) -> LimitUpdate:
    raise VerificationError("unsigned", "no updates in this flow")


def buy(k: int, qty: float, ts: int, inst: str = "BTC-USDT", side: str = "buy") -> Fill:
    return Fill(id=f"f{k}", venue="okx", counterparty="okx", instrument=inst, side=side,
                qty=qty, price=60_000.0, ts=ts)


def probe(extra: list[Any] | None = None, until_s: int = 60) -> list[Any]:
    """The probe through the guard's exposure and limits core, ticked as the guard runs
    it: a BTC-USDT mark, then 20 fills of 1 BTC at 60,000 USDT in 20 s (1.2M against a
    1M USD limit), no USDT->USD index price; a tick every 5 s up to ``until_s``."""
    recs: list[Any] = [Trade(id="t0", venue="okx", instrument="BTC-USDT", ts=T0,
                             price=60_000.0, qty=1.0, side="buy")]
    recs += [buy(k, 1.0, T0 + (k + 1) * S) for k in range(20)]
    recs += extra or []
    recs.sort(key=lambda r: r.ts)
    stream: list[Any] = []
    for r in recs:
        stream.append(r)
    ticks = [Tick(ts=T0 + k * 5 * S, source="w0", of=1) for k in range(until_s // 5 + 1)]
    merged = sorted([(r.ts, 1, n, r) for n, r in enumerate(stream)]
                    + [(t.ts, 0, n, t) for n, t in enumerate(ticks)])
    flow = Dataflow("unvalued_probe")
    inp = op.input("in", flow, TestingSource([m[3] for m in merged], batch_size=4))
    recs_s = op.filter("recs", inp, lambda r: not isinstance(r, Tick))
    ticks_s = op.filter("ticks", inp, Tick.__instancecheck__)
    exp = aggregate_exposure("exposure", recs_s, config=usdt_config(), clock=lambda: 0,
                             ticks=ticks_s)
    lim = enforce_limits("limits", exp.exposures, None, config=usd_limits(), verifier=refuse,
                         clock=lambda: 0, progress=exp.progress)
    out: list[Any] = []
    op.output("out", op.merge("all", exp.exposures, exp.alerts, lim.utilizations,
                              lim.breaches, lim.alerts), TestingSink(out))
    run_main(flow)
    return out


def breaches(out: list[Any], path: str = "counterparty.okx") -> list[LimitBreach]:
    return [o for o in out if isinstance(o, LimitBreach) and o.limit_path == path]


def alerts(out: list[Any], kind: str = "unvalued_exposure") -> list[RiskAlert]:
    return [o for o in out if isinstance(o, RiskAlert) and o.kind == kind]


# -- the probe, through the real dataflow -------------------------------------------


def test_fills_with_no_fx_rate_alert_at_once_and_breach_after_the_grace_period() -> None:
    """1.2M of BTC-USDT fills against a 1M USD limit with no USDT->USD rate: the exposure
    is 0.0 (and says what it left out); an unvalued_exposure alert comes with the first
    fill, and the gross limit is breached 30 s of event time later (no fill since), the
    breach saying why (inputs) and pointing at the alert (evidence)."""
    out = probe()
    okx = [o for o in out if isinstance(o, Exposure) and o.counterparty == "okx"]
    assert okx[-1].gross_notional == 0.0
    (alert,) = [a for a in alerts(out) if a.scope.value == "okx"]
    first = okx[0].ts
    assert T0 + S <= first < T0 + 2 * S  # the first fill's re-valuation
    assert (alert.ts, alert.severity.value) == (first, "critical")
    assert "BTC-USDT" in alert.reason and alert.details["unvalued"] == "BTC-USDT"
    (b,) = [b for b in breaches(out) if b.kind == "gross_notional"]
    assert (b.level, b.ts, b.utilization) == (LimitLevel.BREACH, first + GRACE, 1.0)
    assert (b.exposure, b.inputs["unvalued"], b.inputs["unvalued_for_ns"]) == (0.0, 1.0, GRACE)
    assert alert.id in b.evidence_ids
    # collateral is not what is unvalued: that limit stays quiet
    assert [b for b in breaches(out) if b.kind == "collateral"] == []
    # the firm rollup carries the same: its limit breaches too
    firm = breaches(out, "firm")
    assert [(b.level, b.ts) for b in firm] == [(LimitLevel.BREACH, first + GRACE)]
    # what the exposure left out, by name
    assert okx[-1].unvalued_instruments == ["BTC-USDT"] and okx[-1].unvalued_collateral == []


def test_the_breach_clears_once_valued_and_inside_the_limit() -> None:
    """The USDT index arrives at 38 s: 1.2M valued is still a breach (now by value, 1.2);
    selling 12 BTC at 47 s brings it to 480k: the breach clears."""
    extra = [IndexPrice(id="usdt", venue="index", instrument="USDT-USD-INDEX", ts=T0 + 38 * S,
                        price=1.0),
             buy(99, 12.0, T0 + 47 * S, side="sell")]
    out = probe(extra)
    levels = [(b.level.value, round(b.utilization, 3)) for b in breaches(out)
              if b.kind == "gross_notional"]
    assert levels == [("breach", 1.0), ("ok", 0.48)]
    okx = [o for o in out if isinstance(o, Exposure) and o.counterparty == "okx"]
    assert okx[-1].unvalued_instruments == [] and okx[-1].gross_notional == 480_000.0
    util = [u for u in out if isinstance(u, Utilization) and u.limit_path == "counterparty.okx"
            and u.kind == "gross_notional" and T0 + 38 * S <= u.ts < T0 + 47 * S]
    assert [(u.level.value, u.utilization, "unvalued" in u.inputs) for u in util] == [
        ("breach", 1.2, False)]


# -- the pipeline names what it could not value -------------------------------------


def test_missing_mark_and_missing_collateral_fx_are_named_in_the_exposure() -> None:
    """A fill before any mark, and a USDT balance with no USDT rate: both named (the
    position in unvalued_instruments, the balance in unvalued_collateral), in the firm
    rollup too; a valued position keeps its value."""
    pipe = LocalPipeline(usdt_config())
    pipe.feed_all([
        IndexPrice(id="btc", venue="index", instrument="BTC-USD-INDEX", ts=T0, price=60_000.0),
        Trade(id="t", venue="okx", instrument="BTC-PERP", ts=T0, price=60_000.0, qty=1.0,
              side="buy"),
        buy(1, 1.0, T0 + 1, inst="BTC-PERP"),
        buy(2, 1.0, T0 + 2),  # no BTC-USDT mark yet
        Balance(id="bal", venue="okx", counterparty="okx", asset="USDT", total=5e5,
                ts=T0 + 3),
    ])
    okx = pipe.latest()["okx"]
    assert (okx.gross_notional, okx.unvalued_instruments, okx.unvalued_collateral) == (
        60_000.0, ["BTC-USDT"], ["USDT"])
    assert okx.stale and okx.stale_instruments == ["BTC-USDT", "USDT"]
    firm = pipe.latest()["*"]
    assert (firm.unvalued_instruments, firm.unvalued_collateral) == (["BTC-USDT"], ["USDT"])


def test_a_stale_mark_is_counted_at_its_last_value_not_as_unvalued() -> None:
    """A mark older than max_mark_age_ns makes the exposure stale, but the position keeps
    the value of its last mark: the limit compares it (1.2M breaches at once), and it
    is not an unvalued exposure."""
    pipe = LocalPipeline(usdt_config())
    out = pipe.feed_all([
        IndexPrice(id="usdt", venue="index", instrument="USDT-USD-INDEX", ts=T0, price=1.0),
        Trade(id="t", venue="okx", instrument="BTC-USDT", ts=T0, price=60_000.0, qty=1.0,
              side="buy"),
        buy(1, 20.0, T0 + 1),
        Trade(id="p", venue="okx", instrument="BTC-PERP", ts=T0 + 90 * S, price=60_000.0,
              qty=1.0, side="buy"),
        buy(2, 0.001, T0 + 90 * S, inst="BTC-PERP"),
    ])
    okx = pipe.latest()["okx"]
    assert "stale_mark" in [a.kind for a in out.alerts]
    assert okx.stale and okx.stale_instruments == ["BTC-USDT"]
    assert okx.unvalued_instruments == [] and okx.gross_notional == pytest.approx(1_200_060.0)
    logic = LimitsLogic(usd_limits(), clock=lambda: 0)
    outs = drive(logic, [okx])
    assert [(b.kind, b.level.value) for b in outs if isinstance(b, LimitBreach)] == [
        ("gross_notional", "breach")]
    assert alerts(outs) == []


# -- the limits logic ----------------------------------------------------------------


def exposure(ts: int, gross: float = 0.0, cp: str = "okx", **kw: Any) -> Exposure:
    return Exposure(counterparty=cp, ts=ts, gross_notional=gross, net_notional=gross,
                    evidence_ids=[f"e{ts}"], **kw)


def tick(ts: int, source: str = "w0", cp: str = "okx") -> Progress:
    return Progress(counterparty=cp, ts=ts, source=source, of=1)


def gross_limit(**spec: Any) -> LimitsConfig:
    return LimitsConfig(counterparties={"okx": CounterpartyLimits(
        limits={"gross_notional": LimitSpec(limit=100.0, **spec)},
        instruments={"ETH-PERP": {"gross_notional": LimitSpec(limit=50.0, **spec)}})},
        utilization_interval_ns=10)


UNVALUED = {"unvalued_instruments": ["BTC-USDT"]}


def gross_levels(outs: list[Any]) -> list[tuple[int, str]]:
    return [(b.ts, b.level.value) for b in outs
            if isinstance(b, LimitBreach) and b.limit_path == "counterparty.okx"]


def test_logic_alerts_at_once_and_breaches_at_the_grace_deadline_on_a_tick() -> None:
    """Unvalued at 0: the alert comes first and the level is the valued part's (ok);
    nothing breaches at 29 s; the tick that carries event time to 35 s breaches it,
    stamped at the deadline (30 s), ahead of the tick passed on."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    outs = [o for o in drive(logic, [exposure(0, 10.0, **UNVALUED)])
            if not isinstance(o, Utilization) or o.limit_path == "counterparty.okx"]
    assert [type(o).__name__ for o in outs] == ["RiskAlert", "Utilization"]
    assert outs[0].kind == "unvalued_exposure"
    assert outs[1].level is LimitLevel.OK and outs[1].inputs["unvalued"] == 1.0
    assert gross_levels(drive(logic, [exposure(29 * S, 10.0, **UNVALUED)])) == []
    outs = drive(logic, [tick(35 * S)])
    assert gross_levels(outs) == [(GRACE, "breach")]
    assert isinstance(outs[-1], Tick) and outs[-1].ts == 35 * S
    assert alerts(outs) == []  # one alert per episode, not per evaluation


def test_grace_zero_breaches_at_once_with_the_alert_first() -> None:
    """unvalued_grace_ns = 0: the breach comes with the alert, and names it as evidence."""
    logic = LimitsLogic(gross_limit(unvalued_grace_ns=0), clock=lambda: 0)
    outs = drive(logic, [exposure(0, 0.0, **UNVALUED)])
    (alert,) = alerts(outs)
    (b,) = [o for o in outs if isinstance(o, LimitBreach)]
    assert outs.index(alert) < outs.index(b)
    assert (b.level, b.utilization, b.evidence_ids) == (LimitLevel.BREACH, 1.0, ["e0", alert.id])


def test_an_instrument_limit_counts_only_its_own_instrument() -> None:
    """An unvalued BTC-USDT does not breach the ETH-PERP instrument limit; an unvalued
    ETH-PERP does."""
    logic = LimitsLogic(gross_limit(unvalued_grace_ns=0), clock=lambda: 0)
    outs = drive(logic, [exposure(0, **UNVALUED)])
    assert {b.limit_path for b in outs if isinstance(b, LimitBreach)} == {"counterparty.okx"}
    outs = drive(logic, [exposure(S, unvalued_instruments=["ETH-PERP"])])
    assert {b.limit_path for b in outs if isinstance(b, LimitBreach)} == {
        "counterparty.okx.instrument.ETH-PERP"}


def test_a_nan_measure_is_unvalued_never_compared_as_a_number() -> None:
    """A gross that is nan (NaN > limit is False) counts as unvalued: reported as 0.0 with
    the reason, breached after the grace; a nan realized vol is an unknown vol."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    outs = drive(logic, [exposure(0, math.nan)])
    (alert,) = alerts(outs)
    assert alert.details["not_finite"] == "counterparty.okx#gross_notional"
    outs = drive(logic, [exposure(GRACE, math.nan)])
    (b,) = [o for o in outs if isinstance(o, LimitBreach)]
    assert (b.exposure, b.level, b.inputs["unvalued"]) == (0.0, LimitLevel.BREACH, 1.0)
    vs = VolScaling(underlying="BTC", ref_vol=0.5)
    scaled = LimitsLogic(gross_limit(vol_scaling=vs), clock=lambda: 0)
    outs = drive(scaled, [exposure(0, 150.0, vol_by_underlying={"BTC": math.nan})])
    u = next(o for o in outs if isinstance(o, Utilization))
    assert (u.effective_limit, u.utilization, u.inputs["vol_known"]) == (100.0, 1.5, 0.0)


def test_a_breach_is_never_cleared_by_what_cannot_be_counted() -> None:
    """Breached at 150, then the gross becomes no number (an overflow), or a position
    loses its mark so only a part is counted: inside the grace the level holds, it does
    not fall to ok on an amount that is not the exposure; valued again inside the limit,
    it clears."""
    for unknown in ({"gross": math.inf}, {"gross": 20.0, **UNVALUED}):
        logic = LimitsLogic(gross_limit(), clock=lambda: 0)
        assert gross_levels(drive(logic, [exposure(0, 150.0)])) == [(0, "breach")]
        outs = drive(logic, [exposure(S, **unknown)])
        assert gross_levels(outs) == [] and len(alerts(outs)) == 1
        assert gross_levels(drive(logic, [exposure(2 * S, 20.0)])) == [(2 * S, "ok")]


def test_a_nan_among_the_deltas_makes_the_delta_limit_unvalued() -> None:
    """max() passes over a NaN that is not first: the largest delta is still no amount."""
    from riskguard.operators.exposure.limits import max_abs

    assert math.isnan(max_abs({"ETH": 5.0, "BTC": math.nan}))
    assert math.isnan(max_abs({"BTC": math.nan, "ETH": 5.0}))


def test_a_basis_that_is_no_number_never_makes_a_share_a_finite_zero() -> None:
    """Concentration is a share of the firm's total. A basis that is no number makes its
    counterparty's share 1.0 and holds the others at their last (never 0.0, read as
    within); finite bases whose sum overflows are still shared out; every share stays a
    number (the exposure's schema wants one)."""
    from riskguard.operators.exposure.rollup import FirmLogic

    firm = FirmLogic(ExposureConfig(concentration_basis="gross_notional"))
    out = firm.on_event(exposure(S, 600.0, "a", seq=1)) + firm.on_event(
        exposure(S, 400.0, "b", seq=1))
    assert [e.concentration for e in out if e.counterparty == "a"][-1] == 0.6
    out = firm.on_event(exposure(2 * S, math.inf, "b", seq=2))
    shares = {e.counterparty: e.concentration for e in out}
    assert shares["b"] == 1.0 and shares.get("a", firm.state.shares["a"]) == 0.6
    assert shares["*"] == 1.0
    out = firm.on_event(exposure(3 * S, 400.0, "b", seq=3))
    assert firm.state.shares == {"a": 0.6, "b": 0.4}
    big = FirmLogic(ExposureConfig(concentration_basis="gross_notional"))
    out = big.on_event(exposure(S, 1.7e308, "a", seq=1)) + big.on_event(
        exposure(S, 1.7e308, "b", seq=1))
    assert [e.concentration for e in out if e.counterparty == "a"][-1] == 0.5


def test_amounts_whose_sum_overflows_breach_and_the_state_still_restores() -> None:
    """Two positions of 1.7e308 each sum past the largest float. The counterparty's and
    the firm's amounts read as the largest float (past every limit, never no number),
    and the pipeline's state encodes and restores (the schema refuses infinities)."""
    from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
    from riskguard.schemas.types import MAX_FLOAT

    cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
        n: InstrumentSpec(kind="perp", base=b, quote="USD")
        for n, b in (("BTC-PERP", "BTC"), ("ETH-PERP", "ETH"))}))
    pipe = LocalPipeline(cfg)
    pipe.feed_all([
        *(Trade(id=f"t{n}", venue="okx", instrument=n, ts=S, price=1e154, qty=1.0,
                side="buy") for n in ("BTC-PERP", "ETH-PERP")),
        *(Fill(id=f"f{n}", venue="okx", counterparty="okx", instrument=n, side="sell",
               qty=1.7e154, price=1e154, ts=2 * S) for n in ("BTC-PERP", "ETH-PERP"))])
    latest = pipe.latest()
    for e in (latest["okx"], latest["*"]):
        assert (e.gross_notional, e.net_notional) == (MAX_FLOAT, -MAX_FLOAT)
        assert set(e.delta_by_underlying.values()) == {-1.7e308}
    restored = LocalPipeline(cfg, decode_snapshot(encode_snapshot(pipe.snapshot())))
    assert restored.latest() == latest
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    assert gross_levels(drive(logic, [latest["okx"]])) == [(latest["okx"].ts, "breach")]


def test_two_counterparties_past_the_largest_float_in_opposite_ways_are_no_firm_zero() -> None:
    """okx long and binance short 1e308 BTC at 60,000: each one's notional passes the
    largest float. The firm's net and BTC delta are inf - inf, no number: the largest
    float, past a firm net limit, never a 0 read as inside it."""
    from riskguard.schemas.types import MAX_FLOAT

    cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
        "BTC-PERP": InstrumentSpec(kind="perp", base="BTC", quote="USD")}))
    pipe = LocalPipeline(cfg)
    pipe.feed_all([
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=S, price=60_000.0, qty=1.0,
              side="buy"),
        *(PositionSnapshot(id=f"p{k}", venue=cp, counterparty=cp, instrument="BTC-PERP",
                           qty=qty, ts=(2 + k) * S)
          for k, (cp, qty) in enumerate((("okx", 1e308), ("binance", -1e308))))])
    firm = pipe.latest()["*"]
    assert (firm.net_notional, firm.delta_by_underlying) == (MAX_FLOAT, {"BTC": MAX_FLOAT})
    logic = LimitsLogic(LimitsConfig(firm={"net_notional": LimitSpec(limit=1e9)}),
                        clock=lambda: 0)
    assert [o.level.value for o in drive(logic, [firm]) if isinstance(o, LimitBreach)] == [
        "breach"]


def test_valued_again_inside_the_limit_clears_and_a_new_episode_alerts_again() -> None:
    """Breached by grace, then valued inside the limit: an ok breach record; unvalued
    again later: a new alert and a new grace period."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    drive(logic, [exposure(0, **UNVALUED)])
    assert gross_levels(drive(logic, [exposure(GRACE)])) == []  # valued at the deadline
    drive(logic, [exposure(GRACE + S, **UNVALUED)])
    assert gross_levels(drive(logic, [exposure(2 * GRACE + S, **UNVALUED)])) == [
        (2 * GRACE + S, "breach")]
    assert gross_levels(drive(logic, [exposure(2 * GRACE + 2 * S, 20.0)])) == [
        (2 * GRACE + 2 * S, "ok")]
    outs = drive(logic, [exposure(3 * GRACE, 20.0, **UNVALUED)])
    assert len(alerts(outs)) == 1 and gross_levels(outs) == []


def test_a_deadline_falls_at_the_same_time_whether_a_tick_or_an_exposure_shows_it() -> None:
    """Unvalued at 0, valued inside the limit at 40 s: with or without a tick at 35 s
    before it, the breach is stamped at 30 s and clears at 40 s."""
    def run(items: list[Any]) -> list[Any]:
        logic = LimitsLogic(gross_limit(), clock=lambda: 0)
        return [o for o in drive(logic, items) if not isinstance(o, Tick)]

    with_tick = run([exposure(0, **UNVALUED), tick(35 * S), exposure(40 * S, 20.0)])
    without = run([exposure(0, **UNVALUED), exposure(40 * S, 20.0)])
    assert gross_levels(with_tick) == [(GRACE, "breach"), (40 * S, "ok")]
    assert with_tick == without


def test_ticks_move_time_to_the_slowest_source() -> None:
    """Two tick sources: one at 40 s does not carry time past the other still at 10 s;
    the deadline falls once both have passed it."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    drive(logic, [exposure(0, **UNVALUED), tick(5 * S, "a"), tick(10 * S, "b")])
    assert gross_levels(drive(logic, [tick(40 * S, "a")])) == []
    assert gross_levels(drive(logic, [tick(31 * S, "b")])) == [(GRACE, "breach")]


def keyed_tick(ts: int, source: str, key_of: int) -> Progress:
    return Progress(counterparty="okx", ts=ts, source=source, of=2 * key_of,
                    key_of=key_of)


def test_a_source_announced_but_not_heard_holds_the_deadline() -> None:
    """Two sources announced for the key: one at 40 s does not pass the deadline while
    the other, whose valuation may still be on its way, has not ticked yet."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    drive(logic, [exposure(0, **UNVALUED)])
    assert gross_levels(drive(logic, [keyed_tick(40 * S, "a", 2)])) == []
    assert gross_levels(drive(logic, [exposure(5 * S, 20.0), keyed_tick(41 * S, "b", 2)])) == []
    assert logic.state.unvalued_due == -1  # valued again: no deadline pending


def test_with_several_sources_an_exposure_ahead_of_the_key_time_passes_no_deadline() -> None:
    """Several sources: one source's exposure at 45 s, still unvalued because the other
    source's part is behind, is not a clock; the other part values it at 5 s of its own
    time, and no breach is ever made. One source: the same 45 s exposure shows that time
    passed the deadline."""
    def run(key_of: int) -> list[Any]:
        logic = LimitsLogic(gross_limit(), clock=lambda: 0)
        out = drive(logic, [exposure(0, **UNVALUED), keyed_tick(S, "a", key_of)])
        if key_of == 2:
            out += drive(logic, [keyed_tick(S, "b", key_of)])
        return out + drive(logic, [exposure(45 * S, **UNVALUED), exposure(5 * S, 20.0),
                                   keyed_tick(50 * S, "a", key_of),
                                   keyed_tick(50 * S, "b", key_of)])

    assert gross_levels(run(2)) == []
    assert gross_levels(run(1))[0] == (GRACE, "breach")


def test_an_update_does_not_clear_a_breach_of_unvalued_exposure() -> None:
    """A limit update re-evaluates the last exposure (stamped with its older time): a
    limit breached by the grace stays breached while the exposure is unvalued."""
    logic = LimitsLogic(gross_limit(), clock=lambda: 0)
    drive(logic, [exposure(0, **UNVALUED), tick(GRACE)])
    upd = LimitUpdate(update_id="u1", issuer="admin", issued_at=GRACE, expires_at=10**18,
                      audience=AUD, limit_path="counterparty.okx", kind="gross_notional",
                      limit=200.0)
    outs = drive(logic, [upd])
    (u,) = [o for o in outs if isinstance(o, Utilization)]
    assert (u.effective_limit, u.level) == (200.0, LimitLevel.BREACH)


def test_collateral_with_no_fx_rate_breaches_the_collateral_limit_only() -> None:
    """Unvalued collateral counts against the collateral limit, not the gross one."""
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=100.0, unvalued_grace_ns=0),
        "collateral": LimitSpec(limit=100.0, unvalued_grace_ns=0)})})
    outs = drive(LimitsLogic(cfg, clock=lambda: 0),
                 [exposure(0, unvalued_collateral=["USDT"])])
    assert [b.kind for b in outs if isinstance(b, LimitBreach)] == ["collateral"]


def test_an_unknown_counterparty_with_unvalued_exposure_breaches_at_once() -> None:
    """Its zero limits fail closed: an unvalued position breaches its zero gross limit
    with no grace (its collateral is valued: that limit stays ok)."""
    outs = drive(LimitsLogic(gross_limit(), clock=lambda: 0),
                 [exposure(0, cp="kraken", **UNVALUED)])
    assert [(b.kind, b.level.value) for b in outs if isinstance(b, LimitBreach)] == [
        ("gross_notional", "breach")]


def test_a_negative_grace_is_a_config_error_naming_the_limit() -> None:
    """unvalued_grace_ns must be an integer >= 0."""
    with pytest.raises(ConfigError, match=r"counterparties.okx.limits.gross_notional"
                                          r".unvalued_grace_ns"):
        gross_limit(unvalued_grace_ns=-1).validate()
    gross_limit(unvalued_grace_ns=0).validate()


# -- the contract: the new state survives snapshot and resume --------------------------


def _episodes() -> list[Any]:
    """Exposures and ticks of two sources with unvalued episodes, breaches by grace and
    by value, and clears."""
    items: list[Any] = []
    for k in range(60):
        ts = k * 5 * S
        phase = (k // 12) % 3  # valued, unvalued, valued over the limit
        kw: dict[str, Any] = dict(UNVALUED) if phase == 1 else {}
        if k % 7 == 3:
            kw["unvalued_collateral"] = ["USDT"]
        gross = 150.0 if phase == 2 and k % 2 else 20.0 + k
        if k % 3:
            items.append(exposure(ts, gross, **kw))
        items.append(tick(ts, "a"))
        items.append(tick(ts - S, "b"))
    return items


LIMITS_CASE = Case("limits.unvalued", lambda s: LimitsLogic(
    msgspec.structs.replace(gross_limit(), firm={}), s, clock=lambda: 0), _episodes())


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract_with_unvalued_episodes(check: Any) -> None:
    """Snapshot pickles, is independent, resume equals uninterrupted (grace deadlines,
    tick sources and alerts included), input unmutated."""
    check(LIMITS_CASE)


def test_the_contract_case_covers_grace_breaches_and_clears() -> None:
    """The contract's events do reach grace deadlines, breaches and clears."""
    logic = LIMITS_CASE.builder(None)
    outs = [o for it in LIMITS_CASE.events for o in logic.on_event(it)]
    assert len(alerts(outs)) >= 2
    by_grace = [b for b in outs if isinstance(b, LimitBreach) and "unvalued" in b.inputs]
    assert by_grace and any(b.level is LimitLevel.OK for b in outs
                            if isinstance(b, LimitBreach))
