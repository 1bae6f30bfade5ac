"""Event-time alignment between the Kafka source's partitions: one that runs ahead
waits, a key split stands where it skipped to, what alignment held back is not late
after a resume, and the cut of each read is the one a record-by-record scan makes."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.schemas import Codec, DeadLetter

from tests.kafka_helpers import produce, trade_json
from tests.served_partition import ServedConsumer, ServedMessage

pytestmark = pytest.mark.kafka


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
        p.produce(split, trade_json(id=f"m{i}", ts=i * s), theirs[i % len(theirs)].encode())
    assert p.flush(30) == 0
    produce(kafka_bootstrap, plain, [trade_json(id=f"f{i}", ts=i * s) for i in range(100)])
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
    produce(kafka_bootstrap, slow, [trade_json(id=f"s{i}", ts=i * s) for i in range(0, 20)])
    produce(kafka_bootstrap, fast, [trade_json(id=f"f{i}", ts=i * s) for i in range(10, 60)])

    def source(*topics: str) -> KafkaInput:
        # the slow partition written as it goes (a progress topic): at its end it goes on
        # holding the fast one back where it stands, as a slow partition not yet at its
        # end would (through one consumer, its end is seen with its last records), until
        # it stalls: the test sets the clock, so a loaded machine's slow fetch is no stall
        return KafkaInput(kafka_bootstrap, list(topics), clock=lambda: now,
                          align=Alignment(0.0, progress_topics={slow: 1}),
                          fetch=Fetch(batch_size=100), checks=RecordChecks(
                              time_policy=EventTimePolicy(max_lateness_ns=5 * s)))

    def drain(part, want: int) -> list:  # type: ignore[no-untyped-def]
        got: list = []
        deadline = time.monotonic() + 20
        while len(got) < want and time.monotonic() < deadline:
            got.extend(part.next_batch())
        return got

    now = 0
    parts = source(slow, fast).partitions()
    a, b = parts[f"0-{slow}"], parts[f"0-{fast}"]
    now = 11 * s  # the fast one, not read within its 10 s grace, holds the slow one no more
    assert [r.id for r in drain(a, 20)][-1] == "s19"   # the slow one is read to t=19
    emitted = drain(b, 10)          # the fast one may go to t=19 only (no stall: 11 s)
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

    msgs = [ServedMessage(off, b"{" if ts is None else trade_json(id=f"r{off}", ts=ts))
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
