"""Flink jobs that ``tests/test_flink_jobs.py`` runs in the Flink environment, each printing
the batches :func:`riskguard.flink.fused.tick_batches` makes as JSON lines: with ``java
FILE``, the Java parts that need no Kafka in one job, each line led by its part: the
batches of rows of two keys, out of order, one without event time (``ticks``), and the
rows a backtest's records file of ``ts,pos,base64`` lines makes
(``flink/java/RecordsFile.java``, ``records``); with ``BOOTSTRAP TOPIC N``,
the first ``N`` batches of a Kafka topic whose watermark moves with every message, so
that a message behind it is late; or, with ``guard BOOTSTRAP TOPICS N``, the first
``N`` batches of the ``,``-separated topics read by the live guard's Kafka source
(``flink/java/kafka/KafkaIo.java``), a partition quiet before its first message held
for ten minutes and one quiet after a message for one second, and the newest tick held
until every partition has been quiet for two (with ``guard BOOTSTRAP TOPICS N LEAD_NS``,
a record more than ``LEAD_NS`` ahead of its partition's time held); or, with ``restore
BOOTSTRAP TOPIC CHECKPOINTS N``, the same source over one topic, checkpointed into
``CHECKPOINTS`` and restored from the newest checkpoint there, if any; or, with ``order
BOOTSTRAP TOPIC N``, the partition and offset of the first ``N`` messages that source
hands on from one topic, fetching as the live guard does; or, with ``parts BOOTSTRAP
PORT PART...``, several of those jobs' sources in one job (one mini-cluster start-up),
each ``PART`` ``NAME=guard:TOPICS:N:LEAD_NS``, ``NAME=order:TOPIC:N``,
``NAME=late:TOPIC:N`` (the watermark moving with every message), ``NAME=ticks:-:N`` or
``NAME=records:FILE:N`` (the ``java`` job's parts), each line led by its part's name;
with a ``PORT`` (``-`` for none), then a ``metrics`` line as below, the ticks operator
of part ``NAME`` named ``test_NAME_ticks``. With ``BOOTSTRAP TOPIC N PORT``, the Kafka
job also runs Flink's Prometheus reporter on ``PORT`` and, after its batches, prints the
``lateRows`` samples it serves as a last line (``{"metrics": [...]}``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MS = 1_000_000
ROWS = [  # (segment key, (input, event time ns, source, position, bytes)), as they arrive
    ("a", ("in", 1_500 * MS, "t/1", 3, b"x")),
    ("a", ("in", 1_200 * MS, "t/0", 9, b"y")),
    ("a", ("in", 1_200 * MS, "t/0", 4, b"z")),
    ("a", ("acks", None, "acks/0", 0, b"n")),
    ("b", ("in", 1_100 * MS, "t/0", 1, b"b")),
    ("a", ("in", 2_500 * MS, "t/1", 4, b"w")),
]


def main(argv: list[str]) -> int:
    metrics_port = argv[3] if len(argv) == 4 and argv[0] not in (
        "guard", "restore", "order", "parts") else None
    if argv[:1] == ["parts"] and argv[2] != "-":
        metrics_port = argv[2]
    if metrics_port:
        _with_prometheus_jar()
    from pyflink.common import Types
    from pyflink.datastream import StreamExecutionEnvironment
    from riskguard.flink.fused import tick_batches, worker_processes
    from riskguard.flink.java_build import job_jars

    worker_processes()
    restore = argv[:1] == ["restore"]
    env = StreamExecutionEnvironment.get_execution_environment(
        _checkpointed(argv[3]) if restore
        else _prometheus(metrics_port) if metrics_port else None)
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)
    kafka = [j for j in os.environ.get("RISKGUARD_FLINK_JARS", "").split(";") if j]
    env.add_jars(*job_jars(kafka=kafka if argv[:1] in (
        ["guard"], ["restore"], ["order"], ["parts"]) else ()), *kafka)
    if argv[:1] == ["parts"]:
        return _print_parts(dict(_part(env, argv[1], spec) for spec in argv[3:]),
                            metrics_port)
    if argv[:1] == ["order"]:
        return _source_order(env, argv[1], argv[2], int(argv[3]))
    if argv[:1] == ["java"]:
        return _java_parts(env, argv[1])
    lead_ns = int(argv[4]) if argv[:1] == ["guard"] and len(argv) > 4 else 0
    if restore:
        env.enable_checkpointing(200)
        rows, limit = _guard_rows(env, argv[1], [argv[2]]), int(argv[4])
    elif argv[:1] == ["guard"]:
        rows, limit = _guard_rows(env, argv[1], argv[2].split(","), lead_ns=lead_ns), int(argv[3])
    else:
        rows, limit = _kafka_rows(env, argv[0], argv[1]), int(argv[2])
    batches = tick_batches(rows, 1_000_000_000, ("in", "kafka"), "test",  # ticks of 1 s
                           lead_ns=lead_ns)
    out = batches.map(_as_json, output_type=Types.STRING())
    if restore:  # a collect sink cannot be restored into another client: a file instead
        return _run_to_file(env, out, Path(argv[3]).parent / f"batches-{os.getpid()}",
                            limit, argv[3])
    return _print_first(out, limit, metrics_port)


def _run_to_file(env: Any, lines: Any, path: Path, limit: int, checkpoints: str) -> int:
    """Run the job, each line appended to ``path`` by the worker, until ``limit`` lines
    are there; then let a checkpoint taken after them complete in ``checkpoints``, cancel
    the job and print them."""
    from pyflink.common import Types

    def append(line: str) -> list[str]:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return []

    lines.flat_map(append, output_type=Types.STRING()).print()
    client = env.execute_async("ticks restore test")
    deadline = time.monotonic() + 180
    while not path.exists() or len(path.read_text().splitlines()) < limit:
        assert time.monotonic() < deadline, "no batches"
        time.sleep(0.2)
    # one checkpoint at a time: the one after the next completed one was started after
    # the last batch was written (a restored job goes on with the checkpoint ids)
    after = _newest_checkpoint_id(checkpoints) + 2
    while _newest_checkpoint_id(checkpoints) < after:
        assert time.monotonic() < deadline, "no checkpoint after the batches"
        time.sleep(0.1)
    client.cancel().result()
    print(path.read_text(), end="", flush=True)
    return 0


def _newest_checkpoint_id(folder: str) -> int:
    """The id of the newest completed checkpoint in ``folder`` (``<job>/chk-N``), or 0."""
    return max((int(p.name[4:]) for p in Path(folder).glob("*/chk-*")
                if (p / "_metadata").exists()), default=0)


def _checkpointed(folder: str) -> Any:
    """A job configuration that keeps its checkpoints in ``folder`` when cancelled, and
    restores from the newest there, if any."""
    from pyflink.common import Configuration
    from riskguard.flink.guard import latest_checkpoint

    conf = Configuration()
    conf.set_string("execution.checkpointing.dir", Path(folder).as_uri())
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention",
                    "RETAIN_ON_CANCELLATION")
    if found := latest_checkpoint(folder):
        conf.set_string("execution.state-recovery.path", found)
    return conf


def _as_json(batch: Any) -> str:
    """A batch as its tick's last ms, whether late, and its rows (unpacked from the bytes
    Java packed them in, whose own tick must be the batch's)."""
    from riskguard.flink.wire import unpack_batch

    tick, rows = unpack_batch(bytes(batch[2]))
    assert tick == batch[0], (tick, batch[0])
    return json.dumps([batch[0], batch[1], [[r[0], r[1], r[2], r[3], (r[4] or b"").decode()]
                                            for r in rows]])


