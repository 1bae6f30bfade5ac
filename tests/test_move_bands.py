"""MoveBands: the deterministic price-move detector, driven bar by bar.

Event time comes from the bars (``ts = (i + 1) * interval``); the random walks
are seeded, so every expected signal below is exact.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.operators.detection.band_levels import MoveBandConfig
from riskguard.operators.detection.move_bands import MoveBands, MoveBandState
from riskguard.schemas import AnomalySignal, FeatureVector, Scope, ScopeKind, decode, encode

from riskguard.errors import ConfigError
from tests.contract import (
    Case,
    check_input_not_mutated,
    check_resume_equals_uninterrupted,
    check_snapshot_independent,
    check_snapshot_is_versioned_data,
)

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 3600 * NS
DAY = 86_400 * NS
KEY = "binance/BTCUSDT"
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")
Bar = tuple[float, float, float]  # close, low, high


def _fv(i: int, close: float, low: float | None = None, high: float | None = None,
        interval: int = MINUTE, t0: int = 0) -> FeatureVector:
    """Bar ``i`` (closing at ``t0 + (i + 1) * interval``)."""
    return FeatureVector(key=KEY, scope=SCOPE, ts=t0 + (i + 1) * interval, values={},
                         price=close, low=low if low is not None else close,
                         high=high if high is not None else close, interval_ns=interval,
                         evidence_ids=[f"b{i}"])


def _walk(n: int, sd: float, seed: int = 7, start: float = 100.0) -> list[Bar]:
    """A seeded geometric random walk of ``n`` bars with log-return ``sd`` and wicks."""
    rng = random.Random(seed)
    p = start
    out = []
    for _ in range(n):
        q = p * math.exp(rng.gauss(0.0, sd))
        low = min(p, q) * math.exp(-abs(rng.gauss(0.0, sd / 2)))
        high = max(p, q) * math.exp(abs(rng.gauss(0.0, sd / 2)))
        out.append((q, low, high))
        p = q
    return out


def _feed(bands: MoveBands, bars: list[Bar], start: int = 0, interval: int = MINUTE,
          t0: int = 0) -> list[tuple[int, AnomalySignal]]:
    """Feed ``bars`` as bars ``start, start + 1, ...``; the signals with their bar index."""
    return [(start + j, sig) for j, (c, lo, hi) in enumerate(bars)
            for sig in bands.on_vector(_fv(start + j, c, lo, hi, interval, t0))]


CALM = _walk(2000, 0.0005)  # 5 bps a minute: about 1.4 days of a quiet market


def _calm_bands(n: int, config: MoveBandConfig | None = None) -> MoveBands:
    bands = MoveBands(config or MoveBandConfig(), key=KEY)
    assert _feed(bands, CALM[:n]) == []
    return bands


# -- calm, falls and severities -------------------------------------------

def test_a_calm_random_walk_gives_no_signal_after_warm_up() -> None:
    """1.4 days of 1-minute bars moving 5 bps a minute: nothing, although the
    volatility has been learned (the bands are no longer the caps)."""
    bands = _calm_bands(2000)
    assert bands.sigma_per_sqrt_ns is not None
    assert bands.s.h_var[MINUTE][1] >= bands.config.warmup_returns
    assert not bands.s.ep_open
    assert bands.s.signals == 0


def test_a_sudden_fall_opens_a_critical_price_move_naming_the_one_minute_horizon() -> None:
    """An 8 % fall in one bar (three of this market's typical day ranges): ``open``,
    ``critical``, ``move_1m`` first, its move in bps."""
    bands = _calm_bands(600)
    prev = CALM[599][0]
    low = prev * 0.92
    out = bands.on_vector(_fv(600, prev * 0.93, low=low, high=prev))
    assert len(out) == 1
    sig = out[0]
    assert (sig.kind, sig.phase, sig.severity.value) == ("price_move", "open", "critical")
    assert (sig.key, sig.episode_id, sig.model, sig.threshold) == (
        KEY, f"{KEY}#move1", "MoveBands", 1.0)
    assert not sig.warming_up
    assert sig.score > 1.0
    assert sig.evidence_ids == ["b600"]
    top = sig.top_features[0]
    assert top.feature == "move_1m"
    assert top.value == pytest.approx(math.log(0.92) * 1e4)  # -834 bps
    assert top.zscore < -10.0  # in typical one-minute moves
    assert len(sig.top_features) == bands.config.top_k


def test_a_move_past_the_static_cap_is_critical_during_warm_up() -> None:
    """In the first bars no volatility is known and each band is its cap (300 bps for
    one minute): a 253 bps fall passes, a 412 bps fall is critical at once."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    assert bands.on_vector(_fv(0, 100.0)) == []
    assert bands.on_vector(_fv(1, 99.0, low=97.5)) == []  # -253 bps, under the cap
    assert bands.sigma_per_sqrt_ns is None
    out = bands.on_vector(_fv(2, 99.0, low=95.0))  # -412 bps from the last close (99)
    assert [(s.phase, s.severity.value) for s in out] == [("open", "critical")]
    assert out[0].top_features[0].feature == "move_1m"
    assert out[0].top_features[0].value == pytest.approx(math.log(95.0 / 99.0) * 1e4)
    assert out[0].score == pytest.approx(-math.log(95.0 / 99.0) / 0.03)  # move / cap


# Two horizons with exact bands: on a flat price the learned typical moves are 0,
# so once warm (5 horizons' worth) each band is its floor; the drawdown band,
# with no interval volatility, stays at its cap (700 bps). The band arithmetic is judged
# with the two rules that need least evidence (a move 1.25 times its band, two horizons
# out at once), which are off by default.
EXACT = MoveBandConfig(horizons_s=(60.0, 300.0), floor_bps=(50.0, 100.0),
                       cap_bps=(1000.0, 1000.0), band_k=(7.0, 6.0), warmup_returns=5,
                       critical_rules=("ratio", "horizons", "static"))
FLAT = [(100.0, 100.0, 100.0)] * 60
#: nearly flat: a typical move of a hundredth of a bp, far under the floors (a key that
#: has seen only one price has learned none, and its first move starts the learning)
STILL = [(p, p, p) for p in (100.0 + 1e-4 * (i < 10 and i % 2) for i in range(60))]


def _down(p: float, bps: float) -> float:
    return p * math.exp(-bps * 1e-4)


def test_a_moderate_move_out_of_one_band_only_is_a_warning() -> None:
    """57 bps in one minute: 1.14 one-minute bands (under ``critical_ratio`` 1.25),
    0.57 five-minute bands: one horizon out, ``warn``."""
    bands = MoveBands(EXACT, key=KEY)
    p = _down(100.0, 57.0)
    out = _feed(bands, [*FLAT, (p, p, p)])
    assert [(i, s.phase, s.severity.value) for i, s in out] == [(60, "open", "warn")]
    sig = out[0][1]
    assert sig.score == pytest.approx(57.0 / 50.0)
    assert [(c.feature, round(c.value, 6)) for c in sig.top_features] == [
        ("move_1m", -57.0), ("move_5m", -57.0), ("drawdown_1d", -57.0)]


def test_two_horizons_out_of_band_at_once_is_critical() -> None:
    """45 bps down (inside every band), then 57 bps more: 1.14 one-minute bands and
    1.02 five-minute bands. Neither alone reaches 1.25, but two horizons are out."""
    bands = MoveBands(EXACT, key=KEY)
    p1 = _down(100.0, 45.0)
    p2 = _down(p1, 57.0)
    out = _feed(bands, [*STILL, (p1, p1, p1), (p1, p1, p1), (p2, p2, p2)])
    assert [(i, s.phase, s.severity.value) for i, s in out] == [(62, "open", "critical")]
    moves = {c.feature: c.value for c in out[0][1].top_features}
    assert moves["move_1m"] == pytest.approx(-57.0)
    assert moves["move_5m"] == pytest.approx(-102.0)
    assert out[0][1].score == pytest.approx(57.0 / 50.0)


def test_a_warning_escalates_when_a_second_horizon_leaves_its_band() -> None:
    """Same episode: ``open`` at ``warn``, then ``escalate`` to ``critical``."""
    bands = MoveBands(EXACT, key=KEY)
    p1 = _down(100.0, 57.0)
    p2 = _down(p1, 55.0)  # 1.1 one-minute bands, 1.12 five-minute bands
    out = _feed(bands, [*FLAT, (p1, p1, p1), (p2, p2, p2)])
    assert [(i, s.phase, s.severity.value, s.episode_id) for i, s in out] == [
        (60, "open", "warn", f"{KEY}#move1"), (61, "escalate", "critical", f"{KEY}#move1")]


def _up(p: float, bps: float) -> float:
    return p * math.exp(bps * 1e-4)


def test_a_rally_past_the_learned_bands_is_a_warning_and_the_same_fall_is_critical() -> None:
    """The learned bands make a price's falls critical (``critical_moves = "down"``): 45
    then 57 bps up leaves two bands at once, as the fall above does, and is ``warn``;
    with ``critical_moves = "both"`` it is ``critical``."""
    def run(config: MoveBandConfig, step: Callable[[float, float], float]) -> list:
        bands = MoveBands(config, key=KEY)
        p1 = step(100.0, 45.0)
        p2 = step(p1, 57.0)
        return [(i, s.phase, s.severity.value)
                for i, s in _feed(bands, [*STILL, (p1, p1, p1), (p1, p1, p1), (p2, p2, p2)])]

    assert run(EXACT, _up) == [(62, "open", "warn")]
    assert run(EXACT, _down) == [(62, "open", "critical")]
    both = MoveBandConfig(**{**{f: getattr(EXACT, f) for f in EXACT.__struct_fields__},
                             "critical_moves": "both"})
    assert run(both, _up) == [(62, "open", "critical")]


def test_a_rally_past_a_static_level_is_a_warning_unless_rises_are_adverse() -> None:
    """A static level is an exchange's breaker, but only an adverse move is critical:
    412 bps up in a minute passes the one-minute cap of 300 bps and warns; with
    ``critical_moves = "both"`` it is critical."""
    for moves, want in (("down", "warn"), ("both", "critical")):
        bands = MoveBands(MoveBandConfig(critical_moves=moves), key=KEY)
        assert bands.on_vector(_fv(0, 100.0)) == []
        out = bands.on_vector(_fv(1, 100.0, high=_up(100.0, 412.0)))
        assert [(s.phase, s.severity.value) for s in out] == [("open", want)]


def test_a_volatility_index_is_critical_on_its_rises() -> None:
    """For a volatility index (its levels' ``critical_moves = "up"``) a rise of implied
    volatility is the adverse move: the rally the price bands hold at ``warn`` is
    critical, and the same fall a warning."""
    vol = MoveBandConfig(volatility=MoveBandConfig().volatility).for_key(KEY, "volatility")
    assert vol.critical_moves == "up"
    exact = MoveBandConfig(**{**{f: getattr(EXACT, f) for f in EXACT.__struct_fields__},
                              "critical_moves": vol.critical_moves})
    for step, want in ((_up, "critical"), (_down, "warn")):
        bands = MoveBands(exact, key=KEY)
        p1 = step(100.0, 45.0)
        p2 = step(p1, 57.0)
        out = _feed(bands, [*STILL, (p1, p1, p1), (p1, p1, p1), (p2, p2, p2)])
        assert [s.severity.value for _i, s in out] == [want]


def test_critical_moves_names_a_direction() -> None:
    with pytest.raises(ConfigError, match=r"detector\.bands\.critical_moves"):
        MoveBandConfig(critical_moves="sideways").validate()


# -- episodes --------------------------------------------------------------

def test_a_persistent_fall_stays_one_open_episode_and_is_not_learned() -> None:
    """8 % down, then a calm walk at the new level: one ``open`` (critical), and once the
    price has found its level a ``deescalate`` to warn, but no ``close`` while the
    pre-fall high is inside the day's drawdown window, and no volatility learned
    meanwhile, so the move stays outside its band while it lasts. After the day it
    closes, in the same episode."""
    bands = _calm_bands(1500)
    learned = (copy.deepcopy(bands.s.h_var), bands.s.var_rate, bands.s.n_returns)
    low_level = _walk(1700, 0.0005, seed=11, start=CALM[1499][0] * 0.92)
    during = _feed(bands, low_level[:1400], start=1500)
    phases = [(s.phase, s.severity.value) for _, s in during]
    assert phases == [("open", "critical"), ("deescalate", "warn")]
    assert during[0][0] == 1500 and during[1][0] - 1500 < 60
    assert bands.s.ep_open
    assert (bands.s.h_var, bands.s.var_rate, bands.s.n_returns) == learned
    after = _feed(bands, low_level[1400:], start=2900)
    assert [s.phase for _, s in after] == ["close"]
    close_at, close = after[0]
    assert close_at - 1500 >= 1440  # not before the pre-fall high left the 1-day window
    assert close.episode_id == during[0][1].episode_id == f"{KEY}#move1"
    assert close.severity.value == "warn"


def test_a_fall_that_goes_on_stays_critical_until_it_stops() -> None:
    """A trip, then the price keeps grinding lower (a new low close every bar, each step
    well inside the one-minute band): no ``deescalate`` while the lows go on. Once it
    holds its level for two bars, one ``deescalate``; a second leg down from there trips
    again (``escalate`` to critical), in the same episode. (No daily limits: the grind
    passes 5 % from the settlement, which would be a trip of its own.)"""
    bands = _calm_bands(1500, MoveBandConfig(daily_limits_bps=()))
    p = CALM[1499][0]
    tripped = bands.on_vector(_fv(1500, p * 0.92, low=p * 0.92, high=p))
    assert [(s.phase, s.severity.value) for s in tripped] == [("open", "critical")]
    p *= 0.92
    grind = [(p * (1 - 0.001 * (j + 1)), p * (1 - 0.001 * (j + 1)), p * (1 - 0.001 * j))
             for j in range(40)]
    assert _feed(bands, grind, start=1501) == []
    p = grind[-1][0]
    level = [(p, p * 1.0001, p * 1.0002)] * 5
    held = _feed(bands, level, start=1541)
    assert [(i, s.phase, s.severity.value) for i, s in held] == [(1542, "deescalate", "warn")]
    leg = _feed(bands, [(p * 0.92, p * 0.92, p)], start=1546)
    assert [(s.phase, s.severity.value) for _, s in leg] == [("escalate", "critical")]
    assert {s.episode_id for _, s in [*held, *leg]} == {tripped[0].episode_id}


@pytest.mark.parametrize("quiet_points", [3, 5])
def test_an_episode_closes_after_close_quiet_points_quiet_vectors(quiet_points: int) -> None:
    """A 2 % wick in a quiet market (4 one-minute bands, but the day is not down 6 %:
    a warning), then the price is back in band: ``close`` on the
    ``close_quiet_points``-th quiet bar, same episode."""
    config = MoveBandConfig(close_quiet_points=quiet_points)
    bands = MoveBands(config, key=KEY)
    calm = _walk(400, 0.0003, seed=3)
    assert _feed(bands, calm) == []
    c = calm[-1][0]
    opened = bands.on_vector(_fv(400, c, low=c * 0.98, high=c))
    assert [(s.phase, s.severity.value) for s in opened] == [("open", "warn")]
    assert opened[0].top_features[0].feature == "move_1m"
    after = _feed(bands, _walk(20, 0.0003, seed=4, start=c), start=401)
    assert [(i, s.phase) for i, s in after] == [(400 + quiet_points, "close")]
    closed = after[0][1]
    assert closed.episode_id == opened[0].episode_id
    assert closed.severity.value == "warn"
    assert closed.score < config.hysteresis


@pytest.mark.parametrize(("interval", "readings"), [(MINUTE, 2), (HOUR, 1), (DAY, 1)])
def test_a_trip_deescalates_after_two_quiet_readings_or_a_quiet_hour(
        interval: int, readings: int) -> None:
    """Whichever comes first: two quiet bars of minutes, but one hourly or daily bar (an
    hour of quiet; two daily bars would hold a reduce-only for two days)."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    walk = _walk(200, 0.002, seed=8)
    assert [s.phase for _, s in _feed(bands, walk, interval=interval)] == []
    c = walk[-1][0]
    tripped = bands.on_vector(_fv(200, c * 0.7, low=c * 0.7, high=c, interval=interval))
    assert [(s.phase, s.severity.value) for s in tripped] == [("open", "critical")]
    level = [(c * 0.7, c * 0.7 * 1.001, c * 0.7 * 1.002)] * 5
    eased = _feed(bands, level, start=201, interval=interval)
    assert [(i, s.phase) for i, s in eased][:1] == [(200 + readings, "deescalate")]


def test_a_rebound_after_a_trip_is_quiet() -> None:
    """A price that bounces back after its trip has found its level: the rebound's moves
    since the trip are out of band, but the wrong way to keep the trip critical."""
    bands = _calm_bands(1500)
    p = CALM[1499][0]
    tripped = bands.on_vector(_fv(1500, p * 0.92, low=p * 0.92, high=p))
    assert [(s.phase, s.severity.value) for s in tripped] == [("open", "critical")]
    up = [(p * 0.92 * (1 + 0.01 * (j + 1)),) * 3 for j in range(3)]
    assert [(i, s.phase) for i, s in _feed(bands, up, start=1501)] == [
        (1502, "deescalate")]


# -- bar intervals, gaps, odd input ---------------------------------------

LONG_NAMES = {"move_1h", "move_4h", "move_1d", "drawdown_1d", "rally_1d"}


def test_hourly_bars_report_no_horizon_shorter_than_one_bar() -> None:
    """A bar cannot show a one-minute move: with hourly bars every horizon below an
    hour is measured over the hour, reported as ``move_1h``."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    walk = _walk(24 * 30, 0.003, seed=5)
    c = walk[-1][0]
    out = _feed(bands, [*walk, (c * 0.8, c * 0.78, c)], interval=HOUR)
    assert out, "the 20 % fall must be reported"
    assert out[-1][0] == len(walk)
    assert out[-1][1].top_features[0].feature == "move_1h"
    names = {f.feature for _, s in out for f in s.top_features}
    assert names <= LONG_NAMES
    assert min(h for h in bands.s.h_var if h > 0) == HOUR


def test_daily_bars_report_only_the_one_day_horizon_and_drawdown() -> None:
    """Daily bars: every horizon is one day (and the fall is past the daily limits, from
    the previous bar's close)."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    walk = _walk(120, 0.01, seed=5)
    c = walk[-1][0]
    out = _feed(bands, [*walk, (c * 0.8, c * 0.78, c)], interval=DAY)
    assert [(i, s.phase, s.severity.value) for i, s in out] == [(120, "open", "critical")]
    names = {f.feature for _, s in out for f in s.top_features}
    assert names == {"move_1d", "drawdown_1d", "from_settlement"}
    assert sorted(bands.s.h_var) == [-DAY, DAY]


def test_no_move_is_measured_across_a_gap_in_the_data() -> None:
    """30 days without data, then the price is 50 % higher: no reference is that old,
    so no signal; later moves are measured from the bars after the gap."""
    bands = _calm_bands(300)
    c = CALM[299][0] * 1.5
    gap = 30 * DAY
    assert _feed(bands, [(c, c, c)] * 5, start=300, t0=gap) == []
    out = bands.on_vector(_fv(305, c * 0.95, t0=gap))
    assert [(s.phase, s.severity.value) for s in out] == [("open", "critical")]
    assert out[0].top_features[0].feature == "move_1m"
    assert out[0].top_features[0].value == pytest.approx(math.log(0.95) * 1e4)


def test_a_gap_teaches_nothing_about_volatility() -> None:
    """Three days without data (shorter than the seven-day memory): the bar after the gap
    is learned as if it followed the last one, so one bar does not outweigh what the
    bands learned (the elapsed time once gave it a quarter of the weight)."""
    bands = _calm_bands(2000)
    before = {h: v[0] for h, v in bands.s.h_var.items()}
    sigma = bands.sigma_per_sqrt_ns
    c = CALM[1999][0]
    assert _feed(bands, [(c, c, c)], start=2000, t0=3 * DAY) == []
    for h, v in before.items():
        assert bands.s.h_var[h][0] == pytest.approx(v, rel=0.02), h
    assert bands.sigma_per_sqrt_ns == sigma


def test_a_gap_longer_than_the_memory_starts_the_learning_afresh() -> None:
    """Thirty days without data: what was learned is older than the seven-day memory, so
    the key warms up again (the caps, then its new volatility), and no single bar after
    the gap becomes its yardstick."""
    bands = _calm_bands(2000)
    c = CALM[1999][0]
    after = _walk(40, 0.0005, seed=11, start=c)
    assert _feed(bands, after, start=2000, t0=30 * DAY) == []
    assert bands.s.n_returns == 39
    assert bands.s.h_var[MINUTE][1] == pytest.approx(39)
    assert bands.sigma_per_sqrt_ns is not None


def test_a_long_gap_during_an_episode_starts_the_learning_afresh_too() -> None:
    """A crash, then thirty days without data (a halt): the episode was open, so nothing
    was being learned, yet what was learned before is as stale as without it."""
    bands = _calm_bands(2000)
    c = CALM[1999][0]
    assert _feed(bands, [(c * 0.9, c * 0.9, c)], start=2000)
    assert bands.s.ep_open
    _feed(bands, _walk(5, 0.0005, seed=3, start=c * 0.9), start=2001, t0=30 * DAY)
    assert bands.s.n_returns < bands.config.warmup_returns
    assert bands.sigma_per_sqrt_ns is None


def test_a_gap_longer_than_every_look_back_restarts_a_trips_reference() -> None:
    """A trip, then three days without data, and the price resumes 17 % above the trip's:
    no look-back is that long, so the trip is judged from where the data resumes (as
    CME restarts its window when trading resumes). The resumed market is quiet, so the
    episode closes; before, the first bar escalated on a "rally" from the trip's price
    three days earlier."""
    bands = _calm_bands(2000)
    c = CALM[1999][0]
    assert [s.phase for _, s in _feed(bands, [(c * 0.9, c * 0.9, c)], start=2000)] == [
        "open"]
    assert [s.phase for _, s in _feed(bands, [(c * 0.9, c * 0.9, c * 0.9)] * 10,
                                      start=2001)] == ["deescalate"]
    after = _feed(bands, [(c * 1.05, c * 1.05, c * 1.05)] * 10, start=2011, t0=3 * DAY)
    assert [(i, s.phase, s.severity.value) for i, s in after] == [(2013, "close", "warn")]
    assert bands.s.reset_ts == -1


def test_a_vector_without_price_gives_nothing_and_changes_nothing() -> None:
    """Venue-health keys carry no price."""
    bands = _calm_bands(100)
    before = bands.snapshot()
    fv = FeatureVector(key="binance", scope=SCOPE, ts=101 * MINUTE, values={"latency_ms": 9.0})
    assert bands.on_vector(fv) == []
    assert bands.snapshot() == before


def test_an_out_of_order_older_vector_is_ignored() -> None:
    """A bar older than the last one (and 50 % off) is dropped: no signal, no state
    change, and the next bar is measured as if it never came."""
    bands = _calm_bands(100)
    before = bands.snapshot()
    c = CALM[99][0]
    assert bands.on_vector(_fv(97, c * 0.5)) == []
    assert bands.snapshot() == before
    assert _feed(bands, CALM[100:110], start=100) == []


# -- configuration ---------------------------------------------------------

def test_the_default_config_is_valid() -> None:
    """``validate`` returns the config itself."""
    config = MoveBandConfig()
    assert config.validate() is config


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"floor_bps": (50.0, 80.0, 120.0, 200.0, 300.0)}, "detector.bands.floor_bps"),
        ({"band_k": (7.0,)}, "detector.bands.band_k"),
        ({"horizons_s": ()}, "detector.bands.horizons_s"),
        ({"floor_bps": (400.0, 80.0, 120.0, 200.0, 300.0, 500.0)},
         "detector.bands.floor_bps[0]"),
        ({"horizons_s": (300.0, 60.0, 900.0, 3600.0, 14_400.0, 86_400.0)},
         "detector.bands.horizons_s"),
        ({"band_k": (7.0, 6.0, -5.5, 5.0, 4.0, 3.0)}, "detector.bands.band_k[2]"),
        ({"cap_bps": (300.0, 500.0, 700.0, math.inf, 1500.0, 2000.0)},
         "detector.bands.cap_bps[3]"),
        ({"critical_ratio": 0.9}, "detector.bands.critical_ratio"),
        ({"hysteresis": 0.0}, "detector.bands.hysteresis"),
        ({"vol_halflife_s": 0.0}, "detector.bands.vol_halflife_s"),
        ({"close_quiet_points": -1}, "detector.bands.close_quiet_points"),
    ],
    ids=["floor-length", "band_k-length", "no-horizons", "floor-above-cap",
         "decreasing-horizons", "negative-k", "infinite-cap", "critical-ratio-below-1",
         "zero-hysteresis", "zero-halflife", "negative-quiet-points"],
)
def test_a_bad_config_raises_config_error_naming_the_field(changes: dict, path: str) -> None:
    """The error names the key path (``detector.bands.<field>``) and what arrived."""
    config = MoveBandConfig(**changes)
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert info.value.path == path
    assert str(info.value).startswith(path + ": ")
    assert isinstance(info.value, ValueError)


def test_repeated_horizons_are_refused() -> None:
    """Horizons must be strictly increasing: a repeated one would silently drop the
    second one's floor, cap and ``band_k``."""
    config = MoveBandConfig(horizons_s=(60.0, 60.0, 900.0, 3600.0, 14_400.0, 86_400.0))
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert info.value.path == "detector.bands.horizons_s"


def test_validate_uses_the_given_path() -> None:
    """Embedded elsewhere, the error names that place."""
    with pytest.raises(ConfigError) as info:
        MoveBandConfig(cap_bps=(300.0, 500.0)).validate("guard.bands")
    assert info.value.path == "guard.bands.cap_bps"


# -- the stateful contract -------------------------------------------------

class _Logic:
    """``on_event`` adapter over ``on_vector``: the contract suite drives events."""

    def __init__(self, state: MoveBandState | None) -> None:
        self.bands = MoveBands(MoveBandConfig(), KEY, state=state)

    def on_event(self, fv: FeatureVector) -> list[AnomalySignal]:
        return self.bands.on_vector(fv)

    def snapshot(self) -> MoveBandState:
        return self.bands.snapshot()


def _contract_events() -> list[FeatureVector]:
    """Warm-up, a wick that opens and closes an episode, then a lasting fall that finds
    its level."""
    bars = list(CALM[:300])
    c = bars[-1][0]
    bars.append((c, c * 0.97, c))  # 305 bps: past the one-minute cap
    bars.extend(_walk(20, 0.0005, seed=4, start=c))
    bars.extend(_walk(79, 0.0005, seed=5, start=bars[-1][0] * 0.9))
    return [_fv(i, *bar) for i, bar in enumerate(bars)]


EVENTS = _contract_events()
CASE = Case("move-bands", _Logic, EVENTS,
            splits=(1, 2, 31, 300, 301, 302, 321, 322, 331, 332, 333, 350))


def test_the_contract_events_open_and_close_episodes() -> None:
    """The case is worth running: it opens, closes, reopens and de-escalates an
    episode."""
    logic = _Logic(None)
    out = [(i, s.phase) for i, e in enumerate(EVENTS) for s in logic.on_event(e)]
    assert out == [(300, "open"), (303, "close"), (321, "open"), (324, "deescalate")]


@pytest.mark.parametrize("check", [check_snapshot_is_versioned_data, check_snapshot_independent,
                                   check_resume_equals_uninterrupted,
                                   check_input_not_mutated],
                         ids=lambda c: c.__name__)
def test_move_bands_meet_the_stateful_contract(check: Callable[[Case], None]) -> None:
    """Snapshot pickles, is independent of later bars, and resuming from it (also in
    the middle of an episode) gives exactly the uninterrupted run's signals."""
    check(CASE)


_RANK = {"info": 0, "warn": 1, "critical": 2}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.08, 0.08), st.integers(1, 40)), min_size=1,
                max_size=12),
       st.integers(0, 2**16), st.sampled_from([MINUTE, HOUR]))
