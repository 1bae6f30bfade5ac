"""Thin bytewax adapters: ``aggregate_exposure`` and ``enforce_limits``.

They only route records between keyed stages (the logic lives in
:mod:`riskguard.operators.exposure`): ``valuation`` (a shard of instruments and
collateral assets), ``counterparty``, ``firm`` (key ``"firm"``) and ``limits`` (by
counterparty, ``"*"`` for the firm). A record crosses workers at most once per stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from riskguard.operators.core.base import stateful_logic, values_of
from riskguard.operators.core.clock import TICK_IDLE_NS, Clock, Tick, system_clock
from riskguard.operators.core.metrics import reorder_counter
from riskguard.operators.exposure.config import FIRM_KEY, ExposureConfig
from riskguard.operators.exposure.limit_specs import LimitsConfig
from riskguard.operators.exposure.limit_updates import (
    UPDATES_KEY,
    UpdateGate,
    Verifier,
)
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.exposure.mark_filter import MarkFilterSpec
from riskguard.operators.exposure.rollup import CounterpartyLogic, FirmLogic
from riskguard.operators.exposure.routing import Router, ShardPlace
from riskguard.operators.exposure.shards import ShardLogic
from riskguard.schemas import (
    DeadLetter,
    Exposure,
    LimitBreach,
    RiskAlert,
    SignedEnvelope,
    Utilization,
    encode,
)
from riskguard.schemas.base import Record
from riskguard.schemas.valuation import Part, Progress


@dataclass(frozen=True)
class ExposureOut:
    """Outputs of :func:`aggregate_exposure`."""

    exposures: Stream[Exposure]
    alerts: Stream[RiskAlert]
    errs: Stream[DeadLetter]
    # with ``ticks``: each tick, behind the exposures before it, for :func:`enforce_limits`
    progress: Stream[Progress]


@dataclass(frozen=True)
class LimitsOut:
    """Outputs of :func:`enforce_limits`."""

    utilizations: Stream[Utilization]
    breaches: Stream[LimitBreach]
    alerts: Stream[RiskAlert]
    errs: Stream[DeadLetter]
    # each ``progress`` tick once its limits key has handled what came before it, named
    # ``<source>/<key>``
    ticks: Stream[Tick]
    # breaches, alerts and ticks in the order each limits key made them, for a consumer
    # clocked by the ticks (the playbook); merging ``breaches`` and ``ticks`` again
    # would not keep that order
    clocked: Stream[LimitBreach | RiskAlert | Tick]


# per-item predicates are on the hot path: C-level or one-liners; the rest is per batch
_IS_TUPLE: Callable[[Any], bool] = tuple.__instancecheck__
_IS_PROGRESS: Callable[[Any], TypeGuard[Progress]] = Progress.__instancecheck__  # type: ignore[assignment]


def _IS_PART(kv: tuple[str, Any]) -> bool:
    t = type(kv[1])
    return t is Part or t is Progress


def _IS_EXPOSURE(kv: tuple[str, Any]) -> bool:
    t = type(kv[1])
    return t is Exposure or t is Progress


def _by_counterparty(parts: list[Part | Progress]) -> list[tuple[str, Part | Progress]]:
    return [(c.counterparty, c) for c in parts]


def _to_firm(kvs: list[tuple[str, Exposure]]) -> list[tuple[str, Exposure]]:
    return [(FIRM_KEY, e) for _k, e in kvs]


@operator
def aggregate_exposure(
    step_id: str,
    up: Stream[Record],
    *more: Stream[Record],
    config: ExposureConfig,
    clock: Clock = system_clock,
    ticks: Stream[Tick] | None = None,
    wall_clock: Clock | None = None,
    concentration_levels: Mapping[str, Sequence[float]] | None = None,
    marks: MarkFilterSpec | None = None,
) -> ExposureOut:
    """Per-counterparty and firm-wide exposure from fills, positions, balances and marks.

    Emits an :class:`~riskguard.schemas.Exposure` per counterparty (with its
    concentration) and the firm rollup (``counterparty == "*"``).

    Without ``ticks``, exposures are re-valued once per input batch (so the output depends
    on batching). With ``ticks``, once per tick, stamped with its time, so a replay is
    batching-independent, and ``progress`` carries each tick on for :func:`enforce_limits`;
    a position record then waits for the next ``config.position_revalue_ns`` boundary (and,
    with ``wall_clock``, that much wall time: replays leave it out).
    ``concentration_levels`` (the limits' ``limit_specs.concentration_levels``): a
    counterparty's concentration is sent again when it crosses one of its levels,
    however little it moved. ``marks``: the shards' mark filter (none: every price).

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from riskguard.operators.exposure import InstrumentSpec, InstrumentsConfig
    >>> from riskguard.schemas import Fill, Quote
    >>> cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
    ...     "ETH-PERP": InstrumentSpec(kind="perp", base="ETH", quote="USD")}))
    >>> flow = Dataflow("doc")
    >>> inp = op.input("in", flow, TestingSource([
    ...     Quote(id="q1", venue="okx", instrument="ETH-PERP", ts=1, bid=99.0, bid_size=1.0,
    ...           ask=101.0, ask_size=1.0),
    ...     Fill(id="f1", venue="okx", counterparty="okx", instrument="ETH-PERP",
    ...          side="sell", qty=3.0, price=110.0, ts=2),
    ...     Fill(id="f2", venue="okx", counterparty="okx", instrument="NOPE",
    ...          side="buy", qty=1.0, price=1.0, ts=3)]))
    >>> out = aggregate_exposure("exposure", inp, config=cfg, clock=lambda: 0)
    >>> exps, bad = [], []
    >>> op.output("e", out.exposures, TestingSink(exps)); op.output("x", out.errs, TestingSink(bad))
    >>> run_main(flow)
    >>> [(e.counterparty, e.net_notional, e.unrealized_pnl, e.concentration) for e in exps]
    [('okx', -300.0, 30.0, 1.0), ('*', -300.0, 30.0, 1.0)]
    >>> [(d.reason, d.found) for d in bad]
    [('unknown_instrument', 'NOPE')]
    """
    reg = config.validate(f"step '{step_id}'")
    ticked = ticks is not None
    inputs: list[Stream[Record | Tick]] = [up, *more, *([ticks] if ticks is not None else [])]
    merged = op.merge("merge", *inputs) if len(inputs) > 1 else up
    made, errs = valuation_steps(step_id, merged, config, reg, ticked=ticked, clock=clock,
                        wall_clock=wall_clock, place=None, marks=marks)
    s1 = op.branch("parts", made, _IS_PART)
    alerts1 = op.flat_map_batch("alerts1", s1.falses, values_of)
    summed = _sum(config, op.flat_map_batch("unkey1", s1.trues, values_of), ticked=ticked,
                  clock=clock, levels=concentration_levels)
    return ExposureOut(exposures=summed.exposures, errs=errs, progress=summed.progress,
                       alerts=op.merge("alerts", alerts1, summed.alerts))


@dataclass(frozen=True)
class ValuedOut:
    """Outputs of :func:`value_positions`."""

    # everything stage 1 made, in order: Part, Progress and RiskAlert items
    made: Stream[Part | Progress | RiskAlert]
    errs: Stream[DeadLetter]


@dataclass(frozen=True)
class SumOut:
    """Outputs of :func:`sum_exposures`."""

    exposures: Stream[Exposure]
    alerts: Stream[RiskAlert]
    progress: Stream[Progress]


def valuation_steps(step_id: str, merged: Stream[Record | Tick], config: ExposureConfig,
                    reg: Any, *, ticked: bool, clock: Clock, wall_clock: Clock | None,
                    place: ShardPlace | None, marks: MarkFilterSpec | None = None,
                    ) -> tuple[KeyedStream[Any], Stream[DeadLetter]]:
    """Stage 1's steps (valuation shards) inside the calling operator: what the shards
    made (keyed by shard), and the records routing refused."""
    router = Router(reg, config, step_id, place)

    def route_batch(evs: list[Any]) -> list[Any]:
        return router.route_batch(evs, clock())

    routed = op.branch("split", op.flat_map_batch("route", merged, route_batch), _IS_TUPLE)
    count_reorder = reorder_counter(f"{step_id}.valuation")

    def build_val(state: Any) -> ShardLogic:
        return ShardLogic(config, reg, state, ticked=ticked, clock=clock,
                          wall_clock=wall_clock, forward_ticks=ticked,
                          on_reorder=count_reorder, place=place, marks=marks)

    return stateful_logic("valuation", routed.trues, build_val), routed.falses


def _sum(config: ExposureConfig, parts: Stream[Part | Progress], *, ticked: bool,
         clock: Clock, levels: Mapping[str, Sequence[float]] | None = None) -> SumOut:
    """Stages 2 and 3's steps (counterparty, firm) inside the calling operator."""
    contribs = op.flat_map_batch("by_cp", parts, _by_counterparty)

    def build_cp(state: Any) -> CounterpartyLogic:
        return CounterpartyLogic(config, state, ticked=ticked, clock=clock)

    s2 = op.branch("exposures", stateful_logic("counterparty", contribs, build_cp), _IS_EXPOSURE)
    alerts2 = op.flat_map_batch("alerts2", s2.falses, values_of)
    to_firm = op.flat_map_batch("to_firm", s2.trues, _to_firm)

    def build_firm(state: Any) -> FirmLogic:
        return FirmLogic(config, state, ticked=ticked, concentration_levels=levels)

    firm_out = op.branch("progress", op.flat_map_batch(
        "unkey3", stateful_logic("firm", to_firm, build_firm), values_of),
        _IS_PROGRESS)
    return SumOut(exposures=firm_out.falses, alerts=alerts2, progress=firm_out.trues)


