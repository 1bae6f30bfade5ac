"""The live guard as a Flink job: the same config file, topics, signing and audit as
``riskguard run`` on bytewax.

    python -m riskguard.flink.guard --config guard.toml --parallelism 2 \\
        --checkpoints file:///var/lib/riskguard/checkpoints

Kafka goes through the Flink Kafka connector (its SQL table factory, whose metadata
columns give each message's topic, partition and offset, so a bad message becomes a
dead letter naming them). The connector's jars (``flink-connector-kafka`` and
``kafka-clients``) come from ``--jars`` or ``$RISKGUARD_FLINK_JARS`` (``;``-separated
``file://`` URLs); a cluster image has them in ``/opt/flink/lib``. Checkpoints carry
every logic's state and the source offsets; sinks are at-least-once, and what a
restart writes twice has the same ids (the verifying subscriber drops the copy).
``--restore`` resumes from a checkpoint or savepoint; ``--restore latest`` from the
newest retained checkpoint under ``--checkpoints``.

Time and order are Flink's, in Java: the input table declares each message's event
time (its ``ts`` field; the Kafka timestamp for a record without one) and a watermark,
which the Kafka source keeps per partition, with an idle timeout. Java makes each
tick's messages one row when the watermark passes the tick, in event time and then
partition and offset order (:func:`~riskguard.flink.fused.tick_batches`), and the flow
runs as one Python operator (:class:`~riskguard.flink.fused.TickBatchSegment`) fed a
tick at a time. Each operator's uid is stable, so a checkpoint restores at another
parallelism.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from riskguard.connectors.audit_tail import read_chains_and_peers
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.connectors.topics import INPUT_STREAMS, STREAM_TYPES
from riskguard.dataflows.backtest import DiscardSink
from riskguard.dataflows.guard.config import GuardConfig, load_guard_config, load_keys
from riskguard.dataflows.guard.core import guard_core
from riskguard.dataflows.guard.kafka_io import audit_key, exposures_key
from riskguard.dataflows.guard.live import check_peer_configs, prepare_detection
from riskguard.flink.graph import FlowRef
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import system_clock
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy

from riskguard.errors import ConfigError

JARS_ENV = "RISKGUARD_FLINK_JARS"
OUTPUT_STREAMS = ("commands", "dead_letters", "signals", "exposures", "audit")


def _admission(cfg: GuardConfig) -> Callable[[Any], PartitionAdmission]:
    codec = Codec(topic_types={cfg.topic(s): STREAM_TYPES[s] for s in INPUT_STREAMS})
    policy = EventTimePolicy(
        max_lateness_ns=cfg.input.max_lateness_ns,
        max_future_skew_ns=cfg.input.max_future_skew_ns,
        clock=system_clock if cfg.input.check_future else None)
    untimed = frozenset({cfg.topic("acks")})

    def build(resume: Any) -> PartitionAdmission:
        return PartitionAdmission(codec, policy, clock=system_clock,
                                  stamp_recv_ts=cfg.input.stamp_recv_ts, untimed=untimed,
                                  resume=resume)

    return build


def _partition_of(msg: tuple[str, int, int, bytes | None]) -> str:
    return f"{msg[0]}/{msg[1]}"


def guard_flow(config: str) -> Dataflow:
    """The live guard's flow, with its input step ``kafka`` taking ``(topic, partition,
    offset, value)`` messages (each partition's admission, with its lateness watermark,
    in keyed state) and an output step per topic in :data:`OUTPUT_STREAMS`: the factory
    each Flink worker builds its copy from."""
    cfg, digest = load_guard_config(config)
    if cfg.tier.role != "whole":
        raise ConfigError("tier.role", "'whole' (the tiers run on bytewax)", cfg.tier.role)
    prepare_detection(cfg)
    signer, trust = load_keys(cfg)
    issuer = cfg.sign.issuer or signer.issuer
    delivered = last_signed_seq(cfg.kafka, cfg.topic("commands"), signer.public_key, issuer)
    chains, peers = read_chains_and_peers(cfg.kafka, cfg.topic("audit"), trust.checkpoint_key,
                                          origin=cfg.audit.origin)
    if cfg.replica.id:
        check_peer_configs(cfg.replica.id, digest, peers)
    flow = Dataflow("riskguard_guard")
    msgs: Any = op.key_on("partition", op.input("kafka", flow, TestingSource([])),
                          _partition_of)
    admitted = split_dead_letters("admitted", op.flat_map_batch(
        "admit_unkey", stateful_logic("admit", msgs, _admission(cfg)), values_of))
    out = guard_core("guard", admitted.oks, cfg=cfg, cfg_hash=digest, clock=system_clock,
                     signer=signer, trust=trust, seq_floor=delivered, audit_resume=chains,
                     wall_clock=system_clock, input_errs=admitted.errs)
    for name in OUTPUT_STREAMS:
        op.output(name, getattr(out, name), DiscardSink())
    return flow


def _keyer(name: str, issuer: str) -> Callable[[Any], str | None]:
    if name == "commands":
        return lambda _env: issuer
    if name == "exposures":
        return exposures_key
    if name == "audit":
        return audit_key
    return lambda _rec: None


def sink_keys(config: str) -> dict[str, Callable[[Any], str | None]]:
    """The Kafka key of each output topic's records (the segment's sink rows carry it)."""
    cfg, _digest = load_guard_config(config)
    issuer = cfg.sign.issuer or load_keys(cfg)[0].issuer
    return {name: _keyer(name, issuer) for name in OUTPUT_STREAMS}


def _kafka_options(cfg: GuardConfig) -> str:
    props = {k: v for k, v in cfg.kafka.client_config().items() if isinstance(v, str | int)}
    return ", ".join(f"'properties.{k}' = '{v}'" for k, v in sorted(props.items()))


def latest_checkpoint(checkpoints: str) -> str | None:
    """The newest retained checkpoint (``.../<job>/chk-N``) under ``checkpoints``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("j1/chk-3", "j1/chk-12", "j2/shared"): (d / n).mkdir(parents=True)
    >>> for n in ("j1/chk-3", "j1/chk-12"): _ = (d / n / "_metadata").write_bytes(b"")
    >>> latest_checkpoint(str(d)).endswith("chk-12")
    True
    """
    root = Path(checkpoints.removeprefix("file://"))
    found = [p for p in root.glob("*/chk-*") if (p / "_metadata").exists()]
    if not found:
        return None
    return str(max(found, key=lambda p: (p.stat().st_mtime, int(p.name[4:]))))


TS_NS = "TRY_CAST(JSON_VALUE(CAST(`value` AS STRING), '$.ts') AS BIGINT)"
"""A message's event time (ns) as Flink SQL reads it: its ``ts`` field, if it has one."""


