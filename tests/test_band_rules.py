"""The move bands' critical rules: each alone on hand-made readings, then through the bands
on markets a desk knows (a calm coin, a thin one, a small coin's ordinary slide, a stablecoin
pair that loses its peg)."""

from __future__ import annotations

import math
import random

import pytest
from riskguard.operators.detection.band_levels import CRITICAL_RULES, MoveBandConfig
from riskguard.operators.detection.band_rules import (
    LIMIT,
    MOVE,
    RANGE,
    SETTLEMENT,
    CriticalRules,
    Reading,
)
from riskguard.operators.detection.move_bands import MoveBands
from riskguard.schemas import FeatureVector, Scope, ScopeKind

from riskguard.errors import ConfigError

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 3600 * NS
DAY = 86_400 * NS


def move(bps: float, ratio: float, minutes: int = 5, scale: float = 0.002) -> Reading:
    return Reading(ratio, bps * 1e-4, f"move_{minutes}m", 0.05, scale, minutes * MINUTE, MOVE)


def day_range(bps: float, scale: float = 0.03, close_bps: float | None = None) -> Reading:
    """The day's range, its close as deep unless ``close_bps`` says otherwise."""
    close = (bps if close_bps is None else close_bps) * 1e-4
    return Reading(abs(bps) / 700.0, bps * 1e-4, "drawdown_1d", 0.07, scale, DAY, RANGE,
                   close=close)


def settlement(bps: float, kind: int = SETTLEMENT) -> Reading:
    return Reading(abs(bps) / 500.0, bps * 1e-4, "from_settlement", 0.05, -1.0, 0, kind)


FALLS = CriticalRules(MoveBandConfig(critical_rules=CRITICAL_RULES), adverse=-1)


def fired(rules: CriticalRules, *readings: Reading) -> list[str]:
    return [name for name, rule in rules.rules if rule(rules, readings)]


# -- each rule on its own readings --------------------------------------------

def test_a_fast_fall_is_critical_only_when_the_day_is_deep() -> None:
    """Out of its five-minute band, on a market whose day ranges are 2 %: with the day
    down 7 %, fast and deep; with the day down 3 % (bitcoin on a rate decision), only
    fast."""
    assert "fast_fall" in fired(FALLS, move(-200, 1.5), day_range(-700, scale=0.02))
    assert "fast_fall" not in fired(FALLS, move(-200, 1.5), day_range(-300, scale=0.02))
    assert "fast_fall" not in fired(FALLS, move(-200, 0.9), day_range(-700, scale=0.02))


def test_deep_is_three_typical_day_ranges_of_the_market_itself() -> None:
    """A stablecoin pair whose day ranges are 0.2 %: a 1 % fall is deep. A thin coin
    whose day ranges are 3 %: a 7 % fall is its ordinary volatile day, not deep."""
    assert "fast_fall" in fired(FALLS, move(-80, 3.0), day_range(-100, scale=0.002))
    assert "fast_fall" not in fired(FALLS, move(-80, 3.0), day_range(-100, scale=0.01))
    assert "fast_fall" not in fired(FALLS, move(-200, 1.5), day_range(-700, scale=0.03))


def test_deep_bps_is_deep_for_every_market_where_it_is_set() -> None:
    """No level by default; set (as a volatility index's levels set it), a day down past
    it is deep whatever the market's typical day, and before one is learned."""
    assert MoveBandConfig().deep_bps == math.inf
    level = CriticalRules(MoveBandConfig(deep_bps=600.0), adverse=-1)
    assert "fast_fall" in fired(level, move(-200, 1.5), day_range(-700, scale=0.03))
    assert "fast_fall" in fired(level, move(-200, 1.5), day_range(-700, scale=-1.0))
    assert "fast_fall" not in fired(FALLS, move(-200, 1.5), day_range(-700, scale=-1.0))


def test_in_a_keys_first_day_a_fall_past_warmup_deep_bps_is_deep_too() -> None:
    """Before a key has a day of its own history its typical day range is a guess from
    shorter moves: a day down past ``warmup_deep_bps`` (600) is deep then, not after."""
    rules = CriticalRules(MoveBandConfig(), adverse=-1)
    rules.young = True
    assert "fast_fall" in fired(rules, move(-200, 1.5), day_range(-700, scale=0.03))
    rules.young = False
    assert "fast_fall" not in fired(rules, move(-200, 1.5), day_range(-700, scale=0.03))


