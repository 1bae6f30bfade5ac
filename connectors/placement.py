"""Where records are read and where keyed state lives, on a bytewax cluster.

bytewax 0.21 sends a keyed record to worker ``SipHash-1-3(key) % workers``
(:func:`route_worker` reproduces it) and hands source partitions to workers
round-robin over their sorted names. :class:`~riskguard.connectors.kafka.KafkaInput`
uses both to read a topic where its records' state lives (key-split
replicas) and to give every worker its own copy of the few records every
worker needs (broadcast). :class:`Replica` decides, per message, which
replica emits it; :class:`LocalKeys` lets a fan-out of a broadcast record
emit only the keys that live on the worker it runs on, so the union over
workers is exactly the single-worker fan-out and nothing crosses processes.
"""

from __future__ import annotations

import functools
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from riskguard.schemas import Balance, DeadLetter, Fill, OpenOrders, PositionSnapshot

_M64 = (1 << 64) - 1


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key: Rust's ``DefaultHasher::new()``."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = ((v1 << 13) | (v1 >> 51)) & _M64 ^ v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _M64
            v2 = (v2 + v3) & _M64
            v3 = ((v3 << 16) | (v3 >> 48)) & _M64 ^ v2
            v0 = (v0 + v3) & _M64
            v3 = ((v3 << 21) | (v3 >> 43)) & _M64 ^ v0
            v2 = (v2 + v1) & _M64
            v1 = ((v1 << 17) | (v1 >> 47)) & _M64 ^ v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _M64
        return v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        (m,) = struct.unpack_from("<Q", data, i)
        v3 ^= m
        v0, v1, v2, v3 = rounds(v0, v1, v2, v3, 1)
        v0 ^= m
    last = (n & 0xFF) << 56
    for j, byte in enumerate(data[end:]):
        last |= byte << (8 * j)
    v3 ^= last
    v0, v1, v2, v3 = rounds(v0, v1, v2, v3, 1)
    v0 ^= last
    v2 ^= 0xFF
    v0, v1, v2, v3 = rounds(v0, v1, v2, v3, 3)
    return v0 ^ v1 ^ v2 ^ v3


@functools.lru_cache(maxsize=100_000)
def route_worker(key: str | bytes, workers: int) -> int:
    """The worker bytewax 0.21 routes state key ``key`` to, out of ``workers``
    (memoized: the placement checks ask it for every record of a split topic).

    bytewax hashes a ``StateKey(String)`` with Rust's derived ``Hash`` (the
    UTF-8 bytes, then ``0xff``) under ``DefaultHasher`` (SipHash-1-3, zero
    key), and timely's exchange takes it modulo the worker count.
    ``tests/test_guard_scaling.py`` checks this against a 3-worker run.

    >>> [route_worker(k, 3) for k in ("k0", "k1", "binance/BTC-PERP")]
    [1, 1, 2]
    """
    data = key.encode() if isinstance(key, str) else key
    return _siphash13(data + b"\xff") % workers


def aligned_partition(key: str | bytes, partitions: int) -> int:
    """The partition of an aligned topic a producer writes a record keyed ``key`` to.

    It hashes the key as bytewax routes state keys (:func:`route_worker`), modulo the
    partition count instead of the worker count. An aligned topic's partition ``i`` is
    read by worker ``i % W`` (``KafkaInput(aligned_topics=...)``), and when ``W``
    divides the partition count, ``i % W == route_worker(key, W)``: each record is
    read on the worker that holds its key's state, for every such ``W`` (4 partitions
    serve 1, 2 or 4 workers), so keying it downstream by the same string never moves it.

    >>> [aligned_partition(k, 4) for k in ("okx/BTC-PERP", "binance/BTC-USDT")]
    [2, 1]
    >>> [aligned_partition(k, 4) % 2 == route_worker(k, 2)
    ...  for k in ("okx/BTC-PERP", "binance/BTC-USDT")]
    [True, True]
    """
    return route_worker(key, partitions)  # the same hash, modulo the partitions


# Per process: the cluster's worker count, and each worker thread's (index, count), as
# seen by the ``workers`` probe step that kafka_input adds before its source. Keyed by
# OS thread id: bytewax calls Python from its own threads with a fresh thread state
# each time, so a threading.local would not survive between calls.
_CLUSTER: dict[str, int] = {}
_WORKER_OF_THREAD: dict[int, tuple[int, int]] = {}


