"""Per-product move-band levels (``detector.bands.products``), as exchanges give each
product its own breaker percentage."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest
from riskguard.operators.detection.band_levels import MoveBandConfig, ProductBands
from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
from riskguard.schemas import AnomalySignal, FeatureVector, Measure, Scope, ScopeKind

from riskguard.config import decode_section
from riskguard.errors import ConfigError

NS = 1_000_000_000
DAY = 86_400 * NS
VOL_INDEX = ProductBands(match="deribit/DVOL-*", cap_bps=(4000.0,) * 6)


def _daily(key: str, i: int, close: float) -> FeatureVector:
    venue, _, inst = key.partition("/")
    return FeatureVector(key=key, scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst,
                                              venue=venue),
                         ts=(i + 1) * DAY, values={"ret_bps": 0.0}, price=close, low=close,
                         high=close, interval_ns=DAY, evidence_ids=[f"{key}{i}"],
                         measure=Measure.VOLATILITY if "DVOL" in key else Measure.PRICE)


def _moves(logic: DetectorLogic, key: str, closes: list[float]) -> list[AnomalySignal]:
    return [s for i, c in enumerate(closes) for s in logic.on_event(_daily(key, i, c))
            if isinstance(s, AnomalySignal) and s.kind == "price_move"]


def test_a_product_runs_with_its_own_levels_and_other_keys_with_the_defaults() -> None:
    """A 25 % daily fall is past the default one-day cap (7 %), so critical at once;
    the product's own cap is 40 %, so the same fall there is no trip."""
    cfg = DetectorConfig(bands=MoveBandConfig(products=(VOL_INDEX,))).validate()
    closes = [100.0, 100.0, 75.0]
    btc = _moves(DetectorLogic(cfg, lambda: 0), "binance/BTCUSDT", closes)
    assert [(s.phase, s.severity.value) for s in btc] == [("open", "critical")]
    assert _moves(DetectorLogic(cfg, lambda: 0), "deribit/DVOL-BTC", closes) == []


def test_the_first_matching_product_wins_and_unset_values_are_inherited() -> None:
    cfg = MoveBandConfig(critical_ratio=1.5, products=(
        ProductBands(match="deribit/*", band_k=(9.0,) * 6),
        ProductBands(match="deribit/DVOL-*", band_k=(1.0,) * 6)))
    got = cfg.for_key("deribit/DVOL-ETH")
    assert got.band_k == (9.0,) * 6
    assert got.critical_ratio == 1.5
    assert got.products == ()
    assert cfg.for_key("binance/BTCUSDT") is cfg


def test_a_product_can_turn_its_bands_off() -> None:
    cfg = DetectorConfig(bands=MoveBandConfig(products=(
        ProductBands(match="deribit/DVOL-*", enabled=False),)))
    logic = DetectorLogic(cfg, lambda: 0)
    assert _moves(logic, "deribit/DVOL-BTC", [100.0, 100.0, 300.0]) == []
    assert logic.bands is None


def test_a_resumed_key_keeps_its_products_levels() -> None:
    cfg = DetectorConfig(bands=MoveBandConfig(products=(VOL_INDEX,)))
    logic = DetectorLogic(cfg, lambda: 0)
    _moves(logic, "deribit/DVOL-BTC", [100.0, 101.0])
    resumed = DetectorLogic(cfg, lambda: 0, logic.snapshot())
    assert resumed.bands is not None
    assert resumed.bands.config.cap_bps == (4000.0,) * 6
    assert _moves(resumed, "deribit/DVOL-BTC", [101.0, 101.0, 126.0]) == []


def test_a_product_holds_every_band_setting_but_the_lists_of_levels() -> None:
    """A setting added to the bands can be set per product too."""
    fields = set(MoveBandConfig.__struct_fields__) - {"products", "volatility"}
    assert set(ProductBands.__struct_fields__) == fields | {"match"}


@pytest.mark.parametrize(
    ("product", "path"),
    [
        ({"match": "", "cap_bps": [4000.0] * 6}, "detector.bands.products[0].match"),
        ({"match": "deribit/*", "cap_bps": [4000.0] * 5},
         "detector.bands.products[0].cap_bps"),
        ({"match": "deribit/*", "floor_bps": [5000.0] * 6},
         "detector.bands.products[0].floor_bps[0]"),
    ],
    ids=["empty-match", "cap-length", "floor-above-inherited-cap"],
)
def test_a_bad_product_names_its_place(product: dict, path: str) -> None:
    """A value its field refuses stops decoding; one that fits no other setting stops
    validation; either names the product's key."""
    with pytest.raises(ConfigError) as info:
        decode_section({"bands": {"products": [product]}}, DetectorConfig,
                       "detector").validate()
    assert info.value.path == path


def test_an_unknown_product_key_stops_start_up_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"detector\.bands\.products\[0\]\.cap: is not a "
                                          r"known setting"):
        decode_section({"detector": {"bands": {"products": [{"match": "x", "cap": 1}]}}},
                       _Guard)


class _Guard(msgspec.Struct, forbid_unknown_fields=True):
    detector: DetectorConfig = DetectorConfig()


@pytest.mark.parametrize("overlay", sorted(
    (Path(__file__).resolve().parent.parent / "bench" / "overlays").glob("*.toml")),
    ids=lambda p: p.stem)
def test_the_measured_overlays_are_valid_detector_settings(overlay: Path) -> None:
    """docs/detection.md quotes figures for these files: they must stay loadable."""
    doc = tomllib.loads(overlay.read_text())
    assert set(doc) == {"detector"}
    cfg = decode_section(doc["detector"], DetectorConfig, "detector").validate()
    assert cfg != DetectorConfig()  # it measures something else than the defaults
