"""`riskguard feed` end to end: cryptofeed's own Binance USDT-M feed class, pointed at a
local stand-in that speaks Binance's documented stream format, bridged into the real dev
broker on a primary and a backup feed, and read back from the topics; the silence drill
(the stand-in stops sending: `degraded`) and the disconnect drill (it drops every
connection and refuses connects for a while: each feed reports `down`, then `ok` once
cryptofeed has reconnected); and a delivery Kafka does not acknowledge stops the bridge
with DeliveryError."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

cryptofeed = pytest.importorskip("cryptofeed", reason="needs the feed extra: "
                                 "pip install 'riskguard[feed]'")

from feed_server import BinanceFuturesStandIn, RestStandIn, self_signed  # noqa: E402
from kafka_helpers import consume_all  # noqa: E402
from riskguard.connectors.feeds import BridgeConfig, FeedBridge, spec_for  # noqa: E402
from riskguard.connectors.publish import Publisher  # noqa: E402
from riskguard.connectors.settings import KafkaSettings  # noqa: E402
from riskguard.connectors.topics import TopicSpec, create_topics, topic_name  # noqa: E402
from riskguard.schemas import (  # noqa: E402
    Bar,
    FundingRate,
    Quote,
    Side,
    Trade,
    VenueState,
    VenueStatus,
    decode,
)

from riskguard.errors import DeliveryError  # noqa: E402

NS = 1_000_000_000
CHANNELS = ("trades", "l1", "funding", "liquidations", "candles")


def local_binance_futures(ws_port: int, rest_port: int, client_ssl: Any) -> type:
    """cryptofeed's BinanceFutures with its two addresses (websocket, REST) on the
    stand-in: the exchange class keeps them as class attributes."""
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.exchanges import BinanceFutures
    from cryptofeed.symbols import Symbols

    Symbols.clear()  # the symbol list is cached per exchange id: read the stand-in's

    class LocalBinanceFutures(BinanceFutures):
        websocket_endpoints = [WebsocketEndpoint(
            f"wss://127.0.0.1:{ws_port}", options={"compression": None, "ssl": client_ssl})]
        rest_endpoints = [RestEndpoint(
            f"http://127.0.0.1:{rest_port}",
            routes=Routes("/fapi/v1/exchangeInfo", l2book="/fapi/v1/depth?symbol={}&limit={}",
                          authentication="/fapi/v1/listenKey",
                          open_interest="/fapi/v1/openInterest?symbol={}"))]

    return LocalBinanceFutures


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def _topics(bootstrap: str, env: str) -> None:
    create_topics({"bootstrap.servers": bootstrap}, [
        TopicSpec(topic_name(env, s)) for s in ("market", "venue_status", "dead_letters")])


def _read(bootstrap: str, env: str, stream: str) -> list[Any]:
    return [decode(stream, v) for _p, _o, v in consume_all(bootstrap, topic_name(env, stream))]


@pytest.mark.kafka
def test_binance_stream_bridged_on_two_feeds_with_the_disconnect_drill(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Every channel arrives on the market topic as its wire record, from both feeds;
    each feed's heartbeats go ok -> degraded (the stand-in goes silent) -> ok -> down (it
    drops the connections) -> ok (cryptofeed reconnected) -> down (the bridge stopped);
    nothing is a dead letter."""
    env = f"f{uuid.uuid4().hex[:8]}"
    _topics(kafka_bootstrap, env)
    server_ssl, client_ssl = self_signed(tmp_path)
    publisher = Publisher(KafkaSettings(bootstrap=kafka_bootstrap), env)
    marks: dict[str, int] = {}

    async def scenario(rest_port: int) -> Any:
        server = BinanceFuturesStandIn(server_ssl)
        await server.start()
        config = BridgeConfig(spec=spec_for("binance-futures"), symbols=("BTC-USDT-PERP",),
                              channels=CHANNELS, feeds=("primary", "backup"),
                              heartbeat_s=0.2, silence_s=1.0)
        bridge = FeedBridge(config, publisher, feed_class=local_binance_futures(
            server.port, rest_port, client_ssl))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        await _until(lambda: bridge.stats.per_channel["trades"] >= 20
                     and bridge.stats.states["ok"] >= 4, 30, "trades and ok heartbeats")
        server.paused = True  # open but silent: degraded after silence_s
        await _until(lambda: bridge.stats.states["degraded"] >= 4, 30, "degraded heartbeats")
        server.paused = False
        ok = bridge.stats.states["ok"]
        await _until(lambda: bridge.stats.states["ok"] >= ok + 4, 30, "ok again")
        marks["drop"] = time.time_ns()
        await server.outage(2.0)
        marks["back"] = time.time_ns()
        after = bridge.stats.per_channel["trades"]
        await _until(lambda: bridge.stats.per_channel["trades"] >= after + 20, 30,
                     "trades after the reconnect")
        await asyncio.sleep(1.0)  # a few ok heartbeats after the reconnect
        stop.set()
        stats = await task
        await server.stop()
        return stats, server.paths

    with RestStandIn() as rest:
        stats, paths = asyncio.run(scenario(rest.port))

    # cryptofeed asked for the streams of the channels, one connection per feed at a time
    assert paths[0].startswith("/stream?streams=")
    assert set(paths[0].split("=", 1)[1].split("/")) == {
        "btcusdt@aggTrade", "btcusdt@bookTicker", "btcusdt@markPrice", "btcusdt@forceOrder",
        "btcusdt@kline_1m"}
    assert len(paths) >= 4  # two feeds, each connected before and after the outage
    assert stats.dead_letters == {}
    assert stats.acked == sum(stats.per_stream.values())

    market = _read(kafka_bootstrap, env, "market")
    assert len(market) == stats.per_stream["market"]
    by_kind: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for rec in market:
        kind = "liquidation" if isinstance(rec, Trade) and rec.liquidation else type(rec).__name__
        by_kind[(kind, rec.feed)].append(rec)
    for feed in ("primary", "backup"):
        for kind in ("Trade", "Quote", "FundingRate", "liquidation", "Bar"):
            assert by_kind[(kind, feed)], (kind, feed)
    for rec in market:
        assert (rec.venue, rec.instrument) == ("binance", "BTC-USDT-PERP")
        assert rec.recv_ts is not None and abs(rec.recv_ts - rec.ts) < 60 * NS
    trade = by_kind[("Trade", "primary")][0]
    assert isinstance(trade, Trade) and trade.qty == 0.005 and trade.side in (Side.BUY, Side.SELL)
    assert trade.id.startswith("binance:BTC-USDT-PERP:")
    quote = by_kind[("Quote", "backup")][0]
    assert isinstance(quote, Quote) and (quote.bid_size, quote.ask_size) == (3.25, 1.5)
    assert quote.ask > quote.bid
    funding = by_kind[("FundingRate", "primary")][0]
    assert isinstance(funding, FundingRate) and funding.rate == 0.0001
    assert funding.next_funding_ts is not None and funding.next_funding_ts > funding.ts
    liq = by_kind[("liquidation", "primary")][0]
    assert (liq.side, liq.qty) == (Side.SELL, 0.01)
    bar = by_kind[("Bar", "primary")][0]
    assert isinstance(bar, Bar) and bar.interval_ns == 60 * NS and bar.ts - bar.start == 60 * NS
    assert bar.ts % (60 * NS) == 0 and (bar.low, bar.high, bar.volume) == (59900.0, 60100.0, 12.5)

    statuses = _read(kafka_bootstrap, env, "venue_status")
    assert len(statuses) == stats.per_stream["venue_status"]
    assert _read(kafka_bootstrap, env, "dead_letters") == []
    for feed in ("primary", "backup"):
        mine = sorted((s for s in statuses if isinstance(s, VenueStatus) and s.feed == feed),
                      key=lambda s: s.seq)
        assert [s.seq for s in mine] == list(range(1, len(mine) + 1))  # none lost
        runs = [mine[0].state]
        for s in mine[1:]:
            if s.state != runs[-1]:
                runs.append(s.state)
        # connecting (down until the first connect may show), then the drill, then the stop
        while runs[0] is not VenueState.OK:
            runs.pop(0)
        assert runs == [VenueState.OK, VenueState.DEGRADED, VenueState.OK, VenueState.DOWN,
                        VenueState.OK, VenueState.DOWN], (feed, runs)
        first_down = next(s for s in mine if s.state is VenueState.DOWN
                          and s.ts >= marks["drop"])
        assert first_down.ts - marks["drop"] < 2 * NS  # seen within a few heartbeats
        back_ok = next(s for s in mine if s.state is VenueState.OK and s.ts > first_down.ts)
        assert back_ok.ts >= marks["back"]  # ok only once the stand-in listens again
        print(f"drill {feed}: first down {(first_down.ts - marks['drop']) / NS:.1f} s after "
              f"the drop, ok again {(back_ok.ts - marks['drop']) / NS:.1f} s after it (the "
              f"outage lasted {(marks['back'] - marks['drop']) / NS:.1f} s)")
        assert mine[-1].state is VenueState.DOWN  # the bridge's last word: it stopped


