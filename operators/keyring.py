"""A tiny local keyring verifier for signed limit updates.

A stand-in for the trust-file verifier with the same interface:
``verify(envelope, now_ns) -> LimitUpdate``, raising
:class:`~riskguard.errors.VerificationError` (never returning a boolean).
Signatures are Ed25519 over the DSSE-style pre-authentication encoding
``b"riskguard-v1\\x00" + payload_type + b"\\x00" + payload``. Only a key with
the ``limit-admin`` role may change limits; ``key_id`` is a hint, never
authority.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from riskguard.schemas import Audience, LimitUpdate, encode
>>> sk = Ed25519PrivateKey.from_private_bytes(bytes(32))
>>> ring = LocalKeyring({"admin": (sk.public_key(), frozenset({"limit-admin"}))})
>>> upd = LimitUpdate(update_id="u1", issuer="ops", issued_at=0, expires_at=10,
...                   audience=Audience(env="test", topic="limits"),
...                   limit_path="counterparty.okx", kind="gross_notional", limit=5.0)
>>> env = sign_envelope(sk, "admin", LIMIT_UPDATE_TYPE, encode(upd))
>>> ring(env, 5).limit
5.0
>>> ring(env, 11)
Traceback (most recent call last):
...
riskguard.errors.VerificationError: expired: expires_at 10 <= now 11
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from riskguard.schemas import LimitUpdate, Signature, SignedEnvelope

from riskguard.errors import VerificationError

DOMAIN = b"riskguard-v1\x00"
LIMIT_UPDATE_TYPE = "application/vnd.riskguard.limit-update+json"
LIMIT_ADMIN = "limit-admin"

_decoder = msgspec.json.Decoder(LimitUpdate)


def pae(payload_type: str, payload: bytes) -> bytes:
    """The exact bytes a signature covers."""
    return DOMAIN + payload_type.encode() + b"\x00" + payload


def sign_envelope(
    key: Ed25519PrivateKey, key_id: str, payload_type: str, payload: bytes
) -> SignedEnvelope:
    """Sign ``payload`` into an envelope (tools and tests)."""
    sig = key.sign(pae(payload_type, payload))
    return SignedEnvelope(
        payload_type=payload_type, payload=payload,
        signatures=[Signature(key_id=key_id, sig=sig)],
    )


class LocalKeyring:
    """Public keys mapped to roles; verifies signed limit updates."""

    def __init__(self, keys: Mapping[str, tuple[Ed25519PublicKey, frozenset[str]]]) -> None:
        self._keys = dict(keys)

    def __call__(self, envelope: SignedEnvelope, now_ns: int) -> LimitUpdate:
        """Verify ``envelope`` at time ``now_ns``; return its update or raise."""
        if envelope.payload_type != LIMIT_UPDATE_TYPE:
            raise VerificationError(
                "wrong_payload_type", f"expected {LIMIT_UPDATE_TYPE}; got {envelope.payload_type}"
            )
        if not envelope.signatures:
            raise VerificationError("unsigned", "envelope carries no signature")
        message = pae(envelope.payload_type, envelope.payload)
        signer: str | None = None
        for sig in envelope.signatures:
            hinted = [sig.key_id] if sig.key_id in self._keys else []
            for kid in hinted + [k for k in self._keys if k != sig.key_id]:
                try:
                    self._keys[kid][0].verify(sig.sig, message)
                except InvalidSignature:
                    continue
                if LIMIT_ADMIN in self._keys[kid][1]:
                    signer = kid
                    break
                if signer is None:
                    signer = ""
            if signer:
                break
        if signer is None:
            raise VerificationError("bad_signature", "no signature verifies under a known key")
        if not signer:
            raise VerificationError("wrong_role", f"signing key lacks role {LIMIT_ADMIN}")
        try:
            update = _decoder.decode(envelope.payload)
        except msgspec.DecodeError as err:
            raise VerificationError("malformed_payload", str(err)) from err
        if update.expires_at <= now_ns:
            raise VerificationError("expired", f"expires_at {update.expires_at} <= now {now_ns}")
        return update
