"""Score streaming anomaly detectors on the NAB part in ``shared/data/nab``.

This is a self-contained re-implementation of the Numenta Anomaly Benchmark's
scoring rules (``shared/data/nab/README.md``; semantics checked against NAB's
own ``nab/sweeper.py``), so a detector's per-row anomaly scores can be turned
into the benchmark's normalized figure without NAB or pandas. The data is never
copied into the project: :func:`load_corpus` reads it from :func:`nab_root`.

Rules, per series of ``n`` rows with labelled windows ``[start, end]`` (row
indices, inclusive) and a profile's ``tpWeight``, ``fpWeight``, ``fnWeight``:

- The first ``min(floor(0.15 * n), 750)`` rows are the probation period: a
  detection there counts for nothing (not a TP, not an FP).
- Inside a window of ``w = end - start + 1`` rows, a detection at row ``i`` has
  position ``y = -(end - i + 1) / w`` (``-1`` at the window's first row,
  ``-1/w`` at its last). Only the earliest scored detection in a window counts:
  ``tpWeight * S(y) / S(-1)`` with ``S(y) = 2 / (1 + exp(5 y)) - 1``, so a
  detection on a window's first row earns exactly ``tpWeight``. A window
  without any scored detection costs ``-fnWeight``.
- Outside every window, a detection at row ``i`` after a window that ended at
  row ``e`` (width ``w``) costs ``fpWeight * S((i - e) / (w - 1))``, with
  ``S(y) = -1`` once ``y > 3``; before the first window it costs ``-fpWeight``.
  Every such detection counts (each is a false positive).
- The corpus raw score is the sum over series. ``null`` is the raw score of a
  detector that never fires (``-fnWeight`` per scored window), ``perfect`` the
  raw score of one detection on the first row of every window (``tpWeight`` per
  window), and the normalized score is ``100 * (raw - null) / (perfect - null)``.

Detections come from per-row anomaly scores: row ``i`` is a detection when
``score[i] >= threshold`` (``None`` or NaN never detects). NAB reports each
detector at the threshold that maximizes each profile's raw score over the
corpus; :func:`sweep_threshold` finds it, and :func:`score_at_threshold` scores a
fixed threshold (the honest figure for a detector with one default setting).

Run ``python bench/nab.py`` to print the corpus summary and check that the
never-firing and perfect detectors normalize to 0 and 100 on every profile.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import missing_reason, nab_dir

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750  # NAB: 0.15 * 5000 rows
OUTSIDE = -1  # row-credit tag of a row outside every window
PROBATION = -2  # row-credit tag of a row in the probation period (never scored)
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True)
class Profile:
    """An application profile's cost weights (``config/profiles.json``)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


STANDARD = Profile("standard", 1.0, 0.11, 1.0)


@dataclass(frozen=True)
class Series:
    """One data file: its corpus name, rows and labelled windows.

    ``windows`` are ``(first_row, last_row)`` index pairs, inclusive, in order.
    """

    name: str
    timestamps: tuple[datetime, ...]
    values: tuple[float, ...]
    windows: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Outcome:
    """A raw score and its counts: windows detected (tp) and missed (fn), FP rows."""

    raw: float
    tp: int
    fp: int
    fn: int

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(self.raw + other.raw, self.tp + other.tp, self.fp + other.fp,
                       self.fn + other.fn)


@dataclass(frozen=True)
class CorpusScore:
    """A profile's corpus result at one threshold: the outcome and its normalized score."""

    profile: str
    threshold: float
    outcome: Outcome
    normalized: float


# ---------------------------------------------------------------- loading


def nab_root() -> Path:
    """The benchmark folder (``data/``, ``labels/``, ``config/``)."""
    return nab_dir()


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def read_series_file(path: Path) -> tuple[tuple[datetime, ...], tuple[float, ...]]:
    """A ``timestamp,value`` CSV's rows, in file order."""
    stamps: list[datetime] = []
    values: list[float] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            stamps.append(_parse_ts(row[0]))
            values.append(float(row[1]))
    return tuple(stamps), tuple(values)