def cluster_workers() -> int | None:
    """The cluster's worker count, once the ``workers`` probe step has run in this
    process; else None."""
    return _CLUSTER.get("workers")


def worker_of_thread() -> tuple[int, int] | None:
    """``(index, count)`` of the bytewax worker calling this, if the flow has the
    ``workers`` probe step; else None."""
    return _WORKER_OF_THREAD.get(threading.get_ident())


def claim_worker(index: int, count: int) -> None:
    """Record the calling thread as worker ``index`` of ``count``: what an engine other
    than bytewax (whose flows have no ``workers`` probe step) says before it runs a
    step's function, so event-time ticks are named per worker and announce how many
    workers tick.

    >>> claim_worker(1, 2); worker_of_thread()
    (1, 2)
    >>> del _WORKER_OF_THREAD[threading.get_ident()]
    """
    _WORKER_OF_THREAD[threading.get_ident()] = (index, count)


class _NoItems(StatelessSourcePartition[Any]):
    def next_batch(self) -> list[Any]:
        raise StopIteration


class _Once(StatelessSourcePartition[Any]):
    def __init__(self) -> None:
        self._sent = False

    def next_batch(self) -> list[Any]:
        if self._sent:
            raise StopIteration
        self._sent = True
        return [None]


class StartSignal(DynamicSource[Any]):
    """One ``None`` per worker at start, then its end: a keyed step fed by it exists in
    every run, an empty one included, so its ``on_eof`` runs (a market process's final
    progress, :mod:`riskguard.operators.core.end_of_input`)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Once:
        return _Once()


class WorkerProbe(DynamicSource[Any]):
    """Emits nothing; records the worker count and the calling worker's index.

    bytewax builds a worker's steps in flow order, on that worker's thread, so
    a probe placed before a :class:`~riskguard.connectors.kafka.KafkaInput`
    has run when the source lists its parts, and :class:`LocalKeys` can tell
    later which worker it runs on.
    """

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NoItems:
        _CLUSTER["workers"] = worker_count
        _WORKER_OF_THREAD[threading.get_ident()] = (worker_index, worker_count)
        return _NoItems()


class LocalKeys:
    """``local(key)``: does state key ``key`` live on the worker calling this?

    For fanning out a broadcast record (one every worker reads its own copy
    of): each worker emits only its own keys, so the union over workers is
    the whole fan-out and no copy crosses a process. Valid only inside a flow
    whose source has the ``workers`` probe step (``kafka_input`` always adds
    it).

    >>> import threading
    >>> _WORKER_OF_THREAD[threading.get_ident()] = (1, 3)
    >>> local = LocalKeys()
    >>> [local(k) for k in ("k0", "binance/BTC-PERP")]
    [True, False]
    >>> del _WORKER_OF_THREAD[threading.get_ident()]
    """

    def __call__(self, key: str) -> bool:
        where = worker_of_thread()
        if where is None:
            msg = ("LocalKeys called outside a bytewax worker of a flow with the 'workers' "
                   "probe step (kafka_input always adds it)")
            raise RuntimeError(msg)
        index, count = where
        return route_worker(key, count) == index


class OtherProcessKeys:
    """``remote(key)``: does state key ``key`` live on a worker in another process
    than the one calling this?

    A step can then encode what it sends there once, compactly, instead of
    leaving it to bytewax's pickling (see
    :func:`~riskguard.operators.exposure.pack_for_wire`). The workers of this
    process are those the ``workers`` probe step has seen; one not seen yet
    counts as remote, which costs an encoding, never a wrong answer. Outside a
    flow with the probe nothing is remote.

    >>> import threading
    >>> saved = dict(_WORKER_OF_THREAD)  # workers other flows in this process registered
    >>> _WORKER_OF_THREAD.clear()
    >>> _WORKER_OF_THREAD[threading.get_ident()] = (0, 2)
    >>> remote = OtherProcessKeys()
    >>> [(route_worker(k, 2), remote(k)) for k in ("okx/BTC-PERP", "binance/BTC-USDT")]
    [(0, False), (1, True)]
    >>> del _WORKER_OF_THREAD[threading.get_ident()]
    >>> remote("binance/BTC-USDT")
    False
    >>> _WORKER_OF_THREAD.update(saved)
    """

    def __call__(self, key: str) -> bool:
        where = worker_of_thread()
        if where is None:
            return False
        here = {index for index, _count in _WORKER_OF_THREAD.values()}
        count = where[1]
        return len(here) < count and route_worker(key, count) not in here


def aligned_partitions(key: str | bytes, partitions: int,
                       broadcast_prefixes: tuple[bytes, ...] = (),
                       owners: MarketOwners | None = None) -> list[int]:
    """Every partition of an aligned topic a producer writes a record keyed ``key`` to.

    A key under one of ``broadcast_prefixes`` (index and oracle prices) goes to
    every partition: each worker keeps the copy in its first partition
    (:class:`AlignedReader`), read in event-time order with its own market data.
    Any other key goes to :func:`aligned_partition` only; with ``owners`` (market
    processes, docs/scaling.md "The market tier"), to one of the partitions its owner reads
    (``p % processes == owner``, spread over them by the key's hash), which needs a
    partition count that is a multiple of the processes.

    >>> aligned_partitions("okx/BTC-PERP", 4, (b"index/",))
    [2]
    >>> aligned_partitions("index/BTC-USD", 4, (b"index/",))
    [0, 1, 2, 3]
    >>> owners = MarketOwners(0, 2, {"BTC": 0, "ETH": 1}, lambda name: None)
    >>> [aligned_partitions(k, 4, owners=owners)[0] % 2 for k in ("okx/ETH-PERP", "x/BTC-USDT")]
    [1, 0]
    """
    data = key.encode() if isinstance(key, str) else key
    if broadcast_prefixes and data.startswith(broadcast_prefixes):
        return list(range(partitions))
    if owners is None:
        return [route_worker(data, partitions)]
    n = owners.processes
    return [owners.of_key(data) + n * route_worker(data, max(partitions // n, 1))]


class AlignedReader:
    """Which messages of an aligned topic's partition ``partition`` its reader (worker
    ``partition % workers``) emits; the same interface as :class:`Replica`.

    Every message under an ordinary key is emitted: the producer put it where its key's
    state lives (:func:`aligned_partition`); ``misplaced(key)`` says when it did not.
    Messages under ``key_prefixes`` are written to every partition
    (:func:`aligned_partitions`): each worker emits the broadcast records of its first
    partition (``partition < workers``) and skips the other copies undecoded; a
    non-broadcast record under such a key is emitted once, from the partition its key
    routes to.

    >>> r0, r2 = (AlignedReader(p, 2, key_prefixes=(b"index/",),
    ...                         is_broadcast=lambda rec: rec == "index price") for p in (0, 2))
    >>> [r0.place(k) for k in (b"okx/BTC-PERP", b"index/BTC-USD")]
    [(True, False), (False, True)]
    >>> r2.place(b"index/BTC-USD"), r0.admit("index price", False, True)
    ((False, False), 'keep')
    >>> r0.misplaced(b"okx/BTC-PERP"), r0.misplaced(b"binance/BTC-USDT")
    (False, True)
    """

    def __init__(self, partition: int, workers: int, *, key_prefixes: tuple[bytes, ...] = (),
                 is_broadcast: Callable[[Any], bool] | None = None,
                 owner: Callable[[bytes | None], int] | None = None) -> None:
        self.partition = partition
        self.worker = partition % workers
        self.workers = workers
        self.key_prefixes = key_prefixes
        self.is_broadcast = is_broadcast
        # who owns a key (as Replica's): bytewax's routing, or a market process's owner
        self.owner = owner
        self.place: Callable[[bytes | None], tuple[bool, bool]] = functools.lru_cache(
            maxsize=_PLACED_MAX)(self._place)
        self.misplaced: Callable[[bytes | None], bool] = functools.lru_cache(
            maxsize=_PLACED_MAX)(self._misplaced)

    def _shared_key(self, key: bytes | None) -> bool:
        return bool(self.key_prefixes) and key is not None and key.startswith(self.key_prefixes)

    def _owner_of(self, key: bytes | None) -> int:
        return route_worker(key or b"", self.workers) if self.owner is None else self.owner(key)

    def _place(self, key: bytes | None) -> tuple[bool, bool]:
        if self._shared_key(key):
            return self._owner_of(key) == self.partition, self.partition < self.workers
        return True, False

    def _misplaced(self, key: bytes | None) -> bool:
        return not self._shared_key(key) and self._owner_of(key) != self.worker

    def admit(self, rec: Any, owned: bool, shared: bool, *, dead: bool = False) -> str:
        """``keep``, ``skip`` (another copy is emitted) or ``not_broadcast``."""
        return _admit(self.is_broadcast, rec, owned, shared, dead=dead)


@dataclass(frozen=True)
class Broadcast:
    """Records every worker reads its own copy of.

    ``topics`` are read whole by every worker (small topics, e.g. venue
    heartbeats). On a key-split topic, messages whose Kafka key starts with
    one of ``key_prefixes`` (e.g. ``b"index/"``) are read by every worker
    too. ``records`` names the decoded records that must be broadcast: such a
    record that arrives under another key would reach one worker only, so it
    becomes a dead letter (``not_broadcast``) rather than half-delivered.
    Everything else on these topics is emitted once, by the replica its key
    routes to.
    """

    topics: frozenset[str] = frozenset()
    key_prefixes: tuple[bytes, ...] = ()
    records: Callable[[Any], bool] | None = None


_PLACED_MAX = 100_000


class Replica:
    """Which messages replica ``r`` (of ``workers``) of a split or broadcast partition emits.

    Before decoding, ``place(key)`` says whether a key routes to this replica
    (``owned``) and whether every replica reads it (``shared``): a message
    that is neither is skipped undecoded. After decoding, :meth:`admit`
    settles it: a broadcast record under a shared key is emitted by every
    replica, anything else (dead letters included) only by its key's owner.

    >>> rep = Replica(0, 2, whole_topic=False, key_prefixes=(b"index/",),
    ...               is_broadcast=lambda rec: rec == "index price")
    >>> [route_worker(k, 2) for k in (b"okx/BTC-PERP", b"binance/BTC-USDT")]
    [0, 1]
    >>> [rep.place(k) for k in (b"okx/BTC-PERP", b"binance/BTC-USDT", b"index/BTC-USD")]
    [(True, False), (False, False), (False, True)]
    >>> rep.admit("index price", False, True), rep.admit("trade", False, True)
    ('keep', 'skip')
    >>> rep.admit("index price", True, False)
    'not_broadcast'
    """

    def __init__(self, replica: int, workers: int, *, whole_topic: bool,
                 key_prefixes: tuple[bytes, ...] = (),
                 is_broadcast: Callable[[Any], bool] | None = None,
                 owner: Callable[[bytes | None], int] | None = None) -> None:
        self.replica = replica
        self.workers = workers
        self.whole_topic = whole_topic
        self.key_prefixes = key_prefixes
        self.is_broadcast = is_broadcast
        # who owns a key: bytewax's routing by default; a market process's owner of the
        # key's underlying (MarketOwners.of_key) when the replicas are market processes
        self.owner = owner
        # Asked for every message of a split topic, most of them skipped: the answer
        # depends on the key only, so it is memoized per key, as route_worker is.
        self.place: Callable[[bytes | None], tuple[bool, bool]] = functools.lru_cache(
            maxsize=_PLACED_MAX)(self._place)

    def _place(self, key: bytes | None) -> tuple[bool, bool]:
        """``(owned, shared)`` for a message under ``key`` (a null key belongs to 0);
        called as ``place``."""
        if self.owner is not None:
            owned = self.owner(key) == self.replica
        else:
            owned = (0 if key is None else route_worker(key, self.workers)) == self.replica
        shared = self.whole_topic or (
            bool(self.key_prefixes) and key is not None and key.startswith(self.key_prefixes))
        return owned, shared

    def admit(self, rec: Any, owned: bool, shared: bool, *, dead: bool = False) -> str:
        """``keep``, ``skip`` (another replica emits it) or ``not_broadcast``."""
        return _admit(self.is_broadcast, rec, owned, shared, dead=dead)


def _admit(is_broadcast: Callable[[Any], bool] | None, rec: Any, owned: bool, shared: bool,
           *, dead: bool) -> str:
    """A broadcast record under a shared key is kept by every reader; anything else (dead
    letters included) only by its key's owner."""
    if not dead and is_broadcast is not None and is_broadcast(rec):
        return "keep" if shared else "not_broadcast" if owned else "skip"
    return "keep" if owned else "skip"


