"""Market data: trades, quotes, bars, option quotes, index prices, funding, open interest,
premium-index bars, venue status."""

from __future__ import annotations

import math
from enum import StrEnum

from riskguard.schemas.base import Sourced
from riskguard.schemas.types import (
    CachedName,
    DurationNs,
    Finite,
    MarketName,
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


class Measure(StrEnum):
    """What a bar's values are. Detection judges a move by what moved: a fall that
    halts a price market is an ordinary day for an implied-volatility index."""

    PRICE = "price"  # a price in the quote currency: traded, mark or index
    VOLATILITY = "volatility"  # a volatility index, in % per year (Deribit's DVOL)


class VenueState(StrEnum):
    """A venue's self-reported or observed health."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class MarketEvent(Sourced, frozen=True, kw_only=True):
    """Fields every market event carries.

    ``ts`` is the exchange (event) time; ``recv_ts`` is when we received it.
    ``feed`` names the feed it came through (``primary`` or ``backup``). The reader
    stamps where it read it (:class:`~riskguard.schemas.base.Sourced`), so a step that
    refuses it later names the input.
    """

    id: RecordId
    venue: CachedName
    instrument: CachedName
    ts: Nanos
    recv_ts: Nanos | None = None
    feed: CachedName = "primary"


class Trade(MarketEvent, frozen=True, kw_only=True, tag="trade"):
    """One execution: ``qty`` in the base asset, ``price`` in the quote currency, ``side``
    the aggressor's. ``liquidation`` marks a venue's forced close of a position (its side
    is the liquidation order's: ``sell`` closes a long)."""

    price: Positive
    qty: Positive
    side: Side
    liquidation: bool = False


def mid_price(bid: float, ask: float) -> float:
    """The middle of ``bid`` and ``ask``, also where their sum passes the largest float
    (past 9e307 each: halved first) and down to the smallest (5e-324 each).

    >>> mid_price(99.0, 101.0), mid_price(1.7e308, 1.7e308), mid_price(5e-324, 5e-324)
    (100.0, 1.7e+308, 5e-324)
    """
    mid = (bid + ask) / 2.0
    return mid if mid != math.inf else bid / 2.0 + ask / 2.0


class Quote(MarketEvent, frozen=True, kw_only=True, tag="quote"):
    """Top of book."""

    bid: Positive
    bid_size: NonNegative
    ask: Positive
    ask_size: NonNegative

    @property
    def mid(self) -> float:
        """The middle of bid and ask (:func:`mid_price`)."""
        return mid_price(self.bid, self.ask)


class Bar(MarketEvent, frozen=True, kw_only=True, tag="bar"):
    """An OHLCV bar (a kline) over ``[start, ts)``: ``ts`` is the bar's close time.

    ``volume`` is in the base asset and ``quote_volume`` in the quote currency;
    ``trades`` and ``taker_buy_volume`` are given where the source has them.
    ``price_only`` marks a mark-, index- or premium-price kline: its volume
    fields carry nothing. ``measure`` says what the values are: prices, or a
    volatility index (:class:`Measure`). Exchanges publish klines live too, so a bar is a
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
    measure: Measure = Measure.PRICE


class PremiumIndexBar(MarketEvent, frozen=True, kw_only=True, tag="premium_index_bar"):
    """A premium-index kline over ``[start, ts)`` (Binance ``premiumIndexKlines``).

    The values are the perpetual's premium over its index, a signed fraction
    (``0.0001`` = 1 bp), not prices: this is its own record so that no consumer of
    :class:`Bar` reads them as prices. ``low <= open, close <= high``.
    """

    start: Nanos
    interval_ns: DurationNs
    open: Finite
    high: Finite
    low: Finite
    close: Finite


class OpenInterest(MarketEvent, frozen=True, kw_only=True, tag="open_interest"):
    """A derivative's open interest, with the positioning ratios some sources carry.

    ``open_interest`` is in the venue's own unit for the instrument: contracts (on a
    linear contract such as Binance USDT-M, that is the base asset). ``base_qty`` is the
    same in the base asset and ``value`` in the quote currency, where known. The ratios
    (Binance ``metrics``) are long/short: ``top_account_ratio`` and
    ``top_position_ratio`` of the top traders by account and by position,
    ``account_ratio`` of all accounts, and ``taker_buy_sell_ratio`` of taker volume.
    """

    open_interest: NonNegative
    base_qty: NonNegative | None = None
    value: NonNegative | None = None
    top_account_ratio: NonNegative | None = None
    top_position_ratio: NonNegative | None = None
    account_ratio: NonNegative | None = None
    taker_buy_sell_ratio: NonNegative | None = None


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
    """A perpetual's funding rate (per funding interval) with its mark and index.

    ``predicted_rate`` is the venue's estimate of the next interval's rate, where it
    publishes one.
    """

    rate: Finite
    mark_price: Positive | None = None
    index_price: Positive | None = None
    next_funding_ts: Nanos | None = None
    predicted_rate: Finite | None = None


class VenueStatus(Sourced, frozen=True, kw_only=True, tag="venue_status"):
    """A venue heartbeat or status change on one feed."""

    id: RecordId
    venue: MarketName
    ts: Nanos
    recv_ts: Nanos | None = None
    feed: MarketName = "primary"
    state: VenueState = VenueState.OK
    seq: Seq = 0
    withdrawals_enabled: bool = True


MARKET_TYPES = (Trade, Quote, Bar, BookDepth, OptionQuote, IndexPrice, FundingRate, VenueStatus,
                PremiumIndexBar, OpenInterest)
