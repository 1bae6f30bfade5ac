"""Binance public data dumps read into wire-contract records: every format, header or
not, ms and µs, COIN-M contracts, compressed streams, auto detection, bad rows."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import pytest
from riskguard.connectors.formats import open_reader
from riskguard.connectors.formats.binance import MAX_SNAPSHOT_ROWS
from riskguard.connectors.formats.core import MAX_REFUSED_IN_GROUP
from riskguard.connectors.formats.detect import detect
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.operators.detection.features import FeatureConfig, FeatureLogic
from riskguard.schemas import (
    Bar,
    BookDepth,
    DeadLetter,
    FundingRate,
    OpenInterest,
    PremiumIndexBar,
    Quote,
    Side,
    Trade,
)

from riskguard.errors import ConfigError

MS = 1_000_000
T = 1_704_067_200_000  # 2024-01-01 00:00 UTC in ms
KLINE_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
                "taker_buy_volume,taker_buy_quote_volume,ignore\n")
CM_KLINE_HEADER = ("open_time,open,high,low,close,volume,close_time,base_volume,count,"
                   "taker_buy_volume,taker_buy_base_volume,ignore\n")


def read(path: Path, fmt: str = "auto", **kw: Any) -> list[Any]:
    """Every record and dead letter of ``path``, in order."""
    reader = open_reader(path, fmt, **kw)
    try:
        out: list[Any] = []
        for _line, _offset, item in reader.lines():
            out.extend(item if isinstance(item, list) else [item])
        return out
    finally:
        reader.close()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_headerless_spot_kline_becomes_a_bar_with_every_field(tmp_path: Path) -> None:
    """Spot klines have no header; venue and instrument come from the dump's name."""
    p = write(tmp_path, "BTCUSDT-1m-2024-01-01.csv",
              f"{T},42283.58,42298.62,42261.02,42298.61,35.92724,{T + 59_999},"
              "1519032.35,1327,18.2,769522.1,0\n")
    (bar,) = read(p)
    assert bar == Bar(id="BTCUSDT-1m-2024-01-01@1", venue="binance", instrument="BTCUSDT",
                      ts=(T + 60_000) * MS, start=T * MS, interval_ns=60_000 * MS,
                      open=42283.58, high=42298.62, low=42261.02, close=42298.61,
                      volume=35.92724, quote_volume=1519032.35, trades=1327,
                      taker_buy_volume=18.2, price_only=False)


def test_a_binance_file_whose_name_gives_no_symbol_needs_an_instrument(tmp_path: Path) -> None:
    """Kline rows name no symbol: such a file is refused until --instrument names it (two
    of them would otherwise replay as one instrument)."""
    p = write(tmp_path, "my_btc_klines.csv", KLINE_HEADER + f"{T},1,2,0.5,1.5,3,{T + 59_999},"
              "4,5,1,1,0\n")
    with pytest.raises(ConfigError) as err:
        read(p)
    assert err.value.path == "replay.files[my_btc_klines.csv].instrument"
    assert "--instrument" in str(err.value)
    (bar,) = read(p, instrument="BTCUSDT")
    assert bar.instrument == "BTCUSDT"


def test_microsecond_spot_klines_from_2025_give_the_same_times(tmp_path: Path) -> None:
    """Spot files from 2025 count µs: their name's date says so, the bar is the same."""
    t_us = T * 1000
    p = write(tmp_path, "BTCUSDT-1m-2025-01-01.csv",
              f"{t_us},100,101,99,100.5,2,{t_us + 59_999_999},200,3,1,100,0\n")
    (bar,) = read(p)
    assert (bar.start, bar.ts, bar.interval_ns) == (T * MS, (T + 60_000) * MS, 60_000 * MS)


