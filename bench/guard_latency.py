"""Detection-to-command latency of the guard dataflow under steady load.

Method. One guard process (1 worker) reads live topics on the dev broker. A
producer in this process replays the bundled demo scenario re-stamped to the
wall clock (event ts = now) at a steady ``--rate`` events/s; by default that
rate is 50 % of the sustained 1-worker rate, measured first by CPU time as
``guard_throughput.py`` does ("by CPU time": events over the CPU seconds of a
workload run minus an empty run, every thread counted, so it errs low) over
``--rate-copies`` scenario copies (default 8, as that bench). The
live guard runs with ``input.fair_reads`` (each read at most ``batch_size`` per
partition, so a fill is not processed behind a whole market-data burst;
``--unfair-reads`` turns it off); the
sustained rate is measured without it, as a replay runs. After a warm-up, fills from
fresh counterparty names that no limits config names are mixed in at
``--incident-rate``/s. Each fails closed: an ``unknown_counterparty`` alert ->
the playbook's ``unknown_counterparty`` rule -> one signed ``reduce_only``
command for that counterparty (``playbook.max_commands`` is raised so the rate
cap does not suppress them).

Per command on the commands topic, decoded with ``decode_envelope`` +
``decode_command``:

- **detection-to-command** = the command message's Kafka timestamp (producer
  CreateTime, ms) - the command's ``recv_ts`` (ns; stamped by the guard's Kafka
  source on the triggering input record and carried onto the command by the
  playbook). This is the figure docs/performance.md gives (goal p99 < 50 ms).
- **produce-to-command** (cross-check, also covers commands without a
  ``recv_ts``) = the same Kafka timestamp - when this script handed the
  triggering fill to its producer; it adds the broker hop and the source's
  fetch wait.

It ends with the CPU the guard and the dev broker each used over the measured
load, in cores, in all and per quarter of the run: the broker shares the
machine's 2 cores, and a run where it takes a whole one is bound by it, not by
the guard. The dev broker's share grows through a run (it lists every batch a
partition holds on each fetch), while the guard's stays nearly flat. The load
producer (this process) is shown too, and the CPU the hypervisor took from the
machine's cores meanwhile ("steal": this box is a VM).

Incidents. Each incident fill opens a position for a fresh counterparty; with
``--incident-hold-s`` (default 5) a closing fill flattens it that long after, as the
reduce_only it drew would, so the book holds about ``incident-rate x hold`` incident
counterparties at any time and the load is steady. ``--incident-hold-s 0`` keeps every
position open: the book then grows by 15 counterparties a
second (600 by the end of a 40 s run), each re-valued on every tick, and the p99 depends
on how long the run was. Resumes are left out of the figure: a quiet period's end, not
a record's receipt, triggers them.

The load producer batches with ``linger.ms`` 50 (``--load-linger-ms``). Each produce
request is one stored batch in the dev broker, and Tansu 0.6's in-memory engine lists
every batch a partition holds on each fetch, so its CPU grows with the batches retained
(a real Kafka fetches by offset index and runs on other machines). With 1 ms the broker
reaches a whole core within the run and the p99 goes to seconds; with 20 ms it still
rises from 0.5 to 0.8 core through a 40 s run, and the p99 per quarter rises with it;
with 50 ms it stays at 0.4-0.5 core (``--load-linger-ms`` to compare). The figure
measured, receipt to command, starts after the broker hop, so the producer's batching
is not part of it; the produce-to-command cross-check includes it (about 25 ms more at
50 than at 20).

    python bench/guard_latency.py [--rate N] [--seconds 40] [--incident-rate 15]
                                  [--load-linger-ms 50] [--incident-hold-s 5]
                                  [--market]

``--market`` runs the guard as two market processes (BTC, ETH) and a firm tier fed by
them, at the same load: the fill's receive time is stamped by the market process that
reads it, so the figure includes the hop through the ``detections`` topic.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_workload import (
    NS,
    LiveLoad,
    broker_unless,
    commands_until_quiet,
    pct,
    publish,
    setup_env,
    start_guard,
    steal_seconds,
)
from riskguard.dataflows.demo_scenario import DURATION_S, scenario_copies


def _quarters(timed: list[tuple[int, float]]) -> list[list[float]]:
    """The values of ``(time, value)`` pairs in four runs of time order."""
    timed = sorted(timed)
    k = max(len(timed) // 4, 1)
    return [[x for _, x in timed[i:i + k]] for i in range(0, k * 4, k) if timed[i:i + k]]


def sustained_rate(bootstrap: str, work: Path, tag: str, copies: int) -> float:
    """1-worker guard events/s by CPU time, as guard_throughput.py measures it: events
    over the CPU seconds of the workload run minus those of an empty run (the wall-time
    subtraction is noisier than the data phase on 8 copies: it once read 137k events/s,
    twice the guard's rate, and "50 %" overloaded the guard)."""
    from guard_throughput import run_guard

    full = setup_env(bootstrap, work / "rate-full", f"rf{tag}")
    empty = setup_env(bootstrap, work / "rate-empty", f"re{tag}")
    start_ns = time.time_ns() - (copies * DURATION_S + 30) * NS
    n = publish(full, scenario_copies(copies, start_ns))
    return n / (run_guard(full, 1).cpu - run_guard(empty, 1).cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=None,
                    help="events/s (default: 50%% of the measured 1-worker rate)")
    ap.add_argument("--rate-copies", type=int, default=8,
                    help="scenario copies for measuring the sustained rate (2 copies, about "
                         "0.7 s of data against 4 s of start-up, measured 46k-97k)")
    ap.add_argument("--seconds", type=float, default=40.0, help="measured load duration")
    ap.add_argument("--warmup", type=float, default=8.0, help="load seconds before incidents")
    ap.add_argument("--incident-rate", type=float, default=15.0, help="unknown-cp fills per s")
    ap.add_argument("--incident-hold-s", type=float, default=5.0,
                    help="close each incident's position this long after it opened (a "
                         "steady book of about rate x hold incident counterparties); "
                         "0: never close them (the book grows all run)")
    ap.add_argument("--partitions", type=int, default=2, help="partitions per input topic")
    ap.add_argument("--batch-size", type=int, default=1000,
                    help="the live guard's input.batch_size (the rate run keeps 1000)")
    ap.add_argument("--unfair-reads", action="store_true",
                    help="input.fair_reads off for the live guard (the replay default)")
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--load-linger-ms", type=int, default=50,
                    help="the load producer's linger.ms: each produce request is a batch the "
                         "dev broker lists on every fetch (1 and 20 let it, not the guard, "
                         "set the latency)")
    ap.add_argument("--market", action="store_true",
                    help="run the guard as 2 market processes and a firm tier (docs/scaling.md, "
                         "\"The market tier\") instead of one worker, at the same load")
    ap.add_argument("--tick-ms", type=float, default=None,
                    help="guard tick_ns in ms (exposure re-values once per tick; default: "
                         "the demo config's 1000)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="guard-latency-"))
    bootstrap, broker, broker_pid = broker_unless(args.bootstrap, work / "broker")
    tag = uuid.uuid4().hex[:6]
    procs: list[Any] = []
    try:
        if args.rate is None:
            sustained = sustained_rate(bootstrap, work, tag, args.rate_copies)
            rate = 0.5 * sustained
            print(f"sustained 1-worker guard rate {sustained:,.0f} events/s -> load {rate:,.0f}/s")
        else:
            rate = args.rate
        bench = setup_env(bootstrap, work / "live", f"lv{tag}", partitions=args.partitions,
                          idle_eof_s=None, max_commands=1_000_000, starting_offset="earliest",
                          batch_size=args.batch_size, fair_reads=not args.unfair_reads)
        if args.tick_ms is not None:
            text = bench.config.read_text()
            line = next(ln for ln in text.splitlines() if ln.startswith("tick_ns"))
            bench.config.write_text(text.replace(line, f"tick_ns = {int(args.tick_ms * 1e6)}"))
        if args.market:
            from guard_throughput import market_envs

            *markets, firm = market_envs(bench)
            procs = [start_guard(env) for env in markets]
            guard = start_guard(firm)
            procs.append(guard)
        else:
            guard = start_guard(bench)
            procs = [guard]
        print(f"guard pid {guard.pid}{' (firm tier; 2 market processes)' if args.market else ''}"
              f" (tick_ns {args.tick_ms or 1000:g} ms, "
              f"batch_size {args.batch_size}, fair_reads {not args.unfair_reads}, "
              f"load linger.ms {args.load_linger_ms})", flush=True)
        hold = args.incident_hold_s if args.incident_hold_s > 0 else None
        load = LiveLoad(bench, rate, args.incident_rate, linger_ms=args.load_linger_ms,
                        incident_hold_s=hold)
        load.run(args.warmup)
        load.incidents_on = True
        t_on = time.time_ns()
        book = (f"each closed after {hold:g} s: a steady book of about "
                f"{args.incident_rate * hold:.0f} incident counterparties" if hold is not None
                else f"never closed: the book grows to {args.incident_rate * args.seconds:.0f} "
                     "incident counterparties")
        print(f"load {rate:,.0f} events/s + {args.incident_rate:g} incidents/s ({book}) for "
              f"{args.seconds:g} s (load avg {os.getloadavg()[0]:.2f})")
        from guard_throughput import CoreTimeline

        watched: list[Any] = [p.pid for p in procs] + (
            [broker_pid] if broker_pid is not None else [])
        watched.append(os.getpid())  # this process: the load producer
        watched.append(steal_seconds)  # and what the hypervisor took from the cores
        quarters = CoreTimeline(watched, period_s=args.seconds / 4)
        quarters.start()
        load.run(args.seconds)
        quarters.stop()
        shares = {"guard": sum(quarters.overall[:len(procs)])}
        if broker_pid is not None:
            shares["broker"] = quarters.overall[len(procs)]
        shares["load"], shares["steal"] = quarters.overall[-2:]
        time.sleep(3.0)
        if any(p.poll() is not None for p in procs):
            msg = f"a guard process exited early; see {bench.config.parent}"
            raise SystemExit(msg)
        recv_lat: list[float] = []
        send_lat: list[float] = []
        actions: dict[str, int] = {}
        no_recv = resumes = 0
        by_time: list[tuple[int, float]] = []
        recv_by_time: list[tuple[int, float]] = []
        for cmd, ts_ms in commands_until_quiet(bootstrap, bench.topic("commands"),
                                               bench.partitions):
            actions[cmd.action.value] = actions.get(cmd.action.value, 0) + 1
            if cmd.action.value == "resume":
                resumes += 1
                continue
            if cmd.recv_ts is None:
                no_recv += 1
            elif cmd.recv_ts >= t_on:
                recv_lat.append(ts_ms - cmd.recv_ts / 1e6)
                recv_by_time.append((cmd.recv_ts, recv_lat[-1]))
            sent = load.sent_at.get(cmd.scope.value)
            if sent is not None:
                send_lat.append(ts_ms - sent / 1e6)
                by_time.append((sent, ts_ms - sent / 1e6))
        print(f"sent {load.sent:,} events, {load.incidents} incident fills and "
              f"{load.closed} closing fills; commands {actions} ({no_recv} without recv_ts, "
              f"{resumes} resumes: a quiet period's end, not a record, triggers those)")
        if recv_lat:
            print(f"detection-to-command (Kafka ts - recv_ts), n={len(recv_lat)}: "
                  f"p50 {pct(recv_lat, 0.5):.1f} ms  p99 {pct(recv_lat, 0.99):.1f} ms  "
                  f"max {max(recv_lat):.1f} ms  (goal p99 < 50 ms)")
            print("  p50 / p99 per quarter of the run: " + "  ".join(
                f"{pct(q, 0.5):.0f}/{pct(q, 0.99):.0f} ms" for q in _quarters(recv_by_time)))
        else:
            print("detection-to-command: no command carried a recv_ts")
        if send_lat:
            print(f"produce-to-command (cross-check), n={len(send_lat)}: "
                  f"p50 {pct(send_lat, 0.5):.1f} ms  p99 {pct(send_lat, 0.99):.1f} ms  "
                  f"max {max(send_lat):.1f} ms")
            print("  p50 per quarter of the run: "
                  + "  ".join(f"{pct(q, 0.5):.0f} ms" for q in _quarters(by_time)))
        print(f"load avg at end {os.getloadavg()[0]:.2f}; CPU over the measured load, in "
              "cores: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))
        names = [*(f"guard {k}" if len(procs) > 1 else "guard" for k in range(len(procs))),
                 *(["broker"] if broker_pid is not None else []), "load", "steal"]
        print(f"  cores per quarter ({' | '.join(names)}): {quarters.text()}")
        if shares.get("broker", 0.0) >= 0.9:
            print("  the broker near a whole core of 2 leaves the guard short: a broker-bound "
                  "run, not a figure for the guard")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
