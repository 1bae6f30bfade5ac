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

    ``source`` names the input that made it (one guard worker). A consumer
    that sees named sources takes the *minimum* over the live ones as its
    watermark (:class:`Watermark`), so a fast worker cannot carry time past
    records a slow one has not delivered yet. ``of`` is how many sources the
    cluster has (0: unknown); until that many have ticked, time holds.
    """

    ts: int
    source: str = ""
    of: int = 0


# A tick source silent this long (processing time) stops holding time back, and a
# source expected but not yet heard from stops holding the start back. In a bytewax
# cluster a dead process stops every process, so only a source with no input goes quiet.
TICK_IDLE_NS = 10 * NS_PER_S


class Watermark:
    """Minimum event time over live tick sources.

    ``sources`` (name -> ``[newest ts, processing time of that tick]``) is the
    caller's state, updated in place. A source without a tick for ``idle_ns``
    of processing time stops holding the watermark back; a source far behind
    in *event* time does not: in a replay, event time runs many times faster
    than processing time, so a worker a second late is still live. With
    ``expected`` sources, the watermark stays at -1 until that many have
    ticked or ``idle_ns`` has passed since the first tick, so a worker still
    starting cannot be overtaken. Sources of a restored snapshot are retired
    as soon as as many new ones tick (``restored``).

    >>> wm = Watermark(idle_ns=10)
    >>> wm.update("a", 100, now_ns=0), wm.update("b", 40, now_ns=1), wm.update("a", 120, now_ns=2)
    (100, 40, 40)
    >>> wm.update("a", 130, now_ns=20)   # b has been silent for 19 ns: idle
    130
    >>> start = Watermark(idle_ns=10)
    >>> [start.update(s, t, now_ns=n, expected=2) for s, t, n in (("a", 50, 0), ("a", 90, 5),
    ...                                                            ("b", 20, 6))]
    [-1, -1, 20]
    >>> late = Watermark(idle_ns=10)  # b never comes: the start holds for idle_ns only
    >>> [late.update("a", t, now_ns=n, expected=2) for t, n in ((50, 0), (90, 12))]
    [-1, 90]
    """

    def __init__(self, idle_ns: int, sources: dict[str, list[int]] | None = None,
                 restored: RestoredSources | None = None) -> None:
        self.idle_ns = idle_ns
        self.sources: dict[str, list[int]] = sources if sources is not None else {}
        self.restored = restored
        self._first_ns: int | None = None
        self._started = False

    @classmethod
    def resume(cls, sources: dict[str, Any], idle_ns: int = TICK_IDLE_NS) -> Watermark:
        """The watermark over a logic's (possibly restored) ``sources``, converted in place
        where a snapshot from before processing times were kept has an int per source
        (processing time 0: idle until it ticks); restored sources retire as new ones tick.

        >>> sources = {"host/1/w0": 500}
        >>> wm = Watermark.resume(sources)
        >>> sources, wm.tick_time(Tick(ts=7), now_ns=0)
        ({'host/1/w0': [500, 0]}, 7)
        """
        for name, v in sources.items():
            if not isinstance(v, list):
                sources[name] = [int(v), 0]
        return cls(idle_ns, sources, RestoredSources(sources))

    def tick_time(self, tick: Tick, now_ns: int) -> int:
        """Event time ``tick`` stands for: its own without a source name, else the
        watermark after it (seen at ``now_ns``)."""
        return self.update(tick.source, tick.ts, now_ns, tick.of) if tick.source else tick.ts

    def update(self, source: str, ts: int, now_ns: int, expected: int = 0) -> int:
        """Record ``source``'s tick at ``ts`` (seen at ``now_ns``); the watermark after it."""
        sources = self.sources
        entry = sources.get(source)
        if entry is None:
            sources[source] = [ts, now_ns]
        else:
            entry[0], entry[1] = max(entry[0], ts), now_ns
        restored = self.restored
        if restored is not None:
            restored.retire(sources)
        if not self._started:
            if self._first_ns is None:
                self._first_ns = now_ns
            fresh = len(sources) - (len(restored.old) if restored is not None else 0)
            if fresh < expected and now_ns - self._first_ns < self.idle_ns:
                return -1
            self._started = True
        live = [t for t, seen in sources.values() if now_ns - seen < self.idle_ns]
        return min(live) if live else max(t for t, _ in sources.values())


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
