"""Real market incidents: their labels and wire records, the metrics, and two baselines.

The incident files live outside the project (see ``shared_data.py``) and are read
from there, never copied. This module:

- re-exports the labels and loaders of ``incident_files.py`` (:func:`load_labels`,
  :func:`load_all`, :class:`Series`, :class:`LoadResult`);
- maps every label to the detector key it concerns, ``venue/instrument``
  (:func:`label_key`);
- defines calm time (:func:`is_calm`, :func:`calm_days`): everything outside
  ``[onset - 1 day, end)`` of every incident of the series, over the series' data from its
  first to its last record, gaps where no record exists not counted;
- scores episodes ``(key, open_ts_ns, severity)`` and commands
  ``(key_or_scope, ts_ns, action)``: per incident the delay from onset to the first critical
  episode and to the first mitigation command (:func:`incident_delays`), and false critical
  episodes per calm instrument-day (:func:`false_alarms`);
- runs two baselines on every series (:func:`zscore_episodes`, :func:`hst_episodes`) and
  tabulates them (:func:`baseline_report`, :func:`format_table`).

Run ``python bench/incidents.py`` to load everything, list the bad rows, and print the
baseline table.

>>> parse_duration("5m") // NS
300
>>> label_key(Label(file="crossvenue_x.csv", name="n", series="kraken:XBTUSD",
...                 onset="2020-03-12T06:00:00Z", end="2020-03-15T06:00:00Z",
...                 resolution="1h", onset_ns=0, end_ns=1, resolution_ns=1))
'kraken/XBTUSD'
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the files and labels, re-exported: this module is the benches' one entry point
from incident_files import (
    CRITICAL,
    DAY_NS,
    HOUR_NS,
    MINUTE_NS,
    MITIGATING_ACTIONS,
    NS,
    BadRow,
    Command,
    Episode,
    Label,
    LoadResult,
    Record,
    Series,
    file_kind,
    load_all,
    load_book_depth,
    load_crossvenue,
    load_dvol,
    load_file,
    load_labels,
    load_price_klines,
    load_usdm_windows,
    parse_duration,
    parse_utc,
)
from riskguard.schemas import Bar, BookDepth, Measure
from shared_data import incidents_dir, missing_reason

__all__ = [
    "CRITICAL", "DAY_NS", "HOUR_NS", "MINUTE_NS", "MITIGATING_ACTIONS", "NS", "BadRow",
    "Command", "Episode", "Label", "LoadResult", "Record", "Series", "file_kind", "load_all",
    "load_book_depth", "load_crossvenue", "load_dvol", "load_file", "load_labels",
    "load_price_klines", "load_usdm_windows", "parse_duration", "parse_utc",
]


# ---------------------------------------------------------------------------- keys


def label_key(label: Label) -> str:
    """The detector key (``venue/instrument``) a label concerns, from its file and series."""
    kind = file_kind(label.file)
    if kind == "priceklines":
        return f"binance/{label.series}"
    if kind == "usdm_windows":
        return f"binance_usdm/{label.series}"
    if kind == "crossvenue":
        venue, _, symbol = label.series.partition(":")
        return f"{venue}/{symbol}"
    if kind == "dvol":
        return "deribit/" + label.series.replace(" ", "-")
    return "binance_um/" + label.series.split(" ", 1)[0]


def label_keys(labels: Iterable[Label]) -> dict[Label, str]:
    """Each label's detector key."""
    return {lb: label_key(lb) for lb in labels}


def series_labels(series: Series, labels: Iterable[Label]) -> list[Label]:
    """The labels (incidents) of one series."""
    return [lb for lb in labels if lb.file == series.file and lb.series in series.labels]


def excluded_windows(series: Series, labels: Iterable[Label]) -> list[tuple[int, int]]:
    """``[onset - 1 day, end)`` of each incident of the series, merged, sorted."""
    return merge_spans([(lb.onset_ns - DAY_NS, lb.end_ns) for lb in series_labels(series, labels)])


