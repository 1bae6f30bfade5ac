"""The engine-neutral logic protocol and the thin bytewax adapter over it.

Every stateful operator in riskguard is a plain class with

- ``on_event(event) -> list[out]``: handle one input, return outputs;
- ``snapshot() -> state``: an independent copy of its state;
- optionally ``on_batch(events)``, ``on_eof()`` and ``next_deadline_ns()``.

It is built by a ``builder(state | None)`` that closes over configuration, so resuming
is ``builder(snapshot)``. No logic class imports bytewax: :func:`stateful_logic` is the
only bridge, storing snapshots as versioned bytes (:mod:`~riskguard.operators.core.snapshot`).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from riskguard.operators.core.admission import AdmissionConfig, KeyAdmission, Known
from riskguard.operators.core.clock import Clock, EventTicks, Tick
from riskguard.operators.core.metrics import measured_snapshot
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.signals import RiskAlert

V = TypeVar("V")
W = TypeVar("W")
V_contra = TypeVar("V_contra", contravariant=True)


def copy_state(state: Any) -> Any:
    """An independent copy of a logic's state for :meth:`Logic.snapshot` (a pickle round
    trip: faster than ``copy.deepcopy``, valid for anything a recovery store can hold).

    >>> s = {"open": [1, 2]}
    >>> c = copy_state(s)
    >>> c["open"].append(3); s
    {'open': [1, 2]}
    """
    return pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def copy_fields(obj: V, **fresh: Any) -> V:
    """A copy of ``obj`` (a plain class or dataclass instance) sharing its attributes but
    those given in ``fresh``: a snapshot copies only its mutable containers.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class S:
    ...     n: int = 0
    ...     ids: list[str] = field(default_factory=list)
    >>> s = S(1, ["a"])
    >>> c = copy_fields(s, ids=list(s.ids))
    >>> c.ids.append("b"); s.n = 2
    >>> s, c
    (S(n=2, ids=['a']), S(n=1, ids=['a', 'b']))
    """
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **fresh)
    return new


class Logic(Protocol[V_contra, W]):
    """What every riskguard logic class provides."""

    def on_event(self, event: V_contra) -> list[W]: ...

    def snapshot(self) -> Any: ...


class _Shim(StatefulBatchLogic[Any, Any, Any]):
    """Adapts a riskguard logic object to bytewax's batch logic."""

    __slots__ = ("_batch", "_deadline", "_eof", "_order", "_step", "logic")

    # one snapshot in this many, counted per step over all its keys, is also sized
    SIZE_SAMPLE = 16
    _taken: ClassVar[dict[str, int]] = {}

    def __init__(self, logic: Any, step: str = "",
                 order: Callable[[Any], Any] | None = None) -> None:
        self.logic = logic
        self._step = step
        self._order = order
        self._batch = getattr(logic, "on_batch", None)
        self._eof = getattr(logic, "on_eof", None)
        self._deadline = getattr(logic, "next_deadline_ns", None)

    @property
    def order(self) -> Callable[[Any], Any] | None:
        """The key a batch is sorted by before the logic sees it (an engine that runs
        records one at a time orders them by it itself)."""
        return self._order

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self._order is not None and len(values) > 1:
            values.sort(key=self._order)  # stable: equal keys keep their arrival order
        if self._batch is not None:
            return self._batch(values), False
        on_event = self.logic.on_event
        if len(values) == 1:
            return on_event(values[0]), False
        out: list[Any] = []
        for v in values:
            out.extend(on_event(v))
        return out, False

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self.logic.on_deadline(), False

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self._eof is not None:
            return self._eof(), False
        return (), False

    def notify_at(self) -> datetime | None:
        if self._deadline is None:
            return None
        ns = self._deadline()
        return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=UTC)

    def snapshot(self) -> Any:
        n = self._taken[self._step] = self._taken.get(self._step, 0) + 1
        return measured_snapshot(self._step, self._encoded, size=n % self.SIZE_SAMPLE == 1)

    def _encoded(self) -> Any:
        return encode_snapshot(self.logic.snapshot())


class _TimedShim(_Shim):
    """A :class:`_Shim` that adds the CPU time its logic takes to :data:`_step_cpu`."""

    __slots__ = ("_cpu",)

    def __init__(self, logic: Any, step: str, order: Callable[[Any], Any] | None,
                 cpu: dict[str, float]) -> None:
        super().__init__(logic, step, order)
        self._cpu = cpu

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        start = time.process_time()
        out, done = super().on_batch(values)
        return self._counted(out, start), done

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        start = time.process_time()
        out, done = super().on_notify()
        return self._counted(out, start), done

    def _counted(self, out: Iterable[Any], start: float) -> list[Any]:
        """``out`` as a list (a lazy logic's work is counted here, not in the next
        step), its CPU since ``start`` added to the step's."""
        made = list(out)
        self._cpu[self._step] = self._cpu.get(self._step, 0.0) + time.process_time() - start
        return made