class MarketOwners:
    """Which of ``processes`` market processes owns what (docs/scaling.md, "The market tier").

    A market process owns whole *underlyings*: every instrument on one (spot, perpetual,
    future or option, on every venue), its market data, its positions and the fills and
    snapshots that move them, so all the prices of an instrument meet its positions in
    one process and nothing is exchanged between market processes. ``owners`` names the
    process of an underlying (balance the load by hand: a few underlyings usually carry
    most records); any other goes to ``crc32(name) % processes``. An instrument the
    registry does not declare counts as the underlying before its first ``-``
    (``SOL-USDT`` -> ``SOL``); a collateral asset as itself; a venue's own features (key
    ``<venue>``) as the venue's name.

    >>> owners = MarketOwners(0, 2, {"BTC": 0, "ETH": 1}, {"BTC-27DEC26-70000-C": "BTC"}.get)
    >>> [owners.of_key(k) for k in ("okx/BTC-PERP", b"deribit/BTC-27DEC26-70000-C",
    ...                             "okx/ETH-USDT")]
    [0, 0, 1]
    >>> owners.local("okx/ETH-PERP"), owners.owns("i:BTC-PERP"), owners.owns("a:ETH")
    (False, True, False)
    """

    def __init__(self, index: int, processes: int, owners: Mapping[str, int],
                 underlying_of: Callable[[str], str | None]) -> None:
        self.index = index
        self.processes = processes
        self.owners = dict(owners)
        self.underlying_of = underlying_of
        # asked per market message (before decoding) and per record: memoized
        self.of_key: Callable[[str | bytes | None], int] = functools.lru_cache(
            maxsize=_PLACED_MAX)(self._of_key)
        self.of_instrument: Callable[[str], int] = functools.lru_cache(
            maxsize=_PLACED_MAX)(self._of_instrument)

    def of_underlying(self, name: str) -> int:
        """The process owning underlying (or collateral asset) ``name``."""
        hit = self.owners.get(name)
        return hit if hit is not None else zlib.crc32(name.encode()) % self.processes

    def _of_instrument(self, name: str) -> int:
        """The process owning instrument ``name`` (its underlying's); called as
        ``of_instrument``."""
        return self.of_underlying(self.underlying_of(name) or name.split("-", 1)[0])

    def _of_key(self, key: str | bytes | None) -> int:
        """The process owning a Kafka or state key: ``<venue>/<instrument>`` (market data,
        fills, snapshots, features, feed selection) or ``<venue>`` (a venue's features);
        no key belongs to process 0."""
        if key is None:
            return 0
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        venue, slash, instrument = text.partition("/")
        return self.of_instrument(instrument) if slash else self.of_underlying(venue)

    def local(self, key: str) -> bool:
        """Does state key ``key`` live in this process? (a guard step's ``local_keys``)"""
        return self.of_key(key) == self.index

    def owns(self, name: str) -> bool:
        """Does this process hold ``i:<instrument>`` or ``a:<asset>`` in exposure valuation
        (:class:`~riskguard.operators.exposure.ShardPlace`)?"""
        kind, _, rest = name.partition(":")
        where = self.of_instrument(rest) if kind == "i" else self.of_underlying(rest)
        return where == self.index

    def keeps(self, rec: Any) -> bool:
        """Of what every market process reads whole (heartbeats, fills, snapshots,
        balances and orders): does this one keep ``rec``? Heartbeats: every process; a
        trading record: the owner of its instrument (a balance: of its asset); a dead
        letter: the process its source partition falls to, so it is written once.

        >>> owners = MarketOwners(1, 2, {"BTC": 0, "ETH": 1}, lambda name: None)
        >>> fill = Fill(id="f", venue="okx", counterparty="okx", instrument="ETH-PERP",
        ...             side="buy", qty=1.0, price=1.0, ts=1)
        >>> dead = DeadLetter(topic="t", partition=2, ts=1, reason="malformed")
        >>> owners.keeps(fill), owners.keeps(dead)
        (True, False)
        """
        t = type(rec)
        if t is Fill or t is PositionSnapshot or t is OpenOrders:
            return self.of_instrument(rec.instrument) == self.index
        if t is Balance:
            return self.of_underlying(rec.asset) == self.index
        if t is DeadLetter:
            return max(rec.partition, 0) % self.processes == self.index
        return True
