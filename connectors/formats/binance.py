"""Binance public data dumps (data.binance.vision) as wire-contract records.

docs/formats.md lists each format's columns, units and the record it gives. Times are
milliseconds, or microseconds in spot files dated 2025-01-01 on, told by the date in
the file's name, never by a value's size. COIN-M quantities count contracts of
``contract_size`` USD and are converted to the base asset.

>>> import tempfile, pathlib
>>> from riskguard.connectors.formats.core import FileReader, Source
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "BTCUSD_PERP-trades-2024-01-01.csv").write_text(
...     "id,price,qty,base_qty,time,is_buyer_maker\\n7,40000.0,3,0.0075,1704067200123,true\\n")
>>> src = Source(name="BTCUSD_PERP-trades-2024-01-01.csv", venue="binance_cm",
...              instrument="BTCUSD_PERP", market="cm")
>>> reader = FileReader(d / src.name, PARSERS["binance_trades"], source=src)
>>> [(t.price, t.qty, t.side.value, t.ts) for _, _, t in reader.lines()]
[(40000.0, 0.0075, 'sell', 1704067200123000000)]
>>> reader.close()
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from riskguard.connectors.formats.cells import (
    MAX_FLOAT,
    MAX_TS,
    MIN_TS,
    MS_NS,
    US_NS,
    RowError,
    datetime_ns,
    flag,
    name,
    non_negative,
    number,
    optional,
    positive,
    split_row,
    whole,
)
from riskguard.connectors.formats.core import (
    ParserFactory,
    RowFailure,
    RowParser,
    Source,
    factory,
)
from riskguard.schemas.market import (
    Bar,
    BookDepth,
    FundingRate,
    OpenInterest,
    PremiumIndexBar,
    Quote,
    Side,
    Trade,
)

_KLINE_ROW = msgspec.json.Decoder(
    tuple[int, float, float, float, float, float, int, float, int, float, Any, Any])
KLINE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time",
                 "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume",
                 "ignore")


def default_contract_size(symbol: str) -> float:
    """A COIN-M contract's value in USD: 100 for BTC, 10 for every other coin."""
    return 100.0 if symbol.upper().startswith("BTC") else 10.0


def unit_ns(source: Source) -> int:
    """ns per unit of the file's times, as its format states it (:attr:`Source.time_unit`:
    µs for spot files dated 2025-01-01 on, else ms); never guessed from a value."""
    return US_NS if source.time_unit == "us" else MS_NS


def _time(cell: bytes, column: str, unit: int) -> int:
    value = whole(cell, column)
    return plausible_time(value * unit, column, value, unit)


def plausible_time(ts: int, column: str, value: int, unit: int) -> int:
    """``ts`` if within the plausible bounds, else a :class:`RowError` naming the file's
    unit (a µs time in a ms file reads as the year 50,000; a ms time in a µs file as
    1970)."""
    if MIN_TS <= ts <= MAX_TS:
        return ts
    name = "µs" if unit == US_NS else "ms"
    raise RowError(f"{column} {value} read in {name} is {_year(ts)}, outside the plausible "
                   f"{_year(MIN_TS)}..{_year(MAX_TS)} (spot files dated 2025-01-01 on give "
                   "µs, every other Binance file ms: a file renamed from Binance's name "
                   "loses its date)", path=f"$.{column}",
                   expected=f"{name} since the epoch, {_year(MIN_TS)}..{_year(MAX_TS)}",
                   found=str(value))


def _year(ts: int) -> str:
    return f"the year {1970 + ts / (365.2425 * 86_400e9):.0f}"


