"""The guard split into tiers: a detect tier and market processes feeding a firm tier.

- ``tier.role = "detect"``: :func:`detect_core` (features and anomalies only), its
  signals and progress to the ``detections`` topic (:func:`_detect_flow`);
- ``tier.role = "market"``: :func:`market_core`, a market process valuing the
  positions in the underlyings it owns, its parts to the ``detections`` topic
  (:func:`_market_flow`);
- ``tier.role = "firm"``: :func:`~riskguard.dataflows.guard.core.guard_core` over
  those topics (:func:`~riskguard.dataflows.guard.live.build_flow`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from riskguard.connectors.kafka import kafka_output
from riskguard.connectors.placement import (
    LocalKeys,
    MarketOwners,
    StartSignal,
)
from riskguard.dataflows.guard.config import (
    DETECT_STREAMS,
    DETECTIONS,
    MARKET_STREAMS,
    GuardConfig,
    _split,
)
from riskguard.dataflows.guard.kafka_io import _input
from riskguard.dataflows.guard.steps import (
    MarkFilter,
    _detect,
    _detect_on,
    _detect_source,
    _market_records,
    _progress,
    _select_feeds,
    _split_inputs,
    _status_records,
    _tick_fn,
    _with_own_index,
)
from riskguard.operators.core.base import (
    split_dead_letters,
    stateful_logic,
    values_of,
)
from riskguard.operators.core.clock import Clock
from riskguard.operators.core.end_of_input import FinalProgressLogic
from riskguard.operators.core.observe import observe_all
from riskguard.operators.detection.detect_watch import detect_worker
from riskguard.operators.exposure import ShardPlace
from riskguard.operators.exposure.ops import (
    value_positions,
)
from riskguard.schemas import (
    DeadLetter,
    FundingRate,
    OptionQuote,
    Quote,
    RiskAlert,
    Trade,
    encode,
)
from riskguard.schemas.valuation import Part, Progress, encode_valuations


@dataclass(frozen=True)
class DetectOut:
    """The detect tier's outputs."""

    detections: Stream[Any]  # AnomalySignal and DetectProgress
    dead_letters: Stream[DeadLetter]


@operator
def detect_core(
    step_id: str,
    records: Stream[Any],
    *,
    cfg: GuardConfig,
    clock: Clock,
    local_keys: Callable[[str], bool] | None = None,
) -> DetectOut:
    """The detect tier over decoded market and venue-status records: feed selection,
    features and anomaly detection (the same steps as :func:`guard_core`'s), and this
    worker's event-time progress behind the signals of the records before it."""
    ticks = op.flat_map_batch("ticks", records, _tick_fn(cfg.tick_ns))
    market = op.flat_map_batch("market", records, _market_records)
    status = op.flat_map_batch("status", records, _status_records)
    market_ok = _select_feeds(market, status, cfg, local_keys)
    anomalies, errs = _detect(market, market_ok, status, cfg, clock, local_keys)
    # the signals first: a batch's progress goes out behind its signals
    detections = op.merge("detections", anomalies,
                          op.flat_map_batch("progress", ticks, _progress))
    dead = op.flat_map_batch("observe_errs", op.merge("errs", *errs), observe_all)
    return DetectOut(detections=detections, dead_letters=dead)


def market_owners(cfg: GuardConfig) -> MarketOwners:
    """What this market process owns (``[tier]``: ``index`` of ``detect_workers``,
    ``owners``), underlyings taken from the instruments ``[exposure]`` declares."""
    reg = cfg.exposure.validate()

    def underlying_of(name: str) -> str | None:
        spec = reg.get(name)
        return None if spec is None else spec.underlying_asset

    tier = cfg.tier
    return MarketOwners(tier.index, tier.detect_workers, tier.owners, underlying_of)


_PRICED = (Trade, Quote, OptionQuote, FundingRate)


