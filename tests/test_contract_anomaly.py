"""Register the anomaly logic classes with the generic stateful-logic contract."""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import pytest
from riskguard.operators.core.clock import Tick
from riskguard.operators.detection.cross_rates import CrossRateConfig
from riskguard.operators.detection.cross_shard import cross_points, cross_shard_builder
from riskguard.operators.detection.detector import DetectorConfig, detector_builder
from riskguard.operators.detection.features import (
    FeatureConfig,
    FeatureLogic,
    feature_builder,
    route,
)
from riskguard.operators.detection.market_groups import (
    market_detectors_builder,
    market_features_builder,
)
from riskguard.operators.detection.market_sim import SimConfig, generate
from riskguard.operators.detection.venue_confirm import VenueConfirmConfig, venue_confirm_builder

from tests.contract import CHECKS, Batch, Case, engine_feed

SC = generate(SimConfig(duration_s=120, seed=3, incidents_per_kind=0, warmup_s=0))
FCFG = FeatureConfig(venues=SC.venues)
KEY = "okx/BTC-USDT"
MARKET = [r for rec in SC.events for k, r in route(rec, FCFG) if k == KEY]


def _vectors() -> list:
    logic = FeatureLogic(FeatureConfig(venues=SC.venues, cadence="event"), lambda: 2**62)
    return [o for r in MARKET for o in logic.on_event(r)]


VECTORS = _vectors()[:700]
GROUP = ("okx/BTC-USDT", "binance/BTC-USDT", "deribit/BTC-USDT")


def _group_batches() -> list[Batch]:
    """One asset's vectors on three venues in time order, as the group's step gets
    them: three a batch, every fifth batch four (so some hold a market twice), and one
    vector whose value is not finite."""
    config = FeatureConfig(venues=SC.venues, cadence="event")
    logic = {key: FeatureLogic(config, lambda: 2**62) for key in GROUP}
    made = sorted((o.ts, i, key, o) for i, rec in enumerate(SC.events)
                  for key, r in route(rec, FCFG) if key in logic
                  for o in logic[key].on_event(r))
    items = [(key, fv) for _ts, _i, key, fv in made][:900]
    key, fv = items[400]
    items[400] = (key, msgspec.structs.replace(fv, values={**fv.values, "spread_bps": math.nan}))
    batches: list[Batch] = []
    at = 0
    while at < len(items):
        take = 4 if len(batches) % 5 == 4 else 3
        batches.append(Batch(tuple(items[at:at + take])))
        at += take
    return batches


GROUP_BATCHES = _group_batches()
# the records of one asset on three venues as the group's features step gets them, in
# batches of 40 (an engine's batches hold several records of a market)
_GROUP_ITEMS = [(key, r) for rec in SC.events for key, r in route(rec, FCFG) if key in GROUP]
GROUP_RECORDS = [Batch(tuple(_GROUP_ITEMS[i:i + 40])) for i in range(0, 1800, 40)]
# an alarm rate far above the default's, so the calm market's vectors open episodes
GROUP_CONFIG = DetectorConfig(warmup_events=100, warmup_ns=0, hst_window=50, blend_points=50,
                              drift_cooldown_points=20, target_alarm_rate=0.2,
                              threshold_margin=0.0, close_quiet_points=1, close_quiet_ns=0)


def _cross_items(gone_at_ns: int | None = None) -> list:
    """One shard's input: every market's points and one reader's ticks, 50 records a
    batch; with ``gone_at_ns``, deribit sends nothing from that time on."""
    points = cross_points(lambda recs: [Tick(ts=recs[-1].ts, source="w0", of=1)],
                          bar_ns=10**9, shards=1)
    events = [r for r in SC.events if gone_at_ns is None or r.ts < gone_at_ns
              or getattr(r, "venue", "") != "deribit"]
    return [item for i in range(0, len(events), 50)
            for _key, item in points(events[i:i + 50])][:1500]


CROSS = _cross_items()
GONE_AT_NS = SC.events[0].ts + 8 * 10**9
CROSS_GONE = _cross_items(GONE_AT_NS)
CROSS_LATENESS = CrossRateConfig(warmup_points=20, allowed_lateness_ns=3 * 10**9)


