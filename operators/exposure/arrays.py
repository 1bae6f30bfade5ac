"""Whole-array helpers of the stage-1 valuation: runs of equal values, the EWMA over
runs, and segment sums with the same bits as a Python loop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# the EWMA recursion's cost in Python-loop steps: one numpy step across every column,
# and the per-column overhead of the loop (measured, see :func:`ewma_runs`)
_STEP_COST, _COLUMN_COST = 130, 6


def log_ratio(new: float, old: float) -> float:
    """``log(new / old)`` of two positive prices; where their ratio passes the float
    range (1e308 against 5e-324: inf or 0), the difference of their logs instead.

    >>> log_ratio(2.0, 1.0) == math.log(2.0), round(log_ratio(5e-324, 1e308), 1)
    (True, -1453.6)
    """
    q = new / old
    if 0.0 < q < math.inf:
        return math.log(q)
    return math.log(new) - math.log(old)


def log_ratios(new: Any, old: Any) -> Any:
    """:func:`log_ratio` of each pair of two arrays of positive prices, bit for bit."""
    with np.errstate(over="ignore", under="ignore"):
        q = new / old
    odd = ~((q > 0.0) & (q < np.inf))
    r = np.array(list(map(math.log, np.where(odd, 1.0, q).tolist())))
    for i in np.flatnonzero(odd).tolist():
        r[i] = math.log(new[i]) - math.log(old[i])
    return r


def run_starts(a: Any) -> Any:
    """Mask of the positions where a run of equal values in ``a`` starts."""
    out = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=out[1:])
    return out


def run_ends(a: Any) -> Any:
    """Mask of the positions where a run of equal values in ``a`` ends."""
    out = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=out[:-1])
    return out


def shifted(a: Any, first: Any) -> Any:
    """``a`` moved one place right, ``first`` in front (its last value dropped)."""
    out = np.empty_like(a)
    if len(a):
        out[0] = first
        out[1:] = a[:-1]
    return out


def not_before_earlier(js: Any, ts: Any, starts: Any) -> Any:
    """Mask: ``ts`` is not older than any earlier ``ts`` of its run of equal ``js``
    (``starts``: where those runs start), a per-run running maximum in one pass.

    >>> js, ts = np.array([0, 0, 0, 1, 1]), np.array([5, 3, 5, 9, 8])
    >>> not_before_earlier(js, ts, run_starts(js)).tolist()
    [True, False, True, True, False]
    """
    _u, rank = np.unique(ts, return_inverse=True)  # times as ranks: room for a run offset
    n = len(ts)
    g = np.cumsum(starts) - 1
    top = np.maximum.accumulate(g * n + rank) - g * n  # the running max rank per run
    prev = shifted(top, -1)
    prev[starts] = -1
    return rank >= prev


def ewma_runs(var: Any, fresh: Any, x: Any, first: Any, lens: Any, alpha: float) -> Any:
    """``var`` after the EWMA recursion ``v = (1 - alpha) * v + alpha * x`` over each
    column's run of ``x`` (run ``k`` is ``x[first[k]:first[k] + lens[k]]``; a ``fresh``
    column starts from its first ``x``). Bit-identical either way it is computed: step
    by step across all runs at once when runs are short (many columns, few marks each),
    else run by run on Python floats (the same IEEE operations as numpy's).

    >>> v = ewma_runs(np.array([1.0, 0.0]), np.array([False, True]),
    ...                np.array([2.0, 4.0, 3.0, 5.0]), np.array([0, 2]), np.array([2, 2]), 0.5)
    >>> v.tolist()
    [2.75, 4.0]
    """
    beta = 1 - alpha
    steps = int(lens.max())
    if steps * _STEP_COST < len(x) + _COLUMN_COST * len(lens):
        v = var.copy()
        v[fresh] = x[first[fresh]]
        done = fresh.astype(np.int64)  # a fresh column used its first x already
        for s in range(steps):
            k = np.flatnonzero(lens > done + s)
            if not len(k):
                break
            v[k] = beta * v[k] + alpha * x[first[k] + done[k] + s]
        return v
    xs = x.tolist()
    out = var.tolist()
    for c, (start, n, new) in enumerate(zip(first.tolist(), lens.tolist(), fresh.tolist(),
                                            strict=True)):
        v, lo = (xs[start], start + 1) if new else (out[c], start)
        for xv in xs[lo:start + n]:
            v = beta * v + alpha * xv
        out[c] = v
    return np.array(out, dtype=np.float64)


# the zero numpy's short pairwise sum starts from (-0.0 since numpy 2: the sum of -0.0s
# keeps its sign), read off numpy itself so the small-book path matches it bit for bit
_SUM_ZERO = float(np.add.reduceat(np.array([-0.0, -0.0]), np.array([0]))[0])


def seq_sum(xs: list[float]) -> float:
    """numpy's ``add.reduceat`` of one segment of at most :data:`_SEQ_SUM_MAX` terms, the
    same bits (0.0 for none).

    >>> xs = [0.1, 0.2, 0.3, 1e16, -1e16]
    >>> seq_sum(xs) == float(np.add.reduceat(np.array(xs), np.array([0]))[0])
    True
    """
    if len(xs) < 2:
        return xs[0] if xs else 0.0
    rest = _SUM_ZERO
    for x in xs[1:]:
        rest += x
    return xs[0] + rest


def row_reduce(ufunc: Any, flat: Any, bounds: Any, empty: float) -> list[Any]:
    """Per-row ``ufunc`` reduction of row-major ``flat`` values split at ``bounds``
    (``empty`` for a row with none). Only the rows that hold values start a segment:
    each then runs to the next such row's start, which is its own end.

    >>> bounds = np.array([0, 2, 2, 3, 3])  # rows of 2, 0, 1 and 0 values
    >>> row_reduce(np.add, np.array([1.0, 2.0, 4.0]), bounds, 0.0)
    [3.0, 0.0, 4.0, 0.0]
    """
    n = len(bounds) - 1
    held = bounds[1:] > bounds[:-1]
    if not len(flat) or not held.any():
        return [empty] * n
    red = ufunc.reduceat(flat, bounds[:-1][held])
    out = np.full(n, empty, dtype=red.dtype)
    out[held] = red
    return out.tolist()
