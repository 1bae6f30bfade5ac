"""Bars from any CSV whose header names open, high, low and close (``ohlcv_csv``).

The common export of a desk, a data vendor or a notebook: one bar a row, one series
or one per symbol (and venue). Columns are found by name, in any case and order:

- the bar's **start**, the first of ``timestamp_ns``, ``timestamp_us``,
  ``timestamp_ms``, ``timestamp_s``, ``open_time`` (ms), ``timestamp``, ``time``,
  ``start`` (a number of seconds, ms, µs or ns since the epoch, told by its size, or
  a date and time), ``datetime_utc``, ``datetime``, ``date`` (``YYYY-MM-DD`` or
  ``YYYY-MM-DD HH:MM:SS``, UTC);
- ``open``, ``high``, ``low``, ``close``;
- optional: ``volume`` (``volume_base``, ``base_volume``) in the base asset,
  ``quote_volume`` (``volume_quote``), ``trades`` (``trade_count``, ``count``),
  ``taker_buy_volume`` (``taker_buy_base_volume``): a file with no volume column
  gives ``price_only`` bars;
- optional: ``symbol`` (``instrument``), ``venue`` (``exchange``) and ``measure``
  (``price`` or ``volatility``), else the replay's ``--instrument``, ``--venue``
  and ``--measure``.

A bar closes at its start plus the file's **interval**: the most common step
between consecutive starts of one series among the file's first rows
(:func:`scan_interval`), so daily, hourly and minute files need no setting. A row
whose values do not make a bar (a price that is no number, ``low`` above ``high``,
a start that is no time) is a dead letter naming its line.

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskguard.connectors.formats.core import (
    MAX_FLOAT,
    RowError,
    RowParser,
    Source,
    datetime_ns,
    factory,
    header_cells,
    name,
    non_negative,
    number,
    open_stream,
    split_row,
    whole,
)
from riskguard.schemas import Bar, Measure

NS = 1_000_000_000
TIME_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("timestamp_ns", 1), ("timestamp_us", 1_000), ("timestamp_ms", 1_000_000),
    ("timestamp_s", NS), ("open_time", 1_000_000), ("timestamp", None), ("time", None),
    ("start", None), ("datetime_utc", None), ("datetime", None), ("date", None),
)
"""The start column's names, in order of preference, with their unit in ns (None: told
by the value: a date and time, or a number of s, ms, µs or ns by its size)."""
_ALIASES = {
    "volume": ("volume", "volume_base", "base_volume"),
    "quote_volume": ("quote_volume", "volume_quote"),
    "trades": ("trades", "trade_count", "count"),
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
        self.volume = _column(index, "volume")
        self.quote = _column(index, "quote_volume")
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


def scan_interval(path: Path | str, rows: int = SCAN_ROWS) -> int | None:
    """The bars' interval in ns: the most common positive step between consecutive
    starts of one series (venue and symbol) in the file's first ``rows`` rows; None if
    no series has two of them (or the file has no OHLCV header)."""
    return scan(path, rows).interval_ns


@dataclass(frozen=True)
class SeriesScan:
    """What a pass over an OHLCV file found: its ``series`` (venue and symbol cells,
    empty where it has no such column) in the order they first appear, whether its
    rows are in time order (starts never go back), where every series is one block of
    rows after another, each block's byte range (``ranges``, together the whole file;
    None otherwise), and the bars' interval (:func:`scan_interval`; None if unknown)."""

    series: tuple[tuple[str, str], ...]
    ordered: bool
    ranges: tuple[tuple[int, int], ...] | None
    interval_ns: int | None


