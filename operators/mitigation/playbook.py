"""Engine-neutral mitigation playbook: signals in, graduated mitigation commands out.

A playbook is a list of :class:`Rule`: each matches signals and climbs a ladder of
:class:`Rung` actions while the incident persists or worsens (docs/playbooks.md).
:class:`PlaybookLogic` holds the whole firm's playbook state under a single key:
incidents, mitigations in force (never re-issued while in force), repeat history, venue
health and the per-venue command-rate window. Event time comes from the records and
from :class:`Tick`; ``issued_at`` from the injected processing clock.

>>> from riskguard.schemas import AnomalySignal, Scope, ScopeKind, Severity
>>> cfg = PlaybookConfig(issuer="guard", rules=(Rule(
...     name="flash", signal="anomaly", scope="instrument:*", target="venue",
...     ladder=(Rung(action=Action.ALERT), Rung(action=Action.REDUCE_ONLY, after_s=10),
...             Rung(action=Action.HALT_TRADING, after_s=30))),))
>>> logic = PlaybookLogic(cfg, clock=lambda: 5)
>>> sig = AnomalySignal(id="a1", key="okx/BTC-USDT", ts=S,
...     scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"),
...     score=9.0, threshold=3.0, severity=Severity.WARN, model="hst", model_version="1")
>>> [(c.action.value, c.scope.label()) for c in logic.on_event(sig)]
[('alert', 'venue:okx')]
>>> logic.on_event(Tick(ts=5 * S))
[]
>>> [(c.action.value, c.protective_orders_allowed) for c in logic.on_event(Tick(ts=11 * S))]
[('reduce_only', True)]
"""

from __future__ import annotations

import fnmatch
import heapq
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec
from riskguard.operators.core.base import copy_fields
from riskguard.operators.core.clock import TICK_IDLE_NS, Tick, Watermark, step_event_time
from riskguard.operators.mitigation.acks import AckTracker
from riskguard.operators.mitigation.incidents import (
    STATE_VERSION,
    Incident,
    Mitigation,
    PlaybookState,
    copy_lists,
    describe,
    evidence_digest,
    mark_reason,
    push_evidence,
    pushed,
    score_ratio,
    signal_kind,
    source_key,
)
from riskguard.operators.mitigation.outbox import CommandOutbox, Output
from riskguard.operators.mitigation.rate_cap import RateCap
from riskguard.operators.mitigation.rules import (
    CLOSERS,
    OPENERS,
    SEVERITY_RANK,
    TARGETS,
    ParamValue,
    PlaybookConfig,
    Rule,
    Rung,
    S,
    map_scope,
    reached_rung,
    rung_reason,
    venue_of,
)
from riskguard.schemas import (
    FIRM,
    Action,
    AnomalySignal,
    DeadLetter,
    ExecutionAck,
    LimitBreach,
    LimitLevel,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
    encode,
)
from riskguard.schemas.action_params import resume_lifts

# the playbook's names, with the rules' and incidents' its callers use beside them
__all__ = [
    "CLOSERS", "OPENERS", "STATE_VERSION", "TARGETS", "Incident", "Mitigation",
    "ParamValue", "PlaybookConfig", "PlaybookLogic", "PlaybookState", "Rule", "Rung",
    "S", "evidence_digest", "map_scope", "playbook_builder",
]


_CLOSES_A_VENUE = frozenset({Action.HALT_TRADING, Action.CANCEL_ALL, Action.REROUTE_ORDER_FLOW})
"""Mitigations that, in force on a venue, take it out of every reroute's targets."""

PlaybookInput: TypeAlias = (AnomalySignal | RiskAlert | LimitBreach | MitigationCommand
                             | ExecutionAck | Tick)