def window_rows(timestamps: Sequence[datetime],
                limits: Iterable[Sequence[str]]) -> tuple[tuple[int, int], ...]:
    """Window limits (timestamp strings) as inclusive row-index pairs.

    A limit matches the first row carrying its timestamp, as NAB does (a few files
    repeat a timestamp at a daylight-saving change); the end is searched from the
    start on.

    >>> ts = [datetime(2024, 1, 1, h) for h in range(6)]
    >>> window_rows(ts, [["2024-01-01 01:00:00.000000", "2024-01-01 03:00:00.000000"]])
    ((1, 3),)
    """
    out: list[tuple[int, int]] = []
    for start_text, end_text in limits:
        start, end = _parse_ts(start_text), _parse_ts(end_text)
        try:
            i = timestamps.index(start)
            j = timestamps.index(end, i)
        except ValueError:
            raise ValueError(f"window [{start_text}, {end_text}] does not match rows") from None
        out.append((i, j))
    return tuple(out)


def load_windows(root: Path | None = None) -> dict[str, list[list[str]]]:
    """``labels/combined_windows.json``: series name -> list of ``[start, end]`` strings."""
    root = root or nab_root()
    with (root / "labels" / "combined_windows.json").open() as f:
        return json.load(f)


def load_profiles(root: Path | None = None) -> dict[str, Profile]:
    """``config/profiles.json`` as :class:`Profile` objects, by name."""
    root = root or nab_root()
    with (root / "config" / "profiles.json").open() as f:
        raw = json.load(f)
    return {name: Profile(name, float(p["CostMatrix"]["tpWeight"]),
                          float(p["CostMatrix"]["fpWeight"]), float(p["CostMatrix"]["fnWeight"]))
            for name, p in raw.items()}


def load_corpus(root: Path | None = None) -> list[Series]:
    """Every labelled series (name like ``realKnownCause/nyc_taxi.csv``), sorted by name."""
    root = root or nab_root()
    reason = missing_reason(root)
    if reason:
        raise FileNotFoundError(reason)
    labels = load_windows(root)
    corpus = []
    for name in sorted(labels):
        stamps, values = read_series_file(root / "data" / name)
        corpus.append(Series(name, stamps, values, window_rows(stamps, labels[name])))
    return corpus


# ---------------------------------------------------------------- scoring


