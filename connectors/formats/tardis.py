"""Tardis.dev downloadable CSV files as wire-contract records.

docs/formats.md lists each format's columns and the records it gives. Times are
microseconds since the epoch, UTC: ``timestamp`` is the record's ``ts``,
``local_timestamp`` its ``recv_ts``; ``exchange`` and ``symbol`` name each record's venue
and instrument (a ``venue`` given to the reader replaces the exchange's name).

>>> import tempfile, pathlib
>>> from riskguard.connectors.formats.core import FileReader, Source
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "t.csv").write_text("exchange,symbol,timestamp,local_timestamp,id,side,price,"
...     "amount\\nbinance-futures,BTCUSDT,1704067200000123,1704067200001456,99,sell,"
...     "42000.5,0.01\\n")
>>> reader = FileReader(d / "t.csv", PARSERS["tardis_trades"], source=Source("t.csv", "file", "x"))
>>> [(t.venue, t.instrument, t.ts, t.recv_ts, t.side.value) for _, _, t in reader.lines()]
[('binance-futures', 'BTCUSDT', 1704067200000123000, 1704067200001456000, 'sell')]
>>> reader.close()
"""

from __future__ import annotations

from typing import Any

from riskguard.connectors.formats.cells import (
    NameMemo,
    RowError,
    name,
    non_negative,
    optional,
    positive,
    split_row,
    whole,
)
from riskguard.connectors.formats.core import (
    ParserFactory,
    RowParser,
    Source,
    factory,
)
from riskguard.schemas.market import (
    BookDepth,
    FundingRate,
    OpenInterest,
    OptionQuote,
    OptionType,
    Quote,
    Side,
    Trade,
)

COMMON = ("exchange", "symbol", "timestamp", "local_timestamp")
COLUMNS: dict[str, tuple[str, ...]] = {
    "trades": ("id", "side", "price", "amount"),
    "liquidations": ("id", "side", "price", "amount"),
    "quotes": ("ask_amount", "ask_price", "bid_price", "bid_amount"),
    "derivative_ticker": ("funding_timestamp", "funding_rate", "predicted_funding_rate",
                          "open_interest", "last_price", "index_price", "mark_price"),
    "options_chain": ("type", "strike_price", "expiration", "open_interest", "last_price",
                      "bid_price", "bid_amount", "bid_iv", "ask_price", "ask_amount", "ask_iv",
                      "mark_price", "mark_iv", "underlying_index", "underlying_price", "delta",
                      "gamma", "vega", "theta", "rho"),
}
"""Each data type's documented columns after :data:`COMMON` (book snapshots: see
:func:`book_columns`)."""
DEPTH_BANDS_PCT = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)
"""Bands (percent from the mid) a book snapshot's depth record reports, where covered."""
COIN_PRICED_EXCHANGES = frozenset({"deribit", "okex-options", "okx-options"})
"""Options venues whose option prices are in the underlying coin (but USDC/USDT-settled
symbols)."""
_SIDES = {b"buy": Side.BUY, b"sell": Side.SELL}


def book_columns(levels: int) -> tuple[str, ...]:
    """``asks[0].price, asks[0].amount, bids[0].price, bids[0].amount, ...``."""
    return tuple(f"{side}[{i}].{what}" for i in range(levels)
                 for side, what in (("asks", "price"), ("asks", "amount"),
                                    ("bids", "price"), ("bids", "amount")))


def _index(header: list[str] | None, columns: tuple[str, ...],
           required: tuple[str, ...]) -> dict[str, int]:
    """Column positions by header name (or the documented order without a header)."""
    every = (*COMMON, *columns)
    if header is None:
        return {n: i for i, n in enumerate(every)}
    index = {n: i for i, n in enumerate(header)}
    missing = [n for n in (*COMMON, *required) if n not in index]
    if missing:
        raise RowError(f"header lacks column(s) {', '.join(missing)}; file not read",
                       expected=f"a Tardis header with {', '.join((*COMMON, *required))}",
                       found=",".join(header)[:200], reason="malformed")
    return {n: index[n] for n in every if n in index}


def _us(cell: bytes, column: str) -> int:
    value = whole(cell, column)
    if not 0 <= value < 2**63 // 1000:
        raise RowError(f"{column} {value} is not a time in µs", path=f"$.{column}",
                       expected="µs since the epoch", found=str(value))
    return value * 1000


