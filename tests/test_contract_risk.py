"""Exposure and limits logic classes meet the generic stateful-logic contract."""

from __future__ import annotations

from typing import Any

import pytest
from contract import CHECKS, Case
from risk_flow_app import limits_config, make_events
from riskguard.operators.exposure import (
    CounterpartyLogic,
    FirmLogic,
    LocalPipeline,
    Part,
    Router,
    ShardLogic,
)
from riskguard.operators.limits import LimitsLogic
from riskguard.schemas import DeadLetter, Exposure, RiskAlert
from test_exposure import worked_config

CFG = worked_config()
REG = CFG.validate()
EVENTS = make_events(300, seed=3)


def _stage_inputs() -> tuple[list[Any], list[Part], list[Exposure], list[Exposure]]:
    """Inputs of one stage-1 shard, one counterparty, the firm and one limits key."""
    val: list[Any] = []
    pipe = LocalPipeline(CFG)
    router = Router(REG, CFG)
    btc_shard = router.route(EVENTS[5])[0][0]  # the shard of BTC-PERP
    contribs: list[Part] = []
    for ev in EVENTS:
        r = router.route(ev)
        if isinstance(r, DeadLetter):
            continue
        for key, item in r:
            if key == btc_shard:
                val.append(item)
            logic = pipe.val.setdefault(key, ShardLogic(CFG, REG))
            contribs.extend(c for c in logic.on_event(item)
                            if isinstance(c, Part) and c.counterparty == "okx")
    firm_in = LocalPipeline(CFG).feed_all(EVENTS).exposures
    cp_out = [e for e in firm_in if e.counterparty != "*"]
    return val, contribs, cp_out, [e for e in firm_in if e.counterparty == "okx"]


VAL, CONTRIBS, CP_EXPOSURES, OKX = _stage_inputs()

CASES = [
    Case("exposure.valuation", lambda s: ShardLogic(CFG, REG, s), VAL),
    Case("exposure.counterparty", lambda s: CounterpartyLogic(CFG, s), CONTRIBS),
    Case("exposure.firm", lambda s: FirmLogic(CFG, s), CP_EXPOSURES),
    Case("limits", lambda s: LimitsLogic(limits_config(), s), [("exp", e) for e in OKX]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(case: Case, check: Any) -> None:
    """Snapshot pickles, is independent, resume equals uninterrupted, input unmutated."""
    assert len(case.events) > 10
    check(case)


def test_cases_produce_output() -> None:
    """Each case's events actually drive outputs (the contract is not vacuous)."""
    for case in CASES:
        logic = case.builder(None)
        outs = [o for e in case.events for o in logic.on_event(e)]
        assert outs, case.name
        assert all(isinstance(o, Part | Exposure | RiskAlert) or hasattr(o, "level")
                   for o in outs)
