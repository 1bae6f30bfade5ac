"""Engine-neutral logic that turns mitigation commands into signed envelopes.

:class:`SignLogic` stamps each command with its issuer and the next ``seq`` for that
issuer, encodes it, and signs the exact bytes. The counter and the recently signed
``command_id``s are in the snapshot (the signer never is), so a resumed flow continues
the sequence; a re-emitted identical command keeps its ``seq`` (Ed25519 is
deterministic) and subscribers drop it as a replay. A signing failure raises
:class:`~riskguard.errors.SigningError`: nothing unsigned is ever emitted.

>>> from riskguard.operators.signing.crypto import Signer
>>> from riskguard.schemas import Audience, MitigationCommand, Scope, ScopeKind
>>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
>>> logic = SignLogic(signer, SignConfig())
>>> cmd = MitigationCommand(command_id="c1", issuer="x", issued_at=1, expires_at=2,
...     audience=Audience(env="prod", topic="cmds"), action="alert",
...     scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="test")
>>> [env] = logic.on_event(cmd)
>>> env.payload_type, decode_command(env).seq, decode_command(env).issuer
('application/vnd.riskguard.command+json', 1, 'engine-1')
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.core.dedup import IdWindow
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.commands import MitigationCommand, Signature, SignedEnvelope

from riskguard.errors import ConfigError, SigningError, VerificationError
from riskguard.validation import NonNegativeInt, PositiveInt, check_declared

STATE_VERSION = 2
_encoder = msgspec.json.Encoder()
_cmd_decoder = msgspec.json.Decoder(MitigationCommand)


class SignConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the signing step.

    ``issuer`` overrides the signer's issuer name (default: the signer's);
    ``recent_ids`` bounds how many signed ``command_id``s are remembered for
    idempotent re-emission; ``topic`` names the step in dead letters.
    ``resume_seq_gap``: when the operator has no ``seq_floor`` (the guard
    reads one from the commands topic), a restart from recovery jumps its
    ``seq`` by this much, so no seq delivered before the crash is reused for
    a different command (0 turns it off).
    """

    issuer: str = ""  # the issuer signed commands name; empty: the signing key's (keys.issuer)
    recent_ids: PositiveInt = 10_000
    topic: str = "commands"  # the topic a dead letter of this step names
    # a restart from recovery with no seq floor read from the commands topic jumps seq by this much,
    # so no seq is reused (0: off)
    resume_seq_gap: NonNegativeInt = 1_000_000

    def __post_init__(self) -> None:
        check_declared(self, "sign")


@persisted("riskguard.sign")
@dataclass
class SignState:
    """Per-issuer signing state: last ``seq`` and recent ``command_id -> (seq, digest)``."""

    issuer: str
    last_seq: int = 0
    recent: dict[str, tuple[int, str]] = field(default_factory=dict)
    version: int = STATE_VERSION


def _content_digest(cmd: MitigationCommand) -> str:
    """Digest of the command without the fields signing assigns."""
    body = msgspec.structs.replace(cmd, seq=0, issuer="-", trust_serial=0)
    return hashlib.sha256(_encoder.encode(body)).hexdigest()


def decode_command(env: SignedEnvelope) -> MitigationCommand:
    """Decode an envelope's command payload *without* verifying it (for display/tests)."""
    return _cmd_decoder.decode(env.payload)


class SignLogic:
    """Assigns monotonic per-issuer ``seq`` and signs commands, each stating
    ``trust_serial``: the serial of the trust file the guard runs on."""

    def __init__(self, signer: Signer, config: SignConfig, state: SignState | None = None,
                 *, trust_serial: int = 0) -> None:
        if not isinstance(signer, Signer):
            msg = f"step 'sign': signer must be a riskguard Signer; got {type(signer).__name__}"
            raise SigningError(msg)
        issuer = config.issuer or signer.issuer
        if not issuer:
            raise ConfigError("sign.issuer", "an issuer name (or a Signer with one)", issuer)
        _self_test(signer)
        self.signer = signer
        self.config = config
        self.trust_serial = trust_serial
        if state is None:
            state = SignState(issuer=issuer)
        elif state.issuer != issuer:
            raise ConfigError("sign.issuer", f"the issuer of the resumed state {state.issuer!r}",
                              issuer)
        self.state = state
        self._recent = IdWindow(state.recent, config.recent_ids)

    def on_event(self, cmd: Any) -> list[SignedEnvelope | DeadLetter]:
        if not isinstance(cmd, MitigationCommand):
            return [self._dead(cmd, "validation", "MitigationCommand", type(cmd).__name__)]
        st = self.state
        digest = _content_digest(cmd)
        seen = st.recent.get(cmd.command_id)
        if seen is not None:
            seq, old = seen
            if old != digest:
                return [self._dead(cmd, "command_id_reuse", f"same content as seq {seq}",
                                   "different content under the same command_id")]
        else:
            st.last_seq += 1
            seq = st.last_seq
            self._recent.add(cmd.command_id, (seq, digest))
        stamped = msgspec.structs.replace(cmd, issuer=st.issuer, seq=seq,
                                          trust_serial=self.trust_serial)
        payload = _encoder.encode(stamped)
        try:
            sig = self.signer.sign(PAYLOAD_COMMAND, payload)
        except Exception as err:
            msg = f"step 'sign': signing command {cmd.command_id!r} failed; nothing was emitted"
            raise SigningError(msg) from err
        return [SignedEnvelope(payload_type=PAYLOAD_COMMAND, payload=payload,
                               signatures=[Signature(key_id=sig.key_id, sig=sig.sig)])]

    def snapshot(self) -> SignState:
        st = self.state
        return SignState(issuer=st.issuer, last_seq=st.last_seq, recent=dict(st.recent),
                         version=st.version)

    def _dead(self, item: Any, reason: str, expected: str, found: str) -> DeadLetter:
        raw = _encoder.encode(item) if isinstance(item, msgspec.Struct) else repr(item).encode()
        ts = getattr(item, "issued_at", 0)
        return DeadLetter.of(topic=self.config.topic, ts=ts if isinstance(ts, int) else 0,
                             reason=reason, expected=expected, found=found,
                             step="sign", raw=raw)


def _self_test(signer: Signer) -> None:
    """Sign and verify a probe, so a broken key stops the flow before any output."""
    probe = b"riskguard signer self-test"
    try:
        sig = signer.sign(PAYLOAD_COMMAND, probe)
        signer.public_key.verify(PAYLOAD_COMMAND, probe, sig.sig)
    except (VerificationError, ValueError, TypeError) as err:
        msg = f"step 'sign': signing key {signer.key_id} failed its self-test"
        raise SigningError(msg) from err


def sign_builder(signer: Signer, config: SignConfig, *, trust_serial: int = 0
                 ) -> Callable[[SignState | None], SignLogic]:
    """``builder(state | None) -> SignLogic`` closing over the signer (never snapshotted)."""
    _self_test(signer)

    def build(state: SignState | None) -> SignLogic:
        return SignLogic(signer, config, state, trust_serial=trust_serial)

    return build