def _guard_rows(env: Any, bootstrap: str, topics: list[str], props: Any = None,
                quiet_ms: tuple[int, int, int] = (600_000, 1_000, 2_000),
                lead_ns: int = 0, uid: str = "in") -> Any:
    """The live guard's source: ``("kafka", ts, "topic/partition", offset, value)`` rows
    under the key ``k``, stamped and watermarked in Java (ticks of 1 s, allowed future
    skew 0.5 s, a record more than ``lead_ns`` ahead of its partition held: 0, none)."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway
    from riskguard.flink.fused import KEYED_ROW, java_strings

    gateway = get_gateway()
    if props is None:
        props = gateway.jvm.java.util.Properties()
    props.setProperty("bootstrap.servers", bootstrap)
    return DataStream(gateway.jvm.riskguard.flink.kafka.KafkaIo.source(
        env._j_stream_execution_environment, props, java_strings(topics), "ticks-test", True,
        *quiet_ms, 1_000, 500, lead_ns, "k", KEYED_ROW.get_java_type_info(), uid))


def _source_order(env: Any, bootstrap: str, topic: str, limit: int) -> int:
    """Prints ``partition offset`` of the first ``limit`` messages the guard's source
    hands on from ``topic``, its fetches set as the live guard sets them."""
    return _print_first(_order_lines(env, bootstrap, topic), limit)


def _order_lines(env: Any, bootstrap: str, topic: str, uid: str = "in") -> Any:
    """``partition offset`` of each message the guard's source hands on from ``topic``,
    its fetches set as the live guard sets them."""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway
    from riskguard.flink.guard import ALL_QUIET_MS, QUIET_MS, START_QUIET_MS, set_fetches

    props = get_gateway().jvm.java.util.Properties()
    set_fetches(props)
    rows = _guard_rows(env, bootstrap, [topic], props,
                       (START_QUIET_MS, QUIET_MS, ALL_QUIET_MS), uid=uid)
    return rows.map(lambda kv: f"{kv[1][2].rsplit('/', 1)[1]} {kv[1][3]}",
                    output_type=Types.STRING())


def _part(env: Any, bootstrap: str, spec: str) -> tuple[str, tuple[Any, int]]:
    """One part of a ``parts`` job: its name, its lines and how many of them to print."""
    from pyflink.common import Types
    from riskguard.flink.fused import tick_batches

    name, rest = spec.split("=", 1)
    kind, topics, limit, *lead = rest.split(":")
    if kind in ("ticks", "records"):
        return name, (_ticks_lines(env, f"test_{name}") if kind == "ticks" else
                      _records_lines(env, topics, f"records_{name}"), int(limit))
    if kind == "order":
        return name, (_order_lines(env, bootstrap, topics, uid=f"in_{name}"), int(limit))
    lead_ns = int(lead[0]) if lead else 0
    rows = (_kafka_rows(env, bootstrap, topics) if kind == "late" else
            _guard_rows(env, bootstrap, topics.split(","), lead_ns=lead_ns, uid=f"in_{name}"))
    batches = tick_batches(rows, 1_000_000_000, ("in", "kafka"), f"test_{name}",
                           lead_ns=lead_ns)
    return name, (batches.map(_as_json, output_type=Types.STRING()), int(limit))


def _print_parts(parts: dict[str, tuple[Any, int]], metrics_port: str | None) -> int:
    """Runs one job of all ``parts``, printing each part's first lines (as many as its
    limit), each led by the part's name, until every part has printed its own; with
    ``metrics_port``, then ``metrics`` and the ``lateRows`` samples served."""
    from pyflink.common import Types

    tagged = [lines.map(lambda line, name=name: f"{name} {line}", output_type=Types.STRING())
              for name, (lines, _limit) in parts.items()]
    left = {name: limit for name, (_lines, limit) in parts.items()}
    with tagged[0].union(*tagged[1:]).execute_and_collect() as results:
        for line in results:
            name = line.split(" ", 1)[0]
            if left[name] > 0:
                print(line, flush=True)
                left[name] -= 1
            if not any(left.values()):
                break
        if metrics_port:
            print("metrics", json.dumps({"metrics": _late_rows_samples(metrics_port)}),
                  flush=True)
    return 0


def _java_parts(env: Any, path: str) -> int:
    """One job, two parts: prints ``ticks`` and each batch :data:`ROWS` make, and
    ``records`` and each row the records file ``path`` makes as ``[key, port, ts, src,
    pos, text]``, each part's lines in its order."""
    from pyflink.common import Types

    ticks = _ticks_lines(env, "test").map(lambda line: "ticks " + line,
                                          output_type=Types.STRING())
    texts = _records_lines(env, path, "records_test").map(lambda line: "records " + line,
                                                          output_type=Types.STRING())
    return _print_first(ticks.union(texts), None)


