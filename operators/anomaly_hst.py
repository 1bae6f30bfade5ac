"""River's Half-Space Trees in array form: shared tree shape, per-key masses.

River's :class:`river.anomaly.HalfSpaceTrees` keeps every node as a Python
object. Per key that costs about 15 ms to build (the trees are made on the
first ``learn_one``), about 170 KB to pickle and about 6 ms per snapshot,
which dominates a keyed flow with many keys and frequent epochs.

:class:`ArrayHST` runs the same algorithm on the same trees:

- the tree *shape* (split feature and threshold of every node) is drawn once
  by River's own ``make_padded_tree`` with River's random sequence for the
  given seed, and is shared (read-only) by every key with the same features
  and settings;
- each key owns only the node masses: two ``bytearray`` (or ``array('I')``
  when ``window_size`` exceeds 255) of ``n_trees * (2 ** (height + 1) - 1)``
  counters; with 10 trees of height 8 that is 10 KiB, and a snapshot is a
  byte copy.

Scores equal River's for the same seed, features and input (a test checks
this), so the model *is* River's HST; only its storage differs.

River's own doctest example, in array form (same numbers as River prints):

>>> shape = hst_shape(("x",), n_trees=5, height=3, window_size=3, seed=42)
>>> m = ArrayHST(shape)
>>> X = [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0]
>>> for x in X[:3]:
...     m.learn([x])
>>> scores = []
>>> for x in X:
...     m.learn([x])
...     scores.append(round(m.score([x])[0], 3))
>>> scores
[0.107, 0.071, 0.107, 0.107, 0.107, 0.071, 0.853]
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ArrayHST", "HSTShape", "hst_shape"]


@dataclass(frozen=True)
class HSTShape:
    """The read-only structure shared by every key: split features and thresholds."""

    features: tuple[str, ...]
    n_trees: int
    height: int
    window_size: int
    seed: int
    n_nodes: int  # nodes per tree, complete binary layout (children 2i+1, 2i+2)
    feat: tuple[int, ...]  # split feature index per node (all trees, flat)
    thr: tuple[float, ...]  # split threshold per node
    bases: tuple[int, ...]  # offset of each tree in the flat arrays
    size_limit: float
    max_score: float


@lru_cache(maxsize=64)
def hst_shape(features: tuple[str, ...], n_trees: int = 10, height: int = 8,
              window_size: int = 250, seed: int = 42) -> HSTShape:
    """Draw the trees exactly as River's ``HalfSpaceTrees`` does (limits ``[0, 1]``)."""
    from river.tree.padded import make_padded_tree  # noqa: PLC0415  # river import is slow; lazy

    rng = random.Random(seed)
    n_nodes = 2 ** (height + 1) - 1
    index = {f: i for i, f in enumerate(sorted(features))}
    feat = [0] * (n_trees * n_nodes)
    thr = [0.0] * (n_trees * n_nodes)
    for t in range(n_trees):
        root = make_padded_tree(limits=dict.fromkeys(sorted(features), (0.0, 1.0)),
                                height=height, padding=0.15, rng=rng, r_mass=0, l_mass=0)
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if not hasattr(node, "feature"):
                continue
            feat[t * n_nodes + i] = index[node.feature]
            thr[t * n_nodes + i] = float(node.threshold)
            stack.append((node.children[0], 2 * i + 1))
            stack.append((node.children[1], 2 * i + 2))
    return HSTShape(
        features=tuple(sorted(features)), n_trees=n_trees, height=height,
        window_size=window_size, seed=seed, n_nodes=n_nodes, feat=tuple(feat),
        thr=tuple(thr), bases=tuple(t * n_nodes for t in range(n_trees)),
        size_limit=0.1 * window_size,
        max_score=float(n_trees * window_size * (2 ** (height + 1) - 1)),
    )


def _counters(n: int, window_size: int) -> bytearray | array[int]:
    return bytearray(n) if window_size <= 255 else array("I", bytes(4 * n))


