"""Flow-level tests of extract_features + detect_anomalies on bytewax."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from riskguard.operators.detection.market_sim import SimConfig, generate
from riskguard.operators.detection.ops import (
    DetectorConfig,
    FeatureConfig,
    detect_anomalies,
    extract_features,
)
from riskguard.schemas import IndexPrice, Trade, encode

SC = generate(SimConfig(duration_s=400, seed=11, warmup_s=100, incidents_per_kind=1))
INSTS = {i.instrument for i in SC.incidents if i.kind in ("flash_crash", "venue_dislocation")}
EVENTS = [e for e in SC.events if getattr(e, "instrument", None) in INSTS]
FCFG = FeatureConfig(venues=SC.venues)
DCFG = DetectorConfig(warmup_events=60, warmup_ns=0, hst_trees=5, hst_height=6,
                      hst_window=50, target_alarm_rate=0.01, threshold_window=500)


def clock() -> int:
    return SC.end_ns + 10**10


def build(items: list, vecs: list, sigs: list, dead: list,
          fcfg: FeatureConfig = FCFG, batch_size: int = 1) -> Dataflow:
    flow = Dataflow("anomaly_test")
    inp = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    feats = extract_features("features", inp, config=fcfg, clock=clock)
    det = detect_anomalies("detect", feats.oks, config=DCFG, clock=clock)
    op.output("vecs", feats.oks, TestingSink(vecs))
    op.output("sigs", det.oks, TestingSink(sigs))
    op.output("dead", op.merge("errs", feats.errs, det.errs), TestingSink(dead))
    return flow


def norm(items: list) -> list[bytes]:
    return sorted(encode(v) for _, v in items)


def uninterrupted(fcfg: FeatureConfig = FCFG) -> tuple[list, list]:
    vecs: list = []
    sigs: list = []
    run_main(build(EVENTS, vecs, sigs, [], fcfg))
    return vecs, sigs


def test_flow_emits_signals_with_evidence_and_dead_letters_late_input() -> None:
    """The composed flow emits anomaly signals with evidence ids; late input goes to errs."""
    late = EVENTS[0]
    vecs: list = []
    sigs: list = []
    dead: list = []
    run_main(build([*EVENTS, late], vecs, sigs, dead))
    assert len(vecs) > 100
    assert any(s.kind == "anomaly" and s.phase == "open" for _, s in sigs)
    assert all(s.evidence_ids for _, s in sigs)
    assert [d.reason for d in dead] == ["late"] * len(dead)
    assert len(dead) >= 1


@pytest.mark.parametrize("fcfg", [FCFG, FeatureConfig()], ids=["venues", "venues_seen"])
def test_resume_after_abort_equals_uninterrupted_run(tmp_path: Path, fcfg: FeatureConfig,
                                                     ) -> None:
    """Killing the flow halfway and resuming from recovery gives the same signals, with
    the venues that receive index prices configured or learned from the data."""
    want_vecs, want_sigs = uninterrupted(fcfg)
    assert want_sigs
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    half = len(EVENTS) // 2
    items = [*EVENTS[:half], TestingSource.ABORT(), *EVENTS[half:]]
    vecs: list = []
    sigs: list = []
    # an epoch (and a snapshot) every batch of 20 events; the batch before the abort
    # ends at it, so the kill still comes right after the first half
    run_main(build(items, vecs, sigs, [], fcfg, batch_size=20),
             epoch_interval=timedelta(seconds=0), recovery_config=rc)
    assert len(vecs) < len(want_vecs)
    run_main(build(items, vecs, sigs, [], fcfg, batch_size=20),
             epoch_interval=timedelta(seconds=0), recovery_config=rc)
    # output of the aborted epoch may be replayed; compare the distinct records
    assert sorted(set(norm(sigs))) == sorted(set(norm(want_sigs)))
    assert sorted(set(norm(vecs))) == sorted(set(norm(want_vecs)))


def test_two_workers_give_the_same_results_as_one() -> None:
    """Keys partitioned over two workers give the same vectors and signals as one worker."""
    want_vecs, want_sigs = uninterrupted()
    vecs: list = []
    sigs: list = []
    cluster_main(build(EVENTS, vecs, sigs, []), [], 0, worker_count_per_proc=2)
    assert norm(sigs) == norm(want_sigs)
    assert norm(vecs) == norm(want_vecs)


def test_an_index_price_right_after_a_resume_reaches_the_venues_seen_before_it(
        tmp_path: Path) -> None:
    """With no venues configured, the venues seen trading an instrument are kept across
    a kill and resume: an index price read first after the resume reaches them, as in
    an unbroken run, rather than no key until the venue trades again."""
    t0, s = 1_700_000_000 * 10**9, 10**9
    cfg = FeatureConfig(cadence="event")

    def trade(n: int, ts: int) -> Trade:
        return Trade(id=f"t{n}", venue="okx", instrument="BTC-USDT", ts=t0 + ts, price=100.0,
                     qty=1.0, side="buy")

    def index(n: int, ts: int, price: float) -> IndexPrice:
        return IndexPrice(id=f"i{n}", venue="index", instrument="BTC-USDT", ts=t0 + ts,
                          price=price)

    def run(items: list, rc: RecoveryConfig | None = None) -> list:
        vecs: list = []
        flow = Dataflow("seen_venues")
        inp = op.input("in", flow, TestingSource(items, batch_size=1))
        feats = extract_features("features", inp, config=cfg, clock=lambda: t0 + 10 * s)
        op.output("vecs", feats.oks, TestingSink(vecs))
        run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=rc)
        return [(v.ts - t0, round(v.values["index_dev_bps"], 3)) for _k, v in vecs]

    before, after = [trade(1, s), index(1, 2 * s, 100.0)], [index(2, 3 * s, 90.0), trade(2, 4 * s)]
    want = run([*before, *after])
    assert want[2:] == [(3 * s, 1111.111), (4 * s, 1111.111)]
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    items = [*before, TestingSource.ABORT(), *after]
    got = run(items, rc) + run(items, rc)
    assert sorted(set(got)) == want
