"""Daily price limits, as CME runs them on its bitcoin futures: tiers of 7 %, 13 % and
20 % from the previous day's settlement trip whatever the learned volatility (the
``limit`` rule; by default the tiers are 5, 10, 15 and 20 % and count as the ``slide``
rule's evidence, tested in ``test_band_rules.py``).

Hourly bars; bands so wide (band_k 50, caps 50 %) that only the limits can trip.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from riskguard.operators.detection.band_levels import MoveBandConfig
from riskguard.operators.detection.detector import DetectorConfig
from riskguard.operators.detection.move_bands import MoveBands, MoveBandState
from riskguard.schemas import AnomalySignal, FeatureVector, Scope, ScopeKind

from riskguard.config import decode_section
from riskguard.errors import ConfigError
from tests.contract import (
    Case,
    check_resume_equals_uninterrupted,
    check_snapshot_independent,
    check_snapshot_is_versioned_data,
)

NS = 1_000_000_000
HOUR = 3600 * NS
DAY = 24 * HOUR
KEY = "binance/SOLUSDT"
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="SOLUSDT", venue="binance")
WIDE = MoveBandConfig(band_k=(50.0,) * 6, cap_bps=(5000.0,) * 6, critical_rules=("limit",),
                      daily_limits_bps=(700.0, 1300.0, 2000.0), critical_moves="both")


def _bands(config: MoveBandConfig = WIDE) -> MoveBands:
    return MoveBands(config, key=KEY)


def _bar(hour: int, close: float, low: float | None = None,
         high: float | None = None) -> FeatureVector:
    """The hourly bar closing ``hour`` hours after the first midnight."""
    return FeatureVector(key=KEY, scope=SCOPE, ts=hour * HOUR, values={}, price=close,
                         low=close if low is None else low,
                         high=close if high is None else high, interval_ns=HOUR,
                         evidence_ids=[f"h{hour}"])


def _run(bands: MoveBands, bars: list[tuple[int, float, float, float]]
         ) -> list[tuple[int, str, str, list[str]]]:
    """``(hour, phase, severity, top features)`` of every signal."""
    out = []
    for hour, close, low, high in bars:
        for s in bands.on_vector(_bar(hour, close, low, high)):
            assert isinstance(s, AnomalySignal)
            out.append((hour, s.phase, s.severity.value, [f.feature for f in s.top_features]))
    return out


def _day_at(price: float, first_hour: int = 1, hours: int = 24) -> list[tuple]:
    return [(h, price, price, price) for h in range(first_hour, first_hour + hours)]


def test_a_days_first_seven_percent_from_the_settlement_is_critical() -> None:
    """Day 1 settles at 100 (its 24:00 close); a 6.9 % low on day 2 is nothing, 7.1 % is
    a critical trip named ``from_settlement``."""
    bands = _bands()
    assert _run(bands, [*_day_at(100.0), (25, 100.0, 93.1, 100.0)]) == []
    got = _run(bands, [(26, 95.0, 92.9, 100.0)])
    assert [(*g[:3], g[3][0]) for g in got] == [(26, "open", "critical", "from_settlement")]


def test_a_rise_trips_at_the_same_percentage() -> None:
    bands = _bands()
    assert _run(bands, [*_day_at(100.0), (25, 106.9, 100.0, 106.9)]) == []
    assert [g[1:3] for g in _run(bands, [(26, 107.1, 100.0, 107.1)])] == [
        ("open", "critical")]


def _trip_and_hold(price: float) -> MoveBands:
    """Day 1 settles at 100; day 2's first bar reaches ``price`` and holds there: one
    trip, eased back to a warning after a quiet hour (the episode stays open while the
    price is past the first tier)."""
    bands = _bands()
    _run(bands, _day_at(100.0))
    got = _run(bands, [(25, price, min(price, 100.0), max(price, 100.0)),
                       *[(h, price, price, price) for h in range(26, 30)]])
    assert [g[:3] for g in got] == [(25, "open", "critical"), (26, "deescalate", "warn")]
    return bands


def test_a_tier_trips_once_a_day_and_the_next_tier_trips_again() -> None:
    """After the 7 % trip the price holds at -8 %; it does not trip the 7 % tier again
    that day, and a fall past 13 % trips."""
    bands = _trip_and_hold(92.0)
    assert _run(bands, [(30, 91.0, 91.0, 92.0)]) == []
    got = _run(bands, [(31, 87.0, 86.9, 91.0)])
    assert [(*g[:3], g[3][0]) for g in got] == [(31, "escalate", "critical",
                                                 "from_settlement")]


def test_a_new_tier_during_a_deescalated_trip_escalates_it() -> None:
    """A one-day cap of 6 % keeps the episode open; after the 7 % trip has de-escalated,
    the 13 % tier escalates it back to critical, though the fall since the trip (5.7 %)
    is inside every band."""
    bands = _bands(msgspec.structs.replace(WIDE, floor_bps=(2900.0,) * 5 + (600.0,),
                                          cap_bps=(5000.0,) * 5 + (600.0,)))
    _run(bands, _day_at(100.0))
    got = _run(bands, [(25, 92.0, 92.0, 100.0), *[(h, 92.0, 92.0, 92.0)
                                                    for h in range(26, 30)]])
    assert [g[:3] for g in got] == [(25, "open", "critical"), (26, "deescalate", "warn")]
    got = _run(bands, [(30, 87.0, 86.9, 92.0)])
    assert [g[1:3] for g in got] == [("escalate", "critical")]
    assert "from_settlement" in got[0][3]


def test_each_day_settles_afresh_at_its_last_price() -> None:
    """A fall of 8 % late on day 2 trips; day 3 settles at that low level, so holding
    there is no trip (the episode closes), and a fall of 7 % from it is."""
    bands = _bands()
    _run(bands, _day_at(100.0))
    assert [g[1] for g in _run(bands, [(47, 92.0, 92.0, 100.0)])] == ["open"]
    held = _run(bands, [(48, 92.0, 92.0, 92.0), *_day_at(92.0, 49, 20)])
    assert [g[1] for g in held] == ["deescalate", "close"]
    assert [g[1:3] for g in _run(bands, [(69, 85.5, 85.5, 92.0)])] == [("open", "critical")]


def test_a_price_exactly_at_a_tier_reaches_it() -> None:
    """93 from 100 is 7 % (1 - 93/100 is 0.0699... in floating point)."""
    for settle in (100.0, 200.0, 50_000.0):
        bands = _bands()
        _run(bands, _day_at(settle))
        low = settle * 93 / 100
        assert [g[1] for g in _run(bands, [(25, low, low, settle)])] == ["open"]


def test_a_rise_trips_once_a_day_too_and_falls_and_rises_count_apart() -> None:
    """A rise past 7 % trips (rises are adverse here: ``critical_moves = "both"``); held
    there, the tier does not trip again that day. A fall past 7 % the same day trips on
    its own."""
    bands = _trip_and_hold(108.0)
    assert _run(bands, [(30, 108.5, 108.0, 108.5)]) == []
    got = _run(bands, [(31, 92.0, 92.0, 108.5)])
    assert [(*g[:3], g[3][0]) for g in got] == [(31, "escalate", "critical",
                                                 "from_settlement")]


def test_a_state_kept_without_the_limits_takes_no_price_of_the_day_as_its_settlement(
) -> None:
    """Resumed from a state whose day was never set (kept while the limits were off,
    or taken before they existed), the first vector does not read the close before
    it, of the same day, as the settlement: no limit until the next day."""
    off = MoveBands(MoveBandConfig(band_k=(50.0,) * 6, cap_bps=(5000.0,) * 6,
                                   daily_limits_bps=()), KEY)
    _run(off, [*_day_at(100.0), *_day_at(105.0, 25, 14)])
    resumed = MoveBands(WIDE, KEY, off.snapshot())
    assert _run(resumed, [(39, 97.1, 97.1, 105.0)]) == []  # -2.9 % from 100, -7.5 % from 105
    assert [g[1] for g in _run(resumed, [*_day_at(97.1, 40, 9), (49, 90.0, 90.0, 97.1)])] \
        == ["open"]  # the next day settles at 97.1: 90 is 7.3 % below


def test_the_settlement_time_is_configurable() -> None:
    """Settling at 08:00 UTC: day 2's reference is the 08:00 close (90), so a 100 → 92
    fall before 08:00 is measured from day 1's 08:00 close (100) and trips, and the
    same level after 08:00 does not."""
    bands = _bands(msgspec.structs.replace(WIDE, settlement_s=8 * 3600.0))
    assert _run(bands, [*_day_at(100.0, 1, 24), *_day_at(97.0, 25, 7)]) == []
    assert [g[1] for g in _run(bands, [(32, 90.0, 90.0, 97.0)])] == ["open"]
    bands.s.ep_open = False
    assert _run(bands, [(33, 90.0, 90.0, 90.0), (34, 84.0, 84.0, 90.0)]) == []


def test_no_settlement_is_known_after_a_gap_of_more_than_a_day() -> None:
    bands = _bands()
    _run(bands, _day_at(100.0, 1, 20))  # the data stops at 20:00 on day 1
    assert _run(bands, [(48 + 3, 80.0, 80.0, 80.0)]) == []


def test_volatility_indices_and_an_empty_list_have_no_limits() -> None:
    bands = _bands(MoveBandConfig(band_k=(50.0,) * 6, cap_bps=(5000.0,) * 6,
                                  daily_limits_bps=()))
    assert _run(bands, [*_day_at(100.0), (25, 70.0, 70.0, 100.0)]) == []
    assert MoveBandConfig().for_key("deribit/DVOL-BTC", "volatility").daily_limits_bps == ()


@pytest.mark.parametrize(
    ("bands", "path"),
    [
        ({"daily_limits_bps": [1300.0, 700.0]}, "detector.bands.daily_limits_bps"),
        ({"daily_limits_bps": [700.0, -1.0]}, "detector.bands.daily_limits_bps[1]"),
        ({"daily_limits_bps": [10_000.0]}, "detector.bands.daily_limits_bps[0]"),
        ({"settlement_s": 86_400.0}, "detector.bands.settlement_s"),
        ({"volatility": {"daily_limits_bps": [700.0, 700.0]}},
         "detector.bands.volatility.daily_limits_bps"),
    ],
    ids=["out-of-order", "negative", "a-whole-price", "settlement-a-day-late",
         "volatility-repeated-tier"],
)
def test_bad_limits_name_their_place(bands: dict, path: str) -> None:
    """A value its field refuses stops decoding, an order across values validation; both
    name the key."""
    with pytest.raises(ConfigError) as info:
        decode_section({"bands": bands}, DetectorConfig, "detector").validate()
    assert info.value.path == path


# -- the stateful contract, across settlements --------------------------------

class _Logic:
    def __init__(self, state: MoveBandState | None) -> None:
        self.bands = MoveBands(WIDE, KEY, state=state)

    def on_event(self, fv: FeatureVector) -> list[AnomalySignal]:
        return self.bands.on_vector(fv)

    def snapshot(self) -> MoveBandState:
        return self.bands.snapshot()


def _contract_events() -> list[FeatureVector]:
    """Three days: a 7 % trip on day 2, its 13 % tier, and a day 3 that settles low."""
    bars = [*_day_at(100.0), (25, 92.0, 92.0, 100.0), *_day_at(92.0, 26, 4),
            (30, 87.0, 86.9, 92.0), *_day_at(87.0, 31, 20), *_day_at(80.0, 51, 20)]
    return [_bar(*b) for b in bars]


CASE = Case("daily-limits", _Logic, _contract_events(), splits=(24, 25, 26, 30, 48, 49, 50))


def test_the_contract_events_cross_every_tier_and_day() -> None:
    logic = _Logic(None)
    out = [(e.ts // HOUR, s.phase) for e in CASE.events for s in logic.on_event(e)]
    assert out == [(25, "open"), (26, "deescalate"), (30, "escalate"), (31, "deescalate"),
                   (51, "escalate"), (52, "deescalate")]


@pytest.mark.parametrize("check", [check_snapshot_is_versioned_data, check_snapshot_independent,
                                   check_resume_equals_uninterrupted],
                         ids=lambda c: c.__name__)
def test_daily_limits_meet_the_stateful_contract(check: Callable[[Case], None]) -> None:
    """Resuming anywhere, across a settlement too, gives the uninterrupted signals."""
    check(CASE)
