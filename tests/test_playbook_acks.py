"""The playbook learns from executors' acks: what was applied, refused, or never confirmed."""

from __future__ import annotations

import msgspec
import pytest
from contract import CHECKS, Case
from playbook_cases import venue
from riskguard.operators.mitigation.acks import (
    ACKNOWLEDGED,
    UNACKNOWLEDGED,
    AckConfig,
    AckTracker,
)
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
    playbook_builder,
)
from riskguard.schemas import (
    AckOutcome,
    Action,
    Audience,
    ExecutionAck,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)

from riskguard.errors import ConfigError

HALT_ON_DOWN = Rule(name="down", signal="heartbeat_loss", scope="venue:*", target="same",
                    ladder=(Rung(action=Action.HALT_TRADING),))
UNACKED = Rule(name="unacked", signal="command_unacknowledged", target="firm", quiet_s=5,
               ladder=(Rung(action=Action.ALERT), Rung(action=Action.REDUCE_ONLY, after_s=60)))


def config(executors: tuple[str, ...] = ("oms",), timeout_s: float = 30.0) -> PlaybookConfig:
    return PlaybookConfig(issuer="guard", venues=("okx", "binance"), rules=(HALT_ON_DOWN, UNACKED),
                          acks=AckConfig(executors=executors, timeout_s=timeout_s))


def down(v: str, t: float) -> RiskAlert:
    return RiskAlert(id=f"hb-{v}-{t}", kind="heartbeat_loss", scope=venue(v), ts=int(t * S),
                     severity=Severity.CRITICAL, reason="no heartbeat")


def ack(cmd: MitigationCommand, outcome: AckOutcome = AckOutcome.APPLIED, *,
        by: str = "oms", command_id: str | None = None, reason: str = "") -> ExecutionAck:
    return ExecutionAck(
        ack_id=f"{by}:{command_id or cmd.command_id}", issuer=by, issued_at=cmd.issued_at,
        expires_at=cmd.issued_at + 60 * S, audience=Audience(env="dev", topic="dev.acks"),
        command_id=command_id or cmd.command_id, command_issuer=cmd.issuer,
        decision_id=cmd.decision_id, action=cmd.action, scope=cmd.scope, outcome=outcome,
        reason=reason)


