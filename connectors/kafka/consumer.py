"""What a Kafka source's partitions share: the consumer one worker's partitions read
through, the event-time alignment across them and consumer lag; and the two ways
anything in riskguard looks at a topic: its partitions (:func:`list_partitions`) and its
messages from the beginning to the end (:func:`scan_topic`). Neither creates a topic."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from riskguard.connectors.settings import KafkaSettings
from riskguard.schemas.audit import DeadLetter

from riskguard.errors import BrokerError

STARTS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}
IDLE_BACKOFF = timedelta(milliseconds=2)
# an idle bundle waits this long in librdkafka for a message instead of polling
IDLE_WAIT_S = 0.005
# an idle partition with messages left before its end: how often to ask the broker again,
# and after how many idle periods to end it anyway
RECHECK_NS = 250_000_000
IDLE_PATIENCE = 5


class _Stamp(msgspec.Struct):
    """Just a record's event time: where a replica that skips others' messages stands."""

    ts: int = -1


_read_stamp = msgspec.json.Decoder(_Stamp).decode


NO_TS = -(1 << 63)  # below any alignment limit: such records never wait


def event_times(recs: list[Any]) -> list[int]:
    """Each record's ``ts`` for alignment; ``NO_TS`` for a dead letter or a record
    without one.

    >>> from riskguard.schemas import DeadLetter, IndexPrice
    >>> ix = IndexPrice(id="i", venue="index", instrument="BTC-USD", ts=7, price=1.0)
    >>> dl = DeadLetter(topic="t", ts=9, reason="malformed")
    >>> event_times([ix, dl]) == [7, NO_TS]
    True
    """
    dead = DeadLetter
    return [NO_TS if type(r) is dead or (t := getattr(r, "ts", None)) is None else t
            for r in recs]


def stamp_of(value: bytes | None) -> int:
    """The ``ts`` of an undecoded message value, or -1 if it has none.

    >>> stamp_of(b'{"type": "trade", "ts": 42, "price": 1.0}'), stamp_of(b"not json")
    (42, -1)
    """
    try:
        return _read_stamp(value).ts if value else -1
    except Exception:  # any bytes at all (nesting past the parser's recursion too)
        return -1


def partitions_of(settings: KafkaSettings, topics: Sequence[str],
                  timeout_s: float = 10.0) -> dict[str, list[int]]:
    """Each of ``topics``' partition ids, from one look at the cluster's whole topic
    list, which never creates a topic; ``BrokerError`` if one is missing or unusable,
    or the cluster cannot be reached."""
    admin = AdminClient(settings.client_config())
    try:
        md = admin.list_topics(timeout=timeout_s)
    except Exception as err:
        msg = (f"cannot reach Kafka at {settings.bootstrap} to find topic "
               f"{', '.join(map(repr, topics))}: {err}")
        raise BrokerError(msg) from None
    out: dict[str, list[int]] = {}
    for topic in topics:
        tmd = md.topics.get(topic)
        if tmd is None:
            msg = f"topic {topic!r} does not exist at {settings.bootstrap}"
            raise BrokerError(msg)
        if tmd.error is not None or not tmd.partitions:
            why = tmd.error.str() if tmd.error is not None else "no partitions"
            msg = f"topic {topic!r} is not usable: {why}"
            raise BrokerError(msg)
        out[topic] = sorted(tmd.partitions)
    return out


def list_partitions(settings: KafkaSettings, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of an existing ``topic`` (:func:`partitions_of` one topic)."""
    return partitions_of(settings, [topic], timeout_s)[topic]


def reading_consumer(settings: KafkaSettings, purpose: str) -> Consumer:
    """A consumer that reads what it is assigned through, in no group's name (a group id
    of its own, nothing committed), telling each partition's end."""
    return Consumer({
        **settings.client_config(),
        "group.id": f"riskguard-{purpose}-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
    })


