"""Where exposure + limits spend a batch: each stage's logic timed in one process.

The workload is ``exposure_speed.py``'s (50 counterparties x 500 instruments, its
warm-up, then marks and fills 10:1 in 1,000-event batches). The logic classes run
in one process without bytewax, stage by stage as the dataflow chains them:
routing, stage 1 (valuation shards), stage 2 (counterparties), the firm and the
limits. Each stage's time per batch is the best of ``--repeats`` runs, printed
beside the bytewax keyed ``stateful_map`` pass-through measured in the same run.
Then stage 1 runs in a bytewax flow alone (``exposure_speed.run_stage1``), once as
it is and once with its re-valuation made a no-op: the second is what routing,
marks and fills cost per batch, the difference what re-valuing the book costs
before anything downstream sees it.

``--instructions`` counts instead of timing: it runs the same logic under
``valgrind --tool=callgrind`` over ``N`` and ``2N`` stream events and prints the
instructions per batch of the difference. The machine's load does not move that
count, so it tells a 3% change apart where timings read 15% apart run to run.

    python bench/exposure_stages.py [--repeats 5] [--events 110000]
    python bench/exposure_stages.py --instructions [--events 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from exposure_speed import InProcessStages, events, run_baseline, run_stage1, steady, warmup
from riskguard.operators.exposure import ShardLogic

STAGES = InProcessStages.NAMES
BATCH = 1000


def stage_times(evs: list[Any], measured_from: int) -> dict[str, float]:
    """Seconds per stage over the batches of ``evs`` from index ``measured_from`` on.

    >>> t = stage_times(warmup(50) + events(2000), 550)
    >>> sorted(t) == sorted(STAGES) and all(v > 0 for v in t.values())
    True
    """
    stages = InProcessStages()
    spent = dict.fromkeys(STAGES, 0.0)
    for lo in range(0, len(evs), BATCH):
        took = stages.batch(evs[lo:lo + BATCH])
        if lo >= measured_from:
            for name, dt in zip(STAGES, took, strict=True):
                spent[name] += dt
    return spent


@contextlib.contextmanager
def revaluation_skipped() -> Iterator[None]:
    """Stage 1 applies records but re-values nothing (no parts) while inside.

    >>> with revaluation_skipped():
    ...     run_stage1(warmup(10), 1000)[1]  # no parts
    0
    >>> run_stage1(warmup(10), 1000)[1]  # a part per counterparty holding a position
    10
    """
    kept = ShardLogic._revalue

    def skip(self: ShardLogic, out: list[Any], *_args: Any, **_kw: Any) -> list[Any]:
        return out

    ShardLogic._revalue = skip  # type: ignore[method-assign]
    try:
        yield
    finally:
        ShardLogic._revalue = kept  # type: ignore[method-assign]


def run_stage1_applying_only(evs: list[Any], batch: int) -> tuple[float, int]:
    """:func:`run_stage1` under :func:`revaluation_skipped`."""
    with revaluation_skipped():
        return run_stage1(evs, batch)


def count_instructions(n_events: int) -> float:
    """Instructions per 1,000-event batch of the logic, by callgrind: a run over
    ``2 * n_events`` stream events less one over ``n_events``, over ``n_events / 1000``."""
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (Debian package valgrind)")

    def run(n: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, __file__, "--run-once", str(n)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"Collected : (\d+)", res.stderr)
        if found is None:
            sys.exit(f"no instruction count from callgrind:\n{res.stderr[-2000:]}")
        return int(found.group(1))

    return (run(2 * n_events) - run(n_events)) / (n_events / BATCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=None,
                    help="stream events (default 110,000 timed, 20,000 counted)")
    ap.add_argument("--positions", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per batch under callgrind instead of timing")
    ap.add_argument("--run-once", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_once is not None:  # the process callgrind counts
        stage_times(warmup(args.positions) + events(args.run_once), 0)
        return
    if args.instructions:
        n = args.events or 20_000
        per_batch = count_instructions(n)
        print(f"exposure + limits logic, {n:,} and {2 * n:,} stream events: "
              f"{per_batch / 1e6:.2f} M instructions per {BATCH:,}-event batch")
        return
    prefix, stream = warmup(args.positions), events(args.events or 110_000)
    best = dict.fromkeys(STAGES, float("inf"))
    base = float("inf")
    for _ in range(args.repeats):
        for name, t in stage_times(prefix + stream, len(prefix)).items():
            best[name] = min(best[name], t)
        base = min(base, run_baseline(prefix + stream, BATCH)[0]
                   - run_baseline(prefix, BATCH)[0])
    batches = len(stream) / BATCH
    total = sum(best.values())
    print(f"{len(stream):,} events after {len(prefix):,} warm-up, best of {args.repeats}, "
          "ms per 1,000-event batch:")
    for name in STAGES:
        print(f"  {name:8s} {best[name] / batches * 1e3:6.3f}  "
              f"({best[name] / total:.0%})")
    print(f"  logic    {total / batches * 1e3:6.3f}")
    print(f"  pass-through flow (bytewax keyed stateful_map): {base / batches * 1e3:.3f}; "
          f"the logic alone is {total / base:.2f}x it")
    flow_repeats = max(args.repeats // 2, 1)  # three whole flows per repeat
    rates = steady([run_baseline, run_stage1, run_stage1_applying_only], prefix, stream, BATCH,
                   flow_repeats)
    base_ms, s1_ms, apply_ms = (BATCH / r * 1e3 for r in rates)
    print(f"in bytewax flows, ms per batch (best of {flow_repeats}): "
          f"pass-through {base_ms:.2f}; stage 1 alone {s1_ms:.2f} ({base_ms / s1_ms:.2f}x); "
          f"stage 1 re-valuing nothing {apply_ms:.2f} ({base_ms / apply_ms:.2f}x)")
    budget = 2 * base_ms - apply_ms
    print(f"at 0.5x the whole flow may take {2 * base_ms:.2f}: {budget:.2f} for the re-valuation "
          f"chain, whose stage-1 share alone is {s1_ms - apply_ms:.2f}")


if __name__ == "__main__":
    main()