def test_episodes_follow_their_grammar_whatever_the_moves(
        legs: list[tuple[float, int]], seed: int, interval: int) -> None:
    """Calm walks broken by jumps of up to 8 % in either direction: every episode is
    ``open``, then ``escalate`` (a rise) and ``deescalate`` (critical to warn, never
    twice in a row) in any order, then ``close``; one episode at a time."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    bars = list(CALM[:300])
    rng = random.Random(seed)
    for jump, calm in legs:
        p = bars[-1][0] * math.exp(jump)
        lo, hi = min(p, bars[-1][0]), max(p, bars[-1][0])
        bars.append((p, lo, hi))
        bars.extend(_walk(calm, 0.0005, seed=rng.randrange(2**16), start=p))
    severity, episode = None, None
    for _, sig in _feed(bands, bars, interval=interval):
        if sig.phase == "open":
            assert severity is None
            severity, episode = sig.severity.value, sig.episode_id
            continue
        assert severity is not None and sig.episode_id == episode
        if sig.phase == "escalate":
            assert _RANK[sig.severity.value] > _RANK[severity]
        elif sig.phase == "deescalate":
            assert (severity, sig.severity.value) == ("critical", "warn")
        else:
            assert sig.phase == "close" and sig.severity.value == severity
            severity = None
            continue
        severity = sig.severity.value


def test_bars_claiming_ever_new_intervals_keep_the_bands_state_bounded() -> None:
    """A feed whose bars each claim another interval makes new horizons to learn each time:
    what the key learns keeps only the current plan's horizons past 64, and the per-horizon
    settings cache is cleared past 256."""
    ns = 10**9
    bands = MoveBands(MoveBandConfig(), key="okx/BTC-USDT")
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
    most = (0, 0)
    for i in range(12_000):
        bands.on_vector(FeatureVector(
            key="okx/BTC-USDT", scope=scope, ts=10**18 + i * 60 * ns, values={},
            price=100.0 + (i % 7) * 0.01, interval_ns=60 * ns + (i + 1) * 1000))
        most = (max(most[0], len(bands.s.h_var)), max(most[1], len(bands._params_at)))
    assert most[0] <= 64 + 10 and most[1] <= 256 + 10


# -- prices at the ends of the float range ------------------------------------

def test_a_fall_from_a_huge_to_a_tiny_price_is_critical_not_a_crash() -> None:
    """1e300 then 1e-300: their ratio underflows to 0, whose log raised."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    out = [s for i, p in enumerate([100.0, 100.0, 1e300, 1e-300])
           for s in bands.on_vector(_fv(i, p))]
    assert any(s.severity.value == "critical" for s in out)
    assert math.isfinite(bands.s.var_rate)


