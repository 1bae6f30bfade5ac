"""A group's features and detectors, in one step call each, say what each market's own
logic says; the detectors worked a stage at a time."""

from __future__ import annotations

from collections import defaultdict

import pytest
from riskguard.operators.detection.detector import DetectorLogic
from riskguard.operators.detection.features import FeatureLogic
from riskguard.operators.detection.market_groups import (
    MarketDetectors,
    MarketFeatures,
    key_group,
    market_detectors_builder,
    market_features_builder,
)
from riskguard.operators.detection.venue_confirm import MarketProgress
from riskguard.schemas import AnomalySignal, DeadLetter

from riskguard.errors import SnapshotError
from tests.test_contract_anomaly import FCFG, GROUP, GROUP_BATCHES, GROUP_CONFIG, GROUP_RECORDS


def _alone() -> dict[str, list]:
    """Each market's vectors through a detector of its own, one at a time."""
    detectors = {key: DetectorLogic(GROUP_CONFIG, lambda: 0) for key in GROUP}
    out: dict[str, list] = defaultdict(list)
    for batch in GROUP_BATCHES:
        for key, fv in batch.items:
            out[key].extend(detectors[key].on_event(fv))
    return out


def _grouped(progress: bool) -> tuple[dict[str, list], list[list[MarketProgress]]]:
    """The group's signals by market, and each batch's progress, over the batches."""
    group = MarketDetectors(GROUP_CONFIG, lambda: 0, progress=progress)
    got: dict[str, list] = defaultdict(list)
    sent: list[list[MarketProgress]] = []
    for batch in GROUP_BATCHES:
        sent.append([])
        for key, item in group.on_batch(list(batch.items)):
            if type(item) is MarketProgress:
                sent[-1].append(item)
            else:
                got[key].append(item)
    return got, sent


def test_the_group_makes_each_markets_own_signals_in_its_order() -> None:
    # some batches hold a market twice: its second vector waits for the first's run
    assert any(len({k for k, _ in b.items}) < len(b.items) for b in GROUP_BATCHES)
    got, progress = _grouped(progress=True)
    alone = _alone()
    assert got == {key: made for key, made in alone.items() if made}
    made = [x for xs in alone.values() for x in xs]
    assert sum(type(x) is DeadLetter for x in made) == 1  # the vector that is not finite
    assert all(got.get(key) for key in GROUP)  # every market's episodes
    assert sum(type(x) is AnomalySignal for x in made) > 50
    # after each batch, each market in it once, at its newest vector's time
    for batch, sent in zip(GROUP_BATCHES, progress, strict=True):
        newest: dict[str, int] = {}
        for key, fv in batch.items:
            newest[key] = max(newest.get(key, fv.ts), fv.ts)
        assert {p.market: p.ts for p in sent} == newest
        assert len(sent) == len(newest)


def test_without_progress_the_group_sends_the_same_signals_and_no_progress() -> None:
    got, sent = _grouped(progress=False)
    assert not any(sent)
    assert got == _grouped(progress=True)[0]


def test_a_venue_s_markets_of_one_asset_share_a_group() -> None:
    assert {key_group(k) for k in GROUP} == {"BTC/USD"}
    assert key_group("okx/ETH-USDT") == "ETH/USD"
    assert key_group("v1/I3") == key_group("v2/I3") == "I3"
    assert key_group("okx") == "okx"  # a venue's own key (its heartbeats)


def test_a_snapshot_of_one_key_s_detector_is_refused_by_name() -> None:
    one_key = DetectorLogic(GROUP_CONFIG, lambda: 0).snapshot()
    with pytest.raises(SnapshotError, match="got DetectorState"):
        market_detectors_builder(GROUP_CONFIG, lambda: 0)(one_key)


def test_the_group_makes_each_markets_own_features_in_its_order() -> None:
    group = MarketFeatures(FCFG, lambda: 2**62)
    got: dict[str, list] = defaultdict(list)
    for batch in GROUP_RECORDS:
        for key, item in group.on_batch(list(batch.items)):
            got[key].append(item)
    for key, item in group.on_eof():
        got[key].append(item)
    alone: dict[str, list] = defaultdict(list)
    for key in GROUP:
        logic = FeatureLogic(FCFG, lambda: 2**62)
        for batch in GROUP_RECORDS:
            for k, rec in batch.items:
                if k == key:
                    alone[key].extend(logic.on_event(rec))
        alone[key].extend(logic.on_eof())
    assert got == alone
    assert all(len(got[key]) > 50 for key in GROUP)


def test_a_snapshot_of_one_key_s_features_is_refused_by_name() -> None:
    one_key = FeatureLogic(FCFG, lambda: 2**62).snapshot()
    with pytest.raises(SnapshotError, match=r"riskguard\.market_features.*got FeatureState"):
        market_features_builder(FCFG, lambda: 2**62)(one_key)
