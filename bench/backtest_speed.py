"""Backtest replay rate (events/s) vs a bytewax pass-through, and `stress run --all` wall time.

Run: ``python bench/backtest_speed.py`` (about a minute on 2 shared cores).
The baseline is a keyed ``op.stateful_map`` pass-through over the same
records from ``TestingSource``, measured in the same run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.dataflows.guard import load_guard_config, load_keys


def passthrough(records: list) -> float:
    flow = Dataflow("bench_passthrough")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(records, batch_size=100)),
                      lambda r: f"{getattr(r, 'venue', '')}/{getattr(r, 'instrument', '')}")
    out: list = []
    op.output("out", op.stateful_map("pass", keyed, lambda s, r: (s, r)), TestingSink(out))
    t = time.perf_counter()
    run_main(flow)
    return len(records) / (time.perf_counter() - t)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="rg-bench-bt-"))
    keys = init_keys(work)
    cfg, digest = load_guard_config(write_config(work, "127.0.0.1:1", keys))
    signer, trust = load_keys(cfg)
    records = build_scenario(1_700_000_000 * 10**9).events
    base = passthrough(records)
    for batch in (100, 20):
        res = run_backtest(cfg, digest, records=records, signer=signer, trust=trust,
                           batch_size=batch)
        rate = res.n_events / res.wall_s
        print(f"backtest (demo scenario, {res.n_events:,} events, batch {batch}): "
              f"{rate:,.0f} events/s; pass-through {base:,.0f} events/s; ratio {rate / base:.3f}")
    from riskguard.dataflows import stress

    t = time.perf_counter()
    n = 0
    for name in stress.bundled():
        o = stress.run_scenario(stress.load_scenario(stress.scenario_path(name)), work / "s")
        n += o.result.n_events
    wall = time.perf_counter() - t
    print(f"stress run --all: {len(stress.bundled())} scenarios, {n:,} events, {wall:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
