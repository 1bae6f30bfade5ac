"""A lone record far ahead of its Kafka partition's watermark is an ``ahead`` dead letter,
not the partition's new time: one bad timestamp must not make every later genuine record
of the partition ``late``, with or without a processing clock. A genuine jump (the
records after it go on from it) is kept, and a record waiting for the next one to judge
it is let go at the partition's end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError
from riskguard.connectors.kafka import RecordChecks
from riskguard.connectors.kafka.admit import HOLD_WAIT_NS, PartitionAdmission
from riskguard.connectors.kafka.partition import SourcePartition
from riskguard.operators.core.metrics import DEAD_LETTERS
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
from riskguard.schemas import Codec, DeadLetter, Trade, encode
from riskguard.schemas.time_policy import EventTimePolicy

from tests.kafka_helpers import produce
from tests.served_partition import ServedConsumer, ServedMessage

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01
YEAR = 365 * 86_400 * NS
HOUR = 3600 * NS


def _trade(i: int, ts: int, prefix: str = "t") -> bytes:
    return encode(Trade(id=f"{prefix}{i}", venue="okx", instrument="BTC-USDT", ts=ts,
                        price=100.0 + i, qty=1.0, side="buy"))


def _ids(items: list[Any]) -> list[str]:
    return [f"DL:{x.reason}" if isinstance(x, DeadLetter) else x.id for x in items]


class _Err:
    def code(self) -> int:
        return KafkaError._PARTITION_EOF

    def str(self) -> str:
        return "end of partition"


class _Eof:
    """librdkafka's end-of-partition event."""

    def error(self) -> _Err:
        return _Err()

    def offset(self) -> int:
        return 0


def _messages(times: list[int], first: int = 0) -> list[ServedMessage]:
    return [ServedMessage(first + i, _trade(first + i, ts)) for i, ts in enumerate(times)]


def _read(fetches: list[list[Any]], policy: EventTimePolicy, watermark: int = -1,
          offset: int = -2) -> tuple[list[Any], SourcePartition]:
    part = SourcePartition(cast(Any, ServedConsumer(fetches)), "m", 3, offset, Codec(), 100, None,
                            policy, lambda: 0, watermark)
    out: list[Any] = []
    for _ in range(len(fetches) + 2):
        out.extend(part.next_batch())
    return out, part


def _ahead_count() -> float:
    return DEAD_LETTERS.labels("m", "ahead")._value.get()


# -- (a) no clock: historical events read back from Kafka

def test_a_far_future_record_without_a_clock_is_ahead_and_the_rest_is_admitted() -> None:
    times = [T0 + k * NS for k in range(8)]
    times[3] = T0 + YEAR
    msgs = _messages(times)
    before = _ahead_count()
    out, part = _read([msgs, [_Eof()]], EventTimePolicy())
    assert _ids(out) == ["t0", "t1", "t2", "DL:ahead", "t4", "t5", "t6", "t7"]
    dl = out[3]
    assert (dl.topic, dl.partition, dl.offset, dl.path) == ("m", 3, 3, "$.ts")
    assert dl.raw == msgs[3].value() and dl.found == str(T0 + YEAR)
    assert _ahead_count() - before == 1
    assert part.snapshot() == (8, T0 + 7 * NS)  # the bad time never was the watermark


# -- (b) with a clock: a backlog caught up after downtime, one record stamped "now"

def test_a_record_stamped_now_inside_an_hour_old_backlog_is_ahead() -> None:
    now = T0 + HOUR
    times = [T0 + k * NS for k in range(8)]
    times[4] = now  # within the future skew of the clock: not `future`
    policy = EventTimePolicy(clock=lambda: now)
    out, _ = _read([_messages(times), [_Eof()]], policy)
    assert _ids(out) == ["t0", "t1", "t2", "t3", "DL:ahead", "t5", "t6", "t7"]


def test_a_genuine_jump_that_the_next_records_go_on_from_is_kept() -> None:
    times = [T0, T0 + NS, T0 + 3 * HOUR, T0 + 3 * HOUR + NS, T0 + 3 * HOUR + 2 * NS]
    out, part = _read([_messages(times), [_Eof()]], EventTimePolicy())
    assert _ids(out) == ["t0", "t1", "t2", "t3", "t4"]
    assert part.snapshot()[1] == T0 + 3 * HOUR + 2 * NS


