"""The guard core: the whole guard over a stream of decoded records, read top to bottom.

Wiring::

    records (market, venue_status, fills, positions, balances, limit_updates)
      -> admission (names past the [admission] caps: dead letters)
      -> feed selection (primary/backup failover)   keyed venue/instrument
      -> features -> anomalies                      same key: no extra exchange
      -> exposures -> limits (signed limit updates verified against the trust file)
      -> playbook (one key: global state, rare signals; its clock is the
         event-time ticks as the exposure path passes them on)
      -> sign -> commands
      -> audit log with signed checkpoints

The live flow (:func:`~riskguard.dataflows.guard.live.build_flow`) feeds it from Kafka;
backtests and stress runs feed it from files or generators. The steps it uses are in
:mod:`~riskguard.dataflows.guard.steps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from riskguard.connectors.topics import (
    DETECTED,
    HANDLED,
    Detection,
    TradingRecord,
)
from riskguard.dataflows.guard.admit import TickSpec
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.dataflows.guard.market import market_source
from riskguard.dataflows.guard.market_watch import watch_market_processes
from riskguard.dataflows.guard.steps import (
    FirmClock,
    detect_on,
    first_of_each_id,
    mark_filter,
    market_parts,
    market_ticks,
    monitor_builder,
    select_feeds,
    split_inputs,
    unhandled_letter,
)
from riskguard.operators.audit import AuditState
from riskguard.operators.audit.ops import audit_log
from riskguard.operators.core.base import (
    SplitOut,
    admit_keys,
    event_order,
    split_dead_letters,
    stateful_logic,
    values_of,
)
from riskguard.operators.core.clock import NS_PER_S, TICK_IDLE_NS, Clock, Tick
from riskguard.operators.core.metrics import record_command
from riskguard.operators.core.observe import observe_all
from riskguard.operators.exposure.limit_specs import concentration_levels
from riskguard.operators.exposure.limit_updates import trust_verifier
from riskguard.operators.exposure.ops import (
    LimitsOut,
    aggregate_exposure,
    enforce_limits,
    sum_exposures,
)
from riskguard.operators.mitigation import PlaybookInput
from riskguard.operators.mitigation.ops import plan_mitigation
from riskguard.operators.signing import decode_command
from riskguard.operators.signing.crypto import PAYLOAD_ACK, PAYLOAD_COMMAND, Signer
from riskguard.operators.signing.operator_commands import (
    ACKS_KEY,
    OPERATOR_COMMANDS_KEY,
    AckLogic,
    OperatorCommandLogic,
)
from riskguard.operators.signing.ops import sign_commands
from riskguard.operators.signing.trust import TrustStore
from riskguard.schemas import (
    AnomalySignal,
    Audience,
    AuditCheckpoint,
    AuditRecord,
    DeadLetter,
    ExecutionAck,
    Exposure,
    LimitBreach,
    MarketEvent,
    MitigationCommand,
    RiskAlert,
    SignedEnvelope,
    Utilization,
    VenueStatus,
)
from riskguard.schemas.base import Record
from riskguard.schemas.valuation import Progress


@dataclass(frozen=True)
class GuardOut:
    """Every output stream of the guard core."""

    commands: Stream[SignedEnvelope]
    audit: Stream[AuditRecord | AuditCheckpoint]
    signals: Stream[AnomalySignal | RiskAlert | LimitBreach]
    exposures: Stream[Exposure | Utilization]
    dead_letters: Stream[DeadLetter]


DetectedAndValued = tuple[Stream[AnomalySignal | RiskAlert], Stream[Exposure],
                          Stream[RiskAlert], Stream[Progress]]
"""A process's anomalies, exposures, exposure alerts and progress ticks."""


