"""Real market incidents as wire records, their labels, the metrics, and two baselines.

The incident files live outside the project (see ``shared_data.py``) and are read
from there, never copied. This module:

- parses ``labels.toml`` (:func:`load_labels`) into :class:`Label` records;
- turns each incident file into wire records grouped per series (:class:`Series`):
  :class:`~riskguard.schemas.Bar` for the kline-like files and
  :class:`~riskguard.schemas.BookDepth` for Binance ``bookDepth`` snapshots. Rows that
  cannot be read never stop a loader: they come back as :class:`BadRow` (file, line,
  reason) in the :class:`LoadResult`;
- maps every label to the detector key it concerns, ``venue/instrument``
  (:func:`label_key`);
- defines calm time (:func:`is_calm`, :func:`calm_days`): everything outside
  ``[onset - 1 day, end)`` of every incident of the series, over the series' data from its
  first to its last record, gaps where no record exists not counted;
- scores episodes ``(key, open_ts_ns, severity)`` and commands
  ``(key_or_scope, ts_ns, action)``: per incident the delay from onset to the first critical
  episode and to the first mitigation command (:func:`incident_delays`), and false critical
  episodes per calm instrument-day (:func:`false_alarms`);
- runs two baselines on every series (:func:`zscore_episodes`, :func:`hst_episodes`) and
  tabulates them (:func:`baseline_report`, :func:`format_table`).

Run ``python bench/incidents.py`` to load everything, list the bad rows, and print the
baseline table.

>>> parse_duration("5m") // NS
300
>>> label_key(Label(file="crossvenue_x.csv", name="n", series="kraken:XBTUSD",
...                 onset="2020-03-12T06:00:00Z", end="2020-03-15T06:00:00Z",
...                 resolution="1h", onset_ns=0, end_ns=1, resolution_ns=1))
'kraken/XBTUSD'
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
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskguard.schemas import Action, Bar, BookDepth
from shared_data import incidents_dir, missing_reason

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


def _ms_unit_ns(value: int) -> int:
    """Binance kline times are ms (µs in spot files from 2025): tell them apart by size."""
    return US_NS if value >= 10**14 else MS_NS


def load_price_klines(path: Path, *, venue: str = "binance", instrument: str,
                      label: str | None = None, price_only: bool = True) -> LoadResult:
    """A Binance 12-column kline CSV (with or without its header) as one series of bars.

    Columns: open_time, open, high, low, close, volume, close_time, quote_volume, count,
    taker_buy_volume, taker_buy_quote_volume, ignore; times in ms (µs is recognised by
    size). A bar covers ``[open_time, close_time + 1 unit)``. With ``price_only`` (mark- or
    index-price klines) the volume fields are dropped and ``count`` is not kept as trades.
    """
    file, stem = path.name, path.stem
    bad: list[BadRow] = []
    bars: list[tuple[int, Bar]] = []
    for line, cells in _rows(path):
        if line == 1 and cells and not cells[0].lstrip("-").isdigit():
            continue  # the header
        try:
            if len(cells) < 7:
                raise ValueError(f"{len(cells)} columns, a kline has 12")
            open_t = _int(cells[0], "open_time")
            close_t = _int(cells[6], "close_time")
            unit = _ms_unit_ns(open_t)
            if open_t < 0 or close_t < open_t:
                raise ValueError(f"close_time {close_t} before open_time {open_t}")
            o, h, lo, c = (_float(cells[i], n) for i, n in
                           ((1, "open"), (2, "high"), (3, "low"), (4, "close")))
            _check_ohlc(o, h, lo, c)
            start = open_t * unit
            interval = (close_t - open_t + 1) * unit
            extra: dict[str, Any] = {}
            if not price_only:
                volume = _float(cells[5], "volume")
                if volume < 0:
                    raise ValueError("negative volume")
                extra["volume"] = volume
                if len(cells) > 7:
                    extra["quote_volume"] = abs(_float(cells[7], "quote_volume"))
                if len(cells) > 8:
                    extra["trades"] = abs(_int(cells[8], "count"))
                if len(cells) > 9:
                    extra["taker_buy_volume"] = abs(_float(cells[9], "taker_buy_volume"))
            bars.append((line, Bar(
                id=_record_id(stem, line), venue=venue, instrument=instrument,
                ts=start + interval, start=start, interval_ns=interval,
                open=o, high=h, low=lo, close=c, price_only=price_only, **extra)))
        except ValueError as e:
            bad.append(BadRow(file, line, str(e)))
    series = _finish_bars(file, label or instrument, venue, instrument, bars, bad)
    return LoadResult([series], bad)


def _load_table_bars(path: Path, *, required: Sequence[str],
                     row_key: Callable[[dict[str, int], list[str]], tuple[str, str, str]],
                     start_ns: Callable[[dict[str, int], list[str]], int],
                     interval_ns: int | None, volume_col: str | None,
                     check_time: Callable[[dict[str, int], list[str], int], None] | None = None,
                     price_only: bool = False) -> LoadResult:
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
                    open=o, high=h, low=lo, close=c, volume=volume, price_only=price_only)))
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


def load_crossvenue(path: Path, *, interval_ns: int | None = HOUR_NS) -> LoadResult:
    """The cross-venue hourly file: one series per (venue, symbol), labelled ``venue:symbol``.

    Columns: venue, symbol, timestamp_s (bar open), datetime_utc (checked), open, high, low,
    close, volume_base.
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
    """Deribit's DVOL daily index: price-only daily bars ``deribit/DVOL-<symbol>``.

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
                            price_only=True)


_SNAPSHOT_TS = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?")


@functools.lru_cache(maxsize=8_192)
def _snapshot_ts(text: str) -> int:
    if not _SNAPSHOT_TS.fullmatch(text):
        raise ValueError(f"timestamp {text!r} is not YYYY-MM-DD HH:MM:SS")
    return parse_utc(text)


def load_book_depth(path: Path, *, venue: str = "binance_um", instrument: str = "BTCUSDT",
                    label: str | None = None,
                    aliases: tuple[str, ...] | None = None) -> LoadResult:
    """Binance ``bookDepth``: one :class:`BookDepth` record per snapshot timestamp.

    Columns: timestamp (``YYYY-MM-DD HH:MM:SS`` UTC; surrounding spaces are ignored),
    percentage (-5..-1 bid side, 1..5 ask side), depth (cumulative base quantity), notional,
    weighted_avg_price. The rows of one timestamp make one snapshot: ``bands_pct`` are the
    band sizes, ``bid_depth``/``ask_depth`` the depths at ``-band``/``+band``, ``mid`` the
    mean of the -1 and +1 rows' weighted_avg_price (None when a 1 % band is absent).

    A snapshot whose bid and ask sides do not have the same bands (a row missing, or a
    percentage repeated) is **skipped**: each of its rows is reported as a bad row.
    The label series names are ``"<instrument> bid side"`` and ``"<instrument> ask side"``.
    """
    file, stem = path.name, path.stem
    label = label or f"{instrument} bid side"
    aliases = aliases if aliases is not None else (f"{instrument} ask side",)
    bad: list[BadRow] = []
    snaps: dict[int, list[tuple[int, float, float, float]]] = {}
    index: dict[str, int] | None = None
    for line, cells in _rows(path):
        if index is None:
            index = _header_index([c.lower() for c in cells],
                                  ("timestamp", "percentage", "depth"), file, bad)
            if index is None:
                return LoadResult([], bad)
            continue
        try:
            if len(cells) < len(index):
                raise ValueError(f"{len(cells)} columns, the header has {len(index)}")
            ts = _snapshot_ts(cells[index["timestamp"]])
            pct = _float(cells[index["percentage"]], "percentage")
            if pct == 0:
                raise ValueError("percentage 0 is neither side")
            depth = _float(cells[index["depth"]], "depth")
            if depth < 0:
                raise ValueError("negative depth")
            wap = math.nan
            if "weighted_avg_price" in index and cells[index["weighted_avg_price"]]:
                wap = _float(cells[index["weighted_avg_price"]], "weighted_avg_price")
            snaps.setdefault(ts, []).append((line, pct, depth, wap))
        except ValueError as e:
            bad.append(BadRow(file, line, str(e)))
    records: list[Record] = []
    for ts in sorted(snaps):
        rows = snaps[ts]
        bids = {-p: (d, w) for _, p, d, w in rows if p < 0}
        asks = {p: (d, w) for _, p, d, w in rows if p > 0}
        n_bid = sum(1 for _, p, _, _ in rows if p < 0)
        if set(bids) != set(asks) or n_bid != len(bids) or len(rows) - n_bid != len(asks):
            reason = (f"snapshot {ts} has bid bands {sorted(bids)} and ask bands "
                      f"{sorted(asks)} over {len(rows)} rows; snapshot skipped")
            bad.extend(BadRow(file, line, reason) for line, *_ in rows)
            continue
        bands = sorted(bids)
        mid = None
        if 1.0 in bids and 1.0 in asks:
            pair = (bids[1.0][1], asks[1.0][1])
            if all(math.isfinite(p) and p > 0 for p in pair):
                mid = (pair[0] + pair[1]) / 2
        records.append(BookDepth(
            id=_record_id(stem, min(line for line, *_ in rows)), venue=venue,
            instrument=instrument, ts=ts, bands_pct=bands,
            bid_depth=[bids[b][0] for b in bands], ask_depth=[asks[b][0] for b in bands],
            mid=mid))
    steps = [b.ts - a.ts for a, b in itertools.pairwise(records)]
    interval = int(statistics.median(steps)) if steps else 30 * NS
    series = Series(label=label, venue=venue, instrument=instrument, interval_ns=interval,
                    records=records, file=file, aliases=aliases)
    return LoadResult([series], bad)


_KLINE_NAME = re.compile(r"^binance(?:_[a-z]{2})?_(?P<sym>[A-Za-z0-9_]+?)_\d+[smhdw]_priceklines")


def file_kind(name: str) -> str:
    """Which loader a file name calls for: ``priceklines``, ``book_depth``,
    ``usdm_windows``, ``crossvenue`` or ``dvol``."""
    if "_priceklines_" in name:
        return "priceklines"
    if "_bookDepth_" in name:
        return "book_depth"
    if name.startswith("binance_usdm_perp_"):
        return "usdm_windows"
    if name.startswith("crossvenue_"):
        return "crossvenue"
    if name.startswith("deribit_DVOL_"):
        return "dvol"
    raise ValueError(f"no loader for {name}")


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


def label_key(label: Label) -> str:
    """The detector key (``venue/instrument``) a label concerns, from its file and series."""
    kind = file_kind(label.file)
    if kind == "priceklines":
        return f"binance/{label.series}"
    if kind == "usdm_windows":
        return f"binance_usdm/{label.series}"
    if kind == "crossvenue":
        venue, _, symbol = label.series.partition(":")
        return f"{venue}/{symbol}"
    if kind == "dvol":
        return "deribit/" + label.series.replace(" ", "-")
    return "binance_um/" + label.series.split(" ", 1)[0]


def label_keys(labels: Iterable[Label]) -> dict[Label, str]:
    """Each label's detector key."""
    return {lb: label_key(lb) for lb in labels}


