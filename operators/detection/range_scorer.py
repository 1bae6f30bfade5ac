"""A single-feature anomaly scorer: a new extreme, measured in recent ranges.

One metric per key (a venue's latency, a reject rate, a spread) has no
multivariate structure for Half-Space Trees to learn, and a Gaussian's tail
saturates or goes blind at zero variance. :class:`RangeScorer` asks a plainer
question, the one an operator asks of a chart: *is this beyond anything seen
lately, and by how much of the recent range?*

- **Channels**, from each value before it is learned: the value itself, the
  mean of the last 3 and of the last 12 (a shift that single points hide),
  and the mean absolute step over the last 48 (low side only: the series went
  still, as a frozen feed does; defined once 48 steps have been seen, so the
  first values, which have no steps yet, never pass for a still series).
- **Envelope** per channel: the lowest and highest value over the last
  ``blocks`` complete blocks of ``block`` points, plus the current block.
- **Score**: how far the channel is beyond its envelope, in envelope ranges
  (``(v - hi) / (hi - lo)`` above, ``(lo - v) / (hi - lo)`` below, 0 inside);
  the largest over the channels. A flat history has no range: any departure
  from it scores ``FLAT_DEPARTURE`` (a spike after a flat series is never
  missed), a value equal to it scores 0.
- **Learning, protected.** While a point is anomalous it is learned clipped to
  the complete blocks' envelope widened by one range each side, so an envelope
  can at most double its range per block: a persistent move of ``k`` ranges
  stays anomalous for about ``log2(k + 1)`` blocks instead of being absorbed by
  its first point. After ``accept`` consecutive anomalous points it is learned
  unclipped (a new regime).
- **Warm-up** is explicit: :meth:`update` returns ``None`` for the first
  ``block`` points.

Its state is a few hundred floats.

>>> scorer = RangeScorer()
>>> [scorer.update(5.0) for _ in range(200)][-1]
0.0
>>> scorer.update(20.0) >= FLAT_DEPARTURE, scorer.reason[0]
(True, 'value')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

FLAT_DEPARTURE = 1e9
CHANNELS = ("value", "mean3", "mean12", "stillness")
_RESUM = 128  # re-add the running sums exactly this often: no float drift on long streams


@dataclass
class RangeState:
    """A :class:`RangeScorer`'s state: plain lists and numbers."""

    version: int = 2  # 2: stillness in step units (1: in log units)
    # per channel: complete blocks' (lo, hi), and the open block's lo, hi and count
    blocks: list[list[tuple[float, float]]] = field(default_factory=lambda: [[] for _ in
                                                                            CHANNELS])
    cur: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0, 0.0] for _ in
                                                            CHANNELS])
    recent: list[float] = field(default_factory=list)  # last 12 values
    steps: list[float] = field(default_factory=list)  # last 48 absolute steps
    sum12: float = 0.0
    sum48: float = 0.0
    step_mean: float = 0.0
    prev: float | None = None
    n: int = 0
    run: int = 0