def test_a_rally_of_1e600_times_gives_a_signal_the_schema_takes() -> None:
    bands = MoveBands(MoveBandConfig(), key=KEY)
    out = [s for i in range(600) for s in bands.on_vector(_fv(i, 1e-300 * (1 + i % 5 * 2e-4)))]
    out += bands.on_vector(_fv(600, 1e300))
    assert out
    for sig in out:
        assert isinstance(decode("signals", encode(sig)), AnomalySignal), sig.score


def test_a_key_whose_bar_interval_keeps_changing_resumes_as_if_unbroken() -> None:
    """Bars of 33 intervals in turn: past 64 learned horizons the bands forget those of
    other intervals, on the interval's change. Killed and resumed inside the last run,
    the key keeps what an unbroken one keeps and signals the same 10 % fall alike."""
    from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot

    rng = random.Random(7)
    scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")
    ts, price, rows = 0, 100.0, []
    for interval, n in [(k * DAY, 32) for k in range(2, 35)] + [(2 * DAY, 10)]:
        for _ in range(n):
            ts += interval
            price *= 1 + rng.gauss(0, 0.01)
            rows.append((ts, price, interval))
    rows.append((ts + 2 * DAY, price * 0.9, 2 * DAY))
    vectors = [FeatureVector(key="binance/BTCUSDT", scope=scope, ts=t, values={}, price=x,
                             low=x, high=x, interval_ns=i, evidence_ids=[f"b{j}"])
               for j, (t, x, i) in enumerate(rows)]

    def view(signals: list[AnomalySignal]) -> list[tuple[int, str, str, float]]:
        return [(s.ts, s.phase, s.severity.value, round(s.score, 9)) for s in signals]

    unbroken = MoveBands(MoveBandConfig(), key="binance/BTCUSDT")
    whole = [s for v in vectors for s in unbroken.on_vector(v)]
    cut = 33 * 32 - 5
    first = MoveBands(MoveBandConfig(), key="binance/BTCUSDT")
    out = [s for v in vectors[:cut] for s in first.on_vector(v)]
    resumed = MoveBands(MoveBandConfig(), key="binance/BTCUSDT",
                        state=decode_snapshot(encode_snapshot(first.snapshot())))
    out += [s for v in vectors[cut:] for s in resumed.on_vector(v)]
    assert view(out) == view(whole) and any(s.phase == "open" for s in whole)
    assert resumed.s.h_var == unbroken.s.h_var


