"""Events/s through aggregate_exposure + enforce_limits vs a bytewax stateful_map pass-through.

50 counterparties x 500 instruments, marks (trades) 10x as often as fills.
Prints events/s for both and the ratio (goal >= 0.5), then memory per position.
A third flow, stage 1 alone (routing and valuation, with no stage 2, firm or limits
behind it), is measured in the same interleaved runs: its ratio is the most any
change to the stages after it could reach.

Steady state: a warm-up prefix (a mark for every instrument, then fills that
open ``--positions`` positions spread over the counterparties) runs first;
the figure is the measured stream's events over the *extra* time it takes
(``t(prefix + stream) - t(prefix)``), so start-up, first-key creation and
the ramp-up of positions are excluded, for the pass-through and the guard
alike. Times are the process's CPU time (one worker: a single thread does the work),
so load from other processes on a shared machine does not count; the two flows run
interleaved ``--repeats`` times and each keeps its best time. Both run with
``run_main``'s defaults (1 worker, 10 s epochs) and ``TestingSource`` batches of
``--batch`` records.

Without ticks, every input batch re-values each counterparty whose marks or
positions moved (here: all of them), so the figure depends on how many events
one re-valuation covers. Give ``--batch`` several sizes to see it: each gets
its own line, and a least-squares fit of the guard's CPU per event,
``a + R / batch``, separates what every event costs (``a``: routing, marks,
fills) from what each re-valuation of the whole book costs (``R``: the 50
exposures, the firm rollup and the limits behind them), and says which
re-valuation cost would reach the goal at the first batch size.

    python bench/exposure_speed.py [--events 110000] [--batch 1000 [2000 ...]]
                                   [--positions 8000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time
import tracemalloc
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from riskguard.operators.core.base import values_of
from riskguard.operators.exposure import (
    CounterpartyLogic,
    ExposureConfig,
    FirmLogic,
    InstrumentsConfig,
    InstrumentSpec,
    Part,
    Router,
    ShardLogic,
)
from riskguard.operators.exposure.limit_specs import CounterpartyLimits, LimitsConfig, LimitSpec
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.exposure.ops import aggregate_exposure, enforce_limits, valuation_steps
from riskguard.schemas import Exposure, Fill, LimitUpdate, SignedEnvelope, Trade

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


def warmup(positions: int, seed: int = 2) -> list[Any]:
    """A mark for every instrument, then fills opening ``positions`` distinct positions."""
    rng = random.Random(seed)
    out: list[Any] = [Trade(id=f"m-{k}", venue="x", instrument=f"I{k}", ts=S, price=100.0,
                            qty=1.0, side="buy") for k in range(N_INST)]
    cells = rng.sample(range(N_CP * N_INST), min(positions, N_CP * N_INST))
    for n, cell in enumerate(cells):
        c, i = divmod(cell, N_INST)
        out.append(Fill(id=f"w{n}", venue=f"C{c}", counterparty=f"C{c}", instrument=f"I{i}",
                        side=rng.choice(["buy", "sell"]), qty=float(rng.randint(1, 3)),
                        price=100.0, ts=2 * S + n))
    return out


def events(n: int, seed: int = 1) -> list[Any]:
    """The measured stream: 10 marks per fill, random instruments and counterparties."""
    rng = random.Random(seed)
    out: list[Any] = []
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
    t0 = time.process_time()
    run_main(flow)
    return time.process_time() - t0, sink.box[0]


def run_stage1(evs: list[Any], batch: int) -> tuple[float, int]:
    """Stage 1 alone (routing and the valuation shards, ``aggregate_exposure``'s first
    steps), its parts and dead letters counted by the sink: no stage 2, firm or limits.
    Its rate bounds what any change after stage 1 could reach.

    >>> seconds, made = run_stage1(warmup(10), 1000)  # 500 marks, 10 fills
    >>> made  # a part per counterparty holding a position
    10
    """
    exp_cfg, _lim = config()
    flow = Dataflow("bench_stage1")
    inp = op.input("in", flow, TestingSource(evs, batch_size=batch))
    made, errs = valuation_steps("exposure", inp, exp_cfg, exp_cfg.validate(), ticked=False,
                        clock=lambda: 0, wall_clock=None, place=None)
    sink = CountSink()
    op.output("out", op.merge("all", op.flat_map_batch("unkey", made, values_of), errs), sink)
    t0 = time.process_time()
    run_main(flow)
    return time.process_time() - t0, sink.box[0]


def run_baseline(evs: list[Any], batch: int) -> tuple[float, int]:
    flow = Dataflow("bench_base")
    inp = op.input("in", flow, TestingSource(evs, batch_size=batch))
    keyed = op.key_on("key", inp, lambda e: e.instrument)
    passed = op.stateful_map("pass", keyed, lambda s, v: (v, v))
    sink = CountSink()
    op.output("out", passed, sink)
    t0 = time.process_time()
    run_main(flow)
    return time.process_time() - t0, sink.box[0]


class InProcessStages:
    """The exposure (and limits) logic chained in one process as the dataflow chains it,
    without bytewax: ``exposure_stages.py`` times it stage by stage,
    :func:`memory_per_position` measures the state it keeps."""

    NAMES = ("route", "stage1", "stage2", "firm", "limits")

    def __init__(self, limits: bool = True) -> None:
        exp_cfg, lim_cfg = config()
        self.exp_cfg, self.lim_cfg = exp_cfg, (lim_cfg if limits else None)
        self.reg = exp_cfg.validate()
        self.router = Router(self.reg, exp_cfg)
        self.shards: dict[str, ShardLogic] = {}
        self.cps: dict[str, CounterpartyLogic] = {}
        self.firm = FirmLogic(exp_cfg)
        self.limits: dict[str, LimitsLogic] = {}

    def batch(self, evs: list[Any]) -> list[float]:
        """One input batch through every stage; the seconds each stage took.

        >>> stages = InProcessStages()
        >>> spent = stages.batch(warmup(10))  # 500 marks, 10 fills opening positions
        >>> len(spent), len(stages.cps) > 0, sorted(stages.limits) == ["*", *sorted(stages.cps)]
        (5, True, True)
        """
        clock = time.perf_counter
        t0 = clock()
        routed = self.router.route_batch(evs)
        t1 = clock()
        made: list[Any] = []
        for kv in routed:
            if type(kv) is tuple:
                key, pack = kv
                shard = self.shards.get(key)
                if shard is None:
                    shard = self.shards[key] = ShardLogic(self.exp_cfg, self.reg)
                made.extend(shard.on_batch([pack]))
        t2 = clock()
        by_cp: dict[str, list[Part]] = {}
        for p in made:
            if type(p) is Part:
                by_cp.setdefault(p.counterparty, []).append(p)
        exps: list[Any] = []
        for cp, parts in by_cp.items():
            logic = self.cps.get(cp)
            if logic is None:
                logic = self.cps[cp] = CounterpartyLogic(self.exp_cfg)
            exps.extend(logic.on_batch(parts))
        t3 = clock()
        rolled = self.firm.on_batch([e for e in exps if type(e) is Exposure])
        t4 = clock()
        if self.lim_cfg is not None:
            for e in rolled:
                lim = self.limits.get(e.counterparty)
                if lim is None:
                    lim = self.limits[e.counterparty] = LimitsLogic(self.lim_cfg)
                lim.on_event(e)
        t5 = clock()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]


def memory_per_position() -> tuple[float, float]:
    """Bytes of exposure state (all three stages) per position, every cell held.

    Returns ``(with, without)`` the per-instrument fill-id dedup windows
    (those hold recent fill ids, not positions; they are bounded by
    ``dedup_window`` ids per instrument).
    """
    marks = [Trade(id=f"m{k}", venue="x", instrument=f"I{k}", ts=1, price=100.0, qty=1.0,
                   side="buy") for k in range(N_INST)]
    fills = [Fill(id=f"f{c}-{k}", venue=f"C{c}", counterparty=f"C{c}", instrument=f"I{k}",
                  side="buy", qty=1.0, price=100.0, ts=2)
             for c in range(N_CP) for k in range(N_INST)]
    evs = marks + fills
    stages = InProcessStages(limits=False)  # config and routing tables: not per position
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for lo in range(0, len(evs), 1000):
        stages.batch(evs[lo:lo + 1000])
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    dedup = sum(sys.getsizeof(d) + sum(sys.getsizeof(k) for k in d)
                for lg in stages.shards.values() for d in lg.state.seen)
    tracemalloc.stop()
    n = N_CP * N_INST
    return (after - before) / n, (after - before - dedup) / n


def steady(runs: list[Any], prefix: list[Any], stream: list[Any], batch: int,
           repeats: int) -> list[float]:
    """Events/s of ``stream`` after ``prefix`` for each of ``runs`` (see the module docstring).

    The flows are run interleaved, ``repeats`` times each, and each one's best time is
    kept, so a burst of load from other processes on the machine hits them alike.
    """
    t_prefix = [math.inf] * len(runs)
    t_all = [math.inf] * len(runs)
    for _ in range(repeats):
        for k, run in enumerate(runs):
            t_prefix[k] = min(t_prefix[k], run(prefix, batch)[0])
            t_all[k] = min(t_all[k], run(prefix + stream, batch)[0])
    return [len(stream) / max(a - p, 1e-9) for p, a in zip(t_prefix, t_all, strict=True)]


def fit_cost(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Least-squares ``(a, r)`` in ``seconds per event = a + r / batch`` over
    ``(batch, pass-through rate, guard rate)`` points.

    >>> a, r = fit_cost([(1000, 1.0, 1 / 3.5e-6), (10000, 1.0, 1 / 1.4e-6)])
    >>> round(a * 1e6, 2), round(r * 1e3, 2)
    (1.17, 2.33)
    """
    r, a = np.polyfit([1 / b for b, _base, _g in points], [1 / g for _b, _base, g in points], 1)
    return float(a), float(r)


