"""Event-time alignment's frontier, kept as a heap of where each partition stands, is
the lowest stand over the other live partitions, as a pass over all of them finds it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.connectors.kafka.consumer import EventTimeAlignment

PARTS = ["m-0", "m-1", "m-2", "f-0", "a-0"]


def scanned(align: EventTimeAlignment, part: str, now: int) -> int:
    """The definition: every other partition, looked at in turn."""
    low = None
    for name, (head, last, started, seen, at_end) in align.parts.items():
        if name == part:
            continue
        stand = head
        if stand is None:
            if at_end:
                continue
            waited = now - seen if seen >= 0 else now - started
            if waited >= (align.stall_ns if seen >= 0 else align.grace_ns):
                continue
            stand = last
        if low is None or stand < low:
            low = stand
    return 2**63 if low is None else low


CALLS = st.lists(st.tuples(
    st.sampled_from(["register", "update", "remove", "frontier", "frontier"]),
    st.sampled_from(PARTS),
    st.integers(0, 12),                      # the clock moves on by this much
    st.one_of(st.none(), st.integers(0, 100)),  # head
    st.integers(0, 100),                     # last
    st.booleans(), st.booleans()), max_size=120)


@settings(max_examples=500, deadline=None)
@given(CALLS)
def test_the_frontier_is_the_lowest_live_stand_of_the_others(calls: list[Any]) -> None:
    align = EventTimeAlignment(5, stall_ns=30, grace_ns=50)
    now = 0
    for what, part, step, head, last, got, at_end in calls:
        now += step
        if what == "register":
            align.register(part, now, last)
        elif part not in align.parts:
            continue
        elif what == "update":
            align.update(part, head, last, got, now, at_end)
        elif what == "remove":
            align.remove(part)
        else:
            assert align.frontier(part, now) == scanned(align, part, now)


def test_a_partition_stops_holding_the_others_back_the_moment_it_has_stalled() -> None:
    """Caught up, a partition holds nothing back; with nothing buffered and not at its
    end, it stands at its last time until ``stall_ns`` after its last data (``grace_ns``
    after its start if it never had any), and not from then on."""
    align = EventTimeAlignment(5, stall_ns=30, grace_ns=50)
    align.register("a", 0, 7)
    align.register("b", 0, 3)
    assert align.frontier("a", 49) == 3 and align.frontier("a", 50) == 2**63
    align.update("b", None, 4, True, 10)
    assert align.frontier("a", 39) == 4 and align.frontier("a", 40) == 2**63
    align.update("b", 20, 4, True, 60)
    assert align.frontier("a", 10**6) == 20 and align.frontier("b", 61) == 2**63  # a: grace
    align.update("b", None, 20, False, 62, at_end=True)
    assert align.frontier("a", 63) == 2**63
