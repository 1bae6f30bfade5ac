"""The live-feed bridge: cryptofeed's websocket feeds into the guard's input topics.

:class:`FeedBridge` runs one cryptofeed feed per feed name (``primary``, ``backup``),
maps every message with :class:`~riskguard.connectors.feeds.mapping.FeedMapper`, and
produces it through riskguard's lossless :class:`~riskguard.connectors.publish.Publisher`
(cryptofeed's Kafka backend checks no delivery). Every ``heartbeat_s`` it sends one
:class:`~riskguard.schemas.VenueStatus` per feed, and ``down`` for each when it stops,
so the guard fails over at once (docs/feeds.md). A delivery Kafka did not acknowledge
stops the bridge: :meth:`FeedBridge.run` raises :class:`~riskguard.errors.DeliveryError`,
caught before cryptofeed could take it for a network error and reconnect.

cryptofeed is imported when a bridge starts (``pip install 'riskguard[feed]'``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from riskguard.connectors.feeds.exchanges import CHANNELS, ExchangeSpec, check_channels
from riskguard.connectors.feeds.health import ConnectionSeen, VenueHealth
from riskguard.connectors.feeds.mapping import FeedMapper
from riskguard.connectors.publish import route
from riskguard.connectors.topics import STREAM_TYPES
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import tag_of
from riskguard.schemas.market import VenueState

from riskguard.errors import ConfigError, RiskguardError

LOG = logging.getLogger("riskguard.feed")
LOG.addHandler(logging.NullHandler())  # quiet unless logging is on (the CLI's -v)
FEED_NAMES = ("primary", "backup")
NS = 1_000_000_000


def carried_channels() -> dict[str, bool]:
    """Per riskguard channel: does the guard's market topic carry what it becomes?

    >>> carried_channels()["trades"]
    True
    """
    tags = {tag_of(t) for t in STREAM_TYPES["market"]}
    return {ch: tag in tags for ch, tag in CHANNELS.items()}


@dataclass(frozen=True)
class BridgeConfig:
    """What to bridge: one exchange, its symbols and channels, on one or two feeds.

    ``silence_s``: a connection without a message for longer is ``degraded``;
    ``restart_after_s``: cryptofeed closes and re-opens a connection silent that long,
    and the bridge starts afresh a feed down that long (-1: never);
    ``candle_interval``: cryptofeed's candle interval (``1m``, ``1h``...); ``aliases``:
    symbol parts the exchange spells its own way (``{"XBT": "BTC"}``), applied as each
    symbol becomes a market name (``XBT/USD`` -> ``BTC-USD``).
    """

    spec: ExchangeSpec
    symbols: tuple[str, ...]
    channels: tuple[str, ...]
    feeds: tuple[str, ...] = ("primary",)
    heartbeat_s: float = 1.0
    silence_s: float = 10.0
    restart_after_s: float = 60.0
    candle_interval: str = "1m"
    aliases: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> BridgeConfig:
        """Raise ConfigError naming the first bad setting."""
        check_channels(self.spec, self.channels, carried_channels())
        if not self.symbols:
            raise ConfigError("feed --symbols",
                              f"at least one symbol, like {self.spec.symbol_example}", "")
        for name in self.feeds:
            if name not in FEED_NAMES:
                raise ConfigError("feed --feed", "primary, backup or both", name)
        if not self.feeds or len(set(self.feeds)) != len(self.feeds):
            raise ConfigError("feed --feed", "primary, backup or both", ",".join(self.feeds))
        for key in ("heartbeat_s", "silence_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"feed --{key[:-2].replace('_', '-')}",
                                  "a number of seconds > 0", getattr(self, key))
        if self.restart_after_s != -1 and not self.restart_after_s >= 1:
            raise ConfigError("feed --restart-after", "seconds >= 1, or -1 for never",
                              self.restart_after_s)
        return self


@dataclass
class BridgeStats:
    """What a bridge produced (acknowledged by Kafka at the end of :meth:`FeedBridge.run`)."""

    per_stream: Counter[str] = field(default_factory=Counter)
    per_channel: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    acked: int = 0
    unfinished: int = 0  # candles still in progress, passed over


class ConnectionProbe:
    """What cryptofeed's websocket connections of one feed are doing, as
    :class:`ConnectionSeen` (its connection handlers expose the connection objects;
    each reconnect makes a new websocket, which is how a reconnect is told). What it
    keeps is rebuilt from the feed's current connections at each look, per feed name:
    a feed started afresh leaves nothing of its old connections behind."""

    def __init__(self) -> None:
        # feed name -> id(conn) -> (conn, ws, session, opened)
        self._seen: dict[str, dict[int, tuple[Any, Any, int, int]]] = {}

    def look(self, feed: Any, now_ns: int, name: str = "") -> list[ConnectionSeen]:
        from cryptofeed.connection import WSAsyncConn  # noqa: PLC0415  (optional extra)

        before = self._seen.get(name, {})
        seen: dict[int, tuple[Any, Any, int, int]] = {}
        out = []
        for handler in feed.connection_handlers:
            conn = handler.conn
            if not isinstance(conn, WSAsyncConn):
                continue  # REST pollers (open interest on some venues) keep no connection
            was, ws, session, opened = before.get(id(conn), (None, None, 0, 0))
            if was is not conn:  # an id reused by a new connection object
                ws, session, opened = None, 0, 0
            if conn.conn is not None and conn.conn is not ws:
                ws, session, opened = conn.conn, session + 1, now_ns
            seen[id(conn)] = (conn, ws, session, opened)
            last = conn.last_message
            out.append(ConnectionSeen(
                open=bool(conn.is_open), session=session,
                last_message_ns=None if last is None else int(last * NS),
                opened_ns=opened if session else None))
        self._seen[name] = seen
        return out


def forget_connections(feed: Any) -> None:
    """Let a stopped feed's connections go: cryptofeed registers each one's ``__del__``
    with atexit, which holds it (and its last websocket) until the process ends."""
    for handler in getattr(feed, "connection_handlers", ()):
        with contextlib.suppress(Exception):
            atexit.unregister(handler.conn.__del__)


class FeedBridge:
    """Bridge ``config`` into Kafka through ``publisher`` (a
    :class:`~riskguard.connectors.publish.Publisher`, or anything with its
    ``produce(stream, record)``, ``flush()`` and ``acked``).

    ``feed_class`` replaces the cryptofeed exchange class the table names (a subclass
    pointing at another address, say); ``clock`` gives the heartbeats' time in ns.
    """

    def __init__(self, config: BridgeConfig, publisher: Any, *,
                 feed_class: type | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config.validate()
        self.publisher = publisher
        self.feed_class = feed_class
        self.clock = clock
        self.stats = BridgeStats()
        self.feeds: dict[str, Any] = {}
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._health: dict[str, VenueHealth] = {}
        self._state_since: dict[str, int] = {}  # feed -> when its state last changed

    # -- records -------------------------------------------------------------------------

    def _emit(self, rec: Any, channel: str = "") -> None:
        where = "dead_letters" if isinstance(rec, DeadLetter) else route(rec, "auto")
        if isinstance(where, DeadLetter):  # a type the guard's input topics do not carry
            rec, where = where, "dead_letters"
        if isinstance(rec, DeadLetter):
            self.stats.dead_letters[rec.reason] += 1
            LOG.warning("%s: dead letter (%s at %s: expected %s, found %s)", rec.topic,
                        rec.reason, rec.path, rec.expected, rec.found)
        elif channel:
            self.stats.per_channel[channel] += 1
        self.stats.per_stream[where] += 1
        self.publisher.produce(where, rec)

    def _callback(self, channel: str, mapper: FeedMapper) -> Callable[..., Any]:
        async def on_message(obj: Any, receipt_timestamp: float) -> None:
            if self._failure is not None:
                return
            try:
                rec = mapper.record(channel, obj, receipt_timestamp)
                if rec is None:  # a candle still in progress
                    self.stats.unfinished += 1
                    return
                self._emit(rec, channel)
            except Exception as err:  # a failed delivery: stop, never let cryptofeed retry
                self._fail(err)
        return on_message

    def _fail(self, err: BaseException) -> None:
        if self._failure is None:
            self._failure = err
            LOG.error("stopping: %s", err)
        if self._stop is not None:
            self._stop.set()

    # -- feeds ---------------------------------------------------------------------------

    def _make_feed(self, name: str) -> Any:
        """A cryptofeed feed for feed ``name`` (not started). The first one of an exchange
        reads its symbol list over REST; cryptofeed keeps it for the next ones."""
        from cryptofeed.exceptions import UnsupportedSymbol  # noqa: PLC0415
        from cryptofeed.exchanges import EXCHANGE_MAP  # noqa: PLC0415

        cfg, spec = self.config, self.config.spec
        cls: Any = self.feed_class or EXCHANGE_MAP[spec.cryptofeed_id]
        restart = cfg.restart_after_s
        mapper = FeedMapper(spec, feed=name, clock=self.clock, aliases=self.config.aliases)
        callbacks = {spec.channels[ch]: self._callback(ch, mapper) for ch in cfg.channels}
        try:
            return cls(
                config={"uvloop": False}, symbols=list(cfg.symbols),
                channels=[spec.channels[ch] for ch in cfg.channels], callbacks=callbacks,
                retries=-1, timeout=restart if restart == -1 else int(restart),
                timeout_interval=max(1, int(restart / 4)) if restart != -1 else 30,
                candle_interval=cfg.candle_interval)
        except UnsupportedSymbol as err:
            raise ConfigError("feed --symbols", f"symbols {spec.name} lists, like "
                              f"{spec.symbol_example}", str(err).split(" ", 1)[0]) from None
        except ValueError as err:  # cryptofeed's own check of a setting
            raise ConfigError(f"feed ({spec.name})", "settings cryptofeed accepts",
                              str(err)) from None
        except Exception as err:  # the symbol list is read over REST at start
            where = getattr(cls.rest_endpoints[0], "address", spec.name) \
                if cls.rest_endpoints else spec.name
            msg = (f"cannot load {spec.name}'s symbol list from {where} "
                   f"({type(err).__name__}); is the exchange reachable from here? (-v shows "
                   "cryptofeed's log)")
            raise RiskguardError(msg) from None

    def _make_feeds(self) -> None:
        for name in self.config.feeds:
            self.feeds[name] = self._make_feed(name)

    def _heartbeat(self, probe: ConnectionProbe, health: dict[str, VenueHealth],
                   final: bool = False) -> None:
        now = self.clock()
        for name, feed in self.feeds.items():
            h = health[name]
            before = h.s.last_state
            status = h.on_check(now, [] if final else probe.look(feed, now, name))
            if status.state.value != before:
                log = LOG.info if status.state is VenueState.OK else LOG.warning
                log("%s %s feed: %s", status.venue, name, status.state.value)
                self._state_since[name] = now
            self.stats.states[status.state.value] += 1
            self._emit(status)

    async def _restart_long_down(self) -> None:
        """Start afresh a feed down for longer than ``restart_after_s``: cryptofeed doubles
        its reconnect delay at every failure, without a cap (1, 2, 4 ... 512 s), so
        after a long outage it would wait about as long again before trying."""
        limit = self.config.restart_after_s
        if limit == -1:
            return
        now = self.clock()
        for name, feed in list(self.feeds.items()):
            if self._last_state(name) != VenueState.DOWN.value \
                    or now - self._state_since.get(name, now) <= limit * NS:
                continue
            LOG.warning("%s %s feed: down for more than %g s, starting it afresh",
                        self.config.spec.venue, name, limit)
            feed.stop()
            with contextlib.suppress(Exception):  # closing what is left of it
                await feed.shutdown()
            forget_connections(feed)
            self.feeds[name] = self._make_feed(name)
            self.feeds[name].start(asyncio.get_running_loop())
            self._state_since[name] = now
            self.stats.restarts += 1

    def _last_state(self, name: str) -> str:
        """The state feed ``name`` reported last (empty before its first heartbeat)."""
        return self._health[name].s.last_state if name in self._health else ""

    async def run(self, stop: asyncio.Event | None = None, duration_s: float | None = None,
                  on_started: Callable[[], Any] = lambda: None) -> BridgeStats:
        """Bridge until ``stop`` is set, ``duration_s`` has passed, or a delivery fails
        (then raises :class:`~riskguard.errors.DeliveryError`); returns the counts.
        ``on_started`` is called once the feeds are made (symbols checked) and started."""
        with _cryptofeed_logs_to_riskguard():
            return await self._run(stop or asyncio.Event(), duration_s, on_started)

    async def _run(self, stop: asyncio.Event, duration_s: float | None,
                   on_started: Callable[[], Any]) -> BridgeStats:
        self._stop = stop
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._make_feeds)  # reads symbols over REST
        probe = ConnectionProbe()
        health = self._health = {name: VenueHealth(self.config.spec.venue, name,
                                                   silence_ns=int(self.config.silence_s * NS))
                                 for name in self.feeds}
        deadline = None if duration_s is None else loop.time() + duration_s
        handler_before = loop.get_exception_handler()
        loop.set_exception_handler(_log_task_error)
        try:
            for feed in self.feeds.values():
                feed.start(loop)
            on_started()
            while not stop.is_set():
                wait = self.config.heartbeat_s
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if self._failure is not None:
                    break
                try:
                    self._heartbeat(probe, health)
                    await self._restart_long_down()
                except Exception as err:
                    self._fail(err)
                    break
                if deadline is not None and loop.time() >= deadline:
                    break
        finally:
            try:
                await self._shutdown(probe, health)
            finally:
                loop.set_exception_handler(handler_before)
        return self.stats

    async def _shutdown(self, probe: ConnectionProbe, health: dict[str, VenueHealth]) -> None:
        for feed in self.feeds.values():
            feed.stop()
        for feed in self.feeds.values():
            with contextlib.suppress(Exception):  # closing sockets; nothing left to lose
                await feed.shutdown()
        if self._failure is None:
            self._heartbeat(probe, health, final=True)  # "down": the guard fails over now
        try:
            self.publisher.flush()
        finally:
            self.stats.acked = self.publisher.acked
        if self._failure is not None:
            raise self._failure


def _log_task_error(_loop: Any, context: dict[str, Any]) -> None:
    """A cryptofeed task that ended in an error (its handler reconnects; this is logged)."""
    err = context.get("exception")
    LOG.warning("cryptofeed: %s%s", context.get("message", ""),
                f" ({type(err).__name__}: {err})" if err is not None else "")


class _Forward(logging.Handler):
    """Hands cryptofeed's log records to riskguard's logger (shown with ``-v``)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            record.exc_info = record.exc_info if self.target.isEnabledFor(logging.DEBUG) \
                else None  # reconnect tracebacks only at -vvv
            record.exc_text = None
            self.target.handle(record)


@contextlib.contextmanager
def _cryptofeed_logs_to_riskguard() -> Iterator[None]:
    """cryptofeed logs to ``feedhandler`` (Python would print its warnings and reconnect
    tracebacks on stderr): while a bridge runs they go to ``riskguard.feed.cryptofeed``."""
    source = logging.getLogger("feedhandler")
    handler = _Forward(logging.getLogger("riskguard.feed.cryptofeed"))
    before = source.propagate
    source.addHandler(handler)
    source.propagate = False
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.propagate = before


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple, blanks dropped.

    >>> parse_list("trades, l1,,")
    ('trades', 'l1')
    """
    return tuple(p.strip() for p in text.split(",") if p.strip())


def feeds_of(choice: str) -> Sequence[str]:
    """``--feed``: ``primary``, ``backup`` or ``both``.

    >>> feeds_of("both")
    ('primary', 'backup')
    """
    return FEED_NAMES if choice == "both" else (choice,)
