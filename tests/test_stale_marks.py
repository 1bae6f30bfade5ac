"""Stale marks in the bundled playbook: a mark that stays too old climbs from an alert to
reduce-only on its instrument, and the mark coming back lifts it."""

from __future__ import annotations

import tomllib
from importlib import resources

import msgspec
from playbook_cases import alert, make
from riskguard.dataflows.backtest import EventClock
from riskguard.operators.mitigation.playbook import Rule, S, Tick
from riskguard.schemas import Scope, ScopeKind, Severity
from test_playbook_due_times import replay

BTC = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-PERP")


def bundled_rule(name: str) -> Rule:
    doc = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())
    return msgspec.convert(next(r for r in doc["playbook"]["rules"] if r["name"] == name),
                           Rule)


def test_a_mark_stale_for_a_minute_goes_reduce_only_until_it_is_fresh_again() -> None:
    clock = EventClock()
    logic = make(bundled_rule("stale_mark"), clock=clock)
    cmds = replay(logic, clock, [
        alert("stale_mark", BTC, 0), Tick(ts=61 * S),
        alert("mark_restored", BTC, 100, sev=Severity.INFO), Tick(ts=200 * S)])
    assert [(c.action.value, c.scope.label(), c.issued_at // S) for c in cmds] == [
        ("alert", "instrument:BTC-PERP", 0), ("reduce_only", "instrument:BTC-PERP", 60),
        ("resume", "instrument:BTC-PERP", 130)]


def test_a_mark_fresh_again_within_the_minute_only_alerted() -> None:
    clock = EventClock()
    logic = make(bundled_rule("stale_mark"), clock=clock)
    cmds = replay(logic, clock, [
        alert("stale_mark", BTC, 0), alert("mark_restored", BTC, 20, sev=Severity.INFO),
        Tick(ts=200 * S)])
    assert [c.action.value for c in cmds] == ["alert"]
