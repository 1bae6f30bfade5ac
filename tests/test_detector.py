"""Logic-level tests of the online anomaly detector, with a fixed clock."""

from __future__ import annotations

import math
import random

import pytest
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
from riskguard.schemas import AnomalySignal, DeadLetter, FeatureVector, Scope, ScopeKind

from riskguard.errors import ConfigError

NS = 1_000_000_000
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")


def fv(i: int, values: dict[str, float]) -> FeatureVector:
    return FeatureVector(key="okx/BTC-USDT", scope=SCOPE, ts=i * NS, values=values,
                         evidence_ids=[f"e{i}"])


def feed(logic: DetectorLogic, start: int, xs: list[dict[str, float]]) -> list:
    out = []
    for j, x in enumerate(xs):
        out.extend(logic.on_event(fv(start + j, x)))
    return out


def noise(n: int, seed: int = 1, scale: float = 1.0, level: float = 10.0) -> list[dict]:
    rng = random.Random(seed)
    return [{"x": level + scale * rng.gauss(0.0, 1.0)} for _ in range(n)]


UNI = DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0, drift="none",
                     target_alarm_rate=0.01, threshold_margin=1.5,
                     close_quiet_points=3, close_quiet_ns=3 * NS)


def test_signals_during_warm_up_carry_warming_up_true() -> None:
    """A spike before the warm-up has passed yields warming_up=True signals only."""
    logic = DetectorLogic(DetectorConfig(model="gaussian", warmup_events=500, warmup_ns=0,
                                         drift="none"), ManualClock())
    feed(logic, 0, noise(300))
    sigs = [s for s in feed(logic, 300, [{"x": 1000.0}]) if isinstance(s, AnomalySignal)]
    assert len(sigs) == 1
    assert sigs[0].warming_up is True


def test_warm_up_also_counts_event_time() -> None:
    """Enough events but too little event time still counts as warming up."""
    logic = DetectorLogic(DetectorConfig(model="gaussian", warmup_events=100,
                                         warmup_ns=10_000 * NS, drift="none"), ManualClock())
    feed(logic, 0, noise(300))
    sigs = feed(logic, 300, [{"x": 1000.0}])
    assert [s.warming_up for s in sigs] == [True]


def test_episode_opens_escalates_and_closes_with_hysteresis() -> None:
    """One episode: open, escalate on a bigger excess or duration, close after quiet points."""
    cfg = DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0, drift="none",
                         target_alarm_rate=0.01, threshold_margin=1.5, close_quiet_points=3,
                         close_quiet_ns=3 * NS, warn_excess=1e9, critical_excess=1e9,
                         warn_duration_ns=3 * NS, critical_duration_ns=8 * NS,
                         warn_points=3, critical_points=8)
    logic = DetectorLogic(cfg, ManualClock())
    assert feed(logic, 0, noise(400)) == []
    sigs = feed(logic, 400, [{"x": 60.0}] * 14)
    phases = [s.phase for s in sigs]
    assert phases[0] == "open"
    assert phases == ["open", "escalate", "escalate"]
    assert [s.severity.value for s in sigs] == ["info", "warn", "critical"]
    assert len({s.episode_id for s in sigs}) == 1
    # back to normal: it needs close_quiet_points quiet points and 3 s of quiet to close
    quiet = feed(logic, 414, [{"x": 10.0}] * 2)
    assert quiet == []
    closing = feed(logic, 416, [{"x": 10.0}] * 5)
    assert [s.phase for s in closing] == ["close"]
    assert closing[0].episode_id == sigs[0].episode_id
    sev = [s.severity.value for s in sigs]
    assert sev == sorted(sev, key=["info", "warn", "critical"].index)


def test_a_score_in_the_hysteresis_band_keeps_the_episode_open() -> None:
    """Scores between hysteresis*threshold and threshold neither alarm nor count as quiet."""
    logic = DetectorLogic(UNI, ManualClock())
    feed(logic, 0, noise(400))
    opened = feed(logic, 400, [{"x": 100.0}])
    assert [s.phase for s in opened] == ["open"]
    thr = logic.threshold()
    # find a value whose score lies in the band [0.9 thr, thr)
    band = None
    for k in range(1000):
        v = 10.0 + k * 0.005
        s = logic._score_river([v])
        if UNI.hysteresis * thr <= s < thr:
            band = v
            break
    assert band is not None
    assert feed(logic, 401, [{"x": band}]) == []
    assert logic.s.ep_open is True
    assert logic.s.ep_quiet == 0


