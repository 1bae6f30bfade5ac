"""Detection quality on real data: incidents, and the streaming-anomaly benchmark.

Run ``python bench/detection_real.py [--part incidents|benchmark|all] [--overlay TOML]
[--data DIR] [--jobs N]``. ``--overlay``: a guard config document merged over the
default one, to measure other settings (the figures of record use the defaults);
``--data``: a folder of one's own incident files and their ``labels.toml``; ``--jobs``:
files run side by side. It reads the development data beside the clone
(``bench/shared_data.py``) unless told otherwise, and prints:

- **Incidents.** Each incident file goes through the real backtest path
  (:func:`riskguard.dataflows.backtest.run_backtest`, the guard core with the
  default config and the bundled playbook, as wire-contract records at the
  data's own resolution). Per labelled incident: the minutes from onset to the
  first moment the key is critical (an episode already critical one bar before
  onset counts from there), and to the first mitigation command (reduce_only or
  stronger) that covers the key (one already in force at onset, not lifted by a
  resume, counts as 0); then, at each bar resolution, on how many incidents the guard
  is critical sooner than the z-score baseline, at the same bar or later, and each
  one's median delay. Then false critical episodes per calm instrument-day at
  each bar resolution measured alone, split by the detector that made each
  episode critical (``price_move``, ``confirmation``, ``anomaly``,
  ``dislocation``), beside the labels' own onset rule and two baselines on the
  same series: a rolling z-score of bar log returns (window 60, |z| > 4) and
  River's HalfSpaceTrees (> 0.7); see ``bench/incidents.py``. Then the same per
  file, and the share of calm time the guard held a key critical or under
  reduce-only, by resolution and by file.
- **Benchmark.** The anomaly operator's logic (``DetectorLogic``, default
  config, one key per series, one feature) on every series of the benchmark
  part, scored by ``bench/nab.py`` (standard, low-FP and low-FN profiles).

A detection or command comes from a bar's close, so on coarse data (hourly,
daily) the delay is a multiple of the bar.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import incidents as inc
from riskguard.dataflows.backtest import deep_merge, run_backtest
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.guard import GuardConfig, load_guard_config
from riskguard.operators.detection.band_levels import CRITICAL_RULES
from riskguard.schemas import AnomalySignal, MitigationCommand
from shared_data import incidents_dir, missing_reason, nab_dir

from riskguard.toml_text import dump_toml

Episode = tuple[str, int, str]
CONFIRM_MODEL = "VenueConfirm"
KINDS = ("price_move", "confirmation", "anomaly", "dislocation")
"""The detectors the report counts apart; any other kind is counted under ``other``."""
DETECT_GOAL_MIN = 10.0
MITIGATE_GOAL_MIN = 15.0


def default_config(work: Path, overlay: dict[str, Any] | None = None
                   ) -> tuple[GuardConfig, str]:
    """The default guard config with fresh demo keys and the bundled playbook, with the
    tables of ``overlay`` (a guard TOML document) merged in."""
    keys = init_keys(work)
    playbook = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]
    doc = {"env": "bench", "keys": {"issuer": "riskguard-guard",
                                    "signing_key": keys.signing_key.name,
                                    "trust_file": keys.trust_file.name,
                                    "roots_file": keys.roots_file.name},
           "playbook": playbook}
    doc = deep_merge(doc, overlay or {})
    path = work / "guard.toml"
    path.write_text(dump_toml(doc))
    return load_guard_config(path)


def critical_spans(signals: Sequence[Any]) -> list[tuple[str, int, int | None]]:
    """``(key, turned critical, stopped being critical or None)`` per stretch of an
    episode at critical severity (anomaly or price_move signals that are not warming
    up): it ends where the episode closes or de-escalates, and a rise back to critical
    starts another stretch of the same episode."""
    start: dict[str, tuple[str, int]] = {}
    spans: list[tuple[str, int, int | None]] = []
    for s in signals:
        if not isinstance(s, AnomalySignal) or s.warming_up:
            continue
        eid = s.episode
        if s.phase in ("close", "deescalate"):
            if eid in start:
                key, ts = start.pop(eid)
                spans.append((key, ts, s.ts))
        elif s.severity.value == "critical" and eid not in start:
            start[eid] = (s.key, s.ts)
    return spans + [(key, ts, None) for key, ts in start.values()]


def signal_kind(signal: AnomalySignal) -> str:
    """What a signal's detector is called in the report: its ``kind`` (``price_move``,
    ``anomaly``, ``dislocation``, ...), and ``confirmation`` for the cross-venue
    confirmation's escalations of a band episode."""
    return "confirmation" if signal.model == CONFIRM_MODEL else signal.kind


