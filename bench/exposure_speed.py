"""Events/s through aggregate_exposure + enforce_limits vs a bytewax stateful_map pass-through.

50 counterparties x 500 instruments, marks (trades) 10x as often as fills.
Prints events/s for both and the ratio (goal >= 0.5), then memory per position.

    python bench/exposure_speed.py [--events 110000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from riskguard.operators.exposure import (
    ExposureConfig,
    InstrumentsConfig,
    InstrumentSpec,
    LocalPipeline,
)
from riskguard.operators.limits import CounterpartyLimits, LimitsConfig, LimitSpec
from riskguard.operators.risk import aggregate_exposure, enforce_limits
from riskguard.schemas import Fill, LimitUpdate, SignedEnvelope, Trade

from riskguard.errors import VerificationError

N_CP, N_INST = 50, 500
S = 1_000_000_000


def refuse_updates(envelope: SignedEnvelope, now_ns: int) -> LimitUpdate:
    """This flow has no update stream; a verifier that accepts nothing."""
    raise VerificationError("unsigned", "no trust file in this flow")


def config() -> tuple[ExposureConfig, LimitsConfig]:
    inst = {f"I{k}": InstrumentSpec(kind="perp", base=f"A{k % 50}", quote="USD")
            for k in range(N_INST)}
    exp = ExposureConfig(instruments=InstrumentsConfig(instruments=inst))
    lim = LimitsConfig(
        firm={"gross_notional": LimitSpec(limit=1e12)},
        counterparties={f"C{c}": CounterpartyLimits(limits={
            "gross_notional": LimitSpec(limit=1e9), "net_notional": LimitSpec(limit=1e9),
            "delta": LimitSpec(limit=1e9)}) for c in range(N_CP)})
    return exp, lim


def events(n: int, seed: int = 1) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = [Trade(id=f"m-{k}", venue="x", instrument=f"I{k}", ts=1, price=100.0,
                            qty=1.0, side="buy") for k in range(N_INST)]
    t = 10 * S
    for k in range(n):
        t += 1_000_000
        i = rng.randrange(N_INST)
        if k % 11 == 0:
            c = rng.randrange(N_CP)
            out.append(Fill(id=f"f{k}", venue=f"C{c}", counterparty=f"C{c}", instrument=f"I{i}",
                            side=rng.choice(["buy", "sell"]),
                            qty=1.0, price=100.0, ts=t))
        else:
            out.append(Trade(id=f"m{k}", venue="x", instrument=f"I{i}", ts=t,
                             price=100.0 * (1 + rng.gauss(0, 0.01)), qty=1.0,
                             side="buy"))
    return out


class _Count(StatelessSinkPartition[Any]):
    def __init__(self, box: list[int]) -> None:
        self.box = box

    def write_batch(self, items: list[Any]) -> None:
        self.box[0] += len(items)


class CountSink(DynamicSink[Any]):
    def __init__(self) -> None:
        self.box = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self.box)


def run_guard(evs: list[Any], batch: int) -> tuple[float, int]:
    exp_cfg, lim_cfg = config()
    flow = Dataflow("bench_guard")
    inp = op.input("in", flow, TestingSource(evs, batch_size=batch))
    ex = aggregate_exposure("exposure", inp, config=exp_cfg, clock=lambda: 0)
    lim = enforce_limits("limits", ex.exposures, None, config=lim_cfg,
                         verifier=refuse_updates, clock=lambda: 0)
    sink = CountSink()
    op.output("out", op.merge("all", lim.utilizations, lim.breaches, lim.alerts, ex.alerts,
                              ex.errs), sink)
    t0 = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - t0, sink.box[0]


def run_baseline(evs: list[Any], batch: int) -> tuple[float, int]:
    flow = Dataflow("bench_base")
    inp = op.input("in", flow, TestingSource(evs, batch_size=batch))
    keyed = op.key_on("key", inp, lambda e: e.instrument)
    passed = op.stateful_map("pass", keyed, lambda s, v: (v, v))
    sink = CountSink()
    op.output("out", passed, sink)
    t0 = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - t0, sink.box[0]


def memory_per_position() -> float:
    """Bytes of exposure state (all three stages) per (counterparty, instrument) position."""
    exp_cfg, _ = config()
    marks = [Trade(id=f"m{k}", venue="x", instrument=f"I{k}", ts=1, price=100.0, qty=1.0,
                   side="buy") for k in range(N_INST)]
    fills = [Fill(id=f"f{c}-{k}", venue=f"C{c}", counterparty=f"C{c}", instrument=f"I{k}",
                  side="buy", qty=1.0, price=100.0, ts=2)
             for c in range(N_CP) for k in range(N_INST)]
    gc.collect()
    pipe = LocalPipeline(exp_cfg)
    pipe.feed_all(marks)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for f in fills:
        pipe.feed(f)
    # the fill-id dedup window holds ids, not positions: drop it from the figure
    dedup = sum(len(v.state.seen) for v in pipe.val.values())
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del pipe, fills
    return (after - before) / (N_CP * N_INST) - 0 * dedup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=110_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    evs = events(args.events)
    n = len(evs)
    run_baseline(evs[:5000], args.batch)  # warm-up
    tb, _ = run_baseline(evs, args.batch)
    tg, outs = run_guard(evs, args.batch)
    base_rate, guard_rate = n / tb, n / tg
    print(f"events: {n} ({N_CP} counterparties x {N_INST} instruments, marks:fills = 10:1, "
          f"batch {args.batch})")
    print(f"pass-through stateful_map: {base_rate:,.0f} events/s")
    print(f"aggregate_exposure + enforce_limits: {guard_rate:,.0f} events/s "
          f"({outs} limit/alert outputs)")
    print(f"ratio to pass-through: {guard_rate / base_rate:.2f} (goal >= 0.5)")
    print(f"memory per position (all stages, incl. fill-id dedup window): "
          f"{memory_per_position():,.0f} bytes")


if __name__ == "__main__":
    main()
