"""The Flink functions that run a flow's core steps (:mod:`riskguard.flink.graph`).

Each holds only the flow's reference and its step id; in the worker it finds the step
in the flow it built and calls the step's own function or logic builder.

- ``flat_map_batch``: each record as a batch of one (riskguard's batch functions give
  the same output whatever the batch size).
- ``branch``: two filters on the same predicate.
- ``stateful_batch``: a :class:`~pyflink.datastream.KeyedProcessFunction` hosting one
  logic per key. The logic's snapshot lives in Flink keyed state, so checkpoints and
  savepoints carry it; it is taken when Flink writes the state (at the end of a bundle
  or a checkpoint), not per record. ``notify_at`` deadlines become processing-time
  timers, as bytewax compares them with the system time; ``on_eof`` runs when the
  input ends (the final watermark fires an event-time timer registered per key).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    FilterFunction,
    FlatMapFunction,
    KeyedProcessFunction,
    MapFunction,
    RuntimeContext,
    TimeDomain,
)
from pyflink.datastream.state import ValueStateDescriptor
from riskguard.flink.graph import FlowRef
from riskguard.operators.core.clock import claim_worker, step_event_time

EOF_TIMER_MS = 2**63 - 2
"""An event-time timer only the final watermark of a bounded input reaches."""


def _event_ts(value: Any) -> int | None:
    """A record's event time, keyed or in a batch; None for what carries none."""
    ts = getattr(value, "ts", None)
    if ts is None and type(value) is tuple and len(value) == 2:
        ts = getattr(value[1], "ts", None)
    elif ts is None and type(value) is list:
        ts = max((t for t in map(_event_ts, value) if t is not None), default=None)
    return ts if type(ts) is int else None


class EventTimeMs(TimestampAssigner):
    """A record's (or a batch's latest) event time in ms, as Flink's record timestamp:
    what the keyed steps that order their records wait for the watermark to pass."""

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        ts = _event_ts(value)
        return record_timestamp if ts is None else ts // 1_000_000


class _StepFunction:
    """A core step's function: its step found in the worker's flow, and the step's own
    event time (the latest it has seen), which a backtest's clock reads
    (:data:`~riskguard.operators.core.clock.step_event_time`)."""

    def __init__(self, ref: FlowRef, step_id: str) -> None:
        self.ref = ref
        self.step_id = step_id
        self.high = 0

    def _op(self) -> Any:
        return self.ref.steps()[self.step_id].op

    def _run(self, fn: Callable[..., Any], *args: Any, seen: Any = None) -> Any:
        ts = _event_ts(seen)
        if ts is not None and ts > self.high:
            self.high = ts
        token = step_event_time.set(self.high)
        try:
            return fn(*args)
        finally:
            step_event_time.reset(token)


