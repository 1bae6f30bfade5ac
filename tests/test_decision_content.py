"""A decision is its content: a ``decision_id`` is never enough to drop a command.

An insider's key, or a replica's own command with another content, carrying the id of
another decision is alerted as a conflict and suppresses nothing; a duplicate matches
the executed copy's action, scope and params and comes from a replica the trust file
names; acks name the copy they settle; held and momentary actions follow the wire
contract's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from riskguard.connectors.acks import AckingExecutor, AckSigner, Applied, verify_ack_bytes
from riskguard.connectors.subscriber import (
    CommandSubscriber,
    DecisionConflict,
    Duplicate,
    Rejection,
)
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope, sign_envelope
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import (
    AckOutcome,
    Action,
    MitigationCommand,
    Scope,
    ScopeKind,
    decision_digest,
)
from riskguard.schemas.action_params import ACTION_PARAMS, HELD_ACTIONS
from signing_fixtures import AUD, T0, S, command, key_entries, signer

from riskguard.errors import ConfigError

REPLICA_A, REPLICA_B = signer("engine-a"), signer("engine-b")
INSIDER = signer("alert-bot")
EXECUTOR = signer("oms")
OKX = Scope(kind=ScopeKind.VENUE, value="okx")
BINANCE = Scope(kind=ScopeKind.VENUE, value="binance")
HALT_ID = decision_digest("flash|2|okx", Action.HALT_TRADING, OKX, {}, ["e1"])


def _entries(replicas_role: str = "risk-engine") -> list[dict[str, Any]]:
    extra = [{"name": s.issuer, "public_key": s.public_key.hex(), "role": replicas_role,
              "actions": ["*"], "scopes": ["*"]} for s in (REPLICA_A, REPLICA_B)]
    # a key allowed only alerts on okx: it may alert, nothing more
    extra.append({"name": "alert-bot", "public_key": INSIDER.public_key.hex(),
                  "role": "risk-engine", "actions": ["alert"], "scopes": ["venue:okx"]})
    return key_entries() + extra


def _trust(replicas: list[str] | None = None) -> TrustStore:
    return TrustStore(parse_trust(trust_doc_to_toml(_entries(), serial=1, replicas=replicas)))


def _signed(cmd: MitigationCommand, by: Any) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [by]))


def _cmd(issuer: str, n: int, action: Action, scope: Scope, decision: str | None,
         seq: int = 1, **params: Any) -> MitigationCommand:
    return command(n, issuer=issuer, seq=seq, action=action, scope=scope,
                   decision_id=decision, params=params)


class Seen:
    """What a subscriber did, in order."""

    def __init__(self) -> None:
        self.executed: list[MitigationCommand] = []
        self.rejected: list[Rejection] = []
        self.duplicates: list[Duplicate] = []
        self.conflicts: list[DecisionConflict] = []
        self.settled: list[tuple[str, str, str]] = []


def _subscriber(tmp: Path, trust: TrustStore, seen: Seen) -> CommandSubscriber:
    def settled(cmd: MitigationCommand, reason: str, settles: str) -> None:
        seen.settled.append((cmd.command_id, reason, settles))

    return CommandSubscriber(
        trust=trust, audience=AUD, state_path=tmp / "sub.sqlite",
        on_command=seen.executed.append, on_reject=seen.rejected.append,
        on_duplicate=seen.duplicates.append, on_conflict=seen.conflicts.append,
        on_settled=settled, clock=ManualClock(T0))


def _feed(sub: CommandSubscriber, messages: list[tuple[MitigationCommand, Any]]) -> list[Any]:
    return [sub.handle(_signed(c, by), partition=0, offset=i)
            for i, (c, by) in enumerate(messages)]


def _halts() -> list[tuple[MitigationCommand, Any]]:
    return [(_cmd("engine-a", 1, Action.HALT_TRADING, OKX, HALT_ID), REPLICA_A),
            (_cmd("engine-b", 1, Action.HALT_TRADING, OKX, HALT_ID), REPLICA_B)]


def test_an_alert_only_key_taking_a_halts_decision_id_first_suppresses_neither_halt(
        tmp_path: Path) -> None:
    """The insider's alert comes first with the halt's decision id: the halt still executes
    once, the other replica's copy is its duplicate, and the conflict is alerted."""
    seen = Seen()
    sub = _subscriber(tmp_path, _trust(), seen)
    squat = (_cmd("alert-bot", 1, Action.ALERT, OKX, HALT_ID), INSIDER)
    _feed(sub, [squat, *_halts()])
    assert [(c.issuer, c.action.value) for c in seen.executed] == [
        ("alert-bot", "alert"), ("engine-a", "halt_trading")]
    assert [d.issuer for d in seen.duplicates] == ["engine-b"]
    assert [(c.issuer, c.first_issuer, c.first) for c in seen.conflicts] == [
        ("engine-a", "alert-bot", "alert on venue:okx")]
    assert sub.summary()["conflicts"] == 1