_step_cpu: dict[str, float] | None = None


@contextmanager
def step_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds each :func:`stateful_logic` step's logic takes, by step id, for the
    keys built while this is open.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> class Count:
    ...     n = 0
    ...     def on_event(self, x): self.n += 1; return [self.n]
    ...     def snapshot(self): return self.n
    >>> flow = Dataflow("doc")
    >>> keyed = op.key_on("k", op.input("in", flow, TestingSource([1, 2, 3])), str)
    >>> op.output("out", stateful_logic("count", keyed, lambda _s: Count()), TestingSink([]))
    >>> with step_cpu() as cpu:
    ...     run_main(flow)
    >>> sorted(cpu), all(s >= 0.0 for s in cpu.values())
    (['doc.count'], True)
    """
    global _step_cpu  # noqa: PLW0603  # read once per key built, never per batch
    outer = _step_cpu
    cpu: dict[str, float] = {}
    _step_cpu = cpu
    try:
        yield cpu
    finally:
        _step_cpu = outer


event_time: Callable[[Any], int] = attrgetter("ts")
"""A record's (or tick's) event time, the usual ``order`` of :func:`stateful_logic`
(C-level: it runs once per record where market data merges)."""


event_order: Callable[[Any], tuple[int, int]] = attrgetter("ts", "input_pos")
"""A record's event time, then its place in the input (``input_pos``, numbered by a
replay: :func:`~riskguard.schemas.base.stamp_position`): the ``order`` of
:func:`stateful_logic` where streams merge. Records of one time that reach a step by two
paths then meet it in input order however the input was batched. A tick, or a record
nothing numbered (a live run), has position -1: it goes before the numbered records of
its time and keeps its arrival order among its like (C-level, as :data:`event_time`).