@pytest.mark.kafka
def test_a_delivery_kafka_does_not_acknowledge_stops_the_bridge(tmp_path: Path) -> None:
    """With a broker that never answers, the first failed delivery (librdkafka's own
    message timeout) stops the bridge: run() raises DeliveryError instead of cryptofeed
    reconnecting and the bridge going on as if the records had been produced."""
    server_ssl, client_ssl = self_signed(tmp_path)
    publisher = Publisher(KafkaSettings(bootstrap="127.0.0.1:1"), "dev",
                          delivery_timeout_s=1.0)

    async def scenario(rest_port: int) -> None:
        server = BinanceFuturesStandIn(server_ssl)
        await server.start()
        config = BridgeConfig(spec=spec_for("binance-futures"), symbols=("BTC-USDT-PERP",),
                              channels=("trades",), heartbeat_s=0.2)
        bridge = FeedBridge(config, publisher, feed_class=local_binance_futures(
            server.port, rest_port, client_ssl))
        started = time.monotonic()
        try:
            with pytest.raises(DeliveryError) as err:
                await asyncio.wait_for(bridge.run(), 60)
            assert "not acknowledged by Kafka" in str(err.value)
            assert time.monotonic() - started < 30
            assert bridge.stats.per_channel["trades"] >= 1
        finally:
            await server.stop()

    with RestStandIn() as rest:
        asyncio.run(scenario(rest.port))