def test_a_fast_move_over_more_than_an_hour_is_not_fast() -> None:
    """Four hours out of band and deep: a slide, not a fast fall."""
    assert "fast_fall" not in fired(FALLS, move(-900, 1.5, minutes=240), day_range(-900))


def test_a_slide_needs_a_daily_limit_and_a_fall_unusual_for_the_market() -> None:
    """5.5 % below the settlement: with the day's range 2 typical day ranges, a slide;
    with it at 1.1 (a small coin's ordinary day), a warning."""
    assert "slide" in fired(FALLS, settlement(-550), day_range(-800, scale=0.04))
    assert "slide" not in fired(FALLS, settlement(-550), day_range(-800, scale=0.07))
    assert "slide" not in fired(FALLS, settlement(-450), day_range(-800, scale=0.04))


def test_a_slide_is_judged_where_the_market_closes_not_on_a_wick() -> None:
    """The day's low 2 typical day ranges deep, but the close back at 1.5 of them: a
    warning; closing at 1.75 or deeper, a slide."""
    assert "slide" not in fired(FALLS, settlement(-550),
                                day_range(-800, scale=0.04, close_bps=-600))
    assert "slide" in fired(FALLS, settlement(-550), day_range(-800, scale=0.04, close_bps=-700))


def test_a_limit_is_critical_on_the_reading_that_first_reaches_its_tier() -> None:
    assert "limit" in fired(FALLS, settlement(-550, LIMIT))
    assert "limit" not in fired(FALLS, settlement(-550))


def test_a_static_level_is_critical_only_before_the_typical_moves_are_known() -> None:
    unknown = Reading(1.2, -0.06, "move_1h", 0.05, -1.0, HOUR, MOVE)
    known = unknown._replace(scale=0.02)
    assert "static" in fired(FALLS, unknown)
    assert "static" not in fired(FALLS, known)
    learned_too = CriticalRules(MoveBandConfig(static_z=2.0), adverse=-1)
    assert fired(learned_too, known) == ["static"]


def test_only_adverse_moves_are_critical() -> None:
    """A rally past everything is a warning for a price, critical with ``both``."""
    rally = (move(200, 3.0), day_range(900), settlement(800, LIMIT))
    assert fired(FALLS, *rally) == []
    both = CriticalRules(MoveBandConfig(critical_rules=CRITICAL_RULES), adverse=0)
    assert {"fast_fall", "limit", "ratio", "horizons"} <= set(fired(both, *rally))


def test_the_rules_that_need_less_evidence_are_off_by_default() -> None:
    assert MoveBandConfig().critical_rules == ("fast_fall", "slide", "static")
    default = CriticalRules(MoveBandConfig(), adverse=-1)
    assert default.first([move(-150, 2.0), move(-160, 1.4, minutes=15)]) is None
    assert FALLS.first([move(-150, 2.0), move(-160, 1.4, minutes=15)]) == "ratio"


def test_on_daily_bars_a_days_move_counts_as_fast() -> None:
    rules = CriticalRules(MoveBandConfig(), adverse=-1)
    day = Reading(1.3, -0.09, "move_1d", 0.07, 0.03, DAY, MOVE)
    assert rules.first([day, day_range(-900)]) is None
    rules.for_interval(DAY)
    assert rules.first([day, day_range(-900)]) == "fast_fall"


@pytest.mark.parametrize(("field", "value"), [
    ("critical_rules", ("fast_fall", "slides")), ("deep_bps", 0.0), ("slide_z", -1.0),
    ("fast_s", math.nan), ("deep_z", 0.0), ("static_z", -2.0),
])
def test_bad_rule_settings_name_their_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"detector\.bands\.{field}"):
        MoveBandConfig(**{field: value}).validate()


# -- through the bands, on markets ---------------------------------------------

KEY = "binance/XUSDT"
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="XUSDT", venue="binance")


