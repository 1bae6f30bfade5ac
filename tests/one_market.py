"""A market process's config with one perpetual, and the trades the resume tests feed it
(the mark filter's and the ticks')."""

from __future__ import annotations

import msgspec
from riskguard.dataflows.guard import GuardConfig
from riskguard.schemas import Trade

S = 10**9
ONE_PERP_MARKET = msgspec.convert({
    "keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
    "tier": {"role": "market", "market_processes": 1},
    "exposure": {"instruments": {"instruments": {
        "BTC-PERP": {"kind": "perp", "base": "BTC", "quote": "USD"}}}}}, GuardConfig)


def okx_trade(n: int, inst: str, ts: int, price: float) -> Trade:
    """Trade ``t<n>`` of one unit on okx."""
    return Trade(id=f"t{n}", venue="okx", instrument=inst, ts=ts, price=price, qty=1.0,
                 side="buy")
