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
from contextvars import ContextVar
from typing import Any, ClassVar

import msgspec

Clock = Callable[[], int]

NS_PER_S = 1_000_000_000


def system_clock() -> int:
    """Wall-clock time in ns; pass it in at the edge of the system only."""
    return time.time_ns()


step_event_time: ContextVar[int | None] = ContextVar("step_event_time", default=None)
"""The latest event time the running step has seen, where an engine runs each step on
its own schedule (Flink): a backtest's event clock reads it, as the source can be far
ahead of the step.

>>> token = step_event_time.set(5)
>>> step_event_time.get()
5
>>> step_event_time.reset(token)
"""


engine_task: ContextVar[tuple[int, int] | None] = ContextVar("engine_task", default=None)
"""``(index, count)`` of the task running a step, where an engine runs one step of a flow
in several tasks (Flink's subtasks): event-time ticks are then named per task and
announce how many tasks tick. A bytewax flow runs in one worker and never sets it."""


call_time: ContextVar[int | None] = ContextVar("call_time", default=None)
"""The wall-clock time (ns) of the step call now running, where an engine replays logged
calls after a restore (Flink's segments), so a replayed call reads what it first read."""


def call_clock() -> int:
    """The running call's :data:`call_time`, else the wall clock: the clock of a flow an
    engine may restore by replaying its calls (elsewhere, :func:`system_clock`).

    >>> token = call_time.set(5)
    >>> call_clock(), call_clock()
    (5, 5)
    >>> call_time.reset(token)
    >>> call_clock() > 5
    True
    """
    at = call_time.get()
    return time.time_ns() if at is None else at


def claim_worker(index: int, count: int) -> None:
    """Set :data:`engine_task` to ``(index, count)`` before an engine calls a step's
    function in one of several tasks.

    >>> claim_worker(1, 2); engine_task.get()
    (1, 2)
    >>> engine_task.set(None) and None
    """
    engine_task.set((index, count))


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


class Tick(msgspec.Struct, frozen=True, kw_only=True, tag="tick"):
    """Event-time progress (ns), with no data: lets time-based rules advance
    (ladders, quiet periods, heartbeat gaps) when no signal arrives.

    ``source`` names the input that made it (a guard process, a market process). A
    consumer that sees named sources takes the *minimum* over the live ones as its
    watermark (:class:`Watermark`), so a fast source cannot carry time past
    records a slow one has not delivered yet. ``of`` is how many sources there
    are (0: unknown); until that many have ticked, time holds.

    ``input_pos`` is -1: where a keyed step orders by event time and input position, a
    tick goes before the records of its time (the first of which made it).
    """

    input_pos: ClassVar[int] = -1

    ts: int
    source: str = ""
    of: int = 0


# a tick source silent (or not yet heard from) this long in processing time stops holding
# time back: a dead or idle market process must not stop the firm process's clock
TICK_IDLE_NS = 10 * NS_PER_S


