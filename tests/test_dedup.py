"""The firm tier's anomaly-id filter: the stateful-logic contract and its window."""

from __future__ import annotations

import pytest
from contract import CHECKS, Case
from riskguard.operators.core.dedup import IdWindow, RecentIdsLogic
from riskguard.schemas import AnomalySignal, Scope, ScopeKind, Severity


def signal(n: int) -> AnomalySignal:
    return AnomalySignal(id=f"s{n}", kind="anomaly", phase="open", key="okx/BTC-USDT",
                         scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT"), ts=n,
                         score=1.0, threshold=0.5, severity=Severity.WARN, model="m",
                         model_version="1")


CASE = Case(name="recent_ids", builder=lambda state: RecentIdsLogic(3, state),
            events=[signal(n) for n in (1, 2, 1, 3, 2, 4, 5, 1, 6, 6, 2)])


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_recent_ids_logic_meets_the_contract(check: object) -> None:
    check(CASE)  # type: ignore[operator]


def test_each_id_passes_once_within_the_window_and_again_once_it_fell_out() -> None:
    logic = RecentIdsLogic(3)
    passed = [s.id for n in (1, 2, 1, 3, 2, 4, 5, 1, 6, 6, 2)
              for s in logic.on_event(signal(n))]
    # 1 is repeated inside the window and dropped, then passes again after 3, 4, 5
    assert passed == ["s1", "s2", "s3", "s4", "s5", "s1", "s6", "s2"]
    assert list(logic.snapshot().ids) == ["s1", "s6", "s2"]


def test_an_id_window_resumed_from_its_dict_drops_the_oldest_first_down_to_keep() -> None:
    """The arrival order is derived from the dict it wraps (a resumed snapshot), and a
    window resumed with a smaller ``keep`` (a config change) shrinks on its next add."""
    ids = {"a": 1, "b": 2, "c": 3, "d": 4}
    window = IdWindow(ids, keep=2)
    window.add("e", 5)
    assert ids == {"d": 4, "e": 5}
    window.add("f", 6)
    assert list(ids) == ["e", "f"] and "d" not in window and "f" in window