def series_labels(series: Series, labels: Iterable[Label]) -> list[Label]:
    """The labels (incidents) of one series."""
    return [lb for lb in labels if lb.file == series.file and lb.series in series.labels]


def excluded_windows(series: Series, labels: Iterable[Label]) -> list[tuple[int, int]]:
    """``[onset - 1 day, end)`` of each incident of the series, merged, sorted."""
    return _merge([(lb.onset_ns - DAY_NS, lb.end_ns) for lb in series_labels(series, labels)])


def coverage(series: Series) -> list[tuple[int, int]]:
    """The time the series' data covers, as merged ``(from, to)`` spans.

    A bar covers ``(start, ts]``. A point record (a book snapshot) covers the time since the
    previous one, unless that is more than two intervals (a gap), then one interval.
    """
    spans: list[tuple[int, int]] = []
    prev: int | None = None
    for rec in series.records:
        if isinstance(rec, Bar):
            spans.append((rec.start, rec.ts))
        else:
            step = rec.ts - prev if prev is not None else series.interval_ns
            if step > 2 * series.interval_ns:
                step = series.interval_ns
            spans.append((rec.ts - step, rec.ts))
            prev = rec.ts
    return _merge(spans)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(spans: Sequence[tuple[int, int]], windows: Sequence[tuple[int, int]]) -> int:
    total = 0
    for a, b in spans:
        for lo, hi in windows:
            total += max(0, min(b, hi) - max(a, lo))
    return total