def _ticks_lines(env: Any, uid: str) -> Any:
    """Each batch :data:`ROWS` make (ticks of 1 s), as JSON."""
    from pyflink.common import Row, Types
    from riskguard.flink.fused import KEYED_ROW, tick_batches

    rows = env.from_collection([Row(k, Row(*v)) for k, v in ROWS], type_info=KEYED_ROW)
    return tick_batches(rows, 1_000_000_000, ("in", "kafka"), uid).map(
        _as_json, output_type=Types.STRING())


def _records_lines(env: Any, path: str, uid: str) -> Any:
    """Each row the records file ``path`` makes, as JSON ``[key, port, ts, src, pos,
    text]``."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway
    from riskguard.flink.fused import KEYED_ROW

    records = DataStream(get_gateway().jvm.riskguard.flink.RecordsFile.rows(
        env._j_stream_execution_environment, Path(path).as_uri(), "all", "in",
        KEYED_ROW.get_java_type_info(), uid))
    return records.map(lambda kv: json.dumps(
        [kv[0], kv[1][0], kv[1][1], kv[1][2], kv[1][3], bytes(kv[1][4]).decode()]),
        output_type=Types.STRING())


def _print_first(lines: Any, limit: int | None, metrics_port: str | None = None) -> int:
    """Runs the job, printing the first ``limit`` of its ``lines`` (all without); with
    ``metrics_port``, then the ``lateRows`` samples its Prometheus reporter serves."""
    with lines.execute_and_collect() as results:
        for n, line in enumerate(results, 1):
            print(line, flush=True)
            if n == limit:
                break
        if metrics_port:
            print(json.dumps({"metrics": _late_rows_samples(metrics_port)}), flush=True)
    return 0


def _prometheus(port: str) -> Any:
    """A job configuration with Flink's Prometheus reporter on ``port`` (the one the
    guard's FlinkDeployment runs, ``ops/k8s/flink/``)."""
    from pyflink.common import Configuration

    conf = Configuration()
    conf.set_string("metrics.reporter.prom.factory.class",
                    "org.apache.flink.metrics.prometheus.PrometheusReporterFactory")
    conf.set_string("metrics.reporter.prom.port", port)
    return conf


