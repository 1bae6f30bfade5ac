"""The firm process's watch over the market processes of the market tier.

A market process silent for ``tier.market_wait_s`` of processing time no longer holds
the firm's clock back (:class:`~riskguard.dataflows.guard.steps.FirmClock`), and the
firm goes on without its underlyings: :class:`MarketWatchLogic` raises a critical
``market_process_silent`` alert then, and ``market_process_restored`` when it is heard
again. The wait counts from the watch's start, also after a firm restart. An alert's id
is made of event-time facts only (its kind, the process, the newest progress heard from
it and how many times it has fallen silent), so redundant firm replicas raise the same
alert, and the playbook's commands on it share their decision id.

>>> now = 0
>>> watch = MarketWatchLogic(2, wait_ns=100, clock=lambda: now)
>>> watch.on_event(DetectProgress(ts=5, source="market/0"))
[]
>>> watch.next_deadline_ns()
100
>>> now = 150
>>> [(a.kind, a.details["process"]) for a in watch.on_deadline()]
[('market_process_silent', 'market/0'), ('market_process_silent', 'market/1')]
>>> [(a.kind, a.severity.value) for a in watch.on_event(DetectProgress(ts=9, source="market/1"))]
[('market_process_restored', 'info')]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from riskguard.connectors.topics import Detection
from riskguard.dataflows.guard.market import market_source
from riskguard.operators.core.base import stateful_logic, values_of
from riskguard.operators.core.clock import Clock, Tick
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.config import alert_id
from riskguard.schemas import FIRM, DetectProgress, RiskAlert, Severity

SILENT = "market_process_silent"
RESTORED = "market_process_restored"
_KEY = "market_watch"


@persisted("riskguard.market_watch")
@dataclass
class MarketWatchState:
    """The processes declared silent, those whose input ended (silent by design), the
    newest event time seen (the alerts' time), and per process the newest progress heard
    and how many times it fell silent (the alerts' ids)."""

    silent: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    newest_ts: int = 0
    version: int = 2
    progress: dict[str, int] = field(default_factory=dict)
    silences: dict[str, int] = field(default_factory=dict)


class MarketWatchLogic:
    """Alerts when a market process falls silent for ``wait_ns`` of processing time,
    and when it is back. The firm's own ticks only move the alerts' event time."""

    def __init__(self, processes: int, wait_ns: int, clock: Clock,
                 state: MarketWatchState | None = None) -> None:
        self.wait_ns = wait_ns
        self.clock = clock
        self.state = state if state is not None else MarketWatchState()
        now = clock()
        # derived, not state: a (re)started firm gives each process the whole wait
        self.heard = {market_source(i): now for i in range(processes)}

    def on_event(self, event: Any) -> list[RiskAlert]:
        return self.on_batch([event])

    def on_batch(self, events: list[Any]) -> list[RiskAlert]:
        st = self.state
        now = self.clock()
        out: list[RiskAlert] = []
        for e in events:
            st.newest_ts = max(st.newest_ts, e.ts)
            if type(e) is DetectProgress and e.source in self.heard:
                self.heard[e.source] = now
                st.progress[e.source] = max(st.progress.get(e.source, -1), e.ts)
                if e.final and e.source not in st.ended:
                    st.ended.append(e.source)
                if e.source in st.silent:
                    st.silent.remove(e.source)
                    out.append(self._alert(RESTORED, e.source))
        out.extend(self._silent_now(now))
        return out

    def next_deadline_ns(self) -> int | None:
        st = self.state
        due = [at + self.wait_ns for src, at in self.heard.items()
               if src not in st.silent and src not in st.ended]
        return min(due) if due else None

    def on_deadline(self) -> list[RiskAlert]:
        return self._silent_now(self.clock())

    def snapshot(self) -> MarketWatchState:
        st = self.state
        return MarketWatchState(silent=list(st.silent), ended=list(st.ended),
                                newest_ts=st.newest_ts, progress=dict(st.progress),
                                silences=dict(st.silences))

    def _silent_now(self, now: int) -> list[RiskAlert]:
        st = self.state
        out = []
        for src, at in self.heard.items():
            if now - at >= self.wait_ns and src not in st.silent and src not in st.ended:
                st.silent.append(src)
                st.silences[src] = st.silences.get(src, 0) + 1
                out.append(self._alert(SILENT, src))
        return out

    def _alert(self, kind: str, source: str) -> RiskAlert:
        st = self.state
        silent = kind == SILENT
        reason = (f"market process {source} silent for {self.wait_ns / 1e9:g}s: the "
                  "anomalies and position values of the underlyings it owns have stopped"
                  if silent else f"market process {source} is heard from again")
        return RiskAlert(
            id=alert_id(kind, source, st.progress.get(source, -1), st.silences.get(source, 0)),
            kind=kind, scope=FIRM, ts=st.newest_ts,
            severity=Severity.CRITICAL if silent else Severity.INFO, reason=reason,
            details={"process": source, "silent": float(len(st.silent))})


def watch_market_processes(detected: Stream[Detection], own_ticks: Stream[Tick], *,
                           processes: int, wait_s: float, clock: Clock) -> Stream[RiskAlert]:
    """The firm process's ``market_process_silent`` and ``market_process_restored``
    alerts (:class:`MarketWatchLogic`), judged on ``clock`` (processing time)."""
    wait_ns = int(wait_s * 1e9)
    keyed = op.flat_map_batch("watch_in", op.merge("watch_src", detected, own_ticks),
                              lambda rs: [(_KEY, r) for r in rs
                                          if type(r) is DetectProgress or type(r) is Tick])
    return op.flat_map_batch("watch_out", stateful_logic(
        "market_watch", keyed,
        lambda state: MarketWatchLogic(processes, wait_ns, clock, state)), values_of)
