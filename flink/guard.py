"""The live guard as a Flink job: the same config file, topics, signing and audit as
``riskguard run`` on bytewax.

    python -m riskguard.flink.guard --config guard.toml --parallelism 2 \\
        --checkpoints file:///var/lib/riskguard/checkpoints

Kafka goes through the Flink Kafka connector, set up in Java
(``flink/java/kafka/KafkaIo.java``), whose jars come from ``--jars`` or
``$RISKGUARD_FLINK_JARS`` (``;``-separated ``file://`` URLs). Checkpoints carry every
logic's state and the source offsets; sinks are at-least-once, and what a restart writes
twice has the same ids. Event time, watermarks and each tick's row are made in Java; the
flow runs as one Python operator (:class:`~riskguard.flink.fused.TickBatchSegment`) fed a
tick at a time, with stable uids so a checkpoint restores at another parallelism. See
docs/engines.md.
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
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.connectors.topics import INPUT_STREAMS, STREAM_TYPES
from riskguard.dataflows.backtest import DiscardSink
from riskguard.dataflows.guard.config import (
    GuardConfig,
    apply_gc_policy,
    load_guard_config,
    load_keys,
)
from riskguard.dataflows.guard.core import guard_core
from riskguard.dataflows.guard.kafka_io import OUTPUT_STREAMS, output_keys
from riskguard.dataflows.guard.live import (
    check_peer_configs,
    read_guard_audit,
    read_signed_seq,
    report_audit_tail,
    while_preparing_detection,
)
from riskguard.flink.graph import FlowRef
from riskguard.operators.audit import AuditState
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import call_clock
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy

from riskguard.environment import FLINK_JARS, FLINK_TRACE, check_environment
from riskguard.errors import ConfigError


def _admission(cfg: GuardConfig) -> Callable[[Any], PartitionAdmission]:
    codec = Codec(topic_types={cfg.topic(s): STREAM_TYPES[s] for s in INPUT_STREAMS},
                  clock=call_clock)
    policy = EventTimePolicy(
        max_lateness_ns=cfg.input.max_lateness_ns,
        max_future_skew_ns=cfg.input.max_future_skew_ns,
        max_lead_ns=cfg.input.max_lead_ns,
        clock=call_clock if cfg.input.check_future else None)
    untimed = frozenset({cfg.topic("acks")})

    def build(resume: Any) -> PartitionAdmission:
        return PartitionAdmission(codec, policy, clock=call_clock,
                                  stamp_recv_ts=cfg.input.stamp_recv_ts, untimed=untimed,
                                  resume=resume)

    return build


def _partition_of(msg: tuple[str, int, int, bytes | None]) -> str:
    return f"{msg[0]}/{msg[1]}"


def guard_flow(config: str, resume: bool = True) -> Dataflow:
    """The live guard's flow, with its input step ``kafka`` taking ``(topic, partition,
    offset, value)`` messages (each partition's admission, with its lateness watermark,
    in keyed state) and an output step per topic in :data:`OUTPUT_STREAMS`: the factory
    each Flink worker builds its copy from. ``resume=False`` builds the same steps
    without reading where the signing sequence and the audit chains stand (the client
    plans the job from it; each worker reads them), but still checks a replica's peers."""
    cfg, digest = load_guard_config(config)
    if cfg.tier.role != "whole":
        raise ConfigError("tier.role", "'whole' (the tiers run on bytewax)", cfg.tier.role)
    signer, trust = load_keys(cfg)
    issuer = cfg.sign.issuer or signer.issuer
    delivered = 0
    chains: dict[str, AuditState] = {}
    peers: dict[str, str] = {}

    def read_chains() -> tuple[dict[str, AuditState], dict[str, str]]:
        tail = read_guard_audit(cfg, signer, trust)
        report_audit_tail(cfg, tail, call_clock(), None)
        return tail.chains, tail.peers

    if resume:
        delivered, (chains, peers) = while_preparing_detection(cfg, lambda: (
            read_signed_seq(cfg, signer.public_key, issuer, trust),
            read_chains()))
    elif cfg.replica.id:
        chains, peers = read_chains()
    if cfg.replica.id:
        check_peer_configs(cfg.replica.id, digest, peers)
    flow = Dataflow("riskguard_guard")
    msgs: Any = op.key_on("partition", op.input("kafka", flow, TestingSource([])),
                          _partition_of)
    admitted = split_dead_letters("admitted", op.flat_map_batch(
        "admit_unkey", stateful_logic("admit", msgs, _admission(cfg)), values_of))
    out = guard_core("guard", admitted.oks, cfg=cfg, cfg_hash=digest, clock=call_clock,
                     signer=signer, trust=trust, seq_floor=delivered, audit_resume=chains,
                     wall_clock=call_clock, input_errs=admitted.errs)
    for name in OUTPUT_STREAMS:
        op.output(name, getattr(out, name), DiscardSink())
    return flow


