"""The guard's configuration: one TOML file, its checks, the keys it names, and the
stream and record types each tier reads; also the process's garbage-collector policy."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from riskguard.connectors.topics import topic_name
from riskguard.operators.audit import AuditConfig
from riskguard.operators.core.admission import AdmissionConfig, Known
from riskguard.operators.core.clock import TICK_IDLE_NS
from riskguard.operators.detection.features import (
    FeatureConfig,
)
from riskguard.operators.detection.models import DetectorConfig
from riskguard.operators.exposure import ExposureConfig
from riskguard.operators.exposure.limits import LimitsConfig
from riskguard.operators.mitigation.feeds import FeedConfig
from riskguard.operators.mitigation.playbook import PlaybookConfig
from riskguard.operators.signing import SignConfig
from riskguard.operators.signing.crypto import Signer
from riskguard.operators.signing.preflight import preflight, warnings
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas import (
    AnomalySignal,
    Balance,
    Bar,
    BookDepth,
    DetectProgress,
    Fill,
    FundingRate,
    IndexPrice,
    OpenInterest,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    PremiumIndexBar,
    Quote,
    SignedEnvelope,
    Trade,
    Valuation,
    VenueStatus,
)

from riskguard.config import (
    CommonConfig,
    config_hash,
    decode_section,
    inline_playbook_file,
    read_toml,
)
from riskguard.errors import ConfigError, TrustError

NS = 1_000_000_000
MARKET = (Trade, Quote, Bar, BookDepth, OptionQuote, IndexPrice, FundingRate, OpenInterest,
          PremiumIndexBar)
TRADING = (Fill, PositionSnapshot, Balance, OpenOrders)
# Everything the guard core consumes; any other record type (a bare, unsigned command
# included) is a dead letter.
HANDLED = (*MARKET, VenueStatus, *TRADING, SignedEnvelope)
INPUT_STREAMS = ("market", "venue_status", "fills", "positions", "balances", "limit_updates",
                 "acks")
# What the detect tier reads, and the topic it writes for the firm tier
DETECT_STREAMS = ("market", "venue_status")
DETECTIONS = "detections"
DETECTED = (AnomalySignal, DetectProgress, Valuation)
# What a market process reads (the market topic split by underlying, the others whole),
# and what a firm tier fed by market processes reads
MARKET_STREAMS = ("market", "venue_status", "fills", "positions", "balances")
FIRM_OF_MARKET_STREAMS = ("venue_status", "limit_updates", "acks", DETECTIONS)
# What each input topic may carry: any other record on it is a wrong_topic dead letter
# (whoever may write market data must not move positions, nor sign anything)
STREAM_TYPES: dict[str, tuple[type, ...]] = {
    "market": MARKET,
    "venue_status": (VenueStatus,),
    "fills": (Fill,),
    "positions": (PositionSnapshot,),
    "balances": (Balance, OpenOrders),
    "limit_updates": (SignedEnvelope,),
    "acks": (SignedEnvelope,),  # executors' signed acks (their payload type says so)
    DETECTIONS: DETECTED,
}


class ReplicaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """This guard's place among redundant replicas (docs/replicas.md).

    ``id`` names this replica; empty: a single guard. Replicas read the same input
    and make the same decisions; each signs with its own key (``[keys] issuer``, its
    own name in the trust file), keeps its own recovery store and its own audit chain
    (``<audit.origin>@<id>/p<n>``), and its commands carry ``replica`` and a
    ``decision_id`` equal across replicas, which executors de-duplicate. ``peers``
    lists every replica's id, this one's included (``riskguard replicas watch``
    watches them). ``issuers`` (replica id -> issuer) lets one file serve every
    replica: each signs as its own entry, with ``id`` set per process by
    ``$RISKGUARD_REPLICA_ID`` (ops/k8s/replicas/).
    """

    id: str = ""
    peers: tuple[str, ...] = ()
    issuers: dict[str, str] = {}

    def validate(self, path: str = "replica") -> None:
        for i, name in enumerate((self.id, *self.peers)):
            if (name or i) and not _REPLICA_NAME.fullmatch(name):
                where = f"{path}.id" if i == 0 else f"{path}.peers"
                raise ConfigError(where, "a name of 1-32 [A-Za-z0-9_-]", name)
        if self.peers and not self.id:
            raise ConfigError(f"{path}.id", "this replica's id, one of the peers (or "
                              f"${REPLICA_ID_ENV})", self.id)
        if self.peers and self.id not in self.peers:
            raise ConfigError(f"{path}.peers", f"the replica ids, this one ({self.id!r}) "
                              "among them", list(self.peers))
        if len(set(self.peers)) != len(self.peers):
            raise ConfigError(f"{path}.peers", "distinct replica ids", list(self.peers))
        if self.issuers:
            if set(self.issuers) != set(self.peers):
                raise ConfigError(f"{path}.issuers", f"an issuer for each of the peers "
                                  f"{list(self.peers)}", sorted(self.issuers))
            if len(set(self.issuers.values())) != len(self.issuers):
                raise ConfigError(f"{path}.issuers", "a distinct issuer (key name) per "
                                  "replica", dict(self.issuers))


_REPLICA_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Sections that say where this process connects and which key it signs with, not what
# it decides: replicas of one guard differ there and share the rest of the hash.
_NOT_DECIDING = ("keys", "replica", "kafka")


class TierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which part of the guard this process runs (docs/scaling.md: "Two tiers" and "The
    market tier").

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
    # order. See docs/scaling.md.
    split_market_by_key: bool = True
    # The market topic is produced with riskguard.connectors.placement.aligned_partitions
    # (partitions a multiple of the worker count; index and oracle prices to every
    # partition): each worker reads only its own partitions, whose keys all route to it,
    # so market data is fetched once, never crosses processes, and each process still
    # has its own copy of every index price and heartbeat. Takes precedence over
    # split_market_by_key. See docs/scaling.md.
    aligned_market: bool = False
    # One bytewax source partition per worker, holding all of its Kafka partitions, read
    # into batches of up to batch_size per partition: every step pays per batch, and on a
    # backlog alignment cuts the per-partition reads small. Renames the source
    # partitions (a recovery store made with the other setting must be re-initialised).
    bundle_partitions: bool = True
    # The longest a fetch waits at the broker for data (librdkafka ``fetch.wait.max.ms``).
    # Short keeps a hop's latency low on the dev broker, which ends a waiting fetch only
    # at this time, not when data arrives; but every consumer that has caught up then
    # asks the broker again this often. Apache Kafka ends the wait when data arrives, so
    # there a longer wait costs no latency. See docs/operations.md (the dev broker).
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
    replica: ReplicaConfig = ReplicaConfig()
    admission: AdmissionConfig = AdmissionConfig()
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


REPLICA_ID_ENV = "RISKGUARD_REPLICA_ID"
"""Overrides ``replica.id``: one config file for every replica, each pod naming its own
(``ops/k8s/replicas/``); with ``replica.issuers`` it also picks the replica's issuer."""

