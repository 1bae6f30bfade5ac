"""The NautilusTrader executor, inside Nautilus's own BacktestEngine.

A strategy keeps submitting orders on recorded quotes (built here: one quote a second
on BTCUSDT at BINANCE and OKX and ETHUSDT at BINANCE, cash accounts). Commands arrive
as signed envelope bytes through the executor's subscriber at given points of the
backtest clock. Nothing is mocked: Nautilus's RiskEngine, matching engine and message
bus, riskguard's subscriber, trust store and Ed25519 signatures are all real.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

nautilus = pytest.importorskip(
    "nautilus_trader", reason="the NautilusTrader executor needs riskguard[nautilus]")

import pandas as pd  # noqa: E402  (nautilus_trader brings pandas)
from executor_cases import MARKETS, venue  # noqa: E402
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig  # noqa: E402
from nautilus_trader.common.actor import Actor  # noqa: E402
from nautilus_trader.config import ActorConfig, LoggingConfig  # noqa: E402
from nautilus_trader.core.uuid import UUID4  # noqa: E402
from nautilus_trader.model.currencies import BTC, ETH, USDT  # noqa: E402
from nautilus_trader.model.data import QuoteTick  # noqa: E402
from nautilus_trader.model.enums import (  # noqa: E402
    AccountType,
    ContingencyType,
    OmsType,
    OrderSide,
    OrderStatus,
    TradingState,
)
from nautilus_trader.model.identifiers import (  # noqa: E402
    ClientOrderId,
    InstrumentId,
    Symbol,
    TraderId,
    Venue,
)
from nautilus_trader.model.instruments import CryptoPerpetual, CurrencyPair  # noqa: E402
from nautilus_trader.model.objects import Money, Price, Quantity  # noqa: E402
from nautilus_trader.model.orders import LimitOrder  # noqa: E402
from nautilus_trader.test_kit.providers import TestInstrumentProvider  # noqa: E402
from nautilus_trader.trading.strategy import Strategy  # noqa: E402
from riskguard.connectors.acks import AckSigner  # noqa: E402
from riskguard.connectors.subscriber import Rejection  # noqa: E402
from riskguard.connectors.topics import topic_name  # noqa: E402
from riskguard.executors import MarketMap, TradeState  # noqa: E402
from riskguard.executors.nautilus import (  # noqa: E402
    HEDGE_DELTA_TOPIC,
    WIDEN_QUOTES_TOPIC,
    HedgeDelta,
    NautilusExecutor,
    WidenQuotes,
)
from riskguard.operators.signing.crypto import (  # noqa: E402
    PAYLOAD_ACK,
    PAYLOAD_COMMAND,
    Signer,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.operators.signing.trust import TrustStore, parse_trust  # noqa: E402
from riskguard.schemas.commands import (  # noqa: E402
    AckOutcome,
    Action,
    Audience,
    ExecutionAck,
    MitigationCommand,
)
from riskguard.schemas.signals import FIRM, Scope, ScopeKind  # noqa: E402
from signing_fixtures import (  # noqa: E402  # noqa: E402
    AUD,
    ENGINE,
    ENGINE2,
    OP1,
    OP2,
    T0,
    S,
    key_entries,
    signer,
    trust_text,
)

from riskguard.errors import ConfigError, DeliveryError  # noqa: E402

EXECUTOR_KEY = signer("executor-nautilus")
DESK = signer("desk")
ACK_AUDIENCE = Audience(env=AUD.env, topic=topic_name(AUD.env, "acks"))
BTC_BIN = InstrumentId.from_str("BTCUSDT.BINANCE")
ETH_BIN = InstrumentId.from_str("ETHUSDT.BINANCE")
BTC_OKX = InstrumentId.from_str("BTCUSDT.OKX")
PERP = InstrumentId.from_str("BTCUSDT-PERP.BYBIT")
INSTRUMENTS = (BTC_BIN, ETH_BIN, BTC_OKX)
SECONDS = 90
def trust() -> TrustStore:
    """The signing fixtures' trust file plus this executor's key (role executor)."""
    entries = [*key_entries(), {
        "name": "executor-nautilus", "public_key": EXECUTOR_KEY.public_key.hex(),
        "role": "executor", "actions": ["*"], "scopes": ["*"]}, {
        "name": "desk", "public_key": DESK.public_key.hex(), "role": "operator",
        "actions": ["reduce_limits", "widen_quotes", "resume"], "scopes": ["*"]}]
    return TrustStore(parse_trust(trust_text(entries=entries)))


class Commands:
    """Signed command bytes, with each issuer's seq rising."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}

    def make(self, at_s: float, action: Action, scope: Scope, *, by: tuple[Signer, ...] = (ENGINE,),
             params: dict[str, Any] | None = None, n: int | None = None) -> tuple[bytes, str]:
        issuer = by[0].issuer
        self.seq[issuer] = self.seq.get(issuer, 0) + 1
        issued = T0 + int(at_s * S)
        cmd = MitigationCommand(
            command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"nt/{issuer}/{n or self.seq[issuer]}")),
            issuer=issuer, seq=self.seq[issuer], issued_at=issued, expires_at=issued + 60 * S,
            audience=AUD, action=action, scope=scope, params=params or {},
            reason=f"test {action.value} on {scope.label()}",
            protective_orders_allowed=action in (Action.HALT_TRADING, Action.REDUCE_ONLY))
        env = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(by))
        return encode_envelope(env), cmd.command_id


