"""Stages 2 and 3: a counterparty's parts summed into its exposure, and the firm rollup."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain, repeat
from operator import add, attrgetter, is_, itemgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np
from riskguard.operators.core.base import copy_fields
from riskguard.operators.core.clock import TICK_IDLE_NS, Clock, RestoredSources, system_clock
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.config import (
    NS_PER_S,
    STATE_VERSION,
    ExposureConfig,
    alert_id,
    evidence_add,
)
from riskguard.operators.exposure.routing import PROGRESS_KEY, shard_process, split_progress
from riskguard.operators.exposure.saturation import (
    bounded,
    restored_exposure,
    restored_part,
    saturated,
    saturated_exposure,
)
from riskguard.operators.exposure.valuation import NEVER_STALE
from riskguard.schemas import (
    Exposure,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)
from riskguard.schemas.valuation import Part, Progress


@persisted("riskguard.exposure.counterparty")
@dataclass
class CounterpartyState:
    """State of one counterparty: its latest :class:`Part` per shard."""

    version: int = STATE_VERSION
    counterparty: str = ""
    parts: dict[str, Part] = field(default_factory=dict)
    watermark: int = 0
    seq: int = 0
    stale: dict[str, int] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    # ticked mode: per progress source, [its newest tick, processing time it came]
    sources: dict[str, list[int]] = field(default_factory=dict)
    # ticked mode: per market process (shard prefix, "" for one pipeline's shards) that
    # sent a part, the newest time its parts and progress reached (its marks' ages count
    # in it)
    clocks: dict[str, int] = field(default_factory=dict)


class CounterpartyLogic:
    """Stage 2: one counterparty's parts (one per shard) -> its :class:`Exposure`.

    Each part is the counterparty's complete sum over one shard, so the
    exposure is an exact re-sum over at most ``valuation_shards`` parts (no
    running sums, no drift). At most one exposure per batch.

    Ticked, time passes with the shards' progress too: when the watermark over them
    passes the moment a held mark grows older than ``max_mark_age_ns`` and no part has
    come since, the exposure is sent again, stale, stamped with that moment. A
    counterparty whose marks all stopped (its venue's feeds are down, a market that no
    longer trades) is then stale on time, not only when another mark arrives.

    Ticked, a mark's age counts in the time of the market process that values it, never
    past the newest part or progress from that process: one process running ahead of another
    (or one restarting, whose silence ``market_process_silent`` reports) does not make
    the other's marks stale, as one pipeline would not.
    """

    def __init__(self, config: ExposureConfig, state: CounterpartyState | None = None, *,
                 ticked: bool = False, clock: Clock = system_clock) -> None:
        self.config = config
        self.ticked = ticked
        self.state = state if state is not None else CounterpartyState()
        self._recv_ts: int | None = None  # newest receive time among this batch's parts
        # processing time, for the progress sources' idle rule only
        self.clock = clock
        self._stale_at: int | None = None  # the next mark's stale moment (None: unknown)
        # the soonest stale moment its process's time has not reached yet (left out of
        # ``_stale_at`` until it does)
        self._stale_waits = NEVER_STALE

    def snapshot(self) -> CounterpartyState:
        # parts are frozen and never mutated: a shallow rebuild is an independent copy
        st = self.state
        return CounterpartyState(
            version=st.version, counterparty=st.counterparty, parts=dict(st.parts),
            watermark=st.watermark, seq=st.seq, stale=dict(st.stale),
            evidence=list(st.evidence), sources={k: list(v) for k, v in st.sources.items()},
            clocks=dict(st.clocks),
        )

    def on_event(self, p: Part) -> list[Any]:
        return self.on_batch([p])

    def on_batch(self, items: Iterable[Part]) -> list[Any]:
        if not self.ticked:
            return self._batch(items)
        parts, progress = split_progress(list(items))
        out = _per_tick(self._batch, parts) if parts else []
        if progress:
            out.extend(self._on_progress(progress))
        out.extend(progress)  # behind the exposures they follow
        return out

    def _on_progress(self, progress: list[Progress]) -> list[Any]:
        """The exposure again at each moment up to the progress's time at which a held
        mark grew too old with no part since, oldest first."""
        now = self.clock()
        st = self.state
        sources = st.sources
        newest = st.watermark
        behind = False  # a process behind the counterparty's time moved on
        for p in progress:
            if not p.source:
                continue
            seen = sources.get(p.source)
            if seen is None:
                sources[p.source] = [p.ts, now]
            else:
                seen[0], seen[1] = max(seen[0], p.ts), now
            newest = max(newest, p.ts)
            behind = self._advance_clock(shard_process(p.source), p.ts) or behind
        out: list[Any] = []
        if newest <= st.watermark and not behind:  # the usual tick: nothing to judge
            return out
        time = self._progress_time(now)
        while st.parts:
            at = self._next_stale()
            if at > time:
                break
            # a process behind may reach a moment the counterparty's time has passed
            st.watermark = max(st.watermark, at)
            self._recv_ts = None
            out.extend(self._emit())
        return out

    def _advance_clock(self, process: str, ts: int) -> bool:
        """``process``'s time (once it sent a part) moves on to ``ts``; True if it was
        behind the counterparty's time, so a mark of it may have grown too old."""
        clocks = self.state.clocks
        old = clocks.get(process)
        if old is None or ts <= old:
            return False
        clocks[process] = ts
        if ts >= self._stale_waits:
            self._stale_at = None
        return old < self.state.watermark

    def _progress_time(self, now: int) -> int:
        """The oldest newest tick over the progress sources, so no shard's part still on
        its way is overtaken. A source silent for ``TICK_IDLE_NS`` of processing time (a
        market process gone, a source named by a restart before this one) is forgotten
        and holds nothing back."""
        sources = self.state.sources
        for name in [n for n, (_ts, seen) in sources.items() if now - seen >= TICK_IDLE_NS]:
            del sources[name]
        return min((ts for ts, _seen in sources.values()), default=-1)

    def _next_stale(self) -> int:
        """The moment the oldest held mark not yet stale grows stale (``NEVER_STALE``:
        none), among the marks whose process's time has reached that moment (a mark its
        process's time has just carried past it: at once); cached until a part comes, the
        exposure is sent or a process's time reaches a moment left out."""
        if self._stale_at is None:
            age = self.config.max_mark_age_ns
            st = self.state
            at = waits = NEVER_STALE
            for p in st.parts.values():
                clock = st.clocks.get(shard_process(p.shard), st.watermark)
                horizon = min(st.watermark, clock) - age
                if p.oldest < horizon and (
                        old := _oldest_unflagged(p, horizon, st.stale)) < NEVER_STALE:
                    at = min(at, old + age + 1)
                fresh = _oldest_from(p, horizon)
                if fresh is None:
                    continue
                if fresh + age + 1 > clock:  # its process has not come that far yet
                    waits = min(waits, fresh + age + 1)
                else:
                    at = min(at, fresh + age + 1)
            self._stale_at, self._stale_waits = at, waits
        return self._stale_at

    def _batch(self, items: Iterable[Part]) -> list[Any]:
        st = self.state
        parts = st.parts
        cap = self.config.max_evidence
        changed = False
        self._recv_ts = None
        for p in items:
            old = parts.get(p.shard)
            if old is not None and old.seq >= p.seq:
                continue
            parts[p.shard] = p
            changed = True
            if self.ticked:  # only progress tells how far a process without parts came
                process = shard_process(p.shard)
                if process in st.clocks:
                    self._advance_clock(process, p.ts)
                else:
                    st.clocks[process] = p.ts
            if p.recv_ts is not None and (self._recv_ts is None or p.recv_ts > self._recv_ts):
                self._recv_ts = p.recv_ts
            st.counterparty = p.counterparty
            st.watermark = max(st.watermark, p.ts)
            if st.evidence:
                for rid in p.evidence:
                    evidence_add(st.evidence, rid, cap)
            else:  # the common case: the first part since the last emit
                st.evidence = list(dict.fromkeys(p.evidence))[-cap:]
        if not changed:
            return []
        return self._emit()

    def _emit(self) -> list[Any]:
        """The counterparty's exposure over its parts (in shard order), after a
        ``stale_mark`` alert for each mark that has just grown too old."""
        st = self.state
        ps = [st.parts[k] for k in sorted(st.parts)] if len(st.parts) > 1 else list(
            st.parts.values())
        t = _sum_parts(ps)
        old = self._old_marks(ps)
        out: list[Any] = self._stale_alerts(old)
        stale = sorted({*t.unvalued, *old}) if t.unvalued or old else []
        unv_inst: list[str] = []
        unv_coll: list[str] = []
        if t.unvalued:  # a part's unvalued names: its positions', then collateral assets'
            positions = set(t.names)
            unv_inst = sorted({n for n in t.unvalued if n in positions})
            unv_coll = sorted({n for n in t.unvalued if n not in positions})
        st.seq += 1
        out.append(in_range(Exposure(
            counterparty=st.counterparty, ts=st.watermark, gross_notional=t.gross,
            net_notional=t.net, delta_by_underlying=t.delta,
            notional_by_asset=t.by_asset, instruments=t.names,
            instrument_notionals=t.notionals, collateral=t.coll, unrealized_pnl=t.upnl,
            open_order_notional=t.orders, stale=bool(stale), stale_instruments=stale,
            evidence_ids=st.evidence, seq=st.seq, recv_ts=self._recv_ts,
            vol_by_underlying=t.vols, vol_ts_by_underlying=t.vol_ts,
            unvalued_instruments=unv_inst,
            unvalued_collateral=unv_coll,
        )))
        st.evidence = []
        self._stale_at = None
        return out

    def _old_marks(self, ps: list[Part]) -> dict[str, int]:
        """Each held instrument whose mark is older than ``max_mark_age_ns`` before the
        watermark (before its process's time, if that is behind), with its mark's
        time."""
        wm = self.state.watermark
        age = self.config.max_mark_age_ns
        old: dict[str, int] = {}
        if (ps[0].oldest if len(ps) == 1 else min((p.oldest for p in ps),
                                                  default=NEVER_STALE)) >= wm - age:
            return old
        clocks = self.state.clocks
        for p in ps:
            horizon = min(wm, clocks.get(shard_process(p.shard), wm)) - age
            if p.oldest < horizon:
                mts = np.frombuffer(p.mark_ts, dtype="<i8")
                stale_ix = np.flatnonzero(mts < horizon).tolist()
                held = p.names
                old.update((held[x], int(mts[x])) for x in stale_ix)
        return old

    def _stale_alerts(self, old: dict[str, int]) -> list[Any]:
        """A ``stale_mark`` alert per mark newly too old, and a ``mark_restored`` alert
        per mark fresh again (or no longer held), which closes its incident."""
        st = self.state
        cfg = self.config
        out: list[Any] = []
        for name, mark_ts in old.items():
            if name in st.stale:
                continue
            st.stale[name] = mark_ts
            out.append(self._mark_alert(
                "stale_mark", name, mark_ts, Severity.WARN,
                f"mark of {name} is {(st.watermark - mark_ts) / NS_PER_S:.3f}s old (max "
                f"{cfg.max_mark_age_ns / NS_PER_S:g}s); exposure of {st.counterparty} is "
                "stale"))
        if st.stale:
            for name in [n for n in st.stale if n not in old]:
                out.append(self._mark_alert(
                    "mark_restored", name, st.stale.pop(name), Severity.INFO,
                    f"mark of {name} is fresh again, or {st.counterparty} no longer "
                    "holds it"))
        return out

    def _mark_alert(self, kind: str, name: str, mark_ts: int, severity: Severity,
                    reason: str) -> RiskAlert:
        st = self.state
        return RiskAlert(
            id=alert_id(kind, st.counterparty, name, mark_ts, st.watermark),
            kind=kind, scope=Scope(kind=ScopeKind.INSTRUMENT, value=name),
            ts=st.watermark, severity=severity, reason=reason,
            details={"counterparty": st.counterparty, "mark_ts": mark_ts,
                     "watermark": st.watermark},
            evidence_ids=list(st.evidence[-4:]),
        )


