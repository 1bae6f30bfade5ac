"""Trust file, root threshold and the envelope verifier: each rejection has its exact reason."""

from __future__ import annotations

import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
from riskguard.operators.signing.crypto import (
    PAYLOAD_AUDIT_CHECKPOINT,
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    Signer,
    sign_envelope,
)
from riskguard.operators.signing.trust import (
    RootSet,
    TrustStore,
    parse_trust,
    sign_trust_file,
)
from riskguard.schemas.commands import (
    Action,
    Audience,
    LimitUpdate,
    MitigationCommand,
    Signature,
    SignedEnvelope,
)
from signing_fixtures import (
    ADMIN,
    AUD,
    ENGINE,
    ENGINE2,
    EXPIRED,
    FIRM,
    OP1,
    OP2,
    OUTSIDER,
    REVOKED,
    ROOTS,
    T0,
    VENUE_X,
    S,
    command,
    payload,
    root_set,
    trust_store,
    trust_text,
    write_signed_trust,
)

from riskguard.errors import ConfigError, TrustError, VerificationError

TRUST = trust_store()


def verify(env: SignedEnvelope, *, pt: str = PAYLOAD_COMMAND, aud: Audience = AUD,
           now: int = T0, leeway: int = 10 * S) -> object:
    return TRUST.verify(env, expected_payload_type=pt, audience=aud, now_ns=now, leeway_ns=leeway)


def reason_of(env: SignedEnvelope, **kw: object) -> str:
    with pytest.raises(VerificationError) as err:
        verify(env, **kw)  # type: ignore[arg-type]
    return err.value.reason


def signed(cmd: MitigationCommand | LimitUpdate, *signers: Signer,
           pt: str = PAYLOAD_COMMAND) -> SignedEnvelope:
    return sign_envelope(pt, payload(cmd), list(signers))


def test_valid_command_verifies_to_the_typed_command_and_its_signers() -> None:
    cmd = command()
    out = verify(signed(cmd, ENGINE))
    assert out.message == cmd  # type: ignore[attr-defined]
    assert out.signers == (ENGINE.key_id,)  # type: ignore[attr-defined]
    assert out.issuer == "engine-1"  # type: ignore[attr-defined]


def test_tampered_payload_is_rejected_as_bad_signature() -> None:
    env = signed(command(), ENGINE)
    tampered = env.payload.replace(b"halt_trading", b"cancel_all")
    forged = msgspec.structs.replace(env, payload=tampered)
    assert reason_of(forged) == "bad_signature"


def test_tampered_header_payload_type_is_rejected_as_bad_signature() -> None:
    """A limit-update signature relabelled as a command fails over the PAE bytes."""
    env = signed(command(), ENGINE, pt=PAYLOAD_LIMIT_UPDATE)
    relabelled = msgspec.structs.replace(env, payload_type=PAYLOAD_COMMAND)
    assert reason_of(relabelled) == "bad_signature"


def test_truncated_signature_is_rejected_as_malformed_signature() -> None:
    env = signed(command(), ENGINE)
    s = env.signatures[0]
    cut = msgspec.structs.replace(env, signatures=[Signature(key_id=s.key_id, sig=s.sig[:40])])
    assert reason_of(cut) == "malformed_signature"


def test_signature_from_an_untrusted_key_is_rejected_as_unknown_key() -> None:
    assert reason_of(signed(command(issuer="mallory"), OUTSIDER)) == "unknown_key"


def test_key_id_naming_one_trusted_key_while_another_signed_is_bad_signature() -> None:
    # Only the named key is tried: a forgery costs one check, whatever the file lists.
    env = signed(command(issuer="engine-2", scope=VENUE_X), ENGINE2)
    lying = msgspec.structs.replace(
        env, signatures=[Signature(key_id=ENGINE.key_id, sig=env.signatures[0].sig)]
    )
    assert reason_of(lying) == "bad_signature"


