"""A market process's config with one perpetual, the trades the resume tests feed it (the
mark filter's and the ticks'), and four bitcoin markets one of which falls alone."""

from __future__ import annotations

import msgspec
from riskguard.dataflows.guard import GuardConfig
from riskguard.schemas import Quote, Trade

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


def four_btc_markets(seconds: range) -> list[Quote]:
    """Four BTC markets quoting every second; bitstamp's falls 4 % alone from 300 s."""
    markets = (("kraken", "XBTUSD", 1.0), ("binance", "BTCUSDT", 1.0005),
               ("coinbase", "BTC-USDC", 0.9998), ("bitstamp", "BTCUSD", 1.0))
    out: list[Quote] = []
    for s in seconds:
        for n, (venue, inst, offset) in enumerate(markets):
            mid = 100.0 * offset * (0.96 if venue == "bitstamp" and s >= 300 else 1.0)
            mid *= 1.0 + 0.0001 * ((s * (n + 2)) % 5)
            out.append(Quote(id=f"{venue}{s}", venue=venue, instrument=inst,
                             ts=s * S + 7_000_000 * (n + 1), bid=mid * 0.9999, bid_size=1.0,
                             ask=mid * 1.0001, ask_size=1.0))
    return out
