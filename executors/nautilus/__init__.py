"""The riskguard executor for NautilusTrader (needs ``riskguard[nautilus]``).

:class:`NautilusExecutor` (an ``Actor``) applies verified commands to a Nautilus node;
:class:`PreTradeGate` enforces scoped trading states per order in front of the
RiskEngine. ``docs/executors.md`` has the mapping table and the overlap rule.
"""

from riskguard.executors.nautilus.executor import (
    HEDGE_DELTA_TOPIC,
    NOT_PERFORMED,
    WIDEN_QUOTES_TOPIC,
    HedgeDelta,
    NautilusExecutor,
    WidenQuotes,
)
from riskguard.executors.nautilus.gate import PreTradeGate

__all__ = ["HEDGE_DELTA_TOPIC", "NOT_PERFORMED", "WIDEN_QUOTES_TOPIC", "HedgeDelta",
           "NautilusExecutor", "PreTradeGate", "WidenQuotes"]
