"""What a key's bars measure sets its move-band levels: a price's static level is 700 bps
within a day, a volatility index's a day's 3,000 bps (log moves)."""

from __future__ import annotations

import msgspec
import pytest
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.detection.band_levels import (
    VOLATILITY_LEVELS,
    BandLevels,
    MoveBandConfig,
    ProductBands,
)
from riskguard.operators.detection.cross_shard import cross_points
from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
from riskguard.operators.detection.features import FeatureConfig, FeatureLogic
from riskguard.schemas import AnomalySignal, Bar, FeatureVector, Measure, decode, encode

from riskguard.config import decode_section
from riskguard.errors import ConfigError

NS = 1_000_000_000
DAY = 86_400 * NS


def _bar(i: int, close: float, measure: Measure = Measure.PRICE, *,
         instrument: str = "BTCUSDT", venue: str = "binance") -> Bar:
    return Bar(id=f"{instrument}{i}", venue=venue, instrument=instrument, ts=(i + 1) * DAY,
               start=i * DAY, interval_ns=DAY, open=close, high=close, low=close,
               close=close, price_only=True, measure=measure)


def _vectors(bars: list[Bar]) -> list[FeatureVector]:
    logic = FeatureLogic(FeatureConfig(), ManualClock(10**19))
    return [v for b in bars for v in logic.on_event(b) if isinstance(v, FeatureVector)]


def _moves(logic: DetectorLogic, vectors: list[FeatureVector]) -> list[AnomalySignal]:
    return [s for v in vectors for s in logic.on_event(v)
            if isinstance(s, AnomalySignal) and s.kind == "price_move"]