def scaled_sigmoid(y: float) -> float:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, with ``-1`` for ``y > 3``.

    >>> round(scaled_sigmoid(-1.0), 5), scaled_sigmoid(0.0), round(scaled_sigmoid(1.0), 5)
    (0.98661, 0.0, -0.98661)
    >>> scaled_sigmoid(3.5)
    -1.0
    """
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(n: int) -> int:
    """Rows at the start of an ``n``-row series whose detections are not scored.

    >>> probation_rows(100), probation_rows(4032), probation_rows(22695)
    (15, 604, 750)
    """
    return min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP)


def row_credits(n: int, windows: Sequence[tuple[int, int]],
                profile: Profile) -> list[tuple[int, float]]:
    """For each row, ``(tag, weight)``: what a detection there would be worth.

    ``tag`` is the window's index for a row inside window ``tag``, ``OUTSIDE`` for a
    false-positive row (``weight`` is then its negative cost) and ``PROBATION`` for
    an unscored row. A 10-row window at rows 40..49 of a 100-row series:

    >>> worth = row_credits(100, [(40, 49)], STANDARD)
    >>> worth[5], worth[20]
    ((-2, 0.0), (-1, -0.11))
    >>> [round(worth[i][1], 4) for i in (40, 45, 49)]
    [1.0, 0.8598, 0.2482]
    >>> [round(worth[i][1], 4) for i in (50, 58, 99)]
    [-0.0298, -0.1085, -0.11]
    """
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_rows(n)
    out: list[tuple[int, float]] = []
    k = 0  # next window
    prev_end: int | None = None
    prev_width = 0
    for i in range(n):
        while k < len(windows) and windows[k][1] < i:
            prev_end, prev_width = windows[k][1], windows[k][1] - windows[k][0] + 1
            k += 1
        if i < probation:
            out.append((PROBATION, 0.0))
        elif k < len(windows) and windows[k][0] <= i:
            start, end = windows[k]
            width = end - start + 1
            y = -(end - i + 1) / width
            out.append((k, profile.tp_weight * scaled_sigmoid(y) / max_tp))
        elif prev_end is None:
            out.append((OUTSIDE, -profile.fp_weight))
        else:
            # A one-row window has no length to measure distance in: treat as far.
            y = (i - prev_end) / (prev_width - 1) if prev_width > 1 else math.inf
            out.append((OUTSIDE, profile.fp_weight * scaled_sigmoid(y)))
    return out


def scored_windows(n: int, windows: Sequence[tuple[int, int]]) -> int:
    """Windows that end after the probation period (the only ones that can be missed)."""
    probation = probation_rows(n)
    return sum(1 for _, end in windows if end >= probation)


def score_detections(detections: Sequence[bool], windows: Sequence[tuple[int, int]],
                     profile: Profile) -> Outcome:
    """The raw score of binary per-row detections on one series.

    Hand-worked on a 100-row series (probation: rows 0..14) with one window at
    rows 40..49, standard profile (tp 1, fp 0.11, fn 1):

    >>> w = [(40, 49)]
    >>> def at(*rows): return [i in rows for i in range(100)]
    >>> score_detections(at(40), w, STANDARD)  # on the window's first row: full reward
    Outcome(raw=1.0, tp=1, fp=0, fn=0)
    >>> round(score_detections(at(49), w, STANDARD).raw, 4)  # its last row: S(-0.1)/S(-1)
    0.2482
    >>> score_detections(at(45, 40, 47), w, STANDARD) == score_detections(at(40), w, STANDARD)
    True
    >>> score_detections(at(), w, STANDARD)  # a miss
    Outcome(raw=-1.0, tp=0, fp=0, fn=1)
    >>> round(score_detections(at(40, 50), w, STANDARD).raw, 4)  # FP right after: 0.11 S(1/9)
    0.9702
    >>> round(score_detections(at(40, 99), w, STANDARD).raw, 4)  # FP far after: full 0.11
    0.89
    >>> round(score_detections(at(40, 20), w, STANDARD).raw, 4)  # FP before any window
    0.89
    >>> score_detections(at(5), w, STANDARD)  # in probation: ignored, the window is missed
    Outcome(raw=-1.0, tp=0, fp=0, fn=1)
    """
    row_worth = row_credits(len(detections), windows, profile)
    best: dict[int, float] = {}
    fp_cost = 0.0
    fp = 0
    for hit, (tag, weight) in zip(detections, row_worth, strict=True):
        if not hit or tag == PROBATION:
            continue
        if tag == OUTSIDE:
            fp_cost += weight
            fp += 1
        elif tag not in best:  # the first detection is the earliest, the best one
            best[tag] = weight
    n_scored = scored_windows(len(detections), windows)
    missed = n_scored - len(best)
    raw = sum(best.values()) + fp_cost - profile.fn_weight * missed
    return Outcome(raw, len(best), fp, missed)


def null_raw(corpus: Sequence[Series], profile: Profile) -> float:
    """The raw score of a detector that never fires: every scored window missed."""
    return -profile.fn_weight * sum(scored_windows(len(s), s.windows) for s in corpus)


def perfect_raw(corpus: Sequence[Series], profile: Profile) -> float:
    """The raw score of one detection on the first row of every window."""
    return profile.tp_weight * sum(len(s.windows) for s in corpus)


def normalize(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``.

    A one-series corpus, 100 rows, one window at 40..49: the null and perfect
    detectors give 0 and 100, a late detection plus a far false positive less.

    >>> corpus = [Series("toy.csv", (), tuple([0.0] * 100), ((40, 49),))]
    >>> null, perfect = null_raw(corpus, STANDARD), perfect_raw(corpus, STANDARD)
    >>> null, perfect
    (-1.0, 1.0)
    >>> def det(*rows): return [i in rows for i in range(100)]
    >>> normalize(score_detections(det(), [(40, 49)], STANDARD).raw, null, perfect)
    0.0
    >>> normalize(score_detections(det(40), [(40, 49)], STANDARD).raw, null, perfect)
    100.0
    >>> round(normalize(score_detections(det(49, 99), [(40, 49)], STANDARD).raw,
    ...                 null, perfect), 2)
    56.91
    """
    return 100.0 * (raw - null) / (perfect - null)


