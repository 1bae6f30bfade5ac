"""Engine-neutral limit enforcement: levels, hysteresis, latches, dynamic limits.

:class:`LimitsLogic`, keyed by counterparty (``"*"`` for the firm), turns
:class:`~riskguard.schemas.Exposure`, :class:`~riskguard.schemas.valuation.Progress` and
verified :class:`~riskguard.schemas.LimitUpdate` records into
:class:`~riskguard.schemas.Utilization`, :class:`~riskguard.schemas.LimitBreach` and
:class:`~riskguard.schemas.RiskAlert` records. Limit paths: ``firm``,
``firm.asset.<a>``, ``counterparty.<cp>``, ``counterparty.<cp>.asset.<a>``,
``counterparty.<cp>.instrument.<i>``. With ``vol_scaling`` the effective limit is
``base * clamp((ref_vol / vol) ** exponent, lo, hi)``.

An exposure that cannot be valued (``Exposure.unvalued_instruments`` /
``unvalued_collateral``, or a non-finite measure) never counts as zero: an
``unvalued_exposure`` alert comes at once, and each limit that measures it is breached
once it has stayed unvalued for ``LimitSpec.unvalued_grace_ns`` of event time, until it
is valued again and inside the limit.

>>> from riskguard.operators.exposure.limit_specs import CounterpartyLimits
>>> from riskguard.schemas import Exposure
>>> cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
...     limits={"gross_notional": LimitSpec(limit=100.0)})})
>>> logic = LimitsLogic(cfg)
>>> outs = logic.on_event(Exposure(counterparty="okx", ts=1, gross_notional=85.0,
...                                net_notional=85.0))
>>> [(type(o).__name__, o.level.value, o.utilization) for o in outs]
[('Utilization', 'warn', 0.85)]
>>> outs = logic.on_event(Exposure(counterparty="okx", ts=2, gross_notional=120.0,
...                                net_notional=120.0))
>>> [(type(o).__name__, o.level.value) for o in outs]
[('Utilization', 'breach'), ('LimitBreach', 'breach')]
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
from riskguard.operators.core.base import copy_fields
from riskguard.operators.core.clock import TICK_IDLE_NS, Clock, Tick, Watermark, system_clock
from riskguard.operators.core.dedup import IdWindow, signer_id
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.config import NS_PER_S
from riskguard.operators.exposure.limit_specs import (
    LEVEL_ORDER,
    LimitsConfig,
    LimitSpec,
    VolScaling,
    check_spec,
    kind_problem,
    level_of,
    vol_factor,
)
from riskguard.operators.exposure.limit_updates import FIRM_SCOPE, Approved, rejection_alert
from riskguard.schemas import (
    Exposure,
    LimitBreach,
    LimitLevel,
    LimitUpdate,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Utilization,
)
from riskguard.schemas.signals import parse_limit_path
from riskguard.schemas.valuation import Progress

from riskguard.errors import ConfigError

STATE_VERSION = 4
"""The version of :class:`LimitsState` a snapshot holds; a snapshot of another is refused."""


UTIL_CAP = 1e6
MAX_OVERRIDES = 1024
"""Limits a key's signed updates may set beyond its configured ones, at most: each is a
row every exposure is evaluated against. Past it, an update naming a new limit is
rejected (``too_many_overrides``); one changing a limit already set still applies."""
_NS = uuid.UUID("3d2b8c41-6a0e-4b8e-a4a9-5c7f1e0d2b77")
_NONE: tuple[str, ...] = ()


@dataclass
class _Track:
    level: LimitLevel = LimitLevel.OK
    latched: bool = False
    last_emit_ts: int = -1
    changes: int = 0
    # (exposure, effective limit, latched) of the last utilization emitted
    sent: tuple[float, float, bool] | None = None
    # event time since which the exposure it measures cannot be valued (-1: valued), and
    # whether that has outlasted the grace period (breached until valued again)
    unvalued_since: int = -1
    unvalued_overdue: bool = False


def _highest(spec: LimitSpec) -> float:
    """The most ``spec`` lets its limit become: the limit times a volatility factor
    allowed above 1."""
    hi = spec.vol_scaling.hi if spec.vol_scaling is not None else 1.0
    return spec.limit * max(hi, 1.0)


def _short_of_two(approved: Approved, old: LimitSpec | None, new: LimitSpec,
                  kind: str) -> str:
    """Why ``new`` needs two people that ``approved`` lacks ('' when it does not): it
    lets the limit rise past the trust file's cap, above where ``old`` let it rise, with
    the settings earlier updates left in place counted (two updates each under the cap
    alone do not make one over it). A concentration limit is a share: it is judged
    against the share cap, and, with an amount cap but no share cap, any raise of it
    needs two people (a share of 1 switches it off)."""
    cap = approved.cap
    if kind == "concentration":
        cap = approved.share_cap if approved.share_cap is not None else (
            None if cap is None else 0.0)
    if cap is None or approved.approvers >= 2:
        return ""
    highest = _highest(new)
    if highest <= cap or (old is not None and highest <= _highest(old)):
        return ""
    what = "concentration cap" if kind == "concentration" else "cap"
    return (f"the limit may rise to {highest:g} (limit x vol_scaling.hi), past the "
            f"two-person {what} {cap:g}; {approved.approvers} person(s) approved it")


def _updated_spec(upd: LimitUpdate, base: LimitSpec) -> LimitSpec | str:
    """``base`` with what ``upd`` sets, checked as a configured limit is; or why it is
    refused."""
    problem = kind_problem(parse_limit_path(upd.limit_path)[1], upd.kind)
    if problem is not None:
        return problem
    changes: dict[str, Any] = {}
    if upd.limit is not None:
        changes["limit"] = upd.limit
    if upd.warn is not None:
        changes["warn"] = upd.warn
    if upd.hard is not None:
        changes["hard"] = upd.hard
    if upd.manual_reset is not None:
        changes["manual_reset"] = upd.manual_reset
    if upd.vol_scaling is not None:
        vs = dict(upd.vol_scaling)
        und = base.vol_scaling.underlying if base.vol_scaling else ""
        try:
            changes["vol_scaling"] = (
                None if not vs else VolScaling(
                    underlying=und,
                    ref_vol=float(vs["ref_vol"]),
                    exponent=float(vs.get("exponent", 1.0)),
                    lo=float(vs.get("lo", 0.25)), hi=float(vs.get("hi", 1.0)),
                ))
        except KeyError as err:
            return f"vol_scaling needs {err}"
    new = msgspec.structs.replace(base, **changes)
    try:
        check_spec(f"{upd.limit_path}.{upd.kind}", upd.kind, new)
    except ConfigError as err:
        return str(err)
    if new.vol_scaling is not None and not new.vol_scaling.underlying:
        return "vol_scaling needs an underlying (configure it first)"
    return new


class _Row(NamedTuple):
    """One limit of a key, with what evaluating it needs."""

    key: tuple[str, str]  # (limit path, kind)
    spec: LimitSpec
    measure: Measure
    unvalued: Unvalued
    scope: Scope
    warn: float


class _Reading(NamedTuple):
    """One limit's reading in an evaluation: the exposure, the effective limit, the
    utilization, the level before and after, whether it is said whatever the interval
    (first, moved in or out of unvalued, forced), whether it could not all be valued
    (how many names), and the vol-scaling inputs."""

    x: float
    eff: float
    u: float
    old: LimitLevel
    new: LimitLevel
    said: bool
    bad: bool
    n_unvalued: int
    inputs: dict[str, float] | None


class _Pass:
    """One evaluation of a key's limits: its output and what its unvalued limits could
    not count (for the one alert that explains them)."""

    __slots__ = ("alert_at", "e", "explained", "graces", "next_due", "not_finite", "now",
                 "out", "recv_ts", "ts", "unvalued")

    def __init__(self, e: Exposure, ts: int, recv_ts: int | None, now: int) -> None:
        self.e, self.ts, self.recv_ts, self.now = e, ts, recv_ts, now
        self.out: list[Any] = []
        self.alert_at = 0  # an unvalued_exposure alert goes before this key's levels
        self.unvalued: dict[str, None] = {}  # what the limits could not count
        self.not_finite: list[str] = []
        self.graces: list[int] = []
        self.explained: list[int] = []  # breaches the unvalued_exposure alert explains
        self.next_due = -1

    def track_unvalued(self, tr: _Track, spec: LimitSpec,
                       names: list[str] | tuple[str, ...]) -> bool:
        """Note a limit that cannot count all it measures; start its grace, or find it
        overdue. True if it has just become unvalued."""
        self.unvalued.update(dict.fromkeys(names))
        self.graces.append(spec.unvalued_grace_ns)
        moved = False
        if tr.unvalued_since < 0:
            tr.unvalued_since, moved = self.ts, True
        if not tr.unvalued_overdue:
            due = tr.unvalued_since + spec.unvalued_grace_ns
            if self.now >= due:
                tr.unvalued_overdue = True
            elif self.next_due < 0 or due < self.next_due:
                self.next_due = due
        return moved


def _next_level(tr: _Track, u: float, old: LimitLevel, spec: LimitSpec, bad: bool = False
                ) -> tuple[LimitLevel, float]:
    """The level (and utilization) a limit moves to from ``old``: a reading that cannot
    count all it measures (``bad``: unvalued, or not a number) never lowers the level,
    unvalued past its grace is breached at 100% at least (a playbook rule's
    min_utilization then acts on it like any breach), and a manual-reset limit stays
    breached once breached, until a ``reset_latch`` update (an update turning
    ``manual_reset`` off does not lift a latch already set)."""
    new = level_of(u, old, spec)
    if bad and LEVEL_ORDER[new] < LEVEL_ORDER[old]:
        new = old
    if tr.unvalued_overdue:
        u = max(u, 1.0)
        if LEVEL_ORDER[new] < LEVEL_ORDER[LimitLevel.BREACH]:
            new = LimitLevel.BREACH
    if spec.manual_reset and LEVEL_ORDER[new] >= LEVEL_ORDER[LimitLevel.BREACH]:
        tr.latched = True
    if tr.latched and LEVEL_ORDER[new] < LEVEL_ORDER[LimitLevel.BREACH]:
        new = LimitLevel.BREACH  # only a signed reset_latch lifts a latch, whatever the spec
    return new, u


@persisted("riskguard.limits")
@dataclass
class LimitsState:
    """State of one counterparty's (or the firm's) limits."""

    version: int = STATE_VERSION
    key: str = ""
    overrides: dict[tuple[str, str], LimitSpec] = field(default_factory=dict)
    tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)
    last: Exposure | None = None
    unknown_alerted: bool = False
    seen_updates: dict[str, None] = field(default_factory=dict)
    # the exposure path's tick sources (clock.Watermark): event time moves on without
    # exposures, so a quiet unvalued book still reaches its grace deadline
    sources: dict[str, list[int]] = field(default_factory=dict)
    # where the watermark over them stands (-1: not yet), and how many sources the ticks
    # announced: a resumed run reads event time as an unbroken one does
    watermark: int = -1
    expected_sources: int = 0
    # event time of the earliest grace deadline still to come (-1: none)
    unvalued_due: int = -1
    # the unvalued names the unvalued_exposure alerts named, and the last one's id (the
    # evidence of a breach it explains), until the key is valued again
    unvalued_alerted: list[str] = field(default_factory=list)
    unvalued_alert: str = ""


Measure = Callable[[Exposure], float]


def _scope_of(key: str, level: str, name: str) -> Scope:
    """The scope of a limit of ``key`` at ``level`` on ``name``: known where the row is
    made, so a counterparty whose name reads as a path (``x.asset.y``) is still its own."""
    if key == "*" and level == "firm":
        return Scope(kind=ScopeKind.FIRM, value="*")
    if level == "asset":
        return Scope(kind=ScopeKind.UNDERLYING, value=name, venue=None if key == "*" else key)
    if level == "instrument":
        return Scope(kind=ScopeKind.INSTRUMENT, value=name, venue=key)
    return Scope(kind=ScopeKind.COUNTERPARTY, value=key)


def max_abs(d: dict[str, float]) -> float:
    """The largest magnitude among ``d``'s values (0.0 when empty), without a call per value.

    A NaN anywhere makes it NaN (max() would pass over one not first): no amount.

    >>> max_abs({"BTC": -3.0, "ETH": 2.0}), max_abs({}), max_abs({"BTC": -0.0})
    (3.0, 0.0, 0.0)
    >>> max_abs({"ETH": 5.0, "BTC": float("nan")})
    nan
    """
    if not d:
        return 0.0
    values = d.values()
    total = sum(values)  # NaN if any is, whatever max() and min() pass over
    if not math.isfinite(total):
        return math.nan if any(map(math.isnan, values)) else max(map(abs, values)) + 0.0
    top, low = max(values), -min(values)
    return (top if top >= low else low) + 0.0  # + 0.0: never -0.0


def _measure(level: str, name: str, kind: str) -> Measure:
    """What a limit of ``kind`` at ``level`` measures in an exposure."""
    if level in ("cp", "firm"):
        if kind == "gross_notional":
            return lambda e: e.gross_notional
        if kind == "net_notional":
            return lambda e: abs(e.net_notional)
        if kind == "collateral":
            return lambda e: max(e.collateral, 0.0)
        if kind == "concentration":
            return lambda e: e.concentration
        if kind == "open_order_notional":
            return lambda e: e.open_order_notional
        return lambda e: max_abs(e.delta_by_underlying)
    if level == "asset" and kind == "delta":
        return lambda e: abs(e.delta_by_underlying.get(name, 0.0))
    if level == "asset" and kind == "net_notional":
        return lambda e: abs(e.notional_by_asset.get(name, 0.0))
    if level == "instrument" and kind in ("gross_notional", "net_notional"):
        return lambda e: abs(e.instrument_notional(name))
    return lambda e: math.nan  # not measured at this level (refused on the way): no amount


Unvalued = Callable[[Exposure], "list[str] | tuple[str, ...]"]


def _unvalued(level: str, name: str, kind: str) -> Unvalued:
    """What, of an exposure's unvalued positions and collateral, a limit of ``kind`` at
    ``level`` would have counted. An asset limit counts every unvalued position: the
    exposure does not say which asset an unvalued position is in, and failing closed
    beats a silent zero."""
    if level == "instrument":
        return lambda e: (name,) if name in e.unvalued_instruments else _NONE
    if level in ("cp", "firm") and kind == "collateral":
        return lambda e: e.unvalued_collateral
    if level in ("cp", "firm") and kind == "concentration":
        return lambda e: e.unvalued_instruments + e.unvalued_collateral
    return lambda e: e.unvalued_instruments


class LimitsLogic:
    """Limits of one counterparty (or of the firm, key ``"*"``)."""

    def __init__(self, config: LimitsConfig, state: LimitsState | None = None, *,
                 clock: Clock = system_clock, idle_ns: int = TICK_IDLE_NS) -> None:
        """``idle_ns``: how long (processing time) a silent tick source holds the key's
        time back (:class:`~riskguard.operators.core.clock.Watermark`)."""
        self.config = config
        self.state = state if state is not None else LimitsState()
        # processing time, for the tick sources' idle rule only (clock.Watermark)
        self.clock = clock
        st = self.state
        self._watermark = Watermark.resume(st.sources, idle_ns, last=st.watermark,
                                           expected=st.expected_sources)
        self._updates = IdWindow(self.state.seen_updates, 1024)
        self._rows: dict[str, tuple[bool, list[tuple[str, str, str, str, LimitSpec]]]] = {}
        self._plans: dict[str, tuple[bool, list[_Row]]] = {}

    def snapshot(self) -> LimitsState:
        """An independent copy: tracks copied, immutable leaves (limit specs, the last
        exposure) shared."""
        st = self.state
        return copy_fields(st, overrides=dict(st.overrides),
                           tracks={k: copy_fields(t) for k, t in st.tracks.items()},
                           seen_updates=dict(st.seen_updates),
                           sources={k: list(v) for k, v in st.sources.items()},
                           unvalued_alerted=list(st.unvalued_alerted))

    def _configured(self, key: str) -> tuple[bool, list[tuple[str, str, str, str, LimitSpec]]]:
        """``(known, [(path, level, name, kind, spec)])`` for ``key`` (cached until an update)."""
        hit = self._rows.get(key)
        if hit is None:
            hit = self._rows[key] = self._configured_uncached(key)
        return hit

    def _configured_uncached(
        self, key: str
    ) -> tuple[bool, list[tuple[str, str, str, str, LimitSpec]]]:
        cfg = self.config
        rows: list[tuple[str, str, str, str, LimitSpec]] = []
        if key == "*":
            rows.extend(("firm", "firm", "*", k, s) for k, s in cfg.firm.items())
            for a, kinds in cfg.firm_assets.items():
                rows.extend((f"firm.asset.{a}", "asset", a, k, s) for k, s in kinds.items())
            known = True
        else:
            cl = cfg.counterparties.get(key)
            known = cl is not None
            base = f"counterparty.{key}"
            if cl is None:
                rows.extend((base, "cp", key, k, LimitSpec(limit=0.0, unvalued_grace_ns=0))
                            for k in cfg.unknown_counterparty_kinds)
            else:
                rows.extend((base, "cp", key, k, s) for k, s in cl.limits.items())
                for a, kinds in cl.assets.items():
                    rows.extend((f"{base}.asset.{a}", "asset", a, k, s) for k, s in kinds.items())
                for i, kinds in cl.instruments.items():
                    rows.extend((f"{base}.instrument.{i}", "instrument", i, k, s)
                                for k, s in kinds.items())
        over = self.state.overrides
        seen = {(p, k) for p, _l, _n, k, _s in rows}
        out = [(p, lv, n, k, over.get((p, k), s)) for p, lv, n, k, s in rows]
        for (p, k), s in sorted(over.items()):
            if (p, k) not in seen:
                _key, lv, n = parse_limit_path(p)
                out.append((p, lv, n, k, s))
        return known, out

    def current_spec(self, path: str, kind: str) -> LimitSpec | None:
        key, _lv, _n = parse_limit_path(path)
        for p, _l, _nm, k, s in self._configured(key)[1]:
            if p == path and k == kind:
                return s
        return None

    def on_event(self, rec: Exposure | Progress | LimitUpdate | Approved) -> list[Any]:
        if type(rec) is Exposure:
            # with one source, exposures come in event-time order, so one shows the
            # deadlines before its own time have passed; with several it is not the key's
            out = [] if self._watermark.several() else self._overdue(rec.ts - 1)
            out.extend(self._on_exposure(rec))
            return out
        if type(rec) is Progress:  # the exposure path's: passed on behind what came before
            # the key's event time: the watermark over its sources, so a grace deadline
            # never passes while another process's valuation is still on its way
            tick = Tick(ts=rec.ts, source=rec.source, of=rec.key_of)
            wm = self._watermark
            now = wm.tick_time(tick, self.clock())
            st = self.state
            if tick.source:
                st.watermark, st.expected_sources = wm.last, wm.expected
            out = self._overdue(now)
            name = f"{rec.source}/{rec.counterparty}" if rec.source else ""
            out.append(Tick(ts=rec.ts, source=name, of=rec.of))
            return out
        if type(rec) is LimitUpdate:  # verified, approvals not known: no more than one
            return self._on_update(Approved(rec))
        assert type(rec) is Approved  # what else reaches it is a bug
        return self._on_update(rec)

    def _overdue(self, now: int) -> list[Any]:
        """The last exposure evaluated again at each grace deadline up to ``now`` (event
        time), stamped with the deadline: the same outputs whether a tick or a later
        exposure shows that time has passed it."""
        st = self.state
        out: list[Any] = []
        while 0 <= st.unvalued_due <= now and st.last is not None:
            out.extend(self._evaluate(st.last, at=st.unvalued_due))
        return out

    def _on_update(self, approved: Approved) -> list[Any]:
        """A verified limit update: the limit it sets (or its rejection), a latch it
        resets, the acceptance alert, and the key's limits evaluated again."""
        upd = approved.update
        st = self.state
        try:
            key, _lv, _n = parse_limit_path(upd.limit_path)
        except ValueError as err:
            return [rejection_alert("bad_path", str(err), upd.update_id, upd.issued_at,
                                    FIRM_SCOPE)]
        st.key = key
        seen = signer_id(upd.issuer, upd.update_id)  # each signer's ids its own
        if seen in self._updates:
            return []
        self._updates.add(seen)
        old = self.current_spec(upd.limit_path, upd.kind)
        if old is None and len(st.overrides) >= MAX_OVERRIDES:  # a new limit, past the cap
            return [self._reject(upd, "too_many_overrides",
                                 f"{len(st.overrides)} limits set by updates on this key "
                                 f"already (at most {MAX_OVERRIDES})")]
        base = old if old is not None else LimitSpec(limit=0.0)
        new = _updated_spec(upd, base)
        if isinstance(new, str):
            return [self._reject(upd, "invalid_update", new)]
        short = _short_of_two(approved, base if old is not None else None, new, upd.kind)
        if short:
            return [self._reject(upd, "two_person_required", short)]
        st.overrides[(upd.limit_path, upd.kind)] = new
        self._rows.clear()
        self._plans.clear()
        track = st.tracks.get((upd.limit_path, upd.kind))
        latch_reset = bool(upd.reset_latch and track is not None and track.latched)
        if upd.reset_latch and track is not None:
            track.latched = False
        details: dict[str, float | str] = {
            "limit_path": upd.limit_path, "limit_kind": upd.kind, "issuer": upd.issuer,
            "old_limit": old.limit if old is not None else -1.0, "new_limit": new.limit,
            "old_warn": base.warn, "new_warn": new.warn,
            "old_hard": base.hard if base.hard is not None else -1.0,
            "new_hard": new.hard if new.hard is not None else -1.0,
            "old_manual_reset": str(base.manual_reset), "new_manual_reset": str(new.manual_reset),
            "latch_reset": str(latch_reset),
        }
        out: list[Any] = [RiskAlert(
            id=str(uuid.uuid5(_NS, f"accepted|{upd.update_id}")), kind="limit_update_accepted",
            scope=self._scope(upd.limit_path), ts=upd.issued_at, severity=Severity.INFO,
            reason=upd.reason or f"limit update {upd.update_id} accepted", details=details,
            evidence_ids=[upd.update_id],
        )]
        if st.last is not None:
            out.extend(self._evaluate(st.last, force_path=(upd.limit_path, upd.kind)))
        return out

    def _reject(self, upd: LimitUpdate, reason: str, detail: str) -> RiskAlert:
        return rejection_alert(reason, detail, upd.update_id, upd.issued_at,
                               self._scope(upd.limit_path))

    def _scope(self, path: str) -> Scope:
        """The scope of a path a verified update names (parse_limit_path reads it)."""
        return _scope_of(*parse_limit_path(path))

    def _on_exposure(self, e: Exposure) -> list[Any]:
        st = self.state
        st.key = e.counterparty
        st.last = e
        return self._evaluate(e)

    def _plan(self, key: str) -> tuple[bool, list[_Row]]:
        """``_configured`` rows with what evaluating them needs, cached until an update."""
        hit = self._plans.get(key)
        if hit is None:
            known, rows = self._configured(key)
            plan = [_Row((path, kind), spec, _measure(level, name, kind),
                         _unvalued(level, name, kind), _scope_of(key, level, name), spec.warn)
                    for path, level, name, kind, spec in rows]
            hit = self._plans[key] = (known, plan)
        return hit

    def _evaluate(self, e: Exposure, force_path: tuple[str, str] | None = None,
                  at: int | None = None) -> list[Any]:
        """Every limit of ``e``'s key against ``e``, at ``e.ts`` (or at ``at``: a grace
        deadline that passed with ``e`` still the latest exposure). The loop stays inline
        up to the fast path: it runs per limit and exposure."""
        st = self.state
        known, plan = self._plan(e.counterparty)
        ts = e.ts if at is None else at
        # what a grace deadline is measured against: the key's watermark when several
        # sources feed it (an exposure's own time may run ahead of another's parts)
        now = ts if at is not None or not self._watermark.several() else self._watermark.last
        p = _Pass(e, ts, e.recv_ts if at is None else None, now)
        if not known and not st.unknown_alerted:
            st.unknown_alerted = True
            p.out.append(self._unknown_alert(e, ts, p.recv_ts))
        p.alert_at = len(p.out)
        tracks, interval, ok = st.tracks, self.config.utilization_interval_ns, LimitLevel.OK
        any_unvalued = bool(e.unvalued_instruments or e.unvalued_collateral)
        for row in plan:
            tkey, spec, measure, unv_of, _scope, warn = row
            x = measure(e)
            names = unv_of(e) if any_unvalued else _NONE
            finite = math.isfinite(x)
            tr = tracks.get(tkey)
            first = tr is None
            if tr is None:
                tr = tracks[tkey] = _Track()
            bad = bool(names) or not finite
            moved = False  # became unvalued, or valued again
            if bad:
                if not finite:  # nan or inf is no amount: never compared with a limit
                    x = 0.0
                    p.not_finite.append(f"{tkey[0]}#{tkey[1]}")
                moved = p.track_unvalued(tr, spec, names)
            elif tr.unvalued_since >= 0:
                tr.unvalued_since, tr.unvalued_overdue, moved = -1, False, True
            eff, inputs = (spec.limit, None) if spec.vol_scaling is None else \
                self._scaled(spec, e)
            u = min(x / eff, UTIL_CAP) if eff > 0 else (0.0 if x <= 0 else UTIL_CAP)
            old = tr.level
            # fast path: below warn, was OK, no latch, valued -> still OK (same as level_of)
            if u < warn and old is ok and not tr.latched and not bad:
                if not (first or moved or ts - tr.last_emit_ts >= interval
                        or force_path == tkey):
                    continue
                new = ok
            else:
                new, u = _next_level(tr, u, old, spec, bad)
            said = first or moved or force_path == tkey
            self._emit(p, row, tr, _Reading(x, eff, u, old, new, said, bad,
                                             len(names) + (not finite), inputs))
        st.unvalued_due = p.next_due
        self._close_pass(p)
        return p.out

    def _scaled(self, spec: LimitSpec, e: Exposure) -> tuple[float, dict[str, float]]:
        """A vol-scaled limit's effective value, and the inputs that scaled it."""
        factor, inputs = vol_factor(spec, e.vol_by_underlying, self.config.missing_vol_factor)
        return spec.limit * factor, inputs

    def _unknown_alert(self, e: Exposure, ts: int, recv_ts: int | None) -> RiskAlert:
        return RiskAlert(
            id=str(uuid.uuid5(_NS, f"unknown|{e.counterparty}")), kind="unknown_counterparty",
            scope=Scope(kind=ScopeKind.COUNTERPARTY, value=e.counterparty), ts=ts,
            recv_ts=recv_ts, severity=Severity.CRITICAL,
            reason=(f"counterparty {e.counterparty!r} has no configured limits; "
                    "failing closed with zero limits"),
            evidence_ids=list(e.evidence_ids),
        )

    def _emit(self, p: _Pass, row: _Row, tr: _Track, r: _Reading) -> None:
        """The output policy: a Utilization on a level change, a first reading, a move in
        or out of unvalued, a forced one, or once an interval has passed (an exact repeat
        waits for the heartbeat); a LimitBreach when the level enters or leaves breach."""
        cfg = self.config
        (path, kind), spec, _measure_of, _unvalued_of, scope, _warn = row
        ts = p.ts
        changed = r.new is not r.old
        if changed or r.said:
            emit = True  # a level change (so any breach) always emits
        elif ts - tr.last_emit_ts < cfg.utilization_interval_ns:
            emit = False
        else:  # an exact repeat of the last one waits for the heartbeat
            heartbeat = cfg.utilization_heartbeat_ns
            emit = (not heartbeat or ts - tr.last_emit_ts >= heartbeat
                    or tr.sent != (r.x, r.eff, tr.latched))
        inputs = r.inputs
        if emit:
            inputs = {} if inputs is None else inputs
            inputs["base_limit"] = spec.limit
            if r.bad:  # why: what it could not count, for how long, against what grace
                inputs["unvalued"] = float(r.n_unvalued)
                inputs["unvalued_for_ns"] = float(ts - tr.unvalued_since)
                inputs["unvalued_grace_ns"] = float(spec.unvalued_grace_ns)
            tr.last_emit_ts = ts
            tr.sent = (r.x, r.eff, tr.latched)
            p.out.append(Utilization(
                limit_path=path, kind=kind, scope=scope, ts=ts, exposure=r.x,
                base_limit=spec.limit, effective_limit=r.eff, utilization=r.u, level=r.new,
                latched=tr.latched, inputs=inputs,
            ))
        tr.level = r.new
        if changed and (LEVEL_ORDER[r.new] >= 2 or LEVEL_ORDER[r.old] >= 2):
            tr.changes += 1
            sev = Severity.CRITICAL if LEVEL_ORDER[r.new] >= 2 else Severity.INFO
            if r.bad:
                p.explained.append(len(p.out))
            p.out.append(LimitBreach(
                id=str(uuid.uuid5(_NS, f"{path}|{kind}|{tr.changes}|{r.new.value}|{ts}")),
                limit_path=path, kind=kind, scope=scope, ts=ts, recv_ts=p.recv_ts,
                exposure=r.x, base_limit=spec.limit, effective_limit=r.eff,
                utilization=r.u, level=r.new, severity=sev, inputs=inputs or {},
                evidence_ids=list(p.e.evidence_ids),
            ))

    def _close_pass(self, p: _Pass) -> None:
        """The ``unvalued_exposure`` alert, before the key's levels, as the evidence of
        the breaches it explains; or, with everything valued, the alerted names forgotten."""
        st = self.state
        if p.graces:
            alert = self._unvalued_alert(p)
            out = p.out
            for k in p.explained:  # the alert that says why is part of the evidence
                out[k] = msgspec.structs.replace(
                    out[k], evidence_ids=[*out[k].evidence_ids, st.unvalued_alert])
            if alert is not None:
                out.insert(p.alert_at, alert)
        elif st.unvalued_alerted:
            st.unvalued_alerted, st.unvalued_alert = [], ""

    def _unvalued_alert(self, p: _Pass) -> RiskAlert | None:
        """``unvalued_exposure`` (critical) when the key's limits could not count something
        not named in the last such alert since it was last fully valued; else None."""
        st = self.state
        e, ts, recv_ts, names, not_finite = p.e, p.ts, p.recv_ts, list(p.unvalued), p.not_finite
        grace, n_limits = min(p.graces), len(p.graces)
        what = sorted(names) + sorted(not_finite)
        if set(what) <= set(st.unvalued_alerted):
            return None
        st.unvalued_alerted = sorted({*what, *st.unvalued_alerted})
        key = e.counterparty
        scope = (Scope(kind=ScopeKind.FIRM, value="*") if key == "*"
                 else Scope(kind=ScopeKind.COUNTERPARTY, value=key))
        shown = ", ".join(what[:8]) + (f" and {len(what) - 8} more" if len(what) > 8 else "")
        when = "at once" if grace == 0 else f"after {grace / NS_PER_S:g}s"
        if n_limits > 1 and max(p.graces) != grace:
            when = f"the first {when}"
        st.unvalued_alert = str(uuid.uuid5(
            _NS, f"unvalued|{key}|{'|'.join(st.unvalued_alerted)}|{ts}"))
        return RiskAlert(
            id=st.unvalued_alert, kind="unvalued_exposure", scope=scope, ts=ts, recv_ts=recv_ts,
            severity=Severity.CRITICAL,
            reason=(f"exposure of {key!r} cannot be valued ({shown}: no mark or FX rate, "
                    f"or not a number); {n_limits} limit(s) count it as breached, {when}, "
                    "unless it is valued again"),
            details={"counterparty": key, "unvalued": ",".join(names)[:1000],
                     "not_finite": ",".join(not_finite)[:1000], "grace_ns": float(grace),
                     "limits": float(n_limits)},
            evidence_ids=list(e.evidence_ids),
        )
