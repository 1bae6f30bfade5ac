"""Segments of a flow as Flink operators: one Python operator a segment, fed a tick at
a time, with event time and order kept in Java.

A job's records reach Python only in a :class:`TickSegment`, a keyed process function
hosting one :class:`~riskguard.flink.segment.Segment` per key. Each record arrives as
a row (:data:`ROW_FIELDS`: the segment key, the segment input it feeds, its event time
in ns, its source and its position there, and its bytes); Flink stamps it with its
event time and moves the watermark, all in Java. The function holds a tick's rows
with one event-time timer for the tick, and when the watermark passes the tick hands
them to the segment at once, in event time and then source order, so every run
takes same-time records in the same order whatever order partitions were read in.
What leaves is a row of the same shape: for another segment (its key and input), or
for a sink (:data:`SINK`, the sink's name as its input, the Kafka key as its source).

Rows carry bytes (``PRIMITIVE_ARRAY(BYTE)``), never pickles: a segment's records are
msgspec-encoded (:mod:`riskguard.flink.wire`) where they cross.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    RuntimeContext,
    TimeDomain,
)
from pyflink.datastream.data_stream import KeyedStream
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor
from pyflink.java_gateway import get_gateway
from riskguard.flink.graph import FlowRef
from riskguard.flink.plan import SegmentPlan
from riskguard.flink.segment import Segment, deadline_ms
from riskguard.flink.wire import pack_row, unpack_row
from riskguard.operators.core.clock import claim_worker, step_event_time

ROW_FIELDS = ["k", "port", "ts", "src", "pos", "v"]
ROW = Types.ROW_NAMED(ROW_FIELDS, [Types.STRING(), Types.STRING(), Types.LONG(),
                                   Types.STRING(), Types.LONG(),
                                   Types.PRIMITIVE_ARRAY(Types.BYTE())])
"""A record between operators: segment key, input (or sink) name, event time (ns),
source (``topic/partition``, a segment key, or a Kafka key), position, bytes."""

VALUE = Types.ROW_NAMED(ROW_FIELDS[1:], [Types.STRING(), Types.LONG(), Types.STRING(),
                                         Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
KEYED_ROW = Types.ROW([Types.STRING(), VALUE])
"""A row as a keyed operator takes it: its key, and the rest (:data:`VALUE`)."""

PROCESS_MODE = "_python_worker_execution_mode"
"""PyFlink's switch for where a local job's Python functions run: in the client's own
interpreter (``loopback``, its default on a mini-cluster, where every Python worker
shares one interpreter lock) or in worker processes of their own (``process``)."""


def worker_processes() -> None:
    """Run a local job's Python workers in processes of their own, as a cluster does,
    unless the environment says otherwise."""
    os.environ.setdefault(PROCESS_MODE, "process")


JVM_ARGS = "JVM_ARGS"
"""The options PyFlink starts a local job's JVM with."""

QUICK_JVM = "-XX:TieredStopAtLevel=1"
"""Just-in-time compilation by C1 only: a backtest on a mini-cluster runs for a minute or
two, and the C2 compiler's threads took more CPU than the job's own over two demo copies
(41 against 25 s of the JVM's CPU, 2026-11-27)."""


def quick_jvm() -> None:
    """Start a local job's JVM with :data:`QUICK_JVM`, unless ``$JVM_ARGS`` says
    otherwise (a job that runs for hours is better off with C2)."""
    os.environ.setdefault(JVM_ARGS, QUICK_JVM)


SINKS = OutputTag("sinks", ROW)
"""Where a segment whose main output feeds another segment puts its sinks' rows."""

EOF_TIMER_MS = 2**63 - 2
"""An event-time timer only the final watermark of a bounded input reaches."""

MAX_MS = (2**63 - 1) // 1_000_000
"""The latest ms whose ns fits a row's event time."""


def keyed(stream: DataStream) -> KeyedStream:
    """``stream`` of :data:`KEYED_ROW` keyed by its first field in Java (PyFlink's
    ``key_by`` runs a Python function a record to pick the key, and to pair them)."""
    gateway = get_gateway()
    j_keyed = stream._j_data_stream.keyBy(
        gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, VALUE, stream)


