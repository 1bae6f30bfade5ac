"""The incident files as wire records, and their labels.

Each development file (read from beside the clone, never copied; see
``shared_data.py``) becomes wire-contract records grouped per series
(:class:`Series`): :class:`~riskguard.schemas.Bar` for the kline-like files and
:class:`~riskguard.schemas.BookDepth` for Binance ``bookDepth`` snapshots. Rows
that cannot be read never stop a loader: they come back as :class:`BadRow`
(file, line, reason) in the :class:`LoadResult`. ``labels.toml`` becomes
:class:`Label` records (:func:`load_labels`).

>>> parse_duration("5m") // NS
300
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import re
import statistics
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskguard.connectors.formats.binance import PARSERS
from riskguard.connectors.formats.core import FileReader, Source
from riskguard.schemas import Action, Bar, BookDepth, DeadLetter, Measure
from shared_data import incidents_dir

NS = 1_000_000_000
MINUTE_NS = 60 * NS
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS
MS_NS = 1_000_000
US_NS = 1_000

CRITICAL = "critical"
MITIGATING_ACTIONS = frozenset(a.value for a in Action) - {Action.ALERT.value,
                                                            Action.RESUME.value}
"""Actions that count as mitigation: every :class:`Action` except ``alert`` and ``resume``."""

Record: TypeAlias = Bar | BookDepth
Episode = tuple[str, int, str]
"""``(key, open_ts_ns, severity)``."""
Command = tuple[str, int, str]
"""``(key_or_scope, ts_ns, action)``."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,64}$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_NS = {"s": NS, "m": MINUTE_NS, "h": HOUR_NS, "d": DAY_NS, "w": 7 * DAY_NS}


# ---------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    """One incident of ``labels.toml``: its window is ``[onset_ns, end_ns)``."""

    file: str
    name: str
    series: str
    onset: str
    end: str
    resolution: str
    onset_ns: int
    end_ns: int
    resolution_ns: int
    rule: str | None = None
    note: str | None = None


def parse_duration(text: str) -> int:
    """``"30s"``, ``"1m"``, ``"5m"``, ``"1h"``, ``"1d"`` in ns."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


@functools.lru_cache(maxsize=65_536)
def parse_utc(text: str) -> int:
    """An ISO-8601 time (``Z`` or an offset; naive means UTC) in ns since the epoch."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1_000


def load_labels(path: Path | None = None) -> list[Label]:
    """The incidents of ``labels.toml`` (default: the shared incidents folder's), in order."""
    path = path if path is not None else incidents_dir() / "labels.toml"
    with path.open("rb") as f:
        doc = tomllib.load(f)
    labels = []
    for item in doc.get("incident", []):
        labels.append(Label(
            file=item["file"], name=item["name"], series=item["series"],
            onset=item["onset"], end=item["end"], resolution=item["resolution"],
            onset_ns=parse_utc(item["onset"]), end_ns=parse_utc(item["end"]),
            resolution_ns=parse_duration(item["resolution"]),
            rule=item.get("rule"), note=item.get("note"),
        ))
    return labels


# ---------------------------------------------------------------------------- series


@dataclass(frozen=True)
class BadRow:
    """A row a loader skipped: the file's name, the 1-based line number, and why."""

    file: str
    line: int
    reason: str


@dataclass
class Series:
    """One keyed stream of one file, its records sorted by ``ts``.

    ``label`` is the series name ``labels.toml`` uses; ``aliases`` are other label series
    names for the same key (the book-depth file's ``"BTCUSDT ask side"``).
    """

    label: str
    venue: str
    instrument: str
    interval_ns: int
    records: list[Record]
    file: str
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The detector key, ``venue/instrument``."""
        return f"{self.venue}/{self.instrument}"

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label series name that refers to this series."""
        return (self.label, *self.aliases)


@dataclass
class LoadResult:
    """What a loader made of a file: its series and the rows it skipped."""

    series: list[Series] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        self.series.extend(other.series)
        self.bad_rows.extend(other.bad_rows)

    def find(self, file: str, series: str) -> Series | None:
        """The series of ``file`` that label series name ``series`` refers to."""
        for s in self.series:
            if s.file == file and series in s.labels:
                return s
        return None


def _record_id(stem: str, line: int) -> str:
    suffix = f"@{line}"
    return stem[: 128 - len(suffix)] + suffix


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not finite")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    value = _float(text, what)
    if value != int(value):
        raise ValueError(f"{what} {text!r} is not a whole number")
    return int(value)


def _name(text: str, what: str) -> str:
    if not _NAME_RE.match(text):
        raise ValueError(f"{what} {text!r} is not a valid name")
    return text


