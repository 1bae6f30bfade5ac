"""``riskguard replicas watch``: compare redundant guard replicas through their audit topic.

Prints one ``ALERT`` line (JSON) per ``replica_divergence``, ``replica_silent``,
``replica_restored`` or ``replica_config_mismatch`` alert, optionally produces each
alert to a topic (every delivery checked), and a ``SUMMARY`` line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

from riskguard.errors import ConfigError

_TICK_S = 1.0


def _run(args: argparse.Namespace) -> int:
    from confluent_kafka import (  # noqa: PLC0415
        OFFSET_BEGINNING,
        Consumer,
        TopicPartition,
    )

    from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this one)
    from riskguard.connectors.kafka import list_partitions  # noqa: PLC0415
    from riskguard.connectors.kafka.producer import CheckedProducer  # noqa: PLC0415
    from riskguard.operators.audit import (  # noqa: PLC0415
        ReplicaWatchConfig,
        ReplicaWatchLogic,
    )
    from riskguard.operators.core.metrics import start_metrics_server_from_env  # noqa: PLC0415

    settings, topic, peers = watch_settings(args)
    origin, partitions, issuers = _chains(args)
    config = ReplicaWatchConfig(peers=peers, tolerance_s=args.tolerance, silent_s=args.silent,
                                origin=origin, partitions=partitions, issuers=issuers)
    trust = _trust(args)
    reach_kafka(settings, "--brokers HOST:PORT, or [kafka] in --config")
    start_metrics_server_from_env()  # RISKGUARD_METRICS_PORT: riskguard_risk_alerts_total
    parts = list_partitions(settings, topic)
    consumer = Consumer({**settings.client_config(),
                         "group.id": f"riskguard-replicas-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    # every chain from its start: a record is believed once its signed checkpoint is, and
    # that needs the chain's Merkle state; without --from-beginning what was written
    # before the watch began only builds that state, it raises nothing
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    alerts = _Alerts(CheckedProducer(settings, what=f"replica watch alerts to "
                                     f"{args.alerts_topic}", delivery_timeout_s=5)
                     if args.alerts_topic else None, args.alerts_topic)
    logic = ReplicaWatchLogic(config, keys=trust.checkpoint_key, signer_of=trust.name_of)
    try:
        unreadable = _watch(consumer, logic, alerts, args, topic, ends)
    finally:
        consumer.close()
        alerts.close()
    attested = logic.state.attest.counts if logic.state.attest is not None else {}
    summary = {**logic.state.counts, **{f"alerts.{k}": v for k, v in alerts.kinds.items()},
               **{f"records.{k}": v for k, v in attested.items()}, "unreadable": unreadable}
    sys.stdout.write("SUMMARY " + json.dumps(summary, sort_keys=True) + "\n")
    return 0


def _watch(consumer: Any, logic: Any, alerts: _Alerts, args: argparse.Namespace, topic: str,
           ends: dict[int, int]) -> int:
    """Feed the audit topic's items to ``logic`` until idle for ``--idle-timeout`` (or
    for ever), ticking it each second; its alerts go out (those about what was written
    before the watch began only with ``--from-beginning``). Returns how many messages
    were no audit item."""
    from riskguard.operators.audit import decode_item  # noqa: PLC0415

    unreadable = 0
    last_message = last_tick = time.monotonic()
    while args.idle_timeout is None or time.monotonic() - last_message < args.idle_timeout:
        m = consumer.poll(0.2)
        now = time.monotonic()
        if m is not None and m.error() is None:
            last_message = now
            try:
                item = decode_item(m.value() or b"", f"{topic}[{m.partition()}]@{m.offset()}")
            except Exception as err:  # not an audit item: counted and told, never the end
                unreadable += 1
                _dead_letter(topic, m, err)
                continue
            raised = logic.on_event(item)
            if args.from_beginning or (m.offset() or 0) >= ends.get(m.partition() or 0, 0):
                alerts.emit(raised)
        if now - last_tick >= _TICK_S:
            last_tick = now
            alerts.emit(logic.on_event(None))
        alerts.check()
    alerts.emit(logic.on_event(None))
    return unreadable


def _dead_letter(topic: str, message: Any, err: Exception) -> None:
    """A ``DEAD <json>`` line for a message that is no audit item: where it was, why, and
    its bytes (cut to fit a dead letter)."""
    from riskguard.schemas import DeadLetter, encode  # noqa: PLC0415

    dead = DeadLetter.of(topic=topic, partition=message.partition() or 0,
                         offset=message.offset() or 0, ts=time.time_ns(),
                         reason="unreadable_audit_item", expected="an audit record or checkpoint",
                         found=str(err), step="replicas_watch", raw=message.value() or b"")
    sys.stdout.write("DEAD " + encode(dead).decode() + "\n")


class _Alerts:
    """Where the watch's alerts go: stdout (``ALERT`` lines), the metrics, and the
    alerts topic when one is given; a delivery that fails stops the watch."""

    def __init__(self, producer: Any, topic: str | None) -> None:
        self.producer, self.topic = producer, topic
        self.kinds: Counter[str] = Counter()

    def emit(self, alerts: list[Any]) -> None:
        from riskguard.operators.core.observe import observe  # noqa: PLC0415
        from riskguard.schemas import encode  # noqa: PLC0415

        for a in alerts:
            self.kinds[a.kind] += 1
            observe(a)
            body = encode(a)
            sys.stdout.write("ALERT " + body.decode() + "\n")
            if self.producer is not None:
                self.producer.produce(self.topic, body, a.kind.encode())
        sys.stdout.flush()

    def check(self) -> None:
        """Serve the producer's delivery reports; DeliveryError on a failed one."""
        if self.producer is not None:
            self.producer.check()

    def close(self) -> None:
        """Flush the alerts still on their way; DeliveryError if any is not delivered."""
        if self.producer is not None:
            self.producer.flush()


