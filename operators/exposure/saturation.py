"""Amounts past the largest float: how they travel between the exposure stages.

A position's notional can pass the largest float (1e308 BTC at 60,000), and opposite
ones can leave no number at all (inf - inf). Such an amount reads as the largest float
of its sign (no number: the largest), past every limit. A stage-1 :class:`Part` carries
it so (:func:`bounded_part`): JSON, the market tier's wire, holds no infinity. Stage 2
reads a part's largest floats back as infinities before it adds parts up
(:func:`restored_part`), so two saturated parts of opposite signs make no number, the
largest, as one shard's sum does, never a finite 0; the firm rollup reads the
counterparties' exposures so too (:func:`restored_exposure`).

>>> import math
>>> p = bounded_part(Part("okx", "s0", 1, 5, math.inf, math.nan, 0.0, 0.0, 0.0,
...                       {"BTC": -math.inf}, {"BTC": -math.inf}, ["BTC-PERP"], [math.inf],
...                       bytes(8), 0, [], {}, {}, []))
>>> p.gross == MAX_FLOAT, p.net == MAX_FLOAT, p.delta, saturated(p)
(True, True, {'BTC': -1.7976931348623157e+308}, True)
>>> restored_part(p).delta, restored_part(p).notionals
({'BTC': -inf}, [1.7976931348623157e+308])
"""

from __future__ import annotations

import math
from itertools import chain

import msgspec
from riskguard.schemas import Exposure
from riskguard.schemas.types import MAX_FLOAT
from riskguard.schemas.valuation import Part


def bounded(x: float) -> float:
    """``x`` within the range a float can hold: past it, the largest float of its sign;
    no number at all (inf - inf), the largest."""
    return MAX_FLOAT if math.isnan(x) else max(-MAX_FLOAT, min(MAX_FLOAT, x))


def _unbounded(x: float) -> float:
    """A largest float read back as the infinity of its sign."""
    return math.copysign(math.inf, x) if abs(x) >= MAX_FLOAT else x


def bounded_part(p: Part) -> Part:
    """``p`` with every amount within the range a float can hold (``p`` itself when all
    are). A finite gross bounds the net, the notionals and the by-asset sums."""
    total = p.gross + p.upnl + p.orders + p.collateral + sum(p.delta.values())
    if math.isfinite(total) or (math.isfinite(p.gross) and _finite(p)):
        return p
    delta = {k: bounded(v) for k, v in p.delta.items()}
    return msgspec.structs.replace(
        p, gross=bounded(p.gross), net=bounded(p.net), upnl=bounded(p.upnl),
        orders=bounded(p.orders), collateral=bounded(p.collateral), delta=delta,
        by_asset=delta if p.by_asset is p.delta else {
            k: bounded(v) for k, v in p.by_asset.items()},
        notionals=[bounded(v) for v in p.notionals])


def _finite(p: Part) -> bool:
    """Every amount of ``p`` is a finite number (their sum may still overflow)."""
    return all(map(math.isfinite, chain((p.upnl, p.orders, p.collateral),
                                        p.delta.values())))


def saturated(p: Part) -> bool:
    """Does ``p`` carry an amount at the largest float (one past it, bounded)?"""
    top = max(abs(p.gross), abs(p.upnl), abs(p.orders), abs(p.collateral))
    return top >= MAX_FLOAT or any(abs(v) >= MAX_FLOAT for v in p.delta.values())


def restored_part(p: Part) -> Part:
    """``p`` with each largest float read back as the infinity of its sign, to be added
    up (its per-position notionals are not added up: they stay as they are)."""
    delta = {k: _unbounded(v) for k, v in p.delta.items()}
    return msgspec.structs.replace(
        p, gross=_unbounded(p.gross), net=_unbounded(p.net), upnl=_unbounded(p.upnl),
        orders=_unbounded(p.orders), collateral=_unbounded(p.collateral), delta=delta,
        by_asset=delta if p.by_asset is p.delta else {
            k: _unbounded(v) for k, v in p.by_asset.items()})


def saturated_exposure(e: Exposure) -> bool:
    """Does ``e`` carry an amount at the largest float? Its gross bounds its net, its
    per-instrument and its by-asset notionals."""
    top = max(abs(e.gross_notional), abs(e.unrealized_pnl), abs(e.open_order_notional),
              abs(e.collateral))
    return top >= MAX_FLOAT or any(abs(v) >= MAX_FLOAT for v in e.delta_by_underlying.values())


def restored_exposure(e: Exposure) -> Exposure:
    """``e`` with each largest float of its sums read back as the infinity of its sign,
    to be added up into the firm's rollup (an exposure to send is bounded again)."""
    ds, ns = e.delta_by_underlying, e.notional_by_asset
    delta = {k: _unbounded(v) for k, v in ds.items()}
    return msgspec.structs.replace(
        e, gross_notional=_unbounded(e.gross_notional),
        net_notional=_unbounded(e.net_notional), collateral=_unbounded(e.collateral),
        unrealized_pnl=_unbounded(e.unrealized_pnl),
        open_order_notional=_unbounded(e.open_order_notional), delta_by_underlying=delta,
        notional_by_asset=delta if ns is ds else {k: _unbounded(v) for k, v in ns.items()})
