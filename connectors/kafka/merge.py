"""Many Kafka partitions merged into one stream in event-time order, for an engine
whose own Kafka source hands over raw messages in whatever order it read them (Flink).

Each message is admitted by its partition's :class:`PartitionAdmission` (decode,
lateness, receive time). A record then waits until no partition can still bring an
earlier one: every other partition has a record at or after it waiting, has read
past it, or is known to be at its end (its next offset has reached the end offset
the broker reports, asked after its last message). The merged stream is then in
event-time order however the source interleaved partitions, so a run gives the same
output every time, as riskguard's bytewax source does with event-time alignment
(:class:`~riskguard.connectors.kafka.consumer.EventTimeAlignment`, whose rules for a
partition that stalls apply here too).

Dead letters and records of untimed topics (acks) go at once. After each pass that
leaves nothing waiting, a :class:`Frontier` says how far the output has got, for an
engine to turn into its watermark.

>>> from riskguard.schemas import Codec, Trade, encode
>>> def trade(i, ts): return encode(Trade(id=i, venue="v", instrument="BTC-USDT", ts=ts,
...                                     price=1.0, qty=1.0, side="buy"))
>>> ends = {("m", 0): 2, ("m", 1): 1}  # partition 1 has a message to come
>>> def caught_up(asked): return {k: at >= ends[k] for k, at in asked.items()}
>>> ticks = iter(range(0, 10**12, 100_000_000))  # 100 ms a call
>>> merge = PartitionMerge(lambda _: PartitionAdmission(Codec()), caught_up,
...                        [("m", 0), ("m", 1)], clock=ticks.__next__)
>>> merge.on_batch([("m", 0, 0, trade("a", 20)), ("m", 0, 1, trade("b", 30))])
[]
>>> [getattr(r, "id", r) for r in merge.on_batch([("m", 1, 0, trade("c", 25))])]
['a', 'c', 'b', Frontier(ts=30)]
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable
from typing import Any

from riskguard.connectors.kafka.admit import Message, PartitionAdmission
from riskguard.schemas.audit import DeadLetter

Part = tuple[str, int]
AtEnd = Callable[[dict[Part, int]], dict[Part, bool]]
"""For the partitions asked about, each with the next offset to read (-1: none read yet,
from the start): True if it holds nothing from there on (caught up), False if it holds
more; a partition the broker did not answer for is left out."""


class Frontier:
    """Everything up to ``ts`` (ns) has been emitted; nothing later is waiting."""

    __slots__ = ("ts",)

    def __init__(self, ts: int) -> None:
        self.ts = ts

    def __repr__(self) -> str:
        return f"Frontier(ts={self.ts})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Frontier and other.ts == self.ts

    def __hash__(self) -> int:
        return hash(self.ts)


class _Partition:
    __slots__ = ("admit", "answered_at", "asked_at", "caught_up", "heard_at", "next_offset",
                 "queue", "stand", "started_at")

    def __init__(self, admit: PartitionAdmission, now: int) -> None:
        self.admit = admit
        self.queue: list[tuple[int, int, Any]] = []  # heap of (ts, arrival, record)
        self.next_offset = -1  # none read yet
        self.stand = -1  # the latest event time it has emitted or passed
        self.caught_up = False  # what the last probe found, when it asked and answered
        self.asked_at = -1
        self.answered_at = -1
        self.heard_at = -1  # when its last message came (processing time)
        self.started_at = now

    def at_end(self) -> bool:
        """Known to hold nothing unread: caught up when asked, since its last message."""
        return not self.queue and self.caught_up and self.asked_at >= max(self.heard_at, 0)


class PartitionMerge:
    """Messages of many partitions into records or dead letters in event-time order.

    ``admission(resume)`` builds one partition's admission; ``at_end`` asks the broker
    which partitions are caught up; ``partitions`` are those to wait for from the start
    (a message of another adds it). ``untimed`` topics' records go at once and hold
    nothing back. A partition behind the others is waited for however long it takes (a
    backlog is read in the order the source's fetches come, which can starve one
    partition for seconds); only one that neither sends a message nor gets an answer
    from the broker for ``stall_ns`` is passed over, so one bad partition cannot stop
    the guard.
    ``probe_ns``: how often the broker is asked while something waits.
    """

    def __init__(self, admission: Callable[[Any], PartitionAdmission],
                 at_end: AtEnd, partitions: Iterable[Part], *,
                 clock: Callable[[], int], untimed: frozenset[str] = frozenset(),
                 stall_ns: int = 10_000_000_000, probe_ns: int = 50_000_000,
                 resume: dict[Part, Any] | None = None) -> None:
        self.admission = admission
        self.at_end = at_end
        self.clock = clock
        self.untimed = untimed
        self.stall_ns = stall_ns
        self.probe_ns = probe_ns
        self.parts: dict[Part, _Partition] = {}
        self.at_once: dict[Part, PartitionAdmission] = {}  # untimed topics' partitions
        self.arrivals = 0
        self.emitted_ts = -1
        self.unmarked = False  # emitted records no Frontier has followed yet
        self.deadline_ns: int | None = None  # when to look again while records wait
        now = clock()
        resume = resume or {}
        for part in sorted(set(partitions) | set(resume)):
            if part[0] in untimed:
                continue
            p = self._add(part, now, resume.get(part))
            if part in resume:
                _wm, p.next_offset, p.stand, queue = resume[part]
                for ts, rec in queue:
                    self.arrivals += 1
                    p.queue.append((ts, self.arrivals, rec))
                heapq.heapify(p.queue)
                self.emitted_ts = max(self.emitted_ts, p.stand)

    def _add(self, part: Part, now: int, resumed: Any) -> _Partition:
        p = self.parts[part] = _Partition(self.admission(None if resumed is None
                                                          else resumed[0]), now)
        return p

    def on_batch(self, msgs: list[Message]) -> list[Any]:
        now = self.clock()
        out: list[Any] = []
        for msg in msgs:
            topic, partition, offset = msg[0], msg[1], msg[2]
            p = self.parts.get((topic, partition))
            if p is None:
                if topic in self.untimed:
                    admit = self.at_once.get((topic, partition))
                    if admit is None:
                        admit = self.at_once[topic, partition] = self.admission(None)
                    out.extend(admit.on_event(msg))
                    continue
                p = self._add((topic, partition), now, None)
            p.next_offset = max(p.next_offset, offset + 1)
            p.heard_at = now
            for rec in p.admit.on_event(msg):
                ts = getattr(rec, "ts", None)
                if type(rec) is DeadLetter or type(ts) is not int:
                    out.append(rec)
                else:
                    self.arrivals += 1
                    heapq.heappush(p.queue, (ts, self.arrivals, rec))
        self._release(out, now)
        return out

    def on_event(self, msg: Message) -> list[Any]:
        return self.on_batch([msg])

    def on_deadline(self) -> list[Any]:
        out: list[Any] = []
        self._release(out, self.clock())
        return out

    def next_deadline_ns(self) -> int | None:
        return self.deadline_ns

    def _release(self, out: list[Any], now: int) -> None:
        for _ in range(2):  # once more for the partitions that pass emptied
            if not any(p.queue for p in self.parts.values()):
                break
            self._ask_ends(now)
            self._emit(out, now)
        if any(p.queue for p in self.parts.values()):
            if self.deadline_ns is None or self.deadline_ns <= now:
                self.deadline_ns = now + self.probe_ns
        else:
            self.deadline_ns = None
            if self.unmarked:
                self.unmarked = False
                out.append(Frontier(self.emitted_ts))

    def _ask_ends(self, now: int) -> None:
        """Ask which partitions with nothing waiting are caught up, at most every probe."""
        ask = {k: p.next_offset for k, p in self.parts.items() if not p.queue
               and now - p.asked_at >= self.probe_ns and not p.at_end()}
        if not ask:
            return
        found = self.at_end(ask)
        for k in ask:
            p = self.parts[k]
            p.caught_up, p.asked_at = found.get(k, False), now
            if k in found:
                p.answered_at = now

    def _stand(self, p: _Partition, now: int) -> int | None:
        """Where a partition holds the others back to (None: it does not)."""
        if p.queue:
            return p.queue[0][0]
        if p.at_end():
            return None
        if now - max(p.heard_at, p.answered_at, p.started_at) >= self.stall_ns:
            return None
        return p.stand

    def _emit(self, out: list[Any], now: int) -> None:
        parts = self.parts
        while True:
            # ties across partitions by partition, so a resumed run keeps the order
            heads = [(p.queue[0][0], k) for k, p in parts.items() if p.queue]
            if not heads:
                return
            ts, first = min(heads)
            for k, p in parts.items():
                if k != first:
                    stand = self._stand(p, now)
                    if stand is not None and stand < ts:
                        return
            p = parts[first]
            _ts, _n, rec = heapq.heappop(p.queue)
            p.stand = max(p.stand, ts)
            self.emitted_ts = max(self.emitted_ts, ts)
            self.unmarked = True
            out.append(rec)

    def snapshot(self) -> dict[Part, Any]:
        """Per partition: its admission's watermark, next offset, where it stands and the
        records still waiting (read past in Kafka, so they travel in the state)."""
        return {k: (p.admit.snapshot(), p.next_offset, p.stand,
                    [(ts, rec) for ts, _n, rec in sorted(p.queue)])
                for k, p in self.parts.items()}


class BrokerEnds:
    """:data:`AtEnd` from a reader of its own: a consumer of the brokers ``settings``
    (a :class:`~riskguard.connectors.settings.KafkaSettings`) name follows every
    partition asked about, in a thread, from the offset first asked, and notes where
    each ends (librdkafka's end-of-partition event) and how far it has seen data. Asked
    again, it answers at once from those notes: caught up if the partition's end was at
    the offset asked, or more if it has seen data there, else nothing yet. (The end
    offsets some brokers list lag their logs; what a fetch finds does not.)"""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.seen: dict[Part, int] = {}  # the offset after the last message seen
        self.ends: dict[Part, int] = {}  # the offset of the last end reached, if at it
        self.wanted: dict[Part, int] = {}  # partitions to follow, from these offsets
        self.thread: threading.Thread | None = None

    def __call__(self, asked: dict[Part, int]) -> dict[Part, bool]:
        found: dict[Part, bool] = {}
        with self.lock:
            for part, at in asked.items():
                if part not in self.wanted:
                    self.wanted[part] = at
                    continue
                end, seen = self.ends.get(part), self.seen.get(part, -1)
                if end is not None and (end <= at if at >= 0 else seen < 0):
                    found[part] = True  # its end is where the reading stands
                elif seen > max(at, 0):
                    found[part] = False  # a message is there to read
        if self.thread is None:
            self.thread = threading.Thread(target=self._follow, name="riskguard-ends",
                                           daemon=True)
            self.thread.start()
        return found

    def _follow(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError  # noqa: PLC0415
        from confluent_kafka import TopicPartition as Tp  # noqa: PLC0415

        consumer = Consumer(dict(self.settings.client_config(), **{
            "group.id": "riskguard-merge-ends", "enable.auto.commit": False,
            "enable.partition.eof": True, "fetch.wait.max.ms": 20}))
        following: set[Part] = set()
        while True:
            with self.lock:
                new = {k: v for k, v in self.wanted.items() if k not in following}
            if new:
                consumer.incremental_assign([Tp(t, i, OFFSET_BEGINNING if at < 0 else at)
                                             for (t, i), at in new.items()])
                following |= set(new)
            msgs = consumer.consume(num_messages=1000, timeout=0.05)
            if not msgs:
                continue
            with self.lock:
                for msg in msgs:
                    topic, idx, offset = msg.topic(), msg.partition(), msg.offset()
                    if topic is None or idx is None or offset is None:
                        continue  # a client-level event, not a partition's
                    err = msg.error()
                    if err is None:
                        self.seen[topic, idx] = offset + 1
                        self.ends.pop((topic, idx), None)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self.ends[topic, idx] = offset
