"""Kafka source and sink against the real dev broker."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, cast

import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.dataflows.passthrough import build
from riskguard.schemas import ALL_TYPES, Codec, DeadLetter, decode, encode

from riskguard.errors import ConfigError
from tests.kafka_helpers import consume_all, produce
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


def _trade(**over: object) -> bytes:
    base = {"type": "trade", "id": "b", "venue": "okx", "instrument": "BTC-USDT", "ts": 1,
            "price": 1.0, "qty": 1.0, "side": "buy"}
    base.update(over)
    import json
    return json.dumps(base).encode()


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
    ("string for float", _trade(price="1.0"), "validation", "$.price"),
    ("string for int", _trade(ts="1"), "validation", "$.ts"),
    ("float for int", _trade(ts=1.5), "validation", "$.ts"),
    ("int for string", _trade(venue=7), "validation", "$.venue"),
    ("object for string", _trade(id={"a": 1}), "validation", "$.id"),
    ("bad enum", _trade(side="up"), "validation", "$.side"),
    ("null for required", _trade(qty=None), "validation", "$.qty"),
    ("missing field", b'{"type":"trade","id":"b","venue":"okx"}', "validation", "$.instrument"),
    ("nan literal", GOOD.replace(b'"price":1.0', b'"price":NaN'), "malformed", "$"),
    ("inf literal", GOOD.replace(b'"price":1.0', b'"price":Infinity'), "malformed", "$"),
    ("overflowing float", GOOD.replace(b'"price":1.0', b'"price":1e999'), "non_finite", "$.price"),
    ("int over 64 bits", _trade(ts=2**70), "validation", "$.ts"),
    ("negative time", _trade(ts=-5), "validation", "$.ts"),
    ("negative size", _trade(qty=-3.0), "validation", "$.qty"),
    ("zero price", _trade(price=0.0), "validation", "$.price"),
    ("unknown tag", _trade(type="teleport"), "unknown_type", "$.type"),
    ("missing tag", b'{"id":"b"}', "unknown_type", "$.type"),
    ("unknown major version", _trade(v=2), "unknown_version", "$.v"),
    ("oversize", b'{"type":"trade","id":"' + b"a" * 70_000 + b'"}', "oversize", "$"),
    ("non-utf8 string", GOOD.replace(b'"okx"', b'"ok\xff"'), "non_utf8", "$"),
    ("name with spaces", _trade(venue="o k x"), "validation", "$.venue"),
    ("too long id", _trade(id="x" * 200), "validation", "$.id"),
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
        values.append(_trade(id=f"good{i}"))
        values.append(raw)
    values.append(_trade(id="last"))
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

    produce(kafka_bootstrap, src, [_trade(id=f"a{i}") for i in range(50)])
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0),
             epoch_interval=timedelta(milliseconds=200), recovery_config=RecoveryConfig(str(rec)))
    produce(kafka_bootstrap, src, [_trade(id=f"b{i}") for i in range(30)])
    run_main(build(kafka_bootstrap, [src], out, dlq, idle_eof_s=1.0),
             epoch_interval=timedelta(milliseconds=200), recovery_config=RecoveryConfig(str(rec)))
    ids = [decode(out, v).id for _, _, v in consume_all(kafka_bootstrap, out, expect=80)]
    assert sorted(ids) == sorted([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(30)])


def test_event_time_alignment_holds_a_partition_that_runs_ahead() -> None:
    """With alignment, a partition may not emit records more than the skew ahead of the
    slowest live partition. One that reached its end holds no one back; one that is merely
    slow (a loaded machine, a long fetch) keeps holding until it stalls for stall_ns; one
    that has not received anything yet holds the others during the start-up grace."""
    from riskguard.connectors.kafka import EventTimeAlignment

    al = EventTimeAlignment(2, stall_ns=100, grace_ns=50)
    al.register("a", now=0, watermark=-1)
    al.register("b", now=0, watermark=-1)
    assert al.frontier("a", now=10) == -1          # b has not started: grace
    al.update("b", head=10, last=-1, got_data=True, now=20)
    assert al.frontier("a", now=20) == 10          # a may emit up to 10 + 2
    al.update("b", head=None, last=10, got_data=False, now=30)
    assert al.frontier("a", now=60) == 10          # b drained its buffer, not at its end
    assert al.frontier("a", now=110) == 10         # 90 without data: slow, still held
    assert al.frontier("a", now=200) == 2**63      # stalled past stall_ns: a runs free
    al.update("b", head=None, last=10, got_data=False, now=210, at_end=True)
    assert al.frontier("a", now=211) == 2**63      # b is caught up: nothing to wait for
    al.register("c", now=300, watermark=7)
    assert al.frontier("a", now=310) == 7          # c just started, no data yet
    al.update("c", head=None, last=7, got_data=False, now=320, at_end=True)
    assert al.frontier("a", now=320) == 2**63      # c is empty: free at once
    al.register("d", now=400, watermark=5)
    assert al.frontier("a", now=460) == 2**63      # d never started: grace over


@pytest.mark.kafka
def test_a_key_split_that_only_skips_others_keys_does_not_hold_its_process_back(
        kafka_bootstrap, new_topic) -> None:
    """A key-split partition none of whose keys are this process's emits nothing,
    but it stands where it has skipped to (the event time of the last message it
    passed), not at the start: the process's other partitions may run up to there
    within the skew instead of waiting for it to reach the partition's end (with a
    backlog, that held a whole process back at start-up: 1.3 s in the 2-process guard
    bench). They never run past where it stands."""
    import time

    from confluent_kafka import Producer
    from riskguard.connectors.kafka import Alignment, Fetch, KafkaInput, KeySplit

    s = 1_000_000_000
    split, plain = new_topic(), new_topic()
    theirs = [f"v{i}/BTC-PERP" for i in range(40)]
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(100):
        p.produce(split, _trade(id=f"m{i}", ts=i * s), theirs[i % len(theirs)].encode())
    assert p.flush(30) == 0
    produce(kafka_bootstrap, plain, [_trade(id=f"f{i}", ts=i * s) for i in range(100)])
    # fair reads: each takes at most a batch of the split partition, so it moves in steps
    src = KafkaInput(kafka_bootstrap, [split, plain], align=Alignment(0.0),
                     fetch=Fetch(batch_size=10, fair=True),
                     split=KeySplit(frozenset({split}), lambda _key: False))
    parts = src.partitions()
    a, b = parts[f"0-{split}"], parts[f"0-{plain}"]
    got: list = []
    pause = time.monotonic() + 1.0
    while time.monotonic() < pause:  # the replica has not moved: everything is held
        got.extend(b.next_batch())
    assert got == []
    deadline = time.monotonic() + 20
    while a.snapshot()[0] < 1 and time.monotonic() < deadline:  # -2: not read yet
        assert a.next_batch() == []  # none of the keys are its own
    soon = time.monotonic() + 5.0  # well within the 10 s start-up grace of alignment
    while not got and time.monotonic() < soon:
        got.extend(b.next_batch())
        if not got:  # the one consumer fills for both: the split reads on, as a bundle does
            assert a.next_batch() == []
    passed = a.snapshot()[0]  # the next offset: it has skipped messages 0..passed-1
    assert got, "the plain partition was held back by a split with nothing of its own"
    assert 0 < passed < 100
    assert max(r.ts for r in got) <= (passed - 1) * s  # never past where the split stands
    while len(got) < 100 and time.monotonic() < deadline:
        assert a.next_batch() == []
        got.extend(b.next_batch())
    a.close()
    b.close()
    assert [r.id for r in got] == [f"f{i}" for i in range(100)]


def test_an_untimed_topic_keeps_records_the_time_policy_would_call_late(
        kafka_bootstrap, new_topic) -> None:
    """The same out-of-order times are dead-lettered as late on a timed topic and kept on
    one named in ``untimed_topics`` (the firm process's detections topic)."""
    import time

    from riskguard.connectors.kafka import KafkaInput, RecordChecks
    from riskguard.schemas.time_policy import EventTimePolicy

    s = 1_000_000_000
    timed, untimed = new_topic(), new_topic()
    recs = [_trade(id="new", ts=60 * s), _trade(id="old", ts=5 * s)]
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


@pytest.mark.kafka
def test_records_held_back_by_alignment_are_not_late_after_a_resume(kafka_bootstrap,
                                                                     new_topic) -> None:
    """A partition that ran ahead has fetched (and lateness-checked) records it still holds;
    its snapshot resumes before them, and at the watermark of what it emitted, so on resume
    they come back as records, not as 'late' dead letters."""
    import time

    from riskguard.connectors.kafka import Alignment, Fetch, KafkaInput, RecordChecks
    from riskguard.schemas.time_policy import EventTimePolicy

    s = 1_000_000_000
    slow, fast = new_topic(), new_topic()
    produce(kafka_bootstrap, slow, [_trade(id=f"s{i}", ts=i * s) for i in range(0, 20)])
    produce(kafka_bootstrap, fast, [_trade(id=f"f{i}", ts=i * s) for i in range(10, 60)])

    def source(*topics: str) -> KafkaInput:
        # the slow partition written as it goes (a progress topic): at its end it goes on
        # holding the fast one back where it stands, as a slow partition not yet at its
        # end would (through one consumer, its end is seen with its last records)
        return KafkaInput(kafka_bootstrap, list(topics),
                          align=Alignment(0.0, progress_topics={slow: 1}),
                          fetch=Fetch(batch_size=100), checks=RecordChecks(
                              time_policy=EventTimePolicy(max_lateness_ns=5 * s)))

    def drain(part, want: int) -> list:  # type: ignore[no-untyped-def]
        got: list = []
        deadline = time.monotonic() + 20
        while len(got) < want and time.monotonic() < deadline:
            got.extend(part.next_batch())
        return got

    parts = source(slow, fast).partitions()
    a, b = parts[f"0-{slow}"], parts[f"0-{fast}"]
    assert [r.id for r in drain(a, 20)][-1] == "s19"   # the slow one is read to t=19
    emitted = drain(b, 10)                              # the fast one may go to t=19 only
    assert [r.id for r in emitted] == [f"f{i}" for i in range(10, 20)]
    state = b.snapshot()
    assert state[1] == 19 * s                           # not t=59, which it fetched
    a.close()
    b.close()
    resumed = source(fast).partitions({f"0-{fast}": state})[f"0-{fast}"]
    rest = drain(resumed, 40)
    resumed.close()
    assert [type(r).__name__ for r in rest] == ["Trade"] * 40
    assert [r.id for r in rest] == [f"f{i}" for i in range(20, 60)]


@pytest.mark.kafka
@pytest.mark.parametrize("align_skew_s", [None, 0.0])
def test_a_shared_consumer_reads_at_most_a_batch_per_partition_per_read(
        kafka_bootstrap, new_topic, align_skew_s) -> None:
    """With ``Fetch.fair``, each read through the source's one consumer takes at most
    ``batch_size``
    of its partition, so a 1,000-record burst on a busy topic is spread over ten or more
    reads (worker steps) instead of one. With event-time alignment, the reader held back
    does not stop the other from reading. Nothing is lost or reordered."""
    import time

    from riskguard.connectors.kafka import Alignment, Fetch, KafkaInput

    busy, quiet = new_topic(), new_topic()
    produce(kafka_bootstrap, busy, [_trade(id=f"m{i}", ts=i) for i in range(1000)])
    produce(kafka_bootstrap, quiet, [_trade(id=f"q{i}", ts=i * 100) for i in range(10)])
    src = KafkaInput(kafka_bootstrap, [busy, quiet], fetch=Fetch(batch_size=100, fair=True),
                     align=None if align_skew_s is None else Alignment(align_skew_s))
    parts = src.partitions()
    a, b = parts[f"0-{busy}"], parts[f"0-{quiet}"]
    got_busy: list = []
    got_quiet: list = []
    sizes: list[int] = []
    deadline = time.monotonic() + 20
    while (len(got_busy) < 1000 or len(got_quiet) < 10) and time.monotonic() < deadline:
        for part, got in ((a, got_busy), (b, got_quiet)):
            batch = part.next_batch()
            sizes.append(len(batch))
            got.extend(batch)
    a.close()
    b.close()
    assert [r.id for r in got_busy] == [f"m{i}" for i in range(1000)]
    assert [r.id for r in got_quiet] == [f"q{i}" for i in range(10)]
    assert max(sizes) <= 100
    assert len([n for n in sizes if n]) >= 11


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


class _FakePart:
    """A source partition that serves preset batches, then ends."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = list(batches)
        self.read = 0
        self.closed = False

    def next_batch(self) -> list[str]:
        if not self.batches:
            raise StopIteration
        got = self.batches.pop(0)
        self.read += len(got)
        return got

    def snapshot(self) -> tuple[int, int]:
        return self.read, -1

    def close(self) -> None:
        self.closed = True


def _bundle(parts: dict[str, _FakePart], cap: int, one_round: bool = False) -> Any:
    from riskguard.connectors.kafka.source import _Bundle

    return _Bundle(cast(Any, parts), cap, one_round=one_round)


def test_a_bundle_gathers_rounds_of_small_reads_into_one_batch() -> None:
    """Each round asks every partition once; rounds go on until the cap or a round with
    nothing; partitions that end keep their last state and are closed."""
    a = _FakePart([["a1"], ["a2"], [], ["a3"]])
    b = _FakePart([["b1", "b2"], [], []])
    bundle = _bundle({"a": a, "b": b}, cap=4)
    assert bundle.next_batch() == ["a1", "b1", "b2", "a2"]  # 2 rounds: cap reached
    assert bundle.next_batch() == []  # a round with nothing ends the read
    assert bundle.next_awake() is not None  # and backs off
    assert bundle.next_batch() == ["a3"]  # both end in this read's second round
    assert a.closed and b.closed
    with pytest.raises(StopIteration):
        bundle.next_batch()
    assert bundle.snapshot() == {"a": (3, -1), "b": (2, -1)}


def test_a_latency_first_bundle_reads_one_round() -> None:
    a, b = _FakePart([["a1"], ["a2"]]), _FakePart([["b1"]])
    bundle = _bundle({"a": a, "b": b}, cap=100, one_round=True)
    assert bundle.next_batch() == ["a1", "b1"]
    assert bundle.next_batch() == ["a2"]
    assert b.closed and not a.closed
    assert bundle.snapshot() == {"a": (2, -1), "b": (1, -1)}


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


class _Limits:
    """Alignment whose frontier follows a script (it may drop as well as rise)."""

    max_skew_ns = 0

    def __init__(self, limits: list[int]) -> None:
        self.limits = list(limits)

    def register(self, *args: object) -> None:
        pass

    def frontier(self, part: str, now: int) -> int:
        return self.limits.pop(0) if self.limits else 2**63

    def update(self, *args: object) -> None:
        pass

    def remove(self, part: str) -> None:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.integers(0, 50), st.none()), max_size=40),
       st.lists(st.integers(1, 15), min_size=1, max_size=5),
       st.lists(st.integers(-5, 60), max_size=60))
def test_alignment_emits_what_a_record_by_record_scan_would(
        stamps: list[int | None], cuts: list[int], limits: list[int]) -> None:
    """Held-back records go out up to the first one past the limit, found with one bisect
    over the fetch's running maximum (or a scan when the limit dropped below what already
    went out): the same records, the same emitted event time and the same resume offset
    as checking record by record. ``None`` stands for a malformed message (a dead
    letter, which never waits)."""
    from collections import deque

    from riskguard.connectors.kafka.partition import SourcePartition

    msgs = [ServedMessage(off, b"{" if ts is None else _trade(id=f"r{off}", ts=ts))
            for off, ts in enumerate(stamps)]
    fetches, at = [], 0
    for n in cuts * 40:
        if at >= len(msgs):
            break
        fetches.append(msgs[at:at + n])
        at += n
    part = SourcePartition(cast(Any, ServedConsumer(fetches)), "t", 0, 0, Codec(), 100, None,
                            None, lambda: 0, align=cast(Any, _Limits(limits)))
    served = iter(fetches)
    buf: deque = deque()  # the reference: record by record, as before the bisect
    emitted = -1
    for limit in [*limits, 2**63]:
        if not buf:
            buf.extend(zip(next(served, []), range(10**9), strict=False))
        ref = []
        while buf:
            m, _ = buf[0]
            ts = None if m.value() == b"{" else stamps[m.offset()]
            if ts is not None:
                if ts > limit:
                    break
                emitted = max(emitted, ts)
            ref.append(m.offset())
            buf.popleft()
        got = part.next_batch()
        assert [r.offset if type(r) is DeadLetter else int(r.id[1:]) for r in got] == ref
        assert part._emitted_ts == emitted
        assert part.snapshot()[0] == (buf[0][0].offset() if buf else part._offset)


class _Stalling(ServedConsumer):
    """Serves its fetches only after ``stall`` empty reads; the broker reports ``end``."""

    def __init__(self, fetches: list[list[ServedMessage]], stall: int, end: int) -> None:
        super().__init__(fetches)
        self.stall, self.end = stall, end
        self.asked = 0

    def take(self, topic: str, idx: int) -> list[ServedMessage]:
        if self.stall > 0:
            self.stall -= 1
            return []
        return super().take(topic, idx)

    def end_offsets(self, topic: str, idx: int) -> tuple[int, int] | None:
        self.asked += 1
        return 0, self.end


def _read_until_end(part: Any) -> list[Any]:
    got: list[Any] = []
    with pytest.raises(StopIteration):
        for _ in range(10_000):
            got.extend(part.next_batch())
    return got


@pytest.mark.parametrize("stall", [0, 6, 9])
def test_an_idle_end_waits_for_messages_the_broker_still_holds(stall: int) -> None:
    """A bounded run ends a partition after ``idle_eof_s`` without messages, but not while
    the broker's high watermark says some are left: a fetch that stalls longer than the
    idle period (here 6 or 9 empty reads, the clock half a second later at each
    reading, against an idle period of 2 s) still
    delivers every record before the partition ends."""
    from riskguard.connectors.kafka.partition import SourcePartition

    msgs = [ServedMessage(i, _trade(id=f"r{i}", ts=i)) for i in range(6)]
    t = iter(range(0, 10**12, 5 * 10**8))  # each clock reading is half a second later
    shared = _Stalling([msgs[:2], msgs[2:]], stall, end=6)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 2 * 10**9, None,
                            lambda: next(t))
    assert [r.id for r in _read_until_end(part)] == [f"r{i}" for i in range(6)]
    assert part.snapshot()[0] == 6


def test_an_idle_end_with_messages_never_delivered_ends_after_five_idle_periods(
        caplog: pytest.LogCaptureFixture) -> None:
    """Messages the broker reports but no read returns (a transactional topic's closing
    marker, say) do not keep a bounded run open for ever: the partition ends after 5 idle
    periods, with a warning naming how many were left unread."""
    from riskguard.connectors.kafka.partition import SourcePartition

    t = iter(range(0, 10**12, 10**8))  # 0.1 s per clock reading
    shared = _Stalling([[ServedMessage(0, _trade(id="r0", ts=0))]], 0, end=2)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t))
    assert [r.id for r in _read_until_end(part)] == ["r0"]
    assert "1 messages unread" in caplog.text
    assert shared.asked >= 5


class _Unanswering(_Stalling):
    """The broker answers no end-of-input question after the first ``answered``."""

    def __init__(self, fetches: list[list[ServedMessage]], answered: int) -> None:
        super().__init__(fetches, 0, end=len(fetches[0]) if fetches else 0)
        self.answered = answered

    def end_offsets(self, topic: str, idx: int) -> tuple[int, int] | None:
        self.asked += 1
        return (0, self.end) if self.asked <= self.answered else None


def test_an_idle_end_the_broker_cannot_confirm_stops_the_flow_loudly() -> None:
    """A broker that stops answering cannot say the input is complete: the partition does
    not end as if it were. After 5 idle periods unanswered, a ``BrokerError`` names the
    topic, the partition and the cluster."""
    from riskguard.connectors.kafka.partition import _END_UNANSWERED, SourcePartition

    from riskguard.errors import BrokerError

    _END_UNANSWERED.clear()
    t = iter(range(0, 10**12, 10**8))  # 0.1 s per clock reading
    shared = _Unanswering([[ServedMessage(0, _trade(id="r0", ts=0))]], answered=0)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t))
    got: list[Any] = []
    with pytest.raises(BrokerError, match="partition 0: the broker at served:9092 has not"):
        for _ in range(10_000):
            got.extend(part.next_batch())
    assert [r.id for r in got] == ["r0"]
    assert shared.asked >= 5
    _END_UNANSWERED.clear()


def test_a_broker_that_answers_again_lets_the_idle_end_complete() -> None:
    """Unanswered questions followed by an answer: the partition ends normally, and the
    cluster's unanswered time starts again from zero."""
    from riskguard.connectors.kafka.partition import _END_UNANSWERED, SourcePartition

    _END_UNANSWERED.clear()
    t = iter(range(0, 10**12, 10**8))
    shared = _Unanswering([[ServedMessage(0, _trade(id="r0", ts=0))]], answered=0)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t))
    for _ in range(25):  # idle past 1 s, then 2 unanswered rechecks 0.25 s apart
        part.next_batch()
    assert shared.asked >= 1 and [k for k, _c in _END_UNANSWERED] == ["served:9092"]
    shared.answered = 10**9
    assert [r.id for r in _read_until_end(part)] == []
    assert not _END_UNANSWERED


