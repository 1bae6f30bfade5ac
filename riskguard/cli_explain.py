"""``riskguard explain``: for a moment in the data, which detectors could fire there and
what each would have needed."""

from __future__ import annotations

import argparse
import sys


def _explain(args: argparse.Namespace) -> int:
    from riskguard.dataflows.explain import explain_files  # noqa: PLC0415  (heavy imports)
    from riskguard.dataflows.guard import load_guard_config  # noqa: PLC0415

    loaded = load_guard_config(args.config)
    lines = explain_files(loaded, args.data, at=args.at, keys=args.key or (),
                          format=args.format, venue=args.venue, instrument=args.instrument,
                          market=args.market, contract_size=args.contract_size,
                          measure=args.measure)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser(
        "explain", help="say, for a moment in the data, which detectors could fire there",
        description="Replay the data through the guard as backtest does and, for one moment "
                    "of it, say per market which detectors could fire there, and what each "
                    "that could not would have needed (warm-up, a horizon's reference "
                    "price, other markets of the asset).")
    p.add_argument("--config", required=True, help="guard TOML config")
    p.add_argument("--data", nargs="+", required=True,
                   help="the files backtest takes: JSONL, Binance, Tardis.dev or OHLCV CSV "
                   "(docs/formats.md)")
    p.add_argument("--at", metavar="TIME",
                   help="the moment: ISO-8601 (UTC unless it says), or seconds, ms, us or ns "
                   "since the epoch (default: the largest move over the shortest horizon)")
    p.add_argument("--key", action="append", metavar="VENUE/INSTRUMENT",
                   help="explain this market only (repeatable; default: the markets with the "
                   "largest moves there)")
    from riskguard.cli_backtest import add_format_options  # noqa: PLC0415
    from riskguard.connectors.formats import FORMATS, MARKETS  # noqa: PLC0415

    add_format_options(p, FORMATS, MARKETS)
    p.set_defaults(func=_explain)
