"""A single-feature anomaly scorer: a new extreme, measured in recent ranges.

One metric per key (a venue's latency, a reject rate) has no multivariate structure for
Half-Space Trees, and a Gaussian's tail saturates or goes blind at zero variance.
:class:`RangeScorer` asks an operator's question: *is this beyond anything seen lately,
and by how much of the recent range?* Over four channels (the value, its 3- and 12-point
means, and its stillness), the score is how far a channel lies beyond its envelope of
the last ``blocks`` blocks of ``block`` points, in envelope ranges, divided by the
envelope's expected growth (:func:`envelope_growth`); any departure from a flat history
scores ``FLAT_DEPARTURE``. An anomalous point is learned clipped (an envelope at most
doubles per block) until ``accept`` points in a row; a short excursion, once over, is
learned as it was. :meth:`update` returns ``None`` for the first ``block`` points.
Details: docs/detectors.md ("The learned detector").

>>> scorer = RangeScorer()
>>> [scorer.update(5.0) for _ in range(200)][-1]
0.0
>>> scorer.update(20.0) >= FLAT_DEPARTURE, scorer.reason[0]
(True, 'value')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from riskguard.operators.core.snapshot import persisted

from riskguard.errors import SnapshotError

FLAT_DEPARTURE = 1e9
#: a value past this (either way) is scored but never learned: the sums of twelve values,
#: and the steps between them, overflow long before 1e308
MAX_LEARNED = 1e100
CHANNELS = ("value", "mean3", "mean12", "stillness")
_RESUM = 128  # re-add the running sums exactly this often: no float drift on long streams


STATE_VERSION = 3
"""The version of :class:`RangeState` this scorer reads (and no other)."""


@persisted("riskguard.range_scorer")
@dataclass
class RangeState:
    """A :class:`RangeScorer`'s state: plain lists and numbers."""

    version: int = STATE_VERSION
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
    # per channel: the lowest and highest value of the current anomalous run as it was,
    # before clipping ([] outside a run, or before the channel has an envelope)
    held: list[list[float]] = field(default_factory=lambda: [[] for _ in CHANNELS])


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
        self._check_version()
        self._refresh_all()

    def _refresh_all(self) -> None:
        n = len(CHANNELS)
        self._bounds: list[tuple[float, float] | None] = [None] * n
        self._growth = [1.0] * n
        for i in range(n):
            self._refresh(i)

    def _refresh(self, i: int) -> None:
        """Derive channel ``i``'s envelope over its complete blocks and its expected
        growth (once per block, not per point)."""
        self._bounds[i] = self._block_bounds(i)
        self._growth[i] = envelope_growth(self.s.blocks[i], self.nblocks)

    def _check_version(self) -> None:
        """A state of another version is refused, never read as this one."""
        if self.s.version != STATE_VERSION:
            raise SnapshotError("riskguard.range_scorer", f"version {STATE_VERSION} only",
                                f"version {self.s.version}")

    def snapshot(self) -> RangeState:
        s = self.s
        return RangeState(version=s.version, blocks=[list(b) for b in s.blocks],
                          cur=[list(c) for c in s.cur], recent=list(s.recent),
                          steps=list(s.steps), sum12=s.sum12, sum48=s.sum48,
                          step_mean=s.step_mean, prev=s.prev, n=s.n, run=s.run,
                          held=[list(h) for h in s.held])

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
        # each channel is defined once its window is full: a partial window's mean (or a
        # few first steps) would set an envelope that hides later spikes (or stillness)
        mean3 = (r[-1] + r[-2] + r[-3]) / 3.0 if n >= 3 else None
        mean12 = s.sum12 / 12.0 if n == 12 else None
        stillness = (max(s.sum48, 0.0) / len(st) + 1e-3 * s.step_mean
                     if len(st) == 48 else None)
        return [x, mean3, mean12, stillness]

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
            self._refresh(i)

    def _hold(self, i: int, v: float) -> None:
        """Keep the run's extremes as they were, while the envelope learns them clipped."""
        h = self.s.held[i]
        if not h:
            h += (v, v)
        elif v < h[0]:
            h[0] = v
        elif v > h[1]:
            h[1] = v

    def _release(self, length: int) -> None:
        """A run of ``length`` anomalous points is over: one of at most a block was an
        excursion, whose extremes are learned as they were (the same burst again is not
        new); a longer one was a move the clipped envelope has already followed."""
        s = self.s
        for i, h in enumerate(s.held):
            if h and length <= self.block:
                cur = s.cur[i]
                if cur[2]:
                    cur[0], cur[1] = min(cur[0], h[0]), max(cur[1], h[1])
                else:  # this point closed a block: widen that block
                    lo, hi = s.blocks[i][-1]
                    s.blocks[i][-1] = (min(lo, h[0]), max(hi, h[1]))
                    self._refresh(i)
            s.held[i] = []

    def update(self, x: float) -> float | None:
        """Score ``x`` against the envelopes, then learn it; None while warming up."""
        if not -MAX_LEARNED <= x <= MAX_LEARNED:
            return self._score_unlearned(x)
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
            if e:
                e /= self._growth[i]
            if e > score:
                score = e
                self.reason = (CHANNELS[i], v, lo, hi, e)
        anomalous = score >= self.threshold
        ended = 0 if anomalous else s.run  # the length of the run this point ends
        s.run = s.run + 1 if anomalous else 0
        clip = anomalous and s.run <= self.accept
        for i, v in enumerate(vals):
            if v is None:
                continue
            if clip and (s.cur[i][2] or self._bounds[i] is not None):
                self._hold(i, v)
                lo, hi = self._bounds[i] or bounds[i]
                w = hi - lo
                # a flat envelope has no range to widen by: clipped to it, a move would
                # stay anomalous until ``accept``; after a block it is learned as it is
                if w > 0.0 or s.run <= self.block:
                    v = min(max(v, lo - w), hi + w)  # noqa: PLW2901
            self._add(i, v)
        if ended:
            self._release(ended)
        return score

    def _score_unlearned(self, x: float) -> float | None:
        """A value too large to learn: its excess over the value channel's envelope,
        the state left as it was (None while warming up)."""
        self.reason = None
        if self.s.n < self.block or self._bounds[0] is None:
            return None
        lo, hi = self._bounds_of(0)
        e = excess(x, lo, hi) / self._growth[0]
        self.reason = (CHANNELS[0], x, lo, hi, e)
        return e


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