class Clock:
    """Processing time follows the event time the test drives (as in a backtest)."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def run(logic: PlaybookLogic, clock: Clock, event: object) -> list[MitigationCommand]:
    clock.now = max(clock.now, getattr(event, "ts", 0))
    return [c for c in logic.on_event(event) if isinstance(c, MitigationCommand)]


def halted(executors: tuple[str, ...] = ("oms",)) -> tuple[PlaybookLogic, Clock,
                                                           MitigationCommand]:
    clock = Clock()
    logic = PlaybookLogic(config(executors), clock)
    (halt,) = run(logic, clock, down("okx", 1))
    assert halt.action is Action.HALT_TRADING
    return logic, clock, halt


def actions(cmds: list[MitigationCommand]) -> list[tuple[str, str]]:
    return [(c.action.value, c.scope.label()) for c in cmds]


def test_a_confirmed_halt_raises_nothing() -> None:
    logic, clock, halt = halted()
    assert run(logic, clock, ack(halt)) == []
    assert [c for t in range(2, 200) for c in run(logic, clock, Tick(ts=t * S))] == []
    assert logic.state.acks.awaited == {}
    assert logic.state.acks.counts == {"sent": 1, "applied": 1}


def test_an_unconfirmed_halt_escalates_after_the_timeout_and_closes_on_its_ack() -> None:
    logic, clock, halt = halted()
    assert run(logic, clock, Tick(ts=30 * S)) == []  # issued at 1 s: due at 31 s
    assert actions(run(logic, clock, Tick(ts=31 * S))) == [("alert", "firm:*")]
    reduce = [c for t in range(32, 100) for c in run(logic, clock, Tick(ts=t * S))]
    assert actions(reduce) == [("reduce_only", "firm:*")]
    assert "command_unacknowledged critical on venue:okx" in reduce[0].reason
    # the executor comes back and confirms: the incident closes, reduce-only is lifted
    assert run(logic, clock, ack(halt)) == []
    lifted = [c for t in range(100, 140) for c in run(logic, clock, Tick(ts=t * S))]
    assert actions(lifted) == [("resume", "firm:*")]
    assert logic.state.acks.awaited == {}


@pytest.mark.parametrize("outcome", [AckOutcome.REFUSED, AckOutcome.FAILED])
def test_a_refused_or_failed_halt_alerts_at_once(outcome: AckOutcome) -> None:
    logic, clock, halt = halted()
    out = run(logic, clock, ack(halt, outcome, reason="venue okx unknown"))
    assert actions(out) == [("alert", "firm:*")]
    assert f"oms {outcome.value} it: venue okx unknown" in out[0].reason
    # it does not alert again when the timeout passes
    assert actions([c for t in range(2, 40) for c in run(logic, clock, Tick(ts=t * S))]) == []


def test_every_named_executor_must_confirm() -> None:
    logic, clock, halt = halted(("oms", "algo"))
    assert run(logic, clock, ack(halt, by="oms")) == []
    assert actions(run(logic, clock, Tick(ts=31 * S))) == [("alert", "firm:*")]
    assert logic.state.acks.awaited[halt.command_id].waiting == ["algo"]


def test_the_overdue_alert_names_the_executors_still_awaited() -> None:
    tracker = AckTracker(AckConfig(executors=("oms", "algo"), timeout_s=30))
    _logic, _clock, halt = halted()
    tracker.sent(halt)
    tracker.on_ack(ack(halt, by="oms"), halt.issued_at)
    (alert,) = tracker.overdue(halt.issued_at + 30 * S, halt.issued_at + 30 * S)
    assert alert.kind == UNACKNOWLEDGED and alert.severity is Severity.CRITICAL
    assert alert.reason.endswith("not confirmed within 30s by algo")
    assert alert.details["command_id"] == halt.command_id
    closing = tracker.on_ack(ack(halt, by="algo"), halt.issued_at + 40 * S)
    assert [a.kind for a in closing] == [ACKNOWLEDGED]


def test_an_ack_confirms_only_the_action_and_scope_it_names() -> None:
    """An ack naming the halt's id but another scope (a key allowed only there) confirms
    nothing; a refusal from an executor the command does not await raises nothing."""
    logic, clock, halt = halted()
    other = msgspec.structs.replace(ack(halt), scope=venue("binance"))
    assert run(logic, clock, other) == []
    assert halt.command_id in logic.state.acks.awaited
    assert run(logic, clock, ack(halt, AckOutcome.REFUSED, by="stranger")) == []
    assert actions(run(logic, clock, Tick(ts=31 * S))) == [("alert", "firm:*")]


def test_another_replicas_copy_of_the_decision_confirms_it() -> None:
    """An executor acts on the first copy of a decision and drops the others: its ack
    names that copy's command id, and the decision id matches."""
    logic, clock, halt = halted()
    assert run(logic, clock, ack(halt, command_id="copy-from-replica-b")) == []
    assert logic.state.acks.awaited == {}


def test_acks_of_actions_not_required_are_counted_and_refusals_warn() -> None:
    tracker = AckTracker(AckConfig(executors=("oms",)))
    widen = MitigationCommand(
        command_id="w1", issuer="guard", issued_at=5 * S, expires_at=99 * S,
        audience=Audience(env="dev", topic="t"), action=Action.WIDEN_QUOTES,
        scope=Scope(kind=ScopeKind.VENUE, value="okx"), params={"bps": 25.0}, reason="r")
    tracker.sent(widen)
    assert tracker.state.awaited == {}
    (warn,) = tracker.on_ack(ack(widen, AckOutcome.REFUSED, reason="no quoting engine"),
                             6 * S)
    assert (warn.kind, warn.severity) == ("command_refused", Severity.WARN)
    assert tracker.on_ack(ack(widen), 6 * S) == []
    assert tracker.state.counts == {"sent": 1, "refused": 1, "applied": 1}


def test_a_refused_halt_nothing_awaited_is_still_a_critical_alert() -> None:
    """No executor named: nothing is awaited, but an executor refusing a halt is never
    silent."""
    tracker = AckTracker(AckConfig())
    _logic, _clock, halt = halted()
    tracker.sent(halt)
    (alert,) = tracker.on_ack(ack(halt, AckOutcome.REFUSED, reason="venue okx unknown"), 5 * S)
    assert (alert.kind, alert.severity, alert.scope) == (
        "command_refused", Severity.CRITICAL, halt.scope)
    assert "oms refused halt_trading on venue:okx: venue okx unknown" in alert.reason
    assert tracker.on_ack(ack(halt), 6 * S) == []


def test_without_executors_nothing_is_awaited() -> None:
    logic, clock, _halt = halted(())
    assert [c for t in range(2, 200) for c in run(logic, clock, Tick(ts=t * S))] == []
    assert logic.state.acks.awaited == {}


