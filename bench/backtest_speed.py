"""Backtest replay rate (events/s) vs a bytewax pass-through, and `stress run --all` wall time.

Run: ``python bench/backtest_speed.py [--copies 8]`` (about a minute).
The input is the live guard bench's workload (``--copies`` back-to-back
copies of the demo scenario, as ``guard_throughput.py`` publishes), so the
rate compares with the live guard's per-worker rate. The baseline is a keyed
``op.stateful_map`` pass-through over the same records from
``TestingSource``, measured in the same run. Start-up (River's import, the
HST compile, key creation) is paid once per process; the rate is also given
with it subtracted, from a run over the first copy only::

    steady = (n_all - n_one) / (t_all - t_one)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario, scenario_copies
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
    copies = int(sys.argv[sys.argv.index("--copies") + 1]) if "--copies" in sys.argv else 8
    records = scenario_copies(copies, 1_700_000_000 * 10**9)
    one = len(build_scenario(0).events)
    base = passthrough(records)
    for batch in (100, 20):
        first = run_backtest(cfg, digest, records=records[:one], signer=signer, trust=trust,
                             batch_size=batch)
        res = run_backtest(cfg, digest, records=records, signer=signer, trust=trust,
                           batch_size=batch)
        rate = res.n_events / res.wall_s
        steady = (res.n_events - first.n_events) / max(1e-9, res.wall_s - first.wall_s)
        print(f"backtest ({copies} demo copies, {res.n_events:,} events, batch {batch}): "
              f"{rate:,.0f} events/s with start-up, {steady:,.0f} events/s steady; "
              f"pass-through {base:,.0f} events/s; ratio {rate / base:.3f} / {steady / base:.3f}")
    # the cross-market check's cost: the same run with it off
    replace = msgspec.structs.replace
    off = replace(cfg, detector=replace(cfg.detector,
                                        cross=replace(cfg.detector.cross, enabled=False)))
    rates = {}
    for name, c in (("on", cfg), ("off", off)):
        r = run_backtest(c, digest, records=records, signer=signer, trust=trust, batch_size=100)
        rates[name] = r.n_events / r.wall_s
    print(f"cross-market check (batch 100): on {rates['on']:,.0f} events/s, off "
          f"{rates['off']:,.0f} events/s; ratio on/off {rates['on'] / rates['off']:.3f}")
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
