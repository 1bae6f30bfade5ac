"""The detector's settings and the models it can run, one per key.

:class:`DetectorConfig` is ``[detector]`` in the guard's config; :func:`make_model`
builds the model a key's features call for (see
:mod:`riskguard.operators.detection.detector` for what each model is and how the
detector uses it).

>>> model_kind(DetectorConfig(), 1), model_kind(DetectorConfig(), 3)
('range', 'hst')
>>> model_name(DetectorConfig(), ("ret_bps", "rv_bps"))
'ZSquash|HalfSpaceTrees(h=8,t=10)+tail'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import msgspec
from riskguard.operators.detection.band_levels import MoveBandConfig
from riskguard.operators.detection.cross_rates import CrossRateConfig
from riskguard.operators.detection.hst import ArrayHST, hst_shape
from riskguard.operators.detection.range_scorer import RangeScorer
from riskguard.operators.detection.venue_confirm import VenueConfirmConfig

from riskguard.errors import ConfigError
from riskguard.validation import (
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveFinite,
    PositiveInt,
    Share,
    check_declared,
)

NS = 1_000_000_000


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``detect_anomalies``; see the module docstring for the model choices.

    Keep ``hst_height`` near 8: height 15 costs over 500 us per event and
    seconds to build. ``lof`` manages about 160 events/s: low-rate keys only.
    """

    # the learned path's model; "none" runs the move bands alone (no learned path)
    model: Literal["auto", "hst", "river_hst", "range", "gaussian", "oneclass_svm",
                   "lof", "none"] = "auto"
    model_version: str = "2"
    features: tuple[str, ...] = ()
    scaler: Literal["squash", "minmax"] = "squash"
    squash_scale: Positive = 8.0
    hst_trees: PositiveInt = 10
    hst_height: Annotated[int, msgspec.Meta(ge=1, le=12)] = 8  # 15: > 500 us per event
    hst_window: PositiveInt = 250
    seed: int = 42
    tail: bool = True
    tail_cut: Positive = 2.0
    tail_min_z: Positive = 4.0
    tail_quantile: Annotated[float, msgspec.Meta(ge=0.5, lt=1.0)] = 0.999
    tail_step: Positive = 0.05
    stats_alpha: Share = 0.002
    stats_clip: Positive = 4.0
    warmup_events: NonNegativeInt = 300
    warmup_ns: NonNegativeInt = 300 * NS
    target_alarm_rate: Annotated[float, msgspec.Meta(gt=0.0, lt=0.5)] = 0.0005
    threshold_window: PositiveInt = 4000
    threshold_floor: float | None = None
    threshold_margin: NonNegative = 0.8
    protect_model: bool = True
    protect_max_points: PositiveInt = 120
    protect_max_episodes: float = 3.0
    drift: Literal["adwin", "page_hinkley", "none"] = "adwin"
    drift_delta: float = 0.0001
    drift_policy: Literal["keep", "reset", "blend"] = "blend"
    drift_cooldown_points: NonNegativeInt = 300
    blend_points: PositiveInt = 250
    hysteresis: Share = 0.9
    close_quiet_points: PositiveInt = 5
    close_quiet_ns: NonNegativeInt = 5 * NS
    warn_excess: float = 0.05
    critical_excess: float = 0.15
    warn_duration_ns: int = 10 * NS
    critical_duration_ns: int = 60 * NS
    warn_points: NonNegativeInt = 10
    critical_points: NonNegativeInt = 60
    # the highest severity on bar data (klines, OHLCV): a bar carries only the price path
    # and volume, which the move bands judge, so there critical comes from them
    max_severity_on_bars: Literal["warn", "critical"] = "warn"
    top_k: PositiveInt = 3
    range_threshold: PositiveFinite = 0.01
    range_block: PositiveInt = 128
    range_blocks: PositiveInt = 48
    range_quiet_points: PositiveInt = 60
    bands: MoveBandConfig = MoveBandConfig()
    cross: CrossRateConfig = CrossRateConfig()
    confirm: VenueConfirmConfig = VenueConfirmConfig()
    topic: str = "features"
    step: str = "detect"

    def validate(self, path: str = "detector") -> DetectorConfig:
        """Raise ``ConfigError`` naming the key of the first bad value: a value its field
        does not allow, then the checks across fields."""
        check_declared(self, path)
        self.bands.validate(path + ".bands")
        self.cross.validate(path + ".cross")
        self.confirm.validate(path + ".confirm")
        if self.target_alarm_rate * (self.threshold_window // 2) < 1.0:
            # the quantile spans threshold_window / 2 to threshold_window scores: below one
            # alarm per half window it is the largest recent score, which no score exceeds
            raise ConfigError(
                path + ".target_alarm_rate",
                "must give at least one alarm per half threshold window "
                f"(target_alarm_rate * threshold_window / 2 >= 1, threshold_window "
                f"{self.threshold_window}; raise one of them)", self.target_alarm_rate)
        if self.model in ("auto", "hst", "river_hst"):  # Half-Space Trees score at most 1
            if self.threshold_margin >= 1.0:
                raise ConfigError(path + ".threshold_margin", "must be below 1 (a share of "
                                  "the room below 1 for Half-Space Trees)",
                                  self.threshold_margin)
            if self.threshold_floor is not None and self.threshold_floor >= 1.0:
                raise ConfigError(path + ".threshold_floor",
                                  "must be below 1: Half-Space Trees scores never exceed 1",
                                  self.threshold_floor)
        return self


def model_kind(config: DetectorConfig, n_features: int) -> str:
    """The model kind ``auto`` resolves to for ``n_features`` features."""
    if config.model == "auto":
        return "range" if n_features == 1 else "hst"
    return config.model


def model_name(config: DetectorConfig, features: tuple[str, ...]) -> str:
    """The label carried by signals: scaler, model, size and ``+tail`` for the hybrid."""
    kind = model_kind(config, len(features))
    scaler = "ZSquash" if config.scaler == "squash" else "MinMaxScaler"
    size = f"(h={config.hst_height},t={config.hst_trees})"
    name = {
        "hst": f"{scaler}|HalfSpaceTrees{size}",
        "river_hst": f"{scaler}|river.HalfSpaceTrees{size}",
        "range": "RangeScorer",
        "gaussian": "GaussianScorer",
        "oneclass_svm": "StandardScaler|OneClassSVM",
        "lof": "LocalOutlierFactor",
    }[kind]
    return name + "+tail" if config.tail and kind in ("hst", "river_hst", "oneclass_svm",
                                                       "lof") else name


def prepare_models(config: DetectorConfig, feature_sets: Iterable[Sequence[str]]) -> None:
    """Build one model per feature set now, so that start-up, not the first record of
    each key class, pays for what every later model of that set reuses (Half-Space
    Trees' drawn trees and compiled walk, about 0.1 s per set; River's imports).
    ``config.features``, when set, is the only set the detector uses.

    >>> prepare_models(DetectorConfig(), [("ret_bps", "rv_bps")])
    >>> hst_shape.cache_info().currsize >= 1
    True
    """
    sets = [config.features] if config.features else list(feature_sets)
    for features in sets:
        make_model(config, tuple(features))


def make_model(config: DetectorConfig, features: tuple[str, ...]) -> Any:
    """A fresh model for these features: an :class:`ArrayHST` or a River estimator."""
    kind = model_kind(config, len(features))
    if kind == "hst":
        return ArrayHST(hst_shape(tuple(sorted(features)), config.hst_trees, config.hst_height,
                                  config.hst_window, config.seed))
    if kind == "range":
        return RangeScorer(block=config.range_block, blocks=config.range_blocks,
                           threshold=config.range_threshold)
    from river import anomaly, preprocessing  # noqa: PLC0415  # river import is slow; lazy

    if kind == "gaussian":
        return anomaly.GaussianScorer(grace_period=min(100, max(1, config.warmup_events)))
    if kind == "oneclass_svm":
        return preprocessing.StandardScaler() | anomaly.OneClassSVM(nu=0.1)
    if kind == "lof":
        return anomaly.LocalOutlierFactor(n_neighbors=10)
    # river_hst: the detector scales (squash or min-max) and feeds values in [0, 1]
    return anomaly.HalfSpaceTrees(n_trees=config.hst_trees, height=config.hst_height,
                                  window_size=config.hst_window, seed=config.seed,
                                  limits=dict.fromkeys(features, (0.0, 1.0)))


def make_drift(config: DetectorConfig) -> Any:
    from river import drift  # noqa: PLC0415  # lazy, as above

    if config.drift == "adwin":
        return drift.ADWIN(delta=config.drift_delta)
    if config.drift == "page_hinkley":
        return drift.PageHinkley(delta=0.005, threshold=50.0)
    return None
