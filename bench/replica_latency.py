"""Time to the first executed command: one guard, then two redundant replicas, in one run.

Method. On the dev broker, two fresh environments run one after the other under the
same load: first a single guard (1 worker), then two replicas of it (``[replica]``
a and b, each its own process and key; ``docs/replicas.md``). A producer in this
process replays the bundled scenario re-stamped to the wall clock at ``--rate``
events/s and, after ``--warmup`` seconds, fills from counterparties no config names at
``--incident-rate``/s; each fails closed into one ``reduce_only`` for that
counterparty (as ``guard_latency.py`` does).

Per incident: **event to first executed command** = the Kafka timestamp of the first
command of its decision on the commands topic (the copy an executor acts on; with
replicas, whichever replica's came first) - when this script handed the fill to its
producer. The replicas' figure is printed with its ratio to the single guard's, p50
and p99 (goal: p99 no worse than 1.1x).

With ``--kill-at F`` (default 0.5) replica a is SIGKILLed that fraction of the way
through the measured load: every incident after it must still get its command (from
b), and the p99 after the kill is printed beside the p99 before it. The time to
protection after the kill is the gap between those and the single guard's.

On this 2-vCPU machine the two replicas share the cores with each other, the dev
broker and the load producer, which a deployment across zones does not: the ratio
errs high.

    python bench/replica_latency.py [--rate 1000] [--seconds 30] [--incident-rate 10]
                                    [--warmup 8] [--kill-at 0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_workload import (
    LiveLoad,
    broker_unless,
    commands_until_quiet,
    pct,
    setup_env,
    start_guard,
)
from riskguard.dataflows.demo import replica_configs


def _first_executed(bootstrap: str, topic: str, partitions: int) -> tuple[dict[str, float], int]:
    """Per counterparty: the Kafka timestamp (ms) of the first reduce_only of its decision;
    and how many later copies of a decision there were."""
    first: dict[str, float] = {}
    seen: set[str] = set()
    copies = 0
    for cmd, ts_ms in commands_until_quiet(bootstrap, topic, partitions):
        if cmd.action.value != "reduce_only":
            continue
        key = cmd.decision_id or cmd.command_id
        if key in seen:
            copies += 1
            continue
        seen.add(key)
        first[cmd.scope.value] = min(first.get(cmd.scope.value, ts_ms), ts_ms)
    return first, copies


def _run(mode: str, bootstrap: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    bench = setup_env(bootstrap, work / mode, f"{mode[0]}{uuid.uuid4().hex[:6]}",
                      partitions=2, idle_eof_s=None, max_commands=1_000_000,
                      starting_offset="earliest", fair_reads=True)
    if mode == "replicas":
        configs = replica_configs(bench.config, bench.keys)
        procs = [start_guard(dataclasses.replace(bench, config=c)) for c in configs]
    else:
        procs = [start_guard(bench)]
    killed_at: int | None = None
    try:
        load = LiveLoad(bench, args.rate, args.incident_rate, incident_hold_s=5.0)
        load.run(args.warmup)
        load.incidents_on = True
        if mode == "replicas" and 0 < args.kill_at < 1:
            load.run(args.seconds * args.kill_at)
            killed_at = time.time_ns()
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            load.run(args.seconds * (1 - args.kill_at))
        else:
            load.run(args.seconds)
        time.sleep(3.0)
        if any(p.poll() is not None for p in procs[1 if killed_at else 0:]):
            raise SystemExit(f"a guard exited early; see {bench.config.parent}")
        first, copies = _first_executed(bootstrap, bench.topic("commands"), bench.partitions)
        load.p.flush(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lat = {cp: first[cp] - sent / 1e6 for cp, sent in load.sent_at.items() if cp in first}
    after = [cp for cp, sent in load.sent_at.items() if killed_at and sent >= killed_at]
    return {"mode": mode, "incidents": len(load.sent_at), "executed": len(lat),
            "missing": sorted(set(load.sent_at) - set(lat)), "copies": copies,
            "lat": list(lat.values()),
            "before": [lat[cp] for cp, s in load.sent_at.items()
                       if cp in lat and killed_at and s < killed_at],
            "after": [lat[cp] for cp in after if cp in lat], "after_n": len(after)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s of market load")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured load duration")
    ap.add_argument("--warmup", type=float, default=8.0, help="load seconds before incidents")
    ap.add_argument("--incident-rate", type=float, default=10.0, help="unknown-cp fills per s")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="kill replica a this fraction into the measured load (0: never)")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="replica-latency-"))
    bootstrap, broker, _pid = broker_unless(args.bootstrap, work / "broker")
    print(f"riskguard replica latency, {time.strftime('%Y-%m-%d')}: load {args.rate:g} "
          f"events/s + {args.incident_rate:g} incidents/s for {args.seconds:g} s after "
          f"{args.warmup:g} s")
    try:
        single = _run("single", bootstrap, work, args)
        replicas = _run("replicas", bootstrap, work, args)
    finally:
        if broker is not None:
            broker.stop()
    for r in (single, replicas):
        xs = r["lat"]
        print(f"{r['mode']:>8}: {r['executed']}/{r['incidents']} incidents executed, "
              f"{r['copies']} later copies dropped; event to first executed command "
              f"p50 {pct(xs, 0.5):.1f} ms  p99 {pct(xs, 0.99):.1f} ms  max {max(xs):.1f} ms")
    p50 = pct(replicas["lat"], 0.5) / pct(single["lat"], 0.5)
    p99 = pct(replicas["lat"], 0.99) / pct(single["lat"], 0.99)
    print(f"replicas / single guard: p50 {p50:.2f}x  p99 {p99:.2f}x  (goal p99 <= 1.10x)")
    if replicas["after_n"]:
        print(f"after replica a was killed: {len(replicas['after'])}/{replicas['after_n']} "
              f"incidents executed (missing: {len(replicas['missing'])}); p99 before "
              f"{pct(replicas['before'], 0.99):.1f} ms, after {pct(replicas['after'], 0.99):.1f}"
              " ms")


if __name__ == "__main__":
    main()
