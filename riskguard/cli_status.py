"""``riskguard status``: summarize the guard's metrics endpoints, or serve a live status page."""

from __future__ import annotations

import argparse
import json
import sys

from riskguard.cli_args import non_negative_int, port, seconds
from riskguard.connectors.status import (
    StatusPoller,
    StatusServer,
    commands_from_file,
    render_text,
    scrape,
    summarize,
)
from riskguard.errors import RiskguardError
from riskguard.operators.signing.crypto import load_public_key

DEFAULT_URL = "http://127.0.0.1:3030/metrics"


def _status(args: argparse.Namespace) -> int:
    urls = args.url or [DEFAULT_URL]
    if args.serve:
        if args.commands and not args.verify_key:
            raise RiskguardError("status: --commands needs --verify-key (the issuer's "
                                 "public key): unverified commands are never shown")
        source = (commands_from_file(args.commands, load_public_key(args.verify_key))
                  if args.commands else None)
        poller = StatusPoller(urls, top=args.top, timeout_s=args.timeout, commands=source)
        server = StatusServer(poller, host=args.host, port=args.port,
                              poll_ms=int(args.interval * 1000))
        sys.stdout.write(f"riskguard status page on http://{args.host}:{server.port}/ "
                         f"(scraping {', '.join(urls)})\n")
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.close()
        return 0
    summary = summarize([scrape(u, args.timeout) for u in urls], top=args.top)
    if args.json:
        sys.stdout.write(json.dumps(summary, sort_keys=True, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(summary))
    return 0 if summary["health"]["up"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="one-screen summary of the guard's metrics (or --serve a live page)",
        description="Scrape one or more Prometheus endpoints of the guard (one per process) "
                    "and print health, lag, open episodes, commands issued, feeds on backup, "
                    "checkpoint age and the top utilizations. Exit code 1 when any endpoint is "
                    "down.",
    )
    p.add_argument("--url", action="append",
                   help=f"metrics URL; repeat for every process (default {DEFAULT_URL})")
    p.add_argument("--top", type=non_negative_int, default=5, help="how many utilizations to show")
    p.add_argument("--timeout", type=seconds(), default=5.0, help="scrape timeout, seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--serve", action="store_true",
                   help="serve a live HTML status page (and /api/status JSON) instead")
    p.add_argument("--host", default="127.0.0.1", help="--serve: address to bind")
    p.add_argument("--port", type=port, default=8089, help="--serve: port (0 = any free port)")
    p.add_argument("--interval", type=seconds(), default=2.0, help="--serve: page poll interval, s")
    p.add_argument("--commands", metavar="FILE",
                   help="--serve: signed command envelopes, one per line (a guard's "
                        "commands.jsonl); the page then lists the mitigations in force")
    p.add_argument("--verify-key", metavar="PUBFILE",
                   help="--commands: the issuer's public key; other lines are skipped")
    p.set_defaults(func=_status)
