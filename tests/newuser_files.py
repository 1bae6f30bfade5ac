"""Small synthetic exchange files in the published layouts a new user downloads, each
with a crash in it: a Binance kline dump (a zip holding one header-less CSV), a
CryptoDataDownload OHLCV export (its address line, then newest bar first) and a
Tardis.dev trades CSV written to the published column list. Made here, never copied."""

from __future__ import annotations

import math
import random
import zipfile
from datetime import UTC, datetime
from pathlib import Path

T0_S = 1_704_067_200  # 2024-01-01T00:00:00Z


def _walk(n: int, crash_at: int, crash_len: int, drop: float, start: float,
          seed: int, sigma: float) -> list[tuple[float, float]]:
    """``(open, close)`` of ``n`` steps: a calm random walk, then ``crash_len`` steps
    falling ``drop`` (a fraction) in all from ``crash_at``."""
    rng = random.Random(seed)
    px, out = start, []
    step_fall = math.log1p(-drop) / crash_len
    for i in range(n):
        step = step_fall if crash_at <= i < crash_at + crash_len else rng.gauss(0.0, sigma)
        o, px = px, px * math.exp(step)
        out.append((o, px))
    return out


def binance_klines_zip(folder: Path, n: int = 360, crash_at: int = 300) -> Path:
    """``BTCUSDT-1m-2024-01-01.zip``: ``n`` one-minute spot klines (no header, as Binance
    ships spot files), falling 10 % over 5 minutes from bar ``crash_at``."""
    rows = []
    for i, (o, c) in enumerate(_walk(n, crash_at, 5, 0.10, 42_000.0, 1, 0.0006)):
        ot = (T0_S + 60 * i) * 1000
        hi, lo = max(o, c) * 1.0004, min(o, c) * 0.9996
        rows.append(f"{ot},{o:.2f},{hi:.2f},{lo:.2f},{c:.2f},12.5,{ot + 59_999},"
                    f"{12.5 * c:.2f},900,6.1,{6.1 * c:.2f},0")
    path = folder / "BTCUSDT-1m-2024-01-01.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("BTCUSDT-1m-2024-01-01.csv", "\n".join(rows) + "\n")
    return path


def cryptodatadownload_csv(folder: Path, n: int = 240, crash_at: int = 200) -> Path:
    """``Binance_ETHUSDT_1h.csv`` as CryptoDataDownload exports it: the site's address,
    then ``Unix,Date,Symbol,Open,High,Low,Close,Volume ETH,Volume USDT,tradecount``,
    newest bar first; hourly bars falling 12 % in the hour from bar ``crash_at``."""
    rows = []
    for i, (o, c) in enumerate(_walk(n, crash_at, 1, 0.12, 2_300.0, 2, 0.004)):
        start = T0_S + 3600 * i
        hi, lo = max(o, c) * 1.002, min(o, c) * 0.998
        date = datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"{start * 1000},{date},ETHUSDT,{o:.2f},{hi:.2f},{lo:.2f},{c:.2f},"
                    f"310.5,{310.5 * c:.2f},4200")
    path = folder / "Binance_ETHUSDT_1h.csv"
    head = ["https://www.CryptoDataDownload.com",
            "Unix,Date,Symbol,Open,High,Low,Close,Volume ETH,Volume USDT,tradecount"]
    path.write_text("\n".join([*head, *reversed(rows)]) + "\n")
    return path


def tardis_trades_csv(folder: Path, n: int = 900, crash_at: int = 780) -> Path:
    """``deribit_trades_2024-01-01_BTC-PERPETUAL.csv`` to Tardis.dev's published trades
    layout (``exchange,symbol,timestamp,local_timestamp,id,side,price,amount``, times in
    microseconds): a trade a second, falling 6 % over 30 s from trade ``crash_at``."""
    rows = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    for i, (_o, c) in enumerate(_walk(n, crash_at, 30, 0.06, 42_000.0, 3, 0.00015)):
        us = (T0_S + i) * 1_000_000 + 250_000
        side = "sell" if i % 3 else "buy"
        rows.append(f"deribit,BTC-PERPETUAL,{us},{us + 1_800},t{i},{side},{c:.1f},"
                    f"{0.1 + (i % 7) / 10:.1f}")
    path = folder / "deribit_trades_2024-01-01_BTC-PERPETUAL.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