class RangeScorer:
    """Score-then-learn on one value at a time; :meth:`update` returns the score."""

    def __init__(self, block: int = 128, blocks: int = 48, threshold: float = 0.01,
                 accept: int | None = None, state: RangeState | None = None) -> None:
        self.block = block
        self.nblocks = blocks
        self.threshold = threshold
        self.accept = accept if accept is not None else block * blocks // 2
        self.s = state if state is not None else RangeState()
        self.reason: tuple[str, float, float, float, float] | None = None
        self._migrate()
        self._bounds = [self._block_bounds(i) for i in range(len(CHANNELS))]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (a detector's snapshot holds the scorer itself): migrate as
        ``__init__`` does."""
        self.__dict__.update(state)
        if self._migrate():
            self._bounds = [self._block_bounds(i) for i in range(len(CHANNELS))]

    def _migrate(self) -> bool:
        """A version-1 state kept stillness in log units: that channel learns anew."""
        if self.s.version != 1:
            return False
        still = CHANNELS.index("stillness")
        self.s.blocks[still], self.s.cur[still] = [], [0.0, 0.0, 0.0]
        self.s.version = 2
        return True

    def snapshot(self) -> RangeState:
        s = self.s
        return RangeState(version=s.version, blocks=[list(b) for b in s.blocks],
                          cur=[list(c) for c in s.cur], recent=list(s.recent),
                          steps=list(s.steps), sum12=s.sum12, sum48=s.sum48,
                          step_mean=s.step_mean, prev=s.prev, n=s.n, run=s.run)

    @property
    def warming_up(self) -> bool:
        return self.s.n <= self.block

    def _block_bounds(self, i: int) -> tuple[float, float] | None:
        b = self.s.blocks[i]
        if not b:
            return None
        return min(lo for lo, _ in b), max(hi for _, hi in b)

    def _channels(self, x: float) -> list[float | None]:
        s = self.s
        r = s.recent
        s.sum12 += x - (r[0] if len(r) == 12 else 0.0)
        if len(r) == 12:
            del r[0]
        r.append(x)
        st = s.steps
        if s.prev is not None:  # the first value has no step (not a step of 0)
            step = abs(x - s.prev)
            s.sum48 += step - (st[0] if len(st) == 48 else 0.0)
            if len(st) == 48:
                del st[0]
            st.append(step)
            s.step_mean += (step - s.step_mean) / min(s.n, 1000)  # the s.n-th step
        if s.n % _RESUM == 0:
            s.sum12 = math.fsum(r)
            s.sum48 = math.fsum(st)
        s.prev = x
        n = len(r)
        mean3 = (r[-1] + r[-2] + r[-3]) / 3.0 if n >= 3 else s.sum12 / n
        # stillness is defined once it has a full window of steps: a partial window
        # (the first values) is not a still series, and must not set its low envelope;
        # in step units, like the other channels in theirs, so its excess is a share of
        # the spread between the quietest and the busiest recent stretches
        stillness = (max(s.sum48, 0.0) / len(st) + 1e-3 * s.step_mean
                     if len(st) == 48 else None)
        return [x, mean3, s.sum12 / n, stillness]

    def _bounds_of(self, i: int) -> tuple[float, float]:
        cur = self.s.cur[i]
        bb = self._bounds[i]
        if bb is None:
            return cur[0], cur[1]
        if cur[2] == 0:
            return bb
        return min(bb[0], cur[0]), max(bb[1], cur[1])

    def _add(self, i: int, v: float) -> None:
        s = self.s
        cur = s.cur[i]
        if cur[2] == 0:
            cur[0] = cur[1] = v
        elif v < cur[0]:
            cur[0] = v
        elif v > cur[1]:
            cur[1] = v
        cur[2] += 1
        if cur[2] >= self.block:
            blocks = s.blocks[i]
            blocks.append((cur[0], cur[1]))
            if len(blocks) > self.nblocks:
                del blocks[0]
            cur[2] = 0
            self._bounds[i] = self._block_bounds(i)

    def update(self, x: float) -> float | None:
        """Score ``x`` against the envelopes, then learn it; None while warming up."""
        s = self.s
        vals = self._channels(x)
        s.n += 1
        if s.n <= self.block:
            for i, v in enumerate(vals):
                if v is not None:
                    self._add(i, v)
            return None
        score = 0.0
        self.reason = None
        bounds = []
        for i, v in enumerate(vals):
            lo, hi = self._bounds_of(i)
            bounds.append((lo, hi))
            if v is None or self._bounds[i] is None:
                continue  # the channel is not defined yet, or has no complete block yet
            e = excess(v, lo, hi) if i < 3 or v < lo else 0.0
            if e > score:
                score = e
                self.reason = (CHANNELS[i], v, lo, hi, e)
        anomalous = score >= self.threshold
        s.run = s.run + 1 if anomalous else 0
        clip = anomalous and s.run <= self.accept
        for i, v in enumerate(vals):
            if v is None:
                continue
            if clip and (s.cur[i][2] or self._bounds[i] is not None):
                lo, hi = self._bounds[i] or bounds[i]
                w = hi - lo
                v = min(max(v, lo - w), hi + w)  # noqa: PLW2901
            self._add(i, v)
        return score


def excess(v: float, lo: float, hi: float) -> float:
    """How far ``v`` lies beyond ``[lo, hi]``, in ranges; ``FLAT_DEPARTURE`` off a flat
    envelope.

    >>> excess(12.0, 0.0, 10.0), excess(5.0, 0.0, 10.0), excess(5.0, 5.0, 5.0)
    (0.2, 0.0, 0.0)
    """
    if v > hi:
        e = v - hi
    elif v < lo:
        e = lo - v
    else:
        return 0.0
    rng = hi - lo
    if rng > 0:
        return e / rng
    return 0.0 if e <= 1e-12 * max(abs(hi), abs(lo)) else FLAT_DEPARTURE