@operator
def value_positions(
    step_id: str,
    up: Stream[Record],
    *more: Stream[Record],
    config: ExposureConfig,
    place: ShardPlace,
    ticks: Stream[Tick],
    clock: Clock = system_clock,
    wall_clock: Clock | None = None,
    marks: MarkFilterSpec | None = None,
) -> ValuedOut:
    """Stage 1 of :func:`aggregate_exposure` alone, for one market process (docs/scaling.md,
    "The market tier"): what ``place`` owns valued once per tick, as
    :class:`~riskguard.schemas.Part` items each followed by its tick as a
    :class:`~riskguard.schemas.Progress`, with stage 1's alerts in the order made, for
    :func:`sum_exposures` in the firm process.

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from riskguard.operators.exposure import InstrumentSpec, InstrumentsConfig
    >>> from riskguard.schemas import Fill, Trade
    >>> cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
    ...     "BTC-PERP": InstrumentSpec(kind="perp", base="BTC", quote="USD")}))
    >>> flow = Dataflow("doc")
    >>> inp = op.input("in", flow, TestingSource([
    ...     Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=1, price=100.0, qty=1.0,
    ...           side="buy"),
    ...     Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-PERP",
    ...          side="buy", qty=2.0, price=90.0, ts=2),
    ...     Tick(ts=5, source="detect/w0", of=1)]))
    >>> place = ShardPlace("m0.", lambda name: True, 2)  # owns all; 2 market processes
    >>> recs = op.filter("recs", inp, lambda r: not isinstance(r, Tick))
    >>> out = value_positions("exposure", recs, config=cfg, place=place,
    ...                       ticks=op.filter("ticks", inp, Tick.__instancecheck__))
    >>> got = []
    >>> op.output("parts", out.made, TestingSink(got))
    >>> run_main(flow)
    >>> [(type(p).__name__, p.counterparty, p.ts) for p in got][:2]
    [('Part', 'okx', 5), ('Progress', '~progress', 5)]
    >>> got[0].shard, got[0].gross, got[1].source, got[1].of
    ('m0.s0', 200.0, 'detect/w0@m0.s0', 2)
    """
    reg = config.validate(f"step '{step_id}'")
    merged: Stream[Record | Tick] = op.merge("merge", up, *more, ticks)
    made, errs = valuation_steps(step_id, merged, config, reg, ticked=True, clock=clock,
                        wall_clock=wall_clock, place=place, marks=marks)
    return ValuedOut(made=op.flat_map_batch("unkey", made, values_of), errs=errs)