class TickSegment(KeyedProcessFunction):
    """A segment of the flow ``ref`` builds (:class:`~riskguard.flink.plan.SegmentPlan`),
    one :class:`~riskguard.flink.segment.Segment` a key, fed a tick (``tick_ms`` of
    event time) at once when the watermark passes it.

    With ``commit_ms``, each key's segment snapshot is written to Flink state at most
    that often (processing time), and the rows it took since are kept in a list state
    beside it: a restore resumes from the snapshot and takes those rows again, as
    bytewax resumes from its last epoch's snapshot and reads on from there (what it
    writes twice has the same ids). Without, the function keeps no state (a backtest).
    """

    def __init__(self, ref: FlowRef, plan: SegmentPlan, tick_ms: int,
                 commit_ms: int | None = None, worker: tuple[int, int] = (0, 1)) -> None:
        self.ref = ref
        self.plan = plan
        self.tick_ms = tick_ms
        self.commit_ms = commit_ms
        self.worker = worker

    def open(self, runtime_context: RuntimeContext) -> None:
        self.steps = self.plan.steps_of(self.ref.steps())
        self.decoders = self.plan.decoders(self.ref)
        self.encoders = self.plan.encoders(self.ref)
        self.routed = frozenset(name for name, _key in self.plan.routes)
        self.timed = {port for port, _sid, kind in self.plan.inputs if kind != "wire"}
        self.live: dict[str, Segment] = {}
        self.ticks: dict[str, dict[int, list[Row]]] = {}
        self.committed: dict[str, float] = {}
        self.high: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.trace = Trace(os.environ.get(TRACE_ENV))
        if self.commit_ms is not None:
            self.snap = runtime_context.get_state(
                ValueStateDescriptor("segment", Types.PICKLED_BYTE_ARRAY()))
            self.since = runtime_context.get_list_state(
                ListStateDescriptor("since", Types.PRIMITIVE_ARRAY(Types.BYTE())))
            self.fed = runtime_context.get_state(ValueStateDescriptor("fed", Types.LONG()))
        self.replayed: list[tuple[str, Any]] = []

    def _segment(self, key: str, ctx: Any) -> Segment:
        seg = self.live.get(key)
        if seg is None:
            state = None
            if self.commit_ms is not None:
                state = self.snap.value()
            seg = self.live[key] = self.plan.segment(self.steps, state)
            self.ticks[key] = {}
            self.committed[key] = time.monotonic()
            ctx.timer_service().register_event_time_timer(EOF_TIMER_MS)
            if state is not None:
                self._resume(key, seg, ctx)
        return seg

    def _resume(self, key: str, seg: Segment, ctx: Any) -> None:
        """What the key took after its snapshot, again: the ticks it had fed before it
        stopped go through at once (before any deadline is looked at, so the logics are
        where they were), each as it went then; the rest waits for its tick."""
        fed = self.fed.value()
        for *row, at_ms in (unpack_row(b) for b in self.since.get() or ()):
            self._hold(key, row, at_ms, ctx)
        held = self.ticks[key]
        claim_worker(*self.worker)
        for tick_end in sorted(t for t in held if fed is not None and t <= fed):
            rows = sorted(held.pop(tick_end), key=_order)
            self._run(key, functools.partial(seg.feed, self._inputs(rows)), self.replayed,
                      rows)

    def _tick_end(self, at_ms: int) -> int:
        """The last ms of the tick a row stamped ``at_ms`` (its event time, or the tick
        another segment made it in) falls in: the watermark passing it fires the tick's
        timer."""
        return min((at_ms // self.tick_ms + 1) * self.tick_ms - 1, EOF_TIMER_MS)

    def _hold(self, key: str, row: Any, at_ms: int, ctx: Any) -> None:
        tick_end = self._tick_end(at_ms)
        held = self.ticks[key]
        if tick_end not in held:
            held[tick_end] = []
            ctx.timer_service().register_event_time_timer(tick_end)
        held[tick_end].append(row)

    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        self.trace.once("first_input")
        key = ctx.get_current_key()[0]
        seg = self._segment(key, ctx)
        if value[1] is None:  # no event time of its own: the latest taken before it
            value = Row(value[0], self.seen.get(key, 0), *value[2:])
        elif value[0] in self.timed:  # the input's time, not a tick another segment made
            self.seen[key] = max(self.seen.get(key, 0), value[1])
        # the row's own time, not the record's: a table turned into a stream carries
        # Flink's watermark but not each record's timestamp (it is Long.MIN_VALUE)
        at_ms = value[1] // 1_000_000
        if self.commit_ms is not None:
            self.since.add(pack_row(value, at_ms))
        if self._tick_end(at_ms) > ctx.timer_service().current_watermark():
            self._hold(key, value, at_ms, ctx)
            out, self.replayed = self.replayed, []
            return self._rows(out, at_ms)
        # behind the watermark (its tick has gone): at once, for the segment's own
        # lateness rules to take or dead-letter it
        claim_worker(*self.worker)
        out, self.replayed = self.replayed, []
        self._run(key, functools.partial(seg.feed, self._inputs([value]), _now()), out,
                  [value])
        self._after(key, seg, ctx)
        return self._rows(out, at_ms)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        key = ctx.get_current_key()[0]
        seg = self._segment(key, ctx)
        claim_worker(*self.worker)
        out, self.replayed = self.replayed, []
        made: list[tuple[int, list[tuple[str, Any]]]] = [(timestamp, out)]
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            held = self.ticks[key]
            for tick_end in sorted(t for t in held if t <= timestamp):
                rows = held.pop(tick_end)
                rows.sort(key=_order)
                # what each tick makes is stamped with that tick (a timer usually has
                # one: every tick has its own)
                made.append((tick_end, []))
                self._run(key, functools.partial(seg.feed, self._inputs(rows), _now()),
                          made[-1][1], rows)
                if self.commit_ms is not None:
                    self.fed.update(tick_end)
            if timestamp >= EOF_TIMER_MS:
                made.append((timestamp, []))
                self._run(key, seg.eof, made[-1][1], ())
        else:
            self._run(key, lambda: seg.notify(_now()), out, ())
        self._after(key, seg, ctx)
        return (row for at_ms, part in made for row in self._rows(part, at_ms))

    def _inputs(self, rows: list[Row]) -> dict[str, list[Any]]:
        batches: dict[str, list[Any]] = {}
        for row in rows:
            batches.setdefault(row[0], []).append(row)
        return {port: self.decoders[port](rs) for port, rs in batches.items()}

    def _run(self, key: str, call: Callable[[], list[tuple[str, Any]]],
             out: list[tuple[str, Any]], rows: Any) -> None:
        high = self.high.get(key, 0)
        timed = self.timed
        for row in rows:  # the time the input has reached, not what crossed from a segment
            if row[0] in timed:
                high = max(high, row[1])
        self.high[key] = high
        token = step_event_time.set(high)
        try:
            out.extend(call())
        finally:
            step_event_time.reset(token)

    def _rows(self, out: list[tuple[str, Any]], at_ms: int) -> Iterator[Row]:
        """What the segment made, as rows: each to another segment stamped with the
        tick it was made in (and numbered in the order made), or to a sink."""
        if out:
            self.trace.once("first_output")
        encoders = self.encoders
        at_ns = min(at_ms, MAX_MS) * 1_000_000
        routed = self.routed
        for n, (name, item) in enumerate(out):
            if not routed or name in routed:
                yield from encoders[name](name, item, n, at_ns)
            else:  # the main output carries rows for the next segment; sinks' go aside
                for row in encoders[name](name, item, n, at_ns):
                    yield SINKS, row

    def _after(self, key: str, seg: Segment, ctx: Any) -> None:
        due = seg.next_due()
        if due is not None:
            ctx.timer_service().register_processing_time_timer(deadline_ms(due))
        if self.commit_ms is None:
            return
        now = time.monotonic()
        if (now - self.committed[key]) * 1000 >= self.commit_ms:
            self.committed[key] = now
            self.snap.update(seg.snapshot())
            self.since.clear()
            for tick_end, rows in self.ticks[key].items():  # taken, not yet fed
                for row in rows:
                    self.since.add(pack_row(row, tick_end))


TRACE_ENV = "RISKGUARD_FLINK_TRACE"
"""A file each segment operator appends the wall time of its first input and its first
output to (a bench's measure of how soon output follows the start of processing)."""


class Trace:
    """Each named moment's wall time, once, as a line of ``path`` (nothing without)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.seen: set[str] = set()

    def once(self, what: str) -> None:
        if self.path is None or what in self.seen:
            return
        self.seen.add(what)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{what} {time.time():.3f} {os.getpid()}\n")


def _order(row: Any) -> tuple[int, str, int]:
    return row[1], row[2], row[3]


def _now() -> datetime:
    return datetime.now(UTC)