def scan_topic(settings: KafkaSettings, topic: str, *, idle_s: float = 0.5,
               stall_s: float = 30.0) -> Iterator[tuple[int, int, bytes]]:
    """Every message of ``topic`` from the beginning as ``(partition, offset, value)``,
    each partition in order, until all partitions are read to their end and the topic
    was quiet for ``idle_s``; ``BrokerError`` if it is missing, unreadable, or no
    message or end of partition arrives for ``stall_s``."""
    parts = list_partitions(settings, topic, timeout_s=min(10.0, stall_s))
    consumer = reading_consumer(settings, "scan")
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        done: set[int] = set()  # partitions read to their (reported) end
        progress = quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if len(done) == len(parts) and now - quiet_since >= idle_s:
                return
            if now - progress > stall_s:
                msg = f"reading {topic} made no progress for {stall_s:g} s"
                raise BrokerError(msg)
            m = consumer.poll(0.05)
            if m is None:
                continue
            progress = time.monotonic()
            p = m.partition() or 0
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(p)
                    continue
                msg = f"reading {topic}[{p}]: {err.str()}"
                raise BrokerError(msg)
            quiet_since = progress
            done.discard(p)
            yield p, m.offset() or 0, m.value() or b""
    finally:
        consumer.close()


class EventTimeAlignment:
    """Bounds event-time skew between the source partitions of one process (Flink's
    watermark alignment): a partition holds its records back while they are more than
    ``max_skew_ns`` ahead of the slowest live partition, so event-time windows downstream
    do not see a slower partition's records as late.

    A partition with nothing buffered stops holding the others back only once caught up
    (librdkafka's end-of-partition event, no data since). Time alone never makes it idle,
    since on a loaded machine a fetch can take seconds and results would depend on load;
    only a partition that delivers neither data nor its end for ``stall_ns``, or never
    starts within ``grace_ns``, is passed by. A key-split partition that skips others'
    messages stands at the event time of the last one it skipped.
    """

    def __init__(self, max_skew_ns: int, *, stall_ns: int = 10_000_000_000,
                 grace_ns: int = 10_000_000_000) -> None:
        self.max_skew_ns = max_skew_ns
        self.stall_ns = stall_ns
        self.grace_ns = grace_ns
        # part -> [next ts to emit or None, last emitted ts, started_at, last data at, at end]
        self.parts: dict[str, list[Any]] = {}
        # where each partition stands, lowest first: (ts, until when it counts, version,
        # part); stale entries are dropped lazily, so a look costs O(log P)
        self._stands: list[tuple[int, int, int, str]] = []
        self._version: dict[str, int] = {}  # each entry's own number, never reused
        self._versions = itertools.count()

    def register(self, part: str, now: int, watermark: int) -> None:
        self.parts[part] = [None, watermark, now, -1, False]
        self._restand(part)

    def frontier(self, part: str, now: int) -> int:
        """The lowest event time the other live partitions stand at."""
        stands, version = self._stands, self._version
        own = None
        while stands:
            _ts, until, v, name = stands[0]
            if version.get(name) != v or until <= now:
                heapq.heappop(stands)  # replaced since, or no longer holding anyone back
            elif name == part:
                own = heapq.heappop(stands)
            else:
                break
        low = stands[0][0] if stands else 2**63
        if own is not None:
            heapq.heappush(stands, own)
        return low

    def update(self, part: str, head: int | None, last: int, got_data: bool, now: int,
               at_end: bool = False) -> None:
        entry = self.parts[part]
        entry[0], entry[1] = head, last
        if got_data:
            entry[3] = now
        entry[4] = at_end
        self._restand(part)

    def remove(self, part: str) -> None:
        self.parts.pop(part, None)
        self._version.pop(part, None)

    def _restand(self, part: str) -> None:
        """Where ``part`` stands now, and until when that holds the others back."""
        v = self._version[part] = next(self._versions)
        head, last, started, seen, at_end = self.parts[part]
        if head is not None:
            stand = (head, 2**63, v, part)
        elif at_end:
            return  # caught up: nothing more to wait for
        else:
            until = seen + self.stall_ns if seen >= 0 else started + self.grace_ns
            stand = (last, until, v, part)
        if len(self._stands) > 4 * len(self.parts) + 64:  # replaced entries pile up
            self._stands = [s for s in self._stands if self._version.get(s[3]) == s[2]]
            heapq.heapify(self._stands)
        heapq.heappush(self._stands, stand)


MAX_BUFFERED_BYTES = 64 << 20
"""Value bytes one partition's list may hold before its partition is paused."""


