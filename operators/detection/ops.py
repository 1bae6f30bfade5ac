"""Bytewax operators for online anomaly learning: thin adapters over the logic.

:func:`extract_features` keys raw market records and runs
:class:`~riskguard.operators.detection.features.FeatureLogic` per key;
:func:`detect_anomalies` runs :class:`~riskguard.operators.detection.detector.DetectorLogic`
on its ``oks`` under the same key (no exchange between them). Both return ``oks`` and
``errs`` (``DeadLetter``: late, future, non-finite).

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
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import Tick
from riskguard.operators.core.metrics import reorder_counter
from riskguard.operators.detection.cross_rates import CrossRateConfig
from riskguard.operators.detection.cross_shard import cross_points, cross_shard_builder
from riskguard.operators.detection.detector import DetectorConfig
from riskguard.operators.detection.features import FeatureConfig, route_batch
from riskguard.operators.detection.index_routes import ROUTES_KEY, IndexRoutesLogic
from riskguard.operators.detection.market_groups import (
    group_event_order,
    key_group,
    market_detectors_builder,
    market_features_builder,
)
from riskguard.operators.detection.venue_confirm import (
    MarketProgress,
    VenueConfirmConfig,
    confirm_key,
    venue_confirm_builder,
)
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.market import MarketEvent, VenueStatus
from riskguard.schemas.signals import AnomalySignal, FeatureVector

__all__ = [
    "CrossRateConfig", "DetectOut", "DetectorConfig", "FeatureConfig", "FeaturesOut",
    "VenueConfirmConfig", "confirm_across_venues", "detect_anomalies", "detect_dislocations",
    "extract_features",
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
def extract_features(step_id: str, up: Stream[MarketEvent | VenueStatus], *,
                     config: FeatureConfig,
                     clock: Callable[[], int],
                     local_keys: Callable[[str], bool] | None = None) -> FeaturesOut:
    """Per-key market and venue-health features from raw market records.

    ``up`` carries unkeyed market and ``VenueStatus`` records. ``local_keys``: with a
    broadcast source of index prices and heartbeats, each process routes its copy to its
    own keys only (:func:`riskguard.operators.detection.features.route`). Each key has
    its features of its own; the step runs a group's keys together
    (:class:`~riskguard.operators.detection.market_groups.MarketFeatures`), and ``oks``
    is keyed by each vector's key.
    """
    config.validate(f"step {step_id!r}: features")
    if config.venues:
        keyed = op.flat_map_batch("route", up,
                                  lambda recs: route_batch(recs, config, local_keys))
    else:
        # the venues each instrument trades on are learned from the data: state, kept
        # across a restart, so index prices reach the same keys as in an unbroken run
        routed = stateful_logic("route_learned", op.flat_map_batch(
            "route_key", up, lambda recs: [(ROUTES_KEY, r) for r in recs]),
            lambda state: IndexRoutesLogic(config, local_keys, state))
        keyed = op.flat_map_batch("route", routed, values_of)
    grouped = op.flat_map_batch("by_group", keyed, _by_group)
    made = stateful_logic("features", grouped, market_features_builder(config, clock),
                          order=group_event_order)
    split = split_dead_letters("split", op.flat_map_batch("by_key", made, values_of))
    return FeaturesOut(oks=split.oks, errs=split.errs)


@operator
def detect_anomalies(step_id: str, up: KeyedStream[FeatureVector], *, config: DetectorConfig,
                     clock: Callable[[], int]) -> DetectOut:
    """Score, threshold and group anomalies per key; emit episode signals.

    ``up`` is ``extract_features(...).oks``. Signals are ``open``, ``escalate`` and
    ``close`` episode events and ``regime_change`` drift events. With ``config.confirm``
    on (the default), :func:`confirm_across_venues` adds its escalations to ``oks``.
    Each key has a detector of its own; the step runs a group's keys (one asset on its
    venues: :func:`~riskguard.operators.detection.market_groups.key_group`) together, a
    stage at a time, and ``oks`` is keyed by each signal's key again.
    """
    config.validate(f"step {step_id!r}: detector")
    confirm = config.confirm.enabled
    grouped = op.flat_map_batch("by_group", up, _by_group)
    made = stateful_logic("detect", grouped, market_detectors_builder(config, clock, confirm))
    split = split_dead_letters("split", op.flat_map_batch("by_key", made, values_of))
    oks = split.oks
    if confirm:
        confirmed = confirm_across_venues("confirm", oks, config=config.confirm, clock=clock)
        oks = op.merge("with_confirmations", op.flat_map_batch("signals", oks, _signals),
                       op.flat_map_batch("key_confirmed", confirmed, _by_key))
    return DetectOut(oks=oks, errs=split.errs)


def _by_group(kvs: list[tuple[str, Any]]) -> list[tuple[str, tuple[str, Any]]]:
    """Each ``(key, item)`` keyed by its key's group, whole."""
    group = key_group
    return [(group(kv[0]), kv) for kv in kvs]