def _oldest_unflagged(p: Part, horizon: int, stale: dict[str, int]) -> int:
    """The oldest of ``p``'s marks before ``horizon`` not in ``stale`` (``NEVER_STALE``:
    none)."""
    mts = np.frombuffer(p.mark_ts, dtype="<i8")
    names = p.names
    old = [int(mts[x]) for x in np.flatnonzero(mts < horizon).tolist()
           if names[x] not in stale]
    return min(old, default=NEVER_STALE)


def _oldest_from(p: Part, horizon: int) -> int | None:
    """The oldest of ``p``'s mark times at or after ``horizon`` (None: none)."""
    if p.oldest >= horizon:
        return p.oldest if p.oldest < NEVER_STALE else None
    mts = np.frombuffer(p.mark_ts, dtype="<i8")
    fresh = mts[(mts >= horizon) & (mts < NEVER_STALE)]
    return int(fresh.min()) if len(fresh) else None


class _Totals(NamedTuple):
    """A counterparty's parts summed."""

    gross: float
    net: float
    upnl: float
    orders: float
    coll: float
    delta: dict[str, float]
    by_asset: dict[str, float]
    names: list[str]
    notionals: list[float]
    vols: dict[str, float]
    vol_ts: dict[str, int]
    unvalued: list[str]