def calm_ns(series: Series, labels: Iterable[Label]) -> int:
    """Calm time of a series in ns: its coverage outside every excluded window."""
    spans = coverage(series)
    covered = sum(b - a for a, b in spans)
    return covered - _overlap(spans, excluded_windows(series, labels))


def calm_days(series: Series, labels: Iterable[Label]) -> float:
    """Calm instrument-days of a series: its data from first to last record, not counting
    gaps with no data, outside ``[onset - 1 day, end)`` of each of its incidents."""
    return calm_ns(series, labels) / DAY_NS


def is_calm(series: Series, ts_ns: int, labels: Iterable[Label]) -> bool:
    """Whether ``ts_ns`` is calm for the series: inside its coverage (a bar's close time
    counts as inside its bar) and outside ``[onset - 1 day, end)`` of each incident."""
    if not any(a < ts_ns <= b for a, b in coverage(series)):
        return False
    return not any(lo <= ts_ns < hi for lo, hi in excluded_windows(series, labels))


# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class IncidentDelay:
    """One incident's delays in ns (None: no such episode or command in its window)."""

    label: Label
    key: str
    detect_ns: int | None
    mitigate_ns: int | None

    @property
    def detect_min(self) -> float | None:
        return None if self.detect_ns is None else self.detect_ns / MINUTE_NS

    @property
    def mitigate_min(self) -> float | None:
        return None if self.mitigate_ns is None else self.mitigate_ns / MINUTE_NS


