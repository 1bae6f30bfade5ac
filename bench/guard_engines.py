"""The live guard fed by Kafka, on bytewax and on Apache Flink: sustained events/s at
parallelism 1 and 2, as a ratio to bytewax's one worker in the same run.

Run: ``python bench/guard_engines.py [--copies 2] [--flink-python PATH]`` (about 6
minutes on 2 cores; a dev broker is started unless ``$RISKGUARD_KAFKA_BOOTSTRAP``
names a cluster; Flink needs Java 11 or 17 on ``PATH``).

What runs. Each run gets topics of its own (two partitions each) holding the bundled
demo scenario, published before the guard starts: one copy (26,918 records) and
``--copies`` back-to-back copies. Then, reading it from the start:

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

Printed: each engine's rate and its ratio to bytewax's, its fixed seconds, and the
number of commands each run wrote (the scenario gives 12 a copy).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from engines import fit, flink_python, ratio  # noqa: E402
from riskguard.connectors.broker import DevBroker  # noqa: E402
from riskguard.dataflows.demo import PreparedRun, prepare_run  # noqa: E402

OUTPUTS = ("commands", "dead_letters", "signals", "exposures", "audit")
QUIET_S = 15.0


def last_write(run: PreparedRun) -> tuple[float | None, int, int]:
    """The broker time (s) of the last record on the run's output topics, and how many
    commands and records in all they hold."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    topics = [run.topic(s) for s in OUTPUTS]
    meta = consumer.list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions]
    consumer.assign(parts)
    last, commands, total, ends = None, 0, 0, 0
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
    consumer.close()
    return last, commands, total


def run_engine(run: PreparedRun, argv: list[str], env: dict[str, str], log: Path,
               ends_itself: bool, timeout_s: float = 1800.0) -> tuple[float, int]:
    """Start the guard, wait for it to end (or its outputs to go quiet), and give the
    seconds from start to its last output and the commands it wrote."""
    started = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent, start_new_session=True)  # not a checkout

        try:
            seen, still_since = -1, time.monotonic()
            while time.time() - started < timeout_s:
                if proc.poll() is not None:
                    break
                time.sleep(3)
                if ends_itself:
                    continue
                _last, _c, total = last_write(run)
                if total != seen:
                    seen, still_since = total, time.monotonic()
                elif total and time.monotonic() - still_since > QUIET_S:
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
    last, commands, _total = last_write(run)
    if last is None:
        raise SystemExit(f"no output from {argv}: see {log}")
    return last - started, commands


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--flink-python", help="an interpreter with riskguard[flink]")
    args = ap.parse_args(argv)
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
        fenv |= {"RISKGUARD_FLINK_PYTHON": fcmd[0],
                 "RISKGUARD_FLINK_JARS": ";".join(flink_env.kafka_jars())}
        cli = [sys.executable, "-m", "riskguard.cli", "run", "--status-every", "0"]
        engines: list[tuple[str, list[str], dict[str, str], bool]] = [
            ("bytewax, 1 worker", [], dict(os.environ), True),
            ("Flink, parallelism 1", ["--engine", "flink", "--", "--parallelism", "1"],
             fenv, False),
            ("Flink, parallelism 2", ["--engine", "flink", "--", "--parallelism", "2"],
             fenv, False),
        ]
        print(f"guard engines, fed by Kafka: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} CPUs, 1 and {args.copies} copies of the demo scenario")
        rows = []
        for name, extra, env, ends_itself in engines:
            points = []
            for copies in (1, args.copies):
                tag = f"{name.split(',')[0].lower()}{extra[-1] if extra else ''}-{copies}"
                run = prepare_run(bootstrap, work / tag, env=f"b{uuid.uuid4().hex[:6]}",
                                  copies=copies)
                secs, commands = run_engine(
                    run, [*cli[:4], "--config", str(run.config), *cli[4:], *extra], env,
                    work / f"{tag}.log", ends_itself)
                points.append((run.records, secs))
                print(f"  {name}: {run.records:,} records, last output at {secs:.1f} s, "
                      f"{commands} commands", flush=True)
            (n1, t1), (n2, t2) = points
            rows.append((name, fit(n1, t1, n2, t2)))
        base = rows[0][1][0] if rows[0][1] else None
        print("\n| engine | events/s | ratio to bytewax | fixed s |\n|---|---|---|---|")
        for name, line in rows:
            rate, fixed = line if line else (None, None)
            print(f"| {name} | {'-' if rate is None else f'{rate:,.0f}'} | "
                  f"{ratio(rate, base)} | {'-' if fixed is None else f'{fixed:.1f}'} |")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