def test_with_replicas_named_a_decision_id_from_another_key_is_refused_and_alerted(
        tmp_path: Path) -> None:
    """Named replicas only: the insider's copy is refused, before the halts or after."""
    seen = Seen()
    sub = _subscriber(tmp_path, _trust(["engine-a", "engine-b"]), seen)
    squat = (_cmd("alert-bot", 1, Action.ALERT, OKX, HALT_ID), INSIDER)
    late = (_cmd("alert-bot", 2, Action.ALERT, OKX, HALT_ID, seq=2), INSIDER)
    _feed(sub, [squat, *_halts(), late])
    assert [(c.issuer, c.action.value) for c in seen.executed] == [("engine-a", "halt_trading")]
    assert [r.reason for r in seen.rejected] == ["decision_not_replica"] * 2
    assert [(c.issuer, c.first) for c in seen.conflicts] == [
        ("alert-bot", "halt_trading on venue:okx")]
    assert [d.issuer for d in seen.duplicates] == ["engine-b"]


def test_a_replicas_own_alert_on_another_venue_with_the_same_id_suppresses_nothing(
        tmp_path: Path) -> None:
    seen = Seen()
    sub = _subscriber(tmp_path, _trust(), seen)
    stray = (_cmd("engine-a", 9, Action.ALERT, BINANCE, HALT_ID), REPLICA_A)
    halt_a = (_cmd("engine-a", 1, Action.HALT_TRADING, OKX, HALT_ID, seq=2), REPLICA_A)
    halt_b = (_cmd("engine-b", 1, Action.HALT_TRADING, OKX, HALT_ID), REPLICA_B)
    _feed(sub, [stray, halt_a, halt_b])
    assert [c.action.value for c in seen.executed] == ["alert", "halt_trading"]
    assert [d.first_command_id for d in seen.duplicates] == [halt_a[0].command_id]
    assert len(seen.conflicts) == 1


def test_a_copy_with_other_params_is_no_duplicate(tmp_path: Path) -> None:
    seen = Seen()
    sub = _subscriber(tmp_path, _trust(), seen)
    d = decision_digest("x", Action.WIDEN_QUOTES, OKX, {"bps": 25.0}, [])
    _feed(sub, [(_cmd("engine-a", 1, Action.WIDEN_QUOTES, OKX, d, bps=25.0), REPLICA_A),
                (_cmd("engine-b", 1, Action.WIDEN_QUOTES, OKX, d, bps=90.0), REPLICA_B)])
    assert [c.params["bps"] for c in seen.executed] == [25.0, 90.0]
    assert seen.duplicates == [] and len(seen.conflicts) == 1


