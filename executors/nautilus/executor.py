"""The NautilusTrader executor: verified riskguard commands applied to a Nautilus node.

:class:`NautilusExecutor` is a Nautilus ``Actor``. It owns (or is given) a
:class:`~riskguard.connectors.subscriber.CommandSubscriber` and installs itself as its
callback through :class:`~riskguard.connectors.acks.AckingExecutor`, so a command
reaches Nautilus only once the subscriber verified it, and every outcome is signed and
acknowledged. What each action does is docs/executors.md's table: ``firm:*`` halts set
the RiskEngine's own trading state, a narrower scope is enforced per order by a
:class:`~.gate.PreTradeGate` (the overlap rule of :mod:`riskguard.executors.scopes`);
``widen_quotes`` / ``hedge_delta`` are published on the message bus
(:data:`WIDEN_QUOTES_TOPIC`, :data:`HEDGE_DELTA_TOPIC`). Any other action is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from nautilus_trader.common.actor import Actor
from nautilus_trader.common.config import ActorConfig
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.execution.messages import CancelOrder, ModifyOrder
from nautilus_trader.model.enums import ContingencyType, OrderSide, TradingState, TriggerType
from nautilus_trader.model.identifiers import InstrumentId, Venue
from nautilus_trader.model.orders import Order
from riskguard.connectors.acks import AckingExecutor, AckSigner, Applied
from riskguard.connectors.subscriber import CommandSubscriber, Outcome
from riskguard.executors.nautilus.gate import PreTradeGate
from riskguard.executors.scopes import Hold, Market, MarketMap, ScopeBook, TradeState
from riskguard.operators.signing.trust import TrustStore
from riskguard.schemas.commands import AckOutcome, Action, Audience, ExecutionAck, MitigationCommand
from riskguard.schemas.signals import Scope, ScopeKind

from riskguard.errors import ConfigError

WIDEN_QUOTES_TOPIC = "riskguard.widen_quotes"
"""Message bus topic of :class:`WidenQuotes` (``msgbus.subscribe(WIDEN_QUOTES_TOPIC, ...)``)."""
HEDGE_DELTA_TOPIC = "riskguard.hedge_delta"
"""Message bus topic of :class:`HedgeDelta`."""
NOT_PERFORMED = "not an action this executor performs"

Detail = dict[str, float | str | list[str]]


@dataclass(frozen=True)
class WidenQuotes:
    """Quote ``bps`` wider on the instruments in scope; ``bps == 0``: the widening held on
    ``scope`` was lifted. ``firm`` is true for the firm scope (every instrument, listed
    in the market map or not)."""

    command_id: str
    scope: str
    bps: float
    instrument_ids: tuple[InstrumentId, ...]
    venues: tuple[Venue, ...]
    firm: bool = False


@dataclass(frozen=True)
class HedgeDelta:
    """Trade ``hedge_instrument_id`` until the delta of ``instrument_ids`` (the scope) is
    ``target_delta``, in the hedge instrument's units."""

    command_id: str
    scope: str
    target_delta: float
    hedge_instrument_id: InstrumentId
    instrument_ids: tuple[InstrumentId, ...]


