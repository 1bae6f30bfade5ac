"""``riskguard subscribe``: verify a command topic, print commands, rejections and a summary."""

from __future__ import annotations

import argparse
import json
import sys

from riskguard.connectors.subscriber import (
    DEFAULT_DECISION_WINDOW_S,
    CommandSubscriber,
    DecisionConflict,
    Duplicate,
    GapAlert,
    Rejection,
    TrustBehind,
)
from riskguard.connectors.subscriber_state import DECISIONS_KEPT
from riskguard.errors import ConfigError, RiskguardError
from riskguard.operators.core.metrics import start_metrics_server_from_env
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas.codec import encode
from riskguard.schemas.commands import Audience, MitigationCommand


def _run(args: argparse.Namespace) -> int:
    start_metrics_server_from_env()  # RISKGUARD_METRICS_PORT: rejections and gaps
    try:
        trust = TrustStore.load(args.trust, RootSet.load(args.roots))
    except (RiskguardError, ConfigError) as err:
        sys.stderr.write(f"riskguard subscribe: trust file error: {err}\n")
        return 3

    from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this one)
    from riskguard.config import common_config  # noqa: PLC0415

    kafka = common_config(args.config, brokers=args.brokers).kafka
    reach_kafka(kafka, "--brokers HOST:PORT (default 127.0.0.1:9092, or [kafka] of --config)")

    def show(cmd: MitigationCommand) -> None:
        sys.stdout.write("COMMAND " + encode(cmd).decode() + "\n")

    def rejected(r: Rejection) -> None:
        sys.stdout.write(f"REJECT  {r.reason} partition={r.partition} offset={r.offset} "
                         f"{r.detail}\n")

    def duplicate(d: Duplicate) -> None:
        sys.stdout.write(f"DUPLICATE decision {d.decision_id[:16]} from {d.issuer} "
                         f"(seq {d.seq}): executed already as {d.first_command_id} from "
                         f"{d.first_issuer}\n")

    def alert(a: GapAlert | TrustBehind) -> None:
        if isinstance(a, TrustBehind):
            sys.stdout.write(f"ALERT   {a.command_id} from {a.issuer} was signed under trust "
                             f"file serial {a.signed_under}; this subscriber's is {a.ours}: "
                             "update its trust file\n")
            return
        sys.stdout.write(f"ALERT   seq gap from {a.issuer}: expected {a.expected}, "
                         f"got {a.got}\n")

    def conflict(c: DecisionConflict) -> None:
        sys.stdout.write(f"ALERT   decision conflict {c.decision_id[:16]}: {c.issuer} sent "
                         f"{c.got} ({c.command_id}); executed as {c.first} "
                         f"({c.first_command_id} from {c.first_issuer})\n")

    sub = CommandSubscriber(
        trust=trust, audience=Audience(env=args.env, topic=args.topic),
        state_path=args.state, on_command=show, on_reject=rejected, on_alert=alert,
        brokers=kafka, topic=args.topic, rejections_topic=args.rejections_topic,
        rejection_log=args.rejection_log, leeway_ns=int(args.leeway * 1e9),
        on_duplicate=duplicate, decision_window_s=args.decision_window,
        on_conflict=conflict, high_water=args.high_water,
        accept_state_loss=args.accept_state_loss, verify_threads=args.verify_threads,
    )
    try:
        sub.poll(max_messages=args.max_messages, idle_timeout_s=args.idle_timeout)
        sys.stdout.write("SUMMARY " + json.dumps(sub.summary(), sort_keys=True) + "\n")
    finally:
        sub.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subscribe", help="verify and print signed commands from a topic")
    p.add_argument("--brokers", help="Kafka bootstrap host:port (default 127.0.0.1:9092, or "
                   "[kafka] bootstrap of --config)")
    p.add_argument("--config", help="a TOML config whose [kafka] (TLS, SASL) to connect "
                   "with, e.g. guard.toml; --brokers changes only its address")
    p.add_argument("--topic", required=True, help="command topic (also the audience topic)")
    p.add_argument("--env", required=True, help="audience environment, e.g. prod")
    p.add_argument("--trust", required=True,
                   help="trust.toml: which keys may sign which commands (with its .sig)")
    p.add_argument("--roots", required=True,
                   help="roots.toml: the pinned root keys that must have signed the trust file")
    p.add_argument("--state", default="riskguard-subscriber.sqlite",
                   help="SQLite file of replay state (seen ids, each issuer's last seq, "
                   "offsets); keep it between runs (default riskguard-subscriber.sqlite)")
    p.add_argument("--high-water", metavar="FILE",
                   help="the high-water mark kept apart from --state (default STATE.hwm; "
                   "put it on another volume): a state behind it stops start-up")
    p.add_argument("--accept-state-loss", action="store_true",
                   help="start on a state behind its high-water mark (lost or restored "
                   "from an older copy): the state takes the mark's seqs, so nothing at or "
                   "below it, and nothing older than the commands' lifetime, runs again")
    p.add_argument("--rejections-topic", metavar="TOPIC",
                   help="also produce each rejection (and duplicate) as a JSON line to TOPIC")
    p.add_argument("--rejection-log", metavar="FILE",
                   help="also append each rejection (and duplicate) as a JSON line to FILE")
    p.add_argument("--leeway", type=float, default=10.0, help="clock-skew leeway, seconds")
    p.add_argument("--decision-window", type=float, default=DEFAULT_DECISION_WINDOW_S,
                   metavar="SECONDS", help="how long every executed decision is remembered, so "
                   "another guard replica's copy is dropped as a duplicate (default "
                   f"{DEFAULT_DECISION_WINDOW_S:g}; past it the newest {DECISIONS_KEPT:,} stay)")
    p.add_argument("--verify-threads", type=int, metavar="N",
                   help="threads that check a batch's signatures at once (default: one per "
                   "core this process may run on)")
    p.add_argument("--max-messages", type=int, metavar="N",
                   help="stop after N messages (default: no limit)")
    p.add_argument("--idle-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="stop after SECONDS without a message (default 5)")
    p.set_defaults(func=_run)
