"""Stage-1 marks: a shard's marks applied (one by one, or in whole-array runs per
column), the EWMA of realized variance they feed, and the newest realized vol per
underlying that :mod:`~riskguard.operators.exposure.valuation` puts on its parts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from riskguard.operators.exposure.arrays import (
    ewma_runs,
    log_ratio,
    log_ratios,
    not_before_earlier,
    run_ends,
    run_starts,
    shifted,
)
from riskguard.operators.exposure.config import (
    NS_PER_S,
    SECONDS_PER_YEAR,
    ExposureConfig,
    price_of,
)
from riskguard.operators.exposure.shard_state import ShardState

_VECTOR_MIN = 64  # fewer plain marks than this are applied one by one (measured crossover)
_SMALL_HELD = 32  # up to this many held instruments, realized vols are ranked in a loop


class ShardMarks:
    """The marks of a stage-1 shard and the realized vols they feed: the part of
    :class:`~riskguard.operators.exposure.valuation.ShardValuation` that moves prices
    (a mixin: ``config`` and ``state`` are ShardLogic's, the per-instrument caches
    below come from ShardValuation's ``_derive``)."""

    config: ExposureConfig
    state: ShardState
    _col: dict[str, int]  # instrument -> its column
    _is_opt_list: list[bool]  # per column: an option
    _und_code: Any  # per column: its underlying's code
    _und_names: list[str]  # the underlyings, by code

    def _mark_one(self, j: int, ev: Any, changed: dict[int, str]) -> None:
        """Apply one mark to column ``j`` (the reference semantics of :meth:`_apply_marks`)."""
        # reads via .item() (Python scalars): numpy scalars make each compare and each
        # float operation several times slower; the IEEE results are the same
        st = self.state
        ts = ev.ts
        if ts > st.last_ts.item(j):
            st.last_ts[j] = ts
        if ts < st.mark_ts.item(j):
            return
        price = price_of(ev)
        if price is None:  # a funding rate without a mark price
            return
        rid = ev.id
        st.mark[j] = price
        st.mark_ts[j] = ts
        st.mark_id[j] = rid
        changed[j] = rid
        if self._is_opt_list[j]:
            st.opt_delta[j], st.und_price[j] = ev.delta, ev.underlying_price
        elif price > 0:
            ets = st.ewma_ts.item(j)
            if ts > ets:
                if ets >= 0 and (prev := st.ewma_price.item(j)) > 0:
                    r = log_ratio(price, prev)
                    inst = r * r / ((ts - ets) / NS_PER_S)
                    alpha = self.config.vol_alpha
                    n = st.ewma_n.item(j)
                    st.ewma_var[j] = (inst if n == 0
                                      else (1 - alpha) * st.ewma_var.item(j) + alpha * inst)
                    st.ewma_n[j] = n + 1
                st.ewma_price[j] = price
                st.ewma_ts[j] = ts

    def _apply_marks(self, runs: list[list[Any]], changed: dict[int, str]) -> int | None:
        """Apply runs of plain marks in order, whole-array; the newest receive time.

        Marks on different columns commute, so grouping by column keeps
        :meth:`_mark_one`'s semantics bit for bit. Within a column, a mark is accepted when
        not older than the column's mark nor any earlier mark of the column in the runs.
        """
        ms = runs[0] if len(runs) == 1 else [e for r in runs for e in r]
        rts = [e.recv_ts for e in ms]
        recv = (max(r for r in rts if r is not None) if rts.count(None) != len(rts)
                else None)
        col = self._col
        if len(ms) < _VECTOR_MIN:
            for ev in ms:
                self._mark_one(col[ev.instrument], ev, changed)
            return recv
        st = self.state
        cj = np.array([col[e.instrument] for e in ms], dtype=np.int64)
        order = np.argsort(cj, kind="stable")
        js = cj[order]
        ts = np.array([e.ts for e in ms], dtype=np.int64)[order]
        try:
            px = np.array([e.price for e in ms], dtype=np.float64)[order]
        except AttributeError:  # quotes: the mid
            px = np.array([price_of(e) for e in ms], dtype=np.float64)[order]
        starts = run_starts(js)
        cols = js[starts]
        st.last_ts[cols] = np.maximum(st.last_ts[cols],
                                      np.maximum.reduceat(ts, np.flatnonzero(starts)))
        # accepted: not older than the column's mark, nor than any earlier mark of the run
        # on that column (several venues' prices of one instrument interleave)
        acc = ts >= st.mark_ts[js]
        if ((js[1:] == js[:-1]) & (ts[1:] < ts[:-1])).any():
            acc &= not_before_earlier(js, ts, starts)
        a = np.flatnonzero(acc)
        if not len(a):
            return recv
        # the accepted marks are in time order per column: the last one is the mark
        js, ts, px, order = js[a], ts[a], px[a], order[a]
        last = np.flatnonzero(run_ends(js))
        ac = js[last]
        st.mark[ac] = px[last]
        st.mark_ts[ac] = ts[last]
        ids = [ms[k].id for k in order[last].tolist()]
        st.mark_id[ac] = ids
        changed.update(zip(ac.tolist(), ids, strict=True))
        self._ewma(js, ts, px)
        return recv

    def _ewma(self, js: Any, ts: Any, px: Any) -> None:
        """The EWMA of realized variance over accepted marks grouped by column, each
        column's in time order."""
        st = self.state
        f = np.flatnonzero(px > 0)
        if not len(f):
            return
        fj, ft, fp = js[f], ts[f], px[f]
        new_f = run_starts(fj)
        # an update needs a strictly newer time than the column's previous update
        keep = ft > np.where(new_f, st.ewma_ts[fj], shifted(ft, 0))
        kj, kt, kp = fj[keep], ft[keep], fp[keep]
        if not len(kj):
            return
        new_k = run_starts(kj)
        pt = np.where(new_k, st.ewma_ts[kj], shifted(kt, 0))
        pp = np.where(new_k, st.ewma_price[kj], shifted(kp, 0.0))
        h = np.flatnonzero((pt >= 0) & (pp > 0))
        if len(h):
            r = log_ratios(kp[h], pp[h])
            x = r * r / ((kt[h] - pt[h]) / NS_PER_S)
            hj = kj[h]
            first = np.flatnonzero(run_starts(hj))
            cols = hj[first]
            lens = np.diff(np.append(first, len(hj)))
            cnt = st.ewma_n[cols]
            st.ewma_var[cols] = ewma_runs(st.ewma_var[cols], cnt == 0, x, first, lens,
                                           self.config.vol_alpha)
            st.ewma_n[cols] = cnt + lens
        lk = np.flatnonzero(run_ends(kj))
        st.ewma_price[kj[lk]] = kp[lk]
        st.ewma_ts[kj[lk]] = kt[lk]

    def _vols(self) -> tuple[Any, Any]:
        """Realized vol and its time per instrument (feature stream first, else EWMA)."""
        st = self.state
        fv, fts = st.feature_vol, st.feature_vol_ts
        ewma_ok = st.ewma_n >= self.config.vol_min_samples
        ev = np.sqrt(st.ewma_var * SECONDS_PER_YEAR)
        use_f = fv >= 0
        vol = np.where(use_f, fv, np.where(ewma_ok, ev, -1.0))
        vts = np.where(use_f, fts, np.where(ewma_ok, st.ewma_ts, -1))
        return vol, vts

    def _und_vols(self, held_cols: Any) -> dict[str, tuple[float, int]]:
        """Newest realized vol per underlying among ``held_cols`` (the instruments anyone
        holds here): ``{underlying: (vol, its time)}`` in underlying order; on a tie in
        time, the last of ``held_cols`` wins."""
        if len(held_cols) <= _SMALL_HELD:
            return self._und_vols_small(held_cols.tolist())
        return self._und_vols_whole(held_cols)

    def _und_vols_whole(self, held_cols: Any) -> dict[str, tuple[float, int]]:
        """:meth:`_und_vols` in whole-array steps."""
        vol, vol_ts = self._vols()
        idx = held_cols[vol_ts[held_cols] >= 0]
        uv: dict[str, tuple[float, int]] = {}
        if len(idx):
            codes = self._und_code[idx]
            vts = vol_ts[idx]
            order = np.lexsort((vts, codes))
            sc = codes[order]
            last = np.flatnonzero(run_ends(sc))
            best = idx[order[last]]
            names = map(self._und_names.__getitem__, sc[last].tolist())
            uv = dict(zip(names, zip(vol[best].tolist(), vol_ts[best].tolist(), strict=True),
                          strict=True))
        return uv

    def _und_vols_small(self, held: list[int]) -> dict[str, tuple[float, int]]:
        """:meth:`_und_vols` one column at a time (cheaper for a few held instruments);
        the same values, bit for bit."""
        st = self.state
        fv, fts = st.feature_vol, st.feature_vol_ts
        ewma_n, ewma_var, ewma_ts = st.ewma_n, st.ewma_var, st.ewma_ts
        need = self.config.vol_min_samples
        codes = self._und_code
        best: dict[int, tuple[int, float]] = {}  # underlying code -> (time, vol)
        for j in held:
            f = float(fv[j])
            if f >= 0:
                t, v = int(fts[j]), f
            elif ewma_n[j] >= need:
                t, v = int(ewma_ts[j]), math.sqrt(float(ewma_var[j]) * SECONDS_PER_YEAR)
            else:
                continue
            if t < 0:
                continue
            u = int(codes[j])
            cur = best.get(u)
            if cur is None or t >= cur[0]:
                best[u] = (t, v)
        names = self._und_names
        return {names[u]: (v, t) for u, (t, v) in sorted(best.items())}