def test_a_futures_kline_with_header_is_usdt_m(tmp_path: Path) -> None:
    """A header means a futures file: the venue is binance_um; the header is not a row."""
    p = write(tmp_path, "ETHUSDT-1h-2024-01-01.csv",
              KLINE_HEADER + f"{T},2281.5,2290,2275.1,2288,1500.5,{T + 3_599_999},"
              "3425000.1,4200,800.2,1827000,0\n")
    (bar,) = read(p)
    assert (bar.venue, bar.instrument, bar.interval_ns, bar.id) == (
        "binance_um", "ETHUSDT", 3_600_000 * MS, "ETHUSDT-1h-2024-01-01@2")


def test_a_coin_m_kline_counts_contracts_and_keeps_its_base_volume(tmp_path: Path) -> None:
    """COIN-M: volume in contracts; the bar's volume is the base_volume column and its
    quote volume is contracts times the contract size (100 USD for BTC)."""
    p = write(tmp_path, "BTCUSD_PERP-1m-2024-01-01.csv",
              CM_KLINE_HEADER + f"{T},42000,42100,41900,42050,840,{T + 59_999},2.0,12,420,"
              "1.0,0\n")
    (bar,) = read(p)
    assert (bar.venue, bar.instrument) == ("binance_cm", "BTCUSD_PERP")
    assert (bar.volume, bar.quote_volume, bar.taker_buy_volume, bar.trades) == (
        2.0, 84_000.0, 1.0, 12)


def test_mark_price_klines_from_their_folder_are_price_only(tmp_path: Path) -> None:
    """The data.binance.vision folder names the kline kind: mark-price klines are bars
    with prices only (no volume fields)."""
    p = write(tmp_path, "futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.csv",
              KLINE_HEADER + f"{T},42000,42100,41900,42050,0,{T + 59_999},0,60,0,0,0\n")
    (bar,) = read(p)
    assert isinstance(bar, Bar)
    assert (bar.price_only, bar.volume, bar.quote_volume, bar.trades, bar.venue) == (
        True, 0.0, None, None, "binance_um")


def test_a_kline_with_no_volume_is_price_only_even_as_plain_klines(tmp_path: Path) -> None:
    p = write(tmp_path, "x-klines.csv",
              KLINE_HEADER + f"{T},1,2,0.5,1.5,0,{T + 59_999},0,60,0,0,0\n")
    (bar,) = read(p, "binance_klines", instrument="X")
    assert bar.price_only and bar.volume == 0.0


def test_premium_index_klines_keep_signed_values_in_their_own_record(tmp_path: Path) -> None:
    """Premium values are signed fractions: a PremiumIndexBar, never a Bar (whose
    consumers read prices); the same row as plain klines is a dead letter."""
    row = f"{T},-0.0001,0.0002,-0.0003,0.00005,0,{T + 59_999},0,12,0,0,0\n"
    p = write(tmp_path, "futures/um/daily/premiumIndexKlines/BTCUSDT/1m/"
                        "BTCUSDT-1m-2024-01-01.csv", KLINE_HEADER + row)
    (prem,) = read(p)
    assert prem == PremiumIndexBar(id="BTCUSDT-1m-2024-01-01@2", venue="binance_um",
                                   instrument="BTCUSDT", ts=(T + 60_000) * MS, start=T * MS,
                                   interval_ns=60_000 * MS, open=-0.0001, high=0.0002,
                                   low=-0.0003, close=0.00005)
    (dead,) = read(p, "binance_klines")
    assert isinstance(dead, DeadLetter) and "0 < low" in dead.detail


def test_spot_trades_without_header_and_capitalised_booleans(tmp_path: Path) -> None:
    """Spot trades: id, price, qty, quote_qty, time, is_buyer_maker, is_best_match; a
    buyer-maker trade is a taker sell."""
    p = write(tmp_path, "BTCUSDT-trades-2024-01-01.csv",
              f"3350000,42283.58,0.00059,24.947,{T + 12},True,True\n"
              f"3350001,42283.59,0.01,422.8359,{T + 13},False,True\n")
    sell, buy = read(p)
    assert sell == Trade(id="BTCUSDT-trades-2024-01-01@1", venue="binance",
                         instrument="BTCUSDT", ts=(T + 12) * MS, price=42283.58, qty=0.00059,
                         side="sell")
    assert (buy.side.value, buy.qty, buy.liquidation) == ("buy", 0.01, False)


