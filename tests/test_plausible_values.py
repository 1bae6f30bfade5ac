"""Values a file should never give are refused, one dead letter each, naming the value
and what was expected: times outside 2009..2100 (0, the year 3000, a time read in the
wrong unit), an option expiring at 0, a delta outside -1..1. Binance's unit is the one
its file states (spot files dated 2025-01-01 on: µs), never guessed from a value."""

from __future__ import annotations

from pathlib import Path

import msgspec
from riskguard.schemas import Bar, DeadLetter, OptionQuote, Trade

from tests.test_formats_binance import read, write
from tests.test_formats_tardis import HEAD, US
from tests.test_formats_tardis import write as write_tardis

T = 1_704_067_200_000  # 2024-01-01 00:00 UTC in ms
MS = 1_000_000


def _trade_row(t: int) -> str:
    return f"7,40000.0,0.1,4000.0,{t},true,true\n"


def test_a_ms_time_of_1e14_in_a_ms_file_is_refused_not_read_as_microseconds(
        tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSDT-trades-2024-06-01.csv", _trade_row(T) + _trade_row(T * 100))
    ok, bad = read(p)
    assert isinstance(ok, Trade) and ok.ts == T * MS
    assert isinstance(bad, DeadLetter) and bad.path == "$.time"
    assert "read in ms" in bad.detail and "the year" in bad.detail


def test_a_spot_file_dated_2025_counts_microseconds_and_refuses_milliseconds(
        tmp_path: Path) -> None:
    t25 = 1_735_689_600_000  # 2025-01-01 in ms
    p = write(tmp_path, "BTCUSDT-trades-2025-01-02.csv",
              _trade_row(t25 * 1000) + _trade_row(t25))
    ok, bad = read(p)
    assert isinstance(ok, Trade) and ok.ts == t25 * MS
    assert isinstance(bad, DeadLetter) and "read in µs" in bad.detail


def test_times_of_0_and_the_year_3000_are_refused_in_any_format(tmp_path: Path) -> None:
    year_2200 = 7_258_118_400 * 10**9  # the year 3000 does not fit an int64 of ns
    lines = [msgspec.json.encode({"type": "trade", "v": 1, "id": f"t{i}", "venue": "okx",
                                  "instrument": "BTC-USDT", "ts": ts, "price": 1.0,
                                  "qty": 1.0, "side": "buy"}).decode()
             for i, ts in enumerate((0, year_2200, T * MS))]
    p = write(tmp_path, "trades.jsonl", "\n".join(lines) + "\n")
    out = read(p)
    assert [d.reason for d in out[:2]] == ["implausible", "implausible"]
    assert isinstance(out[2], Trade)
    bars = write(tmp_path, "bars.csv", "timestamp_s,open,high,low,close,volume\n"
                 "0,1,2,0.5,1,1\n" f"{T // 1000},1,2,0.5,1,1\n" f"{T // 1000 + 60},1,2,0.5,1,1\n"
                 "32503680000,1,2,0.5,1,1\n")  # the year 3000 in s
    out = read(bars, instrument="X")
    assert [type(x).__name__ for x in out] == ["DeadLetter", "Bar", "Bar", "DeadLetter"]
    assert out[0].reason == "implausible" and "2009-01-01" in out[0].expected
    assert out[3].reason in ("implausible", "validation")  # past int64 ns too


OPTIONS_HEADER = (HEAD + "type,strike_price,expiration,open_interest,last_price,bid_price,"
                  "bid_amount,bid_iv,ask_price,ask_amount,ask_iv,mark_price,mark_iv,"
                  "underlying_index,underlying_price,delta,gamma,vega,theta,rho\n")


def _option(expiry: int, delta: str) -> str:
    return (f"deribit,BTC-31JAN24-40000-P,{US},{US + 2},put,40000,{expiry},12.5,0.02,0.0205,"
            "15,55.91,0.0235,15,68.94,0.0221,62.89,SYN.BTC-31JAN24,42000,"
            f"{delta},0.00103,2.24964,-53.05655,-0.22796\n")


def test_an_option_expiring_at_0_or_with_a_delta_of_5_is_refused(tmp_path: Path) -> None:
    exp = US + 30 * 86_400_000_000
    p = write_tardis(tmp_path, "deribit_options_chain_2024-01-01_OPTIONS.csv", OPTIONS_HEADER
                     + _option(exp, "-0.6") + _option(0, "-0.6") + _option(exp, "5"))
    ok, no_expiry, big_delta = read(p)
    assert isinstance(ok, OptionQuote)
    assert (no_expiry.reason, no_expiry.path) == ("implausible", "$.expiry")
    assert (big_delta.reason, big_delta.path) == ("implausible", "$.delta")
    assert not any(isinstance(x, Bar) for x in (ok,))
