"""Tardis.dev downloadable CSVs read into wire-contract records (µs times, exchange and
arrival time), and a property test: no bytes and no rows ever crash any parser."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.connectors.formats import FORMATS
from riskguard.schemas import (
    BookDepth,
    DeadLetter,
    FundingRate,
    OpenInterest,
    OptionQuote,
    Quote,
    Trade,
)
from riskguard.schemas.audit import MAX_DEAD_LETTER_BYTES
from riskguard.schemas.base import Record

from riskguard.errors import ConfigError
from tests.test_formats_binance import read

US = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC in µs
HEAD = "exchange,symbol,timestamp,local_timestamp,"


def write(folder: Path, name: str, text: str, *, gz: bool = True) -> Path:
    """A Tardis file as the vendor ships it: gzipped, its name saying what it holds."""
    path = folder / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_trades_carry_exchange_time_and_arrival_time(tmp_path: Path) -> None:
    p = write(tmp_path, "binance-futures_trades_2024-01-01_BTCUSDT.csv",
              HEAD + "id,side,price,amount\n"
              f"binance-futures,BTCUSDT,{US + 123},{US + 1456},4532771,sell,42283.5,0.012\n"
              f"binance-futures,BTCUSDT,{US + 200},{US + 1500},4532772,unknown,42283.5,0.5\n")
    trade, dead = read(p)
    assert trade == Trade(id="binance-futures_trades_2024-01-01_BTCUSDT@2",
                          venue="binance-futures", instrument="BTCUSDT", ts=(US + 123) * 1000,
                          recv_ts=(US + 1456) * 1000, price=42283.5, qty=0.012, side="sell")
    assert isinstance(dead, DeadLetter)
    assert (dead.path, dead.found, dead.detail.split(":")[0]) == (
        "$.side", "unknown", "binance-futures_trades_2024-01-01_BTCUSDT.csv.gz line 3")


def test_liquidations_are_trades_marked_as_liquidations(tmp_path: Path) -> None:
    p = write(tmp_path, "binance-futures_liquidations_2024-01-01_BTCUSDT.csv",
              HEAD + f"id,side,price,amount\nbinance-futures,BTCUSDT,{US},{US + 9},,buy,42000,"
              "1.5\n")
    (t,) = read(p)
    assert (t.liquidation, t.side.value, t.qty, t.price, t.recv_ts) == (
        True, "buy", 1.5, 42000.0, (US + 9) * 1000)


def test_quotes_and_a_one_sided_quote(tmp_path: Path) -> None:
    p = write(tmp_path, "bitmex_quotes_2024-01-01_XBTUSD.csv",
              HEAD + "ask_amount,ask_price,bid_price,bid_amount\n"
              f"bitmex,XBTUSD,{US},{US + 5},1200,42000.5,42000,3400\n"
              f"bitmex,XBTUSD,{US + 1},{US + 6},,,42000,3400\n")
    quote, dead = read(p)
    assert quote == Quote(id="bitmex_quotes_2024-01-01_XBTUSD@2", venue="bitmex",
                          instrument="XBTUSD", ts=US * 1000, recv_ts=(US + 5) * 1000,
                          bid=42000.0, bid_size=3400.0, ask=42000.5, ask_size=1200.0)
    assert isinstance(dead, DeadLetter) and dead.path == "$.ask_price"


def test_a_book_snapshot_gives_its_top_as_a_quote_and_its_covered_bands(
        tmp_path: Path) -> None:
    """Top level: a Quote. Depth: the cumulative amount within each band both sides
    reach (levels 0.5 % apart on a mid of 100: the 0.5 % and 1 % ... bands)."""
    levels = []
    for k in range(5):
        levels += [f"{100.25 + 0.5 * k}", f"{k + 1}", f"{99.75 - 0.5 * k}", f"{10 * (k + 1)}"]
    header = ",".join(f"{s}[{k}].{w}" for k in range(5)
                      for s, w in (("asks", "price"), ("asks", "amount"),
                                   ("bids", "price"), ("bids", "amount")))
    p = write(tmp_path, "deribit_book_snapshot_5_2024-01-01_BTC-PERPETUAL.csv",
              HEAD + header + "\n" + f"deribit,BTC-PERPETUAL,{US},{US + 7}," + ",".join(levels)
              + "\n")
    quote, depth = read(p)
    assert quote == Quote(id="deribit_book_snapshot_5_2024-01-01_BTC-PERPETUAL@2",
                          venue="deribit", instrument="BTC-PERPETUAL", ts=US * 1000,
                          recv_ts=(US + 7) * 1000, bid=99.75, bid_size=10.0, ask=100.25,
                          ask_size=1.0)
    assert isinstance(depth, BookDepth)
    # the deepest level on each side is 2.25 % from the mid: bands up to 2 %
    assert depth.bands_pct == [0.01, 0.05, 0.1, 0.5, 1.0, 2.0]
    assert depth.bid_depth == [0.0, 0.0, 0.0, 10.0, 30.0, 100.0]
    assert depth.ask_depth == [0.0, 0.0, 0.0, 1.0, 3.0, 10.0]
    assert depth.mid == 100.0


def test_a_derivative_ticker_gives_funding_and_open_interest(tmp_path: Path) -> None:
    p = write(tmp_path, "binance-futures_derivative_ticker_2024-01-01_BTCUSDT.csv",
              HEAD + "funding_timestamp,funding_rate,predicted_funding_rate,open_interest,"
              "last_price,index_price,mark_price\n"
              f"binance-futures,BTCUSDT,{US},{US + 3},{US + 8 * 3_600_000_000},0.0001,0.00012,"
              "81234.5,42001,42000.1,42000.9\n"
              f"binance-futures,BTCUSDT,{US + 1},{US + 4},,,,,42001,,\n")
    funding, oi, dead = read(p)
    assert funding == FundingRate(
        id="binance-futures_derivative_ticker_2024-01-01_BTCUSDT@2", venue="binance-futures",
        instrument="BTCUSDT", ts=US * 1000, recv_ts=(US + 3) * 1000, rate=0.0001,
        mark_price=42000.9, index_price=42000.1,
        next_funding_ts=(US + 8 * 3_600_000_000) * 1000, predicted_rate=0.00012)
    assert oi == OpenInterest(id="binance-futures_derivative_ticker_2024-01-01_BTCUSDT@2oi",
                              venue="binance-futures", instrument="BTCUSDT", ts=US * 1000,
                              recv_ts=(US + 3) * 1000, open_interest=81234.5)
    assert isinstance(dead, DeadLetter) and "neither" in dead.detail


OPTIONS_HEADER = (HEAD + "type,strike_price,expiration,open_interest,last_price,bid_price,"
                  "bid_amount,bid_iv,ask_price,ask_amount,ask_iv,mark_price,mark_iv,"
                  "underlying_index,underlying_price,delta,gamma,vega,theta,rho\n")


def test_deribit_options_are_priced_in_the_coin_with_iv_in_percent(tmp_path: Path) -> None:
    """A BTC option's prices are in BTC: times the underlying price into USD; IVs in
    percent become fractions; a USDC-settled option's prices stay as they are."""
    exp = US + 30 * 86_400_000_000
    p = write(tmp_path, "deribit_options_chain_2024-01-01_OPTIONS.csv", OPTIONS_HEADER
              + f"deribit,BTC-31JAN24-40000-P,{US},{US + 2},put,40000,{exp},12.5,0.02,0.0205,"
              "15,55.91,0.0235,15,68.94,0.0221,62.89,SYN.BTC-31JAN24,42000,-0.61752,0.00103,"
              "2.24964,-53.05655,-0.22796\n"
              f"deribit,AVAX_USDC-29MAY26-8D6-P,{US},{US + 2},put,8.6,{exp},300,0.348,0.312,"
              "2000,53.49,0.318,1800,54.15,0.3144,53.72,AVAX_USDC-29MAY26,9.103,-0.32469,"
              "0.26407,0.00912,-0.00865,-0.00254\n")
    btc, avax = read(p)
    assert btc == OptionQuote(
        id="deribit_options_chain_2024-01-01_OPTIONS@2", venue="deribit",
        instrument="BTC-31JAN24-40000-P", ts=US * 1000, recv_ts=(US + 2) * 1000,
        underlying="BTC", expiry=exp * 1000, strike=40000.0, option_type="put",
        bid=0.0205 * 42000, ask=0.0235 * 42000, mark_price=0.0221 * 42000,
        mark_iv=0.6289, underlying_price=42000.0, delta=-0.61752, gamma=0.00103,
        vega=2.24964, theta=-53.05655)
    assert (avax.underlying, avax.bid, avax.mark_price, avax.mark_iv) == (
        "AVAX", 0.312, 0.3144, pytest.approx(0.5372))


