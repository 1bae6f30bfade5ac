"""``riskguard broker start|stop|status``: the in-memory dev broker."""

from __future__ import annotations

import argparse

from riskguard.connectors import broker


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="start, stop or check the in-memory dev broker (Tansu)")
    broker.add_arguments(p)
    p.set_defaults(func=broker.run)
