"""ArrayHST is River's HalfSpaceTrees: same scores, same node masses, cheap snapshots."""

from __future__ import annotations

import pickle
import random

import pytest
from riskguard.operators.detection.hst import ArrayHST, hst_shape
from river import anomaly

FEATURES = ("a", "b", "c", "d")


def _points(n: int, seed: int = 3) -> list[list[float]]:
    rng = random.Random(seed)
    pts = [[min(1.0, max(0.0, rng.gauss(0.5, 0.12))) for _ in FEATURES] for _ in range(n)]
    for i in range(0, n, 37):  # some outliers, so scores vary and walks stop early
        pts[i] = [rng.random() for _ in FEATURES]
    return pts


def _river_masses(model: anomaly.HalfSpaceTrees, attr: str, n_nodes: int) -> list[int]:
    """River's node masses of every tree, in the complete binary layout ArrayHST uses."""
    out = [0] * (len(model.trees) * n_nodes)
    for t, root in enumerate(model.trees):
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            out[t * n_nodes + i] = getattr(node, attr)
            if hasattr(node, "children"):
                stack.append((node.children[0], 2 * i + 1))
                stack.append((node.children[1], 2 * i + 2))
    return out


@pytest.mark.parametrize(("height", "window"), [(8, 50), (3, 7), (6, 300)])
def test_scores_and_node_masses_equal_rivers_half_space_trees(height: int, window: int) -> None:
    """Score-then-learn over several window pivots gives River's exact scores, and the
    snapshot's per-node masses equal River's nodes' l_mass and r_mass."""
    river = anomaly.HalfSpaceTrees(n_trees=6, height=height, window_size=window, seed=11,
                                   limits=dict.fromkeys(FEATURES, (0.0, 1.0)))
    model = ArrayHST(hst_shape(FEATURES, n_trees=6, height=height, window_size=window,
                               seed=11))
    n_nodes = model.shape.n_nodes
    for i, xs in enumerate(_points(4 * window + 13)):
        expected = river.score_one(dict(zip(FEATURES, xs, strict=True)))
        got, _ = model.score(xs)
        assert got == expected, f"point {i}: {got} != River's {expected}"
        river.learn_one(dict(zip(FEATURES, xs, strict=True)))
        model.learn(xs)
    l_mass, r_mass, counter, first_window = model.state()
    itemsize = 1 if window <= 255 else 4
    as_ints = [int.from_bytes(l_mass[k:k + itemsize], "little")
               for k in range(0, len(l_mass), itemsize)]
    assert as_ints == _river_masses(river, "l_mass", n_nodes)
    as_ints = [int.from_bytes(r_mass[k:k + itemsize], "little")
               for k in range(0, len(r_mass), itemsize)]
    assert as_ints == _river_masses(river, "r_mass", n_nodes)
    assert (counter, first_window) == (river.counter, river._first_window)


def test_uncount_takes_back_a_counted_point_exactly() -> None:
    """score(count=True) followed by uncount leaves the state as it was."""
    model = ArrayHST(hst_shape(FEATURES, window_size=20))
    for xs in _points(47):
        model.learn(xs)
    before = model.state()
    _, leaves = model.score([0.9, 0.1, 0.5, 0.5], count=True)
    assert model.state() != before
    model.uncount(leaves)
    assert model.state() == before


def test_restored_model_scores_like_the_original() -> None:
    """A model rebuilt from state() (per-node bytes) continues with the same scores."""
    shape = hst_shape(FEATURES, window_size=30)
    model = ArrayHST(shape)
    pts = _points(200)
    for xs in pts[:95]:
        model.learn(xs)
    copy = ArrayHST(shape, *pickle.loads(pickle.dumps(model.state())))
    for xs in pts[95:]:
        assert copy.score(xs)[0] == model.score(xs)[0]
        copy.learn(xs)
        model.learn(xs)
    assert copy.state() == model.state()


def test_shape_pickles_as_its_settings() -> None:
    """A pickled shape (with its compiled walk) is rebuilt from its settings, equal."""
    shape = hst_shape(FEATURES, n_trees=4, height=5, window_size=40, seed=2)
    again = pickle.loads(pickle.dumps(shape))
    assert again == shape
    assert again.walk([0.2, 0.9, 0.4, 0.6]) == shape.walk([0.2, 0.9, 0.4, 0.6])
    assert len(shape.walk([0.5] * len(FEATURES))) == 4