def test_the_broker_says_what_an_idle_partition_has_left_to_read(kafka_bootstrap,
                                                                  new_topic) -> None:
    """Against the real broker: before a partition is read its watermarks say messages
    are left (an idle end would wait), and once every message is read they say none are
    (it may end). The stalling tests above stand in for the consumer only because a
    broker stall cannot be made to order.

    Each message goes in its own produce batch: the dev broker (Tansu 0.6) reports a
    high watermark one past the *first* offset of the last batch, so after one batch of
    5 it said 1, not 5 (Kafka says 5)."""
    import time

    from riskguard.connectors.kafka import KafkaInput

    topic = new_topic()
    for i in range(5):
        produce(kafka_bootstrap, topic, [_trade(id=f"r{i}", ts=i)], partition=0)
    part = KafkaInput(kafka_bootstrap, [topic], idle_eof_s=60.0).partitions()[f"0-{topic}"]
    assert part.shared.end_offsets(topic, 0) == (0, 5)
    assert part._unread_left(60 * 10**9, time.time_ns())  # nothing read yet: 5 left
    got: list = []
    deadline = time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        got.extend(part.next_batch())
    assert [r.id for r in got] == [f"r{i}" for i in range(5)]
    assert not part._unread_left(60 * 10**9, time.time_ns())  # all read: it may end
    part.close()