def test_threshold_adapts_to_a_change_of_scale_without_an_alarm_flood() -> None:
    """After the noise scale grows tenfold, a handful of episodes open (not a flood of
    thousands of per-tick alarms), then the alarms stop because the model has absorbed
    the new scale (the Gaussian's learned spread grows several-fold; its surprise score,
    and so the threshold, is scale-free)."""
    cfg = DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0, drift="none",
                         protect_max_points=50, threshold_window=500)
    logic = DetectorLogic(cfg, ManualClock())
    feed(logic, 0, noise(600, seed=2))
    sigma_before = logic.model.gaussian.sigma
    out = feed(logic, 600, noise(3000, seed=3, scale=10.0))
    opens = [s for s in out if isinstance(s, AnomalySignal) and s.phase == "open"]
    assert len(opens) <= 10
    tail = feed(logic, 3600, noise(500, seed=4, scale=10.0))
    assert len([s for s in tail if s.phase == "open"]) <= 3
    assert logic.model.gaussian.sigma > 3.0 * sigma_before
    assert math.isfinite(logic.threshold())


def test_drift_signal_fires_on_a_level_shift() -> None:
    """A sustained level shift makes ADWIN emit a regime_change signal."""
    cfg = DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0, drift="adwin",
                         drift_policy="reset", drift_cooldown_points=100)
    logic = DetectorLogic(cfg, ManualClock())
    before = feed(logic, 0, noise(1000, seed=5))
    assert all(s.kind in ("anomaly", "regime_change") for s in before)
    after = feed(logic, 1000, noise(400, seed=6, level=14.0))
    changes = [s for s in after if s.kind == "regime_change"]
    assert len(changes) >= 1
    assert changes[0].phase == "open"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_rejected_and_not_learned(bad: float) -> None:
    """NaN and infinities become non_finite dead letters and never reach the model."""
    clock = ManualClock(77)
    logic = DetectorLogic(UNI, clock)
    feed(logic, 0, noise(50))
    learned = logic.s.n_learned
    out = logic.on_event(fv(50, {"x": bad}))
    assert len(out) == 1
    dl = out[0]
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path, dl.ts, dl.step) == ("non_finite", "$.values.x", 77, "detect")
    assert logic.s.n_learned == learned


def test_explanation_names_the_perturbed_feature() -> None:
    """A multivariate anomaly in one feature lists that feature first with a large z-score."""
    rng = random.Random(9)
    names = ("spread_bps", "ret_bps", "quote_age_s")
    logic = DetectorLogic(DetectorConfig(warmup_events=300, warmup_ns=0, drift="none",
                                         threshold_margin=0.0, target_alarm_rate=0.001),
                          ManualClock())
    xs = [{n: rng.gauss(0.0, 1.0) for n in names} for _ in range(1500)]
    feed(logic, 0, xs)
    spike = dict.fromkeys(names, 0.0)
    spike["quote_age_s"] = 40.0
    sigs = [s for s in logic.on_event(fv(1500, spike)) if isinstance(s, AnomalySignal)]
    assert sigs and sigs[0].phase == "open"
    top = sigs[0].top_features[0]
    assert top.feature == "quote_age_s"
    assert top.zscore > 10
    assert sigs[0].evidence_ids == ["e1500"]
    assert sigs[0].model.startswith("ZSquash|HalfSpaceTrees")


def test_protect_model_does_not_learn_flagged_points() -> None:
    """With protect_model on, a flagged point leaves the learned count unchanged."""
    logic = DetectorLogic(UNI, ManualClock())
    feed(logic, 0, noise(400))
    n = logic.s.n_learned
    logic.on_event(fv(400, {"x": 500.0}))
    assert logic.s.n_learned == n
    off = DetectorLogic(DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0,
                                       drift="none", protect_model=False), ManualClock())
    feed(off, 0, noise(400))
    n = off.s.n_learned
    off.on_event(fv(400, {"x": 500.0}))
    assert off.s.n_learned == n + 1


def test_signal_ids_are_deterministic() -> None:
    """Two runs over the same input give the same signal ids."""
    runs = []
    for _ in range(2):
        logic = DetectorLogic(UNI, ManualClock())
        runs.append([s.id for s in feed(logic, 0, [*noise(400), {"x": 999.0}])])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 1


def test_bad_config_names_the_key() -> None:
    """Config errors name the offending key path and value."""
    with pytest.raises(ConfigError, match=r"detector.target_alarm_rate: must be < 0.5") as ei:
        DetectorConfig(target_alarm_rate=0.9).validate()
    assert ei.value.found == 0.9
    with pytest.raises(ConfigError, match="hst_height"):
        DetectorConfig(hst_height=15).validate()