def test_a_venue_given_replaces_the_exchange_name(tmp_path: Path) -> None:
    p = write(tmp_path, "binance-futures_trades_2024-01-01_BTCUSDT.csv",
              HEAD + f"id,side,price,amount\nbinance-futures,BTCUSDT,{US},{US},1,buy,1,1\n")
    (t,) = read(p, venue="binance_um")
    assert t.venue == "binance_um"


def test_a_header_without_the_needed_columns_is_one_dead_letter(tmp_path: Path) -> None:
    p = write(tmp_path, "trades.csv", HEAD + "id,price\nx,y,1,2,3,4\n", gz=False)
    (dead,) = read(p, "tardis_trades")
    assert (dead.reason, dead.detail) == (
        "malformed", "trades.csv line 1: header lacks column(s) side, amount; file not read")


# ---------------------------------------------------------------------------- properties

PARSED = [f for f in FORMATS if f != "auto"]
_CELLS = st.sampled_from(["", "0", "-1", "1.5", "1e308", "1e309", "nan", "inf", "true",
                          "False", "buy", "sell", "call", "put", "BTCUSDT", "a b",
                          "2024-01-01 00:00:07", "17040672000000000", "99999999999999999999",
                          '"q,uoted"', "\x00", "é", "-0"])


def _check_items(items: list[Any]) -> None:
    for item in items:
        assert isinstance(item, Record)
        if isinstance(item, DeadLetter):
            assert len(msgspec.json.encode(item)) <= MAX_DEAD_LETTER_BYTES