def _progress(source: str, ts: int, *, final: bool = False) -> bytes:
    from riskguard.schemas import DetectProgress

    return encode(DetectProgress(ts=ts, source=source, final=final))


def test_a_progress_partition_ends_on_its_writers_final_progress_not_on_idle() -> None:
    """A partition market processes write as they go (``progress_topics``) is not ended
    by idleness before a writer has written (it may still be starting up): it ends once
    every one of its writers' final progress is read, after everything before it."""
    from riskguard.connectors.kafka.partition import SourcePartition

    t = iter(range(0, 10**13, 5 * 10**8))  # half a second per clock reading
    late = [ServedMessage(0, _progress("detect/w0", 5)),
            ServedMessage(1, _progress("detect/w2", 6)),
            ServedMessage(2, _progress("detect/w0", 7, final=True)),
            ServedMessage(3, _progress("detect/w2", 8, final=True))]
    shared = _Stalling([late], stall=40, end=4)  # 20 s of clock with nothing written
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t), writers=2)
    got = _read_until_end(part)
    assert [(r.source, r.ts, r.final) for r in got] == [
        ("detect/w0", 5, False), ("detect/w2", 6, False), ("detect/w0", 7, True),
        ("detect/w2", 8, True)]


@pytest.mark.parametrize("wait_s", [0, 30])
def test_a_progress_partition_whose_writer_wrote_then_went_quiet_ends_idle(
        wait_s: int) -> None:
    """A writer that wrote and then fell silent without its final progress (killed in a
    bounded run, and not restarted) does not keep the reader open for ever: idleness
    ends it as usual, once the wait for a restarting writer (if any) is over too."""
    from riskguard.connectors.kafka.partition import SourcePartition

    t = iter(range(0, 10**13, 5 * 10**8))
    shared = _Stalling([[ServedMessage(0, _progress("detect/w0", 5))]], stall=0, end=1)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t), writers=1, writer_wait_ns=wait_s * 10**9)
    assert [r.ts for r in _read_until_end(part)] == [5]


