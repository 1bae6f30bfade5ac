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

Order: the Flink source hands over messages as its fetches come, so the flow's first
step (:class:`~riskguard.connectors.kafka.merge.PartitionMerge`, one task) admits each
partition's messages and merges them in event-time order, waiting for a partition
that is behind (never for one that is caught up); the watermark of every keyed step
after it comes from that ordered stream. Each operator's uid is its step id, so a
checkpoint restores at another parallelism. Measured on the demo scenario published
to the dev broker with two partitions a topic (2026-11-25): bytewax's 12 commands and
no dead letter at parallelism 1 and 2, and through a kill of the whole job restored
at the other parallelism (``tests/test_flink.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from riskguard.connectors.audit_tail import read_chains_and_peers
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.connectors.kafka.consumer import list_partitions
from riskguard.connectors.kafka.merge import BrokerEnds, Frontier, PartitionMerge
from riskguard.connectors.topics import INPUT_STREAMS, STREAM_TYPES
from riskguard.dataflows.backtest import DiscardSink
from riskguard.dataflows.guard.config import GuardConfig, load_guard_config, load_keys
from riskguard.dataflows.guard.core import guard_core
from riskguard.dataflows.guard.kafka_io import audit_key, exposures_key
from riskguard.dataflows.guard.live import check_peer_configs, prepare_detection
from riskguard.flink.graph import FlowRef
from riskguard.operators.core.base import split_dead_letters, stateful_logic
from riskguard.operators.core.clock import system_clock
from riskguard.schemas import encode
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


def _merge(cfg: GuardConfig) -> Callable[[Any], PartitionMerge]:
    admission = _admission(cfg)
    acks = cfg.topic("acks")
    parts = [(t, i) for t in (cfg.topic(s) for s in INPUT_STREAMS) if t != acks
             for i in list_partitions(cfg.kafka, t)]
    ends = BrokerEnds(cfg.kafka)

    def build(resume: Any) -> PartitionMerge:
        return PartitionMerge(admission, ends, parts, clock=system_clock,
                              untimed=frozenset({acks}), resume=resume)

    return build


def _admitted(recs: list[tuple[str, Any]]) -> list[Any]:
    return [r for _k, r in recs if type(r) is not Frontier]


MERGE_STEP = "riskguard_guard.admit.stateful"
"""The step that merges the input partitions in event-time order: it runs as one task,
and the watermark of the keyed steps after it comes from its output."""


def guard_flow(config: str) -> Dataflow:
    """The live guard's flow, with its input step ``kafka`` taking ``(topic, partition,
    offset, value)`` messages and an output step per topic in :data:`OUTPUT_STREAMS`: the
    factory each Flink worker builds its copy from."""
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
    msgs: Any = op.key_on("as_one", op.input("kafka", flow, TestingSource([])),
                          lambda _m: "all")
    admitted = split_dead_letters("admitted", op.flat_map_batch(
        "admit_unkey", stateful_logic("admit", msgs, _merge(cfg)), _admitted))
    out = guard_core("guard", admitted.oks, cfg=cfg, cfg_hash=digest, clock=system_clock,
                     signer=signer, trust=trust, seq_floor=delivered, audit_resume=chains,
                     wall_clock=system_clock, input_errs=admitted.errs)
    for name in OUTPUT_STREAMS:
        op.output(name, getattr(out, name), DiscardSink())
    return flow


def _keyer(name: str, issuer: str) -> Callable[[Any], bytes | None]:
    if name == "commands":
        return lambda _env: issuer.encode()
    if name == "exposures":
        return lambda rec: exposures_key(rec).encode()
    if name == "audit":
        return lambda rec: audit_key(rec).encode()
    return lambda _rec: None


class _ToRow:
    """A record as the sink table's row: its Kafka key and its encoded value."""

    def __init__(self, name: str, issuer: str) -> None:
        self.name = name
        self.issuer = issuer
        self.key: Callable[[Any], bytes | None] | None = None
        self.row: Any = None

    def __call__(self, rec: Any) -> Any:
        if self.key is None:  # in the worker, once
            from pyflink.common import Row  # noqa: PLC0415

            self.row, self.key = Row, _keyer(self.name, self.issuer)
        return self.row(self.key(rec), encode(rec))


def _message(row: Any) -> tuple[str, int, int, bytes | None]:
    value = row["value"]
    return row["topic"], row["partition"], row["offset"], None if value is None else bytes(value)


def _kafka_options(cfg: GuardConfig) -> str:
    props = {k: v for k, v in cfg.kafka.client_config().items() if isinstance(v, str | int)}
    return ", ".join(f"'properties.{k}' = '{v}'" for k, v in sorted(props.items()))


def latest_checkpoint(checkpoints: str) -> str | None:
    """The newest retained checkpoint (``.../<job>/chk-N``) under ``checkpoints``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("j1/chk-3", "j1/chk-12", "j2/shared"): (d / n).mkdir(parents=True)
    >>> for n in ("j1/chk-3", "j1/chk-12"): (d / n / "_metadata").write_bytes(b"")
    >>> latest_checkpoint(str(d)).endswith("chk-12")
    True
    """
    root = Path(checkpoints.removeprefix("file://"))
    found = [p for p in root.glob("*/chk-*") if (p / "_metadata").exists()]
    if not found:
        return None
    return str(max(found, key=lambda p: (p.stat().st_mtime, int(p.name[4:]))))


def run(config: str, *, parallelism: int | None = None, checkpoints: str | None = None,
        interval_ms: int = 2000, restore: str | None = None, jars: Sequence[str] = ()) -> None:
    """Run the guard on Flink until cancelled (a local mini-cluster when run directly,
    the cluster's when submitted)."""
    from pyflink.common import Configuration, Types, WatermarkStrategy  # noqa: PLC0415
    from pyflink.datastream import StreamExecutionEnvironment  # noqa: PLC0415
    from pyflink.table import StreamTableEnvironment  # noqa: PLC0415
    from riskguard.flink.functions import MergedTimeMs  # noqa: PLC0415
    from riskguard.flink.job import PICKLED, Placement, to_flink  # noqa: PLC0415

    cfg, _digest = load_guard_config(config)
    conf = Configuration()
    # small Python bundles: a watermark reaches the keyed steps only between bundles
    conf.set_string("python.fn-execution.bundle.size", "1000")
    conf.set_string("python.fn-execution.bundle.time", "100")
    conf.set_string("pipeline.auto-watermark-interval", "50 ms")
    if checkpoints:
        conf.set_string("execution.checkpointing.dir", checkpoints)
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention",
                        "RETAIN_ON_CANCELLATION")
    if restore == "latest":
        restore = latest_checkpoint(checkpoints) if checkpoints else None
    if restore:
        conf.set_string("execution.state-recovery.path", restore)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if parallelism is not None:
        env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    env.enable_checkpointing(interval_ms)
    if jars:
        env.add_jars(*jars)
    tables = StreamTableEnvironment.create(env)
    # the Kafka source's and sinks' operators get uids too, for the same reason as the
    # flow's steps (riskguard.flink.job): a checkpoint restores at another parallelism
    tables.get_config().set("table.exec.uid.generation", "ALWAYS")
    topics = ";".join(cfg.topic(s) for s in INPUT_STREAMS)
    group = f"riskguard-flink-{cfg.env}"
    start = "earliest-offset" if cfg.input.starting_offset == "earliest" else "latest-offset"
    # raw messages in the order the source reads them: the flow's first step merges
    # the partitions in event-time order, and the watermark comes from its output
    tables.execute_sql(f"""
        CREATE TABLE riskguard_in (
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL
        ) WITH ('connector' = 'kafka', 'topic' = '{topics}',
                'properties.group.id' = '{group}', 'scan.startup.mode' = '{start}',
                'value.format' = 'raw', {_kafka_options(cfg)})""")
    msgs = tables.to_data_stream(tables.from_path("riskguard_in")).map(
        _message, output_type=PICKLED).uid("kafka.messages")
    ref = FlowRef("riskguard.flink.guard:guard_flow", (str(config),))
    merged = (WatermarkStrategy.for_monotonous_timestamps()
              .with_timestamp_assigner(MergedTimeMs()))
    outs = to_flink(ref, {"kafka": msgs}, watermarks={MERGE_STEP: merged},
                    placement=Placement({MERGE_STEP: 1}, frozenset({MERGE_STEP}), uids=True))
    signer_issuer = cfg.sign.issuer or load_keys(cfg)[0].issuer
    sinks = tables.create_statement_set()
    row = Types.ROW_NAMED(["k", "v"], [Types.PRIMITIVE_ARRAY(Types.BYTE()),
                                       Types.PRIMITIVE_ARRAY(Types.BYTE())])
    for name in OUTPUT_STREAMS:
        if name not in outs:
            continue
        table = f"riskguard_{name}"
        tables.execute_sql(f"""
            CREATE TABLE {table} (`k` BYTES, `v` BYTES)
            WITH ('connector' = 'kafka', 'topic' = '{cfg.topic(name)}',
                  'key.format' = 'raw', 'key.fields' = 'k',
                  'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
                  'sink.delivery-guarantee' = 'at-least-once', {_kafka_options(cfg)})""")
        rows = outs[name].map(_ToRow(name, signer_issuer), output_type=row).uid(
            f"{name}.rows")
        sinks.add_insert(table, tables.from_data_stream(rows))
    sinks.attach_as_datastream()
    env.execute(f"riskguard guard {cfg.env}")


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
