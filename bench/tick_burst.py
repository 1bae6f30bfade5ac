"""The per-tick burst of the exposure path at N counterparties, stage by stage.

The latency tail: once a tick re-values many counterparties, a command
whose fill lands behind that tick waits for the whole burst. This script
re-creates one tick of the guard's exposure path in process and times each stage
by this process's CPU time, without Kafka or bytewax's scheduling, so it gives
the same figures run after run. Use it to see which stage a change moved:

- **stage 1**: the router and one valuation shard re-value every counterparty
  after a tick's marks (each counterparty holds one position, as the latency
  bench's incident counterparties do);
- **stage 2**: each counterparty's ticked ``CounterpartyLogic``, fed its part
  and then its progress (the guard's usual batch);
- **firm**: ``FirmLogic`` sums the exposures and sets their concentration;
- **limits**: each counterparty's ``LimitsLogic``. These counterparties have
  no configured limits, so they fail closed at zero, are in breach, and emit
  their utilizations every tick;
- **output**: metrics (``observe_all``) and the Kafka encoding (the guard's
  ``exposures_key`` and JSON) of the exposures and utilizations.

The figure is the median over ``--ticks`` ticks. It is printed against a bytewax
keyed ``stateful_map`` pass-through of the same N items per batch, measured in
the same run. bytewax adds about 1.5 us per key per keyed step on top of this,
which the in-process stages leave out.

    python bench/tick_burst.py [--counterparties 600] [--ticks 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from exposure_speed import CountSink
from riskguard.connectors.kafka.sink import kafka_message
from riskguard.dataflows.guard import exposures_key
from riskguard.operators.core.observe import observe_all
from riskguard.operators.exposure import (
    CounterpartyLogic,
    ExposureConfig,
    FirmLogic,
    InstrumentsConfig,
    InstrumentSpec,
    Router,
    ShardLogic,
)
from riskguard.operators.exposure.limit_specs import CounterpartyLimits, LimitsConfig, LimitSpec
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.schemas import Exposure, Fill, Part, Progress, Trade, Utilization

S = 1_000_000_000
INSTRUMENTS = ("BTC-PERP", "ETH-PERP")
STAGES = ("stage 1", "stage 2", "firm", "limits", "output")


class Burst:
    """One guard's exposure path over ``n`` counterparties, one position each."""

    def __init__(self, n: int) -> None:
        self.cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
            name: InstrumentSpec(kind="perp", base=name.split("-")[0], quote="USD")
            for name in INSTRUMENTS}))
        self.limits_cfg = LimitsConfig(
            firm={"gross_notional": LimitSpec(limit=1e12)},
            counterparties={"okx": CounterpartyLimits(
                limits={"gross_notional": LimitSpec(limit=1e9)})})
        reg = self.cfg.validate()
        self.router = Router(reg, self.cfg)
        self.shards: dict[str, ShardLogic] = {}
        self.cps: dict[str, CounterpartyLogic] = {}
        self.limits: dict[str, LimitsLogic] = {}
        self.firm = FirmLogic(self.cfg)
        self.reg = reg
        self.ticks = 0
        self.tick(self._marks(0), timed=False)
        self.tick([Fill(id=f"f{c}", venue=f"cp{c}", counterparty=f"cp{c}",
                        instrument=INSTRUMENTS[c % len(INSTRUMENTS)], side="buy", qty=1.0,
                        price=100.0, ts=S + c) for c in range(n)], timed=False)

    def _marks(self, k: int) -> list[Trade]:
        return [Trade(id=f"m{k}-{j}", venue="x", instrument=INSTRUMENTS[j % len(INSTRUMENTS)],
                      ts=(2 + k) * S + j, price=100.0 + 0.1 * k + 0.01 * j, qty=1.0,
                      side="buy") for j in range(20)]

    def next_tick(self) -> dict[str, float]:
        """Seconds of CPU per stage for the next tick's marks."""
        self.ticks += 1
        return self.tick(self._marks(self.ticks), timed=True)

    def tick(self, records: list[Any], *, timed: bool) -> dict[str, float]:
        clock = time.process_time
        t0 = clock()
        parts: list[Part] = []
        for key, pack in self.router.route_batch(records):
            shard = self.shards.get(key) or self.shards.setdefault(
                key, ShardLogic(self.cfg, self.reg))
            parts.extend(p for p in shard.on_batch([pack]) if type(p) is Part)
        t1 = clock()
        exposures: list[Exposure] = []
        for p in parts:
            cp = self.cps.get(p.counterparty) or self.cps.setdefault(
                p.counterparty, CounterpartyLogic(self.cfg, ticked=True))
            progress = Progress(counterparty=p.counterparty, ts=p.ts, source="w0@s0", of=1)
            exposures.extend(e for e in cp.on_batch([p, progress]) if type(e) is Exposure)
        t2 = clock()
        summed = [e for e in self.firm.on_batch(exposures) if type(e) is Exposure]
        t3 = clock()
        made: list[Any] = []
        for e in summed:
            lim = self.limits.get(e.counterparty) or self.limits.setdefault(
                e.counterparty, LimitsLogic(self.limits_cfg))
            made.extend(lim.on_event(e))
        t4 = clock()
        out = [*summed, *(u for u in made if type(u) is Utilization)]
        observe_all(out)
        encoded = [kafka_message((exposures_key(r), r)) for r in out]  # as the guard's sink
        t5 = clock()
        if timed and not encoded:
            msg = "the tick made no output"
            raise SystemExit(msg)
        return dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True))


def passthrough_ms(n: int, ticks: int) -> float:
    """CPU ms per batch of ``n`` items, one per key, through bytewax's keyed
    ``stateful_map`` (one batch per tick)."""
    items = [(f"cp{c}", t) for t in range(ticks) for c in range(n)]
    flow = Dataflow("tick_burst_pass")
    keyed = op.input("in", flow, TestingSource(items, batch_size=n))
    op.output("out", op.stateful_map("pass", keyed, lambda s, v: (v, v)), CountSink())
    t0 = time.process_time()
    run_main(flow)
    return (time.process_time() - t0) / ticks * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counterparties", type=int, default=600)
    ap.add_argument("--ticks", type=int, default=30)
    args = ap.parse_args()
    burst = Burst(args.counterparties)
    for _ in range(3):  # warm-up: layouts, the limits' plans, the first utilizations
        burst.next_tick()
    runs = [burst.next_tick() for _ in range(args.ticks)]
    per = {s: statistics.median(r[s] for r in runs) * 1e3 for s in STAGES}
    total = sum(per.values())
    base = statistics.median(passthrough_ms(args.counterparties, args.ticks) for _ in range(3))
    n = args.counterparties
    print(f"{n} counterparties, one position each, median of {args.ticks} ticks (CPU ms):")
    for s in STAGES:
        print(f"  {s:8} {per[s]:6.2f} ms  ({per[s] / n * 1e3:5.2f} us per counterparty)")
    print(f"  total    {total:6.2f} ms per tick; a keyed stateful_map pass-through of the same "
          f"{n} items: {base:.2f} ms, so the burst is {total / base:.1f}x it")


if __name__ == "__main__":
    main()