def _band_signals() -> list:
    """Band episodes of three venues of one asset and one of another, opening, tripping,
    easing and closing in turn (the confirmation's input)."""
    from tests.test_venue_confirm import band, in_time

    out = []
    for t in range(0, 40, 8):
        out += [band("binance/BTCUSDT", "open", "warn", -250, ts=t + 1, episode=t),
                band("kraken/XBTUSD", "open", "warn", -240, ts=t + 1, episode=t),
                band("okx/ETH-USDT", "open", "warn", -300, ts=t + 1, episode=t),
                band("gemini/BTCUSD", "open", "critical", -720, ts=t + 2, episode=t),
                band("binance/BTCUSDT", "escalate", "critical", -800, ts=t + 3, episode=t),
                band("gemini/BTCUSD", "deescalate", "warn", -90, ts=t + 4, episode=t),
                band("kraken/XBTUSD", "close", "warn", -10, ts=t + 5, episode=t),
                band("binance/BTCUSDT", "close", "critical", -10, ts=t + 6, episode=t),
                band("gemini/BTCUSD", "close", "warn", -10, ts=t + 7, episode=t)]
    return in_time(out)


BANDS = _band_signals()

CASES = [
    Case("cross-shard", cross_shard_builder(CrossRateConfig(warmup_points=20), lambda: 0,
                                            bar_ns=10**9), CROSS),
    Case("cross-shard.venue-gone", cross_shard_builder(CROSS_LATENESS, lambda: 0,
                                                       bar_ns=10**9), CROSS_GONE),
    Case("venue-confirm", venue_confirm_builder(VenueConfirmConfig(join_s=0), lambda: 0), BANDS),
    Case("features-bar", feature_builder(FCFG, lambda: 2**62), MARKET),
    Case("market-features", market_features_builder(FCFG, lambda: 2**62), GROUP_RECORDS,
         feed=engine_feed),
    Case("features-event", feature_builder(FeatureConfig(venues=SC.venues, cadence="event"),
                                           lambda: 2**62), MARKET[:400]),
    Case("detector-hst", detector_builder(DetectorConfig(warmup_events=100, warmup_ns=0,
                                                         hst_window=50, blend_points=50,
                                                         drift_cooldown_points=20),
                                          lambda: 0), VECTORS, splits=(150, 333)),
    Case("detector-range", detector_builder(
        DetectorConfig(features=("spread_bps",), warmup_events=50, warmup_ns=0,
                       range_block=8, range_blocks=6), lambda: 0), VECTORS,
         splits=(49, 50, 51, 97, 98)),
    Case("market-detectors", market_detectors_builder(GROUP_CONFIG, lambda: 0, progress=True),
         GROUP_BATCHES, splits=(33, 100), feed=engine_feed),
    Case("detector-gaussian", detector_builder(
        DetectorConfig(model="gaussian", features=("spread_bps",), warmup_events=50,
                       warmup_ns=0), lambda: 0), VECTORS),
]


def test_the_gone_venue_case_forgets_the_venues_markets() -> None:
    """The venue-gone case's shard forgets deribit's markets once their newest points
    fall more than allowed_lateness_ns behind (the contract then checks a resume
    across that)."""
    shard = cross_shard_builder(CROSS_LATENESS, lambda: 0, bar_ns=10**9)(None)
    seen: set[str] = set()
    for item in CROSS_GONE:
        shard.on_event(item)
        seen.update(shard.state.progress)
    st = shard.state
    assert any(k.startswith("deribit/") for k in seen)
    assert not any(k.startswith("deribit/") for k in [*st.progress, *st.last_bar])
    wm = max(t.ts for t in CROSS_GONE if type(t) is Tick)
    assert st.judged_ts >= wm - CROSS_LATENESS.allowed_lateness_ns > GONE_AT_NS
    assert st.late == 0


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract(case: Case, check: Callable[[Case], None]) -> None:
    """Each anomaly logic class meets the generic stateful-logic contract."""
    check(case)
