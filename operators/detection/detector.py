"""Engine-neutral online anomaly detector: one model per key.

:class:`DetectorLogic` turns a key's ``FeatureVector`` stream into ``AnomalySignal``
episode events: it drops non-finite values (dead letter ``non_finite``), scores before
it learns (protecting the model from flagged points), compares with an adaptive
threshold, tracks drift and runs the open/escalate/close episode machine. Models,
score, threshold, warm-up and drift policies: docs/detectors.md ("The learned detector").

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
import operator
import pickle
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

import msgspec
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.features import FEATURE_SCALES
from riskguard.operators.detection.hst import ArrayHST
from riskguard.operators.detection.models import (
    DetectorConfig,
    make_drift,
    make_model,
    model_kind,
    model_name,
    range_scorer,
)
from riskguard.operators.detection.move_bands import MoveBands, MoveBandState
from riskguard.operators.detection.range_scorer import RangeState
from riskguard.operators.detection.score_quantile import ScoreQuantile
from riskguard.operators.detection.stale_book import SIDES, StaleBook, StaleBookState
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import encode
from riskguard.schemas.signals import (
    SEVERITY_RANK,
    AnomalySignal,
    Contribution,
    FeatureVector,
    Severity,
)

from riskguard.errors import SnapshotError

NS = 1_000_000_000
STATE_VERSION = 3
_NAMESPACE = uuid.UUID("6f1d3c1e-6a57-5d8e-9a55-7c1b0a2e4d11")
_MAX_FINITE = 1.7976931348623157e308
#: a vector with a value past this is scored but never learned: the running variances
#: (and River's sums of squares) of larger values overflow
MAX_LEARNED = 1e100
#: a gap between two vectors moves the key's ordinary gap at most as far as one this
#: many times it would (a feed's outage does not become its yardstick)
GAP_CLIP = 4.0


def forgetting_weight(n: int, alpha: float) -> float:
    """The weight of the ``n``-th point in a running mean: ``1/n`` (an exact mean) until
    that falls below ``alpha``, then ``alpha`` (exponential forgetting).

    >>> forgetting_weight(2, 0.01), forgetting_weight(500, 0.01)
    (0.5, 0.01)
    """
    return 1.0 / n if n * alpha < 1.0 else alpha


class _Scored(NamedTuple):
    """A vector as the learned path scored it: the features, as the model reads them,
    their z-scores and the learned deviations, the leaves an ArrayHST counted it in, and
    the model's own score (before the tail)."""

    x: Sequence[float]
    xm: Sequence[float]
    z: list[float]
    sd: list[float] | None
    leaves: tuple[int, ...] | None
    model_score: float


@persisted("riskguard.detector")
@dataclass
class DetectorState:
    """One key's detector state: plain data, masses and counters as bytes.

    ``hst``/``fresh_hst`` hold :meth:`ArrayHST.state` tuples and ``ranges``/``fresh_range``
    the :class:`RangeScorer`'s state; River's models and drift detectors are pickled
    into ``model``/``fresh``/``drift`` (River's classes, none of riskguard's); ``quantile``
    is a :meth:`ScoreQuantile.state` tuple.
    """

    version: int = STATE_VERSION
    key: str = ""
    features: tuple[str, ...] = ()
    model_name: str = ""
    hst: tuple[Any, ...] = ()
    fresh_hst: tuple[Any, ...] = ()
    model: bytes = b""
    fresh: bytes = b""
    quantile: tuple[Any, ...] = ()
    drift: bytes = b""
    n_seen: int = 0
    n_learned: int = 0
    n_fresh: int = 0
    first_ts: int = -1
    last_ts: int = -1  # the event time of the key's last vector
    gap_s: float = 0.0  # the key's ordinary time between vectors, in seconds
    n_gaps: int = 0  # the gaps between vectors gap_s has learned
    since_drift: int = 0
    protected_run: int = 0
    recent_opens: float = 0.0
    mean: list[float] = field(default_factory=list)
    var: list[float] = field(default_factory=list)
    peak: list[float] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
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
    ep_points: int = 0
    bands: MoveBandState | None = None
    stale: StaleBookState | None = None
    measure: str = "price"  # what the key's prices are (its bands' levels follow)
    ranges: RangeState | None = None
    fresh_range: RangeState | None = None