>>> from riskguard.operators.core.clock import Tick
>>> event_order(Tick(ts=5))
(5, -1)
"""


def values_of(kvs: list[tuple[Any, V]]) -> list[V]:
    """The values of a batch of ``(key, value)`` pairs: a keyed stream's ``key_rm``, one
    dataflow call per batch (``op.flat_map_batch(step_id, up, values_of)``).

    >>> values_of([("a", 1), ("b", 2)])
    [1, 2]
    """
    return [v for _k, v in kvs]


@operator
def stateful_logic(
    step_id: str, up: KeyedStream[V], builder: Callable[[Any], Logic[Any, W]],
    order: Callable[[Any], Any] | None = None,
) -> KeyedStream[W]:
    """Run one riskguard logic object per key.

    ``builder(None)`` makes fresh logic for a new key; ``builder(state)`` resumes it
    from a bytewax recovery snapshot. With ``order`` (for example :data:`event_order`)
    each key's share of a batch is first sorted by it, so merged streams reach a key in
    the same order however the input was batched (a backtest and a live run agree).
    """

    def shim_builder(resume_state: Any) -> _Shim:
        logic = builder(decode_snapshot(resume_state))
        if _step_cpu is not None:
            return _TimedShim(logic, step_id, order, _step_cpu)
        return _Shim(logic, step_id, order)

    return op.stateful_batch("stateful", up, shim_builder)


@dataclass(frozen=True)
class SplitOut(Generic[W]):
    """Good outputs and dead letters of one step."""

    oks: Stream[W]
    errs: Stream[DeadLetter]


def _may_hold_dead(items: list[Any]) -> bool:
    """Whether ``items`` may hold a dead letter, bare or keyed: one C-level pass over
    their types (most batches hold none, and are passed on untouched)."""
    types = set(map(type, items))
    return tuple in types or any(issubclass(t, DeadLetter) for t in types)


def _live(items: list[Any]) -> list[Any]:
    """The items that are neither a dead letter nor a ``(key, DeadLetter)`` pair.

    >>> dl = DeadLetter(topic="t", ts=1, reason="malformed")
    >>> _live([1, dl, ("k", dl), ("k", 2)]), _dead_letters([1, dl, ("k", dl)]) == [dl, dl]
    ([1, ('k', 2)], True)
    """
    if not _may_hold_dead(items):
        return items
    dead = DeadLetter
    return [x for x in items if not (isinstance(x, dead) or (
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], dead)))]


def _dead_letters(items: list[Any]) -> list[DeadLetter]:
    """The dead letters among ``items``, unkeyed."""
    if not _may_hold_dead(items):
        return []
    dead = DeadLetter
    return [x if isinstance(x, dead) else x[1] for x in items if isinstance(x, dead) or (
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], dead))]


@operator
def split_dead_letters(step_id: str, up: Stream[Any]) -> SplitOut[Any]:
    """Route ``DeadLetter`` items (bare or as ``(key, DeadLetter)``) to ``errs`` (per
    batch, not with ``op.branch``'s per-item Python predicate)."""
    oks = op.flat_map_batch("oks", up, _live)
    errs = op.flat_map_batch("errs", up, _dead_letters)
    return SplitOut(oks=oks, errs=errs)


ADMIT_KEY = "admit"
"""The one key the gate runs under: its caps count over every record the flow reads (on
several workers, the gate runs on one of them)."""


@dataclass(frozen=True)
class AdmitOut:
    """What passed the gate, the dead letters of what did not, the ``admission_cap``
    alerts (a cap's first refusal), the ticks (none without ``make_ticks``), and what passed
    with the ticks in their places (``timed``)."""

    oks: Stream[Any]
    errs: Stream[DeadLetter]
    alerts: Stream[RiskAlert]
    ticks: Stream[Tick]
    timed: Stream[Any]


@operator
def admit_keys(step_id: str, records: Stream[Any], *, config: AdmissionConfig,
               known: Known | None = None, clock: Clock,
               make_ticks: Callable[[], EventTicks] | None = None) -> AdmitOut:
    """``records`` with every market and trading record past a cap of ``config`` turned
    into a dead letter (``errs``: ``too_many_venues``, ``too_many_instruments``,
    ``too_many_counterparties``) and a cap's first refusal into an alert (``alerts``);
    the names in ``known`` (none by default) always pass, and so does every other
    record, in order. Put it before a flow's keyed steps (``extract_features``,
    ``aggregate_exposure``) so that made-up names never become their state. With
    ``make_ticks`` (a maker of the :class:`~riskguard.operators.core.clock.EventTicks`
    to run), the event-time ticks of what passes (``ticks``), kept in the gate's
    snapshot.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from riskguard.operators.core.admission import AdmissionConfig
    >>> from riskguard.schemas import Trade
    >>> trades = [Trade(id=f"t{i}", venue="okx", instrument=name, ts=i, price=1.0, qty=1.0,
    ...                 side="buy") for i, name in enumerate(["BTC-USDT", "JUNK-1", "JUNK-2"])]
    >>> flow = Dataflow("admit_eg")
    >>> gate = admit_keys("admit", op.input("in", flow, TestingSource(trades)),
    ...                   config=AdmissionConfig(max_instruments_per_venue=2), clock=lambda: 0)
    >>> passed, refused = [], []
    >>> op.output("oks", gate.oks, TestingSink(passed))
    >>> op.output("errs", gate.errs, TestingSink(refused))
    >>> run_main(flow)
    >>> [t.instrument for t in passed], [(d.reason, d.found) for d in refused]
    (['BTC-USDT', 'JUNK-1'], [('too_many_instruments', 'JUNK-2')])
    """
    names = known if known is not None else Known()
    keyed = op.flat_map_batch("key", records, lambda rs: [(ADMIT_KEY, r) for r in rs])
    gated = stateful_logic("gate", keyed, lambda state: KeyAdmission(
        config, names, state=state, clock=clock,
        ticks=make_ticks() if make_ticks is not None else None))
    split = split_dead_letters("split", op.flat_map_batch("unkey", gated, values_of))
    # alerts and ticks are few: one pass over the records sets them aside
    made = op.flat_map_batch("made", split.oks, lambda rs: [
        r for r in rs if type(r) is RiskAlert or type(r) is Tick])
    alerts = op.flat_map_batch("alerts", made,
                               lambda rs: [r for r in rs if type(r) is RiskAlert])
    made_ticks = op.flat_map_batch("ticks", made,
                                   lambda rs: [r for r in rs if type(r) is Tick])
    oks = op.flat_map_batch("records", split.oks, lambda rs: [
        r for r in rs if type(r) is not RiskAlert and type(r) is not Tick])
    return AdmitOut(oks=oks, errs=split.errs, alerts=alerts, ticks=made_ticks,
                    timed=split.oks)