class Trader(Strategy):
    """Every second, on every instrument: BUY 0.02 on even seconds, SELL 0.01 on odd ones
    (the position grows, so a SELL reduces it); at ``resting_at`` seconds, a BUY limit far
    below the market that rests, and at ``resting_sells_at`` a SELL limit of 0.06 at
    twice the market. Records what it sent, what was denied, what it heard."""

    def __init__(self, resting_at: tuple[int, ...] = (),
                 instruments: tuple[InstrumentId, ...] = INSTRUMENTS,
                 resting_sells_at: tuple[int, ...] = (), list_sells_at: int = -1,
                 oco: bool = False) -> None:
        super().__init__()
        self.resting_at = resting_at
        self.resting_sells_at = resting_sells_at
        self.list_sells_at, self.oco = list_sells_at, oco
        self.instruments = instruments
        self.sent: dict[str, tuple[int, InstrumentId, OrderSide, str]] = {}
        self.denied: dict[str, str] = {}
        self.heard: list[Any] = []

    def on_start(self) -> None:
        for iid in self.instruments:
            self.subscribe_quote_ticks(iid)
        self.msgbus.subscribe(WIDEN_QUOTES_TOPIC, self.heard.append)
        self.msgbus.subscribe(HEDGE_DELTA_TOPIC, self.heard.append)

    def on_quote_tick(self, tick: QuoteTick) -> None:
        second = (tick.ts_event - T0) // S
        iid = tick.instrument_id
        if second in self.resting_at:
            inst = self.cache.instrument(iid)
            order = self.order_factory.limit(iid, OrderSide.BUY, inst.make_qty(0.01),
                                             inst.make_price(1000))
            self._send(order, second, "resting")
        if second in self.resting_sells_at:
            inst = self.cache.instrument(iid)
            order = self.order_factory.limit(iid, OrderSide.SELL, inst.make_qty(0.06),
                                             inst.make_price(2 * tick.ask_price.as_double()))
            self._send(order, second, "resting_sell")
        if second == self.list_sells_at and iid == BTC_BIN:
            self._send_list(iid, tick, second)
        side = OrderSide.BUY if second % 2 == 0 else OrderSide.SELL
        qty = 0.02 if side == OrderSide.BUY else 0.01
        order = self.order_factory.market(iid, side, self.cache.instrument(iid).make_qty(qty))
        self._send(order, second, "market")

    def _send_list(self, iid: InstrumentId, tick: QuoteTick, second: int) -> None:
        """One order list of two SELL limits of 0.06 at twice the market (with ``oco``,
        each one cancels the other)."""
        inst = self.cache.instrument(iid)
        qty, px = inst.make_qty(0.06), inst.make_price(2 * tick.ask_price.as_double())
        ids = [self.order_factory.generate_client_order_id() for _ in range(2)]
        orders = [LimitOrder(
            self.trader_id, self.id, iid, ids[k], OrderSide.SELL, qty, px, UUID4(),
            self.clock.timestamp_ns(),
            contingency_type=ContingencyType.OCO if self.oco else ContingencyType.NO_CONTINGENCY,
            linked_order_ids=[ids[1 - k]] if self.oco else None) for k in range(2)]
        for o in orders:
            self.sent[o.client_order_id.value] = (second, iid, o.side, "list_sell")
        self.submit_order_list(self.order_factory.create_list(orders))

    def _send(self, order: Any, second: int, kind: str) -> None:
        self.sent[order.client_order_id.value] = (second, order.instrument_id, order.side, kind)
        self.submit_order(order)

    def on_order_denied(self, event: Any) -> None:
        self.denied[event.client_order_id.value] = event.reason

    def passed(self, iid: InstrumentId, side: OrderSide | None = None,
               seconds: range | None = None) -> list[bool]:
        """For each market order on ``iid`` (of ``side``, sent in ``seconds``): not denied.
        Never empty: a window the strategy sent nothing in would make ``all`` and ``not
        any`` hold whatever the executor did."""
        out = [cid not in self.denied for cid, (s, i, sd, kind) in self.sent.items()
               if i == iid and kind == "market" and (side is None or sd == side)
               and (seconds is None or s in seconds)]
        assert out, f"no {side} market order on {iid} in {seconds}"
        return out


class Feed(Actor):
    """Hands each scheduled message's bytes to the executor at its time (backtest clock)."""

    def __init__(self, executor: NautilusExecutor, schedule: list[tuple[float, bytes]]) -> None:
        super().__init__()
        self.executor = executor
        self.schedule = schedule
        self.outcomes: list[Any] = []

    def on_start(self) -> None:
        for i, (at_s, data) in enumerate(self.schedule):
            when = pd.Timestamp(T0 + int(at_s * S), tz="UTC")
            self.clock.set_time_alert(f"cmd-{i}", when, self._deliver(data))

    def _deliver(self, data: bytes) -> Callable[[Any], None]:
        def deliver(_event: Any) -> None:
            try:
                self.outcomes.append(self.executor.receive(data))
            except DeliveryError as err:  # the ack was not delivered: nothing committed
                self.outcomes.append(err)
        return deliver


class Probe(Actor):
    """Reads the RiskEngine's global trading state at given times."""

    def __init__(self, engine: BacktestEngine, at: tuple[float, ...],
                 out: list[tuple[float, str]]) -> None:
        super().__init__(ActorConfig(component_id="Probe"))
        self.engine, self.at, self.out = engine, at, out

    def on_start(self) -> None:
        for t in self.at:
            self.clock.set_time_alert(f"probe-{t}", pd.Timestamp(T0 + int(t * S), tz="UTC"),
                                      lambda _e, t=t: self.out.append((t, self._state())))

    def _state(self) -> str:
        return TradingState(self.engine.kernel.risk_engine.trading_state).name


