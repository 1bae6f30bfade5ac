"""``riskguard publish``: check your own files against the wire contract and produce them
to the guard's input topics, with a summary (and the rejects as dead letters)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from riskguard.cli_backtest import add_format_options
from riskguard.config import common_config
from riskguard.errors import ConfigError
from riskguard.progress import Progress


def _publish(args: argparse.Namespace) -> int:
    from riskguard.connectors import publish as pub  # noqa: PLC0415  (heavy imports)
    from riskguard.schemas.codec import encode  # noqa: PLC0415

    stream = pub.check_stream(args.topic)
    cfg = common_config(args.config, brokers=args.brokers, env=args.env)
    for p in args.files:
        if not Path(p).is_file():
            raise ConfigError("publish FILE", "an existing file", p)
    total, batches = pub.read_files(args.files, fmt=args.format, venue=args.venue,
                                    instrument=args.instrument, market=args.market,
                                    contract_size=args.contract_size,
                                    measure=args.measure)
    publisher = None
    if not args.check:
        from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI imports this module)

        reach_kafka(cfg.kafka, "--brokers HOST:PORT (or [kafka] bootstrap in --config)")
        publisher = pub.Publisher(cfg.kafka, cfg.env,
                                  create=_creator(cfg) if args.create_topics else None)
        if stream != "auto":
            publisher.topic(stream)  # a missing topic stops here, before a file is read
    rejects = Path(args.rejects).open("wb") if args.rejects else None  # noqa: SIM115
    try:
        def rejected(dl: Any) -> None:
            if rejects is not None:
                rejects.write(encode(dl) + b"\n")

        with Progress("publish", total=total, unit="bytes") as bar:
            def moved(pos: int, res: Any) -> None:
                bar.text = f"({res.read:,} records, {sum(res.rejected.values()):,} rejected)"
                bar.update(pos)

            res = pub.publish(batches, stream, publisher, on_reject=rejected, on_progress=moved)
    finally:
        if rejects is not None:
            rejects.close()
    n_rej = sum(res.rejected.values())
    out = sys.stdout
    verb = "checked (not produced: --check)" if args.check else "produced"
    shown = res.produced if not args.check else res.read - n_rej
    out.write(f"read {res.read:,}  {verb} {shown:,}  rejected {n_rej:,}\n")
    for stream_name, n in sorted(res.per_topic.items()):
        where = pub.topic_name(cfg.env, stream_name)
        out.write(f"  {where:<40} {n:,}\n")
    for reason, n in res.rejected.most_common():
        out.write(f"  rejected {reason:<31} {n:,}\n")
    if args.rejects and n_rej:
        out.write(f"rejects: {args.rejects} (dead letters, one JSON per line)\n")
    return 1 if n_rej else 0


def _creator(cfg: Any) -> Any:
    """Creates a missing topic with the settings ``riskguard topics create`` gives it."""
    from riskguard.connectors.topics import create_topics, topic_specs  # noqa: PLC0415

    specs = {s.name: s for s in topic_specs(cfg.env, cfg.topics)}

    def create(name: str) -> None:
        create_topics(cfg.kafka.client_config(), [specs[name]])
    return create


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    from riskguard.connectors.formats import FORMATS, MARKETS  # noqa: PLC0415

    p = sub.add_parser(
        "publish", help="check your files against the wire contract and produce them to "
        "the guard's input topics",
        description="Read JSONL (wire contract), Binance public data dumps, Tardis.dev "
                    "CSVs or OHLCV CSV files (plain, .gz or .zip; docs/formats.md), check "
                    "every record, "
                    "produce the good ones (idempotent, acks=all, every delivery checked) "
                    "to <env>.riskguard.<stream>.v1, and print a summary. "
                    "Exit 0 when every record was produced, 1 when some were rejected, "
                    "2 on an error.")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to publish")
    p.add_argument("--topic", required=True, metavar="STREAM",
                   help="the input stream (market, venue_status, fills, positions, balances, "
                   "limit_updates, acks), or auto: each record to the stream of its type")
    p.add_argument("--config", help="TOML config: its env and [kafka] (e.g. guard.toml)")
    p.add_argument("--brokers", "--bootstrap", dest="brokers",
                   help="Kafka bootstrap HOST:PORT (overrides [kafka] bootstrap; default "
                   "127.0.0.1:9092)")
    p.add_argument("--env", help="environment, the topic prefix (overrides env in --config)")
    add_format_options(p, FORMATS, MARKETS)
    p.add_argument("--rejects", metavar="FILE.jsonl",
                   help="write each rejected record here as a dead letter")
    p.add_argument("--check", action="store_true",
                   help="check the files only; produce nothing, do not contact Kafka")
    p.add_argument("--create-topics", action="store_true",
                   help="create a missing input topic (as riskguard topics create does); "
                   "without it a missing topic is an error")
    p.set_defaults(func=_publish)
