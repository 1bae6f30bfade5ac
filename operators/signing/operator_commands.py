"""Operators' signed commands (a resume, a manual halt), verified once each before the
playbook sees them.

An operator's command arrives as a signed envelope on the limit-updates topic, verifies
against the trust file exactly as a subscriber checks it (audience: the commands topic),
and acts once: presented again, under its old id or an older ``seq``, it is refused as a
replay. The replay state is in the snapshot, so a resumed guard refuses it too.

>>> from riskguard.operators.core.clock import ManualClock
>>> from riskguard.operators.signing.trust import TrustDoc, TrustStore
>>> logic = OperatorCommandLogic(TrustStore(TrustDoc(keys=())), env="prod",
...                              topic="prod.riskguard.commands.v1", clock=ManualClock(0))
>>> logic.snapshot()
OperatorCommandState(seen={}, signers={}, high_water={}, version=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from riskguard.operators.core.clock import Clock
from riskguard.operators.core.dedup import Expiries, IdWindow, SignedReplays, signer_id
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import (
    PAYLOAD_ACK,
    PAYLOAD_COMMAND,
    Reason,
    encode_envelope,
)
from riskguard.operators.signing.trust import DEFAULT_LEEWAY_NS, TrustStore
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import source_of
from riskguard.schemas.commands import (
    Audience,
    ExecutionAck,
    MitigationCommand,
    SignedEnvelope,
)

from riskguard.errors import VerificationError

OPERATOR_COMMANDS_KEY = "operator_commands"
"""The one key all operators' commands share (one replay state for the firm)."""


@persisted("riskguard.operator_commands")
@dataclass
class OperatorCommandState:
    """Replay state (:class:`~riskguard.operators.core.dedup.SignedReplays`): accepted
    commands (``<issuer>:<command id>``) with their expiry and their issuer, and each
    issuer's highest ``seq``. An id is forgotten once its command has expired (past the
    leeway): it could not verify again anyway."""

    seen: dict[str, int] = field(default_factory=dict)
    signers: dict[str, str] = field(default_factory=dict)
    high_water: dict[str, int] = field(default_factory=dict)
    version: int = 2


class OperatorCommandLogic:
    """Verify each operator's envelope once; emit the command or a dead letter.

    The command that passes carries ``params["approvals"]`` = the number of distinct
    people who signed it (key names, not keys), whatever the payload claimed. A
    refusal is a dead letter with reason ``command_<reason>`` (audited), e.g.
    ``command_replayed_command_id`` for the same command presented twice.
    """

    def __init__(self, trust: TrustStore, *, env: str, topic: str, clock: Clock,
                 state: OperatorCommandState | None = None,
                 leeway_ns: int = DEFAULT_LEEWAY_NS) -> None:
        self.trust = trust
        self.audience = Audience(env=env, topic=topic)
        self.clock = clock
        self.leeway_ns = leeway_ns
        st = self.state = state if state is not None else OperatorCommandState()
        self._replays = SignedReplays(st.seen, st.signers, st.high_water, leeway_ns=leeway_ns)

    def snapshot(self) -> OperatorCommandState:
        st = self.state
        return OperatorCommandState(seen=dict(st.seen), signers=dict(st.signers),
                                    high_water=dict(st.high_water))

    def on_event(self, env: SignedEnvelope) -> list[MitigationCommand | DeadLetter]:
        return [self.check(env)]

    def check(self, env: SignedEnvelope) -> MitigationCommand | DeadLetter:
        """The verified command (approvals counted) or the dead letter saying why not."""
        now = self.clock()
        try:
            v = self.trust.verify(env, expected_payload_type=PAYLOAD_COMMAND,
                                  audience=self.audience, now_ns=now, leeway_ns=self.leeway_ns)
        except VerificationError as err:
            return _refused(env, now, err.reason, err.detail)
        cmd = v.message
        assert isinstance(cmd, MitigationCommand)  # PAYLOAD_COMMAND decodes to a command
        refused = self._replays.refusal(cmd.issuer, cmd.command_id, cmd.seq, now)
        if refused is not None:
            kind, detail = refused
            return _refused(env, now, _REPLAY_REASONS[kind], f"command_id {detail}"
                            if kind == "id" else detail)
        self._replays.remember(cmd.issuer, cmd.command_id, cmd.seq, cmd.expires_at)
        params = {**cmd.params, "approvals": float(len(v.approvers))}
        return msgspec.structs.replace(cmd, params=params)


