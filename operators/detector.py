"""Engine-neutral online anomaly detector: one River model per key.

:class:`DetectorLogic` consumes a key's ``FeatureVector`` stream and emits
``AnomalySignal`` episode events. For each vector it

1. rejects non-finite values (dead letter ``non_finite``; never learned);
2. **scores first**, with the key's River model (``MinMaxScaler |
   HalfSpaceTrees`` for multivariate features, ``GaussianScorer`` for a single
   feature; ``OneClassSVM`` and ``LocalOutlierFactor`` are selectable, LOF
   manages only about 160 events/s so it is for low-rate keys);
3. compares the score with an **adaptive threshold**: a rolling quantile of
   the key's recent scores that targets ``target_alarm_rate``, never below
   ``threshold_floor``;
4. **then learns**, except (``protect_model``, the default) from points it
   flagged, so an attack is not learned as normal; after
   ``protect_max_points`` consecutive flagged points it learns again so a
   lasting change of scale is eventually absorbed;
5. feeds the score to an ADWIN (or PageHinkley) **drift** detector; a
   detected change emits a ``regime_change`` signal and re-adapts by
   ``drift_policy``: ``keep``, ``reset`` (fresh model, new warm-up) or
   ``blend`` (a fresh model learns beside the old one and replaces it after
   ``blend_points``);
6. runs the **episode** state machine: one ``open`` signal when a run of
   anomalous points starts, ``escalate`` when severity rises, ``close`` once
   the score has stayed below ``hysteresis * threshold`` for
   ``close_quiet_points`` points and ``close_quiet_ns`` of event time.

Warm-up is explicit: until a key has learned ``warmup_events`` points and
``warmup_ns`` of event time, its signals carry ``warming_up=True`` and must
not trigger mitigation.

>>> from riskguard.schemas import FeatureVector, Scope, ScopeKind
>>> cfg = DetectorConfig(model="gaussian", warmup_events=50, warmup_ns=0)
>>> logic = DetectorLogic(cfg, clock=lambda: 0)
>>> scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
>>> def fv(i, x):
...     return FeatureVector(key="okx/BTC-USDT", scope=scope, ts=i * 10**9,
...                          values={"spread_bps": x}, evidence_ids=[f"q{i}"])
>>> outs = [s for i in range(300) for s in logic.on_event(fv(i, 2.0 + 0.1 * (i % 7)))]
>>> outs
[]
>>> sig = logic.on_event(fv(300, 50.0))[0]
>>> (sig.phase, sig.warming_up, sig.top_features[0].feature, sig.evidence_ids)
('open', False, 'spread_bps', ['q300'])
"""

from __future__ import annotations

import math
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import encode
from riskguard.schemas.signals import AnomalySignal, Contribution, FeatureVector, Severity

from riskguard.errors import ConfigError