def in_range(e: Exposure) -> Exposure:
    """``e`` with every amount within the schema's range.

    Sums of finite amounts can overflow (two positions of 1e308). Such an amount reads
    as the largest float, past every limit, so the exposure still breaches, and it
    still encodes and restores (the schema refuses infinities and NaN).

    >>> in_range(Exposure(counterparty="a", ts=1, gross_notional=math.inf,
    ...                   net_notional=-math.inf)).net_notional
    -1.7976931348623157e+308
    """
    ds, ns = e.delta_by_underlying, e.notional_by_asset
    total = (e.gross_notional + e.net_notional + e.collateral + e.unrealized_pnl
             + e.open_order_notional + sum(ds.values()) + sum(ns.values())
             + sum(e.instrument_notionals))
    if math.isfinite(total):
        return e
    delta = {k: bounded(v) for k, v in ds.items()}
    return msgspec.structs.replace(
        e, gross_notional=bounded(e.gross_notional), net_notional=bounded(e.net_notional),
        collateral=bounded(e.collateral), unrealized_pnl=bounded(e.unrealized_pnl),
        open_order_notional=bounded(e.open_order_notional), delta_by_underlying=delta,
        notional_by_asset=delta if ns is ds else {k: bounded(v) for k, v in ns.items()},
        instrument_notionals=[bounded(v) for v in e.instrument_notionals])


