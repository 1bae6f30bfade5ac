"""What one dataflow step costs bytewax per record, apart from the logic it runs.

Run: ``python bench/engine_steps.py [--records 107000] [--repeats 3]`` (about a minute).

The guard is 112 bytewax core steps (67 ``flat_map_batch``, 16 ``stateful_batch``, 14
``merge``, 9 ``branch``, 5 outputs and the input). This prints the CPU a record costs
through chains of steps that do nothing: ``--steps`` identity ``flat_map_batch`` steps,
and keyed ``stateful_batch`` steps whose logic hands its batch back (18 keys, as many
as the demo's markets), at the backtest's batch size (about 90 records: a batch never
spans two 1-second ticks) and at 1,000. Each figure is CPU time in this process, best
of ``--repeats``, with the ratio to the chain of 0 steps measured in the same run (the
input and output alone). It says what fusing steps would save: a record's share of
the engine is about the steps it crosses times these costs.
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main

KEYS = 18


class _Echo(StatefulBatchLogic[Any, Any, None]):
    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        return values, False

    def snapshot(self) -> None:
        return None


def _flow(batches: list[list[Any]], plain: int, keyed: int) -> Dataflow:
    flow = Dataflow("steps")
    s = op.flat_map("unbatch", op.input("in", flow, TestingSource(batches)), lambda b: b)
    for i in range(plain):
        s = op.flat_map_batch(f"plain{i}", s, lambda xs: xs)
    for i in range(keyed):
        s = op.stateful_batch(f"keyed{i}", s, lambda _state: _Echo())
    op.output("out", s, TestingSink([]))
    return flow


def cpu_us(records: list[Any], batch: int, plain: int, keyed: int, repeats: int) -> float:
    """Best CPU µs per record of the chain, over ``repeats`` runs."""
    batches = [records[i:i + batch] for i in range(0, len(records), batch)]
    best = float("inf")
    for _ in range(repeats):
        flow = _flow(batches, plain, keyed)
        start = time.process_time()
        run_main(flow)
        best = min(best, time.process_time() - start)
    return 1e6 * best / len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=107_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100, help="identity flat_map_batch steps")
    ap.add_argument("--keyed", type=int, default=16, help="keyed stateful_batch steps")
    args = ap.parse_args()
    records = [(f"k{i % KEYS}", i) for i in range(args.records)]
    gc.freeze()
    print(f"bytewax steps, CPU per record, best of {args.repeats}; "
          f"{datetime.now(UTC):%Y-%m-%d}")
    for batch in (90, 1000):
        base = cpu_us(records, batch, 0, 0, args.repeats)
        plain = cpu_us(records, batch, args.steps, 0, args.repeats)
        keyed = cpu_us(records, batch, 0, args.keyed, args.repeats)
        print(f"  batch {batch:>5}: input and output {base:6.2f} µs (1.00x); "
              f"{args.steps} flat_map_batch {plain:6.2f} µs ({plain / base:.1f}x, "
              f"{(plain - base) / args.steps:.3f} µs a step); {args.keyed} keyed "
              f"stateful_batch {keyed:6.2f} µs ({keyed / base:.1f}x, "
              f"{(keyed - base) / args.keyed:.3f} µs a step)")


if __name__ == "__main__":
    main()