class SharedConsumer:
    """One Kafka consumer for all of a source's partitions in this process (one fetch
    loop, not one per partition): partitions are added with ``incremental_assign`` and
    each ``consume`` is split into per-partition lists.

    A read takes its whole list. A list that reaches :meth:`max_buffered` messages or
    :data:`MAX_BUFFERED_BYTES` of values (a reader held back by alignment through a long
    backlog) pauses its partition until its reader has taken it down to half; librdkafka
    then fetches on from the last message handed over, so nothing is lost or read twice
    and memory stays bounded.

    With ``fair_reads`` a read takes at most ``batch_size`` of its partition, so a burst
    on a busy topic does not make a record on a quiet one (a fill) wait behind it; an
    empty list consumes more only while the lists of readers that drain are below
    ``batch_size`` each. A reader held back by alignment does not count, so alignment
    cannot starve the partition it waits for. The cost is throughput on a backlog.
    """

    def __init__(self, config: dict[str, Any], batch_size: int, *,
                 fair_reads: bool = False) -> None:
        self._config = config
        self._consumer: Any = None
        self._pending: dict[tuple[str, int], list[Any]] = {}
        self._lock = threading.Lock()
        self._batch_size = batch_size
        self._fair = fair_reads
        self._held: set[tuple[str, int]] = set()  # readers held back by alignment
        self._paused: set[tuple[str, int]] = set()  # partitions past max_buffered
        self._bytes: dict[tuple[str, int], int] = {}  # the value bytes each list holds

    @property
    def max_buffered(self) -> int:
        """Messages one partition's list may hold before its partition is paused."""
        return max(16 * self._batch_size, 16_384)

    def add(self, topic: str, idx: int, offset: int) -> int:
        """Read ``topic[idx]`` from ``offset``; returns where it starts: the end
        (``OFFSET_END``) as the offset it stands at now, so a snapshot taken before the
        first message resumes there, not at a later end (``OFFSET_END`` still if the
        broker did not say)."""
        with self._lock:
            if self._consumer is None:
                self._consumer = Consumer(self._config)
            if offset == OFFSET_END:
                try:
                    _lo, hi = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, idx), timeout=5.0, cached=False)
                    offset = int(hi) if hi is not None and hi >= 0 else offset
                except Exception:  # unanswered: resolved at the first snapshot
                    pass
            self._pending[(topic, idx)] = []
            self._consumer.incremental_assign([TopicPartition(topic, idx, offset)])
            return offset

    def take(self, topic: str, idx: int) -> list[Any]:
        """The messages (or error events) pending for one partition, oldest first: all
        of them, or with ``fair_reads`` up to ``batch_size``."""
        key = (topic, idx)
        with self._lock:
            pending = self._pending[key]
            if not pending and (not self._fair or self._room() > 0):
                self._fill()
                pending = self._pending[key]
            n = self._batch_size
            if not self._fair or len(pending) <= n:
                self._pending[key] = []
                self._bytes[key] = 0
            else:
                self._pending[key] = pending[n:]
                pending = pending[:n]
                self._bytes[key] = sum(map(len, self._pending[key]))
            if key in self._paused and len(self._pending[key]) <= self.max_buffered // 2 \
                    and self._bytes[key] <= MAX_BUFFERED_BYTES // 2:
                self._paused.discard(key)
                self._consumer.resume([TopicPartition(topic, idx)])
            return pending

    def wait(self, timeout_s: float) -> None:
        """Block until a message is ready or ``timeout_s`` passed (an idle reader sleeps in
        librdkafka instead of polling); the message is kept for its partition's next read."""
        with self._lock:
            consumer = self._consumer
        if consumer is None:
            return
        msgs = consumer.consume(1, timeout_s)  # one: returns as soon as a message is ready
        if msgs:
            with self._lock:
                self._distribute(msgs)

    def hold(self, topic: str, idx: int, held: bool) -> None:
        """Mark a partition's reader as held back by event-time alignment (or not); only
        ``fair_reads`` uses it."""
        if not self._fair:
            return
        with self._lock:
            if held:
                self._held.add((topic, idx))
            else:
                self._held.discard((topic, idx))

    def _room(self) -> int:
        """How many more messages the lists of readers that drain may take."""
        held = self._held
        return self._batch_size * len(self._pending) - sum(
            len(lst) for k, lst in self._pending.items() if k not in held)

    def _fill(self) -> None:
        # timeout 0: a positive one makes consume() wait it out when fewer are ready
        msgs = self._consumer.consume(self._batch_size * max(1, len(self._pending)), 0)
        self._distribute(msgs)

    def _distribute(self, msgs: list[Any]) -> None:
        """Append consumed messages to their partitions' lists (under the lock)."""
        pending, cap, nbytes = self._pending, self.max_buffered, self._bytes
        full: set[tuple[str, int]] = set()
        if len(pending) == 1:
            for key, out in pending.items():
                out.extend(msgs)
                held = nbytes[key] = nbytes.get(key, 0) + sum(map(len, msgs))
                if len(out) >= cap or held >= MAX_BUFFERED_BYTES:
                    full.add(key)
        else:
            for m in msgs:
                key = (m.topic() or "", m.partition() or 0)
                target = pending.get(key)
                if target is None:
                    # a client-level error has no partition: every reader must see it
                    for lst in pending.values():
                        lst.append(m)
                else:
                    target.append(m)
                    held = nbytes[key] = nbytes.get(key, 0) + len(m)
                    if len(target) >= cap or held >= MAX_BUFFERED_BYTES:
                        full.add(key)
        full -= self._paused
        if full:
            self._paused |= full
            self._consumer.pause([TopicPartition(t, i) for t, i in full])

    def high_watermark(self, topic: str, idx: int) -> int | None:
        """The partition's high watermark from the last fetch (no broker round trip)."""
        with self._lock:
            if self._consumer is None:
                return None
            try:
                _lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, idx), cached=True)
            except Exception:
                return None
            return int(hi) if hi is not None and hi >= 0 else None

    @property
    def bootstrap(self) -> str:
        """The cluster this consumer reads (``bootstrap.servers``)."""
        return str(self._config.get("bootstrap.servers", ""))

    def end_offsets(self, topic: str, idx: int, timeout_s: float = 5.0) -> tuple[int, int] | None:
        """The partition's low and high watermarks, asked of the broker (None if it did
        not answer within ``timeout_s``)."""
        with self._lock:
            if self._consumer is None:
                return None
            try:
                lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, idx), timeout=timeout_s, cached=False)
            except Exception:
                return None
            return int(lo), int(hi)

    def remove(self, topic: str, idx: int) -> None:
        with self._lock:
            self._pending.pop((topic, idx), None)
            self._bytes.pop((topic, idx), None)
            self._held.discard((topic, idx))
            self._paused.discard((topic, idx))
            if self._consumer is None:
                return
            if self._pending:
                self._consumer.incremental_unassign([TopicPartition(topic, idx)])
            else:
                self._consumer.close()
                self._consumer = None