def test_usdt_m_trades_with_header(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSDT-trades-2024-01-01.csv",
              "id,price,qty,quote_qty,time,is_buyer_maker\n"
              f"1,42000.1,0.5,21000.05,{T},false\n")
    (t,) = read(p)
    assert (t.venue, t.price, t.qty, t.side.value, t.ts) == (
        "binance_um", 42000.1, 0.5, "buy", T * MS)


def test_coin_m_agg_trades_convert_contracts_with_the_contract_size(tmp_path: Path) -> None:
    """COIN-M aggTrades have no base column: qty = contracts * contract size / price;
    the contract size is a setting (10 USD for coins other than BTC by default)."""
    p = write(tmp_path, "ETHUSD_PERP-aggTrades-2024-01-01.csv",
              "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
              f"is_buyer_maker\n9,2500,50,100,104,{T},true\n")
    (t,) = read(p)
    assert (t.venue, t.instrument, t.qty, t.side.value) == (
        "binance_cm", "ETHUSD_PERP", 50 * 10 / 2500, "sell")
    (t2,) = read(p, contract_size=100.0)
    assert t2.qty == 50 * 100 / 2500


def test_book_ticker_becomes_a_quote_at_its_transaction_time(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSDT-bookTicker-2024-01-01.csv",
              "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,"
              f"transaction_time,event_time\n77,42000.0,1.5,42000.1,2.25,{T + 5},{T + 6}\n")
    (q,) = read(p)
    assert q == Quote(id="BTCUSDT-bookTicker-2024-01-01@2", venue="binance_um",
                      instrument="BTCUSDT", ts=(T + 5) * MS, bid=42000.0, bid_size=1.5,
                      ask=42000.1, ask_size=2.25)


def _depth_rows(ts: str, factor: float = 1.0, skip: int | None = None) -> str:
    return "".join(f"{ts},{p},{abs(p) * 10 * factor},{abs(p) * 10 * factor * (100 + p)}\n"
                   for p in (-2, -1, 1, 2) if p != skip)


def test_book_depth_rows_of_one_timestamp_make_one_snapshot(tmp_path: Path) -> None:
    """bookDepth: one BookDepth per timestamp, mid from the ±1 % rows' notional/depth;
    an incomplete snapshot is skipped, each of its rows a dead letter with its line."""
    p = write(tmp_path, "BTCUSDT-bookDepth-2024-01-01.csv",
              "timestamp,percentage,depth,notional\n"
              + _depth_rows("2024-01-01 00:00:07")
              + _depth_rows("2024-01-01 00:00:37", skip=2)
              + _depth_rows("2024-01-01 00:01:07", 2.0))
    first, *dead, last = read(p)
    assert first == BookDepth(id="BTCUSDT-bookDepth-2024-01-01@2", venue="binance_um",
                              instrument="BTCUSDT", ts=(T + 7000) * MS, bands_pct=[1.0, 2.0],
                              bid_depth=[10.0, 20.0], ask_depth=[10.0, 20.0], mid=100.0)
    assert [d.offset > 0 and "snapshot skipped" in d.detail for d in dead] == [True] * 3
    assert [d.detail.split(":")[0] for d in dead] == [
        f"BTCUSDT-bookDepth-2024-01-01.csv line {n}" for n in (6, 7, 8)]
    assert (last.ts, last.bid_depth) == ((T + 67_000) * MS, [20.0, 40.0])
    reader = open_reader(p)
    list(reader.lines())
    reader.close()
    assert (reader.stats.records, sum(reader.stats.dead_letters.values())) == (2, 3)