def test_key_id_naming_a_trusted_key_while_an_untrusted_key_signed_is_bad_signature() -> None:
    env = signed(command(), OUTSIDER)
    lying = msgspec.structs.replace(
        env, signatures=[Signature(key_id=ENGINE.key_id, sig=env.signatures[0].sig)]
    )
    assert reason_of(lying) == "bad_signature"


def test_signatures_checked_ahead_on_threads_give_the_outcomes_checked_one_by_one() -> None:
    good = signed(command(), ENGINE)
    forged = msgspec.structs.replace(good, payload=good.payload.replace(b"halt", b"HALT"))
    two = signed(command(issuer="engine-2", scope=VENUE_X), ENGINE2, ENGINE)
    other_key = msgspec.structs.replace(good, signatures=[
        Signature(key_id=ENGINE2.key_id, sig=good.signatures[0].sig)])
    unknown = signed(command(issuer="mallory"), OUTSIDER)
    batch = [good, forged, two, other_key, unknown, good]
    alone = [_outcome(env) for env in batch]
    store = trust_store()
    with ThreadPoolExecutor(2) as pool:
        store.check_ahead(PAYLOAD_COMMAND, [(e.payload, e.signatures) for e in batch], pool, 2)
    # first signatures only (a forgery costs one check); the unknown key is not checked,
    # and the two goods are one
    assert len(store._ahead) == 4
    ahead = [_outcome(env, store) for env in batch]
    assert ahead == alone == ["ok", "bad_signature", "ok", "bad_signature", "unknown_key", "ok"]
    assert store._ahead == {}  # each result is taken once, then checked again as usual


def test_a_batch_with_no_signature_to_check_ahead_checks_nothing() -> None:
    unknown = signed(command(issuer="mallory"), OUTSIDER)
    store = trust_store()
    with ThreadPoolExecutor(2) as pool:
        store.check_ahead(PAYLOAD_COMMAND, [(unknown.payload, unknown.signatures)], pool, 2)
        store.check_ahead(PAYLOAD_COMMAND, [], pool, 2)
    assert store._ahead == {}
    assert _outcome(unknown, store) == "unknown_key"


def test_a_list_of_forged_signatures_is_checked_ahead_once_and_its_shape_first() -> None:
    env = signed(command(), ENGINE)
    bogus = [Signature(key_id=ENGINE.key_id, sig=bytes(64))] * 8
    many = msgspec.structs.replace(env, signatures=bogus)
    too_many = msgspec.structs.replace(env, signatures=[*bogus, bogus[0]])
    store = trust_store()
    with ThreadPoolExecutor(2) as pool:
        store.check_ahead(PAYLOAD_COMMAND, [(e.payload, e.signatures) for e in (many, too_many)],
                          pool, 2)
    assert len(store._ahead) == 1
    assert [_outcome(many, store), _outcome(too_many, store)] == [
        "bad_signature", "too_many_signatures"]


def _outcome(env: SignedEnvelope, store: TrustStore = TRUST) -> str:
    try:
        store.verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=AUD, now_ns=T0)
    except VerificationError as err:
        return err.reason
    return "ok"


def test_revoked_key_is_rejected_as_revoked_key() -> None:
    assert reason_of(signed(command(issuer="engine-old"), REVOKED)) == "revoked_key"


def test_expired_key_is_rejected_as_key_expired() -> None:
    assert reason_of(signed(command(issuer="engine-expired"), EXPIRED)) == "key_expired"


def test_action_outside_the_keys_role_is_action_not_authorized() -> None:
    """engine-1 may not sign ``resume`` (an operator action)."""
    cmd = command(action=Action.RESUME, scope=VENUE_X)
    assert reason_of(signed(cmd, ENGINE)) == "action_not_authorized"


def test_scope_outside_the_keys_scopes_is_scope_not_authorized() -> None:
    cmd = command(issuer="engine-2", scope=FIRM)
    assert reason_of(signed(cmd, ENGINE2)) == "scope_not_authorized"