def _is_critical(severity: object) -> bool:
    return str(severity).lower() == CRITICAL


def command_applies(key_or_scope: str, key: str) -> bool:
    """Whether a command's target covers a ``venue/instrument`` key: the key itself, its
    venue, ``*``, or a scope label (``instrument:venue/instr``, ``instrument:instr``,
    ``venue:venue``, ``firm:*``)."""
    venue, _, instrument = key.partition("/")
    target = key_or_scope
    if ":" in target and target.split(":", 1)[0] in {"instrument", "venue", "firm",
                                                     "underlying", "counterparty"}:
        kind, _, target = target.partition(":")
        if kind == "firm":
            return True
        if kind == "venue":
            return target == venue
        if kind == "instrument":
            return target in {key, instrument}
        return False
    return target in {key, venue, "*"}


def incident_delays(label: Label, episodes: Iterable[Episode],
                    commands: Iterable[Command] = (), *, key: str | None = None,
                    actions: frozenset[str] = MITIGATING_ACTIONS) -> IncidentDelay:
    """Delays of one incident.

    Detection: the first critical episode of the incident's key opened in
    ``[onset - one bar, end)`` (one bar = the label's resolution), its delay
    ``open_ts - onset`` (down to minus one bar). An earlier episode in the day before onset
    is not the detection (nor a false alarm: that day is not calm).
    Mitigation: the first command in ``[onset, end)`` whose action is in ``actions`` and
    whose target covers the key (:func:`command_applies`).
    """
    key = key or label_key(label)
    lo = label.onset_ns - label.resolution_ns
    detect = min((ts for k, ts, sev in episodes
                  if k == key and _is_critical(sev) and lo <= ts < label.end_ns), default=None)
    mitigate = min((ts for target, ts, action in commands
                    if str(action) in actions and label.onset_ns <= ts < label.end_ns
                    and command_applies(target, key)), default=None)
    return IncidentDelay(label, key,
                         None if detect is None else detect - label.onset_ns,
                         None if mitigate is None else mitigate - label.onset_ns)