def test_a_configured_feature_missing_from_a_vector_counts_as_zero() -> None:
    """A feature listed in the config but absent from the vectors is learned as 0.0."""
    cfg = DetectorConfig(features=("a", "b", "c"), warmup_events=50, warmup_ns=0)
    logic = DetectorLogic(cfg, ManualClock())
    rng = random.Random(4)
    for i in range(120):
        logic.on_event(fv(i, {"a": rng.gauss(5.0, 1.0), "c": rng.gauss(1.0, 0.1)}))
    assert logic.s.features == ("a", "b", "c")
    assert logic.s.mean[1] == 0.0
    assert logic.s.n_learned == 120
    assert 4.0 < logic.s.mean[0] < 6.0


def test_snapshot_leaves_out_a_drift_detector_that_has_seen_no_score() -> None:
    """Before the model scores, the snapshot carries drift=b'' (a resumed key builds the
    same fresh detector); once scores reach the drift detector, it is pickled."""
    cfg = DetectorConfig(features=("a", "b"), hst_window=20, warmup_events=10, warmup_ns=0)
    logic = DetectorLogic(cfg, ManualClock())
    rng = random.Random(9)
    points = [{"a": rng.gauss(0.0, 1.0), "b": rng.gauss(3.0, 0.5)} for _ in range(60)]
    feed(logic, 0, points[:10])
    assert logic.snapshot().drift == b""
    feed(logic, 10, points[10:])
    snap = logic.snapshot()
    assert snap.drift != b""
    assert logic.snapshot().drift is snap.drift  # unchanged since: the pickle is reused


@pytest.mark.parametrize(("rate", "kept"), [(0.0002, 500), (0.05, 1)])
def test_cached_threshold_always_equals_a_fresh_computation(rate: float, kept: int) -> None:
    """The threshold kept between quantile updates equals threshold() after every point,
    with a small target alarm rate (one-bin shortcut: mostly kept) and a large one
    (recomputed after nearly every learned point)."""
    cfg = DetectorConfig(features=("a", "b"), hst_window=20, warmup_events=10, warmup_ns=0,
                         threshold_window=200, target_alarm_rate=rate)
    logic = DetectorLogic(cfg, ManualClock())
    rng = random.Random(12)
    checked = 0
    for i in range(700):
        scale = 1.0 if i < 400 else 3.0  # a change of scale moves the quantile
        logic.on_event(fv(i, {"a": rng.gauss(0.0, scale), "b": rng.gauss(3.0, 0.5)}))
        if logic._thr is not None:  # the cache under test
            assert logic._thr == logic.threshold()
            checked += 1
    assert checked >= kept


def test_a_threshold_no_score_can_cross_is_refused_naming_the_field() -> None:
    """Below one alarm per half window the rolling quantile is the largest recent score,
    which nothing exceeds: start-up stops naming target_alarm_rate and the window. An
    HST floor of 1 or more is refused too: its scores never exceed 1."""
    with pytest.raises(ConfigError, match=r"detector.target_alarm_rate: .*threshold_window "
                                          r"4000") as ei:
        DetectorConfig(target_alarm_rate=0.0002, threshold_window=4000).validate()
    assert ei.value.found == 0.0002
    with pytest.raises(ConfigError, match=r"detector.threshold_floor: must be below 1"):
        DetectorConfig(threshold_floor=1.2).validate()
    DetectorConfig().validate()  # the defaults can alarm
    assert DetectorConfig().target_alarm_rate * DetectorConfig().threshold_window / 2 >= 1


def _stationary(n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{"a": rng.gauss(0.0, 1.0), "b": rng.gauss(5.0, 2.0), "c": rng.gauss(-3.0, 0.5)}
            for _ in range(n)]


def test_half_space_trees_alone_alarm_at_the_promised_rate_without_a_margin() -> None:
    """With the tail rule off and no margin, HST's own scores cross the threshold on
    about target_alarm_rate of stationary points (it used to be a rolling maximum that
    no HST score could pass: zero alarms)."""
    cfg = DetectorConfig(tail=False, threshold_margin=0.0, target_alarm_rate=0.005,
                         threshold_window=2000, warmup_events=300, warmup_ns=0,
                         hst_window=100, drift="none", close_quiet_points=1, close_quiet_ns=0,
                         protect_model=False)
    logic = DetectorLogic(cfg, ManualClock())
    sigs = feed(logic, 0, _stationary(12_000, seed=3))
    opens = [s for s in sigs if s.phase == "open" and not s.warming_up]
    rate = len(opens) / 11_000
    assert 0.3 * cfg.target_alarm_rate <= rate <= 1.5 * cfg.target_alarm_rate


