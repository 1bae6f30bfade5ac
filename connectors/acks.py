"""Execution acknowledgements: an executor's signed word that it applied or refused a command.

An executor answers each verified command with an
:class:`~riskguard.schemas.ExecutionAck` signed by its own key (trust-file role
``executor``) on ``<env>.riskguard.acks.v1``; the guard verifies it like a command and
so knows a command was applied, not only sent (docs/executors.md).
:class:`AckingExecutor` is the subscriber callback every executor uses.

>>> from riskguard.operators.signing.crypto import Signer
>>> from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind
>>> cmd = MitigationCommand(command_id="c1", issuer="engine", issued_at=1, expires_at=9,
...     audience=Audience(env="dev", topic="dev.riskguard.commands.v1"),
...     action=Action.HALT_TRADING, scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="r")
>>> signer = Signer.from_private_bytes(bytes(32), issuer="exec-1")
>>> acks = []
>>> ex = AckingExecutor(lambda c: Applied(AckOutcome.APPLIED, detail={"venue": "okx"}),
...                     AckSigner(signer, env="dev", clock=lambda: 100), acks.append)
>>> ex.on_command(cmd).outcome.value
'applied'
>>> ack = verify_ack_bytes(acks[0], signer.public_key)
>>> (ack.ack_id, ack.outcome.value, ack.action.value, ack.detail)
('exec-1:c1', 'applied', 'halt_trading', {'venue': 'okx'})
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import msgspec
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import topic_name
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.signing.crypto import (
    PAYLOAD_ACK,
    Signer,
    VerifyKey,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas.commands import AckOutcome, Audience, ExecutionAck, MitigationCommand

log = logging.getLogger(__name__)

ACKS_STREAM = "acks"
DEFAULT_ACK_TTL_S = 3600.0
"""How long a signed ack stays acceptable to the guard (its ``expires_at``): long enough
for a guard restarted or catching up to still read it. An ack's lifetime is checked
against the trust file's default ``max_ttl_s`` (not the per-action limits commands
are): a default below this refuses every ack as ``ttl_too_long``."""
_encoder = msgspec.json.Encoder()
_ack_decoder = msgspec.json.Decoder(ExecutionAck)


@dataclass(frozen=True)
class Applied:
    """What an executor did with one command: the ack's outcome, reason and detail."""

    outcome: AckOutcome
    reason: str = ""
    detail: dict[str, float | str | list[str]] = field(default_factory=dict)
    settles: str = ""
    """``already_applied`` for a command found in force: the executed command it found."""