@operator
def sum_exposures(step_id: str, parts: Stream[Part | Progress], *,
                  config: ExposureConfig, clock: Clock = system_clock,
                  concentration_levels: Mapping[str, Sequence[float]] | None = None
                  ) -> SumOut:
    """Stages 2 and 3 of :func:`aggregate_exposure` over the parts and progress that
    market processes' :func:`value_positions` made (ticked): per-counterparty exposures,
    their concentration and the firm rollup, and the progress behind them for
    :func:`enforce_limits`. A counterparty's exposure re-sums its latest part from
    every market process's shard. ``clock`` (processing time) only lets a silent market
    process stop holding the counterparties' time back."""
    config.validate(f"step '{step_id}'")
    return _sum(config, parts, ticked=True, clock=clock, levels=concentration_levels)


@operator
def enforce_limits(
    step_id: str,
    exposures: Stream[Exposure],
    updates: Stream[SignedEnvelope] | None = None,
    *,
    config: LimitsConfig,
    verifier: Verifier,
    clock: Clock = system_clock,
    progress: Stream[Progress] | None = None,
    idle_ns: int = TICK_IDLE_NS,
) -> LimitsOut:
    """Utilizations and breaches of the limit hierarchy, with signed runtime updates.

    ``progress`` (``aggregate_exposure(..., ticks=...).progress``) comes out on
    ``LimitsOut.ticks`` as :class:`~riskguard.operators.core.clock.Tick` items, each
    behind what its key made before it (in ``LimitsOut.clocked``, in that order); a
    source silent for ``idle_ns`` of processing time stops holding a key's time back.
    ``verifier(envelope, now_ns)`` returns the verified
    :class:`~riskguard.schemas.LimitUpdate` (with its approvals, ``Approved``, as
    ``trust_verifier``'s does, for the two-person cap) or raises
    :class:`~riskguard.errors.VerificationError`: a refused update is a
    ``limit_update_rejected`` alert, and the old limit stays. Updates set limits on at
    most ``MAX_UPDATED_COUNTERPARTIES`` counterparties the config does not list.

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from riskguard.operators.exposure.limit_specs import CounterpartyLimits, LimitSpec
    >>> cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
    ...     limits={"gross_notional": LimitSpec(limit=100.0)})})
    >>> from riskguard.errors import VerificationError
    >>> def refuse(env, now):
    ...     raise VerificationError("unsigned")
    >>> flow = Dataflow("doc")
    >>> exps = op.input("in", flow, TestingSource([
    ...     Exposure(counterparty="okx", ts=1, gross_notional=50.0, net_notional=50.0),
    ...     Exposure(counterparty="okx", ts=2, gross_notional=150.0, net_notional=150.0,
    ...              evidence_ids=["f9"]),
    ...     Exposure(counterparty="kraken", ts=3, gross_notional=1.0, net_notional=1.0)]))
    >>> out = enforce_limits("limits", exps, None, config=cfg, verifier=refuse, clock=lambda: 0)
    >>> br, al = [], []
    >>> op.output("br", out.breaches, TestingSink(br)); op.output("al", out.alerts, TestingSink(al))
    >>> run_main(flow)
    >>> for b in br:
    ...     print(b.limit_path, b.kind, b.level.value, b.utilization, b.evidence_ids)
    counterparty.okx gross_notional breach 1.5 ['f9']
    counterparty.kraken gross_notional breach 1000000.0 []
    >>> [a.kind for a in al]
    ['unknown_counterparty']
    """
    config.validate(f"step '{step_id}'")
    merged = _limits_input(step_id, exposures, updates, progress, config, verifier, clock)
    keyed = op.branch("keyed", merged, _IS_TUPLE)
    unkeyed = op.branch("errs", keyed.falses, DeadLetter.__instancecheck__)
    errs, pre_alerts = unkeyed.trues, unkeyed.falses

    def build(state: Any) -> LimitsLogic:
        return LimitsLogic(config, state, clock=clock, idle_ns=idle_ns)

    made = op.flat_map_batch("unkey", stateful_logic("limits", keyed.trues, build), values_of)
    return _limits_out(made, pre_alerts, errs)