def _day_to_second(ns: int) -> str:
    """``ns`` as a SQL ``DAY TO SECOND`` interval's text.

    >>> _day_to_second(90_061_500_000_000)
    '1 01:01:01.500'
    """
    ms = ns // 1_000_000
    days, ms = divmod(ms, 86_400_000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{days} {hours:02d}:{minutes:02d}:{ms // 1000:02d}.{ms % 1000:03d}"


IDLE_TIMEOUT = "10 s"
"""A partition that sends nothing for this long (processing time, not counted while the
source is back-pressured or paused: Flink's ``PausableRelativeClock``) stops holding the
watermark back: most input topics are quiet most of the time. Shorter, a source subtask
slow to make its first fetch (a loaded machine, a restart) is passed over and its
records come late; the price is that output starts that long after a start where some
partition has nothing to read."""

FETCH_BYTES = 64 * 1024
"""The most one fetch takes from one partition: a backlog's partitions then arrive
interleaved, not one partition's whole backlog before the next one's first record (which
its idle timeout would have passed over by then). This also keeps how far one partition
reads ahead of the slowest, and so the rows the tick windows hold, small. Flink's
watermark alignment would bound it outright, but it paused the source so often that a
backlog was read at half the rate (4,706 against 9,478 events/s from the first input,
six demo copies, two runs in a row, 2026-11-27, ``bench/guard_engines.py``)."""



def _input_table(cfg: GuardConfig) -> str:
    """The input topics as a table whose rows carry their event time and a watermark,
    all computed in Java. A record without ``ts`` (a signed envelope) takes the Kafka
    timestamp; event time beyond the Kafka timestamp plus the allowed future skew is
    cut there, so a record from the future cannot carry a partition's watermark away
    (the flow's admission dead-letters it)."""
    topics = ";".join(cfg.topic(s) for s in INPUT_STREAMS)
    group = f"riskguard-flink-{cfg.env}"
    start = "earliest-offset" if cfg.input.starting_offset == "earliest" else "latest-offset"
    skew = _day_to_second(cfg.input.max_future_skew_ns)
    return f"""
        CREATE TABLE riskguard_in (
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `kts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          `rt` AS LEAST(COALESCE(TO_TIMESTAMP_LTZ({TS_NS} / 1000000, 3), kts),
                        kts + INTERVAL '{skew}' DAY TO SECOND(3)),
          WATERMARK FOR `rt` AS `rt` - INTERVAL '0.001' SECOND
        ) WITH ('connector' = 'kafka', 'topic' = '{topics}',
                'properties.group.id' = '{group}', 'scan.startup.mode' = '{start}',
                'value.format' = 'raw',
                'properties.max.partition.fetch.bytes' = '{FETCH_BYTES}',
                'scan.watermark.idle-timeout' = '{IDLE_TIMEOUT}',
                {_kafka_options(cfg)})"""


def scratch_checkpoints() -> str:
    """A ``file://`` folder for the checkpoints of a run not given one, removed when
    the process ends (a restart within the run resumes from it; a new run does not)."""
    folder = Path(tempfile.mkdtemp(prefix="riskguard-flink-checkpoints-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder.as_uri()


def run(config: str, *, parallelism: int | None = None, checkpoints: str | None = None,
        interval_ms: int = 2000, restore: str | None = None, jars: Sequence[str] = ()) -> None:
    """Run the guard on Flink until cancelled (a local mini-cluster when run directly,
    the cluster's when submitted)."""
    from pyflink.common import Configuration  # noqa: PLC0415
    from pyflink.datastream import StreamExecutionEnvironment  # noqa: PLC0415
    from pyflink.table import StreamTableEnvironment  # noqa: PLC0415
    from riskguard.flink.fused import (  # noqa: PLC0415
        KEYED_ROW,
        ROW,
        TickBatchSegment,
        tick_batches,
        worker_processes,
    )
    from riskguard.flink.java_build import job_jars  # noqa: PLC0415
    from riskguard.flink.plan import SegmentPlan  # noqa: PLC0415

    worker_processes()
    cfg, _digest = load_guard_config(config)
    env = StreamExecutionEnvironment.get_execution_environment(
        _job_configuration(Configuration(), checkpoints, restore))
    if parallelism is not None:
        env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    env.enable_checkpointing(interval_ms)
    jars = [*jars, *job_jars()]
    if jars:
        env.add_jars(*jars)
    tables = StreamTableEnvironment.create(env)
    # the Kafka source's and sinks' operators get uids too: a checkpoint restores at
    # another parallelism
    tables.get_config().set("table.exec.uid.generation", "ALWAYS")
    tables.execute_sql(_input_table(cfg))
    ref = FlowRef("riskguard.flink.guard:guard_flow", (str(config),))
    msgs = tables.to_append_stream(tables.sql_query(
        f"SELECT CAST('guard' AS STRING), ROW(CAST('kafka' AS STRING), {TS_NS}, "
        "`topic` || '/' || CAST(`partition` AS STRING), `offset`, `value`) "
        "FROM riskguard_in"), KEYED_ROW)
    plan = SegmentPlan.whole(ref.steps(), {"kafka": "kafka"},
                             sink_keys=("riskguard.flink.guard:sink_keys", (str(config),)))
    # Java makes each tick's messages one row; the flow is one segment under one key,
    # fed a tick at a time, as one bytewax worker runs it
    ticks = tick_batches(msgs, cfg.tick_ns, ("kafka",), "riskguard_guard")
    out = ticks.process(TickBatchSegment(ref, plan, commit_ms=interval_ms),
                        output_type=ROW).uid("riskguard_segment").name("riskguard_segment")
    out.disable_chaining()
    tables.create_temporary_view("riskguard_out", tables.from_data_stream(out))
    _kafka_sinks(tables, cfg)
    env.execute(f"riskguard guard {cfg.env}")


def _job_configuration(conf: Any, checkpoints: str | None, restore: str | None) -> Any:
    """``conf`` set for the guard's job: prompt watermarks, and where checkpoints go and
    which one the job restores (``restore="latest"``: the newest in ``checkpoints``)."""
    # a watermark reaches the segment between bundles: small ones keep output prompt
    conf.set_string("python.fn-execution.bundle.time", "100")
    conf.set_string("pipeline.auto-watermark-interval", "50 ms")
    if checkpoints:
        conf.set_string("execution.checkpointing.dir", checkpoints)
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention",
                        "RETAIN_ON_CANCELLATION")
    else:
        # without a folder Flink keeps checkpoints in the JobManager's memory, at most
        # 5 MiB a state handle: the segment's snapshot of a backlog is larger, its
        # checkpoint fails and the job restarts from the start, over and over
        conf.set_string("execution.checkpointing.dir", scratch_checkpoints())
    if restore == "latest":
        restore = latest_checkpoint(checkpoints) if checkpoints else None
    if restore:
        conf.set_string("execution.state-recovery.path", restore)
    return conf


def _kafka_sinks(tables: Any, cfg: GuardConfig) -> None:
    """One Kafka table per output stream, each fed the segment's rows for it."""
    sinks = tables.create_statement_set()
    for name in OUTPUT_STREAMS:
        table = f"riskguard_{name}"
        tables.execute_sql(f"""
            CREATE TABLE {table} (`k` BYTES, `v` BYTES)
            WITH ('connector' = 'kafka', 'topic' = '{cfg.topic(name)}',
                  'key.format' = 'raw', 'key.fields' = 'k',
                  'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
                  'sink.delivery-guarantee' = 'at-least-once', {_kafka_options(cfg)})""")
        sinks.add_insert_sql(f"INSERT INTO {table} SELECT ENCODE(src, 'UTF-8'), v "
                             f"FROM riskguard_out WHERE port = '{name}'")
    sinks.attach_as_datastream()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskguard.flink.guard",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the guard's TOML config")
    ap.add_argument("--parallelism", type=int,
                    help="default: the cluster's (parallelism.default)")
    ap.add_argument("--checkpoints", help="checkpoint storage (file:// or s3:// URL)")
    ap.add_argument("--checkpoint-interval-ms", type=int, default=2000)
    ap.add_argument("--restore", help="a checkpoint or savepoint path, or 'latest'")
    ap.add_argument("--jars", help=f"';'-separated jar URLs (default ${JARS_ENV})")
    args = ap.parse_args(argv)
    jars = (args.jars or os.environ.get(JARS_ENV, "")).split(";")
    run(args.config, parallelism=args.parallelism, checkpoints=args.checkpoints,
        interval_ms=args.checkpoint_interval_ms, restore=args.restore,
        jars=[j for j in jars if j])
    return 0


if __name__ == "__main__":
    from riskguard.flink.guard import main as module_main

    sys.exit(module_main())