class AckSigner:
    """Builds and signs acks as one executor.

    ``seq`` rises with every ack and never falls across restarts: it starts from
    the clock in microseconds, so a guard can tell a stale ack from a newer one.
    """

    def __init__(self, signer: Signer, *, env: str, clock: Clock = system_clock,
                 ttl_s: float = DEFAULT_ACK_TTL_S) -> None:
        if not signer.issuer:
            msg = "an ack signer needs the executor's issuer name (Signer(issuer=...))"
            raise ValueError(msg)
        self.signer = signer
        self.clock = clock
        self.ttl_ns = int(ttl_s * 1_000_000_000)
        self.audience = Audience(env=env, topic=topic_name(env, ACKS_STREAM))
        self._seq = 0

    def ack(self, cmd: MitigationCommand, applied: Applied) -> ExecutionAck:
        now = self.clock()
        self._seq = max(self._seq + 1, now // 1000)
        issuer = self.signer.issuer
        return ExecutionAck(
            ack_id=f"{issuer}:{cmd.command_id}", issuer=issuer, seq=self._seq,
            issued_at=now, expires_at=now + self.ttl_ns, audience=self.audience,
            command_id=cmd.command_id, command_issuer=cmd.issuer,
            decision_id=cmd.decision_id, action=cmd.action, scope=cmd.scope,
            outcome=applied.outcome, reason=applied.reason[:500], detail=dict(applied.detail),
            settles=applied.settles or None,
        )

    def sign(self, ack: ExecutionAck) -> bytes:
        """The ack as signed envelope bytes, ready for the acks topic."""
        return encode_envelope(sign_envelope(PAYLOAD_ACK, _encoder.encode(ack), [self.signer]))


def verify_ack_bytes(data: bytes, key: VerifyKey) -> ExecutionAck:
    """Check one ack's signature with a known key and return it (tests and tools;
    the guard verifies acks through its trust store, which also checks the role,
    the actions and scopes the key may ack, the audience and freshness)."""
    env = decode_envelope(data)
    if env.payload_type != PAYLOAD_ACK or not env.signatures:
        msg = f"not an execution ack: {env.payload_type!r}"
        raise ValueError(msg)
    key.verify(PAYLOAD_ACK, env.payload, env.signatures[0].sig)
    return _ack_decoder.decode(env.payload)


class SubscriberHooks(TypedDict):
    """The subscriber callbacks an executor provides (:meth:`AckingExecutor.hooks`)."""

    on_command: Callable[[MitigationCommand], Applied]
    on_settled: Callable[[MitigationCommand, str, str], None]


class AckingExecutor:
    """The subscriber callback that applies each verified command and acknowledges it.

    ``apply`` acts on the trading system and returns :class:`Applied`; it must be
    idempotent on ``command_id`` (the subscriber re-delivers the command it was
    executing when a crash hit), answering ``already_applied`` to a repeat. An
    exception from ``apply`` is acknowledged as ``failed`` (naming it) and logged,
    never lost: the guard escalates a failed halt as it does a silent one. ``send``
    delivers the signed bytes; it must raise if delivery fails, so the subscriber
    does not commit a command whose ack was lost.
    """

    def __init__(self, apply: Callable[[MitigationCommand], Applied], signer: AckSigner,
                 send: Callable[[bytes], Any]) -> None:
        self.apply = apply
        self.signer = signer
        self.send = send
        self.sent: list[ExecutionAck] = []

    def on_command(self, cmd: MitigationCommand) -> Applied:
        """The subscriber's ``on_command``: apply, then acknowledge; returns what was done
        (the subscriber records a refused or failed command as not in force)."""
        try:
            applied = self.apply(cmd)
        except Exception as err:  # the trading system refused in a way we did not foresee
            log.exception("executor failed on %s %s", cmd.action.value, cmd.command_id)
            applied = Applied(AckOutcome.FAILED, f"{type(err).__name__}: {err}")
        self._send(cmd, applied)
        return applied

    def on_settled(self, cmd: MitigationCommand, reason: str, settles: str = "") -> None:
        """The subscriber's ``on_settled``: acknowledged as ``already_applied`` without
        acting, naming the executed command that holds it (``settles``)."""
        self._send(cmd, Applied(AckOutcome.ALREADY_APPLIED, reason, settles=settles))

    def hooks(self) -> SubscriberHooks:
        """``CommandSubscriber(**executor.hooks(), ...)``: both callbacks at once."""
        return {"on_command": self.on_command, "on_settled": self.on_settled}

    def _send(self, cmd: MitigationCommand, applied: Applied) -> None:
        ack = self.signer.ack(cmd, applied)
        self.send(self.signer.sign(ack))
        self.sent.append(ack)
        if len(self.sent) > 1024:
            del self.sent[:512]


class KafkaAckSender:
    """Delivers signed acks to ``<env>.riskguard.acks.v1`` and waits for each delivery.
    ``settings``: a bootstrap address (``host:port``) or full
    :class:`~riskguard.connectors.settings.KafkaSettings` (TLS, SASL).

    A call returns only once Kafka acknowledged the ack, and raises
    :class:`~riskguard.errors.DeliveryError` otherwise: an executor's report is
    never dropped silently.
    """

    def __init__(self, settings: KafkaSettings | str, env: str, *,
                 delivery_timeout_s: float = 30.0) -> None:
        self.topic = topic_name(env, ACKS_STREAM)
        self._producer = CheckedProducer(settings, what=f"ack to {self.topic}",
                                         delivery_timeout_s=delivery_timeout_s, linger_ms=0)

    @property
    def delivered(self) -> int:
        """Acks Kafka acknowledged so far."""
        return self._producer.acked

    def __call__(self, data: bytes) -> None:
        self._producer.produce(self.topic, data)
        self._producer.flush()