def _signed_inputs(records: Stream[Record], cfg: GuardConfig, trust: TrustStore, clock: Clock
                   ) -> tuple[Stream[SignedEnvelope], SplitOut[ExecutionAck],
                              SplitOut[MitigationCommand], Stream[DeadLetter]]:
    """What comes signed on the trading topics: limit updates (verified by the limits
    step), executors' acks and operator commands (verified here), and the records no step
    handles (dead letters)."""
    updates = op.flat_map_batch("updates", records, lambda rs: [
        r for r in rs if isinstance(r, SignedEnvelope)
        and r.payload_type not in (PAYLOAD_COMMAND, PAYLOAD_ACK)])
    # executors' acks, verified: the playbook escalates what was not applied; each counts
    # once (its executor's seq; the replay state is one snapshotted key)
    ack_envs = op.flat_map_batch("acks", records, lambda rs: [
        (ACKS_KEY, r) for r in rs
        if isinstance(r, SignedEnvelope) and r.payload_type == PAYLOAD_ACK])
    acks = split_dead_letters("verify_acks", op.flat_map_batch(
        "verify_ack_unkey", stateful_logic(
            "verify_ack", ack_envs, lambda state: AckLogic(
                trust, env=cfg.env, topic=cfg.topic("acks"), clock=clock, state=state)),
        values_of))
    # operator commands (a resume) reach the playbook only verified, approvals counted
    # from the signatures; each acts once (the replay state is one snapshotted key)
    operator_cmds = op.flat_map_batch("operator_cmds", records, lambda rs: [
        (OPERATOR_COMMANDS_KEY, r) for r in rs
        if isinstance(r, SignedEnvelope) and r.payload_type == PAYLOAD_COMMAND])
    commands_topic = cfg.topic("commands")
    verified = split_dead_letters("verify_operator", op.flat_map_batch(
        "verify_cmd_unkey", stateful_logic(
            "verify_cmd", operator_cmds, lambda state: OperatorCommandLogic(
                trust, env=cfg.env, topic=commands_topic, clock=clock, state=state)),
        values_of))
    unhandled = op.flat_map_batch("unhandled", records, lambda rs: [
        unhandled_letter(r) for r in rs if not isinstance(r, HANDLED)])
    return updates, acks, verified, unhandled


def _feed_monitor(status: Stream[VenueStatus], ticks: Stream[Tick], cfg: GuardConfig,
                  clock: Clock
                  ) -> Stream[RiskAlert]:
    """The feed monitor's alerts: each configured venue's primary and backup feeds
    judged on their heartbeats and the ticks."""
    fcfg = cfg.feeds
    feed_venues = tuple(fcfg.venues)

    def monitor_keys(r: Any) -> list[tuple[str, Any]]:
        if isinstance(r, VenueStatus):
            return [(r.venue, r)]
        return [(v, r) for v in feed_venues]

    monitor_in = op.flat_map("monitor_key", op.merge("monitor_src", status, ticks), monitor_keys)
    return op.map(
        "monitor_unkey",
        stateful_logic("feed_monitor", monitor_in, monitor_builder(fcfg, clock),
                       order=event_order),
        lambda kv: kv[1],
    )


def _detect_and_value(market: Stream[MarketEvent], status: Stream[VenueStatus],
                      trading: Stream[TradingRecord],
                      ticks: Stream[Tick], cfg: GuardConfig, clock: Clock,
                      wall_clock: Clock | None, timed: Stream[Record | Tick],
                      step_errs: list[Stream[DeadLetter]], watch: Any = None,
                      ) -> DetectedAndValued:
    """A process that reads market and trading data: its anomalies, exposures, exposure
    alerts and progress; the steps' dead letters join ``step_errs``. ``timed``: what
    passed the admission gate, its ticks in their places."""
    market_ok = select_feeds(market, status, cfg, None)
    anomalies, detect_errs = detect_on(market_ok, status, cfg, clock, None, timed=timed,
                                        watch=watch)
    step_errs.extend(detect_errs)
    exposure = aggregate_exposure(
        "exposure", market_ok, trading, config=cfg.exposure, clock=clock, ticks=ticks,
        wall_clock=wall_clock, concentration_levels=concentration_levels(cfg.limits),
        marks=mark_filter(cfg))
    step_errs.append(exposure.errs)
    return anomalies, exposure.exposures, exposure.alerts, exposure.progress


def _own_ticks(cfg: GuardConfig, tick_sources: int) -> TickSpec:
    """This process's ticks, from every record it reads (fills during a market-data outage
    must still be valued); the firm's from its own input, not the detections topic's."""
    if cfg.tier.role == "firm":
        return TickSpec(cfg.tick_ns, of=tick_sources + cfg.tier.market_processes,
                        untimed=DETECTED)
    return TickSpec(cfg.tick_ns, of=tick_sources)


