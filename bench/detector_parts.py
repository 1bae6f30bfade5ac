"""The detector's parts alone and together, on the anomaly bench's vectors.

Run ``python bench/detector_parts.py [--keys 1000] [--repeat 3]``. The features step
turns ``bench/anomaly_speed.py``'s quotes (100,000 over ``--keys`` keys, 4 a second per
key, 1 s bars) into feature vectors once; then ``DetectorLogic`` alone (no dataflow)
runs over them with the default config, with the move bands only (``model = "none"``),
with the learned path only (bands off) and without the drift detector, timed by this
process's CPU time, the best of ``--repeat`` interleaved runs. It prints µs a vector for
each, and the whole against the sum of the two parts: what one part's removal would
save is not its cost alone.

Last, the whole detector a stage at a time: the move bands (``DetectorLogic.moves``)
over ``--chunk`` vectors of different keys, then the learned path
(``DetectorLogic.learned``) over the same vectors, with the same signals. A dataflow
hands a keyed step one key's vectors at a time, so this is what a step that worked a
batch's keys together (one logic for many keys) would gain with no other change.
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
                          ) -> tuple[float, list[list]]:
    """The whole detector over runs of up to ``chunk`` vectors of different keys: the
    bands on each vector of a run, then the learned path on each; and the signals."""
    detectors: dict[str, DetectorLogic] = {}
    runs: list[list[FeatureVector]] = [[]]
    for fv in vecs:  # a key seen twice starts a new run (its vectors stay in order)
        run = runs[-1]
        if len(run) >= chunk or any(v.key == fv.key for v in run):
            runs.append(run := [])
        run.append(fv)
    signals: list[list] = []
    t = time.process_time()
    for run in runs:
        logic = []
        for fv in run:
            d = detectors.get(fv.key)
            if d is None:
                d = detectors[fv.key] = DetectorLogic(config, lambda: 0)
            logic.append(d)
        moves = [d.moves(fv) for d, fv in zip(logic, run, strict=True)]
        signals.extend(d.learned(fv, m) for d, fv, m in zip(logic, run, moves, strict=True))
    return 1e6 * (time.process_time() - t) / len(vecs), signals


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=100,
                    help="vectors of different keys worked a stage at a time")
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
    one_at_a_time = [(detectors.get(fv.key) or detectors.setdefault(
        fv.key, DetectorLogic(base, lambda: 0))).on_event(fv) for fv in vecs]
    same = "the same signals" if signals == one_at_a_time else "OTHER SIGNALS"
    print(f"  whole detector, a stage at a time over {args.chunk} keys' vectors: "
          f"{staged:5.1f} us/vector ({staged / best['whole detector']:.2f}x one vector at "
          f"a time; {same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
