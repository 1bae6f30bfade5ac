"""The playbook logic meets the generic stateful-logic contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from contract import CHECKS, Case
from playbook_cases import FLASH, HB, alert, anomaly, breach, cp, resume, two_incidents, venue
from riskguard.operators.core.clock import step_event_time
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    Rule,
    Rung,
    S,
    Tick,
    playbook_builder,
)
from riskguard.schemas import Action, LimitLevel, Severity

RULES = (
    FLASH, HB,
    Rule(name="cp", signal="breach", scope="counterparty:*", target="venue",
         ladder=(Rung(action=Action.REROUTE_ORDER_FLOW), Rung(action=Action.HALT_TRADING,
                                                             after_s=20))),
    Rule(name="recon", signal="reconciliation_break", recovery="manual", quiet_s=5,
         ladder=(Rung(action=Action.PAUSE_WITHDRAWALS),)),
)
CFG = PlaybookConfig(issuer="guard", venues=("okx", "binance", "deribit"), rules=RULES,
                     max_commands=3, rate_window_s=5)

EVENTS = [
    anomaly(0), anomaly(0.5, inst="ETH-USDT", v="binance"),
    alert("heartbeat_loss", venue("deribit"), 1), breach("binance", 1.5),
    *[Tick(ts=s * S) for s in range(2, 12)],
    anomaly(12, phase="escalate", sev=Severity.CRITICAL),
    alert("reconciliation_break", cp("okx"), 13), anomaly(14, phase="close"),
    alert("heartbeat_restored", venue("deribit"), 15),
    breach("binance", 16, level=LimitLevel.OK),
    *[Tick(ts=s * S) for s in range(17, 60, 3)],
    resume(cp("okx"), 61), anomaly(62), anomaly(63, phase="close"),
    *[Tick(ts=s * S) for s in range(64, 100, 4)],
]

# Hourly records, as a replay of bars meets them: rungs and quiet periods fall due
# between records, and the processing clock reads the event time each is met at.
SPARSE = [
    anomaly(0), anomaly(3600, phase="close"), anomaly(3700), Tick(ts=7200 * S),
    anomaly(7300, phase="escalate", sev=Severity.CRITICAL), Tick(ts=9000 * S),
    anomaly(9100, phase="close"), breach("binance", 9200), Tick(ts=12_000 * S),
    breach("binance", 12_100, level=LimitLevel.OK), Tick(ts=15_000 * S),
]


def _event_clock() -> int:
    return step_event_time.get() or 42


# Two guard processes; once the first has ticked, the second runs a whole incident ahead:
# its signals wait for the watermark (state a snapshot must keep). Expected-source counts
# are left out: a resumed logic meets the same source names here, not new ones.
P1, P2 = two_incidents(of=0)
CASES = [Case("playbook", playbook_builder(CFG, lambda: 42), EVENTS, splits=(3, 14, 20)),
         Case("playbook_two_processes", playbook_builder(CFG, lambda: 42),
              P1[:1] + P2[:300] + P1[1:],
              splits=(150, 305, 420)),
         Case("playbook_sparse_records", playbook_builder(CFG, _event_clock), SPARSE,
              splits=(1, 2, 4, 6, 8))]


def test_case_exercises_state() -> None:
    """The contract input produces commands of several kinds, including resumes."""
    logic = playbook_builder(CFG, lambda: 42)(None)
    actions = {c.action.value for e in EVENTS for c in logic.on_event(e)}
    assert {"alert", "reduce_only", "resume", "reroute_order_flow"} <= actions


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract(case: Case, check: Callable[[Case], None]) -> None:
    """The playbook logic meets the generic stateful-logic contract."""
    check(case)