def pair(iid: InstrumentId, base: Any) -> CurrencyPair:
    like = TestInstrumentProvider.btcusdt_binance()
    return CurrencyPair(
        instrument_id=iid, raw_symbol=Symbol(iid.symbol.value), base_currency=base,
        quote_currency=USDT, price_precision=2, size_precision=6,
        price_increment=Price.from_str("0.01"), size_increment=Quantity.from_str("0.000001"),
        lot_size=None, max_quantity=like.max_quantity, min_quantity=like.min_quantity,
        max_notional=None, min_notional=Money(10, USDT), max_price=like.max_price,
        min_price=like.min_price, margin_init=Decimal(0), margin_maint=Decimal(0),
        maker_fee=Decimal("0.001"), taker_fee=Decimal("0.001"), ts_event=0, ts_init=0)


@dataclass
class Run:
    executor: NautilusExecutor
    trader: Trader
    feed: Feed
    engine: BacktestEngine
    delivered: list[bytes] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)

    def acks(self) -> list[ExecutionAck]:
        """Every delivered ack, verified as the guard does (trust store, role executor)."""
        store = trust()
        out = []
        for data in self.delivered:
            verified = store.verify(decode_envelope(data), expected_payload_type=PAYLOAD_ACK,
                                    audience=ACK_AUDIENCE, now_ns=T0 + SECONDS * S)
            assert isinstance(verified.message, ExecutionAck)
            out.append(verified.message)
        return out


def run(tmp_path: Path, schedule: list[tuple[float, bytes]], *, resting_at: tuple[int, ...] = (),
        fail_sends: int = 0, probe_at: tuple[float, ...] = (), perp: bool = False,
        resting_sells_at: tuple[int, ...] = (), list_sells_at: int = -1,
        oco: bool = False) -> Run:
    """One backtest of SECONDS seconds with the executor, the trader and the command feed
    (``perp``: also BTCUSDT-PERP on BYBIT, a margin account)."""
    engine = BacktestEngine(BacktestEngineConfig(
        trader_id=TraderId("RG-001"), logging=LoggingConfig(bypass_logging=True)))
    for name in ("BINANCE", "OKX"):
        engine.add_venue(Venue(name), OmsType.NETTING, AccountType.CASH, base_currency=None,
                         starting_balances=[Money(10_000_000, USDT), Money(100, BTC),
                                            Money(1_000, ETH)])
    for iid, base in ((BTC_BIN, BTC), (ETH_BIN, ETH), (BTC_OKX, BTC)):
        engine.add_instrument(pair(iid, base))
    instruments = INSTRUMENTS
    markets = MARKETS
    if perp:
        engine.add_venue(Venue("BYBIT"), OmsType.NETTING, AccountType.MARGIN,
                         base_currency=None, starting_balances=[Money(10_000_000, USDT)])
        like = TestInstrumentProvider.btcusdt_perp_binance()
        engine.add_instrument(CryptoPerpetual.from_dict(
            {**CryptoPerpetual.to_dict(like), "id": PERP.value, "raw_symbol": "BTCUSDT"}))
        instruments = (*INSTRUMENTS, PERP)
        markets = {"venues": {**MARKETS["venues"], "bybit": {"venue": "BYBIT"}},
                   "instruments": [*MARKETS["instruments"], {
                       "venue": "bybit", "name": "BTC-PERP", "id": PERP.value,
                       "underlying": "BTC", "max_notional": 100_000.0}]}
    px = {BTC_BIN: 50_000, ETH_BIN: 3_000, BTC_OKX: 50_010, PERP: 50_000}
    ticks = []
    for i in range(SECONDS):
        for iid in instruments:
            prec = 1 if iid == PERP else 2
            size = Quantity(50, 3 if iid == PERP else 6)
            ticks.append(QuoteTick(iid, Price(px[iid], prec), Price(px[iid] + 1, prec), size,
                                   size, T0 + i * S, T0 + i * S))
    engine.add_data(ticks)
    delivered: list[bytes] = []
    failures = [fail_sends]

    def send(data: bytes) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            raise DeliveryError("broker down", undelivered=1, reasons=["test"])
        delivered.append(data)

    box: list[NautilusExecutor] = []
    acks = AckSigner(EXECUTOR_KEY, env=AUD.env, clock=lambda: int(box[0].clock.timestamp_ns()))
    executor = NautilusExecutor(
        markets=MarketMap.from_dict(markets), risk_engine=engine.kernel.risk_engine, acks=acks,
        send_ack=send, trust=trust(), audience=AUD, state_path=tmp_path / "sub.sqlite")
    box.append(executor)
    trader = Trader(resting_at, instruments, resting_sells_at, list_sells_at, oco)
    feed = Feed(executor, schedule)
    engine.add_actor(executor)
    engine.add_actor(feed)
    engine.add_strategy(trader)
    result = Run(executor, trader, feed, engine, delivered)
    engine.add_actor(Probe(engine, probe_at, result.states))
    engine.run()
    return result


# -- trading states -------------------------------------------------------------------


def test_a_verified_firm_halt_denies_new_orders_and_a_two_person_resume_restores_trading(
        tmp_path: Path) -> None:
    """halt_trading on firm:* at 20.5 s: every order from 21 s is denied and Nautilus's
    RiskEngine is HALTED; the resume at 40.5 s (two operators) lifts it from 41 s."""
    c = Commands()
    halt, halt_id = c.make(20.5, Action.HALT_TRADING, FIRM)
    resume, _ = c.make(40.5, Action.RESUME, FIRM, by=(OP1, OP2))
    r = run(tmp_path, [(20.5, halt), (40.5, resume)], probe_at=(30.7, 50.7))
    for iid in INSTRUMENTS:
        assert all(r.trader.passed(iid, seconds=range(21)))
        assert not any(r.trader.passed(iid, seconds=range(21, 41)))
        assert all(r.trader.passed(iid, seconds=range(41, SECONDS)))
    assert r.states == [(30.7, "HALTED"), (50.7, "ACTIVE")]
    acks = r.acks()
    assert [(a.action, a.outcome) for a in acks] == [
        (Action.HALT_TRADING, AckOutcome.APPLIED), (Action.RESUME, AckOutcome.APPLIED)]
    assert acks[0].command_id == halt_id and acks[0].issuer == "executor-nautilus"
    assert acks[0].detail["scope_state"] == "HALTED"
    assert acks[0].detail["nautilus_trading_state"] == "HALTED"
    assert acks[0].detail["instruments"] == sorted(i.value for i in INSTRUMENTS)
    assert acks[1].detail["lifted"] == [f"halt_trading ({halt_id})"]
    assert acks[1].detail["nautilus_trading_state"] == "ACTIVE"


