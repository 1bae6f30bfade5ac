"""OHLCV CSV files (``ohlcv_csv``): bars from any CSV whose header names open, high, low,
close and a start; one series or several, in time order or one series after another."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.connectors.formats import detect, open_reader, resolve
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.dataflows.backtest import incident_labels
from riskguard.schemas import Bar, DeadLetter, Measure

from riskguard.errors import ConfigError

NS = 1_000_000_000
H = 3600 * NS
T0 = 1_583_020_800  # 2020-03-01 00:00 UTC, in s


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _read(path: Path, **kw) -> list:
    return list(read_all(ReplaySource([ReplayFile(path, **kw)])))


@pytest.mark.parametrize("header", [
    "venue,symbol,timestamp_s,datetime_utc,open,high,low,close,volume_base",
    "window,symbol,timestamp_ms,open,high,low,close,volume,datetime_utc",
    "date,symbol,open,high,low,close",
    "Time,Open,High,Low,Close,Volume",
])
def test_a_header_naming_open_high_low_close_and_a_start_is_ohlcv(header: str) -> None:
    assert detect("bars.csv", header.encode()).format == "ohlcv_csv"


def test_binance_and_tardis_headers_keep_their_own_formats() -> None:
    kline = b"open_time,open,high,low,close,volume,close_time,quote_volume,count"
    assert detect("x.csv", kline).format == "binance_klines"
    assert detect("x.csv", b"timestamp,price,qty").format == ""


def test_interleaved_series_become_bars_that_close_one_interval_after_their_start(
        tmp_path: Path) -> None:
    rows = ["timestamp_ms,symbol,open,high,low,close,volume,trades"]
    for i in range(3):
        ms = (T0 + i * 3600) * 1000
        rows += [f"{ms},BTCUSDT,100,{101 + i},99,100.5,12.5,40",
                 f"{ms},ETHUSDT,10,11,9,10.5,0,0"]
    path = _write(tmp_path, "perps.csv", "\n".join(rows) + "\n")
    bars = _read(path, venue="binance_um")
    assert [type(b) for b in bars] == [Bar] * 6
    btc = [b for b in bars if b.instrument == "BTCUSDT"]
    assert [(b.start, b.ts, b.interval_ns) for b in btc] == [
        ((T0 + i * 3600) * NS, (T0 + i * 3600) * NS + H, H) for i in range(3)]
    assert {b.venue for b in bars} == {"binance_um"}
    assert (btc[2].high, btc[0].volume, btc[0].trades, btc[0].price_only) == (103.0, 12.5, 40,
                                                                             False)
    assert all(b.measure is Measure.PRICE for b in bars)


@pytest.mark.parametrize(("column", "scale"), [
    ("timestamp", 1), ("timestamp", 1000), ("timestamp", 10**6), ("timestamp", 10**9),
    ("timestamp_s", 1), ("timestamp_ms", 1000)])
def test_epoch_starts_in_any_unit_give_the_same_bars(tmp_path: Path, column: str,
                                                      scale: int) -> None:
    rows = [f"{column},open,high,low,close"] + [
        f"{(T0 + i * 60) * scale},1,2,0.5,1.5" for i in range(3)]
    path = _write(tmp_path, "m.csv", "\n".join(rows) + "\n")
    bars = _read(path, instrument="X")
    assert [(b.start, b.ts) for b in bars] == [
        ((T0 + i * 60) * NS, (T0 + i * 60 + 60) * NS) for i in range(3)]
    assert all(b.price_only for b in bars)  # no volume column


def test_a_daily_file_of_dates_is_daily_and_a_measure_column_or_option_says_volatility(
        tmp_path: Path) -> None:
    path = _write(tmp_path, "dvol.csv", "date,symbol,open,high,low,close\n"
                  "2022-06-12,BTC,75.05,93.99,74.28,93.99\n"
                  "2022-06-12,ETH,90,110,89,109\n"
                  "2022-06-13,BTC,93.99,107.5,92.78,106.0\n")
    bars = _read(path, venue="deribit", measure="volatility")
    assert {(b.instrument, b.interval_ns // NS, b.measure) for b in bars} == {
        ("BTC", 86400, Measure.VOLATILITY), ("ETH", 86400, Measure.VOLATILITY)}
    marked = _write(tmp_path, "marked.csv", "date,symbol,measure,open,high,low,close\n"
                    "2022-06-12,BTC,volatility,75,94,74,94\n"
                    "2022-06-13,BTC,volatility,94,107,92,106\n"
                    "2022-06-13,BTCUSD,price,20000,21000,19000,20500\n")
    assert [b.measure for b in _read(marked)] == [Measure.VOLATILITY, Measure.VOLATILITY,
                                                  Measure.PRICE]


def test_series_one_after_another_replay_merged_in_time_each_row_once(tmp_path: Path) -> None:
    """A file of venue A's rows then venue B's is read in time order, so the rows come
    out in event-time order; a row that parses to no series is one dead letter, and a
    bad bar of a series is one dead letter of that series."""
    rows = ["venue,symbol,timestamp_s,open,high,low,close,volume_base"]
    for venue in ("a", "b"):
        rows += [f"{venue},BTCUSD,{T0 + i * 3600},100,101,99,100,1" for i in range(4)]
    rows.insert(3, "garbage")
    rows.insert(7, f"b,BTCUSD,{T0 + 99 * 3600},100,99,101,100,1")  # low above high
    path = _write(tmp_path, "cross.csv", "\n".join(rows) + "\n")
    assert ReplayFile(path).planned().time_indexed
    out = _read(path)
    bars = [r for r in out if isinstance(r, Bar)]
    dead = [r for r in out if isinstance(r, DeadLetter)]
    assert len(bars) == 8
    assert [b.start for b in bars] == sorted(b.start for b in bars)
    assert sorted(d.detail.split(":")[0] for d in dead) == ["cross.csv line 4",
                                                            "cross.csv line 8"]
    # a resumed read, from any snapshot, gives every row once
    src = ReplaySource([ReplayFile(path)], batch_size=3)
    part = src.build_part("s", "replay", None)
    first = part.next_batch()
    state = part.snapshot()
    part.close()
    rest = list(read_all(src, state))
    def ident(r):
        return r.detail if isinstance(r, DeadLetter) else r.id

    assert sorted(map(ident, first + rest)) == sorted(map(ident, out))


@pytest.mark.parametrize("window", [3, 256])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_many_series_one_after_another_are_read_once_in_time_order(
        tmp_path: Path, monkeypatch, window: int, suffix: str) -> None:
    """A file of many series one after another is read in time order through an index
    of its rows: one reading and one open file whatever the number of series, each row
    read once; ids still name their lines, and a resume from any snapshot gives every
    row once."""
    import gzip

    from riskguard.connectors.formats.core import IndexedReader

    monkeypatch.setattr(IndexedReader, "WINDOW", window)  # windows that end mid-series
    rows = ["symbol,timestamp_s,open,high,low,close,volume"]
    for k in range(300):
        rows += [f"S{k},{T0 + i * 3600},{100 + k},{101 + k},{99 + k},{100 + k},1"
                 for i in range(2 + k % 5)]
    text = "\n".join(rows) + "\n"
    path = tmp_path / f"blocks{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    planned = ReplayFile(path).planned()
    assert planned.time_indexed
    reader = planned.open(0, None)
    list(reader.lines())
    assert reader.stats.rows == reader.stats.records == len(rows) - 1
    reader.close()
    out = _read(path)
    assert len(out) == len(rows) - 1 and all(isinstance(b, Bar) for b in out)
    assert [b.start for b in out] == sorted(b.start for b in out)
    for b in out:  # the id's line holds the bar's row
        line = int(b.id.rsplit("@", 1)[1])
        assert rows[line - 1].startswith(f"{b.instrument},{b.start // NS},")
    src = ReplaySource([ReplayFile(path)], batch_size=97)
    for cut in range(1, len(out) // 97 + 1):
        part = src.build_part("s", "replay", None)
        first = [r for _ in range(cut) for r in part.next_batch()]
        state = part.snapshot()
        part.close()
        again = first + list(read_all(src, state))
        assert [r.id for r in again] == [r.id for r in out]


def test_a_cut_off_compressed_file_out_of_time_order_gives_its_rows_and_one_dead_letter(
        tmp_path: Path) -> None:
    """A gzipped file read in time order that ends mid-stream: the rows it holds come
    out in time order, then one dead letter says where the stream broke."""
    import gzip

    rows = ["symbol,timestamp_s,open,high,low,close,volume"]
    for k in range(3):
        rows += [f"S{k},{T0 + i * 3600},100,101,99,100,1" for i in range(2000)]
    whole = gzip.compress(("\n".join(rows) + "\n").encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    out = _read(path)
    bars = [r for r in out if isinstance(r, Bar)]
    dead = [r for r in out if isinstance(r, DeadLetter)]
    assert 0 < len(bars) < 6000 and [b.start for b in bars] == sorted(b.start for b in bars)
    assert [d.reason for d in dead] == ["decode_error"]
    assert dead[0].detail.startswith(f"cut.csv.gz line {2 + len(bars)}:")  # after the last


def test_a_file_of_newest_bars_first_replays_oldest_first(tmp_path: Path) -> None:
    """Many exports list the newest bar first: the interval is still the step between
    bars, the bars come out oldest first, and a bad row is a dead letter naming its
    line."""
    rows = ["date,open,high,low,close,volume"]
    rows += [f"2024-01-{d:02d},100,101,99,100,1" for d in range(20, 0, -1)]
    rows[5] = "2024-01-16,100,99,101,100,1"  # low above high
    rows[7] = "1012-01-14,100,101,99,100,1"  # a start before 1970 (no int64 in ns)
    path = _write(tmp_path, "desc.csv", "\n".join(rows) + "\n")
    out = _read(path, instrument="BTCUSD")
    bars = [r for r in out if isinstance(r, Bar)]
    assert [b.start for b in bars] == sorted(b.start for b in bars)
    assert len(bars) == 18 and all(b.ts - b.start == 86_400 * NS for b in bars)
    assert sorted(d.detail.split(":")[0] for d in out if isinstance(d, DeadLetter)) == [
        "desc.csv line 6", "desc.csv line 8"]


def test_series_interleaved_out_of_time_order_are_read_once_each(tmp_path: Path) -> None:
    """Series that alternate but go back in time are read in time order; a row that
    names no series is reported once."""
    rows = ["venue,symbol,timestamp_s,open,high,low,close"]
    for hour in (2, 0, 1):
        rows += [f"{v},BTCUSD,{T0 + hour * 3600},100,101,99,100" for v in ("a", "b")]
    rows.insert(2, "x")
    path = _write(tmp_path, "alt.csv", "\n".join(rows) + "\n")
    assert ReplayFile(path).planned().time_indexed
    out = _read(path)
    bars = [r for r in out if isinstance(r, Bar)]
    assert sorted((b.venue, b.start) for b in bars) == sorted(
        (v, (T0 + h * 3600) * NS) for v in ("a", "b") for h in range(3))
    assert [d.detail.split(":")[0] for d in out if isinstance(d, DeadLetter)] == [
        "alt.csv line 3"]


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_cryptodatadownload_export_replays_as_it_comes(tmp_path: Path,
                                                         newest_first: bool) -> None:
    """CryptoDataDownload's layout: its address on the first line, then a header with a
    ``Unix`` start (ms, or s in older rows), ``Volume <base>, Volume <quote>`` and
    ``tradecount``, newest bar first. It is found as OHLCV, read oldest first, and ids
    still name their lines."""
    header = "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount"
    rows = []
    for h in range(6, 0, -1):
        unix = (T0 + h * 3600) * (1 if h == 1 else 1000)  # the oldest row in seconds
        rows.append(f"{unix},2020-03-01 0{h}:00:00,BTCUSDT,100,101,99,100,2.5,250.0,{h}")
    if not newest_first:
        rows.reverse()
    path = _write(tmp_path, "Binance_BTCUSDT_1h.csv",
                  "\n".join(["https://www.CryptoDataDownload.com", header, *rows]) + "\n")
    assert resolve(path, venue="binance")[0] == "ohlcv_csv"
    out = _read(path, venue="binance")
    assert [(b.start // NS - T0) // 3600 for b in out] == [1, 2, 3, 4, 5, 6]
    b = out[0]
    assert (b.instrument, b.volume, b.quote_volume, b.trades) == ("BTCUSDT", 2.5, 250.0, 1)
    assert b.id == f"Binance_BTCUSDT_1h@{8 if newest_first else 3}" and b.ts - b.start == H


@pytest.mark.parametrize(("name", "header", "venue", "expected"), [
    ("Binance_ETHUSDT_1h.csv", "unix,symbol", "file", "binance"),
    ("Bitstamp_BTCUSD_d.csv", "unix,symbol", "file", "bitstamp"),
    ("Gemini_BTCUSD_2021_minute.csv", "unix,symbol", "file", "gemini"),
    ("Binance_ETHUSDT_1h.csv", "unix,exchange,symbol", "file", "kraken"),
    ("Binance_ETHUSDT_1h.csv", "unix,symbol", "okx", "okx"),
    ("my_coins_1h.csv", "unix,symbol", "file", "file"),
    ("ethusdt_1h.csv", "unix,symbol", "file", "file"),
])
def test_a_cryptodatadownload_name_gives_the_venue_where_nothing_else_does(
        tmp_path: Path, name: str, header: str, venue: str, expected: str) -> None:
    """``<Exchange>_<SYMBOL>_<interval>.csv``, as CryptoDataDownload names its exports:
    the exchange, lower-cased, is the venue of rows that name none; a row's exchange
    cell and ``--venue`` come first, and any other name leaves ``file``."""
    cells = {"unix,symbol": "ETHUSDT", "unix,exchange,symbol": "kraken,ETHUSDT"}[header]
    rows = [f"{(T0 + h * 3600) * 1000},{cells},100,101,99,100" for h in range(3)]
    path = _write(tmp_path, name, "\n".join([f"{header},open,high,low,close", *rows]) + "\n")
    assert {b.venue for b in _read(path, venue=venue)} == {expected}


def test_a_file_that_names_no_symbol_needs_an_instrument(tmp_path: Path) -> None:
    path = _write(tmp_path, "bars.csv", "timestamp_s,open,high,low,close\n"
                  f"{T0},1,2,0.5,1\n{T0 + 60},1,2,0.5,1\n")
    with pytest.raises(ConfigError, match="instrument"):
        resolve(path)
    assert resolve(path, instrument="BTCUSDT")[1].interval_ns == 60 * NS


def test_a_file_of_one_bar_a_series_cannot_tell_its_interval(tmp_path: Path) -> None:
    path = _write(tmp_path, "one.csv", f"timestamp_s,symbol,open,high,low,close\n"
                  f"{T0},A,1,2,0.5,1\n{T0},B,1,2,0.5,1\n")
    with pytest.raises(ConfigError, match="interval"):
        resolve(path)


def test_bad_values_are_dead_letters_naming_their_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", "timestamp_s,symbol,open,high,low,close,volume\n"
                  f"{T0},A,1,2,0.5,1,1\n"
                  f"{T0 + 60},A,x,2,0.5,1,1\n"
                  f"{T0 + 120},A,1,2,0.5,1,-3\n"
                  f"not a time,A,1,2,0.5,1,1\n"
                  f"{T0 + 180},A,1,2,0.5,1,1\n")
    reader = open_reader(path)
    got = [(line, type(item).__name__, getattr(item, "path", None))
           for line, _off, item in reader.lines()]
    reader.close()
    assert got == [(2, "Bar", None), (3, "DeadLetter", "$.open"),
                   (4, "DeadLetter", "$.volume"), (5, "DeadLetter", "$.timestamp_s"),
                   (6, "Bar", None)]


def test_incident_labels_name_venue_and_symbol_and_several_series_a_file() -> None:
    doc = {"incident": [
        {"file": "cross.csv", "name": "crash", "series": "kraken:XBTUSD", "onset": 0,
         "end": 1},
        {"file": "perps.csv", "name": "ftx", "series": "FTTUSDT", "onset": 0, "end": 1},
        {"file": "perps.csv", "name": "ftx", "series": "SOLUSDT", "onset": 0, "end": 1}]}
    labels, instruments = incident_labels(doc, ["cross.csv", "perps.csv"])
    assert sorted(lab.scope for lab in labels) == [
        "instrument:*/FTTUSDT", "instrument:*/SOLUSDT", "instrument:kraken/XBTUSD"]
    assert instruments == {"cross.csv": "XBTUSD"}  # perps.csv names its symbols per row


def test_an_incident_series_is_the_word_naming_a_symbol_of_its_file(tmp_path: Path) -> None:
    """ "DVOL BTC" labels the BTC rows of a file of BTC and ETH volatility-index bars;
    a series none of whose words is a symbol of the file keeps its first word."""
    path = _write(tmp_path, "dvol.csv", "date,symbol,open,high,low,close\n"
                  "2021-05-19,BTC,100,150,90,140\n2021-05-19,ETH,100,150,90,140\n")
    doc = {"incident": [
        {"file": "dvol.csv", "name": "crash", "series": "DVOL BTC", "onset": 0, "end": 1},
        {"file": "dvol.csv", "name": "crash", "series": "DVOL ETH", "onset": 0, "end": 1},
        {"file": "dvol.csv", "name": "other", "series": "SOL index", "onset": 0, "end": 1}]}
    labels, instruments = incident_labels(doc, [path])
    assert sorted(lab.scope for lab in labels) == [
        "instrument:*/BTC", "instrument:*/ETH", "instrument:*/SOL"]
    assert instruments == {}  # the file names its symbols per row


def _bench(name: str):
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


@pytest.mark.parametrize(("file", "venues"), [
    ("crossvenue_BTC_ETH_1h_binance-gemini-kraken_2020-03-01_2020-03-20.csv",
     ["binance_spot", "gemini", "kraken"]),
    ("binance_usdm_perp_1h_windows_2022-06_2022-11_2024-08.csv", ["file"])])
def test_the_real_multi_series_bar_files_replay_as_the_bench_reads_them(
        file: str, venues: list[str]) -> None:
    """The development data's hourly files of several series, read by the product's
    replay: the same bars (open, high, low, close, volume, times) as the bench's own
    loader, in event-time order."""
    shared_data = _bench("shared_data")
    data = shared_data.incidents_dir()
    if reason := shared_data.missing_reason(data):
        pytest.skip(reason)
    inc = _bench("incidents")
    loaded = inc.load_all(data)
    want = sorted((r.instrument, r.start, r.ts, r.open, r.high, r.low, r.close, r.volume)
                  for s in loaded.series if s.file == file for r in s.records)
    got = _read(data / file)
    assert not [r for r in got if isinstance(r, DeadLetter)]
    assert [r.ts for r in got] == sorted(r.ts for r in got)
    assert sorted((r.instrument, r.start, r.ts, r.open, r.high, r.low, r.close, r.volume)
                  for r in got) == want
    assert sorted({r.venue for r in got}) == venues  # from the rows, or "file"


def test_calibration_reads_ohlcv_files_with_the_replay_settings(tmp_path: Path) -> None:
    """``riskguard calibrate`` takes the format settings ``backtest`` takes: the records
    it calibrates on are read with them (here a volatility index of a named venue)."""
    from riskguard.dataflows.calibrate import labelled_data

    path = _write(tmp_path, "dvol.csv", "date,symbol,open,high,low,close\n"
                  "2022-06-12,BTC,75.05,93.99,74.28,93.99\n"
                  "2022-06-13,BTC,93.99,107.5,92.78,106.0\n")
    labels = _write(tmp_path, "labels.toml", '[[incident]]\nfile = "dvol.csv"\n'
                    'name = "celsius"\nseries = "deribit:BTC"\n'
                    'onset = "2022-06-13T00:00:00Z"\nend = "2022-06-16T00:00:00Z"\n')
    recs, labs = labelled_data([path], labels, venue="deribit", measure="volatility")
    assert [(r.venue, r.instrument, r.measure) for r in recs] == [
        ("deribit", "BTC", Measure.VOLATILITY)] * 2
    assert [lab.scope for lab in labs] == ["instrument:deribit/BTC"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 40),
                               st.sampled_from(["ok", "ok", "ok", "bad", "blank"])),
                     min_size=2, max_size=60),
       gz=st.booleans())
def test_any_row_order_replays_as_the_same_rows_sorted_by_start(tmp_path_factory, rows, gz):
    """Whatever the order of a file's rows, the replay gives the bars a copy of the file
    sorted by start (stably) gives, and the same dead letters, each row once."""
    import gzip

    header = "symbol,timestamp_s,open,high,low,close,volume"

    def line(sym: str, hour: int, kind: str) -> str:
        if kind == "blank":
            return ""
        low = 99 if kind == "ok" else 102  # a low above the high: a dead letter
        return f"{sym},{T0 + hour * 3600},100,101,{low},100,1"

    lines = [line(*r) for r in rows]
    lines += [f"A,{T0 + h * 3600},100,101,99,100,1" for h in (50, 51)]  # an interval
    order = sorted(range(len(rows)), key=lambda i: rows[i][1])
    folder = tmp_path_factory.mktemp("order")
    shuffled = folder / ("rows.csv.gz" if gz else "rows.csv")
    text = "\n".join([header, *lines]) + "\n"
    shuffled.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    ordered = folder / "sorted.csv"
    ordered.write_text("\n".join([header, *[lines[i] for i in order], *lines[len(rows):]])
                       + "\n")

    def bars_and_dead(path: Path) -> tuple[list, list]:
        out = _read(path, venue="v")
        bars = [(b.instrument, b.start, b.low) for b in out if isinstance(b, Bar)]
        dead = sorted(d.raw for d in out if isinstance(d, DeadLetter))
        return bars, dead

    got, want = bars_and_dead(shuffled), bars_and_dead(ordered)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert len(got[0]) + len(got[1]) == sum(k != "blank" for *_, k in rows) + 2


def test_the_row_a_truncated_gzip_cuts_off_is_in_its_dead_letter_read_in_time_order(
        tmp_path: Path) -> None:
    import gzip
    import zlib
    head = b"venue,symbol,timestamp_s,open,high,low,close,volume\n"
    body = b"".join(b"%s,BTCUSD,%d,100,101,99,100,1\n" % (v, T0 + i * 3600)
                    for v in (b"b", b"a") for i in range(2000))  # not in time order
    partial = b"a,BTCUSD,%d,100,10" % (T0 + 2000 * 3600)
    co = zlib.compressobj(9, zlib.DEFLATED, 31)  # deflate data that stops mid-row
    data = co.compress(head + body + partial) + co.flush(zlib.Z_SYNC_FLUSH)
    assert gzip.decompress(data + co.flush()) == head + body + partial
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data)
    reader = open_reader(path, "ohlcv_csv", time_indexed=True)
    try:
        out = [item for _line, _off, item in reader.lines()]
    finally:
        reader.close()
    assert [type(x) for x in out] == [Bar] * 4000 + [DeadLetter]
    dead = out[-1]
    assert (dead.reason, dead.raw, dead.offset) == (
        "decode_error", partial, len(head) + len(body))
    assert "line 4002" in dead.detail


@pytest.mark.parametrize("in_order", [True, False])
def test_a_second_header_with_another_column_order_refuses_the_rest(
        tmp_path: Path, in_order: bool) -> None:
    head = "venue,symbol,timestamp_s,open,high,low,close,volume"
    first = [f"a,BTCUSD,{T0 + i * 3600},100,102,99,101,1" for i in range(3)]
    if not in_order:
        first.reverse()  # read through the time index
    # close and open swapped after the second header: read by the first, a misread bar
    later = [f"a,BTCUSD,{T0 + i * 3600},101,102,99,100,1" for i in range(3, 5)]
    path = _write(tmp_path, "bars.csv", "\n".join(
        [head, *first, head.replace("open,high,low,close", "close,high,low,open"),
         *later]) + "\n")
    assert ReplayFile(path).planned().time_indexed is not in_order
    out = _read(path)
    bars = [x for x in out if isinstance(x, Bar)]
    dead = [x for x in out if isinstance(x, DeadLetter)]
    assert [(b.open, b.close) for b in bars] == [(100.0, 101.0)] * 3
    assert len(dead) == 1 and "line 5: a second header" in dead[0].detail
