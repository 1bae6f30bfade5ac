"""Kafka source and sink against the real dev broker: every record type through them,
bad input as dead letters (counted once among processes), untimed topics, one worker
per dataflow, resuming where a run stopped, a sink's fixed partition, and reading a
topic whole."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, cast

import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from riskguard.dataflows.passthrough import build
from riskguard.schemas import ALL_TYPES, Codec, DeadLetter, decode, encode

from riskguard.errors import ConfigError
from tests.kafka_helpers import consume_all, produce, trade_json
from tests.served_partition import ServedConsumer, ServedMessage
from tests.strategies import records

pytestmark = pytest.mark.kafka


def _examples() -> list[bytes]:
    """One deterministic example of every record type."""
    out = []
    for i, cls in enumerate(ALL_TYPES):
        @settings(max_examples=1, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(records(cls))
        def grab(rec: object) -> None:
            out.append(encode(rec))
        grab()
        assert len(out) == i + 1
    return out


def test_every_record_type_round_trips_through_source_sink_source(
    kafka_bootstrap: str, new_topic
) -> None:
    """Each record type goes in, through our source and sink, and back out equal."""
    src, out, dlq = new_topic(2), new_topic(2), new_topic(1)
    values = _examples()
    produce(kafka_bootstrap, src, values)
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0))
    want = [decode(src, v) for v in values]
    got = [decode(out, v) for _, _, v in consume_all(kafka_bootstrap, out, expect=len(values) - 1)]
    dead = [decode(dlq, v) for _, _, v in consume_all(kafka_bootstrap, dlq, expect=1)]
    # A DeadLetter record is routed to the dead-letter topic, unchanged.
    assert sorted(map(encode, got + dead)) == sorted(map(encode, want))
    assert {type(g) for g in got} == set(ALL_TYPES) - {DeadLetter}
    assert [type(d) for d in dead] == [DeadLetter]


GOOD = encode(decode("x", b'{"type":"trade","id":"g","venue":"okx","instrument":"BTC-USDT",'
                     b'"ts":1,"price":1.0,"qty":1.0,"side":"buy"}'))


# (label, raw bytes, expected reason, expected path)
MALFORMED: list[tuple[str, bytes, str, str]] = [
    ("empty", b"", "malformed", "$"),
    ("truncated json", GOOD[:-5], "malformed", "$"),
    ("invalid json", b"{type: trade}", "malformed", "$"),
    ("bom", b"\xef\xbb\xbf" + GOOD, "malformed", "$"),
    ("trailing junk", GOOD + b"xyz", "malformed", "$"),
    ("two objects", GOOD + GOOD, "malformed", "$"),
    ("json array", b"[1,2,3]", "validation", "$"),
    ("json scalar", b"42", "validation", "$"),
    ("string for float", trade_json(price="1.0"), "validation", "$.price"),
    ("string for int", trade_json(ts="1"), "validation", "$.ts"),
    ("float for int", trade_json(ts=1.5), "validation", "$.ts"),
    ("int for string", trade_json(venue=7), "validation", "$.venue"),
    ("object for string", trade_json(id={"a": 1}), "validation", "$.id"),
    ("bad enum", trade_json(side="up"), "validation", "$.side"),
    ("null for required", trade_json(qty=None), "validation", "$.qty"),
    ("missing field", b'{"type":"trade","id":"b","venue":"okx"}', "validation", "$.instrument"),
    ("nan literal", GOOD.replace(b'"price":1.0', b'"price":NaN'), "malformed", "$"),
    ("inf literal", GOOD.replace(b'"price":1.0', b'"price":Infinity'), "malformed", "$"),
    ("overflowing float", GOOD.replace(b'"price":1.0', b'"price":1e999'), "non_finite", "$.price"),
    ("int over 64 bits", trade_json(ts=2**70), "validation", "$.ts"),
    ("negative time", trade_json(ts=-5), "validation", "$.ts"),
    ("negative size", trade_json(qty=-3.0), "validation", "$.qty"),
    ("zero price", trade_json(price=0.0), "validation", "$.price"),
    ("unknown tag", trade_json(type="teleport"), "unknown_type", "$.type"),
    ("missing tag", b'{"id":"b"}', "unknown_type", "$.type"),
    ("unknown major version", trade_json(v=2), "unknown_version", "$.v"),
    ("oversize", b'{"type":"trade","id":"' + b"a" * 70_000 + b'"}', "oversize", "$"),
    ("non-utf8 string", GOOD.replace(b'"okx"', b'"ok\xff"'), "non_utf8", "$"),
    ("name with spaces", trade_json(venue="o k x"), "validation", "$.venue"),
    ("too long id", trade_json(id="x" * 200), "validation", "$.id"),
]


def test_malformed_corpus_lands_in_dead_letter_topic_and_flow_keeps_running(
    kafka_bootstrap: str, new_topic
) -> None:
    """Each bad input becomes a dead letter with its reason, path, raw bytes and offset;
    good records before and after it still arrive."""
    assert len(MALFORMED) >= 25
    src, out, dlq = new_topic(1), new_topic(1), new_topic(1)
    values: list[bytes] = []
    for i, (_, raw, _, _) in enumerate(MALFORMED):
        values.append(trade_json(id=f"good{i}"))
        values.append(raw)
    values.append(trade_json(id="last"))
    produce(kafka_bootstrap, src, values, partition=0)
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0))

    dlq_codec = Codec()  # a dead letter fits the default cap, whatever it carries
    dead = [
        dlq_codec.decode(dlq, v)
        for _, _, v in consume_all(kafka_bootstrap, dlq, expect=len(MALFORMED))
    ]
    assert all(isinstance(d, DeadLetter) for d in dead)
    by_offset = {d.offset: d for d in dead}
    for i, (label, raw, reason, path) in enumerate(MALFORMED):
        d = by_offset.get(2 * i + 1)
        assert d is not None, f"{label}: no dead letter at offset {2 * i + 1}"
        assert (d.reason, d.path) == (reason, path), f"{label}: got {d.reason} at {d.path}"
        assert raw.startswith(d.raw) and d.raw_len == len(raw), label  # raw cut to fit 64 KiB
        assert (d.raw == raw) != d.raw_truncated and d.topic == src and d.partition == 0, label
    goods = [
        decode(out, v)
        for _, _, v in consume_all(kafka_bootstrap, out, expect=len(MALFORMED) + 1)
    ]
    assert sorted(g.id for g in goods) == sorted(
        [f"good{i}" for i in range(len(MALFORMED))] + ["last"]
    )


def test_a_dataflow_of_two_workers_is_refused_at_start(kafka_bootstrap: str,
                                                      new_topic) -> None:
    """`python -m bytewax.run -w 2` of a flow with a Kafka source stops with an error that
    names the layouts there are: a dataflow has one worker."""
    src, out, dlq = new_topic(2), new_topic(1), new_topic(1)
    spec = (f"riskguard.dataflows.passthrough:"
            f"build({kafka_bootstrap!r}, [{src!r}], {out!r}, {dlq!r}, 1.5)")
    run = subprocess.run([sys.executable, "-m", "bytewax.run", spec, "-w", "2"],
                         timeout=120, capture_output=True, text=True, check=False)
    assert run.returncode != 0
    assert "one worker per dataflow" in run.stderr + run.stdout


def test_resumed_source_continues_from_its_recovered_offset(
    kafka_bootstrap: str, new_topic, recovery_dir
) -> None:
    """With recovery on, a second run reads only what arrived after the first; nothing twice
    (each partition resumes from its own offset)."""
    src, out, dlq = new_topic(2), new_topic(1), new_topic(1)
    rec = recovery_dir(1)
    from bytewax.recovery import RecoveryConfig

    produce(kafka_bootstrap, src, [trade_json(id=f"a{i}") for i in range(50)])
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0),
             epoch_interval=timedelta(milliseconds=200), recovery_config=RecoveryConfig(str(rec)))
    produce(kafka_bootstrap, src, [trade_json(id=f"b{i}") for i in range(30)])
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0),
             epoch_interval=timedelta(milliseconds=200), recovery_config=RecoveryConfig(str(rec)))
    ids = [decode(out, v).id for _, _, v in consume_all(kafka_bootstrap, out, expect=80)]
    assert sorted(ids) == sorted([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(30)])


def test_an_untimed_topic_keeps_records_the_time_policy_would_call_late(
        kafka_bootstrap, new_topic) -> None:
    """The same out-of-order times are dead-lettered as late on a timed topic and kept on
    one named in ``untimed_topics`` (the firm process's detections topic)."""
    import time

    from riskguard.connectors.kafka import KafkaInput, RecordChecks
    from riskguard.schemas.time_policy import EventTimePolicy

    s = 1_000_000_000
    timed, untimed = new_topic(), new_topic()
    recs = [trade_json(id="new", ts=60 * s), trade_json(id="old", ts=5 * s)]
    produce(kafka_bootstrap, timed, recs)
    produce(kafka_bootstrap, untimed, recs)
    src = KafkaInput(kafka_bootstrap, [timed, untimed], checks=RecordChecks(
        time_policy=EventTimePolicy(max_lateness_ns=10 * s),
        untimed_topics=frozenset({untimed})))
    parts = src.partitions()
    got: dict[str, list[str]] = {}
    for topic in (timed, untimed):
        part = parts[f"0-{topic}"]
        out: list = []
        deadline = time.monotonic() + 20
        while len(out) < 2 and time.monotonic() < deadline:
            out.extend(part.next_batch())
        part.close()
        got[topic] = [r.reason if isinstance(r, DeadLetter) else r.id for r in out]
    assert got == {timed: ["new", "late"], untimed: ["new", "old"]}


def test_a_resumed_partition_fails_loudly_on_a_lost_offset_instead_of_skipping() -> None:
    """Fresh partitions start at the logical starting_offset; a lost resumed offset is an
    error (auto.offset.reset=error), never a silent skip.
    (The dev broker never reports an out-of-range offset, so this is checked on the config
    the consumer is built with; a real cluster answers OFFSET_OUT_OF_RANGE.)"""
    from riskguard.connectors.kafka import KafkaInput

    src = KafkaInput("127.0.0.1:1", ["t"], starting_offset="latest")
    config = src.consumer_config()
    assert config["auto.offset.reset"] == "error"  # fresh starts use logical offsets
    assert config["enable.auto.commit"] is False


def test_a_resume_naming_a_partition_the_source_no_longer_reads_stops_start_up() -> None:
    """A recovery state for a partition the topics no longer have (a topic dropped, or
    fewer partitions) is a config error naming it, not silently forgotten."""
    from riskguard.connectors.kafka import KafkaInput

    class Listed(KafkaInput):
        def kafka_parts(self) -> list[tuple[str, int]]:
            return [("f", 0), ("f", 1)]

    src = Listed("127.0.0.1:1", ["f"])
    with pytest.raises(ConfigError, match="no longer reads") as err:
        src.build_part("in", "kafka", {"1-f": (5, -1), "9-f": (1, -1)})
    assert err.value.found == ["9-f"]


def test_a_source_counts_only_the_dead_letters_its_split_says_are_its_own() -> None:
    """Market processes read the fills topic whole and one of them writes each dead
    letter: the others pass theirs on (filtered later) without counting them, so the
    processes' counts sum to the dead letters written."""
    from riskguard.connectors.kafka.partition import SourcePartition
    from riskguard.operators.core.metrics import DEAD_LETTERS

    def read(counts: Any) -> tuple[list[Any], float]:
        before = DEAD_LETTERS.labels("fills-x", "malformed")._value.get()
        part = SourcePartition(cast(Any, ServedConsumer([[ServedMessage(0, b'{"type":"fill",')]])),
                                "fills-x", 0, -2, Codec(), 100, None, None, lambda: 0,
                                counts_dead=counts)
        got = part.next_batch()
        return got, DEAD_LETTERS.labels("fills-x", "malformed")._value.get() - before

    mine, counted = read(None)
    assert [d.reason for d in mine] == ["malformed"] and counted == 1
    theirs, counted = read(lambda d: False)
    assert [d.reason for d in theirs] == ["malformed"] and counted == 0


def test_a_latest_start_resumes_at_the_end_it_started_from(kafka_bootstrap: str,
                                                            new_topic) -> None:
    """Started at ``latest`` and snapshotted before any message came, a source resumes
    where that end stood, so what was written while it was down is read, not skipped by
    starting again at the new end."""
    from riskguard.connectors.kafka import KafkaInput

    topic = new_topic(1)
    for i in range(3):  # one batch each: the dev broker under-reports a batch's end
        produce(kafka_bootstrap, topic, [trade_json(id=f"old{i}")])
    src = KafkaInput(kafka_bootstrap, [topic], starting_offset="latest", idle_eof_s=None)
    part = src.build_part("in", "kafka", None)
    assert part.next_batch() == []
    state = part.snapshot()
    part.close()
    for i in range(4):
        produce(kafka_bootstrap, topic, [trade_json(id=f"new{i}")])
    part = src.build_part("in", "kafka", state)
    got: list[str] = []
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        got.extend(r.id for r in part.next_batch())
    part.close()
    assert sorted(got) == [f"new{i}" for i in range(4)]


def test_a_sink_with_a_fixed_partition_writes_there(kafka_bootstrap: str, new_topic) -> None:
    """``KafkaOutput(partition=i)`` writes every item to partition ``i`` (modulo the
    count), whatever its key: a market process's own detections partition."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource
    from riskguard.connectors.kafka import kafka_output
    from riskguard.schemas import DetectProgress

    topic = new_topic(3)
    flow = Dataflow("fixed_partition")
    recs = op.input("in", flow, TestingSource(
        [DetectProgress(ts=k, source=f"s{k}") for k in range(6)]))
    kafka_output("out", recs, brokers=kafka_bootstrap, topic=topic, partition=4)
    run_main(flow)
    assert sorted((p, decode(topic, v).ts) for p, _o, v in
                  consume_all(kafka_bootstrap, topic, expect=6)) == [(1, k) for k in range(6)]


def test_reading_a_topic_whole_waits_for_every_partitions_end(kafka_bootstrap: str,
                                                              new_topic) -> None:
    """``scan_topic`` returns every message of every partition, each partition in
    order, finishing on the partitions' end events; an empty topic reads as empty."""
    from confluent_kafka import Producer
    from kafka_helpers import topic_values

    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(6000):
        producer.produce(topic, f"{i % 3}:{i:05d}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    got = topic_values(kafka_bootstrap, topic)
    assert sorted(got) == sorted(f"{i % 3}:{i:05d}".encode() for i in range(6000))
    for part in "012":
        mine = [v for v in got if v.startswith(part.encode())]
        assert mine == sorted(mine)
    assert topic_values(kafka_bootstrap, new_topic(partitions=2)) == []


def test_the_partitions_of_several_topics_come_from_one_look_and_a_missing_one_is_named(
        kafka_bootstrap: str, new_topic) -> None:
    """``partitions_of`` answers for every topic a source reads; a topic that is not
    there stops it, named, and is not created by looking."""
    from riskguard.connectors.kafka.consumer import partitions_of
    from riskguard.connectors.settings import KafkaSettings

    from riskguard.errors import BrokerError

    settings = KafkaSettings(bootstrap=kafka_bootstrap)
    two, three = new_topic(partitions=2), new_topic(partitions=3)
    assert partitions_of(settings, [two, three]) == {two: [0, 1], three: [0, 1, 2]}
    missing = f"{two}-missing"
    for _ in range(2):
        with pytest.raises(BrokerError, match=f"topic '{missing}' does not exist"):
            partitions_of(settings, [two, missing])