def _columns(header: list[str] | None, wanted: dict[str, tuple[str, ...]],
             positions: dict[str, int], required: tuple[str, ...]) -> dict[str, int]:
    """Column index per logical name: by header name (first alias found), else by
    position; a header without a required column is a ``malformed`` RowError."""
    if header is None:
        return dict(positions)
    index = {n: i for i, n in enumerate(header)}
    out: dict[str, int] = {}
    for key, aliases in wanted.items():
        for alias in aliases:
            if alias in index:
                out[key] = index[alias]
                break
    missing = [wanted[k][0] for k in required if k not in out]
    if missing:
        raise RowError(f"header lacks column(s) {', '.join(missing)}; file not read",
                       expected=f"a header with {', '.join(wanted[k][0] for k in required)}",
                       found=",".join(header)[:200], reason="malformed")
    return out


def _ohlc_error(o: float, h: float, lo: float, c: float, *, prices: bool) -> RowError:
    what = "0 < low" if prices else "low"
    return RowError(f"not {what} <= open, close <= high (open={o!r} high={h!r} low={lo!r} "
                    f"close={c!r})", path="$.low", expected=f"{what} <= open, close <= high",
                    found=f"open={o!r} high={h!r} low={lo!r} close={c!r}")


class _BinanceParser(RowParser):
    """A parser of one Binance file: where its rows come from and in what units."""

    def _bind(self, source: Source, *, coin_m: bool = False) -> None:
        """Ids ``<file stem>@<line>``, the file's venue, instrument and time unit; a
        COIN-M file (``coin_m``) counts contracts of ``contract_size``."""
        self.coin_m, self.size = coin_m, source.contract_size
        self.prefix = f"{source.stem}@"
        self.venue, self.instrument = source.venue, source.instrument
        self.unit = unit_ns(source)


# ---------------------------------------------------------------------------- klines