def _check_ohlc(o: float, h: float, lo: float, c: float) -> None:
    if min(o, h, lo, c) <= 0:
        raise ValueError("a price is not positive")
    if not (lo <= min(o, c) and max(o, c) <= h):
        raise ValueError(f"not low <= open, close <= high (o={o} h={h} l={lo} c={c})")


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of a CSV file with every cell stripped; blank lines left out."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            yield reader.line_num, [c.strip() for c in cells]


def _mode(values: Iterable[int]) -> int | None:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _finish_bars(file: str, label: str, venue: str, instrument: str,
                 bars: list[tuple[int, Bar]], bad: list[BadRow],
                 interval_ns: int | None = None, aliases: tuple[str, ...] = ()) -> Series:
    """Sort bars, drop duplicate starts and bars of another interval, make the series."""
    bars.sort(key=lambda lb: (lb[1].start, lb[0]))
    interval = interval_ns or _mode(b.interval_ns for _, b in bars) or 0
    out: list[Record] = []
    last_start: int | None = None
    for line, bar in bars:
        if bar.interval_ns != interval:
            bad.append(BadRow(file, line, f"interval {bar.interval_ns} ns, the series' is "
                                          f"{interval} ns"))
            continue
        if bar.start == last_start:
            bad.append(BadRow(file, line, f"duplicate bar start {bar.start}"))
            continue
        last_start = bar.start
        out.append(bar)
    return Series(label=label, venue=venue, instrument=instrument, interval_ns=interval,
                  records=out, file=file, aliases=aliases)


def _header_index(header: list[str], required: Sequence[str], file: str,
                  bad: list[BadRow]) -> dict[str, int] | None:
    index = {name.lower(): i for i, name in enumerate(header)}
    missing = [c for c in required if c not in index]
    if missing:
        bad.append(BadRow(file, 1, f"header lacks column(s) {', '.join(missing)}; "
                                   "file not read"))
        return None
    return index


def _connector_rows(path: Path, fmt: str, source: Source,
                    bad: list[BadRow]) -> tuple[list[tuple[int, Any]], bool]:
    """``([(line, record)], header refused)`` of ``path`` read by the connectors' parser
    of ``fmt``; every refused row is added to ``bad``."""
    def refused(line: int, message: str) -> None:
        bad.append(BadRow(path.name, line, message))

    reader = FileReader(path, PARSERS[fmt], source=source, step="bench",
                        on_dead_letter=refused)
    try:
        out = []
        for line, _offset, item in reader.lines():
            items = item if isinstance(item, list) else [item]
            out.extend((line, x) for x in items if not isinstance(x, DeadLetter))
        return out, reader.refused
    finally:
        reader.close()


def load_price_klines(path: Path, *, venue: str = "binance", instrument: str,
                      label: str | None = None, price_only: bool = True) -> LoadResult:
    """A Binance 12-column kline CSV (with or without its header) as one series of bars.

    The rows are read by the connectors' Binance kline parser
    (:mod:`riskguard.connectors.formats.binance`: open_time, open, high, low, close,
    volume, close_time, quote_volume, count, taker_buy_volume, taker_buy_quote_volume,
    ignore; ms, or µs by size). A bar covers ``[open_time, close_time + 1 unit)``. With
    ``price_only`` (mark- or index-price klines) the volume fields are dropped and
    ``count`` is not kept as trades. Bars are then sorted; a repeated start is a bad row.
    """
    bad: list[BadRow] = []
    fmt = "binance_mark_price_klines" if price_only else "binance_klines"
    source = Source(name=path.name, venue=venue, instrument=instrument, market="um")
    rows, _ = _connector_rows(path, fmt, source, bad)
    bars = [(line, rec) for line, rec in rows if isinstance(rec, Bar)]
    series = _finish_bars(path.name, label or instrument, venue, instrument, bars, bad)
    bad.sort(key=lambda b: b.line)
    return LoadResult([series], bad)


