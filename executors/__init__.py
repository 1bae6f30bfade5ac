"""Executors: the last mile from a verified mitigation command to a trading system.

An executor receives commands only through a verifying
:class:`~riskguard.connectors.subscriber.CommandSubscriber`, applies each one to its
trading system and acknowledges it with
:class:`~riskguard.connectors.acks.AckingExecutor`. :mod:`riskguard.executors.scopes`
holds what every executor shares (the market map, the per-scope states and the overlap
rule); :mod:`riskguard.executors.nautilus` is the executor for NautilusTrader (install
``riskguard[nautilus]``). ``docs/executors.md`` maps each action to Nautilus, CCXT and FIX.
"""

from riskguard.executors.scopes import (
    HELD_ACTIONS,
    Hold,
    Market,
    MarketMap,
    ScopeBook,
    ScopeBookState,
    TradeState,
    covers,
)

__all__ = ["HELD_ACTIONS", "Hold", "Market", "MarketMap", "ScopeBook", "ScopeBookState",
           "TradeState", "covers"]
