"""The cross-venue confirmation over one worker and over two, on Black Thursday's bars.

Run ``python bench/confirm_workers.py``. Replays the development data's three-venue
hourly file (``bench/shared_data.py``) through ``extract_features`` ->
``detect_anomalies`` -> ``confirm_across_venues`` on one worker and on two
(``cluster_main``), and prints the confirmation signals each gave and whether they
are the same. The stage judges signals in the order they reach its key, which is
event time with one detector worker only: this shows how far two workers part.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.operators.detection.ops import (
    DetectorConfig,
    FeatureConfig,
    VenueConfirmConfig,
    confirm_across_venues,
    detect_anomalies,
    extract_features,
)
from shared_data import incidents_dir, missing_reason

FILE = "crossvenue_BTC_ETH_1h_binance-gemini-kraken_2020-03-01_2020-03-20.csv"


def flow(records: list, out: list) -> Dataflow:
    f = Dataflow("confirm_workers")
    s = op.input("in", f, TestingSource(records, batch_size=50))
    feats = extract_features("features", s, config=FeatureConfig(), clock=lambda: 2**62)
    det = detect_anomalies("detect", feats.oks, config=DetectorConfig(), clock=lambda: 0)
    confirmed = confirm_across_venues("confirm", op.key_rm("unkey", det.oks),
                                      config=VenueConfirmConfig(enabled=True))
    op.output("out", confirmed, TestingSink(out))
    return f


def main() -> int:
    reason = missing_reason(incidents_dir())
    if reason:
        print(f"skipped: {reason}")
        return 1
    records = list(read_all(ReplaySource([ReplayFile(incidents_dir() / FILE)])))
    one: list = []
    two: list = []
    run_main(flow(records, one))
    cluster_main(flow(records, two), [], 0, worker_count_per_proc=2)
    same = sorted(s.id for s in one) == sorted(s.id for s in two)
    print(f"{len(records):,} bars; confirmation signals: one worker {len(one)}, "
          f"two workers {len(two)}; the same: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
