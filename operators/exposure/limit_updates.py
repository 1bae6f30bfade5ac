"""Signed limit updates on their way to the limits: verified, routed and admitted.

A ``limit-admin`` key may change a limit at runtime (:class:`~riskguard.schemas.LimitUpdate`
in a :class:`~riskguard.schemas.SignedEnvelope`). :class:`UpdateGate` verifies each
envelope, names the limits key its path belongs to and admits that key. Refused,
unparsable, replayed (``replayed_update_id``, ``replayed_seq``) and over-cap updates
(``too_many_updates`` past :data:`MAX_REMEMBERED_UPDATES` per signer,
``too_many_counterparties`` past :data:`MAX_UPDATED_COUNTERPARTIES` unlisted
counterparties) are ``limit_update_rejected`` alerts, most with a dead letter, so even
a trusted key cannot grow the limits' state without end. The rules: docs/exposure.md.

>>> import msgspec
>>> from riskguard.operators.exposure.limit_specs import LimitsConfig
>>> from riskguard.schemas import Audience, LimitUpdate, SignedEnvelope, encode
>>> def trusted(env, now):  # accepts any envelope; trust_verifier checks signatures
...     return msgspec.json.decode(env.payload, type=LimitUpdate)
>>> gate = UpdateGate(LimitsConfig(), trusted, clock=lambda: 0, cap=1)
>>> def upd(path, kind="gross_notional"):
...     u = LimitUpdate(update_id=path, issuer="admin", issued_at=0, expires_at=1,
...                     audience=Audience(env="dev", topic="limits"), limit_path=path,
...                     kind=kind, limit=5.0)
...     return SignedEnvelope(payload_type="t", payload=encode(u), signatures=[])
>>> [o[0] for o in gate.on_event(upd("counterparty.okx"))]
['okx']
>>> [type(o).__name__ for o in gate.on_event(upd("counterparty.junk"))]
['RiskAlert', 'DeadLetter']
>>> [o[0] for o in gate.on_event(upd("firm")) + gate.on_event(upd("counterparty.okx.asset.B",
...                                                                  "delta"))]
['*', 'okx']
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from riskguard.operators.core.clock import Clock
from riskguard.operators.core.dedup import SignedReplays
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.limit_specs import KINDS, LimitsConfig, kind_problem
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE
from riskguard.operators.signing.trust import DEFAULT_LEEWAY_NS, TrustStore
from riskguard.schemas import (
    DeadLetter,
    LimitUpdate,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    SignedEnvelope,
    encode,
)
from riskguard.schemas.base import source_of
from riskguard.schemas.commands import Audience
from riskguard.schemas.signals import parse_limit_path

from riskguard.errors import VerificationError


class Approved(NamedTuple):
    """A verified update and who approved it: the people among its signers
    (``approvers``) and the trust file's two-person caps on a limit (None: none):
    ``cap`` on an amount, ``share_cap`` on a concentration (a share). The limits check
    them against the limit in force before and after the update, its earlier settings
    included, which the signature check alone cannot see: a cut needs one person
    whatever the cap, a raise past the cap two."""

    update: LimitUpdate
    approvers: int = 0
    cap: float | None = None
    share_cap: float | None = None


Verifier = Callable[[SignedEnvelope, int], LimitUpdate | Approved]

MAX_UPDATED_COUNTERPARTIES = 256
"""Counterparties beyond the config's that signed updates may set limits on, at most."""

MAX_REMEMBERED_UPDATES = 16_384
"""Accepted updates remembered until they expire, at most, of each signer (a replay of
one is refused); past it, that signer's new updates are refused until some expire."""

UPDATES_KEY = "limit_updates"
"""The one key the gate runs under: the counterparties it admits are counted over all
updates."""

FIRM_SCOPE = Scope(kind=ScopeKind.FIRM, value="*")
_NS = uuid.UUID("3d2b8c41-6a0e-4b8e-a4a9-5c7f1e0d2b77")


def trust_verifier(
    trust: TrustStore, audience: Audience, *, leeway_ns: int = DEFAULT_LEEWAY_NS
) -> Verifier:
    """The ``verifier`` :func:`~riskguard.operators.enforce_limits` needs, backed by the
    trust file.

    Checks the envelope against the trust file's keys and roles (only a
    ``limit-admin`` key may sign :data:`PAYLOAD_LIMIT_UPDATE`), the audience
    and freshness; returns the :class:`~riskguard.schemas.LimitUpdate` with its
    approvals (:class:`Approved`) or raises :class:`~riskguard.errors.VerificationError`.
    """

    def verify(envelope: SignedEnvelope, now_ns: int) -> Approved:
        v = trust.verify(envelope, expected_payload_type=PAYLOAD_LIMIT_UPDATE,
                         audience=audience, now_ns=now_ns, leeway_ns=leeway_ns)
        if not isinstance(v.message, LimitUpdate):  # pragma: no cover - decoded by type
            detail = f"expected a limit update; got {type(v.message).__name__}"
            raise VerificationError("malformed_payload", detail)
        rule = trust.doc.two_person
        return Approved(v.message, len(v.approvers), rule.limit_cap, rule.concentration_cap)

    return verify


