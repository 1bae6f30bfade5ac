"""Throughput of extract_features + detect_anomalies vs a keyed pass-through.

Run ``python bench/anomaly_speed.py [--events N] [--keys K] [--rates 4,20]``.
Prints raw market events/s per worker (one worker, in-memory TestingSource,
bytewax's default 10 s epoch interval) with the default model and 1 s bar cadence,
the same with the cross-venue confirmation off, the same in per-event mode, each as
a ratio to bytewax's keyed ``stateful_map`` pass-through measured in the same run,
at each per-key event rate (the detector runs once per key per bar, so its cost per
raw event falls as keys get busier), and memory and snapshot size per key. With
``--per-key``, also the same features and detectors with each step keyed by market (one
logic a key, as before they ran a group's markets together): what the grouping saves. Model
construction is included (it is cheap now: the tree shape is drawn once per feature
set). River itself is imported before timing, like bytewax: the detector imports it
lazily on its first key, a one-off ~0.6 s per process that would otherwise land in
the first measured run only.

The machine is shared with other work, so by default a run is timed by this
process's CPU time (``--clock cpu``; one worker runs on the calling thread):
that is the rate one worker sustains on a core of its own, and it does not
swing with the load of other processes the way wall time does
(``--clock wall`` times wall time instead). Each figure is the best of
``--repeat`` interleaved runs (default 3).
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bytewax.operators as op
import river.drift  # noqa: F401  # one-off import outside the timed runs (see above)
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.operators.core.base import (
    event_order,
    split_dead_letters,
    stateful_logic,
    values_of,
)
from riskguard.operators.detection.detector import DetectorLogic
from riskguard.operators.detection.features import FeatureLogic, feature_builder, route_batch
from riskguard.operators.detection.ops import (
    DetectorConfig,
    FeatureConfig,
    VenueConfirmConfig,
    confirm_across_venues,
    detect_anomalies,
    extract_features,
)
from riskguard.operators.detection.venue_confirm import MarketProgress, confirm_key
from riskguard.schemas import AnomalySignal, Quote

NS = 1_000_000_000
EPOCH = timedelta(seconds=10)  # bytewax's default epoch interval
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
STEADY_EVENTS = 400  # per key, in per-event cadence: past the HST window of 250
timer = CLOCKS["cpu"]


def make_events(n: int, keys: int, per_key_rate: float = 4.0, markets: bool = False
                ) -> list[Quote]:
    """Quotes spread over ``keys`` venue/instrument keys, ``per_key_rate`` per second each;
    with ``markets``, named as one asset on ten venues per ten keys (``v3/A7-USDT``), so
    the cross-asset features and the cross-venue confirmation follow them, as in a
    guard (else ``v3/I7``, which no market group takes)."""
    rng = random.Random(1)
    step = int(NS / (per_key_rate * keys))
    out = []
    for i in range(n):
        k = i % keys
        mid = 100.0 + rng.gauss(0.0, 0.05)
        inst = f"A{k // 10}-USDT" if markets else f"I{k // 10}"
        out.append(Quote(id=f"q{i}", venue=f"v{k % 10}", instrument=inst, ts=i * step,
                         bid=mid - 0.01, bid_size=rng.uniform(1, 5), ask=mid + 0.01,
                         ask_size=rng.uniform(1, 5)))
    return out


def run_passthrough(events: list[Quote]) -> float:
    flow = Dataflow("pass")
    s = op.input("in", flow, TestingSource(events, batch_size=1000))
    k = op.key_on("key", s, lambda q: f"{q.venue}/{q.instrument}")
    m = op.stateful_map("pass", k, lambda st, v: (st, v))
    op.output("out", m, TestingSink([]))
    t = timer()
    run_main(flow, epoch_interval=EPOCH)
    return len(events) / (timer() - t)


def run_guard(events: list[Quote], cadence: str, confirm: bool = True) -> float:
    venues = tuple(f"v{i}" for i in range(10))
    flow = Dataflow("anomaly")
    s = op.input("in", flow, TestingSource(events, batch_size=1000))
    f = extract_features("features", s, config=FeatureConfig(venues=venues, cadence=cadence),
                         clock=lambda: 2**62)
    d = detect_anomalies("detect", f.oks, clock=lambda: 0, config=DetectorConfig(
        confirm=VenueConfirmConfig(enabled=confirm)))
    op.output("out", d.oks, TestingSink([]))
    t = timer()
    run_main(flow, epoch_interval=EPOCH)
    return len(events) / (timer() - t)


class _OneMarket:
    """One market's detector as its own keyed step's logic, its progress after its
    signals (what the grouped step does for a group)."""

    def __init__(self, logic: DetectorLogic) -> None:
        self.logic = logic

    def on_batch(self, vectors: list) -> list:
        out = [x for v in vectors for x in self.logic.on_event(v)]
        if confirm_key(market := vectors[0].key) is not None:
            out.append(MarketProgress(ts=max(v.ts for v in vectors), market=market))
        return out

    def snapshot(self) -> object:
        return self.logic.snapshot()


def run_per_key(events: list[Quote]) -> float:
    """The features and detectors of :func:`run_guard` (1 s bars, confirmation on), each
    step keyed by market."""
    fcfg = FeatureConfig(venues=tuple(f"v{i}" for i in range(10)), cadence="bar")
    dcfg = DetectorConfig()
    flow = Dataflow("anomaly_per_key")
    s = op.input("in", flow, TestingSource(events, batch_size=1000))
    keyed = op.flat_map_batch("route", s, lambda recs: route_batch(recs, fcfg))
    feats = split_dead_letters("f", stateful_logic(
        "features", keyed, feature_builder(fcfg, lambda: 2**62), order=event_order))
    made = split_dead_letters("d", stateful_logic(
        "detect", feats.oks, lambda st: _OneMarket(DetectorLogic(dcfg, lambda: 0, st))))
    confirmed = confirm_across_venues("confirm", made.oks, config=dcfg.confirm,
                                      clock=lambda: 0)
    signals = op.flat_map_batch("signals", made.oks, lambda kvs: [
        v for v in values_of(kvs) if type(v) is AnomalySignal])
    op.output("out", op.merge("all", signals, confirmed), TestingSink([]))
    t = timer()
    run_main(flow, epoch_interval=EPOCH)
    return len(events) / (timer() - t)


def per_key_costs(events: list[Quote], keys: int) -> tuple[float, float, float]:
    """Python heap bytes per key, and feature + detector snapshot bytes per key."""
    fcfg = FeatureConfig(venues=tuple(f"v{i}" for i in range(10)), cadence="event")
    dcfg = DetectorConfig()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    feats: dict[str, FeatureLogic] = {}
    dets: dict[str, DetectorLogic] = {}
    for q in events:
        key = f"{q.venue}/{q.instrument}"
        fl = feats.setdefault(key, FeatureLogic(fcfg, lambda: 2**62))
        dl = dets.setdefault(key, DetectorLogic(dcfg, lambda: 0))
        for fv in fl.on_event(q):
            dl.on_event(fv)  # only vectors in this bench
    mem = (tracemalloc.get_traced_memory()[0] - base) / keys
    tracemalloc.stop()
    fsnap = sum(len(pickle.dumps(f.snapshot())) for f in feats.values()) / keys
    dsnap = sum(len(pickle.dumps(d.snapshot())) for d in dets.values()) / keys
    return mem, fsnap, dsnap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="anomaly operator throughput")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rates", type=str, default="4,20",
                    help="events per second per key to measure, comma-separated")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved runs per figure; the best is printed")
    ap.add_argument("--markets", action="store_true",
                    help="name the keys as markets (one asset on ten venues per ten keys)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="time runs by this process's CPU time (default) or wall time")
    ap.add_argument("--per-key", action="store_true",
                    help="also time the steps keyed by market, one logic a key")
    args = ap.parse_args(argv)
    global timer  # noqa: PLW0603  # a script-level setting, read by the run helpers
    timer = CLOCKS[args.clock]
    rates = [float(r) for r in args.rates.split(",")]
    print(f"{args.events} quotes over {args.keys} keys"
          f"{' named as markets' if args.markets else ''}, 1 worker, epoch interval "
          f"{EPOCH.total_seconds():.0f} s, best of {args.repeat} runs by {args.clock} time "
          "(machine shared: numbers are noisy)")
    for rate in rates:
        events = make_events(args.events, args.keys, rate, args.markets)
        base = bar = alone = per_event = per_key = 0.0
        for _ in range(args.repeat):
            base = max(base, run_passthrough(events))
            bar = max(bar, run_guard(events, "bar"))
            if args.per_key:
                per_key = max(per_key, run_per_key(events))
            alone = max(alone, run_guard(events, "bar", confirm=False))
            per_event = max(per_event, run_guard(events[: args.events // 4], "event"))
        print(f"\n{rate:g} events/s per key ({rate:g} raw events per 1 s bar per key)")
        print(f"  keyed stateful_map pass-through: {base:,.0f} events/s")
        print(f"  features + detect_anomalies, 1 s bars: {bar:,.0f} events/s "
              f"(ratio {bar / base:.3f}; goal: no lower than the 2026-11-27 code's in "
              "alternating runs, bench/versus_revision.py --rev fa82af5)")
        print(f"  the same, cross-venue confirmation off: {alone:,.0f} events/s "
              f"(ratio {alone / base:.3f})")
        if args.per_key:
            print(f"  the same (confirmation on), each step keyed by market: {per_key:,.0f} "
                  f"events/s (ratio {per_key / base:.3f}; grouped {bar / per_key:.2f}x it)")
        print(f"  features + detect_anomalies, per event: {per_event:,.0f} events/s "
              f"(ratio {per_event / base:.3f})")
    # memory and snapshots of keys past their first HST window (the score table exists
    # from then on), on a sample of keys to keep the run short
    sample = min(args.keys, 100)
    mem, fsnap, dsnap = per_key_costs(make_events(STEADY_EVENTS * sample, sample), sample)
    print(f"\nmemory per key (features + detector, after {STEADY_EVENTS} events per key): "
          f"{mem / 1024:,.1f} KiB")
    print(f"snapshot per key: features {fsnap:,.0f} B, detector {dsnap / 1024:,.1f} KiB "
          f"(HalfSpaceTrees 10 trees x height 8); total for {args.keys} keys "
          f"{(fsnap + dsnap) * args.keys / 2**20:,.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
