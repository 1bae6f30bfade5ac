"""The contract every stateful logic class must meet (River ``yield_checks`` style).

Each stateful module registers a :class:`Case` in ``tests/test_contract.py``;
the same generic checks run over all of them:

- the snapshot survives the recovery store as the bytes of its versioned data: its
  state class is declared persisted (:mod:`riskguard.operators.core.snapshot`);
- the snapshot is independent of later mutation;
- resuming from a stored snapshot at any split point equals an uninterrupted run;
- input records are not mutated.

A case's ``feed`` hands one event to the logic (default ``on_event``);
:func:`engine_feed` does it as the bytewax adapter does, so :class:`Batch`,
:class:`Deadline` and :class:`Eof` events reach ``on_batch``, ``on_deadline`` and
``on_eof``, and :class:`At` moves a processing clock first.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot, is_persisted


def on_event(logic: Any, event: Any) -> Iterable[Any]:
    return logic.on_event(event)


@dataclass(frozen=True)
class Batch:
    """Events the engine hands over in one call."""

    items: tuple[Any, ...]


@dataclass(frozen=True)
class Deadline:
    """The engine calls ``on_deadline`` (the logic's ``next_deadline_ns`` has passed)."""


@dataclass(frozen=True)
class Eof:
    """The engine calls ``on_eof`` (end of input)."""


@dataclass(frozen=True)
class At:
    """Processing time is ``now`` (ns) when ``item`` is handed over."""

    now: int
    item: Any


def engine_feed(logic: Any, event: Any,
                clock_of: Callable[[Any], Any] | None = None) -> list[Any]:
    """``event`` handed to ``logic`` as the bytewax adapter does (``on_batch`` where the
    logic has it); with ``clock_of``, an :class:`At` sets ``clock_of(logic)`` (a
    ``ManualClock``) first."""
    if isinstance(event, At):
        assert clock_of is not None, "an At event needs clock_of"
        clock_of(logic).set(event.now)
        event = event.item
    if isinstance(event, Deadline):
        return list(logic.on_deadline())
    if isinstance(event, Eof):
        eof = getattr(logic, "on_eof", None)
        return [] if eof is None else list(eof())
    items = list(event.items) if isinstance(event, Batch) else [event]
    batch = getattr(logic, "on_batch", None)
    if batch is not None:
        return list(batch(items))
    return [out for e in items for out in logic.on_event(e)]


@dataclass(frozen=True)
class Case:
    """A logic builder plus an input sequence that exercises its state."""

    name: str
    builder: Callable[[Any], Any]
    events: Sequence[Any]
    splits: Sequence[int] = ()
    normalize: Callable[[list[Any]], Any] = lambda outs: outs
    feed: Callable[[Any, Any], Iterable[Any]] = on_event

    def split_points(self) -> list[int]:
        n = len(self.events)
        # 1 and n - 1: a snapshot before a source has spoken, and after one has finished
        return sorted(set(self.splits) | {0, 1, n // 3, n // 2, (2 * n) // 3, n - 1, n}
                      - {-1})


def run(
    builder: Callable[[Any], Any], events: Sequence[Any], state: Any = None,
    feed: Callable[[Any, Any], Iterable[Any]] = on_event,
) -> tuple[list[Any], Any]:
    logic = builder(state)
    outs: list[Any] = []
    for e in events:
        outs.extend(feed(logic, e))
    return outs, logic.snapshot()


def stored(snap: Any) -> Any:
    """``snap`` after a trip through a recovery store, as the bytewax adapter puts it
    there (versioned bytes where its class is persisted, pickled) and takes it back."""
    return decode_snapshot(pickle.loads(pickle.dumps(encode_snapshot(snap))))


_PACKAGES = ("operators", "schemas", "connectors", "dataflows")


def check_snapshot_is_versioned_data(case: Case) -> None:
    """The snapshot's class is declared persisted: the recovery store holds the bytes of
    its versioned data, never a pickled riskguard class, so a module move restores it."""
    _, snap = run(case.builder, case.events, feed=case.feed)
    assert is_persisted(snap), f"{case.name}: {type(snap).__name__} is not persisted"
    assert type(encode_snapshot(snap)) is bytes
    data = encode_snapshot(snap)
    assert not any(f"riskguard.{pkg}.".encode() in data for pkg in _PACKAGES), (
        f"{case.name}: a pickled riskguard class inside")
    again = stored(snap)
    assert type(again) is type(snap)


def check_snapshot_independent(case: Case) -> None:
    half = len(case.events) // 2
    logic = case.builder(None)
    for e in case.events[:half]:
        case.feed(logic, e)
    snap = logic.snapshot()
    frozen = pickle.dumps(snap)
    for e in case.events[half:]:
        case.feed(logic, e)
    assert pickle.dumps(snap) == frozen, f"{case.name}: snapshot changed after later events"


def check_resume_equals_uninterrupted(case: Case) -> None:
    whole, _ = run(case.builder, case.events, feed=case.feed)
    for k in case.split_points():
        first, snap = run(case.builder, case.events[:k], feed=case.feed)
        rest, _ = run(case.builder, case.events[k:], stored(snap), case.feed)
        assert case.normalize(first + rest) == case.normalize(whole), (
            f"{case.name}: resume at event {k} of {len(case.events)} differs from an "
            "uninterrupted run"
        )


def check_input_not_mutated(case: Case) -> None:
    before = copy.deepcopy(list(case.events))
    run(case.builder, case.events, feed=case.feed)
    assert list(case.events) == before, f"{case.name}: logic mutated its input"


CHECKS = (
    check_snapshot_is_versioned_data,
    check_snapshot_independent,
    check_resume_equals_uninterrupted,
    check_input_not_mutated,
)