def coverage(series: Series) -> list[tuple[int, int]]:
    """The time the series' data covers, as merged ``(from, to)`` spans.

    A bar covers ``(start, ts]``. A point record (a book snapshot) covers the time since the
    previous one, unless that is more than two intervals (a gap), then one interval.
    """
    spans: list[tuple[int, int]] = []
    prev: int | None = None
    for rec in series.records:
        if isinstance(rec, Bar):
            spans.append((rec.start, rec.ts))
        else:
            step = rec.ts - prev if prev is not None else series.interval_ns
            if step > 2 * series.interval_ns:
                step = series.interval_ns
            spans.append((rec.ts - step, rec.ts))
            prev = rec.ts
    return merge_spans(spans)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Time spans ``(start, end)`` joined where they touch or overlap, in order; empty ones
    dropped.

    >>> merge_spans([(5, 9), (0, 3), (3, 4), (7, 7)])
    [(0, 4), (5, 9)]
    """
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlap_ns(spans: Sequence[tuple[int, int]], windows: Sequence[tuple[int, int]]) -> int:
    """How much of ``spans`` lies inside ``windows`` (each list disjoint).

    >>> overlap_ns([(0, 10), (20, 30)], [(5, 25)])
    10
    """
    total = 0
    for a, b in spans:
        for lo, hi in windows:
            total += max(0, min(b, hi) - max(a, lo))
    return total


def calm_ns(series: Series, labels: Iterable[Label]) -> int:
    """Calm time of a series in ns: its coverage outside every excluded window."""
    spans = coverage(series)
    covered = sum(b - a for a, b in spans)
    return covered - overlap_ns(spans, excluded_windows(series, labels))


def calm_days(series: Series, labels: Iterable[Label]) -> float:
    """Calm instrument-days of a series: its data from first to last record, not counting
    gaps with no data, outside ``[onset - 1 day, end)`` of each of its incidents."""
    return calm_ns(series, labels) / DAY_NS


def is_calm(series: Series, ts_ns: int, labels: Iterable[Label]) -> bool:
    """Whether ``ts_ns`` is calm for the series: inside its coverage (a bar's close time
    counts as inside its bar) and outside ``[onset - 1 day, end)`` of each incident."""
    if not any(a < ts_ns <= b for a, b in coverage(series)):
        return False
    return not any(lo <= ts_ns < hi for lo, hi in excluded_windows(series, labels))


# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class IncidentDelay:
    """One incident's delays in ns (None: no such episode or command in its window)."""

    label: Label
    key: str
    detect_ns: int | None
    mitigate_ns: int | None

    @property
    def detect_min(self) -> float | None:
        return None if self.detect_ns is None else self.detect_ns / MINUTE_NS

    @property
    def mitigate_min(self) -> float | None:
        return None if self.mitigate_ns is None else self.mitigate_ns / MINUTE_NS


def _is_critical(severity: object) -> bool:
    return str(severity).lower() == CRITICAL


def command_applies(key_or_scope: str, key: str) -> bool:
    """Whether a command's target covers a ``venue/instrument`` key: the key itself, its
    venue, ``*``, or a scope label (``instrument:venue/instr``, ``instrument:instr``,
    ``venue:venue``, ``firm:*``)."""
    venue, _, instrument = key.partition("/")
    target = key_or_scope
    if ":" in target and target.split(":", 1)[0] in {"instrument", "venue", "firm",
                                                     "underlying", "counterparty"}:
        kind, _, target = target.partition(":")
        if kind == "firm":
            return True
        if kind == "venue":
            return target == venue
        if kind == "instrument":
            return target in {key, instrument}
        return False
    return target in {key, venue, "*"}


def incident_delays(label: Label, episodes: Iterable[Episode],
                    commands: Iterable[Command] = (), *, key: str | None = None,
                    actions: frozenset[str] = MITIGATING_ACTIONS) -> IncidentDelay:
    """Delays of one incident.

    Detection: the first critical episode of the incident's key opened in
    ``[onset - one bar, end)`` (one bar = the label's resolution), its delay
    ``open_ts - onset`` (down to minus one bar). An earlier episode in the day before onset
    is not the detection (nor a false alarm: that day is not calm).
    Mitigation: the first command in ``[onset, end)`` whose action is in ``actions`` and
    whose target covers the key (:func:`command_applies`).
    """
    key = key or label_key(label)
    lo = label.onset_ns - label.resolution_ns
    detect = min((ts for k, ts, sev in episodes
                  if k == key and _is_critical(sev) and lo <= ts < label.end_ns), default=None)
    mitigate = min((ts for target, ts, action in commands
                    if str(action) in actions and label.onset_ns <= ts < label.end_ns
                    and command_applies(target, key)), default=None)
    return IncidentDelay(label, key,
                         None if detect is None else detect - label.onset_ns,
                         None if mitigate is None else mitigate - label.onset_ns)