def _load(raw: bytes, window_size: int) -> bytearray | array[int]:
    if window_size <= 255:
        return bytearray(raw)
    out = array("I")
    out.frombytes(raw)
    return out


class ArrayHST:
    """One key's Half-Space Trees: masses only; ``xs`` lists values in ``shape.features`` order.

    ``score(xs)`` returns ``(score, leaves)`` where ``leaves`` lets a following
    ``learn(xs, leaves)`` skip the walk down. Inputs are expected in ``[0, 1]``
    (River's default limits).
    """

    __slots__ = ("counter", "first_window", "l_mass", "r_mass", "shape")
    l_mass: bytearray | array[int]
    r_mass: bytearray | array[int]

    def __init__(self, shape: HSTShape, l_mass: bytes | None = None,
                 r_mass: bytes | None = None, counter: int = 0,
                 first_window: bool = True) -> None:
        self.shape = shape
        n = shape.n_trees * shape.n_nodes
        self.l_mass = _counters(n, shape.window_size)
        self.r_mass = _counters(n, shape.window_size)
        if l_mass:
            self.l_mass = _load(l_mass, shape.window_size)
        if r_mass:
            self.r_mass = _load(r_mass, shape.window_size)
        self.counter = counter
        self.first_window = first_window

    def state(self) -> tuple[bytes, bytes, int, bool]:
        """Masses as bytes plus the window counter: a cheap, independent copy."""
        return bytes(self.l_mass), bytes(self.r_mass), self.counter, self.first_window

    @property
    def ready(self) -> bool:
        """False until the first window has been learned (River scores 0 until then)."""
        return not self.first_window

    def score(self, xs: list[float], count: bool = False) -> tuple[float, list[int]]:
        """River's HST score of ``xs`` (0 during the first window) and the leaf per tree.

        With ``count=True`` the walk also counts ``xs`` in the latest window
        (the learning half of River's ``learn_one``); follow it with
        :meth:`commit` to keep that, or :meth:`uncount` to take it back.
        Score first, then learn, in one walk.
        """
        sh = self.shape
        feat = sh.feat
        thr = sh.thr
        r = self.r_mass
        lm = self.l_mass
        lim = sh.size_limit
        height = sh.height
        total = 0
        leaves = []
        for base in sh.bases:
            i = 0
            p = 1
            d = 0
            while True:
                j = base + i
                if count:
                    lm[j] += 1
                m = r[j]
                total += m * p
                if d == height:
                    break
                i = i + i + 1 if xs[feat[j]] < thr[j] else i + i + 2
                d += 1
                if m < lim:
                    # the score stops here (River's size limit); the walk goes on for the leaf
                    while True:
                        j = base + i
                        if count:
                            lm[j] += 1
                        if d == height:
                            break
                        i = i + i + 1 if xs[feat[j]] < thr[j] else i + i + 2
                        d += 1
                    break
                p <<= 1
            leaves.append(base + i)
        if self.first_window:
            return 0.0, leaves
        return 1.0 - total / sh.max_score, leaves

    def uncount(self, leaves: list[int]) -> None:
        """Take back a ``score(..., count=True)`` that should not be learned."""
        lm = self.l_mass
        n_nodes = self.shape.n_nodes
        height = self.shape.height
        for leaf in leaves:
            base = (leaf // n_nodes) * n_nodes
            i = leaf - base
            lm[base + i] -= 1
            for _ in range(height):
                i = (i - 1) >> 1
                lm[base + i] -= 1

    def commit(self) -> None:
        """Finish learning one counted point: pivot the window when it is full."""
        sh = self.shape
        self.counter += 1
        if self.counter == sh.window_size:
            self.r_mass = self.l_mass
            self.l_mass = _counters(len(self.r_mass), sh.window_size)
            self.first_window = False
            self.counter = 0

    def learn(self, xs: list[float]) -> None:
        """River's ``learn_one``: count ``xs`` along its path in every tree."""
        self.score(xs, count=True)
        self.commit()
