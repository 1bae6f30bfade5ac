"""Where the whole guard's CPU goes: the backtest with each detection stage switched off.

Run: ``python bench/guard_stages.py [--copies 4] [--repeats 5]`` (about four minutes).
The input is the live guard bench's workload (``--copies`` back-to-back copies of the
demo scenario, as ``guard_throughput.py`` publishes), replayed in this process with
the demo config, batches of 1,000 records. Each variant is timed by this process's CPU
time (one worker runs on the calling thread, so load from other processes does not
count), best of ``--repeats`` interleaved runs (runs in one process vary by about
10 %: a stage's cost under a few µs is within that):

- the whole guard;
- without the move bands (``detector.bands.enabled = false``);
- without the learned path (``detector.model = "none"``);
- without the cross-market check (``detector.cross.enabled = false``);
- without the bands and the learned path (features, exposure, limits and the playbook
  still run).

Printed for each: CPU per event, its ratio to a keyed ``stateful_map`` pass-through of
the same records measured in the same run, and what the stage switched off costs (the
whole guard's CPU per event minus the variant's). A run's start-up is in every figure
alike; the variants' decisions differ, so only their cost is compared here.

Then where the whole guard's CPU goes, step by step: one more run of the whole guard
with each stateful step's logic timed (:func:`~riskguard.operators.core.base.step_cpu`),
printing each step's CPU per event of the input, and what is left: the engine and the
stateless steps (maps, filters, branches, merges) between them. Timing adds two clock
reads a step call, so that run's total is printed beside the untimed best.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import scenario_copies
from riskguard.dataflows.guard import GuardConfig, load_guard_config, load_keys
from riskguard.operators.core import step_cpu

BATCH = 1000
_replace = msgspec.structs.replace


def passthrough_us(records: list[Any]) -> float:
    """CPU µs per record of a keyed ``stateful_map`` pass-through."""
    flow = Dataflow("bench_passthrough")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(records, batch_size=BATCH)),
                      lambda r: f"{getattr(r, 'venue', '')}/{getattr(r, 'instrument', '')}")
    op.output("out", op.stateful_map("pass", keyed, lambda s, r: (s, r)), TestingSink([]))
    t = time.process_time()
    run_main(flow)
    return 1e6 * (time.process_time() - t) / len(records)


def variants(cfg: GuardConfig) -> dict[str, GuardConfig]:
    """The whole guard's config, and one per stage switched off."""
    det = cfg.detector
    no_bands = _replace(det, bands=_replace(det.bands, enabled=False))
    return {
        "whole guard": cfg,
        "without the move bands": _replace(cfg, detector=no_bands),
        "without the learned path": _replace(cfg, detector=_replace(det, model="none")),
        "without the cross-market check": _replace(cfg, detector=_replace(
            det, cross=_replace(det.cross, enabled=False))),
        "without bands and learned path": _replace(cfg, detector=_replace(
            no_bands, model="none")),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=4, help="demo scenario copies (~27k each)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs; best kept")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rg-bench-stages-"))
    cfg, digest = load_guard_config(write_config(work, "127.0.0.1:1", init_keys(work)))
    signer, trust = load_keys(cfg)
    records = scenario_copies(args.copies, 1_700_000_000 * 10**9)

    def guard_us(c: GuardConfig) -> Callable[[], float]:
        def run() -> float:
            gc.collect()  # what the runs before left is no part of this one
            t = time.process_time()
            run_backtest(c, digest, records=records, signer=signer, trust=trust,
                         batch_size=BATCH)
            return 1e6 * (time.process_time() - t) / len(records)
        return run

    runs: dict[str, Callable[[], float]] = {
        "keyed pass-through": lambda: passthrough_us(records),
        **{name: guard_us(c) for name, c in variants(cfg).items()}}
    guard_us(cfg)()  # River's import and the model's first build, outside the timing
    gc.freeze()  # the input and the imports: no collection walks them during a run
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            best[name] = min(best.get(name, float("inf")), run())
    base, whole = best["keyed pass-through"], best["whole guard"]
    print(f"{len(records):,} events ({args.copies} demo copies), batch {BATCH}, CPU time, "
          f"best of {args.repeats}; {datetime.now(UTC):%Y-%m-%d}")
    for name, us in best.items():
        line = f"  {name:<32} {us:6.1f} us/event  {base / us:5.2f}x the pass-through"
        if name not in ("keyed pass-through", "whole guard"):
            line += f"  (the stage off saves {whole - us:5.1f} us/event)"
        print(line)
    print_steps(guard_us(cfg), whole, len(records))
    return 0


def print_steps(run: Callable[[], float], untimed_us: float, n_events: int) -> None:
    """One timed run of the whole guard: each stateful step's CPU per event, the rest."""
    with step_cpu() as cpu:
        total_us = run()
    print(f"where the whole guard's CPU goes, one timed run: {total_us:.1f} us/event "
          f"(untimed best {untimed_us:.1f})")
    steps_us = {step: 1e6 * s / n_events for step, s in cpu.items()}
    prefix = "riskguard_backtest.guard."
    for step, us in sorted(steps_us.items(), key=lambda kv: -kv[1]):
        if us >= 0.05:
            print(f"  {step.removeprefix(prefix):<32} {us:6.1f} us/event  "
                  f"{us / total_us:4.0%}")
    rest = total_us - sum(steps_us.values())
    print(f"  {'engine and stateless steps':<32} {rest:6.1f} us/event  {rest / total_us:4.0%}")


if __name__ == "__main__":
    sys.exit(main())
