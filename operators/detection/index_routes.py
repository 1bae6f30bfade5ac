"""Where index prices go when ``features.venues`` is left empty: the venues seen trading
each instrument so far, kept as state so a resumed flow routes as an unbroken one.

>>> from riskguard.operators.detection.features import FeatureConfig
>>> from riskguard.schemas import IndexPrice, Trade
>>> t = Trade(id="t", venue="okx", instrument="BTC-USD", ts=1, price=1.0, qty=1.0,
...           side="buy")
>>> ip = IndexPrice(id="i", venue="index", instrument="BTC-USD", ts=2, price=1.0)
>>> logic = IndexRoutesLogic(FeatureConfig())
>>> [k for k, _ in logic.on_batch([t])], logic.snapshot().seen
(['okx/BTC-USD'], {'BTC-USD': ['okx']})
>>> resumed = IndexRoutesLogic(FeatureConfig(), state=logic.snapshot())
>>> [k for k, _ in resumed.on_batch([ip])]
['okx/BTC-USD']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.features import FeatureConfig, route_batch

ROUTES_KEY = "index_routes"
"""The one key the routing state lives under (it sees every market record)."""


@persisted("riskguard.index_routes")
@dataclass
class IndexRoutesState:
    """The venues seen trading each instrument (instrument -> venues)."""

    seen: dict[str, list[str]] = field(default_factory=dict)
    version: int = 1


class IndexRoutesLogic:
    """Key each market record for the features (:func:`route_batch`), learning from the
    records which venues trade each instrument, where index prices go."""

    def __init__(self, config: FeatureConfig, local: Callable[[str], bool] | None = None,
                 state: IndexRoutesState | None = None) -> None:
        self.config = config
        self.local = local
        self._seen = {} if state is None else {i: set(v) for i, v in state.seen.items()}

    def on_event(self, rec: Any) -> list[tuple[str, Any]]:
        return self.on_batch([rec])

    def on_batch(self, recs: list[Any]) -> list[tuple[str, Any]]:
        return route_batch(recs, self.config, self.local, self._seen)

    def snapshot(self) -> IndexRoutesState:
        return IndexRoutesState(seen={i: sorted(v) for i, v in self._seen.items()})