def _signals(kvs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [kv for kv in kvs if type(kv[1]) is not MarketProgress]


def _by_key(sigs: list[AnomalySignal]) -> list[tuple[str, AnomalySignal]]:
    return [(s.key, s) for s in sigs]


def _to_groups(kvs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Band signals and progress, each to its market's group key (order kept)."""
    out: list[tuple[str, Any]] = []
    for key, item in kvs:
        if type(item) is MarketProgress or getattr(item, "kind", None) == "price_move":
            group = confirm_key(key)
            if group is not None:
                out.append((group, item))
    return out


@operator
def confirm_across_venues(step_id: str,
                          detected: KeyedStream[AnomalySignal | MarketProgress | DeadLetter], *,
                          config: VenueConfirmConfig,
                          clock: Callable[[], int]) -> Stream[AnomalySignal]:
    """Warning band episodes a trip on another venue of the same asset confirms,
    escalated to critical (and eased back when no trip confirms them any more):
    ``price_move`` signals of those episodes (:mod:`~riskguard.operators.detection.venue_confirm`).

    ``detected`` is the detector's keyed output with each market's
    :class:`~riskguard.operators.detection.venue_confirm.MarketProgress` after its
    signals. Each group of markets is judged under its own key once all its markets have
    passed a signal, so any number of workers confirm the same episodes.
    """
    config.validate(f"step {step_id!r}: detector.confirm")
    keyed = op.flat_map_batch("bands", detected, _to_groups)
    out = stateful_logic("confirm", keyed, venue_confirm_builder(
        config, clock, on_reorder=reorder_counter(step_id)))
    return op.flat_map_batch("unkey", out, values_of)


@operator
def detect_dislocations(step_id: str, market: Stream[MarketEvent | Tick], *,
                        config: CrossRateConfig,
                        ticks_of: Callable[[list[Any]], list[Tick]],
                        clock: Callable[[], int], bar_ns: int = 1_000_000_000,
                        ) -> Stream[AnomalySignal]:
    """Markets of one base asset parting from the others: ``dislocation`` signals.

    ``market`` is market records where they are read, before any exchange (a market's
    price each ``bar_ns``); ``ticks_of(batch)`` the reading worker's event-time ticks
    (in the guard, the admission gate's ticks, carried in ``market`` in order).
    Markets grouped by base asset and quote unit are judged on ``config.shards`` shard
    keys once every worker has passed a price, so any number of workers raise the same
    signals.
    """
    config.validate(f"step {step_id!r}: detector.cross")
    keyed = op.flat_map_batch("points", market,
                              cross_points(ticks_of, bar_ns=bar_ns, shards=config.shards))
    out = stateful_logic("cross", keyed, cross_shard_builder(
        config, clock, bar_ns=bar_ns, on_reorder=reorder_counter(step_id)))
    return op.flat_map_batch("unkey", out, values_of)