class NautilusExecutor(Actor):
    """Applies verified riskguard commands to a NautilusTrader node.

    ``risk_engine`` is the node's (``engine.kernel.risk_engine`` in a backtest,
    ``node.kernel.risk_engine`` live). Give either ``subscriber`` (its callback is
    replaced by this executor's) or ``trust``, ``audience`` and ``state_path`` to build
    one that reads the Nautilus clock (``subscriber_options`` go to it: ``brokers``,
    ``topic``, ``rejection_log`` ...). With brokers set, the executor polls the topic
    every ``poll_interval_s`` on the Nautilus clock.

    What is held survives a restart: the holds are saved to ``holds_path`` (default
    ``<state_path>.holds.json``) after every command that changes them, before its ack
    is sent and the subscriber commits, and applied again on start.
    """

    def __init__(self, *, markets: MarketMap, risk_engine: Any, acks: AckSigner,
                 send_ack: Callable[[bytes], Any], subscriber: CommandSubscriber | None = None,
                 trust: TrustStore | None = None, audience: Audience | None = None,
                 state_path: str | Path | None = None,
                 subscriber_options: Mapping[str, Any] | None = None,
                 poll_interval_s: float = 0.5, poll_batch: int = 100,
                 component_id: str = "RiskguardExecutor",
                 holds_path: str | Path | None = None) -> None:
        super().__init__(ActorConfig(component_id=component_id))
        self._markets = markets
        self._risk = risk_engine
        self._acking = AckingExecutor(self._apply, acks, send_ack)
        if subscriber is None:
            if trust is None or audience is None or state_path is None:
                msg = ("NautilusExecutor needs a subscriber, or trust, audience and "
                       "state_path to build one")
                raise ValueError(msg)
            subscriber = CommandSubscriber(
                trust=trust, audience=audience, state_path=state_path,
                **self._acking.hooks(), clock=self._now,
                **dict(subscriber_options or {}))
        else:
            subscriber.on_command = self._acking.on_command
            subscriber.on_settled = self._acking.on_settled
        self._subscriber = subscriber
        if holds_path is None and state_path is not None:
            holds_path = Path(str(state_path) + ".holds.json")
        self._holds_path = Path(holds_path) if holds_path is not None else None
        self._book = (ScopeBook.load(self._holds_path) if self._holds_path is not None
                      else ScopeBook())
        if self._holds_path is not None:
            self._check_holds_against(subscriber)
        self._base_caps: dict[str, Decimal] = {}
        self._gate: PreTradeGate | None = None
        self._poll_interval_s = poll_interval_s
        self._poll_batch = poll_batch
        self._timer = f"{component_id}-poll"

    def _check_holds_against(self, subscriber: CommandSubscriber) -> None:
        """Refuse to start on a holds file that lacks a mitigation the subscriber's state
        has in force: the subscriber would settle that command again and nothing would
        hold it."""
        holds = {(h.scope_label, h.action, h.command_id) for h in self._book.holds()}
        missing = [f"{action} on {scope} (command {cid})"
                   for action, scope, cid in subscriber.state.held()
                   if (scope, action, cid) not in holds]
        if missing:
            raise ConfigError(str(self._holds_path),
                              "the holds the subscriber's state has in force (restore the "
                              "file, or start both afresh)", "missing " + "; ".join(missing))

    # -- what others may read or call -----------------------------------------

    @property
    def subscriber(self) -> CommandSubscriber:
        return self._subscriber

    @property
    def acks_sent(self) -> list[ExecutionAck]:
        """The acks sent so far (the last 1024 at most)."""
        return list(self._acking.sent)

    def receive(self, data: bytes, *, partition: int = -1, offset: int = -1) -> Outcome:
        """Verify one message's bytes with the subscriber; only a verified command acts."""
        if self._gate is None:
            msg = "the executor is not started (add it to the engine or node and start it)"
            raise RuntimeError(msg)
        return self._subscriber.handle(data, partition=partition, offset=offset)

    def state_for(self, instrument_id: InstrumentId) -> TradeState:
        """The state an order on ``instrument_id`` is held to now."""
        return self._book.state_for(self._market_of(instrument_id))

    def holds(self) -> list[Hold]:
        """What is held, on which exact scope, by which command."""
        return self._book.holds()

    # -- lifecycle ------------------------------------------------------------

    def on_start(self) -> None:
        if self._gate is None:
            self._gate = PreTradeGate(msgbus=self.msgbus, cache=self.cache, clock=self.clock,
                                      risk_engine=self._risk, check=self._check_order,
                                      check_modify=self._check_modify)
        self._gate.install()
        for m in self._markets.markets:
            base = (Decimal(str(m.max_notional)) if m.max_notional is not None
                    else self._risk.max_notional_per_order(InstrumentId.from_str(m.key)))
            if base is not None:
                self._base_caps.setdefault(m.key, base)
        # holds loaded from before a restart take effect again at once
        self._sync_firm_state()
        self._sync_caps()
        if self._subscriber.brokers and self._poll_interval_s > 0:
            self.clock.set_timer(self._timer, timedelta(seconds=self._poll_interval_s),
                                 callback=self._poll)

    def on_stop(self) -> None:
        # The gate stays: holds keep applying to anything still submitted while stopped.
        if self._timer in self.clock.timer_names:
            self.clock.cancel_timer(self._timer)

    def on_dispose(self) -> None:
        if self._gate is not None:
            self._gate.uninstall()

    def _now(self) -> int:
        return int(self.clock.timestamp_ns())

    def _poll(self, _event: Any) -> None:
        try:
            self._subscriber.poll(max_messages=self._poll_batch, idle_timeout_s=0.0,
                                  poll_timeout_s=0.0)
        except Exception as err:  # a failed ack delivery: the subscriber reads it again
            self.log.error(f"riskguard command poll failed: {type(err).__name__}: {err}")

    # -- applying one verified command (the AckingExecutor's apply) ------------

    def _apply(self, cmd: MitigationCommand) -> Applied:
        earlier = self._book.recall(cmd.issuer, cmd.command_id)
        if earlier is not None:
            return Applied(AckOutcome.ALREADY_APPLIED,
                           f"command {cmd.command_id} was applied already; nothing changed",
                           earlier)
        handler = self._handlers.get(cmd.action)
        if handler is None:
            return Applied(AckOutcome.REFUSED, f"{cmd.action.value}: {NOT_PERFORMED}")
        if cmd.action is Action.ALERT:
            applied = handler(self, cmd, [])
        else:
            markets, problem = self._markets.resolve(cmd.scope)
            if problem is not None:
                return Applied(AckOutcome.REFUSED,
                               f"scope {cmd.scope.label()} names nothing this executor "
                               f"trades: {problem}")
            applied = handler(self, cmd, markets)
        if applied.outcome is AckOutcome.APPLIED:
            self._book.remember(cmd.issuer, cmd.command_id, dict(applied.detail))
            if self._holds_path is not None:
                self._book.save(self._holds_path)
        return applied

    def _alert(self, cmd: MitigationCommand, _markets: list[Market]) -> Applied:
        return Applied(AckOutcome.APPLIED, "alert: nothing to change", {"change": "none"})

    def _hold_state(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        try:
            others = self._book.hold(cmd.action.value, cmd.scope, cmd.command_id,
                                     issuer=cmd.issuer,
                                     party=self._subscriber.party(cmd.issuer))
        except OverflowError as err:
            return Applied(AckOutcome.REFUSED, str(err))
        self._sync_firm_state()
        state = TradeState.HALTED if cmd.action is Action.HALT_TRADING else TradeState.REDUCING
        detail: Detail = {
            "scope_state": state.name,
            "instruments": sorted(m.key for m in markets),
            "venues": self._markets.system_venues(cmd.scope),
            "nautilus_trading_state": self._nautilus_state(),
            "enforced_by": ("risk_engine" if cmd.scope.kind is ScopeKind.FIRM
                            else "pre_trade_gate"),
        }
        if others:
            detail["also_held_by"] = [h.command_id for h in others]
        return Applied(AckOutcome.APPLIED, f"{state.name} on {cmd.scope.label()}", detail)

    def _resume(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        actions = cmd.params.get("actions")
        resumes = cmd.params.get("resumes")
        lifted = self._book.lift(cmd.scope,
                                 actions=actions if isinstance(actions, list) else (),
                                 command_ids=resumes if isinstance(resumes, list) else ())
        self._sync_firm_state()
        caps = self._sync_caps()
        if any(h.action == Action.WIDEN_QUOTES.value for h in lifted):
            left = self._book.on(cmd.scope.label(), Action.WIDEN_QUOTES.value)
            self._publish_widen(cmd.command_id, cmd.scope,
                                max((h.bps or 0.0 for h in left), default=0.0), markets)
        still = sorted({f"{m.key}: {g.action} on {g.scope_label}" for m in markets
                        for g in self._book.governing(m)[:1]})
        detail: Detail = {
            "lifted": [f"{h.action} ({h.command_id})" for h in lifted],
            "still_restricted": still,
            "nautilus_trading_state": self._nautilus_state(),
        }
        if any(h.action == Action.REDUCE_LIMITS.value for h in lifted):
            detail["max_notional"] = [f"{k}={v:f}" for k, v in sorted(caps.items())
                                      if any(m.key == k for m in markets)]
        reason = (f"lifted {len(lifted)} hold(s) on {cmd.scope.label()}" if lifted
                  else f"nothing was held on {cmd.scope.label()}")
        return Applied(AckOutcome.APPLIED, reason, detail)

    def _cancel_all(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        orders = self._open_orders(cmd.scope, markets)
        for order in orders:
            self._send_cancel(order)
        detail: Detail = {
            "cancelled": sorted(o.client_order_id.value for o in orders),
            "instruments": sorted({o.instrument_id.value for o in orders}),
        }
        return Applied(AckOutcome.APPLIED,
                       f"cancel sent for {len(orders)} open order(s) on {cmd.scope.label()}",
                       detail)

    def _reduce_limits(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        factor = float(cmd.params["factor"])  # type: ignore[arg-type]  # checked by the verifier
        capped = [m for m in markets if m.key in self._base_caps]
        if not capped:
            return Applied(AckOutcome.REFUSED,
                           f"no instrument in {cmd.scope.label()} has a base max notional "
                           "(markets max_notional, or RiskEngineConfig.max_notional_per_order)")
        held = self._book.at_least_as_strict(Action.REDUCE_LIMITS.value, cmd.scope,
                                             factor=factor,
                                             issuers=self._subscriber.party(cmd.issuer))
        if held is not None:
            return _in_force(held, f"max notional per order x{held.factor:g}")
        try:
            self._book.hold(Action.REDUCE_LIMITS.value, cmd.scope, cmd.command_id,
                            factor=factor, issuer=cmd.issuer,
                            party=self._subscriber.party(cmd.issuer))
        except OverflowError as err:
            return Applied(AckOutcome.REFUSED, str(err))
        caps = self._sync_caps()
        detail: Detail = {
            "factor": factor,
            "max_notional": [f"{m.key}={caps[m.key]:f}" for m in capped],
            "uncapped": sorted(m.key for m in markets if m.key not in self._base_caps),
        }
        return Applied(AckOutcome.APPLIED,
                       f"max notional per order x{factor:g} on {cmd.scope.label()}", detail)

    def _widen_quotes(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        bps = float(cmd.params["bps"])  # type: ignore[arg-type]  # checked by the verifier
        held = self._book.at_least_as_strict(Action.WIDEN_QUOTES.value, cmd.scope, bps=bps,
                                             issuers=self._subscriber.party(cmd.issuer))
        if held is not None:
            return _in_force(held, f"quotes widened by {held.bps:g} bps")
        try:
            self._book.hold(Action.WIDEN_QUOTES.value, cmd.scope, cmd.command_id, bps=bps,
                            issuer=cmd.issuer, party=self._subscriber.party(cmd.issuer))
        except OverflowError as err:
            return Applied(AckOutcome.REFUSED, str(err))
        # the widest held on the scope (another signer's may be wider than this one)
        widest = max(h.bps or 0.0 for h in self._book.on(cmd.scope.label(),
                                                         Action.WIDEN_QUOTES.value))
        self._publish_widen(cmd.command_id, cmd.scope, widest, markets)
        return Applied(AckOutcome.APPLIED, f"published on {WIDEN_QUOTES_TOPIC}",
                       {"topic": WIDEN_QUOTES_TOPIC, "bps": bps,
                        "instruments": sorted(m.key for m in markets)})

    def _hedge_delta(self, cmd: MitigationCommand, markets: list[Market]) -> Applied:
        ref = str(cmd.params["hedge_instrument"])
        hedge = self._markets.find(ref)
        if hedge is None:
            return Applied(AckOutcome.REFUSED,
                           f"hedge_instrument {ref!r} names no single instrument in the "
                           "market map")
        target = float(cmd.params["target_delta"])  # type: ignore[arg-type]
        self.msgbus.publish(HEDGE_DELTA_TOPIC, HedgeDelta(
            command_id=cmd.command_id, scope=cmd.scope.label(), target_delta=target,
            hedge_instrument_id=InstrumentId.from_str(hedge.key),
            instrument_ids=tuple(InstrumentId.from_str(m.key) for m in markets)))
        return Applied(AckOutcome.APPLIED, f"published on {HEDGE_DELTA_TOPIC}",
                       {"topic": HEDGE_DELTA_TOPIC, "hedge_instrument": hedge.key,
                        "target_delta": target})

    _handlers: Mapping[Action, Callable[[NautilusExecutor, MitigationCommand, list[Market]],
                                        Applied]] = {
        Action.ALERT: _alert, Action.HALT_TRADING: _hold_state,
        Action.REDUCE_ONLY: _hold_state, Action.RESUME: _resume,
        Action.CANCEL_ALL: _cancel_all, Action.REDUCE_LIMITS: _reduce_limits,
        Action.WIDEN_QUOTES: _widen_quotes, Action.HEDGE_DELTA: _hedge_delta,
    }

    # -- Nautilus side --------------------------------------------------------

    def _nautilus_state(self) -> str:
        return str(TradingState(self._risk.trading_state).name)

    def _sync_firm_state(self) -> None:
        """The RiskEngine's global state is the firm scope's (the only one covering all)."""
        target = TradingState[self._book.firm_state().name]
        if self._risk.trading_state != target:
            self._risk.set_trading_state(target)

    def _sync_caps(self) -> dict[str, Decimal]:
        """Set each capped instrument's max notional to its base times its factor."""
        out: dict[str, Decimal] = {}
        for m in self._markets.markets:
            base = self._base_caps.get(m.key)
            if base is None:
                continue
            factor, _ = self._book.factor_for(m)
            cap = (Decimal(format((base * Decimal(str(factor))).normalize(), "f"))
                   if factor < 1.0 else base)
            iid = InstrumentId.from_str(m.key)
            if self._risk.max_notional_per_order(iid) != cap:
                self._risk.set_max_notional_per_order(iid, cap)
            out[m.key] = cap
        return out

    def _publish_widen(self, command_id: str, scope: Scope, bps: float,
                       markets: list[Market]) -> None:
        self.msgbus.publish(WIDEN_QUOTES_TOPIC, WidenQuotes(
            command_id=command_id, scope=scope.label(), bps=bps,
            instrument_ids=tuple(InstrumentId.from_str(m.key) for m in markets),
            venues=tuple(Venue(v) for v in self._markets.system_venues(scope)),
            firm=scope.kind is ScopeKind.FIRM))

    def _open_orders(self, scope: Scope, markets: list[Market]) -> list[Order]:
        if scope.kind is ScopeKind.FIRM:
            return list(self.cache.orders_open())
        if scope.kind in (ScopeKind.VENUE, ScopeKind.COUNTERPARTY):
            return [o for v in self._markets.system_venues(scope)
                    for o in self.cache.orders_open(venue=Venue(v))]
        return [o for m in markets
                for o in self.cache.orders_open(instrument_id=InstrumentId.from_str(m.key))]

    def _send_cancel(self, order: Order) -> None:
        """Cancel on behalf of the order's own strategy, routed as Strategy.cancel_order."""
        command = CancelOrder(
            trader_id=self.trader_id, strategy_id=order.strategy_id,
            instrument_id=order.instrument_id, client_order_id=order.client_order_id,
            venue_order_id=order.venue_order_id, command_id=UUID4(),
            ts_init=self.clock.timestamp_ns())
        if order.is_emulated or order.emulation_trigger != TriggerType.NO_TRIGGER:
            endpoint = "OrderEmulator.execute"
        elif order.exec_algorithm_id is not None and order.is_active_local:
            endpoint = f"{order.exec_algorithm_id}.execute"
        else:
            endpoint = "ExecEngine.execute"
        self.msgbus.send(endpoint, command)

    def _market_of(self, instrument_id: InstrumentId) -> Market:
        return self._markets.market(instrument_id.value, system_venue=instrument_id.venue.value)

    # -- the per-order check the gate asks -------------------------------------

    def _governing(self, order: Order) -> tuple[Hold | None, str]:
        """The hold that governs ``order``'s market, and how a denial names it."""
        governing = self._book.governing(self._market_of(order.instrument_id))
        if not governing:
            return None, ""
        top = governing[0]
        return top, f"riskguard {top.action} on {top.scope_label} (command {top.command_id})"

    def _check_order(self, order: Order, earlier: list[Order]) -> str | None:
        top, by = self._governing(order)
        if top is not None:
            if top.state is TradeState.HALTED:
                return f"{by}: trading is halted"
            if top.state is TradeState.REDUCING and not self._reduces(order, earlier):
                return f"{by}: the order does not reduce the {order.instrument_id} position"
        return self._check_margin_cap(order)

    def _check_modify(self, order: Order, command: ModifyOrder) -> str | None:
        top, by = self._governing(order)
        if top is not None:
            if top.state is TradeState.HALTED:
                return f"{by}: trading is halted"
            if command.quantity is not None and command.quantity > order.quantity:
                return f"{by}: the update would increase exposure"
        # a modify must not lift a margin order past the cap a new order may not pass
        return self._check_margin_cap(order, quantity=command.quantity,
                                      price=command.price or command.trigger_price)

    def _reduces(self, order: Order, earlier: Sequence[Order] = ()) -> bool:
        """True if ``order`` only reduces the net position, counted with the orders already
        working on its side (open, in flight or emulated) and ``earlier`` ones of its own
        order list (except its one-cancels-other or one-updates-other partners): several
        that each fit would together flip it. From flat nothing reduces."""
        net = Decimal(self.portfolio.net_position(order.instrument_id))
        side = OrderSide.SELL if net > 0 else OrderSide.BUY
        if net == 0 or order.side != side:
            return False
        cache, iid = self.cache, order.instrument_id
        working = {o.client_order_id: o for o in (
            *cache.orders_open(instrument_id=iid, side=side),
            *cache.orders_inflight(instrument_id=iid, side=side),
            *cache.orders_emulated(instrument_id=iid, side=side))}
        partners = (set(order.linked_order_ids or ())
                    if order.contingency_type in (ContingencyType.OCO, ContingencyType.OUO)
                    else set())
        working.update((o.client_order_id, o) for o in earlier
                       if o.instrument_id == iid and o.side == side
                       and o.client_order_id not in partners)
        working.pop(order.client_order_id, None)
        committed = sum((o.leaves_qty.as_decimal() for o in working.values()), Decimal(0))
        return committed + order.quantity.as_decimal() <= abs(net)

    def _check_margin_cap(self, order: Order, *, quantity: Any = None,
                          price: Any = None) -> str | None:
        """The capped max notional for margin accounts, which NautilusTrader 1.221's
        RiskEngine does not check (it returns before the check for a margin account);
        ``quantity`` and ``price`` are a modify's new values, where it changes them."""
        cap = self._risk.max_notional_per_order(order.instrument_id)
        account = self.cache.account_for_venue(order.instrument_id.venue)
        instrument = self.cache.instrument(order.instrument_id)
        if cap is None or account is None or not account.is_margin_account or instrument is None:
            return None
        if price is None:
            price = (order.price if order.has_price else
                     order.trigger_price if order.has_trigger_price else None)
        if price is None:
            quote = self.cache.quote_tick(order.instrument_id)
            if quote is None:
                return None
            price = quote.ask_price if order.side == OrderSide.BUY else quote.bid_price
        notional = instrument.notional_value(quantity or order.quantity, price).as_decimal()
        if notional > cap:
            return (f"riskguard reduce_limits: NOTIONAL_EXCEEDS_MAX_PER_ORDER on a margin "
                    f"account: max_notional={cap}, notional={notional}")
        return None


__all__ = ["HEDGE_DELTA_TOPIC", "NOT_PERFORMED", "WIDEN_QUOTES_TOPIC", "HedgeDelta",
           "NautilusExecutor", "WidenQuotes"]


def _in_force(held: Hold, what: str) -> Applied:
    """A command asking for no more than a hold already in force on its scope asks:
    nothing changes (a looser value never replaces a stricter one; a resume lifts)."""
    return Applied(AckOutcome.ALREADY_APPLIED,
                   f"{what} is in force on {held.scope_label} ({held.command_id}), at "
                   "least as strict; nothing changed",
                   {"in_force": held.command_id}, settles=held.command_id)