TIER_INDEX_ENV = "RISKGUARD_TIER_INDEX"
"""Overrides ``tier.index``: a StatefulSet of market processes sets it from each pod's
ordinal (``ops/k8s/entrypoint.sh``), so they share one config file."""


def load_guard_config(path: str | Path) -> tuple[GuardConfig, str]:
    """Decode and validate the guard config; returns it and its hash: of everything that
    decides, all but ``[keys]``, ``[replica]`` and ``[kafka]``, so replicas of one guard
    share it.

    ``$RISKGUARD_TIER_INDEX``, when set, overrides ``tier.index`` (a market process's
    index from its pod's ordinal)."""
    data = read_toml(path)
    index = os.environ.get(TIER_INDEX_ENV)
    if index is not None:
        if not index.isdigit():
            raise ConfigError(TIER_INDEX_ENV, "a market process index (0, 1, ...)", index)
        data = {**data, "tier": {**data.get("tier", {}), "index": int(index)}}
    replica_id = os.environ.get(REPLICA_ID_ENV)
    if replica_id is not None:
        data = {**data, "replica": {**data.get("replica", {}), "id": replica_id}}
    base = Path(path).resolve().parent
    data = inline_playbook_file(data, base)
    try:
        return _load(data, base)
    except ConfigError as err:
        if "playbook_file" in data and err.path.split(".")[0].split("[")[0] == "playbook":
            err.file = str(base / data["playbook_file"])  # the rule is in that file
        raise


