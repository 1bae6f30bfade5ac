"""Shared fixed keys, trust files and commands for the signing / audit tests.

Keys come from fixed 32-byte seeds so every test (and the known-answer
vectors) is deterministic. Nothing here mocks cryptography.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import msgspec
from riskguard.operators.signing.crypto import Signer
from riskguard.operators.signing.trust import (
    RootSet,
    TrustStore,
    parse_trust,
    sign_trust_file,
)
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas.commands import Action, Audience, MitigationCommand
from riskguard.schemas.signals import FIRM as _SCHEMA_FIRM
from riskguard.schemas.signals import Scope, ScopeKind


def _firm_scope() -> Scope:
    """``schemas.FIRM`` (value "*") if it round-trips through the Name pattern, else value "all".

    At the time of writing ``FIRM.value == "*"`` fails the ``Name`` regex on decode,
    so a firm-wide command built with it could never be verified.
    """
    try:
        msgspec.json.decode(msgspec.json.encode(_SCHEMA_FIRM), type=Scope)
    except msgspec.ValidationError:
        return Scope(kind=ScopeKind.FIRM, value="all")
    return _SCHEMA_FIRM


FIRM = _firm_scope()
S = 1_000_000_000
T0 = 1_750_000_000 * S
AUD = Audience(env="prod", topic="riskguard.commands")


def seed(name: str) -> bytes:
    return hashlib.sha256(b"riskguard-test-key:" + name.encode()).digest()


def signer(name: str, issuer: str | None = None) -> Signer:
    return Signer.from_private_bytes(seed(name), issuer=issuer or name)


ENGINE = signer("engine-1")
ENGINE2 = signer("engine-2")
OP1 = signer("op-alice")
OP2 = signer("op-bob")
ADMIN = signer("limits-admin")
REVOKED = signer("engine-old")
EXPIRED = signer("engine-expired")
OUTSIDER = signer("mallory")
ROOTS = [signer(f"root-{i}") for i in range(3)]


def key_entries() -> list[dict[str, Any]]:
    return [
        {"name": "engine-1", "public_key": ENGINE.public_key.hex(), "role": "risk-engine",
         "actions": ["alert", "widen_quotes", "reduce_limits", "reduce_only", "cancel_all",
                     "halt_trading", "hedge_delta", "failover_feed"],
         "scopes": ["*"]},
        {"name": "engine-2", "public_key": ENGINE2.public_key.hex(), "role": "risk-engine",
         "actions": ["*"], "scopes": ["venue:*"]},
        {"name": "op-alice", "public_key": OP1.public_key.hex(), "role": "operator",
         "actions": ["resume", "halt_trading"], "scopes": ["*"]},
        {"name": "op-bob", "public_key": OP2.public_key.hex(), "role": "operator",
         "actions": ["resume", "halt_trading"], "scopes": ["*"]},
        {"name": "limits-admin", "public_key": ADMIN.public_key.hex(), "role": "limit-admin",
         "actions": ["limit_update"], "scopes": ["*"]},
        {"name": "engine-old", "public_key": REVOKED.public_key.hex(), "role": "risk-engine",
         "actions": ["*"], "scopes": ["*"], "revoked": True},
        {"name": "engine-expired", "public_key": EXPIRED.public_key.hex(),
         "role": "risk-engine", "actions": ["*"], "scopes": ["*"],
         "not_before": T0 - 100 * S, "not_after": T0 - 10 * S},
    ]


TWO_PERSON = {"actions": ["resume"], "scopes": ["firm:*"], "limit_cap": 1_000_000.0}


def trust_text(serial: int = 1, entries: list[dict[str, Any]] | None = None) -> str:
    return trust_doc_to_toml(entries if entries is not None else key_entries(),
                             serial=serial, two_person=TWO_PERSON)


def trust_store() -> TrustStore:
    return TrustStore(parse_trust(trust_text()))


def write_signed_trust(tmp: Path, *, roots: list[Signer] | None = None, threshold: int = 1,
                       signers: list[Signer] | None = None, serial: int = 1) -> tuple[Path, Path]:
    """Write trust.toml (+ .sig signed by ``signers``) and roots.toml; return both paths."""
    roots = roots if roots is not None else ROOTS[:1]
    trust = tmp / "trust.toml"
    trust.write_text(trust_text(serial))
    for s in signers if signers is not None else roots[:threshold]:
        sign_trust_file(trust, s)
    roots_path = tmp / "roots.toml"
    lines = [f"threshold = {threshold}", ""]
    for r in roots:
        lines += ["[[roots]]", f'public_key = "{r.public_key.hex()}"', ""]
    roots_path.write_text("\n".join(lines))
    return trust, roots_path


def root_set(roots: list[Signer], threshold: int = 1) -> RootSet:
    return RootSet(keys=tuple(r.public_key for r in roots), threshold=threshold)


def command(n: int = 1, *, issuer: str = "engine-1", seq: int = 1,
            action: Action = Action.HALT_TRADING, scope: Scope = FIRM,
            issued_at: int = T0, ttl: int = 60 * S,
            audience: Audience = AUD, **kw: Any) -> MitigationCommand:
    return MitigationCommand(
        command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"riskguard-test/{issuer}/{n}")),
        issuer=issuer, seq=seq, issued_at=issued_at, expires_at=issued_at + ttl,
        audience=audience, action=action, scope=scope, reason=f"test command {n}", **kw,
    )


VENUE_X = Scope(kind=ScopeKind.VENUE, value="binance")


def payload(msg: msgspec.Struct) -> bytes:
    return msgspec.json.encode(msg)