class FlatMapBatch(_StepFunction, FlatMapFunction):
    """A ``flat_map_batch`` step, one record a call. Each call claims this subtask's task
    (:func:`~riskguard.operators.core.clock.claim_worker`), so event-time ticks it makes
    are named per subtask and announce how many there are: a consumer's watermark then
    waits for every subtask."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.mapper = self._op().mapper
        self.where = (runtime_context.get_index_of_this_subtask(),
                      runtime_context.get_number_of_parallel_subtasks())

    def flat_map(self, value: Any) -> Any:
        claim_worker(*self.where)
        return self._run(lambda: list(self.mapper([value])), seen=value)


class Branch(_StepFunction, FilterFunction):
    def __init__(self, ref: FlowRef, step_id: str, side: bool) -> None:
        super().__init__(ref, step_id)
        self.side = side

    def open(self, runtime_context: RuntimeContext) -> None:
        self.predicate = self._op().predicate

    def filter(self, value: Any) -> bool:
        return bool(self._run(self.predicate, value, seen=value)) is self.side


class Inspect(_StepFunction, MapFunction):
    def open(self, runtime_context: RuntimeContext) -> None:
        self.inspector = self._op().inspector
        self.worker = runtime_context.get_index_of_this_subtask()

    def map(self, value: Any) -> Any:
        self._run(self.inspector, self.step_id, value, 0, self.worker, seen=value)
        return value


class MergedTimeMs(TimestampAssigner):
    """Timestamps for a stream merged in event-time order
    (:class:`~riskguard.connectors.kafka.merge.PartitionMerge`): a record's event time
    in ms, a :class:`~riskguard.connectors.kafka.merge.Frontier` one ms past its own (so
    a monotonous watermark reaches it), and anything else (dead letters, acks) the
    latest timestamp given, so only records and frontiers move the watermark."""

    def __init__(self) -> None:
        self.last = 0

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        from riskguard.connectors.kafka.merge import Frontier  # noqa: PLC0415
        from riskguard.schemas.audit import DeadLetter  # noqa: PLC0415

        rec = value[1]
        if type(rec) is Frontier:  # all before it (stamped up to last) is out
            self.last = max(self.last + 1, rec.ts // 1_000_000 + 1)
        elif type(rec) is not DeadLetter and type(getattr(rec, "ts", None)) is int:
            self.last = max(self.last, rec.ts // 1_000_000)
        return self.last


def _event_ns(held: tuple[int, int, Any]) -> int:
    return held[1]


def _listed(result: tuple[Any, bool]) -> tuple[list[Any], bool]:
    return list(result[0]), result[1]


Pending = list[tuple[int, int, Any]]
"""Records a step holds for the watermark: (timestamp ms, event time ns, record)."""


def _resumed(snapshot: Any, pending: Pending) -> Held:
    return Held(None, snapshot, pending)


class Held:
    """A key's live logic and the records it holds back, as Flink state holds them:
    pickled, the logic's snapshot (taken then) and those records; unpickled, the
    snapshot the builder resumes from."""

    __slots__ = ("logic", "pending", "snapshot", "timer_ms")

    def __init__(self, logic: Any, snapshot: Any = None,
                 pending: Pending | None = None) -> None:
        self.logic = logic
        self.snapshot = snapshot
        self.pending = pending or []
        self.timer_ms: int | None = None  # the logic's own deadline's timer

    def __reduce__(self) -> tuple[Any, tuple[Any, Pending]]:
        snap = self.logic.snapshot() if self.logic is not None else self.snapshot
        return _resumed, (snap, self.pending)


class StatefulBatch(_StepFunction, KeyedProcessFunction):
    """One bytewax stateful-batch logic per key, its snapshot in Flink keyed state.

    Each record is held until the watermark passes its time; then the logic gets
    everything held up to there as one batch, in time order (a logic with an ``order``
    sorts it again by that): every step sees its records in event-time order whatever
    order the streams merged into it arrived in, and no path runs ahead of another.
    A record without a timestamp, or any record of a step built with ``hold=False``
    (one that orders its input itself), goes at once.
    """

    def __init__(self, ref: FlowRef, step_id: str, hold: bool = True) -> None:
        super().__init__(ref, step_id)
        self.hold = hold

    def open(self, runtime_context: RuntimeContext) -> None:
        self.builder = self._op().builder
        self.state = runtime_context.get_state(
            ValueStateDescriptor("logic", Types.PICKLED_BYTE_ARRAY()))
        self.live: dict[str, Held] = {}  # this task's logics (the state is the truth)

    def _held(self, key: str, ctx: Any) -> Held:
        held = self.live.get(key)
        if held is None:
            stored = self.state.value()
            if stored is None:
                held = Held(self.builder(None))
            else:
                held = Held(self.builder(stored.snapshot), pending=stored.pending)
            self.live[key] = held
            ctx.timer_service().register_event_time_timer(EOF_TIMER_MS)
        return held

    def _after(self, key: str, held: Held, outs: Any, discard: bool,
               ctx: Any) -> Iterator[tuple[str, Any]]:
        timers = ctx.timer_service()
        if discard:
            self.live.pop(key, None)
            self.state.clear()
            if held.timer_ms is not None:
                timers.delete_processing_time_timer(held.timer_ms)
        else:
            self.state.update(held)  # pickled (snapshot taken) when Flink writes it
            at: datetime | None = held.logic.notify_at()
            # the first ms at or after the deadline: a timer on the ms before it would
            # fire early, find the deadline not yet due, and never come again
            want = None if at is None else math.ceil(at.timestamp() * 1000)
            if want != held.timer_ms:
                if held.timer_ms is not None:
                    timers.delete_processing_time_timer(held.timer_ms)
                if want is not None:
                    timers.register_processing_time_timer(want)
                held.timer_ms = want
        for out in outs:
            yield key, out

    def _feed(self, held: Held, values: list[Any], seen: Any) -> tuple[list[Any], bool]:
        return self._run(lambda: _listed(held.logic.on_batch(values)), seen=seen)

    def process_element(self, value: tuple[str, Any], ctx: Any) -> Iterator[tuple[str, Any]]:
        key = value[0]
        held = self._held(key, ctx)
        at_ms = ctx.timestamp()
        if at_ms is not None and self.hold:
            ns = _event_ts(value[1])
            held.pending.append((at_ms, at_ms * 1_000_000 if ns is None else ns, value[1]))
            ctx.timer_service().register_event_time_timer(at_ms)
            self.state.update(held)
            return
        outs, discard = self._feed(held, [value[1]], value)
        yield from self._after(key, held, outs, discard, ctx)

    def _release(self, held: Held, upto_ms: int) -> list[Any]:
        """The held records the watermark has passed, in event-time order (ties in
        arrival order)."""
        if not held.pending:
            return []
        ready = [v for t, _ns, v in sorted(held.pending, key=_event_ns) if t <= upto_ms]
        held.pending = [p for p in held.pending if p[0] > upto_ms]
        return ready

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[tuple[str, Any]]:
        key = ctx.get_current_key()
        if key not in self.live and self.state.value() is None:
            return  # discarded since
        held = self._held(key, ctx)
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            ready = self._release(held, timestamp)
            outs, discard = self._feed(held, ready, ready) if ready else ([], False)
            if timestamp >= EOF_TIMER_MS and not discard:
                more, discard = self._run(lambda: _listed(held.logic.on_eof()))
                outs.extend(more)
        else:
            outs, discard = [], False
            if held.timer_ms is not None and timestamp >= held.timer_ms:
                held.timer_ms = None  # fired: set again below if the deadline stays
                at = held.logic.notify_at()
                if not discard and at is not None and at <= datetime.now(UTC):
                    more, discard = self._run(lambda: _listed(held.logic.on_notify()))
                    outs.extend(more)
        yield from self._after(key, held, outs, discard, ctx)