def test_reduce_only_on_a_venue_passes_only_reducing_orders_there(tmp_path: Path) -> None:
    """reduce_only on venue:binance at 20.5 s: binance BUYs (the position is long) are
    denied, SELLs that reduce it pass; okx, another venue, keeps trading both ways;
    Nautilus's global state stays ACTIVE (the gate enforces the venue)."""
    c = Commands()
    ro, _ = c.make(20.5, Action.REDUCE_ONLY, venue("binance"))
    resume, _ = c.make(40.5, Action.RESUME, venue("binance"), by=(OP1,))
    r = run(tmp_path, [(20.5, ro), (40.5, resume)], probe_at=(30.7,))
    during = range(21, 41)
    for iid in (BTC_BIN, ETH_BIN):
        assert not any(r.trader.passed(iid, OrderSide.BUY, during))
        assert all(r.trader.passed(iid, OrderSide.SELL, during))
        assert all(r.trader.passed(iid, seconds=range(41, SECONDS)))
    assert all(r.trader.passed(BTC_OKX, seconds=during))
    assert r.states == [(30.7, "ACTIVE")]
    reasons = {r.trader.denied[cid] for cid in r.trader.denied}
    assert reasons == {f"riskguard reduce_only on venue:binance (command {r.acks()[0].command_id})"
                       f": the order does not reduce the {i} position" for i in (BTC_BIN, ETH_BIN)}
    assert r.acks()[0].detail["enforced_by"] == "pre_trade_gate"


def test_under_reduce_only_resting_sells_together_never_flip_the_position(
        tmp_path: Path) -> None:
    """Long 0.1 at 20 s, then reduce_only: a resting SELL 0.06 passes, a second one,
    which with the first would sell more than the position, is denied."""
    c = Commands()
    ro, _ = c.make(20.5, Action.REDUCE_ONLY, venue("binance"))
    r = run(tmp_path, [(20.5, ro)], resting_sells_at=(22, 23))
    for iid in (BTC_BIN, ETH_BIN):
        resting = [cid for cid, (_s, i, _sd, kind) in r.trader.sent.items()
                   if i == iid and kind == "resting_sell"]
        assert [cid in r.trader.denied for cid in resting] == [False, True]
        assert r.trader.denied[resting[1]].endswith(f"does not reduce the {iid} position")


def test_overlapping_scopes_take_the_most_restrictive_and_a_resume_lifts_only_its_own(
        tmp_path: Path) -> None:
    """venue:okx halted at 10.5 s while binance trades; a firm halt at 30.5 s halts both;
    resuming venue:okx at 50.5 s leaves okx halted by the firm (the ack says so); the
    firm resume at 70.5 s restores everything."""
    c = Commands()
    okx_halt, _ = c.make(10.5, Action.HALT_TRADING, venue("okx"))
    firm_halt, firm_id = c.make(30.5, Action.HALT_TRADING, FIRM)
    okx_resume, _ = c.make(50.5, Action.RESUME, venue("okx"), by=(OP1,))
    firm_resume, _ = c.make(70.5, Action.RESUME, FIRM, by=(OP1, OP2))
    r = run(tmp_path, [(10.5, okx_halt), (30.5, firm_halt), (50.5, okx_resume),
                       (70.5, firm_resume)], probe_at=(20.7, 40.7, 60.7, 80.7))
    assert not any(r.trader.passed(BTC_OKX, seconds=range(11, 71)))
    assert all(r.trader.passed(BTC_OKX, seconds=range(71, SECONDS)))
    assert all(r.trader.passed(BTC_BIN, seconds=range(11, 31)))
    assert not any(r.trader.passed(BTC_BIN, seconds=range(31, 71)))
    assert all(r.trader.passed(BTC_BIN, seconds=range(71, SECONDS)))
    assert r.states == [(20.7, "ACTIVE"), (40.7, "HALTED"), (60.7, "HALTED"), (80.7, "ACTIVE")]
    acks = r.acks()
    assert acks[2].action is Action.RESUME and acks[2].scope == venue("okx")
    assert acks[2].detail["still_restricted"] == ["BTCUSDT.OKX: halt_trading on firm:*"]
    assert firm_id in acks[3].detail["lifted"][0]


