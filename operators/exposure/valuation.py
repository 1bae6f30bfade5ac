"""Stage-1 valuation: each moved counterparty re-valued (whole-array, or in Python for
a small book) into one :class:`Part`; the marks it values at, and their realized vols,
are applied in :mod:`~riskguard.operators.exposure.marks`."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, compress, pairwise
from typing import Any, NamedTuple

import numpy as np
from riskguard.operators.core.dedup import IdWindow
from riskguard.operators.exposure.arrays import row_reduce, seq_sum
from riskguard.operators.exposure.config import ExposureConfig, alert_id
from riskguard.operators.exposure.instruments import (
    InstrumentRegistry,
    InstrumentSpec,
)
from riskguard.operators.exposure.limit_specs import LimitSpec
from riskguard.operators.exposure.marks import ShardMarks
from riskguard.operators.exposure.routing import ShardPlace, shard_key
from riskguard.operators.exposure.saturation import bounded_part
from riskguard.operators.exposure.shard_state import GRIDS, Pending, ShardState
from riskguard.schemas import (
    LimitLevel,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)
from riskguard.schemas.valuation import Part

from riskguard.errors import ConfigError

NEVER_STALE = 2**62
LEVEL_RANK = {LimitLevel.OK: 0, LimitLevel.WARN: 1, LimitLevel.BREACH: 2}
# A book of at most this many cells, no row holding more than _SEQ_SUM_MAX, is re-valued
# in Python: for a few positions numpy's per-call overhead dominates. The bits are the
# same: numpy sums a segment of up to 8 terms in order, and bincount from 0.0 in order.
_SMALL_CELLS = 64
_SEQ_SUM_MAX = 8


@dataclass
class _Layout:
    """Where a shard's open positions are (derived, not state): rebuilt only when a
    position opens or closes."""

    active: Any  # bool, rows x columns: a position or open orders in the cell
    r: Any  # row of each open position, row-major
    c: Any  # its column
    flat: Any  # its index in the row-major grid
    bounds: Any  # row r's positions are [bounds[r], bounds[r + 1])
    names: list[list[str]]  # per row, its positions' instrument names (shared by parts)
    mult: Any  # each position's contract multiplier
    und: Any  # row * underlyings + its underlying's code (the delta bincount's bins)
    held_u: Any  # bool, rows x underlyings: the row holds that underlying
    held_cols: Any  # the columns anyone holds
    # a small book, re-valued in Python: each row's columns, and each held column's rows
    row_cols: list[list[int]] | None = None
    col_rows: dict[int, list[int]] | None = None


class _Valued(NamedTuple):
    """One re-valuation's per-row results (either core), for :meth:`ShardLogic._parts`."""

    rows: list[int]
    gross: list[float]
    net: list[float]
    upnl: list[float]
    orders: list[float]
    delta: list[dict[str, float]]
    by_asset: list[dict[str, float]]
    names: list[list[str]]
    notionals: list[list[float]]
    mark_ts: list[bytes]
    oldest: list[int]
    ts: list[int]
    unvalued: list[list[str]]
    evidence: list[list[str]]


