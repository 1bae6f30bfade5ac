"""Primary/backup feed selection per venue, with heartbeat-gap failover.

While the primary's heartbeat gap (event time since its last ``ok``) stays within
``max_gap_ns`` only primary records pass; past it, or on ``down``, the venue fails over
to the backup, and back once the primary has been healthy for ``restore_after_ns``
(docs/feeds.md). Heartbeats move the feed clock exactly; market records and ticks, which
may arrive up to ``skew_ns`` ahead on other topics, only to ``ts - skew_ns``, so a
heartbeat still in flight never looks missing.

Two logic classes share one decision rule (:class:`FeedState`):

- :class:`FeedSelectLogic`, keyed like the features (``venue/instrument``),
  filters records to the active feed. Heartbeats are fanned out to it, so
  market data never changes worker for this step.
- :class:`FeedMonitorLogic`, keyed by venue, sees only heartbeats and ticks
  and emits the ``heartbeat_loss``, ``feed_failover``, ``feed_restored`` and
  ``heartbeat_restored`` alerts, once per venue.

>>> cfg = FeedConfig(venues={"okx": VenueFeeds(max_gap_ns=3, restore_after_ns=5, skew_ns=0)})
>>> mon = FeedMonitorLogic(cfg, "okx")
>>> hb = lambda ts, feed="primary": VenueStatus(id=f"{feed}{ts}", venue="okx", ts=ts, feed=feed)
>>> [a.kind for e in (hb(0), hb(1, "backup"), hb(5, "backup")) for a in mon.on_event(e)]
['heartbeat_loss', 'feed_failover']
>>> [a.kind for e in (hb(6), hb(9), hb(12)) for a in mon.on_event(e)]
['heartbeat_restored', 'feed_restored']
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import msgspec
from riskguard.operators.core.base import copy_state
from riskguard.operators.core.clock import Clock, Tick, Watermark, system_clock
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.market import VenueState, VenueStatus
from riskguard.schemas.signals import RiskAlert, Scope, ScopeKind, Severity

from riskguard.errors import ConfigError
from riskguard.validation import (
    Nanoseconds,
    PositiveNanoseconds,
    check_declared,
)

NS = 1_000_000_000
_NAMESPACE = uuid.UUID("5b0f3f4e-5c55-4f0e-9f1c-0a9c3e0f7a11")


class VenueFeeds(msgspec.Struct, frozen=True, kw_only=True):
    """One venue's feeds and failover timing."""

    # the feed name (VenueStatus and market records' feed) of the venue's primary market data
    primary: str = "primary"
    # the feed name of its backup, which takes over while the primary is silent
    backup: str = "backup"
    max_gap_ns: PositiveNanoseconds = 3 * NS
    restore_after_ns: Nanoseconds = 10 * NS
    skew_ns: Nanoseconds = 2 * NS


class FeedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Venues with a backup feed. Venues not listed pass every feed through."""

    venues: dict[str, VenueFeeds] = {}

    def validate(self, path: str = "feeds") -> FeedConfig:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, path)
        for venue, vf in self.venues.items():
            if vf.primary == vf.backup:
                raise ConfigError(f"{path}.venues.{venue}.backup", "must differ from primary",
                                  vf.backup)
        return self


@persisted("riskguard.feed")
@dataclass
class FeedState:
    """The failover decision for one venue; plain data."""

    version: int = 1
    venue: str = ""
    active: str = "primary"
    now: int = -1
    last_ok: int = -1
    down: bool = False
    healthy_since: int = -1
    failovers: int = 0
    # named tick sources (guard workers): [newest ts, processing time seen]
    sources: dict[str, list[int]] = field(default_factory=dict)
    withdrawals_ok: bool = True

    def step(self, vf: VenueFeeds, ts: int, status: VenueStatus | None) -> str | None:
        """Advance to event time ``ts`` (with a primary heartbeat if given).

        Returns ``"failover"``, ``"restore"`` or None.
        """
        self.now = max(self.now, ts)
        if status is not None and status.feed == vf.primary:
            if status.state in (VenueState.OK, VenueState.DEGRADED):
                self.last_ok = max(self.last_ok, status.ts)
                self.down = False
            else:
                self.down = True
        if self.last_ok < 0:
            return None  # never heard from the primary: nothing to fail over from
        healthy = not self.down and self.now - self.last_ok <= vf.max_gap_ns
        if self.active == vf.primary:
            if not healthy:
                self.active = vf.backup
                self.healthy_since = -1
                self.failovers += 1
                return "failover"
            return None
        if not healthy:
            self.healthy_since = -1
            return None
        if self.healthy_since < 0:
            self.healthy_since = self.now
        if self.now - self.healthy_since >= vf.restore_after_ns:
            self.active = vf.primary
            return "restore"
        return None


_NOT_MARKET = (Tick, VenueStatus)  # built once: the check runs per market record


class FeedSelectLogic:
    """Pass only the active feed's records for one ``venue/instrument`` key."""

    def __init__(self, config: FeedConfig, venue: str, state: FeedState | None = None) -> None:
        self.vf = config.venues.get(venue)
        self.state = state or FeedState(venue=venue, active=self.vf.primary if self.vf else "")

    def on_event(self, event: object) -> list[object]:
        return self.on_batch([event])

    def on_batch(self, events: list[object]) -> list[object]:
        """Advance the selection over a batch, in order: a heartbeat (or a tick, or a
        record's own time) steps :class:`FeedState`, and a market record passes when it
        comes from the active feed. A market record while the primary is active and
        healthy only moves the clock: that common case is inlined, anything else goes
        through :meth:`FeedState.step`.

        >>> cfg = FeedConfig(venues={"okx": VenueFeeds(primary="p", backup="b")})
        >>> from riskguard.schemas import IndexPrice
        >>> px = lambda ts, feed: IndexPrice(id=f"i{ts}", venue="okx", instrument="BTC-USD",
        ...                                  ts=ts, price=1.0, feed=feed)
        >>> [r.id for r in FeedSelectLogic(cfg, "okx").on_batch([px(1, "p"), px(2, "b")])]
        ['i1']
        """
        vf = self.vf
        if vf is None:
            return [e for e in events if not isinstance(e, _NOT_MARKET)]
        st = self.state
        step, skew, primary, gap = st.step, vf.skew_ns, vf.primary, vf.max_gap_ns
        out = []
        for event in events:
            if isinstance(event, VenueStatus):
                step(vf, event.ts, event)
                continue
            ts = event.ts - skew  # type: ignore[attr-defined]
            now = ts if ts > st.now else st.now
            if st.active == primary and st.last_ok >= 0 and not st.down and (
                    now - st.last_ok <= gap):
                st.now = now  # healthy primary: step() would only move the clock
            else:
                step(vf, ts, None)
            if isinstance(event, Tick):
                continue
            if getattr(event, "feed", primary) == st.active:
                out.append(event)
        return out

    def snapshot(self) -> FeedState:
        return copy_state(self.state)


