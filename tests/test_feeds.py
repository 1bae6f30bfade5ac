"""Primary/backup feed failover: selection, alerts with hysteresis, and the logic contract."""

from __future__ import annotations

import pytest
from contract import CHECKS, Case
from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick
from riskguard.operators.mitigation.feeds import (
    FeedConfig,
    FeedMonitorLogic,
    FeedSelectLogic,
    VenueFeeds,
)
from riskguard.schemas import Quote, VenueState, VenueStatus

S = 1_000_000_000
CFG = FeedConfig(venues={"okx": VenueFeeds(max_gap_ns=3 * S, restore_after_ns=5 * S, skew_ns=0)})


def hb(t: float, feed: str = "primary", state: VenueState = VenueState.OK) -> VenueStatus:
    return VenueStatus(id=f"hb-{feed}-{t}", venue="okx", ts=int(t * S), feed=feed, state=state)


def quote(t: float, feed: str) -> Quote:
    return Quote(id=f"q-{feed}-{t}", venue="okx", instrument="BTC-USDT", ts=int(t * S), feed=feed,
                 bid=99.0, bid_size=1.0, ask=101.0, ask_size=1.0)


def both(t: float) -> list[object]:
    return [quote(t, "primary"), quote(t, "backup")]


def test_only_the_primary_passes_while_its_heartbeat_is_fresh() -> None:
    """Backup duplicates are dropped while the primary is healthy."""
    sel = FeedSelectLogic(CFG, "okx")
    out = [r for e in [hb(0), *both(0.5), hb(1), *both(1.5)] for r in sel.on_event(e)]
    assert [r.id for r in out] == ["q-primary-0.5", "q-primary-1.5"]


def test_heartbeat_gap_fails_over_to_backup_and_hysteresis_delays_the_switch_back() -> None:
    """After a gap over 3 s only backup records pass; the primary must be healthy for 5 s
    before selection returns to it."""
    sel = FeedSelectLogic(CFG, "okx")
    events = [hb(0), *both(1), hb(1, "backup"), *both(4.5), hb(6), *both(7), hb(9), *both(10),
              hb(11), *both(11.5)]
    out = [r.id for e in events for r in sel.on_event(e)]
    assert out == ["q-primary-1", "q-backup-4.5", "q-backup-7", "q-backup-10", "q-primary-11.5"]


def test_monitor_emits_one_loss_and_failover_then_one_restore_per_outage() -> None:
    """The venue monitor speaks once per transition, with the gap in its details."""
    mon = FeedMonitorLogic(CFG, "okx")
    events = [hb(0), hb(1, "backup"), Tick(ts=2 * S), Tick(ts=4 * S), Tick(ts=5 * S),
              hb(6), hb(8), hb(11), hb(12), Tick(ts=13 * S)]
    alerts = [a for e in events for a in mon.on_event(e)]
    assert [a.kind for a in alerts] == [
        "heartbeat_loss", "feed_failover", "heartbeat_restored", "feed_restored",
    ]
    loss = alerts[0]
    assert loss.scope.label() == "venue:okx" and loss.details["gap_s"] == pytest.approx(4.0)
    assert alerts[1].details["to"] == "backup" and alerts[3].details["to"] == "primary"


def test_after_a_restart_a_dead_processes_ticks_do_not_pin_the_monitors_clock() -> None:
    """Restored from a snapshot, the tick source it names belongs to a process that is
    gone; the new process's ticks (one more source than announced) drive the heartbeat gap
    at once."""
    mon = FeedMonitorLogic(CFG, "okx")
    assert [a for e in [hb(0), Tick(ts=1 * S, source="old", of=1)]
            for a in mon.on_event(e)] == []
    resumed = FeedMonitorLogic(CFG, "okx", mon.snapshot())
    alerts = [a.kind for e in [Tick(ts=1 * S, source="new", of=1),
                               Tick(ts=5 * S, source="new", of=1)]
              for a in resumed.on_event(e)]
    assert alerts == ["heartbeat_loss", "feed_failover"]
    assert set(resumed.snapshot().sources) == {"new"}