def _with_prometheus_jar() -> None:
    """A local job's mini-cluster loads no plugins: the reporter joins the client JVM's
    classpath, PyFlink's lib folder linked with the jar, before the JVM starts."""
    import pyflink

    home = Path(pyflink.__file__).parent
    lib = Path.cwd() / f"flink-lib-{os.getpid()}"  # the job's working folder (the test's)
    lib.mkdir()
    for jar in [*(home / "lib").glob("*.jar"),
                *(home / "plugins" / "metrics-prometheus").glob("*.jar")]:
        (lib / jar.name).symlink_to(jar)
    os.environ["FLINK_HOME"] = str(home)  # else PyFlink sets FLINK_LIB_DIR to its own
    os.environ["FLINK_LIB_DIR"] = str(lib)


def _late_rows_samples(port: str) -> list[str]:
    """The reporter's ``lateRows`` lines, once the counter has counted (10 s at most)."""
    import urllib.request

    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
        found = [ln for ln in text.splitlines()
                 if "lateRows" in ln and not ln.startswith("#")]
        if any(not ln.endswith(" 0.0") for ln in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _kafka_rows(env: object, bootstrap: str, topic: str) -> object:
    """The topic's messages (their value is the event time in ms) as keyed rows, with a
    watermark a ms behind the newest, emitted after every message."""
    from pyflink.table import StreamTableEnvironment
    from riskguard.flink.fused import KEYED_ROW

    tables = StreamTableEnvironment.create(env)
    tables.execute_sql(f"""
        CREATE TABLE msgs (`value` STRING, `offset` BIGINT METADATA VIRTUAL,
          rt AS TO_TIMESTAMP_LTZ(CAST(`value` AS BIGINT), 3),
          WATERMARK FOR rt AS rt - INTERVAL '0.001' SECOND
        ) WITH ('connector' = 'kafka', 'topic' = '{topic}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'properties.group.id' = 'ticks-test', 'scan.startup.mode' = 'earliest-offset',
                'value.format' = 'raw', 'scan.watermark.emit.strategy' = 'on-event')""")
    return tables.to_append_stream(tables.sql_query(
        "SELECT CAST('k' AS STRING), ROW(CAST('in' AS STRING), "
        "CAST(`value` AS BIGINT) * 1000000, CAST('p/0' AS STRING), `offset`, "
        "ENCODE(`value`, 'UTF-8')) FROM msgs"), KEYED_ROW)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