def feed(bands: MoveBands, bars: list[tuple[float, float, float]], start: int = 0,
         interval: int = MINUTE) -> list[tuple[int, str, str]]:
    """``(bar index, phase, severity)`` of every signal."""
    out = []
    for i, (close, low, high) in enumerate(bars, start):
        fv = FeatureVector(key=KEY, scope=SCOPE, ts=(i + 1) * interval, values={},
                           price=close, low=low, high=high, interval_ns=interval)
        out.extend((i, s.phase, s.severity.value) for s in bands.on_vector(fv))
    return out


def walk(n: int, sd: float, seed: int, start: float = 100.0) -> list[tuple[float, float, float]]:
    rng = random.Random(seed)
    p, out = start, []
    for _ in range(n):
        q = p * math.exp(rng.gauss(0.0, sd))
        out.append((q, min(p, q), max(p, q)))
        p = q
    return out


def test_a_thin_markets_jumps_between_a_few_quotes_are_its_ordinary_noise() -> None:
    """A coin quoted in steps of 0.4 %: most minutes nothing trades, and the price jumps a
    step or two between a few levels. Three days of it: no critical reading, whatever
    the jumps, once the bands have learned them."""
    rng = random.Random(3)
    step, level, bars = 0.004, 0, []
    for _ in range(3 * 1440):
        if rng.random() < 0.15:
            level = max(-3, min(3, level + rng.choice((-2, -1, 1, 2))))
        p = 100.0 * (1 + step) ** level
        bars.append((p, p, p))
    got = feed(MoveBands(MoveBandConfig(), key=KEY), bars)
    assert [g for g in got if g[2] == "critical" and g[0] > 1440] == []


def test_a_small_coins_ordinary_slide_is_a_warning_and_a_crash_is_critical() -> None:
    """A coin that moves 0.25 % a minute (days of 10 %): four days of it give no critical
    reading; a 6 % slide over three hours is past the first daily limit but ordinary for
    it (a warning at most); a fall of 20 % in ten minutes on top, three of its typical
    day ranges deep, is critical."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    calm = walk(5 * 1440, 0.0025, seed=0)
    assert [g for g in feed(bands, calm) if g[2] == "critical" and g[0] > 1440] == []
    p = calm[-1][0]
    slide = [(p * math.exp(-0.06 * (j + 1) / 180),) * 3 for j in range(180)]
    got = feed(bands, slide, start=len(calm))
    assert all(severity != "critical" for _, _, severity in got)
    q = slide[-1][0]
    crash = feed(bands, [(q * 0.90, q * 0.90, q), (q * 0.80, q * 0.80, q * 0.90)],
                 start=len(calm) + 180)
    assert "critical" in {severity for _, _, severity in crash}, crash


def test_a_fall_deep_only_in_absolute_terms_is_critical_in_a_keys_first_day_only() -> None:
    """A coin of 4 % days falls 7 % in five minutes: an hour after its first price that
    is deep (its day ranges are not known yet), three days after it is not (fast_fall
    alone, so that no slide past a daily limit decides)."""
    only_fast = MoveBandConfig(critical_rules=("fast_fall",))

    def crash_after(minutes: int) -> set[str]:
        bands = MoveBands(only_fast, key=KEY)
        calm = walk(minutes, 0.001, seed=2)
        feed(bands, calm)
        p = calm[-1][0]
        fall = [(p * (1 - 0.014 * (j + 1)),) * 3 for j in range(5)]
        return {severity for _, _, severity in feed(bands, fall, start=minutes)}

    assert "critical" in crash_after(60)
    assert "critical" not in crash_after(3 * 1440)


def test_a_stablecoin_pair_losing_its_peg_is_critical_within_minutes() -> None:
    """A pair that moves 1 bp a minute falls 2 % in five minutes: with the defaults,
    fast and (for this market) deep: three of its typical day ranges (about 0.5 % each,
    a random walk's day range at 1 bp a minute)."""
    bands = MoveBands(MoveBandConfig(), key=KEY)
    calm = walk(3 * 1440, 0.0001, seed=4, start=1.0)
    assert feed(bands, calm) == []
    p = calm[-1][0]
    depeg = [(p * (1 - 0.004 * (j + 1)),) * 3 for j in range(5)]
    got = feed(bands, depeg, start=len(calm))
    first = next(i for i, _, severity in got if severity == "critical")
    assert first - len(calm) <= 3  # a 1.6 % fall, three minutes in