def _trust(args: argparse.Namespace) -> Any:
    """The trust file whose keys sign checkpoints: --trust/--roots, else [keys] of
    --config (a record is believed only once a checkpoint signed by one vouches for it)."""
    from riskguard.operators.signing.trust import RootSet, TrustStore  # noqa: PLC0415

    trust, roots = args.trust, args.roots
    if args.config and not (trust and roots):
        from riskguard.dataflows.guard import load_guard_config  # noqa: PLC0415

        keys = load_guard_config(args.config)[0].keys
        trust, roots = trust or keys.trust_file, roots or keys.roots_file
    if not (trust and roots):
        raise ConfigError("--trust/--roots", "the trust file and its roots (or --config with "
                          "[keys]): the watch believes a record only once a checkpoint "
                          "signed by a key the trust file lists vouches for it", None)
    return TrustStore.load(trust, RootSet.load(roots))


def watch_settings(args: argparse.Namespace) -> tuple[Any, str, tuple[str, ...]]:
    """Kafka settings, the audit topic and the peers: from the flags, or from a replica's
    guard config (its ``[kafka]`` with TLS/SASL, its env's audit topic, ``[replica]
    peers``), flags winning."""
    from riskguard.config import common_config, read_toml  # noqa: PLC0415
    from riskguard.connectors.topics import topic_name  # noqa: PLC0415

    common = common_config(args.config, brokers=args.brokers)
    settings = common.kafka
    topic, peers = args.topic, tuple(p for p in (args.peers or "").split(",") if p)
    if args.config:
        topic = topic or topic_name(common.env, "audit")
        listed = read_toml(args.config).get("replica", {}).get("peers", [])
        peers = peers or tuple(str(p) for p in listed)
    if not topic:
        raise ConfigError("--topic", "the guard's audit topic (or --config)", None)
    if len(peers) == 1:
        raise ConfigError("--peers", "two or more replica ids, comma-separated", args.peers)
    return settings, topic, peers


def _chains(args: argparse.Namespace) -> tuple[str | None, int | None, dict[str, str]]:
    """The guard's audit origin and chain count (the flags, else ``--config``'s [audit]
    origin and partitions), and ``--config``'s [replica] issuers. Known, the watch
    follows only ``<origin>@<replica>/p<k>`` for ``k`` below the count; unknown (no flag,
    no config), any origin and any partition."""
    from riskguard.config import decode_section, read_toml  # noqa: PLC0415
    from riskguard.operators.audit import AuditConfig  # noqa: PLC0415

    if not args.config:
        return args.origin, args.partitions, {}
    data = read_toml(args.config)
    audit = decode_section(data.get("audit", {}), AuditConfig)
    issuers = data.get("replica", {}).get("issuers", {})
    return (args.origin or audit.origin,
            args.partitions if args.partitions is not None else audit.partitions,
            {str(k): str(v) for k, v in issuers.items()} if isinstance(issuers, dict) else {})


def register(sub: argparse._SubParsersAction) -> None:
    replicas = sub.add_parser("replicas", help="watch redundant guard replicas (docs/replicas.md)")
    r = replicas.add_subparsers(dest="replicas_command", metavar="ACTION", required=True)
    w = r.add_parser("watch", help="alert when replicas' decisions part, or one goes silent")
    w.add_argument("--config", help="a replica's guard TOML: its [kafka] settings (TLS, "
                                    "SASL), its env's audit topic and [replica] peers")
    w.add_argument("--brokers", help="HOST:PORT (default 127.0.0.1:9092, or [kafka] of "
                                     "--config)")
    w.add_argument("--topic", help="the guard's audit topic (default: from --config)")
    w.add_argument("--origin", help="the guard's [audit] origin (default: from --config, "
                   "else any)")
    w.add_argument("--partitions", type=int, metavar="N", help="the guard's [audit] "
                   "partitions, its chains per replica (default: from --config, else any)")
    w.add_argument("--trust", help="trust file whose keys sign checkpoints (default: [keys] "
                                   "of --config)")
    w.add_argument("--roots", help="roots file of --trust (default: [keys] of --config)")
    w.add_argument("--peers", help="every replica's id, comma-separated (default: "
                                   "[replica] peers of --config, else every replica seen)")
    w.add_argument("--tolerance", type=float, default=10.0, metavar="SECONDS",
                   help="how long another replica may take to make the same decision")
    w.add_argument("--silent", type=float, default=60.0, metavar="SECONDS",
                   help="how long a replica may write nothing while another writes")
    w.add_argument("--alerts-topic", help="also produce each alert (JSON) to this topic")
    w.add_argument("--from-beginning", action="store_true",
                   help="alert on the whole topic (default: from now on; what came before "
                        "is read only to check the chains)")
    w.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="stop after this long without a message (default: run until stopped)")
    w.set_defaults(func=_run)
