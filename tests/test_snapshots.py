"""Snapshots are versioned data, not pickled classes: a logic class moved to another
module still restores its snapshot, and a snapshot riskguard cannot read is refused by
name (riskguard.operators.core.snapshot)."""

from __future__ import annotations

import pickle
import sys
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.operators.core.base import stateful_logic
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot, forget_persisted
from riskguard.operators.mitigation import PlaybookState

from riskguard.errors import SnapshotError

# A stateful logic as a module of its own: the test defines it under one module name,
# then again under another, as a move or a rename of the module would.
LOGIC_SOURCE = '''
from dataclasses import dataclass, field

from riskguard.operators.core.snapshot import persisted


@persisted("tests.running_total")
@dataclass
class TotalState:
    total: int = 0
    seen: list[str] = field(default_factory=list)
    version: int = 1


class TotalLogic:
    def __init__(self, state=None):
        self.state = state if state is not None else TotalState()

    def on_event(self, rec):
        self.state.total += rec[1]
        self.state.seen.append(rec[0])
        return [(self.state.total, len(self.state.seen))]

    def snapshot(self):
        return TotalState(self.state.total, list(self.state.seen))
'''

EVENTS = [(f"r{k}", k % 7) for k in range(40)]


def _define(module_name: str) -> types.ModuleType:
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    exec(LOGIC_SOURCE, module.__dict__)
    return module


def _forget(module: types.ModuleType) -> None:
    """The module is gone, as after a move: its name no longer imports."""
    del sys.modules[module.__name__]
    forget_persisted("tests.running_total")


def _flow(module: types.ModuleType, events: list[Any], out: list[Any]) -> Dataflow:
    flow = Dataflow("moved_logic")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda _r: "k")
    totals = stateful_logic("total", keyed, module.TotalLogic)
    op.output("out", totals, TestingSink(out))
    return flow


def test_a_logic_moved_to_another_module_restores_its_snapshot(tmp_path: Path) -> None:
    """Run with recovery until an abort halfway, with the logic's classes in one module;
    resume with them defined in another module only (the first is gone): the resumed
    run goes on from the snapshot exactly as an uninterrupted run does. A pickled class
    would not load: its module path no longer imports."""
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    half = len(EVENTS) // 2
    events = [*EVENTS[:half], TestingSource.ABORT(), *EVENTS[half:]]
    first = _define("riskguard_tests_logic_before")
    got: list[Any] = []
    try:
        run_main(_flow(first, events, got), epoch_interval=timedelta(0), recovery_config=rc)
        assert 0 < len(got) < len(EVENTS)
    finally:
        _forget(first)
    moved = _define("riskguard_tests_logic_after")
    try:
        run_main(_flow(moved, events, got), epoch_interval=timedelta(0), recovery_config=rc)
        whole: list[Any] = []
        run_main(_flow(moved, EVENTS, whole))
    finally:
        _forget(moved)
    assert got == whole
    with pytest.raises(ModuleNotFoundError):
        __import__("riskguard_tests_logic_before")


def test_a_snapshot_holds_no_module_path() -> None:
    """The stored bytes name the state by its declared name, and no class or module."""
    module = _define("riskguard_tests_logic_named")
    try:
        data = encode_snapshot(module.TotalState(3, ["a"]))
    finally:
        _forget(module)
    assert b"tests.running_total" in data
    assert b"riskguard_tests_logic_named" not in data and b"TotalState" not in data


def test_a_state_pickled_by_riskguard_0_1_is_refused_by_name() -> None:
    """A persisted state that reaches the adapter as an object (a 0.1 recovery store
    pickled it) is refused naming the state, not used as it is."""
    old = pickle.loads(pickle.dumps(PlaybookState()))
    with pytest.raises(SnapshotError, match=r"0\.1 snapshots do not carry over") as err:
        decode_snapshot(old)
    assert err.value.name == "riskguard.playbook"


def test_a_detector_snapshot_of_another_version_is_refused_by_name() -> None:
    """A detector's state of an older layout (its range model pickled) is refused, naming
    the state and both versions, not read as today's."""
    from riskguard.operators.detection.detector import STATE_VERSION, DetectorState

    data = encode_snapshot(DetectorState(version=STATE_VERSION - 1, key="okx/BTC-USDT"))
    with pytest.raises(SnapshotError, match=f"version {STATE_VERSION} only") as err:
        decode_snapshot(data)
    assert err.value.name == "riskguard.detector"
    assert decode_snapshot(encode_snapshot(DetectorState(key="k"))) == DetectorState(key="k")


def test_an_unknown_state_and_undecodable_bytes_are_refused() -> None:
    """A snapshot of a state this riskguard does not know, or bytes that are no
    snapshot, stop the restore with what was found."""
    module = _define("riskguard_tests_logic_unknown")
    try:
        data = encode_snapshot(module.TotalState(1, []))
    finally:
        _forget(module)
    with pytest.raises(SnapshotError, match="no such state") as err:
        decode_snapshot(data)
    assert err.value.name == "tests.running_total"
    with pytest.raises(SnapshotError, match="undecodable bytes"):
        decode_snapshot(b"\x00not a snapshot")


def test_states_not_declared_persisted_pass_as_they_are() -> None:
    """A state no class declaration makes persisted (and ``None``) is handed to the
    store and back unchanged."""
    plain = {"ids": [1, 2]}
    assert encode_snapshot(plain) is plain and decode_snapshot(plain) is plain
    assert encode_snapshot(None) is None and decode_snapshot(None) is None


def test_a_shards_held_items_restore_as_items_with_their_records_typed() -> None:
    """Stage-1 items waiting for the watermark come back as :class:`Item` (a run of plain
    marks as a list of records), so the resumed shard reads them by name."""
    from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
    from riskguard.operators.exposure.routing import Item
    from riskguard.operators.exposure.shard_state import ShardState
    from riskguard.schemas import Trade

    t = Trade(id="t", venue="v", instrument="I", ts=1, price=1.0, qty=1.0, side="buy")
    st = ShardState(held=[(1, 1, Item("marks", "s0", "", [t]), -1),
                          (2, 2, Item("fill", "s0", "I", t), 5)])
    back = decode_snapshot(encode_snapshot(st))
    assert back.held == st.held
    assert [(type(h[2]), h[2].role, type(h[2].record)) for h in back.held] == [
        (Item, "marks", list), (Item, "fill", Trade)]