def test_a_restarted_executor_comes_back_holding_what_it_held(tmp_path: Path) -> None:
    """A firm reduce-only and an okx halt, then the node stops. A new node and executor on
    the same state start with both in force (the subscriber will not deliver those
    commands again: they were executed), until the operators' resumes lift them."""
    c = Commands()
    okx_halt, _ = c.make(10.5, Action.HALT_TRADING, venue("okx"))
    firm_ro, _ = c.make(20.5, Action.REDUCE_ONLY, FIRM)
    first = run(tmp_path, [(10.5, okx_halt), (20.5, firm_ro)])
    assert [a.outcome for a in first.acks()] == [AckOutcome.APPLIED] * 2
    okx_resume, _ = c.make(40.5, Action.RESUME, venue("okx"), by=(OP1,))
    firm_resume, _ = c.make(60.5, Action.RESUME, FIRM, by=(OP1, OP2))
    again = run(tmp_path, [(10.5, okx_halt), (40.5, okx_resume), (60.5, firm_resume)],
                probe_at=(5.7, 50.7, 70.7))
    # the replayed halt is a no-op to the subscriber; nothing is applied twice
    assert [a.action for a in again.acks()] == [Action.RESUME, Action.RESUME]
    # the new node starts flat: under the restored reduce-only nothing opens a position
    assert not any(any(again.trader.passed(iid, seconds=range(1, 61))) for iid in INSTRUMENTS)
    assert again.trader.denied and all(
        "halt_trading on venue:okx" in why or "reduce_only on firm:*" in why
        for why in again.trader.denied.values())
    assert all(all(again.trader.passed(iid, seconds=range(61, SECONDS))) for iid in INSTRUMENTS)
    assert again.states == [(5.7, "REDUCING"), (50.7, "REDUCING"), (70.7, "ACTIVE")]


def test_an_executor_whose_holds_file_was_lost_refuses_to_start(tmp_path: Path) -> None:
    """The subscriber's state records the okx halt in force, so it would answer the halt
    again as already in force: an executor whose holds file is gone (or older) would hold
    nothing. It refuses to start, naming what is missing."""
    c = Commands()
    okx_halt, okx_id = c.make(10.5, Action.HALT_TRADING, venue("okx"))
    run(tmp_path, [(10.5, okx_halt)])
    (tmp_path / "sub.sqlite.holds.json").unlink()
    with pytest.raises(ConfigError, match=f"missing halt_trading on venue:okx .command {okx_id}"):
        run(tmp_path, [])


def test_an_underlying_scope_covers_that_underlying_on_every_venue_only(tmp_path: Path) -> None:
    """halt_trading on underlying:BTC halts BTCUSDT at binance and okx, not ETHUSDT; an
    instrument scope narrowed to one venue (instrument:okx/BTC-USDT) halts only that one."""
    c = Commands()
    btc, _ = c.make(10.5, Action.HALT_TRADING, Scope(kind=ScopeKind.UNDERLYING, value="BTC"))
    one, _ = c.make(30.5, Action.HALT_TRADING,
                    Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"))
    lift, _ = c.make(40.5, Action.RESUME, Scope(kind=ScopeKind.UNDERLYING, value="BTC"),
                     by=(OP1, OP2))  # a scope on every venue: the two-person rule
    r = run(tmp_path, [(10.5, btc), (30.5, one), (40.5, lift)])
    assert not any(r.trader.passed(BTC_BIN, seconds=range(11, 41)))
    assert all(r.trader.passed(BTC_BIN, seconds=range(41, SECONDS)))
    assert all(r.trader.passed(ETH_BIN))
    assert not any(r.trader.passed(BTC_OKX, seconds=range(11, SECONDS)))
    assert r.executor.state_for(BTC_OKX) is TradeState.HALTED
    assert r.executor.state_for(BTC_BIN) is TradeState.ACTIVE


# -- verification, idempotence, refusals ----------------------------------------------


def test_a_forged_command_changes_nothing_and_is_not_acknowledged(tmp_path: Path) -> None:
    """A firm halt signed by a key the trust file does not list (claiming to be the
    engine), and a genuine engine signature over other bytes, are rejected by the
    subscriber: every order passes and no ack is sent."""
    c = Commands()
    forged, _ = c.make(20.5, Action.HALT_TRADING, FIRM, by=(signer("mallory", "engine-1"),))
    genuine = decode_envelope(c.make(30.5, Action.REDUCE_ONLY, venue("okx"))[0])
    tampered = encode_envelope(msgspec.structs.replace(
        genuine, payload=genuine.payload.replace(b"reduce_only", b"halt_trading")))
    r = run(tmp_path, [(20.5, forged), (30.5, tampered)])
    assert [o.reason for o in r.feed.outcomes if isinstance(o, Rejection)] == [
        "unknown_key", "bad_signature"]
    for iid in INSTRUMENTS:
        assert all(r.trader.passed(iid))
    assert r.delivered == [] and r.executor.holds() == []


def test_a_command_redelivered_after_a_lost_ack_is_acknowledged_already_applied(
        tmp_path: Path) -> None:
    """The first ack of a halt is not delivered (the broker is down), so the subscriber
    commits nothing and the same bytes come again: the executor does not act twice and
    answers already_applied, with what the first application did."""
    c = Commands()
    halt, halt_id = c.make(20.5, Action.HALT_TRADING, venue("okx"))
    r = run(tmp_path, [(20.5, halt), (21.5, halt)], fail_sends=1)
    assert isinstance(r.feed.outcomes[0], DeliveryError)
    acks = r.acks()
    assert [(a.command_id, a.outcome) for a in acks] == [(halt_id, AckOutcome.ALREADY_APPLIED)]
    assert acks[0].detail["scope_state"] == "HALTED"
    assert [h.command_id for h in r.executor.holds()] == [halt_id]
    assert not any(r.trader.passed(BTC_OKX, seconds=range(21, SECONDS)))


def test_another_key_s_command_carrying_a_halt_s_id_does_not_stand_for_it(
        tmp_path: Path) -> None:
    """Command ids are each signer's own: engine-2's alert on binance, carrying the id
    of engine-1's coming halt on okx (the guard's ids can be derived), is applied as an
    alert, and the halt is then applied, not answered already_applied."""
    c = Commands()
    halt, halt_id = c.make(30.5, Action.HALT_TRADING, venue("okx"))
    squat = MitigationCommand(
        command_id=halt_id, issuer="engine-2", seq=1, issued_at=T0 + 20 * S,
        expires_at=T0 + 80 * S, audience=AUD, action=Action.ALERT, scope=venue("binance"),
        reason="an alert carrying another key's command id")
    squat_env = encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(squat),
                                              [ENGINE2]))
    r = run(tmp_path, [(20.5, squat_env), (30.5, halt)])
    assert [(a.command_issuer, a.action, a.outcome) for a in r.acks()] == [
        ("engine-2", Action.ALERT, AckOutcome.APPLIED),
        ("engine-1", Action.HALT_TRADING, AckOutcome.APPLIED)]
    assert [h.command_id for h in r.executor.holds()] == [halt_id]
    assert not any(r.trader.passed(BTC_OKX, seconds=range(31, SECONDS)))