def _clock_of(records: Stream[Record], own: Stream[Tick], cfg: GuardConfig, clock: Clock
              ) -> tuple[Stream[Record], Stream[Detection] | None, Stream[Tick], Stream[Tick]]:
    """The records this process handles itself, the firm's detections (None elsewhere),
    every tick and this process's own ticks (``own``)."""
    firm = cfg.tier.role == "firm"
    processes = cfg.tier.market_processes
    detected_in: Stream[Detection] | None = None
    if firm:
        detected_in = op.flat_map_batch("detected", records,
                                        lambda rs: [r for r in rs if isinstance(r, DETECTED)])
        records = op.flat_map_batch("not_detected", records,
                                    lambda rs: [r for r in rs if not isinstance(r, DETECTED)])
    ticks = own_ticks = own
    if detected_in is not None:
        # the firm's own ticks wait for a restarting market process; each market process
        # is one more tick source
        own_ticks = op.flat_map_batch(
            "firm_clock", op.merge("firm_clock_in", own_ticks, detected_in),
            FirmClock([market_source(i) for i in range(processes)],
                      int(cfg.tier.market_wait_s * NS_PER_S), clock))
        ticks = op.merge("all_ticks", own_ticks, op.flat_map_batch(
            "market_ticks", detected_in, market_ticks(processes)))
    return records, detected_in, ticks, own_ticks


@operator
def guard_core(
    step_id: str,
    records: Stream[Record],
    *,
    cfg: GuardConfig,
    cfg_hash: str,
    clock: Clock,
    signer: Signer,
    trust: TrustStore,
    seq_floor: int | None = None,
    wall_clock: Clock | None = None,
    audit_resume: dict[str, AuditState] | None = None,
    input_errs: Stream[DeadLetter] | None = None,
    tick_sources: int = 0,
    watch: Any = None,
) -> GuardOut:
    """The whole guard over a stream of decoded records, whatever their source (Kafka,
    files, generators): the single implementation of the guard logic.

    ``seq_floor``: the highest seq already delivered; ``audit_resume``: each audit
    chain's state (:func:`~riskguard.connectors.audit_tail.read_audit_tail`);
    ``wall_clock`` (live only) lets a fill's re-valuation boundary pass by wall time.
    With ``tier.role = "firm"`` it sums the market processes' parts and takes their
    signals. ``tick_sources``: the sources its own ticks count (1 live, 0 in a replay).
    ``input_errs``: the source's dead letters, audited and passed on. ``watch``
    (:class:`~riskguard.dataflows.readiness.DetectorWatch`) sees what the detectors get.
    """
    admitted = admit_keys("admit", records, config=cfg.admission, known=known_names(cfg),
                          clock=clock, make_ticks=_own_ticks(cfg, tick_sources).maker)
    records, detected_in, ticks, own_ticks = _clock_of(admitted.oks, admitted.ticks, cfg,
                                                       clock)
    market, records, status, trading = split_inputs(records)
    updates, acks, verified, unhandled = _signed_inputs(records, cfg, trust, clock)
    feed_alerts = _feed_monitor(status, ticks, cfg, clock)
    step_errs: list[Stream[DeadLetter]] = []
    anomalies, exposures, exposure_alerts, progress = (
        _from_market_processes(detected_in, own_ticks, cfg, clock) if detected_in is not None
        else _detect_and_value(market, status, trading, ticks, cfg, clock, wall_clock,
                               admitted.timed, step_errs, watch))
    limits = enforce_limits(
        "limits", exposures, updates, config=cfg.limits, clock=clock, progress=progress,
        idle_ns=source_wait_ns(cfg),
        verifier=trust_verifier(trust, Audience(env=cfg.env, topic=cfg.topic("limit_updates"))))
    signals, to_playbook = _signals(anomalies, exposure_alerts, feed_alerts, admitted.alerts,
                                    limits)
    signed, errs, audit = _decide(
        signals, to_playbook, verified.oks, acks.oks, cfg=cfg, cfg_hash=cfg_hash, clock=clock,
        wall_clock=wall_clock, signer=signer, seq_floor=seq_floor, audit_resume=audit_resume,
        trust_serial=trust.serial, errs_before=[admitted.errs, *step_errs, limits.errs],
        errs_after=[verified.errs, acks.errs, unhandled,
                    *([input_errs] if input_errs is not None else [])])
    return GuardOut(
        commands=op.map("observe_commands", signed, _observe_command(clock)),
        audit=audit, signals=signals, dead_letters=errs,
        exposures=op.flat_map_batch("observe_exposures", op.merge(
            "exp_util", exposures, limits.utilizations), observe_all))


