"""Sustained events/s of the whole guard dataflow on the dev broker.

What runs, each as its own ``python -m bytewax.run`` subprocess over the same
input (``--copies`` back-to-back copies of the bundled demo scenario, ids made
unique and shifted in time, about 27k records per copy, published once to the
six guard input topics with ``--partitions`` partitions each):

- **baseline**: stock bytewax ``KafkaSource`` (``tail=False``) -> ``op.key_on``
  (Kafka key) -> keyed ``op.stateful_map`` (a counter) -> ``KafkaSink``, one
  worker, reading the same six topics;
- **guard, 1 worker**: ``riskguard.dataflows.guard`` with ``input.idle_eof_s``;
- with ``--market``, also **the market tier**: 2 market processes (BTC, ETH) and a firm
  process fed by them (``[tier] role``, docs/scaling.md "The market tier"), one
  1-worker dataflow each, started at once over their own copy of the input;
- with ``--independent``, also **2 independent guards**: two 1-worker guards at
  once, each over its own environment holding half the copies (no cluster, nothing
  shared). No design of one dataflow over 2 processes can beat it: it is the
  ceiling the market tier's figure is measured against on this machine.

Method. The guard emits few outputs, so its rate cannot be read off its
output. Every flow runs to its own end of input (bounded: ``tail=False`` for
the baseline, ``idle_eof_s`` for the guard) and its wall time (process start
to exit; for several processes, until all exited) is taken twice: over the workload
and over an otherwise identical environment whose input topics are empty. The
empty run costs start-up, partition assignment, the idle EOF wait and
shutdown; the difference is the time spent processing the workload::

    rate = events / (T(workload) - T(empty))

The same subtraction is applied to the baseline so both figures are measured
alike. As a cross-check, the baseline's rate is also read from its output
messages' own producer timestamps (first to last), as ``kafka_passthrough.py``
does, and the guard's from the span of its exposures/audit output timestamps
(exposures are emitted from the first copy's opening balances to the last
copy's fills, so the span covers nearly all of the processing).

Each guard line (and the baseline's) also gives the CPU seconds its processes
used (workload minus empty run, all processes and threads together, each
process's own rusage from ``os.wait4``); with several processes (the market tier,
independent guards) each one's share, in start order (the market processes, then the
firm), and the dev broker's, from ``/proc`` (the benches' own broker
only). CPU time is steadier than wall time on a shared machine:
with 8 copies the data phase is shorter than the start-up the wall-time
subtraction removes, and 1-worker runs of one series have read 62k-159k events/s.
One worker is CPU-bound, so its CPU per event against the pass-through's is
printed as the ratio "by CPU time" (librdkafka's threads count too, so it errs
low). The market tier's / 1 worker's CPU ratio says what splitting the guard costs in
all. The cores are not idle: the dev broker shares them, and
serves several processes' consumers at more CPU than one worker's. So each
multi-process kind also gets a CPU-bound estimate with the broker counted
(:func:`cpu_bound_wall_s`): its CPU and the broker's, spread evenly over the machine's
cores, against one worker's wall time (the market tier's median of three has read
1.23x against an estimate of 1.25x).

Each guard line also counts the dead letters the run wrote: a run that
dead-letters records (e.g. as late) did less work, so its rate is not
comparable.

    python bench/guard_throughput.py [--copies 8] [--partitions 4] [--repeats 1]
                                     [--independent] [--market] [--fetch-wait-ms N]
                                     [--timeline]

``--timeline`` also prints, per workload run, the cores each guard process and the dev
broker used in each second (``CoreTimeline``): whether a multi-process run's processes
overlapped, or one waited on the others or on the broker. ``--fetch-wait-ms N`` sets
every guard's ``input.fetch_wait_max_ms``.

``--repeats R`` runs each guard R times, the kinds interleaved, and also prints the
medians and the scaling of the medians: one 24-copy run of the same code has given
anywhere from 1.08x to 1.43x.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_workload import (
    NS,
    BenchEnv,
    broker_unless,
    cpu_seconds,
    publish,
    setup_env,
    start_guard,
    steal_seconds,
)
from riskguard.connectors.topics import TopicSpec, create_topics
from riskguard.dataflows.demo import tier_config
from riskguard.dataflows.demo_scenario import DURATION_S, scenario_copies

HERE = Path(__file__).resolve().parent
INDEPENDENT = -2  # the run kind of 2 independent 1-worker guards
MARKET = -4  # the run kind of 2 market processes and a firm tier fed by them
# the bench's market processes: BTC on one, ETH on the other (each about half the data)
MARKET_OWNERS = {"BTC": 0, "ETH": 1}


def _label(procs: int) -> str:
    if procs == INDEPENDENT:
        return "2 independent"
    if procs == MARKET:
        return "2 market + firm"
    return "1 worker   "


def passthrough(bootstrap: str, topics: list[str], out: str) -> Dataflow:
    """Stock bytewax: KafkaSource -> key_on -> keyed stateful_map -> KafkaSink."""
    from bytewax.connectors.kafka import (
        KafkaSink,
        KafkaSinkMessage,
        KafkaSource,
        KafkaSourceMessage,
    )

    flow = Dataflow("stock_keyed_passthrough")
    msgs = op.input("in", flow, KafkaSource([bootstrap], topics, tail=False))

    def key_of(m: KafkaSourceMessage[bytes | None, bytes | None]) -> str:
        return m.key.decode() if m.key else ""

    # raise_on_errors=True (the default): the stream never carries KafkaError items.
    keyed = op.key_on("key", msgs, key_of)  # type: ignore[arg-type]

    def count(
        n: int | None, m: KafkaSourceMessage[bytes | None, bytes | None],
    ) -> tuple[int, KafkaSourceMessage[bytes | None, bytes | None]]:
        return (n or 0) + 1, m

    counted = op.stateful_map("count", keyed, count)  # type: ignore[arg-type]  # as above
    out_msgs = op.map("to_sink", counted, lambda kv: KafkaSinkMessage(kv[1].key, kv[1].value))
    op.output("out", out_msgs, KafkaSink([bootstrap], out))
    return flow


def market_envs(bench: BenchEnv) -> list[BenchEnv]:
    """The env as 2 market processes (BTC, ETH) and a firm process fed by them, each with
    its own config (docs/scaling.md, "The market tier"). The firm needs no longer idle
    EOF: it ends each market process's partition on that process's final progress, and
    does not take it for ended before the process has written."""
    n = len(set(MARKET_OWNERS.values()))
    paths = [tier_config(bench.config, "market", index=i, market_processes=n,
                         owners=MARKET_OWNERS) for i in range(n)]
    firm = tier_config(bench.config, "firm", market_processes=n)
    return [dataclasses.replace(bench, config=path) for path in (*paths, firm)]


def _wait(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[float]:
    """Wait until every process exited; each one's CPU seconds (user + system, its own
    rusage from ``os.wait4``). Raises if one failed or timed out."""
    deadline = time.monotonic() + timeout_s
    cpu: dict[int, float] = {}
    while len(cpu) < len(procs):
        for p in procs:
            if p.pid in cpu:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == 0:
                continue
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu[p.pid] = ru.ru_utime + ru.ru_stime
            if p.returncode != 0:
                for q in procs:
                    if q.pid not in cpu:
                        q.kill()
                msg = f"flow {p.args!r} exited with {p.returncode} (see its log)"
                raise SystemExit(msg)
        if time.monotonic() > deadline:
            for q in procs:
                if q.pid not in cpu:
                    q.kill()
            msg = f"flow did not finish within {timeout_s:.0f} s"
            raise SystemExit(msg)
        time.sleep(0.02)
    return [cpu[p.pid] for p in procs]


@dataclass(frozen=True)
class GuardRun:
    """One guard run: wall seconds, its start (epoch s), and CPU seconds, all its
    processes together (``cpu``) and each one's (``per_process``, in start order);
    with ``run_guard(..., watch=...)``, the cores each one used per second."""

    wall: float
    started: float
    cpu: float
    per_process: list[float]
    timeline: str = ""


class CoreTimeline:
    """Cores used by each of ``pids`` in each ``period_s`` of a run, read from ``/proc``
    in a thread: which process held the cores when (a multi-process run's totals do not
    say whether its processes overlapped, or waited on each other or the broker). An
    entry may also be a counter of CPU seconds to read instead of a pid (e.g.
    :func:`~guard_workload.steal_seconds`). A last period that ``stop()`` cuts short
    counts when it ran at least half a period; ``overall`` holds the cores each used
    from ``start()`` to ``stop()``.

    >>> t = CoreTimeline([os.getpid()], period_s=0.05)
    >>> t.start(); _ = sum(range(10**6)); time.sleep(0.12); t.stop()
    >>> t.text().startswith("0.") or t.text().startswith("1.")
    True
    """

    def __init__(self, pids: Sequence[int | Callable[[], float]], period_s: float = 1.0) -> None:
        self._reads = [p if callable(p) else functools.partial(cpu_seconds, p) for p in pids]
        self.period_s = period_s
        self.rows: list[list[float]] = []
        self.overall: list[float] = []  # cores each used from start() to stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last, t_last = [read() for read in self._reads], time.monotonic()
        first, t_first = last, t_last
        while True:
            stopped = self._stop.wait(self.period_s)
            now, t_now = [read() for read in self._reads], time.monotonic()
            if stopped:
                self.overall = [max(b - a, 0.0) / (t_now - t_first) for a, b in zip(
                    first, now, strict=True)]
            if stopped and t_now - t_last < self.period_s / 2:
                return  # too short a remainder to say anything
            # a process that exited reads 0.0: it used nothing more
            self.rows.append([max(b - a, 0.0) / (t_now - t_last) for a, b in zip(
                last, now, strict=True)])
            last, t_last = [max(a, b) for a, b in zip(last, now, strict=True)], t_now
            if stopped:  # the last period, cut short by stop()
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        """One ``a|b|...`` group per period, the processes in ``pids`` order."""
        return " ".join("|".join(f"{x:.2f}" for x in row) for row in self.rows)


def run_guard(bench: BenchEnv | list[BenchEnv], timeout_s: float = 600.0,
              watch: list[int] | None = None) -> GuardRun:
    """One guard run: 1 worker, or given a list of envs, one 1-worker guard per env, all
    at once (independent guards, or the market tier). Given ``watch`` (more pids, e.g.
    the dev broker's), the run's :class:`CoreTimeline` over its processes and those."""
    if isinstance(bench, list):
        fresh_detections(bench[0])
    started = time.time()
    t0 = time.monotonic()
    ps = [start_guard(b) for b in bench] if isinstance(bench, list) else [start_guard(bench)]
    timeline = None if watch is None else CoreTimeline([p.pid for p in ps] + watch)
    if timeline is not None:
        timeline.start()
    try:
        per = _wait(ps, timeout_s)
    finally:
        if timeline is not None:
            timeline.stop()
    return GuardRun(time.monotonic() - t0, started, sum(per), per,
                    "" if timeline is None else timeline.text())


def cpu_bound_wall_s(guard_cpu_s: float, broker_cpu_s: float, cores: float,
                     steal_s: float = 0.0) -> float:
    """How long a run takes when its processes and the dev broker share ``cores`` and
    the CPU is the bound: all their CPU seconds spread evenly over what the cores give
    them, which is less by the ``steal_s`` the hypervisor took meanwhile. A CPU-bound
    2-process run ends near it; one worker ends near its own CPU instead (one thread, the
    broker on another core). Both sides come from the workload-minus-empty subtraction,
    so a single run can land on either side of it; medians over repeats track it.

    >>> cpu_bound_wall_s(23.0, 4.0, 2)
    13.5
    >>> cpu_bound_wall_s(23.0, 4.0, 2, steal_s=3.0)  # the same CPU, 3 s of it taken away
    15.0
    """
    return (guard_cpu_s + broker_cpu_s + steal_s) / cores


def _print_timeline(run: GuardRun, broker_pid: int | None) -> None:
    if run.timeline:
        who = "guard processes in start order" + (", then the broker" if broker_pid else "")
        print(f"  cores used per second ({who}): {run.timeline}")


def fresh_detections(bench: BenchEnv) -> None:
    """An empty ``detections`` topic for a market-tier run: the firm reads it from the
    start, and a repeat must not read the previous run's signals and final
    progress, which would end its partitions before this run's data came."""
    topic = bench.topic("detections")
    admin = AdminClient({"bootstrap.servers": bench.bootstrap})
    for f in admin.delete_topics([topic]).values():
        f.result()
    deadline = time.monotonic() + 30
    while create_topics({"bootstrap.servers": bench.bootstrap},
                        [TopicSpec(topic, bench.partitions)])[topic] != "created":
        if time.monotonic() > deadline:  # the deletion has not settled
            msg = f"could not recreate {topic}"
            raise SystemExit(msg)
        time.sleep(0.2)


def run_passthrough(bootstrap: str, topics: list[str], out: str,
                    timeout_s: float = 600.0) -> tuple[float, float]:
    """Wall time and CPU seconds of one pass-through run."""
    spec = f"guard_throughput:passthrough({bootstrap!r}, {topics!r}, {out!r})"
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", spec], cwd=str(HERE),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (cpu,) = _wait([p], timeout_s)
    return time.monotonic() - t0, cpu


def output_span(bootstrap: str, topics: list[str], partitions: int,
                after_ms: int = 0, holding: bytes | None = None) -> tuple[int, float]:
    """(count, seconds between first and last producer timestamp) of messages after
    ``after_ms`` (only those whose value holds the bytes ``holding``, if given)."""
    n, first, last = output_times(bootstrap, topics, partitions, after_ms, holding)
    return n, (last - first) / 1000.0


def data_phase(bench: BenchEnv, partitions: int, after_ms: int) -> float:
    """Seconds from a run's first output (its first exposure, or a detect or market
    process's first progress on ``detections``) to its last exposure: the time it spent
    on the data, start-up and the idle end of input left out (those differ between the
    processes of a multi-process run, so the wall-time subtraction of an empty run
    does not remove them alike)."""
    _n, first, _last = output_times(bench.bootstrap, [bench.topic("exposures"),
                                    bench.topic("detections")], partitions, after_ms)
    _n, _first, last = output_times(bench.bootstrap, [bench.topic("exposures")], partitions,
                                    after_ms)
    return (last - first) / 1000.0


def output_times(bootstrap: str, topics: list[str], partitions: int, after_ms: int = 0,
                 holding: bytes | None = None) -> tuple[int, int, int]:
    """(count, first and last producer timestamp in ms) of the messages of ``topics``
    after ``after_ms`` (only those whose value holds the bytes ``holding``, if given);
    the times are 0 when there are none."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-span",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 20})
    c.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    first = last = None
    n = idle = 0
    try:
        while idle < 5:
            msgs = c.consume(10000, 0.2)
            if not msgs:
                idle += 1
                continue
            idle = 0
            for m in msgs:
                if m.error() is not None:
                    continue
                ts = m.timestamp()[1]
                if ts < after_ms or (holding is not None and holding not in (m.value() or b"")):
                    continue
                n += 1
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
    finally:
        c.close()
    if first is None or last is None:
        return 0, 0, 0
    return n, first, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=8, help="scenario copies (~27k events each)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    ap.add_argument("--batch-size", type=int, default=1000, help="guard input.batch_size")
    ap.add_argument("--idle-eof-s", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="guard runs per worker count, interleaved; the medians are compared "
                         "(a multi-process figure varies by about +-10%% run to run)")
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of a dev broker")
    ap.add_argument("--timeline", action="store_true",
                    help="print the cores each guard process (then the dev broker) used "
                         "in each second of each workload run")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="every guard's input.fetch_wait_max_ms (default: the guard's, 10)")
    ap.add_argument("--market", action="store_true",
                    help="also run the guard as 2 market processes (BTC, ETH) and a firm process "
                         "fed by them (three 1-worker dataflows, at once)")
    ap.add_argument("--independent", action="store_true",
                    help="also run 2 independent 1-worker guards, each over half the copies "
                         "(the ceiling for 2 processes)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    bootstrap, broker, broker_pid = broker_unless(args.bootstrap, work / "broker")
    try:
        tag = uuid.uuid4().hex[:6]
        kw = {"partitions": args.partitions, "idle_eof_s": args.idle_eof_s,
              "batch_size": args.batch_size, "fetch_wait_ms": args.fetch_wait_ms}
        full = setup_env(bootstrap, work / "full", f"bw{tag}", **kw)
        empty = setup_env(bootstrap, work / "empty", f"be{tag}", **kw)
        start_ns = time.time_ns() - (args.copies * DURATION_S + 30) * NS
        records = scenario_copies(args.copies, start_ns)
        n = publish(full, records)
        base = full
        market_full = market_empty = full
        if args.market:
            # the market tier reads its own copy of the workload
            market_full = setup_env(bootstrap, work / "market", f"bm{tag}", **kw)
            market_empty = setup_env(bootstrap, work / "market-empty", f"bme{tag}", **kw)
            publish(market_full, records)
        halves: list[BenchEnv] = []
        halves_empty: list[BenchEnv] = []
        if args.independent:
            # the first and the second half of the copies (back to back in event time)
            for h in range(2):
                halves.append(setup_env(bootstrap, work / f"half{h}", f"bh{h}{tag}", **kw))
                halves_empty.append(setup_env(bootstrap, work / f"halfe{h}", f"bhe{h}{tag}",
                                              **kw))
            cut = len(records) // args.copies * (args.copies // 2)
            publish(halves[0], records[:cut])
            publish(halves[1], records[cut:])
        del records
        out_full, out_empty = f"pt-out-{tag}", f"pt-out-empty-{tag}"
        create_topics({"bootstrap.servers": bootstrap}, [
            *(TopicSpec(f"{out_full}-{i}", args.partitions) for i in range(3)),
            TopicSpec(out_empty, args.partitions),
        ])
        print(f"workload: {n:,} events ({args.copies} scenario copies), "
              f"{args.partitions} partitions per input topic; load: {os.getloadavg()}")

        # The baseline is fast (a few seconds), so take the median of three runs.
        pt_runs = sorted(
            (run_passthrough(bootstrap, base.input_topics(), f"{out_full}-{i}"),
             run_passthrough(bootstrap, empty.input_topics(), out_empty))
            for i in range(3)
        )
        pt_full, pt_empty = pt_runs[1][0][0], pt_runs[1][1][0]
        pt_rate = n / statistics.median(f[0] - e[0] for f, e in pt_runs)
        pt_cpu = statistics.median(f[1] - e[1] for f, e in pt_runs)
        pt_n, pt_span = output_span(bootstrap, [f"{out_full}-2"], args.partitions)
        print(f"baseline stock keyed pass-through, 1 worker: {pt_rate:10,.0f} events/s  "
              f"(wall {pt_full:.1f} s - empty {pt_empty:.1f} s; output timestamps: "
              f"{pt_n / pt_span if pt_span else float('nan'):,.0f} events/s over {pt_n:,}; "
              f"CPU {pt_cpu / n * 1e6:.1f} us/event)")

        rates: dict[int, list[float]] = {}
        phases: dict[int, list[float]] = {}  # data phase seconds (data_phase)
        cpus: dict[int, list[float]] = {}
        brokers: dict[int, list[float]] = {}  # the dev broker's CPU seconds per run
        walls: dict[int, list[float]] = {}  # workload minus empty run, wall seconds
        steals: dict[int, list[float]] = {}  # CPU the hypervisor took during the workload
        # repeats interleave the kinds, so load drift hits them alike
        kinds = [1]
        if args.market:
            kinds.append(MARKET)
        if args.independent:
            kinds.append(INDEPENDENT)
        market = ((market_envs(market_full), market_envs(market_empty)) if args.market
                  else None)
        for procs in [p for _ in range(args.repeats) for p in kinds]:
            envs: tuple[BenchEnv | list[BenchEnv], ...] = (
                (halves, halves_empty) if procs == INDEPENDENT
                else market if procs == MARKET and market else (full, empty))
            b0, s0 = cpu_seconds(broker_pid), steal_seconds()
            run_full = run_guard(envs[0], watch=(
                None if not args.timeline else [] if broker_pid is None else [broker_pid]))
            b1, s1 = cpu_seconds(broker_pid), steal_seconds()
            run_empty = run_guard(envs[1])
            b2 = cpu_seconds(broker_pid)
            t_full, started, c_full = run_full.wall, run_full.started, run_full.cpu
            t_empty, c_empty = run_empty.wall, run_empty.cpu
            rate = n / (t_full - t_empty)
            # each process's CPU and the broker's, workload minus empty run: which one
            # sets the pace when the processes differ (market tier), and the broker's share
            split = ", ".join(f"{f - e:.1f}" for f, e in zip(
                run_full.per_process, run_empty.per_process, strict=True))
            cpu_note = (f"; per process {split} s" if len(run_full.per_process) > 1 else "")
            broker_s = (b1 - b0) - (b2 - b1)
            if broker_pid is not None:
                cpu_note += f"; broker {broker_s:.1f} s"
            # what the hypervisor took from the cores over the workload run (the empty
            # run's share of it is not subtracted: it is the machine, not the work)
            steals.setdefault(procs, []).append(s1 - s0)
            cpu_note += f"; steal {s1 - s0:.1f} s"
            rates.setdefault(procs, []).append(rate)
            cpus.setdefault(procs, []).append(c_full - c_empty)
            brokers.setdefault(procs, []).append(broker_s)
            walls.setdefault(procs, []).append(t_full - t_empty)
            if procs == INDEPENDENT:
                dead = sum(output_span(bootstrap, [h.topic("dead_letters")], args.partitions,
                                       after_ms=int(started * 1000))[0] for h in halves)
                print(f"guard, 2 independent:        {rate:10,.0f} events/s  (wall "
                      f"{t_full:.1f} s - empty {t_empty:.1f} s; {dead:,} dead letters; load "
                      f"{os.getloadavg()[0]:.2f}; CPU {c_full:.1f} s - empty {c_empty:.1f} s "
                      f"= {(c_full - c_empty) / n * 1e6:.1f} us/event{cpu_note})")
                _print_timeline(run_full, broker_pid)
                continue
            run_env = market_full if procs == MARKET else full
            after = int(started * 1000)
            _out_n, span = output_span(bootstrap, [run_env.topic("exposures"),
                                                   run_env.topic("audit")],
                                       args.partitions, after_ms=after)
            phase = data_phase(run_env, args.partitions, after)
            phases.setdefault(procs, []).append(phase)
            dead, _ = output_span(bootstrap, [run_env.topic("dead_letters")], args.partitions,
                                  after_ms=after)
            label = _label(procs)
            print(f"guard, {label}:              {rate:10,.0f} events/s  ratio "
                  f"{rate / pt_rate:.2f}x of baseline (goal >= 0.5x)  (wall {t_full:.1f} s - "
                  f"empty {t_empty:.1f} s; output span {span:.1f} s -> "
                  f"{n / span if span else float('nan'):,.0f} events/s; data phase "
                  f"{phase:.1f} s -> {n / phase if phase else float('nan'):,.0f} events/s; "
                  f"{dead:,} dead letters; load {os.getloadavg()[0]:.2f}; "
                  f"CPU {c_full:.1f} s - empty {c_empty:.1f} s = "
                  f"{(c_full - c_empty) / n * 1e6:.1f} us/event{cpu_note})")
            _print_timeline(run_full, broker_pid)
        med = {procs: statistics.median(rs) for procs, rs in rates.items()}
        if args.repeats > 1:
            for procs, rs in sorted(rates.items()):
                label = _label(procs)
                print(f"guard, {label}, median of {len(rs)}: {med[procs]:10,.0f} events/s  "
                      f"ratio {med[procs] / pt_rate:.2f}x (runs {min(rs):,.0f}-{max(rs):,.0f})")
        if 1 in cpus:
            # one worker is CPU-bound: its CPU per event against the pass-through's is the
            # ratio without the start-up noise of the wall-time subtraction
            guard_cpu = statistics.median(cpus[1])
            print(f"by CPU time, 1 worker: {n / guard_cpu:,.0f} events/s against the "
                  f"pass-through's {n / pt_cpu:,.0f} = {pt_cpu / guard_cpu:.2f}x (goal >= 0.5x; "
                  f"median of {len(cpus[1])}, all threads counted)")
        if MARKET in med:
            pairs = [b / a for a, b in zip(rates[1], rates[MARKET], strict=True)]
            print(f"scaling, 2 market processes + firm / 1 worker: {med[MARKET] / med[1]:.2f}x "
                  "(goal >= 1.5x)"
                  + (f"  (per repeat {min(pairs):.2f}-{max(pairs):.2f}x)" if len(pairs) > 1
                     else "")
                  + f"; CPU {statistics.median(cpus[MARKET]) / statistics.median(cpus[1]):.2f}x")
        cores = os.cpu_count() or 1
        for procs in (MARKET,):
            if procs in cpus and 1 in walls and broker_pid is not None:
                steal = statistics.median(steals[procs])
                est = cpu_bound_wall_s(statistics.median(cpus[procs]),
                                       statistics.median(brokers[procs]), cores, steal)
                one = statistics.median(walls[1])
                print(f"{_label(procs).strip()}, CPU-bound estimate: its CPU, the dev "
                      f"broker's and the {steal:.1f} s the hypervisor took (one worker's "
                      f"runs: {statistics.median(steals[1]):.1f} s), spread over {cores} "
                      f"cores, take {est:.1f} s against one worker's {one:.1f} s: about "
                      f"{one / est:.2f}x (medians)")
            if procs in phases and 1 in phases:
                by_phase = statistics.median(phases[1]) / statistics.median(phases[procs])
                print(f"scaling by data phase, {_label(procs).strip()} / 1 worker: "
                      f"{by_phase:.2f}x (first output to last exposure, medians)")
        if INDEPENDENT in med:
            print(f"ceiling, 2 independent guards / 1 worker: {med[INDEPENDENT] / med[1]:.2f}x; "
                  f"CPU {statistics.median(cpus[INDEPENDENT]) / statistics.median(cpus[1]):.2f}x"
                  f"; steal {statistics.median(steals[INDEPENDENT]):.1f} s")
            for procs in (MARKET,):
                if procs in med:
                    print(f"{_label(procs).strip()} / the ceiling: "
                          f"{med[procs] / med[INDEPENDENT]:.2f}x (medians)")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