def test_half_space_trees_alone_flag_a_joint_outlier_with_the_default_margin() -> None:
    """Default margin, tail rule off: a point far out in every feature at once is
    flagged by the trees themselves."""
    cfg = DetectorConfig(tail=False, warmup_events=300, warmup_ns=0, hst_window=100,
                         drift="none")
    logic = DetectorLogic(cfg, ManualClock())
    feed(logic, 0, _stationary(3000, seed=5))
    sigs = feed(logic, 3000, [{"a": 9.0, "b": 25.0, "c": 2.0}])
    assert [(s.kind, s.phase) for s in sigs] == [("anomaly", "open")]


def test_the_tail_cut_does_not_learn_a_persistent_extreme_move() -> None:
    """A crash of repeated 8-18 sigma returns keeps its episode open while it lasts: the
    tail cut (each feature's peak |z|) does not rise under it, even after protection
    lapses and the statistics learn again."""
    cfg = DetectorConfig(warmup_events=300, warmup_ns=0, hst_window=100, drift="none",
                         protect_max_points=20)
    logic = DetectorLogic(cfg, ManualClock())
    rng = random.Random(8)
    calm = [{"ret": rng.gauss(0.0, 1.0), "rv": abs(rng.gauss(1.0, 0.1))} for _ in range(2000)]
    feed(logic, 0, calm)
    peak_before = list(logic.s.peak)
    crash = [{"ret": (-1) ** k * rng.uniform(8.0, 18.0), "rv": abs(rng.gauss(1.0, 0.1))}
             for k in range(200)]
    sigs = feed(logic, 2000, crash)
    assert next(s.phase for s in sigs if s.kind == "anomaly") == "open"
    assert "close" not in [s.phase for s in sigs if s.kind == "anomaly"]
    assert logic.s.ep_open
    assert logic.s.peak == peak_before


def test_two_anomalous_minute_bars_are_not_critical_by_duration_alone() -> None:
    """Duration escalates severity only with as many anomalous vectors: two 1-minute
    bars span 60 s of event time but are two points, not a minute of anomaly."""
    cfg = DetectorConfig(model="gaussian", warmup_events=100, warmup_ns=0, drift="none",
                         target_alarm_rate=0.01, threshold_margin=1.5, warn_excess=1e9,
                         critical_excess=1e9)
    logic = DetectorLogic(cfg, ManualClock())
    minute = 60
    out = []
    for j, x in enumerate([*noise(300), {"x": 80.0}, {"x": 85.0}]):
        out.extend(logic.on_event(fv(j * minute, x)))
    anomalies = [s for s in out if s.kind == "anomaly"]
    assert [s.phase for s in anomalies] == ["open"]
    assert anomalies[0].severity.value == "info"


def test_an_episode_opened_while_warming_up_acts_once_the_key_is_warm() -> None:
    """An incident inside an episode that opened during warm-up escalates as a warm signal
    (the playbook acts on it), not as one more warming-up signal."""
    cfg = DetectorConfig(features=("a", "b"), hst_window=50, warmup_events=100,
                         warmup_ns=200 * NS, drift="none", critical_excess=1e9,
                         close_quiet_points=50)
    logic = DetectorLogic(cfg, ManualClock())
    rng = random.Random(2)
    calm = [{"a": rng.gauss(0.0, 1.0), "b": rng.gauss(5.0, 1.0)} for _ in range(150)]
    first = feed(logic, 0, [*calm, {"a": 40.0, "b": 5.0}])  # warm by count, not by time
    assert [(s.phase, s.warming_up) for s in first if s.kind == "anomaly"] == [("open", True)]
    rising = [{"a": 40.0 * 1.2 ** k, "b": 5.0} for k in range(70)]
    later = feed(logic, 151, rising)  # critical by duration once t >= 200 s
    escalations = [s for s in later if s.phase == "escalate"]
    assert escalations[-1].severity.value == "critical"
    assert escalations[-1].ts >= 200 * NS
    assert not escalations[-1].warming_up


@pytest.mark.parametrize("model", ["hst", "gaussian"])
def test_values_too_large_to_square_are_scored_but_never_blind_the_key(model: str) -> None:
    """1e200 and -1e200 while warming up overflowed the running variance (then NaN for
    good): a later 100-sigma spike raised nothing."""
    rng = random.Random(1)
    keys = ("a",) if model == "gaussian" else ("a", "b", "c")

    def calm(n: int) -> list[dict[str, float]]:
        return [{k: 10 + rng.gauss(0, 1) for k in keys} for _ in range(n)]
    huge = [dict.fromkeys(keys, 1e200), dict.fromkeys(keys, -1e200)]
    logic = DetectorLogic(DetectorConfig(model=model, warmup_events=100, warmup_ns=0,
                                         drift="none"), ManualClock(0))
    feed(logic, 0, calm(20) + huge)
    learned = logic.s.n_learned
    assert learned == 20
    assert all(math.isfinite(x) for x in logic.s.mean + logic.s.var)
    out = feed(logic, 22, calm(600 if model == "gaussian" else 880)
               + [dict.fromkeys(keys, 1000.0)] * 5)
    assert any(isinstance(s, AnomalySignal) and s.phase == "open" and not s.warming_up
               for s in out)


