"""Historical exchange data formats: Binance public data dumps, Tardis.dev CSVs, OHLCV
CSVs and JSONL in the wire contract, read row by row into wire-contract records
(docs/formats.md). :func:`open_reader` is the one entry point: the replay source,
``riskguard publish`` and ``riskguard backtest`` read every file through it.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "ETHUSDT-1h-2024-01-01.csv").write_text(
...     "1704067200000,2281.5,2290.0,2275.1,2288.0,1500.5,1704070799999,3425000.1,4200,800.2,"
...     "1827000.0,0\\n")
>>> reader = open_reader(d / "ETHUSDT-1h-2024-01-01.csv")
>>> reader.format, reader.source.venue, reader.source.instrument
('binance_klines', 'binance', 'ETHUSDT')
>>> [(b.close, b.volume, b.ts) for _, _, b in reader.lines()]
[(2288.0, 1500.5, 1704070800000000000)]
>>> reader.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from riskguard.connectors.formats import binance, ohlcv, tardis
from riskguard.connectors.formats.core import (
    FileReader,
    FileStats,
    IndexedReader,
    ParserFactory,
    RowParser,
    Source,
    factory,
    first_line,
    header_cells,
    open_stream,
)
from riskguard.connectors.formats.detect import Detected, detect, name_exchange
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import stamp_source
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.names import MARKET_NAME_RULE, normalise_name

from riskguard.errors import ConfigError

AUTO = "auto"
MARKETS = ("auto", "spot", "um", "cm")
MEASURES = ("price", "volatility")


class JsonlParser(RowParser):
    """One wire-contract record per line, decoded (and validated) by ``codec``."""

    def __init__(self, header: list[str] | None, source: Source, *, codec: Codec) -> None:
        self.codec = codec
        self.topic = f"file:{source.name}"
        self.name = source.name

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        if offset == 0:  # the file's first line: without a byte order mark
            line = line.removeprefix(b"\xef\xbb\xbf")
        rec = self.codec.decode(self.topic, line.strip(), offset=offset)
        t = type(rec)
        if t in SOURCED_TYPES:  # a later step may refuse it: name the row
            stamp_source(rec, self.topic, 0, offset)
        elif isinstance(rec, DeadLetter) and not rec.detail:
            rec = msgspec.structs.replace(rec, detail=f"{self.name} line {line_no}")
        return rec


PARSERS: dict[str, ParserFactory] = {**binance.PARSERS, **tardis.PARSERS, **ohlcv.PARSERS}
"""Every CSV format by name (``jsonl`` needs a codec: see :func:`open_reader`)."""
FORMATS: tuple[str, ...] = (AUTO, "jsonl", *PARSERS)
"""Every name ``--format`` takes."""


def _market_name(key: str, value: str) -> str:
    """``--venue``/``--instrument`` (or a file name's symbol) as a market name
    (``BTC/USDT`` -> ``BTC-USDT``); ``ConfigError`` naming it if it cannot be one."""
    try:
        return normalise_name(value)
    except ValueError as err:
        raise ConfigError(f"replay.{key}", f"a market name ({MARKET_NAME_RULE})",
                          value) from err


def resolve(path: Path | str, fmt: str = AUTO, *, venue: str = "file",
            instrument: str = "unknown", market: str = AUTO,
            contract_size: float | None = None, measure: str = "price",
            interval_ns: int = 0) -> tuple[str, Source]:
    """The format of ``path`` (``auto``: :func:`~.detect.detect`) and what its parser
    knows. ``venue``/``instrument`` left at ``file``/``unknown`` are taken from the
    name where it gives them (docs/formats.md). ``interval_ns``: an OHLCV file's bars'
    interval, when already known. Raises :class:`~riskguard.errors.ConfigError` for
    what cannot work.
    """
    p = Path(path)
    _check_arguments(fmt, market, measure, contract_size)
    venue, instrument = (_market_name(key, value) for key, value in
                         (("venue", venue), ("instrument", instrument)))
    found = (detect(p, first_line(p)) if AUTO in (fmt, market) or instrument == "unknown"
             else Detected(""))
    if fmt == AUTO:
        if not found.format:
            raise ConfigError(f"replay.files[{p.name}].format",
                              "a format (--format), or a file whose name or header names one",
                              AUTO)
        fmt = found.format
    if market == AUTO:
        market = found.market or "spot"
    symbol = found.symbol if fmt.startswith("binance") else ""
    if instrument == "unknown" and symbol:
        instrument = _market_name(f"files[{p.name}].symbol", symbol)
    if instrument == "unknown" and fmt.startswith("binance") and fmt != "binance_metrics":
        # its rows name no symbol (metrics rows do): two such files would replay as one
        raise ConfigError(f"replay.files[{p.name}].instrument", "an instrument (--instrument),"
                          " or a Binance dump's own file name, which gives the symbol "
                          "(BTCUSDT-1m-2024-01-01.zip)", "neither")
    interval = interval_ns
    if fmt == "ohlcv_csv":
        cells = header_cells(first_line(p))
        if instrument == "unknown" and not {"symbol", "instrument"} & set(cells):
            # two such files would replay as one
            raise ConfigError(f"replay.files[{p.name}].instrument", "an instrument "
                              "(--instrument), or a symbol column in the file", "neither")
        interval = interval or ohlcv.scan_interval(p) or 0
        if not interval:
            raise ConfigError(f"replay.files[{p.name}]", "two bars of one series among "
                              "its first rows (they give the bars' interval)", "fewer")
    venue_given = venue != "file"
    if not venue_given and fmt.startswith("binance"):
        venue = {"spot": "binance", "um": "binance_um", "cm": "binance_cm"}[market]
    if not venue_given and fmt == "ohlcv_csv" and (exchange := name_exchange(p)):
        # the fallback for rows that name no venue: a row's venue cell still wins
        venue = _market_name(f"files[{p.name}].exchange", exchange)
    size = contract_size or binance.default_contract_size(instrument)
    # Binance's spot files give µs from 2025-01-01 on; its name's date says which
    date = detect(p, b"").date if fmt.startswith("binance") else ""
    unit = "us" if market == "spot" and date >= "2025-01" else "ms"
    return fmt, Source(name=p.name, venue=venue, instrument=instrument, market=market,
                       contract_size=size, venue_given=venue_given, interval_ns=interval,
                       measure=measure, time_unit=unit)


def _check_arguments(fmt: str, market: str, measure: str,
                     contract_size: float | None) -> None:
    """What :func:`resolve` is told, each against what it may be."""
    if fmt not in FORMATS:
        raise ConfigError("replay.format", f"one of {', '.join(FORMATS)}", fmt)
    if market not in MARKETS:
        raise ConfigError("replay.market", f"one of {', '.join(MARKETS)}", market)
    if measure not in MEASURES:
        raise ConfigError("replay.measure", f"one of {', '.join(MEASURES)}", measure)
    if contract_size is not None and not contract_size > 0:
        raise ConfigError("replay.contract_size", "a contract's value in USD, > 0",
                          contract_size)


class Reader(FileReader):
    """A :class:`~.core.FileReader` that knows its ``format``."""

    format: str


class TimeIndexedReader(IndexedReader, Reader):
    """An :class:`~.core.IndexedReader` that knows its ``format``."""


def open_reader(path: Path | str, fmt: str = AUTO, *, venue: str = "file",
                instrument: str = "unknown", market: str = AUTO,
                contract_size: float | None = None, measure: str = "price",
                interval_ns: int = 0, time_indexed: bool = False, offset: int = 0,
                codec: Codec | None = None, step: str = "replay") -> Reader:
    """A reader of ``path`` from ``offset`` (see :func:`resolve` for the settings).
    ``time_indexed``: an OHLCV file whose rows are not in time order, read in time order
    (:class:`~.core.IndexedReader`; its offsets are positions in that order)."""
    fmt, source = resolve(path, fmt, venue=venue, instrument=instrument, market=market,
                          contract_size=contract_size, measure=measure,
                          interval_ns=interval_ns)
    if time_indexed:
        if fmt != "ohlcv_csv":
            raise ConfigError(f"replay file {Path(path).name}", "an OHLCV file to read in "
                              "time order", fmt)
        reader: Reader = TimeIndexedReader(path, PARSERS[fmt], index=ohlcv.time_order(path),
                                           source=source, offset=offset, step=step)
    elif fmt == "jsonl":
        make = factory(JsonlParser, codec=codec or Codec(clock=lambda: 0))
        reader = Reader(path, make, source=source, header=False, offset=offset, step=step)
    else:
        reader = Reader(path, PARSERS[fmt], source=source, offset=offset, step=step)
    reader.format = fmt
    return reader


__all__ = ["AUTO", "FORMATS", "MARKETS", "MEASURES", "PARSERS", "FileReader", "FileStats", "Reader",
           "Source", "detect", "open_reader", "open_stream", "resolve"]