def _load(data: dict[str, object], base: Path) -> tuple[GuardConfig, str]:
    cfg = decode_section(data, GuardConfig)
    keys = cfg.keys
    resolved = KeysConfig(
        signing_key=str(base / keys.signing_key), issuer=keys.issuer,
        trust_file=str(base / keys.trust_file), roots_file=str(base / keys.roots_file),
    )
    cfg.replica.validate("replica")
    if cfg.replica.issuers:
        resolved = msgspec.structs.replace(resolved, issuer=cfg.replica.issuers[cfg.replica.id])
    playbook = msgspec.structs.replace(
        cfg.playbook, env=cfg.env, topic=topic_name(cfg.env, "commands"),
        issuer=resolved.issuer, replica=cfg.replica.id,
    )
    audit = cfg.audit if not cfg.replica.id else msgspec.structs.replace(
        cfg.audit, origin=f"{cfg.audit.origin}@{cfg.replica.id}")
    cfg = msgspec.structs.replace(cfg, keys=resolved, playbook=playbook, audit=audit)
    cfg.features.validate("features")
    cfg.detector.validate("detector")
    cfg.exposure.validate("exposure")
    cfg.limits.validate("limits")
    cfg.feeds.validate("feeds")
    _check_tier(cfg)
    _check_split(cfg)
    return cfg, config_hash({k: v for k, v in data.items() if k not in _NOT_DECIDING})


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


def known_names(cfg: GuardConfig) -> Known:
    """The venues, instruments and counterparties the config names: always admitted
    (:class:`~riskguard.operators.core.admission.KeyAdmission`)."""
    inst = cfg.exposure.instruments
    index_map = cfg.features.index_map
    return Known(
        venues=frozenset({*cfg.features.venues, *cfg.feeds.venues, *cfg.playbook.venues,
                          *_price_sources(cfg)}),
        instruments=frozenset({*inst.instruments, *inst.fx_index.values(), *index_map,
                               *(i for targets in index_map.values() for i in targets)}),
        counterparties=frozenset({*cfg.limits.counterparties, *cfg.playbook.venues}))


def _price_sources(cfg: GuardConfig) -> tuple[str, ...]:
    """The venues whose prices fan out to every venue's key: index and oracle sources."""
    return (*cfg.features.index_sources, *cfg.features.oracle_sources)




def load_keys(cfg: GuardConfig) -> tuple[Signer, TrustStore]:
    """Load the signing key and the root-verified trust file named in ``[keys]``."""
    signer = Signer.from_file(cfg.keys.signing_key, issuer=cfg.keys.issuer)
    trust = TrustStore.load(cfg.keys.trust_file, RootSet.load(cfg.keys.roots_file))
    return signer, trust


def check_grants(cfg: GuardConfig, signer: Signer, trust: TrustStore,
                 now_ns: int) -> list[str]:
    """Refuse to start a guard whose trust file does not let its key sign what its
    playbook issues (:func:`~riskguard.operators.signing.preflight.preflight`): one
    ``TrustError`` line naming the rule and the missing grant. A detect or market process
    signs no command and is not checked. Returns what fails closed only (an automatic
    resume or the playbook's own alert the key may not sign), one line each, to show."""
    if cfg.tier.role not in ("whole", "firm"):
        return []
    problem = preflight(trust, signer.key_id, cfg.playbook, now_ns=now_ns)
    if problem is not None:
        msg = (f"{cfg.keys.trust_file}: {problem}; every subscriber would refuse those "
               "commands: grant it in the trust file (raise serial, sign it again) or "
               "change the playbook")
        raise TrustError(msg)
    return [f"warning: {w}; subscribers will refuse it (fails closed: an operator's signed "
            "resume lifts what stays held)" for w in warnings(trust, signer.key_id, cfg.playbook)]




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