def _sum_parts(ps: list[Part]) -> _Totals:
    """The parts' sums; one part's own dicts and lists are shared (built for it alone
    and never mutated). Shards hold disjoint instruments; the newest vol of each
    underlying wins (on a tie in time, the higher)."""
    if len(ps) == 1:
        p = ps[0]
        names, notionals = p.names, p.notionals
        vol_ts = {k: t for k, (_v, t) in p.vols.items()} if p.vols else {}
        return _Totals(p.gross, p.net, p.upnl, p.orders, p.collateral, p.delta, p.by_asset,
                       names, notionals, p.vol_values, vol_ts, p.unvalued)
    if any(map(saturated, ps)):  # amounts past the largest float add up as infinities
        ps = [restored_part(p) for p in ps]
    gross = net = upnl = orders = coll = 0.0
    delta: dict[str, float] = {}
    by_asset: dict[str, float] = {}
    names = []
    notionals = []
    vols: dict[str, tuple[float, int]] = {}
    unvalued: list[str] = []
    for p in ps:
        gross += p.gross
        net += p.net
        upnl += p.upnl
        orders += p.orders
        coll += p.collateral
        for k, v in p.delta.items():
            delta[k] = delta.get(k, 0.0) + v
        for k, v in p.by_asset.items():
            by_asset[k] = by_asset.get(k, 0.0) + v
        names.extend(p.names)
        notionals.extend(p.notionals)
        for k, (v, t) in p.vols.items():
            cur = vols.get(k)
            if cur is None or (t, v) > (cur[1], cur[0]):
                vols[k] = (v, t)
        if p.unvalued:
            unvalued.extend(p.unvalued)
    ordered = sorted(vols.items())
    return _Totals(gross, net, upnl, orders, coll, delta, by_asset, names, notionals,
                   {k: v for k, (v, _t) in ordered}, {k: t for k, (_v, t) in ordered},
                   unvalued)