class KlineParser(_BinanceParser):
    """Klines (trade, mark- or index-price) to bars; premium-index klines to
    :class:`PremiumIndexBar` (``premium=True``)."""

    def __init__(self, header: list[str] | None, source: Source, *,
                 price_only: bool = False, premium: bool = False) -> None:
        if header is not None:
            if header[:7] != list(KLINE_COLUMNS[:7]):
                raise RowError("header is not a kline header; file not read",
                               expected=",".join(KLINE_COLUMNS[:7]),
                               found=",".join(header)[:200], reason="malformed")
            coin_m = len(header) > 7 and header[7] == "base_volume"
        else:
            coin_m = source.market == "cm"
        self._bind(source, coin_m=coin_m)
        self.price_only, self.premium = price_only, premium
        self.slow = coin_m or price_only or premium

    def _times(self, c: list[bytes]) -> tuple[int, int]:
        try:
            open_t, close_t = int(c[0]), int(c[6])
        except ValueError:
            open_t, close_t = whole(c[0], "open_time"), whole(c[6], "close_time")
        unit = self.unit
        start, end = open_t * unit, (close_t + 1) * unit
        plausible_time(start, "open_time", open_t, unit)
        if end <= start or end > MAX_TS:
            raise RowError(f"close_time {close_t} is not after open_time {open_t}",
                           path="$.close_time", expected="open_time <= close_time",
                           found=f"open_time={open_t} close_time={close_t}")
        return start, end

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        if self.slow:
            return self.checked_row(line.split(b","), line, line_no)
        # fast path: the twelve numbers read as one JSON array by msgspec; anything
        # unusual takes checked_row, which names what is wrong
        try:
            ot, o, h, lo, cl, v, ct, q, n, tb, _, _ = _KLINE_ROW.decode(b"[" + line + b"]")
        except msgspec.DecodeError:
            return self.checked_row(line.split(b","), line, line_no)
        unit = self.unit
        start, end = ot * unit, (ct + 1) * unit
        if not (MIN_TS <= start < end <= MAX_TS and 0.0 < lo <= o <= h and lo <= cl <= h
                <= MAX_FLOAT and 0.0 <= v <= MAX_FLOAT and 0.0 <= q <= MAX_FLOAT and n >= 0
                and 0.0 <= tb <= MAX_FLOAT):
            return self.checked_row(line.split(b","), line, line_no)
        return Bar(id=f"{self.prefix}{line_no}", venue=self.venue, instrument=self.instrument,
                   ts=end, start=start, interval_ns=end - start, open=o, high=h, low=lo,
                   close=cl, volume=v, quote_volume=q, trades=n, taker_buy_volume=tb,
                   price_only=v == 0.0 and not q)

    def checked_row(self, c: list[bytes], line: bytes, line_no: int) -> Any:
        """Any kline row, every value checked (a RowError names the first bad one)."""
        if len(c) < 12:
            c = split_row(line, 7)
        start, end = self._times(c)
        try:
            o, h, lo, cl = float(c[1]), float(c[2]), float(c[3]), float(c[4])
        except ValueError:
            o, h, lo, cl = (number(c[i], n) for i, n in
                            ((1, "open"), (2, "high"), (3, "low"), (4, "close")))
        if self.premium:
            if not (lo <= o <= h and lo <= cl <= h and lo >= -MAX_FLOAT and h <= MAX_FLOAT):
                raise _ohlc_error(o, h, lo, cl, prices=False)
            return PremiumIndexBar(
                id=f"{self.prefix}{line_no}", venue=self.venue, instrument=self.instrument,
                ts=end, start=start, interval_ns=end - start, open=o, high=h, low=lo, close=cl)
        if not (0.0 < lo <= o <= h and lo <= cl <= h <= MAX_FLOAT):
            raise _ohlc_error(o, h, lo, cl, prices=True)
        if self.price_only:
            return Bar(id=f"{self.prefix}{line_no}", venue=self.venue,
                       instrument=self.instrument, ts=end, start=start,
                       interval_ns=end - start, open=o, high=h, low=lo, close=cl,
                       price_only=True)
        volume, quote, trades, taker = self._volumes(c, cl)
        return Bar(id=f"{self.prefix}{line_no}", venue=self.venue, instrument=self.instrument,
                   ts=end, start=start, interval_ns=end - start, open=o, high=h, low=lo,
                   close=cl, volume=volume, quote_volume=quote, trades=trades,
                   taker_buy_volume=taker, price_only=volume == 0.0 and not quote)

    def _volumes(self, c: list[bytes], close: float,
                 ) -> tuple[float, float | None, int | None, float | None]:
        n = len(c)
        try:
            volume = float(c[5])
            quote = float(c[7]) if n > 7 else None
            trades = int(c[8]) if n > 8 else None
            taker = float(c[9 if not self.coin_m else 10]) if n > 10 else None
        except ValueError:
            volume = number(c[5], "volume")
            quote = number(c[7], "quote_volume") if n > 7 else None
            trades = whole(c[8], "count") if n > 8 else None
            taker = number(c[9 if not self.coin_m else 10], "taker_buy_volume") \
                if n > 10 else None
        if self.coin_m:  # volume counts contracts; the 8th column is the base volume
            contracts = volume
            volume = quote if quote is not None else contracts * self.size / close
            quote = contracts * self.size
        for value, column in ((volume, "volume"), (quote, "quote_volume"),
                              (taker, "taker_buy_volume")):
            if value is not None and not 0.0 <= value <= MAX_FLOAT:
                raise RowError(f"{column} {value!r} is not a number >= 0", path=f"$.{column}",
                               expected="a number >= 0", found=repr(value))
        if trades is not None and trades < 0:
            raise RowError(f"count {trades} is negative", path="$.count",
                           expected="a count >= 0", found=str(trades))
        return volume, quote, trades, taker


# ---------------------------------------------------------------------------- trades


