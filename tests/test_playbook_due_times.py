"""Due times between records: a replay's playbook meets each rung and quiet-period end
when it falls due, as a clock that ticks would, not at the next record."""

from __future__ import annotations

from typing import Any

from riskguard.dataflows.backtest import EventClock
from riskguard.operators.core.clock import step_event_time
from riskguard.operators.mitigation.playbook import PlaybookLogic, S, Tick
from riskguard.schemas import MitigationCommand, Severity, encode
from test_playbook import FLASH, acts, anomaly, make

HOUR = 3600


def replay(logic: PlaybookLogic, clock: EventClock, events: list[Any]
           ) -> list[MitigationCommand]:
    """Feed ``events`` as a backtest does: the event clock moves with each record."""
    out: list[Any] = []
    for e in events:
        clock.observe(e)
        out.extend(logic.on_event(e))
    return out


def test_hourly_records_climb_and_lift_when_due_not_at_the_next_record() -> None:
    """Between two hourly records the ladder climbs at 10 s and 30 s, and the resume
    comes when the 20 s quiet period ends, each issued at its own time."""
    clock = EventClock()
    logic = make(FLASH, clock=clock)
    cmds = replay(logic, clock, [anomaly(0), anomaly(HOUR, phase="close"), Tick(ts=2 * HOUR * S)])
    assert [(c.action.value, c.issued_at // S) for c in cmds] == [
        ("alert", 0), ("reduce_only", 10), ("halt_trading", 30), ("resume", HOUR + 20)]


def test_a_sparse_replay_gives_the_commands_of_a_clock_that_ticks_every_second() -> None:
    """The same signals, once with a tick every second and once alone: byte-identical
    commands."""
    signals = [anomaly(0), anomaly(5, phase="escalate", sev=Severity.CRITICAL),
               anomaly(400, phase="close"), anomaly(900), anomaly(950, phase="close")]
    end = 1_200

    def run(ticks: bool) -> list[bytes]:
        clock = EventClock()
        logic = make(FLASH, clock=clock)
        times = sorted({s.ts for s in signals} | ({t * S for t in range(end)} if ticks
                                                   else {end * S}))
        by_ts = {s.ts: s for s in signals}
        events = [by_ts.get(t) or Tick(ts=t) for t in times]
        return [encode(c) for c in replay(logic, clock, events)]

    sparse, ticking = run(False), run(True)
    assert len(sparse) >= 6
    assert sparse == ticking


def test_a_resumed_playbook_meets_the_due_times_its_snapshot_was_waiting_for() -> None:
    """Snapshot between two sparse records, resume, go on: the same commands."""
    events = [anomaly(0), anomaly(HOUR, phase="close"), Tick(ts=2 * HOUR * S)]
    clock = EventClock()
    whole = replay(make(FLASH, clock=clock), clock, events)
    clock = EventClock()
    first = make(FLASH, clock=clock)
    head = replay(first, clock, events[:1])
    second = PlaybookLogic(first.config, clock, first.snapshot())
    tail = replay(second, clock, events[1:])
    assert [encode(c) for c in head + tail] == [encode(c) for c in whole]


def test_catching_up_leaves_the_event_time_of_the_step_as_it_was() -> None:
    """The step's event time is set only while a due time is met."""
    clock = EventClock()
    logic = make(FLASH, clock=clock)
    replay(logic, clock, [anomaly(0), anomaly(HOUR)])
    assert step_event_time.get() is None
    assert acts(replay(logic, clock, [Tick(ts=2 * HOUR * S)])) == []


def test_named_tick_sources_meet_due_times_at_their_watermark() -> None:
    """Two guard processes ticking once an hour plan what they plan ticking every second."""
    signals = [anomaly(0), anomaly(2, inst="ETH-USDT", v="binance"),
               anomaly(600, phase="close"), anomaly(700, inst="ETH-USDT", v="binance",
                                                    phase="close")]
    end = 1_200

    def run(every: int) -> list[bytes]:
        clock = EventClock()
        logic = make(FLASH, clock=clock)
        events: list[Any] = []
        by_ts = {s.ts: s for s in signals}
        for t in sorted({s.ts // S for s in signals} | set(range(0, end, every)) | {end}):
            if t * S in by_ts:
                events.append(by_ts[t * S])
            events += [Tick(ts=t * S, source=p, of=2) for p in ("p0", "p1")]
        return [encode(c) for c in replay(logic, clock, events)]

    hourly, ticking = run(HOUR), run(1)
    assert len(hourly) >= 7
    assert hourly == ticking