def print_fit(points: list[tuple[int, float, float]]) -> None:
    """The fit's two costs, and the re-valuation cost the goal needs at the first batch."""
    a, r = fit_cost(points)
    batch, base, _g = points[0]
    need = (1 / (0.5 * base) - a) * batch
    print(f"fit: {a * 1e6:.2f} us per event + {r * 1e3:.2f} ms per re-valuation "
          f"({N_CP} exposures, firm, limits); the goal at batch {batch} needs "
          f"<= {need * 1e3:.2f} ms per re-valuation at this per-event cost")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=110_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1000],
                    help="input batch size(s): events per re-valuation")
    ap.add_argument("--positions", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved runs of each flow; the best time of each is kept")
    args = ap.parse_args()
    prefix, stream = warmup(args.positions), events(args.events)
    run_baseline(stream[:5000], args.batch[0])  # warm-up of the interpreter and bytewax
    print(f"events: {len(stream)} measured after {len(prefix)} warm-up "
          f"({N_CP} counterparties x {N_INST} instruments, {args.positions} open positions, "
          f"marks:fills = 10:1, 1 worker, 10 s epochs)")
    points: list[tuple[int, float, float]] = []
    for batch in args.batch:
        base_rate, stage1_rate, guard_rate = steady([run_baseline, run_stage1, run_guard],
                                                    prefix, stream, batch, args.repeats)
        points.append((batch, base_rate, guard_rate))
        print(f"batch {batch}: pass-through stateful_map: {base_rate:,.0f} events/s")
        print(f"batch {batch}: aggregate_exposure + enforce_limits: {guard_rate:,.0f} events/s")
        print(f"batch {batch}: ratio to pass-through: {guard_rate / base_rate:.2f} "
              "(goal >= 0.5)")
        print(f"batch {batch}: stage 1 alone (routing + valuation, no stage 2, firm or "
              f"limits): {stage1_rate:,.0f} events/s, {stage1_rate / base_rate:.2f}x: "
              "the ceiling of any change after stage 1")
    if len(points) > 1:
        print_fit(points)
    with_dedup, without = memory_per_position()
    print(f"memory per position ({N_CP * N_INST} positions, all stages): {without:,.0f} bytes "
          f"(+ fill-id dedup window: {with_dedup:,.0f} bytes)")


if __name__ == "__main__":
    main()