@pytest.mark.parametrize("flood", ["rows", "refused"])
def test_a_snapshot_too_large_to_hold_is_refused_whole_and_the_next_one_reads(
        tmp_path: Path, flood: str) -> None:
    """What a gathering bookDepth snapshot holds is bounded: past MAX_SNAPSHOT_ROWS rows
    of one time, or MAX_REFUSED_IN_GROUP refused rows among them, the snapshot is
    refused whole, every row of its time a dead letter (none vanishes), and the next
    snapshot reads as usual."""
    n = MAX_SNAPSHOT_ROWS * 3 if flood == "rows" else MAX_REFUSED_IN_GROUP * 3
    junk = ("2024-01-01 00:00:07,1,10,1010\n" if flood == "rows"
            else "2024-01-01 00:00:07,1,-10,1010\n")  # a negative depth: refused
    p = write(tmp_path, "BTCUSDT-bookDepth-2024-01-01.csv",
              "timestamp,percentage,depth,notional\n" + _depth_rows("2024-01-01 00:00:07")
              + junk * n + _depth_rows("2024-01-01 00:00:37"))
    *dead, last = read(p)
    assert all(type(d) is DeadLetter for d in dead)
    assert sorted(int(d.detail.split(":")[0].split()[-1]) for d in dead) == list(
        range(2, 2 + 4 + n))
    assert any("refused" in d.detail for d in dead)
    assert type(last) is BookDepth and last.ts == (T + 37_000) * MS
    reader = open_reader(p)
    first_line_no = next(line_no for line_no, _off, _item in reader.lines())
    reader.close()
    assert first_line_no <= 2 + 4 + max(MAX_SNAPSHOT_ROWS, MAX_REFUSED_IN_GROUP)  # not held


def test_coin_m_book_depth_reads_the_base_coin_from_notional(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSD_PERP-bookDepth-2024-01-01.csv",
              "timestamp,percentage,depth,notional\n"
              "2024-01-01 00:00:07,-1,42,0.1\n2024-01-01 00:00:07,1,43,0.1\n")
    (d,) = read(p)
    assert (d.bid_depth, d.ask_depth, d.mid) == ([0.1], [0.1], pytest.approx(42500.0))


def test_funding_rate_rows(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSDT-fundingRate-2024-01.csv",
              f"calc_time,funding_interval_hours,last_funding_rate\n{T},8,0.00037409\n")
    (f,) = read(p)
    assert f == FundingRate(id="BTCUSDT-fundingRate-2024-01@2", venue="binance_um",
                            instrument="BTCUSDT", ts=T * MS, rate=0.00037409)


METRICS_HEADER = ("create_time,symbol,sum_open_interest,sum_open_interest_value,"
                  "count_toptrader_long_short_ratio,sum_toptrader_long_short_ratio,"
                  "count_long_short_ratio,sum_taker_long_short_vol_ratio\n")


def test_usdt_m_metrics_become_open_interest_with_the_ratios(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSDT-metrics-2024-01-01.csv", METRICS_HEADER
              + "2024-01-01 00:05:00,BTCUSDT,81234.5,3412000000.5,1.62,1.31,1.9,0.87\n")
    (oi,) = read(p)
    assert oi == OpenInterest(id="BTCUSDT-metrics-2024-01-01@2", venue="binance_um",
                              instrument="BTCUSDT", ts=(T + 300_000) * MS,
                              open_interest=81234.5, base_qty=81234.5, value=3412000000.5,
                              top_account_ratio=1.62, top_position_ratio=1.31,
                              account_ratio=1.9, taker_buy_sell_ratio=0.87)


def test_coin_m_metrics_count_contracts_and_value_in_the_base_coin(tmp_path: Path) -> None:
    p = write(tmp_path, "BTCUSD_PERP-metrics-2024-01-01.csv", METRICS_HEADER
              + "2024-01-01 00:05:00,BTCUSD_PERP,1000,2.38,,,,\n")
    (oi,) = read(p)
    assert (oi.open_interest, oi.base_qty, oi.value, oi.top_account_ratio) == (
        1000.0, 2.38, 100_000.0, None)


