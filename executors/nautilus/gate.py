"""A per-order pre-trade check in front of NautilusTrader's RiskEngine.

NautilusTrader's ``RiskEngine`` holds one trading state for the whole node. Every
order command a strategy, the ``OrderEmulator`` or an ``ExecAlgorithm`` sends to the
RiskEngine goes through the message-bus endpoint ``RiskEngine.execute``;
:class:`PreTradeGate` takes that endpoint over (``MessageBus.deregister`` /
``register``), asks a check about each order, and hands what passes on to the
RiskEngine's own ``execute`` unchanged, so every Nautilus check still runs after it.
An order it refuses is denied the way the RiskEngine denies one: an ``OrderDenied``
event (a refused modify: ``OrderModifyRejected``) sent to ``ExecEngine.process``,
which the strategy receives in ``on_order_denied``. Cancels never pass through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nautilus_trader.core.uuid import UUID4
from nautilus_trader.execution.messages import ModifyOrder, SubmitOrder, SubmitOrderList
from nautilus_trader.model.enums import OrderStatus
from nautilus_trader.model.events import OrderDenied, OrderModifyRejected
from nautilus_trader.model.orders import Order

RISK_ENDPOINT = "RiskEngine.execute"
EXEC_EVENTS_ENDPOINT = "ExecEngine.process"

OrderCheck = Callable[[Order, "list[Order]"], "str | None"]
"""Why an order may not be submitted, given the earlier orders of its order list (None: it
may)."""
ModifyCheck = Callable[[Order, ModifyOrder], "str | None"]


class PreTradeGate:
    """Sits at ``RiskEngine.execute``; ``check`` and ``check_modify`` decide per order."""

    def __init__(self, *, msgbus: Any, cache: Any, clock: Any, risk_engine: Any,
                 check: OrderCheck, check_modify: ModifyCheck) -> None:
        self._msgbus = msgbus
        self._cache = cache
        self._clock = clock
        self._forward = risk_engine.execute
        self._check = check
        self._check_modify = check_modify
        self.installed = False
        self.denied = 0

    def install(self) -> None:
        """Take over ``RiskEngine.execute`` (once)."""
        if self.installed:
            return
        self._msgbus.deregister(RISK_ENDPOINT, self._forward)
        self._msgbus.register(RISK_ENDPOINT, self.execute)
        self.installed = True

    def uninstall(self) -> None:
        """Give ``RiskEngine.execute`` back to the RiskEngine."""
        if not self.installed:
            return
        self._msgbus.deregister(RISK_ENDPOINT, self.execute)
        self._msgbus.register(RISK_ENDPOINT, self._forward)
        self.installed = False

    def execute(self, command: Any) -> None:
        """The endpoint handler: deny what the check refuses, forward the rest."""
        if isinstance(command, SubmitOrder):
            reason = self._check(command.order, [])
            if reason is not None:
                self._deny(command.order, reason)
                return
        elif isinstance(command, SubmitOrderList):
            orders = list(command.order_list.orders)
            # each order is checked with the list's earlier ones as if already working
            reasons = [r for i, o in enumerate(orders)
                       if (r := self._check(o, orders[:i])) is not None]
            if reasons:
                for order in orders:
                    self._deny(order, f"order list: {reasons[0]}")
                return
        elif isinstance(command, ModifyOrder):
            order = self._cache.order(command.client_order_id)
            reason = self._check_modify(order, command) if order is not None else None
            if reason is not None:
                self._reject_modify(order, reason)
                return
        self._forward(command)

    def _deny(self, order: Order, reason: str) -> None:
        self.denied += 1
        if order.status != OrderStatus.INITIALIZED:
            return  # already denied, or not a new order
        if not self._cache.order_exists(order.client_order_id):
            self._cache.add_order(order)
        denied = OrderDenied(
            trader_id=order.trader_id, strategy_id=order.strategy_id,
            instrument_id=order.instrument_id, client_order_id=order.client_order_id,
            reason=reason, event_id=UUID4(), ts_init=self._clock.timestamp_ns())
        self._msgbus.send(EXEC_EVENTS_ENDPOINT, denied)

    def _reject_modify(self, order: Order, reason: str) -> None:
        self.denied += 1
        now = self._clock.timestamp_ns()
        rejected = OrderModifyRejected(
            trader_id=order.trader_id, strategy_id=order.strategy_id,
            instrument_id=order.instrument_id, client_order_id=order.client_order_id,
            venue_order_id=order.venue_order_id, account_id=order.account_id,
            reason=reason, event_id=UUID4(), ts_event=now, ts_init=now)
        self._msgbus.send(EXEC_EVENTS_ENDPOINT, rejected)