@pytest.mark.parametrize(("table", "path"), [
    ({"timeout_s": 0}, "playbook.acks.timeout_s"),
    ({"executors": ["oms", "oms"]}, "playbook.acks.executors"),
])
def test_bad_ack_settings_are_refused_by_name(table: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        PlaybookConfig(issuer="guard", acks=AckConfig(**table))  # type: ignore[arg-type]


def test_an_unknown_ack_setting_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="timeout"):
        msgspec.convert({"acks": {"timeout": 5}}, PlaybookConfig)


# The contract: a guard resumed at any point awaits, escalates and closes as one that ran on.
CLOCK = Clock()
_first = PlaybookLogic(config(), CLOCK)
(_HALT,) = run(_first, CLOCK, down("okx", 1))
(_HALT_B,) = run(_first, CLOCK, down("binance", 2))
EVENTS = [down("okx", 1), down("binance", 2), *[Tick(ts=t * S) for t in range(3, 20)],
          ack(_HALT), *[Tick(ts=t * S) for t in range(20, 120, 2)], ack(_HALT_B),
          *[Tick(ts=t * S) for t in range(120, 160, 2)]]
CASES = [Case("playbook_acks", playbook_builder(config(), lambda: 1 * S), EVENTS,
              splits=(2, 19, 40, 70))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_contract(case: Case, check: object) -> None:
    check(case)  # type: ignore[operator]


def test_contract_case_escalates() -> None:
    """The contract input reaches the unacknowledged rung, then resumes."""
    logic = playbook_builder(config(), lambda: 1 * S)(None)
    out = [c for e in EVENTS for c in logic.on_event(e) if isinstance(c, MitigationCommand)]
    assert {("alert", "firm:*"), ("reduce_only", "firm:*"), ("resume", "firm:*")} <= set(
        actions(out))


def _halt(n: int, at: int) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"h{n}", issuer="guard", issued_at=at, expires_at=at + 99 * S,
        audience=Audience(env="dev", topic="t"), action=Action.HALT_TRADING,
        scope=Scope(kind=ScopeKind.VENUE, value=f"v{n % 7}"), reason="r")


def test_overdue_commands_are_raised_once_in_the_order_sent_and_settled_ones_never() -> None:
    """Commands fall overdue each at its own due time; those due at one look are raised in
    the order they were sent; a settled command is never raised, and the next due time
    skips it. A tracker resumed from the state goes on the same way."""
    tracker = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
    sent = [_halt(n, at) for n, at in enumerate([5 * S, 1 * S, 3 * S, 2 * S])]
    for cmd in sent:
        tracker.sent(cmd)
    tracker.on_ack(ack(sent[1]), 10 * S)  # h1, due first, is settled
    assert tracker.next_due() == 32 * S  # h3
    resumed = AckTracker(AckConfig(executors=("oms",), timeout_s=30), tracker.state.copy())
    for t in (tracker, resumed):
        assert t.overdue(31 * S, 31 * S) == []
        assert [a.details["command_id"] for a in t.overdue(35 * S, 35 * S)] == ["h0", "h2", "h3"]
        assert t.overdue(99 * S, 99 * S) == [] and t.next_due() is None