def test_a_scope_its_params_name_must_be_the_keys_too() -> None:
    """engine-2 may sign on venues only: a reroute between venues verifies, but a hedge
    trading an instrument, even of its own venue, is refused as a command on that
    instrument would be, naming the param's scope."""
    reroute = command(issuer="engine-2", scope=VENUE_X, action=Action.REROUTE_ORDER_FLOW,
                      params={"targets": ["okx"], "from": "binance"})
    assert verify(signed(reroute, ENGINE2)).message == reroute
    hedge = command(2, issuer="engine-2", scope=VENUE_X, action=Action.HEDGE_DELTA,
                    params={"target_delta": 0.0, "hedge_instrument": "binance/BTC-PERP"})
    with pytest.raises(VerificationError) as err:
        verify(signed(hedge, ENGINE2))
    assert err.value.reason == "scope_not_authorized"
    assert "'instrument:binance/BTC-PERP' (named in its params)" in str(err.value)
    assert verify(signed(msgspec.structs.replace(hedge, issuer="engine-1"), ENGINE)).message


def test_limit_admin_key_may_not_sign_a_command_role_not_permitted() -> None:
    cmd = command(issuer="limits-admin")
    assert reason_of(signed(cmd, ADMIN)) == "role_not_permitted"


def test_issuer_not_bound_to_the_signing_key_is_issuer_mismatch() -> None:
    assert reason_of(signed(command(issuer="engine-2"), ENGINE)) == "issuer_mismatch"


def test_wrong_audience_is_rejected_as_wrong_audience() -> None:
    env = signed(command(), ENGINE)
    assert reason_of(env, aud=Audience(env="staging", topic=AUD.topic)) == "wrong_audience"
    assert reason_of(env, aud=Audience(env="prod", topic="other")) == "wrong_audience"


def test_expired_command_is_rejected_as_expired_beyond_leeway_only() -> None:
    env = signed(command(ttl=60 * S), ENGINE)
    verify(env, now=T0 + 69 * S)  # inside the 10 s leeway
    assert reason_of(env, now=T0 + 71 * S) == "expired"


def test_command_from_the_future_beyond_leeway_is_from_future() -> None:
    env = signed(command(issued_at=T0 + 11 * S), ENGINE)
    assert reason_of(env, now=T0) == "from_future"
    verify(signed(command(issued_at=T0 + 9 * S), ENGINE), now=T0)


def test_limit_update_presented_as_a_command_is_wrong_payload_type() -> None:
    upd = LimitUpdate(update_id="u1", issuer="limits-admin", seq=1, issued_at=T0,
                      expires_at=T0 + 60 * S, audience=AUD, limit_path="firm",
                      kind="gross_notional", limit=10.0)
    env = signed(upd, ADMIN, pt=PAYLOAD_LIMIT_UPDATE)
    assert reason_of(env) == "wrong_payload_type"
    out = verify(env, pt=PAYLOAD_LIMIT_UPDATE)
    assert out.message == upd  # type: ignore[attr-defined]


def test_limit_update_bytes_inside_a_command_envelope_is_malformed_payload() -> None:
    upd = LimitUpdate(update_id="u1", issuer="engine-1", issued_at=T0, expires_at=T0 + S,
                      audience=AUD, limit_path="firm", kind="k", limit=1.0)
    assert reason_of(signed(upd, ENGINE)) == "malformed_payload"


def test_two_person_action_with_one_signature_is_two_person_required() -> None:
    cmd = command(issuer="op-alice", action=Action.RESUME, scope=FIRM)
    assert reason_of(signed(cmd, OP1)) == "two_person_required"


def test_two_person_action_with_the_same_signature_twice_is_two_person_required() -> None:
    cmd = command(issuer="op-alice", action=Action.RESUME, scope=FIRM)
    env = signed(cmd, OP1)
    doubled = msgspec.structs.replace(env, signatures=[env.signatures[0], env.signatures[0]])
    assert reason_of(doubled) == "two_person_required"


