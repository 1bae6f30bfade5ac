"""The exposure + limits dataflow: 2 workers, 2 processes and resume-after-abort all give
the same per-counterparty and firm-wide results as one uninterrupted worker."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from exposure_pipeline import LocalPipeline
from kafka_helpers import free_ports
from risk_flow_app import S, build, make_events
from riskguard.operators.exposure import shard_keys
from riskguard.schemas import DeadLetter, Exposure, LimitBreach, RiskAlert, encode
from test_exposure import worked_config

HERE = Path(__file__).resolve().parent
EVENTS = make_events(1500)


def final_exposures(items: list[Any]) -> dict[str, Exposure]:
    """Latest exposure per counterparty (by stage-2 seq, then output order) and firm."""
    out: dict[str, Exposure] = {}
    for it in items:
        if isinstance(it, Exposure):
            cur = out.get(it.counterparty)
            if cur is None or it.seq >= cur.seq:
                out[it.counterparty] = it
    return out


def assert_same(a: dict[str, Exposure], b: dict[str, Exposure], eps: float = 0.005) -> None:
    assert sorted(a) == sorted(b)
    for cp, x in a.items():
        y = b[cp]
        for f in ("gross_notional", "net_notional", "collateral", "unrealized_pnl",
                  "open_order_notional"):
            assert getattr(x, f) == pytest.approx(getattr(y, f), rel=1e-9, abs=1e-6), (cp, f)
        assert x.delta_by_underlying == pytest.approx(y.delta_by_underlying, rel=1e-9)
        assert x.notional_by_asset == pytest.approx(y.notional_by_asset, rel=1e-9)
        assert x.concentration == pytest.approx(y.concentration, abs=eps), cp
        assert (x.stale, x.stale_instruments) == (y.stale, y.stale_instruments)


def run_one(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    run_main(build(events, TestingSink(out)))
    return out


@pytest.fixture(scope="module")
def single() -> list[Any]:
    return run_one(EVENTS)


def test_one_worker_run_produces_exposures_breaches_and_alerts(single: list[Any]) -> None:
    """The reference run covers every counterparty, the firm, a breach and fail-closed."""
    fin = final_exposures(single)
    assert {"binance", "okx", "deribit", "bybit", "kraken", "*"} <= set(fin)
    assert fin["*"].gross_notional == pytest.approx(
        sum(e.gross_notional for cp, e in fin.items() if cp != "*"))
    assert sum(e.concentration for cp, e in fin.items() if cp != "*") == pytest.approx(
        1.0, abs=0.03)
    assert any(isinstance(x, LimitBreach) for x in single)
    assert any(isinstance(x, RiskAlert) and x.kind == "unknown_counterparty" for x in single)
    assert not any(isinstance(x, DeadLetter) for x in single)


def test_two_workers_equal_one_worker(single: list[Any]) -> None:
    """cluster_main with 2 worker threads gives the same final per-cp and firm exposures."""
    out: list[Any] = []
    cluster_main(build(EVENTS, TestingSink(out)), [], 0, worker_count_per_proc=2)
    assert_same(final_exposures(out), final_exposures(single))


def test_two_workers_with_three_valuation_shards_equal_one_worker(single: list[Any]) -> None:
    """Instruments hashed over 3 stage-1 shards (parts re-summed per counterparty) on 2
    workers give the same final exposures as 1 shard on 1 worker."""
    out: list[Any] = []
    cluster_main(build(EVENTS, TestingSink(out), shards=3), [], 0, worker_count_per_proc=2)
    assert_same(final_exposures(out), final_exposures(single))


def test_batched_flow_ends_where_the_record_at_a_time_pipeline_ends(single: list[Any]) -> None:
    """Coalescing per batch loses no mark: after the last batch the flow's exposures equal
    LocalPipeline fed one record at a time (every mark re-valued on arrival)."""
    pipe = LocalPipeline(worked_config())
    pipe.feed_all(EVENTS)
    ref = pipe.latest()
    assert_same(final_exposures(single), ref)
    assert ref["okx"].notional_by_instrument == pytest.approx(
        final_exposures(single)["okx"].notional_by_instrument, rel=1e-9)


@pytest.mark.slow
def test_two_processes_equal_one_worker(single: list[Any], tmp_path: Path) -> None:
    """Two bytewax processes over file input/output give the same final exposures."""
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(encode(e) + b"\n" for e in EVENTS))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    addrs = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    env = dict(os.environ, RISK_FLOW_IN=str(inp), RISK_FLOW_OUT=str(out_dir),
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "risk_flow_app:flow()", "-i", str(i), "-a", addrs],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)]
    for p in procs:
        stdout, _ = p.communicate(timeout=180)
        assert p.returncode == 0, stdout.decode()[-3000:]
    items: list[Any] = []
    files = sorted(out_dir.glob("out-*.pkl"))
    assert len(files) == 2
    for f in files:
        with f.open("rb") as fh:
            while True:
                try:
                    items.append(pickle.load(fh))
                except EOFError:
                    break
    assert_same(final_exposures(items), final_exposures(single))


def test_resume_after_abort_equals_uninterrupted(single: list[Any], tmp_path: Path) -> None:
    """Kill the flow halfway (ABORT), resume from the recovery store: same final results."""
    init_db_dir(tmp_path, 1)
    half = len(EVENTS) // 2
    events = [*EVENTS[:half], TestingSource.ABORT(), *EVENTS[half:]]
    out: list[Any] = []
    rc = RecoveryConfig(str(tmp_path))
    flow = build(events, TestingSink(out))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)  # stops at ABORT
    partial = final_exposures(out)
    assert partial["*"].gross_notional != pytest.approx(final_exposures(single)["*"].gross_notional)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    assert_same(final_exposures(out), final_exposures(single))


@pytest.mark.parametrize("shards", [1, 3])
def test_limits_pass_the_ticks_on_behind_every_breach_they_follow(shards: int) -> None:
    """With ticks, the exposure path passes each tick down valuation, counterparty, firm
    and limits, and the limits stage emits it (named ``<worker>@<shard>/<limits key>``)
    behind the breaches it made before it, in ``LimitsOut.clocked``: a consumer that takes
    its clock from them (the playbook) never sees a breach arrive after its time passed
    it, on 1, 2 or 4 workers, with 1 valuation shard or 3 (a counterparty
    new to a shard makes the firm wait for its copy: ``Progress.via``)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from risk_flow_app import limits_config, refuse_updates
    from riskguard.operators.core.clock import Tick, Watermark
    from riskguard.operators.exposure.ops import aggregate_exposure, enforce_limits

    events = [e for e in EVENTS if getattr(e, "ts", 0) > 0]
    first, last = min(e.ts for e in events) // S, max(e.ts for e in events) // S
    ticks = {s: Tick(ts=s * S, source="w", of=1) for s in range(first, last + 2)}
    stream: list[Any] = []
    for e in sorted(events, key=lambda e: e.ts):
        while ticks and min(ticks) * S <= e.ts:
            stream.append(ticks.pop(min(ticks)))
        stream.append(e)
    stream.extend(ticks[k] for k in sorted(ticks))

    def late_breaches(workers: int) -> tuple[list[int], set[str], int]:
        flow = Dataflow("progress")
        inp = op.input("in", flow, TestingSource(stream))
        tick_in = op.filter("ticks", inp, lambda x: isinstance(x, Tick))
        exp = aggregate_exposure("exposure", op.filter("recs", inp,
                                 lambda x: not isinstance(x, Tick)),
                                 config=worked_config(valuation_shards=shards),
                                 clock=lambda: 0, ticks=tick_in)
        lim = enforce_limits("limits", exp.exposures, None, config=limits_config(),
                             verifier=refuse_updates, clock=lambda: 0,
                             progress=exp.progress)
        merged = op.key_on("one", op.filter(
            "breaches_and_ticks", lim.clocked, lambda x: not isinstance(x, RiskAlert)),
            lambda _x: "k")

        def watch(wm: Any, x: Any) -> tuple[Any, Any]:
            wm = wm or [Watermark(idle_ns=10**18), -1]
            if isinstance(x, Tick):
                wm[1] = max(wm[1], wm[0].tick_time(x, 0))
                return wm, ("tick", x.source)
            return wm, ("breach", wm[1] - x.ts)

        out: list[Any] = []
        op.output("out", op.stateful_map("watch", merged, watch), TestingSink(out))
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
        seen = [v for _k, v in out]
        late = [d for kind, d in seen if kind == "breach" and d > 0]
        names = {n for kind, n in seen if kind == "tick"}
        return late, names, sum(1 for kind, _ in seen if kind == "breach")

    for workers in (1, 2, 4):
        late, names, breaches = late_breaches(workers)
        assert breaches > 0 and late == [], workers
        assert {f"w@{s}/{key}" for s in shard_keys(shards) for key in ("*", "okx")} <= names