class PlaybookLogic:
    """Plans mitigation commands for the whole firm (run it under one key)."""

    def __init__(self, config: PlaybookConfig, clock: Callable[[], int],
                 state: PlaybookState | None = None, *,
                 on_reorder: Callable[[str, int], None] | None = None,
                 on_ack_alert: Callable[[Any], Any] | None = None,
                 wall_clock: Callable[[], int] | None = None,
                 idle_ns: int = TICK_IDLE_NS) -> None:
        self.config = config
        self.clock = clock
        # told ("held", 1) when a signal waits for the watermark, ("forced", n) when n
        # apply after max_hold_s without it (a metrics counter in the guard)
        self.on_reorder = on_reorder
        self.rules = {r.name: r for r in config.rules}
        self.state = state if state is not None else PlaybookState()
        state = self.state
        self.acks = AckTracker(config.acks, state.acks)
        self.cap = RateCap(max_commands=config.max_commands,
                           window_ns=int(config.rate_window_s * S), state=state)
        # builds, rate-caps and collects the commands of each step
        self.outbox = CommandOutbox(config, clock, self.cap, self.acks)
        self.on_ack_alert = on_ack_alert  # sees the alerts acks raise (metrics)
        # live runs only: a replay's output must not depend on wall time
        self.wall_clock = wall_clock
        self._slack = int(config.reorder_slack_s * S)
        self._max_hold = int(config.max_hold_s * S)
        self._hold_due = min((h[3] for h in state.held), default=None)
        # a tick source silent this long (processing time) stops holding the clock back
        self._watermark = Watermark.resume(state.sources, idle_ns)
        # derived, not state. Awake: visited by every event; sleeping ``(due, key)``: woken
        # when its next rung or quiet-period end falls due; the rest wait for a signal
        self._awake: set[str] = set(state.incidents)
        self._reroutes = {k for k, m in state.active.items()
                          if m.action is Action.REROUTE_ORDER_FLOW}
        # whether what a reroute's targets depend on (venue health, limit breaches, the
        # mitigations in force and their owners) changed since they were last checked: an
        # event that changed none costs nothing however many mitigations are in force
        self._retarget_due = True
        # (when a trip leaves its rule's repeat window, its incident key), soonest first: a
        # window roll forgets what expired without reading the whole history
        self._trips = [(self._trip_expiry(k, t), k) for k, ts in state.history.items()
                       for t in ts]
        heapq.heapify(self._trips)
        self._sleeping: list[tuple[int, str]] = []
        self._due_of: dict[str, int] = {}  # each sleeping incident's current due time
        # incidents whose next rung the rate cap held back -> when their window ends
        self._capped: dict[str, int] = {}
        # a resumed state's incidents are all awake: the first time step sorts them first
        self._unsettled = bool(state.incidents)

    def on_event(self, event: Any) -> list[Output]:
        """Handle one signal, resume, or tick; return the commands it causes.

        While it is handled, :data:`~riskguard.operators.core.clock.step_event_time` is
        the playbook's own event time (the newest it has met, this event's included): an
        event-time clock (a backtest's) reads it, so a command is stamped with the time
        of the record that decided it, not with the latest time of the batch in hand. A
        wall clock does not read it."""
        token = step_event_time.set(self._event_time_with(event))
        try:
            return self._handle(event)
        finally:
            step_event_time.reset(token)

    def _event_time_with(self, event: Any) -> int:
        """The newest event time met once ``event`` is: a signal's or tick's ``ts``
        moves it; a resume or an ack carries processing time, which does not."""
        now = self.state.now
        if isinstance(event, Tick | AnomalySignal | RiskAlert | LimitBreach):
            return event.ts if event.ts > now else now
        return now

    def _handle(self, event: Any) -> list[Output]:
        outbox = self.outbox
        out = outbox.out = []
        if self._hold_due is not None:
            self._release_overdue()
        outbox.recv_ts = getattr(event, "recv_ts", None)
        if isinstance(event, Tick):
            if event.source:
                wm = self._watermark.tick_time(event, self.clock())
                if wm <= self.state.watermark:
                    # time did not move: nothing can be due (a tick costs O(1))
                    return out
                self._release(wm)
                # to the sources' watermark, not its own ts: a process ahead of the others
                # must not carry time past signals still to come
                self._catch_up(wm)
                self.state.watermark = max(self.state.watermark, wm)
                self._advance(self.state.watermark)
            else:
                self._advance(event.ts)
        elif isinstance(event, MitigationCommand):
            if event.action is not Action.RESUME:
                return [self._dead(event, "unexpected_command", "$.action", "resume",
                                   event.action.value)]
            # a resume carries processing time, not event time: no clock step
            self._advance(self.state.now)
            self._manual_resume(event)
        elif isinstance(event, ExecutionAck):
            # an ack carries the executor's time, not event time: no clock step
            for alert in self.acks.on_ack(event, self._time()):
                self._ack_signal(alert)
        elif isinstance(event, AnomalySignal | RiskAlert | LimitBreach):
            st = self.state
            if self._watermark.several() and event.ts > st.watermark + self._slack:
                st.arrivals += 1
                due = self.clock() + self._max_hold
                heapq.heappush(st.held, (event.ts, st.arrivals, event, due))
                if self._hold_due is None or due < self._hold_due:
                    self._hold_due = due
                if self.on_reorder is not None:
                    self.on_reorder("held", 1)
                return out
            self._apply_signal(event)
        else:
            return [self._dead(event, "unexpected_type", "$",
                               "a signal, resume, execution ack or Tick", type(event).__name__)]
        self._check_acks()
        self._evaluate()
        return out

    def next_deadline_ns(self) -> int | None:
        """Live runs: when the next awaited ack falls overdue (None: nothing waits, or a
        replay, whose clock moves only with its records)."""
        return None if self.wall_clock is None else self.acks.next_due()

    def on_deadline(self) -> list[Output]:
        """An awaited ack fell overdue while no event came: raise it and act on it."""
        out = self.outbox.out = []
        self.outbox.recv_ts = None
        self._check_acks()
        self._evaluate()
        return out

    def on_eof(self) -> list[Output]:
        """End of input: the held signals apply in event-time order, the clock moves to
        the newest time any source reached, and commands the rate cap suppressed in the
        unfinished window are reported."""
        out = self.outbox.out = []
        self.outbox.recv_ts = None
        st = self.state
        if st.sources:
            end = max([ts for ts, _seen in st.sources.values()] + [h[0] for h in st.held])
            self._release(end)
            if end > st.watermark:
                self._catch_up(end)
                st.watermark = end
                self._advance(end)
                self._evaluate()
        self._hold_due = None
        self._flush_window(force=True)
        return out

    def snapshot(self) -> PlaybookState:
        """An independent copy: containers copied; immutable scopes, signals and enums
        shared (far cheaper than a pickle round trip)."""
        st = self.state
        return copy_fields(
            st,
            incidents={k: copy_fields(i, evidence=list(i.evidence),
                                      signal_ids=list(i.signal_ids or ()))
                       for k, i in st.incidents.items()},
            active={k: copy_fields(m, params=dict(m.params), owners=list(m.owners))
                    for k, m in st.active.items()},
            history=copy_lists(st.history), sources=copy_lists(st.sources),
            unhealthy=copy_lists(st.unhealthy), breached=copy_lists(st.breached),
            suppressed=list(st.suppressed), held=list(st.held), acks=st.acks.copy(),
            window_counts=dict(st.window_counts), suppressed_by=dict(st.suppressed_by))

    def _time(self) -> int:
        """The clock of time-driven rungs and quiet periods: with named tick sources their
        watermark (so escalation never outruns a slow process; rungs a signal reaches at
        once, ``after_s = 0`` or by severity, do not wait for it), else every event moves
        it."""
        st = self.state
        return st.now if not st.sources else st.watermark

    def _check_acks(self) -> None:
        # overdue once the processing clock (or event time, if ahead) passes the timeout
        if not self.state.acks.awaited:
            return
        at = self._time()
        for alert in self.acks.overdue(max(self.clock(), at), at):
            self._ack_signal(alert)

    def _ack_signal(self, alert: RiskAlert) -> None:
        if self.on_ack_alert is not None:
            self.on_ack_alert(alert)
        self._signal(alert)

    def _apply_signal(self, sig: Any) -> None:
        self._advance(sig.ts)
        if not (isinstance(sig, AnomalySignal) and sig.warming_up):
            self._signal(sig)

    def _release(self, wm: int) -> None:
        """Apply the waiting signals the watermark ``wm`` has come close enough to, in
        event-time order, with the clock stepping up to each (as one worker meets them)."""
        self._apply_held(wm + self._slack, clock_to=wm)

    def _release_overdue(self) -> None:
        """Apply, in event-time order, every held signal up to the newest one held for
        ``max_hold_s`` of processing time; the watermark (the clock of time-driven rungs)
        stays where the sources have it."""
        now = self.clock()
        if self._hold_due is None or now < self._hold_due:
            return
        forced = self._apply_held(max(h[0] for h in self.state.held if h[3] <= now))
        self.state.forced += forced
        if self.on_reorder is not None:
            self.on_reorder("forced", forced)

    def _apply_held(self, upto: int, clock_to: int | None = None) -> int:
        """Apply the held signals up to ``upto`` in event-time order (with ``clock_to``,
        the clock steps up to each, never past it); how many."""
        st = self.state
        held = st.held
        n = 0
        while held and held[0][0] <= upto:
            sig = heapq.heappop(held)[2]
            n += 1
            self.outbox.recv_ts = getattr(sig, "recv_ts", None)
            if clock_to is not None:
                self._catch_up(min(clock_to, sig.ts))
                st.watermark = max(st.watermark, min(clock_to, sig.ts))
                self._evaluate()
            self._apply_signal(sig)
            self._evaluate()
        self.outbox.recv_ts = None
        if n:  # nothing released: the oldest held is the same
            self._hold_due = min((h[3] for h in held), default=None)
        return n

    def _advance(self, ts: int) -> None:
        st = self.state
        if not st.sources:
            self._catch_up(ts)
        st.now = max(st.now, ts)
        self._flush_window()

    def _catch_up(self, to: int) -> None:
        """Step the clock (and :data:`~riskguard.operators.core.clock.step_event_time`)
        through each time before ``to`` at which something falls due, as a ticking clock
        would: a replay's hourly bars lift a mitigation when its quiet period ends."""
        if self._unsettled:
            self._unsettled = False
            self._evaluate()
        st = self.state
        if not (self._sleeping and self._sleeping[0][0] < to) and not st.suppressed:
            return
        outbox = self.outbox
        trigger, outbox.recv_ts = outbox.recv_ts, None
        outbox.leaves_at = self.clock()
        while (due := self._next_stop(to)) is not None:
            if st.sources:
                st.watermark = due
            st.now = max(st.now, due)  # as a tick at ``due`` moves it
            token = step_event_time.set(due)
            try:
                self._flush_window()
                self._evaluate()
            finally:
                step_event_time.reset(token)
        outbox.recv_ts, outbox.leaves_at = trigger, None

    def _next_stop(self, to: int) -> int | None:
        """The next time before ``to`` at which something falls due, or None; stale
        entries are dropped so the times met depend on the state alone."""
        sleeping, now = self._sleeping, self._time()
        while sleeping and sleeping[0][0] < to:
            due, key = sleeping[0]
            if self._due_of.get(key) != due:
                heapq.heappop(sleeping)
            elif due <= now:  # overdue already: the next evaluation wakes it
                self._awake.add(heapq.heappop(sleeping)[1])
            else:
                break
        stop = sleeping[0][0] if sleeping and sleeping[0][0] < to else None
        if self.state.suppressed:  # a ticking clock retries them when the window rolls
            roll = self.cap.next_roll()
            if now < roll < to and (stop is None or roll < stop):
                stop = roll
        return stop

    def _signal(self, sig: Any) -> None:
        st = self.state
        kind = signal_kind(sig)
        digest = evidence_digest(sig)
        detail = describe(sig)
        closing = (
            kind in CLOSERS
            or (isinstance(sig, AnomalySignal) and sig.phase == "close")
            or (isinstance(sig, LimitBreach) and sig.level in (LimitLevel.OK, LimitLevel.WARN))
        )
        self._track_health(sig, kind, closing)
        source = source_key(sig, kind)
        if isinstance(sig, AnomalySignal) and sig.phase == "deescalate":
            self._ease(sig, kind, source, digest, detail)
            return
        if closing:
            for name in self.rules:
                inc = st.incidents.get(f"{name}|{source}")
                if inc is None:
                    continue
                if inc.closed_at is None:
                    inc.closed_at = sig.ts  # the signal's own event time
                self._attach(inc, sig, digest, detail)
            return
        for rule in self.config.rules:
            if not self._matches(rule, sig, kind):
                continue
            target = map_scope(sig.scope, rule.target, self.config.venues)
            if target is None:
                continue
            key = f"{rule.name}|{source}"
            found = st.incidents.get(key)
            if found is None:
                hist = [t for t in st.history.get(key, [])
                        if st.now - t <= rule.repeat_window_s * S]
                hist.append(st.now)
                st.history[key] = hist
                heapq.heappush(self._trips, (self._trip_expiry(key, st.now), key))
                inc = Incident(key=key, rule=rule.name, kind=kind, signal_scope=sig.scope,
                               target=target, opened_at=sig.ts, severity=sig.severity,
                               start_rung=min(len(hist) - 1, len(rule.ladder) - 1))
                st.incidents[key] = inc
            else:
                inc = found
                if SEVERITY_RANK[sig.severity] > SEVERITY_RANK[inc.severity]:
                    inc.severity = sig.severity
            inc.closed_at = None if kind in OPENERS else st.now
            self._attach(inc, sig, digest, detail)

    def _ease(self, sig: AnomalySignal, kind: str, source: str, digest: str,
              detail: str) -> None:
        """A severity fall inside a going episode: each open incident of it takes the
        lower severity (no rung it has not reached climbs on the old one), and one whose
        rule asks more than that now starts its quiet period, as on a close; a rise
        before it ends reopens it, with its mitigations still in force."""
        st = self.state
        for rule in self.config.rules:
            inc = st.incidents.get(f"{rule.name}|{source}")
            if inc is None or rule.signal != kind:
                continue
            inc.severity = sig.severity
            below = SEVERITY_RANK[sig.severity] < SEVERITY_RANK[rule.min_severity]
            if below and inc.closed_at is None:
                inc.closed_at = sig.ts
            self._attach(inc, sig, digest, detail)

    def _attach(self, inc: Incident, sig: Any, digest: str, detail: str) -> None:
        """``sig`` joins ``inc``: its evidence, its id, the latest detail; wake it."""
        push_evidence(inc.evidence, digest)
        inc.signal_ids = pushed(inc.signal_ids, sig.id)
        inc.detail = detail
        self._awake.add(inc.key)

    def _matches(self, rule: Rule, sig: Any, kind: str) -> bool:
        if rule.signal != kind or SEVERITY_RANK[sig.severity] < SEVERITY_RANK[rule.min_severity]:
            return False
        if not fnmatch.fnmatchcase(sig.scope.label(), rule.scope):
            return False
        if rule.min_score_ratio is not None and (
                not isinstance(sig, AnomalySignal) or score_ratio(sig) < rule.min_score_ratio):
            return False
        return rule.min_utilization is None or (
            isinstance(sig, LimitBreach) and sig.utilization >= rule.min_utilization)

    def _track_health(self, sig: Any, kind: str, closing: bool) -> None:
        st = self.state
        if kind in ("heartbeat_loss", "heartbeat_restored"):
            venue = venue_of(sig.scope, self.config.venues)
            if venue is not None and mark_reason(st.unhealthy, venue, "heartbeat_loss",
                                                 not closing):
                self._retarget_due = True
        elif (isinstance(sig, LimitBreach)
              and sig.scope.kind in (ScopeKind.VENUE, ScopeKind.COUNTERPARTY)
              and mark_reason(st.breached, sig.scope.value, f"{sig.limit_path}#{sig.kind}",
                              not closing)):
            self._retarget_due = True

    def _manual_resume(self, cmd: MitigationCommand) -> None:
        st = self.state
        wanted, named = cmd.params.get("actions"), cmd.params.get("resumes")
        wanted = wanted if isinstance(wanted, list) else []
        named = named if isinstance(named, list) else []
        approvals = cmd.params.get("approvals", 0)
        label = cmd.scope.label()
        for key in sorted(st.active):
            m = st.active[key]
            if m.scope.label() != label or not resume_lifts(wanted, named, m.action.value,
                                                             m.command_id):
                continue
            if (m.action is Action.HALT_TRADING and m.scope.kind is ScopeKind.FIRM
                    and not (isinstance(approvals, float | int) and approvals >= 2)):
                self.outbox.emit(self.outbox.command(
                    "firm_halt_refused", FIRM, Action.ALERT, {"resume_id": cmd.command_id},
                    f"resume {cmd.command_id} of firm-wide halt_trading refused: it needs two "
                    f"approvals (two-person rule); got {approvals}", []),
                    capped=False)
                continue
            del st.active[key]
            self._reroutes.discard(key)
            self._retarget_due = True

    def _evaluate(self) -> None:
        """Climb and end the awake incidents, in key order (a sleeping one cannot move, so
        an event's cost does not grow with the incidents open)."""
        st = self.state
        awake, sleeping = self._awake, self._sleeping
        now = self._time()
        due_of = self._due_of
        while sleeping and sleeping[0][0] <= now:
            at, key = heapq.heappop(sleeping)
            if due_of.get(key) == at:  # else left behind by a signal that woke it
                awake.add(key)
        for key in sorted(awake):
            due_of.pop(key, None)  # set again below if it sleeps
            inc = st.incidents.get(key)
            rule = None if inc is None else self.rules.get(inc.rule)
            if inc is None or rule is None:
                awake.discard(key)
                continue
            # open incidents climb on any event; momentary ones only when a signal arrives
            if inc.closed_at is None or (inc.kind not in OPENERS and inc.closed_at == st.now):
                self._climb(inc, rule)
            if inc.closed_at is not None and now - inc.closed_at >= rule.quiet_s * S:
                self._end(inc, rule)
                awake.discard(key)
                continue
            due = self._next_due(inc, rule)
            if due is not None:
                awake.discard(key)
                if due > 0:
                    heapq.heappush(sleeping, (due, key))
                    due_of[key] = due
        self._retarget()

    def _next_due(self, inc: Incident, rule: Rule) -> int | None:
        """When ``inc`` can next move without a signal on it: ``None`` if it may move on
        any event (a rung it reached is still to be issued, e.g. after the rate cap),
        ``0`` if only a signal can move it, else the time its next time-driven rung or
        its quiet-period end falls due."""
        if inc.closed_at is not None:
            if (inc.kind not in OPENERS and inc.closed_at == self.state.now
                    and self._reached(inc, rule) > inc.rung):
                return None  # a momentary incident retries its climb at the same time
            return inc.closed_at + math.ceil(rule.quiet_s * S)
        if self._reached(inc, rule) > inc.rung:
            # held back by the rate cap: nothing changes for it before its window rolls
            until = self._capped.get(inc.key, 0)
            return until if until > self._time() else None
        later = [rung.after_s for rung in rule.ladder[inc.rung + 1:] if rung.after_s > 0]
        # rounded up: at the due time the rung is reached (``_reached`` compares floats)
        return inc.opened_at + math.ceil(min(later) * S) if later else 0

    def _retarget(self) -> None:
        """Move live reroutes off targets that have since gone bad: re-issued with the
        remaining ones, or, with none left, its incident climbs. Targets only narrow, so a
        flapping venue does not churn commands."""
        if not self._retarget_due:
            return
        self._retarget_due = False
        st = self.state
        for key in sorted(self._reroutes):
            m = st.active[key]
            owner = next((st.incidents[o] for o in m.owners if o in st.incidents), None)
            rule = self.rules.get(owner.rule) if owner else None
            if owner is None or rule is None:
                continue
            good = set(self._healthy_alternatives(rule, m.scope, exclude_self=key))
            old = list(m.params.get("targets", []))
            keep = [t for t in old if t in good]
            if keep == old:
                continue
            if keep:
                params = {**m.params, "targets": keep}
                reason = (f"rule '{rule.name}': reroute_order_flow on {m.scope.label()} "
                          f"retargeted to {', '.join(keep)}; {', '.join(sorted(set(old) - good))}"
                          f" no longer healthy or below limits; signal: {owner.detail}")
                cmd = self.outbox.command(f"retarget|{key}|{','.join(keep)}|{st.now}", m.scope,
                                    Action.REROUTE_ORDER_FLOW, params, reason, owner.evidence,
                                    basis=f"retarget|{m.decision_id or m.command_id}",
                                    decided_by=owner.signal_ids)
                if self.outbox.emit(cmd, capped=True):
                    m.params, m.command_id = params, cmd.command_id
                    m.decision_id = cmd.decision_id or ""
                else:  # held back by the rate cap: retried on the next event
                    self._retarget_due = True
                continue
            # no target left: climb the owner to its next rung
            nxt = owner.rung + 1
            if nxt < len(rule.ladder):
                st.active[key].params = {**m.params, "targets": []}
                self._climb_to(owner, rule, nxt)

    def _climb_to(self, inc: Incident, rule: Rule, target: int) -> None:
        """A rung the rate cap suppresses stops the climb (retried later); a reroute with
        no healthy alternative goes on to the next rung."""
        while inc.rung < target:
            i = inc.rung + 1
            status = self._apply(inc, rule, i, rule.ladder[i])
            if status == "suppressed":
                self._capped[inc.key] = self.cap.window_end()
                return
            inc.rung = i
            if status == "no_route":
                target = max(target, i + 1)

    def _reached(self, inc: Incident, rule: Rule) -> int:
        return reached_rung(rule, inc, self._time() - inc.opened_at)

    def _climb(self, inc: Incident, rule: Rule) -> None:
        self._climb_to(inc, rule, self._reached(inc, rule))

    def _apply(self, inc: Incident, rule: Rule, index: int, rung: Rung) -> str:
        """Issue one rung; ``issued``, ``held`` (already in force), ``no_route`` or
        ``suppressed``."""
        st = self.state
        action = rung.action
        params: dict[str, Any] = dict(rung.params)
        scope = inc.target
        if action is Action.REROUTE_ORDER_FLOW:
            targets = self._healthy_alternatives(rule, scope)
            if not targets:
                if index + 1 < len(rule.ladder):
                    return "no_route"
                action, params = Action.ALERT, {"failed_action": "reroute_order_flow"}
            else:
                params["targets"] = targets
                failing = venue_of(scope, self.config.venues)
                if failing:
                    params["from"] = failing
        key = f"{action.value}|{scope.label()}"
        if action is not Action.ALERT and key in st.active:
            m = st.active[key]
            if inc.key not in m.owners:
                m.owners = sorted({*m.owners, inc.key})
                self._retarget_due = self._retarget_due or key in self._reroutes
            m.manual = m.manual or rule.recovery == "manual"
            return "held"
        why = rung_reason(rule, inc, index, self._time() - inc.opened_at)
        reason = (f"rule '{rule.name}' rung {index + 1}/{len(rule.ladder)} {action.value} on "
                  f"{scope.label()} ({why}; open "
                  f"{(st.now - inc.opened_at) / S:.0f}s, severity {inc.severity.value}); "
                  f"signal: {inc.detail}")
        if action is Action.REROUTE_ORDER_FLOW:
            reason += f"; reroute to {', '.join(params['targets'])}"
        elif params.get("failed_action"):
            reason += "; reroute_order_flow found no healthy alternative venue"
        seed = f"{inc.key}|{scope.label()}|{action.value}|{inc.opened_at}|{index}"
        cmd = self.outbox.command(seed, scope, action, params, reason, inc.evidence,
                            basis=f"{rule.name}|{index}|{inc.key}", decided_by=inc.signal_ids)
        if not self.outbox.emit(cmd, capped=True):
            return "suppressed"
        if action is not Action.ALERT:
            st.active[key] = Mitigation(action=action, scope=scope, params=params,
                                        owners=[inc.key], rule=rule.name,
                                        command_id=cmd.command_id, since=st.now,
                                        manual=rule.recovery == "manual",
                                        decision_id=cmd.decision_id or "")
            if action is Action.REROUTE_ORDER_FLOW:
                self._reroutes.add(key)
            if action in _CLOSES_A_VENUE:  # a venue no reroute may go to any more
                self._retarget_due = True
        return "issued"

    def _healthy_alternatives(self, rule: Rule, scope: Scope, exclude_self: str = "") -> list[str]:
        st = self.state
        failing = venue_of(scope, self.config.venues)
        down = set(st.unhealthy) | set(st.breached)
        for key, m in st.active.items():
            if key != exclude_self and m.scope.kind is ScopeKind.VENUE and (
                    m.action in _CLOSES_A_VENUE):
                down.add(m.scope.value)
        candidates = rule.alternatives or self.config.venues
        return [v for v in candidates if v != failing and v not in down]

    def _end(self, inc: Incident, rule: Rule) -> None:
        """The quiet period passed: release the incident's mitigations."""
        st = self.state
        del st.incidents[inc.key]
        self._retarget_due = True
        freed: dict[str, list[Mitigation]] = {}
        for key in sorted(st.active):
            m = st.active[key]
            if inc.key not in m.owners:
                continue
            m.owners = [o for o in m.owners if o != inc.key]
            if m.owners:
                continue
            if m.action is Action.HALT_TRADING and m.scope.kind is ScopeKind.FIRM:
                if not m.held_notified:
                    m.held_notified = True
                    self.outbox.emit(self.outbox.command(
                        f"firm_halt_held|{m.command_id}", FIRM, Action.ALERT,
                        {"held_command": m.command_id},
                        f"rule '{rule.name}': incident on {inc.signal_scope.label()} is quiet "
                        "but the firm-wide halt_trading stays in force: it is never resumed "
                        "automatically and needs a manual resume with two approvals",
                        inc.evidence), capped=False)
                continue
            if m.manual or rule.recovery == "manual":
                continue
            freed.setdefault(m.scope.label(), []).append(m)
            del st.active[key]
            self._reroutes.discard(key)
        for label in sorted(freed):
            ms = freed[label]
            actions = sorted(m.action.value for m in ms)
            reason = (f"rule '{rule.name}': {inc.kind} on {inc.signal_scope.label()} quiet for "
                      f"{rule.quiet_s:g}s; resuming {', '.join(actions)} on {label}")
            seed = f"resume|{label}|{','.join(m.command_id for m in ms)}|{st.now}"
            lifted = sorted(m.decision_id or m.command_id for m in ms)
            self.outbox.emit(self.outbox.command(seed, ms[0].scope, Action.RESUME,
                                     {"actions": actions,
                                      "resumes": sorted(m.command_id for m in ms)},
                                     reason, inc.evidence,
                                     basis=f"resume|{rule.name}|{','.join(lifted)}",
                                     decided_by=inc.signal_ids),
                       capped=False)

    def _flush_window(self, *, force: bool = False) -> None:
        rolled, held = self.cap.roll(force=force)
        if held is not None:
            self.outbox.report_held_back(held)
        if rolled:
            self._capped.clear()
            self._prune_history()

    def _horizon(self, key: str) -> float:
        """How long the incident ``key``'s trips count as repeats (ns)."""
        rule = self.rules.get(key.split("|", 1)[0])
        return (rule.repeat_window_s if rule else 0.0) * S

    def _trip_expiry(self, key: str, t: int) -> int:
        """The last time at which a trip at ``t`` still counts: ``now - t <= horizon``."""
        return t + math.floor(self._horizon(key))

    def _prune_history(self) -> None:
        """Forget trips older than their rule's repeat window (bounded state); only the
        incidents with a trip that expired are read."""
        st = self.state
        trips = self._trips
        while trips and trips[0][0] < st.now:
            key = heapq.heappop(trips)[1]
            times = st.history.get(key)
            if times is None:
                continue
            horizon = self._horizon(key)
            kept = [t for t in times if st.now - t <= horizon]
            if kept:
                st.history[key] = kept
            else:
                del st.history[key]

    def _dead(self, event: Any, reason: str, path: str, expected: str, found: str) -> DeadLetter:
        raw = encode(event) if isinstance(event, msgspec.Struct) else repr(event).encode()
        return DeadLetter.of(topic="playbook", ts=self.clock(), reason=reason, path=path,
                             expected=expected, found=found[:256], raw=raw)


def playbook_builder(config: PlaybookConfig, clock: Callable[[], int],
                     on_reorder: Callable[[str, int], None] | None = None,
                     on_ack_alert: Callable[[Any], Any] | None = None,
                     wall_clock: Callable[[], int] | None = None,
                     idle_ns: int = TICK_IDLE_NS,
                     ) -> Callable[[PlaybookState | None], PlaybookLogic]:
    """``builder(state | None)`` for :func:`~riskguard.operators.stateful_logic`."""

    def build(state: PlaybookState | None) -> PlaybookLogic:
        return PlaybookLogic(config, clock, state, on_reorder=on_reorder,
                             on_ack_alert=on_ack_alert, wall_clock=wall_clock,
                             idle_ns=idle_ns)

    return build
