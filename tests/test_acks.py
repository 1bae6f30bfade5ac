"""Execution acks: signed by an executor's key, verified by role, sent for every outcome."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from kafka_helpers import topic_values
from riskguard.connectors.acks import (
    AckingExecutor,
    AckSigner,
    Applied,
    KafkaAckSender,
    verify_ack_bytes,
)
from riskguard.connectors.subscriber import CommandSubscriber, Duplicate
from riskguard.connectors.topics import TopicSpec, create_topics, topic_name
from riskguard.operators.signing.crypto import (
    PAYLOAD_ACK,
    PAYLOAD_COMMAND,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.operators.signing.operator_commands import AckLogic
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.schemas import (
    AckOutcome,
    Action,
    Audience,
    DeadLetter,
    ExecutionAck,
    MitigationCommand,
    Scope,
    ScopeKind,
)
from signing_fixtures import AUD, ENGINE, ENGINE2, T0, S, key_entries, signer, trust_text

EXECUTOR = signer("executor-1")
VENUE_ONLY = signer("executor-okx")
ACKS = Audience(env=AUD.env, topic=topic_name(AUD.env, "acks"))
OKX = Scope(kind=ScopeKind.VENUE, value="okx")


def trust() -> TrustStore:
    return TrustStore(parse_trust(trust_text(entries=[*key_entries(), {
        "name": "executor-1", "public_key": EXECUTOR.public_key.hex(), "role": "executor",
        "actions": ["*"], "scopes": ["*"]}, {
        "name": "executor-okx", "public_key": VENUE_ONLY.public_key.hex(), "role": "executor",
        "actions": ["halt_trading"], "scopes": ["venue:okx"]}])))


def command(cid: str = "c1", *, scope: Scope = OKX, seq: int = 1, by: str = "engine-1",
            decision: str | None = "d" * 64) -> MitigationCommand:
    return MitigationCommand(command_id=cid, issuer=by, seq=seq, issued_at=T0,
                             expires_at=T0 + 300 * S, audience=AUD, action=Action.HALT_TRADING,
                             scope=scope, reason="test", decision_id=decision,
                             protective_orders_allowed=True)


def signed_command(cmd: MitigationCommand, key=ENGINE) -> bytes:  # type: ignore[no-untyped-def]
    payload = msgspec.json.encode(cmd)
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, payload, [key]))


def ack_signer(key=EXECUTOR, at: int = T0 + S) -> AckSigner:  # type: ignore[no-untyped-def]
    return AckSigner(key, env=AUD.env, clock=lambda: at)


def verify(data: bytes, now: int = T0 + 2 * S) -> ExecutionAck | DeadLetter:
    logic = AckLogic(trust(), env=AUD.env, topic=ACKS.topic, clock=lambda: now)
    return logic.check(decode_envelope(data))


def test_an_ack_verifies_by_the_executor_role_and_says_what_it_confirms() -> None:
    signer_ = ack_signer()
    data = signer_.sign(signer_.ack(command(), Applied(AckOutcome.APPLIED,
                                                       detail={"halted": ["BTC-USDT"]})))
    ack = verify(data)
    assert isinstance(ack, ExecutionAck)
    assert (ack.ack_id, ack.issuer, ack.command_id, ack.command_issuer, ack.decision_id) == (
        "executor-1:c1", "executor-1", "c1", "engine-1", "d" * 64)
    assert (ack.outcome, ack.action, ack.scope, ack.detail) == (
        AckOutcome.APPLIED, Action.HALT_TRADING, OKX, {"halted": ["BTC-USDT"]})
    assert ack.audience == ACKS and ack.expires_at > ack.issued_at


@pytest.mark.parametrize(("key", "scope", "reason"), [
    (ENGINE, OKX, "ack_role_not_permitted"),          # an engine may not ack
    (signer("mallory"), OKX, "ack_unknown_key"),      # nobody the trust file names
    (VENUE_ONLY, Scope(kind=ScopeKind.VENUE, value="binance"), "ack_scope_not_authorized"),
])
def test_acks_from_keys_not_allowed_to_give_them_are_dead_letters(
        key, scope: Scope, reason: str) -> None:  # type: ignore[no-untyped-def]
    s = AckSigner(key, env=AUD.env, clock=lambda: T0 + S)
    out = verify(s.sign(s.ack(command(scope=scope), Applied(AckOutcome.APPLIED))))
    assert isinstance(out, DeadLetter)
    assert (out.reason, out.step) == (reason, "verify_ack")


def test_an_ack_presented_again_is_a_replay_and_a_refusal_alerts_once() -> None:
    """Any executor key could otherwise raise command_refused without end: the same ack
    again is refused by its seq, and a refusal of a command already refused (a new seq)
    is passed on once."""
    logic = AckLogic(trust(), env=AUD.env, topic=ACKS.topic, clock=lambda: T0 + 2 * S)
    clock = [T0 + S]
    s = AckSigner(EXECUTOR, env=AUD.env, clock=lambda: clock[0])
    refused = s.sign(s.ack(command(), Applied(AckOutcome.REFUSED, "scope unknown")))
    clock[0] += 1000
    again = s.sign(s.ack(command(), Applied(AckOutcome.REFUSED, "scope unknown")))
    clock[0] += 1000
    applied = s.sign(s.ack(command(), Applied(AckOutcome.APPLIED)))
    out = [logic.check(decode_envelope(b)) for b in (refused, refused, again, applied)]
    assert isinstance(out[0], ExecutionAck) and isinstance(out[3], ExecutionAck)
    assert [getattr(o, "reason", None) for o in out[1:3]] == [
        "ack_replayed_seq", "ack_repeated"]
    resumed = AckLogic(trust(), env=AUD.env, topic=ACKS.topic, clock=lambda: T0 + 2 * S,
                       state=logic.snapshot())
    replay = resumed.check(decode_envelope(applied))
    assert isinstance(replay, DeadLetter) and replay.reason == "ack_replayed_seq"


def test_an_ack_about_a_command_no_guard_issued_is_refused() -> None:
    s = ack_signer()
    out = verify(s.sign(s.ack(command(by="op-alice"), Applied(AckOutcome.REFUSED, "no"))))
    assert isinstance(out, DeadLetter) and out.reason == "ack_not_ours"


def test_a_stale_or_misaddressed_ack_is_refused() -> None:
    s = ack_signer()
    data = s.sign(s.ack(command(), Applied(AckOutcome.APPLIED)))
    stale = verify(data, now=T0 + 2 * 3600 * S)
    assert isinstance(stale, DeadLetter) and stale.reason == "ack_expired"
    other = AckSigner(EXECUTOR, env="staging", clock=lambda: T0 + S)
    wrong = verify(other.sign(other.ack(command(), Applied(AckOutcome.APPLIED))))
    assert isinstance(wrong, DeadLetter) and wrong.reason == "ack_wrong_audience"


def test_an_executor_key_cannot_sign_a_command(tmp_path: Path) -> None:
    sub, acks = subscriber(lambda _c: Applied(AckOutcome.APPLIED), tmp_path)
    rej = sub.handle(signed_command(command(by="executor-1"), EXECUTOR))
    assert getattr(rej, "reason", None) == "role_not_permitted"
    assert acks == []


def subscriber(apply, tmp: Path):  # type: ignore[no-untyped-def]
    acks: list[bytes] = []
    ex = AckingExecutor(apply, ack_signer(), acks.append)
    path = tmp / f"sub-{id(ex)}.sqlite"
    sub = CommandSubscriber(trust=trust(), audience=AUD, state_path=path,
                            clock=lambda: T0 + S, **ex.hooks())
    return sub, acks


def outcomes(acks: list[bytes]) -> list[tuple[str, str, str]]:
    out = []
    for data in acks:
        a = verify_ack_bytes(data, EXECUTOR.public_key)
        out.append((a.command_id, a.outcome.value, a.reason))
    return out


def test_every_outcome_is_acknowledged_and_a_forgery_gets_nothing(tmp_path: Path) -> None:
    applied: list[str] = []

    def apply(cmd: MitigationCommand) -> Applied:
        if cmd.command_id == "boom":
            raise RuntimeError("gateway down")
        applied.append(cmd.command_id)
        return Applied(AckOutcome.APPLIED)

    sub, acks = subscriber(apply, tmp_path)
    sub.handle(signed_command(command("c1", decision="1" * 64)))
    # another replica's copy of the same decision: not executed, confirmed as held
    dup = sub.handle(signed_command(command("c1-b", by="engine-2", decision="1" * 64), ENGINE2))
    assert isinstance(dup, Duplicate)
    # the same mitigation re-derived under a new id and decision (a restarted guard)
    sub.handle(signed_command(command("c2", seq=2, decision="2" * 64)))
    # the executor raises: a failed ack naming the error, never silence
    sub.handle(signed_command(command("boom", seq=3, decision="3" * 64,
                                      scope=Scope(kind=ScopeKind.VENUE, value="binance"))))
    # forged: signed by a key the trust file does not hold
    sub.handle(signed_command(command("forged", seq=4), signer("mallory")))
    assert applied == ["c1"]
    assert outcomes(acks) == [
        ("c1", "applied", ""),
        ("c1-b", "already_applied", "duplicate_decision"),
        ("c2", "already_applied", "already_in_force"),
        ("boom", "failed", "RuntimeError: gateway down"),
    ]


def test_an_ack_that_cannot_be_delivered_stops_the_command_being_committed(
        tmp_path: Path) -> None:
    def lost(_data: bytes) -> None:
        raise OSError("acks topic unreachable")

    ex = AckingExecutor(lambda _c: Applied(AckOutcome.APPLIED), ack_signer(), lost)
    sub = CommandSubscriber(trust=trust(), audience=AUD, state_path=tmp_path / "s.sqlite",
                            clock=lambda: T0 + S, **ex.hooks())
    with pytest.raises(OSError, match="unreachable"):
        sub.handle(signed_command(command()))
    # re-delivered after the crash: handled again (the executor answers already_applied)
    assert not sub.state.seen("guard", "c1")


def test_the_ack_sender_delivers_to_the_acks_topic(kafka_bootstrap: str) -> None:
    env = "acktest"
    create_topics({"bootstrap.servers": kafka_bootstrap}, [TopicSpec(topic_name(env, "acks"))])
    s = AckSigner(EXECUTOR, env=env, clock=lambda: T0 + S)
    send = KafkaAckSender(kafka_bootstrap, env)  # an address, as the subscriber takes
    sent = [s.sign(s.ack(command(f"c{i}"), Applied(AckOutcome.APPLIED))) for i in range(3)]
    for data in sent:
        send(data)
    assert send.delivered == 3
    got = topic_values(kafka_bootstrap, topic_name(env, "acks"))
    assert got == sent
    assert decode_envelope(got[0]).payload_type == PAYLOAD_ACK


def test_a_copy_of_a_command_that_failed_is_executed_not_confirmed(tmp_path: Path) -> None:
    """A refused or failed command is not in force: another replica's copy of the same
    decision, or the same mitigation re-derived, is applied again and answered by what
    the executor did then, never `already_applied` in its place."""
    tries: list[str] = []

    def apply(cmd: MitigationCommand) -> Applied:
        tries.append(cmd.command_id)
        if len(tries) == 1:
            raise RuntimeError("gateway down")
        return Applied(AckOutcome.APPLIED)

    sub, acks = subscriber(apply, tmp_path)
    sub.handle(signed_command(command("h1", decision="1" * 64)))
    # replicas derive the same command id for one decision
    sub.handle(signed_command(command("h1", by="engine-2", decision="1" * 64), ENGINE2))
    sub.handle(signed_command(command("h2", seq=2, decision="1" * 64)))
    assert tries == ["h1", "h1"]
    assert outcomes(acks) == [
        ("h1", "failed", "RuntimeError: gateway down"),
        ("h1", "applied", ""),
        ("h2", "already_applied", "duplicate_decision"),
    ]
    assert sub.summary()["not_applied"] == 1



def test_an_executor_cannot_use_up_another_executors_refusal() -> None:
    """A refusal is named by its signer and command, not by the ack_id it carries: an
    executor that sends a refusal under another executor's ack_id leaves that executor's
    real refusal of its command to pass, and raise its alert."""
    logic = AckLogic(trust(), env=AUD.env, topic=ACKS.topic, clock=lambda: T0 + 2 * S)
    one, other = AckSigner(EXECUTOR, env=AUD.env, clock=lambda: T0 + S), AckSigner(
        VENUE_ONLY, env=AUD.env, clock=lambda: T0 + S)
    taken = msgspec.structs.replace(
        one.ack(command("other"), Applied(AckOutcome.REFUSED, "x")),
        ack_id="executor-okx:c1")
    assert isinstance(logic.check(decode_envelope(one.sign(taken))), ExecutionAck)
    real = logic.check(decode_envelope(other.sign(other.ack(
        command("c1"), Applied(AckOutcome.REFUSED, "gateway down")))))
    assert isinstance(real, ExecutionAck) and real.reason == "gateway down"


def test_the_refusals_remembered_are_the_newest_and_expired_ones_are_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals kept (each raises its alert once) are a window of the newest
    ``MAX_REFUSALS_KEPT``; one whose ack has expired past the leeway is forgotten when the
    next refusal comes, as its ack could not verify again."""
    from riskguard.operators.signing import operator_commands

    monkeypatch.setattr(operator_commands, "MAX_REFUSALS_KEPT", 3)
    now = [T0 + S]
    logic = AckLogic(trust(), env=AUD.env, topic=ACKS.topic, clock=lambda: now[0])
    s = AckSigner(EXECUTOR, env=AUD.env, clock=lambda: now[0])
    for n in range(5):
        now[0] += 1000
        ack_ = logic.check(decode_envelope(s.sign(s.ack(
            command(f"c{n}"), Applied(AckOutcome.REFUSED, "no")))))
        assert isinstance(ack_, ExecutionAck)
    assert list(logic.state.refused) == ["executor-1:c2", "executor-1:c3", "executor-1:c4"]
    now[0] += s.ttl_ns + logic.leeway_ns + S  # every ack so far has expired
    logic.check(decode_envelope(s.sign(s.ack(command("c9"), Applied(AckOutcome.FAILED, "x")))))
    assert list(logic.state.refused) == ["executor-1:c9"]
