"""The guard's backtest on Flink: the flow :func:`riskguard.dataflows.backtest.backtest_flow`
builds, run as a Flink job on a local mini-cluster over a JSONL file of records.

    python -m riskguard.flink.backtest --config guard.toml --records in.jsonl \\
        --parallelism 2 --out results/

writes ``commands.jsonl``, ``signals.jsonl``, ``utilization.jsonl``, ``audit.jsonl`` and
``dead_letters.jsonl`` as ``riskguard backtest`` does.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
from bytewax.dataflow import Dataflow
from riskguard.dataflows.backtest import OUTPUTS, backtest_flow
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.flink.graph import FlowRef
from riskguard.schemas import Codec, encode
from riskguard.schemas.types import INT64_MAX

_CODEC = Codec(clock=lambda: 0)  # as replay reads JSONL: no receive stamp


def numbered_lines(path: str | Path) -> list[tuple[int, bytes]]:
    """The lines of a JSONL file that are not blank, each with its line number (from 0,
    blank lines counted) and without its line ending: where a dead letter says it was.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "in.jsonl"
    >>> _ = path.write_bytes(b'{"ts": 5}\\r\\n\\n  \\nnonsense')
    >>> numbered_lines(path)
    [(0, b'{"ts": 5}'), (3, b'nonsense')]
    """
    with Path(path).open("rb") as fh:
        return [(i, line.removesuffix(b"\n").removesuffix(b"\r"))
                for i, line in enumerate(fh) if line.strip()]


def read_records(path: str | Path) -> list[Any]:
    """The records (and dead letters, for lines that are not one) of a JSONL file of
    wire-contract records; a dead letter names the file and the line
    (:func:`numbered_lines`)."""
    name = Path(path).name
    return [_CODEC.decode(name, line, offset=i) for i, line in numbered_lines(path)]


def flow_ref(config: str | Path, batch_size: int) -> FlowRef:
    """The reference each process builds the backtest flow from (:func:`flow_for`)."""
    return FlowRef("riskguard.flink.backtest:flow_for", (str(config), batch_size))


def flow_for(config: str, batch_size: int = 100) -> Dataflow:
    """The backtest flow of ``config``, as each Flink worker builds it: over no records,
    as the job's source replaces its input step."""
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    return backtest_flow(cfg, digest, signer=signer, trust=trust, records=[],
                         batch_size=batch_size)


class _Ts(msgspec.Struct):
    ts: int | None = None


_TS = msgspec.json.Decoder(_Ts)