def test_a_record_held_at_the_end_of_a_fetch_waits_for_the_next_fetch() -> None:
    """A fetch that ends on a record far ahead says nothing about it: the next fetch's
    first record judges it, so where a fetch ends changes no outcome."""
    times = [T0, T0 + NS, T0 + YEAR, T0 + 2 * NS, T0 + 3 * NS]
    msgs = _messages(times)
    whole, _ = _read([msgs, [_Eof()]], EventTimePolicy())
    for cut in range(1, len(msgs)):
        split, _ = _read([msgs[:cut], [], msgs[cut:], [_Eof()]], EventTimePolicy())
        assert _ids(split) == _ids(whole) == ["t0", "t1", "DL:ahead", "t3", "t4"]


def test_a_record_held_at_the_partitions_end_is_admitted_there() -> None:
    """A quiet partition does not keep a genuine jump: at its end (librdkafka's
    end-of-partition event, after a fetch found nothing more) the held record goes on."""
    msgs = _messages([T0, T0 + NS, T0 + 2 * HOUR])
    before_end, part = _read([msgs], EventTimePolicy())
    assert _ids(before_end) == ["t0", "t1"]
    assert part.snapshot() == (2, T0 + NS)  # read again on resume, at the watermark before it
    out, part = _read([msgs, [_Eof()], _messages([T0 + 2 * HOUR + NS], first=3)],
                      EventTimePolicy())
    assert _ids(out) == ["t0", "t1", "t2", "t3"]
    assert part.snapshot() == (4, T0 + 2 * HOUR + NS)


def test_dead_letters_after_a_held_record_wait_behind_it_a_bounded_number() -> None:
    """Dead letters read after the held record come after its verdict, in offset order
    (a resume reads them again after it); after 16 of them it is let go, admitted."""
    msgs = _messages([T0, T0 + YEAR])
    junk = [ServedMessage(2 + i, b"garbage") for i in range(3)]
    out, _ = _read([msgs + junk + _messages([T0 + NS], first=5), [_Eof()]],
                   EventTimePolicy())
    assert _ids(out) == ["t0", "DL:ahead", "DL:malformed", "DL:malformed", "DL:malformed",
                         "t5"]
    assert [x.offset for x in out[1:5]] == [1, 2, 3, 4]
    junk = [ServedMessage(2 + i, b"garbage") for i in range(16)]
    out, _ = _read([msgs + junk + _messages([T0 + NS], first=18), [_Eof()]],
                   EventTimePolicy())
    assert _ids(out) == ["t0", "t1", *["DL:malformed"] * 16, "DL:late"]


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_resume_from_any_snapshot_gives_the_same_records(cut: int) -> None:
    """The snapshot of a partition holding a record resumes at that record's offset and
    the watermark before it: the same records come out as from an unbroken run."""
    times = [T0, T0 + YEAR, T0 + NS, T0 + 2 * NS, T0 + 3 * HOUR, T0 + 3 * HOUR + NS,
             T0 + YEAR + 3 * HOUR, T0 + 3 * HOUR + 2 * NS]
    msgs = _messages(times)
    whole, _ = _read([msgs, [_Eof()]], EventTimePolicy())
    first, part = _read([msgs[:cut]], EventTimePolicy())
    offset, watermark = part.snapshot()
    rest, _ = _read([msgs[offset:], [_Eof()]], EventTimePolicy(), watermark, offset)
    assert _ids(first + rest) == _ids(whole) == [
        "t0", "DL:ahead", "t2", "t3", "t4", "t5", "DL:ahead", "t7"]


def test_zero_turns_the_hold_off() -> None:
    times = [T0, T0 + YEAR, T0 + NS]
    out, _ = _read([_messages(times)], EventTimePolicy(max_lead_ns=0))
    assert _ids(out) == ["t0", "t1", "DL:late"]


# -- the same admission, one message at a time, for Flink (connectors/kafka/admit.py)

def _admission(policy: EventTimePolicy, clock: Callable[[], int] | None = None,
               resume: Any = None) -> PartitionAdmission:
    return PartitionAdmission(Codec(), policy, clock=clock, resume=resume)


def _admit(admit: PartitionAdmission, times: list[int], first: int = 0) -> list[Any]:
    return [r for i, ts in enumerate(times)
            for r in admit.on_event(("m", 3, first + i, _trade(first + i, ts)))]


def test_flink_admission_refuses_a_lone_far_future_record_with_or_without_a_clock() -> None:
    times = [T0 + k * NS for k in range(6)]
    times[2] = T0 + YEAR
    out = _admit(_admission(EventTimePolicy()), times)
    assert _ids(out) == ["t0", "t1", "DL:ahead", "t3", "t4", "t5"]
    assert (out[2].offset, out[2].raw) == (2, _trade(2, T0 + YEAR))
    now = T0 + HOUR
    times[2] = now
    admit = _admission(EventTimePolicy(clock=lambda: now), clock=lambda: now)
    assert _ids(_admit(admit, times)) == ["t0", "t1", "DL:ahead", "t3", "t4", "t5"]