def test_two_person_action_with_two_distinct_operator_keys_verifies() -> None:
    cmd = command(issuer="op-alice", action=Action.RESUME, scope=FIRM)
    out = verify(signed(cmd, OP1, OP2))
    assert set(out.signers) == {OP1.key_id, OP2.key_id}  # type: ignore[attr-defined]


def test_resume_on_a_venue_scope_needs_only_one_operator() -> None:
    cmd = command(issuer="op-alice", action=Action.RESUME, scope=VENUE_X)
    assert verify(signed(cmd, OP1)).signers == (OP1.key_id,)  # type: ignore[attr-defined]


def test_a_limit_update_past_the_cap_verifies_with_its_one_approver() -> None:
    """Whether an update raises a limit past limit_cap depends on the limit in force,
    which only the limits know: the verifier names the people who approved it (one
    here) for them to judge, and refuses nothing for the cap (a cut needs one person)."""
    upd = LimitUpdate(update_id="u2", issuer="limits-admin", issued_at=T0, expires_at=T0 + S,
                      audience=AUD, limit_path="counterparty.okx", kind="gross", limit=2e6)
    env = signed(upd, ADMIN, pt=PAYLOAD_LIMIT_UPDATE)
    out = verify(env, pt=PAYLOAD_LIMIT_UPDATE)
    assert out.approvers == ("limits-admin",)  # type: ignore[attr-defined]


def test_unsigned_envelope_is_rejected_as_unsigned() -> None:
    env = SignedEnvelope(payload_type=PAYLOAD_COMMAND, payload=payload(command()), signatures=[])
    assert reason_of(env) == "unsigned"


def test_checkpoint_payload_type_cannot_be_verified_as_command_message() -> None:
    env = signed(command(), ENGINE, pt=PAYLOAD_AUDIT_CHECKPOINT)
    assert reason_of(env, pt=PAYLOAD_AUDIT_CHECKPOINT) == "wrong_payload_type"


# -- trust file loading -----------------------------------------------------


def test_trust_file_signed_by_the_root_loads(tmp_path: Path) -> None:
    trust, roots = write_signed_trust(tmp_path)
    store = TrustStore.load(trust, RootSet.load(roots))
    assert store.serial == 1
    assert store.key(ENGINE.key_id).name == "engine-1"  # type: ignore[union-attr]


def test_unsigned_or_edited_trust_file_is_refused(tmp_path: Path) -> None:
    trust, roots = write_signed_trust(tmp_path)
    trust.write_text(trust.read_text().replace("revoked = true", "revoked = false"))
    with pytest.raises(TrustError, match="needs signatures from 1 distinct root"):
        TrustStore.load(trust, RootSet.load(roots))
    (tmp_path / "trust.toml.sig").unlink()
    with pytest.raises(TrustError, match="unsigned"):
        TrustStore.load(trust, RootSet.load(roots))


def test_k_of_n_root_threshold_counts_distinct_roots(tmp_path: Path) -> None:
    """2 of 3: one root (even signing twice) is refused; two distinct roots load."""
    trust, roots = write_signed_trust(tmp_path, roots=ROOTS, threshold=2, signers=[ROOTS[0]])
    sign_trust_file(trust, ROOTS[0])
    with pytest.raises(TrustError, match="needs signatures from 2 distinct root key"):
        TrustStore.load(trust, RootSet.load(roots))
    sign_trust_file(trust, ROOTS[2])
    assert TrustStore.load(trust, RootSet.load(roots)).serial == 1


def test_a_signing_cut_short_keeps_the_signatures_already_there(tmp_path: Path) -> None:
    """The third root signs with a 64-byte file-size limit (a full disk, say): the write
    fails, and the two signatures already in trust.toml.sig still load the file (written
    in place, the sidecar was cut to 64 bytes and nothing could load it)."""
    trust, roots = write_signed_trust(tmp_path, roots=ROOTS, threshold=2, signers=ROOTS[:2])
    before = (tmp_path / "trust.toml.sig").read_bytes()
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from signing_fixtures import ROOTS; "
              "from riskguard.operators.signing.trust import sign_trust_file; "
              "sign_trust_file(sys.argv[2], ROOTS[2])")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent),
                           str(trust)], preexec_fn=limit, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc
    assert (tmp_path / "trust.toml.sig").read_bytes() == before
    assert TrustStore.load(trust, RootSet.load(roots)).serial == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roots.toml", "trust.toml",
                                                           "trust.toml.sig"]


