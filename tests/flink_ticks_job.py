"""Flink jobs that ``tests/test_flink.py`` runs in the Flink environment, each printing
the batches :func:`riskguard.flink.fused.tick_batches` makes as JSON lines: rows of two
keys, out of order, one without event time (no arguments); with ``BOOTSTRAP TOPIC N``,
the first ``N`` batches of a Kafka topic whose watermark moves with every message, so
that a message behind it is late; or, with ``guard BOOTSTRAP TOPICS N``, the first
``N`` batches of the ``,``-separated topics read by the live guard's Kafka source
(``flink/java/kafka/KafkaIo.java``), a partition quiet before its first message held
for ten minutes and one quiet after a message for one second."""

from __future__ import annotations

import json
import sys
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
    import os

    from pyflink.common import Row, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from riskguard.flink.fused import KEYED_ROW, tick_batches, worker_processes
    from riskguard.flink.java_build import job_jars

    worker_processes()
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)
    kafka = [j for j in os.environ.get("RISKGUARD_FLINK_JARS", "").split(";") if j]
    env.add_jars(*job_jars(kafka=kafka if argv[:1] == ["guard"] else ()), *kafka)
    if argv[:1] == ["guard"]:
        rows, limit = _guard_rows(env, argv[1], argv[2].split(",")), int(argv[3])
    elif argv:
        rows, limit = _kafka_rows(env, argv[0], argv[1]), int(argv[2])
    else:
        rows = env.from_collection([Row(k, Row(*v)) for k, v in ROWS], type_info=KEYED_ROW)
        limit = None
    batches = tick_batches(rows, 1_000_000_000, ("in", "kafka"), "test")  # ticks of 1 s
    out = batches.map(_as_json, output_type=Types.STRING())
    with out.execute_and_collect() as results:
        for n, line in enumerate(results, 1):
            print(line, flush=True)
            if n == limit:
                break
    return 0


def _as_json(batch: Any) -> str:
    """A batch as its tick's last ms, whether late, and its rows (unpacked from the bytes
    Java packed them in, whose own tick must be the batch's)."""
    from riskguard.flink.wire import unpack_batch

    tick, rows = unpack_batch(bytes(batch[2]))
    assert tick == batch[0], (tick, batch[0])
    return json.dumps([batch[0], batch[1], [[r[0], r[1], r[2], r[3], (r[4] or b"").decode()]
                                            for r in rows]])


def _guard_rows(env: Any, bootstrap: str, topics: list[str]) -> Any:
    """The live guard's source: ``("kafka", ts, "topic/partition", offset, value)`` rows
    under the key ``k``, stamped and watermarked in Java (allowed future skew 0.5 s)."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway
    from riskguard.flink.fused import KEYED_ROW, java_strings

    gateway = get_gateway()
    props = gateway.jvm.java.util.Properties()
    props.setProperty("bootstrap.servers", bootstrap)
    return DataStream(gateway.jvm.riskguard.flink.kafka.KafkaIo.source(
        env._j_stream_execution_environment, props, java_strings(topics), "ticks-test", True,
        600_000, 1_000, 500, "k", KEYED_ROW.get_java_type_info(), "in"))


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