def _owned_records(owners: MarketOwners, market_topic: str) -> Callable[[list[Any]], list[Any]]:
    """A market process's share of what it read: its own underlyings' records, every
    index price and heartbeat. A market record its Kafka key brought here (the market
    topic is split by key) but whose instrument another process owns was keyed by
    something other than ``<venue>/<instrument>``: no other process has it, so it is a
    ``misplaced`` dead letter rather than lost."""
    index = owners.index
    of_instrument = owners.of_instrument
    keeps = owners.keeps

    def misplaced(rec: Any) -> DeadLetter:
        return DeadLetter.of(
            topic=market_topic, ts=rec.ts, reason="misplaced", path="$.instrument",
            expected=(f"a record of an underlying market process {index} owns, keyed "
                      "<venue>/<instrument>"),
            found=f"{rec.venue}/{rec.instrument}", step="market_owners", raw=encode(rec))

    def own(recs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for r in recs:
            if isinstance(r, _PRICED):
                out.append(r if of_instrument(r.instrument) == index else misplaced(r))
            elif keeps(r):
                out.append(r)
        return out

    return own


def _valuation_records(source: str) -> Callable[[list[Any]], list[bytes]]:
    """A market process's stage-1 output as encoded :class:`~riskguard.schemas.Valuation`
    records from ``source``: alerts, then parts, then progress, cut into records of
    about ``VALUATION_CHUNK_BYTES`` (:func:`~riskguard.schemas.valuation.encode_valuations`)."""

    def pack(made: list[Any]) -> list[bytes]:
        alerts: list[RiskAlert] = []
        parts: list[Part] = []
        progress: list[Progress] = []
        # one pass (stage 1 makes nothing else: another type is a bug, and raises)
        to: dict[type, Callable[[Any], None]] = {
            RiskAlert: alerts.append, Part: parts.append, Progress: progress.append}
        for x in made:
            to[type(x)](x)
        return encode_valuations(source, alerts, parts, progress)

    return pack


@dataclass(frozen=True)
class MarketOut:
    """A market process's outputs."""

    # AnomalySignal and DetectProgress records, and encoded Valuation records (bytes)
    detections: Stream[Any]
    dead_letters: Stream[DeadLetter]


@operator
def market_core(
    step_id: str,
    records: Stream[Any],
    *,
    cfg: GuardConfig,
    clock: Clock,
    owners: MarketOwners,
    wall_clock: Clock | None = None,
) -> MarketOut:
    """One market process (``tier.role = "market"``) over its decoded records: feed
    selection, features and anomaly detection on its own keys, and exposure valuation
    (stage 1) of the positions in its own underlyings, marked by its own prices and its
    own copy of every index price; its progress (``detect/w<index>``) behind the signals
    and valuations it made before it. Its ticks hold only its own time (``of`` 1); the
    progress it passes on announces every market process."""
    name = detect_worker(owners.index)
    ticks = op.flat_map_batch("ticks", records, _tick_fn(cfg.tick_ns, source=name))
    market, _rest, status, trading = _split_inputs(records)
    market_ok = _select_feeds(market, status, cfg, owners.local)
    feat_market = _with_own_index(market, market_ok)
    anomalies, errs = _detect_on(feat_market, status, cfg, clock, owners.local)
    marks = op.flat_map_batch("marks", feat_market,
                              MarkFilter(cfg.mark_interval_ns, cfg.mark_move_bps).passed)
    place = ShardPlace(f"m{owners.index}.", owners.owns, owners.processes)
    valued = value_positions("exposure", marks, trading, config=cfg.exposure, place=place,
                             ticks=ticks, clock=clock, wall_clock=wall_clock)
    valuations = op.flat_map_batch("valuations", valued.made, _valuation_records(name))
    # the signals first: a batch's progress goes out behind its signals
    detections = op.merge("detections", anomalies, valuations,
                          op.flat_map_batch("progress", ticks, lambda ts: _progress(ts, name)))
    dead = op.flat_map_batch("observe_errs", op.merge("errs", *errs, valued.errs), observe_all)
    return MarketOut(detections=detections, dead_letters=dead)




def _detect_flow(cfg: GuardConfig, clock: Clock) -> Dataflow:
    """The detect tier (``tier.role = "detect"``): market and venue-status topics in,
    anomaly signals and progress out to the ``detections`` topic.

    Its source's dead letters (malformed market records, say) are counted here but
    written by the firm tier, which reads the same topics: each bad record is
    dead-lettered once."""
    flow = Dataflow("riskguard_detect")
    src = _input(flow, cfg, DETECT_STREAMS, clock)
    local = _split(cfg)  # split market data: each worker writes what it made
    out = detect_core("detect_tier", src.oks, cfg=cfg, clock=clock,
                      local_keys=LocalKeys() if local else None)
    timeout = cfg.sink_delivery_timeout_s
    # a detect worker's signals and progress share a Kafka partition, in order
    kafka_output("detections", out.detections, brokers=cfg.kafka,
                 topic=cfg.topic(DETECTIONS), delivery_timeout_s=timeout, worker_local=local,
                 key=lambda _rec: _detect_source())
    kafka_output("dead_letters", out.dead_letters, brokers=cfg.kafka,
                 topic=cfg.topic("dead_letters"), delivery_timeout_s=timeout,
                 worker_local=local)
    return flow




def _market_flow(cfg: GuardConfig, clock: Clock) -> Dataflow:
    """A market process (``tier.role = "market"``): the market topic split by underlying
    and the venue-status, fill, position and balance topics whole in; its anomaly
    signals, valuations and progress out to the ``detections`` topic (its partition
    ``index`` modulo the count, key ``detect/w<index>``).

    Its source's dead letters are written once among all processes: the market topic's
    by the owner of their key, the fill, position and balance topics' by the process
    their partition falls to, and the venue-status topic's by the firm tier, which reads
    it too."""
    flow = Dataflow("riskguard_market")
    owners = market_owners(cfg)
    src = _input(flow, cfg, MARKET_STREAMS, clock, owners=owners)
    mine = split_dead_letters("owned", op.flat_map_batch(
        "own", src.oks, _owned_records(owners, cfg.topic("market"))))
    out = market_core("market_tier", mine.oks, cfg=cfg, clock=clock, owners=owners,
                      wall_clock=clock)
    timeout = cfg.sink_delivery_timeout_s
    name = detect_worker(owners.index)
    # everything it writes, then (a bounded run) its final progress, which ends its
    # partition for the firm tier
    started = op.input("start", flow, StartSignal())
    detections = op.flat_map_batch("final_unkey", stateful_logic(
        "final", op.flat_map_batch("final_key", op.merge("final_in", started, out.detections),
                                   lambda rs: [(name, r) for r in rs]),
        lambda state: FinalProgressLogic(name, state)), values_of)
    # its own partition (index modulo the count): the firm tier aligns on exactly those
    kafka_output("detections", detections, brokers=cfg.kafka,
                 topic=cfg.topic(DETECTIONS), delivery_timeout_s=timeout,
                 key=lambda _rec: name, partition=owners.index)
    market_topic, status_topic = cfg.topic("market"), cfg.topic("venue_status")
    src_dead = op.flat_map_batch("own_dead", src.errs, lambda ds: [
        d for d in ds if d.topic != status_topic and (d.topic == market_topic or owners.keeps(d))])
    kafka_output("dead_letters", op.merge("dead", src_dead, mine.errs, out.dead_letters),
                 brokers=cfg.kafka, topic=cfg.topic("dead_letters"),
                 delivery_timeout_s=timeout)
    return flow
