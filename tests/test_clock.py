"""The event-time watermark over tick sources: its incremental minimum equals the plain
definition on any sequence of ticks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.operators.core.clock import Watermark

IDLE = 100


def reference(sources: dict[str, list[int]], now: int, idle: int = IDLE) -> int:
    """The definition: the minimum over sources that ticked within ``idle``, else the
    newest."""
    live = [t for t, seen in sources.values() if now - seen < idle]
    return min(live) if live else max(t for t, _ in sources.values())


ticks = st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 50), st.integers(0, 60)),
                 min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(ticks)
def test_the_kept_up_minimum_equals_the_definition(steps: list[tuple[str, int, int]]) -> None:
    """Sources advance, go idle and come back, in any order: each update returns the
    minimum over the live sources (the newest when all are idle)."""
    wm = Watermark(idle_ns=IDLE)
    plain: dict[str, list[int]] = {}
    now, ts = 0, dict.fromkeys("abcde", 0)
    for name, step, wait in steps:
        now += wait
        ts[name] += step
        got = wm.update(name, ts[name], now)
        entry = plain.setdefault(name, [ts[name], now])
        entry[0], entry[1] = max(entry[0], ts[name]), now
        # a source gone idle may hold time for up to IDLE / 4 more before it is noticed
        lo, hi = reference(plain, now), reference(plain, now, IDLE + IDLE // 4)
        assert min(lo, hi) <= got <= max(lo, hi), (steps, got, lo, hi)


def test_many_sources_cost_a_tick_o1_not_o_sources() -> None:
    """A tick re-scans the sources only when the minimum may have moved: 2,000 sources
    each ticking once per bucket cost about one scan per bucket, not one per tick."""
    wm = Watermark(idle_ns=10**18)
    names = [f"s{i}" for i in range(2_000)]
    for n in names:
        wm.update(n, 0, 0)
    scans = 0
    original = wm._recompute

    def counting(now_ns: int) -> None:
        nonlocal scans
        scans += 1
        original(now_ns)

    wm._recompute = counting  # type: ignore[method-assign]
    for bucket in range(1, 6):
        for n in names:
            wm.update(n, bucket, 0)
        assert wm.update(names[0], bucket, 0) == bucket
    assert scans <= 5


def test_a_source_named_the_same_after_a_restart_moves_time_at_once() -> None:
    """A market process names its ticks ``detect/w0`` again after a restart. Resumed from
    its snapshot, the watermark moves with that source's first tick: it is live, not a
    dead process's source whose replacement is still on its way (time held for
    ``idle_ns``, so a restarted process replayed its backlog with time standing still)."""
    wm = Watermark.resume({"detect/w0": [105, 0]}, idle_ns=10_000)
    assert [wm.update("detect/w0", t, now_ns=1_000 + t, expected=1)
            for t in (106, 107, 108)] == [106, 107, 108]


def test_a_restored_source_that_has_not_ticked_again_still_holds_time() -> None:
    """Sources keep their names (market processes): one not in the snapshot (it had not
    ticked yet) is no replacement, and one that finished before the snapshot still
    counts among the two announced, as it did before the restart."""
    wm = Watermark.resume({"p1": [500, 0]}, idle_ns=10_000)
    assert wm.update("p2", 520, now_ns=1, expected=2) == 500
    assert sorted(wm.sources) == ["p1", "p2"]
    done = Watermark.resume({"p1": [500, 0], "p2": [450, 0]}, idle_ns=10_000)
    assert done.update("p1", 600, now_ns=1, expected=2) == 450


def test_a_restored_source_silent_for_the_idle_time_is_forgotten() -> None:
    """With no count announced (a replay), a restored source is forgotten once silent for
    the idle time, when it no longer holds time back anyway."""
    wm = Watermark.resume({"host/11/w0": [500, 0]}, idle_ns=10_000)
    assert wm.update("host/21/w0", 510, now_ns=1) == 500
    assert wm.update("host/21/w0", 520, now_ns=10_000) == 520
    assert sorted(wm.sources) == ["host/21/w0"]


def test_restored_sources_with_new_names_are_forgotten_once_they_outnumber_the_count() -> None:
    """A bytewax restart names every worker afresh: once the sources outnumber the two
    the ticks announce, the restored ones are forgotten, and time holds until both new
    ones have ticked."""
    wm = Watermark.resume({"host/11/w0": [500, 0], "host/12/w0": [480, 0]}, idle_ns=10_000)
    assert wm.update("host/21/w0", 510, now_ns=1, expected=2) == -1
    assert wm.update("host/22/w0", 505, now_ns=2, expected=2) == 505
    assert sorted(wm.sources) == ["host/21/w0", "host/22/w0"]