def critical_episodes(signals: Sequence[Any]) -> list[Episode]:
    """``(key, ts, "critical")`` per episode, when it first turned critical: an episode
    that de-escalates and rises again counts once."""
    return [(key, ts, "critical") for key, ts, _kind, _rule in critical_episode_kinds(signals)]


def critical_episode_kinds(signals: Sequence[Any]) -> list[tuple[str, int, str, str]]:
    """``(key, ts, kind, rule)`` per episode, when it first turned critical, with the
    :func:`signal_kind` of the signal that made it critical and its ``rule`` (the move
    bands' critical rule; "" for other detectors)."""
    first: dict[str, tuple[str, int, str, str]] = {}
    for s in signals:
        if (isinstance(s, AnomalySignal) and not s.warming_up
                and s.severity.value == "critical" and s.phase != "close"):
            first.setdefault(s.episode, (s.key, s.ts, signal_kind(s), s.rule or ""))
    return list(first.values())


def spans_delay(label: inc.Label, spans: Sequence[tuple[str, int, int | None]],
                key: str) -> float | None:
    """Minutes from onset to the first moment the key is critical, from one bar before
    onset on (a span already critical then counts from there), before the window ends."""
    lo = label.onset_ns - label.resolution_ns
    starts = [max(ts, lo) for k, ts, end in spans
              if k == key and ts < label.end_ns and (end is None or end > lo)]
    return None if not starts else (min(starts) - label.onset_ns) / inc.MINUTE_NS


def mitigation_delay(label: inc.Label, commands: Sequence[MitigationCommand],
                     key: str) -> float | None:
    """Minutes from onset to the first reduce_only-or-stronger command covering the key
    issued before the window ends and not lifted before onset (one already in force at
    onset counts as 0)."""
    lifted: dict[str, int] = {}
    for c in commands:
        for cid in c.params.get("resumes", []):
            lifted.setdefault(str(cid), c.issued_at)
    times = [max(c.issued_at, label.onset_ns) for c in commands
             if c.action.value in inc.MITIGATING_ACTIONS and c.issued_at < label.end_ns
             and lifted.get(c.command_id, 2**62) > label.onset_ns
             and inc.command_applies(c.scope.label(), key)]
    return None if not times else (min(times) - label.onset_ns) / inc.MINUTE_NS


@dataclass
class GuardRun:
    """The guard over the incident files, per file: its critical stretches
    (:func:`critical_spans`), its critical episodes with the kind that made each critical
    (:func:`critical_episode_kinds`), its commands and its wall time."""

    spans: dict[str, list[tuple[str, int, int | None]]] = field(default_factory=dict)
    episodes: dict[str, list[tuple[str, int, str, str]]] = field(default_factory=dict)
    commands: dict[str, list[MitigationCommand]] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)


def _guard_file(cfg: GuardConfig, digest: str, records: list[Any]
                ) -> tuple[list[Any], list[MitigationCommand], float]:
    t0 = time.perf_counter()
    res = run_backtest(cfg, digest, records=records)
    return res.signals, list(res.commands), time.perf_counter() - t0


