"""The firm tier's watch on the detect tier: an alert when a detect worker goes silent.

A firm tier's clock waits for each detect worker's progress, but only while
that worker is live: one silent for ``TICK_IDLE_NS`` of processing time stops
holding time back, and the firm tier goes on valuing, limiting and mitigating
without its anomaly signals. :class:`DetectWatchLogic` says so. It raises a
critical ``detect_silent`` alert (firm scope) for each detect worker that has
sent no progress for ``silent_ns`` of processing time while the firm tier's own
event time moved past that worker's newest progress, and one ``detect_restored``
once every silent worker's progress has come back. The playbook treats them as
one firm-scope incident and its close
(:data:`~riskguard.operators.mitigation.rules.CLOSERS`).

Checks run as ticks arrive: the firm tier's own (one per worker per tick of
event time) and the detect workers' (their progress records). A firm tier
with no input of its own acts on nothing, so it need not be told.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from riskguard.operators.core.clock import NS_PER_S, Clock, Tick, system_clock
from riskguard.schemas import RiskAlert, Scope, ScopeKind, Severity

DETECT_PREFIX = "detect/"
"""Tick sources of the detect tier are named ``detect/w<i>`` (worker ``i``)."""

_NAMESPACE = uuid.UUID("0d9f6b53-9a3c-4c1e-8f57-2b1e64a7c0d2")
_FIRM = Scope(kind=ScopeKind.FIRM, value="*")


def detect_worker(i: int) -> str:
    """The tick-source name of detect worker ``i``.

    >>> detect_worker(1)
    'detect/w1'
    """
    return f"{DETECT_PREFIX}w{i}"


@dataclass
class DetectWatchState:
    """Per detect worker ``[newest progress ts, processing time it came]``; the firm
    tier's own newest event time; the workers silent now and every worker of the open
    incident (name -> the time of its alert); the processing time the watch started (a
    worker never heard from is silent since)."""

    progress: dict[str, list[int]] = field(default_factory=dict)
    own_ts: int = -1
    silent: dict[str, int] = field(default_factory=dict)
    incident: dict[str, int] = field(default_factory=dict)
    started_ns: int | None = None


class DetectWatchLogic:
    """Alert when a detect worker goes silent while the firm tier's time moves on.

    Feed it every tick of the firm tier: its own (any source) and the detect
    tier's (sources named by :func:`detect_worker`). ``clock`` is processing
    time. Processing times in a restored snapshot are another process's: each
    worker's silence is counted afresh from the first tick after a resume.

    >>> S = NS_PER_S
    >>> now = [0]
    >>> watch = DetectWatchLogic(workers=1, silent_ns=10 * S, clock=lambda: now[0])
    >>> watch.on_event(Tick(ts=1 * S, source="detect/w0")), watch.on_event(Tick(ts=2 * S))
    ([], [])
    >>> now[0] = 11 * S  # nothing from detect/w0 for 11 s, and the firm's time is past it
    >>> [(a.kind, a.severity.value, a.details["worker"]) for a in watch.on_event(Tick(ts=3 * S))]
    [('detect_silent', 'critical', 'detect/w0')]
    >>> watch.on_event(Tick(ts=4 * S))  # said once
    []
    >>> [a.kind for a in watch.on_event(Tick(ts=3 * S, source="detect/w0"))]
    ['detect_restored']
    """

    def __init__(self, workers: int, silent_ns: int, state: DetectWatchState | None = None,
                 *, clock: Clock = system_clock) -> None:
        self.names = [detect_worker(i) for i in range(workers)]
        self.silent_ns = silent_ns
        self.clock = clock
        self.state = state if state is not None else DetectWatchState()
        self._resumed = state is not None

    def snapshot(self) -> DetectWatchState:
        st = self.state
        return DetectWatchState(progress={k: list(v) for k, v in st.progress.items()},
                                own_ts=st.own_ts, silent=dict(st.silent),
                                incident=dict(st.incident), started_ns=st.started_ns)

    def on_event(self, tick: Tick) -> list[RiskAlert]:
        return self.on_batch([tick])

    def on_batch(self, ticks: list[Tick]) -> list[RiskAlert]:
        st = self.state
        now = self.clock()
        if self._resumed:  # another process's processing times: count afresh from now
            self._resumed = False
            for entry in st.progress.values():
                entry[1] = now
            st.started_ns = now
        if st.started_ns is None:
            st.started_ns = now
        back = False
        for t in ticks:
            if not t.source.startswith(DETECT_PREFIX):
                st.own_ts = max(st.own_ts, t.ts)
                continue
            seen = st.progress.get(t.source)
            if seen is None:
                st.progress[t.source] = [t.ts, now]
            else:
                seen[0], seen[1] = max(seen[0], t.ts), now
            if st.silent.pop(t.source, None) is not None:
                back = True
        out = self._newly_silent(now)
        if back and not st.silent:
            out.append(self._restored())
        return out

    def _newly_silent(self, now: int) -> list[RiskAlert]:
        st = self.state
        out = []
        for name in self.names:
            if name in st.silent:
                continue
            entry = st.progress.get(name)
            ts, since = (entry[0], entry[1]) if entry is not None else (-1, st.started_ns or 0)
            if now - since < self.silent_ns or st.own_ts <= ts:
                continue
            st.silent[name] = st.incident[name] = st.own_ts
            out.append(self._alert(
                "detect_silent", name, st.own_ts, Severity.CRITICAL,
                f"detect worker {name} sent no progress for {(now - since) / NS_PER_S:.1f}s "
                f"(limit {self.silent_ns / NS_PER_S:g}s) while the firm tier's time moved "
                f"past it: its anomaly signals are missing",
                progress_ts=ts, silent_s=round((now - since) / NS_PER_S, 3)))
        return out

    def _restored(self) -> RiskAlert:
        """Every worker of the incident is back: one alert naming them all; it closes."""
        st = self.state
        names = sorted(st.incident)
        since = min(st.incident.values())
        st.incident.clear()
        ts = max(st.own_ts, *(st.progress[n][0] for n in names))
        return self._alert("detect_restored", ",".join(names), ts, Severity.INFO,
                           f"detect worker(s) {', '.join(names)} send progress again; "
                           "no detect worker is silent", since_ts=since)

    def _alert(self, kind: str, name: str, ts: int, severity: Severity, reason: str,
               **details: int | float) -> RiskAlert:
        rid = uuid.uuid5(_NAMESPACE, f"{kind}|{name}|{ts}")
        return RiskAlert(id=str(rid), kind=kind, scope=_FIRM, ts=ts, severity=severity,
                         reason=reason, details={"worker": name, **details})
