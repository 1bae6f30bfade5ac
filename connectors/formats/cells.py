"""A row's cells read into values, and the checks every record a file gives must pass.

Each reader refuses what it cannot use with a :class:`RowError` naming the column: the
file reader turns it into a dead letter.

>>> number(b"12.5", "price")
12.5
>>> try:
...     positive(b"-1", "price")
... except RowError as err:
...     print(err.path, err.expected)
$.price a number > 0
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.market import Bar, OptionQuote
from riskguard.schemas.names import (
    MARKET_NAME_RULE,
    MEMO_KEY_LIMIT,
    normalise_name,
    short_memo,
)

MAX_FLOAT = 1.7976931348623157e308
MS_NS = 1_000_000
US_NS = 1_000
MIN_TS = 1_230_768_000 * 1_000_000_000
"""The earliest plausible time of a row: 2009-01-01 (no crypto market is older)."""
MAX_TS = 4_102_444_800 * 1_000_000_000
"""The latest plausible time of a row: 2100-01-01 (an option expiry included)."""


class RowError(ValueError):
    """Why one row cannot be used. Parsers raise it; :class:`FileReader` turns it into a
    dead letter (it never reaches a caller). ``path`` names the column (``$.high``)."""

    def __init__(self, message: str, *, path: str = "$", expected: str = "",
                 found: str = "", reason: str = "validation") -> None:
        super().__init__(message)
        self.path, self.expected, self.found, self.reason = path, expected, found, reason


def _when(ts: int) -> str:
    try:
        return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"{ts} ns"


def _span() -> str:
    return f"a time from {_when(MIN_TS)} to {_when(MAX_TS)} UTC"


def _implausible(column: str, value: Any, expected: str) -> RowError:
    return RowError(f"{column} {value} is implausible: expected {expected}",
                    path=f"$.{column}", expected=expected, found=str(value),
                    reason="implausible")


def check_plausible(item: Any) -> None:
    """Raise a ``implausible`` :class:`RowError` for a record a file should never give:
    a time outside :data:`MIN_TS`..:data:`MAX_TS` (a time of 0, the year 3000, a time
    read in the wrong unit), an option whose expiry is no such time, a delta outside
    -1..1, a negative gamma or vega. Lists (a book snapshot) are checked item by item;
    dead letters pass.

    >>> from riskguard.schemas import Trade
    >>> try:
    ...     check_plausible(Trade(id="t", venue="v", instrument="I", ts=0, price=1.0,
    ...                           qty=1.0, side="buy"))
    ... except RowError as err:
    ...     print(err.reason, err.found)
    implausible 0
    """
    if item.__class__ is list:
        for x in item:
            check_plausible(x)
        return
    ts = getattr(item, "ts", None)
    if ts is None or item.__class__ is DeadLetter:
        return
    if not MIN_TS <= ts <= MAX_TS:
        raise _implausible("ts", ts, _span())
    if item.__class__ is Bar and item.start < MIN_TS:
        raise _implausible("start", item.start, _span())
    if item.__class__ is OptionQuote:
        if not MIN_TS <= item.expiry <= MAX_TS:
            raise _implausible("expiry", item.expiry, _span())
        if not -1.0 <= item.delta <= 1.0:
            raise _implausible("delta", item.delta, "a delta from -1 to 1")
        if item.gamma < 0.0 or item.vega < 0.0:
            column = "gamma" if item.gamma < 0.0 else "vega"
            raise _implausible(column, getattr(item, column), "a gamma and vega >= 0")


def split_row(line: bytes, at_least: int) -> list[bytes]:
    """The cells of a CSV line (quoted cells only through the csv module), at least
    ``at_least`` of them, else a ``malformed`` :class:`RowError`."""
    cells = line.split(b",")
    if b'"' in line:
        text = line.decode("utf-8", "replace")
        cells = [c.encode() for c in next(csv.reader([text]))]
    if len(cells) < at_least:
        raise RowError(f"{len(cells)} columns, expected at least {at_least}",
                       expected=f"at least {at_least} columns", found=str(len(cells)),
                       reason="malformed")
    return cells


def number(cell: bytes, column: str) -> float:
    """A finite float, else a :class:`RowError` naming ``column``."""
    try:
        value = float(cell)
    except ValueError:
        value = None
    if value is None or not -MAX_FLOAT <= value <= MAX_FLOAT:
        text = cell.decode("utf-8", "replace").strip()
        raise RowError(f"{column} {text!r} is not a number", path=f"$.{column}",
                       expected="a finite number", found=text)
    return value


def optional(cell: bytes, column: str) -> float | None:
    """A finite float, or None for an empty cell."""
    return None if not cell.strip() else number(cell, column)


def positive(cell: bytes, column: str) -> float:
    value = number(cell, column)
    if value <= 0.0:
        raise RowError(f"{column} {value!r} is not positive", path=f"$.{column}",
                       expected="a number > 0", found=repr(value))
    return value


def non_negative(cell: bytes, column: str) -> float:
    value = number(cell, column)
    if value < 0.0:
        raise RowError(f"{column} {value!r} is negative", path=f"$.{column}",
                       expected="a number >= 0", found=repr(value))
    return value


def whole(cell: bytes, column: str) -> int:
    """A whole number (``"5"`` or ``"5.0"``), else a :class:`RowError`."""
    try:
        return int(cell)
    except ValueError:
        value = number(cell, column)
    if value != int(value):
        raise RowError(f"{column} {value!r} is not a whole number", path=f"$.{column}",
                       expected="a whole number", found=repr(value))
    return int(value)


def flag(cell: bytes, column: str) -> bool:
    """``true`` / ``false`` (any case), else a :class:`RowError`."""
    text = cell.strip().lower()
    if text == b"true":
        return True
    if text == b"false":
        return False
    found = cell.decode("utf-8", "replace").strip()
    raise RowError(f"{column} {found!r} is not true or false", path=f"$.{column}",
                   expected="true or false", found=found)


@short_memo(4096)  # a name cell is short; a long one is never held
def name(cell: bytes, column: str) -> str:
    """A cell as a market name: ``BTC/USDT`` (Kraken, ccxt, CryptoDataDownload) becomes
    ``BTC-USDT``; what reads as a path, or cannot become a market name, is refused."""
    text = cell.strip().decode("utf-8", "replace")
    try:
        return normalise_name(text)
    except ValueError as err:
        raise RowError(f"{column} {text!r} is not a market name: {err}", path=f"$.{column}",
                       expected=f"a market name ({MARKET_NAME_RULE})", found=text) from None


class NameMemo(dict[bytes, str]):
    """A parser's cells already checked as names (a file repeats them): ``memo.get(cell)
    or memo.name(cell, column)``. Short cells only, at most 65,536 of them and 4 MiB."""

    size = 0  # bytes of the cells held

    def name(self, cell: bytes, column: str) -> str:
        text = name(cell, column)
        if len(cell) <= MEMO_KEY_LIMIT:
            if len(self) >= 65_536 or self.size > 4 << 20:
                self.clear()
                self.size = 0
            self[cell] = text
            self.size += len(cell)
        return text


_DATETIME = re.compile(rb"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z?\s*")


def datetime_ns(cell: bytes, column: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fff]`` (UTC) in ns since the epoch.

    >>> datetime_ns(b"2024-01-01 00:00:07", "timestamp")
    1704067207000000000
    """
    if len(cell) == 19 and cell[10:11] == b" " and cell[13:14] == b":" == cell[16:17]:
        try:  # the common shape: the day (cached) plus the time of day
            h, m, s = int(cell[11:13]), int(cell[14:16]), int(cell[17:19])
            if h < 24 and m < 60 and s < 60:
                return _day_ns(cell[:10], column) + (h * 3600 + m * 60 + s) * 1_000_000_000
        except ValueError:
            pass
    return _datetime_ns(cell, column)


@lru_cache(maxsize=1024)
def _day_ns(day: bytes, column: str) -> int:
    return _datetime_ns(day + b" 00:00:00", column)


@short_memo(1024)
def _datetime_ns(cell: bytes, column: str) -> int:
    m = _DATETIME.fullmatch(cell)
    if m is None:
        text = cell.decode("utf-8", "replace")
        raise RowError(f"{column} {text!r} is not YYYY-MM-DD HH:MM:SS", path=f"$.{column}",
                       expected="YYYY-MM-DD HH:MM:SS (UTC)", found=text)
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError as err:
        text = cell.decode("utf-8", "replace")
        raise RowError(f"{column} {text!r} is not a date: {err}", path=f"$.{column}",
                       expected="a valid date and time", found=text) from None
    frac = (m.group(7) or b".")[1:]
    return int(dt.timestamp()) * 1_000_000_000 + int((frac + b"000000000")[:9])
