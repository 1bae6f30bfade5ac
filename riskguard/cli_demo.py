"""``riskguard demo``: the main job on the bundled scenario and the dev broker."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from riskguard.dataflows.demo import run_demo  # noqa: PLC0415  (heavy imports)

    rc, _ = run_demo(bootstrap=args.bootstrap,
                     workdir=Path(args.workdir) if args.workdir else None)
    return rc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the guard on the bundled scenario (starts a dev broker)")
    p.add_argument("--bootstrap", help="use this Kafka instead of starting the dev broker")
    p.add_argument("--workdir", help="keep keys, config and state here (default: a temp dir)")
    p.set_defaults(func=_demo)