@dataclass(frozen=True)
class FalseAlarms:
    """False critical episodes (opened in calm time) per series and over all of them."""

    per_series: dict[str, tuple[int, float]]
    """``"file|series label" -> (false episodes, calm days)``."""

    @property
    def episodes(self) -> int:
        return sum(n for n, _ in self.per_series.values())

    @property
    def days(self) -> float:
        return sum(d for _, d in self.per_series.values())

    @property
    def rate(self) -> float | None:
        """Sum of false episodes over sum of calm instrument-days (None: no calm time)."""
        return self.episodes / self.days if self.days > 0 else None

    def series_rate(self, name: str) -> float | None:
        n, d = self.per_series[name]
        return n / d if d > 0 else None


def series_name(series: Series) -> str:
    """``"file|label"``: a series' unique name (the series label alone repeats across files)."""
    return f"{series.file}|{series.label}"


def false_alarms(series: Iterable[Series], labels: Sequence[Label],
                 episodes: Iterable[Episode]) -> FalseAlarms:
    """Critical episodes opened in calm time of their key's series, and the calm days."""
    by_key: dict[str, list[int]] = {}
    for key, ts, sev in episodes:
        if _is_critical(sev):
            by_key.setdefault(key, []).append(ts)
    out: dict[str, tuple[int, float]] = {}
    for s in series:
        spans = coverage(s)
        windows = excluded_windows(s, labels)
        n = sum(1 for ts in by_key.get(s.key, ())
                if any(a < ts <= b for a, b in spans)
                and not any(lo <= ts < hi for lo, hi in windows))
        covered = sum(b - a for a, b in spans)
        out[series_name(s)] = (n, (covered - _overlap(spans, windows)) / DAY_NS)
    return FalseAlarms(out)


# ---------------------------------------------------------------------------- baselines

WARMUP_BARS = 60
Z_WINDOW = 60
Z_THRESHOLD = 4.0
HST_THRESHOLD = 0.7
QUIET_TO_CLOSE = 5


class EpisodeGrouper:
    """An alarm opens an episode unless one is open; 5 non-alarm points in a row close it.

    Every episode is critical.
    """

    def __init__(self, key: str, quiet_to_close: int = QUIET_TO_CLOSE) -> None:
        self.key = key
        self.quiet_to_close = quiet_to_close
        self.open = False
        self.quiet = 0
        self.episodes: list[Episode] = []

    def feed(self, ts: int, alarm: bool) -> None:
        if alarm:
            self.quiet = 0
            if not self.open:
                self.open = True
                self.episodes.append((self.key, ts, CRITICAL))
        elif self.open:
            self.quiet += 1
            if self.quiet >= self.quiet_to_close:
                self.open = False

    def close(self) -> None:
        self.open = False
        self.quiet = 0


def _is_gap(series: Series, prev: Record, rec: Record) -> bool:
    if isinstance(rec, Bar) and isinstance(prev, Bar):
        return rec.start != prev.ts
    return rec.ts - prev.ts > 2 * series.interval_ns


def _log(x: float) -> float | None:
    return math.log(x) if x > 0 else None


def _bar_features(prev: Bar, bar: Bar) -> dict[str, float]:
    r = math.log(bar.close / prev.close)
    return {"ret": r, "abs_ret": abs(r), "range": (bar.high - bar.low) / bar.close}


def _depth_levels(rec: BookDepth) -> dict[str, float | None]:
    """Log +1 % ask depth and log -1 % bid depth (None where absent or zero)."""
    out: dict[str, float | None] = {"ask1": None, "bid1": None}
    if 1.0 in rec.bands_pct:
        i = rec.bands_pct.index(1.0)
        out["ask1"] = _log(rec.ask_depth[i])
        out["bid1"] = _log(rec.bid_depth[i])
    return out


