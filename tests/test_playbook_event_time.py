"""Playbook event time across guard processes: the slowest tick source times the ladders,
signals ahead of the watermark wait (at most max_hold_s), end of input applies them."""

from __future__ import annotations

from typing import Any

from playbook_cases import FLASH, HB, acts, alert, feed, make, two_incidents, venue, worker_input
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import PlaybookLogic, Rule, Rung, S, Tick
from riskguard.schemas import Action, Severity


def test_time_driven_rungs_wait_for_the_slowest_tick_source() -> None:
    """With ticks from two guard processes, a 60 s rung climbs only when the slower one's
    event time has passed it; an immediate rung still fires on the signal itself."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", quiet_s=30,
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    logic = make(rule)
    out = feed(logic, [Tick(ts=100 * S, source="p1"), Tick(ts=100 * S, source="p2"),
                       alert("heartbeat_loss", venue("binance"), 101)])
    assert acts(out) == [("reroute_order_flow", "venue:binance")]
    # p1 races ahead to t=200; p2 (which carries binance's heartbeats) is still at 110.
    out = feed(logic, [Tick(ts=110 * S, source="p2"), Tick(ts=200 * S, source="p1")])
    assert out == []
    # p2 delivers the restore at 140 and then moves on: the incident closed before 163.
    out = feed(logic, [alert("heartbeat_restored", venue("binance"), 140),
                       Tick(ts=200 * S, source="p2")])
    assert acts(out) == [("resume", "venue:binance")]


def _one_worker(*streams: list[Any]) -> list[Any]:
    """The same inputs as one worker meets them: one tick source, everything in event-time
    order (a tick before the signals of its second)."""
    merged = [e for s in streams for e in s]
    ticks = {e.ts: Tick(ts=e.ts, source="w", of=1) for e in merged if isinstance(e, Tick)}
    signals = [e for e in merged if not isinstance(e, Tick)]
    return sorted([*ticks.values(), *signals], key=lambda e: (e.ts, not isinstance(e, Tick)))


def _planned(logic: PlaybookLogic, events: list[Any]) -> list[tuple[str, str, str]]:
    cmds = [*feed(logic, events), *logic.on_eof()]
    return [(c.action.value, c.scope.label(), c.reason) for c in cmds]


def test_a_process_far_ahead_waits_so_two_processes_plan_what_one_worker_does() -> None:
    """Replaying a backlog, one process can run minutes of event time ahead of the other.
    Its signals wait for the watermark and are applied in event-time order, so any
    interleaving of the two processes' inputs plans exactly the one-worker commands."""
    import random

    p1, p2 = two_incidents()
    rules = (FLASH, HB)
    reference = _planned(make(*rules), _one_worker(p1, p2))
    assert ("cancel_all", "venue:binance") in [c[:2] for c in reference]
    rng = random.Random(7)
    for order in ("p2 first", "p1 first", *(f"shuffle {i}" for i in range(20))):
        if order == "p2 first":
            events = p2 + p1
        elif order == "p1 first":
            events = p1 + p2
        else:  # each process's own order kept, the two interleaved at random
            a, b, events = list(p1), list(p2), []
            while a or b:
                events.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
        assert _planned(make(*rules), events) == reference, order


