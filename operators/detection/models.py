"""The detector's settings and the models it can run, one per key.

:class:`DetectorConfig` is ``[detector]`` in the guard's config; :func:`make_model`
builds the model a key's features call for (what each model is: docs/detectors.md,
"The learned detector").

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
from riskguard.operators.detection.range_scorer import RangeScorer, RangeState
from riskguard.operators.detection.stale_book import StaleBookConfig
from riskguard.operators.detection.venue_confirm import VenueConfirmConfig
from riskguard.schemas.types import Finite

from riskguard.errors import ConfigError
from riskguard.validation import (
    Nanoseconds,
    NonNegative,
    NonNegativeInt,
    PositiveFinite,
    PositiveInt,
    Share,
    check_declared,
)

NS = 1_000_000_000


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``detect_anomalies``; the model choices are in docs/detectors.md ("The
    learned detector"). Keep ``hst_height`` near 8: each level doubles a tree's nodes.
    River's ``lof`` is far slower than the others: low-rate keys only.
    """

    # the learned path's model; "none" runs the move bands alone (no learned path)
    model: Literal["auto", "hst", "river_hst", "range", "gaussian", "oneclass_svm",
                   "lof", "none"] = "auto"
    # recorded on every signal (model_version): change it when a setting changes what the model says
    model_version: str = "2"
    # the features the learned detector scores, by name (extract_features makes them);
    # empty: every feature of the key
    features: tuple[str, ...] = ()
    # how a feature enters the model: squash (its running z-score through tanh, see
    # squash_scale) or minmax (scaled to the range seen so far, River's MinMaxScaler)
    scaler: Literal["squash", "minmax"] = "squash"
    # scaler squash: a feature's z-score z enters the model as 0.5 + 0.5 * tanh(z / squash_scale)
    squash_scale: PositiveFinite = 8.0
    hst_trees: PositiveInt = 10  # Half-Space Trees: the number of trees
    # Half-Space Trees: the height of each tree (at most 12; keep it near 8)
    hst_height: Annotated[int, msgspec.Meta(ge=1, le=12)] = 8
    # Half-Space Trees: points per reference window; the model scores nothing before its first
    hst_window: PositiveInt = 250
    seed: int = 42  # the random seed of the trees (same seed, same scores)
    # also score how far a feature lies out (the calibrated z-score tail), not only which cell of
    # the space it falls in
    tail: bool = True
    # the tail crosses the threshold where a feature's |z| is this many times its normal peak
    # (tail_quantile)
    tail_cut: PositiveFinite = 2.0
    tail_min_z: PositiveFinite = 4.0  # a feature's normal peak |z| is never taken below this
    # the quantile of a feature's normal |z| that is its peak (0.999: one point in a thousand)
    tail_quantile: Annotated[float, msgspec.Meta(ge=0.5, lt=1.0)] = 0.999
    tail_step: PositiveFinite = 0.05  # how fast that quantile moves (a relative step per point)
    # weight of a new point in the running mean and variance of each feature (about 1 / points
    # remembered)
    stats_alpha: Share = 0.002
    # a point moves the statistics at most as far as one this many standard deviations out would
    stats_clip: PositiveFinite = 4.0
    # a key's signals are warming_up (and act on nothing) until it has learned this many vectors ...
    warmup_events: NonNegativeInt = 300
    # ... and seen this much event time since its first (riskguard backtest and run name the keys
    # that never warmed up)
    warmup_ns: Nanoseconds = 300 * NS
    # the share of a key's scores the adaptive threshold is set to let past (its quantile: 1 - this)
    target_alarm_rate: Annotated[float, msgspec.Meta(gt=0.0, lt=0.5)] = 0.0005
    # scores the threshold's quantile is taken over (the last half to whole window)
    threshold_window: PositiveInt = 4000
    # the threshold is never below this (unset: no floor; below 1 for Half-Space Trees)
    threshold_floor: Finite | None = None
    threshold_margin: NonNegative = 0.8
    # do not learn the points flagged anomalous, so an attack is not learned as normal
    protect_model: bool = True
    # ... but learn again after this many flagged points in a row (a lasting change)
    protect_max_points: PositiveInt = 120
    # ... or while more than this many episodes opened within about threshold_window / 2 points
    protect_max_episodes: PositiveFinite = 3.0
    # the drift detector on a key's scores, whose drift is a regime_change signal: adwin,
    # page_hinkley, or none (no regime changes)
    drift: Literal["adwin", "page_hinkley", "none"] = "adwin"
    # the drift detector's sensitivity (ADWIN's delta; smaller: fewer regime changes)
    drift_delta: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.0001
    # what a regime change does to the model: keep it, reset it (a new model, warming up
    # again), or blend (a fresh model learns beside it and takes over after blend_points)
    drift_policy: Literal["keep", "reset", "blend"] = "blend"
    # points between two regime_change signals of a key, at least
    drift_cooldown_points: NonNegativeInt = 300
    # drift_policy blend: the fresh model replaces the old one after learning this many points
    blend_points: PositiveInt = 250
    # an episode is quiet while the score is below this times the threshold ...
    hysteresis: Share = 0.9
    close_quiet_points: PositiveInt = 5  # ... for this many vectors in a row ...
    # ... and this much event time since its last anomalous point: then it closes
    close_quiet_ns: Nanoseconds = 5 * NS
    # an episode is warn once its score passes the threshold by this share ...
    warn_excess: NonNegative = 0.05
    critical_excess: NonNegative = 0.15  # ... critical by this share ...
    warn_duration_ns: Nanoseconds = 10 * NS  # ... or warn once it has lasted this long ...
    # ... and critical this long (with warn_points / critical_points anomalous vectors)
    critical_duration_ns: Nanoseconds = 60 * NS
    # with warn_duration_ns: the anomalous vectors a lasting episode needs to be warn (two 1-minute
    # bars are not a minute of anomalous 1-second vectors)
    warn_points: NonNegativeInt = 10
    # with critical_duration_ns: the anomalous vectors it needs to be critical
    critical_points: NonNegativeInt = 60
    # the highest severity on bar data (klines, OHLCV): a bar carries only the price path
    # and volume, which the move bands judge, so there critical comes from them
    max_severity_on_bars: Literal["warn", "critical"] = "warn"
    top_k: PositiveInt = 3  # features named on each signal (the largest z-scores)
    range_threshold: PositiveFinite = 0.01
    # model range: the envelope is the extremes of the last range_blocks blocks of this many vectors
    range_block: PositiveInt = 128
    # model range: how many blocks of range_block vectors the envelope spans
    range_blocks: PositiveInt = 48
    range_quiet_points: PositiveInt = 60
    bands: MoveBandConfig = MoveBandConfig()
    cross: CrossRateConfig = CrossRateConfig()
    confirm: VenueConfirmConfig = VenueConfirmConfig()
    stale_book: StaleBookConfig = StaleBookConfig()
    topic: str = "features"  # the topic a dead letter of this step names
    step: str = "detect"  # the step a dead letter of this step names

    def validate(self, path: str = "detector") -> DetectorConfig:
        """Raise ``ConfigError`` naming the key of the first bad value: a value its field
        does not allow, then the checks across fields."""
        check_declared(self, path)
        self.bands.validate(path + ".bands")
        self.cross.validate(path + ".cross")
        self.confirm.validate(path + ".confirm")
        if not self.warn_excess <= self.critical_excess:
            raise ConfigError(path + ".warn_excess", "must not exceed critical_excess "
                              f"({self.critical_excess})", self.warn_excess)
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
    each key class, pays for what later models reuse (drawn trees, River's imports).
    ``config.features``, when set, is the only set the detector uses.

    >>> prepare_models(DetectorConfig(), [("ret_bps", "rv_bps")])
    >>> hst_shape.cache_info().currsize >= 1
    True
    """
    sets = [config.features] if config.features else list(feature_sets)
    for features in sets:
        make_model(config, tuple(features))


def make_model(config: DetectorConfig, features: tuple[str, ...]) -> Any:
    """A fresh model for these features: an :class:`ArrayHST`, a :class:`RangeScorer`
    or a River estimator."""
    kind = model_kind(config, len(features))
    if kind == "hst":
        return ArrayHST(hst_shape(tuple(sorted(features)), config.hst_trees, config.hst_height,
                                  config.hst_window, config.seed))
    if kind == "range":
        return range_scorer(config)
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


def range_scorer(config: DetectorConfig, state: RangeState | None = None) -> RangeScorer:
    """The one-feature range model, fresh or resumed from its state."""
    return RangeScorer(block=config.range_block, blocks=config.range_blocks,
                       threshold=config.range_threshold, state=state)


def make_drift(config: DetectorConfig) -> Any:
    from river import drift  # noqa: PLC0415  # lazy, as above

    if config.drift == "adwin":
        return drift.ADWIN(delta=config.drift_delta)
    if config.drift == "page_hinkley":
        return drift.PageHinkley(delta=0.005, threshold=50.0)
    return None
