"""``riskguard explain``: for one moment of a data file, which detectors could fire there,
and what each would have needed.

The data runs through the guard once, as ``riskguard backtest`` runs it, with a
:class:`~riskguard.dataflows.readiness.DetectorWatch` that keeps every feature vector's
time. At ``--at`` (default: the largest move over the shortest horizon) it gives, per
market, the moves over each move-band horizon, each detection part's readiness
(:func:`~riskguard.dataflows.readiness.key_parts` at that moment) and the signals raised
around it (docs/backtests.md).

>>> parse_at("2024-01-01T15:00:00Z"), parse_at("1704121200"), parse_at("1704121200000000000")
(1704121200000000000, 1704121200000000000, 1704121200000000000)
>>> parse_at("999999999999999999999999")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: --at: a time from 1970 to 2262 (ns since the epoch below 2**63);
got '999999999999999999999999'
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riskguard.connectors.replay import ReplayFile
from riskguard.dataflows.backtest import (
    BacktestResult,
    refuse_all_dead,
    run_backtest,
    time_ns_of,
)
from riskguard.dataflows.guard import GuardConfig
from riskguard.dataflows.readiness import (
    DetectorWatch,
    Part,
    duration,
    key_parts,
    utc,
)
from riskguard.dataflows.report import event_what, events_of
from riskguard.operators.detection.band_levels import log_interpolate

from riskguard.errors import ConfigError

NS = 1_000_000_000
AROUND_NS = 15 * 60 * NS  # signals this close to the moment are shown
MAX_NS = 2**63  # the wire contract's times are int64 ns


def parse_at(text: str) -> int:
    """A moment: an ISO-8601 time (UTC where it names no offset), or an integer: seconds,
    milliseconds, microseconds or nanoseconds since the epoch, told by its size."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        n = int(t)
        for limit, scale in ((10**11, NS), (10**14, 10**6), (10**17, 1000)):
            if abs(n) < limit:
                n *= scale
                break
    else:
        n = time_ns_of(t, "--at")
    if not 0 <= n < MAX_NS:
        raise ConfigError("--at", "a time from 1970 to 2262 (ns since the epoch below 2**63)",
                          text)
    return n


class Extremes:
    """A key's low and high at a moment: its bar's there (a price is its own where the
    data has no bars)."""

    def __init__(self, res: BacktestResult, key: str) -> None:
        self.ranges = res.ranges.get(key) or []
        self.times = [t for t, _lo, _hi in self.ranges]

    def at(self, t: int, close: float) -> tuple[float, float]:
        j = bisect.bisect_right(self.times, t) - 1
        return (self.ranges[j][1], self.ranges[j][2]) if j >= 0 else (close, close)


def move_bps(low: float, high: float, ref: float) -> float:
    """The move from ``ref`` as the move bands measure it: the fall to ``low`` or the rise
    to ``high``, whichever is larger (the fall on a tie), in bps.

    >>> round(move_bps(98.0, 100.5, 100.0))
    -202
    """
    down, up = math.log(low / ref) * 1e4, math.log(high / ref) * 1e4
    return down if -down >= up else up


def moves_at(res: BacktestResult, key: str, at: int, horizons_s: Sequence[float],
             ) -> list[tuple[str, float | None]]:
    """The key's move over each horizon at ``at``: its low (a fall) or high (a rise) there
    against its close one horizon back, in bps (None where the data reaches not so far)."""
    prices = res.prices.get(key, [])
    times = [t for t, _ in prices]
    i = bisect.bisect_right(times, at) - 1
    if i < 0:
        return [(duration(int(h * NS)), None) for h in horizons_s]
    low, high = Extremes(res, key).at(at, prices[i][1])
    out: list[tuple[str, float | None]] = []
    for h in horizons_s:
        k = bisect.bisect_right(times, prices[i][0] - int(h * NS)) - 1
        out.append((duration(int(h * NS)),
                    move_bps(low, high, prices[k][1]) if k >= 0 else None))
    return out


def largest_move(res: BacktestResult, cfg: GuardConfig) -> tuple[int, str, float, int] | None:
    """The moment, market, size (bps) and span (ns) of the largest move over the move
    bands' shortest horizon (one bar, where bars are longer) in the run's prices,
    measured as :func:`moves_at` measures it (a bar's low or high against the close one
    span back), so that the two give the same number for the same moment."""
    best: tuple[int, str, float, int] | None = None
    h_ns = int(min(cfg.detector.bands.horizons_s) * NS)
    for key, prices in res.prices.items():
        times = [t for t, _ in prices]
        steps = [b - a for a, b in itertools.pairwise(times) if b > a]
        span = max(h_ns, min(steps)) if steps else h_ns
        extremes = Extremes(res, key)
        for t, close in prices:
            k = bisect.bisect_right(times, t - span) - 1
            if k < 0:
                continue
            move = move_bps(*extremes.at(t, close), prices[k][1])
            if best is None or abs(move) > abs(best[2]):
                best = (t, key, move, span)
    return best