class TradeParser(_BinanceParser):
    """``trades`` (``agg=False``) and ``aggTrades`` (``agg=True``) to trades."""

    def __init__(self, header: list[str] | None, source: Source, *, agg: bool) -> None:
        coin_m = source.market == "cm"
        if agg:
            cols = _columns(header, {
                "price": ("price",), "qty": ("quantity", "qty"),
                "time": ("transact_time", "time"), "maker": ("is_buyer_maker",)},
                {"price": 1, "qty": 2, "time": 5, "maker": 6},
                ("price", "qty", "time", "maker"))
            self.base = None
        else:
            cols = _columns(header, {
                "price": ("price",), "qty": ("qty", "quantity"), "base": ("base_qty",),
                "time": ("time", "transact_time"), "maker": ("is_buyer_maker",)},
                {"price": 1, "qty": 2, "time": 4, "maker": 5} | ({"base": 3} if coin_m else {}),
                ("price", "qty", "time", "maker"))
            self.base = cols.get("base")
            coin_m = coin_m or self.base is not None
        self._bind(source, coin_m=coin_m)
        self.price_i, self.qty_i = cols["price"], cols["qty"]
        self.time_i, self.maker_i = cols["time"], cols["maker"]
        self.width = max(cols.values()) + 1

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = line.split(b",")
        if len(c) < self.width:
            c = split_row(line, self.width)
        price = positive(c[self.price_i], "price")
        if self.base is not None:
            qty = positive(c[self.base], "base_qty")
        elif self.coin_m:
            qty = positive(c[self.qty_i], "qty") * self.size / price
        else:
            qty = positive(c[self.qty_i], "qty")
        maker = c[self.maker_i]
        sell = maker in (b"true", b"True") or flag(maker, "is_buyer_maker")
        return Trade(id=f"{self.prefix}{line_no}", venue=self.venue, instrument=self.instrument,
                     ts=_time(c[self.time_i], "time", self.unit), price=price, qty=qty,
                     side=Side.SELL if sell else Side.BUY)


# ---------------------------------------------------------------------------- book


class BookTickerParser(_BinanceParser):
    """``bookTicker`` (futures) to top-of-book quotes at ``transaction_time``."""

    def __init__(self, header: list[str] | None, source: Source) -> None:
        names = ("best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty",
                 "transaction_time")
        self.cols = _columns(header, {n: (n,) for n in names},
                             {n: i + 1 for i, n in enumerate(names)}, names)
        self.width = max(self.cols.values()) + 1
        self._bind(source, coin_m=source.market == "cm")
        ix = self.cols
        self.at = (ix["best_bid_price"], ix["best_ask_price"], ix["best_bid_qty"],
                   ix["best_ask_qty"], ix["transaction_time"])

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = line.split(b",")
        if len(c) < self.width:
            c = split_row(line, self.width)
        b, a, bq, aq, t = self.at
        bid = positive(c[b], "best_bid_price")
        ask = positive(c[a], "best_ask_price")
        bid_size = non_negative(c[bq], "best_bid_qty")
        ask_size = non_negative(c[aq], "best_ask_qty")
        if self.coin_m:
            bid_size, ask_size = bid_size * self.size / bid, ask_size * self.size / ask
        return Quote(id=f"{self.prefix}{line_no}", venue=self.venue, instrument=self.instrument,
                     ts=_time(c[t], "transaction_time", self.unit), bid=bid, bid_size=bid_size,
                     ask=ask, ask_size=ask_size)


MAX_SNAPSHOT_ROWS = 64
"""The rows one ``bookDepth`` snapshot may have (Binance's have 10: -5 % to 5 %)."""