def _read_bytes(fmt: str, data: bytes, name: str = "f.csv") -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return read(path, fmt)
        except ConfigError:
            return []  # a file-level refusal (an unreadable zip): documented, not a crash


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(PARSED), data=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_a_parser(fmt: str, data: bytes) -> None:
    _check_items(_read_bytes(fmt, data))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(PARSED), header=st.booleans(),
       rows=st.lists(st.lists(_CELLS, min_size=0, max_size=30), max_size=12),
       compress=st.sampled_from(["none", "gzip", "gzip-cut"]))
def test_arbitrary_rows_never_crash_a_parser(fmt: str, header: bool, rows: list[list[str]],
                                             compress: str) -> None:
    """Rows of plausible cells under each format's own header (or none), plain, gzipped
    or gzipped and cut short: only records and dead letters come out."""
    from riskguard.connectors.formats import binance, tardis

    head = ""
    if header and fmt.startswith("tardis_book"):
        head = HEAD + ",".join(tardis.book_columns(5)) + "\n"
    elif header and fmt.startswith("tardis"):
        head = HEAD + ",".join(tardis.COLUMNS[fmt.removeprefix("tardis_")]) + "\n"
    elif header and fmt.startswith("binance"):
        head = ",".join(binance.KLINE_COLUMNS if "kline" in fmt else
                        binance.METRICS_COLUMNS) + "\n"
    data = (head + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8", "replace")
    if compress != "none":
        data = gzip.compress(data)
        if compress == "gzip-cut":
            data = data[: max(10, len(data) // 2)]
    _check_items(_read_bytes(fmt, data))


def _cut_gzip(text: bytes) -> bytes:
    """A gzip stream whose deflate data stops (sync-flushed) at the end of ``text``."""
    import zlib
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = co.compress(text) + co.flush(zlib.Z_SYNC_FLUSH)
    assert gzip.decompress(data + co.flush()) == text  # a valid stream once finished
    return data


def test_the_row_a_truncated_gzip_cuts_off_is_in_its_dead_letter(tmp_path: Path) -> None:
    head = (HEAD + "id,side,price,amount\n").encode()
    body = b"".join(b"binance-futures,BTCUSDT,%d,%d,%d,buy,42000.5,0.01\n"
                    % (US + i, US + 100 + i, i) for i in range(3))
    partial = b"binance-futures,BTCUSDT,1704067200000009,17040672"
    f = tmp_path / "binance-futures_trades_2024-01-01_BTCUSDT.csv.gz"
    f.write_bytes(_cut_gzip(head + body + partial))
    items = read(f, "tardis_trades")
    assert [type(x) for x in items] == [Trade] * 3 + [DeadLetter]
    dead = items[-1]
    assert (dead.reason, dead.raw, dead.offset) == (
        "decode_error", partial, len(head) + len(body))
    assert "line 5" in dead.detail


def test_a_second_header_with_another_column_order_refuses_the_rest(tmp_path: Path) -> None:
    from riskguard.connectors.formats import open_reader
    head = (HEAD + "id,side,price,amount\n").encode()
    swapped = (HEAD + "id,side,amount,price\n").encode()
    row = b"binance-futures,BTCUSDT,%d,%d,%d,buy,%s\n"
    first = head + row % (US, US + 100, 1, b"42000.5,0.01")
    # two exports joined (cat a.csv b.csv), b's columns in another order
    f = tmp_path / "trades.csv"
    f.write_bytes(first + swapped + row % (US + 5, US + 100, 5, b"0.01,42000.5"))
    items = read(f, "tardis_trades")
    assert [type(x) for x in items] == [Trade, DeadLetter]  # never price 0.01, qty 42000.5
    assert items[0].price == 42000.5
    assert (items[1].reason, items[1].offset) == ("malformed", len(first))
    assert "line 3: a second header" in items[1].detail
    # a resume from where the reader stopped meets the header again
    reader = open_reader(f, "tardis_trades")
    list(reader.lines())
    reader.close()
    assert reader.position == len(first)
    again = open_reader(f, "tardis_trades", offset=reader.position)
    assert [type(x) for _l, _o, x in again.lines()] == [DeadLetter]
    again.close()
    # the same header again (the same exports joined) is one dead letter, the rest read
    f.write_bytes(first + head + row % (US + 5, US + 100, 5, b"42000.5,0.01"))
    items = read(f, "tardis_trades")
    assert [type(x) for x in items] == [Trade, DeadLetter, Trade]
