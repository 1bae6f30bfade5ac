"""Replay throughput per historical file format, against ``csv.reader`` on the same file.

Run ``python bench/replay_formats.py [--rows N] [--repeat R] [--real]``. It writes
one file per format (Binance dumps and Tardis CSVs, the kline file also gzipped and
zipped) into a temporary folder, then for each file, in the same run:

- ``csv.reader``: every row of the (decompressed) file read by ``csv.reader`` alone,
  nothing converted: the floor any Python reader of the file pays;
- ``replay``: every row read by :class:`~riskguard.connectors.replay.ReplaySource`
  into wire-contract records (every value checked, dead letters for bad rows).

Both are the best of ``--repeat`` runs, in input rows per second; the ratio is
replay / csv.reader. The goal: a bar format keeps up at least 0.3x csv.reader.
``--real`` also reads the development data's Binance files and its hourly OHLCV
files of several series (``bench/shared_data.py``) when they are present. An OHLCV
file not in time order (here: one symbol after another, 4 or 2,000 symbols) is read
through an index of its rows, built in the measured run. Last, ``--days`` one-day
kline files (the rows split among them, as Binance ships a day a file) replay
merged, more files than a replay keeps open at once.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import platform
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskguard.connectors.formats import open_stream
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from shared_data import incidents_dir

T0_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
GOAL = 0.3


def _klines(n: int, rng: random.Random) -> list[str]:
    out, px = [], 42_000.0
    for i in range(n):
        o = px
        px = max(1.0, px * (1 + rng.gauss(0, 0.001)))
        hi, lo = max(o, px) * 1.0005, min(o, px) * 0.9995
        t = T0_MS + i * 60_000
        out.append(f"{t},{o:.2f},{hi:.2f},{lo:.2f},{px:.2f},{rng.random() * 50:.3f},"
                   f"{t + 59_999},{rng.random() * 2e6:.2f},{rng.randint(1, 900)},"
                   f"{rng.random() * 20:.3f},{rng.random() * 8e5:.2f},0")
    return out


def _ohlcv(n: int, rng: random.Random, *, grouped: bool, symbols: int = 4) -> list[str]:
    """Hourly bars of four symbols (or ``symbols``), interleaved in time, or one symbol
    after another."""
    names = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT") if symbols == 4 else tuple(
        f"S{k:04d}USDT" for k in range(symbols))
    per = n // len(names)
    rows: list[tuple[int, int, str]] = []
    for k, sym in enumerate(names):
        px = 100.0 * (k + 1)
        for i in range(per):
            o = px
            px = max(1.0, px * (1 + rng.gauss(0, 0.01)))
            hi, lo = max(o, px) * 1.002, min(o, px) * 0.998
            rows.append((i, k, f"{sym},{T0_MS // 1000 + i * 3600},{o:.4f},{hi:.4f},"
                               f"{lo:.4f},{px:.4f},{rng.random() * 500:.3f}"))
    rows.sort(key=lambda r: (r[1], r[0]) if grouped else (r[0], r[1]))
    return [r[2] for r in rows]


def _trades(n: int, rng: random.Random) -> list[str]:
    return [f"{i},{42_000 + rng.random() * 10:.2f},{rng.random():.4f},"
            f"{rng.random() * 4e4:.2f},{T0_MS + i * 7},{rng.random() < 0.5}".lower()
            for i in range(n)]


def _agg_trades(n: int, rng: random.Random) -> list[str]:
    return [f"{i},{42_000 + rng.random() * 10:.2f},{rng.random():.4f},{i * 3},{i * 3 + 2},"
            f"{T0_MS + i * 7},{rng.random() < 0.5}".lower() for i in range(n)]


def _book_ticker(n: int, rng: random.Random) -> list[str]:
    return [f"{i},{42_000 + i % 7:.1f},{rng.random() * 5:.3f},{42_000.1 + i % 7:.1f},"
            f"{rng.random() * 5:.3f},{T0_MS + i * 3},{T0_MS + i * 3 + 1}" for i in range(n)]


def _book_depth(n: int, rng: random.Random) -> list[str]:
    out = []
    for k in range(n // 10):
        ts = datetime.fromtimestamp(T0_MS / 1000 + 30 * k, UTC).strftime("%Y-%m-%d %H:%M:%S")
        for p in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5):
            depth = abs(p) * (1000 + rng.random() * 100)
            out.append(f"{ts},{p},{depth:.3f},{depth * (42_000 * (1 + p / 100)):.2f}")
    return out


def _metrics(n: int, rng: random.Random) -> list[str]:
    return [datetime.fromtimestamp(T0_MS / 1000 + 300 * i, UTC).strftime("%Y-%m-%d %H:%M:%S")
            + f",BTCUSDT,{80_000 + rng.random() * 100:.3f},{3.4e9 + rng.random() * 1e6:.2f},"
            f"{1 + rng.random():.4f},{1 + rng.random():.4f},{1 + rng.random():.4f},"
            f"{rng.random() * 2:.4f}" for i in range(n)]


def _tardis_trades(n: int, rng: random.Random) -> list[str]:
    us = T0_MS * 1000
    return [f"binance-futures,BTCUSDT,{us + i * 7000},{us + i * 7000 + 900},{i},"
            f"{'buy' if rng.random() < 0.5 else 'sell'},{42_000 + rng.random() * 10:.1f},"
            f"{rng.random():.3f}" for i in range(n)]


def _tardis_quotes(n: int, rng: random.Random) -> list[str]:
    us = T0_MS * 1000
    return [f"binance-futures,BTCUSDT,{us + i * 5000},{us + i * 5000 + 800},"
            f"{rng.random() * 5:.3f},{42_000.1 + i % 5:.1f},{42_000 + i % 5:.1f},"
            f"{rng.random() * 5:.3f}" for i in range(n)]


def _tardis_book5(n: int, rng: random.Random) -> list[str]:
    us, out = T0_MS * 1000, []
    for i in range(n):
        mid = 42_000 + (i % 50)
        levels = []
        for k in range(5):
            levels += [f"{mid + 10 * (k + 1):.1f}", f"{rng.random() * 3:.3f}",
                       f"{mid - 10 * (k + 1):.1f}", f"{rng.random() * 3:.3f}"]
        out.append(f"binance-futures,BTCUSDT,{us + i * 100_000},{us + i * 100_000 + 500},"
                   + ",".join(levels))
    return out


def _tardis_ticker(n: int, rng: random.Random) -> list[str]:
    us = T0_MS * 1000
    return [f"binance-futures,BTCUSDT,{us + i * 1_000_000},{us + i * 1_000_000 + 700},"
            f"{us + 8 * 3_600_000_000},{rng.random() * 1e-4:.8f},{rng.random() * 1e-4:.8f},"
            f"{80_000 + rng.random():.3f},{42_000.5:.1f},{42_000.1:.2f},{42_000.3:.2f}"
            for i in range(n)]


def _tardis_options(n: int, rng: random.Random) -> list[str]:
    us, exp = T0_MS * 1000, (T0_MS + 30 * 86_400_000) * 1000
    return [f"deribit,BTC-31JAN24-{40_000 + 1000 * (i % 9)}-C,{us + i * 10_000},"
            f"{us + i * 10_000 + 600},call,{40_000 + 1000 * (i % 9)},{exp},10,0.05,0.048,5,"
            f"55.1,0.051,5,56.2,0.0495,55.6,SYN.BTC-31JAN24,42000.5,0.52,0.00003,30.2,"
            f"-45.1,5.2" for i in range(n)]


TARDIS_HEADERS = {
    "trades": "id,side,price,amount",
    "quotes": "ask_amount,ask_price,bid_price,bid_amount",
    "book_snapshot_5": ",".join(f"{s}[{k}].{w}" for k in range(5)
                                for s, w in (("asks", "price"), ("asks", "amount"),
                                             ("bids", "price"), ("bids", "amount"))),
    "derivative_ticker": "funding_timestamp,funding_rate,predicted_funding_rate,"
                         "open_interest,last_price,index_price,mark_price",
    "options_chain": "type,strike_price,expiration,open_interest,last_price,bid_price,"
                     "bid_amount,bid_iv,ask_price,ask_amount,ask_iv,mark_price,mark_iv,"
                     "underlying_index,underlying_price,delta,gamma,vega,theta,rho",
}
# (file name, header or None, row maker); names are the vendors' own (auto detection)
FILES: list[tuple[str, str | None, Callable[[int, random.Random], list[str]]]] = [
    ("BTCUSDT-1m-2024-01-01.csv", None, _klines),
    ("ohlcv_1h_interleaved.csv", "symbol,timestamp_s,open,high,low,close,volume",
     lambda n, rng: _ohlcv(n, rng, grouped=False)),
    ("ohlcv_1h_one_symbol_after_another.csv", "symbol,timestamp_s,open,high,low,close,volume",
     lambda n, rng: _ohlcv(n, rng, grouped=True)),
    ("ohlcv_1h_2000_symbols_one_after_another.csv",
     "symbol,timestamp_s,open,high,low,close,volume",
     lambda n, rng: _ohlcv(n, rng, grouped=True, symbols=2000)),
    ("BTCUSDT-trades-2024-01-01.csv", "id,price,qty,quote_qty,time,is_buyer_maker", _trades),
    ("BTCUSDT-aggTrades-2024-01-01.csv", "agg_trade_id,price,quantity,first_trade_id,"
     "last_trade_id,transact_time,is_buyer_maker", _agg_trades),
    ("BTCUSDT-bookTicker-2024-01-01.csv", "update_id,best_bid_price,best_bid_qty,"
     "best_ask_price,best_ask_qty,transaction_time,event_time", _book_ticker),
    ("BTCUSDT-bookDepth-2024-01-01.csv", "timestamp,percentage,depth,notional", _book_depth),
    ("BTCUSDT-metrics-2024-01-01.csv", "create_time,symbol,sum_open_interest,"
     "sum_open_interest_value,count_toptrader_long_short_ratio,sum_toptrader_long_short_ratio,"
     "count_long_short_ratio,sum_taker_long_short_vol_ratio", _metrics),
    *[(f"binance-futures_{kind}_2024-01-01_BTCUSDT.csv",
       f"exchange,symbol,timestamp,local_timestamp,{TARDIS_HEADERS[kind]}", make)
      for kind, make in (("trades", _tardis_trades), ("quotes", _tardis_quotes),
                         ("book_snapshot_5", _tardis_book5),
                         ("derivative_ticker", _tardis_ticker))],
    ("deribit_options_chain_2024-01-01_OPTIONS.csv",
     f"exchange,symbol,timestamp,local_timestamp,{TARDIS_HEADERS['options_chain']}",
     _tardis_options),
]


def write_files(folder: Path, rows: int, seed: int = 7) -> list[Path]:
    """Every format's file in ``folder``; the kline file also as .csv.gz and .zip."""
    rng = random.Random(seed)
    paths = []
    for file, header, make in FILES:
        text = "\n".join(([header] if header else []) + make(rows, rng)) + "\n"
        path = folder / file
        path.write_text(text)
        paths.append(path)
        if file.startswith("BTCUSDT-1m"):
            gz = folder / "BTCUSDT-1m-2024-01-02.csv.gz"
            gz.write_bytes(gzip.compress(text.encode(), compresslevel=6))
            zp = folder / "BTCUSDT-1m-2024-01-03.zip"
            with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("BTCUSDT-1m-2024-01-03.csv", text)
            paths += [gz, zp]
    return paths