def run_guard(loaded: inc.LoadResult, cfg: GuardConfig, digest: str,
              jobs: int = 1) -> GuardRun:
    """The guard over each incident file (all its series in one run, as a desk feeds
    it), ``jobs`` files at a time in separate processes."""
    run = GuardRun()
    by_file: dict[str, list[Any]] = {}
    for series in loaded.series:
        by_file.setdefault(series.file, []).extend(series.records)
    files = sorted(by_file, key=lambda f: -len(by_file[f]))  # the longest first
    inputs = [sorted(by_file[file], key=lambda r: r.ts) for file in files]
    with ProcessPoolExecutor(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        mapped = (pool.map(_guard_file, [cfg] * len(files), [digest] * len(files), inputs)
                  if pool is not None else
                  (_guard_file(cfg, digest, records) for records in inputs))
        for file, (signals, commands, wall) in zip(files, mapped, strict=True):
            run.wall[file] = wall
            run.spans[file] = critical_spans(signals)
            run.episodes[file] = critical_episode_kinds(signals)
            run.commands[file] = commands
    return run


def calm_share(series: inc.Series, labels: Sequence[inc.Label],
               active: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(calm ns covered by active, calm ns)`` of a series: how much of its calm time
    the key spent in a state (critical, or under a mitigation)."""
    spans = inc.coverage(series)
    windows = inc.excluded_windows(series, labels)
    calm = sum(b - a for a, b in spans) - inc.overlap_ns(spans, windows)
    act = inc.merge_spans(active)
    excluded = inc.merge_spans((max(a, lo), min(b, hi)) for a, b in spans for lo, hi in windows
                               if min(b, hi) > max(a, lo))
    return inc.overlap_ns(spans, act) - inc.overlap_ns(act, excluded), calm


def mitigated_spans(commands: Sequence[MitigationCommand], key: str, end: int
                    ) -> list[tuple[int, int]]:
    """When a reduce_only-or-stronger command covering ``key`` was in force: from its
    issue to the resume that lifted it (or ``end``)."""
    lifted: dict[str, int] = {}
    for c in commands:
        for cid in c.params.get("resumes", []):
            lifted.setdefault(str(cid), c.issued_at)
    return [(c.issued_at, lifted.get(c.command_id, end)) for c in commands
            if c.action.value in inc.MITIGATING_ACTIONS
            and inc.command_applies(c.scope.label(), key)]


def resolution(interval_ns: int) -> str:
    """A bar interval as the report names it.

    >>> [resolution(n * 10**9) for n in (30, 60, 300, 3600, 86_400, 7_200)]
    ['30s', '1m', '5m', '1h', '1d', '2h']
    """
    for unit, size in (("d", inc.DAY_NS), ("h", inc.HOUR_NS), ("m", inc.MINUTE_NS),
                       ("s", inc.NS)):
        if interval_ns >= size and interval_ns % size == 0:
            return f"{interval_ns // size}{unit}"
    return f"{interval_ns}ns"


def _by_resolution(series: Sequence[inc.Series]) -> dict[str, list[inc.Series]]:
    """The series grouped by bar resolution, finest first."""
    out: dict[str, list[inc.Series]] = {}
    for s in sorted(series, key=lambda s: s.interval_ns):
        out.setdefault(resolution(s.interval_ns), []).append(s)
    return out


@dataclass
class Figures:
    """Everything the incident report prints, from one guard run and the baselines."""

    labels: list[inc.Label]
    loaded: inc.LoadResult
    guard: GuardRun
    baselines: dict[str, list[Episode]]
    onset_rule: list[Episode]

    def guard_episodes(self, kind: str | None = None, rule: str | None = None
                       ) -> list[Episode]:
        """The guard's critical episodes over every file (of one kind, or made critical
        by one rule of the move bands, if given)."""
        return [(k, ts, "critical") for eps in self.guard.episodes.values()
                for k, ts, got, made_by in eps
                if (kind is None or got == kind or (kind == "other" and got not in KINDS))
                and (rule is None or made_by == rule)]


def incident_lines(fig: Figures) -> list[str]:
    """Per labelled incident: the guard's and the baselines' delays, and the totals."""
    def fmt(v: float | None) -> str:
        return "missed" if v is None else f"{v:.0f}"

    lines = [f"{'incident':<28} {'series':<22} {'bar':>4} {'guard':>7} {'command':>8} "
             f"{'zscore':>7} {'hst':>7}   (minutes from onset)"]
    met = critical_met = 0
    # (bar in ns, its name) -> (guard, z-score) minutes from onset per incident
    versus: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for lb in fig.labels:
        key = inc.label_key(lb)
        detect = spans_delay(lb, fig.guard.spans.get(lb.file, []), key)
        mitigate = mitigation_delay(lb, fig.guard.commands.get(lb.file, []), key)
        z = inc.incident_delays(lb, fig.baselines["zscore"]).detect_min
        h = inc.incident_delays(lb, fig.baselines["hst"]).detect_min
        bar_min = lb.resolution_ns / inc.MINUTE_NS
        critical_ok = detect is not None and detect <= max(DETECT_GOAL_MIN, bar_min)
        critical_met += critical_ok
        ok = (critical_ok and mitigate is not None
              and mitigate <= max(MITIGATE_GOAL_MIN, 2 * bar_min))
        met += ok
        versus.setdefault((lb.resolution_ns, lb.resolution), []).append(
            (math.inf if detect is None else detect, math.inf if z is None else z))
        lines.append(f"{lb.name:<28} {lb.series:<22} {lb.resolution:>4} "
                     f"{fmt(detect):>7} {fmt(mitigate):>8} {fmt(z):>7} "
                     f"{fmt(h):>7} {'' if ok else ' <- goal missed'}")
    n = len(fig.labels)
    pairs = [pair for by_bar in versus.values() for pair in by_bar]
    earlier = sum(g < z for g, z in pairs)
    not_later = sum(g <= z and not math.isinf(g) for g, z in pairs)
    lines.append(f"critical within max(10 min, 1 bar): {critical_met} of {n}; "
                 f"and a command within max(15 min, 2 bars) too: {met}")
    lines.append(f"incidents within goal (critical <= max(10 min, 1 bar), command <= "
                 f"max(15 min, 2 bars)): {met} of {n}; guard earlier than the "
                 f"z-score on {earlier} of {n}, not later on {not_later}")
    return lines + versus_lines(versus)


def versus_lines(versus: dict[tuple[int, str], list[tuple[float, float]]]) -> list[str]:
    """Against the z-score at each bar resolution: incidents where the guard is critical
    sooner, at the same bar or later (a missed incident is later than any time), and
    the median minutes from onset of each."""
    lines = ["against the z-score at each bar resolution (minutes from onset; a missed "
             "incident is later than any time):"]
    for (_ns, res), pairs in sorted(versus.items()):
        sooner = sum(g < z for g, z in pairs)
        same = sum(g == z for g, z in pairs)
        guard, zscore = (statistics.median_low(x) + 0.0  # no "-0"
                         for x in zip(*pairs, strict=True))
        lines.append(f"  {res:>4}: guard sooner on {sooner}, the same on {same}, later on "
                     f"{len(pairs) - sooner - same}; median guard "
                     f"{'missed' if math.isinf(guard) else f'{guard:.0f}'}, z-score "
                     f"{'missed' if math.isinf(zscore) else f'{zscore:.0f}'}")
    return lines


def _rate(fa: inc.FalseAlarms) -> str:
    return "-" if fa.rate is None else f"{fa.rate:.3f} ({fa.episodes})"


def resolution_lines(fig: Figures) -> list[str]:
    """False critical episodes per calm instrument-day at each bar resolution, measured
    alone: the guard's, split by the detector that made each episode critical, beside
    the labels' onset rule and the two baselines (episodes in brackets)."""
    kinds = [*KINDS, "other"]
    cols = ["guard", *kinds, "onset rule", "zscore", "hst"]
    lines = ["false critical episodes per calm instrument-day, by bar resolution (each "
             "alone; the guard split by the detector that made the episode critical):",
             f"  {'bar':<4} {'days':>7}  " + "  ".join(f"{c:>13}" for c in cols)]
    for res, group in _by_resolution(fig.loaded.series).items():
        runs = [fig.guard_episodes(), *(fig.guard_episodes(k) for k in kinds),
                fig.onset_rule, fig.baselines["zscore"], fig.baselines["hst"]]
        fas = [inc.false_alarms(group, fig.labels, eps) for eps in runs]
        if not fas[0].days:
            continue
        lines.append(f"  {res:<4} {fas[0].days:7.1f}  "
                     + "  ".join(f"{_rate(fa):>13}" for fa in fas))
    return lines + rule_lines(fig)


def rule_lines(fig: Figures) -> list[str]:
    """The move bands' false critical episodes at each bar resolution, by the critical
    rule that made each critical (the signal's ``rule``)."""
    lines = ["price_move's false critical episodes by the rule that made them critical:"]
    for res, group in _by_resolution(fig.loaded.series).items():
        counts = [(rule, inc.false_alarms(group, fig.labels,
                                          fig.guard_episodes("price_move", rule)).episodes)
                  for rule in CRITICAL_RULES]
        lines.append(f"  {res:<4} " + ", ".join(f"{rule} {n}" for rule, n in counts))
    return lines


def file_lines(fig: Figures) -> list[str]:
    """False critical episodes per calm instrument-day of each file, and over all."""
    runs = {"guard": fig.guard_episodes(), **fig.baselines}
    fas = {name: inc.false_alarms(fig.loaded.series, fig.labels, eps)
           for name, eps in runs.items()}
    lines = ["false critical episodes per calm instrument-day, by file:"]
    for file in sorted({s.file for s in fig.loaded.series}):
        names = [inc.series_name(s) for s in fig.loaded.series if s.file == file]
        days = sum(fas["guard"].per_series[n][1] for n in names)
        cells = []
        for name, fa in fas.items():
            n = sum(fa.per_series[x][0] for x in names)
            cells.append(f"{name} {n / days:.3f}" if days else f"{name} -")
        lines.append(f"  {file[:58]:<58} {days:7.1f} days  " + "  ".join(cells))
    total = "  ".join(f"{name} {fa.rate:.3f} ({fa.episodes})" for name, fa in fas.items()
                      if fa.rate is not None)
    lines.append(f"  {'all files (resolutions pooled)':<58} {fas['guard'].days:7.1f} days  "
                 f"{total}")
    return lines


def _shares(fig: Figures, series: Sequence[inc.Series]) -> tuple[int, int, int]:
    """``(critical ns, mitigated ns, calm ns)`` of the calm time of ``series``."""
    crit = mit = calm = 0
    for s in series:
        end = s.records[-1].ts if s.records else 0
        spans = [(a, b if b is not None else end)
                 for k, a, b in fig.guard.spans.get(s.file, []) if k == s.key]
        c_hit, c_calm = calm_share(s, fig.labels, spans)
        m_hit, _ = calm_share(s, fig.labels,
                              mitigated_spans(fig.guard.commands.get(s.file, []), s.key, end))
        crit, mit, calm = crit + c_hit, mit + m_hit, calm + c_calm
    return crit, mit, calm


def share_lines(fig: Figures) -> list[str]:
    """The share of calm time the guard held a key critical, and under reduce_only or
    stronger: by resolution, then by file."""
    lines = ["share of calm time the guard held a key critical / under reduce_only or "
             "stronger, by bar resolution, then by file:"]
    groups = [(res, group) for res, group in _by_resolution(fig.loaded.series).items()]
    files = sorted({s.file for s in fig.loaded.series})
    groups += [(file[:58], [s for s in fig.loaded.series if s.file == file]) for file in files]
    for name, group in groups:
        crit, mit, calm = _shares(fig, group)
        if calm:
            lines.append(f"  {name:<58} critical {crit / calm:6.1%}  mitigated "
                         f"{mit / calm:6.1%}")
    return lines


def incident_report(directory: Path, overlay: dict[str, Any] | None = None,
                    jobs: int = 1) -> list[str]:
    """The incident part's lines (the guard's config with ``overlay`` merged in; ``jobs``
    files at a time)."""
    labels = inc.load_labels(directory / "labels.toml")
    loaded = inc.load_all(directory)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, digest = default_config(Path(tmp), overlay)
        guard = run_guard(loaded, cfg, digest, jobs)
    baselines = {name: [ep for s in loaded.series for ep in baseline(s)]
                 for name, baseline in inc.BASELINES.items()}
    onset_rule = [ep for s in loaded.series for ep in inc.onset_rule_episodes(s)]
    fig = Figures(labels, loaded, guard, baselines, onset_rule)
    return [*incident_lines(fig), *resolution_lines(fig), *file_lines(fig),
            "  the labels' onset rule: a price bar whose low is 5 % below the previous "
            "day's close (price bars only)",
            *share_lines(fig),
            f"guard wall time {sum(guard.wall.values()):.1f} s over {len(guard.wall)} files"]


def benchmark_report(directory: Path, overlay: dict[str, Any] | None = None,
                     jobs: int = 1) -> list[str]:
    """The benchmark part's lines (the overlay's ``[detector]`` table, if any, over the
    default detector config). It runs in one process whatever ``jobs``."""
    del jobs
    import nab  # bench/nab.py, only for this part
    from riskguard.operators.detection.models import DetectorConfig

    from riskguard.config import decode_section

    table = (overlay or {}).get("detector")
    config = decode_section(table, DetectorConfig, "detector").validate() if table else None
    return nab.report_lines(directory, config)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("incidents", "benchmark", "all"), default="all")
    p.add_argument("--overlay", type=Path, metavar="TOML",
                   help="a guard config document whose tables are merged over the default "
                   "one (to measure settings other than the defaults)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="the incident files and their labels.toml (default: the "
                   "development data's incidents folder)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run the guard over N incident files at a time (processes)")
    args = p.parse_args(argv)
    overlay = tomllib.loads(args.overlay.read_text()) if args.overlay else None
    if overlay:
        print(f"with {args.overlay.name} merged over the default config")
    print(f"riskguard detection on real data, {time.strftime('%Y-%m-%d')}")
    status = 0
    for part, directory, report in (("incidents", args.data or incidents_dir(), incident_report),
                                    ("benchmark", nab_dir(), benchmark_report)):
        if args.part not in (part, "all"):
            continue
        reason = missing_reason(directory)
        if reason:
            print(f"{part}: skipped, {reason}")
            status = 1
            continue
        print(f"== {part} ({directory})")
        for line in report(directory, overlay, args.jobs):
            print(line)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