def test_a_bar_says_what_it_measures_and_a_price_is_the_default() -> None:
    price = _bar(0, 100.0)
    vol = _bar(0, 60.0, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
    assert price.measure is Measure.PRICE
    assert decode("t", encode(vol)) == vol
    assert b'"measure":"volatility"' in encode(vol)
    old = msgspec.json.decode(encode(price))
    old.pop("measure", None)  # a bar written before the field existed is a price
    back = decode("t", msgspec.json.encode(old))
    assert isinstance(back, Bar) and back.measure is Measure.PRICE


def test_the_features_carry_the_measure_of_the_keys_bars() -> None:
    vol = _vectors([_bar(i, 60.0, Measure.VOLATILITY, instrument="DVOL-BTC")
                    for i in range(2)])
    assert {v.measure for v in vol} == {Measure.VOLATILITY}
    assert {v.measure for v in _vectors([_bar(i, 100.0) for i in range(2)])} == {
        Measure.PRICE}


def test_a_move_of_twelve_percent_in_a_day_trips_a_price_and_not_a_volatility_index(
) -> None:
    """The same daily closes, 12 % apart: a price's fall is past its 700 bps day (before
    anything is learned, the static level), its rise is a warning (a rally is not a
    price's adverse move); an index's rise, its adverse move, is inside its 3,000."""
    def price(closes: list[float]) -> list[tuple[str, str]]:
        return [(s.phase, s.severity.value) for s in _moves(
            DetectorLogic(DetectorConfig(), lambda: 0),
            _vectors([_bar(i, c) for i, c in enumerate(closes)]))]

    assert price([100.0, 100.0, 88.0]) == [("open", "critical")]
    assert price([100.0, 100.0, 112.0]) == [("open", "warn")]
    index = _vectors([_bar(i, c, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
                      for i, c in enumerate([100.0, 100.0, 112.0])])
    assert _moves(DetectorLogic(DetectorConfig(), lambda: 0), index) == []


def test_a_volatility_index_trips_past_its_own_days_cap() -> None:
    index = _vectors([_bar(i, c, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
                      for i, c in enumerate([60.0, 60.0, 82.0])])
    got = _moves(DetectorLogic(DetectorConfig(), lambda: 0), index)
    assert [(s.phase, s.severity.value) for s in got] == [("open", "critical")]


def test_a_product_inherits_the_levels_of_its_measure() -> None:
    """A product that changes only ``band_k`` keeps the index's caps; a product's own
    cap wins over both."""
    cfg = MoveBandConfig(products=(ProductBands(match="deribit/DVOL-ETH",
                                                cap_bps=(5000.0,) * 6),
                                   ProductBands(match="deribit/*", band_k=(9.0,) * 6)))
    btc = cfg.for_key("deribit/DVOL-BTC", Measure.VOLATILITY)
    assert (btc.band_k, btc.cap_bps) == ((9.0,) * 6, VOLATILITY_LEVELS.cap_bps)
    assert cfg.for_key("deribit/DVOL-ETH", Measure.VOLATILITY).cap_bps == (5000.0,) * 6
    assert cfg.for_key("deribit/BTC-PERPETUAL").cap_bps == MoveBandConfig().cap_bps
    assert cfg.for_key("binance/BTCUSDT", Measure.VOLATILITY).cap_bps == \
        VOLATILITY_LEVELS.cap_bps


def test_a_resumed_key_keeps_the_levels_of_its_measure() -> None:
    closes = [60.0, 60.0, 60.0, 60.0, 70.0]
    index = _vectors([_bar(i, c, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
                      for i, c in enumerate(closes)])
    logic = DetectorLogic(DetectorConfig(), lambda: 0)
    assert _moves(logic, index[:3]) == []
    resumed = DetectorLogic(DetectorConfig(), lambda: 0, logic.snapshot())
    assert resumed.bands is not None
    assert resumed.bands.config.cap_bps == VOLATILITY_LEVELS.cap_bps
    assert _moves(resumed, index[3:]) == []  # 16.7 % in a day: inside the index's levels


def test_the_levels_of_volatility_indices_are_a_config_table() -> None:
    cfg = decode_section({"bands": {"volatility": {"cap_bps": [900.0] * 6}}},
                         DetectorConfig, "detector").validate()
    assert cfg.bands.for_key("deribit/DVOL-BTC", "volatility").cap_bps == (900.0,) * 6
    assert cfg.bands.for_key("binance/BTCUSDT").cap_bps == MoveBandConfig().cap_bps
    k = decode_section({"bands": {"volatility": {"band_k": [2.0] * 6}}},
                       DetectorConfig, "detector").validate()
    got = k.bands.for_key("deribit/DVOL-BTC", "volatility")
    assert (got.band_k, got.cap_bps, got.daily_limits_bps) == (
        (2.0,) * 6, VOLATILITY_LEVELS.cap_bps, ())  # its other defaults stay
    with pytest.raises(ConfigError, match=r"detector\.bands\.volatility\.cap: is not a "
                                          r"known setting"):
        decode_section({"bands": {"volatility": {"cap": 1}}}, DetectorConfig, "detector")


@pytest.mark.parametrize(
    ("bands", "path"),
    [
        ({"volatility": {"cap_bps": [900.0] * 5}}, "detector.bands.volatility.cap_bps"),
        ({"volatility": {"floor_bps": [5000.0] * 6}}, "detector.bands.volatility.floor_bps[0]"),
        ({"floor_bps": [700.0, 800.0, 900.0, 1000.0, 1000.0, 1000.0],
          "cap_bps": [800.0, 900.0, 1000.0, 1000.0, 1000.0, 1000.0]},
         "detector.bands.floor_bps[0]"),
        ({"volatility": {"horizons_s": [60.0, 3600.0], "floor_bps": [50.0, 200.0],
                         "cap_bps": [300.0, 1000.0], "band_k": [7.0, 5.0]},
          "products": [{"match": "deribit/*", "cap_bps": [900.0] * 6}]},
         "detector.bands.products[0].cap_bps"),
    ],
    ids=["cap-length", "floor-above-cap", "inherited-floor-above-the-index-cap",
         "product-over-the-index-levels"],
)
def test_bad_levels_of_a_measure_name_their_place(bands: dict, path: str) -> None:
    """A bad value is named where it is set: a floor of ``[detector.bands]`` above the
    index's default cap is ``detector.bands``'; a product is checked over both
    measures."""
    cfg = decode_section({"bands": bands}, DetectorConfig, "detector")
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.path == path


def test_other_horizons_take_the_default_index_caps_at_them() -> None:
    """A config with its own horizons (valid without a volatility table) gives the
    index its default caps at those horizons, log-linear between the default ones."""
    cfg = decode_section({"bands": {"horizons_s": [60.0, 3600.0, 43_200.0],
                                    "floor_bps": [50.0, 200.0, 400.0],
                                    "cap_bps": [300.0, 1000.0, 1000.0],
                                    "band_k": [7.0, 5.0, 3.5]}},
                         DetectorConfig, "detector").validate()
    caps = cfg.bands.for_key("deribit/DVOL-BTC", "volatility").cap_bps
    assert caps[:2] == (600.0, 2000.0)
    assert 2500.0 < caps[2] < 3000.0  # 12 h, between the 4 h and one-day caps


def test_levels_hold_every_band_setting_but_the_lists_of_levels() -> None:
    """A setting added to the bands can be set per measure and per product too."""
    fields = set(MoveBandConfig.__struct_fields__) - {"products", "volatility"}
    assert set(BandLevels.__struct_fields__) == fields


def test_the_cross_market_check_reads_no_volatility_index_as_a_price() -> None:
    points = cross_points(lambda recs: [], bar_ns=NS, shards=4)
    got = points([_bar(0, 60.0, Measure.VOLATILITY, instrument="BTC-USD"),
                  _bar(0, 100.0, instrument="BTCUSDT")])
    assert [key for _shard, (_ts, key, *_rest) in got] == ["binance/BTCUSDT"]


def test_a_key_takes_the_levels_of_the_measure_its_prices_come_with() -> None:
    """A volatility key whose first priced vector came from another record (a price
    vector) runs with the index's levels once its bars arrive, keeping what it learned;
    a vector with no price decides nothing."""
    index = _vectors([_bar(i, c, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
                      for i, c in enumerate([60.0, 60.0, 67.2])])
    logic = DetectorLogic(DetectorConfig(), lambda: 0)
    first = msgspec.structs.replace(index[0], measure=Measure.PRICE)
    unpriced = msgspec.structs.replace(index[0], price=None, low=None, high=None,
                                       measure=Measure.PRICE)
    assert _moves(logic, [unpriced, first]) == []
    assert logic.bands is not None and logic.bands.config.daily_limits_bps
    learned = logic.bands.s
    assert _moves(logic, index[1:]) == []  # 12 % in a day: inside the index's levels
    assert logic.bands.config.cap_bps == VOLATILITY_LEVELS.cap_bps
    assert logic.bands.s is learned


def test_a_key_resumed_from_a_state_without_its_measure_takes_it_from_its_vectors() -> None:
    """A snapshot taken before keys knew their measure resumes as a price; the index's
    next bar gives it the index's levels."""
    index = _vectors([_bar(i, c, Measure.VOLATILITY, instrument="DVOL-BTC", venue="deribit")
                      for i, c in enumerate([60.0, 60.0, 60.0, 67.2])])
    logic = DetectorLogic(DetectorConfig(), lambda: 0)
    _moves(logic, index[:3])
    old = logic.snapshot()
    del old.__dict__["measure"]  # as pickled before the field existed
    resumed = DetectorLogic(DetectorConfig(), lambda: 0, old)
    assert resumed.bands is not None and resumed.bands.config.daily_limits_bps
    assert _moves(resumed, index[3:]) == []
    assert resumed.bands.config.cap_bps == VOLATILITY_LEVELS.cap_bps