def _walk(series: Series) -> Iterator[tuple[int, Record, Record | None]]:
    """``(index, record, previous record or None after a gap)`` over a series."""
    prev: Record | None = None
    for i, rec in enumerate(series.records):
        yield i, rec, (prev if prev is not None and not _is_gap(series, prev, rec) else None)
        prev = rec


class RollingZ:
    """|z| of a value against the previous ``window`` values (None until the window is full)."""

    def __init__(self, window: int = Z_WINDOW) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def push(self, x: float) -> float | None:
        z = None
        if len(self.values) == self.values.maxlen:
            mean = math.fsum(self.values) / len(self.values)
            sd = math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))
            # a flat window: any change is infinitely surprising
            flat = math.inf if abs(x - mean) > 1e-12 else 0.0
            z = abs(x - mean) / sd if sd > 1e-12 else flat
        self.values.append(x)
        return z


def zscore_episodes(series: Series, *, window: int = Z_WINDOW, threshold: float = Z_THRESHOLD,
                    warmup: int = WARMUP_BARS) -> list[Episode]:
    """Baseline (a): rolling z-score, alarm when ``|z| > threshold``.

    Bars: the log return of closes. A book-depth series has two alarm sources, the change
    of log +1 % ask depth and of log -1 % bid depth, each with its own window; the key alarms
    when either does. z is against the previous ``window`` values, so no alarm can come
    before ``window + 1`` values. Warm-up: no alarm in the first ``warmup`` records of a
    series (the statistics still learn). A gap (a bar not starting where the previous one
    closed, or a snapshot more than two intervals after the last) closes an open episode
    and gives no value for the first record after it (no return across the gap).
    """
    grouper = EpisodeGrouper(series.key)
    zs: dict[str, RollingZ] = {}
    last_depth: dict[str, float | None] = {}
    for i, rec, prev in _walk(series):
        if prev is None and i > 0:
            grouper.close()
        values: dict[str, float] = {}
        if isinstance(rec, Bar):
            if isinstance(prev, Bar):
                values["ret"] = math.log(rec.close / prev.close)
        else:
            levels = _depth_levels(rec)
            for src, level in levels.items():
                before = last_depth.get(src) if prev is not None else None
                if level is not None and before is not None:
                    values[src] = level - before
            last_depth = levels
        alarm = False
        for src, x in values.items():
            z = zs.setdefault(src, RollingZ(window)).push(x)
            alarm = alarm or (z is not None and z > threshold)
        grouper.feed(rec.ts, alarm and i >= warmup)
    return grouper.episodes


def hst_episodes(series: Series, *, threshold: float = HST_THRESHOLD,
                 warmup: int = WARMUP_BARS, seed: int = 42) -> list[Episode]:
    """Baseline (b): River ``MinMaxScaler() | HalfSpaceTrees(seed=42)`` (defaults otherwise),
    score then learn, alarm when the score is above ``threshold``.

    Features: bars: log return, |log return|, (high - low) / close; book depth: log +1 %
    ask depth and log -1 % bid depth. Warm-up: no alarm in the first ``warmup`` records of
    a series. HalfSpaceTrees scores 0 until it has learnt its first window (250 points by
    default), so in practice no alarm comes before the 251st scored record. After a gap the
    first bar has no return: it is neither scored nor learnt, and the open episode closes.

    Note: River's scores for ordinary points are often above 0.7 (a walk stops at a node
    holding less than a tenth of the window, which caps the mass term), so on the incident
    files 20-100 % of the scored points alarm; an episode then stays open for long and an
    episode opened before ``onset - one bar`` hides the incident (it counts as missed).
    """
    from river import anomaly, preprocessing

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
    grouper = EpisodeGrouper(series.key)
    for i, rec, prev in _walk(series):
        if prev is None and i > 0:
            grouper.close()
        x: dict[str, float] | None = None
        if isinstance(rec, Bar):
            if isinstance(prev, Bar):
                x = _bar_features(prev, rec)
        else:
            levels = _depth_levels(rec)
            if all(v is not None for v in levels.values()):
                x = {k: v for k, v in levels.items() if v is not None}
        alarm = False
        if x is not None:
            score = model.score_one(x)
            model.learn_one(x)
            alarm = score > threshold
        grouper.feed(rec.ts, alarm and i >= warmup)
    return grouper.episodes