def test_bad_rows_are_dead_letters_with_file_line_and_reason(tmp_path: Path) -> None:
    """Every refused row: a dead letter naming file and line, its offset and the column;
    the rows after it still come, and the reader counts them by reason."""
    good = f"1,100,0.5,50,{T},false\n"
    p = write(tmp_path, "BTCUSDT-trades-2024-01-01.csv",
              "id,price,qty,quote_qty,time,is_buyer_maker\n" + good
              + f"2,abc,0.5,50,{T},false\n" + f"3,100,0.5,50,{T},maybe\n" + "4,100\n" + good)
    reader = open_reader(p)
    items = [item for _, _, item in reader.lines()]
    reader.close()
    dead = [d for d in items if isinstance(d, DeadLetter)]
    assert [(d.reason, d.path, d.topic, d.step) for d in dead] == [
        ("validation", "$.price", "file:BTCUSDT-trades-2024-01-01.csv", "replay"),
        ("validation", "$.is_buyer_maker", "file:BTCUSDT-trades-2024-01-01.csv", "replay"),
        ("malformed", "$", "file:BTCUSDT-trades-2024-01-01.csv", "replay")]
    assert [d.detail for d in dead] == [
        "BTCUSDT-trades-2024-01-01.csv line 3: price 'abc' is not a number",
        "BTCUSDT-trades-2024-01-01.csv line 4: is_buyer_maker 'maybe' is not true or false",
        "BTCUSDT-trades-2024-01-01.csv line 5: 2 columns, expected at least 6"]
    header = len("id,price,qty,quote_qty,time,is_buyer_maker\n")
    assert dead[0].offset == header + len(good)
    assert dead[0].raw == f"2,abc,0.5,50,{T},false".encode()
    assert sum(isinstance(i, Trade) for i in items) == 2
    assert (reader.stats.rows, dict(reader.stats.dead_letters)) == (
        5, {"validation": 2, "malformed": 1})


def test_gzip_and_zip_are_read_as_streams_with_the_same_records(tmp_path: Path) -> None:
    text = KLINE_HEADER + "".join(
        f"{T + 60_000 * i},100,101,99,100.5,2,{T + 60_000 * i + 59_999},200,3,1,100,0\n"
        for i in range(5))
    plain = write(tmp_path, "BTCUSDT-1m-2024-01-01.csv", text)
    gz = tmp_path / "BTCUSDT-1m-2024-01-02.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    zp = tmp_path / "BTCUSDT-1m-2024-01-03.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("BTCUSDT-1m-2024-01-03.csv", text)
    want = [(b.ts, b.close) for b in read(plain)]
    assert [(b.ts, b.close) for b in read(gz)] == want == [(b.ts, b.close) for b in read(zp)]
    assert len(want) == 5


def test_a_zip_of_several_files_or_a_broken_one_is_a_config_error(tmp_path: Path) -> None:
    zp = tmp_path / "BTCUSDT-1m-2024-01-01.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("a.csv", "1\n")
        z.writestr("b.csv", "2\n")
    with pytest.raises(ConfigError, match="one CSV"):
        read(zp)
    bad = tmp_path / "BTCUSDT-1m-2024-01-02.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ConfigError, match="zip"):
        read(bad)