def test_a_source_that_finished_before_any_counterparty_joined_reaches_every_limits_key(
) -> None:
    """Two tick sources, one of which (a process that raced through its input) makes all
    its ticks before the first fill: every limits key still hears both sources, so a
    consumer clocked by ``LimitsOut.ticks`` reaches the end of event time instead of
    waiting for a source that will never tick again."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from risk_flow_app import limits_config, refuse_updates
    from riskguard.operators.core.clock import Tick, Watermark
    from riskguard.operators.exposure.ops import aggregate_exposure, enforce_limits

    events = sorted((e for e in EVENTS if getattr(e, "ts", 0) > 0), key=lambda e: e.ts)
    first, last = events[0].ts // S, events[-1].ts // S + 1
    stream: list[Any] = [Tick(ts=s * S, source="fast", of=2) for s in range(first, last + 1)]
    fast = len(stream)
    ticks = list(range(first, last + 1))
    for e in events:
        while ticks and ticks[0] * S <= e.ts:
            stream.append(Tick(ts=ticks.pop(0) * S, source="slow", of=2))
        stream.append(e)
    stream.extend(Tick(ts=s * S, source="slow", of=2) for s in ticks)

    flow = Dataflow("finished_source")
    # batches of that many: the fast source's ticks pass the firm before any exposure, and a
    # counterparty's first exposure comes with a move of the slow source
    inp = op.input("in", flow, TestingSource(stream, batch_size=fast))
    exp = aggregate_exposure(
        "exposure", op.filter("recs", inp, lambda x: not isinstance(x, Tick)),
        config=worked_config(), clock=lambda: 0,
        ticks=op.filter("ticks", inp, lambda x: isinstance(x, Tick)))
    lim = enforce_limits("limits", exp.exposures, None, config=limits_config(),
                         verifier=refuse_updates, clock=lambda: 0, progress=exp.progress)
    out: list[Tick] = []
    op.output("out", lim.ticks, TestingSink(out))
    run_main(flow)
    keys = {t.source.split("/", 1)[1] for t in out}
    assert {"*", "okx"} <= keys
    assert {t.source for t in out} == {f"{w}@s0/{k}" for w in ("fast", "slow") for k in keys}
    wm = Watermark(idle_ns=10**18)
    assert max(wm.tick_time(t, 0) for t in out) == last * S