class BookDepthParser(_BinanceParser):
    """``bookDepth``: the rows of one timestamp make one :class:`BookDepth`
    (docs/formats.md); a snapshot whose sides do not have the same bands is skipped,
    each of its rows a dead letter, and so is one of more than :data:`MAX_SNAPSHOT_ROWS`
    rows or with :data:`~riskguard.connectors.formats.core.MAX_REFUSED_IN_GROUP` refused
    rows among them (what a snapshot holds while it gathers is bounded).
    """

    grouped = True

    def __init__(self, header: list[str] | None, source: Source) -> None:
        self.cols = _columns(header, {
            "timestamp": ("timestamp",), "percentage": ("percentage",), "depth": ("depth",),
            "notional": ("notional",), "wap": ("weighted_avg_price",)},
            {"timestamp": 0, "percentage": 1, "depth": 2, "notional": 3},
            ("timestamp", "percentage", "depth"))
        self.width = max(self.cols.values()) + 1
        self._bind(source, coin_m=source.market == "cm")
        self.ts = -1
        self.rows: list[tuple[bytes, int, int, float, float, float]] = []
        self.start: int | None = None
        self.refused_ts = -1  # the time of a snapshot refused whole

    def pending(self) -> int | None:
        return self.start

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = split_row(line, self.width)
        ix = self.cols
        ts = datetime_ns(c[ix["timestamp"]], "timestamp")
        if ts == self.refused_ts:
            raise RowError(f"snapshot {ts} was refused", path="$.timestamp",
                           expected=f"at most {MAX_SNAPSHOT_ROWS} rows a snapshot",
                           found="a row of a snapshot refused whole")
        pct = number(c[ix["percentage"]], "percentage")
        if pct == 0:
            raise RowError("percentage 0 is neither side", path="$.percentage",
                           expected="-5..-1 (bids) or 1..5 (asks)", found="0")
        depth = non_negative(c[ix["depth"]], "depth")
        notional = optional(c[ix["notional"]], "notional") if "notional" in ix else None
        wap = optional(c[ix["wap"]], "weighted_avg_price") if "wap" in ix else None
        if self.coin_m:
            if notional is None:
                raise RowError("a COIN-M depth row needs its notional (base coin)",
                               path="$.notional", expected="a number", found="")
            depth, notional = notional, depth * self.size
        if wap is None:
            wap = notional / depth if notional and depth else math.nan
        out = self._close() if ts != self.ts and self.rows else None
        if ts != self.ts:
            self.ts, self.start = ts, offset
        self.rows.append((line, line_no, offset, pct, depth, wap))
        if len(self.rows) > MAX_SNAPSHOT_ROWS:
            return self.abandon(f"more than {MAX_SNAPSHOT_ROWS} rows")
        return out

    def end(self) -> Any:
        return self._close() if self.rows else None

    def abandon(self, why: str) -> list[RowFailure]:
        """The open snapshot refused whole (its rows, and the later rows of its time,
        dead letters)."""
        rows, self.rows = self.rows, []
        self.start, self.refused_ts = None, self.ts
        err = RowError(f"snapshot {self.ts} refused: {why}", path="$.timestamp",
                       expected=f"at most {MAX_SNAPSHOT_ROWS} rows a snapshot", found=why)
        return [RowFailure(line, n, off, err) for line, n, off, *_ in rows]

    def _close(self) -> Any:
        rows, self.rows = self.rows, []
        ts = self.ts
        self.start = None
        bids = {-p: (d, w) for _, _, _, p, d, w in rows if p < 0}
        asks = {p: (d, w) for _, _, _, p, d, w in rows if p > 0}
        n_bid = sum(1 for r in rows if r[3] < 0)
        if set(bids) != set(asks) or n_bid != len(bids) or len(rows) - n_bid != len(asks):
            err = RowError(f"snapshot {ts} has bid bands {sorted(bids)} and ask bands "
                           f"{sorted(asks)} over {len(rows)} rows; snapshot skipped",
                           path="$.percentage", expected="the same bands on both sides",
                           found=f"bids {sorted(bids)} asks {sorted(asks)}")
            return [RowFailure(line, n, off, err) for line, n, off, *_ in rows]
        bands = sorted(bids)
        mid = None
        if 1.0 in bids:
            pair = (bids[1.0][1], asks[1.0][1])
            if all(math.isfinite(p) and p > 0 for p in pair):
                mid = (pair[0] + pair[1]) / 2
        return BookDepth(id=f"{self.prefix}{rows[0][1]}", venue=self.venue,
                         instrument=self.instrument, ts=ts, bands_pct=bands,
                         bid_depth=[bids[b][0] for b in bands],
                         ask_depth=[asks[b][0] for b in bands], mid=mid)


