"""Ed25519 keys, PAE, envelopes: known answers, Wycheproof, strictness."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import stat
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from riskguard.operators.signing.crypto import (
    PAYLOAD_AUDIT_CHECKPOINT,
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    Signer,
    VerifyKey,
    decode_envelope,
    encode_envelope,
    generate_key_file,
    key_id_of,
    load_public_key,
    pae,
    save_public_key,
    sign_envelope,
)
from riskguard.schemas.commands import Signature, SignedEnvelope
from signing_fixtures import ENGINE, OUTSIDER

from riskguard.errors import ConfigError, SigningError, VerificationError

VECTORS = Path(__file__).parent / "vectors"


def test_pae_is_label_nul_type_nul_exact_payload_bytes() -> None:
    assert pae(PAYLOAD_COMMAND, b"\x00{}") == (
        b"riskguard-v1\x00application/vnd.riskguard.command+json\x00\x00{}"
    )


def test_payload_types_are_distinct_per_record_kind() -> None:
    assert len({PAYLOAD_COMMAND, PAYLOAD_LIMIT_UPDATE, PAYLOAD_AUDIT_CHECKPOINT}) == 3


def test_pae_refuses_a_payload_type_containing_nul() -> None:
    with pytest.raises(ConfigError):
        pae("a\x00b", b"")


@pytest.mark.parametrize("vec", json.loads((VECTORS / "riskguard_envelope_kat.json").read_text())
                         ["vectors"], ids=lambda v: v["key_id"][:8] + "/" + v["payload_type"][25:])
def test_riskguard_known_answer_vectors_sign_and_verify(vec: dict[str, str]) -> None:
    """Fixed seed + payload type + payload give exactly the stored PAE, key id and signature."""
    s = Signer.from_private_bytes(bytes.fromhex(vec["seed"]))
    payload = bytes.fromhex(vec["payload"])
    assert s.public_key.hex() == vec["public_key"]
    assert s.key_id == vec["key_id"] == key_id_of(bytes.fromhex(vec["public_key"]))
    assert pae(vec["payload_type"], payload).hex() == vec["pae"]
    assert s.sign(vec["payload_type"], payload).sig.hex() == vec["sig"]
    VerifyKey.from_hex(vec["public_key"]).verify(
        vec["payload_type"], payload, bytes.fromhex(vec["sig"])
    )


@pytest.mark.parametrize("vec", json.loads((VECTORS / "rfc8032_ed25519.json").read_text())
                         ["vectors"], ids=lambda v: v["name"])
def test_rfc8032_vectors_match(vec: dict[str, str]) -> None:
    s = Signer.from_private_bytes(bytes.fromhex(vec["secret"]))
    assert s.public_key.hex() == vec["public"]
    assert s.sign_raw(bytes.fromhex(vec["msg"])).hex() == vec["sig"]


WYCHEPROOF = VECTORS / "wycheproof" / "ed25519_test.json"
WYCHEPROOF_SHA256 = "752d2ea7d7c6cf4736381b6cbacb61f8182b126ab7cd9b058f00c50084975536"


def _wycheproof() -> list[tuple[str, dict[str, object]]]:
    doc = json.loads(WYCHEPROOF.read_text())
    return [(g["publicKey"]["pk"], t) for g in doc["testGroups"] for t in g["tests"]]


def _tc_id(x: object) -> str:
    return str(x["tcId"]) if isinstance(x, dict) else ""


def test_wycheproof_file_is_the_complete_upstream_file() -> None:
    """All 151 upstream tests are vendored, byte for byte, with no local edits."""
    data = WYCHEPROOF.read_bytes()
    assert hashlib.sha256(data).hexdigest() == WYCHEPROOF_SHA256
    doc = json.loads(data)
    assert "vendoredNote" not in doc
    ids = [int(str(t["tcId"])) for _, t in _wycheproof()]
    assert len(ids) == doc["numberOfTests"] == 151
    assert sorted(ids) == list(range(1, 152))
    results = Counter(str(t["result"]) for _, t in _wycheproof())
    assert results == {"valid": 88, "invalid": 63}


@pytest.mark.parametrize(("pk", "tc"), _wycheproof(), ids=_tc_id)
def test_wycheproof_ed25519_vector_has_expected_result(pk: str, tc: dict[str, object]) -> None:
    """Strict verify returns None on 'valid' and raises VerificationError on 'invalid'.

    The vectors sign raw messages, so they go to ``verify_raw``, the primitive
    that ``verify`` calls with the PAE bytes. A wrong-length signature must
    be refused as malformed before any curve arithmetic; a 64-byte one that
    fails as a bad signature. 'acceptable' (none in this file) may do either,
    but only ever return None or raise VerificationError.
    """
    key = VerifyKey.from_hex(pk)
    sig = bytes.fromhex(str(tc["sig"]))
    msg = bytes.fromhex(str(tc["msg"]))
    if tc["result"] == "valid":
        assert key.verify_raw(msg, sig) is None
    elif tc["result"] == "invalid":
        with pytest.raises(VerificationError) as err:
            key.verify_raw(msg, sig)
        want = "bad_signature" if len(sig) == 64 else "malformed_signature"
        assert err.value.reason == want, f"tcId {tc['tcId']}"
    else:
        assert tc["result"] == "acceptable", f"tcId {tc['tcId']}: unknown result"
        try:
            assert key.verify_raw(msg, sig) is None
        except VerificationError as err:
            assert err.reason in {"bad_signature", "malformed_signature"}


def test_wycheproof_vectors_are_vendored_with_their_licence() -> None:
    lic = (VECTORS / "wycheproof" / "LICENSE").read_text()
    assert "Apache License" in lic and "Version 2.0" in lic
    assert WYCHEPROOF_SHA256 in lic


def test_round_trip_envelope_verifies_and_tampered_payload_raises_bad_signature() -> None:
    env = sign_envelope(PAYLOAD_COMMAND, b'{"a":1}', [ENGINE])
    again = decode_envelope(encode_envelope(env))
    assert again == env
    ENGINE.public_key.verify(PAYLOAD_COMMAND, again.payload, again.signatures[0].sig)
    with pytest.raises(VerificationError) as err:
        ENGINE.public_key.verify(PAYLOAD_COMMAND, b'{"a":2}', again.signatures[0].sig)
    assert err.value.reason == "bad_signature"


def test_wrong_key_and_wrong_length_and_wrong_type_are_rejected() -> None:
    sig = ENGINE.sign(PAYLOAD_COMMAND, b"x").sig
    with pytest.raises(VerificationError) as e1:
        OUTSIDER.public_key.verify(PAYLOAD_COMMAND, b"x", sig)
    assert e1.value.reason == "bad_signature"
    with pytest.raises(VerificationError) as e2:
        ENGINE.public_key.verify(PAYLOAD_COMMAND, b"x", sig[:63])
    assert e2.value.reason == "malformed_signature"
    with pytest.raises(VerificationError) as e3:
        ENGINE.public_key.verify(PAYLOAD_COMMAND, b"x", "not bytes")  # ENGINE is untyped (Any)
    assert e3.value.reason == "malformed_signature"
    with pytest.raises(ConfigError):
        VerifyKey(b"\x01" * 31)


def test_signer_refuses_pickle_copy_and_hides_key_in_repr() -> None:
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(ENGINE)
    with pytest.raises(TypeError):
        copy.deepcopy(ENGINE)
    assert repr(ENGINE) == f"Signer(key_id={ENGINE.key_id!r}, issuer='engine-1')"


def test_generate_key_file_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    s = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Signer.from_file(path, issuer="x")
    assert loaded.key_id == s.key_id
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_key_file(path)
    assert path.read_bytes() == before


def test_loading_a_group_readable_missing_or_garbage_key_raises_signing_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.pem"
    generate_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(SigningError, match="mode 0600; got 0o640"):
        Signer.from_file(path)
    with pytest.raises(SigningError, match="cannot be read"):
        Signer.from_file(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(SigningError, match="not an unencrypted PEM") as err:
        Signer.from_file(bad)
    assert "AAAA" not in str(err.value)


def test_public_key_file_round_trips_and_is_not_overwritten(tmp_path: Path) -> None:
    p = tmp_path / "k.pub"
    save_public_key(p, ENGINE.public_key)
    assert load_public_key(p) == ENGINE.public_key
    with pytest.raises(ConfigError):
        save_public_key(p, OUTSIDER.public_key)


def test_sign_envelope_with_no_signer_emits_nothing_and_raises() -> None:
    with pytest.raises(SigningError, match="nothing was signed"):
        sign_envelope(PAYLOAD_COMMAND, b"x", [])


def test_decode_envelope_rejects_garbage_oversize_and_wrong_tag() -> None:
    for data, reason in [
        (b"{not json", "malformed_envelope"),
        (b'{"type":"command"}', "malformed_envelope"),
        (b" " * 70_000, "oversize"),
    ]:
        with pytest.raises(VerificationError) as err:
            decode_envelope(data)
        assert err.value.reason == reason


def test_cryptography_agrees_with_our_signatures() -> None:
    """Bare cryptography verifies our signatures over the PAE bytes."""
    sig = ENGINE.sign(PAYLOAD_COMMAND, b"p")
    Ed25519PublicKey.from_public_bytes(ENGINE.public_key.raw).verify(
        sig.sig, pae(PAYLOAD_COMMAND, b"p")
    )
    env = SignedEnvelope(payload_type=PAYLOAD_COMMAND, payload=b"p",
                         signatures=[Signature(key_id=sig.key_id, sig=sig.sig)])
    assert env.signatures[0].key_id == ENGINE.key_id


def test_cached_scope_matcher_agrees_with_fnmatchcase() -> None:
    """The compiled, cached scope matcher accepts exactly what any(fnmatchcase) accepts."""
    import fnmatch

    from riskguard.operators.signing.trust import scope_matcher

    patterns = [(), ("*",), ("venue:*",), ("venue:*", "counterparty:okx"),
                ("instrument:binance/BTC-*",), ("counterparty:o?x",), ("firm:[*]",),
                ("venue:a|b",), ("limit:firm.*", "*:okx")]
    labels = ["venue:binance", "counterparty:okx", "counterparty:oxx", "firm:*", "firm:x",
              "instrument:binance/BTC-USDT", "instrument:okx/BTC-USDT", "venue:a|b",
              "venue:a", "", "venue:\nbinance", "limit:firm.max", "counterparty:okx\n"]
    for pats in patterns:
        m = scope_matcher(pats)
        assert scope_matcher(pats) is m
        for label in labels:
            want = any(fnmatch.fnmatchcase(label, p) for p in pats)
            assert m(label) is want, (pats, label)
