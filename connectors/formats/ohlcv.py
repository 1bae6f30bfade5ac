"""Bars from any CSV whose header names open, high, low and close (``ohlcv_csv``).

One bar a row, one series or one per symbol (and venue); columns are found by name, in
any case and order (:data:`TIME_COLUMNS`, docs/formats.md). Rows may come in any order
(:func:`scan`, :func:`time_order`). A bar closes at its start plus the file's
interval (:func:`scan_interval`); a row whose values do not make a bar is a dead
letter naming its line.

>>> import tempfile, pathlib
>>> from riskguard.connectors.formats.core import FileReader, Source
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "bars.csv").write_text(
...     "date,symbol,open,high,low,close\\n"
...     "2022-06-12,BTC,75.05,93.99,74.28,93.99\\n"
...     "2022-06-13,BTC,93.99,107.5,92.78,106.0\\n")
>>> interval = scan_interval(d / "bars.csv")
>>> interval // 10**9
86400
>>> src = Source(name="bars.csv", venue="deribit", instrument="unknown",
...              interval_ns=interval, measure="volatility")
>>> reader = FileReader(d / "bars.csv", factory(OhlcvParser), source=src)
>>> [(b.instrument, b.close, b.ts - b.start == interval, b.measure.value, b.price_only)
...  for _, _, b in reader.lines()]
[('BTC', 93.99, True, 'volatility', True), ('BTC', 106.0, True, 'volatility', True)]
>>> reader.close()
"""

from __future__ import annotations

import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from riskguard.connectors.formats.cells import (
    MAX_FLOAT,
    NameMemo,
    RowError,
    datetime_ns,
    name,
    non_negative,
    number,
    split_row,
    whole,
)
from riskguard.connectors.formats.core import (
    RowIndex,
    RowParser,
    Source,
    factory,
    header_cells,
    is_other_header,
    is_preamble,
    lines_of,
    open_stream,
)
from riskguard.schemas import Bar, Measure

from riskguard.errors import ConfigError

NS = 1_000_000_000
TIME_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("timestamp_ns", 1), ("timestamp_us", 1_000), ("timestamp_ms", 1_000_000),
    ("timestamp_s", NS), ("open_time", 1_000_000), ("timestamp", None), ("time", None),
    ("start", None), ("unix", None), ("unix timestamp", None), ("datetime_utc", None),
    ("datetime", None), ("date", None),
)
"""The start column's names, in order of preference, with their unit in ns (None: told
by the value: a date and time, or a number of s, ms, µs or ns by its size)."""
_ALIASES = {
    "volume": ("volume", "volume_base", "base_volume"),
    "quote_volume": ("quote_volume", "volume_quote"),
    "trades": ("trades", "trade_count", "tradecount", "count"),
    "taker_buy_volume": ("taker_buy_volume", "taker_buy_base_volume"),
    "symbol": ("symbol", "instrument"),
    "venue": ("venue", "exchange"),
    "measure": ("measure",),
}
PRICES = ("open", "high", "low", "close")
MAX_START = 1 << 62  # ns: 2116
SCAN_ROWS = 2_000


def is_ohlcv_header(cells: list[str]) -> bool:
    """Whether a header's (lower-cased) cells name open, high, low, close and a start.

    >>> is_ohlcv_header(["timestamp_s", "open", "high", "low", "close", "volume"])
    True
    >>> is_ohlcv_header(["timestamp", "price", "qty"])
    False
    """
    names = set(cells)
    return all(p in names for p in PRICES) and any(t in names for t, _u in TIME_COLUMNS)


def _column(index: dict[str, int], what: str) -> int | None:
    return next((index[a] for a in _ALIASES[what] if a in index), None)