def envelope_growth(blocks: Sequence[tuple[float, float]], full: int) -> float:
    """How many times wider the envelope of ``blocks`` (each block's lowest and
    highest value) is expected to be once it spans ``full`` blocks.

    Over ``b`` blocks its range has grown from one block's (their mean range ``r1``)
    to the envelope's ``rb``; as a power law, ``rb = r1 * b ** h``. Carried on to
    ``full`` blocks that is a factor ``(full / b) ** h``. ``h`` is the exponent of
    Hurst's rescaled-range analysis: near 0 for a series that keeps to one band (each
    block already spans it), 0.5 for a random walk, 1 for a trend (the cap). Fewer than
    two blocks, a full history, or blocks without a range say nothing: 1.

    >>> envelope_growth([(0.0, 1.0)] * 4, 48)  # the same band in every block
    1.0
    >>> envelope_growth([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)], 48)  # a trend
    12.0
    >>> round(envelope_growth([(0.0, 1.0), (0.5, 1.5)] * 2, 48), 3)  # a band that wanders
    2.068
    """
    b = len(blocks)
    if b < 2 or b >= full:
        return 1.0
    r1 = sum(hi - lo for lo, hi in blocks) / b
    rb = max(hi for _, hi in blocks) - min(lo for lo, _ in blocks)
    if r1 <= 0.0 or rb <= r1:
        return 1.0
    h = min(1.0, math.log(rb / r1) / math.log(b))
    return float((full / b) ** h)
