"""Operators' signed commands: the guard verifies them before its playbook acts, and the
`riskguard command` CLI writes, co-signs, shows and publishes them (two-person resume)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from riskguard.connectors.subscriber import CommandSubscriber
from riskguard.dataflows.guard.steps import unhandled_letter
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, decode_envelope, sign_envelope
from riskguard.operators.signing.operator_commands import OperatorCommandLogic
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas import DeadLetter, MitigationCommand
from riskguard.schemas.commands import Action, Audience
from signing_fixtures import (
    AUD,
    ENGINE,
    FIRM,
    OP1,
    OP2,
    T0,
    VENUE_X,
    command,
    seed,
    trust_store,
    write_signed_trust,
)

from riskguard.cli import main
from tests.kafka_helpers import consume_all


def verify_fresh(env: object) -> object:
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic,
                                 clock=ManualClock(T0))
    return logic.check(env)  # type: ignore[arg-type]


def _resume(*signers, **params) -> object:  # type: ignore[no-untyped-def]
    cmd = command(9, issuer="op-alice", action=Action.RESUME, scope=FIRM,
                  params={"actions": ["halt_trading"], **params})
    return sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(signers))


def test_a_firm_resume_with_one_signature_never_reaches_the_playbook() -> None:
    out = verify_fresh(_resume(OP1))
    assert isinstance(out, DeadLetter)
    assert out.reason == "command_two_person_required"
    assert out.step == "verify_operator" and out.raw  # audited with its bytes


def test_approvals_are_the_verified_signers_whatever_the_payload_claims() -> None:
    out = verify_fresh(_resume(OP1, OP2, approvals=5.0))
    assert isinstance(out, MitigationCommand)
    assert out.params["approvals"] == 2.0 and out.params["actions"] == ["halt_trading"]


def test_a_key_not_allowed_to_resume_is_refused_with_its_reason() -> None:
    cmd = command(3, issuer="engine-1", action=Action.RESUME, scope=VENUE_X)
    out = verify_fresh(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [ENGINE]))
    assert isinstance(out, DeadLetter) and out.reason.startswith("command_")
    assert out.reason != "command_two_person_required"


def test_an_operators_command_id_used_first_by_another_operator_is_still_accepted() -> None:
    """Command ids are each signer's own: op-bob's command carrying the id op-alice's
    resume will use leaves hers to pass; hers presented again is a replay."""
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic,
                                 clock=ManualClock(T0))
    alice = command(9, issuer="op-alice", action=Action.RESUME, scope=VENUE_X)
    bob = msgspec.structs.replace(
        command(9, issuer="op-bob", action=Action.RESUME, scope=VENUE_X),
        command_id=alice.command_id)
    signed = [sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(c), [k])
              for c, k in ((bob, OP2), (alice, OP1))]
    out = [logic.check(env) for env in (*signed, signed[1])]
    assert [type(o).__name__ for o in out] == ["MitigationCommand"] * 2 + ["DeadLetter"]
    assert out[2].reason == "command_replayed_command_id"  # type: ignore[union-attr]


def test_one_operator_s_flood_is_capped_and_leaves_another_s_commands_alone() -> None:
    """The commands remembered against replay are counted per signer until they expire:
    past its quota one key's next is refused (command_too_many_commands), another's still
    passes, and once they expire the first key has room again."""
    from riskguard.operators.core.dedup import MAX_IDS_PER_SIGNER

    clock = ManualClock(T0)
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic, clock=clock)

    def check(issuer: str, key: object, n: int) -> str:
        cmd = command(n, issuer=issuer, seq=n, action=Action.RESUME, scope=VENUE_X,
                      issued_at=clock(), ttl=60 * 10**9)
        out = logic.check(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [key]))
        return "ok" if isinstance(out, MitigationCommand) else out.reason

    outs = [check("op-alice", OP1, n) for n in range(1, MAX_IDS_PER_SIGNER + 2)]
    assert outs[:-1] == ["ok"] * MAX_IDS_PER_SIGNER
    assert outs[-1] == "command_too_many_commands"
    assert check("op-bob", OP2, 1) == "ok"
    clock.advance(10 * 60 * 10**9)  # every one of them expired, past the leeway
    assert check("op-alice", OP1, MAX_IDS_PER_SIGNER + 2) == "ok"
    assert len(logic.snapshot().seen) == 1


def test_a_bare_command_record_is_refused_as_unsigned() -> None:
    out = unhandled_letter(command(4, action=Action.RESUME))
    assert (out.reason, out.found) == ("unsigned_command", "MitigationCommand")


def key_file(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.pem"
    key = Ed25519PrivateKey.from_private_bytes(seed(name))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


@pytest.mark.kafka
def test_two_person_resume_through_the_cli_is_verified_and_executed(
    tmp_path, kafka_bootstrap, new_topic, capsys
) -> None:
    """Alice writes and signs a firm-wide resume; alone it is not valid; Bob reviews and
    co-signs; published, a subscriber executes it; Bob cannot sign twice."""
    trust, roots = write_signed_trust(tmp_path)
    topic = new_topic()
    env_file = tmp_path / "resume.json"
    base = ["command", "new", "--action", "resume", "--scope", "firm:*", "--reason",
            "INC-7 halt cleared", "--key", str(key_file(tmp_path, "op-alice")),
            "--issuer", "op-alice", "--env", AUD.env, "--topic", topic,
            "--lift", "halt_trading", "--brokers", kafka_bootstrap, "--out", str(env_file)]
    assert main(base) == 0
    assert main(["command", "show", str(env_file), "--trust", str(trust),
                 "--roots", str(roots)]) == 1
    assert "two_person_required" in capsys.readouterr().out
    bob = str(key_file(tmp_path, "op-bob"))
    assert main(["command", "cosign", str(env_file), "--key", bob]) == 0
    assert "INC-7 halt cleared" in capsys.readouterr().out  # Bob saw what he approved
    assert main(["command", "cosign", str(env_file), "--key", bob]) == 2
    assert main(["command", "show", str(env_file), "--trust", str(trust),
                 "--roots", str(roots)]) == 0
    assert "2 authorized signer(s)" in capsys.readouterr().out
    assert main(["command", "publish", str(env_file), "--brokers", kafka_bootstrap,
                 "--topic", topic]) == 0
    assert len(consume_all(kafka_bootstrap, topic, expect=1)) == 1
    env = decode_envelope(env_file.read_bytes())
    assert len(env.signatures) == 2
    got: list[MitigationCommand] = []
    store = TrustStore.load(trust, RootSet.load(roots))
    with CommandSubscriber(trust=store, audience=Audience(env=AUD.env, topic=topic),
                           state_path=tmp_path / "sub.sqlite", on_command=got.append,
                           brokers=kafka_bootstrap, topic=topic) as sub:
        sub.poll(idle_timeout_s=1.0)
    assert [(c.action.value, c.scope.label(), c.seq) for c in got] == [
        ("resume", "firm:*", 1)]
