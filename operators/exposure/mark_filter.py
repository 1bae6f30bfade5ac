"""The mark filter: which prices move a stage-1 shard's marks.

A price reaches valuation when the last one taken from the same venue, instrument and
record type is ``interval_ns`` old in event time or it moved by ``move_bps``. It runs
inside :class:`~riskguard.operators.exposure.shards.ShardLogic` on the items as they
reach the shard, its memory in the shard's snapshot, so a resumed guard takes the prices
an unbroken one would. Every shard a market's prices reach sees them in the same order
and so takes the same ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from riskguard.operators.core.snapshot import persisted
from riskguard.schemas import (
    Bar,
    BookDepth,
    IndexPrice,
    OpenInterest,
    PremiumIndexBar,
    Quote,
    Trade,
)
from riskguard.schemas.codec import tag_of

DETECTION_ONLY = (Bar, BookDepth, PremiumIndexBar, OpenInterest)
"""Market records that feed detection only: bars and depth never mark a position."""

_PRICE_TYPES = {tag_of(t): t for t in (Trade, IndexPrice, Quote)}
PRICE_TYPE_COUNT = len(_PRICE_TYPES)
"""Record types a price is remembered by (a key is venue, instrument and this type)."""
_PRICED = (Trade, IndexPrice)
_PRICE_ROLES = frozenset({"mark", "fx"})  # the stage-1 items that carry one price


@dataclass(frozen=True)
class MarkFilterSpec:
    """How often a price reaches valuation (``interval_ns`` 0: every price), and at most
    how many venue, instrument and record type entries a shard remembers: past that a
    new one's prices all pass, unfiltered (the guard's admission caps keep it far off)."""

    interval_ns: int
    move_bps: float
    max_keys: int = 100_000


@persisted("riskguard.mark_filter")
@dataclass
class MarkFilterState:
    """Per venue, instrument and record type (its tag): the event time and price of the
    last price taken."""

    last: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    version: int = 1


class MarkFilter:
    """``on_batch(records)``: the records a shard takes, in order; ``on_items`` does the
    same on stage-1 items. Bars and depth are dropped; other records pass.

    >>> f = MarkFilter(1_000, 5.0)
    >>> t = lambda ts, px: Trade(id="x", venue="v", instrument="i", ts=ts, price=px, qty=1.0,
    ...                          side="buy")
    >>> [len(f.on_event(t(ts, px))) for ts, px in [(0, 100.0), (10, 100.01), (20, 100.2)]]
    [1, 0, 1]
    >>> f = MarkFilter(1_000, 5.0, f.snapshot())  # resumed
    >>> [len(f.on_event(t(ts, px))) for ts, px in [(30, 100.21), (1_500, 100.2)]]
    [0, 1]
    """

    def __init__(self, min_interval_ns: int, move_bps: float,
                 state: MarkFilterState | None = None, max_keys: int = 100_000) -> None:
        self.min_interval_ns = min_interval_ns
        self.move = move_bps / 10_000
        self.max_keys = max_keys
        # key -> (time, price, the record taken: a record routed to one shard twice, as
        # its mark and as an FX rate, is taken twice)
        self.last: dict[tuple[str, str, type], tuple[int, float, Any]] = {
            (venue, inst, _PRICE_TYPES[tag]): (ts, price, None)
            for venue, inst, tag, ts, price in (state.last if state is not None else ())}

    def snapshot(self) -> MarkFilterState:
        return MarkFilterState(last=[(venue, inst, tag_of(t), ts, price) for (venue, inst, t),
                                     (ts, price, _rec) in self.last.items()])

    def on_event(self, rec: Any) -> list[Any]:
        return self.on_batch([rec])

    def on_batch(self, recs: list[Any]) -> list[Any]:
        return self.taken([r for r in recs if type(r) not in DETECTION_ONLY])

    def on_items(self, items: Sequence[Any]) -> list[Any]:
        """The stage-1 items of a batch with the prices not taken left out (a run of
        plain marks shortened, or gone)."""
        out = []
        for it in items:
            role = it.role
            if role == "marks":
                kept = self.taken(it.record)
                if len(kept) == len(it.record):
                    out.append(it)
                elif kept:
                    out.append(it._replace(record=kept))
            elif role not in _PRICE_ROLES or self.taken([it.record]):
                out.append(it)
        return out

    def taken(self, recs: list[Any]) -> list[Any]:
        """The records of ``recs`` taken, in order (one inlined loop: this runs on every
        market record, where a method call per record is a large share of its cost)."""
        interval = self.min_interval_ns
        if interval <= 0:
            return recs
        priced, quote, move, last = _PRICED, Quote, self.move, self.last
        out = []
        for rec in recs:
            if isinstance(rec, quote):
                price = rec.mid
            elif isinstance(rec, priced):
                price = rec.price
            else:
                out.append(rec)
                continue
            key = (rec.venue, rec.instrument, type(rec))
            prev = last.get(key)
            if prev is None:
                if len(last) < self.max_keys:
                    last[key] = (rec.ts, price, rec)
                out.append(rec)
            elif (rec.ts - prev[0] >= interval or abs(price - prev[1]) >= move * prev[1]
                  or prev[2] is rec):
                last[key] = (rec.ts, price, rec)
                out.append(rec)
        return out