def test_a_worker_far_behind_in_event_time_still_holds_the_monitors_clock() -> None:
    """In a replay a worker a second late is tens of seconds behind in event time. Its
    ticks still hold the clock back (the heartbeats it delivers are not late), until it
    is silent for TICK_IDLE_NS of processing time."""
    clock = ManualClock(0)
    mon = FeedMonitorLogic(CFG, "okx", clock=clock)
    events = [Tick(ts=0, source="a"), Tick(ts=0, source="b"), hb(0), Tick(ts=31 * S, source="a")]
    assert [a.kind for e in events for a in mon.on_event(e)] == []
    clock.advance(TICK_IDLE_NS)
    assert [a.kind for a in mon.on_event(Tick(ts=32 * S, source="a"))] == [
        "heartbeat_loss", "feed_failover"]


def test_ticks_hold_until_every_worker_of_the_cluster_has_ticked() -> None:
    """With ``Tick.of`` workers, one that started first cannot move the clock past
    heartbeats a worker still starting will deliver; the start holds TICK_IDLE_NS at most."""
    clock = ManualClock(0)
    mon = FeedMonitorLogic(CFG, "okx", clock=clock)
    early = [hb(0), Tick(ts=0, source="a", of=2), Tick(ts=20 * S, source="a", of=2)]
    assert [a.kind for e in early for a in mon.on_event(e)] == []
    assert [a.kind for a in mon.on_event(Tick(ts=1, source="b", of=2))] == []
    late = FeedMonitorLogic(CFG, "okx", clock=clock)
    assert [a.kind for e in early for a in late.on_event(e)] == []
    clock.advance(TICK_IDLE_NS)  # b never comes: a alone moves the clock
    assert [a.kind for a in late.on_event(Tick(ts=21 * S, source="a", of=2))] == [
        "heartbeat_loss", "feed_failover"]


def test_a_down_status_fails_over_at_once() -> None:
    """A primary that reports itself down is abandoned without waiting for the gap."""
    mon = FeedMonitorLogic(CFG, "okx")
    alerts = [a for e in [hb(0), hb(0.5, state=VenueState.DOWN)] for a in mon.on_event(e)]
    assert [a.kind for a in alerts] == ["heartbeat_loss", "feed_failover"]
    assert "reported down" in alerts[0].reason


def test_venues_without_a_backup_pass_everything_and_never_alert() -> None:
    """Unconfigured venues are pass-through; ticks and heartbeats produce nothing."""
    sel = FeedSelectLogic(CFG, "binance")
    q = Quote(id="b", venue="binance", instrument="X", ts=1, bid=1.0, bid_size=1.0, ask=2.0,
              ask_size=1.0)
    assert sel.on_event(q) == [q]
    assert sel.on_event(Tick(ts=99 * S)) == []


EVENTS = [hb(0), *both(1), hb(1, "backup"), Tick(ts=3 * S), *both(4.5), Tick(ts=5 * S), hb(6),
          *both(7), hb(9), *both(10), hb(11), *both(11.5), Tick(ts=12 * S)]
