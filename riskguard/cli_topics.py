"""``riskguard topics create``: create every riskguard topic, with its settings and ACLs.

Each topic gets its partition count, replication factor, ``min.insync.replicas``
and retention; ``limit_updates`` is compacted (the latest signed update per
limit key is what a restarted guard must see) and the audit log is kept
forever. ``--acls`` prints the Kafka ACLs to apply: only the riskguard
principal may write the commands and the other guard outputs (audit,
signals ...); command consumers may only read the commands topic (and write
rejections); only the risk officers' principal may write limit updates. The ACLs only
protect anything when the brokers run with ``allow.everyone.if.no.acl.found=false``
(the default-deny that makes a forgotten ACL fail closed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from riskguard.config import CommonConfig, common_config
from riskguard.connectors.topics import TopicSpec, create_topics, topic_name, topic_specs

# Streams the guard itself writes (riskguard principal needs WRITE) and reads (the
# detections topic: the market processes write it, the firm process reads it).
GUARD_WRITES = ("features", "signals", "exposures", "commands", "audit", "dead_letters",
                "detections")
GUARD_READS = ("market", "fills", "positions", "balances", "venue_status", "limit_updates",
               "acks", "detections")


def acl_commands(
    cfg: CommonConfig, *, principal: str = "User:riskguard",
    consumers: Sequence[str] = ("User:trading",), bootstrap: str | None = None,
    limit_writer: str = "User:risk-officer",
) -> list[str]:
    """The ``kafka-acls.sh`` commands that lock the topics down (prefix-free, per topic).

    >>> cmds = acl_commands(CommonConfig(env="prod"), bootstrap="b:9092")
    >>> [c for c in cmds if "commands.v1" in c and "Write" in c]  # doctest: +NORMALIZE_WHITESPACE
    ['kafka-acls.sh --bootstrap-server b:9092 --add --allow-principal User:riskguard
      --operation Write --operation Describe --topic prod.riskguard.commands.v1']
    """
    base = f"kafka-acls.sh --bootstrap-server {bootstrap or cfg.kafka.bootstrap} --add"
    out = []
    for stream in GUARD_READS:
        out.append(f"{base} --allow-principal {principal} --operation Read --operation Describe "
                   f"--topic {topic_name(cfg.env, stream)}")
    for stream in GUARD_WRITES:
        out.append(f"{base} --allow-principal {principal} --operation Write --operation Describe "
                   f"--topic {topic_name(cfg.env, stream)}")
    # Idempotent producers on brokers older than 2.8 also need IdempotentWrite on the cluster.
    out.append(f"{base} --allow-principal {principal} --operation IdempotentWrite --cluster")
    out.append(f"{base} --allow-principal {limit_writer} --operation Write --operation Describe "
               f"--topic {topic_name(cfg.env, 'limit_updates')}")
    commands = topic_name(cfg.env, "commands")
    for consumer in consumers:
        out.append(f"{base} --allow-principal {consumer} --operation Read --operation Describe "
                   f"--topic {commands}")
        out.append(f"{base} --allow-principal {consumer} --operation Write --operation Describe "
                   f"--topic {topic_name(cfg.env, 'rejections')}")
        # executors answer each command with a signed ack, which the guard reads
        out.append(f"{base} --allow-principal {consumer} --operation Write --operation Describe "
                   f"--topic {topic_name(cfg.env, 'acks')}")
    return out




def _settings(spec: TopicSpec) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(spec.config.items()))


def _create(args: argparse.Namespace) -> int:
    cfg = common_config(args.config, brokers=args.bootstrap, env=args.env)
    specs = topic_specs(cfg.env, cfg.topics)
    if args.dry_run:
        result = dict.fromkeys((s.name for s in specs), "plan")
    else:
        from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this one)

        how = "--bootstrap HOST:PORT (or [kafka] bootstrap in --config)"
        reach_kafka(cfg.kafka, how)
        result = create_topics(cfg.kafka.client_config(), specs)
    for spec in specs:
        sys.stdout.write(f"{result[spec.name]:8} {spec.name} partitions={spec.partitions} "
                         f"replication={spec.replication_factor} {_settings(spec)}\n")
    if args.acls:
        sys.stdout.write("# ACLs (brokers must run with allow.everyone.if.no.acl.found=false)\n")
        for line in acl_commands(cfg, principal=args.principal,
                                 consumers=args.consumer or ["User:trading"],
                                 limit_writer=args.limit_writer):
            sys.stdout.write(line + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="provision Kafka topics")
    tsub = p.add_subparsers(dest="topics_command", required=True)
    c = tsub.add_parser(
        "create", help="create every riskguard topic (idempotent) and print its ACLs",
        description="Create <env>.riskguard.<stream>.v1 for every stream with partitions, "
                    "replication factor, min.insync.replicas, retention (compaction for "
                    "limit_updates). Existing topics are left as they are.",
    )
    c.add_argument("--config", help="TOML config (env, kafka, topics sections)")
    c.add_argument("--bootstrap", help="override kafka.bootstrap")
    c.add_argument("--env", help="override env (topic prefix)")
    c.add_argument("--dry-run", action="store_true",
                   help="print the topics and settings without contacting the broker")
    c.add_argument("--acls", action="store_true", help="also print the kafka-acls.sh commands")
    c.add_argument("--principal", default="User:riskguard",
                   help="the guard's Kafka principal (sole writer of the commands topic)")
    c.add_argument("--consumer", action="append",
                   help="a command consumer's principal (READ commands); repeatable")
    c.add_argument("--limit-writer", default="User:risk-officer",
                   help="principal that publishes signed limit updates (WRITE limit_updates)")
    c.set_defaults(func=_create)
