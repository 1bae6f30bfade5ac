"""Register the anomaly logic classes with the generic stateful-logic contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from riskguard.operators.detection.detector import DetectorConfig, detector_builder
from riskguard.operators.detection.features import (
    FeatureConfig,
    FeatureLogic,
    feature_builder,
    route,
)
from riskguard.operators.detection.market_sim import SimConfig, generate

from tests.contract import CHECKS, Case

SC = generate(SimConfig(duration_s=120, seed=3, incidents_per_kind=0, warmup_s=0))
FCFG = FeatureConfig(venues=SC.venues)
KEY = "okx/BTC-USDT"
MARKET = [r for rec in SC.events for k, r in route(rec, FCFG) if k == KEY]


def _vectors() -> list:
    logic = FeatureLogic(FeatureConfig(venues=SC.venues, cadence="event"), lambda: 2**62)
    return [o for r in MARKET for o in logic.on_event(r)]


VECTORS = _vectors()[:700]

CASES = [
    Case("features-bar", feature_builder(FCFG, lambda: 2**62), MARKET),
    Case("features-event", feature_builder(FeatureConfig(venues=SC.venues, cadence="event"),
                                           lambda: 2**62), MARKET[:400]),
    Case("detector-hst", detector_builder(DetectorConfig(warmup_events=100, warmup_ns=0,
                                                         hst_window=50, blend_points=50,
                                                         drift_cooldown_points=20),
                                          lambda: 0), VECTORS, splits=(150, 333)),
    Case("detector-gaussian", detector_builder(
        DetectorConfig(model="gaussian", features=("spread_bps",), warmup_events=50,
                       warmup_ns=0), lambda: 0), VECTORS),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract(case: Case, check: Callable[[Case], None]) -> None:
    """Each anomaly logic class meets the generic stateful-logic contract."""
    check(case)
