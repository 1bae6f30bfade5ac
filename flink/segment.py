"""A part of a flow run in one process, the way one bytewax worker runs it.

:class:`Segment` runs a batch through some of a flow's core steps
(:mod:`riskguard.flink.graph`) in build order: a map step calls its function once on
the whole batch, a branch splits it, a merge joins its inputs in order, and a keyed step
hands each key its share, keys in sorted order (as bytewax's ``stateful_batch`` does).
Nothing inside a segment is serialized. It does not import Flink.

>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource
>>> from riskguard.flink.graph import core_steps
>>> flow = Dataflow("doc")
>>> nums = op.input("in", flow, TestingSource([]))
>>> keyed = op.key_on("parity", nums, lambda x: "even" if x % 2 == 0 else "odd")
>>> sums = op.stateful_map("sum", keyed, lambda s, x: ((s or 0) + x, (s or 0) + x))
>>> op.output("out", sums, TestingSink([]))
>>> seg = Segment.of(core_steps(flow))
>>> seg.feed({"in": [1, 2, 3, 4]})
[('out', ('even', 2)), ('out', ('even', 6)), ('out', ('odd', 1)), ('out', ('odd', 4))]
>>> back = Segment.of(core_steps(flow), state=seg.snapshot())
>>> back.feed({"in": [5]})
[('out', ('odd', 9))]

State for a step the flow no longer has (here ``sum`` renamed ``total``) is refused,
not dropped, unless dropping it is asked for:

>>> renamed = Dataflow("doc")
>>> keyed = op.key_on("parity", op.input("in", renamed, TestingSource([])), str)
>>> op.output("out", op.stateful_map("total", keyed, lambda s, x: (x, x)), TestingSink([]))
>>> Segment.of(core_steps(renamed), state=seg.snapshot())
Traceback (most recent call last):
...
riskguard.errors.ConfigError: restored state: ...; got state for 'doc.sum...'
>>> Segment.of(core_steps(renamed), state=seg.snapshot(), allow_dropped_state=True).keys()
0
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from riskguard.flink.graph import CoreStep
from riskguard.flink.wire import CROSSED, PackedRow, unpack_batch, unpack_crossed
from riskguard.operators.core.clock import call_time, claim_worker, step_event_time

from riskguard.errors import ConfigError

_log = logging.getLogger(__name__)

State = dict[str, dict[Any, Any]]
"""A segment's keyed state: step id -> key -> the logic's snapshot."""

_STATELESS = frozenset({"flat_map_batch", "branch", "merge", "redistribute",
                        "inspect_debug"})


@dataclass
class _Keyed:
    """One keyed step's logics by key, and each one's ``notify_at`` deadline."""

    builder: Callable[[Any], Any]
    logics: dict[Any, Any] = field(default_factory=dict)
    due: dict[Any, datetime] = field(default_factory=dict)


class Segment:
    """Core steps run in process over batches (see the module docstring).

    ``steps`` are in build order; ``inputs`` maps an input name to the stream id it
    feeds, ``outputs`` a stream id to the name its items leave under. ``state`` resumes
    the keyed steps from a :meth:`snapshot`; a snapshot with state for a step id the
    segment does not have (a step renamed or removed since) is refused, unless
    ``allow_dropped_state`` says to drop that state."""

    def __init__(self, steps: Sequence[CoreStep], inputs: Mapping[str, str],
                 outputs: Mapping[str, str], state: State | None = None, *,
                 allow_dropped_state: bool = False) -> None:
        for s in steps:
            if s.kind not in _STATELESS and s.kind != "stateful_batch":
                raise ConfigError(f"step {s.step_id!r}", "a core step a segment runs", s.kind)
        self.steps = list(steps)
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.keyed: dict[str, _Keyed] = {
            s.step_id: _Keyed(s.op.builder) for s in self.steps if s.kind == "stateful_batch"}
        unknown = sorted(step_id for step_id, snaps in (state or {}).items()
                         if snaps and step_id not in self.keyed)
        if unknown and not allow_dropped_state:
            raise ConfigError(
                "restored state", "state only for steps the flow has (a step renamed or "
                "removed drops its state: allow that with --allow-dropped-state)",
                found_text=f"state for {', '.join(map(repr, unknown))}")
        if unknown:
            _log.warning("dropping the restored state of steps the flow no longer has: %s",
                         ", ".join(unknown))
        for step_id, snaps in (state or {}).items():
            if step_id in self.keyed:
                k = self.keyed[step_id]
                k.logics = {key: k.builder(snap) for key, snap in snaps.items()}
                k.due = {key: at for key, lg in k.logics.items()
                         if (at := lg.notify_at()) is not None}

    @classmethod
    def of(cls, steps: Sequence[CoreStep], state: State | None = None, *,
           allow_dropped_state: bool = False) -> Segment:
        """A segment of a whole flow, its input and output steps named as in the flow."""
        inner = [s for s in steps if s.kind not in ("input", "output")]
        inputs = {s.name: s.downs["down"] for s in steps if s.kind == "input"}
        outputs = {s.ups[0]: s.name for s in steps if s.kind == "output"}
        return cls(inner, inputs, outputs, state, allow_dropped_state=allow_dropped_state)

    def feed(self, batches: Mapping[str, list[Any]], now: datetime | None = None,
             ) -> list[tuple[str, Any]]:
        """Run one batch per input name through every step; what leaves, in order, as
        ``(output name, item)``. With ``now``, each logic whose deadline has come is
        notified too, after its step's batch (as bytewax does in an epoch)."""
        streams: dict[str, list[Any]] = {}
        for name, items in batches.items():
            if items:
                streams.setdefault(self.inputs[name], []).extend(items)
        return self._pass(streams, now=now)

    def notify(self, now: datetime) -> list[tuple[str, Any]]:
        """Notify every logic whose deadline is at or before ``now``; what leaves."""
        return self._pass({}, now=now)

    def eof(self) -> list[tuple[str, Any]]:
        """The end of the input: each keyed step's logics' ``on_eof`` in build order
        (what one step says at its end reaches the next before that one's end)."""
        return self._pass({}, eof=True)

    def next_due(self) -> datetime | None:
        """The earliest deadline of any logic, if any."""
        return min((at for k in self.keyed.values() for at in k.due.values()), default=None)

    def snapshot(self) -> State:
        """Every keyed step's logics' snapshots (taken now), by step id and key."""
        return {step_id: {key: lg.snapshot() for key, lg in k.logics.items()}
                for step_id, k in self.keyed.items() if k.logics}

    def keys(self) -> int:
        """How many keyed logics the segment holds."""
        return sum(len(k.logics) for k in self.keyed.values())

    def _pass(self, streams: dict[str, list[Any]], now: datetime | None = None,
              eof: bool = False) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for step in self.steps:
            made = self._step(step, streams, now, eof)
            for port, items in made.items():
                if not items:
                    continue
                sid = step.downs[port]
                name = self.outputs.get(sid)
                if name is not None:
                    out.extend((name, x) for x in items)
                streams.setdefault(sid, []).extend(items)
        return out

    def _step(self, step: CoreStep, streams: dict[str, list[Any]], now: datetime | None,
              eof: bool) -> dict[str, list[Any]]:
        if step.kind == "merge":
            return {"down": [x for u in step.ups for x in streams.get(u, ())]}
        items = streams.get(step.ups[0]) if step.ups else None
        if step.kind == "stateful_batch":
            return {"down": self._keyed_step(step.step_id, items or [], now, eof)}
        if not items:
            return {}
        if step.kind == "flat_map_batch":
            # a copy: a function may sort its batch in place, and others read it too
            return {"down": list(step.op.mapper(list(items)))}
        if step.kind == "branch":
            pred = step.op.predicate
            trues: list[Any] = []
            falses: list[Any] = []
            for x in items:
                (trues if pred(x) else falses).append(x)
            return {"trues": trues, "falses": falses}
        if step.kind == "inspect_debug":
            for x in items:
                step.op.inspector(step.step_id, x, 0, 0)
        return {"down": items}  # redistribute and inspect_debug pass their batch on

    def _keyed_step(self, step_id: str, items: list[tuple[Any, Any]], now: datetime | None,
                    eof: bool) -> list[tuple[Any, Any]]:
        k = self.keyed[step_id]
        out: list[tuple[Any, Any]] = []
        if items:
            by_key: dict[Any, list[Any]] = {}
            for key, value in items:
                by_key.setdefault(key, []).append(value)
            for key in sorted(by_key):
                logic = k.logics.get(key)
                if logic is None:
                    logic = k.logics[key] = k.builder(None)
                self._called(k, key, logic, logic.on_batch(by_key[key]), out)
        if now is not None and k.due:
            for key in sorted(key for key, at in k.due.items() if at <= now):
                logic = k.logics[key]
                self._called(k, key, logic, logic.on_notify(), out)
        if eof:
            for key in sorted(k.logics):
                logic = k.logics[key]
                self._called(k, key, logic, logic.on_eof(), out)
        return out

    @staticmethod
    def _called(k: _Keyed, key: Any, logic: Any, result: tuple[Iterable[Any], bool],
                out: list[tuple[Any, Any]]) -> None:
        emitted, discard = result
        out.extend((key, x) for x in emitted)
        if discard:
            k.logics.pop(key, None)
            k.due.pop(key, None)
            return
        at = logic.notify_at()
        if at is None:
            k.due.pop(key, None)
        else:
            k.due[key] = at


