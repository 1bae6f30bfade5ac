"""What a bytewax cluster costs by itself: 1 process vs 2 processes vs 2 independent ones.

A synthetic flow (no Kafka, no riskguard logic): each worker generates its
share of ``--items`` records under keys that bytewax routes to that same
worker (``placement.route_worker``), so no record crosses processes, and
passes them through ``--steps`` keyed ``stateful_map`` steps (a counter per
key), each followed by a ``flat_map_batch``. The source emits messages of
``--message`` records. Three runs per message size, each the wall time of
whole ``python -m bytewax.run`` processes minus that of the same run with no
items (start-up, cluster connection, shutdown):

- **1 process** (the baseline);
- **2 processes**, one worker each (``-i 0/1 -a ...``): a bytewax cluster;
- **2 independent processes**, each a 1-worker run over half the items.

It prints each rate and its ratio to the 1-process run. The guard's scaling
(``guard_throughput.py``) cannot beat what the engine allows here.

    python bench/cluster_overhead.py [--items 1000000] [--steps 10] [--message 100 1000 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from riskguard.connectors.broker import free_port
from riskguard.connectors.placement import route_worker

HERE = Path(__file__).resolve().parent


class _Gen(StatelessSourcePartition[tuple[str, int]]):
    def __init__(self, worker: int, workers: int, items: int, message: int) -> None:
        owned = (f"k{i}" for i in range(20_000))
        self.keys = [k for k in owned if route_worker(k, workers) == worker][:500]
        self.left = items
        self.message = message
        self.sent = 0

    def next_batch(self) -> list[tuple[str, int]]:
        if self.left <= 0:
            raise StopIteration
        n = min(self.message, self.left)
        self.left -= n
        keys, first = self.keys, self.sent
        self.sent += n
        return [(keys[(first + j) % len(keys)], j) for j in range(n)]


class _Source(DynamicSource[tuple[str, int]]):
    def __init__(self, items: int, message: int) -> None:
        self.items = items
        self.message = message

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Gen:
        return _Gen(worker_index, worker_count, self.items // worker_count, self.message)


class _Drop(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class _Sink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop()


def flow(items: int, steps: int, message: int) -> Dataflow:
    """``steps`` keyed counters over ``items`` locally keyed records, ``message`` per read."""
    df = Dataflow("cluster_overhead")
    s: Any = op.input("in", df, _Source(items, message))
    for k in range(steps):
        s = op.stateful_map(f"count{k}", s, lambda n, v: ((n or 0) + 1, v))
        s = op.flat_map_batch(f"pass{k}", s, lambda xs: xs)
    op.output("out", s, _Sink())
    return df


def _wall(items: int, steps: int, message: int, mode: str) -> float:
    spec = f"cluster_overhead:flow({items}, {steps}, {message})"
    half = f"cluster_overhead:flow({items // 2}, {steps}, {message})"
    cmd = [sys.executable, "-m", "bytewax.run"]
    if mode == "1p":
        runs = [[*cmd, spec]]
    elif mode == "2p":
        addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        runs = [[*cmd, spec, "-i", str(i), "-a", addrs] for i in range(2)]
    else:  # two independent 1-worker processes, half the items each
        runs = [[*cmd, half], [*cmd, half]]
    t0 = time.monotonic()
    procs = [subprocess.Popen(r, cwd=str(HERE), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for r in runs]
    for p in procs:
        if p.wait(timeout=900) != 0:
            raise SystemExit(f"{mode} run failed: {p.args}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--message", type=int, nargs="+", default=[100, 1000, 10_000])
    args = ap.parse_args()
    print(f"{args.items:,} records, {args.steps} keyed steps, keys local to their worker; "
          f"load {os.getloadavg()[0]:.2f}")
    for message in args.message:
        rates: dict[str, float] = {}
        for mode in ("1p", "2p", "indep"):
            busy = _wall(args.items, args.steps, message, mode)
            idle = _wall(0, args.steps, message, mode)
            rates[mode] = args.items / max(busy - idle, 1e-9)
        base = rates["1p"]
        print(f"message {message:>6}: 1 process {base:10,.0f} records/s | 2 processes "
              f"{rates['2p']:10,.0f} ({rates['2p'] / base:.2f}x) | 2 independent "
              f"{rates['indep']:10,.0f} ({rates['indep'] / base:.2f}x)")


if __name__ == "__main__":
    main()