@dataclass(frozen=True)
class FalseAlarms:
    """False critical episodes (opened in calm time) per series and over all of them."""

    per_series: dict[str, tuple[int, float]]
    """``"file|series label" -> (false episodes, calm days)``."""

    @property
    def episodes(self) -> int:
        return sum(n for n, _ in self.per_series.values())

    @property
    def days(self) -> float:
        return sum(d for _, d in self.per_series.values())

    @property
    def rate(self) -> float | None:
        """Sum of false episodes over sum of calm instrument-days (None: no calm time)."""
        return self.episodes / self.days if self.days > 0 else None

    def series_rate(self, name: str) -> float | None:
        n, d = self.per_series[name]
        return n / d if d > 0 else None


def series_name(series: Series) -> str:
    """``"file|label"``: a series' unique name (the series label alone repeats across files)."""
    return f"{series.file}|{series.label}"


def false_alarms(series: Iterable[Series], labels: Sequence[Label],
                 episodes: Iterable[Episode]) -> FalseAlarms:
    """Critical episodes opened in calm time of their key's series, and the calm days."""
    by_key: dict[str, list[int]] = {}
    for key, ts, sev in episodes:
        if _is_critical(sev):
            by_key.setdefault(key, []).append(ts)
    out: dict[str, tuple[int, float]] = {}
    for s in series:
        spans = coverage(s)
        windows = excluded_windows(s, labels)
        n = sum(1 for ts in by_key.get(s.key, ())
                if any(a < ts <= b for a, b in spans)
                and not any(lo <= ts < hi for lo, hi in windows))
        covered = sum(b - a for a, b in spans)
        out[series_name(s)] = (n, (covered - overlap_ns(spans, windows)) / DAY_NS)
    return FalseAlarms(out)


# ---------------------------------------------------------------------------- baselines

WARMUP_BARS = 60
Z_WINDOW = 60
Z_THRESHOLD = 4.0
HST_THRESHOLD = 0.7
QUIET_TO_CLOSE = 5


class EpisodeGrouper:
    """An alarm opens an episode unless one is open; 5 non-alarm points in a row close it.

    Every episode is critical.
    """

    def __init__(self, key: str, quiet_to_close: int = QUIET_TO_CLOSE) -> None:
        self.key = key
        self.quiet_to_close = quiet_to_close
        self.open = False
        self.quiet = 0
        self.episodes: list[Episode] = []

    def feed(self, ts: int, alarm: bool) -> None:
        if alarm:
            self.quiet = 0
            if not self.open:
                self.open = True
                self.episodes.append((self.key, ts, CRITICAL))
        elif self.open:
            self.quiet += 1
            if self.quiet >= self.quiet_to_close:
                self.open = False

    def close(self) -> None:
        self.open = False
        self.quiet = 0


def _is_gap(series: Series, prev: Record, rec: Record) -> bool:
    if isinstance(rec, Bar) and isinstance(prev, Bar):
        return rec.start != prev.ts
    return rec.ts - prev.ts > 2 * series.interval_ns


def _log(x: float) -> float | None:
    return math.log(x) if x > 0 else None


def _bar_features(prev: Bar, bar: Bar) -> dict[str, float]:
    r = math.log(bar.close / prev.close)
    return {"ret": r, "abs_ret": abs(r), "range": (bar.high - bar.low) / bar.close}


def _depth_levels(rec: BookDepth) -> dict[str, float | None]:
    """Log +1 % ask depth and log -1 % bid depth (None where absent or zero)."""
    out: dict[str, float | None] = {"ask1": None, "bid1": None}
    if 1.0 in rec.bands_pct:
        i = rec.bands_pct.index(1.0)
        out["ask1"] = _log(rec.ask_depth[i])
        out["bid1"] = _log(rec.bid_depth[i])
    return out


def _walk(series: Series) -> Iterator[tuple[int, Record, Record | None]]:
    """``(index, record, previous record or None after a gap)`` over a series."""
    prev: Record | None = None
    for i, rec in enumerate(series.records):
        yield i, rec, (prev if prev is not None and not _is_gap(series, prev, rec) else None)
        prev = rec