class Watermark:
    """Minimum event time over live tick sources.

    ``sources`` (name -> ``[newest ts, processing time of that tick]``) is the caller's
    state, updated in place. A source without a tick for ``idle_ns`` of processing time
    stops holding the watermark back (noticed within another ``idle_ns / 4``); one far
    behind in *event* time does not (a replay runs event time fast). Until ``expected``
    sources (the most any tick announced) have ticked, or ``idle_ns`` has passed, the
    watermark stays where it was (-1 at the start). Sources of a restored snapshot count as
    any other (``restored`` says when they are forgotten).

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
    >>> grow = Watermark(idle_ns=10)  # a third source is announced: time holds for it
    >>> [grow.update(s, t, now_ns=0, expected=e) for s, t, e in (("a", 50, 1), ("a", 60, 2),
    ...                                                          ("b", 70, 2))]
    [50, 50, 60]
    """

    def __init__(self, idle_ns: int, sources: dict[str, list[int]] | None = None,
                 restored: RestoredSources | None = None) -> None:
        self.idle_ns = idle_ns
        self.sources: dict[str, list[int]] = sources if sources is not None else {}
        self.restored = restored
        self._short_since: int | None = None
        self._last = -1
        self._expected = 0
        # kept up as sources tick, so a tick costs O(1), not O(sources)
        self._min: int | None = None
        self._at_min = 0
        self._computed_ns = 0

    @classmethod
    def resume(cls, sources: dict[str, Any], idle_ns: int = TICK_IDLE_NS, *,
               last: int = -1, expected: int = 0) -> Watermark:
        """The watermark over a logic's (possibly restored) ``sources``; a bare int per
        source is converted in place (processing time 0: idle until it ticks). ``last``
        and ``expected``, where the logic keeps them (:attr:`last`, :attr:`expected`),
        are where the watermark stood and how many sources the ticks announced: a
        resumed run then reads time as an unbroken one does.

        >>> sources = {"host/1/w0": 500}
        >>> wm = Watermark.resume(sources)
        >>> sources, wm.tick_time(Tick(ts=7), now_ns=0)
        ({'host/1/w0': [500, 0]}, 7)
        >>> held = Watermark.resume({"a": [90, 0]}, last=80, expected=2)
        >>> held.last, held.several(), held.update("a", 95, now_ns=1)
        (80, True, 80)
        """
        for name, v in sources.items():
            if not isinstance(v, list):
                sources[name] = [int(v), 0]
        wm = cls(idle_ns, sources, RestoredSources(sources))
        wm._last, wm._expected = last, expected
        return wm

    def tick_time(self, tick: Tick, now_ns: int) -> int:
        """Event time ``tick`` stands for: its own without a source name, else the
        watermark after it (seen at ``now_ns``)."""
        return self.update(tick.source, tick.ts, now_ns, tick.of) if tick.source else tick.ts

    @property
    def last(self) -> int:
        """The watermark the last named tick left (-1 before any)."""
        return self._last

    @property
    def expected(self) -> int:
        """The most sources any tick announced (0: none announced)."""
        return self._expected

    def several(self) -> bool:
        """Do several sources make the watermark (as ticked, or as their ticks announce)?
        Only then can one source's records run ahead of it.

        >>> wm = Watermark(idle_ns=10)
        >>> wm.update("a", 5, now_ns=0), wm.several(), wm.update("b", 7, now_ns=0), wm.several()
        (5, False, 5, True)
        """
        return self._expected > 1 or len(self.sources) > 1

    def update(self, source: str, ts: int, now_ns: int, expected: int = 0) -> int:
        """Record ``source``'s tick at ``ts`` (seen at ``now_ns``); the watermark after it."""
        self._expected = max(self._expected, expected)
        sources = self.sources
        entry = sources.get(source)
        stale = self._min is None or now_ns - self._computed_ns >= self.idle_ns // 4
        if entry is None:
            sources[source] = [ts, now_ns]
            stale = True
        else:
            old, seen = entry
            if now_ns - seen >= self.idle_ns:  # back from idle: it counts again
                stale = True
            elif ts > old and old == self._min:
                self._at_min -= 1
                stale = stale or self._at_min <= 0
            entry[0], entry[1] = max(old, ts), now_ns
        restored = self.restored
        if restored is not None and restored.old:
            restored.renew(source)
            stale = restored.retire(sources, self._expected, now_ns - self.idle_ns) or stale
        if stale:
            self._recompute(now_ns)
        if len(sources) < self._expected:
            # fewer sources than announced: time holds, for idle_ns at most
            if self._short_since is None:
                self._short_since = now_ns
            if now_ns - self._short_since < self.idle_ns:
                return self._last
        else:
            self._short_since = None
        self._last = self._min if self._min is not None else -1
        return self._last

    def _recompute(self, now_ns: int) -> None:
        """The minimum over sources that ticked within ``idle_ns`` (all idle: the newest)."""
        live = [t for t, seen in self.sources.values() if now_ns - seen < self.idle_ns]
        if live:
            self._min = min(live)
            self._at_min = live.count(self._min)
        else:
            self._min = max(t for t, _ in self.sources.values())
            self._at_min = 0
        self._computed_ns = now_ns