NS = 1_000_000_000
_NAMESPACE = uuid.UUID("6f1d3c1e-6a57-5d8e-9a55-7c1b0a2e4d11")
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARN: 1, Severity.CRITICAL: 2}


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``detect_anomalies``.

    ``model``: ``auto`` picks ``hst`` (``MinMaxScaler | HalfSpaceTrees``) for
    several features and ``gaussian`` (``GaussianScorer``) for one;
    ``oneclass_svm`` (``StandardScaler | OneClassSVM``) and ``lof``
    (``LocalOutlierFactor``, about 160 events/s: low-rate keys only) are
    selectable. Keep ``hst_height`` near 8: height 15 costs over 500 us per
    event and seconds to build.
    """

    model: Literal["auto", "hst", "gaussian", "oneclass_svm", "lof"] = "auto"
    model_version: str = "1"
    features: tuple[str, ...] = ()
    scaler: Literal["squash", "minmax"] = "squash"
    squash_scale: float = 8.0
    hst_trees: int = 10
    hst_height: int = 8
    hst_window: int = 250
    seed: int = 42
    warmup_events: int = 300
    warmup_ns: int = 300 * NS
    target_alarm_rate: float = 0.0002
    threshold_window: int = 4000
    threshold_floor: float | None = None
    threshold_margin: float = 0.05
    protect_model: bool = True
    protect_max_points: int = 120
    drift: Literal["adwin", "page_hinkley", "none"] = "adwin"
    drift_delta: float = 0.0001
    drift_policy: Literal["keep", "reset", "blend"] = "blend"
    drift_cooldown_points: int = 300
    blend_points: int = 250
    hysteresis: float = 0.9
    close_quiet_points: int = 5
    close_quiet_ns: int = 5 * NS
    warn_excess: float = 0.05
    critical_excess: float = 0.15
    warn_duration_ns: int = 10 * NS
    critical_duration_ns: int = 60 * NS
    top_k: int = 3
    topic: str = "features"
    step: str = "detect"

    def validate(self, path: str = "detector") -> DetectorConfig:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        if self.model not in ("auto", "hst", "gaussian", "oneclass_svm", "lof"):
            raise ConfigError(path + ".model",
                              "must be one of auto, hst, gaussian, oneclass_svm, lof", self.model)
        if not 0.0 < self.target_alarm_rate < 0.5:
            raise ConfigError(path + ".target_alarm_rate", "must be in (0, 0.5)",
                              self.target_alarm_rate)
        for name in ("hst_trees", "hst_height", "hst_window", "threshold_window",
                     "blend_points", "top_k", "close_quiet_points", "protect_max_points"):
            if getattr(self, name) < 1:
                raise ConfigError(path + "." + name, "must be a positive integer",
                                  getattr(self, name))
        if self.hst_height > 12:
            raise ConfigError(path + ".hst_height",
                              "must be <= 12 (height 15 costs > 500 us per event)",
                              self.hst_height)
        for name in ("warmup_events", "warmup_ns", "close_quiet_ns", "drift_cooldown_points"):
            if getattr(self, name) < 0:
                raise ConfigError(path + "." + name, "must be >= 0", getattr(self, name))
        if not 0.0 < self.hysteresis <= 1.0:
            raise ConfigError(path + ".hysteresis", "must be in (0, 1]", self.hysteresis)
        if self.drift not in ("adwin", "page_hinkley", "none"):
            raise ConfigError(path + ".drift", "must be adwin, page_hinkley or none", self.drift)
        if self.drift_policy not in ("keep", "reset", "blend"):
            raise ConfigError(path + ".drift_policy", "must be keep, reset or blend",
                              self.drift_policy)
        return self


def make_model(config: DetectorConfig, features: tuple[str, ...]) -> tuple[Any, str]:
    """Build a fresh River model and its name for these features."""
    n_features = len(features)
    from river import anomaly, preprocessing  # noqa: PLC0415  # river import is slow; lazy

    kind = config.model
    if kind == "auto":
        kind = "gaussian" if n_features == 1 else "hst"
    if kind == "gaussian":
        return anomaly.GaussianScorer(grace_period=min(100, max(1, config.warmup_events))), \
            "GaussianScorer"
    if kind == "oneclass_svm":
        return preprocessing.StandardScaler() | anomaly.OneClassSVM(nu=0.1), \
            "StandardScaler|OneClassSVM"
    if kind == "lof":
        return anomaly.LocalOutlierFactor(n_neighbors=10), "LocalOutlierFactor"
    if config.scaler == "squash":
        # the detector feeds tanh-squashed running z-scores in [0, 1]
        return anomaly.HalfSpaceTrees(
            n_trees=config.hst_trees, height=config.hst_height,
            window_size=config.hst_window, seed=config.seed,
            limits=dict.fromkeys(features, (0.0, 1.0)),
        ), f"ZSquash|HalfSpaceTrees(h={config.hst_height},t={config.hst_trees})"
    return (preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
        n_trees=config.hst_trees, height=config.hst_height,
        window_size=config.hst_window, seed=config.seed,
    )), f"MinMaxScaler|HalfSpaceTrees(h={config.hst_height},t={config.hst_trees})"


def _make_drift(config: DetectorConfig) -> Any:
    from river import drift  # noqa: PLC0415  # lazy, as above

    if config.drift == "adwin":
        return drift.ADWIN(delta=config.drift_delta)
    if config.drift == "page_hinkley":
        return drift.PageHinkley(delta=0.005, threshold=50.0)
    return None


def _make_quantile(config: DetectorConfig) -> Any:
    from river import stats  # noqa: PLC0415  # lazy, as above

    return stats.RollingQuantile(q=1.0 - config.target_alarm_rate,
                                 window_size=config.threshold_window)


@dataclass
class DetectorState:
    """One key's detector state. River objects are held as pickled bytes."""

    version: int = 1
    key: str = ""
    features: tuple[str, ...] = ()
    model: bytes = b""
    fresh: bytes = b""
    quantile: bytes = b""
    drift: bytes = b""
    model_name: str = ""
    n_seen: int = 0
    n_learned: int = 0
    n_fresh: int = 0
    first_ts: int = -1
    since_drift: int = 0
    protected_run: int = 0
    n_scores: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    var: dict[str, float] = field(default_factory=dict)
    n_stats: int = 0
    episodes: int = 0
    signals: int = 0
    ep_open: bool = False
    ep_start: int = 0
    ep_last_anom: int = 0
    ep_quiet: int = 0
    ep_severity: str = "info"
    ep_peak_excess: float = 0.0
    ep_warming: bool = False


