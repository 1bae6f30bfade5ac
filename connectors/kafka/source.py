"""The Kafka source (:func:`kafka_input`): one bytewax partition per Kafka partition,
assigned (no consumer group) and with offsets kept in bytewax recovery state.

Messages are decoded in batches straight into typed records through the wire
contract; bad ones become :class:`~riskguard.schemas.DeadLetter` on ``errs``.
On resume the consumer uses ``auto.offset.reset=error`` so a lost offset is
loud rather than a silent skip. ``key_split_topics`` makes a topic's records
stay on the worker that reads them (see :class:`KafkaInput`)."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import accumulate, compress, count, islice
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from confluent_kafka import KafkaError as _KE
from msgspec.structs import force_setattr
from riskguard.connectors.kafka.consumer import (
    _IDLE_BACKOFF,
    _IDLE_PATIENCE,
    _IDLE_WAIT_S,
    _LAG_EVERY_NS,
    _RECHECK_NS,
    _STARTS,
    EventTimeAlignment,
    SharedConsumer,
    _event_times,
    _stamp_of,
    consumer_lag,
    list_partitions,
)
from riskguard.connectors.placement import (
    AlignedReader,
    Broadcast,
    Replica,
    WorkerProbe,
    cluster_workers,
)
from riskguard.connectors.settings import KafkaSettings, as_settings
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_IN,
    MISALIGNED,
)
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.signals import DetectProgress
from riskguard.schemas.time_policy import EventTimePolicy

from riskguard.errors import BrokerError, ConfigError

# the name this module logged under before the source and sink were split
_log = logging.getLogger("riskguard.connectors.kafka")

# per cluster (bootstrap servers) and clock: since when no end-of-input question was
# answered. Shared by every partition of the process, so a broker that is gone stops a
# bounded run after one patience, not one timeout per partition.
_END_UNANSWERED: dict[tuple[str, Clock], int] = {}


class _SourcePartition(StatefulSourcePartition[Any, tuple[int, int]]):
    def __init__(
        self, shared: SharedConsumer, topic: str, idx: int, offset: int,
        codec: Codec, batch_size: int, idle_eof_ns: int | None,
        policy: EventTimePolicy | None, clock: Clock, watermark: int = -1,
        stamp_recv_ts: bool = False, align: EventTimeAlignment | None = None,
        name: str | None = None, replica: Replica | AlignedReader | None = None,
        writers: int = 0,
    ) -> None:
        self._stamp = stamp_recv_ts
        # a progress partition (``writers`` flows write it as they go): at its end it is not
        # caught up; it ends once every writer sent its final progress, or had written and
        # then went idle
        self._writers = writers
        self._finished: set[str] = set()
        self._got_any = False
        self._replica = replica
        self.shared = shared  # the consumer it reads through (a bundle may wait in it)
        shared.add(topic, idx, offset)
        self._topic = topic
        self._idx = idx
        self._offset = offset
        self._decode = codec.decode
        self._batch_size = batch_size
        self._idle_eof_ns = idle_eof_ns
        self._policy = policy.start(watermark) if policy is not None else None
        self._clock = clock
        self._last_msg_ns = clock()
        self._at_end = False  # reached the partition's end with no data since
        self._idle_since: int | None = None  # when an idle end first found messages left
        self._recheck_at = 0  # and when to ask the broker again
        self._awake: datetime | None = None
        self._in = EVENTS_IN.labels(topic)
        self._lag = CONSUMER_LAG.labels(topic, str(idx))
        self._lag_due = 0
        self._align = align
        self._name = name or f"{idx}-{topic}"
        # records read but held back by alignment: recs[head:], with their offsets and
        # event times (_NO_TS for those that never wait: dead letters, no ts)
        self._recs: list[Any] = []
        self._offs: list[int] = []
        self._tss: list[int] = []
        self._peak: list[int] = []  # running maximum of _tss
        self._head = 0
        self._emitted_ts = watermark
        # event time of the last message a replica skipped (another replica's key) with
        # none of its own after it: where the partition stands for alignment
        self._skipped_ts = watermark
        self._skipped_any = False
        # an aligned partition's keys should route to its reader (with one worker they do)
        self._aligned = (replica if isinstance(replica, AlignedReader) and replica.workers > 1
                         else None)
        self._misaligned = MISALIGNED.labels(topic)
        self._warned = False
        if align is not None:
            align.register(self._name, clock(), watermark)

    def _unread_left(self, idle_eof: int, now: int) -> bool:
        """Idle for ``idle_eof``: whether messages are still left before the partition's
        end (a fetch that stalled, not the end of input). Asked of the broker at most every
        ``_RECHECK_NS``; after ``_IDLE_PATIENCE`` idle periods with messages still left
        (a transactional topic's last offset is a marker no read returns) the partition
        ends anyway, with a warning naming how many. A broker that does not answer cannot
        confirm the end: the partition stays open, and once the cluster has left every
        such question unanswered for ``_IDLE_PATIENCE`` idle periods, :class:`BrokerError`
        stops the flow (a bounded run never ends as if its input were complete)."""
        if self._idle_since is None:
            self._idle_since = now
        ends = self.shared.end_offsets(self._topic, self._idx)
        bootstrap = self.shared.bootstrap
        if ends is None:
            since = _END_UNANSWERED.setdefault((bootstrap, self._clock), now)
            if now - since >= _IDLE_PATIENCE * idle_eof:
                raise BrokerError(
                    f"cannot confirm the end of input on topic {self._topic!r} partition "
                    f"{self._idx}: the broker at {bootstrap} has not answered for "
                    f"{(now - since) / 1e9:.0f} s")
            self._recheck_at = now + min(idle_eof, _RECHECK_NS)
            return True
        _END_UNANSWERED.pop((bootstrap, self._clock), None)
        lo, hi = ends
        pos = lo if self._offset == OFFSET_BEGINNING else self._offset
        if pos < 0 or hi <= pos:
            return False
        if now - self._idle_since >= _IDLE_PATIENCE * idle_eof:
            _log.warning("topic %r partition %d ends idle with %d messages unread "
                         "(offset %d, high watermark %d)", self._topic, self._idx, hi - pos,
                         pos, hi)
            return False
        self._recheck_at = now + min(idle_eof, _RECHECK_NS)
        return True

    def _report_misaligned(self, reader: AlignedReader, bad: list[bytes | None]) -> None:
        """Count (and log once) messages of an aligned partition whose key routes to
        another worker: still emitted, they only cost a move downstream."""
        self._misaligned.inc(len(bad))
        if not self._warned:
            self._warned = True
            _log.warning(
                "topic %r partition %d is read by worker %d of %d, but key %r routes to "
                "another worker: produce it with riskguard.connectors.placement."
                "aligned_partitions (counted in riskguard_misaligned_records_total)",
                self._topic, self._idx, reader.worker, reader.workers, bad[0])

    def _fetch(self) -> tuple[list[Any], list[int]] | None:
        """Decode the pending Kafka messages: ``(records, offsets)``; None when none came.

        A replica (:class:`~riskguard.connectors.placement.Replica`) skips
        other replicas' keys undecoded, and after decoding emits a record only
        if it is this replica's to emit; ``self._offset`` moves past every
        message taken.
        """
        if self._writers and len(self._finished) >= self._writers:
            raise StopIteration  # every writer's input ended, and all it wrote was read
        msgs = self.shared.take(self._topic, self._idx)
        if not msgs:
            idle_eof = self._idle_eof_ns
            at = self._clock()
            # a progress partition's writer may still be starting: idle only once it wrote
            if (idle_eof is not None and (self._got_any or not self._writers)
                    and at - self._last_msg_ns > idle_eof
                    and at >= self._recheck_at and not self._unread_left(idle_eof, at)):
                self._report_lag(at, force=True)
                raise StopIteration
            self._report_lag(at)  # caught up or idle: the gauge still moves (to 0)
            return None
        topic, idx, decode, policy = self._topic, self._idx, self._decode, self._policy
        aligned = self._aligned
        misplaced = None if aligned is None else aligned.misplaced
        bad: list[bytes | None] = []  # keys of an aligned partition's misplaced messages
        stamp, writers = self._stamp, self._writers
        received = self._clock() if stamp else 0
        # the future-skew check's processing time: read once per fetch, not per record
        now = None if policy is None else policy.policy.now()
        out: list[Any] = []
        offsets: list[int] = []
        append, append_off = out.append, offsets.append
        replica = self._replica
        owned = shared = False
        last_off = -1
        at_end = was_at_end = self._at_end
        skipped: Any = None  # the last message skipped after the last one taken
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == _KE._PARTITION_EOF:
                    at_end = True
                    continue
                msg = (f"consuming Kafka topic {topic!r} partition {idx} near offset "
                       f"{self._offset}: {err.str()}")
                raise BrokerError(msg)
            off = last_off = m.offset() or 0
            at_end = False
            if replica is not None:
                key = m.key()
                owned, shared = replica.place(key)
                if misplaced is not None and misplaced(key):
                    bad.append(key)
                if not (owned or shared):
                    skipped = m
                    continue
            value = m.value()
            if value is None:
                rec: Any = DeadLetter(
                    topic=topic, partition=idx, offset=off, ts=self._clock(),
                    reason="empty", expected="a message value", found="null (tombstone)",
                )
            else:
                rec = decode(topic, value, partition=idx, offset=off)
                if policy is not None and type(rec) is not DeadLetter:
                    rec = policy.check(rec, value, topic, idx, off, now)
                if stamp and type(rec) is not DeadLetter and getattr(rec, "recv_ts", 0) is None:
                    force_setattr(rec, "recv_ts", received)  # just decoded: no one else holds it
                if type(rec) in SOURCED_TYPES:  # a later step may refuse it: name the input
                    rec.__dict__["source"] = (topic, idx, off)
                if writers and type(rec) is DetectProgress and rec.final:
                    self._finished.add(rec.source)
            if replica is not None:
                verdict = replica.admit(rec, owned, shared, dead=type(rec) is DeadLetter)
                if verdict == "skip":
                    skipped = m
                    continue
                if verdict == "not_broadcast":
                    rec = self._not_broadcast(rec, key, value, off)
            if type(rec) is DeadLetter:
                DEAD_LETTERS.labels(topic, rec.reason).inc()
            append(rec)
            append_off(off)
            skipped = None
        if bad and aligned is not None:
            self._report_misaligned(aligned, bad)
        if skipped is not None and self._align is not None:  # only alignment asks
            self._skipped_any = True
            self._skipped_ts = max(self._skipped_ts, _stamp_of(skipped.value()))
        self._at_end = at_end
        now = self._clock()
        if last_off >= 0:
            self._got_any = True
            self._last_msg_ns = now
            self._offset = last_off + 1
            self._idle_since = None
        self._in.inc(len(out))
        self._report_lag(now, force=at_end and not was_at_end)  # at once on reaching the end
        return out, offsets

    def _report_lag(self, now: int, force: bool = False) -> None:
        """Every ``_LAG_EVERY_NS`` (or now, when ``force``): the partition's lag gauge,
        from the last fetch's high watermark and the next offset to read. Before the first
        message the broker is asked for both watermarks (:func:`consumer_lag`)."""
        if not force and now < self._lag_due:
            return
        self._lag_due = now + _LAG_EVERY_NS
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
        assert self._replica is not None  # only replicas broadcast
        prefixes = [p.decode(errors="replace") for p in self._replica.key_prefixes]
        return DeadLetter.of(
            topic=self._topic, partition=self._idx, offset=off, ts=self._clock(),
            reason="not_broadcast", path="$.key",
            expected=f"a Kafka key starting with one of {prefixes}: every worker must read a "
                     f"{type(rec).__name__}, and only those keys are read by every worker",
            found=repr(key)[:200], step="kafka_input", raw=value or b"",
        )

    def next_batch(self) -> list[Any]:
        if self._align is not None:
            return self._next_aligned(self._align)
        fetched = self._fetch()
        if fetched is None:
            self._awake = datetime.now(UTC) + _IDLE_BACKOFF
            return []
        self._awake = None
        return fetched[0]

    def _next_aligned(self, align: EventTimeAlignment) -> list[Any]:
        got = False
        if self._head >= len(self._recs):
            fetched = self._fetch()
            if fetched and fetched[0]:
                self._recs, self._offs = fetched
                self._tss = _event_times(self._recs)
                self._peak = list(accumulate(self._tss, max))
                self._head = 0
                got = True
        now = self._clock()
        limit = align.frontier(self._name, now) + align.max_skew_ns
        recs, tss, lo = self._recs, self._tss, self._head
        # the first record past the limit, and all before it go out. Those before lo went
        # out under an earlier limit; while the limit has not dropped below them, the
        # running maximum finds the cut with one bisect.
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
        # a replica that only skipped messages (others' keys) stands where it skipped to,
        # not where it last emitted: else it holds the process back until the end of a
        # partition none of whose keys are its own
        stand = max(self._emitted_ts, self._skipped_ts)
        align.update(self._name, head, stand, got or self._skipped_any, now,
                     self._at_end and not self._writers)
        self._skipped_any = False
        self._awake = None if out else datetime.now(UTC) + _IDLE_BACKOFF
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        # Records still held back by alignment are re-read on resume, so the lateness
        # watermark resumes at what was emitted: the fetch that read them already moved
        # the policy past them, and they must not come back as "late".
        policy = self._policy
        if self._head < len(self._recs):
            return self._offs[self._head], (
                -1 if policy is None else min(policy.max_ts, self._emitted_ts))
        return self._offset, -1 if policy is None else policy.max_ts

    def close(self) -> None:
        if self._align is not None:
            self._align.remove(self._name)
        self.shared.remove(self._topic, self._idx)


class _Bundle(StatefulSourcePartition[Any, dict[str, tuple[int, int]]]):
    """All of one worker's source partitions as one bytewax partition.

    bytewax passes each partition's batch downstream as its own message, and
    every step pays per message (in a cluster, progress tracking between
    processes too). On a backlog, event-time alignment cuts each partition's
    read to the few records within the skew, so a worker's reads were about
    40 records each. A bundle reads its partitions in rounds, each round
    asking every partition once (so alignment sees the same calls as
    before), until about ``cap`` records are gathered or a round brings
    nothing, and emits them as one batch. With ``one_round`` (``fair_reads``:
    latency first) it stops after one round. Its state is each partition's
    own, by name; a partition that ended keeps its last state.
    """

    def __init__(self, parts: dict[str, _SourcePartition], cap: int, *,
                 one_round: bool = False, wait_on: SharedConsumer | None = None) -> None:
        self._parts = parts
        self._done: dict[str, tuple[int, int]] = {}  # last states of partitions that ended
        self._cap = cap
        self._one_round = one_round
        self._awake: datetime | None = None
        # the one consumer all its partitions read through, if an idle round may wait in it
        self._wait_on = wait_on

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
            self._wait_on.wait(_IDLE_WAIT_S)
            self._awake = None
        else:
            self._awake = datetime.now(UTC) + _IDLE_BACKOFF
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {**self._done, **{name: p.snapshot() for name, p in self._parts.items()}}

    def close(self) -> None:
        for part in self._parts.values():
            part.close()
        self._parts = {}


def _check_multiple(topic: str, ids: list[int], readers: int, what: str) -> None:
    """An aligned topic's partitions must split evenly between its ``readers``."""
    if len(ids) % readers:
        raise ConfigError("kafka.aligned_topics",
                          f"a partition count that is a multiple of the {readers} {what}",
                          f"{topic}: {len(ids)} partitions")


class KafkaInput(FixedPartitionedSource[Any, Any]):
    """Typed records (or dead letters) from Kafka topics.

    ``starting_offset`` (``earliest`` or ``latest``) applies to a fresh start
    only; a resumed partition continues at its recovered offset, and fails
    loudly if that offset no longer exists. ``stamp_recv_ts`` sets a record's
    missing ``recv_ts`` to the time its batch was consumed (for latency).
    ``align_skew_s`` turns on :class:`EventTimeAlignment` between this
    process's partitions. By default each partition has its own consumer,
    fetching in parallel (highest throughput); ``share_consumer`` reads all of
    this process's partitions through one (:class:`SharedConsumer`; replicas,
    below, through one more per replica index): one fetch loop instead of one
    per partition, which spares the broker and idle-fetch latency when a flow
    reads many low-rate partitions; with it, ``fair_reads`` caps each read at
    ``batch_size`` per partition (lower latency for quiet topics under bursts, lower
    throughput on backlogs; see :class:`SharedConsumer`). ``idle_eof_s`` ends a partition after
    that long without messages (tests, demos, bounded replays), once the broker says none
    are left before its end: a fetch that stalled longer than ``idle_eof_s`` does not end
    it early (up to 5 idle periods, then it ends with a warning naming what is unread).
    The dev broker (Tansu 0.6) reports a high watermark one past the first offset of the
    last produce batch, so there the check can miss the rest of that batch.

    ``key_split_topics``: with ``W`` workers, each Kafka partition of these
    topics becomes ``W`` source partitions (replicas) ``r = 0..W-1``, named
    so that bytewax places replica ``r`` on worker ``r``. Replica ``r`` keeps
    the messages whose Kafka key bytewax would route, as a state key, to
    worker ``r`` (``placement.route_worker``) and skips the rest undecoded.
    When the records are keyed downstream by the same string as their Kafka
    key (market data: ``venue/instrument``), they never change worker, so no
    record of the topic is pickled between processes. Every message is kept
    by exactly one replica whatever the keys are (broadcast records aside);
    keys only decide locality.
    Each replica has its own consumer and offset, so each worker fetches the
    whole topic: worth it for a topic whose records are costly downstream.

    ``broadcast`` (:class:`~riskguard.connectors.placement.Broadcast`): records
    every worker needs its own copy of. Its ``topics`` are replicated the same
    way, but every replica emits every broadcast record; on key-split topics,
    messages under its ``key_prefixes`` are emitted by every replica too. A
    fan-out of such a record keeps only the keys local to its worker
    (:class:`~riskguard.connectors.placement.LocalKeys`), so it never crosses
    a process and each process sees it in its own event-time order.

    The worker count comes from the ``workers`` probe step
    :func:`kafka_input` adds; with one worker the topics are read as usual.
    Changing the worker count renames the replicas (re-initialise recovery,
    as for any change of worker count).

    ``aligned_topics``: topics produced with
    :func:`~riskguard.connectors.placement.aligned_partition`, whose partition
    ``i`` holds only keys that bytewax routes to worker ``i % W``. Worker
    ``i % W`` reads partition ``i``, once, and emits every record: keyed
    downstream by the Kafka key's string, no record of the topic changes
    worker, and no worker fetches another's messages (unlike key-split
    replicas, where each worker fetches the whole topic). The partition count
    must be a multiple of ``W`` (a config error at start-up otherwise). A
    record under a key that routes elsewhere (a producer that does not use
    ``aligned_partition``) is still emitted, and bytewax moves it to its key's
    worker downstream, so results never depend on the producer; it is counted in
    ``riskguard_misaligned_records_total`` and logged once per partition.
    Switching a topic to or from aligned renames its source partitions
    (re-initialise recovery).

    ``bundle``: each worker gets one bytewax source partition holding all of
    its Kafka partitions and replicas (the same ones it would hold without),
    read in rounds into batches of up to ``batch_size`` records per partition
    (:class:`_Bundle`), instead of one small message per partition per read.
    Its recovery state is the partitions' own, by name. It needs the
    worker count (the ``workers`` probe step of :func:`kafka_input`), and it
    renames the source partitions: a recovery store made with the other
    setting, or another worker count, must be re-initialised.

    ``untimed_topics``: topics whose records ``time_policy`` does not check
    (no late or future dead letters): records another riskguard flow derived
    from input it already checked, such as the detect tier's anomaly signals,
    whose times lag that flow's progress on the same partition by up to a
    feature window.

    ``progress_topics``: topic -> ``n``: partitions ``0 .. n - 1`` (modulo the topic's
    count) of these topics are written as they go by another riskguard flow each, in
    event-time order (a market process's valuations on the ``detections`` topic,
    ``KafkaOutput(partition=index)``). With alignment, such a partition at its end is not
    caught up, only waiting for its writer: it goes on holding the others back at the
    event time it reached until it stalls (no data for 10 s: a writer gone), so the
    others are read in step with it however far ahead their writers have run. It ends
    once each of its writers sent its ``final`` :class:`~riskguard.schemas.DetectProgress`
    (its bounded input ended), or wrote and then went idle for ``idle_eof_s``: not before a
    writer still starting up has written anything.

    ``replica_of = (index, processes)`` with ``owner``: this dataflow is one of
    ``processes`` independent one-worker dataflows (docs/scaling.md, "The market tier"),
    and reads replica ``index`` of each key-split topic's partitions, keeping the
    messages whose key ``owner(key)`` gives to ``index`` (broadcast prefixes:
    every process), and, of an aligned topic (produced with
    ``placement.aligned_partitions(..., owners=...)``), the partitions ``i`` with
    ``i % processes == index``. The other topics it reads whole. A cluster of several
    workers is refused at start-up.
    """

    def __init__(
        self,
        brokers: str | KafkaSettings,
        topics: Iterable[str],
        *,
        codec: Codec | None = None,
        starting_offset: str = "earliest",
        batch_size: int = 1000,
        idle_eof_s: float | None = None,
        time_policy: EventTimePolicy | None = None,
        fetch_wait_max_ms: int = 10,
        clock: Clock = system_clock,
        stamp_recv_ts: bool = False,
        align_skew_s: float | None = None,
        share_consumer: bool = False,
        fair_reads: bool = False,
        key_split_topics: Iterable[str] = (),
        broadcast: Broadcast | None = None,
        bundle: bool = False,
        aligned_topics: Iterable[str] = (),
        untimed_topics: Iterable[str] = (),
        replica_of: tuple[int, int] | None = None,
        owner: Callable[[bytes | None], int] | None = None,
        progress_topics: dict[str, int] | None = None,
    ) -> None:
        self.progress_topics = dict(progress_topics or {})
        self._progress_parts: dict[str, dict[int, int]] = {}  # topic -> partition -> writers
        if (replica_of is None) != (owner is None):
            raise ConfigError("kafka.replica_of", "replica_of and owner given together",
                              (replica_of, owner))
        self.replica_of = replica_of
        self.owner = owner
        self.bundle = bundle
        self.untimed_topics = frozenset(untimed_topics)
        self.aligned_topics = frozenset(aligned_topics)
        self.share_consumer = share_consumer
        self.fair_reads = fair_reads
        self.key_split_topics = frozenset(key_split_topics)
        self.broadcast = broadcast or Broadcast()
        both = self.aligned_topics & (self.key_split_topics | self.broadcast.topics)
        if both:
            raise ConfigError("kafka.aligned_topics",
                              "topics that are neither key-split nor broadcast", sorted(both))
        self.stamp_recv_ts = stamp_recv_ts
        self.alignment = (
            None if align_skew_s is None else EventTimeAlignment(int(align_skew_s * 1e9))
        )
        # share_consumer: one consumer per process for the plain partitions (key None)
        # and one per replica index (a process holds replica r of a partition at most once)
        self._shared: dict[int | None, SharedConsumer] = {}
        if isinstance(topics, str):
            raise ConfigError("kafka.topics", "a list of topic names", topics)
        if starting_offset not in _STARTS:
            raise ConfigError("kafka.starting_offset", "'earliest' or 'latest'", starting_offset)
        self.settings = as_settings(brokers)
        self.topics = list(topics)
        self.codec = codec or Codec()
        self.starting_offset = starting_offset
        self.batch_size = batch_size
        self.idle_eof_ns = None if idle_eof_s is None else int(idle_eof_s * 1e9)
        self.time_policy = time_policy
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.clock = clock

    @staticmethod
    def _workers(options: str, field: str, found: Any) -> int:
        """The cluster's worker count, which ``options`` need (from the probe step)."""
        count = cluster_workers()
        if count is None:
            msg = (f"KafkaInput({options}=...) needs the worker count: build it with "
                   "kafka_input(), which adds the 'workers' probe step before the source")
            raise ConfigError(field, msg, found)
        return count

    def list_parts(self) -> list[str]:
        if self.bundle:
            # one per worker; bytewax hands sorted parts out round-robin: @w lands on w
            workers = self._workers("bundle", "kafka.bundle", None)
            return [f"@{w:04d}/{workers}" for w in range(workers)]
        return self._kafka_parts()

    def _kafka_parts(self) -> list[str]:
        """One source partition per Kafka partition, or per replica of a replicated one."""
        workers = 1
        replicated = self.key_split_topics | self.broadcast.topics
        if self.replica_of is not None:
            return self._process_parts(self.replica_of)
        if replicated:
            workers = self._workers("key_split_topics=..., broadcast", "kafka.key_split_topics",
                                    sorted(replicated))
        if self.aligned_topics:
            workers = self._workers("aligned_topics", "kafka.aligned_topics",
                                    sorted(self.aligned_topics))
        parts: list[str] = []
        for t in self.topics:
            ids = list_partitions(self.settings, t)
            if t in self.aligned_topics:
                _check_multiple(t, ids, workers, "workers")
                # '*' sorts before every other part name, and each aligned topic's block
                # is a multiple of the worker count: bytewax's round-robin over the
                # sorted names hands partition i to worker i % workers.
                parts.extend(f"*{t}:{i:06d}:{i % workers:04d}/{workers}" for i in ids)
                continue
            for i in ids:
                if t in replicated and workers > 1:
                    # '+' sorts before the digits that start plain part names, and
                    # bytewax hands sorted parts to workers round-robin: replica r
                    # of each (topic, partition) lands on worker r.
                    parts.extend(f"+{t}:{i:06d}:{r:04d}/{workers}" for r in range(workers))
                else:
                    parts.append(f"{i}-{t}")
        return parts

    def _process_parts(self, replica_of: tuple[int, int]) -> list[str]:
        """A market process's source partitions: its replica of each key-split topic's
        partitions, every partition of the others."""
        workers = self._workers("replica_of", "kafka.replica_of", replica_of)
        if workers != 1:
            raise ConfigError("tier.role", "one worker per market process (scale with more "
                              "market processes, tier.detect_workers)", f"{workers} workers")
        index, processes = replica_of
        parts: list[str] = []
        for t in self.topics:
            ids = list_partitions(self.settings, t)
            if t in self.aligned_topics:
                _check_multiple(t, ids, processes, "market processes")
                parts.extend(f"*{t}:{i:06d}:{index:04d}/{processes}"
                             for i in ids if i % processes == index)
                continue
            for i in ids:
                parts.append(f"+{t}:{i:06d}:{index:04d}/{processes}"
                             if t in self.key_split_topics else f"{i}-{t}")
        return parts

    def bundled_parts(self, worker: int, workers: int) -> list[str]:
        """The source partitions worker ``worker`` of ``workers`` holds: the ones bytewax
        would hand it unbundled (round-robin over the sorted names)."""
        return sorted(self._kafka_parts())[worker::workers]

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka config of this process's consumer.

        Fresh partitions start at the logical ``starting_offset``; resumed ones
        at their recovered offset, with ``auto.offset.reset=error``: if that
        offset no longer exists (retention, a recreated topic), consuming
        fails loudly instead of silently skipping to the end or the start.
        """
        config = self.settings.client_config()
        config.update({
            "group.id": "riskguard-assigned",  # required by librdkafka; no group is joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,  # event-time alignment needs "caught up"
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "auto.offset.reset": "error",
        })
        return config

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        if for_part.startswith("@"):  # a bundle: "@worker/workers"
            w_text, n_text = for_part[1:].split("/")
            states: dict[str, tuple[int, int]] = dict(resume_state or {})
            names = self.bundled_parts(int(w_text), int(n_text))
            parts = {name: self._build_one(name, states.pop(name, None)) for name in names}
            if states:
                msg = (f"source partition {for_part} resumes partitions it no longer holds "
                       "(topics or partitions changed): re-initialise recovery")
                raise ConfigError("kafka.bundle", msg, sorted(states))
            # at most batch_size per partition per read, as unbundled partitions read
            cap = self.batch_size * max(1, len(parts))
            # an idle bundle whose partitions share one consumer waits in it, if it is its
            # flow's only worker (a worker of a cluster must stay free to take what the
            # others send it) and not latency first (fair_reads: polling left a fill's
            # p50 about 2 ms lower at 22k events/s)
            consumers = {id(p.shared): p.shared for p in parts.values()}
            wait_on = (next(iter(consumers.values()))
                       if len(consumers) == 1 and n_text == "1" and not self.fair_reads
                       else None)
            return _Bundle(parts, cap, one_round=self.fair_reads, wait_on=wait_on)
        return self._build_one(for_part, resume_state)

    def _build_one(self, for_part: str, resume_state: tuple[int, int] | None) -> _SourcePartition:
        replica: Replica | AlignedReader | None = None
        if for_part.startswith("*"):  # aligned: "*topic:partition:worker/workers"
            topic, idx_text, w_name = for_part[1:].split(":")
            replica = AlignedReader(int(idx_text), int(w_name.split("/")[1]),
                                    key_prefixes=self.broadcast.key_prefixes,
                                    is_broadcast=self.broadcast.records, owner=self.owner)
        elif for_part.startswith("+"):  # a replica: "+topic:partition:replica/workers"
            topic, idx_text, r_name = for_part[1:].split(":")
            r_text, w_text = r_name.split("/")
            b = self.broadcast
            whole = topic in b.topics
            replica = Replica(int(r_text), int(w_text), whole_topic=whole,
                              key_prefixes=() if whole else b.key_prefixes,
                              is_broadcast=b.records, owner=self.owner)
        else:
            idx_text, topic = for_part.split("-", 1)
        if self.share_consumer:
            # Replicas of one Kafka partition may share a process (several workers), each
            # at its own offset: they never share a consumer. A market process holds one
            # replica of each: one consumer for all its partitions.
            group = (replica.replica if isinstance(replica, Replica) and self.replica_of is None
                     else None)
            consumer = self._shared.get(group)
            if consumer is None:
                consumer = self._shared[group] = SharedConsumer(
                    self.consumer_config(), self.batch_size, fair_reads=self.fair_reads)
        else:
            consumer = SharedConsumer(self.consumer_config(), self.batch_size)
        offset, watermark = resume_state if resume_state is not None else (
            _STARTS[self.starting_offset], -1
        )
        return _SourcePartition(
            consumer, topic, int(idx_text), offset, self.codec, self.batch_size,
            self.idle_eof_ns, None if topic in self.untimed_topics else self.time_policy,
            self.clock, watermark, self.stamp_recv_ts,
            self.alignment, name=for_part, replica=replica,
            writers=self._writers_of(topic, int(idx_text)),
        )

    def _writers_of(self, topic: str, idx: int) -> int:
        """How many flows write partition ``idx`` of ``topic`` as they go
        (``progress_topics``: writer ``k`` writes partition ``k`` modulo the count)."""
        writers = self.progress_topics.get(topic)
        if not writers:
            return 0
        counts = self._progress_parts.get(topic)
        if counts is None:
            count = len(list_partitions(self.settings, topic))
            counts = self._progress_parts[topic] = {}
            for k in range(writers):
                counts[k % count] = counts.get(k % count, 0) + 1
        return counts.get(idx, 0)



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

    Keyword arguments are those of :class:`KafkaInput`. A ``workers`` probe
    step (it emits nothing) comes first, to tell the source (and steps that
    ask :func:`~riskguard.connectors.placement.worker_of_thread`) the worker
    count and each worker its index.
    """
    op.input("workers", flow, WorkerProbe())
    items = op.input("kafka_input", flow, KafkaInput(brokers, topics, **kwargs))
    return split_dead_letters("split", items)
