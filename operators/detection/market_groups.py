"""The features and the detectors of one group of markets, in one step call each.

:func:`~riskguard.operators.detection.ops.extract_features` and
:func:`~riskguard.operators.detection.ops.detect_anomalies` key their steps by a
market's group (:func:`key_group`: the same asset on every venue, else the instrument),
not by the market: :class:`MarketFeatures` and :class:`MarketDetectors` hold each of a
group's markets' own logic and get a batch's records of all of them at once, so the
engine calls a step once a group, not once a market. :class:`MarketDetectors` runs the
move bands over the distinct markets' vectors first, then the learned path over the
same vectors (:meth:`DetectorLogic.moves`, :meth:`DetectorLogic.learned`): the
interpreter runs one part's code many times in a row instead of alternating between two
large bodies of code (``bench/detector_parts.py`` and ``bench/anomaly_speed.py`` measure
the difference). Each market's outputs and state are exactly those of its own logic run
alone, in its own order.

>>> key_group("binance/BTCUSDT"), key_group("kraken/XBTUSD")
('BTC/USD', 'BTC/USD')
>>> key_group("v3/I7"), key_group("okx")
('I7', 'okx')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from riskguard.operators.core.base import event_order
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.cross_rates import market_group
from riskguard.operators.detection.detector import (
    DetectorConfig,
    DetectorLogic,
    DetectorState,
)
from riskguard.operators.detection.features import FeatureConfig, FeatureLogic, FeatureState
from riskguard.operators.detection.venue_confirm import MarketProgress, confirm_key
from riskguard.schemas import AnomalySignal, DeadLetter, FeatureVector

from riskguard.errors import SnapshotError

L = TypeVar("L", FeatureLogic, DetectorLogic)

MarketItem = tuple[str, FeatureVector]
"""A vector as the group's detect step gets it: the market's key, and the vector."""

SignalOut = tuple[str, AnomalySignal | DeadLetter | MarketProgress]
"""What the group's detect step makes: the market's key, and its signal, dead letter or
progress."""

VectorOut = tuple[str, FeatureVector | DeadLetter]
"""What the group's features step makes: the market's key, and its vector or dead
letter."""


@functools.lru_cache(maxsize=65_536)
def key_group(market: str) -> str:
    """The key a market's features and detector run under: its asset's group, where one
    takes it (every venue's BTC against the dollar), else the instrument part of
    ``venue/instrument`` (the whole key, a venue's, when it has none)."""
    return market_group(market) or market.partition("/")[2] or market


def group_event_order(item: tuple[str, Any]) -> tuple[int, int]:
    """:data:`~riskguard.operators.core.base.event_order` of a ``(key, record)`` pair:
    a group's batch sorted by it holds each market's records in that market's order."""
    return event_order(item[1])


class _Markets(Generic[L]):
    """Each of a group's markets' own logic, by the market's key: restored from a
    snapshot's, or made when the market first comes."""

    def __init__(self, make: Callable[[Any], L], saved: dict[str, Any]) -> None:
        self.make: Callable[[Any], L] = make
        self.logic: dict[str, L] = {key: make(st) for key, st in saved.items()}

    def of(self, key: str) -> L:
        logic = self.logic.get(key)
        if logic is None:
            logic = self.logic[key] = self.make(None)
        return logic

    def snapshots(self) -> dict[str, Any]:
        return {key: logic.snapshot() for key, logic in self.logic.items()}


@persisted("riskguard.market_detectors")
@dataclass
class MarketDetectorsState:
    """Each market's detector state, by the market's key."""

    markets: dict[str, DetectorState] = field(default_factory=dict)
    version: int = 1


@persisted("riskguard.market_features")
@dataclass
class MarketFeaturesState:
    """Each market's feature state, by the market's key."""

    markets: dict[str, FeatureState] = field(default_factory=dict)
    version: int = 1


class MarketFeatures:
    """The feature logic of one group's markets (see the module's text); its input is
    ``(key, record)`` pairs, sorted by :func:`group_event_order`."""

    def __init__(self, config: FeatureConfig, clock: Callable[[], int],
                 state: MarketFeaturesState | None = None) -> None:
        self.markets = _Markets(lambda st: FeatureLogic(config, clock, st),
                               state.markets if state else {})

    def on_batch(self, items: list[tuple[str, Any]]) -> list[VectorOut]:
        out: list[VectorOut] = []
        # per record a dict lookup; a method call only for a market not seen before
        logic_of, new = self.markets.logic.get, self.markets.of
        for key, rec in items:
            made = (logic_of(key) or new(key)).on_event(rec)
            if made:
                out.extend((key, x) for x in made)
        return out

    def on_event(self, item: tuple[str, Any]) -> list[VectorOut]:
        return self.on_batch([item])

    def on_eof(self) -> list[VectorOut]:
        """End of input: each market's open bar."""
        return [(key, x) for key, logic in self.markets.logic.items() for x in logic.on_eof()]

    def snapshot(self) -> MarketFeaturesState:
        return MarketFeaturesState(self.markets.snapshots())


class MarketDetectors:
    """The detectors of one group's markets (see the module's text). With
    ``progress``, each batch ends with a :class:`MarketProgress` for every market in it
    that a confirmation group takes: what the cross-venue confirmation waits for."""

    def __init__(self, config: DetectorConfig, clock: Callable[[], int],
                 state: MarketDetectorsState | None = None, progress: bool = False) -> None:
        self.progress = progress
        self.markets = _Markets(lambda st: DetectorLogic(config, clock, st),
                               state.markets if state else {})

    def on_batch(self, items: list[MarketItem]) -> list[SignalOut]:
        out: list[SignalOut] = []
        run: dict[str, FeatureVector] = {}  # one vector a market, in arrival order
        for key, fv in items:
            if key in run:  # a market's second vector: what came before goes first
                self._run(run, out)
                run = {}
            run[key] = fv
        self._run(run, out)
        if self.progress:
            newest: dict[str, int] = {}
            for key, fv in items:
                if newest.get(key, -1) < fv.ts:
                    newest[key] = fv.ts
            out.extend((m, MarketProgress(ts=ts, market=m)) for m, ts in newest.items()
                       if confirm_key(m) is not None)
        return out

    def on_event(self, item: MarketItem) -> list[SignalOut]:
        return self.on_batch([item])

    def snapshot(self) -> MarketDetectorsState:
        return MarketDetectorsState(self.markets.snapshots())

    def _run(self, run: dict[str, FeatureVector], out: list[SignalOut]) -> None:
        """One vector of each of some markets: the bands on each, then the learned path
        on each (a vector with a value that is not finite is a dead letter)."""
        staged = []
        of = self.markets.of
        for key, fv in run.items():
            d = of(key)
            bad = d.dead_letter(fv)
            if bad is None:
                staged.append((key, d, fv, d.moves(fv)))
            else:
                out.append((key, bad))
        for key, d, fv, moves in staged:
            out.extend((key, x) for x in d.learned(fv, moves))


def _refuse_one_key(state: Any, expected: type, name: str) -> None:
    """A step's snapshot of one market's logic, from before its markets were grouped,
    is refused by name."""
    if state is not None and not isinstance(state, expected):
        raise SnapshotError(name, f"a group of markets' {expected.__name__} only",
                            type(state).__name__)


def market_features_builder(config: FeatureConfig, clock: Callable[[], int]
                            ) -> Callable[[MarketFeaturesState | None], MarketFeatures]:
    """``builder(state_or_None) -> MarketFeatures`` for ``stateful_logic``."""
    config.validate()

    def build(state: MarketFeaturesState | None) -> MarketFeatures:
        _refuse_one_key(state, MarketFeaturesState, "riskguard.market_features")
        return MarketFeatures(config, clock, state)

    return build


def market_detectors_builder(config: DetectorConfig, clock: Callable[[], int],
                             progress: bool = False
                             ) -> Callable[[MarketDetectorsState | None], MarketDetectors]:
    """``builder(state_or_None) -> MarketDetectors`` for ``stateful_logic``."""
    config.validate()

    def build(state: MarketDetectorsState | None) -> MarketDetectors:
        _refuse_one_key(state, MarketDetectorsState, "riskguard.market_detectors")
        return MarketDetectors(config, clock, state, progress)

    return build