class _Parser(RowParser):
    """The common four columns; subclasses read the rest."""

    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    def __init__(self, header: list[str] | None, source: Source) -> None:
        self.ix = _index(header, self.columns, self.required)
        self.width = max(self.ix.values()) + 1
        self.prefix = f"{source.stem}@"
        self.venue = source.venue if source.venue_given else None
        self.ex_i, self.sym_i = self.ix["exchange"], self.ix["symbol"]
        self.ts_i, self.local_i = self.ix["timestamp"], self.ix["local_timestamp"]
        self.names = NameMemo()

    def _get(self, c: list[bytes], column: str) -> float | None:
        """An optional column's number (None where the file has no such column)."""
        i = self.ix.get(column)
        return None if i is None or i >= len(c) else optional(c[i], column)

    def head(self, line: bytes) -> tuple[list[bytes], str, str, int, int]:
        """``(cells, venue, instrument, ts, recv_ts)``."""
        c = line.split(b",")
        if len(c) < self.width:
            c = split_row(line, self.width)
        names = self.names
        venue = self.venue or names.get(c[self.ex_i]) or names.name(c[self.ex_i], "exchange")
        try:
            ts, recv = int(c[self.ts_i]) * 1000, int(c[self.local_i]) * 1000
        except ValueError:
            ts, recv = _us(c[self.ts_i], "timestamp"), _us(c[self.local_i], "local_timestamp")
        if not (0 <= ts < 2**63 and 0 <= recv < 2**63):
            raise RowError(f"timestamp {ts // 1000} or local_timestamp {recv // 1000} is out "
                           "of range", path="$.timestamp", expected="µs since the epoch",
                           found=f"{ts // 1000},{recv // 1000}")
        sym = c[self.sym_i]
        return c, venue, names.get(sym) or names.name(sym, "symbol"), ts, recv


class TradesParser(_Parser):
    """``trades`` (or ``liquidations``: ``liquidation=True``) to trades."""

    columns = COLUMNS["trades"]
    required = ("side", "price", "amount")

    def __init__(self, header: list[str] | None, source: Source, *,
                 liquidation: bool = False) -> None:
        super().__init__(header, source)
        self.side_i, self.price_i, self.amount_i = (self.ix["side"], self.ix["price"],
                                                    self.ix["amount"])
        self.liquidation = liquidation

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c, venue, instrument, ts, recv = self.head(line)
        side = _SIDES.get(c[self.side_i].strip())
        if side is None:
            found = c[self.side_i].decode("utf-8", "replace").strip()
            raise RowError(f"side {found!r} is not buy or sell", path="$.side",
                           expected="buy or sell", found=found)
        return Trade(id=f"{self.prefix}{line_no}", venue=venue, instrument=instrument, ts=ts,
                     recv_ts=recv, price=positive(c[self.price_i], "price"),
                     qty=positive(c[self.amount_i], "amount"), side=side,
                     liquidation=self.liquidation)


class QuotesParser(_Parser):
    """``quotes`` (top of book) to quotes."""

    columns = COLUMNS["quotes"]
    required = columns

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c, venue, instrument, ts, recv = self.head(line)
        ix = self.ix
        return Quote(id=f"{self.prefix}{line_no}", venue=venue, instrument=instrument, ts=ts,
                     recv_ts=recv, bid=positive(c[ix["bid_price"]], "bid_price"),
                     bid_size=non_negative(c[ix["bid_amount"]], "bid_amount"),
                     ask=positive(c[ix["ask_price"]], "ask_price"),
                     ask_size=non_negative(c[ix["ask_amount"]], "ask_amount"))


class BookSnapshotParser(_Parser):
    """``book_snapshot_5`` / ``book_snapshot_25`` to a quote and a depth record."""

    def __init__(self, header: list[str] | None, source: Source, *, levels: int) -> None:
        self.columns = book_columns(levels)
        self.required = self.columns[:4]
        super().__init__(header, source)
        self.levels = [(self.ix[f"asks[{i}].price"], self.ix[f"asks[{i}].amount"],
                        self.ix[f"bids[{i}].price"], self.ix[f"bids[{i}].amount"])
                       for i in range(levels) if f"bids[{i}].amount" in self.ix]

    def _side(self, c: list[bytes], price_at: int, amount_at: int, side: str,
              ) -> list[tuple[float, float]]:
        out = []
        for level in self.levels:
            p, a = c[level[price_at]], c[level[amount_at]]
            if not p.strip():
                break  # a thin book: no more levels on this side
            out.append((positive(p, f"{side}.price"), non_negative(a, f"{side}.amount")))
        if not out:
            raise RowError(f"the {side} side is empty", path=f"$.{side}[0].price",
                           expected="at least one level", found="")
        return out

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c, venue, instrument, ts, recv = self.head(line)
        asks = self._side(c, 0, 1, "asks")
        bids = self._side(c, 2, 3, "bids")
        rid = f"{self.prefix}{line_no}"
        quote = Quote(id=rid, venue=venue, instrument=instrument, ts=ts, recv_ts=recv,
                      bid=bids[0][0], bid_size=bids[0][1], ask=asks[0][0], ask_size=asks[0][1])
        mid = (bids[0][0] + asks[0][0]) / 2
        reach = min((asks[-1][0] - mid) / mid, (mid - bids[-1][0]) / mid) * 100
        bands = [b for b in DEPTH_BANDS_PCT if b <= reach]
        if not bands:
            return quote
        bid_depth = [sum(a for p, a in bids if (mid - p) / mid * 100 <= b) for b in bands]
        ask_depth = [sum(a for p, a in asks if (p - mid) / mid * 100 <= b) for b in bands]
        return [quote, BookDepth(id=f"{rid}d", venue=venue, instrument=instrument, ts=ts,
                                 recv_ts=recv, bands_pct=bands, bid_depth=bid_depth,
                                 ask_depth=ask_depth, mid=mid)]


