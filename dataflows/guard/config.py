"""The guard's configuration: one TOML file, its checks, the keys it names, and the
stream and record types each process reads; also the process's garbage-collector policy."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from riskguard.connectors.topics import topic_name
from riskguard.operators.audit import AuditConfig
from riskguard.operators.core.admission import AdmissionConfig, Known
from riskguard.operators.detection.features import (
    FeatureConfig,
)
from riskguard.operators.detection.models import DetectorConfig
from riskguard.operators.exposure import ExposureConfig
from riskguard.operators.exposure.limit_specs import LimitsConfig
from riskguard.operators.mitigation.feeds import FeedConfig
from riskguard.operators.mitigation.playbook import PlaybookConfig
from riskguard.operators.mitigation.preflight import preflight, warnings
from riskguard.operators.signing import SignConfig
from riskguard.operators.signing.crypto import Signer
from riskguard.operators.signing.trust import RootSet, TrustStore

from riskguard.config import (
    CommonConfig,
    config_hash,
    decode_section,
    inline_playbook_file,
    read_toml,
)
from riskguard.environment import REPLICA_ID, TIER_INDEX
from riskguard.errors import ConfigError, TrustError
from riskguard.validation import (
    Nanoseconds,
    NonNegative,
    PositiveInt,
    PositiveSeconds,
    Seconds,
    check_declared,
)

NS = 1_000_000_000
ReplicaName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


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

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,32}$")] = ""
    peers: tuple[ReplicaName, ...] = ()
    issuers: dict[str, str] = {}

    def validate(self, path: str = "replica") -> None:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, path)
        if self.peers and not self.id:
            raise ConfigError(f"{path}.id", "this replica's id, one of the peers (or "
                              f"${REPLICA_ID})", self.id)
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


# Sections that say where this process connects and which key it signs with, not what
# it decides: replicas of one guard differ there and share the rest of the hash.
_NOT_DECIDING = ("keys", "replica", "kafka")


class TierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which part of the guard this process runs (docs/scaling.md, "The market tier").

    ``whole`` runs everything, in one worker. The market tier splits the guard into
    ``market_processes`` market processes and one firm process, each its own
    one-worker dataflow. A ``market`` process (``index`` 0, 1, ...) owns whole
    underlyings (``owners``, else a hash): it reads the market, fill, position, balance
    and orders records of its underlyings, runs feed selection and anomaly detection on
    them, values their positions (exposure stage 1), and writes its signals, valuation
    parts and progress to the ``detections`` topic. The ``firm`` process sums the parts
    into exposures and runs limits, the feed monitor, the playbook, signing and the
    audit; it reads no market or trading topic.
    """

    role: Literal["whole", "market", "firm"] = "whole"
    # market and firm: how many market processes there are; the firm's clock waits for
    # each one's progress
    market_processes: Annotated[int, msgspec.Meta(ge=1)] = 1
    # market: this process's index, 0 <= index < market_processes
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    # market: the market process that owns an underlying; any other underlying goes to
    # crc32(name) % market_processes (balance the load: a few underlyings carry most data)
    owners: dict[str, int] = {}
    # firm: how many signal ids it remembers, to drop those a resumed market process
    # sends again
    recent_ids: Annotated[int, msgspec.Meta(ge=1)] = 65_536
    # firm: how long (processing time) its clock waits for a silent market process, and
    # its input for more of what it writes; a market process restarted within this leaves
    # the firm's outputs as if it never stopped. One silent longer raises a critical
    # market_process_silent alert
    market_wait_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0


class InputConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the guard reads its topics."""

    starting_offset: Literal["earliest", "latest"] = "earliest"
    idle_eof_s: PositiveSeconds | None = None
    max_lateness_ns: Nanoseconds = 10 * NS
    max_future_skew_ns: Nanoseconds = 5 * NS
    # a record further than this ahead of its partition's watermark waits for the
    # partition's next record: more than this behind it, it was a lone bad timestamp, an
    # `ahead` dead letter (else every genuine record after it would be late); at least
    # max_lateness_ns (0: none waits)
    max_lead_ns: Nanoseconds = 60 * NS
    check_future: bool = True
    batch_size: PositiveInt = 1000
    align_skew_s: Seconds | None = 2.0
    # Live, latency first: each read takes at most batch_size per partition, so a fill
    # is not processed behind a whole market-data burst (costs replay throughput).
    fair_reads: bool = False
    # Stamp records that carry no ``recv_ts`` with this process's receive time (it feeds
    # detection-to-command latency and the venue-latency feature). Turn it off to replay
    # historical data through the live path: old events would look days late.
    stamp_recv_ts: bool = True
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
    # how many venues, instruments and counterparties beyond the config's the guard keeps
    # state for
    admission: AdmissionConfig = AdmissionConfig()
    # event-time tick: playbook clock, heartbeat gaps, and exposure re-valuation of price
    # moves (fills re-value sooner: exposure.position_revalue_ns); at most a minute
    tick_ns: Annotated[int, msgspec.Meta(ge=1, le=60 * NS)] = NS
    mark_interval_ns: Nanoseconds = 250_000_000
    mark_move_bps: NonNegative = 5.0
    playbook_file: str | None = None
    sink_delivery_timeout_s: PositiveSeconds = 30.0
    # Python's youngest-generation collection threshold in the guard process (0: leave
    # Python's default of 700); see apply_gc_policy
    gc_gen0_threshold: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 50_000

    def topic(self, stream: str) -> str:
        return topic_name(self.env, stream)


def load_guard_config(path: str | Path) -> tuple[GuardConfig, str]:
    """Decode and validate the guard config; returns it and its hash (of all but
    ``[keys]``, ``[replica]`` and ``[kafka]``, so replicas of one guard share it).
    An error for a missing value notes how the example config sets it.

    ``$RISKGUARD_TIER_INDEX`` overrides ``tier.index``: a StatefulSet of market processes
    sets it from each pod's ordinal (``ops/k8s/entrypoint.sh``), so they share one config
    file. ``$RISKGUARD_REPLICA_ID`` overrides ``replica.id``: one config file for every
    replica, each pod naming its own (``ops/k8s/replicas/``); with ``replica.issuers`` it
    also picks the replica's issuer."""
    try:
        return _load_guard_config(path)
    except ConfigError as err:
        with_example(err)
        raise