@pytest.mark.parametrize(("action", "params"), [
    (Action.REROUTE_ORDER_FLOW, {"targets": ["binance"], "from": "okx"}),
    (Action.PAUSE_WITHDRAWALS, {}),
    (Action.FAILOVER_FEED, {"backup_feed": "backup"}),
])
def test_actions_this_executor_does_not_perform_are_refused_and_acknowledged(
        tmp_path: Path, action: Action, params: dict[str, Any]) -> None:
    c = Commands()
    data, cid = c.make(10.5, action, venue("okx"), by=(ENGINE2,), params=params)
    r = run(tmp_path, [(10.5, data)])
    [ack] = r.acks()
    assert (ack.command_id, ack.outcome) == (cid, AckOutcome.REFUSED)
    assert ack.reason == f"{action.value}: not an action this executor performs"
    assert all(r.trader.passed(BTC_OKX)) and r.executor.holds() == []


def test_a_scope_naming_nothing_the_executor_trades_is_refused(tmp_path: Path) -> None:
    """A halt on venue:kraken (not in the market map) is refused, with the reason; an
    alert is acknowledged with no change."""
    c = Commands()
    kraken, _ = c.make(10.5, Action.HALT_TRADING, venue("kraken"))
    alert, _ = c.make(11.5, Action.ALERT, venue("kraken"))
    r = run(tmp_path, [(10.5, kraken), (11.5, alert)])
    refused, noted = r.acks()
    assert refused.outcome is AckOutcome.REFUSED
    assert refused.reason == ("scope venue:kraken names nothing this executor trades: venue "
                              "'kraken' is not in the market map (['binance', 'okx'])")
    assert (noted.outcome, noted.detail) == (AckOutcome.APPLIED, {"change": "none"})
    assert all(r.trader.passed(BTC_OKX)) and r.executor.holds() == []


def test_no_public_method_acts_on_an_unverified_command(tmp_path: Path) -> None:
    """The executor's public surface is receive(bytes) (verified by the subscriber) and
    read-only views; a command's unsigned JSON given to receive is refused."""
    public = {n for n in vars(NautilusExecutor) if not n.startswith("_")}
    assert public == {"subscriber", "acks_sent", "receive", "state_for", "holds", "on_start",
                      "on_stop", "on_dispose"}
    c = Commands()
    raw = msgspec.json.encode(decode_envelope(c.make(10.5, Action.HALT_TRADING, FIRM)[0]).payload)
    r = run(tmp_path, [(10.5, raw)])
    assert isinstance(r.feed.outcomes[0], Rejection)
    assert r.delivered == [] and all(r.trader.passed(BTC_BIN))


# -- cancel_all, reduce_limits, widen_quotes, hedge_delta ------------------------------


def test_cancel_all_cancels_the_open_orders_in_scope_only(tmp_path: Path) -> None:
    """Resting BUY limits on every instrument at 5 s; cancel_all on venue:okx at 30.5 s
    cancels okx's and leaves binance's working; the ack names what it cancelled."""
    c = Commands()
    cancel, _ = c.make(30.5, Action.CANCEL_ALL, venue("okx"))
    r = run(tmp_path, [(30.5, cancel)], resting_at=(5,))
    resting = {cid: iid for cid, (_s, iid, _sd, kind) in r.trader.sent.items()
               if kind == "resting"}
    status = {cid: r.engine.cache.order(ClientOrderId(cid)).status for cid in resting}
    okx = sorted(cid for cid, iid in resting.items() if iid == BTC_OKX)
    assert {status[cid] for cid in okx} == {OrderStatus.CANCELED}
    assert {status[cid] for cid, iid in resting.items() if iid != BTC_OKX} == {
        OrderStatus.ACCEPTED}
    [ack] = r.acks()
    assert ack.detail == {"cancelled": okx, "instruments": ["BTCUSDT.OKX"]}


def test_reduce_limits_caps_max_notional_and_an_order_above_it_is_denied(tmp_path: Path) -> None:
    """reduce_limits factor 0.002 on instrument:binance/BTC-USDT (base cap 100,000 USDT)
    sets Nautilus's max notional per order to 200: the 1,000 USDT BUYs and 500 USDT SELLs
    are denied by the RiskEngine; ETHUSDT is untouched; the resume restores 100,000."""
    c = Commands()
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="binance")
    cut, _ = c.make(20.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.002})
    back, _ = c.make(40.5, Action.RESUME, scope, by=(OP1,), params={"actions": ["reduce_limits"]})
    r = run(tmp_path, [(20.5, cut), (40.5, back)])
    assert not any(r.trader.passed(BTC_BIN, seconds=range(21, 41)))
    assert all(r.trader.passed(BTC_BIN, seconds=range(41, SECONDS)))
    assert all(r.trader.passed(ETH_BIN)) and all(r.trader.passed(BTC_OKX))
    reasons = {r.trader.denied[cid].split(":")[0] for cid in r.trader.denied}
    assert reasons == {"NOTIONAL_EXCEEDS_MAX_PER_ORDER"}
    cut_ack, back_ack = r.acks()
    assert cut_ack.detail == {"factor": 0.002, "max_notional": ["BTCUSDT.BINANCE=200"],
                              "uncapped": []}
    assert back_ack.detail["max_notional"] == ["BTCUSDT.BINANCE=100000.0"]
    assert r.engine.kernel.risk_engine.max_notional_per_order(BTC_BIN) == Decimal("100000.0")