def test_trust_file_signed_by_a_non_root_is_refused(tmp_path: Path) -> None:
    trust, roots = write_signed_trust(tmp_path, signers=[ENGINE])
    with pytest.raises(TrustError, match="got 0 valid of 1"):
        TrustStore.load(trust, RootSet.load(roots))


def test_root_threshold_above_root_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"roots\.threshold"):
        root_set(ROOTS[:1], threshold=2)


@pytest.mark.parametrize(
    "edit,path",
    [
        (('role = "risk-engine"', 'role = "god"'), "keys[0].role"),
        (("version = 1", "version = 2"), "version"),
        (('name = "engine-1"', 'name = ""'), "keys[0].name"),
        (('scopes = ["venue:*"]', 'scopes = ["venu:*"]'), "keys[1].scopes"),
        (('scopes = ["venue:*"]', 'scopes = ["binance"]'), "keys[1].scopes"),
        (('scopes = ["firm:*"]', 'scopes = ["frim:*"]'), "two_person.scopes"),
    ],
)
def test_bad_trust_entries_raise_config_error_naming_the_key_path(
    edit: tuple[str, str], path: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trust(trust_text().replace(*edit, 1))
    assert path in err.value.path


def test_scope_patterns_name_a_scope_kind_or_glob_it() -> None:
    """A misspelt kind stops loading with a suggestion; globbed kinds and values load."""
    with pytest.raises(ConfigError, match=r"did you mean `firm`\?\); got 'frim:\*'"):
        parse_trust(trust_text().replace('scopes = ["firm:*"]', 'scopes = ["frim:*"]', 1))
    doc = parse_trust(trust_text().replace('scopes = ["venue:*"]',
                                           'scopes = ["*:okx", "instrument:okx/BTC-*"]', 1))
    assert doc.keys[1].scopes == ("*:okx", "instrument:okx/BTC-*")


def test_machine_keys_are_not_people_for_the_two_person_rule() -> None:
    """Two guard replicas' keys co-signing a firm-wide resume are two machines, not two
    people: refused; an operator and a replica make one person, refused too."""
    from test_replicas import REPLICA_A, REPLICA_B, replicas_trust

    store = replicas_trust()

    def reason(env: SignedEnvelope) -> str:
        try:
            store.verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=AUD, now_ns=T0)
        except VerificationError as err:
            return err.reason
        return "ok"

    engines = command(issuer="engine-a", action=Action.RESUME, scope=FIRM)
    assert reason(signed(engines, REPLICA_A, REPLICA_B)) == "two_person_required"
    mixed = command(issuer="op-alice", action=Action.RESUME, scope=FIRM)
    assert reason(signed(mixed, OP1, REPLICA_A)) == "two_person_required"
    assert reason(signed(mixed, OP1, OP2)) == "ok"


def test_a_key_name_with_a_colon_is_refused_so_no_signer_s_ids_can_collide() -> None:
    """Replay windows name a message ``<signer>:<id>``: were ``op:x`` a key name, key
    ``op``'s id ``x:c1`` would take ``op:x``'s ``c1``. The trust file refuses it."""
    text = ('version = 1\nserial = 1\n[[keys]]\nname = "op:x"\n'
            f'public_key = "{"ab" * 32}"\nrole = "operator"\nactions = ["*"]\nscopes = ["*"]\n')
    with pytest.raises(ConfigError, match=r"trust\.toml:keys\[0\]\.name"):
        parse_trust(text, source="trust.toml")
    assert parse_trust(text.replace("op:x", "op.x"), source="trust.toml").keys[0].name == "op.x"