def detections_at(scores: Sequence[float | None], threshold: float) -> list[bool]:
    """Rows whose score is at least ``threshold`` (``None`` and NaN never detect).

    >>> detections_at([0.1, None, 0.5, float("nan"), 0.7], 0.5)
    [False, False, True, False, True]
    """
    return [s is not None and s >= threshold for s in scores]


def score_at_threshold(scores: Mapping[str, Sequence[float | None]], corpus: Sequence[Series],
                       profile: Profile, threshold: float) -> CorpusScore:
    """A profile's corpus score with one fixed threshold for every series."""
    total = Outcome(0.0, 0, 0, 0)
    for s in corpus:
        total = total + score_detections(detections_at(scores[s.name], threshold), s.windows,
                                         profile)
    null, perfect = null_raw(corpus, profile), perfect_raw(corpus, profile)
    return CorpusScore(profile.name, threshold, total, normalize(total.raw, null, perfect))


def sweep_threshold(scores: Mapping[str, Sequence[float | None]], corpus: Sequence[Series],
                    profile: Profile) -> CorpusScore:
    """The threshold that maximizes the profile's corpus raw score, as NAB's optimizer does.

    Every distinct score is a candidate (detect at ``score >= threshold``), plus
    ``inf`` (never detect); ties go to the highest threshold. One pass over the
    rows sorted by score, updating each window's best credit and the FP sum.

    >>> corpus = [Series("toy.csv", (), tuple([0.0] * 100), ((40, 49),))]
    >>> scores = {"toy.csv": [0.0] * 45 + [0.6] + [0.0] * 44 + [0.9] + [0.0] * 9}
    >>> best = sweep_threshold(scores, corpus, STANDARD)
    >>> best.threshold, best.outcome.tp, best.outcome.fp
    (0.6, 1, 1)
    >>> fixed = score_at_threshold(scores, corpus, STANDARD, 0.6).outcome
    >>> round(best.outcome.raw, 4), round(fixed.raw, 4)  # 0.11 off S(-0.5)/S(-1) = 0.8598
    (0.7498, 0.7498)
    """
    rows: list[tuple[float, int, int, float]] = []  # (score, series, tag, weight)
    missed = 0
    for si, s in enumerate(corpus):
        series_scores = scores[s.name]
        missed += scored_windows(len(s), s.windows)
        for sc, (tag, weight) in zip(series_scores, row_credits(len(s), s.windows, profile),
                                     strict=True):
            if tag != PROBATION and sc is not None and not math.isnan(sc):
                rows.append((sc, si, tag, weight))
    rows.sort(key=lambda r: -r[0])
    best_in: dict[tuple[int, int], float] = {}
    raw = -profile.fn_weight * missed
    tp = fp = 0
    best = (raw, math.inf, tp, fp)
    for idx, (sc, si, tag, weight) in enumerate(rows):
        if tag == OUTSIDE:
            raw += weight
            fp += 1
        else:
            key = (si, tag)
            old = best_in.get(key)
            if old is None:
                raw += weight + profile.fn_weight
                best_in[key] = weight
                tp += 1
            elif weight > old:
                raw += weight - old
                best_in[key] = weight
        if (idx + 1 == len(rows) or rows[idx + 1][0] != sc) and raw > best[0]:
            best = (raw, sc, tp, fp)
    raw, threshold, tp, fp = best
    null, perfect = null_raw(corpus, profile), perfect_raw(corpus, profile)
    fn = missed - tp
    return CorpusScore(profile.name, threshold, Outcome(raw, tp, fp, fn),
                       normalize(raw, null, perfect))