# -- a flat market -----------------------------------------------------------

def test_a_flat_stretch_does_not_hold_the_learned_volatility_at_zero_for_good() -> None:
    """2,000 bars at one price taught a typical move of exactly 0, and each later move was
    clipped to a multiple of 0: the bands stayed at their floors for ever and a market
    moving 30 bps a minute went critical again and again. Its first move now starts the
    learning afresh: it learns about what a key that saw only the
    moving market has, and says the same; a key resumed half-way says the same again."""
    moving = _walk(3000, 0.003, seed=5)
    flat = MoveBands(MoveBandConfig(), key=KEY)
    assert _feed(flat, [(100.0, 100.0, 100.0)] * 2000) == []
    assert flat.s.h_var[MINUTE][0] == 0.0 and flat.s.var_rate == 0.0
    after_flat = _feed(flat, moving, start=2000)
    fresh = MoveBands(MoveBandConfig(), key=KEY)
    alone = _feed(fresh, moving, start=2000)
    assert flat.s.h_var[MINUTE][0] == pytest.approx(fresh.s.h_var[MINUTE][0], rel=0.5)
    assert flat.s.var_rate == pytest.approx(fresh.s.var_rate, rel=0.5)
    criticals = [i for i, s in after_flat if s.severity.value == "critical"]
    assert len(criticals) <= len([i for i, s in alone if s.severity.value == "critical"]) + 2
    resumed = MoveBands(MoveBandConfig(), key=KEY, state=copy.deepcopy(flat.snapshot()))
    more = _walk(500, 0.003, seed=6, start=moving[-1][0])
    assert _feed(resumed, more, start=5000) == _feed(flat, more, start=5000)


def test_a_departure_from_a_flat_market_is_still_judged_against_the_floor() -> None:
    """While the price stands still the bands are at their floors: a peg that breaks by
    60 bps in a minute is out of its one-minute band (the floor, 50 bps), not inside
    the static cap."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    assert _feed(bands, [(1.0, 1.0, 1.0)] * 2000) == []
    p = _down(1.0, 60.0)
    out = _feed(bands, [(p, p, 1.0)], start=2000)
    assert [(i, s.phase) for i, s in out] == [(2000, "open")]
    assert out[0][1].score == pytest.approx(60.0 / 50.0, rel=1e-3)