def scan(path: Path | str, rows: int | None = None) -> SeriesScan:
    """One pass over an OHLCV file, or over its first ``rows`` rows (:class:`SeriesScan`);
    rows that do not parse are passed over here (the reader makes them dead letters).

    A file of several series not in time order is read once per series and the
    readings merged by time, as several files are
    (:class:`~riskguard.connectors.replay.ReplaySource`): each reading its own block
    of rows where the series follow one another, else the whole file, keeping its
    series' rows.
    """
    firsts: dict[tuple[bytes, bytes], int] = {}
    last_of: dict[tuple[bytes, bytes], int] = {}
    steps: Counter[int] = Counter()
    ordered = blocks = True
    last = -1
    current: tuple[bytes, bytes] | None = None
    layout: _Layout | None = None
    pos = n = 0
    try:
        with open_stream(path) as fh:
            for raw in fh:
                at, pos = pos, pos + len(raw)
                line = raw.rstrip(b"\r\n")
                if layout is None:
                    try:
                        layout = _Layout(header_cells(line))
                    except RowError:
                        return SeriesScan((), True, None, None)
                    width, t, unit = layout.width, layout.time, layout.unit
                    continue
                n += 1
                if rows is not None and n > rows:
                    break
                cells = line.split(b",")
                if len(cells) < width:
                    continue
                try:
                    start = int(cells[t]) * unit if unit else layout.start_ns(cells[t])
                except (RowError, ValueError):
                    continue
                key = layout.series(cells)
                if key != current:
                    if key in firsts:
                        blocks = False  # a series seen before comes back
                    else:
                        firsts[key] = at
                    current = key
                if n <= SCAN_ROWS:
                    prev = last_of.get(key)
                    if prev is not None and start > prev:
                        steps[start - prev] += 1
                    last_of[key] = start
                if start < last:
                    ordered = False
                elif start > last:
                    last = start
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError):
        pass
    series = tuple((v.decode("utf-8", "replace"), s.decode("utf-8", "replace"))
                   for v, s in firsts)
    bounds = [0, *list(firsts.values())[1:], pos]
    ranges = (tuple((bounds[i], bounds[i + 1]) for i in range(len(firsts)))
              if blocks and firsts else None)
    return SeriesScan(series, ordered, ranges, steps.most_common(1)[0][0] if steps else None)


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
        only = source.only_series
        self.only = None if only is None else (only[0].encode(), only[1].encode())
        lay = self.layout
        # no column the fast path of :meth:`row` leaves out
        self.plain = lay.quote is None and lay.trades is None and lay.taker is None \
            and lay.measure is None
        self.width, self.t, self.unit, self.prices = lay.width, lay.time, lay.unit, lay.prices
        self.vol, self.sym = lay.volume, lay.symbol
        self.row_venue = lay.venue if not source.venue_given else None
        self.venue, self.instrument = source.venue, source.instrument
        self.stop = source.stop_offset if source.stop_offset is not None else 1 << 62

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        if offset >= self.stop:
            return None  # past this reading's block: the next block's reading has it
        c = line.split(b",")
        if self.plain and len(c) >= self.width and b'"' not in line:
            if self.only is not None and self.layout.series(c) != self.only:
                return None  # another series: its own reading has it
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
                    return Bar(
                        id=f"{self.prefix}{line_no}",
                        venue=self.venue if ven is None else name(c[ven], "venue"),
                        instrument=self.instrument if sym is None else name(c[sym], "symbol"),
                        ts=start + self.interval, start=start, interval_ns=self.interval,
                        open=o, high=h, low=lo, close=cl, volume=v,
                        price_only=iv is None, measure=self.measure)
        return self.checked_row(line, line_no)

    def checked_row(self, line: bytes, line_no: int) -> Any:
        """Any row, every value checked (a RowError names the first bad one)."""
        lay, src = self.layout, self.source
        try:
            c = split_row(line, lay.width)
        except RowError:
            if self.only is None or src.reports_malformed:
                raise
            return None  # one reading of the file reports it
        if self.only is not None and lay.series(c) != self.only:
            return None  # another series: its own reading has it
        start = lay.start_ns(c[lay.time])
        if start >= MAX_START:
            raise RowError(f"{lay.time_name} is after 2116", path=f"$.{lay.time_name}",
                           expected="a time before 2116", found=str(start))
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