def test_a_duplicate_is_settled_naming_the_copy_that_was_executed(tmp_path: Path) -> None:
    """The executor's ack of the second replica's copy says already_applied and names
    the first copy: an ack settles exactly that copy."""
    sent: list[bytes] = []
    acking = AckingExecutor(lambda c: Applied(AckOutcome.APPLIED),
                            AckSigner(EXECUTOR, env="prod", clock=lambda: T0), sent.append)
    sub = CommandSubscriber(trust=_trust(), audience=AUD, state_path=tmp_path / "s.sqlite",
                            clock=ManualClock(T0), **acking.hooks())
    halt_a, halt_b = _halts()
    _feed(sub, [halt_a, halt_b])
    acks = [verify_ack_bytes(b, EXECUTOR.public_key) for b in sent]
    assert [(a.command_id, a.outcome.value, a.settles) for a in acks] == [
        (halt_a[0].command_id, "applied", None),
        (halt_b[0].command_id, "already_applied", halt_a[0].command_id)]


def test_only_the_wire_contracts_held_actions_are_held() -> None:
    assert {"halt_trading", "reduce_only", "reduce_limits", "widen_quotes"} == HELD_ACTIONS
    assert {a for a, spec in ACTION_PARAMS.items() if spec.held} == HELD_ACTIONS


@pytest.mark.parametrize(("action", "params"), [
    (Action.CANCEL_ALL, {}),
    (Action.HEDGE_DELTA, {"target_delta": 0.0, "hedge_instrument": "BTC-PERP"}),
    (Action.REROUTE_ORDER_FLOW, {"targets": ["binance"]}),
    (Action.FAILOVER_FEED, {"backup_feed": "backup"}),
    (Action.PAUSE_WITHDRAWALS, {}),
])
def test_a_one_off_act_repeated_later_by_an_operator_executes_again(
        tmp_path: Path, action: Action, params: dict[str, Any]) -> None:
    """The guard's cancel_all, then an operator's 20 minutes later: an act, not a state
    in force, so the second is executed too."""
    clock = ManualClock(T0)
    seen = Seen()
    sub = CommandSubscriber(trust=_trust(), audience=AUD, state_path=tmp_path / "s.sqlite",
                            on_command=seen.executed.append, on_reject=seen.rejected.append,
                            clock=clock)
    first = command(1, issuer="engine-a", seq=1, action=action, scope=OKX, params=params)
    sub.handle(_signed(first, REPLICA_A), partition=0, offset=0)
    clock.advance(20 * 60 * S)
    later = command(2, issuer="engine-a", seq=2, action=action, scope=OKX, params=params,
                    issued_at=T0 + 20 * 60 * S)
    sub.handle(_signed(later, REPLICA_A), partition=0, offset=1)
    assert [c.command_id for c in seen.executed] == [first.command_id, later.command_id]
    assert seen.rejected == []


def test_a_held_action_in_force_is_settled_naming_the_command_that_holds_it(
        tmp_path: Path) -> None:
    seen = Seen()
    sub = _subscriber(tmp_path, _trust(), seen)
    first = command(1, issuer="engine-a", seq=1, action=Action.REDUCE_ONLY, scope=OKX)
    again = command(2, issuer="engine-a", seq=2, action=Action.REDUCE_ONLY, scope=OKX)
    _feed(sub, [(first, REPLICA_A), (again, REPLICA_A)])
    assert [r.reason for r in seen.rejected] == ["already_in_force"]
    assert seen.settled == [(again.command_id, "already_in_force", first.command_id)]


def test_the_trust_files_replicas_must_be_risk_engine_keys_it_lists() -> None:
    with pytest.raises(ConfigError, match=r"replicas: names of \[\[keys\]\] of role "
                                          r"risk-engine .*did you mean `engine-a`"):
        parse_trust(trust_doc_to_toml(_entries(), replicas=["engine-aa"]))
    with pytest.raises(ConfigError, match="op-alice"):
        parse_trust(trust_doc_to_toml(_entries(), replicas=["op-alice"]))
    doc = parse_trust(trust_doc_to_toml(_entries(), replicas=["engine-a", "engine-b"]))
    assert doc.replica_issuers() == {"engine-a", "engine-b"}
    default = parse_trust(trust_doc_to_toml(_entries()))
    assert {"engine-a", "engine-b", "alert-bot", "engine-1"} <= default.replica_issuers()
    assert "op-alice" not in default.replica_issuers()