def test_a_progress_partition_reads_on_after_its_writer_restarts() -> None:
    """A writer killed and resumed from its recovery snapshot is quiet, with nothing
    unread, for as long as it takes to start again: longer than ``idle_eof_s`` (here
    about 20 s against 1 s), shorter than the wait for a restarting writer (60 s). The
    partition does not end meanwhile: what the writer writes once resumed is read, and
    its final progress ends it."""
    from riskguard.connectors.kafka.partition import SourcePartition

    t = iter(range(0, 10**13, 5 * 10**8))  # half a second per clock reading
    before, after = [ServedMessage(0, _progress("market/0", 5))], [
        ServedMessage(1, _progress("market/0", 6)),
        ServedMessage(2, _progress("market/0", 6, final=True))]
    shared = _Stalling([before, *[[] for _ in range(40)], after], stall=0, end=1)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t), writers=1, writer_wait_ns=60 * 10**9)
    assert [(r.ts, r.final) for r in _read_until_end(part)] == [
        (5, False), (6, False), (6, True)]


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


def test_a_progress_partition_resumed_after_its_writers_final_progress_ends() -> None:
    """Killed after an epoch that read the writer's final progress (or after the bundle
    had ended that partition), the resumed partition reads nothing more and still ends,
    by idleness once the wait for a restarting writer is over, instead of never."""
    from riskguard.connectors.kafka.partition import SourcePartition

    t = iter(range(0, 10**15, 5 * 10**8))  # half a second per clock reading

    def part(fetches: list[list[ServedMessage]], offset: int, watermark: int = -1) -> Any:
        return SourcePartition(cast(Any, _Stalling(fetches, stall=0, end=2)), "d", 0,
                                offset, Codec(), 100, 10**9, None, lambda: next(t),
                                watermark=watermark, writers=1, writer_wait_ns=60 * 10**9)

    first = part([[ServedMessage(0, _progress("market/0", 5)),
                   ServedMessage(1, _progress("market/0", 6, final=True))]], -2)
    assert len(first.next_batch()) == 2
    offset, watermark = first.snapshot()
    assert _read_until_end(part([], offset, watermark)) == []