class RestoredSources:
    """Tick sources named in a restored snapshot. A source that keeps its name across a
    restart (``detect/w0``) is live again when it ticks. A bytewax restart names its tick
    sources afresh, so the others belong to processes that are gone: they are forgotten
    all at once when more sources have ticked than the ticks announce, and one by one
    once silent for the idle time (processing time), when they hold nothing back.

    >>> sources = {"host/11": [500, 0], "host/12": [480, 0]}
    >>> restored = RestoredSources(sources)
    >>> sources["host/21"] = [490, 5]; restored.retire(sources, 2, idle_before=-1)
    True
    >>> sorted(sources), restored.old
    (['host/21'], set())
    >>> same = {"p1": [500, 0], "p2": [480, 0]}
    >>> again = RestoredSources(same)
    >>> again.renew("p1"); again.retire(same, 2, idle_before=-1), sorted(again.old)
    (False, ['p2'])
    """

    def __init__(self, sources: dict[str, Any]) -> None:
        self.old = set(sources)

    def renew(self, name: str) -> None:
        """``name`` ticked: if the snapshot named it, it is live again."""
        self.old.discard(name)

    def retire(self, sources: dict[str, Any], expected: int,
               idle_before: int | None = None) -> bool:
        """Forget the restored sources that have not ticked again: all of them when
        ``sources`` outnumber the ``expected`` ones (0: unknown), else each whose last tick
        was seen before ``idle_before`` (``sources`` holds ``[ts, seen]``; None: none).
        True if any was forgotten."""
        if expected and len(sources) > expected:
            gone = self.old
        elif idle_before is not None:
            gone = {n for n in self.old if n in sources and sources[n][1] <= idle_before}
        else:
            return False
        for name in gone:
            sources.pop(name, None)
        self.old = self.old - gone
        return bool(gone)


class EventTicks:
    """A :class:`Tick` each time the records' event time crosses a new ``tick_ns``
    bucket, at the time of the record that crossed it, named ``source`` and announcing
    ``of`` sources (where an engine runs the step in several tasks,
    :data:`engine_task`, each task ticks as its own source: ``<process>/w<index>``).
    Records without an int ``ts`` (a signed envelope) and of the ``untimed`` types make
    no tick.

    ``last_ts`` is the time of the last tick. A caller that keeps it in its snapshot and
    passes it back on a restore makes a resumed run tick as an unbroken one: a bucket
    the stopped run ticked is not ticked again at a later record's time. Resumed inside
    that bucket, its first record announces the last tick again, at its own time: time
    does not move, and the consumers learn the resumed run's source name at once (a
    firm holding its own ticks back resends them from it). The bucket is counted from
    the time, so a restore with another ``tick_ns`` ticks at the next bucket of the new
    size.

    >>> ticks = EventTicks(10, "a", process="host/1")
    >>> [t.ts for t in ticks.crossing([Tick(ts=t) for t in (14, 17, 21, 25, 33)])]
    [14, 21, 33]
    >>> resumed = EventTicks(10, "a", process="host/2", last_ts=ticks.last_ts)
    >>> [t.ts for t in resumed.crossing([Tick(ts=t) for t in (36, 41)])]
    [33, 41]
    """

    def __init__(self, tick_ns: int, source: str, of: int = 0, *, process: str = "",
                 untimed: frozenset[type] = frozenset(), last_ts: int = -1) -> None:
        self.tick_ns = tick_ns
        self.source = source
        self.of = of
        self.process = process or source
        self.untimed = untimed
        self.restore(last_ts)

    def restore(self, last_ts: int) -> None:
        """Go on from a snapshot's last tick time (-1: none)."""
        self.last_ts = last_ts
        self.last = last_ts // self.tick_ns if last_ts >= 0 else -1  # the last bucket ticked
        self.restored = last_ts >= 0  # the last tick is announced again once

    def crossing(self, recs: list[Any]) -> list[Tick]:
        """The ticks ``recs`` make, in order."""
        tick_ns, untimed = self.tick_ns, self.untimed
        out: list[Tick] = self._announce_restored(recs) if self.restored else []
        top = self.last
        for rec in recs:
            ts = getattr(rec, "ts", None)
            if type(ts) is not int:  # a signed envelope: no event time
                continue
            bucket = ts // tick_ns
            if bucket > top and type(rec) not in untimed:  # the type: only when it would tick
                top = bucket
                self.last_ts = ts
                out.append(self._tick(ts))
        self.last = top
        return out

    def _announce_restored(self, recs: list[Any]) -> list[Tick]:
        """The restored last tick again, if the first timed record is in its bucket."""
        for rec in recs:
            ts = getattr(rec, "ts", None)
            if type(ts) is int and type(rec) not in self.untimed:
                self.restored = False
                return [self._tick(self.last_ts)] if ts // self.tick_ns <= self.last else []
        return []

    def _tick(self, ts: int) -> Tick:
        task = engine_task.get()
        if task is None:
            return Tick(ts=ts, source=self.source, of=self.of)
        return Tick(ts=ts, source=f"{self.process}/w{task[0]}", of=task[1])