def test_past_the_cap_the_oldest_raised_command_is_forgotten_and_its_ack_still_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_AWAITED the oldest command already raised moves to ``forgotten``: no longer
    timed, still matched. Its late confirmation closes its scope's alert, and no other
    confirmation on that scope does while it is unconfirmed. A command not yet raised is
    never forgotten."""
    from riskguard.operators.mitigation import acks as acks_module

    monkeypatch.setattr(acks_module, "MAX_AWAITED", 3)
    tracker = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
    h = [_halt(n * 7, S) for n in range(5)]  # all on venue v0
    for cmd in h[:3]:
        tracker.sent(cmd)
    tracker.sent(h[3])  # none raised yet: all four are awaited
    assert list(tracker.state.awaited) == ["h0", "h7", "h14", "h21"]
    raised = tracker.overdue(31 * S, 31 * S)
    assert [a.details["command_id"] for a in raised] == ["h0", "h7", "h14", "h21"]
    tracker.sent(h[4])  # h0, the oldest raised, is forgotten
    assert "h0" in tracker.state.forgotten and "h0" not in tracker.state.awaited
    assert tracker.state.counts["forgotten"] == 1
    for cmd in (h[1], h[2], h[3], h[4]):  # every command still awaited on v0 confirmed
        assert tracker.on_ack(ack(cmd), 40 * S) == []  # h0 is still unconfirmed
    resumed = AckTracker(AckConfig(executors=("oms",), timeout_s=30), tracker.state.copy())
    for t in (tracker, resumed):
        closed = t.on_ack(ack(h[0]), 41 * S)
        assert [(a.kind, a.scope.label()) for a in closed] == [(ACKNOWLEDGED, "venue:v0")]
        assert not t.state.forgotten and not t.state.awaited


@pytest.mark.parametrize("seed", range(5))
def test_the_tracker_s_indexes_agree_with_its_state_and_a_restore(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Random sends (new and again), confirmations, refusals and looks for overdue
    commands past a small MAX_AWAITED: the command forgotten is always the first raised
    one in the order sent, an alert closes exactly when nothing on its scope is still
    raised, and a tracker restored from a copy midway says what the live one says."""
    import random

    from riskguard.operators.mitigation import acks as acks_module

    monkeypatch.setattr(acks_module, "MAX_AWAITED", 6)
    rng = random.Random(seed)
    live = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
    restored: AckTracker | None = None
    cmds: list[MitigationCommand] = []
    now = 0
    for step in range(600):
        now += rng.randint(0, 8) * S
        if step == 300:
            restored = AckTracker(AckConfig(executors=("oms",), timeout_s=30),
                                  live.state.copy())
        roll = rng.random()
        awaited = live.state.awaited
        if roll < 0.45 or not cmds:
            old = roll < 0.1 and cmds
            cmd = rng.choice(cmds) if old else _halt(len(cmds), now)
            cmd = msgspec.structs.replace(cmd, issued_at=now)
            first = next((k for k, a in awaited.items() if a.raised), None)
            new = cmd.command_id not in awaited and len(awaited) >= 6
            for t in filter(None, (live, restored)):
                t.sent(cmd)
            if new and first is not None:
                assert first in live.state.forgotten and first not in awaited
            if not old:
                cmds.append(cmd)
            continue
        if roll < 0.8:
            cmd = rng.choice(cmds)
            outcome = AckOutcome.APPLIED if rng.random() < 0.8 else AckOutcome.REFUSED
            was = live.state.awaited.get(cmd.command_id) or live.state.forgotten.get(
                cmd.command_id)
            outs = [t.on_ack(ack(cmd, outcome), now) for t in filter(None, (live, restored))]
            closed = [a for a in outs[0] if a.kind == ACKNOWLEDGED]
            if closed:
                assert was is not None and was.raised
                assert not any(a.raised and a.scope == cmd.scope
                               for a in live.state.awaited.values())
                assert not any(a.scope == cmd.scope for a in live.state.forgotten.values())
        else:
            outs = [t.overdue(now, now) for t in filter(None, (live, restored))]
        assert all(o == outs[0] for o in outs)
        if restored is not None:
            assert restored.state.awaited == live.state.awaited
            assert restored.state.forgotten == live.state.forgotten


def test_forgotten_commands_are_capped_and_the_oldest_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_FORGOTTEN the oldest forgotten command is dropped for good (counted): its
    scope's alert then closes without it."""
    from riskguard.operators.mitigation import acks as acks_module

    monkeypatch.setattr(acks_module, "MAX_AWAITED", 1)
    monkeypatch.setattr(acks_module, "MAX_FORGOTTEN", 2)
    tracker = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
    h = [_halt(n * 7, n * S) for n in range(4)]
    for cmd in h:
        tracker.overdue(cmd.issued_at + 30 * S, cmd.issued_at + 30 * S)
        tracker.sent(cmd)
        tracker.overdue(cmd.issued_at + 30 * S, cmd.issued_at + 30 * S)
    assert list(tracker.state.forgotten) == ["h7", "h14"] and list(tracker.state.awaited) == ["h21"]
    assert tracker.state.counts["dropped"] == 1
    assert tracker.on_ack(ack(h[1]), 99 * S) == tracker.on_ack(ack(h[2]), 99 * S) == []
    assert [a.kind for a in tracker.on_ack(ack(h[3]), 99 * S)] == [ACKNOWLEDGED]


def test_settled_commands_leave_no_due_times_behind_when_nothing_looks() -> None:
    """A replay confirms each command before any look for overdue ones: the heap of due
    times is compacted as it grows, not kept for every command ever sent."""
    tracker = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
    for n in range(10_000):
        cmd = _halt(n, n * S)
        tracker.sent(cmd)
        tracker.on_ack(ack(cmd), n * S)
    assert not tracker.state.awaited and len(tracker._due) <= 65