class ShardValuation(ShardMarks):
    """The re-valuation of a stage-1 shard: the half of
    :class:`~riskguard.operators.exposure.shards.ShardLogic` that turns its state into
    :class:`Part` sums, with the per-instrument caches it derives from config and state
    (a mixin: ``config``, ``reg``, ``state`` and ``place`` are ShardLogic's; its marks
    are :class:`~riskguard.operators.exposure.marks.ShardMarks`)."""

    config: ExposureConfig
    reg: InstrumentRegistry
    state: ShardState
    place: ShardPlace | None

    def _derive(self) -> None:
        """Per-instrument constants and caches derived from config + state (not state)."""
        st = self.state
        reg = self.reg
        specs = [reg.get(i) for i in st.insts]
        if any(s is None for s in specs):
            missing = [i for i, s in zip(st.insts, specs, strict=True) if s is None]
            where = "exposure.instruments"
            raise ConfigError(where, "every instrument held in a resumed snapshot",
                              ", ".join(missing))
        sp: list[InstrumentSpec] = [s for s in specs if s is not None]
        self._col = {name: j for j, name in enumerate(st.insts)}
        self._names = np.array(st.insts, dtype=object)
        self._mult = np.array([s.multiplier for s in sp], dtype=float)
        self._is_opt_list = [s.kind == "option" for s in sp]
        self._is_opt = np.array(self._is_opt_list, dtype=bool)
        self._quote = [s.quote for s in sp]
        self._uccy = [s.underlying_ccy for s in sp]
        und = [s.underlying_asset for s in sp]
        asset = [s.underlying_asset if s.kind == "option" else s.base for s in sp]
        self._und_names = sorted(set(und))
        self._asset_names = sorted(set(asset))
        ux = {u: k for k, u in enumerate(self._und_names)}
        ax = {a: k for k, a in enumerate(self._asset_names)}
        self._und_code = np.array([ux[u] for u in und], dtype=np.int64)
        self._asset_code = np.array([ax[a] for a in asset], dtype=np.int64)
        # the same as Python lists, for the small-book re-valuation
        self._mult_l = self._mult.tolist()
        self._und_code_l = self._und_code.tolist()
        self._asset_code_l = self._asset_code.tolist()
        # no options and asset == underlying everywhere: notional by asset is the delta
        self._asset_is_delta = not any(self._is_opt_list) and asset == und
        needing: dict[str, list[int]] = {}
        for j, s in enumerate(sp):
            for ccy in {s.quote, s.underlying_ccy}:
                if ccy != reg.reporting:
                    needing.setdefault(ccy, []).append(j)
        self._needing = needing
        cfg = self.config
        self._peg_here = frozenset(a for a in cfg.pegs if self._here("a:" + a))
        w = cfg.peg_warn_bps / cfg.peg_critical_bps
        self._peg_spec = LimitSpec(limit=1.0, warn=w, hysteresis=w / 2)
        self._row = {cp: i for i, cp in enumerate(st.cps)}
        self._seen = [IdWindow(ids, cfg.dedup_window) for ids in st.seen]  # fill ids
        self._any_orders = bool(st.orders.any())  # else open-order sums are skipped
        self._lay: _Layout | None = None
        self._refresh_fx()
        self._ready = True

    def _here(self, name: str) -> bool:
        """Is ``name`` (``i:<instrument>``, ``a:<asset>``) held by this shard?"""
        n = self.config.valuation_shards
        place = self.place
        if place is None:
            return shard_key(name, n) == self.state.key
        return place.key(name, n) == self.state.key and place.owns(name)

    def _refresh_fx(self) -> None:
        fx = self.state.fx
        rep = self.reg.reporting

        def rate(ccy: str) -> float:
            if ccy == rep:
                return 1.0
            cur = fx.get(ccy)
            return math.nan if cur is None else cur[0]

        self._fxq = np.array([rate(c) for c in self._quote], dtype=float)
        self._fxu = np.array([rate(c) for c in self._uccy], dtype=float)

    def _row_of(self, cp: str) -> int:
        i = self._row.get(cp)
        if i is not None:
            return i
        st = self.state
        i = self._row[cp] = len(st.cps)
        st.cps.append(cp)
        self._lay = None
        if i >= st.qty.shape[0]:
            cap = max(8, 2 * st.qty.shape[0])
            k = len(st.insts)
            for name, (dt, fill) in GRIDS.items():
                old = getattr(st, name)
                grid = np.full((cap, k), fill, dtype=dt)
                grid[: old.shape[0]] = old
                setattr(st, name, grid)
        return i

    def _layout(self) -> _Layout:
        """The open positions' layout, rebuilt after a position opened or closed."""
        lay = self._lay
        if lay is not None:
            return lay
        st = self.state
        n, k = len(st.cps), len(st.insts)
        active = (st.qty[:n] != 0.0) | (st.orders[:n] != 0.0)
        flat = np.flatnonzero(active)
        counts = np.count_nonzero(active, axis=1)
        r = np.repeat(np.arange(n), counts)  # row-major: each row's cells in one run
        c = flat - r * k
        bounds = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        names_all = self._names[c].tolist()
        b = bounds.tolist()
        names = [names_all[lo:hi] for lo, hi in pairwise(b)]
        n_u = len(self._und_names)
        und = r * n_u + self._und_code[c]
        held_u = np.bincount(und, None, n * n_u).reshape(n, n_u) > 0
        self._lay = lay = _Layout(active, r, c, flat, bounds, names, self._mult[c], und,
                                  held_u, np.flatnonzero(active.any(axis=0)))
        if len(flat) <= _SMALL_CELLS and int(counts.max(initial=0)) <= _SEQ_SUM_MAX:
            c_l = c.tolist()
            lay.row_cols = [c_l[lo:hi] for lo, hi in pairwise(b)]
            lay.col_rows = {}
            for row, cols in enumerate(lay.row_cols):
                for col in cols:
                    lay.col_rows.setdefault(col, []).append(row)
        return lay

    def _opened_or_closed(self, old: float, new: float) -> None:
        """A cell's quantity (or open orders) went from ``old`` to ``new``: when one of
        them is zero and the other is not, the layout is rebuilt at the next re-valuation."""
        if (old == 0.0) is not (new == 0.0):
            self._lay = None

    def _missing_alerts(self, bad: list[int], good: Any, active_all: Any,
                        touched_cols: dict[int, tuple[str, int]],
                        changed: dict[int, str]) -> list[Any]:
        """``missing_mark`` / ``missing_fx`` once per instrument until it is valued again.

        ``bad``: columns re-valued or touched in this batch that cannot be valued;
        ``good``: mask of those that were valued (their alert latch is cleared).
        """
        st = self.state
        out: list[Any] = []
        if st.alerted:
            for name in [nm for nm in st.alerted if nm in self._col and good[self._col[nm]]]:
                del st.alerted[name]
        for j in bad:
            name = st.insts[j]
            if mark_missing := math.isnan(st.mark[j]):
                kind, why = "missing_mark", f"no mark yet for {name}"
            else:
                fxq = self._fxq[j]
                ccy = self._quote[j] if math.isnan(fxq) else self._uccy[j]
                kind, why = "missing_fx", f"no FX rate {ccy}->{self.reg.reporting} for {name}"
            seen = st.alerted.setdefault(name, {})
            slot = "mark" if mark_missing else "fx"
            if seen.get(slot) == kind:
                continue
            seen[slot] = kind
            hit = touched_cols.get(j)
            if hit is not None:
                rid, row = hit
            else:
                rid, row = changed.get(j) or st.mark_id[j], int(np.argmax(active_all[:, j]))
            cp = st.cps[row]
            reason = (f"{why}; position of {cp} is unvalued" if mark_missing else why)
            out.append(RiskAlert(
                id=alert_id(kind, name, cp, rid), kind=kind,
                scope=Scope(kind=ScopeKind.INSTRUMENT, value=name), ts=int(st.last_ts[j]),
                severity=Severity.WARN, reason=reason,
                details={"counterparty": cp}, evidence_ids=[rid],
            ))
        return out

    def _collateral(self, cp: str) -> tuple[float, list[str], int, list[Any]]:
        """``(value, unvalued assets, newest ts, alerts)`` of ``cp``'s balances here."""
        st = self.state
        value = 0.0
        unvalued: list[str] = []
        ts = 0
        alerts: list[Any] = []
        rep = self.reg.reporting
        for asset, held in st.balances.items():
            cur = held.get(cp)
            if cur is None:
                continue
            ts = max(ts, st.asset_ts.get(asset, 0))
            fx = (1.0, -1) if asset == rep else st.fx.get(asset)
            key = "a:" + asset
            if fx is None:
                unvalued.append(asset)
                seen = st.alerted.setdefault(key, {})
                if seen.get("fx") != "missing_fx":
                    seen["fx"] = "missing_fx"
                    alerts.append(RiskAlert(
                        id=alert_id("missing_fx", asset, cp, cur[1]), kind="missing_fx",
                        scope=Scope(kind=ScopeKind.INSTRUMENT, value=asset),
                        ts=st.asset_ts.get(asset, 0), severity=Severity.WARN,
                        reason=f"no FX rate {asset}->{rep} for collateral",
                        details={"counterparty": cp}, evidence_ids=[str(cur[1])],
                    ))
            else:
                st.alerted.pop(key, None)
                value += cur[0] * fx[0]
        return value, unvalued, ts, alerts

    def _revalue(self, out: list[Any], acc: Pending, recv_ts: int | None,
                 ts: int | None = None) -> list[Any]:
        """One :class:`Part` per counterparty whose value ``acc`` says may have moved
        (stamped ``ts`` when given: the tick that re-valued it)."""
        if not self.state.cps:
            return out
        lay = self._layout()
        core = self._revalue_small if lay.row_cols is not None else self._revalue_whole
        valued = core(out, acc, lay)
        if valued is None:
            return out
        return self._parts(out, acc, lay, valued, recv_ts, ts)

    def _revalue_whole(self, out: list[Any], acc: Pending, lay: _Layout) -> _Valued | None:
        """The rows ``acc`` moved, valued with whole-array operations (any book); missing
        mark and FX alerts go to ``out``. None: no row moved."""
        changed = acc.changed
        st = self.state
        mark = st.mark
        fxq, fxu = self._fxq, self._fxu
        valued = ~(np.isnan(mark) | np.isnan(fxq) | np.isnan(fxu))
        dirty, jc = self._dirty_rows(out, acc, lay, valued)
        rows = np.flatnonzero(dirty)
        if not len(rows):
            return None
        opt = self._is_opt
        und_px = st.und_price
        nf = np.where(valued, np.where(opt, und_px * fxu, mark * fxq), 0.0)
        df = np.where(valued, np.where(opt, st.opt_delta * und_px * fxu, nf), 0.0)
        fx_v = np.where(valued, fxq, 0.0)
        mark_v = np.where(valued, mark, 0.0)
        m = len(rows)
        rows_l = rows.tolist()
        g = lay if m == len(st.cps) else self._dirty_layout(lay, dirty, rows, rows_l)
        act, r_i, c_i, flat, bounds_a = g.active, g.r, g.c, g.flat, g.bounds
        names_rows = g.names
        qm = st.qty.ravel()[flat] * g.mult
        notional = qm * nf[c_i]
        upnl = qm * (mark_v[c_i] - st.avg.ravel()[flat]) * fx_v[c_i]
        # no average entry price (nan): no unrealized PnL for that position
        upnl[np.isnan(upnl)] = 0.0
        # each row's positions are one run (row-major): a segmented sum, far cheaper than a bincount
        gross = row_reduce(np.add, np.abs(notional), bounds_a, 0.0)
        net = row_reduce(np.add, notional, bounds_a, 0.0)
        upnl_s = row_reduce(np.add, upnl, bounds_a, 0.0)
        ord_s = (row_reduce(np.add, st.orders.ravel()[flat] * fx_v[c_i], bounds_a, 0.0)
                 if self._any_orders else [0.0] * m)
        ds, as_ = self._row_dicts(g, qm * df[c_i], notional, m)
        mts_c = np.where(valued, st.mark_ts, NEVER_STALE)[c_i]
        not_all = notional.tolist()
        # parts carry packed little-endian int64s, not per-position int objects
        mts_b = mts_c.astype("<i8", copy=False).tobytes()
        bounds = bounds_a.tolist()
        ts_rows = row_reduce(np.maximum, st.last_ts[c_i], bounds_a, 0)
        oldest_rows = row_reduce(np.minimum, mts_c, bounds_a, NEVER_STALE)
        any_unvalued = (act & ~valued).any(axis=1).tolist()
        spans = list(pairwise(bounds))
        not_rows = [not_all[lo:hi] for lo, hi in spans]
        mts_rows = [mts_b[8 * lo:8 * hi] for lo, hi in spans]
        evid = (self._row_evidence(changed, jc, c_i, r_i, bounds_a) if len(jc)
                else [[] for _ in rows_l])
        unvalued: list[list[str]] = [[] for _ in rows_l]
        if any(any_unvalued):
            valued_l = valued.tolist()
            c_l = c_i.tolist()
            for k, (lo, hi) in enumerate(spans):
                if any_unvalued[k]:
                    unvalued[k] = [nm for nm, c in zip(names_rows[k], c_l[lo:hi], strict=True)
                                   if not valued_l[c]]
        return _Valued(rows_l, gross, net, upnl_s, ord_s, ds, as_, names_rows, not_rows,
                       mts_rows, oldest_rows, ts_rows, unvalued, evid)

    def _dirty_layout(self, lay: _Layout, dirty: np.ndarray, rows: np.ndarray,
                      rows_l: list[int]) -> _Layout:
        """The layout's gathers for the dirty rows only, row-major (a few thousand cells
        rather than the whole counterparty x instrument grid)."""
        m = len(rows_l)
        pick = np.flatnonzero(dirty[lay.r])
        c_i = lay.c[pick]
        r_i = (np.cumsum(dirty) - 1)[lay.r[pick]]
        bounds_a = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.diff(lay.bounds)[rows], out=bounds_a[1:])
        return _Layout(active=lay.active[rows], r=r_i, c=c_i, flat=lay.flat[pick],
                       bounds=bounds_a, names=[lay.names[i] for i in rows_l],
                       mult=lay.mult[pick], und=r_i * len(self._und_names) + self._und_code[c_i],
                       held_u=lay.held_u[rows], held_cols=lay.held_cols)

    def _row_dicts(self, g: _Layout, delta: np.ndarray, notional: np.ndarray, m: int
                   ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        """Per row, its delta by underlying and its notional by asset, over what it holds
        (the same dicts when each asset is its own underlying: parts and exposures never
        mutate them, so sharing is safe)."""
        und_names = self._und_names
        n_u = len(und_names)
        d_u: Any = np.bincount(g.und, delta, m * n_u).reshape(m, n_u).tolist()
        held_all_u: Any = g.held_u.all(axis=1).tolist()
        ds = [dict(zip(und_names, row, strict=True)) if full
              else dict(compress(zip(und_names, row, strict=True), held))
              for row, full, held in zip(d_u, held_all_u, g.held_u.tolist(), strict=True)]
        if self._asset_is_delta:
            return ds, ds
        names = self._asset_names
        n_a = len(names)
        ag = g.r * n_a + self._asset_code[g.c]
        d_a: Any = np.bincount(ag, notional, m * n_a).reshape(m, n_a).tolist()
        held_a = np.bincount(ag, None, m * n_a).reshape(m, n_a) > 0
        held_all_a: Any = held_a.all(axis=1).tolist()
        return ds, [dict(zip(names, row, strict=True)) if full
                    else dict(compress(zip(names, row, strict=True), held))
                    for row, full, held in zip(d_a, held_all_a, held_a.tolist(), strict=True)]

    def _dirty_rows(self, out: list[Any], acc: Pending, lay: _Layout, valued: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``acc`` moved (a mask over the counterparties) and the columns whose
        marks changed; a missing mark or FX rate of a column it moved is alerted in
        ``out`` (and one valued again is cleared)."""
        changed, touched = acc.changed, acc.touched
        touched_cols, coll_dirty = acc.touched_cols, acc.coll_dirty
        st = self.state
        dirty = np.zeros(len(st.cps), dtype=bool)
        jc = np.fromiter(changed, dtype=np.int64, count=len(changed))
        held_jc = lay.active[:, jc] if len(jc) else None
        if held_jc is not None:
            dirty |= held_jc.any(axis=1)
        if touched:
            dirty[list(touched)] = True
        if coll_dirty:
            dirty[list(coll_dirty)] = True
        if touched_cols or changed:
            cand = np.zeros(len(st.insts), dtype=bool)
            if held_jc is not None:
                cand[jc] = held_jc.any(axis=0)
            if touched_cols:
                cand[list(touched_cols)] = True
            bad = np.flatnonzero(cand & ~valued).tolist()
            if bad or st.alerted:
                out.extend(self._missing_alerts(bad, cand & valued, lay.active, touched_cols,
                                                changed))
        return dirty, jc

    def _row_evidence(self, changed: dict[int, str], jc: np.ndarray, c_i: np.ndarray,
                      r_i: np.ndarray, bounds_a: np.ndarray) -> list[list[str]]:
        """Per row, the ids of the newest ``max_evidence`` records that re-valued it."""
        n_insts = len(self.state.insts)
        cap = self.config.max_evidence
        cmask = np.zeros(n_insts, dtype=bool)
        cmask[jc] = True
        trig = np.empty(n_insts, dtype=object)
        trig[jc] = list(changed.values())
        flagged = np.flatnonzero(cmask[c_i])
        ends = np.searchsorted(flagged, bounds_a[1:])[r_i[flagged]]
        kept = flagged[ends - np.arange(len(flagged)) <= cap]
        cc_all = trig[c_i[kept]].tolist()
        cbounds: Any = np.searchsorted(kept, bounds_a).tolist()
        return [cc_all[lo:hi] for lo, hi in pairwise(cbounds)]

    def _revalue_small(self, out: list[Any], acc: Pending, lay: _Layout) -> _Valued | None:
        """:meth:`_revalue_whole` for a small book (``lay.row_cols``), in Python: the same
        values, bit for bit (see :data:`_SMALL_CELLS`)."""
        changed, touched = acc.changed, acc.touched
        touched_cols, coll_dirty = acc.touched_cols, acc.coll_dirty
        st = self.state
        row_cols, col_rows = lay.row_cols, lay.col_rows
        assert row_cols is not None and col_rows is not None  # a small layout
        held_changed = [j for j in changed if j in col_rows]
        dirty = set(touched)
        dirty.update(coll_dirty)
        for j in held_changed:
            dirty.update(col_rows[j])
        rows = sorted(dirty)
        cand = dict.fromkeys(held_changed)
        cand.update(dict.fromkeys(touched_cols))
        col = self._small_columns(chain.from_iterable([row_cols[i] for i in rows]
                                                      + [list(cand)]))
        if cand:
            bad = sorted(j for j in cand if not col[j][0])
            if bad or st.alerted:
                good = np.zeros(len(st.insts), dtype=bool)
                good[[j for j in cand if col[j][0]]] = True
                out.extend(self._missing_alerts(bad, good, lay.active, touched_cols, changed))
        if not rows:
            return None
        v = _Valued(rows, [], [], [], [], [], [], [], [], [], [], [], [], [])
        for i in rows:
            self._value_small_row(v, i, row_cols[i], lay.names[i], col, changed)
        return v

    def _small_columns(self, cols: Iterable[int]
                       ) -> dict[int, tuple[bool, float, float, float, float, int]]:
        """Per column: (valued, notional factor, delta factor, fx, mark, mark time)."""
        st = self.state
        mark, mark_ts, fxq, fxu = st.mark, st.mark_ts, self._fxq, self._fxu
        opt, und_px, opt_delta = self._is_opt_list, st.und_price, st.opt_delta
        col: dict[int, tuple[bool, float, float, float, float, int]] = {}
        isnan = math.isnan
        for j in cols:
            if j in col:
                continue
            mk, q, u = mark.item(j), fxq.item(j), fxu.item(j)
            if isnan(mk) or isnan(q) or isnan(u):  # no mark or no FX rate
                col[j] = (False, 0.0, 0.0, 0.0, 0.0, NEVER_STALE)
            elif opt[j]:
                up = und_px.item(j)
                col[j] = (True, up * u, opt_delta.item(j) * up * u, q, mk, mark_ts.item(j))
            else:
                nf = mk * q
                col[j] = (True, nf, nf, q, mk, mark_ts.item(j))
        return col

    def _value_small_row(self, v: _Valued, i: int, cols: list[int], names: list[str],
                         col: dict[int, tuple[bool, float, float, float, float, int]],
                         changed: dict[int, str]) -> None:
        """Row ``i`` of a small book valued, its results appended to ``v``."""
        st = self.state
        qty, avg, orders = st.qty, st.avg, st.orders
        any_orders = self._any_orders
        mult, und_code, asset_code = self._mult_l, self._und_code_l, self._asset_code_l
        same = self._asset_is_delta
        isnan = math.isnan
        nots: list[float] = []
        ups: list[float] = []
        ords: list[float] = []
        mts: list[int] = []
        du: dict[int, float] = {}
        da: dict[int, float] = {}
        unvalued: list[str] = []
        for c, name in zip(cols, names, strict=True):
            ok, nf, df, fxv, mv, mt = col[c]
            qm = qty.item(i, c) * mult[c]
            nt = qm * nf
            up = qm * (mv - avg.item(i, c)) * fxv
            nots.append(nt)
            ups.append(0.0 if isnan(up) else up)  # no average entry price: no PnL
            if any_orders:
                ords.append(orders.item(i, c) * fxv)
            mts.append(mt)
            u = und_code[c]
            du[u] = du.get(u, 0.0) + qm * df
            if not same:
                a = asset_code[c]
                da[a] = da.get(a, 0.0) + nt
            if not ok:
                unvalued.append(name)
        v.gross.append(seq_sum([abs(x) for x in nots]))
        v.net.append(seq_sum(nots))
        v.upnl.append(seq_sum(ups))
        v.orders.append(seq_sum(ords))
        und_names = self._und_names
        d = {und_names[u]: du[u] for u in sorted(du)}
        v.delta.append(d)
        v.by_asset.append(d if same else {self._asset_names[a]: da[a] for a in sorted(da)})
        v.names.append(names)
        v.notionals.append(nots)
        v.mark_ts.append(struct.pack(f"<{len(mts)}q", *mts))
        v.oldest.append(min(mts, default=NEVER_STALE))
        last_ts = st.last_ts
        v.ts.append(max((last_ts.item(c) for c in cols), default=0))
        v.unvalued.append(unvalued)
        v.evidence.append([changed[c] for c in cols if c in changed][-self.config.max_evidence:])

    def _parts(self, out: list[Any], acc: Pending, lay: _Layout, v: _Valued,
               recv_ts: int | None, ts: int | None) -> list[Any]:
        """The rows' parts from their values: own records and collateral added to each
        row's evidence and time, stamped ``ts`` when given."""
        touched, touched_ts, coll_dirty = acc.touched, acc.touched_ts, acc.coll_dirty
        st = self.state
        cap = self.config.max_evidence
        rows_l = v.rows
        m = len(rows_l)
        evid, ts_rows, unvalued = v.evidence, v.ts, v.unvalued
        cps = st.cps if m == len(st.cps) else [st.cps[i] for i in rows_l]
        # realized vol per underlying is a market property: one dict shared by every part
        uvol = self._moved_vols(lay, acc)
        uvol_values = {u: x for u, (x, _t) in sorted(uvol.items())}
        where = {i: k for k, i in enumerate(rows_l)} if m != len(st.cps) else None
        for i, own in touched.items():  # own records last, newest kept
            k = i if where is None else where[i]
            evid[k] = ([e for e in evid[k] if e not in own] + own)[-cap:]
            ts_rows[k] = max(ts_rows[k], touched_ts.get(i, 0))
        colls = [0.0] * m
        if st.balances:
            for k, cp in enumerate(cps):
                colls[k], unv_coll, cts, alerts = self._collateral(cp)
                out.extend(alerts)
                unvalued[k].extend(unv_coll)
                ts_rows[k] = max(ts_rows[k], cts)
        for i, rid in coll_dirty.items():
            k = i if where is None else where[i]
            if rid not in evid[k]:
                evid[k] = [*evid[k][1 - cap:], rid] if cap > 1 else [rid]
        if ts is not None:
            ts_rows = [ts] * m
        seq0 = st.seq
        st.seq += m
        key = st.key
        out.extend(map(bounded_part, (  # the wire (JSON) holds no infinity
            Part(cp, key, seq, ts, g, nt, u, o, c, d, a, nm, no, mb, old, unv, uvol,
                 uvol_values, ev, recv_ts)
            for cp, seq, ts, g, nt, u, o, c, d, a, nm, no, mb, old, unv, ev in zip(
                cps, range(seq0 + 1, seq0 + m + 1), ts_rows, v.gross, v.net, v.upnl, v.orders,
                colls, v.delta, v.by_asset, v.names, v.notionals, v.mark_ts, v.oldest, unvalued,
                evid, strict=True))))
        return out

    def _moved_vols(self, lay: _Layout, acc: Pending) -> dict[str, tuple[float, int]]:
        """The vols this re-valuation's parts carry: those of the underlyings whose held
        instruments it moved (a mark, an FX rate or an own record), each the newest among
        that underlying's held instruments here.

        A vol alone moves no part, and an underlying not moved is left to the parts that
        move it: the vols reaching the firm are then the same however the instruments are
        spread over shards and market processes (a part of an ETH mark never brings BTC's
        newest vol, which one worker's shard holds and an ETH market process does not)."""
        changed, own = acc.changed, acc.touched_cols
        if not changed and not own:
            return {}
        held = lay.held_cols
        if lay.col_rows is not None:  # a small book: in Python
            codes_l = self._und_code_l
            col_rows = lay.col_rows
            moved = {codes_l[j] for j in chain(changed, own) if j in col_rows}
            if not moved:
                return {}
            return self._und_vols_small([j for j in held.tolist() if codes_l[j] in moved])
        cols = np.fromiter(chain(changed, own), dtype=np.int64, count=len(changed) + len(own))
        codes = self._und_code
        moved_u = np.unique(codes[cols[np.isin(cols, held)]])
        if not len(moved_u):
            return {}
        if len(moved_u) < len(self._und_names):
            held = held[np.isin(codes[held], moved_u)]
        return self._und_vols(held)