# ---------------------------------------------------------------------------- funding, metrics


class FundingParser(_BinanceParser):
    """``fundingRate``: one :class:`FundingRate` per funding time (``calc_time``)."""

    def __init__(self, header: list[str] | None, source: Source) -> None:
        self.cols = _columns(header, {"calc_time": ("calc_time",),
                                      "rate": ("last_funding_rate", "funding_rate")},
                             {"calc_time": 0, "rate": 2}, ("calc_time", "rate"))
        self.width = max(self.cols.values()) + 1
        self._bind(source)

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = split_row(line, self.width)
        return FundingRate(id=f"{self.prefix}{line_no}", venue=self.venue,
                           instrument=self.instrument,
                           ts=_time(c[self.cols["calc_time"]], "calc_time", self.unit),
                           rate=number(c[self.cols["rate"]], "last_funding_rate"))


METRICS_COLUMNS = ("create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                   "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio",
                   "count_long_short_ratio", "sum_taker_long_short_vol_ratio")


class MetricsParser(_BinanceParser):
    """``metrics`` (futures, every 5 minutes): open interest and long/short ratios; a
    COIN-M file counts contracts, its USD value ``contracts * contract_size``."""

    def __init__(self, header: list[str] | None, source: Source) -> None:
        self.cols = _columns(header, {n: (n,) for n in METRICS_COLUMNS},
                             {n: i for i, n in enumerate(METRICS_COLUMNS)},
                             ("create_time", "sum_open_interest"))
        self.width = max(self.cols.values()) + 1
        self._bind(source, coin_m=source.market == "cm")

    def _ratio(self, c: list[bytes], column: str) -> float | None:
        i = self.cols.get(column)
        if i is None or i >= len(c):
            return None
        value = optional(c[i], column)
        if value is not None and value < 0:
            raise RowError(f"{column} {value!r} is negative", path=f"$.{column}",
                           expected="a ratio >= 0", found=repr(value))
        return value

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        c = split_row(line, self.width)
        ix = self.cols
        oi = non_negative(c[ix["sum_open_interest"]], "sum_open_interest")
        value = self._ratio(c, "sum_open_interest_value")
        if self.coin_m:
            base, value = value, oi * self.size
        else:
            base = oi
        instrument = name(c[ix["symbol"]], "symbol") if "symbol" in ix else self.instrument
        return OpenInterest(
            id=f"{self.prefix}{line_no}", venue=self.venue, instrument=instrument,
            ts=datetime_ns(c[ix["create_time"]], "create_time"), open_interest=oi,
            base_qty=base, value=value,
            top_account_ratio=self._ratio(c, "count_toptrader_long_short_ratio"),
            top_position_ratio=self._ratio(c, "sum_toptrader_long_short_ratio"),
            account_ratio=self._ratio(c, "count_long_short_ratio"),
            taker_buy_sell_ratio=self._ratio(c, "sum_taker_long_short_vol_ratio"))


PARSERS: dict[str, ParserFactory] = {
    "binance_klines": factory(KlineParser),
    "binance_mark_price_klines": factory(KlineParser, price_only=True),
    "binance_index_price_klines": factory(KlineParser, price_only=True),
    "binance_premium_index_klines": factory(KlineParser, premium=True),
    "binance_trades": factory(TradeParser, agg=False),
    "binance_agg_trades": factory(TradeParser, agg=True),
    "binance_book_ticker": factory(BookTickerParser),
    "binance_book_depth": factory(BookDepthParser),
    "binance_funding": factory(FundingParser),
    "binance_metrics": factory(MetricsParser),
}
"""Format name to parser factory."""