def source_rows(numbered: Iterable[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Each numbered JSONL line (:func:`numbered_lines`) as ``(event time ns, line number,
    bytes)``: a record without an event time (a signed envelope), with one no record may
    have (below 0 or past :data:`~riskguard.schemas.types.INT64_MAX`: the flow
    dead-letters it, as bytewax does) or a line that is not one takes the latest event
    time before it, so it goes with its neighbours and moves no watermark.

    >>> source_rows(enumerate([b'{"ts": 5}', b'{"payload": "x"}', b'nonsense', b'{"ts": 9}']))
    [(5, 0, b'{"ts": 5}'), (5, 1, b'{"payload": "x"}'), (5, 2, b'nonsense'), (9, 3, b'{"ts": 9}')]
    >>> [ts for ts, _i, _line in source_rows(enumerate([
    ...     b'{"ts": 5}', b'{"ts": 9223372036854775808}', b'{"ts": -7}', b'{"ts": 6}']))]
    [5, 5, 5, 6]
    """
    out: list[tuple[int, int, bytes]] = []
    last = 0
    for i, line in numbered:
        try:
            ts = _TS.decode(line).ts
        except msgspec.DecodeError:
            ts = None
        if type(ts) is int and 0 <= ts <= INT64_MAX:
            last = max(last, ts)
        out.append((last, i, line))
    return out


def write_rows_file(rows: list[tuple[int, int, bytes]]) -> Path:
    """``rows`` (:func:`source_rows`) as ``ts,pos,base64`` lines, in a folder removed
    when the process ends.

    >>> path = write_rows_file([(5, 0, b'{"ts": 5}')])
    >>> path.read_text()
    '5,0,eyJ0cyI6IDV9\\n'
    """
    folder = Path(tempfile.mkdtemp(prefix="riskguard-flink-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "records.csv"
    with path.open("w", encoding="ascii") as fh:
        for ts, pos, line in rows:
            fh.write(f"{ts},{pos},{base64.b64encode(line).decode()}\n")
    return path


MARKET_STEPS = ("admit", "feed_select", "features", "detect", "cross")
"""The guard core's operators whose keyed steps are the market domain: one segment
with them, another with the firm-wide rest (:meth:`SegmentPlan.cut`)."""


def market_steps(steps: dict[str, Any]) -> frozenset[str]:
    """The keyed steps of the guard core's market domain (:data:`MARKET_STEPS`)."""
    return frozenset(sid for sid, s in steps.items() if s.kind == "stateful_batch"
                     and any(f".guard.{n}." in sid for n in MARKET_STEPS))


def collect(stream: Any) -> Iterator[tuple[str, str]]:
    """Run the job whose outputs are ``stream`` (:func:`job`) and yield each output as
    ``(name, JSON text)``, in the order made."""
    with stream.execute_and_collect() as results:
        for lines in results:
            for line in lines.splitlines():
                name, _tab, text = line.partition("\t")
                yield name, text


def job(env: Any, config: str | Path, records: str | Path, *, parallelism: int = 1,
        batch_size: int = 100, segments: int = 1) -> Any:
    """The backtest laid onto ``env``: the records file as rows (:func:`_records_stream`),
    the flow as one segment or two (:func:`_segments`), and the outputs as strings of
    ``name TAB JSON text`` lines made in Java, several rows a string (a client collects
    a row with several JVM calls, a byte array a byte at a time)."""
    from pyflink.datastream import DataStream  # noqa: PLC0415
    from pyflink.java_gateway import get_gateway  # noqa: PLC0415
    from riskguard.flink.java_build import job_jars  # noqa: PLC0415

    ref = flow_ref(config, batch_size)
    cfg, _digest = load_guard_config(str(config))
    if jars := job_jars():
        env.add_jars(*jars)
    out = _segments(_records_stream(env, records), ref, cfg.tick_ns, segments,
                    Path(records).name)
    return DataStream(get_gateway().jvm.riskguard.flink.RecordsFile.texts(
        out._j_data_stream))


def _records_stream(env: Any, records: str | Path) -> Any:
    """The records file as :data:`~riskguard.flink.fused.KEYED_ROW` rows under one key,
    read, stamped with event time and watermarked in Java
    (``flink/java/RecordsFile.java``), so no Python function sees a record before the
    segment does."""
    from pyflink.datastream import DataStream  # noqa: PLC0415
    from pyflink.java_gateway import get_gateway  # noqa: PLC0415
    from riskguard.flink.fused import KEYED_ROW  # noqa: PLC0415

    rows_file = write_rows_file(source_rows(numbered_lines(records)))
    return DataStream(get_gateway().jvm.riskguard.flink.RecordsFile.rows(
        env._j_stream_execution_environment, rows_file.as_uri(), "all", "in",
        KEYED_ROW.get_java_type_info(), "riskguard_records"))


def _segments(src: Any, ref: FlowRef, tick_ns: int, segments: int, source: str) -> Any:
    """The flow over ``src`` (the records of the file named ``source``) fed a tick a
    call, as one segment or as two (``segments=2``: the market domain, then the
    firm-wide rest, each in a Python worker of its own);
    :data:`~riskguard.flink.fused.ROW` rows for the sinks."""
    from riskguard.flink.fused import (  # noqa: PLC0415
        KEYED_ROW,
        ROW,
        SINKS,
        TickBatchSegment,
        tick_batches,
    )
    from riskguard.flink.plan import SegmentPlan  # noqa: PLC0415

    steps = ref.steps()
    if segments == 1:
        # one segment under one key: the keyed steps inside key themselves
        plan = SegmentPlan.whole(steps, {"in": "records"}, sources={"in": source})
        return tick_batches(src, tick_ns, ("in",), "riskguard_backtest").process(
            TickBatchSegment(ref, plan), output_type=ROW).name(
            "riskguard_backtest").set_parallelism(1)
    market, firm = SegmentPlan.cut(steps, {"in": "records"}, market_steps(steps),
                                   route="all", sources={"in": source})
    first = tick_batches(src, tick_ns, ("in",), "riskguard_backtest_market").process(
        TickBatchSegment(ref, market), output_type=KEYED_ROW,
    ).name("riskguard_backtest.market").set_parallelism(1)
    # what the market segment made is stamped with its tick; the firm segment gets a
    # slot sharing group of its own: operators sharing a slot share a Python worker
    firm_ticks = tick_batches(src.union(first), tick_ns, ("in",), "riskguard_backtest_firm")
    out = firm_ticks.process(TickBatchSegment(ref, firm), output_type=ROW).name(
        "riskguard_backtest.firm").set_parallelism(1).slot_sharing_group("firm")
    return out.union(first.get_side_output(SINKS))


def local_slots(parallelism: int, segments: int) -> Any:
    """A mini-cluster's configuration with the slots a job needs: ``parallelism``, and
    one more for the firm segment's own slot sharing group."""
    from pyflink.common import Configuration  # noqa: PLC0415

    conf = Configuration()
    conf.set_string("taskmanager.numberOfTaskSlots", str(parallelism + segments - 1))
    return conf


def run(config: str | Path, records: str | Path, *, parallelism: int = 1,
        batch_size: int = 100, segments: int = 1) -> dict[str, list[Any]]:
    """Run the backtest on a local Flink mini-cluster; every output by name."""
    from pyflink.datastream import StreamExecutionEnvironment  # noqa: PLC0415
    from riskguard.flink.fused import launch_jvm, quick_jvm, worker_processes  # noqa: PLC0415

    worker_processes()
    quick_jvm()
    launch_jvm()
    flow_ref(config, batch_size).steps()  # built while the JVM starts; the job reuses it
    env = StreamExecutionEnvironment.get_execution_environment(
        local_slots(parallelism, segments))
    env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    found: dict[str, list[Any]] = {name: [] for name in OUTPUTS}
    for name, text in collect(job(env, config, records, parallelism=parallelism,
                                  batch_size=batch_size, segments=segments)):
        if name in found:
            found[name].append(_CODEC.decode(name, text.encode()))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskguard.flink.backtest",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--records", required=True, help="a JSONL file of records")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--segments", type=int, choices=(1, 2), default=1,
                    help="the flow as one segment, or as the market domain and the "
                         "firm-wide rest, each in a Python worker of its own")
    ap.add_argument("--out", required=True, help="folder for the outputs' JSONL files")
    args = ap.parse_args(argv)
    found = run(args.config, args.records, parallelism=args.parallelism,
                batch_size=args.batch_size, segments=args.segments)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in found.items():
        (out / f"{name}.jsonl").write_bytes(b"".join(encode(i) + b"\n" for i in items))
    print(" ".join(f"{name} {len(items)}" for name, items in found.items()))
    return 0


if __name__ == "__main__":
    # run as the module itself, so the functions Flink pickles are found by reference
    from riskguard.flink.backtest import main as module_main

    sys.exit(module_main())
