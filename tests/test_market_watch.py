"""The firm process tells when a market process of the market tier goes silent, and when
it is back: at the moment the firm's clock stops waiting for it."""

from __future__ import annotations

from typing import Any

import pytest
from contract import CHECKS, Case
from riskguard.dataflows.guard.market_watch import (
    RESTORED,
    SILENT,
    MarketWatchLogic,
    MarketWatchState,
)
from riskguard.operators.core.clock import Tick
from riskguard.operators.mitigation.rules import CLOSERS, OPENERS
from riskguard.schemas import FIRM, DetectProgress, Severity
from riskguard.schemas.signals import ALERT_KINDS

WAIT = 100


class Clock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _progress(source: str, ts: int, final: bool = False) -> DetectProgress:
    return DetectProgress(ts=ts, source=source, final=final)


def _kinds(alerts: list[Any]) -> list[tuple[str, str]]:
    return [(a.kind, a.details["process"]) for a in alerts]


def test_a_process_silent_for_the_wait_is_a_critical_alert_on_the_firm_once() -> None:
    clock = Clock()
    watch = MarketWatchLogic(2, WAIT, clock)
    clock.now = 60
    assert watch.on_batch([_progress("market/0", 10), _progress("market/1", 12)]) == []
    clock.now = 159  # market/0 and market/1 heard at 60: not yet
    assert watch.on_event(_progress("market/0", 20)) == []
    assert watch.next_deadline_ns() == 160
    clock.now = 160
    (alert,) = watch.on_deadline()
    assert (alert.kind, alert.severity, alert.scope, alert.ts) == (
        SILENT, Severity.CRITICAL, FIRM, 20)
    assert alert.details == {"process": "market/1", "silent": 1.0}
    assert watch.on_event(Tick(ts=30, source="firm")) == []  # said once
    assert watch.next_deadline_ns() == 259  # market/0's, market/1 is silent already


def test_a_silent_process_heard_again_is_restored_and_is_watched_again() -> None:
    clock = Clock()
    watch = MarketWatchLogic(1, WAIT, clock)
    clock.now = 100
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/0")]
    clock.now = 130
    (back,) = watch.on_event(_progress("market/0", 50))
    assert (back.kind, back.severity) == (RESTORED, Severity.INFO)
    assert watch.next_deadline_ns() == 230
    clock.now = 230
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/0")]


def test_a_process_never_heard_from_counts_from_the_start() -> None:
    clock = Clock(1_000)
    watch = MarketWatchLogic(3, WAIT, clock)
    clock.now = 1_050
    watch.on_event(_progress("market/1", 5))
    clock.now = 1_100
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/0"), (SILENT, "market/2")]


def test_a_process_whose_input_ended_is_silent_by_design() -> None:
    clock = Clock()
    watch = MarketWatchLogic(2, WAIT, clock)
    watch.on_batch([_progress("market/0", 9, final=True), _progress("market/1", 9)])
    clock.now = 500
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/1")]
    assert watch.next_deadline_ns() is None


def test_progress_from_a_process_not_in_the_tier_adds_nothing_to_the_state() -> None:
    """The watch's state names only the configured market processes: progress under any
    other name (ended or not) is not kept, so the state is bounded by the config."""
    clock = Clock()
    watch = MarketWatchLogic(2, WAIT, clock)
    watch.on_batch([_progress(f"market/{n}", 9, final=n % 2 == 0) for n in range(2, 50)])
    watch.on_batch([_progress("junk", 9, final=True), _progress("market/0", 9, final=True)])
    st = watch.snapshot()
    assert (st.ended, list(st.progress), st.silences) == (["market/0"], ["market/0"], {})
    clock.now = 500
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/1")]


def test_a_restarted_firm_gives_each_process_the_whole_wait_and_keeps_what_it_said() -> None:
    clock = Clock()
    watch = MarketWatchLogic(2, WAIT, clock)
    watch.on_event(_progress("market/0", 7))
    clock.now = 100
    assert _kinds(watch.on_deadline()) == [(SILENT, "market/0"), (SILENT, "market/1")]
    clock.now = 1_000
    resumed = MarketWatchLogic(2, WAIT, clock, watch.snapshot())
    assert resumed.on_event(_progress("market/0", 8))[0].kind == RESTORED
    assert resumed.next_deadline_ns() == 1_100  # market/1 stays silent, said once


def test_the_alerts_are_signal_kinds_a_playbook_rule_can_match_and_close() -> None:
    assert {SILENT, RESTORED} <= set(ALERT_KINDS)
    assert SILENT in OPENERS and CLOSERS[RESTORED] == SILENT


class _AtEventTime:
    """The watch with processing time read from each event's time (the contract runs
    logic on events alone); a resumed one starts at the snapshot's time."""

    def __init__(self, state: MarketWatchState | None) -> None:
        self.clock = Clock(state.newest_ts if state is not None else 0)
        self.logic = MarketWatchLogic(2, WAIT, self.clock, state)

    def on_event(self, event: Any) -> list[Any]:
        self.clock.now = event.ts
        return self.logic.on_event(event)

    def snapshot(self) -> MarketWatchState:
        return self.logic.snapshot()


def _events() -> list[Any]:
    out: list[Any] = []
    for t in range(0, 910, 10):  # market/1 silent from 300 to 590
        out.append(_progress("market/0", t))
        if not 300 <= t < 600:
            out.append(_progress("market/1", t))
    return out


CASE = Case("market_watch", _AtEventTime, _events())


def test_the_contract_case_raises_and_closes_an_alert() -> None:
    logic = _AtEventTime(None)
    alerts = [a for e in CASE.events for a in logic.on_event(e)]
    assert [(a.kind, a.ts) for a in alerts] == [(SILENT, 390), (RESTORED, 600)]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(check: Any) -> None:
    check(CASE)


def test_replicas_noticing_a_silence_at_other_moments_raise_the_same_alerts() -> None:
    """Two firm replicas read the same progress, each on its own processing clock and
    batches: their silent and restored alerts share ids (the playbook's decision ids
    come from them), and a second silence of the same process has an id of its own."""
    def replica(start: int, wait_late: int) -> list[tuple[str, str]]:
        clock = Clock(start)
        watch = MarketWatchLogic(1, WAIT, clock)
        out = watch.on_batch([_progress("market/0", 10), Tick(ts=11, source="firm")])
        clock.now = start + WAIT + wait_late
        out += watch.on_event(Tick(ts=12 + wait_late, source="firm"))
        clock.now += 5
        out += watch.on_event(_progress("market/0", 40))
        clock.now += WAIT + 1
        out += watch.on_deadline()
        return [(a.kind, a.id) for a in out]

    one, other = replica(0, 0), replica(5_000, 37)
    assert [k for k, _id in one] == [SILENT, RESTORED, SILENT]
    assert one == other
    assert len({i for _k, i in one}) == 3
