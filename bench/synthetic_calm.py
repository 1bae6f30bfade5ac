"""False alarms on calm markets of kinds the development data does not hold.

Run ``python bench/synthetic_calm.py [--days 30] [--seed 7] [--jobs 2] [--overlay TOML]``
(about two minutes). The real minute-level files are bitcoin, ether and one DeFi coin;
a desk also trades thin and mid-cap coins. This bench writes calm minute bars of four
kinds, with no incident in them, each as a 1-minute file and a 5-minute one, and runs
them through ``bench/detection_real.py``'s incident part (the guard with the default
config and the bundled playbook, and the baselines beside it):

- ``LIQUID``: days of about 3 %, as bitcoin's;
- ``VOLATILE``: days of about 8 %, as a mid-cap coin's;
- ``THIN``: days of about 5 %, quoted in steps of 0.2 %, with a trade in 3 minutes of
  10 (a minute with none repeats the last price and trades nothing);
- ``BURSTY``: days of about 4 %, and on a third of the days the volatility triples for
  3 to 8 hours (an ordinary volatile day: news, a large order working).

Each minute's return is GARCH(1,1) (``alpha`` 0.08, ``beta`` 0.90) with Student-t
innovations (4 degrees of freedom), scaled by the hour of the day (1.8 times from 13:30
to 16:00 UTC, 0.7 times from 00:00 to 06:00); the bar's high and low reach past its
open and close by a share of the minute's move. Everything here is calm by
construction, so every critical episode is false. The figures are a probe, not a goal:
a rule tuned to this generator proves nothing about real markets, and a rate far above
the real files' is a warning about markets they have not shown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection_real import incident_report

MINUTES_A_DAY = 1440
START_S = int(datetime(2023, 3, 1, tzinfo=UTC).timestamp())
HEADER = "venue,symbol,timestamp_s,datetime_utc,open,high,low,close,volume_base"


class MarketKind(NamedTuple):
    """One kind of calm market: its daily volatility, quote step (a share of the first
    price, 0: none), share of minutes that trade and share of days with a burst."""

    name: str
    daily_vol: float
    tick: float = 0.0
    trading_share: float = 1.0
    burst_days: float = 0.1


KINDS = (MarketKind("LIQUID", 0.03), MarketKind("VOLATILE", 0.08, burst_days=0.15),
         MarketKind("THIN", 0.05, tick=0.002, trading_share=0.3),
         MarketKind("BURSTY", 0.04, burst_days=0.35))


def hour_of_day_scale(n: int) -> np.ndarray:
    """Each minute's volatility multiple by the time of day (UTC)."""
    minute = np.arange(n) % MINUTES_A_DAY
    return np.where((minute >= 810) & (minute < 960), 1.8, np.where(minute < 360, 0.7, 1.0))


def burst_scale(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Each minute's volatility multiple from bursts: 3 for 3 to 8 hours on ``share`` of
    the days."""
    scale = np.ones(n)
    for day in range(n // MINUTES_A_DAY):
        if rng.random() < share:
            start = day * MINUTES_A_DAY + int(rng.integers(0, 1200))
            scale[start:start + int(rng.integers(180, 480))] = 3.0
    return scale


def garch_returns(n: int, daily_vol: float, rng: np.random.Generator,
                  alpha: float = 0.08, beta: float = 0.90, dof: float = 4.0) -> np.ndarray:
    """``n`` one-minute log returns of GARCH(1,1) with Student-t innovations, whose
    unconditional volatility is ``daily_vol`` a day."""
    var = (daily_vol / np.sqrt(MINUTES_A_DAY)) ** 2
    omega = var * (1.0 - alpha - beta)
    shocks = rng.standard_t(dof, n) / np.sqrt(dof / (dof - 2.0))
    out = np.empty(n)
    for i in range(n):
        out[i] = np.sqrt(var) * shocks[i]
        var = omega + alpha * out[i] * out[i] + beta * var
    return out


def minute_bars(kind: MarketKind, days: int, rng: np.random.Generator
                ) -> list[tuple[int, float, float, float, float, float]]:
    """``(timestamp_s, open, high, low, close, volume)`` of a calm market of ``kind``."""
    n = days * MINUTES_A_DAY
    returns = (garch_returns(n, kind.daily_vol, rng) * hour_of_day_scale(n)
               * burst_scale(n, kind.burst_days, rng))
    true_price = 10.0 * np.exp(np.cumsum(returns))
    step = kind.tick * 10.0
    wicks = np.abs(rng.normal(0.0, 0.6, (n, 2))) * np.abs(returns)[:, None]
    trades = rng.random(n) < kind.trading_share
    volume = rng.gamma(2.0, 5.0, n)
    bars, last = [], 10.0
    for i in range(n):
        if not trades[i]:
            bars.append((START_S + 60 * i, last, last, last, last, 0.0))
            continue
        close = float(true_price[i])
        high = max(last, close) * float(np.exp(wicks[i, 0]))
        low = min(last, close) * float(np.exp(-wicks[i, 1]))
        if step:
            close, high, low = (round(x / step) * step for x in (close, high, low))
        bars.append((START_S + 60 * i, last, max(high, close, last), min(low, close, last),
                     close, float(volume[i])))
        last = close
    return bars


def five_minute_bars(bars: list[tuple[int, float, float, float, float, float]]
                     ) -> list[tuple[int, float, float, float, float, float]]:
    """The same market in 5-minute bars."""
    return [(group[0][0], group[0][1], max(b[2] for b in group), min(b[3] for b in group),
             group[-1][4], sum(b[5] for b in group))
            for group in (bars[i:i + 5] for i in range(0, len(bars) - 4, 5))]


def write_bars(path: Path, symbol: str,
               bars: list[tuple[int, float, float, float, float, float]]) -> None:
    lines = [HEADER]
    for ts, o, h, lo, c, v in bars:
        when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"synthetic,{symbol},{ts},{when},{o:.8g},{h:.8g},{lo:.8g},{c:.8g},{v:.5f}")
    path.write_text("\n".join(lines) + "\n")


def write_markets(folder: Path, days: int, seed: int) -> None:
    """A 1-minute and a 5-minute file of each kind, and a ``labels.toml`` of no incident."""
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        bars = minute_bars(kind, days, rng)
        write_bars(folder / f"calm_1m_{kind.name}.csv", f"{kind.name}USD", bars)
        write_bars(folder / f"calm_5m_{kind.name}.csv", f"{kind.name}5USD",
                   five_minute_bars(bars))
    (folder / "labels.toml").write_text("# calm by construction: no incident\n")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--days", type=int, default=30, help="days of each market")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--jobs", type=int, default=2, help="files run side by side")
    p.add_argument("--overlay", type=Path, metavar="TOML",
                   help="a guard config document merged over the default one")
    args = p.parse_args()
    overlay = tomllib.loads(args.overlay.read_text()) if args.overlay else None
    print(f"riskguard on synthetic calm markets, {time.strftime('%Y-%m-%d')}: "
          f"{len(KINDS)} kinds x {args.days} days, seed {args.seed}"
          + (f", with {args.overlay.name}" if overlay else ""))
    with tempfile.TemporaryDirectory(prefix="rg-calm-") as tmp:
        write_markets(Path(tmp), args.days, args.seed)
        lines = incident_report(Path(tmp), overlay, args.jobs)
    start = next(i for i, line in enumerate(lines) if line.startswith("false critical"))
    for line in lines[start:]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