def _load_table_bars(path: Path, *, required: Sequence[str],
                     row_key: Callable[[dict[str, int], list[str]], tuple[str, str, str]],
                     start_ns: Callable[[dict[str, int], list[str]], int],
                     interval_ns: int | None, volume_col: str | None,
                     check_time: Callable[[dict[str, int], list[str], int], None] | None = None,
                     price_only: bool = False,
                     measure: Measure = Measure.PRICE) -> LoadResult:
    """Bars from a CSV with a header naming open/high/low/close, one series per row key."""
    file, stem = path.name, path.stem
    bad: list[BadRow] = []
    groups: dict[tuple[str, str, str], list[tuple[int, int, list[str]]]] = {}
    index: dict[str, int] | None = None
    for line, cells in _rows(path):
        if index is None:
            index = _header_index([c.lower() for c in cells], required, file, bad)
            if index is None:
                return LoadResult([], bad)
            continue
        try:
            if len(cells) < len(index):
                raise ValueError(f"{len(cells)} columns, the header has {len(index)}")
            key = row_key(index, cells)
            start = start_ns(index, cells)
            if check_time is not None:
                check_time(index, cells, start)
            groups.setdefault(key, []).append((line, start, cells))
        except (ValueError, OverflowError) as e:
            bad.append(BadRow(file, line, str(e)))
    result = LoadResult([], bad)
    for (label, venue, instrument), rows in groups.items():
        interval = interval_ns
        if interval is None:  # the most common step between consecutive bars
            starts = sorted(s for _, s, _ in rows)
            interval = _mode(b - a for a, b in itertools.pairwise(starts)
                             if b > a) or HOUR_NS
        bars: list[tuple[int, Bar]] = []
        for line, start, cells in rows:
            try:
                o, h, lo, c = (_float(cells[index[n]], n)  # type: ignore[index]
                               for n in ("open", "high", "low", "close"))
                _check_ohlc(o, h, lo, c)
                volume = 0.0
                if volume_col is not None:
                    volume = _float(cells[index[volume_col]], volume_col)  # type: ignore[index]
                    if volume < 0:
                        raise ValueError("negative volume")
                bars.append((line, Bar(
                    id=_record_id(stem, line), venue=venue, instrument=instrument,
                    ts=start + interval, start=start, interval_ns=interval,
                    open=o, high=h, low=lo, close=c, volume=volume, price_only=price_only,
                    measure=measure)))
            except ValueError as e:
                bad.append(BadRow(file, line, str(e)))
        result.series.append(_finish_bars(file, label, venue, instrument, bars, bad, interval))
    result.series.sort(key=lambda s: s.label)
    return result


def _check_datetime(col: str) -> Callable[[dict[str, int], list[str], int], None]:
    def check(index: dict[str, int], cells: list[str], start: int) -> None:
        if col in index and cells[index[col]]:
            try:
                stated = parse_utc(cells[index[col]])
            except ValueError:
                raise ValueError(f"{col} {cells[index[col]]!r} is not a time") from None
            if stated != start:
                raise ValueError(f"{col} {cells[index[col]]} disagrees with the timestamp")
    return check


def load_usdm_windows(path: Path, *, venue: str = "binance_usdm",
                      interval_ns: int | None = HOUR_NS) -> LoadResult:
    """The USDT-M perpetuals' hourly windows: one series per symbol over all its windows.

    Columns: window, symbol, timestamp_ms (bar open), open, high, low, close, volume,
    datetime_utc (checked against timestamp_ms). The label series name is the symbol; the
    gaps between windows stay gaps (no bars).
    """
    def key(ix: dict[str, int], cells: list[str]) -> tuple[str, str, str]:
        symbol = _name(cells[ix["symbol"]], "symbol")
        return symbol, venue, symbol

    return _load_table_bars(
        path, required=("symbol", "timestamp_ms", "open", "high", "low", "close", "volume"),
        row_key=key, start_ns=lambda ix, c: _int(c[ix["timestamp_ms"]], "timestamp_ms") * MS_NS,
        interval_ns=interval_ns, volume_col="volume", check_time=_check_datetime("datetime_utc"))


def load_crossvenue(path: Path, *, interval_ns: int | None = None) -> LoadResult:
    """A table of bars keyed by venue and symbol: one series per (venue, symbol), labelled
    ``venue:symbol``, at the file's own bar interval (the most common step between a
    series' bars, unless ``interval_ns`` says).

    Columns: venue, symbol, timestamp_s (bar open), datetime_utc (checked), open, high, low,
    close, volume_base. The cross-venue hourly file and the minute-level files have them.
    """
    def key(ix: dict[str, int], cells: list[str]) -> tuple[str, str, str]:
        v = _name(cells[ix["venue"]], "venue")
        symbol = _name(cells[ix["symbol"]], "symbol")
        return f"{v}:{symbol}", v, symbol

    return _load_table_bars(
        path, required=("venue", "symbol", "timestamp_s", "open", "high", "low", "close",
                        "volume_base"),
        row_key=key, start_ns=lambda ix, c: _int(c[ix["timestamp_s"]], "timestamp_s") * NS,
        interval_ns=interval_ns, volume_col="volume_base",
        check_time=_check_datetime("datetime_utc"))