class DetectorLogic:
    """Per-key detector; ``on_event(FeatureVector) -> [AnomalySignal | DeadLetter]``."""

    def __init__(self, config: DetectorConfig, clock: Callable[[], int],
                 state: DetectorState | None = None) -> None:
        self.config = config
        self.clock = clock
        if state is not None and state.version != STATE_VERSION:
            raise SnapshotError("riskguard.detector", f"version {STATE_VERSION} only",
                                f"version {state.version}")
        self.s = state if state is not None else DetectorState()
        s = self.s
        self.model: Any = None
        self.fresh: Any = None
        self.kind = ""
        self._array = False
        self._tailing = False
        self._dirty = True
        self._ready = False
        # the last pickles of model, fresh model and drift detector (reused while unchanged)
        self._pickled: tuple[bytes, bytes, bytes] = (b"", b"", s.drift)
        self._drift_dirty = False
        self._thr: float | None = None  # threshold() until the quantile next changes
        self._pick: Callable[[dict[str, float]], Sequence[float]] = lambda values: []
        # each feature's own scale (FEATURE_SCALES), in feature order; empty: none has one
        self._scales: tuple[str | None, ...] = ()
        self._squash = config.scaler == "squash"
        self._squash_k = 1.0 / config.squash_scale
        self._min_scores = self.min_scores
        self._enough = min(50, self._min_scores)  # scores before the quantile is used
        self._tail_share = 1.0 - (1.0 - config.target_alarm_rate)  # as ScoreQuantile.get
        self.quantile = ScoreQuantile(config.threshold_window, True, s.quantile or None)
        self.drift: Any = pickle.loads(s.drift) if s.drift else make_drift(config)  # own state
        self._up = 1.0 + config.tail_step
        self._open_decay = 1.0 - 2.0 / config.threshold_window
        self._down = 1.0 - config.tail_step * (1.0 - config.tail_quantile) / config.tail_quantile
        self.bands: MoveBands | None = None
        self._bands_set = False
        self.stale: StaleBook | None = None
        if s.key:
            self._key_bands(s.key, s.measure)
        self._quiet_points = config.close_quiet_points
        self._bands_only = config.model == "none"  # no learned path: the move bands alone
        if s.features:
            self._set_kind()
            if self._array:
                shape = self._new_model().shape
                self.model = ArrayHST(shape, *s.hst) if s.hst else ArrayHST(shape)
                self.fresh = ArrayHST(shape, *s.fresh_hst) if s.fresh_hst else None
            elif self.kind == "range":
                self.model = range_scorer(config, s.ranges)
                self.fresh = range_scorer(config, s.fresh_range) if s.fresh_range else None
            else:
                self.model = pickle.loads(s.model) if s.model else self._new_model()
                self.fresh = pickle.loads(s.fresh) if s.fresh else None

    def _set_kind(self) -> None:
        self.kind = model_kind(self.config, len(self.s.features))
        self._array = self.kind == "hst"
        feats = self.s.features
        # the model input in feature order, from a vector's values (a tuple, at C speed)
        if len(feats) > 1:
            self._pick = operator.itemgetter(*feats)
        else:  # itemgetter of one key returns the value itself, not a tuple
            self._pick = lambda values: [values[f] for f in feats]
        self._tailing = self.config.tail and self.kind not in ("gaussian", "range")
        scales = tuple(FEATURE_SCALES.get(f) for f in feats)
        self._scales = scales if any(scales) else ()
        # the range scorer's excursions are sparse: its episodes close after a longer calm
        self._quiet_points = (self.config.range_quiet_points if self.kind == "range"
                              else self.config.close_quiet_points)
        self.quantile.bounded = self.kind in ("hst", "river_hst")

    def _new_model(self) -> Any:
        return make_model(self.config, self.s.features)

    @property
    def min_scores(self) -> int:
        """Scores needed before the rolling quantile is trusted as a threshold."""
        c = self.config
        return min(c.threshold_window // 2, max(50, c.warmup_events // 2))

    def model_ready(self) -> bool:
        """False while the model cannot score yet (Half-Space Trees' first window)."""
        m = self.model
        if m is None:
            return False
        if self._array:
            return bool(m.ready)
        if self.kind == "river_hst":
            return not m._first_window  # River's own flag
        if self.kind == "range":
            return not m.warming_up
        if self.kind == "gaussian":
            # GaussianScorer scores 0 during its grace period
            return bool(m.gaussian.n_samples >= m.grace_period)
        return True

    def snapshot(self) -> DetectorState:
        """An independent copy. Array masses are copied as bytes; River models and
        the drift detector are pickled only when they changed since the last
        snapshot, and a drift detector that has seen no score yet is left out
        (``drift=b""``: a resumed key builds the same fresh one)."""
        s = self.s
        snap = DetectorState.__new__(DetectorState)
        snap.__dict__.update(s.__dict__)  # scalars, strings, tuples; lists copied below
        if self._array:
            snap.hst = self.model.state()
            snap.fresh_hst = self.fresh.state() if self.fresh is not None else ()
        elif self.kind == "range":
            snap.ranges = self.model.snapshot() if self.model is not None else None
            snap.fresh_range = self.fresh.snapshot() if self.fresh is not None else None
        elif self._dirty:
            if self.model is not None:
                snap.model = pickle.dumps(self.model)
                snap.fresh = pickle.dumps(self.fresh) if self.fresh is not None else b""
            self._pickled = (snap.model, snap.fresh, self._pickled[2])
            self._dirty = False
        else:
            snap.model, snap.fresh = self._pickled[:2]
        if self._drift_dirty:
            drift = pickle.dumps(self.drift) if self.drift is not None else b""
            self._pickled = (*self._pickled[:2], drift)
            self._drift_dirty = False
        snap.drift = self._pickled[2]
        snap.quantile = self.quantile.state()
        snap.bands = self.bands.snapshot() if self.bands is not None else None
        snap.stale = self.stale.snapshot() if self.stale is not None else s.stale
        snap.mean = list(s.mean)
        snap.var = list(s.var)
        snap.peak = list(s.peak)
        snap.lo = list(s.lo)
        snap.hi = list(s.hi)
        return snap

    def _update_quantile(self, score: float) -> None:
        """Count a score; forget the cached threshold unless it provably stands (while
        ``target_alarm_rate * count < 1`` the quantile is the top non-empty bin's edge)."""
        q = self.quantile
        top, n = q.top, q.n_cur + q.n_old
        q.update(score)
        m = q.n_cur + q.n_old
        if (n == 0 or q.top != top or m != n + 1 or (n >= self._enough) != (m >= self._enough)
                or self._tail_share * m >= 1.0):
            self._thr = None

    def threshold(self) -> float:
        """The key's current alarm threshold (``inf`` before it has scores)."""
        c = self.config
        q = self.quantile.get(1.0 - c.target_alarm_rate)
        enough = self.quantile.count >= self._enough
        # bounded scores (Half-Space Trees, at most 1): the margin is a share of the room
        # left above the quantile, so the threshold stays reachable
        margin = c.threshold_margin * (1.0 - q) if self.quantile.bounded else c.threshold_margin
        thr = q + margin if enough else math.inf
        if c.threshold_floor is not None and thr != math.inf:
            thr = max(thr, c.threshold_floor)
        return thr

    def on_event(self, fv: FeatureVector) -> list[AnomalySignal | DeadLetter]:
        """One feature vector: the move bands' signals, then the learned path's."""
        bad = self.dead_letter(fv)
        if bad is not None:
            return [bad]
        return self.learned(fv, self.moves(fv))

    def dead_letter(self, fv: FeatureVector) -> DeadLetter | None:
        """The dead letter of a vector with a value that is not finite, else None (the
        check before :meth:`moves` and :meth:`learned`)."""
        values = fv.values
        if math.isfinite(sum(values.values())):  # NaN/inf anywhere (or an overflow)
            return None
        for name, val in values.items():
            if not math.isfinite(val):
                return self._dead(fv, name, val)
        return None

    def moves(self, fv: FeatureVector) -> list[AnomalySignal | DeadLetter]:
        """A finite vector's price-move and stale book-side signals (the first stage of
        :meth:`on_event`: it reads nothing the learned path writes but the ordinary gap,
        which the learned path learns after it)."""
        self._dirty = True
        bands = self.bands
        if fv.price and (not self._bands_set or fv.measure != self.s.measure):
            bands = self._key_bands(fv.key, fv.measure)  # its first price, or a new measure
        # the bands make a fresh list: the stale check and the learned path add to it
        moves = cast("list[AnomalySignal | DeadLetter]",
                     bands.on_vector(fv) if bands is not None and fv.price else [])
        if SIDES[0] in fv.values:  # a book-depth key
            moves.extend(self._stale_sides(fv))
        return moves

    def learned(self, fv: FeatureVector, out: list[AnomalySignal | DeadLetter]
                ) -> list[AnomalySignal | DeadLetter]:
        """The learned path on a finite vector after :meth:`moves`: its signals are
        appended to ``out`` (that vector's moves), which is returned (as it is with
        ``model = "none"``)."""
        if self._bands_only:
            return out
        s = self.s
        c = self.config
        x = self._vector(fv)
        if self.kind == "range":
            return self._on_range(fv, x[0], out)
        z, sd = self._zscores(x)
        self._learn_gap(fv.ts)  # after scoring: a vector is measured by the gaps before it
        score, leaves, xm = self._model_score(x, z)
        ready = self._ready = self._ready or self.model_ready()
        warming = (s.n_learned < c.warmup_events or fv.ts - s.first_ts < c.warmup_ns
                   or not ready or self.quantile.count < self._min_scores)
        thr = self._thr
        if thr is None:
            thr = self._thr = self.threshold()
        model_score = score
        score = self._tail_score(score, z, thr)
        anomalous = score > thr
        contributions = self._explain(x, z) if anomalous or s.ep_open else []
        self._learn(_Scored(x, xm, z, sd, leaves, model_score), anomalous=anomalous,
                    warming=warming, ready=ready)
        out.extend(self._episode(fv, score, thr, anomalous, warming, contributions))
        if self.drift is not None and ready:
            out.extend(self._drift_step(fv, model_score, score, thr, warming, contributions))
        return out

    def _vector(self, fv: FeatureVector) -> Sequence[float]:
        """The vector's configured features in order (a missing one counts as 0); the
        key's features are fixed by its first vector."""
        s = self.s
        if not s.features:
            self._init_key(fv)
        if s.first_ts < 0:
            s.first_ts = fv.ts
        values = fv.values
        try:
            x = self._pick(values)
        except KeyError:  # a feature missing from this vector counts as 0
            get = values.get
            x = [get(f, 0.0) for f in s.features]
        s.n_seen += 1
        return x

    def _learn_gap(self, ts: int) -> None:
        """The key's ordinary time between vectors (the scale of its interval features):
        a running mean of the gaps, weighted as the feature statistics are, each gap
        clipped at ``GAP_CLIP`` times the mean so far."""
        s = self.s
        if s.last_ts >= 0:
            gap = max(0, ts - s.last_ts) / NS
            mean = s.gap_s
            if mean > 0.0 and gap > GAP_CLIP * mean:
                gap = GAP_CLIP * mean
            s.n_gaps += 1
            s.gap_s = mean + forgetting_weight(s.n_gaps, self.config.stats_alpha) * (gap - mean)
        if ts > s.last_ts:  # noqa: PLR1730  # hot path: a compare beats a max() call
            s.last_ts = ts

    def _zscores(self, x: Sequence[float]) -> tuple[list[float], list[float] | None]:
        """Each feature's z-score and the deviations it is measured in: the learned ones,
        never below the feature's own scale (None before any; 0 for a feature with no
        scale yet)."""
        s = self.s
        if not s.n_stats:
            return [0.0] * len(x), None
        sqrt = math.sqrt
        z = []
        sd = []
        var = self._floored_var() if self._scales else s.var
        for v, m, vv in zip(x, s.mean, var, strict=True):
            # a feature that has not varied yet, and has no scale of its own, scores 0
            tiny = 1e-9 * (abs(m) + 1e-9)
            if vv > tiny * tiny:
                r = sqrt(vv)
                sd.append(r)
                z.append((v - m) / r)
            else:
                sd.append(0.0)
                z.append(0.0)
        return z, sd

    def _floored_var(self) -> list[float]:
        """The learned variances, each at least the square of its feature's own scale
        (:data:`FEATURE_SCALES`): the key's ordinary gap for an interval, one for a
        count."""
        gap_var = self.s.gap_s * self.s.gap_s
        return [vv if k is None else max(vv, gap_var if k == "interval" else 1.0)
                for vv, k in zip(self.s.var, self._scales, strict=True)]

    def _model_score(self, x: Sequence[float], z: list[float]
                     ) -> tuple[float, tuple[int, ...] | None, Sequence[float]]:
        """The model's score, the leaves an ArrayHST counted the point in (taken back if
        it is not learned), and the vector as the model reads it."""
        if self._array:
            xm = self._scaled(x, z)
            score, leaves = self.model.score(xm, True)
            return score, leaves, xm
        if self.kind == "river_hst":
            xm = self._scaled(x, z)
            return float(self.model.score_one(dict(zip(self.s.features, xm, strict=True)))), \
                None, xm
        return self._score_river(x), None, x

    def _tail_score(self, score: float, z: list[float], thr: float) -> float:
        """The score raised by the calibrated univariate tail: the worst |z| over that
        feature's recent normal peak, past ``tail_cut``."""
        c = self.config
        if not self._tailing or self.s.n_stats < 30:
            return score
        tail = 0.0
        mz = c.tail_min_z
        for zi, p in zip(z, self.s.peak, strict=True):
            t = abs(zi) / (p if p > mz else mz)
            if t > tail:  # noqa: PLR1730  # hot loop: a compare beats a max() call
                tail = t
        if tail > c.tail_cut and thr != math.inf:
            score = max(score, thr + abs(thr) * (tail / c.tail_cut - 1.0))
        return score

    def _learn(self, v: _Scored, *, anomalous: bool, warming: bool, ready: bool) -> None:
        """Learn the vector, unless protection holds: it does for an incident (one
        episode, even a long one) but not when episodes keep opening, a change of scale
        the model must absorb."""
        s = self.s
        c = self.config
        s.recent_opens *= self._open_decay
        protect = (c.protect_model and anomalous and not warming
                   and s.recent_opens < c.protect_max_episodes)
        if protect and s.protected_run < c.protect_max_points:
            s.protected_run += 1
            if v.leaves is not None:
                self.model.uncount(v.leaves)
            return
        if not anomalous:
            s.protected_run = 0
        if v.x and (max(v.x) > MAX_LEARNED or min(v.x) < -MAX_LEARNED):
            if v.leaves is not None:
                self.model.uncount(v.leaves)
            return
        if self._array:
            self.model.commit()
            if self.fresh is not None:
                self.fresh.score(v.xm, True)
                self.fresh.commit()
        else:
            self._learn_river(v.x, v.xm)
        s.n_learned += 1
        if ready:
            self._update_quantile(v.model_score)
        # the tail cut holds during an episode: a lasting extreme must stay anomalous
        self._learn_stats(v.x, v.z, v.sd, freeze_peak=anomalous or s.ep_open)
        if self.fresh is not None:
            s.n_fresh += 1
            if s.n_fresh >= c.blend_points:
                self.model, self.fresh, s.n_fresh = self.fresh, None, 0
            self._ready = False

    def _drift_step(self, fv: FeatureVector, model_score: float, score: float, thr: float,
                    warming: bool, contributions: list[Contribution]) -> list[AnomalySignal]:
        """Feed the drift detector; on a drift past the cooldown, a regime_change signal
        and the model adapts."""
        assert self.drift is not None
        s = self.s
        self.drift.update(model_score)
        self._drift_dirty = True
        s.since_drift += 1
        if not (self.drift.drift_detected and not warming
                and s.since_drift >= self.config.drift_cooldown_points):
            return []
        s.since_drift = 0
        signal = self._signal(fv, "regime_change", "open", score, thr, Severity.INFO, warming,
                              contributions, None)
        self._adapt(fv.ts)
        return [signal]

    def _on_range(self, fv: FeatureVector, x: float,
                  moves: Sequence[AnomalySignal | DeadLetter]
                  ) -> list[AnomalySignal | DeadLetter]:
        """One feature, :class:`RangeScorer`: a fixed threshold in recent ranges, and the
        scorer protects itself (an anomalous value is learned clipped)."""
        s = self.s
        c = self.config
        score = self.model.update(x)
        s.n_learned += 1
        warming = (score is None or s.n_learned < c.warmup_events
                   or fv.ts - s.first_ts < c.warmup_ns)
        score = score or 0.0
        thr = c.range_threshold
        anomalous = score >= thr
        reason = self.model.reason
        contributions = ([Contribution(feature=s.features[0], value=x,
                                       zscore=min(1e12, reason[4]))]
                         if anomalous and reason is not None else [])
        out: list[AnomalySignal | DeadLetter] = list(moves)
        out.extend(self._episode(fv, score, thr, anomalous, warming, contributions))
        return out

    def _stale_sides(self, fv: FeatureVector) -> list[AnomalySignal]:
        """The stale book-side check on a depth key's vector."""
        check = self.stale
        if check is None:
            check = self.stale = StaleBook(self.config.stale_book.for_key(fv.key), fv.key,
                                           self.s.stale)
        got = check.on_vector(fv, self.s.gap_s)
        if self._bands_only:  # else the learned path learns the gaps, after scoring
            self._learn_gap(fv.ts)
        return got

    def _key_bands(self, key: str, measure: str) -> MoveBands | None:
        """The key's move bands with the settings of its measure and product (None when
        they turn them off), keeping what the key's bands have learned."""
        self.s.measure = measure
        cfg = self.config.bands.for_key(key, measure)
        state = self.bands.s if self.bands is not None else self.s.bands
        self.bands = MoveBands(cfg, key, state) if cfg.enabled else None
        self._bands_set = True
        return self.bands

    def _init_key(self, fv: FeatureVector) -> None:
        s = self.s
        c = self.config
        s.key = fv.key
        s.features = tuple(sorted(c.features or fv.values))
        n = len(s.features)
        s.mean = [0.0] * n
        s.var = [0.0] * n
        s.peak = [c.tail_min_z] * n
        s.lo = [math.inf] * n
        s.hi = [-math.inf] * n
        self._set_kind()
        self.model = self._new_model()
        s.model_name = model_name(c, s.features)

    def _scaled(self, x: Sequence[float], z: list[float]) -> list[float]:
        """Model input in [0, 1]: squashed z-scores, or River's MinMaxScaler transform."""
        if self._squash:
            k = self._squash_k
            tanh = math.tanh
            return [0.5 + 0.5 * tanh(zi * k) for zi in z]
        s = self.s
        lo, hi = s.lo, s.hi
        out = []
        for i, v in enumerate(x):
            a, b = lo[i], hi[i]
            # MinMaxScaler: min/max include the point being learned (River learns, then
            # transforms); an unseen range maps to 0
            a = min(a, v)
            b = max(b, v)
            out.append((v - a) / (b - a) if b > a else 0.0)
        return out

    def _score_river(self, x: Sequence[float]) -> float:
        m = self.model
        if self.kind == "gaussian":
            # GaussianScorer gives 2|cdf - 0.5|, which saturates near 1; its surprise
            # -log10(two-sided tail probability) keeps resolution in the tail
            p = float(m.score_one({}, x[0]))
            return -math.log10(max(1e-300, 1.0 - p))
        return float(m.score_one(dict(zip(self.s.features, x, strict=True))))

    def _learn_river(self, x: Sequence[float], xm: Sequence[float]) -> None:
        feats = self.s.features
        for m in (self.model, self.fresh):
            if m is None:
                continue
            if self.kind == "gaussian":
                m.learn_one({}, x[0])
            elif self.kind == "river_hst":
                m.learn_one(dict(zip(feats, xm, strict=True)))
            else:
                m.learn_one(dict(zip(feats, x, strict=True)))

    def _learn_stats(self, x: Sequence[float], z: list[float], sd: list[float] | None,
                     freeze_peak: bool = False) -> None:
        """Welford, then exponential forgetting; a streaming ``tail_quantile`` of |z|
        (up by ``tail_step`` when exceeded, down by a matching small step otherwise, so a
        slow ramp cannot drag it up). ``sd``: deviations before this point, or None."""
        s = self.s
        c = self.config
        s.n_stats += 1
        n = s.n_stats
        a = forgetting_weight(n, c.stats_alpha)
        mean, var = s.mean, s.var
        track_peak = n > 30
        peak = s.peak
        up, down = self._up, self._down
        clip = c.stats_clip
        b = 1.0 - a
        if track_peak and sd is not None:
            for i, v in enumerate(x):
                d = v - mean[i]
                # Huber-style clip, so a slow ramp cannot inflate the variance it is
                # measured by; a feature with no scale yet (flat so far) learns unclipped
                lim = clip * sd[i]
                if lim <= 0.0:
                    pass
                elif d > lim:
                    d = lim
                elif d < -lim:
                    d = -lim
                if not freeze_peak:
                    p = peak[i]
                    peak[i] = p * (up if abs(z[i]) > p else down)
                mean[i] += a * d
                var[i] = b * (var[i] + a * d * d)
        else:
            for i, v in enumerate(x):
                d = v - mean[i]
                mean[i] += a * d
                var[i] = b * (var[i] + a * d * d)
        if c.scaler == "minmax":
            lo, hi = s.lo, s.hi
            for i, v in enumerate(x):
                lo[i] = min(lo[i], v)
                hi[i] = max(hi[i], v)

    def _adapt(self, ts: int) -> None:
        s = self.s
        policy = self.config.drift_policy
        if policy == "reset":
            self._ready = False
            self.model = self._new_model()
            self.fresh = None
            self.quantile = ScoreQuantile(self.config.threshold_window, self.quantile.bounded)
            self._thr = None
            s.n_learned = 0
            s.first_ts = ts
        elif policy == "blend":
            self.fresh = self._new_model()
            s.n_fresh = 0

    def _explain(self, x: Sequence[float], z: list[float]) -> list[Contribution]:
        feats = self.s.features
        order = sorted(range(len(x)), key=lambda i: (-abs(z[i]), feats[i]))
        return [Contribution(feature=feats[i], value=x[i], zscore=max(-1e12, min(1e12, z[i])))
                for i in order[: self.config.top_k]]

    def _severity(self, excess: float, duration: int, points: int = 0,
                  bars: bool = False) -> Severity:
        """By how far the score passed the threshold, or how long the episode lasted in
        both event time and anomalous vectors; on bars at most ``max_severity_on_bars``."""
        c = self.config
        if excess >= c.critical_excess or (duration >= c.critical_duration_ns
                                           and points >= c.critical_points):
            if bars and c.max_severity_on_bars == "warn":
                return Severity.WARN
            return Severity.CRITICAL
        if excess >= c.warn_excess or (duration >= c.warn_duration_ns
                                       and points >= c.warn_points):
            return Severity.WARN
        return Severity.INFO

    def _episode(self, fv: FeatureVector, score: float, thr: float, anomalous: bool,
                 warming: bool, contributions: list[Contribution]) -> list[AnomalySignal]:
        s = self.s
        c = self.config
        ts = fv.ts
        if anomalous:
            # the range scorer's score is already an excess (in recent ranges)
            excess = score if self.kind == "range" else (score - thr) / max(abs(thr), 1e-12)
            if not s.ep_open:
                s.episodes += 1
                s.recent_opens += 1.0
                s.ep_open = True
                s.ep_start = ts
                s.ep_quiet = 0
                s.ep_peak_excess = excess
                s.ep_warming = warming
                s.ep_points = 1
                sev = self._severity(excess, 0, 0, fv.interval_ns > 0)
                s.ep_severity = sev.value
                s.ep_last_anom = ts
                return [self._signal(fv, "anomaly", "open", score, thr, sev, warming,
                                     contributions, self._episode_id())]
            s.ep_quiet = 0
            s.ep_last_anom = ts
            s.ep_points += 1
            # an episode opened while warming up acts once the key is warm: an incident
            # that starts inside it must not be reported as warming up
            s.ep_warming = s.ep_warming and warming
            s.ep_peak_excess = max(s.ep_peak_excess, excess)
            sev = self._severity(s.ep_peak_excess, ts - s.ep_start, s.ep_points,
                                 fv.interval_ns > 0)
            if SEVERITY_RANK[sev] > SEVERITY_RANK[Severity(s.ep_severity)]:
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
        if s.ep_quiet >= self._quiet_points and ts - s.ep_last_anom >= c.close_quiet_ns:
            s.ep_open = False
            return [self._signal(fv, "anomaly", "close", score, thr,
                                 Severity(s.ep_severity), s.ep_warming, contributions,
                                 self._episode_id())]
        return []

    def _episode_id(self) -> str:
        return f"{self.s.key}#{self.s.episodes}"

    def _signal(self, fv: FeatureVector, kind: Literal["anomaly", "regime_change"],
                phase: Literal["open", "escalate", "close"], score: float, thr: float,
                severity: Severity, warming: bool, contributions: list[Contribution],
                episode_id: str | None) -> AnomalySignal:
        s = self.s
        s.signals += 1
        sid = str(uuid.uuid5(_NAMESPACE, f"{s.key}:{s.signals}:{kind}:{phase}:{fv.ts}"))
        return AnomalySignal(
            id=sid, kind=kind, phase=phase, key=s.key, scope=fv.scope, ts=fv.ts,
            recv_ts=fv.recv_ts, episode_id=episode_id,
            score=min(score, _MAX_FINITE), threshold=min(thr, _MAX_FINITE),
            severity=severity, warming_up=warming, top_features=contributions,
            model=s.model_name, model_version=self.config.model_version,
            evidence_ids=list(fv.evidence_ids),
        )

    def _dead(self, fv: FeatureVector, name: str, val: float) -> DeadLetter:
        try:
            raw = encode(fv)
        except (TypeError, ValueError, msgspec.EncodeError):
            raw = repr(fv).encode()
        return DeadLetter.of(
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
