"""The live guard dataflow: Kafka topics in, the guard core (or a market process), Kafka
topics out.

Run it with ``riskguard run --config guard.toml`` or
``RISKGUARD_CONFIG=guard.toml python -m bytewax.run riskguard.dataflows.guard``
(add ``-r`` for recovery). Every parameter comes from that one TOML file;
``dataflows/guard.example.toml`` documents them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bytewax.dataflow import Dataflow
from riskguard.connectors.audit_tail import AuditTail, read_audit_tail
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.kafka import kafka_output
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.topics import FIRM_STREAMS, INPUT_STREAMS
from riskguard.dataflows.guard.config import (
    GuardConfig,
    apply_gc_policy,
    check_grants,
    load_guard_config,
    load_keys,
    process_keys,
)
from riskguard.dataflows.guard.core import guard_core
from riskguard.dataflows.guard.kafka_io import OUTPUT_STREAMS, guard_input, output_keys
from riskguard.dataflows.guard.market import market_flow
from riskguard.dataflows.guard.recovery_marks import (
    claim_recovery,
    recovery_dir_of_run,
)
from riskguard.operators.audit import replica_of
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.metrics import start_metrics_server_from_env
from riskguard.operators.core.observe import ObserveConfig, configure, observe
from riskguard.operators.detection.features import (
    MARKET_FEATURES,
    OPTION_FEATURES,
    VENUE_FEATURES,
)
from riskguard.operators.detection.models import prepare_models
from riskguard.operators.signing.crypto import Signer, VerifyKey
from riskguard.operators.signing.trust import TrustStore, check_trust_serial
from riskguard.schemas import FIRM, RiskAlert, Severity, encode

from riskguard.environment import CONFIG, NEW_CONFIG
from riskguard.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_flow(
    cfg: GuardConfig,
    cfg_hash: str = "0" * 64,
    *,
    clock: Clock = system_clock,
    signer: Signer | None = None,
    trust: TrustStore | None = None,
    watch: Any = None,
    on_note: Callable[[str], None] | None = None,
) -> Dataflow:
    """The live guard: Kafka topics in, the guard core, Kafka topics out. ``watch`` (a
    :class:`~riskguard.dataflows.readiness.DetectorWatch`) sees what the detectors are fed
    (whole guard only). ``on_note`` is told what start-up found that does not stop it
    (:func:`report_audit_tail`)."""
    configure(ObserveConfig(option_instruments=frozenset(
        n for n, spec in cfg.exposure.instruments.instruments.items() if spec.kind == "option"
    )))
    role = cfg.tier.role
    if role == "market":
        prepare_detection(cfg)
        return market_flow(cfg, clock)
    if signer is None or trust is None:
        signer, trust = load_keys(cfg)
    flow = Dataflow("riskguard_guard")
    src = guard_input(flow, cfg, FIRM_STREAMS if role == "firm" else INPUT_STREAMS, clock)
    issuer = cfg.sign.issuer or signer.issuer
    public_key = signer.public_key

    def read_where_it_stands() -> tuple[int, AuditTail]:
        # once, before any worker signs: seq and audit chains continue where the topics
        # end; a topic that cannot be read or verified stops the start
        return (read_signed_seq(cfg, public_key, issuer, trust),
                read_guard_audit(cfg, signer, trust))

    delivered, tail = (read_where_it_stands() if role == "firm"
                       else while_preparing_detection(cfg, read_where_it_stands))
    chains = tail.chains
    report_audit_tail(cfg, tail, clock(), on_note)
    if cfg.replica.id:
        check_peer_configs(cfg.replica.id, cfg_hash, tail.peers)
    out = guard_core("guard", src.oks, cfg=cfg, cfg_hash=cfg_hash, clock=clock, signer=signer,
                     trust=trust, seq_floor=delivered, audit_resume=chains, wall_clock=clock,
                     input_errs=src.errs, tick_sources=1, watch=watch)
    keys = output_keys(issuer)
    for name in OUTPUT_STREAMS:
        kafka_output(name, getattr(out, name), brokers=cfg.kafka, topic=cfg.topic(name),
                     delivery_timeout_s=cfg.sink_delivery_timeout_s, key=keys[name])
    return flow


def read_guard_audit(cfg: GuardConfig, signer: Signer, trust: TrustStore) -> AuditTail:
    """What the audit topic says at this guard's start: its own chains and its peers'
    (``[replica] peers``), garbage counted."""
    return read_audit_tail(cfg.kafka, cfg.topic("audit"), trust.checkpoint_key,
                           origin=cfg.audit.origin, partitions=cfg.audit.partitions,
                           replicas=cfg.replica.peers, signer_of=trust.name_of,
                           issuer=trust.name_of(signer.key_id), issuers=cfg.replica.issuers)


def read_signed_seq(cfg: GuardConfig, key: VerifyKey, issuer: str, trust: TrustStore) -> int:
    """The highest seq ``issuer`` signed on the commands topic; a ``ConfigError`` if its
    commands there state a trust file newer than ``trust`` (an older one may trust keys
    since revoked)."""
    topic = cfg.topic("commands")
    signed = last_signed_seq(cfg.kafka, topic, key, issuer)
    check_trust_serial(trust.serial, signed.trust_serial, f"{issuer}'s commands on {topic}")
    return signed.seq


def report_audit_tail(cfg: GuardConfig, tail: AuditTail, now: int,
                      on_note: Callable[[str], None] | None) -> None:
    """Say what the audit topic held that the start does not stop on; a peer chain that
    cannot be verified is also a critical alert on the signals topic."""
    notes = []
    if tail.garbage:
        notes.append(f"warning: {tail.garbage} message(s) on {cfg.topic('audit')} are no "
                     f"audit record or checkpoint and were skipped (first: "
                     f"{tail.first_garbage[:200]})")
    alerts = []
    for chain, why in sorted(tail.unverified.items()):
        notes.append(f"warning: replica chain {chain} cannot be verified ({why}); its records "
                     "are not believed (its config hash is not compared)")
        alerts.append(RiskAlert(
            id=f"replica_unverified|{chain}|{now}"[:128], kind="replica_unverified",
            scope=FIRM, ts=now, severity=Severity.CRITICAL,
            reason=f"audit chain {chain}: {why}; its records are not believed"[:4096],
            details={"chain": chain, "replica": replica_of(chain) or ""}))
    for note in notes:
        log.warning("%s", note)
        if on_note is not None:
            on_note(note)
    if alerts:
        producer = CheckedProducer(cfg.kafka, what="replica_unverified alerts",
                                   delivery_timeout_s=cfg.sink_delivery_timeout_s)
        for a in alerts:
            observe(a)
            producer.produce(cfg.topic("signals"), encode(a), a.kind.encode())
        producer.flush()


def new_config_asked() -> bool:
    """Whether ``$RISKGUARD_NEW_CONFIG`` asks to start on a config the peers do not run.

    ``1`` (as ``riskguard run --new-config`` sets it) starts a replica on a config its
    peers do not run yet: the first replica of a planned config change. Unset, empty or
    ``0``: not asked; any other text is a :class:`ConfigError`.

    >>> os.environ[NEW_CONFIG] = "false"
    >>> try:
    ...     new_config_asked()
    ... except ConfigError as err:
    ...     print(str(err)[:52])
    RISKGUARD_NEW_CONFIG: 1 (start this replica on a new
    >>> del os.environ[NEW_CONFIG]
    """
    raw = os.environ.get(NEW_CONFIG, "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(NEW_CONFIG, "1 (start this replica on a new config), or 0 or "
                          "unset (start only on the config its peers run)", raw)
    return raw == "1"


def check_peer_configs(replica: str, cfg_hash: str, peers: dict[str, str]) -> None:
    """Refuse to start replica ``replica`` on another config than its peers' (the config
    hash on each peer's last audit record), unless ``$RISKGUARD_NEW_CONFIG`` is ``1``
    (:func:`new_config_asked`).

    >>> check_peer_configs("a", "1" * 64, {"b": "1" * 64})
    >>> try:
    ...     check_peer_configs("a", "1" * 64, {"b": "2" * 64})
    ... except ConfigError as err:
    ...     print(str(err)[:64])
    replica: the config its peers run (replica b: sha256 22222222222
    """
    asked = new_config_asked()
    differ = {p: h for p, h in sorted(peers.items()) if h != cfg_hash}
    if not differ or asked:
        return
    said = ", ".join(f"replica {p}: sha256 {h[:12]}" for p, h in differ.items())
    raise ConfigError("replica", f"the config its peers run ({said}; this one: "
                      f"{cfg_hash[:12]}); start it on their config, or with riskguard run "
                      "--new-config to change theirs next", replica)


def while_preparing_detection(cfg: GuardConfig, read: Callable[[], T]) -> T:
    """``read()`` (waits on the broker) in a thread while :func:`prepare_detection` works
    the CPU: a start pays for the longer of the two, not both."""
    with ThreadPoolExecutor(1, thread_name_prefix="riskguard-start") as pool:
        pending = pool.submit(read)
        prepare_detection(cfg)
        return pending.result()


def prepare_detection(cfg: GuardConfig) -> None:
    """Build at start-up what detection would otherwise build on its first records."""
    if cfg.detector.drift != "none":
        # start-up, not the first market record, pays for importing scipy
        import river.drift  # noqa: F401, PLC0415
    # and for each key class's models
    prepare_models(cfg.detector, (MARKET_FEATURES, OPTION_FEATURES, VENUE_FEATURES))


def from_env() -> Dataflow:
    """Build from ``$RISKGUARD_CONFIG`` (used by ``python -m bytewax.run``), claiming
    the recovery directory bytewax.run was given as ``riskguard run`` does
    (:mod:`~riskguard.dataflows.guard.recovery_marks`)."""
    path = os.environ.get(CONFIG)
    if not path:
        raise ConfigError(CONFIG, "the path of a guard TOML config", None)
    cfg, digest = load_guard_config(path)
    signer, trust = process_keys(cfg)
    check_grants(cfg, signer, trust, system_clock())  # before a record is read
    recovery = recovery_dir_of_run(sys.argv, os.environ)  # bytewax.run's -r, as it took it
    if recovery is not None:
        claim_recovery(recovery, cfg.replica.id, None if trust is None else trust.serial)
    start_metrics_server_from_env()
    flow = build_flow(cfg, digest, signer=signer, trust=trust)
    apply_gc_policy(cfg)
    return flow
