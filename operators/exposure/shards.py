"""Stage 1 of the exposure aggregation: one shard's positions of every counterparty.

:class:`ShardLogic` applies records in order and, once per batch (or tick), re-values
every counterparty they moved (:mod:`~riskguard.operators.exposure.valuation`)."""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
from riskguard.operators.core.base import copy_state
from riskguard.operators.core.clock import Clock, Tick, Watermark, system_clock
from riskguard.operators.exposure.config import (
    ExposureConfig,
    alert_id,
    evidence_add,
    price_of,
)
from riskguard.operators.exposure.instruments import (
    InstrumentRegistry,
)
from riskguard.operators.exposure.limit_specs import level_of
from riskguard.operators.exposure.mark_filter import MarkFilter, MarkFilterSpec
from riskguard.operators.exposure.routing import PROGRESS_KEY, Item, ShardPlace
from riskguard.operators.exposure.shard_state import (
    COLUMNS,
    GRIDS,
    MAX_FILLS_SINCE,
    OWN_ITEM_ROLES,
    Pending,
    ShardState,
    item_ts,
    note_first,
    split_at,
    widen,
)
from riskguard.operators.exposure.valuation import LEVEL_RANK, ShardValuation
from riskguard.schemas import (
    LimitLevel,
    PositionSnapshot,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)
from riskguard.schemas.valuation import Progress

from riskguard.errors import ConfigError