def test_signals_ahead_of_the_watermark_wait_only_beyond_the_slack() -> None:
    """Live, the workers are within a tick of each other: a signal up to
    ``reorder_slack_s`` ahead of the watermark acts at once; one further ahead waits for
    the watermark, and end of input applies whatever still waits."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))
    logic = make(rule, reorder_slack_s=2.0)
    feed(logic, [Tick(ts=100 * S, source="p1", of=2), Tick(ts=100 * S, source="p2", of=2)])
    assert acts(logic.on_event(alert("heartbeat_loss", venue("okx"), 101.9))) == [
        ("reroute_order_flow", "venue:okx")]
    assert logic.on_event(alert("heartbeat_loss", venue("binance"), 105)) == []
    assert logic.on_event(Tick(ts=103 * S, source="p1", of=2)) == []  # p2 still at 100
    # (okx's flow, rerouted partly to binance, is retargeted too)
    assert ("reroute_order_flow", "venue:binance") in acts(
        logic.on_event(Tick(ts=103 * S, source="p2", of=2)))
    assert logic.on_event(alert("heartbeat_loss", venue("deribit"), 200)) == []
    resumed = PlaybookLogic(logic.config, logic.clock, logic.snapshot())
    # (no healthy venue is left to reroute to: the rule escalates to an alert)
    assert acts(resumed.on_eof()) == [("alert", "venue:deribit")]


def test_a_signal_waits_for_the_watermark_at_most_max_hold_s_of_processing_time() -> None:
    """Live, a cluster whose exposure path falls behind must still act within seconds: a
    signal held for ``max_hold_s`` of processing time is applied at the next event,
    without moving the watermark that times ladders and quiet periods; ``on_reorder``
    hears of both (the guard counts them in ``riskguard_reorder_total``)."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))
    clock = ManualClock(0)
    logic = make(rule, clock=clock, max_hold_s=5.0)
    told: list[tuple[str, int]] = []
    logic.on_reorder = lambda outcome, n: told.append((outcome, n))
    feed(logic, [Tick(ts=100 * S, source="p1", of=2), Tick(ts=100 * S, source="p2", of=2)])
    assert logic.on_event(alert("heartbeat_loss", venue("binance"), 110)) == []
    clock.advance(4 * S)
    assert logic.on_event(Tick(ts=100 * S, source="p1", of=2)) == []
    clock.advance(S)
    assert acts(logic.on_event(Tick(ts=100 * S, source="p1", of=2))) == [
        ("reroute_order_flow", "venue:binance")]
    st = logic.snapshot()
    assert (st.forced, st.held, st.watermark) == (1, [], 100 * S)
    assert told == [("held", 1), ("forced", 1)]


def test_after_a_restart_the_dead_processes_tick_sources_stop_holding_time() -> None:
    """Restored from a snapshot, the tick sources it names are gone (every process restarts
    under a new name): once the new process ticks (one more source than the ticks
    announce), time-driven rungs follow it at once, not after the dead one goes idle."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", quiet_s=30,
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    clock = ManualClock(1_000)
    logic = make(rule, clock=clock)
    feed(logic, [Tick(ts=100 * S, source="old", of=1),
                 alert("heartbeat_loss", venue("binance"), 101)])
    resumed = PlaybookLogic(logic.config, clock, logic.snapshot())
    clock.advance(S)  # well inside the 30 s idle window of the dead source
    out = feed(resumed, [Tick(ts=100 * S, source="new", of=1),
                         Tick(ts=162 * S, source="new", of=1)])
    assert acts(out) == [("cancel_all", "venue:binance")]
    assert set(resumed.snapshot().sources) == {"new"}


def test_without_named_sources_signals_move_the_clock() -> None:
    """Unnamed ticks and signals drive time as before (backtests, single process)."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    out = feed(make(rule), [alert("heartbeat_loss", venue("binance"), 100), Tick(ts=161 * S)])
    assert acts(out) == [("reroute_order_flow", "venue:binance"), ("cancel_all", "venue:binance")]


def test_at_end_of_input_a_source_that_finished_early_does_not_hold_the_clock() -> None:
    """A process that finished its input early stops ticking, so the watermark stays at
    its last tick and the other process's signals wait. At end of input every source has
    ended: they apply in event-time order with the clock stepping up to each, and the
    clock ends where one worker's does, so the quiet periods that one worker sees end
    (resumes) end here too."""
    hb = [alert("heartbeat_loss", venue("binance"), 10, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 25),
          alert("heartbeat_loss", venue("binance"), 110, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 200)]
    early, late = worker_input("p1", [], 5), worker_input("p2", hb, 260)
    reference = _planned(make(HB), _one_worker(early, late))
    assert [c[:2] for c in reference].count(("resume", "venue:binance")) == 2
    for events in (early + late, late + early):
        assert _planned(make(HB), events) == reference
