"""Authorization that fails closed: approvals count people, an operator's command acts
once, signed bytes read the same to every parser, lifetimes are bounded and scopes are
exact. Each case was found by probing the verifier from outside."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer, sign_envelope
from riskguard.operators.signing.operator_commands import OperatorCommandLogic
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.schemas import DeadLetter, MitigationCommand
from riskguard.schemas.commands import Action, command_scope_problem, scope_is_wide
from riskguard.schemas.signals import Scope, ScopeKind
from signing_fixtures import (
    AUD,
    ENGINE,
    FIRM,
    OP1,
    OP2,
    T0,
    VENUE_X,
    S,
    command,
    key_entries,
    signer,
    trust_store,
    trust_text,
)

from riskguard.errors import ConfigError, VerificationError

OP1_NEW = signer("op-alice-2026", issuer="op-alice")  # alice's rotated key, same name


def _store_with_alices_second_key() -> TrustStore:
    entries = [*key_entries(), {
        "name": "op-alice", "public_key": OP1_NEW.public_key.hex(), "role": "operator",
        "actions": ["resume", "halt_trading"], "scopes": ["*"]}]
    return TrustStore(parse_trust(trust_text(entries=entries)))


def _reason(env: Any, store: TrustStore | None = None, now: int = T0) -> str:
    try:
        (store or trust_store()).verify(env, expected_payload_type=PAYLOAD_COMMAND,
                                        audience=AUD, now_ns=now)
    except VerificationError as err:
        return err.reason
    return "ok"


def _signed(cmd: MitigationCommand, *signers: Signer) -> Any:
    return sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(signers))


def _resume(n: int = 9, scope: Scope = FIRM, **kw: Any) -> MitigationCommand:
    return command(n, issuer="op-alice", action=Action.RESUME, scope=scope,
                   params={"actions": ["halt_trading"]}, **kw)


# -- approvals count people, not keys ----------------------------------------------------


def test_one_person_with_two_keys_does_not_pass_the_two_person_rule() -> None:
    store = _store_with_alices_second_key()
    assert _reason(_signed(_resume(), OP1, OP1_NEW), store) == "two_person_required"


def test_two_people_pass_and_a_rotated_key_still_signs_alone() -> None:
    store = _store_with_alices_second_key()
    v = store.verify(_signed(_resume(), OP1_NEW, OP2), expected_payload_type=PAYLOAD_COMMAND,
                     audience=AUD, now_ns=T0)
    assert v.approvers == ("op-alice", "op-bob")
    # rotation: the new key alone signs what the old one could (no two-person rule here)
    halt = command(3, issuer="op-alice", action=Action.HALT_TRADING, scope=VENUE_X)
    assert _reason(_signed(halt, OP1_NEW), store) == "ok"


def test_the_guard_counts_people_as_approvals() -> None:
    logic = OperatorCommandLogic(_store_with_alices_second_key(), env=AUD.env,
                                 topic=AUD.topic, clock=ManualClock(T0))
    out = logic.check(_signed(_resume(), OP1, OP1_NEW, OP2))
    assert isinstance(out, MitigationCommand) and out.params["approvals"] == 2.0


# -- the guard refuses replayed operator commands -----------------------------------------


def test_a_replayed_two_person_resume_is_refused_by_the_guard_120_s_later() -> None:
    clock = ManualClock(T0)
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic, clock=clock)
    env = _signed(_resume(ttl=300 * S), OP1, OP2)
    assert isinstance(logic.check(env), MitigationCommand)
    clock.advance(120 * S)
    again = logic.check(env)
    assert isinstance(again, DeadLetter) and again.reason == "command_replayed_command_id"


def test_replay_state_survives_a_snapshot_and_refuses_an_older_seq() -> None:
    clock = ManualClock(T0)
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic, clock=clock)
    assert isinstance(logic.check(_signed(_resume(1, seq=5), OP1, OP2)), MitigationCommand)
    resumed = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic, clock=clock,
                                   state=logic.snapshot())
    again = resumed.check(_signed(_resume(1, seq=5), OP1, OP2))
    assert isinstance(again, DeadLetter) and again.reason == "command_replayed_command_id"
    older = resumed.check(_signed(_resume(2, seq=4), OP1, OP2))
    assert isinstance(older, DeadLetter) and older.reason == "command_replayed_seq"
    newer = resumed.check(_signed(_resume(3, seq=6), OP1, OP2))
    assert isinstance(newer, MitigationCommand)


def test_replay_state_forgets_only_commands_that_could_not_verify_again() -> None:
    clock = ManualClock(T0)
    logic = OperatorCommandLogic(trust_store(), env=AUD.env, topic=AUD.topic, clock=clock)
    logic.check(_signed(_resume(1, seq=1, ttl=60 * S), OP1, OP2))
    clock.advance(30 * S)
    logic.check(_signed(_resume(2, seq=2, issued_at=T0 + 30 * S, ttl=60 * S), OP1, OP2))
    clock.advance(45 * S)  # the first expired 15 s ago (past the 10 s leeway)
    logic.check(_signed(_resume(3, seq=3, issued_at=T0 + 75 * S, ttl=60 * S), OP1, OP2))
    assert len(logic.snapshot().seen) == 2


# -- duplicate keys in signed bytes ---------------------------------------------------------


def test_duplicate_keys_in_a_signed_payload_are_refused() -> None:
    honest = msgspec.json.encode(command(5, scope=VENUE_X, action=Action.REDUCE_ONLY))
    # the same payload with action and scope written twice: msgspec reads the last value,
    # a first-value parser reads halt_trading on the firm
    forged = honest.replace(
        b'"action":"reduce_only"', b'"action":"halt_trading","action":"reduce_only"'
    ).replace(b'"scope":{', b'"scope":{"kind":"firm","value":"*"},"scope":{')
    assert forged.count(b'"action"') == 2 and forged.count(b'"scope"') == 2
    env = sign_envelope(PAYLOAD_COMMAND, forged, [ENGINE])
    assert _reason(env) == "malformed_payload"
    assert _reason(sign_envelope(PAYLOAD_COMMAND, honest, [ENGINE])) == "ok"


def test_a_duplicate_key_deep_inside_the_payload_is_refused() -> None:
    honest = msgspec.json.encode(command(6, scope=VENUE_X, action=Action.REDUCE_ONLY))
    forged = honest.replace(b'"kind":"venue"', b'"kind":"firm","kind":"venue"')
    assert _reason(sign_envelope(PAYLOAD_COMMAND, forged, [ENGINE])) == "malformed_payload"


def test_a_deeply_nested_signed_payload_is_refused_not_raised() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert _reason(sign_envelope(PAYLOAD_COMMAND, deep, [ENGINE])) == "malformed_payload"


# -- bounded lifetimes ------------------------------------------------------------------------


def test_a_command_that_lives_forever_is_refused() -> None:
    cmd = command(7, scope=VENUE_X, ttl=2**63 - 1 - T0)
    assert cmd.expires_at == 2**63 - 1
    assert _reason(_signed(cmd, ENGINE)) == "ttl_too_long"


def test_the_longest_lifetime_is_set_per_action_in_the_trust_file() -> None:
    text = trust_text() + '\n[max_ttl_s]\ndefault = 600\nhalt_trading = 120\n'
    store = TrustStore(parse_trust(text))
    halt = command(8, scope=VENUE_X, ttl=121 * S)
    alert = command(9, scope=VENUE_X, action=Action.ALERT, ttl=599 * S)
    assert _reason(_signed(halt, ENGINE), store) == "ttl_too_long"
    assert _reason(_signed(replace_ttl(halt, 120 * S), ENGINE), store) == "ok"
    assert _reason(_signed(alert, ENGINE), store) == "ok"
    assert _reason(_signed(replace_ttl(alert, 601 * S), ENGINE), store) == "ttl_too_long"


def replace_ttl(cmd: MitigationCommand, ttl: int) -> MitigationCommand:
    return msgspec.structs.replace(cmd, expires_at=cmd.issued_at + ttl)


@pytest.mark.parametrize(("table", "path"), [
    ("[max_ttl_s]\nhalt_trding = 60\n", "max_ttl_s.halt_trding"),
    ("[max_ttl_s]\ndefault = 0\n", "max_ttl_s.default"),
    ("[max_ttl_s]\ndefault = -5\n", "max_ttl_s.default"),
    ("[max_ttl_s]\ndefault = true\n", "max_ttl_s.default"),
])
def test_a_bad_lifetime_table_stops_loading_and_names_the_key(table: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trust(trust_text() + "\n" + table)
    assert path in err.value.path


# -- exact scopes -----------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [
    Scope(kind=ScopeKind.VENUE, value="*"),
    Scope(kind=ScopeKind.COUNTERPARTY, value="*"),
    Scope(kind=ScopeKind.INSTRUMENT, value="*", venue="okx"),
    Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="*"),
    Scope(kind=ScopeKind.FIRM, value="okx"),
    Scope(kind=ScopeKind.FIRM, value="*", venue="okx"),
    Scope(kind=ScopeKind.VENUE, value="okx", venue="okx"),
    Scope(kind=ScopeKind.INSTRUMENT, value="okx/BTC-USDT"),  # reads as okx's BTC-USDT
])
def test_a_command_on_a_wildcard_or_ambiguous_scope_never_verifies(scope: Scope) -> None:
    assert command_scope_problem(scope) is not None
    cmd = command(10, issuer="engine-1", scope=scope)
    # (a venue of "*" is not even a name: the payload does not decode)
    assert _reason(_signed(cmd, ENGINE)) in ("bad_scope", "malformed_payload")


def test_exact_scopes_verify() -> None:
    for scope in (FIRM, VENUE_X, Scope(kind=ScopeKind.COUNTERPARTY, value="okx"),
                  Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"),
                  Scope(kind=ScopeKind.UNDERLYING, value="BTC")):
        assert command_scope_problem(scope) is None, scope


@pytest.mark.parametrize(("scope", "wide"), [
    (FIRM, True),
    (Scope(kind=ScopeKind.UNDERLYING, value="BTC"), True),
    (Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT"), True),
    (Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"), False),
    (VENUE_X, False),
    (Scope(kind=ScopeKind.COUNTERPARTY, value="okx"), False),
])
def test_two_people_resume_every_scope_wider_than_one_venue_or_counterparty(
        scope: Scope, wide: bool) -> None:
    assert scope_is_wide(scope) is wide
    one = _reason(_signed(_resume(11, scope=scope), OP1))
    # the fixture's trust file lists only firm:* under [two_person]
    assert one == ("two_person_required" if wide else "ok")
    assert _reason(_signed(_resume(12, scope=scope), OP1, OP2)) == "ok"


# -- a typo in the trust file stops loading -------------------------------------------------


@pytest.mark.parametrize(("edit", "path"), [
    (lambda t: t.replace("[two_person]", "[two_preson]"), "two_preson"),
    (lambda t: t.replace("limit_cap =", "limit_caps ="), "two_person.limit_caps"),
    (lambda t: t.replace('actions = ["resume"]', 'actions = ["resme"]'), "two_person.actions"),
    (lambda t: t.replace('"cancel_all"', '"cancel_al"'), "keys[0].actions"),
])
def test_a_typo_in_the_trust_file_is_refused(edit: Any, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trust(edit(trust_text()))
    assert path in err.value.path


def test_a_typo_gets_a_did_you_mean() -> None:
    with pytest.raises(ConfigError) as err:
        parse_trust(trust_text().replace("[two_person]", "[two_preson]"))
    assert "two_person" in str(err.value)


def test_the_fixture_trust_file_still_verifies_a_firm_halt_by_the_engine() -> None:
    assert _reason(_signed(command(13), ENGINE)) == "ok"
    assert replace(trust_store().doc).serial == 1


# -- typed params ----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"bps": "abc"}, {}, {"bps": 25.0, "colour": "red"}, {"bps": -5.0},
])
def test_a_signed_command_with_bad_params_never_verifies(params: dict) -> None:
    cmd = command(14, scope=VENUE_X, action=Action.WIDEN_QUOTES, params=params)
    assert _reason(_signed(cmd, ENGINE)) == "bad_params"


def test_a_signed_command_with_good_params_verifies() -> None:
    cmd = command(15, scope=VENUE_X, action=Action.WIDEN_QUOTES, params={"bps": 25.0})
    assert _reason(_signed(cmd, ENGINE)) == "ok"