def perfect_scores(corpus: Sequence[Series]) -> dict[str, list[float]]:
    """Per-row scores of the perfect detector: 1.0 on each window's first row, else 0.0."""
    out = {}
    for s in corpus:
        row = [0.0] * len(s)
        for start, _ in s.windows:
            row[start] = 1.0
        out[s.name] = row
    return out


def operator_detections(series: Series, config: Any = None) -> list[float]:
    """Per-row detections of the anomaly operator's logic (``DetectorLogic``, one key,
    one feature): 1.0 where an episode opens (not warming up), else 0.0."""
    from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
    from riskguard.schemas import FeatureVector, Scope, ScopeKind

    logic = DetectorLogic(config if config is not None else DetectorConfig(), lambda: 0)
    scope = Scope(kind=ScopeKind.VENUE, value="nab")
    out = []
    for t, v in zip(series.timestamps, series.values, strict=True):
        fv = FeatureVector(key="nab", scope=scope, ts=int(t.timestamp()) * 1_000_000_000,
                           values={"value": v})
        opened = any(getattr(sig, "phase", "") == "open" and getattr(sig, "kind", "")
                     == "anomaly" and not sig.warming_up for sig in logic.on_event(fv))
        out.append(1.0 if opened else 0.0)
    return out


def report_lines(root: Path | None = None, config: Any = None) -> list[str]:
    """The benchmark figures of the anomaly operator with ``config`` (default: the
    default config), with each profile's score and counts."""
    corpus = load_corpus(root)
    profiles = load_profiles(root)
    t0 = time.perf_counter()
    scores = {s.name: operator_detections(s, config) for s in corpus}
    secs = time.perf_counter() - t0
    rows = sum(len(s) for s in corpus)
    lines = [f"{len(corpus)} series, {sum(len(s.windows) for s in corpus)} windows, "
             f"{rows} rows; the operator took {secs:.1f} s ({secs / rows * 1e6:.1f} us/row)"]
    for name in PROFILE_NAMES:
        r = score_at_threshold(scores, corpus, profiles[name], 0.5)
        o = r.outcome
        lines.append(f"{name:20s} {r.normalized:6.2f}   (windows detected {o.tp}, missed "
                     f"{o.fn}, false detections {o.fp})")
    return lines


def main() -> int:
    root = nab_root()
    reason = missing_reason(root)
    if reason:
        print(reason)
        return 1
    corpus = load_corpus(root)
    profiles = load_profiles(root)
    print(f"{len(corpus)} series, {sum(len(s.windows) for s in corpus)} windows, "
          f"{sum(len(s) for s in corpus)} rows")
    never = {s.name: [0.0] * len(s) for s in corpus}
    perfect = perfect_scores(corpus)
    for name in PROFILE_NAMES:
        p = profiles[name]
        n0 = score_at_threshold(never, corpus, p, 0.5)
        n1 = score_at_threshold(perfect, corpus, p, 0.5)
        print(f"{name:20s} null {null_raw(corpus, p):7.2f} perfect {perfect_raw(corpus, p):6.2f}"
              f"  never-firing -> {n0.normalized:.1f}, perfect -> {n1.normalized:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