def test_a_looser_reduce_limits_never_replaces_a_stricter_one(tmp_path: Path) -> None:
    """A reduce_limits asking for factor 1.0 on a scope held at 0.002 changes nothing
    (already_applied, naming the hold in force): only a resume lifts a hold, so a key
    that may reduce limits cannot undo another's cut. A stricter one is held beside it."""
    c = Commands()
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="binance")
    cut, cut_id = c.make(20.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.002})
    loose, _ = c.make(30.5, Action.REDUCE_LIMITS, scope, params={"factor": 1.0})
    tighter, tighter_id = c.make(35.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.001})
    r = run(tmp_path, [(20.5, cut), (30.5, loose), (35.5, tighter)])
    assert not any(r.trader.passed(BTC_BIN, seconds=range(21, SECONDS)))
    outcomes = [(a.outcome, a.settles) for a in r.acks()]
    assert outcomes == [(AckOutcome.APPLIED, None), (AckOutcome.ALREADY_APPLIED, cut_id),
                        (AckOutcome.APPLIED, None)]
    assert [(h.command_id, h.factor) for h in r.executor.holds()] == [
        (cut_id, 0.002), (tighter_id, 0.001)]


@pytest.mark.parametrize("oco", [False, True])
def test_an_order_list_that_together_would_flip_the_position_is_denied_under_reduce_only(
        tmp_path: Path, oco: bool) -> None:
    """Long about 0.1 under reduce_only, one order list of two SELLs of 0.06: each one
    reduces, together they would flip the position, so the list is denied; as a
    one-cancels-other pair only one can fill, so it passes."""
    c = Commands()
    ro, _ = c.make(20.5, Action.REDUCE_ONLY, venue("binance"))
    r = run(tmp_path, [(20.5, ro)], list_sells_at=22, oco=oco)
    listed = [cid for cid, (_s, _i, _sd, kind) in r.trader.sent.items() if kind == "list_sell"]
    assert len(listed) == 2
    assert [cid in r.trader.denied for cid in listed] == [not oco, not oco]


def test_a_looser_cut_answered_by_a_stricter_one_is_applied_once_that_one_is_resumed(
        tmp_path: Path) -> None:
    """A cut to 0.5 while one to 0.3 holds is answered by that hold: it holds nothing, so
    once the 0.3 is resumed, the same 0.5 sent again is applied, not taken as in force."""
    c = Commands()
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="binance")
    strict, strict_id = c.make(20.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.3})
    loose, _ = c.make(25.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.5})
    resume, _ = c.make(30.5, Action.RESUME, scope, by=(OP1,),
                       params={"actions": ["reduce_limits"], "resumes": [strict_id]})
    again, again_id = c.make(35.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.5})
    r = run(tmp_path, [(20.5, strict), (25.5, loose), (30.5, resume), (35.5, again)])
    assert [a.outcome for a in r.acks()] == [
        AckOutcome.APPLIED, AckOutcome.ALREADY_APPLIED, AckOutcome.APPLIED,
        AckOutcome.APPLIED]
    assert [(h.command_id, h.factor) for h in r.executor.holds()] == [(again_id, 0.5)]


def test_a_resume_never_lifts_a_halt_it_does_not_name(tmp_path: Path) -> None:
    """An operator halts okx; the guard's halt is already in force, and its resume of that
    halt (naming it, as the playbook does) lifts nothing; the guard's next halt is in
    force already too, and its resume leaves okx halted by the operator to the end."""
    c = Commands()
    okx = venue("okx")
    o1, _ = c.make(10.5, Action.HALT_TRADING, okx, by=(OP1,))
    e1, e1_id = c.make(20.5, Action.HALT_TRADING, okx, by=(ENGINE2,))
    r1, _ = c.make(30.5, Action.RESUME, okx, by=(ENGINE2,),
                   params={"actions": ["halt_trading"], "resumes": [e1_id]})
    e2, e2_id = c.make(40.5, Action.HALT_TRADING, okx, by=(ENGINE2,))
    r2, _ = c.make(60.5, Action.RESUME, okx, by=(ENGINE2,),
                   params={"actions": ["halt_trading"], "resumes": [e2_id]})
    r = run(tmp_path, [(10.5, o1), (20.5, e1), (30.5, r1), (40.5, e2), (60.5, r2)])
    assert not any(r.trader.passed(BTC_OKX, seconds=range(11, SECONDS)))


def test_reduce_limits_on_a_margin_account_is_enforced_by_the_gate(tmp_path: Path) -> None:
    """NautilusTrader 1.221's RiskEngine skips max notional for margin accounts, so the
    gate applies the cap there: BTC-PERP on bybit (margin) capped at 200 USDT denies its
    1,000 USDT BUYs; the firm-wide cut also caps BTCUSDT at binance (cash, by Nautilus)."""
    c = Commands()
    cut, _ = c.make(20.5, Action.REDUCE_LIMITS, FIRM, params={"factor": 0.002})
    r = run(tmp_path, [(20.5, cut)], perp=True)
    assert all(r.trader.passed(PERP, seconds=range(21)))
    assert not any(r.trader.passed(PERP, seconds=range(21, SECONDS)))
    perp_reasons = {r.trader.denied[cid].split(":")[0] for cid, (_s, iid, _sd, _k)
                    in r.trader.sent.items() if iid == PERP and cid in r.trader.denied}
    assert perp_reasons == {"riskguard reduce_limits"}
    assert not any(r.trader.passed(BTC_BIN, seconds=range(21, SECONDS)))
    assert all(r.trader.passed(ETH_BIN)) and all(r.trader.passed(BTC_OKX))
    [ack] = r.acks()
    assert ack.detail["max_notional"] == ["BTCUSDT.BINANCE=200", "BTCUSDT-PERP.BYBIT=200"]
    assert ack.detail["uncapped"] == ["BTCUSDT.OKX", "ETHUSDT.BINANCE"]


