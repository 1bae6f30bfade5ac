"""File readers are bounded: a row longer than the cap is one dead letter, passed over
without being held (a zip of one huge line costs what its first MiB does); a compressed
file that inflates past its cap ends there; the temporary copy of an unsorted compressed
file is capped."""

from __future__ import annotations

import gzip
import io
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from riskguard.connectors.formats import core
from riskguard.connectors.formats.core import FileReader, RowParser, lines_of
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.schemas import Bar, DeadLetter

T0 = 1_583_020_800  # 2020-03-01 00:00 UTC, in s


class _Cells(RowParser):
    def row(self, line: bytes, line_no: int, offset: int) -> tuple[int, int, bytes]:
        return line_no, offset, line[:8]


def _read(path: Path, **kw: int) -> list:
    reader = FileReader(path, lambda header, source: _Cells(), header=False, **kw)
    try:
        return [item for _no, _off, item in reader.lines()]
    finally:
        reader.close()


def test_a_zip_of_one_huge_line_is_one_dead_letter_read_in_bounded_memory(
        tmp_path: Path) -> None:
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("one.csv", b"1,2\n" + b"7" * (48 << 20) + b"\n3,4\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    out = _read(path)
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    dead = [d for d in out if isinstance(d, DeadLetter)]
    assert [d.reason for d in dead] == ["line_too_long"]
    assert "one.zip line 2" in dead[0].detail and str(48 << 20) in dead[0].detail
    assert dead[0].offset == 4
    assert [x for x in out if not isinstance(x, DeadLetter)] == [
        (1, 0, b"1,2"), (3, 4 + (48 << 20) + 1, b"3,4")]
    assert peak < 12 << 20, peak  # a few chunks, never the line
    assert took < 20


@pytest.mark.parametrize("tail", [b"\n9,9\n", b""])
def test_an_over_long_row_in_a_plain_file_keeps_the_lines_and_offsets_after_it(
        tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"1,2\n" + b"x" * 5000 + b"\n3,4" + tail)
    out = _read(path, max_line=1000)
    assert [(type(x).__name__ if isinstance(x, DeadLetter) else x) for x in out] == [
        (1, 0, b"1,2"), "DeadLetter", (3, 5005, b"3,4"), *([(4, 5009, b"9,9")] if tail else [])]
    # a file ending inside an over-long line: one dead letter, nothing more
    path.write_bytes(b"1,2\n" + b"y" * 5000)
    out = _read(path, max_line=1000)
    assert out[0] == (1, 0, b"1,2") and [d.reason for d in out[1:]] == ["line_too_long"]


def test_a_compressed_file_that_inflates_past_its_cap_ends_there(tmp_path: Path) -> None:
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(b"1,2\n" * (3 << 20)))  # 12 MiB of rows
    out = _read(path, max_bytes=4 << 20)
    assert isinstance(out[-1], DeadLetter) and out[-1].reason == "too_large"
    assert len(out) - 1 <= (4 << 20) // 4


def test_lines_of_cuts_over_long_lines_and_counts_their_bytes() -> None:
    fh = io.BytesIO(b"ab\n" + b"x" * 100 + b"\nc")
    assert list(lines_of(fh, max_line=10)) == [(b"ab\n", 2, 3), (b"x" * 10, 100, 101),
                                               (b"c", 1, 1)]


def _unsorted(rows: int, pad: int = 0) -> bytes:
    lines = ["symbol,timestamp_s,open,high,low,close,volume"]
    for k in ("B", "A"):  # one series after another: read in time order through an index
        lines += [f"{k},{T0 + i * 3600},100,101,99,100,1{'0' * pad}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_the_temporary_copy_of_an_unsorted_compressed_file_is_capped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blocks.csv.gz"
    path.write_bytes(gzip.compress(_unsorted(20_000)))
    planned = ReplayFile(path).planned()
    assert planned.time_indexed
    monkeypatch.setattr(core, "MAX_TEMP_BYTES", 100_000)
    out = list(read_all(ReplaySource([ReplayFile(path)])))
    assert [d.reason for d in out] == ["too_large"]
    assert "max_temp 100000" in out[0].detail and "sort the file" in out[0].detail
    monkeypatch.undo()
    assert len(list(read_all(ReplaySource([ReplayFile(path)])))) == 40_000


def test_an_over_long_row_of_an_unsorted_file_is_a_dead_letter_not_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_LINE_BYTES", 200)
    text = _unsorted(3).replace(b",1\nA", b"," + b"1" * 5000 + b"\nA", 1)
    path = tmp_path / "blocks.csv"
    path.write_bytes(text)
    assert ReplayFile(path).planned().time_indexed
    out = list(read_all(ReplaySource([ReplayFile(path)])))
    assert sum(isinstance(b, Bar) for b in out) == 5
    assert [d.reason for d in out if isinstance(d, DeadLetter)] == ["line_too_long"]


TARDIS_HEAD = b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"


def _kept_after_reading(path: Path, fmt: str, **kw: str) -> int:
    """Bytes still held once ``path`` was read and its reader closed (memos included)."""
    import gc

    from riskguard.connectors.formats import open_reader
    from riskguard.connectors.formats.cells import name
    from riskguard.schemas.names import name_problem

    name.cache_clear()
    name_problem.cache_clear()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        reader = open_reader(path, fmt, **kw)
        for _ in reader.lines():
            pass
        reader.close()
        del reader
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("symbol", [
    lambda i: b"BTCUSDT" + b" " * (200_000 + i),  # a valid name, padded: a new cell each row
    lambda i: b"X" * 200_000 + b"%d" % i,  # no name (dead letters), each a new value
])
def test_name_memos_keep_no_over_long_cell(tmp_path: Path, symbol) -> None:
    rows = b"".join(b"binance-futures," + symbol(i) +
                    b",1704067200000000,1704067200000000,1,buy,1,1\n" for i in range(150))
    (tmp_path / "t.csv").write_bytes(TARDIS_HEAD + rows)
    kept = _kept_after_reading(tmp_path / "t.csv", "tardis_trades")
    assert kept < 8 << 20, f"{kept / 2**20:.0f} MiB still held after the reader closed"


def test_the_ohlcv_symbol_memo_keeps_no_over_long_cell(tmp_path: Path) -> None:
    from riskguard.connectors.formats.ohlcv import OhlcvParser

    head = b"timestamp,symbol,open,high,low,close,volume\n"
    rows = b"".join(b"%d,BTC%s,1,2,0.5,1.5,3\n" % (T0 + 3600 * i, b" " * (100_000 + i))
                    for i in range(100))
    (tmp_path / "bars.csv").write_bytes(head + b"%d,BTC,1,2,0.5,1.5,3\n" % (T0 - 3600) + rows)
    kept = _kept_after_reading(tmp_path / "bars.csv", "ohlcv_csv")
    assert kept < 4 << 20, f"{kept / 2**20:.0f} MiB still held after the reader closed"
    parser = OhlcvParser(["timestamp", "symbol", "open", "high", "low", "close"],
                         core.Source(name="b.csv", venue="v", instrument="i",
                                     interval_ns=3600 * 10**9))
    for i in range(30_000):  # short cells: memoized up to the memo's byte bound
        parser.name(b"S%05d" % i + b" " * 195, "symbol")
    assert parser.names.size <= (4 << 20) + 256 and len(parser.names) < 30_000
    assert parser.name(b"BTC" + b" " * 300, "symbol") == "BTC"
    assert b"BTC" + b" " * 300 not in parser.names
