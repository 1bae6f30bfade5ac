"""The signing logic meets the generic stateful-logic contract."""

from __future__ import annotations

import msgspec
import pytest
from contract import CHECKS, Case
from riskguard.operators.audit import AuditConfig, audit_builder
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing import SignConfig, sign_builder
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, sign_envelope
from riskguard.operators.signing.operator_commands import OperatorCommandLogic
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.commands import Action
from signing_fixtures import AUD, ENGINE, FIRM, OP1, OP2, T0, command, trust_store


def _resume(n: int, seq: int, *signers):  # type: ignore[no-untyped-def]
    cmd = command(n, issuer="op-alice", seq=seq, action=Action.RESUME, scope=FIRM,
                  params={"actions": ["halt_trading"]})
    return sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(signers))


TRUST = trust_store()

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
    Case(
        name="operator_commands",
        builder=lambda state: OperatorCommandLogic(
            TRUST, env=AUD.env, topic=AUD.topic, clock=ManualClock(T0), state=state),
        # accepted, replayed by id, refused (one person), older seq, newer seq, replayed
        events=[_resume(1, 3, OP1, OP2), _resume(1, 3, OP1, OP2), _resume(2, 4, OP1),
                _resume(3, 2, OP1, OP2), _resume(4, 5, OP1, OP2), _resume(4, 5, OP2, OP1)],
    ),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_signing_logic_meets_the_contract(case: Case, check: object) -> None:
    check(case)  # type: ignore[operator]