def test_a_zip_of_a_version_or_encryption_zipfile_cannot_read_is_a_config_error(
        tmp_path: Path) -> None:
    """zipfile raises NotImplementedError (a newer zip version) and RuntimeError (an
    encrypted member) outside its own error class: both are refusals, not crashes."""
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("BTCUSDT-1m-2024-01-01.csv", "1,2,3\n")
    raw = bytearray(plain.read_bytes())
    central = raw.index(b"PK\x01\x02")
    newer = bytearray(raw)
    newer[central + 6] = 235  # "version needed to extract": 23.5
    (tmp_path / "BTCUSDT-1m-2024-01-02.zip").write_bytes(newer)
    with pytest.raises(ConfigError, match="zip"):
        read(tmp_path / "BTCUSDT-1m-2024-01-02.zip")
    locked = bytearray(raw)
    local = raw.index(b"PK\x03\x04")
    locked[local + 6] |= 1  # general-purpose flag bit 0: encrypted
    locked[central + 8] |= 1
    (tmp_path / "BTCUSDT-1m-2024-01-03.zip").write_bytes(locked)
    with pytest.raises(ConfigError, match="zip"):
        read(tmp_path / "BTCUSDT-1m-2024-01-03.zip")


def test_a_truncated_gzip_keeps_what_was_read_and_ends_with_a_dead_letter(tmp_path: Path) -> None:
    text = "".join(f"{i},100,0.5,50,{T + i},false,true\n" for i in range(2000))
    gz = tmp_path / "BTCUSDT-trades-2024-01-01.csv.gz"
    data = gzip.compress(text.encode())
    gz.write_bytes(data[: len(data) // 2])
    items = read(gz)
    assert isinstance(items[-1], DeadLetter) and items[-1].reason == "decode_error"
    assert all(isinstance(t, Trade) for t in items[:-1]) and len(items) > 1


@pytest.mark.parametrize(("name", "first", "fmt", "market"), [
    ("BTCUSDT-1m-2024-01-01.zip", "", "binance_klines", "spot"),
    ("data/futures/cm/daily/indexPriceKlines/BTCUSD/1m/BTCUSD-1m-2024-01-01.zip", "",
     "binance_index_price_klines", "cm"),
    ("BTCUSD_PERP-aggTrades-2024-01.zip", "", "binance_agg_trades", "cm"),
    ("BTCUSDT-bookDepth-2024-01-01.zip", "", "binance_book_depth", "um"),
    ("BTCUSDT-bookTicker-2024-01-01.zip", "", "binance_book_ticker", "um"),
    ("BTCUSDT-fundingRate-2024-01.zip", "", "binance_funding", "um"),
    ("BTCUSDT-metrics-2024-01-01.zip", "", "binance_metrics", "um"),
    ("dump.csv", "1,100.5,0.2,20.1,1700000000000,true,true", "binance_trades", "spot"),
    ("dump.csv", "1,100.5,0.2,3,5,1700000000000,true,true", "binance_agg_trades", "spot"),
    ("dump.csv", f"{T},1,2,0.5,1.5,0,{T + 59_999},0,60,0,0,0", "binance_klines", "spot"),
    ("dump.csv", "id,price,qty,base_qty,time,is_buyer_maker", "binance_trades", "cm"),
    ("dump.csv", "timestamp,percentage,depth,notional", "binance_book_depth", "um"),
    ("my_premium_index_klines.csv", KLINE_HEADER.strip(), "binance_premium_index_klines", "um"),
])
def test_auto_detection_from_names_folders_and_headers(name: str, first: str, fmt: str,
                                                       market: str) -> None:
    found = detect(name, first.encode())
    assert (found.format, found.market) == (fmt, market)


def test_a_file_no_rule_recognises_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path, "notes.csv", "a,b\n1,2\n")
    with pytest.raises(ConfigError, match="format"):
        ReplaySource([ReplayFile(p)])


@pytest.mark.parametrize("compress", ["none", "gzip", "zip"])
def test_replay_resumes_from_its_snapshot_with_every_record_once(tmp_path: Path,
                                                                 compress: str) -> None:
    """The snapshot is the next unread row's offset in the decompressed stream; a resumed
    replay skips to it, for plain and compressed files and grouped (bookDepth) rows."""
    text = "timestamp,percentage,depth,notional\n" + "".join(
        _depth_rows(f"2024-01-01 00:{m:02d}:07", 1.0 + m) for m in range(12))
    trades = "".join(f"{i},100,0.5,50,{T + 30_000 * i},false,true\n" for i in range(30))
    files = [write(tmp_path, "BTCUSDT-bookDepth-2024-01-01.csv", text),
             write(tmp_path, "BTCUSDT-trades-2024-01-01.csv", trades)]
    if compress == "gzip":
        for i, f in enumerate(files):
            files[i] = f.with_name(f.name + ".gz")
            files[i].write_bytes(gzip.compress(f.read_bytes()))
    elif compress == "zip":
        for i, f in enumerate(files):
            files[i] = f.with_suffix(".zip")
            with zipfile.ZipFile(files[i], "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(f.name, f.read_text())
    src = ReplaySource([ReplayFile(f) for f in files], batch_size=7)
    whole = [r.id for r in read_all(src)]
    part = src.build_part("s", "replay", None)
    first = [r.id for r in part.next_batch()] + [r.id for r in part.next_batch()]
    snap = part.snapshot()
    part.close()
    rest_part = src.build_part("s", "replay", snap)
    rest: list[str] = []
    try:
        while True:
            rest.extend(r.id for r in rest_part.next_batch())
    except StopIteration:
        pass
    finally:
        rest_part.close()
    assert first + rest == whole
    assert len(whole) == 12 + 30


def test_the_feature_step_reads_premium_bars_as_basis_and_accepts_open_interest() -> None:
    """Premium bars are not prices: the feature step takes their close as the basis
    (as a funding record's mark over index gives it), never as a price; open interest
    is accepted without a feature. Neither is a dead letter."""
    logic = FeatureLogic(FeatureConfig(), clock=lambda: 10**19)
    oi = OpenInterest(id="o", venue="b", instrument="X", ts=1, open_interest=5.0)
    premium = PremiumIndexBar(id="p", venue="b", instrument="X", ts=2, start=1, interval_ns=1,
                              open=-0.0001, high=0.0006, low=-0.0002, close=0.0005)
    assert logic.on_event(oi) == []
    assert logic.on_event(premium) == []
    assert logic.s.basis_bps == pytest.approx(5.0)
    trade = Trade(id="t", venue="b", instrument="X", ts=3, price=100.0, qty=1.0, side=Side.BUY)
    logic.on_event(trade)
    assert logic.values(3)["basis_bps"] == pytest.approx(5.0)
    # open interest after a trade moves nothing: no clock step, no vector
    before = (logic.s.watermark, logic.s.pending, list(logic.s.evidence))
    later = OpenInterest(id="o2", venue="b", instrument="X", ts=10**12, open_interest=6.0)
    assert logic.on_event(later) == []
    assert (logic.s.watermark, logic.s.pending, list(logic.s.evidence)) == before
    assert logic.s.last_trade == 100.0  # the price comes from the trade alone


def test_the_symbol_check_reads_the_name_whatever_the_flags_and_spares_metrics(
        tmp_path: Path) -> None:
    """A dump's own name gives the symbol with --format and --market given too; a
    metrics file, whose rows name their symbol, needs no --instrument whatever its name."""
    p = write(tmp_path, "BTCUSDT-1m-2024-01-01.csv", KLINE_HEADER + f"{T},1,2,0.5,1.5,3,"
              f"{T + 59_999},4,5,1,1,0\n")
    (bar,) = read(p, "binance_klines", market="um")
    assert bar.instrument == "BTCUSDT"
    m = write(tmp_path, "oi.csv", "create_time,symbol,sum_open_interest,"
              "sum_open_interest_value,count_toptrader_long_short_ratio,"
              "sum_toptrader_long_short_ratio,count_long_short_ratio,"
              "sum_taker_long_short_vol_ratio\n2024-01-01 00:05:00,BTCUSDT,1,2,3,4,5,6\n")
    assert {r.instrument for r in read(m, "binance_metrics")} == {"BTCUSDT"}