def worker_flow(config: str) -> Dataflow:
    """:func:`guard_flow` as a Flink worker builds it to run it: with Python's garbage
    collector tuned as the bytewax guard's process is
    (:func:`~riskguard.dataflows.guard.apply_gc_policy`), so that the records in flight
    die young and full collections of the models' and the state's heap stay rare."""
    flow = guard_flow(config)
    apply_gc_policy(load_guard_config(config)[0])
    return flow


def sink_keys(config: str) -> dict[str, Callable[[Any], str]]:
    """The Kafka key of each output topic's records (the segment's sink rows carry it):
    :func:`~riskguard.dataflows.guard.kafka_io.output_keys`, as the bytewax guard's."""
    cfg, _digest = load_guard_config(config)
    issuer = cfg.sign.issuer or load_keys(cfg)[0].issuer
    return output_keys(issuer)


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


START_QUIET_MS = 3_000
"""A partition that has sent nothing since the job started stops holding the watermark
back after this long (processing time, not counted while the source is back-pressured
or paused: Flink's ``PausableRelativeClock``): most input topics are empty or quiet, and
no tick goes on, nor does the Python worker build its flow, before they are passed over.
One source subtask reads every partition, so all of them wait on the same first fetch;
the wait covers a broker that answers its first fetch later than the others (a slower
connection), whose partitions' first records would otherwise come late."""

QUIET_MS = 1_000
"""A partition that has sent a message and then nothing for this long stops holding the
watermark back. After an ack or a limit update on a quiet topic, the ticks of every
other partition wait at most this long (plus the watermark interval), not
:data:`START_QUIET_MS`. A partition
with a backlog is never this quiet: one fetch takes from every partition of a subtask
(:data:`FETCH_BYTES`), and the clock stops while the
job is back-pressured."""

ALL_QUIET_MS = 10_000
"""Once every partition that has sent a message has then sent nothing for this long, the
watermark moves past the tick of the newest event time, so the records before a lull
(fills, acks, the last prices before a feed outage) go on, rather than wait in their
tick for the next message. The guard's idle time for a silent source
(``TICK_IDLE_NS``), far longer than :data:`QUIET_MS`: a source starved of CPU can go
seconds without a fetch while its partitions still have records, which would then
come behind the watermark; a lull lasts."""

FETCH_BYTES = 64 * 1024
"""The most one fetch takes from one partition. The Kafka consumer hands on one
partition's fetched records before the next one's, so a partition's first records wait
behind every other partition's fetch: at 64 KiB a backlog's partitions arrive
interleaved, each heard within the first round, where at Kafka's default of 1 MiB a
partition's whole backlog can come before the next one's first record, which the quiet
rule would have passed over by then. This also keeps how far one partition reads ahead
of the others, and so the rows the tick windows hold, small. Flink's watermark alignment
would bound it outright, but it pauses the source so often that a backlog is read far more
slowly (docs/engines.md)."""


FETCH_WAIT_MS = 100
"""The longest the broker may hold a fetch that finds no data. The consumer sends one
fetch at a time to a broker, and a partition whose fetched records are all handed on
is fetched again only in the next: held for Kafka's default of 500 ms, that fetch keeps
the worker waiting for its next tick. Too short a hold re-sends every empty partition's
fetch back to back and loads the broker, until a round of fetches takes so long that
the quiet rule passes over partitions with a backlog (both measured in
docs/engines.md)."""


def set_fetches(props: Any) -> None:
    """Sets how the source's consumer fetches on ``props`` (Java ``Properties``): at most
    :data:`FETCH_BYTES` a partition, a fetch that finds no data held at most
    :data:`FETCH_WAIT_MS`."""
    props.setProperty("max.partition.fetch.bytes", str(FETCH_BYTES))
    props.setProperty("fetch.max.wait.ms", str(FETCH_WAIT_MS))