def test_flink_admission_keeps_a_genuine_jump_and_lets_a_held_record_go() -> None:
    admit = _admission(EventTimePolicy())
    times = [T0, T0 + NS, T0 + 2 * HOUR, T0 + 2 * HOUR + NS, T0 + 5 * HOUR]
    assert _ids(_admit(admit, times)) == ["t0", "t1", "t2", "t3"]
    assert _ids(admit.on_eof()) == ["t4"]  # the input's end: nothing left to judge it
    clock = iter([100, 100 + HOLD_WAIT_NS - 1, 100 + HOLD_WAIT_NS])
    admit = _admission(EventTimePolicy(), clock=lambda: next(clock))
    assert _ids(_admit(admit, [T0])) == []
    assert admit.next_deadline_ns() == 100 + HOLD_WAIT_NS
    assert admit.on_deadline() == []                        # not yet
    assert _ids(admit.on_deadline()) == ["t0"]              # waited its bound
    assert admit.next_deadline_ns() is None


@pytest.mark.parametrize("cut", range(1, 7))
def test_flink_admission_resumed_from_a_snapshot_holding_a_record(cut: int) -> None:
    """A held record is in the snapshot (with the watermark before it): the restored
    logic judges it by the same next record."""
    times = [T0, T0 + YEAR, T0 + NS, T0 + 3 * HOUR, T0 + 3 * HOUR + NS, T0 + 3 * HOUR + YEAR,
             T0 + 3 * HOUR + 2 * NS]
    whole = _admit(_admission(EventTimePolicy()), times)
    first = _admission(EventTimePolicy())
    part = _admit(first, times[:cut])
    state = decode_snapshot(encode_snapshot(first.snapshot()))  # as an engine keeps it
    resumed = _admission(EventTimePolicy(), resume=state)
    rest = _admit(resumed, times[cut:], first=cut)
    assert _ids(part + rest) == _ids(whole) == [
        "t0", "DL:ahead", "t2", "t3", "t4", "DL:ahead", "t6"]


# -- the real source, through the real engine and broker

@pytest.mark.kafka
def test_a_far_future_record_on_the_broker_is_one_ahead_dead_letter(kafka_bootstrap: str,
                                                                     new_topic) -> None:
    """A topic of historical trades (no clock), one a year ahead among them: read by the
    Kafka source in a bytewax run, it is the one dead letter, with its raw bytes and
    offset, and every genuine trade after it is admitted, not late. On another partition
    a genuine jump that is the partition's last record is admitted at its end."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main
    from riskguard.connectors.kafka import kafka_input

    topic = new_topic(2)
    times = [T0 + k * NS for k in range(10)]
    times[3] = T0 + YEAR
    values = [_trade(i, ts) for i, ts in enumerate(times)]
    produce(kafka_bootstrap, topic, values, partition=0)
    produce(kafka_bootstrap, topic, [_trade(i, ts, "q") for i, ts in enumerate(
        [T0, T0 + NS, T0 + 2 * HOUR])], partition=1)
    flow = Dataflow("ahead")
    src = kafka_input("in", flow, brokers=kafka_bootstrap, topics=[topic], idle_eof_s=1.0,
                      checks=RecordChecks(time_policy=EventTimePolicy()))
    oks: list[Any] = []
    errs: list[Any] = []
    op.output("oks", src.oks, TestingSink(oks))
    op.output("errs", src.errs, TestingSink(errs))
    started = time.monotonic()
    run_main(flow)
    assert time.monotonic() - started < 60
    assert [r.id for r in oks if r.id[0] == "t"] == [f"t{i}" for i in range(10) if i != 3]
    assert [r.id for r in oks if r.id[0] == "q"] == ["q0", "q1", "q2"]
    assert [(d.reason, d.topic, d.partition, d.offset, d.raw) for d in errs] == [
        ("ahead", topic, 0, 3, values[3])]


def test_the_lead_is_configured_under_input_zero_or_at_least_the_lateness() -> None:
    from riskguard.dataflows.guard.config import InputConfig, check_lead

    from riskguard.errors import ConfigError

    assert InputConfig().max_lead_ns == 60 * NS
    check_lead(InputConfig(max_lead_ns=0))
    check_lead(InputConfig(max_lead_ns=10 * NS, max_lateness_ns=10 * NS))
    with pytest.raises(ConfigError) as err:
        check_lead(InputConfig(max_lead_ns=NS, max_lateness_ns=10 * NS))
    assert err.value.path == "input.max_lead_ns"