def test_a_latest_start_resumes_at_the_end_it_started_from(kafka_bootstrap: str,
                                                            new_topic) -> None:
    """Started at ``latest`` and snapshotted before any message came, a source resumes
    where that end stood, so what was written while it was down is read, not skipped by
    starting again at the new end."""
    from riskguard.connectors.kafka import KafkaInput

    topic = new_topic(1)
    for i in range(3):  # one batch each: the dev broker under-reports a batch's end
        produce(kafka_bootstrap, topic, [_trade(id=f"old{i}")])
    src = KafkaInput(kafka_bootstrap, [topic], starting_offset="latest", idle_eof_s=None)
    part = src.build_part("in", "kafka", None)
    assert part.next_batch() == []
    state = part.snapshot()
    part.close()
    for i in range(4):
        produce(kafka_bootstrap, topic, [_trade(id=f"new{i}")])
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
    """``read_topic_bytes`` returns every message of every partition, each partition in
    order, finishing on the partitions' end events; an empty topic reads as empty."""
    from confluent_kafka import Producer
    from riskguard.connectors.subscriber import read_topic_bytes

    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(6000):
        producer.produce(topic, f"{i % 3}:{i:05d}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    got = read_topic_bytes(kafka_bootstrap, topic, idle_timeout_s=0.5)
    assert sorted(got) == sorted(f"{i % 3}:{i:05d}".encode() for i in range(6000))
    for part in "012":
        mine = [v for v in got if v.startswith(part.encode())]
        assert mine == sorted(mine)
    assert read_topic_bytes(kafka_bootstrap, new_topic(partitions=2), idle_timeout_s=0.5) == []