_REPLAY_REASONS = {"id": Reason.REPLAYED_COMMAND_ID.value, "seq": Reason.REPLAYED_SEQ.value,
                   "quota": "too_many_commands"}


def _refused(env: SignedEnvelope, now: int, reason: str, detail: str, *,
             what: str = "command", step: str = "verify_operator",
             expected: str = "a verified operator command") -> DeadLetter:
    topic, partition, offset = source_of(env) or ("limit_updates", -1, -1)
    return DeadLetter.of(topic=topic, partition=partition, offset=offset, ts=now,
                         reason=f"{what}_{reason}", expected=expected,
                         found=detail, step=step, raw=encode_envelope(env))


ACKS_KEY = "acks"
"""The one key all executors' acks share (one replay state for the guard)."""
MAX_REFUSALS_KEPT = 4096
"""Refused or failed acks remembered (each raises its alert once); the oldest go first."""


@persisted("riskguard.ack_replay")
@dataclass
class AckState:
    """Replay state of executors' acks: each executor's highest ``seq``, and the refused
    or failed acks already passed on (``ack_id`` -> ``expires_at``, at most
    :data:`MAX_REFUSALS_KEPT`)."""

    high_water: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    version: int = 1


class AckLogic:
    """Verify executors' acks (signed, on the acks topic) against the trust file, once each.

    It needs a key of role ``executor`` allowed that action and scope, the acks topic's
    audience and freshness. An ack about a command no guard replica issued
    (``ack_not_ours``), one at or below its executor's ``seq`` (``ack_replayed_seq``) and
    a refusal already passed on (``ack_repeated``) are dead letters, so each refusal
    raises its alert once.
    """

    def __init__(self, trust: TrustStore, *, env: str, topic: str, clock: Clock,
                 state: AckState | None = None,
                 leeway_ns: int = DEFAULT_LEEWAY_NS) -> None:
        self.trust = trust
        self.audience = Audience(env=env, topic=topic)
        self.clock = clock
        self.leeway_ns = leeway_ns
        self.guards = trust.doc.replica_issuers()
        self.state = state if state is not None else AckState()
        refused = self.state.refused
        self._refused = IdWindow(refused, MAX_REFUSALS_KEPT)
        self._expiring = Expiries(refused)

    def snapshot(self) -> AckState:
        return AckState(high_water=dict(self.state.high_water),
                        refused=dict(self.state.refused), version=self.state.version)

    def on_event(self, env: SignedEnvelope) -> list[ExecutionAck | DeadLetter]:
        return [self.check(env)]

    def check(self, env: SignedEnvelope) -> ExecutionAck | DeadLetter:
        now = self.clock()
        try:
            v = self.trust.verify(env, expected_payload_type=PAYLOAD_ACK, audience=self.audience,
                                  now_ns=now, leeway_ns=self.leeway_ns)
        except VerificationError as err:
            return _ack_refused(env, now, err.reason, err.detail)
        ack = v.message
        assert isinstance(ack, ExecutionAck)  # PAYLOAD_ACK decodes to an ack
        st = self.state
        if ack.command_issuer not in self.guards:
            return _ack_refused(env, now, "not_ours",
                                f"acks a command of {ack.command_issuer!r}, not of a guard "
                                f"replica ({', '.join(sorted(self.guards)) or 'none'})")
        high = st.high_water.get(ack.issuer)
        if high is not None and ack.seq <= high:
            return _ack_refused(env, now, Reason.REPLAYED_SEQ.value,
                                f"seq {ack.seq} <= high-water {high} of {ack.issuer!r}")
        st.high_water[ack.issuer] = ack.seq
        if ack.outcome.value in ("refused", "failed"):
            self._forget_expired(now)
            # named by its signer and command, not by the ack_id it carries
            refusal = signer_id(ack.issuer, ack.command_id)
            if refusal in st.refused:
                return _ack_refused(env, now, "repeated",
                                    f"{refusal} {ack.outcome.value} already: its alert "
                                    "was raised")
            self._refused.add(refusal, ack.expires_at)
            self._expiring.add(refusal, ack.expires_at)
        return ack

    def _forget_expired(self, now: int) -> None:
        """Forget the refusals expired past the leeway (freshness refuses their acks)."""
        for key in self._expiring.before(now - self.leeway_ns):
            self._refused.discard(key)


def _ack_refused(env: SignedEnvelope, now: int, reason: str, detail: str) -> DeadLetter:
    return _refused(env, now, reason, detail, what="ack", step="verify_ack",
                    expected="a verified execution ack")