LAG_EVERY_NS = 5_000_000_000


def consumer_lag(offset: int, lo: int | None, hi: int | None) -> int | None:
    """Messages left to read in a partition: its high watermark ``hi`` minus ``offset``,
    the next offset to read; 0 when caught up; None when a watermark it needs is unknown.

    A negative ``offset`` is a sentinel, never an offset: with nothing read yet the lag is
    all the partition holds (``hi - lo``), and 0 for a partition read from its end. Never
    below 0: the dev broker (Tansu 0.6) reports a high watermark one past the first
    offset of the last produce batch, behind what a caught-up reader has read.

    >>> consumer_lag(25, 0, 25), consumer_lag(20, 0, 25), consumer_lag(25, 0, 23)
    (0, 5, 0)
    >>> consumer_lag(OFFSET_BEGINNING, 0, 0), consumer_lag(OFFSET_BEGINNING, 3, 10)
    (0, 7)
    >>> consumer_lag(OFFSET_END, 3, 10), consumer_lag(OFFSET_BEGINNING, None, 10)
    (0, None)
    """
    if hi is None or hi < 0:
        return None
    if offset >= 0:
        return max(hi - offset, 0)
    if offset == OFFSET_END:
        return 0
    if lo is None or lo < 0:
        return None
    return max(hi - lo, 0)