class _Layout:
    """Where a header puts each column."""

    def __init__(self, header: list[str]) -> None:
        self.columns = header
        index: dict[str, int] = {}
        for i, cell in enumerate(header):
            index.setdefault(cell, i)
        if not is_ohlcv_header(header):
            raise RowError("the header names no open, high, low, close and start columns",
                           expected="open, high, low, close and a start column "
                                    "(timestamp_s, date ...)", found=",".join(header)[:200],
                           reason="malformed")
        self.time, self.unit, self.time_name = next(
            (index[t], u, t) for t, u in TIME_COLUMNS if t in index)
        self.prices = tuple(index[p] for p in PRICES)
        # ``volume <asset>`` columns (``Volume BTC, Volume USDT``): the base's, the quote's
        by_asset = [i for i, cell in enumerate(header) if cell.startswith("volume ")]
        self.volume = _column(index, "volume")
        if self.volume is None and by_asset:
            self.volume = by_asset[0]
        self.quote = _column(index, "quote_volume")
        if self.quote is None and len(by_asset) > 1:
            self.quote = by_asset[1]
        self.trades = _column(index, "trades")
        self.taker = _column(index, "taker_buy_volume")
        self.symbol = _column(index, "symbol")
        self.venue = _column(index, "venue")
        self.measure = _column(index, "measure")
        self.width = len(header)

    def start_ns(self, cell: bytes) -> int:
        """The bar's start in ns since the epoch."""
        column = self.time_name
        text = cell.strip()
        if self.unit is None and b"-" in text[1:]:
            return datetime_ns(text if len(text) > 10 else text + b" 00:00:00", column)
        value = number(text, column)
        if value != int(value) or not 0 <= value < 1e19:
            raise RowError(f"{column} {text.decode('utf-8', 'replace')!r} is not a time",
                           path=f"$.{column}", expected="a whole number of s, ms, µs or ns "
                           "since the epoch, or YYYY-MM-DD[ HH:MM:SS]", found=repr(value))
        n = int(text) if text.isdigit() else int(value)
        unit = self.unit
        if unit is None:  # seconds until 1e11 (year 5138), then ms, µs, ns
            unit = NS if n < 10**11 else 1_000_000 if n < 10**14 else 1_000 if n < 10**17 else 1
        return n * unit

    def series(self, cells: list[bytes]) -> tuple[bytes, bytes]:
        """A row's series key: its venue and symbol cells (empty where the file has none)."""
        return (cells[self.venue].strip() if self.venue is not None else b"",
                cells[self.symbol].strip() if self.symbol is not None else b"")


def scan_interval(path: Path | str) -> int | None:
    """The bars' interval in ns: the most common step (either way) between consecutive
    starts of one series (venue and symbol) in the file's first :data:`SCAN_ROWS` rows;
    None if no series has two of them (or the file has no OHLCV header)."""
    return scan(path, whole=False).interval_ns


@dataclass(frozen=True)
class BarScan:
    """What a pass over an OHLCV file found: whether its rows are in time order (starts
    never go back) and the bars' interval (:func:`scan_interval`; None if unknown)."""

    ordered: bool
    interval_ns: int | None


def _start(cells: list[bytes], layout: _Layout) -> int | None:
    """A row's start in ns, or None where the row gives none."""
    if len(cells) < layout.width:
        return None
    unit = layout.unit
    try:
        return int(cells[layout.time]) * unit if unit else layout.start_ns(cells[layout.time])
    except (RowError, ValueError):
        return None


def scan(path: Path | str, *, whole: bool = True) -> BarScan:
    """One pass over an OHLCV file, or over its first :data:`SCAN_ROWS` rows
    (:class:`BarScan`); rows that do not parse are passed over here (the reader makes
    them dead letters)."""
    last_of: dict[tuple[bytes, bytes], int] = {}
    steps: Counter[int] = Counter()
    ordered = True
    last = -1
    try:
        with open_stream(path) as fh:
            layout, _pos, _lines = _header(fh)
            if layout is None:
                return BarScan(True, None)
            for n, (raw, _size, _len) in enumerate(lines_of(fh), 1):
                cells = raw.split(b",")
                start = _start(cells, layout)
                if start is not None:
                    key = layout.series(cells)
                    prev = last_of.get(key)
                    if prev is not None and start != prev:
                        steps[abs(start - prev)] += 1
                    last_of[key] = start
                    ordered = ordered and start >= last
                    last = max(last, start)
                if n >= SCAN_ROWS:
                    break
            if whole and ordered:  # the rest, only as far as a start that goes back
                ordered = _in_order((raw for raw, _s, _n in lines_of(fh)), layout, last)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError):
        pass
    return BarScan(ordered, steps.most_common(1)[0][0] if steps else None)


def _row_start(raw: bytes, layout: _Layout) -> int | None:
    """A raw line's start in ns, or None: the time column alone where its unit is known
    (the common row: epoch numbers), else every cell checked (:func:`_start`)."""
    if layout.unit is not None:
        try:
            return int(raw.split(b",", layout.time + 1)[layout.time]) * layout.unit
        except (ValueError, IndexError):
            pass
    return _start(raw.split(b","), layout)


