"""The live guard fed by Kafka, on bytewax and on Apache Flink: sustained events/s at
parallelism 1 and 2, as a ratio to bytewax's one worker in the same run.

Run: ``python bench/guard_engines.py [--copies 20 6] [--repeats R]
[--flink-python PATH]`` (about 10 minutes a repeat on 2 cores; a dev broker is started
unless ``$RISKGUARD_KAFKA_BOOTSTRAP`` names a cluster; Flink needs Java 11 or 17 on
``PATH``).

What runs. Each run gets topics of its own (two partitions each) holding the bundled
demo scenario, published before the guard starts: one copy (26,918 records) and
back-to-back copies, ``--copies`` for bytewax and for Flink (20 and 6: enough added
records that each engine's added time is tens of seconds, well above the few seconds
its start-up varies by). Then, reading it from the start:

- **bytewax, 1 worker**: ``riskguard run --config ...``, which ends itself once its
  input has been quiet for ``input.idle_eof_s``;
- **Flink, parallelism 1 and 2**: ``riskguard run --engine flink -- --parallelism N``
  (:mod:`riskguard.flink.guard` on a local mini-cluster, in the environment
  ``tests/flink_env.py`` builds, with the Kafka connector's jars it fetches), stopped
  once no output has been written for 15 s.

Method. A run's end is the broker's timestamp on the last record it wrote to any of
its five output topics; its time is from starting the process to that end. The rate
is by subtraction between the two runs of an engine, so start-up (the JVM, the job's
submission, each worker building the flow) cancels::

    rate = (n_copies - n_one) / (T_copies - T_one)

For Flink, whose start-up swings by several seconds from run to run, ``T`` is from the
first record its segment took (``$RISKGUARD_FLINK_TRACE``) to that end; the fixed
seconds are still from the process's start. Printed: each engine's rate and its ratio
to bytewax's, its fixed seconds, the number of commands each run wrote, and (Flink) the
rows that came behind the watermark: each is fed alone, out of bytewax's order, and any
at all can change the commands. Each Flink run also prints when its start-up reached
each traced moment: the client's start, the job's submission, the segment's opening,
its flow built, its first input and its first output. With ``--repeats R`` the engines
run R times, interleaved, and each engine's median rate and the median of its ratios to
bytewax's in the same repeat are printed too: on a shared machine one run's ratio moves
by a fifth and more.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from engines import (  # noqa: E402
    PROCESS_MODE,
    TreeSampler,
    fit,
    flink_python,
    late_rows,
    moments,
    processing_first,
    ratio,
)
from riskguard.connectors.broker import DevBroker  # noqa: E402
from riskguard.dataflows.demo import PreparedRun, prepare_run  # noqa: E402

from riskguard.environment import FLINK_TRACE  # noqa: E402

OUTPUTS = ("commands", "dead_letters", "signals", "exposures", "audit")
QUIET_S = 15.0


def written(run: PreparedRun) -> tuple[float | None, float | None, int, int]:
    """The broker times (s) of the first and the last record on the run's output topics,
    and how many commands and records in all they hold."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    topics = [run.topic(s) for s in OUTPUTS]
    meta = consumer.list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions]
    consumer.assign(parts)
    first, last, commands, total, ends = None, None, 0, 0, 0
    while ends < len(parts):
        msgs = consumer.consume(1000, timeout=2.0)
        if not msgs:
            break
        for m in msgs:
            if m.error() is not None:
                ends += 1
                continue
            total += 1
            commands += m.topic() == run.topic("commands")
            ts = m.timestamp()[1] / 1000
            last = ts if last is None else max(last, ts)
            first = ts if first is None else min(first, ts)
    consumer.close()
    return first, last, commands, total


