"""``riskguard run --config guard.toml``: run the guard dataflow."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from riskguard.dataflows.guard import load_guard_config


def _run(args: argparse.Namespace) -> int:
    load_guard_config(args.config)  # fail fast, naming the bad key, before bytewax starts
    cmd = [sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard", *args.bytewax]
    env = {**os.environ, "RISKGUARD_CONFIG": os.path.abspath(args.config)}
    return subprocess.call(cmd, env=env)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the guard dataflow from a TOML config")
    p.add_argument("--config", required=True, help="guard TOML config")
    p.add_argument("bytewax", nargs=argparse.REMAINDER,
                   help="extra bytewax.run arguments, e.g. -- -w 2 -r recovery/")
    p.set_defaults(func=_run)
