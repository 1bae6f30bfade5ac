"""The signing logic meets the generic stateful-logic contract."""

from __future__ import annotations

import msgspec
import pytest
from contract import CHECKS, Case
from riskguard.connectors.acks import AckSigner, Applied
from riskguard.operators.audit import AuditConfig, AuditLogic
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing import SignConfig, sign_builder
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, decode_envelope, sign_envelope
from riskguard.operators.signing.operator_commands import AckLogic, OperatorCommandLogic
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.schemas import AckOutcome
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.commands import Action
from signing_fixtures import (
    AUD,
    ENGINE,
    FIRM,
    OP1,
    OP2,
    T0,
    command,
    key_entries,
    signer,
    trust_store,
    trust_text,
)


def _resume(n: int, seq: int, *signers):  # type: ignore[no-untyped-def]
    cmd = command(n, issuer="op-alice", seq=seq, action=Action.RESUME, scope=FIRM,
                  params={"actions": ["halt_trading"]})
    return sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(signers))


TRUST = trust_store()
EXECUTOR = signer("executor-1")
ACK_TRUST = TrustStore(parse_trust(trust_text(entries=[*key_entries(), {
    "name": "executor-1", "public_key": EXECUTOR.public_key.hex(), "role": "executor",
    "actions": ["*"], "scopes": ["*"]}])))
ACK_SIGNER = AckSigner(EXECUTOR, env=AUD.env)


def _ack(n: int, at: int, outcome: AckOutcome = AckOutcome.REFUSED):  # type: ignore[no-untyped-def]
    s = AckSigner(EXECUTOR, env=AUD.env, clock=lambda: at)
    return decode_envelope(s.sign(s.ack(command(n), Applied(outcome))))


CASES = [
    Case(
        name="sign",
        builder=sign_builder(ENGINE, SignConfig(recent_ids=4)),
        events=[command(i) for i in (1, 2, 3, 2, 4, 5, 6, 1, 7)] + ["junk"],
    ),
    Case(
        name="audit",
        builder=lambda state: AuditLogic("c0", ENGINE, AuditConfig(checkpoint_every=3), state),
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
    Case(
        name="acks",
        builder=lambda state: AckLogic(
            ACK_TRUST, env=AUD.env, topic=ACK_SIGNER.audience.topic, clock=ManualClock(T0),
            state=state),
        # refused, the same ack replayed, refused again (a new seq), applied, replayed
        events=[_ack(1, T0), _ack(1, T0), _ack(1, T0 + 10**6),
                _ack(2, T0 + 2 * 10**6, AckOutcome.APPLIED),
                _ack(2, T0 + 2 * 10**6, AckOutcome.APPLIED)],
    ),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_signing_logic_meets_the_contract(case: Case, check: object) -> None:
    check(case)  # type: ignore[operator]
