"""The reference guard dataflow: raw feeds in, signed mitigation commands out.

Wiring::

    Kafka (market, venue_status, fills, positions, balances, limit_updates)
      -> decode (bad records -> dead-letter topic)
      -> feed selection (primary/backup failover)   keyed venue/instrument
      -> features -> anomalies                      same key: no extra exchange
      -> exposures -> limits (signed limit updates verified against the trust file)
      -> playbook (one key: global state, rare signals; its clock is the
         event-time ticks as the exposure path passes them on)
      -> sign -> commands topic
      -> audit log with signed checkpoints -> audit topic

Run it with ``riskguard run --config guard.toml`` or
``RISKGUARD_CONFIG=guard.toml python -m bytewax.run riskguard.dataflows.guard``
(add ``-w``/``-p``/``-i -a`` and ``-r`` for recovery). Every parameter comes
from that one TOML file; ``dataflows/guard.example.toml`` documents them.
"""

from __future__ import annotations

import functools
import gc
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream, operator
from riskguard.connectors.audit_tail import read_chain_states
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.kafka import kafka_input, kafka_output
from riskguard.connectors.placement import (
    Broadcast,
    LocalKeys,
    MarketOwners,
    OtherProcessKeys,
    StartSignal,
    worker_of_thread,
)
from riskguard.connectors.topics import topic_name
from riskguard.operators.audit import AuditConfig, AuditState
from riskguard.operators.audit.ops import audit_log
from riskguard.operators.core.base import (
    event_time,
    split_dead_letters,
    stateful_logic,
    values_of,
)
from riskguard.operators.core.clock import TICK_IDLE_NS, Clock, Tick, system_clock
from riskguard.operators.core.dedup import RecentIdsLogic
from riskguard.operators.core.end_of_input import FinalProgressLogic
from riskguard.operators.core.metrics import record_command, start_metrics_server_from_env
from riskguard.operators.core.observe import ObserveConfig, configure, observe_all
from riskguard.operators.detection.detect_watch import DetectWatchLogic, detect_worker
from riskguard.operators.detection.detector import DetectorConfig, prepare_models
from riskguard.operators.detection.features import (
    MARKET_FEATURES,
    OPTION_FEATURES,
    VENUE_FEATURES,
    FeatureConfig,
)
from riskguard.operators.detection.ops import (
    detect_anomalies,
    detect_dislocations,
    extract_features,
)
from riskguard.operators.exposure import PROGRESS_KEY, ExposureConfig, ShardPlace
from riskguard.operators.exposure.limits import LimitsConfig
from riskguard.operators.exposure.ops import (
    aggregate_exposure,
    enforce_limits,
    sum_exposures,
    trust_verifier,
    value_positions,
)
from riskguard.operators.mitigation.feeds import FeedConfig, FeedMonitorLogic, FeedSelectLogic
from riskguard.operators.mitigation.ops import plan_mitigation
from riskguard.operators.mitigation.playbook import PlaybookConfig
from riskguard.operators.signing import SignConfig, decode_command
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer
from riskguard.operators.signing.operator_commands import (
    OPERATOR_COMMANDS_KEY,
    OperatorCommandLogic,
)
from riskguard.operators.signing.ops import sign_commands
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas import (
    AnomalySignal,
    Audience,
    Balance,
    Bar,
    BookDepth,
    DeadLetter,
    DetectProgress,
    Exposure,
    Fill,
    FundingRate,
    IndexPrice,
    MitigationCommand,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    Quote,
    RiskAlert,
    SignedEnvelope,
    Trade,
    Valuation,
    VenueStatus,
    encode,
)
from riskguard.schemas.base import source_of
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy
from riskguard.schemas.valuation import VALUATION_MAX_BYTES, Part, Progress, encode_valuations

from riskguard.config import (
    CommonConfig,
    config_hash,
    decode_section,
    inline_playbook_file,
    read_toml,
)
from riskguard.errors import ConfigError

NS = 1_000_000_000
MARKET = (Trade, Quote, Bar, BookDepth, OptionQuote, IndexPrice, FundingRate)
TRADING = (Fill, PositionSnapshot, Balance, OpenOrders)
# Everything the guard core consumes; any other record type (a bare, unsigned command
# included) is a dead letter.
HANDLED = (*MARKET, VenueStatus, *TRADING, SignedEnvelope)
INPUT_STREAMS = ("market", "venue_status", "fills", "positions", "balances", "limit_updates")
# What the detect tier reads, and the topic it writes for the firm tier
DETECT_STREAMS = ("market", "venue_status")
DETECTIONS = "detections"
DETECTED = (AnomalySignal, DetectProgress, Valuation)
# What a market process reads (the market topic split by underlying, the others whole),
# and what a firm tier fed by market processes reads
MARKET_STREAMS = ("market", "venue_status", "fills", "positions", "balances")
FIRM_OF_MARKET_STREAMS = ("venue_status", "limit_updates", DETECTIONS)
# What each input topic may carry: any other record on it is a wrong_topic dead letter
# (whoever may write market data must not move positions, nor sign anything)
STREAM_TYPES: dict[str, tuple[type, ...]] = {
    "market": MARKET,
    "venue_status": (VenueStatus,),
    "fills": (Fill,),
    "positions": (PositionSnapshot,),
    "balances": (Balance, OpenOrders),
    "limit_updates": (SignedEnvelope,),
    DETECTIONS: DETECTED,
}


class TierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which part of the guard this process runs (the README's "Two tiers" and "Market
    tier").

    ``whole`` runs everything. ``detect`` runs feed selection, features and
    anomaly detection over the market and venue-status topics and writes the
    anomaly signals, with its event-time progress, to the ``detections`` topic.
    ``firm`` runs everything else (feed selection again for the marks, the feed
    monitor, exposure, limits, playbook, signing, audit) and takes its anomaly
    signals from that topic. Each tier is its own dataflow: on 2 cores, one of
    each runs where one whole guard would, with nothing exchanged between
    processes but the few signals.

    ``market`` is a detect tier that also values positions (exposure stage 1), for
    the underlyings it owns: ``detect_workers`` market processes, each its own
    one-worker dataflow (``index`` 0, 1, ...), split the market, fill, position,
    balance and orders records by underlying (``owners``, else a hash) and write their
    signals and valuation parts to ``detections``; a ``firm`` tier with ``upstream =
    "market"`` sums the parts into exposures and runs limits, the feed monitor, the
    playbook, signing and the audit, and reads no market or trading topic.
    """

    role: Literal["whole", "detect", "firm", "market"] = "whole"
    # firm: the detect tier's worker count (or, upstream = "market", how many market
    # processes); its clock waits for each one's progress. market: how many market
    # processes there are (each is detect worker detect/w<index>)
    detect_workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    # market: this process's index, 0 <= index < detect_workers
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    # market: the market process that owns an underlying; any other underlying goes to
    # crc32(name) % detect_workers (balance the load: a few underlyings carry most data)
    owners: dict[str, int] = {}
    # firm: what feeds it: "detect" (anomaly signals; it reads market data itself) or
    # "market" (signals and valuation parts; it reads no market or trading topic)
    upstream: Literal["detect", "market"] = "detect"
    # firm: how many anomaly ids it remembers, to drop those a resumed detect tier
    # sends again
    recent_ids: Annotated[int, msgspec.Meta(ge=1)] = 65_536
    # firm: a detect worker without progress this long (processing time) while the
    # firm's time moves past it raises a critical detect_silent alert. At most
    # TICK_IDLE_NS (10 s): after that the firm's clock stops waiting for the worker, and
    # a longer silent_s would let the firm run on without its signals, unalerted
    silent_s: Annotated[float, msgspec.Meta(gt=0, le=TICK_IDLE_NS / NS)] = 10.0


class InputConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the guard reads its topics."""

    starting_offset: str = "earliest"
    idle_eof_s: float | None = None
    max_lateness_ns: int = 10 * NS
    max_future_skew_ns: int = 5 * NS
    check_future: bool = True
    batch_size: int = 1000
    align_skew_s: float | None = 2.0
    share_consumer: bool = True
    # Live, latency first: each read takes at most batch_size per partition, so a fill
    # is not processed behind a whole market-data burst (costs replay throughput).
    fair_reads: bool = False
    # Stamp records that carry no ``recv_ts`` with this process's receive time (it feeds
    # detection-to-command latency and the venue-latency feature). Turn it off to replay
    # historical data through the live path: old events would look days late.
    stamp_recv_ts: bool = True
    # Each worker reads the whole market topic and keeps the records whose Kafka key
    # (``venue/instrument``) bytewax routes to it, plus its own copy of every index and
    # oracle price and venue heartbeat, which it fans out to its own keys only: market
    # data never crosses processes, and each process sees its inputs in one event-time
    # order. See the README's "Scaling".
    split_market_by_key: bool = True
    # The market topic is produced with riskguard.connectors.placement.aligned_partitions
    # (partitions a multiple of the worker count; index and oracle prices to every
    # partition): each worker reads only its own partitions, whose keys all route to it,
    # so market data is fetched once, never crosses processes, and each process still
    # has its own copy of every index price and heartbeat. Takes precedence over
    # split_market_by_key. See the README's "Scaling".
    aligned_market: bool = False
    # One bytewax source partition per worker, holding all of its Kafka partitions, read
    # into batches of up to batch_size per partition: every step pays per batch, and on a
    # backlog alignment cut the per-partition reads to ~40 records. Renames the source
    # partitions (a recovery store made with the other setting must be re-initialised).
    bundle_partitions: bool = True
    # The longest a fetch waits at the broker for data (librdkafka ``fetch.wait.max.ms``).
    # Short keeps a hop's latency low on the dev broker, which ends a waiting fetch only
    # at this time, not when data arrives (measured: p50 produce-to-consume 6 ms at 10,
    # 21 ms at 100); but every consumer that has caught up then asks the broker again
    # this often. Apache Kafka ends the wait when data arrives, so there a longer wait
    # costs no latency. See the README's "Scaling" (the market tier's broker CPU).
    fetch_wait_max_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 10


class KeysConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The signing key and the trust file that authorizes keys.

    ``roots_file`` pins the trust file's root public keys and how many of
    them must have signed it (``threshold = k`` plus ``[[roots]]`` tables).
    Relative paths are relative to the config file.
    """

    signing_key: str
    issuer: str = "riskguard"
    trust_file: str
    roots_file: str


class GuardConfig(CommonConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole guard config (one TOML file)."""

    keys: KeysConfig
    input: InputConfig = InputConfig()
    feeds: FeedConfig = FeedConfig()
    features: FeatureConfig = FeatureConfig()
    detector: DetectorConfig = DetectorConfig()
    exposure: ExposureConfig = ExposureConfig()
    limits: LimitsConfig = LimitsConfig()
    playbook: PlaybookConfig = PlaybookConfig()
    sign: SignConfig = SignConfig()
    audit: AuditConfig = AuditConfig()
    tier: TierConfig = TierConfig()
    tick_ns: int = NS
    mark_interval_ns: int = 250_000_000
    mark_move_bps: float = 5.0
    playbook_file: str | None = None
    sink_delivery_timeout_s: float = 30.0
    # Python's youngest-generation collection threshold in the guard process (0: leave
    # Python's default of 700); see apply_gc_policy
    gc_gen0_threshold: Annotated[int, msgspec.Meta(ge=0)] = 50_000

    def topic(self, stream: str) -> str:
        return topic_name(self.env, stream)


TIER_INDEX_ENV = "RISKGUARD_TIER_INDEX"
"""Overrides ``tier.index``: a StatefulSet of market processes sets it from each pod's
ordinal (``ops/k8s/entrypoint.sh``), so they share one config file."""


def load_guard_config(path: str | Path) -> tuple[GuardConfig, str]:
    """Decode and validate the guard config; returns it and its hash.

    ``$RISKGUARD_TIER_INDEX``, when set, overrides ``tier.index`` (a market process's
    index from its pod's ordinal)."""
    data = read_toml(path)
    index = os.environ.get(TIER_INDEX_ENV)
    if index is not None:
        if not index.isdigit():
            raise ConfigError(TIER_INDEX_ENV, "a market process index (0, 1, ...)", index)
        data = {**data, "tier": {**data.get("tier", {}), "index": int(index)}}
    base = Path(path).resolve().parent
    data = inline_playbook_file(data, base)
    cfg = decode_section(data, GuardConfig)
    keys = cfg.keys
    resolved = KeysConfig(
        signing_key=str(base / keys.signing_key), issuer=keys.issuer,
        trust_file=str(base / keys.trust_file), roots_file=str(base / keys.roots_file),
    )
    playbook = msgspec.structs.replace(
        cfg.playbook, env=cfg.env, topic=topic_name(cfg.env, "commands"), issuer=keys.issuer,
    )
    cfg = msgspec.structs.replace(cfg, keys=resolved, playbook=playbook)
    cfg.features.validate("features")
    cfg.detector.validate("detector")
    cfg.exposure.validate("exposure")
    cfg.limits.validate("limits")
    cfg.feeds.validate("feeds")
    _check_tier(cfg)
    _check_split(cfg)
    return cfg, config_hash(data)


def _fed_by_market(cfg: GuardConfig) -> bool:
    """Is this a firm tier that sums market processes' valuations?"""
    return cfg.tier.role == "firm" and cfg.tier.upstream == "market"


def _check_tier(cfg: GuardConfig) -> None:
    """A market process's index and the owners name market processes that exist; a firm
    tier fed by market processes aligns its input."""
    tier = cfg.tier
    if _fed_by_market(cfg) and cfg.input.align_skew_s is None:
        raise ConfigError("input.align_skew_s", "a number of seconds for a firm tier fed by "
                          "market processes (it reads their valuations in step)", None)
    if tier.role != "market":
        return
    n = tier.detect_workers
    if tier.index >= n:
        raise ConfigError("tier.index", f"a market process index below detect_workers ({n})",
                          tier.index)
    bad = {u: i for u, i in tier.owners.items() if not 0 <= i < n}
    if bad:
        raise ConfigError("tier.owners", f"market process indexes in [0, {n})", bad)


def _check_split(cfg: GuardConfig) -> None:
    """With split market data each worker routes its own copy of an index price
    around feed selection, so an index source must not have a feed failover pair."""
    if not _split(cfg):
        return
    both = sorted(set(_price_sources(cfg)) & set(cfg.feeds.venues))
    if both:
        field = "aligned_market" if cfg.input.aligned_market else "split_market_by_key"
        raise ConfigError(f"input.{field}",
                          "index and oracle sources without a [feeds.venues] failover pair "
                          "(each worker reads its own copy of their prices)", both)


def _split(cfg: GuardConfig) -> bool:
    """Does each worker read its own keys' market data (split by key, or aligned, or by
    underlying in a market process) and its own copy of every index price and
    heartbeat?"""
    return (cfg.input.split_market_by_key or cfg.input.aligned_market
            or cfg.tier.role == "market")


def price_key_prefixes(cfg: GuardConfig) -> tuple[bytes, ...]:
    """The Kafka key prefixes (``<source>/``) of index and oracle prices on the market
    topic: every worker reads its own copy of them (with ``input.aligned_market``, a
    producer writes them to every partition:
    :func:`~riskguard.connectors.placement.aligned_partitions`)."""
    return tuple(f"{s}/".encode() for s in _price_sources(cfg))


def _price_sources(cfg: GuardConfig) -> tuple[str, ...]:
    """The venues whose prices fan out to every venue's key: index and oracle sources."""
    return (*cfg.features.index_sources, *cfg.features.oracle_sources)


def is_broadcast(rec: Any) -> bool:
    """Records every worker reads its own copy of when market data is split by key:
    index and oracle prices and venue heartbeats fan out to many keys."""
    t = type(rec)
    return t is IndexPrice or t is VenueStatus


_DETECTION_ONLY = (Bar, BookDepth)


class MarkFilter:
    """Per worker: pass a price to exposure valuation when it moved or aged enough.

    Exposure is keyed by instrument, not ``venue/instrument``, so every price
    it sees crosses workers a second time. A price passes when the
    instrument's last forwarded price (from the same venue and record type)
    is ``min_interval_ns`` old in event time, or when it moved by at least
    ``move_bps``, so the mark is never staler than ``min_interval_ns`` and big
    moves pass at once. ``min_interval_ns=0`` forwards every price. Not
    snapshotted: after a restart the first price of each instrument passes.

    >>> f = MarkFilter(1_000, 5.0)
    >>> from riskguard.schemas import Trade
    >>> t = lambda ts, px: Trade(id="x", venue="v", instrument="i", ts=ts, price=px, qty=1.0,
    ...                          side="buy")
    >>> [f(t(0, 100.0)), f(t(10, 100.01)), f(t(20, 100.2)), f(t(1_500, 100.2))]
    [True, False, True, True]
    """

    def __init__(self, min_interval_ns: int, move_bps: float) -> None:
        self.min_interval_ns = min_interval_ns
        self.move = move_bps / 10_000
        self.last: dict[tuple[str, str, type], tuple[int, float]] = {}

    _PRICED = (Trade, IndexPrice)  # built once: a union built per call costs 0.1 µs

    def __call__(self, rec: Any) -> bool:
        return bool(self.passed([rec]))

    def passed(self, recs: list[Any]) -> list[Any]:
        """The records of a batch that pass, in order (one dataflow call per batch, one
        inlined loop: a method call per record cost a third of it)."""
        interval = self.min_interval_ns
        if interval <= 0:
            return recs
        priced, quote, move, last = self._PRICED, Quote, self.move, self.last
        out = []
        for rec in recs:
            if isinstance(rec, quote):
                price = (rec.bid + rec.ask) / 2
            elif isinstance(rec, priced):
                price = rec.price
            elif type(rec) in _DETECTION_ONLY:
                continue  # bars and depth feed detection; trades and quotes mark positions
            else:
                out.append(rec)
                continue
            key = (rec.venue, rec.instrument, type(rec))
            prev = last.get(key)
            if (prev is None or rec.ts - prev[0] >= interval
                    or abs(price - prev[1]) >= move * prev[1]):
                last[key] = (rec.ts, price)
                out.append(rec)
        return out


def _split_inputs(records: Stream[Any]) -> tuple[Stream[Any], Stream[Any], Stream[VenueStatus],
                                                  Stream[Any]]:
    """``(market data, everything else, heartbeats, trading records)`` of the decoded
    input. Market data is most of it: split off first, so the other filters see only
    the rest (one comprehension per batch each, not bytewax's per-item predicate)."""
    market = op.flat_map_batch("market", records, _market_records)
    rest = op.flat_map_batch("not_market", records,
                             lambda rs: [r for r in rs if not isinstance(r, MARKET)])
    status = op.flat_map_batch("status", rest, _status_records)
    trading = op.flat_map_batch("trading", rest,
                                lambda rs: [r for r in rs if isinstance(r, TRADING)])
    return market, rest, status, trading


def _market_records(recs: list[Any]) -> list[Any]:
    return [r for r in recs if isinstance(r, MARKET)]


def _status_records(recs: list[Any]) -> list[Any]:
    return [r for r in recs if isinstance(r, VenueStatus)]


def _tick_sources(other_sources: int) -> int:
    """``Tick.of`` for this worker's ticks: the flow's worker count plus
    ``other_sources``; 0 (unknown) outside a flow with the ``workers`` probe step and
    without other sources."""
    where = worker_of_thread()
    if where is not None:
        return where[1] + other_sources
    return 1 + other_sources if other_sources else 0


def _detect_source() -> str:
    """The calling detect worker's name (``detect/w<i>``): its progress's source and
    its Kafka key on the detections topic; the same after a restart."""
    where = worker_of_thread()
    return detect_worker(where[0] if where else 0)


def _tick_fn(tick_ns: int, other_sources: int = 0, source: str | None = None) -> Any:
    """Per worker: a Tick, named after the worker, each time its event time crosses a
    new ``tick_ns`` boundary. Consumers take the minimum over workers (a watermark), and
    hold time until all of them (``Tick.of``) have ticked. Outside a flow with the
    ``workers`` probe step the worker is unknown: one source per process, ``of`` 0.
    ``other_sources`` (the firm tier's detect workers) adds to ``of``: those sources
    tick on another topic, and time holds for them too. ``source`` names the ticks
    instead (a market process: the same name after a restart).

    Takes a whole batch (one dataflow call per batch, not per record) and returns its
    ticks, in order."""
    last: dict[int, int] = {}
    process = f"{socket.gethostname()}/{os.getpid()}"
    names: dict[int, tuple[str, int]] = {}

    def ticks(recs: list[Any]) -> list[Tick]:
        thread = threading.get_ident()
        top = last.get(thread, -1)
        out: list[Tick] = []
        for rec in recs:
            ts = getattr(rec, "ts", None)
            if type(ts) is not int:  # a signed envelope: no event time
                continue
            bucket = ts // tick_ns
            if bucket > top:
                top = last[thread] = bucket
                name = names.get(thread)
                if name is None:
                    where = worker_of_thread()
                    made = (source if source is not None
                            else f"{process}/w{where[0]}" if where else process)
                    name = names[thread] = (made, _tick_sources(other_sources))
                out.append(Tick(ts=ts, source=name[0], of=name[1]))
        return out

    return ticks


def _unhandled(rec: Any) -> DeadLetter:
    """A valid record of a type the guard does not consume (e.g. on the wrong topic); a
    bare command record is refused as unsigned: nothing unsigned acts."""
    unsigned = isinstance(rec, MitigationCommand)
    topic, partition, offset = source_of(rec) or ("input", -1, -1)
    return DeadLetter.of(
        topic=topic, partition=partition, offset=offset, ts=getattr(rec, "ts", 0) or 0,
        reason="unsigned_command" if unsigned else "unexpected_type",
        expected="a signed command envelope" if unsigned else "a guard input record",
        found=type(rec).__name__, step="guard", raw=msgspec.json.encode(rec),
    )


@dataclass(frozen=True)
class GuardOut:
    """Every output stream of the guard core."""

    commands: Stream[SignedEnvelope]
    audit: Stream[Any]
    signals: Stream[Any]
    exposures: Stream[Any]
    dead_letters: Stream[DeadLetter]


@operator
def guard_core(
    step_id: str,
    records: Stream[Any],
    *,
    cfg: GuardConfig,
    cfg_hash: str,
    clock: Clock,
    signer: Signer,
    trust: TrustStore,
    seq_floor: int | None = None,
    local_keys: Callable[[str], bool] | None = None,
    wall_clock: Clock | None = None,
    remote_keys: Callable[[str], bool] | None = None,
    audit_resume: dict[str, AuditState] | None = None,
    input_errs: Stream[DeadLetter] | None = None,
) -> GuardOut:
    """The whole guard over a stream of decoded records, whatever their source.

    The live flow feeds it from Kafka; backtests and stress runs feed it from
    files or generators. It is the single implementation of the guard logic.
    ``seq_floor`` is the signing step's (the highest seq already delivered);
    ``audit_resume`` the audit step's (each chain's state on the audit topic,
    :func:`~riskguard.connectors.audit_tail.read_chain_states`).
    ``local_keys``: every worker gets its own copy of each index price and
    venue heartbeat (:func:`is_broadcast`), and fans it out to the keys
    ``local_keys`` says live on it; one copy (its key's owner's) goes on to
    feed selection, the feed monitor and exposure marks. ``wall_clock`` (live runs
    only; a replay must not depend on wall time) lets a fill's re-valuation boundary
    pass by wall time on a shard no later record reaches
    (:func:`~riskguard.operators.exposure.ops.aggregate_exposure`). ``remote_keys`` says
    which exposure valuation keys live in another process (packs bound there go
    msgpack-encoded, not pickled). A firm tier fed by market processes
    (``tier.upstream = "market"``) sums their valuation parts instead of valuing
    positions itself, and has no market or trading records. ``input_errs`` are the
    source's dead letters (bad bytes, a record on the wrong topic, late or future
    times): audited and passed on with the guard's own in ``dead_letters``.
    """
    firm = cfg.tier.role == "firm"
    of_market = _fed_by_market(cfg)
    detected_in = None
    if firm:
        # the detect tier's signals and progress (the detections topic) go their own way
        detected_in = op.flat_map_batch("detected", records,
                                        lambda rs: [r for r in rs if isinstance(r, DETECTED)])
        records = op.flat_map_batch("not_detected", records,
                                    lambda rs: [r for r in rs if not isinstance(r, DETECTED)])
    # Event-time progress from every record (not only market data: fills during a market
    # data outage must still be valued).
    ticks = own_ticks = op.flat_map_batch(
        "ticks", records, _tick_fn(cfg.tick_ns, cfg.tier.detect_workers if firm else 0))
    if detected_in is not None:
        # each detect worker is one more tick source: time holds until it has passed
        ticks = op.merge("all_ticks", ticks, op.flat_map_batch(
            "detect_ticks", detected_in, _detect_ticks(cfg.tier.detect_workers)))
    market, records, status, trading = _split_inputs(records)
    updates = op.flat_map_batch("updates", records, lambda rs: [
        r for r in rs if isinstance(r, SignedEnvelope) and r.payload_type != PAYLOAD_COMMAND])
    # Operator commands (a resume) come signed, on the limit-updates topic; they reach the
    # playbook only once verified against the trust file, with their approvals counted
    # from the signatures. A bare command record is refused: nothing unsigned acts.
    # Each acts once: the replay state is keyed on one key and snapshotted.
    operator_cmds = op.flat_map_batch("operator_cmds", records, lambda rs: [
        (OPERATOR_COMMANDS_KEY, r) for r in rs
        if isinstance(r, SignedEnvelope) and r.payload_type == PAYLOAD_COMMAND])
    commands_topic = cfg.topic("commands")
    verified = split_dead_letters("verify_operator", op.flat_map_batch(
        "verify_cmd_unkey", stateful_logic(
            "verify_cmd", operator_cmds, lambda state: OperatorCommandLogic(
                trust, env=cfg.env, topic=commands_topic, clock=clock, state=state)),
        values_of))
    manual = verified.oks
    unhandled = op.flat_map_batch("unhandled", records, lambda rs: [
        _unhandled(r) for r in rs if not isinstance(r, HANDLED)])

    fcfg = cfg.feeds
    feed_venues = tuple(fcfg.venues)

    def monitor_keys(r: Any) -> list[tuple[str, Any]]:
        if isinstance(r, VenueStatus):
            return [(r.venue, r)] if local_keys is None or local_keys(r.venue) else []
        return [(v, r) for v in feed_venues]

    monitor_in = op.flat_map("monitor_key", op.merge("monitor_src", status, ticks), monitor_keys)
    feed_alerts = op.map(
        "monitor_unkey",
        stateful_logic("feed_monitor", monitor_in, _monitor_builder(fcfg, clock),
                       order=event_time),
        lambda kv: kv[1],
    )

    market_ok = None if of_market else _select_feeds(market, status, cfg, local_keys)
    if detected_in is not None:
        anomalies = op.merge("anomalies_and_watch",
                             _first_of_each_id(detected_in, cfg.tier.recent_ids),
                             _watch_detect(ticks, cfg.tier, clock))
        detect_errs: list[Stream[DeadLetter]] = []
    else:
        assert market_ok is not None  # only a firm tier fed by market processes has none
        anomalies, detect_errs = _detect(market, market_ok, status, cfg, clock, local_keys)
    exposure_errs: list[Stream[DeadLetter]] = []
    if of_market:
        assert detected_in is not None  # a firm tier
        summed = sum_exposures("exposure", _market_parts(detected_in, own_ticks, cfg),
                               config=cfg.exposure)
        exposures, exposure_alerts, progress = summed.exposures, summed.alerts, summed.progress
    else:
        assert market_ok is not None
        marks = op.flat_map_batch("marks", market_ok,
                                  MarkFilter(cfg.mark_interval_ns, cfg.mark_move_bps).passed)
        exposure = aggregate_exposure(
            "exposure", marks, trading, config=cfg.exposure, clock=clock, ticks=ticks,
            wall_clock=wall_clock, remote_keys=remote_keys)
        exposures, exposure_alerts, progress = (exposure.exposures, exposure.alerts,
                                                exposure.progress)
        exposure_errs.append(exposure.errs)
    audience = Audience(env=cfg.env, topic=cfg.topic("limit_updates"))
    limits = enforce_limits("limits", exposures, updates, config=cfg.limits,
                            verifier=trust_verifier(trust, audience), clock=clock,
                            progress=progress)

    signals = op.flat_map_batch("observe_signals", op.merge(
        "signals", anomalies, exposure_alerts, limits.breaches, limits.alerts, feed_alerts,
    ), observe_all)
    # The playbook's clock: the ticks as the exposure path passes them on (valuation,
    # counterparty, firm, limits), not as the sources make them. In a backlog that path's
    # queues are the longest, and a breach must not reach the playbook after time has
    # moved past it.
    planned = plan_mitigation(
        "playbook", op.merge("playbook_in", signals, limits.ticks, manual),
        config=cfg.playbook, clock=clock,
    )
    commands = planned.oks
    signed = sign_commands("sign", commands, signer, config=cfg.sign, seq_floor=seq_floor)

    def observe_command(env: SignedEnvelope) -> SignedEnvelope:
        cmd = decode_command(env)
        record_command(cmd.action.value, cmd.scope.kind.value, cmd.recv_ts, clock())
        return env

    out_cmds = op.map("observe_commands", signed.oks, observe_command)
    errs: Stream[DeadLetter] = op.flat_map_batch("observe_errs", op.merge(
        "errs", *detect_errs, *exposure_errs, limits.errs, planned.errs, signed.errs,
        verified.errs, unhandled, *([input_errs] if input_errs is not None else []),
    ), observe_all)
    audit_cfg = msgspec.structs.replace(cfg.audit, config_hash=cfg_hash)
    decisions = op.merge("decisions", signals, commands, errs)
    audit = op.flat_map_batch(
        "observe_audit", audit_log("audit", decisions, signer=signer, config=audit_cfg,
                                  resume=audit_resume),
        observe_all)
    observed = op.flat_map_batch(
        "observe_exposures", op.merge("exp_util", exposures, limits.utilizations),
        observe_all)
    return GuardOut(commands=out_cmds, audit=audit, signals=signals, exposures=observed,
                    dead_letters=errs)


def _select_feeds(market: Stream[Any], status: Stream[VenueStatus], cfg: GuardConfig,
                  local_keys: Callable[[str], bool] | None) -> Stream[Any]:
    """Feed selection (primary/backup failover) on the features' key (venue/instrument),
    so market data changes worker at most once before features; heartbeats fan out."""
    fcfg = cfg.feeds
    instruments = _instruments_of(cfg)

    def feed_keys(recs: list[Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for rec in recs:
            if type(rec) is VenueStatus:
                if rec.venue in fcfg.venues:
                    keys = [f"{rec.venue}/{i}" for i in instruments]
                    out.extend((k, rec) for k in keys if local_keys is None or local_keys(k))
                continue
            key = f"{rec.venue}/{rec.instrument}"
            if local_keys is not None and type(rec) is IndexPrice and not local_keys(key):
                continue  # another worker's copy of this index price goes on
            out.append((key, rec))
        return out

    # Per-record steps on the market path run as one call per batch (flat_map_batch):
    # bytewax's per-item filter and map cost 0.04-0.12 µs per record and step.
    keyed = op.flat_map_batch("feed_key", op.merge("feed_in", market, status), feed_keys)
    return op.flat_map_batch(
        "feed_unkey",
        stateful_logic("feed_select", keyed, _bind_venue(fcfg), order=event_time),
        values_of,
    )


def _detect(market: Stream[Any], market_ok: Stream[Any], status: Stream[VenueStatus],
            cfg: GuardConfig, clock: Clock, local_keys: Callable[[str], bool] | None,
            ) -> tuple[Stream[AnomalySignal], list[Stream[DeadLetter]]]:
    """Features, then anomaly detection: the anomaly signals and the steps' dead letters."""
    feat_market = market_ok if local_keys is None else _with_own_index(market, market_ok)
    return _detect_on(feat_market, status, cfg, clock, local_keys)


def _with_own_index(market: Stream[Any], market_ok: Stream[Any]) -> Stream[Any]:
    """The feed-selected market data with this worker's own copy of every index price.

    Each worker's own copy of an index price feeds its own keys; the one copy that
    passed feed selection only marks exposure (in a market process, every process's
    own copy marks its own shards)."""
    return op.merge(
        "feat_market",
        op.flat_map_batch("selected_not_index", market_ok,
                          lambda rs: [r for r in rs if type(r) is not IndexPrice]),
        op.flat_map_batch("index_copies", market,
                          lambda rs: [r for r in rs if type(r) is IndexPrice]),
    )


def _detect_on(feat_market: Stream[Any], status: Stream[VenueStatus], cfg: GuardConfig,
               clock: Clock, local_keys: Callable[[str], bool] | None,
               ) -> tuple[Stream[AnomalySignal], list[Stream[DeadLetter]]]:
    feats = extract_features("features", op.merge("feat_in", feat_market, status),
                             config=cfg.features, clock=clock, local_keys=local_keys)
    detected = detect_anomalies("detect", feats.oks, config=cfg.detector, clock=clock)
    anomalies = op.key_rm("anomalies", detected.oks)
    if cfg.detector.cross.enabled:
        anomalies = op.merge("with_dislocations", anomalies, detect_dislocations(
            "cross", feats.oks, config=cfg.detector.cross))
    return anomalies, [feats.errs, detected.errs]


def _detect_ticks(detect_workers: int) -> Any:
    """The firm tier: each :class:`~riskguard.schemas.DetectProgress` as a Tick from its
    detect worker, counted among all the tick sources (this tier's workers and the
    detect tier's), like its own ticks."""

    def ticks(recs: list[Any]) -> list[Tick]:
        of = _tick_sources(detect_workers)
        return [Tick(ts=r.ts, source=r.source, of=of) for r in recs if type(r) is DetectProgress]

    return ticks


def _signals_in(recs: list[Any]) -> list[tuple[str, Any]]:
    """The anomaly signals on the detections topic, and the stage-1 alerts inside market
    processes' valuations, keyed for the one id window."""
    out: list[tuple[str, Any]] = []
    for r in recs:
        t = type(r)
        if t is AnomalySignal:
            out.append(("detections", r))
        elif t is Valuation:
            out.extend(("detections", a) for a in r.alerts)
    return out


def _market_parts(detected: Stream[Any], ticks: Stream[Tick], cfg: GuardConfig) -> Stream[Any]:
    """A firm tier fed by market processes: the parts and progress of their valuations,
    each record's parts before its progress, and this tier's own ticks as progress too.

    Its own ticks carry time on when every market process has gone quiet (a source
    silent for ``TICK_IDLE_NS`` stops holding time back), as a worker's own ticks do in
    one whole guard: it has no parts, so its progress holds nothing back while market
    processes' progress lags it."""
    tier = cfg.tier
    market_sources = tier.detect_workers * cfg.exposure.valuation_shards

    def parts_of(recs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for r in recs:
            if type(r) is Valuation:
                out.extend(r.parts)
                out.extend(r.progress)
        return out

    def own_progress(recs: list[Tick]) -> list[Progress]:
        # a tick's ``of`` counts this tier's workers and the market processes
        return [Progress(counterparty=PROGRESS_KEY, ts=t.ts, source=f"{t.source}@firm",
                         of=t.of - tier.detect_workers + market_sources) for t in recs]

    return op.merge("parts_in", op.flat_map_batch("valuations", detected, parts_of),
                    op.flat_map_batch("own_progress", ticks, own_progress))


def _first_of_each_id(detected: Stream[Any], keep: int) -> Stream[AnomalySignal | RiskAlert]:
    """The firm tier's anomaly signals (and a market process's stage-1 alerts), each id
    once: a detect tier or market process that resumed from its snapshot sends the
    signals made after it again (:mod:`riskguard.operators.core.dedup`)."""
    signals = op.flat_map_batch("anomaly_in", detected, _signals_in)
    return op.flat_map_batch(
        "anomalies", stateful_logic("anomaly_ids", signals,
                                    lambda state: RecentIdsLogic(keep, state)),
        values_of)


def _watch_detect(ticks: Stream[Tick], tier: TierConfig, clock: Clock) -> Stream[RiskAlert]:
    """The firm tier: ``detect_silent`` / ``detect_restored`` alerts from every tick, its
    own and the detect workers' (:mod:`riskguard.operators.detection.detect_watch`; one key: a
    few ticks per second of event time)."""
    keyed = op.flat_map_batch("watch_key", ticks, lambda ts: [("detect", t) for t in ts])
    silent_ns = int(tier.silent_s * NS)
    return op.flat_map_batch("watch_unkey", stateful_logic(
        "detect_watch", keyed, lambda state: DetectWatchLogic(
            tier.detect_workers, silent_ns, state, clock=clock)), values_of)


def _progress(ticks: list[Tick], name: str | None = None) -> list[DetectProgress]:
    """The detect tier: each of this worker's ticks as a
    :class:`~riskguard.schemas.DetectProgress` from ``name`` (default
    :func:`_detect_source`; the same name after a restart, so the firm tier goes on
    waiting for it, not for a new source)."""
    source = name if name is not None else _detect_source()
    return [DetectProgress(ts=t.ts, source=source) for t in ticks]


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


def load_keys(cfg: GuardConfig) -> tuple[Signer, TrustStore]:
    """Load the signing key and the root-verified trust file named in ``[keys]``."""
    signer = Signer.from_file(cfg.keys.signing_key, issuer=cfg.keys.issuer)
    trust = TrustStore.load(cfg.keys.trust_file, RootSet.load(cfg.keys.roots_file))
    return signer, trust


def build_flow(
    cfg: GuardConfig,
    cfg_hash: str = "0" * 64,
    *,
    clock: Clock = system_clock,
    signer: Signer | None = None,
    trust: TrustStore | None = None,
) -> Dataflow:
    """The live guard: Kafka topics in, the guard core, Kafka topics out."""
    configure(ObserveConfig(option_instruments=frozenset(
        n for n, spec in cfg.exposure.instruments.instruments.items() if spec.kind == "option"
    )))
    role = cfg.tier.role
    if role != "firm":
        _prepare_detection(cfg)
    if role == "detect":
        return _detect_flow(cfg, clock)
    if role == "market":
        return _market_flow(cfg, clock)
    if signer is None or trust is None:
        signer, trust = load_keys(cfg)
    brokers = cfg.kafka
    flow = Dataflow("riskguard_guard")
    streams = (INPUT_STREAMS if role != "firm"
               else FIRM_OF_MARKET_STREAMS if _fed_by_market(cfg)
               else (*INPUT_STREAMS, DETECTIONS))
    src = _input(flow, cfg, streams, clock)
    issuer = cfg.sign.issuer or signer.issuer
    # Read once, before any worker signs: the killed run this may resume is gone.
    delivered = last_signed_seq(brokers, cfg.topic("commands"), signer.public_key,
                                issuer)
    # Likewise each audit chain continues where the topic ends (verified as read), never
    # again from index 0; a topic that cannot be read or verified stops the start.
    chains = read_chain_states(brokers, cfg.topic("audit"), trust.checkpoint_key,
                               origin=cfg.audit.origin)
    out = guard_core("guard", src.oks, cfg=cfg, cfg_hash=cfg_hash, clock=clock, signer=signer,
                     trust=trust, seq_floor=delivered, audit_resume=chains, wall_clock=clock,
                     local_keys=LocalKeys() if _split(cfg) else None,
                     remote_keys=OtherProcessKeys(), input_errs=src.errs)
    timeout = cfg.sink_delivery_timeout_s
    # split market data: every output is written by the worker that made it
    local = _split(cfg)
    kafka_output("commands", out.commands, brokers=brokers, topic=cfg.topic("commands"),
                 delivery_timeout_s=timeout, worker_local=local, key=lambda _env: issuer)
    kafka_output("dead_letters", out.dead_letters, brokers=brokers, topic=cfg.topic("dead_letters"),
                 delivery_timeout_s=timeout, worker_local=local)
    kafka_output("signals", out.signals, brokers=brokers, topic=cfg.topic("signals"),
                 delivery_timeout_s=timeout, worker_local=local)
    kafka_output("exposures", out.exposures, brokers=brokers, topic=cfg.topic("exposures"),
                 delivery_timeout_s=timeout, worker_local=local, key=exposures_key)
    kafka_output("audit", out.audit, brokers=brokers, topic=cfg.topic("audit"),
                 delivery_timeout_s=timeout, worker_local=local,
                 key=_audit_key)
    return flow


def _prepare_detection(cfg: GuardConfig) -> None:
    """Build at start-up what detection would otherwise build on its first records."""
    if cfg.detector.drift != "none":
        # Start-up, not the first market record, pays for River's drift module (~1 s:
        # it pulls in scipy); the detector imports it lazily when it builds a key.
        import river.drift  # noqa: F401, PLC0415
    # and for each key class's models (the first market record would wait ~0.1 s per class)
    prepare_models(cfg.detector, (MARKET_FEATURES, OPTION_FEATURES, VENUE_FEATURES))


def _input(flow: Dataflow, cfg: GuardConfig, streams: tuple[str, ...], clock: Clock,
           owners: MarketOwners | None = None) -> Any:
    """The guard's Kafka source over ``streams``, as ``[input]`` configures it (a market
    process, given its ``owners``: the market topic split by underlying, the others
    whole)."""
    policy = EventTimePolicy(
        max_lateness_ns=cfg.input.max_lateness_ns,
        max_future_skew_ns=cfg.input.max_future_skew_ns,
        clock=clock if cfg.input.check_future else None,
    )
    return kafka_input(
        "in", flow, brokers=cfg.kafka, topics=[cfg.topic(s) for s in streams],
        starting_offset=cfg.input.starting_offset, idle_eof_s=cfg.input.idle_eof_s,
        time_policy=policy, clock=clock, stamp_recv_ts=cfg.input.stamp_recv_ts,
        batch_size=cfg.input.batch_size, fetch_wait_max_ms=cfg.input.fetch_wait_max_ms,
        align_skew_s=cfg.input.align_skew_s, share_consumer=cfg.input.share_consumer,
        fair_reads=cfg.input.fair_reads, bundle=cfg.input.bundle_partitions,
        # the detect tier checked the times of what its signals came from
        untimed_topics=[cfg.topic(DETECTIONS)],
        # a market process's valuation record carries whole books; each topic carries
        # only its own record types
        codec=Codec(topic_max_bytes={cfg.topic(DETECTIONS): VALUATION_MAX_BYTES},
                    topic_types={cfg.topic(s): STREAM_TYPES[s] for s in streams}),
        # market processes' valuations: applied in step with each other (the firm tier
        # sums their parts), not as fast as each process wrote them
        progress_topics=({cfg.topic(DETECTIONS): cfg.tier.detect_workers}
                         if _fed_by_market(cfg) else None),
        **(_split_options(cfg) if owners is None else _market_options(cfg, owners)),
    )


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


def _market_options(cfg: GuardConfig, owners: MarketOwners) -> dict[str, Any]:
    """kafka_input options for a market process: its replica of the market topic, keeping
    the messages whose key's underlying it owns and every index and oracle price (with
    ``input.aligned_market``: the market topic's partitions produced for it, with
    ``placement.aligned_partitions(..., owners=...)``)."""
    market = "aligned_topics" if cfg.input.aligned_market else "key_split_topics"
    return {
        market: [cfg.topic("market")],
        "broadcast": Broadcast(key_prefixes=price_key_prefixes(cfg), records=is_broadcast),
        "replica_of": (owners.index, owners.processes),
        "owner": owners.of_key,
    }


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


def _split_options(cfg: GuardConfig) -> dict[str, Any]:
    """kafka_input options for ``input.split_market_by_key``: the market topic split by
    Kafka key, and heartbeats plus index and oracle prices read by every worker; for
    ``input.aligned_market``: the market topic's partitions read where their keys live."""
    if not _split(cfg):
        return {}
    market = "aligned_topics" if cfg.input.aligned_market else "key_split_topics"
    return {
        market: [cfg.topic("market")],
        "broadcast": Broadcast(topics=frozenset({cfg.topic("venue_status")}),
                               key_prefixes=price_key_prefixes(cfg),
                               records=is_broadcast),
    }


def exposures_key(rec: Any) -> str:
    """The exposures topic's Kafka key: a counterparty's exposures (``*``: the firm's)
    and one limit's utilizations (its path) each keep one partition, in order. Without
    it they had no key (they carry no id) and were spread over the partitions.

    >>> exposures_key(Exposure(counterparty="okx", ts=1, gross_notional=1.0,
    ...                        net_notional=1.0))
    'okx'
    """
    if type(rec) is Exposure:
        return rec.counterparty
    return str(getattr(rec, "limit_path", ""))


def _audit_key(rec: Any) -> str:
    """Audit records and checkpoints of one chain share a Kafka partition, in order."""
    return str(getattr(rec, "chain", None) or getattr(rec, "origin", ""))


def _instruments_of(cfg: GuardConfig) -> tuple[str, ...]:
    """Instruments whose feed-selection keys receive each venue heartbeat."""
    return tuple(sorted(cfg.exposure.instruments.instruments))


def _bind_venue(fcfg: FeedConfig) -> Any:
    return lambda state: _PerVenue(FeedSelectLogic, fcfg, state)


def _monitor_builder(fcfg: FeedConfig, clock: Clock) -> Any:
    monitor = functools.partial(FeedMonitorLogic, clock=clock)
    return lambda state: _PerVenue(monitor, fcfg, state)


class _PerVenue:
    """Builds a feed logic for its key's venue, learned from the first record it gets
    (bytewax builders do not see the key). A tick before any venue record is dropped:
    there is no venue yet to advance."""

    def __init__(self, cls: Any, fcfg: FeedConfig, state: Any) -> None:
        self.cls = cls
        self.fcfg = fcfg
        self.logic: Any = None
        self._batch: Any = None  # the logic's batch path, bound once it exists
        if state is not None:
            self._bind(cls(fcfg, state.venue, state))

    def _bind(self, logic: Any) -> None:
        self.logic = logic
        self._batch = getattr(logic, "on_batch", None) or (
            lambda events: [out for e in events for out in logic.on_event(e)])

    def on_event(self, event: Any) -> list[Any]:
        return self.on_batch([event])

    def on_batch(self, events: list[Any]) -> list[Any]:
        """The logic's own batch path when it has one, else one event at a time."""
        if self.logic is None:
            first = next((k for k, e in enumerate(events) if not isinstance(e, Tick)), None)
            if first is None:
                return []
            events = events[first:]
            self._bind(self.cls(self.fcfg, events[0].venue))
        return self._batch(events)

    def snapshot(self) -> Any:
        return None if self.logic is None else self.logic.snapshot()


def apply_gc_policy(cfg: GuardConfig) -> None:
    """Tune Python's cyclic garbage collector for the guard process.

    With Python's default youngest-generation threshold (700 allocations) the
    records in flight are alive at nearly every collection, so they are promoted
    to the oldest generation by the hundred thousand, and that triggers a full
    collection about once a second: each one scans the whole heap (River models,
    exposure and limit state) and stopped the guard for 50-80 ms at 23k events/s
    (``bench/guard_latency.py``, measured with ``gc.callbacks``). Collecting the
    youngest generation every ``gc_gen0_threshold`` allocations instead lets
    in-flight records die young, so full collections become rare. What exists at
    start-up (modules, config, compiled schemas) is frozen out of every collection.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> apply_gc_policy(msgspec.convert({"keys": {"signing_key": "k", "trust_file": "t",
    ...     "roots_file": "r"}, "gc_gen0_threshold": 20_000}, GuardConfig))
    >>> gc.get_threshold()[0]
    20000
    >>> gc.unfreeze(); gc.set_threshold(*before)
    """
    if cfg.gc_gen0_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(cfg.gc_gen0_threshold, older, oldest)
    gc.freeze()


def from_env() -> Dataflow:
    """Build from ``$RISKGUARD_CONFIG`` (used by ``python -m bytewax.run``)."""
    path = os.environ.get("RISKGUARD_CONFIG")
    if not path:
        raise ConfigError("RISKGUARD_CONFIG", "the path of a guard TOML config", None)
    cfg, digest = load_guard_config(path)
    start_metrics_server_from_env()
    flow = build_flow(cfg, digest)
    apply_gc_policy(cfg)
    return flow


def __getattr__(name: str) -> Any:
    if name == "flow":
        return from_env()
    raise AttributeError(name)


__all__ = ["TIER_INDEX_ENV", "GuardConfig", "GuardOut", "apply_gc_policy", "build_flow",
           "from_env", "guard_core", "load_guard_config"]
