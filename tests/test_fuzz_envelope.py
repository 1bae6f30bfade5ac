"""Hypothesis fuzz of the envelope parser and verifier: never crash, never accept a forgery."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas.commands import Signature, SignedEnvelope
from signing_fixtures import AUD, ENGINE, T0, command, trust_store

from riskguard.errors import VerificationError

TRUST = trust_store()
GOOD = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(command(1)), [ENGINE])
GOOD_BYTES = encode_envelope(GOOD)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> str:
    """'accepted' or the rejection reason; anything else propagates and fails the test."""
    try:
        env = decode_envelope(data)
        TRUST.verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=AUD, now_ns=T0)
    except VerificationError as err:
        assert err.reason
        return err.reason
    return "accepted"


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_and_are_never_accepted(data: bytes) -> None:
    assert check(data) != "accepted"


@FUZZ
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_of_a_valid_envelope_is_rejected_or_unchanged(
    pos: int, flip: int
) -> None:
    """Flip one byte anywhere: accepted only if the decoded envelope is unchanged."""
    data = bytearray(GOOD_BYTES)
    data[pos % len(data)] ^= flip
    result = check(bytes(data))
    if result == "accepted":
        assert decode_envelope(bytes(data)) == GOOD


@FUZZ
@given(st.binary(max_size=512), st.binary(max_size=80), st.text(max_size=70))
def test_arbitrary_payload_signature_and_key_id_are_rejected(payload: bytes, sig: bytes,
                                                             key_id: str) -> None:
    env = SignedEnvelope(payload_type=PAYLOAD_COMMAND, payload=payload,
                         signatures=[Signature(key_id=key_id or "x", sig=sig)])
    assert check(encode_envelope(env)) != "accepted"


@FUZZ
@given(st.binary(min_size=1, max_size=64))
def test_appending_bytes_to_a_signed_payload_is_rejected(extra: bytes) -> None:
    env = msgspec.structs.replace(GOOD, payload=GOOD.payload + extra)
    assert check(encode_envelope(env)) == "bad_signature"


def test_the_unmodified_envelope_is_accepted() -> None:
    assert check(GOOD_BYTES) == "accepted"
