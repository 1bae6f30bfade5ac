"""One Kafka partition as the source reads it (:class:`SourcePartition`).

Its messages are decoded into typed records, held to the event-time policy (a record
far ahead waits for the next one to judge it), kept or skipped by a key split
(:class:`~riskguard.connectors.kafka.key_split.KeySplit`) and held back by event-time
alignment; it finds its end of input, reports its lag, and keeps its offset and
watermark as recovery state. :class:`~riskguard.connectors.kafka.source.KafkaInput`
reads every partition through one of these."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import accumulate, compress, count, islice
from typing import Any

from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from confluent_kafka import KafkaError as _KE
from msgspec.structs import force_setattr
from riskguard.connectors.kafka.consumer import (
    IDLE_BACKOFF,
    IDLE_PATIENCE,
    LAG_EVERY_NS,
    RECHECK_NS,
    EventTimeAlignment,
    SharedConsumer,
    consumer_lag,
    event_times,
    stamp_of,
)
from riskguard.connectors.kafka.key_split import KeySplit
from riskguard.connectors.kafka.sink import flow_failing
from riskguard.operators.core.clock import Clock
from riskguard.operators.core.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_IN,
)
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.signals import DetectProgress
from riskguard.schemas.time_policy import HELD, EventTimePolicy

from riskguard.errors import BrokerError

# logged under the package's name, which log configs select
_log = logging.getLogger("riskguard.connectors.kafka")

# per cluster (bootstrap servers) and clock: since when no end-of-input question was
# answered. Shared by every partition of the process, so a broker that is gone stops a
# bounded run after one patience, not one timeout per partition.
END_UNANSWERED: dict[tuple[str, Clock], int] = {}

Placed = tuple[bool, bool, bytes | None, bytes | None]
"""Where a message's key places it (owned, shared), its key and its value."""


