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
    (ladders, quiet periods, heartbeat gaps) when no signal arrives."""

    ts: int
