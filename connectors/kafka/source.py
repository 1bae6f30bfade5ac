"""The Kafka source (:func:`kafka_input`): every partition of its topics read by one
worker, assigned (no consumer group), with offsets kept in bytewax recovery state.

Messages are decoded in batches straight into typed records through the wire
contract; bad ones become :class:`~riskguard.schemas.DeadLetter` on ``errs``.
On resume the consumer uses ``auto.offset.reset=error`` so a lost offset is
loud rather than a silent skip. A :class:`KeySplit` keeps, of a topic several
processes share, the keys that are this one's (see :class:`KafkaInput`)."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, compress, count, islice
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from confluent_kafka import KafkaError as _KE
from msgspec.structs import force_setattr
from riskguard.connectors.kafka.consumer import (
    IDLE_BACKOFF,
    IDLE_PATIENCE,
    IDLE_WAIT_S,
    LAG_EVERY_NS,
    RECHECK_NS,
    STARTS,
    EventTimeAlignment,
    SharedConsumer,
    consumer_lag,
    event_times,
    list_partitions,
    stamp_of,
)
from riskguard.connectors.kafka.sink import flow_failing
from riskguard.connectors.settings import KafkaSettings, as_settings
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_IN,
)
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.names import short_memo
from riskguard.schemas.signals import DetectProgress
from riskguard.schemas.time_policy import HELD, EventTimePolicy

from riskguard.errors import BrokerError, ConfigError

# logged under the package's name, which log configs select
_log = logging.getLogger("riskguard.connectors.kafka")

# per cluster (bootstrap servers) and clock: since when no end-of-input question was
# answered. Shared by every partition of the process, so a broker that is gone stops a
# bounded run after one patience, not one timeout per partition.
_END_UNANSWERED: dict[tuple[str, Clock], int] = {}

Placed = tuple[bool, bool, bytes | None, bytes | None]
"""Where a message's key places it (owned, shared), its key and its value."""


class _SourcePartition(StatefulSourcePartition[Any, tuple[int, int]]):
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
            since = _END_UNANSWERED.setdefault((bootstrap, self._clock), now)
            if now - since >= IDLE_PATIENCE * idle_eof:
                flow_failing(f"{self._topic}[{self._idx}]")
                raise BrokerError(
                    f"cannot confirm the end of input on topic {self._topic!r} partition "
                    f"{self._idx}: the broker at {bootstrap} has not answered for "
                    f"{(now - since) / 1e9:.0f} s")
            self._recheck_at = now + min(idle_eof, RECHECK_NS)
            return True
        _END_UNANSWERED.pop((bootstrap, self._clock), None)
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


class _Bundle(StatefulSourcePartition[Any, dict[str, tuple[int, int]]]):
    """All of the source's Kafka partitions as one bytewax partition: every step pays per
    batch, and alignment cuts each partition's read short on a backlog.

    It reads its partitions in rounds, each asking every partition once, until about
    ``cap`` records are gathered or a round brings nothing, and emits them as one batch;
    with ``one_round`` (``Fetch.fair``) it stops after one round. Its state is each
    partition's own, by name; a partition that ended keeps its last state.
    """

    def __init__(self, parts: dict[str, _SourcePartition], cap: int, *,
                 one_round: bool = False, wait_on: SharedConsumer | None = None) -> None:
        self._parts = parts
        self._done: dict[str, tuple[int, int]] = {}  # last states of partitions that ended
        self._cap = cap
        self._one_round = one_round
        self._awake: datetime | None = None
        self._wait_on = wait_on  # the shared consumer, if an idle round may wait in it

    def next_batch(self) -> list[Any]:
        parts = self._parts
        if not parts:
            raise StopIteration
        out: list[Any] = []
        while True:
            progressed = False
            for name, part in list(parts.items()):
                try:
                    got = part.next_batch()
                except StopIteration:
                    self._done[name] = part.snapshot()
                    part.close()
                    del parts[name]
                    continue
                if got:
                    out.extend(got)
                    progressed = True
            if not progressed or self._one_round or len(out) >= self._cap or not parts:
                break
        if not parts and not out:
            raise StopIteration
        if out:
            self._awake = None
        elif self._wait_on is not None:
            # sleep in librdkafka until a message is ready (or a short while), then read
            # again at once: no latency added, and no poll loop while idle
            self._wait_on.wait(IDLE_WAIT_S)
            self._awake = None
        else:
            self._awake = datetime.now(UTC) + IDLE_BACKOFF
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {**self._done, **{name: p.snapshot() for name, p in self._parts.items()}}

    def close(self) -> None:
        for part in self._parts.values():
            part.close()
        self._parts = {}


