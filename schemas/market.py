"""Market data: trades, quotes, bars, option quotes, index prices, funding, venue status."""

from __future__ import annotations

from enum import StrEnum

from riskguard.schemas.base import Record
from riskguard.schemas.types import (
    CachedName,
    DurationNs,
    Finite,
    Name,
    Nanos,
    NonNegative,
    Positive,
    RecordId,
    Seq,
)


class Side(StrEnum):
    """Aggressor or order side."""

    BUY = "buy"
    SELL = "sell"


class OptionType(StrEnum):
    CALL = "call"
    PUT = "put"


class VenueState(StrEnum):
    """A venue's self-reported or observed health."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class MarketEvent(Record, frozen=True, kw_only=True):
    """Fields every market event carries.

    ``ts`` is the exchange (event) time; ``recv_ts`` is when we received it.
    ``feed`` names the feed it came through (``primary`` or ``backup``).
    """

    id: RecordId
    venue: CachedName
    instrument: CachedName
    ts: Nanos
    recv_ts: Nanos | None = None
    feed: CachedName = "primary"


class Trade(MarketEvent, frozen=True, kw_only=True, tag="trade"):
    price: Positive
    qty: Positive
    side: Side


class Quote(MarketEvent, frozen=True, kw_only=True, tag="quote"):
    """Top of book."""

    bid: Positive
    bid_size: NonNegative
    ask: Positive
    ask_size: NonNegative


class Bar(MarketEvent, frozen=True, kw_only=True, tag="bar"):
    """An OHLCV bar (a kline) over ``[start, ts)``: ``ts`` is the bar's close time.

    ``volume`` is in the base asset and ``quote_volume`` in the quote currency;
    ``trades`` and ``taker_buy_volume`` are given where the source has them.
    ``price_only`` marks a mark-, index- or premium-price kline: its volume
    fields carry nothing. Exchanges publish klines live too, so a bar is a
    feed, not only a backtest format. ``low <= open, close <= high`` is
    checked where bars are consumed.
    """

    start: Nanos
    interval_ns: DurationNs
    open: Positive
    high: Positive
    low: Positive
    close: Positive
    volume: NonNegative = 0.0
    quote_volume: NonNegative | None = None
    trades: Seq | None = None
    taker_buy_volume: NonNegative | None = None
    price_only: bool = False


class BookDepth(MarketEvent, frozen=True, kw_only=True, tag="book_depth"):
    """Cumulative order-book depth within bands around the mid (Binance ``bookDepth``).

    ``bands_pct[i]`` is a distance from the mid in percent (``1.0`` = 1 %);
    ``bid_depth[i]`` and ``ask_depth[i]`` are the base-asset quantity resting
    within that distance on each side. ``mid`` is the reference price where the
    source gives or implies one.
    """

    bands_pct: list[Positive]
    bid_depth: list[NonNegative]
    ask_depth: list[NonNegative]
    mid: Positive | None = None


class OptionQuote(MarketEvent, frozen=True, kw_only=True, tag="option_quote"):
    """An option's quote with mark implied volatility and greeks.

    ``delta`` is per unit of underlying; ``mark_price`` is in the quote currency.
    """

    underlying: CachedName
    expiry: Nanos
    strike: Positive
    option_type: OptionType
    bid: NonNegative
    ask: NonNegative
    mark_price: NonNegative
    mark_iv: NonNegative
    underlying_price: Positive
    delta: Finite
    gamma: Finite = 0.0
    vega: Finite = 0.0
    theta: Finite = 0.0


class IndexPrice(MarketEvent, frozen=True, kw_only=True, tag="index_price"):
    """An index or oracle price. ``venue`` names the index provider."""

    price: Positive


class FundingRate(MarketEvent, frozen=True, kw_only=True, tag="funding_rate"):
    """A perpetual's funding rate (per funding interval) with its mark and index."""

    rate: Finite
    mark_price: Positive | None = None
    index_price: Positive | None = None
    next_funding_ts: Nanos | None = None


class VenueStatus(Record, frozen=True, kw_only=True, tag="venue_status"):
    """A venue heartbeat or status change on one feed."""

    id: RecordId
    venue: Name
    ts: Nanos
    recv_ts: Nanos | None = None
    feed: Name = "primary"
    state: VenueState = VenueState.OK
    seq: Seq = 0
    withdrawals_enabled: bool = True


MARKET_TYPES = (Trade, Quote, Bar, BookDepth, OptionQuote, IndexPrice, FundingRate, VenueStatus)
