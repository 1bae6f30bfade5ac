"""Ed25519 keys, the domain-separated signing input, and signed envelopes.

The signature covers the pre-authentication encoding (PAE)::

    b"riskguard-v1" 0x00 <payload_type> 0x00 <payload bytes>

over the exact payload bytes, so a signature for one record kind can never
be accepted as another and the verifier checks bytes before parsing them.

The API is strict, like ``cryptography``'s: ``verify`` returns nothing or
raises :class:`~riskguard.errors.VerificationError` with a machine-readable
``reason`` (see :class:`Reason`). Private keys are loaded through explicit
constructors, never pickled and never shown by ``repr``.

>>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
>>> env = sign_envelope(PAYLOAD_COMMAND, b'{"x":1}', [signer])
>>> signer.public_key.verify(PAYLOAD_COMMAND, env.payload, env.signatures[0].sig)
>>> signer.public_key.verify(PAYLOAD_LIMIT_UPDATE, env.payload, env.signatures[0].sig)
Traceback (most recent call last):
...
riskguard.errors.VerificationError: bad_signature: signature does not verify under key ...
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from riskguard.schemas.commands import Signature, SignedEnvelope
from riskguard.schemas.json_limits import TOO_DEEP, check_json_depth

from riskguard.errors import ConfigError, SigningError, VerificationError

CONTEXT = b"riskguard-v1"
"""The domain-separation label at the start of every signing input."""

PAYLOAD_COMMAND = "application/vnd.riskguard.command+json"
PAYLOAD_LIMIT_UPDATE = "application/vnd.riskguard.limit-update+json"
PAYLOAD_AUDIT_CHECKPOINT = "application/vnd.riskguard.audit-checkpoint+json"
PAYLOAD_TRUST = "application/vnd.riskguard.trust+toml"
PAYLOAD_ACK = "application/vnd.riskguard.execution-ack+json"

SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_SIGNATURES = 8


class Reason(StrEnum):
    """Machine-readable rejection reasons (``VerificationError.reason``)."""

    MALFORMED_ENVELOPE = "malformed_envelope"
    OVERSIZE = "oversize"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    UNSIGNED = "unsigned"
    TOO_MANY_SIGNATURES = "too_many_signatures"
    MALFORMED_SIGNATURE = "malformed_signature"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    KEY_EXPIRED = "key_expired"
    KEY_NOT_YET_VALID = "key_not_yet_valid"
    MALFORMED_PAYLOAD = "malformed_payload"
    ISSUER_MISMATCH = "issuer_mismatch"
    ROLE_NOT_PERMITTED = "role_not_permitted"
    ACTION_NOT_AUTHORIZED = "action_not_authorized"
    SCOPE_NOT_AUTHORIZED = "scope_not_authorized"
    TWO_PERSON_REQUIRED = "two_person_required"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    BAD_VALIDITY = "bad_validity"
    REPLAYED_SEQ = "replayed_seq"
    REPLAYED_COMMAND_ID = "replayed_command_id"
    BAD_SCOPE = "bad_scope"
    BAD_PARAMS = "bad_params"
    TTL_TOO_LONG = "ttl_too_long"


def rejection(reason: Reason, detail: str = "") -> VerificationError:
    """A :class:`VerificationError` with a reason code (``raise rejection(...)``)."""
    return VerificationError(reason.value, detail)


def reject(reason: Reason, detail: str = "") -> NoReturn:
    """Raise a :class:`VerificationError` with a reason code."""
    raise rejection(reason, detail)


def pae(payload_type: str, payload: bytes) -> bytes:
    """The exact bytes that are signed: ``riskguard-v1 0x00 type 0x00 payload``.

    >>> pae("t/x", b"{}")
    b'riskguard-v1\\x00t/x\\x00{}'
    """
    return pae_prefix(payload_type) + payload


@functools.lru_cache(maxsize=64)
def pae_prefix(payload_type: str) -> bytes:
    """``riskguard-v1 0x00 type 0x00``: the PAE bytes before the payload (cached per type).

    >>> pae_prefix("t/x")
    b'riskguard-v1\\x00t/x\\x00'
    """
    pt = payload_type.encode("utf-8")
    if b"\x00" in pt:
        raise ConfigError("payload_type", "text without NUL bytes", payload_type)
    return CONTEXT + b"\x00" + pt + b"\x00"


def key_id_of(public_raw: bytes) -> str:
    """Key id: hex SHA-256 of the raw 32-byte public key, first 16 bytes.

    >>> key_id_of(bytes(32))
    '66687aadf862bd776c8fc18b8e9f8e20'
    """
    return hashlib.sha256(public_raw).hexdigest()[:32]


class VerifyKey:
    """An Ed25519 public key with a strict ``verify``."""

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_LEN:
            found = len(raw) if isinstance(raw, bytes) else type(raw).__name__
            raise ConfigError("public_key", f"{PUBLIC_KEY_LEN} raw bytes", found)
        self.raw = raw
        self.key_id = key_id_of(raw)
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def from_hex(cls, text: str, *, path: str = "public_key") -> VerifyKey:
        """Parse a 64-hex-digit raw public key."""
        try:
            raw = bytes.fromhex(text)
        except (ValueError, TypeError) as err:
            msg = "64 hex digits (raw Ed25519 public key)"
            raise ConfigError(path, msg, text) from err
        if len(raw) != PUBLIC_KEY_LEN:
            raise ConfigError(path, "64 hex digits (raw Ed25519 public key)", text)
        return cls(raw)

    def hex(self) -> str:
        """The raw public key as hex."""
        return self.raw.hex()

    def verify(self, payload_type: str, payload: bytes, sig: bytes) -> None:
        """Return nothing if ``sig`` signs ``pae(payload_type, payload)``; raise otherwise."""
        self.verify_raw(pae(payload_type, payload), sig)

    def verify_raw(self, message: bytes, sig: bytes) -> None:
        """Return nothing if ``sig`` signs the raw bytes ``message`` (no PAE); raise otherwise.

        The primitive under :meth:`verify` (which passes the PAE bytes); the
        Wycheproof vectors are checked against it. A ``sig`` that is not
        exactly 64 bytes raises ``malformed_signature``; one that does not
        verify raises ``bad_signature``.
        """
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LEN:
            n = len(sig) if isinstance(sig, bytes) else type(sig).__name__
            reject(Reason.MALFORMED_SIGNATURE, f"expected {SIGNATURE_LEN} bytes; got {n}")
        if not self.verifies(message, sig):
            reject(Reason.BAD_SIGNATURE, f"signature does not verify under key {self.key_id}")

    def verifies(self, message: bytes, sig: bytes) -> bool:
        """Whether the 64-byte ``sig`` signs the raw bytes ``message``.

        The check releases the GIL: signatures checked on several threads are
        checked at once (:meth:`~riskguard.operators.signing.trust.TrustStore.check_ahead`).
        """
        try:
            self._key.verify(sig, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id!r})"


class Signer:
    """An Ed25519 private key, loaded explicitly; it refuses to be pickled.

    ``issuer`` is the name the trust file binds this key to.
    """

    __slots__ = ("_key", "issuer", "key_id", "public_key")

    def __init__(self, key: Ed25519PrivateKey, *, issuer: str = "") -> None:
        if not isinstance(key, Ed25519PrivateKey):
            msg = f"signing key must be Ed25519; got {type(key).__name__}"
            raise SigningError(msg)
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = VerifyKey(raw)
        self.key_id = self.public_key.key_id
        self.issuer = issuer

    @classmethod
    def from_private_bytes(cls, seed: bytes, *, issuer: str = "") -> Signer:
        """Build from a 32-byte seed (tests and vectors)."""
        try:
            key = Ed25519PrivateKey.from_private_bytes(seed)
        except (ValueError, TypeError) as err:
            raise SigningError("signing key seed must be 32 bytes") from err
        return cls(key, issuer=issuer)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, issuer: str = "") -> Signer:
        """Load a PKCS#8 PEM private key written by :func:`generate_key_file`.

        Raises :class:`SigningError` if the file is missing, readable by
        group or others, or not an unencrypted Ed25519 key. The message
        names the path, never the key material.
        """
        p = Path(path)
        try:
            st = p.stat()
            data = p.read_bytes()
        except OSError as err:
            msg = f"signing key {str(p)!r} cannot be read: {err.strerror or err}"
            raise SigningError(msg) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            mode = oct(st.st_mode & 0o777)
            msg = f"signing key {str(p)!r} must have mode 0600; got {mode}"
            raise SigningError(msg)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            # Swallow the original: its message could quote key material.
            msg = f"signing key {str(p)!r} is not an unencrypted PEM PKCS#8 key"
            raise SigningError(msg) from None
        if not isinstance(key, Ed25519PrivateKey):
            msg = f"signing key {str(p)!r} must be Ed25519; got {type(key).__name__}"
            raise SigningError(msg)
        return cls(key, issuer=issuer)

    def sign(self, payload_type: str, payload: bytes) -> Signature:
        """Sign ``pae(payload_type, payload)``."""
        return Signature(key_id=self.key_id, sig=self._key.sign(pae(payload_type, payload)))

    def sign_raw(self, message: bytes) -> bytes:
        """Sign raw bytes (no PAE); for test vectors only."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r}, issuer={self.issuer!r})"

    def __reduce__(self) -> NoReturn:
        msg = "a Signer holds a private key and is never pickled; load it with Signer.from_file"
        raise TypeError(msg)

    def __getstate__(self) -> NoReturn:
        self.__reduce__()

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: Any) -> NoReturn:
        self.__reduce__()


