"""Stale book sides: a depth feed whose bid or ask side repeats unchanged while the other
side moves.

A live book's depth near the price changes with nearly every snapshot; one side frozen
for many updates while the other keeps changing is a feed that stopped updating that
side, not a quiet market, and no price or depth read from it can be trusted. The learned
path notices such a side at first, then learns it as normal while it stays frozen, so
this check holds the key critical for as long as the side is frozen: a signal of kind
``stale_feed`` opens critical once a side's ``bid_stale_s`` or ``ask_stale_s`` (the
features step's seconds since that side last changed) passes ``stale_s`` and
``updates`` of the key's typical times between vectors, while the other side is within
them, and closes when the side changes again. Both sides frozen is a halted or silent
feed, which the venue's heartbeats and the price age judge.

>>> from riskguard.schemas import FeatureVector, Scope, ScopeKind
>>> check = StaleBook(StaleBookConfig(), key="binance/BTCUSDT")
>>> scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")
>>> def depth(ts_s, bid_stale_s):
...     return FeatureVector(key="binance/BTCUSDT", scope=scope, ts=ts_s * 10**9,
...                          values={"bid_stale_s": bid_stale_s, "ask_stale_s": 0.0})
>>> [s.phase for t in range(0, 600, 30) for s in check.on_vector(depth(t, t), gap_s=30.0)]
['open']
>>> [(s.phase, s.severity.value) for s in check.on_vector(depth(630, 0.0), gap_s=30.0)]
[('close', 'critical')]
"""

from __future__ import annotations

import fnmatch
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from riskguard.operators.core.base import copy_fields
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas import AnomalySignal, Contribution, FeatureVector, Severity

from riskguard.validation import PositiveInt, PositiveSeconds

_NAMESPACE = uuid.UUID("2d0c9a8e-3b5f-5e61-8c1d-6f4e2a7b9c30")
SIDES = ("bid_stale_s", "ask_stale_s")


class StaleBookProduct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stale check's own settings for the keys ``match`` names
    (``detector.stale_book.products``): a thin book whose innermost band rests for
    minutes needs a longer ``stale_s`` than bitcoin's."""

    # the keys these settings are for: a glob on venue/instrument ("*/PEPEUSDT"); a key
    # takes the first product it matches
    match: Annotated[str, msgspec.Meta(min_length=1)]
    enabled: bool | None = None  # unset: detector.stale_book.enabled
    stale_s: PositiveSeconds | None = None  # unset: detector.stale_book.stale_s
    updates: PositiveInt | None = None  # unset: detector.stale_book.updates


class StaleBookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the stale book-side check (``[detector.stale_book]``).

    >>> cfg = StaleBookConfig(products=(StaleBookProduct(match="*/PEPEUSDT", stale_s=1800),))
    >>> cfg.for_key("binance/PEPEUSDT").stale_s, cfg.for_key("binance/BTCUSDT").stale_s
    (1800, 300.0)
    """

    enabled: bool = True  # false: no stale_feed signals
    # a side is stale once unchanged this long ...
    stale_s: PositiveSeconds = 300.0
    # ... and for this many of the key's typical times between vectors (a feed that
    # snapshots every five minutes is not stale after one)
    updates: PositiveInt = 10
    # keys with settings of their own; a key takes the first product it matches
    products: tuple[StaleBookProduct, ...] = ()

    def level_s(self, gap_s: float) -> float:
        """How long a side must be unchanged to be stale, for a key whose typical time
        between vectors is ``gap_s`` (0 while unknown)."""
        return max(self.stale_s, self.updates * gap_s)

    def for_key(self, key: str) -> StaleBookConfig:
        """The settings ``key`` runs with: these, with the values of the first product
        whose ``match`` it fits."""
        for product in self.products:
            if fnmatch.fnmatchcase(key, product.match):
                changes = {name: value for name in ("enabled", "stale_s", "updates")
                           if (value := getattr(product, name)) is not None}
                return msgspec.structs.replace(self, products=(), **changes)
        return self


@persisted("riskguard.stale_book")
@dataclass
class StaleBookState:
    """One key's stale-side episode."""

    version: int = 1
    episodes: int = 0
    open: bool = False
    side: str = ""  # the stale side's feature while an episode is open


class StaleBook:
    """Per-key check; ``on_vector(fv, gap_s)`` returns its ``stale_feed`` signals."""

    def __init__(self, config: StaleBookConfig, key: str,
                 state: StaleBookState | None = None) -> None:
        self.config = config
        self.key = key
        self.s = state if state is not None else StaleBookState()

    def snapshot(self) -> StaleBookState:
        return copy_fields(self.s)

    def on_vector(self, fv: FeatureVector, gap_s: float) -> list[AnomalySignal]:
        """A vector with both sides' staleness (``gap_s``: the key's typical seconds
        between vectors, 0 while unknown)."""
        values = fv.values
        bid, ask = values.get(SIDES[0]), values.get(SIDES[1])
        if bid is None or ask is None or not self.config.enabled:
            return []
        limit = self.config.level_s(gap_s)
        s = self.s
        if s.open:
            if values[s.side] < limit or min(bid, ask) >= limit:
                s.open = False
                return [self._signal(fv, "close", values[s.side] / limit)]
            return []
        stale = SIDES[0] if bid >= limit > ask else SIDES[1] if ask >= limit > bid else ""
        if not stale:
            return []
        s.open, s.side = True, stale
        s.episodes += 1
        return [self._signal(fv, "open", values[stale] / limit)]

    def _signal(self, fv: FeatureVector, phase: Literal["open", "close"], ratio: float
                ) -> AnomalySignal:
        s = self.s
        sid = str(uuid.uuid5(_NAMESPACE, f"{self.key}:{s.episodes}:{phase}:{fv.ts}"))
        return AnomalySignal(
            id=sid, kind="stale_feed", phase=phase, key=self.key, scope=fv.scope,
            ts=fv.ts, recv_ts=fv.recv_ts, episode_id=f"{self.key}#stale{s.episodes}",
            score=ratio, threshold=1.0, severity=Severity.CRITICAL,
            top_features=[Contribution(feature=s.side, value=fv.values[s.side], zscore=0.0)],
            model="StaleBook", model_version="1", evidence_ids=list(fv.evidence_ids))