def _limits_input(step_id: str, exposures: Stream[Exposure],
                  updates: Stream[SignedEnvelope] | None, progress: Stream[Progress] | None,
                  config: LimitsConfig, verifier: Verifier, clock: Clock) -> Stream[Any]:
    """The limits logic's input: exposures and progress keyed by counterparty, verified
    updates keyed by limits key; dead letters and refused updates' alerts unkeyed."""
    streams = [op.flat_map_batch("key_exp", exposures, _keyed_exposures(step_id, clock))]
    if progress is not None:
        streams.append(op.flat_map_batch(
            "key_progress", progress, lambda ps: [(p.counterparty, p) for p in ps]))
    if updates is not None:
        keyed = op.map("key_updates", updates, lambda env: (UPDATES_KEY, env))
        gated = stateful_logic("verify", keyed, lambda state: UpdateGate(
            config, verifier, clock=clock, state=state))
        streams.append(op.flat_map_batch("unkey_updates", gated, values_of))
    return op.merge("merge", *streams) if len(streams) > 1 else streams[0]


def _keyed_exposures(step_id: str, clock: Clock) -> Any:
    """A batch step: each exposure keyed by its counterparty; anything else a dead
    letter."""

    def key(es: list[Any]) -> list[Any]:
        return [(e.counterparty, e) if type(e) is Exposure else DeadLetter.of(
            topic="exposure", ts=clock(), reason="unexpected_type", expected="exposure",
            found=type(e).__name__, step=step_id,
            raw=encode(e) if hasattr(e, "__struct_fields__") else b"") for e in es]

    return key


def _limits_out(made: Stream[Any], pre_alerts: Stream[Any], errs: Stream[DeadLetter],
                ) -> LimitsOut:
    """What the limits logic made, by type: ticks, utilizations, breaches and alerts
    (with those raised before it, by the update verification)."""
    u = op.branch("utils", made, Utilization.__instancecheck__)
    # u.falses keeps breaches, alerts and ticks in the order made
    done = op.branch("ticks", u.falses, Tick.__instancecheck__)
    b = op.branch("breaches", done.falses, LimitBreach.__instancecheck__)
    return LimitsOut(utilizations=u.trues, breaches=b.trues, errs=errs, ticks=done.trues,
                     alerts=op.merge("alerts", pre_alerts, b.falses),
                     clocked=op.merge("clocked", pre_alerts, u.falses))