def generate_key_file(path: str | os.PathLike[str]) -> Signer:
    """Write a new Ed25519 private key (PEM PKCS#8) with mode 0600.

    Refuses to overwrite an existing file (``ConfigError``).
    """
    p = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(str(p), "a path with no existing file (refusing to overwrite a key)",
                          "an existing file") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)
    return Signer(key)


def save_public_key(path: str | os.PathLike[str], key: VerifyKey) -> None:
    """Write a public key as one line of hex; refuses to overwrite."""
    p = Path(path)
    try:
        with p.open("x", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
    except FileExistsError:
        raise ConfigError(str(p), "a path with no existing file", "an existing file") from None


def load_public_key(path: str | os.PathLike[str]) -> VerifyKey:
    """Read a public key written by :func:`save_public_key`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(p), "a readable public key file", str(err)) from None
    return VerifyKey.from_hex(text, path=str(p))


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> SignedEnvelope:
    """Sign ``payload`` with every signer; raises ``SigningError`` if there is none."""
    if not isinstance(payload, bytes):
        msg = f"payload must be bytes; got {type(payload).__name__}"
        raise SigningError(msg)
    sigs = [s.sign(payload_type, payload) for s in signers]
    if not sigs:
        raise SigningError("sign_envelope needs at least one signer; nothing was signed")
    return SignedEnvelope(payload_type=payload_type, payload=payload, signatures=sigs)


_env_encoder = msgspec.json.Encoder()
_env_decoder = msgspec.json.Decoder(SignedEnvelope)
_BYTES_LIKE = (bytes, bytearray, memoryview)  # a tuple: isinstance is faster than with a union


def encode_envelope(env: SignedEnvelope) -> bytes:
    """Wire form of an envelope (JSON; payload and signatures in base64)."""
    return _env_encoder.encode(env)


def decode_envelope(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> SignedEnvelope:
    """Parse an envelope's outer JSON; raise ``VerificationError`` if malformed.

    Only the envelope is parsed here; the payload stays opaque bytes until
    its signatures have been checked. Whatever the bytes, nothing else is
    raised: nesting deeper than :data:`~riskguard.schemas.json_limits.MAX_JSON_DEPTH`
    is refused unparsed (``malformed_envelope``, detail ``too_deep: ...``), and any
    exception the parser raises is a ``malformed_envelope`` whose detail starts
    ``decode_error: <exception type>``.

    >>> decode_envelope(b'{"a":' * 100 + b"}" * 100)
    Traceback (most recent call last):
    ...
    riskguard.errors.VerificationError: malformed_envelope: too_deep: JSON nested more than ...
    """
    if not isinstance(data, _BYTES_LIKE):
        reject(Reason.MALFORMED_ENVELOPE, f"expected bytes; got {type(data).__name__}")
    if len(data) > max_bytes:
        reject(Reason.OVERSIZE, f"at most {max_bytes} bytes; got {len(data)}")
    if (deep := check_json_depth(data)) is not None:
        reject(Reason.MALFORMED_ENVELOPE, f"{TOO_DEEP}: {deep}")
    try:
        env = _env_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        reject(Reason.MALFORMED_ENVELOPE, str(err)[:200])
    except Exception as err:  # hostile input: RecursionError, MemoryError, ...; never a crash
        reject(Reason.MALFORMED_ENVELOPE, f"decode_error: {type(err).__name__}: {err}"[:200])
    return env


def check_signature_shapes(sigs: Sequence[Signature]) -> None:
    """Reject an envelope with no, too many, or wrong-length signatures."""
    if not sigs:
        reject(Reason.UNSIGNED, "envelope carries no signatures")
    if len(sigs) > MAX_SIGNATURES:
        reject(Reason.TOO_MANY_SIGNATURES, f"at most {MAX_SIGNATURES}; got {len(sigs)}")
    for i, s in enumerate(sigs):
        if len(s.sig) != SIGNATURE_LEN:
            reject(
                Reason.MALFORMED_SIGNATURE,
                f"signature {i}: expected {SIGNATURE_LEN} bytes; got {len(s.sig)}",
            )