def test_a_feature_flat_through_the_warm_up_learns_its_scale_once_it_moves() -> None:
    """An index price that starts arriving after the warm-up: its deviation was 0 for
    the first points, and a learned spread of exactly 0 clipped every later update to
    nothing, so a 5,000 bps deviation scored 0 for good. It learns its scale unclipped
    until it has one, and the deviation opens an anomaly."""
    scope = Scope(kind=ScopeKind.VENUE, value="okx", venue="okx")
    rng = random.Random(1)
    logic = DetectorLogic(DetectorConfig(warmup_ns=0), clock=lambda: 0)
    out: list[object] = []
    for i in range(3000):
        idx = 0.0 if i < 100 else rng.gauss(0, 5)
        if 2500 <= i < 2510:
            idx = 5000.0
        vals = {"ret_bps": rng.gauss(0, 3), "spread_bps": 2 + rng.random(),
                "index_dev_bps": idx}
        out += logic.on_event(FeatureVector(key="okx/X", scope=scope, ts=i * 10**9,
                                            values=vals, evidence_ids=[]))
    f = logic.s.features.index("index_dev_bps")
    assert 10 < logic.s.var[f] < 100
    opened = [s.ts // 10**9 for s in out
              if isinstance(s, AnomalySignal) and s.kind == "anomaly" and s.phase == "open"]
    assert opened == [2500]


def _opened(out: list[object]) -> list[int]:
    return [s.ts // NS for s in out
            if isinstance(s, AnomalySignal) and s.kind == "anomaly" and s.phase == "open"]


def test_a_quiet_markets_seconds_between_prints_are_never_many_sigmas() -> None:
    """A thin instrument whose price changed every second through the warm-up (its
    price_age_s exactly 0), then goes quiet for a few seconds at a time, as thin markets
    do: the age's spread is never below the key's time between vectors, so those
    seconds open no anomaly (learned from its first quiet second alone they read as
    z=20), while a price frozen for a minute does."""
    rng = random.Random(3)
    logic = DetectorLogic(DetectorConfig(warmup_ns=0), clock=lambda: 0)
    out: list[object] = []
    age = 0.0
    for i in range(2600):
        if i < 400 or rng.random() < 0.7:
            age = 0.0
        else:
            age += 1.0
        if i >= 2500:
            age = i - 2499.0  # frozen from 2500
        vals = {"ret_bps": rng.gauss(0, 3), "spread_bps": 2 + rng.random(),
                "price_age_s": age}
        out += logic.on_event(fv(i, vals))
    opened = _opened(out)
    assert len(opened) == 1
    assert 2500 < opened[0] < 2530
    assert logic.s.gap_s == pytest.approx(1.0)


def test_a_venues_flat_heartbeat_gap_and_sequence_learn_their_own_scale() -> None:
    """Heartbeats exactly once a second with no sequence gap through the warm-up: a
    missed heartbeat now and then (a 2 s gap, one sequence number) is ordinary, a
    30 s silence is an anomaly (a flat feature used to be blind for good)."""
    scope = Scope(kind=ScopeKind.VENUE, value="okx")
    rng = random.Random(4)
    logic = DetectorLogic(DetectorConfig(warmup_ns=0), clock=lambda: 0)
    out: list[object] = []
    ts = silence_end = 0
    for i in range(2600):
        gap = 1
        if i >= 400 and rng.random() < 0.02:
            gap = 2
        if i == 2500:
            gap = 30
        ts += gap * NS
        vals = {"hb_gap_s": float(gap), "seq_gap": gap - 1.0 if gap < 30 else 29.0,
                "latency_ms": 20 + rng.random(), "msg_rate_ratio": 1 + 0.05 * rng.random()}
        out += logic.on_event(FeatureVector(key="okx", scope=scope, ts=ts, values=vals,
                                            evidence_ids=[]))
        if i == 2500:
            silence_end = ts // NS
    assert _opened(out) == [silence_end]
    assert logic.s.gap_s == pytest.approx(1.0, abs=0.05)