def load_dvol(path: Path, *, venue: str = "deribit") -> LoadResult:
    """Deribit's DVOL daily index: daily volatility bars ``deribit/DVOL-<symbol>``.

    Columns: date (UTC day, the bar covers the whole day), symbol, open, high, low, close
    (implied volatility in % per year). The label series name is ``"DVOL <symbol>"``.
    """
    def key(ix: dict[str, int], cells: list[str]) -> tuple[str, str, str]:
        symbol = _name(cells[ix["symbol"]], "symbol")
        return f"DVOL {symbol}", venue, f"DVOL-{symbol}"

    def start(ix: dict[str, int], cells: list[str]) -> int:
        text = cells[ix["date"]]
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(f"date {text!r} is not YYYY-MM-DD")
        return parse_utc(text)

    return _load_table_bars(path, required=("date", "symbol", "open", "high", "low", "close"),
                            row_key=key, start_ns=start, interval_ns=DAY_NS, volume_col=None,
                            price_only=True, measure=Measure.VOLATILITY)


def load_book_depth(path: Path, *, venue: str = "binance_um", instrument: str = "BTCUSDT",
                    label: str | None = None,
                    aliases: tuple[str, ...] | None = None) -> LoadResult:
    """Binance ``bookDepth``: one :class:`BookDepth` record per snapshot timestamp.

    The rows are read by the connectors' ``bookDepth`` parser
    (:mod:`riskguard.connectors.formats.binance`): timestamp (``YYYY-MM-DD HH:MM:SS``
    UTC; surrounding spaces are ignored), percentage (-5..-1 bid side, 1..5 ask side),
    depth (cumulative base quantity), notional[, weighted_avg_price]. The rows of one
    timestamp make one snapshot: ``bands_pct`` are the band sizes,
    ``bid_depth``/``ask_depth`` the depths at ``-band``/``+band``, ``mid`` the mean of
    the -1 and +1 rows' average price (None when a 1 % band is absent).

    A snapshot whose bid and ask sides do not have the same bands (a row missing, or a
    percentage repeated) is **skipped**: each of its rows is reported as a bad row.
    The label series names are ``"<instrument> bid side"`` and ``"<instrument> ask side"``.
    """
    label = label or f"{instrument} bid side"
    aliases = aliases if aliases is not None else (f"{instrument} ask side",)
    bad: list[BadRow] = []
    source = Source(name=path.name, venue=venue, instrument=instrument, market="um")
    rows, refused = _connector_rows(path, "binance_book_depth", source, bad)
    bad.sort(key=lambda b: b.line)
    if refused:
        return LoadResult([], bad)
    records: list[Record] = sorted((rec for _, rec in rows if isinstance(rec, BookDepth)),
                                   key=lambda r: r.ts)
    steps = [b.ts - a.ts for a, b in itertools.pairwise(records)]
    interval = int(statistics.median(steps)) if steps else 30 * NS
    series = Series(label=label, venue=venue, instrument=instrument, interval_ns=interval,
                    records=records, file=path.name, aliases=aliases)
    return LoadResult([series], bad)


_KLINE_NAME = re.compile(r"^binance(?:_[a-z]{2})?_(?P<sym>[A-Za-z0-9_]+?)_\d+[smhdw]_priceklines")


def file_kind(name: str) -> str:
    """Which loader a file name calls for: ``priceklines``, ``book_depth``,
    ``usdm_windows`` and ``dvol`` for the development files of those formats, and
    ``crossvenue`` for any other: a table of bars with venue, symbol, timestamp_s,
    datetime_utc, open, high, low, close and volume_base columns (the cross-venue file,
    the minute-level files, and a desk's own labelled files)."""
    if "_priceklines_" in name:
        return "priceklines"
    if "_bookDepth_" in name:
        return "book_depth"
    if name.startswith("binance_usdm_perp_"):
        return "usdm_windows"
    if name.startswith("deribit_DVOL_"):
        return "dvol"
    return "crossvenue"


def _kline_instrument(name: str) -> str:
    m = _KLINE_NAME.match(name)
    if not m:
        raise ValueError(f"cannot read the instrument from {name}")
    return m.group("sym")


def load_file(path: Path) -> LoadResult:
    """Load one incident file with the loader its name calls for."""
    kind = file_kind(path.name)
    if kind == "priceklines":
        return load_price_klines(path, instrument=_kline_instrument(path.name))
    if kind == "book_depth":
        return load_book_depth(path)
    if kind == "usdm_windows":
        return load_usdm_windows(path)
    if kind == "crossvenue":
        return load_crossvenue(path)
    return load_dvol(path)


def load_all(directory: Path | None = None,
             timings: dict[str, float] | None = None) -> LoadResult:
    """Every incident CSV file of ``directory`` (default: the shared incidents folder).

    With ``timings``, each file's load time in seconds is stored there by file name.
    """
    directory = directory if directory is not None else incidents_dir()
    result = LoadResult()
    for path in sorted(directory.glob("*.csv")):
        t0 = time.perf_counter()
        result.extend(load_file(path))
        if timings is not None:
            timings[path.name] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------- keys, calm


