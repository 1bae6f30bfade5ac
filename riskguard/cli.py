"""The ``riskguard`` command line.

Subcommands live in ``riskguard/cli_<area>.py`` modules, each providing
``register(subparsers)``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from riskguard import __version__
from riskguard.errors import RiskguardError

AREAS = (
    "broker", "topics", "keys", "audit", "subscribe", "command", "run", "demo",
    "backtest", "calibrate", "stress", "status",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riskguard",
        description="Streaming risk guard for automated crypto trading.",
    )
    parser.add_argument("--version", action="version", version=f"riskguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        try:
            module = importlib.import_module(f"riskguard.cli_{area}")
        except ModuleNotFoundError as err:
            if err.name == f"riskguard.cli_{area}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except RiskguardError as err:
        sys.stderr.write(f"riskguard {args.command}: {err}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
