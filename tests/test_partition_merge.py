"""PartitionMerge: many partitions' messages in event-time order, whatever order the
source read them in; and BrokerEnds, which tells it which partitions are caught up,
against the real dev broker."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.connectors.kafka.merge import BrokerEnds, Frontier, Part, PartitionMerge
from riskguard.connectors.settings import KafkaSettings
from riskguard.schemas import Codec, Trade, encode
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.time_policy import EventTimePolicy

from tests.contract import (
    Case,
    check_input_not_mutated,
    check_resume_equals_uninterrupted,
    check_snapshot_independent,
    check_snapshot_pickles,
)

MS = 1_000_000


def trade(tid: str, ts_ms: int) -> bytes:
    return encode(Trade(id=tid, venue="v", instrument="BTC-USDT", ts=ts_ms * MS, price=1.0,
                        qty=1.0, side="buy"))


def messages(*parts: tuple[str, int, list[tuple[str, int]]]) -> list[Any]:
    """Each partition's trades as (topic, partition, offset, value) messages."""
    return [(topic, idx, off, trade(tid, ts)) for topic, idx, trades in parts
            for off, (tid, ts) in enumerate(trades)]


def merge(ends: dict[Part, int], *, untimed: frozenset[str] = frozenset(),
          clock: Callable[[], int] | None = None, stall_ns: int = 10**12,
          resume: Any = None) -> PartitionMerge:
    """A merge whose partitions end at the offsets ``ends`` gives (answered every time)."""
    ticks = itertools.count(0, MS)

    def caught_up(asked: dict[Part, int]) -> dict[Part, bool]:
        return {k: max(at, 0) >= ends[k] for k, at in asked.items() if k in ends}

    return PartitionMerge(
        lambda wm: PartitionAdmission(Codec(), EventTimePolicy(max_lateness_ns=10**12),
                                      resume=wm),
        caught_up, list(ends), clock=clock or ticks.__next__, untimed=untimed,
        stall_ns=stall_ns, probe_ns=0, resume=resume)


def ids(out: list[Any]) -> list[str]:
    return [r.id for r in out if type(r) is Trade]


def test_records_come_out_in_event_time_order_however_the_partitions_interleave() -> None:
    a = ("m", 0, [("a1", 10), ("a2", 30), ("a3", 50)])
    b = ("m", 1, [("b1", 20), ("b2", 40), ("b3", 60)])
    ends = {("m", 0): 3, ("m", 1): 3}
    for order in (messages(a, b), messages(b, a), sorted(messages(a, b), key=lambda m: m[2])):
        logic = merge(ends)
        out = [r for m in order for r in logic.on_event(m)]
        assert ids(out) == ["a1", "b1", "a2", "b2", "a3", "b3"]
        assert out[-1] == Frontier(60 * MS)


def test_a_record_waits_for_a_partition_that_is_not_caught_up() -> None:
    ends = {("m", 0): 1, ("m", 1): 1}  # partition 1 has a message still to come
    logic = merge(ends)
    assert logic.on_event(("m", 0, 0, trade("a", 50))) == []
    assert logic.next_deadline_ns() is not None  # it looks again while one waits
    assert logic.on_deadline() == []
    out = logic.on_event(("m", 1, 0, trade("b", 20)))
    assert ids(out) == ["b", "a"]
    assert logic.next_deadline_ns() is None


def test_a_caught_up_partition_holds_nothing_back() -> None:
    logic = merge({("m", 0): 2, ("m", 1): 0})  # partition 1 is empty
    out = logic.on_event(("m", 0, 0, trade("a", 50))) + logic.on_event(("m", 0, 1, trade("b", 60)))
    assert ids(out) == ["a", "b"]


