"""``riskguard demo``: the main job on the bundled scenario and the dev broker.

Exit codes: 0 the demo ran and its audit log verified; 1 the guard failed, did
not finish, or the audit log did not verify; 2 it could not start (e.g. Kafka
unreachable at ``--bootstrap``); 130 interrupted. The work directory holds the
demo's private keys: a temporary one is removed at the end (also on Ctrl-C or
an error) unless ``--keep-dir``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    if args.bootstrap:
        from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this)

        reach_kafka(args.bootstrap, "--bootstrap HOST:PORT (or leave it out: the demo starts "
                    "its own dev broker)")
    from riskguard.dataflows.demo import run_demo  # noqa: PLC0415  (heavy imports)

    rc, _ = run_demo(bootstrap=args.bootstrap,
                     workdir=Path(args.workdir) if args.workdir else None,
                     keep_dir=args.keep_dir)
    return rc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the guard on the bundled scenario (starts a dev broker)",
        description="Start a dev broker (or use --bootstrap), make demo keys and a config in a "
                    "work directory, publish the bundled scenario, run the guard, print its "
                    "signals and verified commands, and verify the audit log. Exit 0 when "
                    "all of it worked, 1 when the guard or the audit check failed.",
    )
    p.add_argument("--bootstrap", help="use this Kafka instead of starting the dev broker")
    p.add_argument("--workdir", help="keep keys, config and state here (default: a temporary "
                   "directory, removed at the end)")
    p.add_argument("--keep-dir", action="store_true",
                   help="keep the temporary work directory (it holds private keys) and "
                   "print where it is")
    p.set_defaults(func=_demo)