def rejection_alert(reason: str, detail: str, evidence: str, ts: int, scope: Scope) -> RiskAlert:
    """The audit-able alert for a rejected limit update (the old limit stays)."""
    return RiskAlert(
        id=str(uuid.uuid5(_NS, f"rejected|{evidence}|{reason}")), kind="limit_update_rejected",
        scope=scope, ts=ts, severity=Severity.WARN,
        reason=f"limit update rejected: {reason}",
        details={"reason": reason, "detail": detail[:1000]},
        evidence_ids=[evidence[:128]],
    )


def route_update(upd: LimitUpdate, ts: int) -> tuple[str, LimitUpdate] | RiskAlert:
    """The limits key a verified update goes to, or a rejection alert."""
    try:
        key, level, _n = parse_limit_path(upd.limit_path)
    except ValueError as err:
        return rejection_alert("bad_path", str(err), upd.update_id, ts, FIRM_SCOPE)
    if upd.kind not in KINDS:
        return rejection_alert("bad_kind", f"kind must be one of {KINDS}; got {upd.kind!r}",
                               upd.update_id, ts, FIRM_SCOPE)
    problem = kind_problem(level, upd.kind)
    if problem is not None:
        return rejection_alert("bad_kind", problem, upd.update_id, ts, FIRM_SCOPE)
    return key, upd


@persisted("riskguard.limit_updates")
@dataclass
class UpdateGateState:
    """Counterparties beyond the config that updates opened limits keys for, in order."""

    admitted: list[str] = field(default_factory=list)
    refused: int = 0
    # accepted updates (signer_id) -> their expiry and their signer; each signer's last seq
    seen: dict[str, int] = field(default_factory=dict)
    signers: dict[str, str] = field(default_factory=dict)
    high_water: dict[str, int] = field(default_factory=dict)
    version: int = 1


_REPLAY_REASONS = {"id": "replayed_update_id", "seq": "replayed_seq", "quota": "too_many_updates"}


class UpdateGate:
    """``on_event(envelope) -> [(limits key, Approved)]``, or a rejection alert (and, for
    an envelope refused, a replay, a signer past its quota or a counterparty past the cap,
    a dead letter)."""

    def __init__(self, config: LimitsConfig, verifier: Verifier, *, clock: Clock,
                 state: UpdateGateState | None = None,
                 cap: int = MAX_UPDATED_COUNTERPARTIES,
                 leeway_ns: int = DEFAULT_LEEWAY_NS) -> None:
        self.config = config
        self.verifier = verifier
        self.clock = clock
        self.cap = cap
        self.leeway_ns = leeway_ns
        st = self.state = state if state is not None else UpdateGateState()
        self._admitted = set(st.admitted)
        self._replays = SignedReplays(st.seen, st.signers, st.high_water, leeway_ns=leeway_ns,
                                      quota=MAX_REMEMBERED_UPDATES, numbered_only=True)

    def snapshot(self) -> UpdateGateState:
        st = self.state
        return UpdateGateState(admitted=list(st.admitted), refused=st.refused,
                               seen=dict(st.seen), signers=dict(st.signers),
                               high_water=dict(st.high_water),
                               version=st.version)

    def on_event(self, env: Any) -> list[Any]:
        now = self.clock()
        if not isinstance(env, SignedEnvelope):
            return [rejection_alert("not_an_envelope", type(env).__name__, "unsigned", now,
                                    FIRM_SCOPE)]
        try:
            verified = self.verifier(env, now)
        except VerificationError as err:
            digest = hashlib.sha256(env.payload).hexdigest()
            return [rejection_alert(err.reason, err.detail, digest, now, FIRM_SCOPE),
                    self._dead(env, now, f"limit_update_{err.reason}",
                               "a verified limit update", err.detail)]
        approved = verified if isinstance(verified, Approved) else Approved(verified)
        upd = approved.update
        replayed = self._replays.refusal(upd.issuer, upd.update_id, upd.seq, now)
        if replayed is not None:
            reason = _REPLAY_REASONS[replayed[0]]
            detail = f"update {replayed[1]}" if replayed[0] == "id" else replayed[1]
            return [rejection_alert(reason, detail, upd.update_id, now, FIRM_SCOPE),
                    self._dead(env, now, f"limit_update_{reason}", "a new limit update",
                               detail)]
        routed = route_update(upd, now)
        if isinstance(routed, RiskAlert):
            return [routed]
        key = routed[0]
        if key != "*" and key not in self.config.counterparties and key not in self._admitted:
            if len(self._admitted) >= self.cap:
                self.state.refused += 1
                detail = (f"{len(self._admitted)} counterparties beyond the config have "
                          f"limits set by updates already (at most {self.cap})")
                return [rejection_alert("too_many_counterparties", detail, upd.update_id,
                                        now, Scope(kind=ScopeKind.COUNTERPARTY, value=key)),
                        self._dead(env, now, "too_many_counterparties",
                                   "a counterparty the config lists, or one already admitted",
                                   key)]
            self._admitted.add(key)
            self.state.admitted.append(key)
        self._replays.remember(upd.issuer, upd.update_id, upd.seq, upd.expires_at)
        return [(key, approved)]

    @staticmethod
    def _dead(env: SignedEnvelope, now: int, reason: str, expected: str,
              found: str) -> DeadLetter:
        topic, partition, offset = source_of(env) or ("limit_updates", -1, -1)
        return DeadLetter.of(topic=topic, partition=partition, offset=offset, ts=now,
                             reason=reason, expected=expected, found=found,
                             step="verify_limit_update", raw=encode(env))
