"""Which format a file is, from its name, its folders and its first line (``auto``).

The rules, in order, are docs/formats.md's "Auto detection": a Tardis name, a Binance
dump name (its folders telling mark, index and premium klines apart), the header, a
header-less Binance row, then words in the name. An OHLCV file named as
CryptoDataDownload names its exports gives its exchange as the venue
(:func:`name_exchange`).

>>> d = detect("binance-futures_derivative_ticker_2024-01-01_BTCUSDT.csv.gz", b"")
>>> d.format, d.symbol, d.exchange
('tardis_derivative_ticker', 'BTCUSDT', 'binance-futures')
>>> d = detect("data/futures/um/daily/premiumIndexKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip",
...            b"")
>>> d.format, d.market, d.symbol, d.date
('binance_premium_index_klines', 'um', 'BTCUSDT', '2024-01-01')
>>> detect("BTCUSD_PERP-aggTrades-2024-01-01.zip", b"").market
'cm'
>>> detect("dump.csv", b"1,100.5,0.2,20.1,1700000000000,True,True").format
'binance_trades'
>>> detect("bars.csv", b"venue,symbol,timestamp_s,open,high,low,close,volume_base").format
'ohlcv_csv'
>>> detect("Binance_ETHUSDT_1h.csv", b"Unix,Date,Symbol,Open,High,Low,Close").exchange
'binance'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from riskguard.connectors.formats.core import header_cells, is_header
from riskguard.connectors.formats.ohlcv import is_ohlcv_header
from riskguard.connectors.formats.tardis import COLUMNS as TARDIS_COLUMNS
from riskguard.connectors.formats.tardis import COMMON

_TARDIS_NAME = re.compile(
    r"^(?P<exchange>[a-z0-9-]+)_(?P<kind>trades|liquidations|quotes|book_snapshot_25|"
    r"book_snapshot_5|derivative_ticker|options_chain|incremental_book_L2|book_ticker)_"
    r"(?P<date>\d{4}-\d{2}-\d{2})_(?P<symbol>.+?)\.csv(?:\.gz)?$")
_BINANCE_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+(?:_[A-Z0-9]+)?)-(?P<kind>[A-Za-z0-9]+)-"
    r"(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.(?:csv|zip|csv\.gz)$")
_INTERVAL = re.compile(r"^\d+(?:s|m|h|d|w|mo)$")
# CryptoDataDownload's export names: the symbol in capitals, a year before minute files'
# interval (an uppercase symbol keeps a name such as my_coins_5m.csv from matching)
_CDD_NAME = re.compile(
    r"^(?P<exchange>[A-Za-z][A-Za-z0-9]*)_(?P<symbol>[A-Z0-9]+)_(?:\d{4}_)?"
    r"(?P<interval>minute|\d*(?:min|m|hr|h|d|w))\.csv(?:\.gz|\.zip)?$", re.IGNORECASE)
_BINANCE_KINDS = {
    "trades": "binance_trades", "aggTrades": "binance_agg_trades",
    "bookTicker": "binance_book_ticker", "bookDepth": "binance_book_depth",
    "fundingRate": "binance_funding", "metrics": "binance_metrics",
}
_FUTURES_ONLY = frozenset({"bookTicker", "bookDepth", "fundingRate", "metrics"})
_FUTURES_ONLY_FORMATS = frozenset(_BINANCE_KINDS[k] for k in _FUTURES_ONLY)
_KLINE_FOLDERS = {
    "markpriceklines": "binance_mark_price_klines",
    "indexpriceklines": "binance_index_price_klines",
    "premiumindexklines": "binance_premium_index_klines",
}
_BINANCE_HEADERS = (  # first columns of each Binance header
    (("open_time", "open", "high"), "binance_klines"),
    (("id", "price", "qty"), "binance_trades"),
    (("agg_trade_id",), "binance_agg_trades"),
    (("update_id", "best_bid_price"), "binance_book_ticker"),
    (("timestamp", "percentage", "depth"), "binance_book_depth"),
    (("calc_time",), "binance_funding"),
    (("create_time", "symbol", "sum_open_interest"), "binance_metrics"),
)
_NAME_WORDS = (  # tried in order: the longer words first
    ("premiumindex", "binance_premium_index_klines"),
    ("premium_index", "binance_premium_index_klines"),
    ("markprice", "binance_mark_price_klines"),
    ("mark_price", "binance_mark_price_klines"),
    ("indexprice", "binance_index_price_klines"),
    ("index_price", "binance_index_price_klines"),
    ("bookdepth", "binance_book_depth"), ("book_depth", "binance_book_depth"),
    ("bookticker", "binance_book_ticker"), ("book_ticker", "binance_book_ticker"),
    ("aggtrade", "binance_agg_trades"), ("agg_trade", "binance_agg_trades"),
    ("kline", "binance_klines"), ("funding", "binance_funding"),
    ("metrics", "binance_metrics"), ("trade", "binance_trades"),
)
_BOOLS = (b"true", b"false")


@dataclass(frozen=True)
class Detected:
    """What :func:`detect` found: the format ('' if none), the Binance market, and the
    symbol, exchange and date (``YYYY-MM[-DD]``) the name gives ('' if it gives none)."""

    format: str
    market: str = ""
    symbol: str = ""
    exchange: str = ""
    date: str = ""


def _market(path: PurePath, symbol: str, header: bool) -> str:
    folders = {p.lower() for p in path.parts[:-1]}
    if "_" in symbol or "cm" in folders:
        return "cm"
    if "um" in folders:
        return "um"
    if "spot" in folders:
        return "spot"
    return "um" if header else "spot"


def _from_header(cells: list[str]) -> str:
    if tuple(cells[:4]) == COMMON:
        rest = tuple(cells[4:])
        for kind, columns in TARDIS_COLUMNS.items():
            if rest[:len(columns)] == columns:
                return "tardis_liquidations" if kind == "liquidations" else f"tardis_{kind}"
        if rest[:4] == ("asks[0].price", "asks[0].amount", "bids[0].price", "bids[0].amount"):
            return "tardis_book_snapshot_25" if len(rest) > 20 else "tardis_book_snapshot_5"
        return ""
    for first, fmt in _BINANCE_HEADERS:
        if tuple(cells[:len(first)]) == first:
            return fmt
    return "ohlcv_csv" if is_ohlcv_header(cells) else ""


def _from_row(line: bytes) -> str:
    cells = [c.strip().lower() for c in line.split(b",")]
    bools = [i for i, c in enumerate(cells) if c in _BOOLS]
    if len(cells) == 12 and not bools:
        return "binance_klines"
    if bools[:1] == [5]:
        return "binance_trades"  # id, price, qty, quote_qty, time, is_buyer_maker[, ...]
    if bools[:1] == [6]:
        return "binance_agg_trades"  # ..., first_trade_id, last_trade_id, time, maker[, ...]
    if len(cells) == 3:
        return "binance_funding"
    return ""


def name_exchange(path: str | PurePath) -> str:
    """The exchange a CryptoDataDownload export's name gives, lower-cased ('' if the name
    is not one).

    >>> name_exchange("Binance_ETHUSDT_1h.csv"), name_exchange("my_coins_5m.csv")
    ('binance', '')
    """
    m = _CDD_NAME.match(PurePath(path).name)
    if m is None or not m.group("symbol").isupper():
        return ""
    return m.group("exchange").lower()


def detect(path: str | PurePath, first: bytes) -> Detected:
    """The format of the file at ``path`` whose first line is ``first``."""
    p = PurePath(path)
    file = p.name
    header = is_header(first) if first else False
    m = _TARDIS_NAME.match(file)
    if m:
        kind = m.group("kind")
        fmt = f"tardis_{kind}" if kind in ("trades", "liquidations", "quotes",
                                           "book_snapshot_5", "book_snapshot_25",
                                           "derivative_ticker", "options_chain") else ""
        return Detected(fmt, "", m.group("symbol"), m.group("exchange"))
    m = _BINANCE_NAME.match(file)
    if m:
        symbol, kind = m.group("symbol"), m.group("kind")
        market = _market(p, symbol, header)
        if _INTERVAL.match(kind):
            folders = [q.lower() for q in p.parts[:-1]]
            fmt = next((f for k, f in _KLINE_FOLDERS.items() if k in folders),
                       "binance_klines")
            return Detected(fmt, market, symbol, date=m.group("date"))
        if kind in _BINANCE_KINDS:
            if kind in _FUTURES_ONLY and market == "spot":
                market = "um"
            return Detected(_BINANCE_KINDS[kind], market, symbol, date=m.group("date"))
    lower = file.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
        return Detected("jsonl")
    fmt = ""
    if header:
        fmt = _from_header(header_cells(first))
    elif first:
        fmt = _from_row(first)
    for word, by_name in _NAME_WORDS:
        if word in lower:
            # a word names the format; of a kline file, which klines (mark, index ...)
            if not fmt or (fmt == "binance_klines" and by_name.endswith("_klines")):
                fmt = by_name
            break
    if fmt.startswith("binance"):
        cells = header_cells(first) if header else []
        market = _market(p, "", header or fmt in _FUTURES_ONLY_FORMATS)
        if "base_volume" in cells or "base_qty" in cells:
            market = "cm"
        return Detected(fmt, market)
    if fmt == "ohlcv_csv":
        return Detected(fmt, exchange=name_exchange(p))
    return Detected(fmt)
