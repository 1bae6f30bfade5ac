"""riskguard on Apache Flink, the jobs: real Flink mini-clusters in the Flink
environment (:mod:`flink_env`), compared with bytewax on the same input. The adapter's
pure-Python tests are ``tests/test_flink.py``'s."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flink_cases import (
    START_NS,
    command_identity,
    letter_identity,
    records_with_bad_lines,
    signal_identity,
)
from flink_env import flink_command, java_missing, kafka_jars
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.dataflows.guard import load_guard_config
from riskguard.flink.backtest import read_records
from riskguard.operators.signing import decode_command
from riskguard.schemas import Codec

from riskguard.cli import main
from tests.kafka_helpers import hold_for_replay, topic_values


@pytest.mark.slow
def test_the_backtest_job_as_two_segments_in_two_python_workers_decides_as_bytewax(
        tmp_path: Path) -> None:
    """``python -m riskguard.flink.backtest --segments 2 --parallelism 2`` on a
    mini-cluster over two copies of the demo scenario (the second starts with several
    same-time anomalies) with a line that is no JSON and one no schema takes: the market
    segment and the firm segment, each in a Python worker of its own, give bytewax's
    commands, signals and audit records, and bytewax's dead letters, each naming the
    file, the line and its bytes, once."""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.demo_scenario import scenario_copies
    from riskguard.dataflows.guard import load_keys

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:9", keys, f"f{uuid.uuid4().hex[:6]}")
    path = records_with_bad_lines(tmp_path / "records.jsonl",
                                  records=scenario_copies(2, START_NS))
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    want = run_backtest(cfg, digest, records=read_records(path), signer=signer, trust=trust)
    assert len(want.dead_letters) == 2
    cmd, env = flink_command(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [*cmd, "-m", "riskguard.flink.backtest", "--config", str(config), "--records",
         str(path), "--segments", "2", "--parallelism", "2", "--out", str(out)],
        check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codec = Codec(clock=lambda: 0)

    def got(name: str) -> list[Any]:
        return [codec.decode(name, line) for line in
                (out / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]

    assert sorted(command_identity(decode_command(e)) for e in got("commands")) == sorted(
        map(command_identity, want.commands))
    assert sorted(map(signal_identity, got("signals"))) == sorted(
        map(signal_identity, want.signals))
    assert len(got("audit")) == want.n_audit
    letters = got("dead_letters")
    assert sorted(map(letter_identity, letters)) == sorted(
        map(letter_identity, want.dead_letters))
    assert [(d.topic, d.offset) for d in sorted(letters, key=lambda d: d.offset)] == [
        ("records.jsonl", 41), ("records.jsonl", 42)]


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


UNREADABLE = [f"5,0,{_b64('a')}", f"10000000000000000000,1,{_b64('b')}", f"6,x,{_b64('c')}",
              "7,3,not base64!", f"8,4,{_b64('d')}"]
"""A records file's lines, three of them not as written: a time past a long, a position
that is no number, bytes that are not base64."""


@pytest.fixture(scope="module")
def java_parts(guard_sources: dict[str, Any]) -> dict[str, list[Any]]:
    """What the Java parts that need no Kafka print, by part, read in the guard sources'
    job (:func:`guard_sources`, one mini-cluster start-up): ``ticks``, the batches of
    ``flink_ticks_job.ROWS``, and ``records``, the rows of a records file of
    :data:`UNREADABLE`."""
    import json

    return {part: [json.loads(line) for line in guard_sources["lines"][part]]
            for part in ("ticks", "records")}


@pytest.mark.kafka
@pytest.mark.slow
def test_java_makes_a_tick_one_row_in_event_time_then_source_order(
        java_parts: dict[str, list[Any]]) -> None:
    """``tick_batches`` (``flink/java/TickBatches.java``, compiled by
    :mod:`riskguard.flink.java_build`) on a mini-cluster: each key's tick is one row, its
    rows in event time, then source and position order, whatever order they came in; a
    row without event time takes the latest a timed input gave before it."""
    ms = 1_000_000
    assert sorted(java_parts["ticks"]) == [
        [1999, False, [["in", 1100 * ms, "t/0", 1, "b"]]],  # key b: a row of its own
        [1999, False, [["in", 1200 * ms, "t/0", 4, "z"], ["in", 1200 * ms, "t/0", 9, "y"],
                       ["acks", 1500 * ms, "acks/0", 0, "n"],
                       ["in", 1500 * ms, "t/1", 3, "x"]]],
        [2999, False, [["in", 2500 * ms, "t/1", 4, "w"]]],
    ]


@pytest.mark.kafka
@pytest.mark.slow
def test_a_records_file_line_java_cannot_read_goes_on_as_text_and_fails_no_job(
        java_parts: dict[str, list[Any]]) -> None:
    """``RecordsFile.rows`` (``flink/java/RecordsFile.java``) over a file of ``ts,pos,
    base64`` lines, three of them not as written (:data:`UNREADABLE`): the job ends, and
    each such line goes on as its own text with the time and position of the line before
    it, for the flow to dead-letter. The Python side never writes a time past a long
    (:func:`~riskguard.flink.backtest.source_rows`)."""
    assert java_parts["records"] == [
        ["all", "in", 5, "", 0, "a"],
        ["all", "in", 5, "", 0, UNREADABLE[1]],
        ["all", "in", 5, "", 0, UNREADABLE[2]],
        ["all", "in", 5, "", 0, UNREADABLE[3]],
        ["all", "in", 8, "", 4, "d"],
    ]


@pytest.mark.slow
def test_the_flink_backtests_dead_letters_name_the_line_as_bytewaxs_do(
        tmp_path: Path) -> None:
    """``python -m riskguard.flink.backtest`` (one segment) over a records file with a
    line that is no JSON and one no schema takes: its dead letters are bytewax's for the
    same file, each naming the file, the line and its bytes, once. (As two segments: the
    two-segment test's records have the same bad lines.)"""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.guard import load_keys

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:9", keys, f"f{uuid.uuid4().hex[:6]}")
    path = records_with_bad_lines(tmp_path / "records.jsonl")
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    want = run_backtest(cfg, digest, records=read_records(path), signer=signer, trust=trust)
    assert len(want.dead_letters) == 2
    cmd, env = flink_command(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [*cmd, "-m", "riskguard.flink.backtest", "--config", str(config), "--records",
         str(path), "--segments", "1", "--out", str(out)],
        check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codec = Codec(clock=lambda: 0)
    got = [codec.decode("dead_letters", line) for line in
           (out / "dead_letters.jsonl").read_bytes().splitlines() if line.strip()]
    assert sorted(map(letter_identity, got)) == sorted(
        map(letter_identity, want.dead_letters))
    assert [(d.topic, d.offset) for d in sorted(got, key=lambda d: d.offset)] == [
        ("records.jsonl", 41), ("records.jsonl", 42)]


def test_beams_state_sampler_runs_without_its_thread_in_a_segments_worker(
        tmp_path: Path) -> None:
    """What :func:`~riskguard.flink.fused.threadless_state_sampler` leaves of Beam's state
    sampler, in the Flink environment's Beam: a bundle's start and stop start no thread
    and join none, steps still enter and leave their states, and the sampler is the
    current tracker only while started."""
    if reason := java_missing():
        pytest.skip(reason)
    probe = """
import threading
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory
from riskguard.flink.fused import threadless_state_sampler
threadless_state_sampler(); threadless_state_sampler()
sampler = statesampler.StateSampler("s", CounterFactory())
threads = threading.active_count()
for _ in range(3):
    sampler.reset()
    sampler.start()
    assert statesampler.get_current_tracker() is sampler
    assert threading.active_count() == threads
    before = sampler.state_transition_count
    with sampler.scoped_state("step", "process"):
        assert sampler.current_state().name.step_name == "step"
    assert sampler.state_transition_count == before + 2
    sampler.stop_if_still_running()
    assert sampler.finished and statesampler.get_current_tracker() is None
print("ok")
"""
    cmd, env = flink_command(tmp_path)
    done = subprocess.run([*cmd, "-c", probe], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def _send_late(bootstrap: str, topic: str) -> None:
    """Messages at 1.0 s, 5.0 s, 1.5 s and 7.0 s of event time (their value, in ms)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for at_ms in (1000, 5000, 1500, 7000):
        producer.produce(topic, str(at_ms).encode())
        producer.flush(10)  # one message a batch: the dev broker reports batches
    del producer


@pytest.mark.kafka
@pytest.mark.slow
def test_a_row_behind_the_watermark_goes_on_alone_after_the_rows_that_made_it_late(
        guard_sources: dict[str, Any]) -> None:
    """Messages at 1.0 s, 5.0 s, then 1.5 s and 7.0 s of event time on one partition,
    the watermark moving with each: the tick ending at 1,999 ms goes on when 5.0 s
    passes it; the message at 1.5 s, behind the watermark, goes on by itself, marked
    late, for the flow's lateness rules to judge, but only after the tick of 5.0 s, the
    message that made it late (bytewax's admission sees them in that order, and judges
    1.5 s against 5.0 s). Flink's Prometheus reporter serves the late row's count under
    the name the ops alert ``RiskguardFlinkRowsBehindWatermark`` reads. (The messages:
    :func:`_send_late`; the job's other parts' ticks operators count none.)"""
    import json

    batches = [json.loads(line) for line in guard_sources["lines"]["late"]]
    (metrics,) = [json.loads(line) for line in guard_sources["lines"]["metrics"]]
    ms = 1_000_000
    assert batches == [
        [1999, False, [["in", 1000 * ms, "p/0", 0, "1000"]]],
        [5999, False, [["in", 5000 * ms, "p/0", 1, "5000"]]],
        [1999, True, [["in", 1500 * ms, "p/0", 2, "1500"]]],
    ]
    alert = (Path(__file__).parents[1] / "ops" / "prometheus" / "alerts.yml").read_text()
    name = "flink_taskmanager_job_task_operator_lateRows"
    assert name in alert
    counted = [line for line in metrics["metrics"] if line.startswith(name + "{")]
    assert sorted(float(line.rsplit(" ", 1)[1]) for line in counted) == [0.0, 0.0, 1.0], (
        metrics)
    late_part = [line for line in counted if 'operator_name="test_late_ticks"' in line]
    assert [float(line.rsplit(" ", 1)[1]) for line in late_part] == [1.0], metrics


def _topic(bootstrap: str, partitions: int = 1) -> str:
    from riskguard.connectors.topics import TopicSpec, create_topics

    name = f"t-{uuid.uuid4().hex[:12]}"
    create_topics({"bootstrap.servers": bootstrap}, [TopicSpec(name, partitions=partitions)])
    return name


@pytest.fixture(scope="module")
def guard_sources(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    """The tick tests' inputs, each on topics of its own, read in one Flink job
    (``flink_ticks_job.py parts``: one mini-cluster start-up for the six): ``stamps``
    (:func:`_send_stamps`, the first 3 batches of its two topics), ``year_ahead``
    (:func:`_send_year_ahead`, the first 7 batches, records more than 60 s ahead held)
    and ``order`` (:func:`_send_backlog`, the first :func:`_order_limit` messages) by
    the guard's source; ``late`` (:func:`_send_late`, the first 3 batches) with a
    watermark moving with every message, and the ``lateRows`` samples Flink's
    Prometheus reporter serves then (``metrics``); ``ticks`` and ``records``, the Java
    parts that need no Kafka (:func:`java_parts`); what each part printed, by part,
    with each part's topics and sent values. Once a test session
    (:func:`session_share.once_a_session`: another xdist worker reads the first's)."""
    if reason := java_missing():
        pytest.skip(reason)
    from session_share import once_a_session

    found = once_a_session(tmp_path_factory, "flink-guard-sources",
                           lambda work: _read_guard_sources(kafka_bootstrap, work))
    return found | {"ahead_values": [bytes.fromhex(v) for v in found["ahead_values"]]}


def _read_guard_sources(bootstrap: str, work: Path) -> dict[str, Any]:
    """:func:`guard_sources`' inputs sent and read, the sent values as hex."""
    from kafka_helpers import free_ports

    busy, quiet = _topic(bootstrap), _topic(bootstrap)
    _send_stamps(bootstrap, busy, quiet)
    ahead = _topic(bootstrap)
    values = _send_year_ahead(bootstrap, ahead)
    backlog = _topic(bootstrap, partitions=ORDER_PARTITIONS)
    _send_backlog(bootstrap, backlog)
    late = _topic(bootstrap)
    _send_late(bootstrap, late)
    records = work / "records.csv"
    records.write_text("".join(line + "\n" for line in UNREADABLE))
    cmd, env = flink_command(work)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    done = subprocess.run(
        [*cmd, str(Path(__file__).parent / "flink_ticks_job.py"), "parts", bootstrap,
         str(free_ports(1)[0]), f"stamps=guard:{busy},{quiet}:3",
         f"year_ahead=guard:{ahead}:7:{60 * NS}", f"order=order:{backlog}:{_order_limit()}",
         f"late=late:{late}:3", "ticks=ticks:-:3", f"records=records:{records}:5"],
        env=env, cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines: dict[str, list[str]] = {
        "stamps": [], "year_ahead": [], "order": [], "late": [], "metrics": [], "ticks": [],
        "records": []}
    for line in done.stdout.splitlines():
        part, text = line.split(" ", 1)
        lines[part].append(text)
    return {"lines": lines, "busy": busy, "quiet": quiet, "ahead": ahead,
            "ahead_values": [v.hex() for v in values]}


def _send_stamps(bootstrap: str, busy: str, quiet: str) -> None:
    """The stamps test's messages: the busy topic's seven, the quiet one's one."""
    from confluent_kafka import Producer

    sent = [
        (busy, b'{"ts": 1000000000, "x": 1}', None),
        (quiet, b'{"kind": "limit", "ts": 1200000000}', None),
        (busy, b'{"a": {"ts": 9}, "ts": 1500000000}', None),  # nested ts is not its ts
        (busy, b'{"kind": "ack"}', 1_700),  # no ts: its Kafka timestamp, in ms
        (busy, b'{"ts": -1}', 1_800),  # no record's ts: as if it had none
        (busy, b'{"ts": 2500000000}', None),
        (busy, b'{"ts": 100000000000}', 2_200),  # 100 s ahead of its Kafka time: 2.7 s
        (busy, b'{"ts": 5000000000}', None),
    ]
    producer = Producer({"bootstrap.servers": bootstrap})
    for topic, value, kafka_ms in sent:
        producer.produce(topic, value, **({"timestamp": kafka_ms} if kafka_ms else {}))
        producer.flush(10)  # one message a batch: the dev broker reports batches
    del producer


@pytest.mark.kafka
@pytest.mark.slow
def test_the_guard_source_stamps_event_time_and_a_quiet_partition_holds_no_tick_back(
        guard_sources: dict[str, Any]) -> None:
    """The live guard's Kafka source (``flink/java/kafka/KafkaIo.java``): a message's
    event time is its top-level ``ts``, else its Kafka timestamp, never more than the
    allowed skew (0.5 s here) past that; and a partition that sent one message (a
    limit update at 1.2 s) and then nothing stops holding the watermark back a second
    later, where one that sent nothing yet is waited for ten minutes. The ticks up to
    the busy partition's 5.0 s then go on, each in event time, then source order; and
    once every partition that sent something is quiet, the watermark passes the newest
    tick, so 5.0 s goes on too, not held until a next message. A ``ts`` no record may
    have (below 0) is no event time: the message goes with its neighbours, for the flow
    to dead-letter, not behind the watermark. (The messages: :func:`_send_stamps`.)"""
    import json

    busy, quiet = guard_sources["busy"], guard_sources["quiet"]
    ms = 1_000_000
    assert sorted(json.loads(line) for line in guard_sources["lines"]["stamps"]) == [
        [1999, False, [["kafka", 1000 * ms, f"{busy}/0", 0, '{"ts": 1000000000, "x": 1}'],
                       ["kafka", 1200 * ms, f"{quiet}/0", 0,
                        '{"kind": "limit", "ts": 1200000000}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 1,
                        '{"a": {"ts": 9}, "ts": 1500000000}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 2, '{"kind": "ack"}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 3, '{"ts": -1}']]],
        [2999, False, [["kafka", 2500 * ms, f"{busy}/0", 4, '{"ts": 2500000000}'],
                       ["kafka", 100_000 * ms, f"{busy}/0", 5, '{"ts": 100000000000}']]],
        [5999, False, [["kafka", 5000 * ms, f"{busy}/0", 6, '{"ts": 5000000000}']]],
    ]


NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01
YEAR = 365 * 86_400 * NS


def _trade_value(i: int, ts: int) -> bytes:
    from riskguard.schemas import Trade, encode

    return encode(Trade(id=f"t{i}", venue="okx", instrument="BTC-USDT", ts=ts,
                        price=100.0 + i, qty=1.0, side="buy"))


def _admitted(messages: list[tuple[str, int, int, bytes]]) -> list[Any]:
    """What the guard's admission step (one :class:`PartitionAdmission` a partition, no
    clock) makes of ``messages`` in that order, each held record let go at the end."""
    from riskguard.connectors.kafka.admit import PartitionAdmission
    from riskguard.schemas.time_policy import EventTimePolicy

    partitions: dict[tuple[str, int], PartitionAdmission] = {}
    out: list[Any] = []
    for msg in messages:
        admit = partitions.setdefault(msg[:2], PartitionAdmission(Codec(), EventTimePolicy()))
        out.extend(admit.on_event(msg))
    for admit in partitions.values():
        out.extend(admit.on_eof())
    return out


def _send_year_ahead(bootstrap: str, topic: str) -> list[bytes]:
    """Eight trades a second apart on ``topic``, the fourth a year ahead, in one batch:
    their values."""
    from confluent_kafka import Producer

    times = [T0 + k * NS for k in range(8)]
    times[3] = T0 + YEAR
    values = [_trade_value(i, ts) for i, ts in enumerate(times)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(10) == 0
    del producer
    return values


@pytest.mark.kafka
@pytest.mark.slow
def test_a_record_a_year_ahead_moves_no_tick_and_the_flow_judges_it_as_bytewax_does(
        guard_sources: dict[str, Any]) -> None:
    """Trades a second apart on one partition, the fourth stamped a year ahead, all in
    one fetch (their Kafka timestamps are now, so the skew cap does not bound it). The
    guard source's ahead gate (``input.max_lead_ns``, 60 s) holds the far record's time
    back until the next record judges it: it goes on just before the next record, in
    its tick, so no tick is made at the far time, no genuine record comes behind the
    watermark, and the guard's admission, fed the ticks in order, sees the messages in
    the partition's order and makes bytewax's verdicts: the one ``ahead`` dead letter,
    the same in every field. A partition's first record, held too (nothing before it to
    judge it by), keeps its own time, as the next goes on from it. (The trades:
    :func:`_send_year_ahead`.)"""
    import json

    topic, values = guard_sources["ahead"], guard_sources["ahead_values"]
    batches = [json.loads(line) for line in guard_sources["lines"]["year_ahead"]]
    where = f"{topic}/0"
    assert [(tick, late, [(r[1], r[3]) for r in rows]) for tick, late, rows in batches] == [
        ((T0 + k * NS) // 1_000_000 + 999, False,
         ([(T0 + k * NS, 3)] if k == 4 else []) + [(T0 + k * NS, k)])
        for k in (0, 1, 2, 4, 5, 6, 7)]
    assert all(r[2] == where for _t, _l, rows in batches for r in rows)
    seen = [(topic, 0, r[3], r[4].encode()) for _t, _l, rows in batches for r in rows]
    in_order = [(topic, 0, i, v) for i, v in enumerate(values)]
    flink, bytewax = _admitted(seen), _admitted(in_order)
    assert [getattr(x, "reason", None) or x.id for x in bytewax] == [
        "t0", "t1", "t2", "ahead", "t4", "t5", "t6", "t7"]
    assert flink == bytewax


ORDER_PARTITIONS, ORDER_BACKLOG, ORDER_SIZE = 24, 200, 1_024
"""The order test's topic: partitions, messages a partition, bytes a message."""


def _order_limit() -> int:
    """How many messages two fetch rounds over every partition hand on."""
    from riskguard.flink.guard import FETCH_BYTES

    return 2 * ORDER_PARTITIONS * FETCH_BYTES // ORDER_SIZE


def _send_backlog(bootstrap: str, topic: str) -> None:
    """:data:`ORDER_BACKLOG` messages of about :data:`ORDER_SIZE` bytes a partition,
    produced round the partitions."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                         "batch.size": 16_384})
    pad = "x" * (ORDER_SIZE - 30)
    for n in range(ORDER_BACKLOG):
        for p in range(ORDER_PARTITIONS):
            producer.produce(topic, f'{{"ts": {(n + 1) * 1_000_000}, "pad": "{pad}"}}'
                             .encode(), partition=p)
        producer.poll(0)
    assert producer.flush(60) == 0
    del producer


@pytest.mark.kafka
@pytest.mark.slow
def test_the_guard_source_hears_every_partition_within_two_fetch_rounds_of_a_backlog(
        guard_sources: dict[str, Any]) -> None:
    """24 partitions, each with a backlog of 200 messages of about 1 KB, read with the
    live guard's fetch settings (``set_fetches`` in ``flink/guard.py``): every partition
    hands on its first message within the first two fetch rounds' worth of messages
    (``FETCH_BYTES`` a partition), long before the quiet rule would pass it over. The
    Kafka consumer hands on one partition's fetched records before the next one's: at
    1 MiB a partition, each partition's backlog would come whole, the last partition's
    first message after 4,600 others (past the 3,072 read), and on a large backlog the
    quiet rule would pass over the partitions still waiting, making their rows late.
    (The backlog: :func:`_send_backlog`.)"""
    from riskguard.flink.guard import FETCH_BYTES

    partitions, backlog, size = ORDER_PARTITIONS, ORDER_BACKLOG, ORDER_SIZE
    limit = _order_limit()
    # a backlog longer than two fetch rounds that Kafka's default fetch (1 MiB a
    # partition) would take whole, partition after partition, past the messages read
    assert 2 * FETCH_BYTES < backlog * size <= 1024 * 1024 and (partitions - 1) * backlog > limit
    lines = guard_sources["lines"]["order"]
    heard = {int(line.split()[0]) for line in lines}
    assert len(lines) == limit
    assert heard == set(range(partitions))


@pytest.mark.kafka
@pytest.mark.slow
def test_a_row_without_event_time_after_a_restore_takes_the_latest_before_the_checkpoint(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """The guard source's rows stamped by ``RowTime`` (``flink/java/TickBatches.java``):
    a message without a ``ts`` (an ack) takes the latest event time a timed message gave,
    and that time is in the checkpoint. Messages at 1, 2 and 5 s (the 5 s tick goes on
    once the partition is quiet); the job is cancelled after a checkpoint and restored
    from it; an ack then goes in the 5 s tick, not at 0 (a tick of its own, far
    behind)."""
    if reason := java_missing():
        pytest.skip(reason)
    import json

    from confluent_kafka import Producer

    topic = new_topic()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    cmd, env = flink_command(tmp_path)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def send(*messages: tuple[bytes, int]) -> None:
        for value, kafka_ms in messages:
            producer.produce(topic, value, timestamp=kafka_ms)
            producer.flush(10)  # one message a batch: the dev broker reports batches

    def job(n: int) -> list[Any]:
        done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                               "restore", kafka_bootstrap, topic, str(checkpoints), str(n)],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines()]

    send((b'{"ts": 1000000000}', 1_000), (b'{"ts": 2000000000}', 2_000),
         (b'{"ts": 5000000000}', 5_000))
    assert [b[0] for b in job(3)] == [1999, 2999, 5999]
    send((b'{"kind": "ack"}', 6_000), (b'{"ts": 8000000000}', 8_000))
    ms = 1_000_000
    # (then the 8 s tick too, once the partition is quiet)
    assert job(1)[0] == [5999, False, [["kafka", 5000 * ms, f"{topic}/0", 3, '{"kind": "ack"}']]]


def _topic_count(run: Any, stream: str) -> int:
    return len(topic_values(run.bootstrap, run.topic(stream), idle_s=1.0))


def _commands_on(run: Any) -> list[Any]:
    topic = run.topic("commands")
    return [decode_command(Codec().decode(topic, raw))
            for raw in topic_values(run.bootstrap, topic, idle_s=1.0)]


def _distinct_commands(run: Any) -> int:
    """The commands on the run's topic, a copy a restart wrote again counted once."""
    return len({cmd.command_id for cmd in _commands_on(run)})


def _missing_commands(run: Any, want: list[Any]) -> str:
    """The wanted commands not on the run's topic: action, scope, time and reason."""
    got = {command_identity(cmd) for cmd in _commands_on(run)}
    return "; ".join(f"{c.action.value} {c.scope} issued at {c.issued_at} ({c.reason})"
                     for c in want if command_identity(c) not in got)


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[Any],
          timeout_s: float, every_s: float = 2.0,
          detail: Callable[[], str] = lambda: "") -> None:
    """Wait for ``ready``; past the timeout, fail saying ``detail()`` (how far it got)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"the Flink job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f} s {detail()}"
        time.sleep(every_s)


def _settled(look: Callable[[], tuple[bool, Any]]) -> Callable[[], bool]:
    """A readiness check for :func:`_wait`: ready once ``look()`` says it is, with what it
    saw the same as on the look before."""
    before: list[Any] = []

    def ready() -> bool:
        done, seen = look()
        settled = done and before == [seen]
        before[:] = [seen]
        return settled

    return ready


def _served(port: int, name: str) -> float:
    """The sum of the samples of ``name`` served on ``port`` (0 where nothing is)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _guard_job(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    return subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=log.parent, start_new_session=True)


@pytest.mark.kafka
@pytest.mark.slow
def test_the_live_flink_guard_killed_and_rescaled_executes_bytewaxs_commands_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The demo scenario's first 180 s published to the dev broker (two partitions a
    topic), the guard run live on Flink (``riskguard run --engine flink``) at
    parallelism 1: killed whole (the CLI, the mini-cluster and its Python workers) once
    commands flow and a checkpoint is taken; the rest of the scenario published,
    the job restarted from its last checkpoint at parallelism 2, then interrupted.
    The subscriber executes bytewax's commands (decision, action, scope, params), each
    once, and nothing is dead-lettered. The first run's Python worker serves the guard's
    own metrics on ``$RISKGUARD_METRICS_PORT``, its events and commands counted. Both
    runs trace their start-up (``$RISKGUARD_FLINK_TRACE``). (With the whole scenario
    published at once, a fast run could be killed after its last command.)"""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.demo import prepare_run, publish_scenario, subscriber_for
    from riskguard.flink.guard import latest_checkpoint

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"fl{uuid.uuid4().hex[:6]}",
                      publish_until_s=180.0)
    hold_for_replay(run)  # the restored job catches up on a backlog
    cfg, digest = load_guard_config(run.config)
    want = run_backtest(cfg, digest, records=build_scenario(run.start_ns).events)
    from kafka_helpers import free_ports

    cmd, env = flink_command(tmp_path)
    trace = tmp_path / "trace.txt"
    (metrics_port,) = free_ports(1)
    env |= {"RISKGUARD_FLINK_JARS": ";".join(kafka_jars()), "RISKGUARD_FLINK_PYTHON": cmd[0],
            "RISKGUARD_FLINK_TRACE": str(trace), "RISKGUARD_METRICS_PORT": str(metrics_port),
            "RISKGUARD_METRICS_ADDR": "127.0.0.1"}
    checkpoints = (tmp_path / "checkpoints").as_uri()
    args = [sys.executable, "-m", "riskguard.cli", "run", "--engine", "flink", "--config",
            str(run.config), "--", "--checkpoints", checkpoints, "--checkpoint-interval-ms",
            "1000"]
    log = tmp_path / "job.log"
    first = _guard_job([*args, "--parallelism", "1"], env, log)
    try:
        _wait("a command and a checkpoint", lambda: _topic_count(run, "commands") >= 1
              and latest_checkpoint(checkpoints) is not None, first, 300, every_s=0.5)
        # the Python worker serves the guard's own metrics, counted where the flow runs
        _wait("the worker's metrics", lambda: _served(metrics_port, "riskguard_events_in_total")
              > 0 and _served(metrics_port, "riskguard_commands_total") > 0, first, 30,
              detail=lambda: f"(events in {_served(metrics_port, 'riskguard_events_in_total')}"
              f", commands {_served(metrics_port, 'riskguard_commands_total')})")
        os.killpg(first.pid, signal.SIGKILL)  # the CLI, the job and its Python workers
        first.wait(30)
        at_kill = _distinct_commands(run)
        assert at_kill < len(want.commands), "the kill came after the last command"
        publish_scenario(run.bootstrap, run.start_ns, run.env, between_s=(180.0, math.inf))
        second = _guard_job([*args, "--parallelism", "2", "--restore", "latest"], env, log)
        try:
            _wait("commands", lambda: _distinct_commands(run) >= len(want.commands),
                  second, 300, detail=lambda: (
                      f"{_distinct_commands(run)} of {len(want.commands)} commands "
                      f"({at_kill} at the kill), "
                      f"{_topic_count(run, 'dead_letters')} dead letters; missing: "
                      f"{_missing_commands(run, want.commands)}"))
            second.send_signal(signal.SIGINT)  # the CLI stops the job, then sums up
            assert second.wait(60) == 130, log.read_text()[-3000:]
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert sum(line.startswith("riskguard run: config ") for line in lines) == 2
    assert lines[-1].startswith("summary  interrupted after "), lines[-1]
    executed: list[Any] = []
    with subscriber_for(run, tmp_path / "sub.sqlite", on_command=executed.append) as sub:
        sub.poll(idle_timeout_s=2.0)
        summary = sub.summary()
    assert sorted(map(command_identity, executed)) == sorted(
        map(command_identity, want.commands)), log.read_text()[-3000:]
    # the restored job went on with the sequence and the audit chain where they stood
    assert summary.get("gaps", 0) == 0 and summary.get("rejected", 0) == 0, summary
    assert main(["audit", "verify", "--topic", run.topic("audit"), "--brokers",
                 run.bootstrap, "--trust", str(run.keys.trust_file), "--roots",
                 str(run.keys.roots_file), "--allow-tail"]) == 0  # a live log
    topic = run.topic("signals")
    signals = {signal_identity(Codec().decode(topic, raw))
               for raw in topic_values(run.bootstrap, topic, idle_s=1.0)}
    assert signals == set(map(signal_identity, want.signals))
    assert _topic_count(run, "dead_letters") == 0
    # each run's client and segment operators traced their start-up, once each a process
    moments = [line.split()[0] for line in trace.read_text().splitlines()
               if line.split()[0] != "late_rows"]
    assert moments.count("client") == moments.count("submitted") == 2, moments
    assert {"open", "opened", "first_input", "first_output"} <= set(moments), moments


def _backlog_with_one_trade_stamped_now(now_ns: int) -> dict[int, list[bytes]]:
    """Two partitions' trades of the demo's first instrument from an hour before
    ``now_ns``, a second apart, produced now (a feed catching up); on partition 0 the
    fourth is stamped ``now_ns``: within the clock's skew, an hour ahead of its
    partition."""
    from riskguard.schemas import Trade, encode

    first = next(r for r in build_scenario(now_ns).events if isinstance(r, Trade))
    start = now_ns - 3600 * NS

    def trades(partition: int, times: list[int]) -> list[bytes]:
        return [encode(Trade(id=f"b{partition}-{i}", venue=first.venue,
                             instrument=first.instrument, ts=ts, price=first.price,
                             qty=first.qty, side=first.side)) for i, ts in enumerate(times)]

    times = [start + k * NS for k in range(10)]
    times[3] = now_ns
    return {0: trades(0, times), 1: trades(1, [start + k * NS for k in range(5)])}


def _outcome(run: Any) -> dict[str, Any]:
    """A prepared run's dead letters (their topic as its stream), signals and commands."""
    from riskguard.connectors.topics import INPUT_STREAMS

    streams = {run.topic(s): s for s in INPUT_STREAMS}
    topic = run.topic("dead_letters")
    letters = sorted((streams.get(d.topic, d.topic), *letter_identity(d)[1:])
                     for d in (Codec().decode(topic, raw) for raw in topic_values(
                         run.bootstrap, topic, idle_s=1.0)))
    topic = run.topic("signals")
    signals = sorted(signal_identity(Codec().decode(topic, raw))
                     for raw in topic_values(run.bootstrap, topic, idle_s=1.0))
    return {"dead_letters": letters, "signals": signals,
            "commands": sorted(map(command_identity, _commands_on(run)))}


@pytest.mark.kafka
@pytest.mark.slow
def test_the_live_flink_guard_refuses_a_trade_far_ahead_of_its_partition_as_bytewax_does(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """An hour's backlog of trades produced now, one of them stamped now (an hour ahead
    of its partition, within the clock's skew), read by the live guard on bytewax and on
    Flink: both make it the one ``ahead`` dead letter, with the same raw bytes and
    offset, and the same signals and commands. (Flink's source stamped it with its own
    time: it went on last, in a tick of its own, and was admitted.)"""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.demo import prepare_run, start_guard

    from tests.kafka_helpers import produce

    now = time.time_ns()
    backlog = _backlog_with_one_trade_stamped_now(now)
    runs = [prepare_run(kafka_bootstrap, tmp_path / name, env=f"{name}{uuid.uuid4().hex[:6]}",
                        publish_until_s=0.0) for name in ("bw", "fl")]
    for run in runs:
        for partition, values in backlog.items():
            produce(kafka_bootstrap, run.topic("market"), values, partition=partition)
    guard = start_guard(runs[0])
    out, _ = guard.communicate(timeout=150)  # the demo config ends the run when idle
    assert guard.returncode == 0, out.decode(errors="replace")[-3000:]
    want = _outcome(runs[0])
    assert [d[0:2] + d[3:4] for d in want["dead_letters"]] == [("market", 0, "ahead")]
    from kafka_helpers import free_ports

    cmd, env = flink_command(tmp_path)
    (metrics_port,) = free_ports(1)
    env |= {"RISKGUARD_FLINK_JARS": ";".join(kafka_jars()), "RISKGUARD_FLINK_PYTHON": cmd[0],
            "RISKGUARD_METRICS_PORT": str(metrics_port), "RISKGUARD_METRICS_ADDR": "127.0.0.1"}
    log = tmp_path / "job.log"
    job = _guard_job([sys.executable, "-m", "riskguard.cli", "run", "--engine", "flink",
                      "--config", str(runs[1].config), "--", "--checkpoints",
                      (tmp_path / "checkpoints").as_uri()], env, log)
    backlog_size = sum(map(len, backlog.values()))
    try:
        _wait("the dead letter", lambda: _topic_count(runs[1], "dead_letters") >= 1, job, 240,
              detail=lambda: log.read_text()[-2000:])
        # the rest of the backlog admitted (a dead letter is counted as read too), and what
        # the flow wrote the same on two looks two seconds apart: any dead letter bytewax
        # did not make has been made, and handed to Kafka
        _wait("the whole backlog read", _settled(lambda: (
            _served(metrics_port, "riskguard_events_in_total") >= backlog_size,
            [_served(metrics_port, name) for name in (
                "riskguard_events_out_total", "riskguard_dead_letters_total")])),
              job, 120, every_s=2.0,
              detail=lambda: f"(read {_served(metrics_port, 'riskguard_events_in_total')} "
              f"of {backlog_size})")
        job.send_signal(signal.SIGINT)
        assert job.wait(60) == 130, log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert _outcome(runs[1]) == want