def _signals(anomalies: Stream[AnomalySignal | RiskAlert], exposure_alerts: Stream[RiskAlert],
             feed_alerts: Stream[RiskAlert], admission_alerts: Stream[RiskAlert],
             limits: LimitsOut,
             ) -> tuple[Stream[AnomalySignal | RiskAlert | LimitBreach], Stream[PlaybookInput]]:
    """Every signal (the guard's output and the audit's input), and the playbook's
    input: the same, with the limits' breaches and alerts in order with their ticks
    (``LimitsOut.clocked``)."""
    signals = op.flat_map_batch("observe_signals", op.merge(
        "signals", anomalies, exposure_alerts, limits.breaches, limits.alerts, feed_alerts,
        admission_alerts), observe_all)
    to_playbook = op.merge("to_playbook", anomalies, exposure_alerts, limits.clocked,
                           feed_alerts, admission_alerts)
    return signals, to_playbook


def _decide(signals: Stream[AnomalySignal | RiskAlert | LimitBreach],
            to_playbook: Stream[PlaybookInput], manual: Stream[MitigationCommand],
            acks: Stream[ExecutionAck], *, cfg: GuardConfig, cfg_hash: str, clock: Clock,
            wall_clock: Clock | None, signer: Signer, seq_floor: int | None,
            audit_resume: dict[str, AuditState] | None, trust_serial: int,
            errs_before: list[Stream[DeadLetter]], errs_after: list[Stream[DeadLetter]],
            ) -> tuple[Stream[SignedEnvelope], Stream[DeadLetter],
                       Stream[AuditRecord | AuditCheckpoint]]:
    """The playbook, signing and the audit log: the signed commands, every dead letter
    and the audit records."""
    # the playbook's clock is the ticks as the exposure path passes them on: in a backlog
    # its queues are longest, and a breach must not arrive after time has moved past it
    planned = plan_mitigation(
        "playbook", op.merge("playbook_in", to_playbook, manual, acks),
        config=cfg.playbook, clock=clock, wall_clock=wall_clock,
        idle_ns=source_wait_ns(cfg),
    )
    signed = sign_commands("sign", planned.oks, signer, config=cfg.sign, seq_floor=seq_floor,
                           trust_serial=trust_serial)
    errs: Stream[DeadLetter] = op.flat_map_batch("observe_errs", op.merge(
        "errs", *errs_before, planned.errs, signed.errs, *errs_after), observe_all)
    audit_cfg = msgspec.structs.replace(cfg.audit, config_hash=cfg_hash)
    audit = op.flat_map_batch("observe_audit", audit_log(
        "audit", op.merge("decisions", signals, planned.oks, acks, errs), signer=signer,
        config=audit_cfg, resume=audit_resume), observe_all)
    return signed.oks, errs, audit


def source_wait_ns(cfg: GuardConfig) -> int:
    """How long (processing time) the limits' and the playbook's clocks wait for a silent
    tick source: in the market tier's firm, ``tier.market_wait_s``, so a market process
    restarted within it holds them at its progress however far the others run (the
    firm's own ticks, held with it, stop moving while it is gone); elsewhere
    ``TICK_IDLE_NS``."""
    if cfg.tier.role == "firm":
        return int(cfg.tier.market_wait_s * NS_PER_S)
    return TICK_IDLE_NS


def _from_market_processes(detected_in: Stream[Detection], own_ticks: Stream[Tick],
                           cfg: GuardConfig, clock: Clock,
                           ) -> DetectedAndValued:
    """The firm process: the market processes' anomalies (each id once), exposures,
    alerts and progress summed from their parts, and silent-process alerts."""
    anomalies = first_of_each_id(detected_in, cfg.tier.recent_ids)
    summed = sum_exposures("exposure", market_parts(detected_in, own_ticks, cfg),
                           config=cfg.exposure, clock=clock,
                           concentration_levels=concentration_levels(cfg.limits))
    silent = watch_market_processes(detected_in, own_ticks,
                                    processes=cfg.tier.market_processes,
                                    wait_s=cfg.tier.market_wait_s, clock=clock)
    alerts = op.merge("firm_alerts", summed.alerts, silent)
    return anomalies, summed.exposures, alerts, summed.progress


def _observe_command(clock: Clock) -> Any:
    """A map step counting each signed command (its action, scope kind and latency)."""

    def observe(env: SignedEnvelope) -> SignedEnvelope:
        cmd = decode_command(env)
        record_command(cmd.action.value, cmd.scope.kind.value, cmd.recv_ts, clock())
        return env

    return observe