class DerivativeTickerParser(_Parser):
    """``derivative_ticker`` to funding rates and open interest."""

    columns = COLUMNS["derivative_ticker"]
    required = ("funding_rate", "open_interest", "index_price", "mark_price")

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c, venue, instrument, ts, recv = self.head(line)
        out: list[Any] = []
        rid = f"{self.prefix}{line_no}"
        rate = self._get(c, "funding_rate")
        if rate is not None:
            mark, index = self._get(c, "mark_price"), self._get(c, "index_price")
            nxt = self.ix.get("funding_timestamp")
            next_ts = _us(c[nxt], "funding_timestamp") if nxt is not None and \
                c[nxt].strip() else None
            for value, column in ((mark, "mark_price"), (index, "index_price")):
                if value is not None and value <= 0:
                    raise RowError(f"{column} {value!r} is not positive", path=f"$.{column}",
                                   expected="a number > 0", found=repr(value))
            out.append(FundingRate(id=rid, venue=venue, instrument=instrument, ts=ts,
                                   recv_ts=recv, rate=rate, mark_price=mark, index_price=index,
                                   next_funding_ts=next_ts,
                                   predicted_rate=self._get(c, "predicted_funding_rate")))
        oi = self._get(c, "open_interest")
        if oi is not None:
            if oi < 0:
                raise RowError(f"open_interest {oi!r} is negative", path="$.open_interest",
                               expected="a number >= 0", found=repr(oi))
            out.append(OpenInterest(id=f"{rid}oi", venue=venue, instrument=instrument, ts=ts,
                                    recv_ts=recv, open_interest=oi))
        if not out:
            raise RowError("neither a funding rate nor open interest", path="$.funding_rate",
                           expected="funding_rate or open_interest", found="")
        return out if len(out) > 1 else out[0]


class OptionsChainParser(_Parser):
    """``options_chain`` to option quotes (units: docs/formats.md)."""

    columns = COLUMNS["options_chain"]
    required = ("type", "strike_price", "expiration", "bid_price", "ask_price", "mark_price",
                "mark_iv", "underlying_price", "delta")

    def _or_zero(self, c: list[bytes], column: str) -> float:
        value = self._get(c, column)
        return 0.0 if value is None else value

    def _needed(self, c: list[bytes], column: str) -> float:
        value = self._get(c, column)
        if value is None:
            raise RowError(f"{column} is empty", path=f"$.{column}", expected="a number",
                           found="")
        return value

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c, venue, instrument, ts, recv = self.head(line)
        ix = self.ix
        kind = c[ix["type"]].strip().lower()
        if kind not in (b"call", b"put"):
            found = kind.decode("utf-8", "replace")
            raise RowError(f"type {found!r} is not call or put", path="$.type",
                           expected="call or put", found=found)
        under_px = positive(c[ix["underlying_price"]], "underlying_price")
        exchange = c[self.ex_i].strip().lower().decode("utf-8", "replace")
        coin = exchange in COIN_PRICED_EXCHANGES and not any(
            s in instrument for s in ("_USDC", "_USDT"))
        scale = under_px if coin else 1.0
        bid, ask = self._or_zero(c, "bid_price"), self._or_zero(c, "ask_price")
        mark, iv = self._needed(c, "mark_price"), self._needed(c, "mark_iv")
        for value, column in ((bid, "bid_price"), (ask, "ask_price"), (mark, "mark_price"),
                              (iv, "mark_iv")):
            if value < 0:
                raise RowError(f"{column} {value!r} is negative", path=f"$.{column}",
                               expected="a number >= 0", found=repr(value))
        underlying = instrument.split("-", 1)[0].split("_", 1)[0]
        return OptionQuote(
            id=f"{self.prefix}{line_no}", venue=venue, instrument=instrument, ts=ts,
            recv_ts=recv, underlying=name(underlying.encode(), "symbol"),
            expiry=_us(c[ix["expiration"]], "expiration"),
            strike=positive(c[ix["strike_price"]], "strike_price"),
            option_type=OptionType.CALL if kind == b"call" else OptionType.PUT,
            bid=bid * scale, ask=ask * scale, mark_price=mark * scale,
            mark_iv=iv * 0.01, underlying_price=under_px,  # tardis: iv in percent
            delta=self._needed(c, "delta"), gamma=self._or_zero(c, "gamma"),
            vega=self._or_zero(c, "vega"), theta=self._or_zero(c, "theta"))


PARSERS: dict[str, ParserFactory] = {
    "tardis_trades": factory(TradesParser),
    "tardis_liquidations": factory(TradesParser, liquidation=True),
    "tardis_quotes": factory(QuotesParser),
    "tardis_book_snapshot_5": factory(BookSnapshotParser, levels=5),
    "tardis_book_snapshot_25": factory(BookSnapshotParser, levels=25),
    "tardis_derivative_ticker": factory(DerivativeTickerParser),
    "tardis_options_chain": factory(OptionsChainParser),
}
"""Format name to parser factory."""
