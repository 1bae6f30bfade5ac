"""The firm tier's anomaly-id filter: the stateful-logic contract and its window."""

from __future__ import annotations

import pytest
from contract import CHECKS, Case
from hypothesis import example, given
from hypothesis import strategies as st
from riskguard.operators.core.dedup import Expiries, IdWindow, RecentIdsLogic
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


@given(st.lists(st.tuples(st.sampled_from(["add", "discard", "resume"]),
                          st.sampled_from("abcdef")), max_size=60),
       st.integers(1, 4))
@example([("add", "x"), ("discard", "x"), ("add", "b"), ("add", "x"), ("add", "c"),
          ("add", "d")], 3)  # a refusal expired, then refused again
def test_an_id_window_with_discards_keeps_what_a_dict_in_arrival_order_keeps(
        steps: list[tuple[str, str]], keep: int) -> None:
    """Against the plain definition (a dict in arrival order, the oldest dropped past
    ``keep``, a re-added id at the end), however discards, re-adds and resumes from the
    dict interleave: a resumed window evicts as an uninterrupted one."""
    ids: dict[str, None] = {}
    window = IdWindow(ids, keep)
    model: dict[str, None] = {}
    for what, rid in steps:
        if what == "add" and rid not in ids:
            window.add(rid)
            model[rid] = None
            while len(model) > keep:
                del model[next(iter(model))]
        elif what == "discard":
            window.discard(rid)
            model.pop(rid, None)
        elif what == "resume":
            window = IdWindow(ids, keep)
        assert list(ids) == list(model)


def test_expiry_times_of_ids_gone_from_the_dict_do_not_pile_up() -> None:
    """Ids a window dropped before they expired leave their expiry behind only until the
    heap outgrows twice the dict."""
    ids: dict[str, int] = {}
    window = IdWindow(ids, keep=3)
    expiries = Expiries(ids)
    for n in range(1_000):
        window.add(f"r{n}", 10**12 + n)
        expiries.add(f"r{n}", 10**12 + n)
    assert len(ids) == 3 and len(expiries._heap) <= 2 * 3 + 65
    assert list(expiries.before(10**13)) == ["r997", "r998", "r999"]
