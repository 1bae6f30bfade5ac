"""The cross-venue confirmation over one, two and three workers, on Black Thursday's bars.

Run ``python bench/confirm_workers.py``. Replays the development data's three-venue
hourly file (``bench/shared_data.py``) through ``extract_features`` ->
``detect_anomalies`` (the confirmation on, as by default) on one to three workers
(``cluster_main``) at several input batch sizes, and prints the confirmation signals
each gave and whether they are the ones one worker gives. Each market group's signals
wait until all its markets have passed them, so a run confirms the same episodes on the
same bars once every market has sent its first batch. First without the wait for
markets to join (``join_s = 0``): where a worker's first batch of 1,000 bars reaches the
group after another's, its signals are judged late, counted, and the output differs.
Then with the default wait, which these short runs end within.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.operators.core.metrics import REORDER
from riskguard.operators.detection.ops import (
    DetectorConfig,
    FeatureConfig,
    VenueConfirmConfig,
    detect_anomalies,
    extract_features,
)
from riskguard.operators.detection.venue_confirm import MODEL
from shared_data import incidents_dir, missing_reason

FILE = "crossvenue_BTC_ETH_1h_binance-gemini-kraken_2020-03-01_2020-03-20.csv"


def flow(records: list, out: list, batch_size: int = 50, join_s: float | None = None
         ) -> Dataflow:
    f = Dataflow("confirm_workers")
    s = op.input("in", f, TestingSource(records, batch_size=batch_size))
    feats = extract_features("features", s, config=FeatureConfig(), clock=lambda: 2**62)
    confirm = VenueConfirmConfig() if join_s is None else VenueConfirmConfig(join_s=join_s)
    det = detect_anomalies("detect", feats.oks, config=DetectorConfig(confirm=confirm),
                           clock=time.time_ns)
    confirmed = op.filter("confirmed", op.key_rm("unkey", det.oks),
                          lambda s: s.model == MODEL)
    op.output("out", confirmed, TestingSink(out))
    return f


def main() -> int:
    reason = missing_reason(incidents_dir())
    if reason:
        print(f"skipped: {reason}")
        return 1
    records = list(read_all(ReplaySource([ReplayFile(incidents_dir() / FILE)])))
    one: list = []
    run_main(flow(records, one))
    want = sorted(s.id for s in one)
    print(f"{len(records):,} bars; one worker, batches of 50: {len(one)} confirmation signals")
    parted = 0
    wait = VenueConfirmConfig().join_s
    for join_s, what in ((0.0, "judged as they stream, no wait for markets to join"),
                         (wait, f"the default {wait:g} s wait for markets to join (these "
                                "runs end within it: judged at the end of input)")):
        print(f" {what}:")
        for workers in (1, 2, 3):
            for batch in (1, 50, 1000):
                got: list = []
                late_before = _late()
                cluster_main(flow(records, got, batch, join_s), [], 0,
                             worker_count_per_proc=workers)
                late = _late() - late_before
                same = sorted(s.id for s in got) == want
                parted += not same and not late
                print(f"  {workers} worker(s), batches of {batch:>4}: {len(got)} signals, "
                      f"{'the same' if same else 'DIFFERENT'}"
                      + (f" ({late:.0f} judged late: a market's first batch came after its "
                         "group had passed it)" if late else ""))
    return 1 if parted else 0


def _late() -> float:
    """Signals the confirmation judged late so far (``riskguard_reorder_total``)."""
    return sum(s.value for m in REORDER.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("outcome") == "late")


if __name__ == "__main__":
    raise SystemExit(main())