def test_an_unknown_symbol_is_a_config_error_naming_the_convention(tmp_path: Path) -> None:
    """A symbol the exchange's list lacks (its native spelling, say) is refused before any
    connection, with the form the exchange takes."""
    from riskguard.errors import ConfigError

    _server_ssl, client_ssl = self_signed(tmp_path)
    with RestStandIn() as rest:
        cls = local_binance_futures(1, rest.port, client_ssl)
        config = BridgeConfig(spec=spec_for("binance-futures"), symbols=("BTCUSDT",),
                              channels=("trades",))
        bridge = FeedBridge(config, object(), feed_class=cls)
        with pytest.raises(ConfigError) as err:
            asyncio.run(bridge.run())
    assert str(err.value) == ("feed --symbols: symbols binance-futures lists, like "
                              "BTC-USDT-PERP; got 'BTCUSDT'")



@pytest.mark.kafka
def test_a_feed_down_longer_than_restart_after_is_started_afresh(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """cryptofeed doubles its reconnect delay at each failure (1, 2, 4 s ...): after a 4 s
    outage it would try again only at about 7 s. A feed down for longer than
    restart_after_s is started afresh, so it is back within about a second of the
    exchange."""
    env = f"f{uuid.uuid4().hex[:8]}"
    _topics(kafka_bootstrap, env)
    server_ssl, client_ssl = self_signed(tmp_path)
    publisher = Publisher(KafkaSettings(bootstrap=kafka_bootstrap), env)
    marks: dict[str, int] = {}

    async def scenario(rest_port: int) -> Any:
        server = BinanceFuturesStandIn(server_ssl)
        await server.start()
        config = BridgeConfig(spec=spec_for("binance-futures"), symbols=("BTC-USDT-PERP",),
                              channels=("trades",), heartbeat_s=0.2, restart_after_s=1.0)
        bridge = FeedBridge(config, publisher, feed_class=local_binance_futures(
            server.port, rest_port, client_ssl))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        await _until(lambda: bridge.stats.states["ok"] >= 3, 30, "ok heartbeats")
        await server.outage(4.0)
        marks["back"] = time.time_ns()
        after = bridge.stats.per_channel["trades"]
        await _until(lambda: bridge.stats.per_channel["trades"] > after, 30, "trades again")
        marks["flowing"] = time.time_ns()
        stop.set()
        stats = await task
        await server.stop()
        return stats

    with RestStandIn() as rest:
        stats = asyncio.run(scenario(rest.port))
    assert stats.restarts >= 1
    assert marks["flowing"] - marks["back"] < 2 * NS
    print(f"drill restart: trades again {(marks['flowing'] - marks['back']) / NS:.1f} s after "
          f"the end of a 4 s outage ({stats.restarts} restarts)")
    statuses = [s for s in _read(kafka_bootstrap, env, "venue_status")
                if isinstance(s, VenueStatus)]
    assert any(s.state is VenueState.OK and s.ts > marks["back"] for s in statuses)


class _Ws:
    """Stands in for a websockets client connection (open)."""

    state = None


def _fresh_feed(n: int = 2) -> Any:
    """What a feed started afresh has: new connection handlers, new connections."""
    from types import SimpleNamespace as Obj

    from cryptofeed.connection import WSAsyncConn
    conns = [WSAsyncConn("wss://127.0.0.1:1", f"c{i}") for i in range(n)]
    for c in conns:
        c.conn = _Ws()
    return Obj(connection_handlers=[Obj(conn=c) for c in conns])


def test_the_connection_probe_keeps_only_the_live_connections_across_restarts() -> None:
    import gc
    import weakref

    from riskguard.connectors.feeds.bridge import ConnectionProbe, forget_connections
    from websockets.protocol import State

    probe = ConnectionProbe()
    backup = _fresh_feed(1)
    old_ws = []
    for restart in range(500):  # a long outage with --restart-after 1
        feed = _fresh_feed()
        old_ws.extend(weakref.ref(h.conn.conn) for h in feed.connection_handlers)
        probe.look(feed, restart * NS, "primary")
        # the other feed on the same probe keeps its session: no reconnect seen
        assert [s.session for s in probe.look(backup, restart * NS, "backup")] == [1]
        for h in feed.connection_handlers:  # the bridge shuts it down, then forgets it
            h.conn.conn.state = State.CLOSED
        forget_connections(feed)
        del feed
    gc.collect()
    assert sum(len(conns) for conns in probe._seen.values()) == 3
    assert sum(r() is not None for r in old_ws) <= 2  # the last feed's, nothing older
    # a reconnect (a new websocket on the same connection) is still told
    backup.connection_handlers[0].conn.conn = _Ws()
    assert [s.session for s in probe.look(backup, 501 * NS, "backup")] == [2]
