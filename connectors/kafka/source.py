"""The Kafka source (:func:`kafka_input`): every partition of its topics read by one
worker, assigned (no consumer group), with offsets kept in bytewax recovery state.

Messages are decoded in batches straight into typed records through the wire
contract; bad ones become :class:`~riskguard.schemas.DeadLetter` on ``errs``.
On resume the consumer uses ``auto.offset.reset=error`` so a lost offset is
loud rather than a silent skip. A :class:`KeySplit` keeps, of a topic several
processes share, the keys that are this one's (see :class:`KafkaInput`). Each Kafka
partition is read by a :class:`~riskguard.connectors.kafka.partition.SourcePartition`;
the key split is in :mod:`~riskguard.connectors.kafka.key_split`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from riskguard.connectors.kafka.consumer import (
    IDLE_BACKOFF,
    IDLE_WAIT_S,
    STARTS,
    EventTimeAlignment,
    SharedConsumer,
    list_partitions,
    partitions_of,
)
from riskguard.connectors.kafka.key_split import KeySplit
from riskguard.connectors.kafka.partition import SourcePartition
from riskguard.connectors.settings import KafkaSettings, as_settings
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy

from riskguard.errors import ConfigError


class BundledPartitions(StatefulSourcePartition[Any, dict[str, tuple[int, int]]]):
    """All of the source's Kafka partitions as one bytewax partition: every step pays per
    batch, and alignment cuts each partition's read short on a backlog.

    It reads its partitions in rounds, each asking every partition once, until about
    ``cap`` records are gathered or a round brings nothing, and emits them as one batch;
    with ``one_round`` (``Fetch.fair``) it stops after one round. Its state is each
    partition's own, by name; a partition that ended keeps its last state.
    """

    def __init__(self, parts: dict[str, SourcePartition], cap: int, *,
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
    source partition (:class:`BundledPartitions`), in rounds, into batches of up to
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
        parts = partitions_of(self.settings, self.topics)
        return [(t, i) for t in self.topics for i in parts[t]]

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
                   ) -> dict[str, SourcePartition]:
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
                   resume_state: dict[str, tuple[int, int]] | None) -> BundledPartitions:
        parts = self.partitions(resume_state)
        fetch = self.fetch
        # an idle read waits in the consumer unless latency comes first (fair: polling)
        consumer = next(iter(parts.values())).shared if parts else None
        return BundledPartitions(parts, fetch.batch_size * max(1, len(parts)), one_round=fetch.fair,
                       wait_on=None if fetch.fair else consumer)

    def _build_one(self, consumer: SharedConsumer, topic: str, idx: int,
                   resume_state: tuple[int, int] | None) -> SourcePartition:
        offset, watermark = resume_state if resume_state is not None else (
            STARTS[self.starting_offset], -1
        )
        checks = self.checks
        split = self.split if self.split is not None and topic in self.split.topics else None
        return SourcePartition(
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
