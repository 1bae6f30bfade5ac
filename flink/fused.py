"""Segments of a flow as Flink operators: one Python operator a segment, fed a tick at
a time, with event time and order kept in Java.

Each record arrives as a row (:data:`ROW_FIELDS`). Java moves the watermark and makes a
key's rows of one tick one row (:func:`tick_batches`), in event time and then source
order, so same-time records always come in the same order. Records reach Python only in
a :class:`TickBatchSegment`, hosting one :class:`~riskguard.flink.segment.Segment` per
key; what leaves is a row of the same shape, for another segment or for a sink
(:data:`SINKS`). Rows carry msgspec-encoded bytes (:mod:`riskguard.flink.wire`), never
pickles.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Iterator, Sequence
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
from riskguard.flink.segment import KeyRunner, deadline_ms
from riskguard.flink.wire import CROSSED, Wire, pack_crossed
from riskguard.flink.worker_metrics import serve_worker_metrics

from riskguard.environment import FLINK_TRACE

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
"""Just-in-time compilation by C1 only, for a job on a local mini-cluster (a backtest, or
the live guard run by ``riskguard run --engine flink``): such a job runs for minutes, and
C2's compiler threads take more CPU than the job's own over that time, and delay its
first output (docs/engines.md). A cluster's TaskManagers take their JVM options from the
cluster's configuration."""


def quick_jvm() -> None:
    """Start a local job's JVM with :data:`QUICK_JVM`, unless ``$JVM_ARGS`` says
    otherwise (a local job that runs for hours is better off with C2)."""
    os.environ.setdefault(JVM_ARGS, QUICK_JVM)


def launch_jvm() -> None:
    """Start the client's JVM (PyFlink's gateway) in a thread, so that it starts while
    the client plans the job from the flow, which needs no JVM. A JVM that fails to
    start fails where the job next asks for it, with PyFlink's own error."""
    def launch() -> None:
        with contextlib.suppress(Exception):
            get_gateway()

    threading.Thread(target=launch, name="riskguard-jvm", daemon=True).start()


SINKS = OutputTag("sinks", ROW)
"""Where a segment whose main output feeds another segment puts its sinks' rows."""

EOF_TIMER_MS = 2**63 - 2
"""An event-time timer only the final watermark of a bounded input reaches."""

MAX_MS = (2**63 - 1) // 1_000_000
"""The latest ms whose ns fits a row's event time."""


def keyed(stream: DataStream, value_type: Any = VALUE) -> KeyedStream:
    """``stream`` of ``(key, value)`` rows (:data:`KEYED_ROW`, or :data:`KEYED_BATCH`
    with ``value_type`` :data:`BATCH`) keyed by its first field in Java (PyFlink's
    ``key_by`` runs a Python function a record to pick the key, and to pair them)."""
    gateway = get_gateway()
    j_keyed = stream._j_data_stream.keyBy(
        gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)


