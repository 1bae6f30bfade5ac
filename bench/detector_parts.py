"""The detector's parts alone and together, on the anomaly bench's vectors.

Run ``python bench/detector_parts.py [--keys 1000] [--repeat 3]``. The features step
turns ``bench/anomaly_speed.py``'s quotes (100,000 over ``--keys`` keys, 4 a second per
key, 1 s bars) into feature vectors once; then ``DetectorLogic`` alone (no dataflow)
runs over them with the default config, with the move bands only (``model = "none"``),
with the learned path only (bands off) and without the drift detector, timed by this
process's CPU time, the best of ``--repeat`` interleaved runs. It prints µs a vector for
each, and the whole against the sum of the two parts: what one part's removal would
save is not its cost alone.

Last, the whole detector a stage at a time, as the grouped detect step runs it
(``MarketDetectors``): the move bands (``DetectorLogic.moves``) over the distinct keys'
vectors of ``--chunk`` at a time, then the learned path (``DetectorLogic.learned``) over
the same vectors, checked to give each key the same signals as one vector at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import river.drift  # noqa: F401  # one-off import outside the timed runs
from anomaly_speed import make_events
from riskguard.operators.detection.detector import DetectorLogic
from riskguard.operators.detection.features import FeatureLogic
from riskguard.operators.detection.market_groups import MarketDetectors
from riskguard.operators.detection.ops import DetectorConfig, FeatureConfig
from riskguard.schemas import FeatureVector


def vectors(keys: int) -> list[FeatureVector]:
    """The features step's vectors of the anomaly bench's quotes."""
    config = FeatureConfig(venues=tuple(f"v{i}" for i in range(10)), cadence="bar")
    logic: dict[str, FeatureLogic] = {}
    out: list[FeatureVector] = []
    for q in make_events(100_000, keys, 4.0):
        key = f"{q.venue}/{q.instrument}"
        features = logic.get(key) or logic.setdefault(key, FeatureLogic(config, lambda: 2**62))
        out.extend(v for v in features.on_event(q) if isinstance(v, FeatureVector))
    return out


def us_a_vector(config: DetectorConfig, vecs: list[FeatureVector]) -> float:
    detectors: dict[str, DetectorLogic] = {}
    t = time.process_time()
    for fv in vecs:
        d = detectors.get(fv.key)
        if d is None:
            d = detectors[fv.key] = DetectorLogic(config, lambda: 0)
        d.on_event(fv)
    return 1e6 * (time.process_time() - t) / len(vecs)


def us_a_vector_by_stage(config: DetectorConfig, vecs: list[FeatureVector], chunk: int
                          ) -> tuple[float, dict[str, list]]:
    """The whole detector as the grouped detect step runs it (:class:`MarketDetectors`,
    one group of every key), handed ``chunk`` vectors a call; and each key's signals."""
    group = MarketDetectors(config, lambda: 0)
    items = [(fv.key, fv) for fv in vecs]
    made: list = []
    t = time.process_time()
    for i in range(0, len(items), chunk):
        made.extend(group.on_batch(items[i:i + chunk]))
    us = 1e6 * (time.process_time() - t) / len(vecs)
    signals: dict[str, list] = {}
    for key, x in made:
        signals.setdefault(key, []).append(x)
    return us, signals


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=100,
                    help="vectors handed to the grouped detectors a call")
    args = ap.parse_args()
    vecs = vectors(args.keys)
    base = DetectorConfig()
    configs = {
        "whole detector": base,
        "move bands only": msgspec.structs.replace(base, model="none"),
        "learned path only": msgspec.structs.replace(
            base, bands=msgspec.structs.replace(base.bands, enabled=False)),
        "without the drift detector": msgspec.structs.replace(base, drift="none"),
    }
    best = dict.fromkeys(configs, float("inf"))
    staged = float("inf")
    for _ in range(args.repeat):
        for name, config in configs.items():
            best[name] = min(best[name], us_a_vector(config, vecs))
        us, signals = us_a_vector_by_stage(base, vecs, args.chunk)
        staged = min(staged, us)
    print(f"{len(vecs):,} vectors over {args.keys} keys, CPU time, best of {args.repeat}")
    for name, us in best.items():
        print(f"  {name:<28} {us:5.1f} us/vector")
    parts = best["move bands only"] + best["learned path only"]
    print(f"  the two parts alone add to {parts:.1f} us/vector: the whole is "
          f"{best['whole detector'] / parts:.2f}x their sum")
    detectors: dict[str, DetectorLogic] = {}
    one_at_a_time: dict[str, list] = {}
    for fv in vecs:
        d = detectors.get(fv.key) or detectors.setdefault(fv.key, DetectorLogic(base, lambda: 0))
        if made := d.on_event(fv):
            one_at_a_time.setdefault(fv.key, []).extend(made)
    same = "the same signals" if signals == one_at_a_time else "OTHER SIGNALS"
    print(f"  whole detector, a stage at a time, {args.chunk} vectors a call: "
          f"{staged:5.1f} us/vector ({staged / best['whole detector']:.2f}x one vector at "
          f"a time; {same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