def _kafka_io(cfg: GuardConfig, env: Any, gateway: Any) -> Any:
    """The input topics as :data:`~riskguard.flink.fused.KEYED_ROW` rows under the one
    segment key, stamped and watermarked in Java (``flink/java/kafka/KafkaIo.java``): a
    record more than ``input.max_lead_ns`` ahead of its partition's time moves no
    watermark and opens no tick until the next record judges it, as the admission does."""
    from riskguard.flink.fused import KEYED_ROW, java_strings  # noqa: PLC0415

    topics = java_strings([cfg.topic(s) for s in INPUT_STREAMS])
    props = _kafka_properties(cfg, gateway)
    set_fetches(props)
    return gateway.jvm.riskguard.flink.kafka.KafkaIo.source(
        env._j_stream_execution_environment, props, topics, f"riskguard-flink-{cfg.env}",
        cfg.input.starting_offset == "earliest", START_QUIET_MS, QUIET_MS, ALL_QUIET_MS,
        max(1, cfg.tick_ns // 1_000_000), cfg.input.max_future_skew_ns // 1_000_000,
        cfg.input.max_lead_ns, "guard", KEYED_ROW.get_java_type_info(), "riskguard_in")


def _kafka_properties(cfg: GuardConfig, gateway: Any) -> Any:
    props = gateway.jvm.java.util.Properties()
    for k, v in cfg.kafka.client_config().items():
        if isinstance(v, str | int):
            props.setProperty(k, str(v))
    return props


def scratch_checkpoints() -> str:
    """A ``file://`` folder for the checkpoints of a run not given one, removed when
    the process ends (a restart within the run resumes from it; a new run does not)."""
    folder = Path(tempfile.mkdtemp(prefix="riskguard-flink-checkpoints-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder.as_uri()


def run(config: str, *, parallelism: int | None = None, checkpoints: str | None = None,
        interval_ms: int = 2000, restore: str | None = None, jars: Sequence[str] = (),
        allow_dropped_state: bool = False) -> None:
    """Run the guard on Flink until cancelled (a local mini-cluster when run directly,
    the cluster's when submitted). A restored checkpoint or savepoint holding state for
    a step the flow no longer has fails the job, unless ``allow_dropped_state``."""
    from pyflink.common import Configuration  # noqa: PLC0415
    from pyflink.datastream import DataStream, StreamExecutionEnvironment  # noqa: PLC0415
    from pyflink.java_gateway import get_gateway  # noqa: PLC0415
    from riskguard.flink.fused import (  # noqa: PLC0415
        ROW,
        TickBatchSegment,
        Trace,
        launch_jvm,
        quick_jvm,
        tick_batches,
        worker_processes,
    )
    from riskguard.flink.java_build import job_jars  # noqa: PLC0415
    from riskguard.flink.plan import SegmentPlan  # noqa: PLC0415

    trace = Trace(os.environ.get(FLINK_TRACE))
    trace.once("client")
    worker_processes()
    quick_jvm()
    launch_jvm()
    cfg, _digest = load_guard_config(config)
    ref = FlowRef("riskguard.flink.guard:worker_flow", (str(config),))
    steps = FlowRef("riskguard.flink.guard:guard_flow", (str(config), False)).steps()
    plan = SegmentPlan.whole(steps, {"kafka": "kafka"},
                             sink_keys=("riskguard.flink.guard:sink_keys", (str(config),)))
    env = StreamExecutionEnvironment.get_execution_environment(
        _job_configuration(Configuration(), checkpoints, restore))
    if parallelism is not None:
        env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    env.enable_checkpointing(interval_ms)
    if added := [*jars, *job_jars(kafka=jars)]:
        env.add_jars(*added)
    gateway = get_gateway()
    msgs = DataStream(_kafka_io(cfg, env, gateway))
    # Java makes each tick's messages one row; the flow is one segment under one key,
    # fed a tick at a time, as one bytewax worker runs it
    ticks = tick_batches(msgs, cfg.tick_ns, ("kafka",), "riskguard_guard",
                         lead_ns=cfg.input.max_lead_ns)
    out = ticks.process(TickBatchSegment(ref, plan, commit_ms=interval_ms,
                                         allow_dropped_state=allow_dropped_state),
                        output_type=ROW).uid("riskguard_segment").name("riskguard_segment")
    out.disable_chaining()
    topics = gateway.jvm.java.util.HashMap()
    for name in OUTPUT_STREAMS:
        topics.put(name, cfg.topic(name))
    gateway.jvm.riskguard.flink.kafka.KafkaIo.sink(
        out._j_data_stream, _kafka_properties(cfg, gateway), topics, "riskguard_out")
    trace.once("submitted")
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskguard.flink.guard",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the guard's TOML config")
    ap.add_argument("--parallelism", type=int,
                    help="default: the cluster's (parallelism.default)")
    ap.add_argument("--checkpoints", help="checkpoint storage (file:// or s3:// URL)")
    ap.add_argument("--checkpoint-interval-ms", type=int, default=2000)
    ap.add_argument("--restore", help="a checkpoint or savepoint path, or 'latest'")
    ap.add_argument("--jars", help=f"';'-separated jar URLs (default ${FLINK_JARS})")
    ap.add_argument("--allow-dropped-state", action="store_true",
                    help="restore a checkpoint or savepoint holding state for steps this "
                         "version no longer has (renamed or removed), dropping that state; "
                         "without it such a restore fails")
    args = ap.parse_args(argv)
    check_environment(os.environ)  # a misspelt RISKGUARD_* name stops the job
    jars = (args.jars or os.environ.get(FLINK_JARS, "")).split(";")
    run(args.config, parallelism=args.parallelism, checkpoints=args.checkpoints,
        interval_ms=args.checkpoint_interval_ms, restore=args.restore,
        jars=[j for j in jars if j], allow_dropped_state=args.allow_dropped_state)
    return 0


if __name__ == "__main__":
    from riskguard.flink.guard import main as module_main

    sys.exit(module_main())