def _in_order(lines: Iterable[bytes], layout: _Layout, last: int) -> bool:
    """Whether no start among ``lines`` goes back before ``last`` or the start before
    it."""
    for raw in lines:
        start = _row_start(raw, layout)
        if start is not None:
            if start < last:
                return False
            last = start
    return True


def file_symbols(path: Path | str) -> frozenset[str]:
    """The symbols an OHLCV file's rows name (its ``symbol`` or ``instrument`` column);
    empty for a file with no such column, or no OHLCV file (a missing one included).

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "dvol.csv"
    >>> _ = f.write_text("date,symbol,open,high,low,close\\n2021-03-24,BTC,85,96,80,95\\n"
    ...                  "2021-03-24,ETH,94,107,92,106\\n")
    >>> sorted(file_symbols(f))
    ['BTC', 'ETH']
    """
    names: set[bytes] = set()
    try:
        with open_stream(path) as fh:
            layout, _pos, _lines = _header(fh)
            column = None if layout is None else layout.symbol
            if column is not None:
                for raw, _size, _n in lines_of(fh):
                    cells = raw.split(b",", column + 1)
                    if len(cells) > column:
                        names.add(cells[column].strip())
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError,
            ConfigError):
        pass
    return frozenset(n.decode("utf-8", "replace") for n in names if n)


def time_order(path: Path | str) -> RowIndex:
    """The file's rows in time order: a stable sort by start, so rows of one start keep
    the file's order. A row that gives no start (a dead letter to be) sorts with the row
    before it."""
    # 16 bytes a row kept: a row's offset, its length and its line number
    offsets, lengths, lines, starts = array("q"), array("i"), array("I"), array("q")
    try:
        with open_stream(path) as fh:
            layout, pos, line_no = _header(fh)
            if layout is not None:
                _index_rows(fh, layout, pos, line_no, (offsets, lengths, lines, starts))
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError):
        pass  # what was read is indexed; the reader reports the rest
    order = np.argsort(np.frombuffer(starts, dtype=np.int64), kind="stable")
    return RowIndex(offsets=np.frombuffer(offsets, dtype=np.int64)[order],
                    lengths=np.frombuffer(lengths, dtype=np.int32)[order],
                    line_nos=np.frombuffer(lines, dtype=np.uint32)[order])


def _header(fh: BinaryIO) -> tuple[_Layout | None, int, int]:
    """The header's layout (None: no OHLCV header), and the bytes and lines read up to
    and including it (blank lines and a title before it passed over, as the reader
    passes them)."""
    pos = line_no = 0
    for raw, _size, n in lines_of(fh):
        pos, line_no = pos + n, line_no + 1
        if not is_preamble(raw):
            try:
                return _Layout(header_cells(raw.rstrip(b"\r\n"))), pos, line_no
            except RowError:
                break
    return None, pos, line_no


def _index_rows(fh: BinaryIO, layout: _Layout, pos: int, line_no: int,
                into: tuple[array[int], array[int], array[int], array[int]]) -> None:
    """Offset, length (without the newline), line number and start of every row after
    the header (which ends at byte ``pos``, line ``line_no``), blank lines left out."""
    add_offset, add_length, add_line, add_start = (a.append for a in into)
    previous = -1
    for raw, size, n in lines_of(fh):  # an over-long row: its length (the reader refuses it)
        line_no += 1
        at, pos = pos, pos + n
        if size < 2 and not raw.strip():
            continue  # blank: no row (the reader passes it over too)
        got = _row_start(raw, layout)
        start = got if got is not None and 0 <= got < MAX_START else previous
        previous = start
        add_offset(at)
        add_length(size)
        add_line(line_no)
        add_start(start)
        if got is None and is_other_header(raw, layout.columns):
            return  # the reader refuses the rest of the file at this row


def _measure(cell: bytes) -> Measure:
    text = cell.strip().decode("utf-8", "replace").lower()
    try:
        return Measure(text)
    except ValueError:
        raise RowError(f"measure {text!r} is neither price nor volatility", path="$.measure",
                       expected="price or volatility", found=text) from None


