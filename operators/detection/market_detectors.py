"""The detectors of one group of markets, worked a stage at a time.

:func:`~riskguard.operators.detection.ops.detect_anomalies` keys its step by a market's
group (:func:`detector_group`: the same asset on every venue, else the instrument), not
by the market: one :class:`MarketDetectors` holds a :class:`DetectorLogic` per market of
its group and gets a batch's vectors of all of them at once. It runs the move bands
over the distinct markets' vectors first, then the learned path over the same vectors
(:meth:`DetectorLogic.moves`, :meth:`DetectorLogic.learned`): each market's signals and
state are exactly those of its own detector run alone, and the interpreter runs one
part's code many times in a row instead of alternating between two large bodies of code
(``bench/detector_parts.py`` and ``bench/anomaly_speed.py`` measure the difference).

>>> detector_group("binance/BTCUSDT"), detector_group("kraken/XBTUSD")
('BTC/USD', 'BTC/USD')
>>> detector_group("v3/I7"), detector_group("lonely")
('I7', 'lonely')
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.cross_rates import market_group
from riskguard.operators.detection.detector import (
    DetectorConfig,
    DetectorLogic,
    DetectorState,
)
from riskguard.operators.detection.venue_confirm import MarketProgress, confirm_key
from riskguard.schemas import AnomalySignal, DeadLetter, FeatureVector

from riskguard.errors import SnapshotError

MarketItem = tuple[str, FeatureVector]
"""A vector as the group's step gets it: the market's key, and the vector."""

MarketOut = tuple[str, AnomalySignal | DeadLetter | MarketProgress]
"""What the group's step makes: the market's key, and its signal, dead letter or
progress."""


@functools.lru_cache(maxsize=65_536)
def detector_group(market: str) -> str:
    """The key a market's detector runs under: its asset's group, where one takes it
    (every venue's BTC against the dollar), else the instrument part of
    ``venue/instrument`` (the whole key when it has none)."""
    return market_group(market) or market.partition("/")[2] or market


@persisted("riskguard.market_detectors")
@dataclass
class MarketDetectorsState:
    """Each market's detector state, by the market's key."""

    markets: dict[str, DetectorState] = field(default_factory=dict)
    version: int = 1


class MarketDetectors:
    """The detectors of one group's markets (see the module's text). With
    ``progress``, each batch ends with a :class:`MarketProgress` for every market in it
    that a confirmation group takes: what the cross-venue confirmation waits for."""

    def __init__(self, config: DetectorConfig, clock: Callable[[], int],
                 state: MarketDetectorsState | None = None, progress: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.progress = progress
        self.detectors = {key: DetectorLogic(config, clock, st)
                          for key, st in (state.markets.items() if state else ())}

    def on_batch(self, items: list[MarketItem]) -> list[MarketOut]:
        out: list[MarketOut] = []
        run: dict[str, FeatureVector] = {}  # one vector a market, in arrival order
        newest: dict[str, int] = {}
        for key, fv in items:
            if key in run:  # a market's second vector: what came before goes first
                self._run(run, out)
                run = {}
            run[key] = fv
            if newest.get(fv.key, -1) < fv.ts:
                newest[fv.key] = fv.ts
        self._run(run, out)
        if self.progress:
            out.extend((m, MarketProgress(ts=ts, market=m)) for m, ts in newest.items()
                       if confirm_key(m) is not None)
        return out

    def on_event(self, item: MarketItem) -> list[MarketOut]:
        return self.on_batch([item])

    def snapshot(self) -> MarketDetectorsState:
        return MarketDetectorsState({key: d.snapshot() for key, d in self.detectors.items()})

    def _detector(self, key: str) -> DetectorLogic:
        d = self.detectors.get(key)
        if d is None:
            d = self.detectors[key] = DetectorLogic(self.config, self.clock)
        return d

    def _run(self, run: dict[str, FeatureVector], out: list[MarketOut]) -> None:
        """One vector of each of some markets: the bands on each, then the learned path
        on each (a vector with a value that is not finite is a dead letter)."""
        staged = []
        for key, fv in run.items():
            d = self._detector(key)
            if math.isfinite(sum(fv.values.values())):
                staged.append((key, d, fv, d.moves(fv)))
            else:
                out.extend((key, x) for x in d.on_event(fv))  # the dead letter
        if self.config.model == "none":  # no learned path
            out.extend((key, m) for key, _d, _fv, moves in staged for m in moves)
            return
        for key, d, fv, moves in staged:
            out.extend((key, x) for x in d.learned(fv, moves))


def market_detectors_builder(config: DetectorConfig, clock: Callable[[], int],
                             progress: bool = False
                             ) -> Callable[[MarketDetectorsState | None], MarketDetectors]:
    """``builder(state_or_None) -> MarketDetectors`` for ``stateful_logic``."""
    config.validate()

    def build(state: MarketDetectorsState | None) -> MarketDetectors:
        if state is not None and not isinstance(state, MarketDetectorsState):
            # a detect step's snapshot of one key, from before its keys were grouped
            raise SnapshotError("riskguard.market_detectors",
                                "a group of keys' MarketDetectorsState only",
                                type(state).__name__)
        return MarketDetectors(config, clock, state, progress)

    return build