class ShardLogic(ShardValuation):
    """Stage 1: the positions of all counterparties in one shard of instruments.

    Records are applied in order (runs of plain marks whole-array per column: marks on
    different instruments commute); then, once per batch (or tick), every counterparty
    whose positions or marks changed gets one :class:`Part` reflecting the whole batch.
    With ``marks``, the prices a batch brings first pass the mark filter
    (:mod:`~riskguard.operators.exposure.mark_filter`), in the order they arrive.
    """

    def __init__(self, config: ExposureConfig, reg: InstrumentRegistry,
                 state: ShardState | None = None, *, ticked: bool = False,
                 clock: Clock = system_clock, wall_clock: Clock | None = None,
                 forward_ticks: bool = False,
                 on_reorder: Callable[[str, int], None] | None = None,
                 place: ShardPlace | None = None, marks: MarkFilterSpec | None = None
                 ) -> None:
        self.config = config
        self.place = place
        # told ("held", 1) when a record waits for the watermark, ("forced", n) when n
        # apply after max_hold_ns without it (a metrics counter in the guard)
        self.on_reorder = on_reorder
        self.forward_ticks = forward_ticks
        self.clock = clock
        # live runs: a fill's position boundary also passes by wall time (on_deadline)
        self.wall_clock = wall_clock
        self._fast_deadline: int | None = None
        self.reg = reg
        self.ticked = ticked
        self.state = state if state is not None else ShardState()
        self._slack = config.reorder_slack_ns
        # live runs: when the oldest held own record is due regardless of the watermark
        self._held_due = self._next_held_due() if wall_clock is not None else None
        self._watermark = Watermark.resume(self.state.tick_sources)
        self._ready = False
        self._peg_here: frozenset[str] = frozenset()
        self._marks = None if marks is None or marks.interval_ns <= 0 else MarkFilter(
            marks.interval_ns, marks.move_bps, self.state.mark_filter, marks.max_keys)
        if self.state.key:
            self._adopt_config()
            self._derive()

    def _adopt_config(self) -> None:
        """A resumed shard meets today's config: an instrument newly hashing here gets an
        empty column; one it holds that now hashes elsewhere is a config error (it would
        be counted twice)."""
        st = self.state
        configured = self.config.instruments.instruments
        away = [i for i in st.insts if i in configured and not self._here("i:" + i)]
        away += [a for a in st.balances if not self._here("a:" + a)]  # collateral held
        if away:
            where = "exposure.valuation_shards"
            raise ConfigError(
                where, f"what resumed shard {st.key!r} holds still hashing to it (the "
                "valuation_shards, and in a market process the owners, its snapshot was taken "
                "with; or a fresh recovery store)",
                f"{', '.join(away[:5])}{' ...' if len(away) > 5 else ''} hashing elsewhere")
        held = set(st.insts)
        new = [i for i in configured if i not in held and self._here("i:" + i)]
        if new:
            widen(st, sorted([*st.insts, *new]))

    def snapshot(self) -> ShardState:
        """An independent copy (arrays copied, immutable leaves shared), far cheaper than a
        pickle round trip."""
        st = self.state
        if self._marks is not None:  # a new one each time: never changed once taken
            st.mark_filter = self._marks.snapshot()
        if not st.key:
            return copy_state(st)
        cols = {name: getattr(st, name).copy() for name in COLUMNS}
        return ShardState(
            version=st.version, key=st.key, insts=list(st.insts), cps=list(st.cps),
            qty=st.qty.copy(), avg=st.avg.copy(), orders=st.orders.copy(),
            snap_ts=st.snap_ts.copy(), seen=[d.copy() for d in st.seen],
            alerted={k: v.copy() for k, v in st.alerted.items()},
            evidence={k: v.copy() for k, v in st.evidence.items()}, fx=st.fx.copy(),
            fills_since={k: v.copy() for k, v in st.fills_since.items()},
            fills_cut=st.fills_cut.copy(),
            balances={k: v.copy() for k, v in st.balances.items()},
            asset_ts=st.asset_ts.copy(), seq=st.seq,
            pending=None if st.pending is None else st.pending.copy(), tick_ts=st.tick_ts,
            tick_sources={k: list(v) for k, v in st.tick_sources.items()},
            tick_wm=st.tick_wm, fast_due=st.fast_due, held=list(st.held),
            arrivals=st.arrivals, forced=st.forced,
            fast_recv=st.fast_recv, peg_level=dict(st.peg_level),
            mark_filter=st.mark_filter,
            **cols,
        )

    def _init(self, key: str) -> None:
        st = self.state
        st.key = key
        st.insts = sorted(i for i in self.config.instruments.instruments if self._here("i:" + i))
        k = len(st.insts)
        for name, (dt, fill) in GRIDS.items():
            setattr(st, name, np.full((0, k), fill, dtype=dt))
        for name, (dt, fill) in COLUMNS.items():
            setattr(st, name, np.full(k, fill, dtype=dt))
        st.seen = [{} for _ in range(k)]
        self._derive()

    def on_event(self, item: Item) -> list[Any]:
        return self.on_batch([[item]])

    def on_batch(self, packs: Iterable[list[Item]]) -> list[Any]:
        """The dataflow hands over packs (one per upstream batch); apply them in order."""
        packs = list(packs)
        items = packs[0] if len(packs) == 1 else [it for p in packs for it in p]
        if self._marks is not None:
            items = self._marks.on_items(items)
            if not items:
                return []
        if self.ticked:
            return self._on_ticked(items)
        return self._process(items)

    def on_eof(self) -> list[Any]:
        """Ticked: apply the records still waiting for the watermark (in event-time
        order), then re-value what the records after the last tick moved."""
        st = self.state
        if not self.ticked:
            return []
        out: list[Any] = []
        if st.held:
            held, st.held = st.held, []
            out.extend(self._apply_segment([h[2] for h in sorted(held)]))
        if not st.pending:
            return out
        return out + self._flush(max(st.tick_ts, int(st.last_ts.max(initial=0))))

    def _flush(self, ts: int) -> list[Any]:
        st = self.state
        acc = st.pending
        st.pending = Pending()
        st.tick_ts = ts
        st.fast_due, st.fast_recv = 0, None
        if not acc:
            return []
        # the receive time of the first record this re-valuation covers: a command it
        # leads to measures its latency from there, the wait for the tick included
        recv = acc.first_recv if acc.first_recv is not None else acc.recv
        return self._revalue([], acc, recv, ts)

    def _on_ticked(self, items: list[Item]) -> list[Any]:
        """Ticked mode: records are applied as they come and re-valued once per tick, so
        parts are a function of the event-time order of the records and the ticks, not of
        how they were cut into batches. A record is before a tick when its ``ts`` is
        smaller (the tick is made by the first record at or past its ``ts``)."""
        st = self.state
        tick_recs = sorted((it.record for it in items if it.role == "tick"), key=lambda t: t.ts)
        ticks = [t.ts for t in tick_recs]
        # the processes' watermark after each tick: with several, every one ticks each
        # bucket, so the shard re-values once per bucket (at the slowest's tick)
        now = self.clock() if tick_recs else 0
        wms = [self._watermark.tick_time(t, now) for t in tick_recs]
        holding = self._slack > 0 and self._watermark.several()
        if not ticks and not holding:
            return self._apply_segment(items)
        if not st.key:
            self._init(items[0].shard)
        bounds: list[int] = ticks
        if holding:
            items, bounds = self._admit(items, ticks, wms)
        segments = self._segments(items, bounds, len(ticks) + 1)
        out: list[Any] = []
        for k, seg in enumerate(segments):
            if seg:
                out.extend(self._apply_segment(seg))
            if k < len(ticks):
                out.extend(self._at_tick(ticks[k], wms[k], tick_recs[k]))
        return out

    def _admit(self, items: list[Item], ticks: list[int], wms: list[int]
               ) -> tuple[list[Item], list[int]]:
        """With several sources an item waits until the watermark is within the slack of
        it: the held items the ticks release go first, and segment k (after tick k - 1)
        takes a record at ``ts`` when ``ts < ticks[k]`` and ``ts <= admit[k]``. Both
        bounds rise with k, so one bound per segment, their minimum, does too."""
        st = self.state
        admit = [st.tick_wm + self._slack]
        for wm in wms:
            admit.append(max(admit[-1], wm + self._slack))
        held, top, released = st.held, admit[-1], []
        while held and held[0][0] <= top:
            released.append(heapq.heappop(held)[2])
        if released:
            items = [*released, *items]
        bounds = [min(t, a + 1) for t, a in zip(ticks, admit, strict=False)] + [admit[-1] + 1]
        return items, bounds

    def _segments(self, items: list[Item], bounds: list[int], wait: int) -> list[list[Item]]:
        """The records between each two ticks: per record one C-level bisect finds the
        first segment whose bound exceeds its ``ts`` (past the last: it is held). A run
        of plain marks that straddles a tick is split."""
        segment_of = partial(bisect_right, bounds)
        segments: list[list[Item]] = [[] for _ in range(wait)]

        def put(k: int, it: Item) -> None:
            if k == wait:
                self._hold(it)
            else:
                segments[k].append(it)

        for it in items:
            role = it.role
            if role == "tick":
                continue
            if role != "marks":
                put(segment_of(it.record.ts), it)
                continue
            run = it.record
            times = [ev.ts for ev in run]
            k = segment_of(min(times))
            if k == segment_of(max(times)):  # the whole run in one segment
                put(k, it)
                continue
            parts: dict[int, list[Any]] = {}
            for ev, ts in zip(run, times, strict=True):
                parts.setdefault(segment_of(ts), []).append(ev)
            for k, evs in parts.items():
                put(k, it._replace(record=evs))
        return segments

    def _at_tick(self, tick_ts: int, wm: int, tick: Tick) -> list[Any]:
        """A tick after its segment: a position boundary that fell due before it, the
        re-valuation once the watermark moved, and the tick passed on."""
        st = self.state
        out: list[Any] = []
        if st.fast_due and st.fast_due <= tick_ts:  # it fell due before the tick
            out.extend(self._flush_fast())
        if wm > st.tick_wm:
            st.tick_wm = wm
            out.extend(self._flush(max(st.tick_ts, wm)))
        if self.forward_ticks:
            out.extend(self._progress(tick))
        return out

    def _progress(self, tick: Tick) -> list[Progress]:
        """``tick`` passed on once everything before it is valued, to every counterparty
        this shard may send parts to and to :data:`PROGRESS_KEY`; named per shard
        (``<worker>@<shard>``), counting every shard's copies in ``of``."""
        source = f"{tick.source}@{self.state.key}" if tick.source else ""
        of = (tick.of if self.place is None else self.place.processes) \
            * self.config.valuation_shards
        cps = self.state.cps
        return [Progress(counterparty=PROGRESS_KEY, ts=tick.ts, source=source, of=of,
                         via=tuple(cps)),
                *(Progress(counterparty=cp, ts=tick.ts, source=source, of=of) for cp in cps)]

    def _hold(self, it: Item) -> None:
        st = self.state
        st.arrivals += 1
        due = -1
        if self.wall_clock is not None and it.role in OWN_ITEM_ROLES:
            due = self.wall_clock() + self.config.max_hold_ns
            if self._held_due is None or due < self._held_due:
                self._held_due = due
        heapq.heappush(st.held, (item_ts(it), st.arrivals, it, due))
        if self.on_reorder is not None:
            self.on_reorder("held", 1)

    def _next_held_due(self) -> int | None:
        return min((h[3] for h in self.state.held if h[3] >= 0), default=None)

    def _release_overdue(self, now: int) -> list[Any]:
        """Live: apply, in event-time order, what is held up to the newest own record
        held past ``max_hold_ns`` of wall time; it re-values at its position boundary."""
        st = self.state
        upto = max((h[0] for h in st.held if 0 <= h[3] <= now), default=None)
        items: list[Item] = []
        while upto is not None and st.held and st.held[0][0] <= upto:
            items.append(heapq.heappop(st.held)[2])
        st.forced += len(items)
        if self.on_reorder is not None and items:
            self.on_reorder("forced", len(items))
        self._held_due = self._next_held_due()
        return self._apply_segment(items) if items else []

    def _apply_segment(self, items: list[Item]) -> list[Any]:
        """Ticked mode: apply records between two ticks, re-valuing the rows that own
        records moved at each ``position_revalue_ns`` boundary the records cross."""
        st = self.state
        step = self.config.position_revalue_ns
        if st.pending is None:
            st.pending = Pending()
        acc = st.pending  # fast flushes take rows out of it; only ticks replace it
        out: list[Any] = []
        rest = items
        while rest:
            if st.fast_due:
                head, tail = split_at(rest, st.fast_due)
                if head:
                    note_first(acc, head)
                    out.extend(self._apply(head, acc))
                if tail is None:
                    return out
                out.extend(self._flush_fast())
                rest = tail
                continue
            k = next((n for n, it in enumerate(rest) if it.role in OWN_ITEM_ROLES), -1) \
                if step else -1
            head = rest if k < 0 else rest[:k + 1]
            note_first(acc, head)
            out.extend(self._apply(head, acc))
            if k < 0:
                return out
            ev = rest[k].record
            st.fast_due = (ev.ts // step + 1) * step
            st.fast_recv = getattr(ev, "recv_ts", None)
            if self.wall_clock is not None:
                self._fast_deadline = self.wall_clock() + min(step, st.fast_due - ev.ts)
            rest = rest[k + 1:]
        return out

    def next_deadline_ns(self) -> int | None:
        """Live runs (``wall_clock``): when, in wall time, the pending position boundary
        passes even if no record at or past it arrives (event time taken to run at wall
        speed from the record that set it). None: nothing pending, or a replay."""
        if self.wall_clock is None:
            return None
        due = self._held_due
        if not self.state.fast_due:
            return due
        if self._fast_deadline is None:  # resumed with a boundary pending: flush now
            self._fast_deadline = self.wall_clock()
        return self._fast_deadline if due is None else min(due, self._fast_deadline)

    def on_deadline(self) -> list[Any]:
        """The wall-time deadline passed: release own records held past ``max_hold_ns``;
        re-value the rows own records moved, stamped with their boundary, as a record
        crossing it would have."""
        out: list[Any] = []
        now = self.wall_clock() if self.wall_clock is not None else 0
        if self._held_due is not None and now >= self._held_due:
            out.extend(self._release_overdue(now))
        if self._fast_deadline is not None and now < self._fast_deadline:
            return out
        self._fast_deadline = None
        if not self.state.fast_due:
            return out
        return out + self._flush_fast()

    def _flush_fast(self) -> list[Any]:
        """Re-value only the rows own records moved since the last tick (or fast flush),
        stamped with the boundary; price moves stay pending for the tick."""
        st = self.state
        acc = st.pending
        due, recv = st.fast_due, st.fast_recv
        st.fast_due, st.fast_recv = 0, None
        if acc is None or not acc.touched:
            return []
        rows = acc.touched
        fast = Pending(touched=rows, touched_ts=acc.touched_ts, touched_cols=acc.touched_cols,
                       coll_dirty={i: r for i, r in acc.coll_dirty.items() if i in rows})
        acc.touched, acc.touched_ts, acc.touched_cols = {}, {}, {}
        acc.coll_dirty = {i: r for i, r in acc.coll_dirty.items() if i not in rows}
        return self._revalue([], fast, recv, max(due, st.tick_ts))

    def _process(self, items: Sequence[Item]) -> list[Any]:
        """Apply ``items`` and re-value what they moved (one part per moved counterparty)."""
        acc = Pending()
        out = self._apply(items, acc)
        if not acc:
            return out
        return self._revalue(out, acc, acc.recv)

    def _apply(self, items: Sequence[Item], acc: Pending) -> list[Any]:
        """Apply ``items`` in order, noting in ``acc`` what they moved; return alerts.

        Plain marks wait in runs (they commute with fills) until an FX rate or snapshot,
        which read or re-value marks, or the end; every other record is applied by its
        role's step. The loop runs once per record.
        """
        st = self.state
        if not st.key and items:
            self._init(items[0].shard)
        out: list[Any] = []
        col = self._col
        changed = acc.changed
        fx_dirty = False
        runs: list[list[Any]] = []  # plain marks not applied yet (they commute with fills)
        row_get = self._row.get
        recv = acc.recv
        for role, _key, target, ev in items:
            if role == "marks":
                runs.append(ev)
                continue
            if runs and role in ("fx", "snap"):  # these read or re-value marks
                recv = self._apply_runs(runs, changed, recv)
                runs = []
            rt = getattr(ev, "recv_ts", None)
            if rt is not None and (recv is None or rt > recv):
                recv = rt
            if role == "mark":
                self._mark_one(col[target], ev, changed)
            elif role == "fx":
                fx_dirty = self._apply_fx(target, ev, acc, out) or fx_dirty
            elif role == "vol":
                self._apply_vol(col[target], ev)
            else:
                i = row_get(ev.counterparty)
                if i is None:
                    i = self._row_of(ev.counterparty)
                if role == "bal":
                    self._apply_balance(target, ev, i, acc)
                else:
                    self._apply_position(role, col[target], ev, i, acc, out)
        if runs:
            recv = self._apply_runs(runs, changed, recv)
        if fx_dirty:
            self._refresh_fx()
        acc.recv = recv
        return out

    def _apply_runs(self, runs: list[list[Any]], changed: dict[int, str], recv: int | None
                    ) -> int | None:
        """Apply the runs of plain marks; the latest receive time so far."""
        rt = self._apply_marks(runs, changed)
        return rt if rt is not None and (recv is None or rt > recv) else recv

    def _apply_fx(self, asset: str, ev: Any, acc: Pending, out: list[Any]) -> bool:
        """An FX rate: the event time of every instrument that needs it moves; a newer
        rate is kept, checked against the asset's peg, and marks what it re-values. True
        when the rate changed."""
        st = self.state
        ts = ev.ts
        last_ts = st.last_ts
        needing = self._needing.get(asset, ())
        for j in needing:
            if ts > last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
                last_ts[j] = ts
        if asset in st.balances:
            st.asset_ts[asset] = max(st.asset_ts.get(asset, 0), ts)
        cur = st.fx.get(asset)
        price = price_of(ev)
        if price is None or (cur is not None and ts < cur[1]):
            return False
        st.fx[asset] = (price, ts)
        if asset in self._peg_here:
            out.extend(self._peg_check(asset, price, ev))
        for j in needing:
            acc.changed[j] = ev.id
        for cp in st.balances.get(asset, {}):
            acc.coll_dirty[self._row_of(cp)] = ev.id
        return True

    def _apply_vol(self, j: int, ev: Any) -> None:
        """A realized-vol feature of instrument column ``j`` (the newest one kept)."""
        st = self.state
        ts = ev.ts
        if ts > st.last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
            st.last_ts[j] = ts
        if ts >= st.feature_vol_ts[j]:
            st.feature_vol[j] = float(ev.values[self.config.vol_feature])
            st.feature_vol_ts[j] = ts

    def _apply_balance(self, asset: str, ev: Any, i: int, acc: Pending) -> None:
        """A counterparty's collateral balance of ``asset`` (row ``i``); a newer one
        replaces it and re-values the row's collateral."""
        st = self.state
        ts = ev.ts
        held = st.balances.setdefault(asset, {})
        st.asset_ts[asset] = max(st.asset_ts.get(asset, 0), ts)
        cur = held.get(ev.counterparty)
        if cur is None or ts >= cur[1]:
            held[ev.counterparty] = (ev.total, ts)
            acc.coll_dirty[i] = ev.id
            acc.touched.setdefault(i, []).append(ev.id)
            acc.touched_ts[i] = max(acc.touched_ts.get(i, 0), ts)

    def _apply_position(self, role: str, j: int, ev: Any, i: int, acc: Pending,
                        out: list[Any]) -> None:
        """A fill (dropped whole if replayed), a position snapshot or an open-orders
        record of row ``i`` in column ``j``; it becomes evidence and marks the row's own
        re-valuation."""
        st = self.state
        rid, ts = ev.id, ev.ts
        if role == "fill":
            seen = self._seen[j]
            if rid in seen.ids:  # a replayed fill is dropped whole: it moves nothing,
                return           # not even the instrument's event time
            seen.add(rid)
        if ts > st.last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
            st.last_ts[j] = ts
        if role == "fill":
            if ts > st.snap_ts.item(i, j):  # else already in the authoritative snapshot
                self._log_fill(ev, i, j)
                self._fill(ev, i, j)
        elif role == "snap":
            out.extend(self._on_snapshot(ev, i, j))
        else:  # orders
            self._opened_or_closed(st.orders.item(i, j), ev.notional)
            st.orders[i, j] = ev.notional
            self._any_orders = True
        self._note_own(rid, ts, i, j, acc)

    def _note_own(self, rid: str, ts: int, i: int, j: int, acc: Pending) -> None:
        """An own record of row ``i`` in column ``j``: evidence of the position, and the
        row's own re-valuation due."""
        st = self.state
        buf = st.evidence.get((i, j))
        if buf is None:
            st.evidence[(i, j)] = [rid]
        else:
            evidence_add(buf, rid, self.config.max_evidence)
        own = acc.touched.get(i)
        if own is None:
            acc.touched[i] = [rid]
            acc.touched_ts[i] = ts
        else:
            own.append(rid)
            if ts > acc.touched_ts[i]:  # noqa: PLR1730 - cheaper than max() per record
                acc.touched_ts[i] = ts
        if j not in acc.touched_cols:
            acc.touched_cols[j] = (rid, i)

    def _fill(self, ev: Any, i: int, j: int) -> None:
        """A fill moves the position of row ``i`` in column ``j`` and its average price."""
        st = self.state
        signed = ev.qty if ev.side == "buy" else -ev.qty
        a = st.avg.item(i, j)
        q0 = st.qty.item(i, j)
        q, new_avg = apply_fill(q0, None if q0 == 0.0 or math.isnan(a) else a, signed, ev.price)
        st.qty[i, j] = q
        self._opened_or_closed(q0, q)
        # flat: no average (0.0 rather than nan keeps the PnL sums nan-free; a flat
        # position's average is never read)
        st.avg[i, j] = (0.0 if q == 0.0 else math.nan) if new_avg is None else new_avg

    def _log_fill(self, ev: Any, i: int, j: int) -> None:
        """Keep the fill, and the position before it, for a snapshot older than it that
        may still arrive."""
        st = self.state
        log = st.fills_since.setdefault((i, j), [])
        log.append((ev.ts, ev.qty if ev.side == "buy" else -ev.qty, ev.price,
                    st.qty.item(i, j), st.avg.item(i, j)))
        if len(log) > MAX_FILLS_SINCE:
            dropped = log.pop(0)
            st.fills_cut[(i, j)] = max(st.fills_cut.get((i, j), -1), dropped[0])

    def _peg_check(self, asset: str, price: float, ev: Any) -> list[RiskAlert]:
        """A ``depeg`` alert when ``asset``'s rate leaves its peg, ``peg_restored`` when it
        is back; raised by the asset's own shard only. The levels are the limits' own
        (:func:`~riskguard.operators.exposure.limit_specs.level_of`): critical at
        ``peg_critical_bps``, warn at ``peg_warn_bps``, each left only half
        ``peg_warn_bps`` below it."""
        cfg = self.config
        peg = cfg.pegs[asset]
        off = abs(price / peg - 1.0) * 1e4
        levels = self.state.peg_level
        old = LimitLevel(levels.get(asset, LimitLevel.OK))
        new = level_of(off / cfg.peg_critical_bps, old, self._peg_spec)
        if new is LimitLevel.OK:
            if old is LimitLevel.OK:
                return []
            del levels[asset]
            kind, sev = "peg_restored", Severity.INFO
        else:
            levels[asset] = new.value
            if LEVEL_RANK[new] <= LEVEL_RANK[old]:  # no rise: the open incident stands
                return []
            kind = "depeg"
            sev = Severity.CRITICAL if new is LimitLevel.BREACH else Severity.WARN
        return [RiskAlert(
            id=alert_id(kind, asset, ev.id), kind=kind,
            scope=Scope(kind=ScopeKind.UNDERLYING, value=asset), ts=ev.ts, recv_ts=ev.recv_ts,
            severity=sev,
            reason=(f"{asset} at {price:g} is {off:.0f} bps off its peg {peg:g} "
                    f"(warn {cfg.peg_warn_bps:g}, critical {cfg.peg_critical_bps:g} bps)"),
            details={"price": price, "peg": peg, "deviation_bps": off},
            evidence_ids=[ev.id],
        )]

    def _on_snapshot(self, ev: PositionSnapshot, i: int, j: int) -> list[Any]:
        """A venue's position as of ``ev.ts``: adopted with the fills applied after that
        time on top (in whatever order the two arrived), so a snapshot that comes after
        newer fills loses none of them. One older than the snapshot adopted is evidence
        only; one older than the fills the log still holds is a
        ``reconciliation_skipped`` warning. A difference from what the fills made of it
        beyond the tolerance is a ``reconciliation_break``."""
        st = self.state
        cell = (i, j)
        ev_buf = st.evidence.setdefault(cell, [])
        evidence_add(ev_buf, ev.id, self.config.max_evidence)
        if ev.ts < st.snap_ts.item(i, j):
            return []  # a newer snapshot is in force already
        if ev.ts < st.fills_cut.get(cell, -1):  # more fills since it than are kept
            return [_position_alert(
                "reconciliation_skipped", ev,
                f"position snapshot of {ev.instrument} at {ev.counterparty} is older than the "
                f"{MAX_FILLS_SINCE} fills kept since; not reconciled (the positions topic "
                "lags the fills)", {"counterparty": ev.counterparty, "snapshot_qty": ev.qty},
                [ev.id])]
        later = [f for f in st.fills_since.get(cell, ()) if f[0] > ev.ts]
        qty = float(st.qty[i, j])
        # what the fills made of the position at the snapshot's time: before the first
        # later fill; its average price carries over unless the snapshot's side differs
        q_at, a_at = (later[0][3], later[0][4]) if later else (qty, float(st.avg[i, j]))
        base_avg = (ev.avg_price if ev.avg_price is not None
                    else a_at if not (math.isnan(a_at) or q_at == 0.0 or (q_at > 0) != (ev.qty > 0))
                    else float(st.mark[j]))
        q, a = ev.qty, base_avg
        for _ts, signed, price, _q, _a in later:
            q, new_avg = apply_fill(q, None if q == 0.0 or math.isnan(a) else a, signed, price)
            a = (0.0 if q == 0.0 else math.nan) if new_avg is None else new_avg
        out: list[Any] = []
        diff = q - qty
        cfg = self.config
        tol = cfg.recon_abs_tol + cfg.recon_rel_tol * max(abs(q), abs(qty))
        if abs(diff) > tol:
            since = f" and the {len(later)} fill(s) after it" if later else ""
            out.append(_position_alert(
                "reconciliation_break", ev,
                f"position snapshot {ev.qty} of {ev.instrument} at {ev.counterparty}{since} "
                f"make {q}; the fills made {qty}, {diff} apart; adopted the snapshot",
                {"counterparty": ev.counterparty, "snapshot_qty": ev.qty, "fills_qty": qty,
                 "diff": diff, "tolerance": tol, "fills_after_snapshot": float(len(later))},
                [ev.id, *ev_buf[-4:]][: cfg.max_evidence]))
        self._opened_or_closed(qty, q)
        st.qty[i, j] = q
        st.avg[i, j] = a
        st.snap_ts[i, j] = ev.ts
        if later:
            st.fills_since[cell] = later
        else:
            st.fills_since.pop(cell, None)
        return out


def _position_alert(kind: str, ev: PositionSnapshot, reason: str,
                    details: dict[str, Any], evidence: list[str]) -> RiskAlert:
    """A warning about a position snapshot, on its instrument."""
    return RiskAlert(
        id=alert_id(kind, ev.counterparty, ev.instrument, ev.id), kind=kind,
        scope=Scope(kind=ScopeKind.INSTRUMENT, value=ev.instrument, venue=ev.venue),
        ts=ev.ts, severity=Severity.WARN, reason=reason, details=details,
        evidence_ids=evidence)


def apply_fill(
    qty: float, avg: float | None, signed: float, price: float
) -> tuple[float, float | None]:
    """Average-cost position accounting: new ``(qty, avg_entry_price)``.

    >>> apply_fill(0.0, None, 2.0, 10.0)
    (2.0, 10.0)
    >>> apply_fill(2.0, 10.0, 2.0, 20.0)
    (4.0, 15.0)
    >>> apply_fill(4.0, 15.0, -1.0, 30.0)
    (3.0, 15.0)
    >>> apply_fill(3.0, 15.0, -5.0, 30.0)
    (-2.0, 30.0)
    """
    new = qty + signed
    if qty == 0.0 or avg is None:
        return new, price
    if (qty > 0) == (signed > 0):
        return new, (avg * abs(qty) + price * abs(signed)) / abs(new)
    if new == 0.0:
        return 0.0, None
    if (new > 0) != (qty > 0):
        return new, price
    return new, avg