class OhlcvParser(RowParser):
    """One :class:`~riskguard.schemas.Bar` per row of an OHLCV CSV (see the module)."""

    def __init__(self, header: list[str] | None, source: Source) -> None:
        if header is None:
            raise RowError("an OHLCV file needs a header naming its columns",
                           expected="a header line", found="none", reason="malformed")
        self.layout = _Layout(header)
        if source.interval_ns <= 0:
            raise RowError("the bars' interval cannot be told: no series has two bars "
                           "among the first rows", expected="two bars of one series",
                           found="fewer", reason="malformed")
        self.source = source
        self.interval = source.interval_ns
        self.prefix = f"{source.stem}@"
        self.measure = Measure(source.measure)
        lay = self.layout
        # no column the fast path of :meth:`row` leaves out
        self.plain = lay.quote is None and lay.trades is None and lay.taker is None \
            and lay.measure is None
        self.width, self.t, self.unit, self.prices = lay.width, lay.time, lay.unit, lay.prices
        self.vol, self.sym = lay.volume, lay.symbol
        self.row_venue = lay.venue if not source.venue_given else None
        self.venue, self.instrument = source.venue, source.instrument
        self.names = NameMemo()  # venue and symbol cells already checked
        self.name = self.names.name

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = line.split(b",")
        if self.plain and len(c) >= self.width and b'"' not in line:
            # the common row: every value read at once, checked in one expression
            try:
                unit = self.unit
                start = int(c[self.t]) * unit if unit else self.layout.start_ns(c[self.t])
                p0, p1, p2, p3 = self.prices
                o, h, lo, cl = float(c[p0]), float(c[p1]), float(c[p2]), float(c[p3])
                iv = self.vol
                v = float(c[iv]) if iv is not None else 0.0
            except (ValueError, RowError):
                pass
            else:
                if (0 <= start < MAX_START and 0.0 < lo <= o <= h and lo <= cl <= h <= MAX_FLOAT
                        and 0.0 <= v <= MAX_FLOAT):
                    ven, sym = self.row_venue, self.sym
                    names = self.names
                    return Bar(
                        id=f"{self.prefix}{line_no}",
                        venue=self.venue if ven is None else (
                            names.get(c[ven]) or self.name(c[ven], "venue")),
                        instrument=self.instrument if sym is None else (
                            names.get(c[sym]) or self.name(c[sym], "symbol")),
                        ts=start + self.interval, start=start, interval_ns=self.interval,
                        open=o, high=h, low=lo, close=cl, volume=v,
                        price_only=iv is None, measure=self.measure)
        return self.checked_row(line, line_no)

    def checked_row(self, line: bytes, line_no: int) -> Any:
        """Any row, every value checked (a RowError names the first bad one)."""
        lay, src = self.layout, self.source
        c = split_row(line, lay.width)
        start = lay.start_ns(c[lay.time])
        if not 0 <= start < MAX_START:
            raise RowError(f"{lay.time_name} is before 1970 or after 2116",
                           path=f"$.{lay.time_name}", expected="a time from 1970 to 2116",
                           found=str(start))
        o, h, lo, cl = (number(c[i], p) for i, p in zip(lay.prices, PRICES, strict=True))
        if not (0.0 < lo <= min(o, cl) and max(o, cl) <= h <= MAX_FLOAT):
            raise RowError(f"open {o!r} high {h!r} low {lo!r} close {cl!r} make no bar "
                           "(0 < low <= open, close <= high)", path="$.low",
                           expected="0 < low <= open, close <= high",
                           found=f"{o!r} {h!r} {lo!r} {cl!r}")
        venue = (name(c[lay.venue], "venue") if lay.venue is not None and not src.venue_given
                 else src.venue)
        instrument = name(c[lay.symbol], "symbol") if lay.symbol is not None else src.instrument
        measure = _measure(c[lay.measure]) if lay.measure is not None else self.measure
        volume = non_negative(c[lay.volume], "volume") if lay.volume is not None else 0.0
        quote = (non_negative(c[lay.quote], "quote_volume")
                 if lay.quote is not None and c[lay.quote].strip() else None)
        trades = whole(c[lay.trades], "trades") if lay.trades is not None else None
        if trades is not None and trades < 0:
            raise RowError(f"trades {trades} is negative", path="$.trades",
                           expected="a whole number >= 0", found=str(trades))
        taker = (non_negative(c[lay.taker], "taker_buy_volume")
                 if lay.taker is not None and c[lay.taker].strip() else None)
        return Bar(id=f"{self.prefix}{line_no}", venue=venue, instrument=instrument,
                   ts=start + self.interval, start=start, interval_ns=self.interval,
                   open=o, high=h, low=lo, close=cl, volume=volume, quote_volume=quote,
                   trades=trades, taker_buy_volume=taker, price_only=lay.volume is None,
                   measure=measure)


PARSERS = {"ohlcv_csv": factory(OhlcvParser)}
"""Format name to parser factory."""
