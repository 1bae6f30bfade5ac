"""Playbook recovery: resumes after the quiet period, manual resumes, the firm halt's
two approvals, exact scopes."""

from __future__ import annotations

from playbook_cases import HALT, RO, acts, alert, anomaly, breach, cp, feed, make, resume, venue
from riskguard.operators.mitigation.playbook import Rule, Rung, S, Tick
from riskguard.schemas import FIRM, Action, LimitLevel, Scope, ScopeKind, Severity


def test_auto_recovery_waits_for_quiet_period_and_reopen_cancels_it() -> None:
    """Resume comes quiet_s after the last close; a reopen inside the quiet period resets it."""
    rule = Rule(name="flash", signal="anomaly", target="venue", quiet_s=30,
                ladder=(Rung(action=RO),))
    logic = make(rule)
    assert acts(logic.on_event(anomaly(0))) == [("reduce_only", "venue:okx")]
    assert feed(logic, [anomaly(5, phase="close"), Tick(ts=20 * S)]) == []
    assert feed(logic, [anomaly(25), anomaly(40, phase="close")]) == []  # same incident
    assert feed(logic, [Tick(ts=36 * S), Tick(ts=69 * S)]) == []
    out = logic.on_event(Tick(ts=70 * S))
    assert acts(out) == [("resume", "venue:okx")]
    assert out[0].params["actions"] == ["reduce_only"]
    assert "quiet for 30s" in out[0].reason
    assert logic.snapshot().active == {}


def test_manual_recovery_waits_for_a_resume_input() -> None:
    """recovery="manual" keeps the mitigation after the quiet period until a resume arrives."""
    rule = Rule(name="recon", signal="reconciliation_break", scope="counterparty:*",
                recovery="manual", quiet_s=5, ladder=(Rung(action=Action.PAUSE_WITHDRAWALS),))
    logic = make(rule)
    out = feed(logic, [alert("reconciliation_break", cp("okx"), 0), Tick(ts=100 * S)])
    assert acts(out) == [("pause_withdrawals", "counterparty:okx")]
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("binance"), 101)) == []
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("okx"), 102)) == []
    assert logic.snapshot().active == {}


def test_a_resume_naming_other_commands_leaves_the_guards_mitigation_in_force() -> None:
    """An operator's resume naming another command (``resumes``) lifts nothing the guard
    holds, as executors do: the guard keeps its mitigation, and resumes it later itself;
    one naming it lifts it."""
    rule = Rule(name="recon", signal="reconciliation_break", scope="counterparty:*",
                recovery="manual", quiet_s=5, ladder=(Rung(action=Action.PAUSE_WITHDRAWALS),))
    logic = make(rule)
    feed(logic, [alert("reconciliation_break", cp("okx"), 0), Tick(ts=100 * S)])
    held = logic.snapshot().active["pause_withdrawals|counterparty:okx"].command_id
    assert logic.on_event(resume(cp("okx"), 101, resumes=["someone-else"])) == []
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("okx"), 102, resumes=[held])) == []
    assert logic.snapshot().active == {}


def test_firm_halt_needs_manual_resume_with_two_approvals() -> None:
    """A firm halt is never auto-resumed; one approval is refused, two clear it."""
    rule = Rule(name="firm", signal="breach", scope="counterparty:*", target="firm", quiet_s=5,
                ladder=(Rung(action=HALT),))
    logic = make(rule)
    out = logic.on_event(breach("okx", 0, sev=Severity.CRITICAL))
    assert acts(out) == [("halt_trading", "firm:*")]
    out = feed(logic, [breach("okx", 1, level=LimitLevel.OK), Tick(ts=10 * S),
                       Tick(ts=20 * S)])
    assert acts(out) == [("alert", "firm:*")]
    assert "two approvals" in out[0].reason
    out = logic.on_event(resume(FIRM, 30, approvals=1))
    assert acts(out) == [("alert", "firm:*")] and "refused" in out[0].reason
    assert list(logic.snapshot().active) == ["halt_trading|firm:*"]
    assert logic.on_event(resume(FIRM, 31, approvals=2)) == []
    assert logic.snapshot().active == {}
    # A fresh incident can halt again.
    assert acts(logic.on_event(breach("okx", 40, sev=Severity.CRITICAL))) == \
        [("halt_trading", "firm:*")]


def test_scopes_are_exact() -> None:
    """cancel_all for one venue names exactly that venue; resuming another leaves it in force."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", recovery="manual",
                ladder=(Rung(action=Action.CANCEL_ALL),))
    logic = make(rule)
    out = logic.on_event(alert("heartbeat_loss", venue("okx"), 0))
    assert [c.scope for c in out] == [Scope(kind=ScopeKind.VENUE, value="okx")]
    logic.on_event(resume(venue("okx-perp"), 1))
    logic.on_event(resume(Scope(kind=ScopeKind.INSTRUMENT, value="BTC", venue="okx"), 2))
    assert list(logic.snapshot().active) == ["cancel_all|venue:okx"]


def test_resume_input_does_not_move_event_time() -> None:
    """A resume's issued_at is processing time: it must not expire quiet periods early."""
    rule = Rule(name="flash", signal="anomaly", target="venue", quiet_s=30,
                ladder=(Rung(action=RO),))
    logic = make(rule)
    feed(logic, [anomaly(0), anomaly(1, phase="close")])
    assert logic.on_event(resume(venue("binance"), 10_000)) == []
    assert logic.snapshot().now == 1 * S
    assert list(logic.snapshot().active) == ["reduce_only|venue:okx"]
