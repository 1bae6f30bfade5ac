"""What a tick's progress costs the firm rollup, by how many counterparties it waits for.

Ticked exposure passes each source's tick on once every stage-2 key (counterparty) it
reaches has passed it. Each tick brings one progress item per counterparty, and the
firm keeps the lowest over them. The baseline is that lowest recounted over every key
on each item, in the same run, on the same items: its cost a tick grows with the
square of the counterparties; the firm's should grow linearly (a flat cost per
counterparty). CPU time, best of ``--repeats``.

    python bench/firm_progress.py [--counterparties 16 64 256] [--ticks 300]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from riskguard.operators.exposure import PROGRESS_KEY, ExposureConfig
from riskguard.operators.exposure.rollup import FirmLogic
from riskguard.schemas.valuation import Progress

SOURCE = "w0@s0"


def ticks_of(n: int, ticks: int) -> list[list[Progress]]:
    """Each tick's progress: the source's ``PROGRESS_KEY`` copy naming every
    counterparty, then each counterparty's copy."""
    cps = tuple(f"cp{i:04d}" for i in range(n))
    return [[Progress(counterparty=PROGRESS_KEY, ts=t, source=SOURCE, of=1, via=cps),
             *(Progress(counterparty=cp, ts=t, source=SOURCE, of=1) for cp in cps)]
            for t in range(ticks)]


def firm_us(batches: list[list[Progress]]) -> float:
    logic = FirmLogic(ExposureConfig(), ticked=True)
    t = time.process_time()
    for batch in batches:
        logic.on_batch(batch)
    return 1e6 * (time.process_time() - t) / len(batches)


def recount_us(batches: list[list[Progress]]) -> float:
    """The definition: each item's key moves, then the lowest over every key."""
    seen: dict[str, int] = {PROGRESS_KEY: -1}
    passed = -1
    t = time.process_time()
    for batch in batches:
        for p in batch:
            for cp in p.via:
                seen.setdefault(cp, -1)
            if p.ts > seen.get(p.counterparty, -1):
                seen[p.counterparty] = p.ts
                passed = max(passed, min(seen.values()))
    return 1e6 * (time.process_time() - t) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--counterparties", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"firm progress, CPU time a tick, best of {args.repeats}; "
          f"{datetime.now(UTC):%Y-%m-%d}")
    for n in args.counterparties:
        batches = ticks_of(n, args.ticks)
        firm = min(firm_us(batches) for _ in range(args.repeats))
        base = min(recount_us(batches) for _ in range(args.repeats))
        print(f"  {n:5,} counterparties: firm {firm:9.1f} us a tick ({firm / n:5.2f} a "
              f"counterparty); recount {base:9.1f} us ({base / n:5.2f}): "
              f"{base / firm:5.2f}x the recount's speed")


if __name__ == "__main__":
    main()
