"""Admitting Kafka messages one partition at a time, for an engine whose own Kafka
source hands over raw messages (Flink): decode with the topic's record types, check
event time against the partition's watermark, stamp receive time, name the input: what
the bytewax source does per message, as a logic class keyed by ``topic/partition``, so
the watermark travels in the engine's state.

>>> from riskguard.schemas import Codec, Trade, encode
>>> t = Trade(id="t1", venue="v", instrument="BTC-USDT", ts=10_000_000_000, price=1.0, qty=1.0,
...           side="buy")
>>> admit = PartitionAdmission(Codec(), EventTimePolicy(max_lateness_ns=1))
>>> [type(r).__name__ for r in admit.on_event(("m", 0, 7, encode(t)))]
['Trade']
>>> late = encode(Trade(id="t2", venue="v", instrument="BTC-USDT", ts=1, price=1.0, qty=1.0,
...                     side="buy"))
>>> [r.reason for r in admit.on_event(("m", 0, 8, late))], admit.snapshot().max_ts
(['late'], 10000000000)

Every message is counted as read (``riskguard_events_in_total``), a dead letter too:

>>> from riskguard.operators.core.metrics import events_in_total
>>> before = events_in_total()
>>> [r.reason for r in admit.on_event(("m", 0, 9, b"garbage"))], events_in_total() - before
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
from riskguard.schemas.time_policy import EventTimePolicy

Message = tuple[str, int, int, bytes | None]
"""A Kafka message as an engine's source gives it: topic, partition, offset, value."""


@persisted("riskguard.kafka.admission")
@dataclass
class AdmissionState:
    """A partition's watermark: the highest event time admitted (None: no time policy)."""

    version: int = 1
    max_ts: int | None = None


class PartitionAdmission:
    """One partition's messages into records or dead letters (never an exception), each
    counted in ``riskguard_events_in_total`` by topic, as the Kafka source counts what it
    reads."""

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
        self.counted: dict[str, Any] = {}  # each topic's events-in counter

    def on_event(self, msg: Message) -> list[Any]:
        topic, partition, offset, value = msg
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
            if type(rec) is not DeadLetter:
                if self.watermark is not None and topic not in self.untimed:
                    rec = self.watermark.check(rec, value, topic, partition, offset)
                if type(rec) is not DeadLetter:
                    if self.stamp and getattr(rec, "recv_ts", 0) is None:
                        force_setattr(rec, "recv_ts", self.clock())  # type: ignore[misc]
                    if type(rec) in SOURCED_TYPES:
                        rec.__dict__["source"] = (topic, partition, offset)
        if type(rec) is DeadLetter:
            DEAD_LETTERS.labels(topic, rec.reason).inc()
        return [rec]

    def snapshot(self) -> AdmissionState:
        return AdmissionState(max_ts=None if self.watermark is None else self.watermark.max_ts)