def with_example(err: ConfigError) -> ConfigError:
    """``err`` with a note on how the example configs set the key it names, when it
    lacks a value and has no example yet.

    >>> str(with_example(ConfigError("keys.signing_key", "is required")).__notes__[0])
    'e.g. [keys] signing_key = "keys/guard.key"'
    """
    notes = getattr(err, "__notes__", [])
    if err.found is not None or "e.g." in str(err) or any("e.g." in n for n in notes):
        return err
    from riskguard.config_examples import example_for  # noqa: PLC0415  (reads the examples)

    example = example_for(GuardConfig, err.path)
    if example:
        err.add_note(f"e.g. {example}")
    return err


def _load_guard_config(path: str | Path) -> tuple[GuardConfig, str]:
    data = read_toml(path)
    index = os.environ.get(TIER_INDEX)
    if index is not None:
        if not (index.isascii() and index.isdigit()):  # "²" is a digit int() refuses
            raise ConfigError(TIER_INDEX, "a market process index (0, 1, ...)", index)
        data = _override(data, "tier", "index", int(index))
    replica_id = os.environ.get(REPLICA_ID)
    if replica_id is not None:
        data = _override(data, "replica", "id", replica_id)
    base = Path(path).resolve().parent
    data = inline_playbook_file(data, base)
    try:
        return _load(data, base)
    except ConfigError as err:
        if "playbook_file" in data and err.path.split(".")[0].split("[")[0] == "playbook":
            err.file = str(base / data["playbook_file"])  # the rule is in that file
        raise


def _override(data: dict[str, Any], table: str, key: str, value: object) -> dict[str, Any]:
    """``data`` with ``[table] key`` set to ``value``; a ``table`` that is no table is
    left as it is, for the decode to name."""
    given = data.get(table, {})
    if not isinstance(given, dict):
        return data
    return {**data, table: {**given, key: value}}


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
    cfg.limits.check_names(cfg.exposure.instruments, "limits")
    cfg.feeds.validate("feeds")
    check_lead(cfg.input)
    check_tier(cfg)
    return cfg, config_hash({k: v for k, v in data.items() if k not in _NOT_DECIDING})


def check_lead(inp: InputConfig) -> None:
    """A record the next one is more than ``max_lead_ns`` behind is refused as ahead: a
    lead shorter than the lateness would refuse one a later record is not late after."""
    if 0 < inp.max_lead_ns < inp.max_lateness_ns:
        raise ConfigError("input.max_lead_ns", f"0 or at least input.max_lateness_ns "
                          f"({inp.max_lateness_ns})", inp.max_lead_ns)


def check_tier(cfg: GuardConfig) -> None:
    """Tier checks: market indexes exist, index sources have no failover pair, the firm
    aligns its input."""
    tier = cfg.tier
    if tier.role == "firm" and cfg.input.align_skew_s is None:
        raise ConfigError("input.align_skew_s", "a number of seconds for the firm process "
                          "(it reads the market processes' valuations in step)", None)
    if tier.role != "market":
        return
    n = tier.market_processes
    if tier.index >= n:
        raise ConfigError("tier.index", f"a market process index below market_processes ({n})",
                          tier.index)
    bad = {u: i for u, i in tier.owners.items() if not 0 <= i < n}
    if bad:
        raise ConfigError("tier.owners", f"market process indexes in [0, {n})", bad)
    # each market process routes its own copy of an index price around feed selection
    both = sorted(set(_price_sources(cfg)) & set(cfg.feeds.venues))
    if both:
        raise ConfigError("tier.role",
                          "index and oracle sources without a [feeds.venues] failover pair "
                          "(each market process reads its own copy of their prices)", both)


def price_key_prefixes(cfg: GuardConfig) -> tuple[bytes, ...]:
    """The Kafka key prefixes (``<source>/``) of index and oracle prices on the market
    topic: every market process reads its own copy of them."""
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


def process_keys(cfg: GuardConfig) -> tuple[Signer | None, TrustStore | None]:
    """:func:`load_keys` for the process ``cfg`` runs; a market process signs and
    verifies nothing, so it reads no key (its host need not have one): ``(None, None)``."""
    if cfg.tier.role == "market":
        return None, None
    return load_keys(cfg)


def check_grants(cfg: GuardConfig, signer: Signer | None, trust: TrustStore | None,
                 now_ns: int) -> list[str]:
    """Raise ``TrustError`` when the trust file does not let the guard's key sign what its
    playbook issues (:func:`~riskguard.operators.mitigation.preflight.preflight`); return
    warnings, one line each, for what only fails closed. A process without a key (a
    market process, :func:`process_keys`) signs nothing and is not checked."""
    if signer is None or trust is None:
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

    At Python's default threshold (700) in-flight records survive into the oldest
    generation, causing frequent full-heap collections that pause the guard
    (``bench/guard_latency.py``). A gen-0 collection every ``gc_gen0_threshold``
    allocations lets them die young. What exists at start-up is frozen out of every
    collection.

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
