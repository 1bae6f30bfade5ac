"""Admitting Kafka messages one partition at a time, for an engine whose own Kafka
source hands over raw messages (Flink): decode with the topic's record types, check
event time against the partition's watermark, stamp receive time, name the input: what
the bytewax source does per message, as a logic class keyed by ``topic/partition``, so
the watermark travels in the engine's state.

>>> from riskguard.schemas import Codec, Trade, encode
>>> t = Trade(id="t1", venue="v", instrument="BTC-USDT", ts=10_000_000_000, price=1.0, qty=1.0,
...           side="buy")
>>> admit = PartitionAdmission(Codec(), EventTimePolicy(max_lateness_ns=1))
>>> admit.on_event(("m", 0, 7, encode(t)))  # a partition's first waits for the next
[]
>>> t2 = Trade(id="t2", venue="v", instrument="BTC-USDT", ts=10_000_000_001, price=1.0,
...            qty=1.0, side="buy")
>>> [r.id for r in admit.on_event(("m", 0, 8, encode(t2)))]
['t1', 't2']
>>> late = encode(Trade(id="t3", venue="v", instrument="BTC-USDT", ts=1, price=1.0, qty=1.0,
...                     side="buy"))
>>> [r.reason for r in admit.on_event(("m", 0, 9, late))], admit.snapshot().max_ts
(['late'], 10000000001)

Every message is counted as read (``riskguard_events_in_total``), a dead letter too:

>>> from riskguard.operators.core.metrics import events_in_total
>>> before = events_in_total()
>>> [r.reason for r in admit.on_event(("m", 0, 10, b"garbage"))], events_in_total() - before
(['malformed'], 1.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec.structs import force_setattr
from riskguard.operators.core.metrics import DEAD_LETTERS, EVENTS_IN
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.time_policy import (
    HELD,
    EventTimePolicy,
    Held,
    PartitionWatermark,
)

Message = tuple[str, int, int, bytes | None]
"""A Kafka message as an engine's source gives it: topic, partition, offset, value."""


HOLD_WAIT_NS = 2_000_000_000
"""How long (processing time) a record held far ahead of its partition's watermark
waits for the partition's next record before it is admitted: an engine's Kafka source
that says nothing of a partition's end (Flink's) needs a bound in time instead."""


@persisted("riskguard.kafka.admission")
@dataclass
class AdmissionState:
    """A partition's watermark: the highest event time admitted (None: no time policy);
    a record held far ahead of it (``held``: its message), since when (processing time)
    and how many dead letters came after it."""

    version: int = 1
    max_ts: int | None = None
    held: tuple[str, int, int, bytes] | None = None
    held_at: int = 0
    behind: int = 0


class PartitionAdmission:
    """One partition's messages into records or dead letters (never an exception), each
    counted in ``riskguard_events_in_total`` by topic, as the Kafka source counts what it
    reads.

    A record far ahead of the watermark is held (:mod:`~riskguard.schemas.time_policy`)
    until the partition's next record judges it, a record without a time comes, 16 dead
    letters came after it, :data:`HOLD_WAIT_NS` of processing time passed (a deadline)
    or the input ends; held, it is in the snapshot. Dead letters after it are not held
    back: the snapshot keeps the held record itself, so nothing is read twice."""

    def __init__(self, codec: Codec, policy: EventTimePolicy | None = None, *,
                 clock: Callable[[], int] | None = None, stamp_recv_ts: bool = False,
                 untimed: frozenset[str] = frozenset(),
                 resume: AdmissionState | None = None) -> None:
        self.codec = codec
        self.clock = clock
        self.stamp = stamp_recv_ts and clock is not None
        self.untimed = untimed
        start = -1 if resume is None or resume.max_ts is None else resume.max_ts
        self.watermark = None if policy is None else policy.start(start)
        self.held_at = 0
        self.where: tuple[str, int] = ("", -1)  # the partition's topic and index
        if resume is not None and resume.held is not None and self.watermark is not None:
            self._hold_again(self.watermark, resume)
        self.counted: dict[str, Any] = {}  # each topic's events-in counter

    def _hold_again(self, watermark: PartitionWatermark, resume: AdmissionState) -> None:
        assert resume.held is not None
        topic, partition, offset, raw = resume.held
        rec = self.codec.decode(topic, raw, partition=partition, offset=offset)
        watermark.held = Held(rec, raw, topic, partition, offset)
        watermark.behind, self.held_at = resume.behind, resume.held_at
        self.where = (topic, partition)

    def on_event(self, msg: Message) -> list[Any]:
        topic, partition, offset, value = msg
        self.where = (topic, partition)
        counter = self.counted.get(topic)
        if counter is None:
            counter = self.counted[topic] = EVENTS_IN.labels(topic)
        counter.inc()
        if value is None:
            rec: Any = DeadLetter(
                topic=topic, partition=partition, offset=offset,
                ts=self.clock() if self.clock else 0, reason="empty",
                expected="a message value", found="null (tombstone)")
        else:
            value = bytes(value)
            rec = self.codec.decode(topic, value, partition=partition, offset=offset)
            wm = self.watermark
            if type(rec) is not DeadLetter and wm is not None and topic not in self.untimed:
                rec = wm.check(rec, value, topic, partition, offset)
                if wm.held is not None or wm.judged is not None:
                    return self._gated(wm, rec, offset)
        return [self._admitted(rec, offset)]

    def _gated(self, wm: PartitionWatermark, rec: Any, offset: int) -> list[Any]:
        """``rec`` while a record is held far ahead, or is held now: the held one's
        verdict first, once ``rec`` judged it; a record without a time, or the 16th dead
        letter after it, lets it go."""
        out = [self._admitted(*wm.take_judged())] if wm.judged is not None else []
        if rec is HELD:
            self.held_at = self.clock() if self.clock is not None else 0
            return out
        if wm.held is not None and (type(rec) is not DeadLetter or wm.wait_behind()):
            out.extend(self.on_eof())
        out.append(self._admitted(rec, offset))
        return out

    def _admitted(self, rec: Any, offset: int) -> Any:
        """A verdict out: a record stamped and named by its input, a dead letter counted."""
        if type(rec) is DeadLetter:
            DEAD_LETTERS.labels(rec.topic, rec.reason).inc()
            return rec
        if self.stamp and getattr(rec, "recv_ts", 0) is None:
            force_setattr(rec, "recv_ts", self.clock())  # type: ignore[misc]
        if type(rec) in SOURCED_TYPES:
            rec.__dict__["source"] = (*self.where, offset)
        return rec

    def on_eof(self) -> list[Any]:
        """The input's end (or a reason to stop waiting): a held record, admitted."""
        released = None if self.watermark is None else self.watermark.release()
        return [] if released is None else [self._admitted(*released)]

    def next_deadline_ns(self) -> int | None:
        """When a held record stops waiting for the next (processing time)."""
        wm = self.watermark
        if wm is None or wm.held is None or self.clock is None:
            return None
        return self.held_at + HOLD_WAIT_NS

    def on_deadline(self) -> list[Any]:
        due = self.next_deadline_ns()
        if due is None or self.clock is None or self.clock() < due:
            return []
        return self.on_eof()

    def snapshot(self) -> AdmissionState:
        wm = self.watermark
        if wm is None:
            return AdmissionState()
        held = wm.held
        return AdmissionState(
            max_ts=wm.max_ts, held=None if held is None else (
                held.topic, held.partition, held.offset, held.raw),
            held_at=self.held_at if held is not None else 0,
            behind=wm.behind if held is not None else 0)