def deadline_ms(at: datetime) -> int:
    """The first whole ms at or after ``at``: a timer on the ms before a deadline fires
    early, finds it not yet due, and never comes again.

    >>> from datetime import UTC
    >>> deadline_ms(datetime(2026, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)) % 1000
    2
    """
    return math.ceil(at.timestamp() * 1000)


Decoders = Mapping[str, Callable[[list[Sequence[Any]]], list[Any]]]
"""Each segment input's rows into the items its stream carries."""

_CALL = msgspec.msgpack.Encoder()
_CALL_DECODER = msgspec.msgpack.Decoder(tuple[int, bytes | None])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class KeyRunner:
    """One key's :class:`Segment` run a call at a time, as an engine's keyed operator
    runs it: a packed tick of rows (:func:`~riskguard.flink.wire.unpack_batch`) or a look
    at the deadlines, each at the wall-clock time the engine gives (what
    :func:`~riskguard.operators.core.clock.call_clock` reads).

    With ``log``, each call is also handed to it as bytes (wall-clock µs and tick), for
    the engine to keep beside the last :meth:`snapshot`; :meth:`resume` replays them, so
    a restored key makes what the lost run made, deadlines between ticks included. Event
    time follows from the snapshot and the calls, so it is not logged."""

    def __init__(self, segment: Segment, decoders: Decoders, timed: frozenset[str],
                 worker: tuple[int, int] = (0, 1), high: int = 0,
                 log: Callable[[bytes], Any] | None = None) -> None:
        self.segment = segment
        self.decoders = decoders
        self.timed = timed
        self.worker = worker
        self.high = high  # the latest event time (ns) a timed input has given
        self.log = log

    def tick(self, packed: bytes, now: datetime) -> tuple[int, list[tuple[str, Any]]]:
        """A packed tick through the segment, then the deadlines due at ``now``: the
        tick's last ms, and what leaves."""
        tick_end, rows = unpack_batch(packed)
        feed = functools.partial(self.segment.feed, self._inputs(rows), now)
        return tick_end, self._run(feed, rows, self._logged(now, packed))

    def notify(self, now: datetime) -> list[tuple[str, Any]]:
        """The deadlines due at ``now``: what leaves."""
        return self._run(functools.partial(self.segment.notify, now), (),
                         self._logged(now, None))

    def eof(self) -> list[tuple[str, Any]]:
        """The end of the input (a bounded job's): what leaves."""
        return self._run(self.segment.eof, (), None)

    def snapshot(self) -> tuple[State, int]:
        """The segment's state and the event time reached: :meth:`resume` takes it."""
        return self.segment.snapshot(), self.high

    @classmethod
    def resume(cls, make: Callable[[State | None], Segment], snapshot: tuple[State | None, int],
               calls: Iterable[bytes], decoders: Decoders, timed: frozenset[str],
               worker: tuple[int, int] = (0, 1), log: Callable[[bytes], Any] | None = None,
               ) -> tuple[KeyRunner, list[tuple[str, Any]]]:
        """A runner from a :meth:`snapshot` and the calls logged since, replayed in order
        (not logged again), and what they made. The runner logs its next calls to ``log``.

        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSink, TestingSource
        >>> from riskguard.flink.graph import core_steps
        >>> flow = Dataflow("doc")
        >>> nums = op.key_on("k", op.input("in", flow, TestingSource([])), lambda x: "k")
        >>> op.output("out", op.stateful_map("sum", nums, lambda s, x: ((s or 0) + x,) * 2),
        ...           TestingSink([]))
        >>> make = functools.partial(Segment.of, core_steps(flow))
        >>> pack, t = msgspec.msgpack.encode, datetime(2026, 1, 1, tzinfo=UTC)
        >>> decoders = {"in": lambda rows: [msgspec.msgpack.decode(r[4]) for r in rows]}
        >>> def tick(*xs): return pack((9, [("in", 5, "", 0, pack(x)) for x in xs]))
        >>> calls = []
        >>> first = KeyRunner(make(None), decoders, frozenset({"in"}), log=calls.append)
        >>> snap = first.snapshot()
        >>> _end, out = first.tick(tick(1, 2), t)
        >>> out
        [('out', ('k', 1)), ('out', ('k', 3))]
        >>> back, again = KeyRunner.resume(make, snap, calls, decoders, frozenset({"in"}))
        >>> again == out, back.tick(tick(4), t)[1]
        (True, [('out', ('k', 7))])
        """
        state, high = snapshot
        runner = cls(make(state), decoders, timed, worker, high)
        out: list[tuple[str, Any]] = []
        for data in calls:
            at_us, packed = _CALL_DECODER.decode(data)
            now = _EPOCH + at_us * _US
            out.extend(runner.notify(now) if packed is None else runner.tick(packed, now)[1])
        runner.log = log
        return runner, out

    def _logged(self, now: datetime, packed: bytes | None) -> int:
        """``now`` in whole µs; the call logged first, if there is a ``log`` (``packed``
        None: a notify)."""
        at_us = (now - _EPOCH) // _US
        if self.log is not None:
            self.log(_CALL.encode((at_us, packed)))
        return at_us

    def _inputs(self, rows: list[PackedRow]) -> dict[str, list[Any]]:
        batches: dict[str, list[Any]] = {}
        for row in rows:
            if row[0] == CROSSED:  # a call of the segment before: its items, in order
                for sid, data in unpack_crossed(row[4]):  # type: ignore[arg-type]
                    batches.setdefault(sid, []).append((sid, row[1], "", 0, data))
            else:
                batches.setdefault(row[0], []).append(row)
        return {port: self.decoders[port](rs) for port, rs in batches.items()}

    def _run(self, call: Callable[[], list[tuple[str, Any]]], rows: Sequence[PackedRow],
             at_us: int | None) -> list[tuple[str, Any]]:
        """``call`` at the event time the rows reach, with :func:`call_clock` reading
        ``at_us`` (None: the wall clock) throughout."""
        claim_worker(*self.worker)
        high = self.high
        timed = self.timed
        # a tick's rows are in event-time order: the last timed row has its latest
        for i in range(len(rows) - 1, -1, -1):
            row = rows[i]
            if row[0] in timed:
                high = max(high, row[1])
                break
        self.high = high
        token = step_event_time.set(high)
        wall = call_time.set(None if at_us is None else at_us * 1000)
        try:
            return call()
        finally:
            call_time.reset(wall)
            step_event_time.reset(token)
