"""``riskguard topics create``: create every riskguard topic with its partitions."""

from __future__ import annotations

import argparse
import sys

from riskguard.config import CommonConfig, load_common
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import STREAMS, TopicSpec, create_topics, topic_name


def topic_specs(cfg: CommonConfig) -> list[TopicSpec]:
    """One spec per riskguard stream, with partitions and retention from config."""
    t = cfg.topics
    specs = []
    for stream in STREAMS:
        settings: dict[str, str] = {}
        if t.min_insync_replicas is not None:
            settings["min.insync.replicas"] = str(t.min_insync_replicas)
        if stream in t.retention_ms:
            settings["retention.ms"] = str(t.retention_ms[stream])
        if stream == "limit_updates":
            settings["cleanup.policy"] = "compact"
        specs.append(TopicSpec(
            topic_name(cfg.env, stream), partitions=t.partitions.get(stream, t.default_partitions),
            replication_factor=t.replication_factor, config=settings,
        ))
    return specs


def _create(args: argparse.Namespace) -> int:
    cfg = load_common(args.config) if args.config else CommonConfig()
    if args.bootstrap:
        cfg = CommonConfig(
            env=args.env or cfg.env, kafka=KafkaSettings(bootstrap=args.bootstrap),
            topics=cfg.topics,
        )
    elif args.env:
        cfg = CommonConfig(env=args.env, kafka=cfg.kafka, topics=cfg.topics)
    result = create_topics(cfg.kafka.client_config(), topic_specs(cfg))
    for spec in topic_specs(cfg):
        sys.stdout.write(f"{result[spec.name]:8} {spec.name} partitions={spec.partitions}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  (argparse private generic)
    p = sub.add_parser("topics", help="provision Kafka topics")
    tsub = p.add_subparsers(dest="topics_command", required=True)
    c = tsub.add_parser("create", help="create every riskguard topic (idempotent)")
    c.add_argument("--config", help="TOML config (env, kafka, topics sections)")
    c.add_argument("--bootstrap", help="override kafka.bootstrap")
    c.add_argument("--env", help="override env (topic prefix)")
    c.set_defaults(func=_create)