def csv_rows(path: Path) -> int:
    """Rows of ``path`` read by csv.reader alone (over the decompressed stream)."""
    with open_stream(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        return sum(1 for _ in csv.reader(f))


def replay_rows(path: Path, fmt: str = "auto", **kw: str) -> int:
    """Records (dead letters included) a replay of ``path`` gives (an OHLCV file's scans
    included)."""
    return sum(1 for _ in read_all(ReplaySource([ReplayFile(path, format=fmt, **kw)],
                                                batch_size=1000)))


def best(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """``(best seconds, result)`` of ``repeat`` calls."""
    times, out = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def measure(path: Path, repeat: int, fmt: str = "auto", **kw: str
            ) -> tuple[int, float, float, int]:
    """``(rows, csv.reader rows/s, replay rows/s, records)``."""
    t_csv, rows = best(lambda: csv_rows(path), repeat)
    t_rep, records = best(lambda: replay_rows(path, fmt, **kw), repeat)
    return rows, rows / t_csv, rows / t_rep, records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows per generated file")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    ap.add_argument("--days", type=int, default=1000,
                    help="daily kline files replayed together (the rows split among them)")
    ap.add_argument("--real", action="store_true",
                    help="also read the development data's Binance files, when present")
    args = ap.parse_args(argv)
    print(f"# {datetime.now(UTC):%Y-%m-%d}  Python {platform.python_version()}  "
          f"{platform.machine()}  rows per file {args.rows:,}  best of {args.repeat}")
    print(f"{'file':<48} {'rows':>8} {'csv.reader/s':>13} {'replay/s':>10} {'ratio':>6}"
          f" {'records':>8}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[Path, str, dict[str, str]]] = [
            (p, "auto", {}) for p in write_files(Path(tmp), args.rows)]
        real = incidents_dir()
        if args.real and real.is_dir():
            # their names are not the dumps' own: the instrument is given, as labels give it
            targets += [(p, "auto", {"instrument": "BTCUSDT"})
                        for p in sorted(real.glob("binance_*priceklines*.csv"))]
            targets += [(p, "binance_book_depth", {"instrument": "BTCUSDT"})
                        for p in sorted(real.glob("*bookDepth*.csv"))]
            targets += [(p, "auto", {}) for p in (sorted(real.glob("binance_usdm_perp_1h_*.csv"))
                                                  + sorted(real.glob("crossvenue_*.csv")))]
        for path, fmt, kw in targets:
            rows, csv_rate, rep_rate, records = measure(path, args.repeat, fmt, **kw)
            ratio = rep_rate / csv_rate
            bars = ("kline" in path.name or path.name.startswith("BTCUSDT-1m")
                    or (fmt == "auto" and "ohlcv" in path.name) or "_1h_" in path.name)
            mark = "" if not bars else ("  ok" if ratio >= GOAL else f"  below {GOAL}x")
            ok = ok and (not bars or ratio >= GOAL)
            print(f"{path.name[:48]:<48} {rows:>8,} {csv_rate:>13,.0f} {rep_rate:>10,.0f} "
                  f"{ratio:>5.2f}x {records:>8,}{mark}")
        days = write_daily_files(Path(tmp) / "daily", args.days, args.rows // args.days)
        t_csv, rows = best(lambda: sum(csv_rows(p) for p in days), args.repeat)
        t_rep, records = best(lambda: sum(1 for _ in read_all(ReplaySource(
            [ReplayFile(p) for p in days], batch_size=1000))), args.repeat)
        print(f"{f'{len(days):,} daily kline files, merged':<48} {rows:>8,} "
              f"{rows / t_csv:>13,.0f} {rows / t_rep:>10,.0f} {t_csv / t_rep:>5.2f}x "
              f"{records:>8,}")
    return 0 if ok else 1


def write_daily_files(folder: Path, days: int, rows: int) -> list[Path]:
    """``days`` one-day Binance 1m kline files of ``rows`` rows each, as the dumps come
    (one file a day; more of them than a replay keeps open at once; from 2025-01-01 on in
    µs, as Binance's spot files are)."""
    folder.mkdir()
    rng = random.Random(11)
    paths = []
    for d in range(days):
        day_ms = T0_MS + d * 86_400_000
        k = 1000 if day_ms >= 1_735_689_600_000 else 1  # 2025-01-01: ms -> µs
        lines = [f"{(day_ms + m * 60_000) * k},{100 + rng.random():.2f},101,99,100.5,2,"
                 f"{(day_ms + m * 60_000 + 60_000) * k - 1},200,3,1,100,0"
                 for m in range(rows)]
        path = folder / f"BTCUSDT-1m-{datetime.fromtimestamp(day_ms / 1000, UTC):%Y-%m-%d}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