def test_dead_letters_and_untimed_topics_go_at_once() -> None:
    logic = merge({("m", 0): 1, ("m", 1): 1}, untimed=frozenset({"acks"}))
    assert logic.on_event(("m", 0, 0, trade("a", 50))) == []
    bad = logic.on_event(("m", 0, 1, b"{not json"))
    assert [type(r) for r in bad] == [DeadLetter]
    assert (bad[0].topic, bad[0].partition, bad[0].offset) == ("m", 0, 1)
    ack = logic.on_event(("acks", 0, 0, trade("ack", 1)))
    assert ids(ack) == ["ack"]


def test_a_partition_silent_and_unanswered_for_the_stall_time_is_passed_over() -> None:
    now = [0]
    logic = PartitionMerge(lambda _wm: PartitionAdmission(Codec()), lambda _asked: {},
                           [("m", 0), ("m", 1)], clock=lambda: now[0], stall_ns=10 * MS,
                           probe_ns=0)
    assert logic.on_event(("m", 0, 0, trade("a", 50))) == []
    now[0] = 11 * MS
    assert ids(logic.on_deadline()) == ["a"]


def test_a_partition_behind_is_waited_for_while_the_broker_says_it_has_more() -> None:
    now = [0]
    logic = PartitionMerge(lambda _wm: PartitionAdmission(Codec()),
                           lambda asked: dict.fromkeys(asked, False),
                           [("m", 0), ("m", 1)], clock=lambda: now[0], stall_ns=10 * MS,
                           probe_ns=0)
    assert logic.on_event(("m", 0, 0, trade("a", 50))) == []
    now[0] = 60 * MS  # a backlog: partition 1 unread for long, but not stalled
    assert logic.on_deadline() == []


def test_a_record_behind_the_frontier_is_followed_by_a_new_frontier() -> None:
    ends = {("m", 0): 1, ("m", 1): 0}
    logic = merge(ends)
    assert logic.on_event(("m", 0, 0, trade("a", 50)))[-1] == Frontier(50 * MS)
    ends[("m", 1)] = 1
    out = logic.on_event(("m", 1, 0, trade("late", 20)))  # partition 1 was empty then
    assert ids(out) == ["late"]
    assert out[-1] == Frontier(50 * MS)


def _no_frontiers(outs: list[Any]) -> list[Any]:
    return [r for r in outs if type(r) is not Frontier]


CONTRACT = Case(
    "partition merge",
    lambda snap: merge({("m", 0): 6, ("m", 1): 6, ("n", 0): 4}, resume=snap),
    messages(("m", 0, [("a1", 10), ("a2", 30), ("a3", 50), ("a4", 55), ("a5", 70), ("a6", 90)]),
             ("n", 0, [("c1", 5), ("c2", 45), ("c3", 45), ("c4", 95)]),
             ("m", 1, [("b1", 20), ("b2", 40), ("b3", 45), ("b4", 60), ("b5", 80), ("b6", 99)])),
    normalize=_no_frontiers,
)


@pytest.mark.parametrize("check", [check_snapshot_pickles, check_snapshot_independent,
                                   check_resume_equals_uninterrupted, check_input_not_mutated])
def test_partition_merge_meets_the_logic_contract(check: Callable[[Case], None]) -> None:
    check(CONTRACT)


def test_broker_ends_finds_where_the_dev_broker_partitions_end(
        kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """The dev broker lists end offsets that lag its log; reading does not."""
    topic = new_topic(partitions=2, prefix="ends")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for i in range(300):
        producer.produce(topic, trade(f"t{i}", i), partition=0)
    producer.flush(10)
    ends = BrokerEnds(KafkaSettings(bootstrap=kafka_bootstrap))
    asked = {(topic, 0): 0, (topic, 1): -1}
    assert ends(asked) == {}  # first asked: it starts following them
    found: dict[Part, bool] = {}
    deadline = time.monotonic() + 20
    while len(found) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        found = ends(asked)
    assert found == {(topic, 0): False, (topic, 1): True}
    deadline = time.monotonic() + 20
    while ends({(topic, 0): 300}) != {(topic, 0): True} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ends({(topic, 0): 300}) == {(topic, 0): True}
    assert ends({(topic, 0): 299}) == {(topic, 0): False}
