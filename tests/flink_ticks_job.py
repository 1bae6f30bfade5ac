"""A Flink job that ``tests/test_flink.py`` runs in the Flink environment: rows of two
keys, out of order, one without event time, through
:func:`riskguard.flink.fused.tick_batches`; each batch it makes printed as a JSON line."""

from __future__ import annotations

import json
import sys

MS = 1_000_000
ROWS = [  # (segment key, (input, event time ns, source, position, bytes)), as they arrive
    ("a", ("in", 1_500 * MS, "t/1", 3, b"x")),
    ("a", ("in", 1_200 * MS, "t/0", 9, b"y")),
    ("a", ("in", 1_200 * MS, "t/0", 4, b"z")),
    ("a", ("acks", None, "acks/0", 0, b"n")),
    ("b", ("in", 1_100 * MS, "t/0", 1, b"b")),
    ("a", ("in", 2_500 * MS, "t/1", 4, b"w")),
]


def main() -> int:
    from pyflink.common import Row, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from riskguard.flink.fused import KEYED_ROW, tick_batches, worker_processes
    from riskguard.flink.java_build import job_jars

    worker_processes()
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)
    env.add_jars(*job_jars())
    rows = env.from_collection([Row(k, Row(*v)) for k, v in ROWS], type_info=KEYED_ROW)
    batches = tick_batches(rows, 1000, ("in",), "test")
    # each batch: its tick's last ms, whether late, and its rows
    out = batches.map(lambda b: json.dumps(
        [b[0], b[1], [[r[0], r[1], r[2], r[3], bytes(r[4]).decode()] for r in b[2]]]),
        output_type=Types.STRING())
    with out.execute_and_collect() as results:
        for line in results:
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