class FeedMonitorLogic:
    """Emit heartbeat-loss and failover alerts for one venue.

    Ticks from named sources move its clock to their :class:`Watermark`
    (``clock`` is processing time, for the sources' idle rule).
    """

    def __init__(self, config: FeedConfig, venue: str, state: FeedState | None = None, *,
                 clock: Clock = system_clock) -> None:
        self.vf = config.venues.get(venue, VenueFeeds())
        # with a primary and a backup, withdrawals are read from the active feed only: two
        # feeds that disagree would otherwise alert on every heartbeat
        self._one_feed = venue not in config.venues
        self.state = state or FeedState(venue=venue, active=self.vf.primary)
        self.clock = clock
        self._watermark = Watermark.resume(self.state.sources)

    def on_event(self, event: object) -> list[RiskAlert]:
        status = event if isinstance(event, VenueStatus) else None
        extra = (self._withdrawals(status) if status is not None
                 and (self._one_feed or status.feed == self.state.active) else [])
        if status is not None:
            ts = status.ts
        elif isinstance(event, Tick):
            ts = self._watermark.tick_time(event, self.clock()) - self.vf.skew_ns
        else:
            ts = event.ts - self.vf.skew_ns  # type: ignore[attr-defined]
        before_gap = self.state.now - self.state.last_ok
        change = self.state.step(self.vf, ts, status)
        if change is None:
            return extra
        st = self.state
        scope = Scope(kind=ScopeKind.VENUE, value=st.venue)
        gap_s = max(st.now - st.last_ok, before_gap) / NS if st.last_ok >= 0 else 0.0
        evidence = [status.id] if status is not None else []

        def alert(kind: str, severity: Severity, reason: str) -> RiskAlert:
            rid = uuid.uuid5(_NAMESPACE, f"{st.venue}|{kind}|{st.now}|{st.failovers}")
            return RiskAlert(
                id=str(rid), kind=kind, scope=scope, ts=st.now, severity=severity, reason=reason,
                recv_ts=getattr(event, "recv_ts", None),
                details={"gap_s": round(gap_s, 3), "from": self._other(st.active),
                         "to": st.active, "backup_feed": self.vf.backup},
                evidence_ids=evidence,
            )

        if change == "failover":
            why = "reported down" if st.down else f"no heartbeat for {gap_s:.1f}s"
            return [*extra,
                alert("heartbeat_loss", Severity.CRITICAL,
                      f"venue {st.venue} primary feed {why} "
                      f"(limit {self.vf.max_gap_ns / NS:.1f}s)"),
                alert("feed_failover", Severity.WARN,
                      f"venue {st.venue}: switched from {self.vf.primary} "
                      f"to {self.vf.backup} feed"),
            ]
        return [
            *extra,
            alert("heartbeat_restored", Severity.INFO,
                  f"venue {st.venue} primary feed healthy for "
                  f"{self.vf.restore_after_ns / NS:.1f}s"),
            alert("feed_restored", Severity.INFO,
                  f"venue {st.venue}: switched back to {self.vf.primary} feed"),
        ]

    def _withdrawals(self, status: VenueStatus) -> list[RiskAlert]:
        """A venue that stops (or resumes) withdrawals is a counterparty-credit signal."""
        st = self.state
        if status.withdrawals_enabled == st.withdrawals_ok:
            return []
        st.withdrawals_ok = status.withdrawals_enabled
        kind = "withdrawals_resumed" if status.withdrawals_enabled else "withdrawals_halted"
        rid = uuid.uuid5(_NAMESPACE, f"{st.venue}|{kind}|{status.ts}")
        return [RiskAlert(
            id=str(rid), kind=kind, scope=Scope(kind=ScopeKind.VENUE, value=st.venue),
            ts=status.ts, recv_ts=status.recv_ts,
            severity=Severity.INFO if status.withdrawals_enabled else Severity.CRITICAL,
            reason=(f"venue {st.venue} reports withdrawals "
                    f"{'enabled again' if status.withdrawals_enabled else 'halted'}"),
            evidence_ids=[status.id],
        )]

    def _other(self, active: str) -> str:
        return self.vf.primary if active == self.vf.backup else self.vf.backup

    def snapshot(self) -> FeedState:
        return copy_state(self.state)
