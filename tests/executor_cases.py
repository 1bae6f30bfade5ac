"""The market map and scopes the executor tests share."""

from __future__ import annotations

from riskguard.schemas.signals import Scope, ScopeKind

MARKETS = {
    "venues": {"binance": {"venue": "BINANCE"}, "okx": {"venue": "OKX"}},
    "instruments": [
        {"venue": "binance", "name": "BTC-USDT", "id": "BTCUSDT.BINANCE", "underlying": "BTC",
         "max_notional": 100_000.0},
        {"venue": "binance", "name": "ETH-USDT", "id": "ETHUSDT.BINANCE", "underlying": "ETH"},
        {"venue": "okx", "name": "BTC-USDT", "id": "BTCUSDT.OKX", "underlying": "BTC"},
    ],
}


def venue(name: str) -> Scope:
    return Scope(kind=ScopeKind.VENUE, value=name)
