"""River's Half-Space Trees in array form: shared tree shape, per-key masses.

River's :class:`river.anomaly.HalfSpaceTrees` keeps every node as a Python object,
pickled in every snapshot of every key. :class:`ArrayHST` runs the same algorithm on
the same trees: the tree *shape* is drawn once with River's ``make_padded_tree`` and
random sequence, shared read-only by every key with the same settings and compiled into
one function that finds a point's leaf in every tree; each key owns only counters (leaf
masses of the latest window, node masses of the reference window, and a per-leaf score
table rebuilt at each pivot), so learning or scoring is one step per tree, and a
snapshot is the node masses as bytes in River's breadth-first order. Scores equal
River's for the same seed, features and input (a test checks this).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["ArrayHST", "HSTShape", "hst_shape"]

Walk = Callable[[Sequence[float]], tuple[int, ...]]


@dataclass(frozen=True)
class HSTShape:
    """The read-only structure shared by every key: split features and thresholds.
    ``walk(xs)`` returns the leaf of ``xs`` in every tree as a leaf number
    ``tree * 2 ** height + position``; a pickled shape is rebuilt from its settings."""

    features: tuple[str, ...]
    n_trees: int
    height: int
    window_size: int
    seed: int
    n_nodes: int  # nodes per tree, complete binary layout (children 2i+1, 2i+2)
    feat: tuple[int, ...]  # split feature index per node (all trees, flat)
    thr: tuple[float, ...]  # split threshold per node
    size_limit: float
    max_score: float
    walk: Walk = field(compare=False, repr=False)

    @property
    def n_leaves(self) -> int:
        """Leaves per tree."""
        return 1 << self.height

    def __reduce__(self) -> tuple[Any, ...]:
        return hst_shape, (self.features, self.n_trees, self.height, self.window_size,
                           self.seed)


def _compile_walk(feat: list[int], thr: list[float], n_features: int, n_trees: int,
                  height: int) -> Walk:
    """One function of nested ``if x < threshold`` per tree, returning the leaves; its
    source holds only indices, float literals (``repr`` round-trips) and leaf numbers."""
    n_nodes = 2 ** (height + 1) - 1
    first_leaf = 2**height - 1
    lines = ["def walk(xs):", "    " + "".join(f"x{k}, " for k in range(n_features)) + "= xs"]

    def node(t: int, i: int, depth: int) -> None:
        pad = "    " * (depth + 1)
        if depth == height:
            lines.append(f"{pad}l{t} = {t * (first_leaf + 1) + i - first_leaf}")
            return
        j = t * n_nodes + i
        lines.append(f"{pad}if x{feat[j]} < {thr[j]!r}:")
        node(t, 2 * i + 1, depth + 1)
        lines.append(f"{pad}else:")
        node(t, 2 * i + 2, depth + 1)

    for t in range(n_trees):
        node(t, 0, 0)
    lines.append("    return (" + "".join(f"l{t}, " for t in range(n_trees)) + ")")
    namespace: dict[str, Any] = {}
    # the source is generated from numbers only (see above), never from input
    exec(compile("\n".join(lines), "<hst walk>", "exec"), namespace)
    walk: Walk = namespace["walk"]
    return walk


@lru_cache(maxsize=64)
def hst_shape(features: tuple[str, ...], n_trees: int = 10, height: int = 8,
              window_size: int = 250, seed: int = 42) -> HSTShape:
    """Draw the trees exactly as River's ``HalfSpaceTrees`` does (limits ``[0, 1]``)."""
    try:  # river import is slow: lazy
        from river.tree.padded import make_padded_tree  # noqa: PLC0415  # River >= 0.26
    except ImportError:  # River 0.22-0.25 keep the same function beside HalfSpaceTrees
        from river.anomaly.hst import make_padded_tree  # noqa: PLC0415

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
        thr=tuple(thr),
        size_limit=0.1 * window_size,
        max_score=float(n_trees * window_size * (2 ** (height + 1) - 1)),
        walk=_compile_walk(feat, thr, len(index), n_trees, height),
    )


