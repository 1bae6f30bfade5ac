"""Injected clocks. Logic never reads the wall clock itself.

A clock is any zero-argument callable returning integer ns since the epoch.

>>> clock = ManualClock(1_000)
>>> clock()
1000
>>> clock.advance(500)
>>> clock()
1500
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

Clock = Callable[[], int]

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


def system_clock() -> int:
    """Wall-clock time in ns; pass it in at the edge of the system only."""
    return time.time_ns()


class ManualClock:
    """A clock that moves only when told to (tests, backtests)."""

    def __init__(self, start_ns: int = 0) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, delta_ns: int) -> None:
        """Move forward by ``delta_ns``."""
        self.now_ns += delta_ns

    def set(self, now_ns: int) -> None:
        """Jump to ``now_ns`` (never backwards)."""
        self.now_ns = max(self.now_ns, now_ns)


class Tick(msgspec.Struct, frozen=True, kw_only=True):
    """Event-time progress (ns), with no data: lets time-based rules advance
    (ladders, quiet periods, heartbeat gaps) when no signal arrives.

    ``source`` names the input that made it (e.g. one guard process). A
    consumer that sees named sources takes the *minimum* over the live ones
    as its watermark, so a fast process cannot carry time past records a
    slow one has not delivered yet.
    """

    ts: int
    source: str = ""


class Watermark:
    """Minimum event time over live tick sources; ``idle_ns`` of processing time
    without a tick makes a source stop holding the watermark back.

    >>> wm = Watermark(idle_ns=10)
    >>> wm.update("a", 100, now_ns=0), wm.update("b", 40, now_ns=1), wm.update("a", 120, now_ns=2)
    (100, 40, 40)
    >>> wm.update("a", 130, now_ns=20)   # b has been silent for 19 ns: idle
    130
    """

    def __init__(self, idle_ns: int, sources: dict[str, list[int]] | None = None,
                 restored: RestoredSources | None = None) -> None:
        self.idle_ns = idle_ns
        self.sources: dict[str, list[int]] = sources if sources is not None else {}
        self.restored = restored

    def update(self, source: str, ts: int, now_ns: int) -> int:
        entry = self.sources.get(source)
        if entry is None:
            self.sources[source] = [ts, now_ns]
        else:
            entry[0], entry[1] = max(entry[0], ts), now_ns
        if self.restored is not None:
            self.restored.retire(self.sources)
        live = [t for t, seen in self.sources.values() if now_ns - seen < self.idle_ns]
        return min(live) if live else max(t for t, _ in self.sources.values())


def slowest_source_time(sources: dict[str, int], tick: Tick, stale_ns: int,
                        restored: RestoredSources | None = None) -> int:
    """Event time every live tick source (guard process) has reached, after ``tick``.

    ``sources`` holds each named source's newest tick and is updated in place;
    the result is the oldest of them within ``stale_ns`` of the newest, so a
    source that has fallen that far behind stops holding time back. A tick
    without a source name stands for itself. Sources of a restored snapshot
    are retired as soon as as many new ones tick (``restored``).

    >>> seen = {}
    >>> [slowest_source_time(seen, Tick(ts=t, source=s), 30)
    ...  for s, t in (("a", 10), ("b", 8), ("a", 20), ("b", 20), ("a", 60))]
    [10, 8, 8, 20, 60]
    """
    if not tick.source:
        return tick.ts
    sources[tick.source] = max(sources.get(tick.source, tick.ts), tick.ts)
    if restored is not None:
        restored.retire(sources)
    top = max(sources.values())
    return min(t for t in sources.values() if t >= top - stale_ns)


class RestoredSources:
    """Tick sources named in a restored snapshot belong to processes that are gone: a
    bytewax restart restarts every process, and each names its ticks afresh. They go on
    holding time back only until as many new sources have ticked, then are forgotten;
    otherwise a dead source would pin the watermark where the crash left it.

    >>> sources = {"host/11": 500, "host/12": 480}
    >>> restored = RestoredSources(sources)
    >>> sources["host/21"] = 490; restored.retire(sources); sorted(sources)
    ['host/11', 'host/12', 'host/21']
    >>> sources["host/22"] = 485; restored.retire(sources); sorted(sources)
    ['host/21', 'host/22']
    """

    def __init__(self, sources: dict[str, Any]) -> None:
        self.old = set(sources)

    def retire(self, sources: dict[str, Any]) -> None:
        """Drop the restored sources once enough new ones are live (call after each tick)."""
        if self.old and len(sources.keys() - self.old) >= len(self.old):
            for name in self.old:
                sources.pop(name, None)
            self.old = set()