def _high_marks(run: PreparedRun) -> int:
    """The sum of the output partitions' high watermarks: cheap to ask while a run is
    going (reading the topics would take CPU from it), and it moves whenever a batch is
    written (the dev broker under-reports it, but it still moves)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": uuid.uuid4().hex})
    try:
        meta = consumer.list_topics(timeout=10)
        total = 0
        for topic in (run.topic(s) for s in OUTPUTS):
            for p in meta.topics[topic].partitions:
                total += consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                        timeout=10)[1]
        return total
    finally:
        consumer.close()


@dataclass
class Point:
    """One run: records in, seconds from start to the first and the last output, CPU
    seconds and peak memory of its process tree, commands out, and (Flink) seconds from
    the job's first input to its first output, the rows that came behind the watermark
    and the seconds from the start to each traced moment of its start-up."""

    records: int
    first_s: float
    last_s: float
    cpu_s: float
    peak_mib: float
    commands: int
    processing_first_s: float | None
    first_input_s: float | None = None
    late_rows: int | None = None
    start_up: dict[str, float] | None = None


def run_engine(run: PreparedRun, argv: list[str], env: dict[str, str], log: Path,
               ends_itself: bool, timeout_s: float = 1800.0) -> Point:
    """Start the guard, wait for it to end (or its outputs to go quiet), and measure it."""
    trace = log.with_suffix(".trace")
    env = {**env, FLINK_TRACE: str(trace)}
    sampler = TreeSampler()
    sampler.start()
    started = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent, start_new_session=True)  # not a checkout
        sampler.watch(proc.pid)
        try:
            seen, still_since = -1, time.monotonic()
            while time.time() - started < timeout_s:
                if proc.poll() is not None:
                    break
                time.sleep(3)
                if ends_itself:
                    continue
                total = _high_marks(run)
                if total != seen:
                    seen, still_since = total, time.monotonic()
                elif total and time.monotonic() - still_since > QUIET_S:
                    break
        finally:
            sampler.stop()
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
    first, last, commands, _total = written(run)
    if first is None or last is None:
        raise SystemExit(f"no output from {argv}: see {log}")
    # the quiet wait after the last output is not the guard's work: CPU is sampled to the
    # end, so a Flink run's figure includes idling for QUIET_S (stated in the docs)
    start_up = moments(trace, started)
    return Point(run.records, first - started, last - started, sampler.cpu_s,
                 sampler.peak_kib / 1024, commands, processing_first(trace),
                 start_up.get("first_input"), late_rows(trace), start_up)


ENGINES = {
    "bytewax": ("bytewax, 1 worker", [], True),
    "flink1": ("Flink, parallelism 1", ["--engine", "flink", "--", "--parallelism", "1"], False),
    "flink2": ("Flink, parallelism 2", ["--engine", "flink", "--", "--parallelism", "2"], False),
}
"""The engines a run can measure (``--engines``): label, ``riskguard run`` arguments, and
whether the run ends itself (bytewax's ``input.idle_eof_s``; Flink's runs are stopped
once their outputs are quiet)."""


def _measure(bootstrap: str, work: Path, key: str, copies: int, partitions: int,
             env: dict[str, str], repeat: int = 0) -> Point:
    name, extra, ends_itself = ENGINES[key]
    tag = f"{key}-{copies}-p{partitions}" + (f"-r{repeat}" if repeat else "")
    run = prepare_run(bootstrap, work / tag, env=f"b{uuid.uuid4().hex[:6]}", copies=copies,
                      partitions=partitions)
    cli = [sys.executable, "-m", "riskguard.cli", "run", "--config", str(run.config),
           "--status-every", "0", *extra]
    point = run_engine(run, cli, env, work / f"{tag}.log", ends_itself)
    first = "-" if point.processing_first_s is None else f"{point.processing_first_s:.1f}"
    print(f"  {name}, {partitions} partitions: {point.records:,} records, first output at "
          f"{point.first_s:.1f} s ({first} s after its first input), last at "
          f"{point.last_s:.1f} s, {point.cpu_s:.1f} CPU s, {point.peak_mib:,.0f} MiB, "
          f"{point.commands} commands{_late(point)} ({_load()})", flush=True)
    if point.start_up:
        print("    start-up: " + ", ".join(f"{what} {at:.1f} s"
                                         for what, at in point.start_up.items()), flush=True)
    return point


def _late(point: Point) -> str:
    """The run's late rows, if it counts them: any at all means its order was not the
    input's, and its commands may differ from bytewax's."""
    if point.late_rows is None:
        return ""
    warn = "  <- rows behind the watermark: not bytewax's order" if point.late_rows else ""
    return f", {point.late_rows:,} late rows{warn}"


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _rate(one: Point, more: Point) -> tuple[float | None, float | None, float | None]:
    """Events/s, CPU µs an added event and fixed seconds, from a one-copy and a
    many-copy run of an engine."""
    line = fit(one.records, one.last_s, more.records, more.last_s)
    cpu = fit(one.records, one.cpu_s, more.records, more.cpu_s)
    rate, fixed = line if line else (None, None)
    if one.first_input_s is not None and more.first_input_s is not None:
        # a Flink run's start-up swings by several seconds from run to run (the JVM,
        # the job's submission): its rate is over the time from its first input instead
        span = fit(one.records, one.last_s - one.first_input_s, more.records,
                   more.last_s - more.first_input_s)
        rate = span[0] if span else None
    return rate, None if cpu is None else 1e6 / cpu[0], fixed


def _row(name: str, one: Point, more: Point,
         measured: tuple[float | None, float | None, float | None],
         base: tuple[float | None, float | None]) -> str:
    rate, cpu_us, fixed = measured
    proc = "-" if one.processing_first_s is None else f"{one.processing_first_s:.1f}"
    return (f"| {name} | {'-' if rate is None else f'{rate:,.0f}'} | {ratio(rate, base[0])} "
            f"| {'-' if cpu_us is None else f'{cpu_us:,.0f}'} | {ratio(cpu_us, base[1])} "
            f"| {'-' if fixed is None else f'{fixed:.1f}'} | {one.first_s:.1f} | {proc} "
            f"| {max(one.peak_mib, more.peak_mib):,.0f} | {one.commands}, {more.commands} "
            f"| {_count(one.late_rows)}, {_count(more.late_rows)} |")


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _medians(rates: dict[str, list[float | None]], first: str) -> list[str]:
    """Each engine's median rate over the repeats, and the median of its ratios to the
    first engine's rate in the same repeat (paired: a repeat's load is the same for both).

    >>> _medians({"a": [10.0, 20.0, 30.0], "b": [4.0, 9.0, 12.0]}, "a")
    ['| a | 20 | 1.00x | 3 |', '| b | 9 | 0.40x | 3 |']
    """
    out = []
    for name, got in rates.items():
        paired = [r / b for r, b in zip(got, rates[first], strict=True)
                  if r is not None and b]
        known = [r for r in got if r is not None]
        rate = f"{statistics.median(known):,.0f}" if known else "-"
        ratio_of = f"{statistics.median(paired):.2f}x" if paired else "-"
        out.append(f"| {name} | {rate} | {ratio_of} | {len(known)} |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--copies", type=int, nargs=2, default=[20, 6],
                    metavar=("BYTEWAX", "FLINK"),
                    help="copies in the longer run, for bytewax and for Flink")
    ap.add_argument("--partitions", type=int, nargs="+", default=[2],
                    help="partitions a topic; several: each engine at each (default 2)")
    ap.add_argument("--engines", default="bytewax,flink1,flink2",
                    help=f"comma-separated, of {sorted(ENGINES)}")
    ap.add_argument("--flink-python", help="an interpreter with riskguard[flink]")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the engines this many times, interleaved, and print the "
                         "medians too (default 1)")
    args = ap.parse_args(argv)
    keys = args.engines.split(",")
    work = Path(tempfile.mkdtemp(prefix="rg-guard-engines-"))
    broker = None
    bootstrap = os.environ.get("RISKGUARD_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = DevBroker(work / "broker")
        bootstrap = broker.start().bootstrap
    try:
        spec = importlib.util.spec_from_file_location(
            "flink_env", BENCH.parent / "tests" / "flink_env.py")
        assert spec is not None and spec.loader is not None
        flink_env: Any = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flink_env)
        fcmd, fenv = flink_python(work, args.flink_python)
        fenv |= {"RISKGUARD_FLINK_PYTHON": fcmd[0], PROCESS_MODE: "process",
                 "RISKGUARD_FLINK_JARS": ";".join(flink_env.kafka_jars())}
        print(f"guard engines, fed by Kafka: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} CPUs, 1 and {args.copies[0]} (bytewax) or {args.copies[1]} "
              "(Flink) copies of the demo scenario")
        rows: list[str] = []
        rates: dict[str, list[float | None]] = {}
        for repeat in range(args.repeats):  # the engines interleaved, a repeat each
            for partitions in args.partitions:
                base: tuple[float | None, float | None] = (None, None)
                for key in keys:
                    env = dict(os.environ) if key == "bytewax" else fenv
                    copies = args.copies[0] if key == "bytewax" else args.copies[1]
                    one = _measure(bootstrap, work, key, 1, partitions, env, repeat)
                    more = _measure(bootstrap, work, key, copies, partitions, env, repeat)
                    measured = _rate(one, more)
                    if key == keys[0]:
                        base = measured[:2]
                    name = f"{ENGINES[key][0]}, {partitions} partitions"
                    rows.append(_row(name, one, more, measured, base))
                    rates.setdefault(name, []).append(measured[0])
        print("\n| engine | events/s | ratio | CPU µs an event | ratio | fixed s "
              "| first output s | from first input s | peak MiB | commands | late rows |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        if args.repeats > 1:
            print(f"\nmedians over {args.repeats} repeats (ratios paired within a repeat)\n"
                  "\n| engine | events/s | ratio | repeats |\n|---|---|---|---|")
            print("\n".join(_medians(rates, next(iter(rates)))))
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
