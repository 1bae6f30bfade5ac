"""Due times between records: a replay's playbook meets each rung and quiet-period end
when it falls due, as a clock that ticks would, not at the next record."""

from __future__ import annotations

from typing import Any

from playbook_cases import FLASH, acts, anomaly, make
from riskguard.dataflows.backtest import EventClock
from riskguard.operators.core.clock import step_event_time
from riskguard.operators.mitigation.playbook import PlaybookLogic, Rule, Rung, S, Tick
from riskguard.schemas import Action, MitigationCommand, Severity, encode

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


def _three_ways(events: list[Any], **kw: Any) -> tuple[list[bytes], list[list[bytes]], list[bytes]]:
    """Commands of ``events`` replayed as they are, resumed from a snapshot after each
    event, and with a tick every second between them."""
    def run(evs: list[Any], logic: PlaybookLogic | None = None,
            clock: EventClock | None = None) -> list[bytes]:
        clock = clock or EventClock()
        return [encode(c) for c in replay(logic or make(FLASH, clock=clock, **kw), clock, evs)]

    splits = []
    for k in range(1, len(events)):
        clock = EventClock()
        first = make(FLASH, clock=clock, **kw)
        head = run(events[:k], first, clock)
        splits.append(head + run(events[k:], PlaybookLogic(first.config, clock,
                                                           first.snapshot()), clock))
    end = events[-1].ts // S
    by_ts = {e.ts: e for e in events}
    ticking = [by_ts.get(t) or Tick(ts=t)
               for t in sorted(set(by_ts) | {s * S for s in range(end + 1)})]
    return run(events), splits, run(ticking)


def test_commands_the_rate_cap_held_are_retried_when_the_window_rolls_between_records(
        ) -> None:
    """One command per 10 s: the reduce_only held at 2 s goes out when the window rolls at
    10 s, with the rate-cap alert stamped there too, whether resumed or ticked."""
    events = [anomaly(0), anomaly(2, phase="escalate", sev=Severity.CRITICAL),
              Tick(ts=100 * S)]
    sparse, splits, ticking = _three_ways(events, max_commands=1, rate_window_s=10)
    assert all(split == sparse for split in splits)
    assert sparse == ticking


def test_due_times_left_behind_by_a_signal_are_not_stopped_at() -> None:
    """An escalation wakes an incident whose old due time stays in the heap: a run that
    never stopped meets the same times as one resumed, and as a ticking clock."""
    events = [anomaly(0), anomaly(5, phase="escalate", sev=Severity.CRITICAL),
              anomaly(6, inst="ETH-USDT", v="binance"), Tick(ts=100 * S)]
    sparse, splits, ticking = _three_ways(events, max_commands=2, rate_window_s=8)
    assert all(split == sparse for split in splits)
    assert sparse == ticking


def test_fractional_rung_and_quiet_times_are_met_not_skipped() -> None:
    """A due time of 16.1 s or a quiet period of 4.1 s is met then, not at the next
    record an hour later, and a rung due before the close is still issued."""
    for quiet, after, want in ((4.1, 10, [("alert", 0), ("reduce_only", 10),
                                          ("resume", 104.1)]),
                               (20, 16.1, [("alert", 0), ("reduce_only", 16.1),
                                           ("resume", 120)])):
        rule = Rule(name="flash", signal="anomaly", scope="instrument:*", target="venue",
                    quiet_s=quiet, ladder=(Rung(action=Action.ALERT),
                                           Rung(action=Action.REDUCE_ONLY, after_s=after)))
        clock = EventClock()
        cmds = replay(make(rule, clock=clock), clock,
                      [anomaly(0), anomaly(100, phase="close"), Tick(ts=HOUR * S)])
        assert [(c.action.value, round(c.issued_at / S, 3)) for c in cmds] == want