CASES = [
    Case("feed_select", lambda st: FeedSelectLogic(CFG, "okx", st), EVENTS),
    Case("feed_monitor", lambda st: FeedMonitorLogic(CFG, "okx", st), EVENTS),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_feed_logic_meets_the_stateful_contract(case: Case, check) -> None:
    """Snapshots pickle, are independent, resume exactly, and never mutate input."""
    check(case)


def test_ticks_and_market_data_from_other_topics_cannot_fake_a_heartbeat_gap() -> None:
    """Records up to skew_ns ahead of the heartbeat topic do not fail the venue over; a
    genuine gap still does, measured on heartbeat time."""
    cfg = FeedConfig(venues={"okx": VenueFeeds(max_gap_ns=3 * S, restore_after_ns=5 * S,
                                               skew_ns=2 * S)})
    mon = FeedMonitorLogic(cfg, "okx")
    sel = FeedSelectLogic(cfg, "okx")
    # A tick and a quote 4.5 s past the last heartbeat arrive before the next heartbeat.
    events = [hb(0), Tick(ts=int(4.5 * S)), quote(4.5, "primary"), hb(1), hb(2)]
    assert [a.kind for e in events for a in mon.on_event(e)] == []
    assert [r.id for e in events for r in sel.on_event(e)] == ["q-primary-4.5"]
    # Ticks 5.5 s past the last heartbeat (beyond the skew) are a real gap.
    assert [a.kind for a in mon.on_event(Tick(ts=int(7.5 * S)))] == [
        "heartbeat_loss", "feed_failover"]


_EVENT = st.one_of(
    st.builds(lambda t, f, s: hb(t / 4, f, s), st.integers(0, 80),
              st.sampled_from(["primary", "backup"]),
              st.sampled_from([VenueState.OK, VenueState.DEGRADED, VenueState.DOWN])),
    st.builds(lambda t, f: quote(t / 4, f), st.integers(0, 80),
              st.sampled_from(["primary", "backup"])),
    st.builds(lambda t: Tick(ts=t * S // 4), st.integers(0, 80)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=40), st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_feed_selection_by_batch_equals_one_event_at_a_time(events: list[object],
                                                            cuts: list[int]) -> None:
    """The batch path (the healthy-primary case inlined) passes the same records and
    ends in the same state as the rule applied one event at a time through
    ``FeedState.step`` (the reference below), however the events are cut into batches;
    so does the guard's per-venue wrapper, for selection and for the monitor."""
    from riskguard.dataflows.guard.steps import PerVenueLogic
    from riskguard.operators.mitigation.feeds import FeedState

    vf = CFG.venues["okx"]
    ref_state = FeedState(venue="okx", active=vf.primary)
    want = []
    for e in events:
        if isinstance(e, VenueStatus):
            ref_state.step(vf, e.ts, e)
            continue
        ref_state.step(vf, e.ts - vf.skew_ns, None)  # type: ignore[attr-defined]
        if not isinstance(e, Tick) and e.feed == ref_state.active:  # type: ignore[attr-defined]
            want.append(e)
    batches, at = [], 0
    for n in cuts * 40:
        batches.append(events[at:at + n])
        at += n
        if at >= len(events):
            break
    many = FeedSelectLogic(CFG, "okx")
    assert [r for b in batches for r in many.on_batch(b)] == want
    assert many.state == ref_state
    for cls in (FeedSelectLogic, lambda cfg, venue, state=None: FeedMonitorLogic(
            cfg, venue, state, clock=ManualClock(0))):
        ref, wrapped = PerVenueLogic(cls, CFG, None), PerVenueLogic(cls, CFG, None)
        expect = [r for e in events for r in ref.on_event(e)]
        assert [r for b in batches for r in wrapped.on_batch(b)] == expect


def test_withdrawals_halted_and_resumed_alert_once_each() -> None:
    """A venue reporting withdrawals halted is a counterparty-credit signal: one critical
    alert when they stop, one when they resume, none while nothing changes."""
    mon = FeedMonitorLogic(FeedConfig(), "kraken")

    def status(t: float, enabled: bool) -> VenueStatus:
        return VenueStatus(id=f"s{t}", venue="kraken", ts=int(t * S),
                           withdrawals_enabled=enabled)

    kinds = [a.kind for t, on in ((0, True), (1, False), (2, False), (3, True))
             for a in mon.on_event(status(t, on))]
    assert kinds == ["withdrawals_halted", "withdrawals_resumed"]


def test_withdrawals_are_read_from_the_active_feed_only() -> None:
    """Primary and backup disagree on withdrawals: the active feed's report counts, so
    their heartbeats do not alert in turn; after a failover the backup's does."""
    mon = FeedMonitorLogic(CFG, "okx")

    def status(t: float, feed: str, enabled: bool) -> VenueStatus:
        return VenueStatus(id=f"{feed}{t}", venue="okx", ts=int(t * S), feed=feed,
                           withdrawals_enabled=enabled)

    kinds = [a.kind for t in (0, 1, 2) for feed, on in (("primary", True), ("backup", False))
             for a in mon.on_event(status(t, feed, on))]
    assert kinds == []
    # the primary silent past its gap: the backup takes over, then its report counts
    assert [a.kind for a in mon.on_event(status(6, "backup", False))] == [
        "heartbeat_loss", "feed_failover"]
    assert [a.kind for a in mon.on_event(status(7, "backup", False))] == ["withdrawals_halted"]
