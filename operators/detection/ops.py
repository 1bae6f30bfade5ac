"""Bytewax operators for online anomaly learning: thin adapters over the logic.

- :func:`extract_features` keys raw market records (``venue/instrument``,
  ``venue`` for heartbeats; index and oracle prices are fanned out to every
  configured venue's key of the instrument) and runs
  :class:`~riskguard.operators.detection.features.FeatureLogic` per key.
- :func:`detect_anomalies` runs
  :class:`~riskguard.operators.detection.detector.DetectorLogic` per key on the keyed
  feature vectors. Feed it ``extract_features(...).oks`` directly: both are
  keyed by the same key, so no extra exchange is needed between them.

Both return ``oks`` and ``errs`` (``DeadLetter``: late, future, non-finite).

>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSource, TestingSink, run_main
>>> import bytewax.operators as op
>>> from riskguard.schemas import Quote
>>> quotes = [Quote(id=f"q{i}", venue="okx", instrument="BTC-USDT", ts=i * 10**9,
...                 bid=100.0 - 0.01 * (i % 3), bid_size=1.0, ask=100.02, ask_size=1.0)
...           for i in range(5)]
>>> late = Quote(id="late", venue="okx", instrument="BTC-USDT", ts=0,
...              bid=1.0, bid_size=1.0, ask=1.1, ask_size=1.0)
>>> flow = Dataflow("doc")
>>> inp = op.input("in", flow, TestingSource([*quotes, late]))
>>> feats = extract_features("features", inp, config=FeatureConfig(venues=("okx",)),
...                          clock=lambda: 10**19)
>>> det = detect_anomalies("detect", feats.oks, config=DetectorConfig(), clock=lambda: 0)
>>> got, dead = [], []
>>> op.output("vecs", feats.oks, TestingSink(got))
>>> op.output("dead", feats.errs, TestingSink(dead))
>>> op.output("sigs", det.oks, TestingSink([]))
>>> run_main(flow)
>>> [(k, v.ts // 10**9, v.evidence_ids) for k, v in got]  # one vector per 1 s bar
[('okx/BTC-USDT', 0, ['q0']), ('okx/BTC-USDT', 1, ['q1']), ('okx/BTC-USDT', 2, ['q2']), \
('okx/BTC-USDT', 3, ['q3']), ('okx/BTC-USDT', 4, ['q4'])]
>>> [(d.reason, d.step) for d in dead]
[('late', 'features')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from riskguard.operators.core.base import event_time, split_dead_letters, stateful_logic, values_of
from riskguard.operators.detection.cross_rates import CrossRateConfig, CrossRates, market_group
from riskguard.operators.detection.detector import DetectorConfig, detector_builder
from riskguard.operators.detection.features import FeatureConfig, feature_builder, route_batch
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.signals import AnomalySignal, FeatureVector

__all__ = [
    "CrossRateConfig", "DetectOut", "DetectorConfig", "FeatureConfig", "FeaturesOut",
    "detect_anomalies", "detect_dislocations", "extract_features",
]


@dataclass(frozen=True)
class FeaturesOut:
    """``oks``: ``(key, FeatureVector)``; ``errs``: dead letters."""

    oks: KeyedStream[FeatureVector]
    errs: Stream[DeadLetter]


@dataclass(frozen=True)
class DetectOut:
    """``oks``: ``(key, AnomalySignal)``; ``errs``: dead letters."""

    oks: KeyedStream[AnomalySignal]
    errs: Stream[DeadLetter]


@operator
def extract_features(step_id: str, up: Stream[Any], *, config: FeatureConfig,
                     clock: Callable[[], int],
                     local_keys: Callable[[str], bool] | None = None) -> FeaturesOut:
    """Per-key market and venue-health features from raw market records.

    ``up`` carries unkeyed ``Trade``, ``Quote``, ``OptionQuote``,
    ``IndexPrice``, ``FundingRate`` and ``VenueStatus`` records. See the
    module example. ``local_keys``: when each worker gets its own copy of
    every index price and heartbeat (a broadcast source), it routes its copy
    to its own keys only (see :func:`riskguard.operators.detection.features.route`).
    """
    config.validate(f"step {step_id!r}: features")
    seen: dict[str, set[str]] = {}  # venues per instrument, with no venues configured
    keyed = op.flat_map_batch("route", up,
                              lambda recs: route_batch(recs, config, local_keys, seen))
    out = stateful_logic("features", keyed, feature_builder(config, clock), order=event_time)
    split = split_dead_letters("split", out)
    return FeaturesOut(oks=split.oks, errs=split.errs)


@operator
def detect_anomalies(step_id: str, up: KeyedStream[FeatureVector], *, config: DetectorConfig,
                     clock: Callable[[], int]) -> DetectOut:
    """Score, threshold and group anomalies per key; emit episode signals.

    ``up`` is ``extract_features(...).oks``. Signals are ``open``,
    ``escalate`` and ``close`` episode events and ``regime_change`` drift
    events; see :mod:`riskguard.operators.detection.detector`.
    """
    config.validate(f"step {step_id!r}: detector")
    out = stateful_logic("detect", up, detector_builder(config, clock))
    split = split_dead_letters("split", out)
    return DetectOut(oks=split.oks, errs=split.errs)


@operator
def detect_dislocations(step_id: str, up: KeyedStream[FeatureVector], *,
                        config: CrossRateConfig) -> Stream[AnomalySignal]:
    """Markets of one base asset parting from the others: ``dislocation`` signals.

    ``up`` is ``extract_features(...).oks``; its vectors are re-keyed by base asset and
    quote unit (:func:`~riskguard.operators.detection.cross_rates.market_group`) and compared per
    group, in event time (:mod:`riskguard.operators.detection.cross_rates`). Each group lives on
    one worker, and
    compares the latest prices that have reached it: on several workers a signal can
    differ from one worker's run by the prices still in flight.
    """
    config.validate(f"step {step_id!r}: detector.cross")

    def by_group(kvs: list[tuple[str, FeatureVector]]) -> list[tuple[str, FeatureVector]]:
        out = []
        for key, fv in kvs:
            if fv.price is None:
                continue
            group = market_group(key)
            if group is not None:
                out.append((group, fv))
        return out

    keyed = op.flat_map_batch("by_group", up, by_group)
    out = stateful_logic("cross", keyed, lambda state: CrossRates(config, state),
                         order=event_time)
    return op.flat_map_batch("unkey", out, values_of)