BASELINES: dict[str, Callable[[Series], list[Episode]]] = {
    "zscore": zscore_episodes,
    "hst": hst_episodes,
}


# ---------------------------------------------------------------------------- report


def baseline_report(directory: Path | None = None,
                    baselines: Mapping[str, Callable[[Series], list[Episode]]] = BASELINES,
                    ) -> list[dict[str, Any]]:
    """Run every baseline on every series of every incident file, and tabulate.

    Rows, in label order, ``kind="delay_min"``: ``file``, ``name``, ``series``, ``key`` and
    per baseline the delay in minutes from onset to the first critical episode (None:
    missed). Then ``kind="false_per_day"`` rows: one per series (``name`` is the number of
    calm days) and a last one over all files (``series="(all)"``), per baseline the false
    episodes per calm instrument-day (None: no calm time).
    """
    directory = directory if directory is not None else incidents_dir()
    labels = load_labels(directory / "labels.toml")
    loaded = load_all(directory)
    episodes: dict[str, list[Episode]] = {}
    for name, run in baselines.items():
        episodes[name] = [ep for s in loaded.series for ep in run(s)]
    rows: list[dict[str, Any]] = []
    for lb in labels:
        row: dict[str, Any] = {"kind": "delay_min", "file": lb.file, "name": lb.name,
                               "series": lb.series, "key": label_key(lb)}
        for name, eps in episodes.items():
            row[name] = incident_delays(lb, eps).detect_min
        rows.append(row)
    fas = {name: false_alarms(loaded.series, labels, eps) for name, eps in episodes.items()}
    for s in loaded.series:
        row = {"kind": "false_per_day", "file": s.file,
               "name": f"{calm_days(s, labels):.1f} calm days", "series": s.label,
               "key": s.key}
        for name, fa in fas.items():
            row[name] = fa.series_rate(series_name(s))
        rows.append(row)
    total: dict[str, Any] = {"kind": "false_per_day", "file": "(all files)",
                             "name": f"{next(iter(fas.values())).days:.1f} calm days"
                             if fas else "", "series": "(all)", "key": ""}
    for name, fa in fas.items():
        total[name] = fa.rate
    rows.append(total)
    return rows


_FIXED = ("kind", "file", "name", "series", "key")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: one line per row; delays in minutes, rates per calm day."""
    if not rows:
        return ""
    values = [c for c in rows[0] if c not in _FIXED]

    def cell(v: Any, kind: str) -> str:
        if v is None:
            return "missed" if kind == "delay_min" else "-"
        if isinstance(v, float):
            return f"{v:.0f}" if kind == "delay_min" else f"{v:.3f}"
        return str(v)

    header = ["", "file", "incident", "series", *values]
    lines = [header]
    for r in rows:
        kind = r.get("kind", "")
        file = str(r.get("file", ""))
        lines.append(["delay min" if kind == "delay_min" else "false/day",
                      file[:40], str(r.get("name", "")), str(r.get("series", "")),
                      *(cell(r.get(v), kind) for v in values)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def main() -> None:
    directory = incidents_dir()
    reason = missing_reason(directory)
    if reason:
        print(reason)
        raise SystemExit(1)
    timings: dict[str, float] = {}
    loaded = load_all(directory, timings)
    for name, secs in timings.items():
        n = sum(len(s.records) for s in loaded.series if s.file == name)
        print(f"{secs * 1000:8.1f} ms  {n:6d} records  {name}")
    print(f"{sum(timings.values()) * 1000:8.1f} ms  total")
    for bad in loaded.bad_rows:
        print(f"bad row {bad.file}:{bad.line}: {bad.reason}")
    t0 = time.perf_counter()
    rows = baseline_report(directory)
    print(format_table(rows))
    print(f"baselines: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