class KeySplit:
    """Which messages of its ``topics`` this process keeps, by Kafka key, before decoding:
    one of several independent one-worker dataflows that share a topic between them
    (docs/scaling.md, "The market tier").

    ``owned(key)`` says whether a key is this process's; a message under one of
    ``shared_prefixes`` (index and oracle prices) is read by every process. Before
    decoding, :meth:`place` says whether a key is ``owned`` and whether it is
    ``shared``: a message that is neither is skipped undecoded. After decoding,
    :meth:`admit` settles it: a record ``must_share`` says every process needs is kept
    under a shared key, and is a ``not_broadcast`` dead letter under a key of its own
    (it would reach one process only); anything else (dead letters included) is kept by
    its key's owner alone, so each is emitted once among the processes.

    >>> split = KeySplit(frozenset({"m"}), lambda key: key == b"okx/BTC-PERP",
    ...                  shared_prefixes=(b"index/",), must_share=lambda r: r == "index price")
    >>> [split.place(k) for k in (b"okx/BTC-PERP", b"okx/ETH-PERP", b"index/BTC-USD")]
    [(True, False), (False, False), (False, True)]
    >>> split.admit("index price", False, True), split.admit("trade", False, True)
    ('keep', 'skip')
    >>> split.admit("index price", True, False)
    'not_broadcast'
    """

    def __init__(self, topics: frozenset[str], owned: Callable[[bytes | None], bool], *,
                 shared_prefixes: tuple[bytes, ...] = (),
                 must_share: Callable[[Any], bool] | None = None,
                 counts_dead: Callable[[DeadLetter], bool] | None = None) -> None:
        self.topics = topics
        self.owned = owned
        self.shared_prefixes = shared_prefixes
        self.must_share = must_share
        # of the source's dead letters on every topic, those this process counts: the
        # ones it writes (others read the same topics whole); None: all
        self.counts_dead = counts_dead
        # asked for every message of a split topic, most of them skipped: the answer
        # depends on the key only, so it is memoized per key
        self.place: Callable[[bytes | None], tuple[bool, bool]] = short_memo(MEMO_MAX)(
            self._place)

    def _place(self, key: bytes | None) -> tuple[bool, bool]:
        shared = bool(self.shared_prefixes) and key is not None and key.startswith(
            self.shared_prefixes)
        return self.owned(key), shared

    def admit(self, rec: Any, owned: bool, shared: bool, *, dead: bool = False) -> str:
        """``keep``, ``skip`` (another process emits it) or ``not_broadcast``."""
        if not dead and self.must_share is not None and self.must_share(rec):
            return "keep" if shared else "not_broadcast" if owned else "skip"
        return "keep" if owned else "skip"


MEMO_MAX = 100_000
"""Keys a per-key memo keeps (least recently used first out; keys longer than
``schemas.names.MEMO_KEY_LIMIT`` are never held)."""


@dataclass(frozen=True)
class Fetch:
    """How the source reads: up to ``batch_size`` messages per partition a read, through
    a consumer whose fetches wait at most ``wait_max_ms`` at the broker (librdkafka
    ``fetch.wait.max.ms``). With ``fair`` each read takes at most ``batch_size`` per
    partition (lower latency for quiet topics under bursts, lower throughput on
    backlogs; see :class:`SharedConsumer`) and stops after one round of its partitions.
    """

    batch_size: int = 1000
    wait_max_ms: int = 10
    fair: bool = False


@dataclass(frozen=True)
class RecordChecks:
    """What is checked and stamped on a record as it is read: ``time_policy`` (late and
    future dead letters), except on ``untimed_topics`` (records another riskguard flow
    derived from input it already checked); ``stamp_recv_ts`` sets a record's missing
    ``recv_ts`` to the time its batch was consumed (for latency)."""

    time_policy: EventTimePolicy | None = None
    untimed_topics: frozenset[str] = frozenset()
    stamp_recv_ts: bool = False