BATCH = Types.ROW_NAMED(["tick", "late", "packed"],
                        [Types.LONG(), Types.BOOLEAN(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
KEYED_BATCH = Types.ROW([Types.STRING(), BATCH])
"""A tick's rows for one key, as :func:`tick_batches` makes them in Java: the tick's last
ms, whether they came behind the watermark (then one row, right after the tick of the
newest row before it), and the tick packed
as :func:`~riskguard.flink.wire.unpack_batch` reads it (one decode a tick, where rows
nested in the row cost PyFlink a decode a field)."""


def tick_batches(stream: DataStream, tick_ns: int, timed: tuple[str, ...],
                 uid: str, lead_ns: int = 0) -> KeyedStream:
    """``stream`` of :data:`KEYED_ROW` as one :data:`BATCH` a key and tick (``tick_ns``,
    whole ms), made in Java (``riskguard.flink.TickBatches``): a tumbling event-time window
    hands its rows on in event time, then source and position order, when the watermark
    passes it; a row behind the watermark goes on alone, right after the tick of the
    newest row before it (the flow judges it after the rows that made it late, as
    bytewax does). A row without event time takes the latest a ``timed`` input gave. A
    row its source holds back (a record far ahead of its Kafka partition) waits for the
    next row of its partition and goes on just before it, at the earlier time; with none,
    at its own time once that is at most ``lead_ns`` past the newest time stamped.
    The job needs the jar :func:`~riskguard.flink.java_build.job_jars` names."""
    j_stream = get_gateway().jvm.riskguard.flink.TickBatches.of(
        stream._j_data_stream, max(1, tick_ns // 1_000_000), KEYED_ROW.get_java_type_info(),
        KEYED_BATCH.get_java_type_info(), java_strings(timed), lead_ns, uid)
    return keyed(DataStream(j_stream), BATCH)


def java_strings(values: Sequence[str]) -> Any:
    """``values`` as a Java ``String[]`` (py4j passes a Python list as a ``List``)."""
    gateway = get_gateway()
    out = gateway.new_array(gateway.jvm.String, len(values))
    for i, v in enumerate(values):
        out[i] = v
    return out


class TickBatchSegment(KeyedProcessFunction):
    """A segment of the flow ``ref`` builds (:class:`~riskguard.flink.plan.SegmentPlan`),
    one :class:`~riskguard.flink.segment.KeyRunner` a key, fed the ticks
    :func:`tick_batches` makes: one call, one state write and one list of outputs a tick.

    With ``commit_ms``, each key's snapshot is written to Flink state at most that often
    (processing time), and the calls since are kept in a list state beside it; a restore
    replays them, making what the lost run made, with the same ids. Without, the
    function keeps no state (a backtest). A restored snapshot with state for a step the
    flow no longer has fails the key's restore, unless ``allow_dropped_state``."""

    def __init__(self, ref: FlowRef, plan: SegmentPlan, commit_ms: int | None = None,
                 worker: tuple[int, int] = (0, 1), *,
                 allow_dropped_state: bool = False) -> None:
        self.ref = ref
        self.plan = plan
        self.commit_ms = commit_ms
        self.worker = worker
        self.allow_dropped_state = allow_dropped_state

    def open(self, runtime_context: RuntimeContext) -> None:
        self.trace = Trace(os.environ.get(FLINK_TRACE))
        self.trace.once("open")
        serve_worker_metrics()  # once a worker process, with $RISKGUARD_METRICS_PORT
        threadless_state_sampler()
        self.steps = self.plan.steps_of(self.ref.steps())
        self.decoders = self.plan.decoders()
        self.encoders = self.plan.encoders()
        self.routes = dict(self.plan.routes)
        self.wire = Wire()
        self.timed = frozenset(port for port, _sid, kind in self.plan.inputs if kind != "wire")
        self.live: dict[str, KeyRunner] = {}
        self.committed: dict[str, float] = {}
        if self.commit_ms is not None:
            self.snap = runtime_context.get_state(
                ValueStateDescriptor("segment", Types.PICKLED_BYTE_ARRAY()))
            self.since = runtime_context.get_list_state(  # the calls since, as logged
                ListStateDescriptor("since", Types.PRIMITIVE_ARRAY(Types.BYTE())))
        self.replayed: list[tuple[str, Any]] = []
        self.trace.once("opened")

    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        self.trace.once("first_input")
        key = ctx.get_current_key()[0]
        runner = self._runner(key, ctx)
        if value[1]:
            self.trace.count("late_rows")
        tick_end, made = runner.tick(value[2], _now())
        out, self.replayed = self.replayed, []
        out.extend(made)
        self._after(key, runner, ctx)
        return self._rows(out, tick_end)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        key = ctx.get_current_key()[0]
        runner = self._runner(key, ctx)
        out, self.replayed = self.replayed, []
        if ctx.time_domain() == TimeDomain.EVENT_TIME:  # only the end's: EOF_TIMER_MS
            out.extend(runner.eof())
        else:
            out.extend(runner.notify(_now()))
        self._after(key, runner, ctx)
        return self._rows(out, timestamp)

    def _runner(self, key: str, ctx: Any) -> KeyRunner:
        """The key's runner: new, or restored (what the replay made goes out with the
        next output)."""
        runner = self.live.get(key)
        if runner is not None:
            return runner
        make = functools.partial(self.plan.segment, self.steps,
                                 allow_dropped_state=self.allow_dropped_state)
        if self.commit_ms is None:
            runner = KeyRunner(make(None), self.decoders, self.timed, self.worker)
        else:
            runner, self.replayed = KeyRunner.resume(
                make, self.snap.value() or (None, 0), self.since.get() or (),
                self.decoders, self.timed, self.worker, log=self.since.add)
        self.live[key] = runner
        self.committed[key] = time.monotonic()
        ctx.timer_service().register_event_time_timer(EOF_TIMER_MS)
        return runner

    def _rows(self, out: list[tuple[str, Any]], at_ms: int) -> Iterator[Row]:
        """What the segment made, as rows: one an item for a sink; one a segment key for
        another segment (:func:`~riskguard.flink.wire.pack_crossed`)."""
        if out:
            self.trace.once("first_output")
        encoders, routes, wire = self.encoders, self.routes, self.wire
        at_ns = min(at_ms, MAX_MS) * 1_000_000
        crossing: dict[str, list[tuple[str, bytes]]] = {}
        for n, (name, item) in enumerate(out):
            key = routes.get(name)
            if key is not None:
                crossing.setdefault(key, []).append((name, wire.encode(item)))
            elif routes:  # the main output carries rows for the next segment; sinks' aside
                for row in encoders[name](name, item, n, at_ns):
                    yield SINKS, row
            else:
                yield from encoders[name](name, item, n, at_ns)
        for key, items in crossing.items():
            yield Row(key, Row(CROSSED, at_ns, "", 0, pack_crossed(items)))

    def _after(self, key: str, runner: KeyRunner, ctx: Any) -> None:
        """The next deadline's timer; with ``commit_ms``, a snapshot when due."""
        due = runner.segment.next_due()
        if due is not None:
            ctx.timer_service().register_processing_time_timer(deadline_ms(due))
        if self.commit_ms is None:
            return
        now = time.monotonic()
        if (now - self.committed[key]) * 1000 >= self.commit_ms:
            self.committed[key] = now
            self.snap.update(runner.snapshot())
            self.since.clear()


def threadless_state_sampler() -> None:
    """Start and stop Beam's state sampler without its thread, in this Python worker.

    The thread only feeds Beam's progress reports, which Flink does not read, yet each
    bundle ends by joining it, waiting out its sleep (up to 200 ms; docs/engines.md).
    Called from an operator's ``open``, after Beam makes the sampler and before it starts
    it: the sampler is patched on its class."""
    from apache_beam.runners.worker import statesampler  # noqa: PLC0415  (worker only)

    sampler = statesampler.StateSampler
    if getattr(sampler, "riskguard_threadless", False):
        return

    def start(self: Any) -> None:
        self.tracked_thread = threading.current_thread()
        statesampler.set_current_tracker(self)
        self.started = True

    def stop(self: Any) -> None:
        statesampler.set_current_tracker(None)
        self.finished = True

    sampler.start, sampler.stop = start, stop
    sampler.riskguard_threadless = True


class Trace:
    """Each named moment's wall time, once, as a line of ``path``, and each counted
    thing's running count, a line a count (nothing without a path).

    With ``$RISKGUARD_FLINK_TRACE`` naming the file, the live guard's Flink client
    appends the wall time of its start (``client``, once its modules are imported) and
    of the job's submission (``submitted``) to it, and each segment operator the wall
    time of its opening (``open``, and ``opened`` once it has built its flow), its first
    input and its first output (a bench's measure of start-up, and of how soon output
    follows the start of processing), and its running count of rows that came behind
    the watermark (``late_rows``).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.seen: set[str] = set()
        self.counts: dict[str, int] = {}

    def once(self, what: str) -> None:
        if self.path is None or what in self.seen:
            return
        self.seen.add(what)
        self._write(f"{what} {time.time():.3f} {os.getpid()}")

    def count(self, what: str) -> None:
        """One more ``what``: a line ``what TIME PID COUNT``."""
        if self.path is None:
            return
        n = self.counts[what] = self.counts.get(what, 0) + 1
        self._write(f"{what} {time.time():.3f} {os.getpid()} {n}")

    def _write(self, line: str) -> None:
        assert self.path is not None
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _now() -> datetime:
    return datetime.now(UTC)