class RollingZ:
    """|z| of a value against the previous ``window`` values (None until the window is full)."""

    def __init__(self, window: int = Z_WINDOW) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def push(self, x: float) -> float | None:
        z = None
        if len(self.values) == self.values.maxlen:
            mean = math.fsum(self.values) / len(self.values)
            sd = math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))
            # a flat window: any change is infinitely surprising
            flat = math.inf if abs(x - mean) > 1e-12 else 0.0
            z = abs(x - mean) / sd if sd > 1e-12 else flat
        self.values.append(x)
        return z


def zscore_episodes(series: Series, *, window: int = Z_WINDOW, threshold: float = Z_THRESHOLD,
                    warmup: int = WARMUP_BARS) -> list[Episode]:
    """Baseline (a): rolling z-score, alarm when ``|z| > threshold``.

    Bars: the log return of closes. A book-depth series has two alarm sources, the change
    of log +1 % ask depth and of log -1 % bid depth, each with its own window; the key alarms
    when either does. z is against the previous ``window`` values, so no alarm can come
    before ``window + 1`` values. Warm-up: no alarm in the first ``warmup`` records of a
    series (the statistics still learn). A gap (a bar not starting where the previous one
    closed, or a snapshot more than two intervals after the last) closes an open episode
    and gives no value for the first record after it (no return across the gap).
    """
    grouper = EpisodeGrouper(series.key)
    zs: dict[str, RollingZ] = {}
    last_depth: dict[str, float | None] = {}
    for i, rec, prev in _walk(series):
        if prev is None and i > 0:
            grouper.close()
        values: dict[str, float] = {}
        if isinstance(rec, Bar):
            if isinstance(prev, Bar):
                values["ret"] = math.log(rec.close / prev.close)
        else:
            levels = _depth_levels(rec)
            for src, level in levels.items():
                before = last_depth.get(src) if prev is not None else None
                if level is not None and before is not None:
                    values[src] = level - before
            last_depth = levels
        alarm = False
        for src, x in values.items():
            z = zs.setdefault(src, RollingZ(window)).push(x)
            alarm = alarm or (z is not None and z > threshold)
        grouper.feed(rec.ts, alarm and i >= warmup)
    return grouper.episodes


def hst_episodes(series: Series, *, threshold: float = HST_THRESHOLD,
                 warmup: int = WARMUP_BARS, seed: int = 42) -> list[Episode]:
    """Baseline (b): River ``MinMaxScaler() | HalfSpaceTrees(seed=42)`` (defaults otherwise),
    score then learn, alarm when the score is above ``threshold``.

    Features: bars: log return, |log return|, (high - low) / close; book depth: log +1 %
    ask depth and log -1 % bid depth. Warm-up: no alarm in the first ``warmup`` records of
    a series. HalfSpaceTrees scores 0 until it has learnt its first window (250 points by
    default), so in practice no alarm comes before the 251st scored record. After a gap the
    first bar has no return: it is neither scored nor learnt, and the open episode closes.

    Note: River's scores for ordinary points are often above 0.7 (a walk stops at a node
    holding less than a tenth of the window, which caps the mass term), so on the incident
    files 20-100 % of the scored points alarm; an episode then stays open for long and an
    episode opened before ``onset - one bar`` hides the incident (it counts as missed).
    """
    from river import anomaly, preprocessing

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
    grouper = EpisodeGrouper(series.key)
    for i, rec, prev in _walk(series):
        if prev is None and i > 0:
            grouper.close()
        x: dict[str, float] | None = None
        if isinstance(rec, Bar):
            if isinstance(prev, Bar):
                x = _bar_features(prev, rec)
        else:
            levels = _depth_levels(rec)
            if all(v is not None for v in levels.values()):
                x = {k: v for k, v in levels.items() if v is not None}
        alarm = False
        if x is not None:
            score = model.score_one(x)
            model.learn_one(x)
            alarm = score > threshold
        grouper.feed(rec.ts, alarm and i >= warmup)
    return grouper.episodes