def _per_tick(batch: Any, items: list[Any]) -> list[Any]:
    """Ticked mode: ``batch`` once per ``ts`` among ``items`` (one tick each), oldest
    first; the outputs concatenated."""
    if len(items) == 1:  # the usual batch: one tick's part or exposure
        return list(batch(items))
    groups: dict[int, list[Any]] = {}
    for it in items:
        groups.setdefault(it.ts, []).append(it)
    return [out for t in sorted(groups) for out in batch(groups[t])]


# --------------------------------------------------------------------- stage 3


def sum_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise sums, keys in first-seen order, each summed in list order (C-level loops).

    >>> sum_dicts([{"a": 1.0, "b": 2.0}, {"b": 0.5, "c": 4.0}])
    {'a': 1.0, 'b': 2.5, 'c': 4.0}
    >>> sum_dicts([{"b": 1.0}, {"a": 2.0, "b": 0.5}])
    {'b': 1.5, 'a': 2.0}
    >>> sum_dicts([{"a": 1.0, "b": 2.0}, {"b": 0.5, "a": 4.0}])  # every key in each
    {'a': 5.0, 'b': 2.5}
    """
    if ds and min(map(len, ds)) == len(set().union(*ds)):  # every dict holds every key
        return {k: sum(map(itemgetter(k), ds)) for k in ds[0]}
    # a dict without a key adds 0.0 for it: no bits change (a sum from 0 is never -0.0)
    return {k: sum(map(dict.get, ds, repeat(k), repeat(0.0)))
            for k in dict.fromkeys(chain.from_iterable(ds))}


@persisted("riskguard.exposure.firm")
@dataclass
class FirmState:
    version: int = STATE_VERSION
    latest: dict[str, Exposure] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    firm: Exposure | None = None
    seq: int = 0
    # ticked mode: per progress source, each stage-2 key's newest ts, and what was passed
    # on; the limits keys progress has reached, and how many sources each one hears
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    reached: dict[str, None] = field(default_factory=dict)
    sources_of: int = 0
    # per underlying, the newest realized vol any exposure brought: (vol, its event time)
    vols: dict[str, tuple[float, int]] = field(default_factory=dict)


class _Low:
    """The lowest of a source's per-key progress, and how many keys are at it: a key
    moving up from the lowest recounts only when it was the last one there, so a tick's
    progress over ``n`` keys costs O(n), not O(n^2).

    >>> seen = {"a": 1, "b": 1}
    >>> low = _Low(seen)
    >>> seen["a"] = 2; low.move(1, seen); low.ts
    1
    >>> seen["b"] = 3; low.move(1, seen); low.ts
    2
    """

    __slots__ = ("at", "ts")

    def __init__(self, seen: dict[str, int]) -> None:
        self._count(seen)

    def _count(self, seen: dict[str, int]) -> None:
        self.ts = min(seen.values())
        self.at = sum(1 for v in seen.values() if v == self.ts)

    def add(self, ts: int) -> None:
        """A key joined at ``ts``."""
        if ts < self.ts:
            self.ts, self.at = ts, 1
        elif ts == self.ts:
            self.at += 1

    def move(self, old: int, seen: dict[str, int]) -> None:
        """A key moved up from ``old`` (``seen`` holds its new ts)."""
        if old == self.ts:
            self.at -= 1
            if self.at == 0:
                self._count(seen)


class FirmLogic:
    """Stage 3: latest exposure per counterparty -> concentration + firm rollup.

    Each rollup is an exact re-sum over every counterparty in name order (no running
    sums, no drift, the same whatever order they arrived in), done with C-level loops;
    per-counterparty Python work is only for the updated ones and those whose share moved
    by more than ``concentration_epsilon`` or crossed one of its ``concentration_levels``
    (the shares its concentration limit changes level at, from the limits' config), so a
    quiet counterparty pushed past its limit by others' small moves is re-sent.
    """

    def __init__(self, config: ExposureConfig, state: FirmState | None = None, *,
                 ticked: bool = False,
                 concentration_levels: Mapping[str, Sequence[float]] | None = None) -> None:
        self.config = config
        self.ticked = ticked
        # counterparty -> shares its concentration limit changes level at (config-sized)
        self._levels = {cp: tuple(v) for cp, v in (concentration_levels or {}).items() if v}
        self.state = state if state is not None else FirmState()
        # derived from state, in counterparty name order: names, latest exposures, the
        # concentration basis and the share last emitted
        st = self.state
        self._names = sorted(st.latest)
        self._exps = [st.latest[cp] for cp in self._names]
        self._at = {cp: k for k, cp in enumerate(self._names)}
        self._basis_v = np.array([self._basis(e) for e in self._exps], dtype=float)
        self._shares = np.array([st.shares.get(cp, 0.0) for cp in self._names], dtype=float)
        # the firm's vols and their times as exposures carry them (derived from state)
        self._vols, self._vol_ts = _vol_dicts(st.vols)
        # the counterparties whose latest exposure carries a largest float (derived)
        self._saturated = {cp for cp, e in st.latest.items() if saturated_exposure(e)}
        # per progress source: the lowest ts over its stage-2 keys (derived from state)
        self._lows: dict[str, _Low] = {}
        # progress sources a restored snapshot names may belong to processes that are gone
        # (a restart names its sources afresh): forgotten once sources outnumber the count
        self._restored = RestoredSources(st.progress) if state is not None else None

    def snapshot(self) -> FirmState:
        """An independent copy, field by field (exposures are immutable: shared)."""
        st = self.state
        return copy_fields(st, latest=dict(st.latest), shares=dict(st.shares),
                           progress={k: dict(v) for k, v in st.progress.items()},
                           passed=dict(st.passed), reached=dict(st.reached),
                           vols=dict(st.vols))

    def on_event(self, e: Exposure) -> list[Exposure]:
        return self.on_batch([e])

    def _basis(self, e: Exposure) -> float:
        b = self.config.concentration_basis
        if b == "gross_notional":
            return e.gross_notional
        if b == "collateral":
            return max(e.collateral, 0.0)
        return e.gross_notional + max(e.collateral, 0.0)

    def on_batch(self, items: Iterable[Exposure]) -> list[Any]:
        if not self.ticked:
            return self._batch(items)
        exps, progress = split_progress(list(items))
        out: list[Any] = _per_tick(self._batch, exps) if exps else []
        if progress:
            out.extend(self._progress(progress))
        if len(self.state.reached) < len(self._names) + 1:
            out.extend(self._reach_new_keys())
        return out

    def _reach_new_keys(self) -> list[Progress]:
        """A counterparty's first exposure makes a new limits key: it hears every
        source's progress at once, behind that exposure, so a consumer waiting for its
        ticks (the tick count ``of`` announced it) waits one hop, not a tick interval."""
        st = self.state
        keys = ["*", *self._names]
        new = [k for k in keys if k not in st.reached]
        st.reached.update(dict.fromkeys(new))
        return self._to_limits_keys(new, st.passed, len(keys))

    def _progress(self, items: list[Progress]) -> list[Progress]:
        """Each source's progress once every stage-2 key it reaches has passed it (the
        minimum over them), to every limits key: each counterparty with an exposure, and
        the firm's (``"*"``)."""
        st = self.state
        moved: dict[str, int] = {}
        restored = self._restored
        for p in items:
            if restored is not None:
                restored.renew(p.source)
            seen = st.progress.get(p.source)
            if seen is None:
                # the source's PROGRESS_KEY copy names (``via``) every stage-2 key to wait
                # for: until it comes, one key's copy (from another worker) passes nothing
                seen = st.progress[p.source] = {PROGRESS_KEY: -1}
                if restored is not None:
                    self._retire_restored(restored)
            low = self._lows.get(p.source) or self._lows.setdefault(p.source, _Low(seen))
            for cp in p.via:  # a counterparty joined: hold for its copy
                if cp not in seen:
                    seen[cp] = -1
                    low.add(-1)
            old = seen.get(p.counterparty)
            if p.ts > (-1 if old is None else old):
                seen[p.counterparty] = p.ts
                if old is None:
                    low.add(p.ts)
                else:
                    low.move(old, seen)
                if low.ts > st.passed.get(p.source, -1):
                    st.passed[p.source] = moved[p.source] = low.ts
        st.sources_of = max(st.sources_of, *(p.of for p in items))
        if not moved:
            return []
        keys = ["*", *self._names]
        n_keys = len(keys)
        if len(st.reached) < n_keys:
            # a key not reached yet hears every source's progress, not only the ones that
            # moved now (_reach_new_keys): a source that has finished moves no more
            keys = [k for k in keys if k in st.reached]
        return self._to_limits_keys(keys, moved, n_keys)

    def _retire_restored(self, restored: RestoredSources) -> None:
        """A new source spoke: the restored ones that have not spoken are forgotten once
        the sources outnumber the count the progress announces."""
        old = restored.old
        if restored.retire(self.state.progress, self.state.sources_of):
            for gone in old:
                self.state.passed.pop(gone, None)
                self._lows.pop(gone, None)
            self._restored = None

    def _to_limits_keys(self, keys: list[str], at: dict[str, int],
                        n_keys: int) -> list[Progress]:
        """Each source's progress ``at`` to each of ``keys``, announcing every source on
        each of the ``n_keys`` limits keys."""
        per_key = self.state.sources_of
        of = per_key * n_keys
        return [Progress(counterparty=k, ts=ts, source=src, of=of, key_of=per_key)
                for k in keys for src, ts in at.items()]

    def _store(self, e: Exposure) -> None:
        """``e`` is ``cp``'s latest: in the state and in the name-ordered layout."""
        cp = e.counterparty
        self.state.latest[cp] = e
        if saturated_exposure(e):
            self._saturated.add(cp)
        else:
            self._saturated.discard(cp)
        k = self._at.get(cp)
        if k is None:  # a new counterparty: insert it in name order
            k = bisect_right(self._names, cp)
            self._names.insert(k, cp)
            self._exps.insert(k, e)
            self._at = {c: n for n, c in enumerate(self._names)}
            self._basis_v = np.insert(self._basis_v, k, self._basis(e))
            self._shares = np.insert(self._shares, k, 0.0)
        else:
            self._exps[k] = e
            self._basis_v[k] = self._basis(e)

    def _take_vols(self, updated: Iterable[str]) -> None:
        """The updated exposures' vols into the firm's: per underlying the newest by its
        own event time (on a tie, the higher), whichever counterparty brings it, so the
        firm's vols do not depend on which parts carried them (one worker's shard or a
        market process's). A vol without its time is as old as its exposure."""
        vols = self.state.vols
        moved = False
        for cp in updated:
            e = self.state.latest[cp]
            if not e.vol_by_underlying:
                continue
            times = e.vol_ts_by_underlying
            for k, v in e.vol_by_underlying.items():
                t = times.get(k, e.ts)
                cur = vols.get(k)
                if cur is None or (t, v) > (cur[1], cur[0]):
                    vols[k] = (v, t)
                    moved = True
        if moved:
            self._vols, self._vol_ts = _vol_dicts(vols)

    def _shares_of(self, basis: Any, total: float) -> Any:
        """Each counterparty's share of the firm's basis. Finite bases are scaled by the
        largest first, so their sum cannot overflow. A basis that is no number makes its
        counterparty's share 1.0 (all of it, as far as is known) and holds every other
        share at its last: never a finite 0 read as within a limit."""
        if math.isfinite(total):
            return basis / total if total > 0 else np.zeros(len(basis))
        if np.isfinite(basis).all():  # the sum overflowed
            scaled = basis / float(np.max(np.abs(basis)))
            part = float(np.add.reduce(scaled))
            return scaled / part if part > 0.0 else np.zeros(len(basis))
        return np.where(np.isfinite(basis), self._shares, 1.0)

    def _batch(self, items: Iterable[Exposure]) -> list[Exposure]:
        updated = self._store_newer(items)
        if not updated:
            return []
        self._take_vols(updated)
        ts = max(0, *map(attrgetter("ts"), self._exps))
        out = self._concentrations(updated, ts)
        out.append(self._firm(updated, ts))
        return out

    def _store_newer(self, items: Iterable[Exposure]) -> dict[str, None]:
        """Store each exposure newer than the one held; the counterparties updated, in
        first-update order (the evidence order)."""
        latest = self.state.latest
        updated: dict[str, None] = {}
        for e in items:
            old = latest.get(e.counterparty)
            if old is not None and old.seq >= e.seq:
                continue
            self._store(e)
            updated[e.counterparty] = None
        return updated

    def _concentrations(self, updated: dict[str, None], ts: int) -> list[Exposure]:
        """The exposures to send with their new share: every updated counterparty's, and
        another's whose share moved past ``concentration_epsilon`` or crossed one of its
        levels (as of ``ts``, the firm's time)."""
        st, exps = self.state, self._exps
        with np.errstate(over="ignore"):  # an overflowing sum is handled by _shares_of
            total = float(np.add.reduce(self._basis_v))
        shares = self._shares_of(self._basis_v, total)
        emit = np.abs(shares - self._shares) > self.config.concentration_epsilon
        at = self._at
        emit[[at[cp] for cp in updated]] = True
        for cp, levels in self._levels.items():
            k = at.get(cp)
            if k is not None and not emit[k] and _crosses(self._shares[k], shares[k], levels):
                emit[k] = True
        out: list[Exposure] = []
        for k in np.flatnonzero(emit).tolist():
            share = float(shares[k])
            self._shares[k] = share
            name = self._names[k]
            st.shares[name] = share
            # an exposure re-emitted because others moved its share is as of now
            out.append(msgspec.structs.replace(
                exps[k], concentration=share, vol_by_underlying=self._vols,
                vol_ts_by_underlying=self._vol_ts, ts=exps[k].ts if name in updated else ts))
        return out

    def _firm(self, updated: dict[str, None], ts: int) -> Exposure:
        """The firm-wide rollup: every counterparty's latest summed, as of ``ts``
        (amounts at the largest float added up as infinities: opposite ones make no
        number, the largest, never 0)."""
        st, exps = self.state, self._exps
        summed = list(map(restored_exposure, exps)) if self._saturated else exps

        def add_up(field: str) -> float:
            return reduce(add, map(attrgetter(field), summed), 0.0)

        def union(field: str) -> list[str]:
            return sorted(set(chain.from_iterable(map(attrgetter(field), exps))))

        # every by-asset dict is its delta dict (linear books): the same sums, done once
        deltas = list(map(attrgetter("delta_by_underlying"), summed))
        assets = list(map(attrgetter("notional_by_asset"), summed))
        delta = sum_dicts(deltas)
        by_asset = dict(delta) if all(map(is_, assets, deltas)) else sum_dicts(assets)
        stale = union("stale_instruments")
        evidence = [rid for cp in updated for rid in st.latest[cp].evidence_ids]
        st.seq += 1
        st.firm = in_range(Exposure(
            counterparty="*", ts=ts, gross_notional=add_up("gross_notional"),
            net_notional=add_up("net_notional"), delta_by_underlying=delta,
            notional_by_asset=by_asset, collateral=add_up("collateral"),
            unrealized_pnl=add_up("unrealized_pnl"),
            open_order_notional=add_up("open_order_notional"),
            concentration=max(st.shares.values(), default=0.0), stale=bool(stale),
            stale_instruments=stale, evidence_ids=evidence[-self.config.max_evidence:],
            seq=st.seq, vol_by_underlying=self._vols, vol_ts_by_underlying=self._vol_ts,
            unvalued_instruments=union("unvalued_instruments"),
            unvalued_collateral=union("unvalued_collateral"),
        ))
        return st.firm


def _crosses(old: float, new: float, levels: tuple[float, ...]) -> bool:
    """Does a share moving from ``old`` to ``new`` cross any of ``levels``?

    >>> _crosses(0.598, 0.603, (0.6,)), _crosses(0.61, 0.62, (0.6,))
    (True, False)
    """
    return any((old < x) != (new < x) for x in levels)


def _vol_dicts(vols: dict[str, tuple[float, int]]) -> tuple[dict[str, float], dict[str, int]]:
    """The firm's vols and their times in underlying order, as exposures carry them (one
    pair of dicts shared by every exposure until a vol moves: never mutated)."""
    ordered = sorted(vols.items())
    return {k: v for k, (v, _t) in ordered}, {k: t for k, (_v, t) in ordered}