@dataclass(frozen=True)
class Alignment:
    """Event-time alignment between the source's partitions (:class:`EventTimeAlignment`):
    a partition more than ``max_skew_s`` ahead of the slowest live one waits.

    ``progress_topics``: topic -> ``n``: partitions ``0 .. n - 1`` (modulo the topic's
    count) are each written as it goes by another riskguard flow, in event-time order (a
    market process's valuations on ``detections``). Such a partition at its end is only
    waiting for its writer: it holds the others back at the event time it reached until
    it stalls (no data for 10 s). It ends once each writer sent its ``final``
    :class:`~riskguard.schemas.DetectProgress`, or wrote and then went idle for
    ``idle_eof_s`` and at least ``writer_wait_s`` (a writer starting or resuming from
    recovery may still write the rest).
    """

    max_skew_s: float
    progress_topics: dict[str, int] = field(default_factory=dict)
    writer_wait_s: float = 0.0


class KafkaInput(FixedPartitionedSource[Any, Any]):
    """Typed records (or dead letters) from Kafka topics, read by one worker.

    Every Kafka partition of ``topics`` is read through one consumer into one bytewax
    source partition (:class:`_Bundle`), in rounds, into batches of up to
    ``fetch.batch_size`` per partition: every step downstream pays per batch once. Its
    recovery state is each Kafka partition's offset and watermark, by name
    (``<partition>-<topic>``). Both layouts of the guard are one-worker dataflows
    (:func:`kafka_input` refuses more).

    ``starting_offset`` (``earliest`` or ``latest``) applies to a fresh start only; a
    resumed partition continues at its recovered offset, and fails loudly if that offset
    no longer exists. ``idle_eof_s`` ends a partition after that long without messages
    (bounded runs), once the broker says none are left before its end. The dev broker
    (Tansu 0.6) reports a high watermark one past the first offset of the last produce
    batch, so there the check can miss the rest of that batch.

    ``fetch`` (:class:`Fetch`) says how it reads, ``checks`` (:class:`RecordChecks`) what
    it checks on each record, ``align`` (:class:`Alignment`) whether its partitions are
    read in step in event time, and ``split`` (:class:`KeySplit`) which keys of a topic
    shared with other processes are this one's.
    """

    def __init__(
        self,
        brokers: str | KafkaSettings,
        topics: Iterable[str],
        *,
        codec: Codec | None = None,
        starting_offset: str = "earliest",
        idle_eof_s: float | None = None,
        clock: Clock = system_clock,
        fetch: Fetch = Fetch(),
        checks: RecordChecks = RecordChecks(),
        align: Alignment | None = None,
        split: KeySplit | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise ConfigError("kafka.topics", "a list of topic names", topics)
        if starting_offset not in STARTS:
            raise ConfigError("kafka.starting_offset", "'earliest' or 'latest'", starting_offset)
        self.settings = as_settings(brokers)
        self.topics = list(topics)
        self.codec = codec or Codec()
        self.starting_offset = starting_offset
        self.idle_eof_ns = None if idle_eof_s is None else int(idle_eof_s * 1e9)
        self.clock = clock
        self.fetch = fetch
        self.checks = checks
        self.split = split
        self.progress_topics = dict(align.progress_topics) if align is not None else {}
        self.writer_wait_ns = int(align.writer_wait_s * 1e9) if align is not None else 0
        self.alignment = (
            None if align is None else EventTimeAlignment(int(align.max_skew_s * 1e9))
        )

    def list_parts(self) -> list[str]:
        return ["kafka"]

    def kafka_parts(self) -> list[tuple[str, int]]:
        """Every ``(topic, partition)`` the source reads."""
        return [(t, i) for t in self.topics for i in list_partitions(self.settings, t)]

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka config of this process's consumer: ``auto.offset.reset=error``,
        so a recovered offset that no longer exists fails loudly, never skips."""
        config = self.settings.client_config()
        config.update({
            "group.id": "riskguard-assigned",  # required by librdkafka; no group is joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,  # event-time alignment needs "caught up"
            "fetch.wait.max.ms": self.fetch.wait_max_ms,
            "auto.offset.reset": "error",
        })
        return config

    def partitions(self, resume_state: dict[str, tuple[int, int]] | None = None,
                   ) -> dict[str, _SourcePartition]:
        """Every Kafka partition the source reads, by name (``<partition>-<topic>``), read
        through one consumer, each resumed from its own entry of ``resume_state``."""
        states = resume_state or {}
        read = {f"{idx}-{topic}": (topic, idx) for topic, idx in self.kafka_parts()}
        gone = sorted(states.keys() - read.keys())
        if gone:
            msg = ("the source resumes partitions it no longer reads (topics or partitions "
                   "changed): re-initialise recovery")
            raise ConfigError("kafka.topics", msg, gone)
        consumer = SharedConsumer(self.consumer_config(), self.fetch.batch_size,
                                  fair_reads=self.fetch.fair)
        return {name: self._build_one(consumer, topic, idx, states.get(name))
                for name, (topic, idx) in read.items()}

    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict[str, tuple[int, int]] | None) -> _Bundle:
        parts = self.partitions(resume_state)
        fetch = self.fetch
        # an idle read waits in the consumer unless latency comes first (fair: polling)
        consumer = next(iter(parts.values())).shared if parts else None
        return _Bundle(parts, fetch.batch_size * max(1, len(parts)), one_round=fetch.fair,
                       wait_on=None if fetch.fair else consumer)

    def _build_one(self, consumer: SharedConsumer, topic: str, idx: int,
                   resume_state: tuple[int, int] | None) -> _SourcePartition:
        offset, watermark = resume_state if resume_state is not None else (
            STARTS[self.starting_offset], -1
        )
        checks = self.checks
        split = self.split if self.split is not None and topic in self.split.topics else None
        return _SourcePartition(
            consumer, topic, idx, offset, self.codec, self.fetch.batch_size,
            self.idle_eof_ns, None if topic in checks.untimed_topics else checks.time_policy,
            self.clock, watermark, checks.stamp_recv_ts, self.alignment,
            name=f"{idx}-{topic}", split=split, writers=self._writers_of(topic, idx),
            counts_dead=self.split.counts_dead if self.split is not None else None,
            writer_wait_ns=self.writer_wait_ns,
        )

    def _writers_of(self, topic: str, idx: int) -> int:
        """How many flows write partition ``idx`` of ``topic`` as they go
        (``progress_topics``: writer ``k`` writes partition ``k`` modulo the count)."""
        writers = self.progress_topics.get(topic)
        if not writers:
            return 0
        count = len(list_partitions(self.settings, topic))
        return sum(1 for k in range(writers) if k % count == idx)


class _NoItems(StatelessSourcePartition[Any]):
    def next_batch(self) -> list[Any]:
        raise StopIteration


class OneWorker(DynamicSource[Any]):
    """Emits nothing; refuses a dataflow of more than one worker. Both layouts of the
    guard are one-worker dataflows (docs/scaling.md): more workers would read every
    partition in one of them and only move keyed records to the others."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NoItems:
        if worker_count != 1:
            raise ConfigError("workers", "one worker per dataflow (scale out with the "
                              "market tier: docs/scaling.md)", worker_count)
        return _NoItems()


class StartSignal(DynamicSource[Any]):
    """One ``None`` at start, then its end: a keyed step fed by it exists in every run,
    an empty one included, so its ``on_eof`` runs (a market process's final progress,
    :mod:`riskguard.operators.core.end_of_input`)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Once:
        return _Once()


class _Once(StatelessSourcePartition[Any]):
    def __init__(self) -> None:
        self._sent = False

    def next_batch(self) -> list[Any]:
        if self._sent:
            raise StopIteration
        self._sent = True
        return [None]


@operator
def kafka_input(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: str | KafkaSettings,
    topics: Iterable[str],
    **kwargs: Any,
) -> SplitOut[Any]:
    """Read typed records from Kafka; ``errs`` carries the dead letters.

    Keyword arguments are those of :class:`KafkaInput`. A ``workers`` step (it emits
    nothing) comes first, to refuse a dataflow of more than one worker
    (:class:`OneWorker`).
    """
    op.input("workers", flow, OneWorker())
    items = op.input("kafka_input", flow, KafkaInput(brokers, topics, **kwargs))
    return split_dead_letters("split", items)
