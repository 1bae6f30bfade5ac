"""A rolling quantile of anomaly scores in fixed memory: the detector's threshold.

>>> q = ScoreQuantile(window=100, bounded=True)
>>> for i in range(100):
...     q.update(i / 100)
>>> round(q.get(0.9), 2)
0.95
"""

from __future__ import annotations

import math
from array import array
from typing import Any

_BINS = 256
_MAX_FINITE = 1.7976931348623157e308
_EMPTY_BINS = bytes(4 * _BINS)


class ScoreQuantile:
    """A rolling quantile in fixed memory: exact counts in 256 bins, two half windows.

    Scores of the last ``window / 2`` to ``window`` points are counted (the
    older half is dropped whole when the newer one fills). ``get(q)`` returns
    the upper edge of the bin holding the ``q`` quantile, so it errs high by at
    most one bin. Model scores in ``[lo, hi]`` are binned linearly; others
    are mapped by ``s / (1 + |s|)`` first.
    """

    __slots__ = ("bounded", "cur", "half", "n_cur", "n_old", "old", "top")

    def __init__(self, window: int, bounded: bool, state: tuple[Any, ...] | None = None) -> None:
        self.half = max(1, window // 2)
        self.bounded = bounded
        if state is None:
            self.cur = array("I", _EMPTY_BINS)
            self.old = array("I", _EMPTY_BINS)
            self.n_cur = self.n_old = 0
            self.top = 0
        else:
            cur, old, self.n_cur, self.n_old = state
            self.cur = array("I")
            self.cur.frombytes(cur)
            self.old = array("I")
            self.old.frombytes(old)
            self._find_top()

    def _find_top(self) -> None:
        """The highest non-empty bin: ``get`` scans down from there."""
        cur, old = self.cur, self.old
        self.top = 0
        for b in range(_BINS - 1, -1, -1):
            if cur[b] or old[b]:
                self.top = b
                break

    def state(self) -> tuple[bytes, bytes, int, int]:
        return self.cur.tobytes(), self.old.tobytes(), self.n_cur, self.n_old

    @property
    def count(self) -> int:
        return self.n_cur + self.n_old

    def _bin(self, s: float) -> int:
        u = s if self.bounded else 0.5 + 0.5 * s / (1.0 + abs(s))
        return min(_BINS - 1, max(0, int(u * _BINS)))

    def _edge(self, b: int) -> float:
        u = (b + 1) / _BINS
        if self.bounded:
            return u
        v = 2.0 * u - 1.0
        return v / (1.0 - abs(v)) if abs(v) < 1.0 else _MAX_FINITE

    def update(self, s: float) -> None:
        b = self._bin(s)
        self.cur[b] += 1
        self.top = max(self.top, b)
        self.n_cur += 1
        if self.n_cur >= self.half:
            self.old, self.cur = self.cur, self.old
            self.n_old = self.n_cur
            self.n_cur = 0
            self.cur = array("I", _EMPTY_BINS)
            self._find_top()

    def get(self, q: float) -> float:
        n = self.n_cur + self.n_old
        if n == 0:
            return math.inf
        tail = (1.0 - q) * n
        cum = 0
        cur, old = self.cur, self.old
        for b in range(self.top, -1, -1):
            cum += cur[b] + old[b]
            if cum > tail:
                return self._edge(b)
        return self._edge(0)