class DetectorLogic:
    """Per-key detector; ``on_event(FeatureVector) -> [AnomalySignal | DeadLetter]``."""

    def __init__(self, config: DetectorConfig, clock: Callable[[], int],
                 state: DetectorState | None = None) -> None:
        self.config = config
        self.clock = clock
        self.s = state if state is not None else DetectorState()
        s = self.s
        self.model: Any = pickle.loads(s.model) if s.model else None  # own state
        self.fresh: Any = pickle.loads(s.fresh) if s.fresh else None
        self.quantile: Any = (pickle.loads(s.quantile) if s.quantile
                              else _make_quantile(config))
        self.drift: Any = (pickle.loads(s.drift) if s.drift
                           else _make_drift(config))
        self._univariate = False
        self._squashing = False
        if s.features:
            self._set_kind()

    @property
    def min_scores(self) -> int:
        """Scores needed before the rolling quantile is trusted as a threshold."""
        c = self.config
        return min(c.threshold_window, max(50, c.warmup_events // 2))

    def _set_kind(self) -> None:
        kind = self.model_kind()
        self._univariate = kind == "gaussian"
        self._squashing = kind == "hst" and self.config.scaler == "squash"

    def model_kind(self) -> str:
        k = self.config.model
        if k == "auto":
            return "gaussian" if len(self.s.features) == 1 else "hst"
        return k

    # -- public ------------------------------------------------------------
    def snapshot(self) -> DetectorState:
        """An independent copy: River objects are pickled into bytes."""
        s = self.s
        snap = DetectorState(**{k: getattr(s, k) for k in s.__dataclass_fields__})
        snap.model = pickle.dumps(self.model) if self.model is not None else b""
        snap.fresh = pickle.dumps(self.fresh) if self.fresh is not None else b""
        snap.quantile = pickle.dumps(self.quantile)
        snap.drift = pickle.dumps(self.drift) if self.drift is not None else b""
        snap.mean = dict(s.mean)
        snap.var = dict(s.var)
        return snap

    def threshold(self) -> float:
        """The key's current alarm threshold (``inf`` before it has scores)."""
        c = self.config
        thr = math.inf if self.s.n_scores < 50 else float(self.quantile.get()) + c.threshold_margin
        if c.threshold_floor is not None:
            thr = max(thr, c.threshold_floor) if thr != math.inf else thr
        return thr

    def on_event(self, fv: FeatureVector) -> list[AnomalySignal | DeadLetter]:
        s = self.s
        c = self.config
        for name, val in fv.values.items():
            if not math.isfinite(val):
                return [self._dead(fv, name, val)]
        if not s.features:
            s.key = fv.key
            s.features = tuple(sorted(c.features or fv.values))
            self.model, s.model_name = make_model(c, s.features)
            self._set_kind()
        if s.first_ts < 0:
            s.first_ts = fv.ts
        get = fv.values.get
        x = {f: get(f, 0.0) for f in s.features}
        s.n_seen += 1
        xm = self._squash(x) if self._squashing else x
        score = self._score(self.model, xm)
        warming = (s.n_learned < c.warmup_events or fv.ts - s.first_ts < c.warmup_ns
                   or s.n_scores < self.min_scores)
        thr = self.threshold()
        anomalous = score > thr
        out: list[AnomalySignal | DeadLetter] = []
        contributions = self._explain(x) if anomalous or s.ep_open else []
        protect = c.protect_model and anomalous and not warming
        if protect and s.protected_run < c.protect_max_points:
            s.protected_run += 1
        else:
            if not anomalous:
                s.protected_run = 0
            self._learn(x, xm, score)
        out.extend(self._episode(fv, score, thr, anomalous, warming, contributions))
        if self.drift is not None:
            self.drift.update(score)
            s.since_drift += 1
            if self.drift.drift_detected and not warming and \
                    s.since_drift >= c.drift_cooldown_points:
                s.since_drift = 0
                out.append(self._signal(fv, "regime_change", "open", score, thr,
                                        Severity.INFO, warming, contributions, None))
                self._adapt(fv.ts)
        return out

    # -- internals ---------------------------------------------------------
    def _score(self, model: Any, x: dict[str, float]) -> float:
        if model is None:
            return 0.0
        if self._univariate:
            # GaussianScorer gives 2|cdf - 0.5|, which saturates near 1; its surprise
            # -log10(two-sided tail probability) keeps resolution in the tail
            p = float(model.score_one({}, next(iter(x.values()))))
            return -math.log10(max(1e-300, 1.0 - p))
        return float(model.score_one(x))

    def _squash(self, x: dict[str, float]) -> dict[str, float]:
        s = self.s
        k = 0.5 / self.config.squash_scale
        out = {}
        for f, v in x.items():
            var = s.var.get(f, 0.0)
            if var > 1e-18:
                out[f] = 0.5 + 0.5 * math.tanh((v - s.mean[f]) * k * 2.0 / math.sqrt(var))
            else:
                out[f] = 0.5 if v == s.mean.get(f, v) else (1.0 if v > s.mean[f] else 0.0)
        return out

    def _learn(self, x: dict[str, float], xm: dict[str, float], score: float) -> None:
        s = self.s
        if self._univariate:
            y = next(iter(x.values()))
            self.model.learn_one({}, y)
            if self.fresh is not None:
                self.fresh.learn_one({}, y)
        else:
            self.model.learn_one(xm)
            if self.fresh is not None:
                self.fresh.learn_one(xm)
        s.n_learned += 1
        if s.n_learned > self.config.warmup_events // 2:
            # the first half of warm-up scores a model that has barely learned
            self.quantile.update(score)
            s.n_scores += 1
        if self.fresh is not None:
            s.n_fresh += 1
            if s.n_fresh >= self.config.blend_points:
                self.model, self.fresh, s.n_fresh = self.fresh, None, 0
        # running statistics for explanations (Welford, then exponential forgetting)
        s.n_stats += 1
        a = 1.0 / s.n_stats if s.n_stats < 1000 else 0.001
        mean, var = s.mean, s.var
        for f, v in x.items():
            m = mean.get(f, v)
            d = v - m
            mean[f] = m + a * d
            var[f] = (1.0 - a) * (var.get(f, 0.0) + a * d * d)

    def _adapt(self, ts: int) -> None:
        s = self.s
        policy = self.config.drift_policy
        if policy == "reset":
            self.model, _ = make_model(self.config, s.features)
            self.fresh = None
            self.quantile = _make_quantile(self.config)
            s.n_learned = 0
            s.n_scores = 0
            s.first_ts = ts
        elif policy == "blend":
            self.fresh, _ = make_model(self.config, s.features)
            s.n_fresh = 0

    def _explain(self, x: dict[str, float]) -> list[Contribution]:
        s = self.s
        zs = []
        for f, v in x.items():
            sd = math.sqrt(s.var.get(f, 0.0))
            m = s.mean.get(f, v)
            z = (v - m) / sd if sd > 1e-12 else (0.0 if v == m else math.copysign(1e6, v - m))
            zs.append((abs(z), f, v, z))
        zs.sort(key=lambda t: (-t[0], t[1]))
        return [Contribution(feature=f, value=v, zscore=max(-1e12, min(1e12, z)))
                for _, f, v, z in zs[: self.config.top_k]]

    def _severity(self, excess: float, duration: int) -> Severity:
        c = self.config
        if excess >= c.critical_excess or duration >= c.critical_duration_ns:
            return Severity.CRITICAL
        if excess >= c.warn_excess or duration >= c.warn_duration_ns:
            return Severity.WARN
        return Severity.INFO

    def _episode(self, fv: FeatureVector, score: float, thr: float, anomalous: bool,  # noqa: PLR0917  # private hot-path helper
                 warming: bool, contributions: list[Contribution]) -> list[AnomalySignal]:
        s = self.s
        c = self.config
        ts = fv.ts
        if anomalous:
            excess = (score - thr) / max(abs(thr), 1e-12)
            if not s.ep_open:
                s.episodes += 1
                s.ep_open = True
                s.ep_start = ts
                s.ep_quiet = 0
                s.ep_peak_excess = excess
                s.ep_warming = warming
                sev = self._severity(excess, 0)
                s.ep_severity = sev.value
                s.ep_last_anom = ts
                return [self._signal(fv, "anomaly", "open", score, thr, sev, warming,
                                     contributions, self._episode_id())]
            s.ep_quiet = 0
            s.ep_last_anom = ts
            s.ep_peak_excess = max(s.ep_peak_excess, excess)
            sev = self._severity(s.ep_peak_excess, ts - s.ep_start)
            if _SEVERITY_RANK[sev] > _SEVERITY_RANK[Severity(s.ep_severity)]:
                s.ep_severity = sev.value
                return [self._signal(fv, "anomaly", "escalate", score, thr, sev,
                                     s.ep_warming, contributions, self._episode_id())]
            return []
        if not s.ep_open:
            return []
        if score < c.hysteresis * thr:
            s.ep_quiet += 1
        else:
            s.ep_quiet = 0
        if s.ep_quiet >= c.close_quiet_points and ts - s.ep_last_anom >= c.close_quiet_ns:
            s.ep_open = False
            return [self._signal(fv, "anomaly", "close", score, thr,
                                 Severity(s.ep_severity), s.ep_warming, contributions,
                                 self._episode_id())]
        return []

    def _episode_id(self) -> str:
        return f"{self.s.key}#{self.s.episodes}"

    def _signal(self, fv: FeatureVector, kind: Literal["anomaly", "regime_change"],  # noqa: PLR0917  # private helper
                phase: Literal["open", "escalate", "close"], score: float, thr: float,
                severity: Severity, warming: bool, contributions: list[Contribution],
                episode_id: str | None) -> AnomalySignal:
        s = self.s
        s.signals += 1
        sid = str(uuid.uuid5(_NAMESPACE, f"{s.key}:{s.signals}:{kind}:{phase}:{fv.ts}"))
        finite_thr = thr if math.isfinite(thr) else 1.7976931348623157e308
        return AnomalySignal(
            id=sid, kind=kind, phase=phase, key=s.key, scope=fv.scope, ts=fv.ts,
            recv_ts=fv.recv_ts, episode_id=episode_id, score=score, threshold=finite_thr,
            severity=severity, warming_up=warming, top_features=contributions,
            model=s.model_name, model_version=self.config.model_version,
            evidence_ids=list(fv.evidence_ids),
        )

    def _dead(self, fv: FeatureVector, name: str, val: float) -> DeadLetter:
        try:
            raw = encode(fv)
        except (TypeError, ValueError, msgspec.EncodeError):
            raw = repr(fv).encode()
        return DeadLetter(
            topic=self.config.topic, ts=self.clock(), reason="non_finite",
            path=f"$.values.{name}", expected="finite number", found=repr(val),
            step=self.config.step, raw=raw,
        )


def detector_builder(config: DetectorConfig, clock: Callable[[], int]
                     ) -> Callable[[DetectorState | None], DetectorLogic]:
    """``builder(state_or_None) -> DetectorLogic`` for ``stateful_logic``."""
    config.validate()

    def build(state: DetectorState | None) -> DetectorLogic:
        return DetectorLogic(config, clock, state)

    return build
