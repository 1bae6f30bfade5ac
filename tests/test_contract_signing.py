"""The signing logic meets the generic stateful-logic contract."""

from __future__ import annotations

import pytest
from contract import CHECKS, Case
from riskguard.operators.audit import AuditConfig, audit_builder
from riskguard.operators.signing import SignConfig, sign_builder
from riskguard.schemas.audit import DeadLetter
from signing_fixtures import ENGINE, command

CASES = [
    Case(
        name="sign",
        builder=sign_builder(ENGINE, SignConfig(recent_ids=4)),
        events=[command(i) for i in (1, 2, 3, 2, 4, 5, 6, 1, 7)] + ["junk"],
    ),
    Case(
        name="audit",
        builder=audit_builder("c0", ENGINE, AuditConfig(checkpoint_every=3)),
        events=[command(i) for i in range(1, 8)]
        + [DeadLetter(topic="t", ts=5, reason="malformed", raw=b"x")],
    ),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_signing_logic_meets_the_contract(case: Case, check: object) -> None:
    check(case)  # type: ignore[operator]
