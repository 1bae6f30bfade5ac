"""The NAB scorer (``bench/nab.py``) scores by the benchmark's published rules: its
hand-worked examples hold, and on the real corpus part the never-firing and perfect
detectors land exactly on 0 and 100 for every profile."""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _nab() -> ModuleType:
    """``bench/nab.py``, imported by file name (the bench folder is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("nab")


@pytest.fixture(scope="module")
def corpus() -> tuple[ModuleType, list[Any], dict[str, Any]]:
    """The real corpus and profiles, or a skip saying where the data was looked for."""
    nab = _nab()
    root = nab.nab_root()
    reason = nab.missing_reason(root)
    if reason:
        pytest.skip(reason)
    return nab, nab.load_corpus(root), nab.load_profiles(root)


def test_docstring_examples_run() -> None:
    """The scorer's hand-worked >>> cases (window start/end, miss, near and far false
    positives, probation, null/perfect normalization, the sweep) give what they show."""
    nab = _nab()
    tests = doctest.DocTestFinder(exclude_empty=True).find(nab, "nab")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.attempted > 20
    assert result.failed == 0


def test_corpus_has_30_series_and_55_windows(corpus: tuple[ModuleType, list[Any],
                                                           dict[str, Any]]) -> None:
    """Loading finds every labelled series with its rows, and every window maps onto rows
    (start before end, inside the series)."""
    nab, series, profiles = corpus
    assert len(series) == 30
    assert sum(len(s.windows) for s in series) == 55
    assert set(profiles) == set(nab.PROFILE_NAMES)
    assert any(s.name == "realKnownCause/nyc_taxi.csv" for s in series)
    for s in series:
        assert len(s.timestamps) == len(s.values) > 1000
        for start, end in s.windows:
            assert 0 <= start < end < len(s)


def test_never_and_perfect_detectors_normalize_to_0_and_100(
        corpus: tuple[ModuleType, list[Any], dict[str, Any]]) -> None:
    """On the whole corpus, for all three profiles, a detector that never fires scores 0.0
    and one firing only on each window's first row scores 100.0."""
    nab, series, profiles = corpus
    never = {s.name: [0.0] * len(s) for s in series}
    perfect = nab.perfect_scores(series)
    for name in nab.PROFILE_NAMES:
        p = profiles[name]
        assert nab.score_at_threshold(never, series, p, 0.5).normalized == pytest.approx(0.0)
        top = nab.score_at_threshold(perfect, series, p, 0.5)
        assert top.normalized == pytest.approx(100.0)
        assert (top.outcome.tp, top.outcome.fp, top.outcome.fn) == (55, 0, 0)


def test_sweep_matches_fixed_threshold_scoring(
        corpus: tuple[ModuleType, list[Any], dict[str, Any]]) -> None:
    """The sweep's best threshold, re-scored as a fixed threshold, gives the same raw score
    and counts, and no other candidate threshold tried here beats it."""
    nab, series, profiles = corpus
    # A cheap deterministic detector: relative jump from the previous value.
    scores = {s.name: [0.0] + [abs(b - a) / (abs(a) + 1.0)
                               for a, b in zip(s.values, s.values[1:], strict=False)]
              for s in series}
    p = profiles["standard"]
    best = nab.sweep_threshold(scores, series, p)
    fixed = nab.score_at_threshold(scores, series, p, best.threshold)
    assert fixed.outcome.raw == pytest.approx(best.outcome.raw)
    assert (fixed.outcome.tp, fixed.outcome.fp) == (best.outcome.tp, best.outcome.fp)
    for t in (0.05, 0.2, 0.5, 1.0, 3.0):
        assert nab.score_at_threshold(scores, series, p, t).outcome.raw <= best.outcome.raw + 1e-9