def test_widen_quotes_and_hedge_delta_are_published_on_the_message_bus(tmp_path: Path) -> None:
    """widen_quotes and hedge_delta reach strategies subscribed to their topics; the
    resume of the widening publishes bps 0 for the same scope."""
    c = Commands()
    widen, wid = c.make(10.5, Action.WIDEN_QUOTES, venue("okx"), params={"bps": 25.0})
    hedge, hid = c.make(11.5, Action.HEDGE_DELTA, Scope(kind=ScopeKind.UNDERLYING, value="BTC"),
                        params={"target_delta": 0.0, "hedge_instrument": "binance/BTC-USDT"})
    back, bid = c.make(12.5, Action.RESUME, venue("okx"), by=(OP1,))
    r = run(tmp_path, [(10.5, widen), (11.5, hedge), (12.5, back)])
    assert r.trader.heard == [
        WidenQuotes(command_id=wid, scope="venue:okx", bps=25.0, instrument_ids=(BTC_OKX,),
                    venues=(Venue("OKX"),)),
        HedgeDelta(command_id=hid, scope="underlying:BTC", target_delta=0.0,
                   hedge_instrument_id=BTC_BIN, instrument_ids=(BTC_BIN, BTC_OKX)),
        WidenQuotes(command_id=bid, scope="venue:okx", bps=0.0, instrument_ids=(BTC_OKX,),
                    venues=(Venue("OKX"),)),
    ]
    assert [a.outcome for a in r.acks()] == [AckOutcome.APPLIED] * 3
    assert all(r.trader.passed(BTC_OKX))


def test_a_hold_redelivered_after_a_lost_ack_stays_in_the_subscriber_s_state(
        tmp_path: Path) -> None:
    """The halt is applied and saved, its ack is lost, so the same bytes come again and
    the executor answers already_applied (its own earlier application). The subscriber
    records the halt in force all the same: with its holds file lost, the executor
    refuses to start rather than start holding nothing."""
    c = Commands()
    halt, halt_id = c.make(20.5, Action.HALT_TRADING, venue("okx"))
    r = run(tmp_path, [(20.5, halt), (21.5, halt)], fail_sends=1)
    assert r.executor.subscriber.state.held() == [("halt_trading", "venue:okx", halt_id)]
    r.executor.subscriber.close()
    (tmp_path / "sub.sqlite.holds.json").unlink()
    with pytest.raises(ConfigError, match=f"missing halt_trading on venue:okx .command {halt_id}"):
        run(tmp_path, [])


def test_an_operator_s_halt_lifted_by_name_leaves_the_guard_s_halt_in_force(
        tmp_path: Path) -> None:
    """An operator halts okx, then the guard halts it too: the guard's halt is applied
    and held beside the operator's (not answered by it), so the operator's resume naming
    only their own halt leaves okx halted by the guard's."""
    c = Commands()
    okx = venue("okx")
    manual, manual_id = c.make(10.5, Action.HALT_TRADING, okx, by=(OP1,))
    guard, guard_id = c.make(20.5, Action.HALT_TRADING, okx)
    lift, _ = c.make(30.5, Action.RESUME, okx, by=(OP1,), params={"resumes": [manual_id]})
    r = run(tmp_path, [(10.5, manual), (20.5, guard), (30.5, lift)])
    assert [(a.command_id, a.outcome) for a in r.acks()][:2] == [
        (manual_id, AckOutcome.APPLIED), (guard_id, AckOutcome.APPLIED)]
    assert [h.command_id for h in r.executor.holds()] == [guard_id]
    assert not any(r.trader.passed(BTC_OKX, seconds=range(11, SECONDS)))


def test_a_desk_s_cut_lifted_by_name_leaves_the_guard_s_equal_cut_in_force(
        tmp_path: Path) -> None:
    """A desk key cuts BTC-USDT on binance to 0.002 and the guard then asks the same: the
    desk's hold does not answer the guard's cut (another signer's), so both are held,
    and the desk's resume naming its own cut leaves the guard's applying. The guard's
    own repeat is still answered by its hold."""
    c = Commands()
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="binance")
    desk, desk_id = c.make(10.5, Action.REDUCE_LIMITS, scope, by=(DESK,),
                           params={"factor": 0.002})
    guard, guard_id = c.make(20.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.002})
    repeat, _ = c.make(25.5, Action.REDUCE_LIMITS, scope, params={"factor": 0.5})
    lift, _ = c.make(30.5, Action.RESUME, scope, by=(DESK,),
                     params={"actions": ["reduce_limits"], "resumes": [desk_id]})
    r = run(tmp_path, [(10.5, desk), (20.5, guard), (25.5, repeat), (30.5, lift)])
    assert [(a.outcome, a.settles) for a in r.acks()][:3] == [
        (AckOutcome.APPLIED, None), (AckOutcome.APPLIED, None),
        (AckOutcome.ALREADY_APPLIED, guard_id)]
    assert [(h.command_id, h.factor) for h in r.executor.holds()] == [(guard_id, 0.002)]
    assert not any(r.trader.passed(BTC_BIN, seconds=range(11, SECONDS)))
