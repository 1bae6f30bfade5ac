"""Recovery snapshots pickled before the operators moved into domain subpackages still load.

``tests/vectors/snapshots_flat_operators.pkl`` was written by commit 6a66b2b, when every
operator module sat directly in ``riskguard.operators`` (``riskguard.operators.exposure``,
``riskguard.operators.playbook``, ``riskguard.operators.dedup`` ...). It maps each
stateful logic (named as its contract case) to ``(k, snapshot)``: the state after the
case's first ``k`` events, pickled with protocol 5, so its classes are named by their old
flat module paths.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgspec
import pytest
import test_contract_anomaly
import test_contract_playbook
import test_contract_risk
import test_contract_signing
import test_dedup
from contract import Case, run
from riskguard.operators.audit import AuditState
from riskguard.operators.core.dedup import RecentIdsState
from riskguard.operators.core.end_of_input import FinalProgressState
from riskguard.operators.detection.cross_rates import CrossRateState
from riskguard.operators.detection.detect_watch import DetectWatchState
from riskguard.operators.detection.detector import DetectorState
from riskguard.operators.detection.features import FeatureState
from riskguard.operators.exposure import (
    CounterpartyState,
    FirmState,
    LocalPipeline,
    PipelineState,
    ShardState,
)
from riskguard.operators.feeds import FeedState
from riskguard.operators.limits import LimitsState
from riskguard.operators.operator_commands import OperatorCommandState
from riskguard.operators.playbook import PlaybookState
from riskguard.operators.signing import SignState
from riskguard.schemas import AuditRecord, MitigationCommand

FIXTURE = Path(__file__).parent / "vectors" / "snapshots_flat_operators.pkl"

STATE_OF = {
    "audit": AuditState, "cross": CrossRateState, "detect_watch": DetectWatchState,
    "detector-gaussian": DetectorState, "detector-hst": DetectorState,
    "detector-range": DetectorState, "exposure.counterparty": CounterpartyState,
    "exposure.counterparty.ticked": CounterpartyState, "exposure.firm": FirmState,
    "exposure.firm.ticked": FirmState, "exposure.valuation": ShardState,
    "exposure.valuation.ticked": ShardState, "exposure.valuation.two_processes": ShardState,
    "features-bar": FeatureState, "features-event": FeatureState, "feed_monitor": FeedState,
    "feed_select": FeedState, "final_progress": FinalProgressState, "limits": LimitsState,
    "operator_commands": OperatorCommandState, "pipeline": PipelineState,
    "playbook": PlaybookState, "playbook_two_processes": PlaybookState,
    "recent_ids": RecentIdsState, "sign": SignState,
}

CASES: dict[str, Case] = {c.name: c for c in (
    *test_contract_anomaly.CASES, *test_contract_playbook.CASES, *test_contract_risk.CASES,
    *test_contract_signing.CASES, test_dedup.CASE)}


class _Recording(pickle.Unpickler):
    """Records the (module, name) of every class the pickle refers to."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.globals: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.globals.add((module, name))
        return super().find_class(module, name)


def _load() -> tuple[dict[str, tuple[int, Any]], set[tuple[str, str]]]:
    with FIXTURE.open("rb") as f:
        unpickler = _Recording(f)
        return unpickler.load(), unpickler.globals


SNAPSHOTS, GLOBALS = _load()


def test_the_fixture_names_its_classes_by_the_old_flat_module_paths() -> None:
    """The fixture exercises the old paths: its state classes are named
    riskguard.operators.<module>, one level below the package."""
    flat = {module for module, _ in GLOBALS if module.startswith("riskguard.operators.")}
    assert {"riskguard.operators.exposure", "riskguard.operators.playbook",
            "riskguard.operators.dedup", "riskguard.operators.limits",
            "riskguard.operators.signing", "riskguard.operators.audit"} <= flat
    assert all(module.count(".") == 2 for module in flat), flat


@pytest.mark.parametrize("name", sorted(STATE_OF))
def test_an_old_snapshot_unpickles_to_the_state_class_at_its_new_path(name: str) -> None:
    """Every stored snapshot loads as an instance of today's state class (the same class
    object, not a copy under the old name)."""
    _k, snap = SNAPSHOTS[name]
    assert type(snap) is STATE_OF[name]


NEWER = frozenset({"acks", "cross-shard", "playbook_sparse_records", "venue-confirm"})
"""Contract cases written after the fixture: no old snapshot of them exists."""


def test_every_contract_case_has_an_old_snapshot_or_is_newer_than_the_fixture() -> None:
    assert set(CASES) - set(SNAPSHOTS) == NEWER


@pytest.mark.parametrize("name", sorted(set(CASES) - NEWER))
def test_resuming_from_an_old_snapshot_equals_an_uninterrupted_run(name: str) -> None:
    """The logic resumed from the snapshot pickled under the old paths goes on exactly as
    one that never stopped."""
    case = CASES[name]
    k, snap = SNAPSHOTS[name]
    whole, _ = run(case.builder, case.events)
    first, _ = run(case.builder, case.events[:k])
    rest, _ = run(case.builder, case.events[k:], snap)
    if name == "audit":
        # The stored chain holds the leaves of commands encoded before commands gained
        # optional fields (decision_id, replica), so its roots are the old ones; the
        # chain goes on at the same index with the same records as an uninterrupted run.
        def records(out: list[Any]) -> list[Any]:
            return [(r.record_id, r.index, r.kind, r.body) for r in out
                    if isinstance(r, AuditRecord)]
        assert records(rest) == records(whole)[len(records(first)):]
        return
    if name.startswith("playbook"):
        # Decision ids cover the ids of an incident's signals, which snapshots from
        # before decision ids do not hold: commands are the same but for that id.
        def undecided(out: list[Any]) -> list[Any]:
            return [msgspec.structs.replace(c, decision_id=None)
                    if isinstance(c, MitigationCommand) else c for c in out]
        first, rest, whole = undecided(first), undecided(rest), undecided(whole)
    assert case.normalize(first + rest) == case.normalize(whole)


def test_a_pipeline_resumes_from_an_old_snapshot() -> None:
    """The in-memory exposure pipeline resumed from its old snapshot gives the exposures
    of an uninterrupted run."""
    cfg, events = test_contract_risk.CFG, test_contract_risk.EVENTS
    k, snap = SNAPSHOTS["pipeline"]
    whole = LocalPipeline(cfg).feed_all(events).exposures
    first = LocalPipeline(cfg).feed_all(events[:k]).exposures
    rest = LocalPipeline(cfg, snap).feed_all(events[k:]).exposures
    assert first + rest == whole