def _dtype(window_size: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if window_size <= 255 else np.uint32


def _counters(n: int, window_size: int) -> bytearray | array[int]:
    return bytearray(n) if window_size <= 255 else array("I", bytes(4 * n))


def _load(raw: bytes, window_size: int) -> bytearray | array[int]:
    if window_size <= 255:
        return bytearray(raw)
    out = array("I")
    out.frombytes(raw)
    return out


class ArrayHST:
    """One key's Half-Space Trees; ``xs`` lists values in ``shape.features`` order.

    ``score(xs)`` returns ``(score, leaves)`` where ``leaves`` lets a following
    :meth:`uncount` take back a counted point. Inputs are expected in
    ``[0, 1]`` (River's default limits).
    """

    __slots__ = ("counter", "first_window", "leaf_mass", "r_mass", "shape", "table")
    leaf_mass: bytearray | array[int]
    r_mass: np.ndarray[Any, Any] | None
    table: array[int] | None

    def __init__(self, shape: HSTShape, l_mass: bytes | None = None,
                 r_mass: bytes | None = None, counter: int = 0,
                 first_window: bool = True) -> None:
        self.shape = shape
        dtype = _dtype(shape.window_size)
        if l_mass:
            nodes = np.frombuffer(l_mass, dtype=dtype).reshape(shape.n_trees, shape.n_nodes)
            self.leaf_mass = _load(nodes[:, shape.n_leaves - 1:].tobytes(), shape.window_size)
        else:
            self.leaf_mass = _counters(shape.n_trees * shape.n_leaves, shape.window_size)
        self.r_mass = np.frombuffer(r_mass, dtype=dtype).copy() if r_mass else None
        self.counter = counter
        self.first_window = first_window
        self.table = None if first_window else self._table()

    def _nodes(self) -> np.ndarray[Any, Any]:
        """The latest window's mass of every node, summed up from the leaves."""
        sh = self.shape
        level = np.frombuffer(self.leaf_mass, dtype=_dtype(sh.window_size))
        level = level.reshape(sh.n_trees, sh.n_leaves)
        levels = [level]
        while level.shape[1] > 1:  # each parent is the sum of its two children
            level = level[:, ::2] + level[:, 1::2]
            levels.append(level)
        return np.concatenate(levels[::-1], axis=1).reshape(-1)

    def _table(self) -> array[int]:
        """River's score of each leaf's points in its tree, from the reference masses."""
        sh = self.shape
        if self.r_mass is None:
            self.r_mass = np.zeros(sh.n_trees * sh.n_nodes, dtype=_dtype(sh.window_size))
        r = self.r_mass.reshape(sh.n_trees, sh.n_nodes).astype(np.int64)
        lim = sh.size_limit
        # level by level: a node adds ``mass * 2 ** depth`` while every node above it
        # on the path had mass >= size_limit (River's walk stops after the first that
        # has not)
        total = r[:, :1]
        going = total >= lim
        for depth in range(1, sh.height + 1):
            level = r[:, (1 << depth) - 1:(2 << depth) - 1]
            going = going.repeat(2, axis=1)
            total = total.repeat(2, axis=1) + np.where(going, level << depth, 0)
            going &= level >= lim
        total = total.reshape(-1)
        code = "I" if total.max(initial=0) < 2**32 else "q"
        return array(code, total.astype(np.uint32 if code == "I" else np.int64).tobytes())

    def state(self) -> tuple[bytes, bytes, int, bool]:
        """Masses of every node as bytes plus the window counter: an independent copy."""
        sh = self.shape
        r = (self.r_mass.tobytes() if self.r_mass is not None else
             bytes(sh.n_trees * sh.n_nodes * np.dtype(_dtype(sh.window_size)).itemsize))
        return self._nodes().tobytes(), r, self.counter, self.first_window

    @property
    def ready(self) -> bool:
        """False until the first window has been learned (River scores 0 until then)."""
        return not self.first_window

    def score(self, xs: Sequence[float], count: bool = False) -> tuple[float, tuple[int, ...]]:
        """River's HST score of ``xs`` (0 during the first window) and its leaf per tree.

        With ``count=True`` the point is also counted in the latest window
        (the learning half of River's ``learn_one``); follow it with
        :meth:`commit` to keep that, or :meth:`uncount` to take it back.
        Score first, then learn, in one walk.
        """
        leaves = self.shape.walk(xs)
        if count:
            lm = self.leaf_mass
            for leaf in leaves:
                lm[leaf] += 1
        table = self.table
        if table is None:
            return 0.0, leaves
        total = 0
        for leaf in leaves:
            total += table[leaf]
        return 1.0 - total / self.shape.max_score, leaves

    def uncount(self, leaves: Sequence[int]) -> None:
        """Take back a ``score(..., count=True)`` that should not be learned."""
        lm = self.leaf_mass
        for leaf in leaves:
            lm[leaf] -= 1

    def commit(self) -> None:
        """Finish learning one counted point: pivot the window when it is full."""
        self.counter += 1
        if self.counter == self.shape.window_size:
            self.r_mass = self._nodes()
            self.leaf_mass = _counters(len(self.leaf_mass), self.shape.window_size)
            self.first_window = False
            self.counter = 0
            self.table = self._table()

    def learn(self, xs: Sequence[float]) -> None:
        """River's ``learn_one``: count ``xs`` along its path in every tree."""
        self.score(xs, count=True)
        self.commit()
