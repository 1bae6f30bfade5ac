"""The contract every stateful logic class must meet (River ``yield_checks`` style).

Each stateful module registers a :class:`Case` in ``tests/test_contract.py``;
the same generic checks run over all of them:

- the snapshot survives the recovery store as the bytes of its versioned data: its
  state class is declared persisted (:mod:`riskguard.operators.core.snapshot`);
- the snapshot is independent of later mutation;
- resuming from a stored snapshot at any split point equals an uninterrupted run;
- input records are not mutated.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot, is_persisted


@dataclass(frozen=True)
class Case:
    """A logic builder plus an input sequence that exercises its state."""

    name: str
    builder: Callable[[Any], Any]
    events: Sequence[Any]
    splits: Sequence[int] = ()
    normalize: Callable[[list[Any]], Any] = lambda outs: outs

    def split_points(self) -> list[int]:
        n = len(self.events)
        # 1 and n - 1: a snapshot before a source has spoken, and after one has finished
        return sorted(set(self.splits) | {0, 1, n // 3, n // 2, (2 * n) // 3, n - 1, n}
                      - {-1})


def run(
    builder: Callable[[Any], Any], events: Sequence[Any], state: Any = None
) -> tuple[list[Any], Any]:
    logic = builder(state)
    outs: list[Any] = []
    for e in events:
        outs.extend(logic.on_event(e))
    return outs, logic.snapshot()


def stored(snap: Any) -> Any:
    """``snap`` after a trip through a recovery store, as the bytewax adapter puts it
    there (versioned bytes where its class is persisted, pickled) and takes it back."""
    return decode_snapshot(pickle.loads(pickle.dumps(encode_snapshot(snap))))


_PACKAGES = ("operators", "schemas", "connectors", "dataflows")


def check_snapshot_is_versioned_data(case: Case) -> None:
    """The snapshot's class is declared persisted: the recovery store holds the bytes of
    its versioned data, never a pickled riskguard class, so a module move restores it."""
    _, snap = run(case.builder, case.events)
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
        logic.on_event(e)
    snap = logic.snapshot()
    frozen = pickle.dumps(snap)
    for e in case.events[half:]:
        logic.on_event(e)
    assert pickle.dumps(snap) == frozen, f"{case.name}: snapshot changed after later events"


def check_resume_equals_uninterrupted(case: Case) -> None:
    whole, _ = run(case.builder, case.events)
    for k in case.split_points():
        first, snap = run(case.builder, case.events[:k])
        rest, _ = run(case.builder, case.events[k:], stored(snap))
        assert case.normalize(first + rest) == case.normalize(whole), (
            f"{case.name}: resume at event {k} of {len(case.events)} differs from an "
            "uninterrupted run"
        )


def check_input_not_mutated(case: Case) -> None:
    before = copy.deepcopy(list(case.events))
    run(case.builder, case.events)
    assert list(case.events) == before, f"{case.name}: logic mutated its input"


CHECKS = (
    check_snapshot_is_versioned_data,
    check_snapshot_independent,
    check_resume_equals_uninterrupted,
    check_input_not_mutated,
)