def onset_rule_episodes(series: Series, *, fall: float = 0.05) -> list[Episode]:
    """The rule the labels' onsets are read with, as a detector: a price bar whose low is
    more than ``fall`` below the previous UTC day's close alarms (the episodes grouped as
    the baselines'). Bars of a volatility index, and book depth, give none: their
    onsets follow other rules. On calm time it says how often the labelling rule itself
    fires, so how many false episodes a detector as early as the labels must raise.
    """
    grouper = EpisodeGrouper(series.key)
    closes: dict[int, float] = {}
    for rec in series.records:
        if not isinstance(rec, Bar) or rec.measure is not Measure.PRICE:
            return []
        day = (rec.ts - 1) // DAY_NS
        before = closes.get(day - 1)
        grouper.feed(rec.ts, before is not None and rec.low < before * (1.0 - fall))
        closes[day] = rec.close
    return grouper.episodes


BASELINES: dict[str, Callable[[Series], list[Episode]]] = {
    "zscore": zscore_episodes,
    "hst": hst_episodes,
}


# ---------------------------------------------------------------------------- report


def baseline_report(directory: Path | None = None,
                    baselines: Mapping[str, Callable[[Series], list[Episode]]] = BASELINES,
                    ) -> list[dict[str, Any]]:
    """Run every baseline on every series of every incident file, and tabulate.

    Rows, in label order, ``kind="delay_min"``: ``file``, ``name``, ``series``, ``key`` and
    per baseline the delay in minutes from onset to the first critical episode (None:
    missed). Then ``kind="false_per_day"`` rows: one per series (``name`` is the number of
    calm days) and a last one over all files (``series="(all)"``), per baseline the false
    episodes per calm instrument-day (None: no calm time).
    """
    directory = directory if directory is not None else incidents_dir()
    labels = load_labels(directory / "labels.toml")
    loaded = load_all(directory)
    episodes: dict[str, list[Episode]] = {}
    for name, run in baselines.items():
        episodes[name] = [ep for s in loaded.series for ep in run(s)]
    rows: list[dict[str, Any]] = []
    for lb in labels:
        row: dict[str, Any] = {"kind": "delay_min", "file": lb.file, "name": lb.name,
                               "series": lb.series, "key": label_key(lb)}
        for name, eps in episodes.items():
            row[name] = incident_delays(lb, eps).detect_min
        rows.append(row)
    fas = {name: false_alarms(loaded.series, labels, eps) for name, eps in episodes.items()}
    for s in loaded.series:
        row = {"kind": "false_per_day", "file": s.file,
               "name": f"{calm_days(s, labels):.1f} calm days", "series": s.label,
               "key": s.key}
        for name, fa in fas.items():
            row[name] = fa.series_rate(series_name(s))
        rows.append(row)
    total: dict[str, Any] = {"kind": "false_per_day", "file": "(all files)",
                             "name": f"{next(iter(fas.values())).days:.1f} calm days"
                             if fas else "", "series": "(all)", "key": ""}
    for name, fa in fas.items():
        total[name] = fa.rate
    rows.append(total)
    return rows


_FIXED = ("kind", "file", "name", "series", "key")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: one line per row; delays in minutes, rates per calm day."""
    if not rows:
        return ""
    values = [c for c in rows[0] if c not in _FIXED]

    def cell(v: Any, kind: str) -> str:
        if v is None:
            return "missed" if kind == "delay_min" else "-"
        if isinstance(v, float):
            return f"{v:.0f}" if kind == "delay_min" else f"{v:.3f}"
        return str(v)

    header = ["", "file", "incident", "series", *values]
    lines = [header]
    for r in rows:
        kind = r.get("kind", "")
        file = str(r.get("file", ""))
        lines.append(["delay min" if kind == "delay_min" else "false/day",
                      file[:40], str(r.get("name", "")), str(r.get("series", "")),
                      *(cell(r.get(v), kind) for v in values)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def main() -> None:
    directory = incidents_dir()
    reason = missing_reason(directory)
    if reason:
        print(reason)
        raise SystemExit(1)
    timings: dict[str, float] = {}
    loaded = load_all(directory, timings)
    for name, secs in timings.items():
        n = sum(len(s.records) for s in loaded.series if s.file == name)
        print(f"{secs * 1000:8.1f} ms  {n:6d} records  {name}")
    print(f"{sum(timings.values()) * 1000:8.1f} ms  total")
    for bad in loaded.bad_rows:
        print(f"bad row {bad.file}:{bad.line}: {bad.reason}")
    t0 = time.perf_counter()
    rows = baseline_report(directory)
    print(format_table(rows))
    print(f"baselines: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
