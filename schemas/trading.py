"""Our own trading state: fills, position snapshots, balances, open orders."""

from __future__ import annotations

from riskguard.schemas.base import Sourced
from riskguard.schemas.market import Side
from riskguard.schemas.types import Finite, MarketName, Nanos, NonNegative, Positive, RecordId


class Fill(Sourced, frozen=True, kw_only=True, tag="fill"):
    """One execution of ours at a venue or with a counterparty."""

    id: RecordId
    venue: MarketName
    counterparty: MarketName
    instrument: MarketName
    side: Side
    qty: Positive
    price: Positive
    fee: Finite = 0.0
    fee_asset: MarketName | None = None
    order_id: RecordId | None = None
    ts: Nanos
    recv_ts: Nanos | None = None


class PositionSnapshot(Sourced, frozen=True, kw_only=True, tag="position"):
    """The authoritative position reported by a venue; it reconciles fills.

    ``qty`` is signed: positive long, negative short.
    """

    id: RecordId
    venue: MarketName
    counterparty: MarketName
    instrument: MarketName
    qty: Finite
    avg_price: NonNegative | None = None
    ts: Nanos
    recv_ts: Nanos | None = None


class Balance(Sourced, frozen=True, kw_only=True, tag="balance"):
    """Collateral or balance of ``asset`` held at ``counterparty``.

    This is credit exposure to the counterparty itself.
    """

    id: RecordId
    venue: MarketName
    counterparty: MarketName
    asset: MarketName
    total: Finite
    available: Finite | None = None
    locked: NonNegative = 0.0
    ts: Nanos
    recv_ts: Nanos | None = None


class OpenOrders(Sourced, frozen=True, kw_only=True, tag="open_orders"):
    """Open-order notional resting at a counterparty for one instrument."""

    id: RecordId
    venue: MarketName
    counterparty: MarketName
    instrument: MarketName
    notional: NonNegative
    ts: Nanos
    recv_ts: Nanos | None = None


TRADING_TYPES = (Fill, PositionSnapshot, Balance, OpenOrders)