class SourcePartition(StatefulSourcePartition[Any, tuple[int, int]]):
    """One Kafka partition of the source, read through the ``shared`` consumer; its
    recovery state is ``(offset, watermark)``."""

    def __init__(
        self, shared: SharedConsumer, topic: str, idx: int, offset: int,
        codec: Codec, batch_size: int, idle_eof_ns: int | None,
        policy: EventTimePolicy | None, clock: Clock, watermark: int = -1,
        stamp_recv_ts: bool = False, align: EventTimeAlignment | None = None,
        name: str | None = None, split: KeySplit | None = None, writers: int = 0,
        writer_wait_ns: int = 0, counts_dead: Callable[[DeadLetter], bool] | None = None,
    ) -> None:
        self._counts_dead = counts_dead
        self._stamp = stamp_recv_ts
        # a progress partition (``writers`` > 0, see Alignment): at its end it is not caught up
        self._writers = writers
        self._writer_wait_ns = writer_wait_ns
        self._finished: set[str] = set()
        # resumed at an offset, it had read: a writer that finished before the snapshot
        # writes no more, so idleness (after the writer wait) ends the partition
        self._got_any = offset >= 0
        self._split = split
        self.shared = shared  # the consumer it reads through (a bundle may wait in it)
        self._topic = topic
        self._idx = idx
        self._offset = shared.add(topic, idx, offset)
        self._decode = codec.decode
        self._batch_size = batch_size
        self._idle_eof_ns = idle_eof_ns
        self._policy = policy.start(watermark) if policy is not None else None
        # a record held far ahead (the policy's ``held``): its key's placement, and the
        # dead letters read after it, emitted after its verdict
        self._held_at: Placed = (False, False, None, None)
        self._behind: list[tuple[DeadLetter, int, Placed]] = []
        self._clock = clock
        self._last_msg_ns = clock()
        self._at_end = False  # reached the partition's end with no data since
        self._idle_since: int | None = None  # when an idle end first found messages left
        self._recheck_at = 0  # and when to ask the broker again
        self._awake: datetime | None = None
        self._in = EVENTS_IN.labels(topic)
        self._lag = CONSUMER_LAG.labels(topic, str(idx))
        # the first look waits a period: by then most partitions are at their end or
        # have read, and need no round trip to the broker for their watermarks
        self._lag_due = self._last_msg_ns + LAG_EVERY_NS
        self._align = align
        self._name = name or f"{idx}-{topic}"
        # records read but held back by alignment: recs[head:], with their offsets and
        # event times (NO_TS for those that never wait: dead letters, no ts)
        self._recs: list[Any] = []
        self._offs: list[int] = []
        self._tss: list[int] = []
        self._peak: list[int] = []  # running maximum of _tss
        self._head = 0
        self._emitted_ts = watermark
        # event time of the last message a key split skipped (another process's key) with
        # none of its own after it: where the partition stands for alignment
        self._skipped_ts = watermark
        self._skipped_any = False
        if align is not None:
            align.register(self._name, clock(), watermark)

    def _unread_left(self, idle_eof: int, now: int) -> bool:
        """Idle for ``idle_eof``: whether messages are still left before the partition's
        end (a stalled fetch, not the end of input); asked at most every ``RECHECK_NS``.
        After ``IDLE_PATIENCE`` idle periods with messages left (a transactional topic's
        last offset is a marker no read returns) it ends anyway, with a warning. A broker
        that leaves the question unanswered that long raises :class:`BrokerError`: a
        bounded run never ends as if its input were complete."""
        if self._idle_since is None:
            self._idle_since = now
        ends = self.shared.end_offsets(self._topic, self._idx)
        bootstrap = self.shared.bootstrap
        if ends is None:
            since = END_UNANSWERED.setdefault((bootstrap, self._clock), now)
            if now - since >= IDLE_PATIENCE * idle_eof:
                flow_failing(f"{self._topic}[{self._idx}]")
                raise BrokerError(
                    f"cannot confirm the end of input on topic {self._topic!r} partition "
                    f"{self._idx}: the broker at {bootstrap} has not answered for "
                    f"{(now - since) / 1e9:.0f} s")
            self._recheck_at = now + min(idle_eof, RECHECK_NS)
            return True
        END_UNANSWERED.pop((bootstrap, self._clock), None)
        lo, hi = ends
        pos = lo if self._offset == OFFSET_BEGINNING else self._offset
        if pos < 0 or hi <= pos:
            return False
        if now - self._idle_since >= IDLE_PATIENCE * idle_eof:
            _log.warning("topic %r partition %d ends idle with %d messages unread "
                         "(offset %d, high watermark %d)", self._topic, self._idx, hi - pos,
                         pos, hi)
            return False
        self._recheck_at = now + min(idle_eof, RECHECK_NS)
        return True

    def _fetch(self) -> tuple[list[Any], list[int]] | None:
        """Decode the pending Kafka messages: ``(records, offsets)``; None when none came.
        A :class:`KeySplit` skips other processes' keys undecoded."""
        if self._writers and len(self._finished) >= self._writers:
            return self._end_releasing()  # every writer's input ended, all it wrote read
        msgs = self.shared.take(self._topic, self._idx)
        if not msgs:
            try:
                self._idle()
            except StopIteration:
                return self._end_releasing()
            return None
        split, record, gate = self._split, self._record, self._policy
        received = self._clock() if self._stamp else 0
        # the future-skew check's processing time: read once per fetch, not per record
        now = None if gate is None else gate.policy.now()
        out: list[Any] = []
        offsets: list[int] = []
        owned = shared = False
        key = None
        last_off = -1
        at_end = was_at_end = self._at_end
        skipped: Any = None  # the last message skipped after the last one taken
        for m in msgs:
            err = m.error()
            if err is not None:
                at_end = self._end_or_raise(err)
                continue
            off = last_off = m.offset() or 0
            at_end = False
            if split is not None:
                key = m.key()
                owned, shared = split.place(key)
                if not (owned or shared):
                    skipped = m
                    continue
            value = m.value()
            rec = self._tombstone(off) if value is None else record(value, off, received, now)
            taken = (self._gated(rec, off, (owned, shared, key, value), received, out, offsets)
                     if gate is not None and (gate.held is not None or gate.judged is not None)
                     else self._keep(rec, off, (owned, shared, key, value), out, offsets))
            skipped = None if taken else m
        if at_end and gate is not None and gate.held is not None:
            # the partition's end: no next record can judge the held one
            self._emit_held(gate.release(), received, out, offsets)
        self._fetched(len(out), last_off, at_end=at_end, was_at_end=was_at_end,
                      skipped=skipped)
        return out, offsets

    def _keep(self, rec: Any, off: int, placed: Placed, out: list[Any],
              offsets: list[int]) -> bool:
        """Emit ``rec`` unless its key split says another process does: whether it was
        taken (a dead letter counted)."""
        split = self._split
        if split is not None:
            owned, shared, key, value = placed
            verdict = split.admit(rec, owned, shared, dead=type(rec) is DeadLetter)
            if verdict == "skip":
                return False
            if verdict == "not_broadcast":
                rec = self._not_broadcast(rec, key, value, off)
        if type(rec) is DeadLetter and (self._counts_dead is None or self._counts_dead(rec)):
            DEAD_LETTERS.labels(self._topic, rec.reason).inc()
        out.append(rec)
        offsets.append(off)
        return True

    def _gated(self, rec: Any, off: int, placed: Placed, received: int, out: list[Any],
               offsets: list[int]) -> bool:
        """``rec`` while a record is held far ahead, or is held now: the held one's
        verdict first, once ``rec`` judged it; a dead letter waits behind it (it must not
        be emitted before a record a resume reads again); a record without a time lets
        it go. Whether ``rec`` was taken."""
        gate = self._policy
        assert gate is not None
        if gate.judged is not None:
            self._emit_held(gate.take_judged(), received, out, offsets)
        if rec is HELD:
            self._held_at = placed
            return True
        if gate.held is not None:
            if type(rec) is DeadLetter and not gate.wait_behind():
                self._behind.append((rec, off, placed))
                return True
            self._emit_held(gate.release(), received, out, offsets)
        return self._keep(rec, off, placed, out, offsets)

    def _emit_held(self, verdict: tuple[Any, int] | None, received: int, out: list[Any],
                   offsets: list[int]) -> None:
        """The held record's verdict (the record or its ``ahead`` dead letter), then the
        dead letters that waited behind it."""
        assert verdict is not None
        rec, off = verdict
        if type(rec) is not DeadLetter:
            rec = self._finish(rec, off, received)
        self._keep(rec, off, self._held_at, out, offsets)
        for dead, at, placed in self._behind:
            self._keep(dead, at, placed, out, offsets)
        self._behind = []

    def _end_releasing(self) -> tuple[list[Any], list[int]]:
        """The partition ends: a record still held goes first (admitted), the end on
        the next read."""
        gate = self._policy
        if gate is None or gate.held is None:
            raise StopIteration
        out: list[Any] = []
        offsets: list[int] = []
        self._emit_held(gate.release(), self._clock(), out, offsets)
        self._in.inc(len(out))
        return out, offsets

    def _idle(self) -> None:
        """No message came: end the partition (StopIteration) once it has been quiet for
        ``idle_eof`` with nothing left to read; else move the lag gauge (to 0)."""
        idle_eof = self._idle_eof_ns
        at = self._clock()
        if idle_eof is None:
            self._report_lag(at)
            return
        # a progress partition's writer may still be starting or restarting
        quiet = max(idle_eof, self._writer_wait_ns) if self._writers else idle_eof
        if ((self._got_any or not self._writers)
                and at - self._last_msg_ns > quiet
                and at >= self._recheck_at and not self._unread_left(idle_eof, at)):
            self._report_lag(at, force=True)
            raise StopIteration
        self._report_lag(at)

    def _end_or_raise(self, err: Any) -> bool:
        """A message that is an error: True at the partition's end, else BrokerError."""
        if err.code() == _KE._PARTITION_EOF:
            return True
        msg = (f"consuming Kafka topic {self._topic!r} partition {self._idx} near offset "
               f"{self._offset}: {err.str()}")
        flow_failing(f"{self._topic}[{self._idx}]")
        raise BrokerError(msg)

    def _tombstone(self, off: int) -> DeadLetter:
        return DeadLetter(topic=self._topic, partition=self._idx, offset=off, ts=self._clock(),
                          reason="empty", expected="a message value",
                          found="null (tombstone)")

    def _record(self, value: bytes, off: int, received: int, now: int | None) -> Any:
        """One message's record: decoded, held to the event-time policy (:data:`HELD`:
        waiting for the next to judge it), then :meth:`_finish`."""
        rec = self._decode(self._topic, value, partition=self._idx, offset=off)
        policy = self._policy
        if policy is not None and type(rec) is not DeadLetter:
            rec = policy.check(rec, value, self._topic, self._idx, off, now)
            if rec is HELD:
                return rec
        return self._finish(rec, off, received)

    def _finish(self, rec: Any, off: int, received: int) -> Any:
        """A record admitted: stamped with its receive time (live) and named by its
        input; a writer's final progress noted."""
        if self._stamp and type(rec) is not DeadLetter and getattr(rec, "recv_ts", 0) is None:
            force_setattr(rec, "recv_ts", received)  # just decoded: no one else holds it
        if type(rec) in SOURCED_TYPES:  # a later step may refuse it: name the input
            rec.__dict__["source"] = (self._topic, self._idx, off)
        if self._writers and type(rec) is DetectProgress and rec.final:
            self._finished.add(rec.source)
        return rec

    def _fetched(self, n: int, last_off: int, *, at_end: bool, was_at_end: bool,
                 skipped: Any) -> None:
        """After a fetch of ``n`` records up to ``last_off`` (-1: none taken): where the
        partition stands, for the next read, alignment and the lag gauge."""
        if skipped is not None and self._align is not None:  # only alignment asks
            self._skipped_any = True
            self._skipped_ts = max(self._skipped_ts, stamp_of(skipped.value()))
        self._at_end = at_end
        now = self._clock()
        first = False
        if last_off >= 0:
            first = not self._got_any
            self._got_any = True
            self._last_msg_ns = now
            self._offset = last_off + 1
            self._idle_since = None
        self._in.inc(n)
        # at once on reaching the end, and on the first read (the fetch's high watermark
        # gives a backlog's lag with no round trip)
        self._report_lag(now, force=first or (at_end and not was_at_end))

    def _report_lag(self, now: int, force: bool = False) -> None:
        """Every ``LAG_EVERY_NS`` (or now, when ``force``): the partition's lag gauge,
        from the last fetch's high watermark and the next offset to read; 0 at the
        partition's end. Only before the first message, short of the end, is the broker
        asked (a round trip per silent partition would slow a start over hundreds)."""
        if not force and now < self._lag_due:
            return
        self._lag_due = now + LAG_EVERY_NS
        if self._at_end:  # the consumer reached the end with no data since: caught up
            self._lag.set(0)
            return
        lo = None
        hi = self.shared.high_watermark(self._topic, self._idx)
        if self._offset < 0 and self._offset != OFFSET_END:  # nothing read yet
            ends = self.shared.end_offsets(self._topic, self._idx)
            if ends is not None:
                lo, hi = ends
        lag = consumer_lag(self._offset, lo, hi)
        if lag is not None:
            self._lag.set(lag)

    def _not_broadcast(self, rec: Any, key: bytes | None, value: bytes | None,
                       off: int) -> DeadLetter:
        assert self._split is not None  # only a key split has keys every process reads
        prefixes = [p.decode(errors="replace") for p in self._split.shared_prefixes]
        return DeadLetter.of(
            topic=self._topic, partition=self._idx, offset=off, ts=self._clock(),
            reason="not_broadcast", path="$.key",
            expected=f"a Kafka key starting with one of {prefixes}: every process must read "
                     f"a {type(rec).__name__}, and only those keys are read by every process",
            found=repr(key)[:200], step="kafka_input", raw=value or b"",
        )

    def next_batch(self) -> list[Any]:
        if self._align is not None:
            return self._next_aligned(self._align)
        fetched = self._fetch()
        if fetched is None:
            self._awake = datetime.now(UTC) + IDLE_BACKOFF
            return []
        self._awake = None
        return fetched[0]

    def _next_aligned(self, align: EventTimeAlignment) -> list[Any]:
        got = False
        if self._head >= len(self._recs):
            fetched = self._fetch()
            if fetched and fetched[0]:
                self._recs, self._offs = fetched
                self._tss = event_times(self._recs)
                self._peak = list(accumulate(self._tss, max))
                self._head = 0
                got = True
        now = self._clock()
        limit = align.frontier(self._name, now) + align.max_skew_ns
        recs, tss, lo = self._recs, self._tss, self._head
        # all records before the first past the limit go out: one bisect on the running
        # maximum, unless the limit dropped below what went out earlier
        peak = self._peak
        cut = bisect_right(peak, limit, lo)
        if cut == lo < len(recs) and tss[lo] <= limit:  # the limit dropped: scan from lo
            cut = next(compress(count(lo), map(limit.__lt__, islice(tss, lo, None))),
                       len(recs))
        if cut > lo:
            self._emitted_ts = max(self._emitted_ts, peak[cut - 1])
        out = recs[lo:cut]
        self._head = cut
        held = cut < len(recs)
        head = tss[cut] if held else None
        self.shared.hold(self._topic, self._idx, held)
        # a key split stands where it skipped to, else a partition none of whose keys
        # are its own holds the process back until its end
        stand = max(self._emitted_ts, self._skipped_ts)
        align.update(self._name, head, stand, got or self._skipped_any, now,
                     self._at_end and not self._writers)
        self._skipped_any = False
        self._awake = None if out else datetime.now(UTC) + IDLE_BACKOFF
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        # records held back by alignment are re-read on resume: the lateness watermark
        # resumes at what was emitted, so they do not come back as "late"
        policy = self._policy
        if self._head < len(self._recs):
            return self._offs[self._head], (
                -1 if policy is None else min(policy.max_ts, self._emitted_ts))
        if policy is not None and policy.held is not None:
            # a record held far ahead (and what waits behind it) is read again on resume,
            # at the watermark before it: judged by the same next record
            return policy.held.offset, policy.max_ts
        if self._offset == OFFSET_END:  # the end was unknown at the start: where it is now
            ends = self.shared.end_offsets(self._topic, self._idx)
            if ends is not None:
                self._offset = ends[1]
        return self._offset, -1 if policy is None else policy.max_ts

    def close(self) -> None:
        if self._align is not None:
            self._align.remove(self._name)
        self.shared.remove(self._topic, self._idx)
