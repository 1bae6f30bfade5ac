"""``riskguard broker start|stop|status``: the in-memory dev broker."""

from __future__ import annotations

import argparse

from riskguard.connectors import broker


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker", help="start, stop or check the in-memory dev broker (Tansu)",
        description="The dev broker for tests and the demo: Kafka protocol on 127.0.0.1, data "
                    "in memory only (stopping it loses every topic). One per user: its pid, "
                    "address and log live in $RISKGUARD_BROKER_DIR, else "
                    "$XDG_STATE_HOME/riskguard/broker, else ~/.local/state/riskguard/broker, "
                    "wherever the command is run from (ops/broker in a clone uses the same). "
                    "start prints the bootstrap address on stdout; status exits 1 when no "
                    "broker is running.",
    )
    broker.add_arguments(p)
    p.set_defaults(func=broker.run)
