"""The state of a stage-1 shard, and what a batch moved in it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.config import STATE_VERSION
from riskguard.operators.exposure.mark_filter import MarkFilterState
from riskguard.operators.exposure.routing import HeldItem, Item


@dataclass
class Pending:
    """What the records applied since the last re-valuation moved (stage 1)."""

    changed: dict[int, str] = field(default_factory=dict)  # column -> id that re-valued it
    touched: dict[int, list[str]] = field(default_factory=dict)  # row -> own ids, oldest 1st
    touched_ts: dict[int, int] = field(default_factory=dict)
    touched_cols: dict[int, tuple[str, int]] = field(default_factory=dict)  # col -> (id, row)
    coll_dirty: dict[int, str] = field(default_factory=dict)
    recv: int | None = None  # newest receive time among them
    first_recv: int | None = None  # receive time of the first of them (ticked mode)

    def __bool__(self) -> bool:
        return bool(self.changed or self.touched or self.coll_dirty)

    def copy(self) -> Pending:
        return Pending(dict(self.changed), {k: list(v) for k, v in self.touched.items()},
                       dict(self.touched_ts), dict(self.touched_cols), dict(self.coll_dirty),
                       self.recv, self.first_recv)


def note_first(acc: Pending, items: Sequence[Any]) -> None:
    """Ticked mode: the receive time of the first record since the last tick."""
    if acc.first_recv is None and items:
        it = items[0]
        ev = it.record[0] if it.role == "marks" else it.record
        acc.first_recv = getattr(ev, "recv_ts", None)


OWN_ITEM_ROLES = frozenset(("fill", "snap", "orders", "bal"))


def item_ts(it: Item) -> int:
    """Event time of a stage-1 item (a run of plain marks: its first mark's)."""
    return it.record[0].ts if it.role == "marks" else it.record.ts


def split_at(items: list[Item], due: int) -> tuple[list[Item], list[Item] | None]:
    """``items`` before the first record (or tick) with ``ts >= due``, and the rest from
    it (``None``: none reaches ``due``); a run of plain marks is split inside."""
    for n, it in enumerate(items):
        if it.role == "marks":
            run = it.record
            m = next((x for x, e in enumerate(run) if e.ts >= due), -1)
            if m < 0:
                continue
            head = [*items[:n], it._replace(record=run[:m])] if m else items[:n]
            return head, [it._replace(record=run[m:]), *items[n + 1:]]
        if it.record.ts >= due:
            return items[:n], items[n:]
    return items, None



if TYPE_CHECKING:
    Column = Any  # mypy: every shard that holds instruments has its columns; none is None
else:
    Column = np.ndarray | None  # what the snapshot decoder restores the columns as


@persisted("riskguard.exposure.shard")
@dataclass
class ShardState:
    """State of one stage-1 shard: its instruments' marks and every counterparty's
    positions in them (dense ``counterparty x instrument`` arrays), plus the
    balances held in its collateral assets."""

    version: int = STATE_VERSION
    key: str = ""
    insts: list[str] = field(default_factory=list)
    cps: list[str] = field(default_factory=list)
    qty: Column = None
    avg: Column = None  # nan: no average entry price (any value while flat)
    orders: Column = None
    snap_ts: Column = None
    # per instrument (column), numpy arrays
    mark: Column = None  # float64; nan: no mark yet
    mark_ts: Column = None  # int64
    mark_id: Column = None  # object (str)
    opt_delta: Column = None
    und_price: Column = None
    last_ts: Column = None  # int64
    ewma_price: Column = None
    ewma_ts: Column = None  # int64
    ewma_var: Column = None
    ewma_n: Column = None  # int64
    feature_vol: Column = None
    feature_vol_ts: Column = None  # int64
    seen: list[dict[str, None]] = field(default_factory=list)
    alerted: dict[str, dict[str, str]] = field(default_factory=dict)
    evidence: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    # per position, the fills applied after its snapshot, oldest first, each (ts, signed
    # qty, price, and the position's qty and average price before it), at most
    # MAX_FILLS_SINCE: what a snapshot arriving after them is rebased on; and, where the
    # log was cut, the time of the newest fill dropped from it
    fills_since: dict[tuple[int, int], list[tuple[int, float, float, float, float]]] = field(
        default_factory=dict)
    fills_cut: dict[tuple[int, int], int] = field(default_factory=dict)
    fx: dict[str, tuple[float, int]] = field(default_factory=dict)
    balances: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    asset_ts: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    # ticked mode: applied but not yet re-valued, and the newest tick that re-valued
    pending: Pending | None = None
    tick_ts: int = 0
    # ticked mode: each guard worker's [newest tick, processing time seen], and their
    # watermark at the last re-valuation (clock.Watermark)
    tick_sources: dict[str, list[int]] = field(default_factory=dict)
    tick_wm: int = -1
    # ticked mode: when the rows moved by own records re-value (0: none pending), and the
    # receive time of the first of those records
    fast_due: int = 0
    fast_recv: int | None = None
    # ticked mode, several tick sources: items too far ahead of the watermark, waiting
    # (a heap of (ts, arrival, item, wall time it is due regardless; -1: none))
    held: list[tuple[int, int, HeldItem, int]] = field(default_factory=list)
    arrivals: int = 0
    forced: int = 0  # live: held items applied after max_hold_ns, the watermark behind
    peg_level: dict[str, str] = field(default_factory=dict)  # asset -> "warn" | "breach"
    # the mark filter's last price taken per venue, instrument and record type
    mark_filter: MarkFilterState = field(default_factory=MarkFilterState)


MAX_FILLS_SINCE = 64
"""Fills kept per position since its snapshot; a snapshot older than the oldest kept is
not adopted (it cannot be rebased on what was dropped)."""

# the per-instrument columns: dtype, and the value of an instrument not marked yet
COLUMNS: dict[str, tuple[Any, Any]] = {
    "mark": (np.float64, math.nan), "mark_ts": (np.int64, -1), "mark_id": (object, ""),
    "opt_delta": (np.float64, 0.0), "und_price": (np.float64, 0.0), "last_ts": (np.int64, 0),
    "ewma_price": (np.float64, 0.0), "ewma_ts": (np.int64, -1), "ewma_var": (np.float64, 0.0),
    "ewma_n": (np.int64, 0), "feature_vol": (np.float64, -1.0),
    "feature_vol_ts": (np.int64, -1),
}
# the counterparty x instrument grids, and the value of a cell without a position
GRIDS: dict[str, tuple[Any, Any]] = {
    "qty": (np.float64, 0.0), "avg": (np.float64, 0.0), "orders": (np.float64, 0.0),
    "snap_ts": (np.int64, -1),
}


def widen(st: ShardState, insts: list[str]) -> None:
    """Give ``st`` the columns of ``insts`` (a name-ordered superset of its instruments):
    each new one empty, as a fresh shard's, and the held ones moved to their new places,
    with everything that refers to a column by index."""
    at = {name: j for j, name in enumerate(insts)}
    moved = [at[name] for name in st.insts]
    k = len(insts)
    for name, (dt, fill) in GRIDS.items():
        old = getattr(st, name)
        grid = np.full((old.shape[0], k), fill, dtype=dt)
        grid[:, moved] = old
        setattr(st, name, grid)
    for name, (dt, fill) in COLUMNS.items():
        col = np.full(k, fill, dtype=dt)
        col[moved] = getattr(st, name)
        setattr(st, name, col)
    seen: list[dict[str, None]] = [{} for _ in range(k)]
    for j, ids in zip(moved, st.seen, strict=True):
        seen[j] = ids
    st.seen = seen
    st.evidence = {(i, moved[j]): ids for (i, j), ids in st.evidence.items()}
    st.fills_since = {(i, moved[j]): log for (i, j), log in st.fills_since.items()}
    st.fills_cut = {(i, moved[j]): ts for (i, j), ts in st.fills_cut.items()}
    if st.pending is not None:
        st.pending.changed = {moved[j]: rid for j, rid in st.pending.changed.items()}
        st.pending.touched_cols = {moved[j]: v for j, v in st.pending.touched_cols.items()}
    st.insts = list(insts)