def explain(cfg: GuardConfig, digest: str, files: Sequence[ReplayFile], *, at: int | None,
            keys: Sequence[str] = (), most: int = 6) -> list[str]:
    """What ``riskguard explain`` prints: the run, then each market at the moment."""
    watch = DetectorWatch(cfg.detector, keep_times=True)
    res = run_backtest(cfg, digest, files=files, watch=watch)
    refuse_all_dead(res)
    if not res.n_events:
        raise ConfigError("data", "at least one record", "none")
    out = []
    if at is None:
        big = largest_move(res, cfg)
        at = big[0] if big else res.end_ns
        why = (f"the largest {duration(big[3])} move in the data, {big[2]:+.0f} bps on "
               f"{big[1]}" if big else "the end of the data")
        out.append(f"explain: {utc(at)}: {why} (--at picks another moment)")
    else:
        out.append(f"explain: {utc(at)} (data from {utc(res.start_ns)} to {utc(res.end_ns)})")
    if res.n_dead_letters:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(res.dead_letter_counts.items()))
        out.append(f"  {res.n_dead_letters:,} row(s) refused as dead letters ({reasons}): "
                   "the guard never saw them")
    past = watch.at(at)
    chosen = [k for k in sorted(past.keys) if not keys or k in keys]
    markets = [k for k in chosen if "/" in k] or chosen
    if keys and not chosen:
        raise ConfigError("--key", "a key of the data by then, one of "
                          + ", ".join(sorted(past.keys)), ", ".join(keys))
    for key in _ranked(res, markets, at)[:most]:
        out.extend(_market_lines(res, cfg, past, key, at))
    if len(markets) > most:
        out.append(f"... and {len(markets) - most} more markets (--key names one)")
    out.extend(_signals_around(res, at))
    return out


def _ranked(res: BacktestResult, keys: list[str], at: int) -> list[str]:
    """Markets by the size of their shortest move at the moment, largest first."""
    def size(key: str) -> float:
        move = moves_at(res, key, at, (60.0,))[0][1]
        return -abs(move) if move is not None else 0.0
    return sorted(keys, key=size)


def _market_lines(res: BacktestResult, cfg: GuardConfig, past: DetectorWatch, key: str,
                  at: int) -> list[str]:
    p = past.keys[key]
    bars = f"{duration(p.interval_ns)} bars" if p.interval_ns else "ticks"
    out = [f"{key}: {bars}, {p.vectors:,} feature vectors from {utc(p.first_ts)} "
           f"({duration(at - p.first_ts)} before this moment)"]
    parts = key_parts(past, key, cfg)
    if p.first_priced_ts >= 0:
        horizons, caps = bar_horizons(cfg.detector.bands.for_key(key, p.measure),
                                      p.interval_ns)
        moves = moves_at(res, key, at, horizons)
        out.append("  moves here: " + ", ".join(
            f"{h} {m:+.0f} bps" if m is not None else f"{h} (no price that far back)"
            for h, m in moves))
        parts = [_with_caps(x, moves, caps) if x.name == "move bands, static levels"
                 else x for x in parts]
    live = [x for x in parts if x.live_from is not None and x.live_from <= at]
    dead = [x for x in parts if x not in live]
    out.append("  could fire here:" + ("" if live else " none"))
    out.extend(f"    {x.name:<26} live since {utc(x.live_from or 0)}; fires on {x.fires}"
               for x in live)
    out.append("  could not:" + ("" if dead else " none"))
    out.extend(f"    {x.name:<26} needs {x.needs}; {_why_not(x, at)}" for x in dead)
    return out


def bar_horizons(bands: Any, interval_ns: int) -> tuple[list[float], list[float]]:
    """The horizons a key's moves are measured over, and their caps: a horizon shorter
    than the key's bars is measured over one bar, with the settings of that length (as
    the move bands take them: log-linear between the configured horizons).

    >>> from riskguard.operators.detection.band_levels import MoveBandConfig
    >>> bar_horizons(MoveBandConfig(), 3600 * NS)
    ([3600.0, 14400.0, 86400.0], [700.0, 700.0, 700.0])
    """
    bar = interval_ns / NS
    hs = [h for h in bands.horizons_s if h > bar]
    caps = [c for h, c in zip(bands.horizons_s, bands.cap_bps, strict=True) if h > bar]
    if len(hs) < len(bands.horizons_s):
        hs.insert(0, bar)
        caps.insert(0, log_interpolate(bands.horizons_s, bands.cap_bps, bar))
    return hs, caps


def _with_caps(part: Part, moves: list[tuple[str, float | None]], caps: Sequence[float],
               ) -> Part:
    """The static levels' part, saying which horizon's move here passed its cap, or how
    far the largest share of one was."""
    ratios = [(abs(m) / c, h, m, c) for (h, m), c in zip(moves, caps, strict=True)
              if m is not None]
    if not ratios:
        return part
    r, h, m, c = max(ratios)
    verdict = (f"here the {h} move ({m:+.0f} bps) is past its {c:g} bps" if r >= 1 else
               f"here the nearest, {h}, moved {m:+.0f} bps of its {c:g} bps ({r:.0%})")
    return Part(part.name, part.live_from, part.needs, part.why, f"{part.fires}; {verdict}")


def _why_not(part: Part, at: int) -> str:
    if part.live_from is not None and part.live_from > at:
        return f"it became live later, at {utc(part.live_from)}"
    return part.why or "not live"


def _signals_around(res: BacktestResult, at: int) -> list[str]:
    near = [e for e in events_of(res.signals) if abs(e["t"] - at) <= AROUND_NS]
    head = (f"signals within {duration(AROUND_NS)} of it: "
            + ("none" if not near else f"{len(near)}"))
    return [head, *(f"  {utc(e['t'])} {event_what(e)} {e['scope']}: {e['detail']}"
                    for e in near[:20])]


def explain_files(config: Any, data: Sequence[str | Path], *, at: str | None,
                  keys: Sequence[str] = (), **read: Any) -> list[str]:
    """:func:`explain` over files read as ``riskguard backtest`` reads them (``read``:
    format, venue, instrument, market, contract_size, measure)."""
    cfg, digest = config
    files = [ReplayFile(p, **read) for p in data]
    for f in files:
        f.require_rows()  # an empty file is a mistake, as backtest says
    return explain(cfg, digest, files, at=parse_at(at) if at else None, keys=keys)


__all__ = ["Extremes", "explain", "explain_files", "largest_move", "move_bps", "moves_at",
           "parse_at"]
