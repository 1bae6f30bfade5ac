"""Detection: market records in, anomaly signals and dislocation signals out.

- :mod:`~riskguard.operators.detection.ops`: the bytewax operators
  :func:`extract_features`, :func:`detect_anomalies`, :func:`confirm_across_venues` and
  :func:`detect_dislocations`;
- :mod:`~riskguard.operators.detection.features`: per-key feature vectors (bars,
  spreads, staleness, venue health);
- :mod:`~riskguard.operators.detection.detector`: the online detector, one model per
  key, a group of keys run together by
  :mod:`~riskguard.operators.detection.market_groups` (its settings and model choice
  in :mod:`~riskguard.operators.detection.models`), with its scorers
  :mod:`~riskguard.operators.detection.hst` (Half-Space Trees),
  :mod:`~riskguard.operators.detection.range_scorer`, the threshold
  :mod:`~riskguard.operators.detection.score_quantile` and the deterministic
  :mod:`~riskguard.operators.detection.move_bands`;
- :mod:`~riskguard.operators.detection.venue_confirm`: a band warning confirmed by a
  trip on another venue of the same asset, made critical;
- :mod:`~riskguard.operators.detection.cross_rates`: markets of one base asset parting,
  judged in event-time order on shard keys by
  :mod:`~riskguard.operators.detection.cross_shard`;
- :mod:`~riskguard.operators.detection.market_sim`: a labelled synthetic market for
  tests, backtests and benches.
"""

from riskguard.operators.detection.band_levels import (
    BandLevels,
    MoveBandConfig,
    ProductBands,
    VolatilityLevels,
)
from riskguard.operators.detection.cross_rates import CrossRateConfig, CrossRates, market_group
from riskguard.operators.detection.cross_shard import CrossShard, CrossShardState, cross_points
from riskguard.operators.detection.detector import (
    DetectorLogic,
    DetectorState,
    detector_builder,
)
from riskguard.operators.detection.features import (
    FeatureConfig,
    FeatureLogic,
    FeatureState,
    feature_builder,
)
from riskguard.operators.detection.hst import ArrayHST, HSTShape, hst_shape
from riskguard.operators.detection.market_groups import (
    MarketDetectors,
    MarketDetectorsState,
    MarketFeatures,
    MarketFeaturesState,
    group_event_order,
    key_group,
    market_detectors_builder,
    market_features_builder,
)
from riskguard.operators.detection.market_sim import Scenario, SimConfig, generate
from riskguard.operators.detection.models import DetectorConfig, prepare_models
from riskguard.operators.detection.move_bands import MoveBands, MoveBandState
from riskguard.operators.detection.ops import (
    DetectOut,
    FeaturesOut,
    confirm_across_venues,
    detect_anomalies,
    detect_dislocations,
    extract_features,
)
from riskguard.operators.detection.range_scorer import RangeScorer
from riskguard.operators.detection.score_quantile import ScoreQuantile
from riskguard.operators.detection.stale_book import (
    StaleBook,
    StaleBookConfig,
    StaleBookProduct,
    StaleBookState,
)
from riskguard.operators.detection.venue_confirm import (
    MarketProgress,
    VenueConfirmConfig,
    VenueConfirmLogic,
    VenueConfirmState,
)

__all__ = [
    "ArrayHST",
    "BandLevels",
    "CrossRateConfig",
    "CrossRates",
    "CrossShard",
    "CrossShardState",
    "DetectOut",
    "DetectorConfig",
    "DetectorLogic",
    "DetectorState",
    "FeatureConfig",
    "FeatureLogic",
    "FeatureState",
    "FeaturesOut",
    "HSTShape",
    "MarketDetectors",
    "MarketDetectorsState",
    "MarketFeatures",
    "MarketFeaturesState",
    "MarketProgress",
    "MoveBandConfig",
    "MoveBandState",
    "MoveBands",
    "ProductBands",
    "RangeScorer",
    "Scenario",
    "ScoreQuantile",
    "SimConfig",
    "StaleBook",
    "StaleBookConfig",
    "StaleBookProduct",
    "StaleBookState",
    "VenueConfirmConfig",
    "VenueConfirmLogic",
    "VenueConfirmState",
    "VolatilityLevels",
    "confirm_across_venues",
    "cross_points",
    "detect_anomalies",
    "detect_dislocations",
    "detector_builder",
    "extract_features",
    "feature_builder",
    "generate",
    "group_event_order",
    "hst_shape",
    "key_group",
    "market_detectors_builder",
    "market_features_builder",
    "market_group",
    "prepare_models",
]
