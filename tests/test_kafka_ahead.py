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
from riskguard.connectors.kafka import KafkaInput, RecordChecks
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.connectors.kafka.source import _SourcePartition
from riskguard.operators.core.metrics import DEAD_LETTERS
from riskguard.schemas import Codec, DeadLetter, Trade, encode
from riskguard.schemas.time_policy import EventTimePolicy

from tests.kafka_helpers import produce

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01
YEAR = 365 * 86_400 * NS
HOUR = 3600 * NS


def _trade(i: int, ts: int, prefix: str = "t") -> bytes:
    return encode(Trade(id=f"{prefix}{i}", venue="okx", instrument="BTC-USDT", ts=ts,
                        price=100.0 + i, qty=1.0, side="buy"))


def _ids(items: list[Any]) -> list[str]:
    return [f"DL:{x.reason}" if isinstance(x, DeadLetter) else x.id for x in items]


class _Msg:
    """The parts of a confluent-kafka message the source reads."""

    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None


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


class _Served:
    """A shared consumer that serves preset fetches of one partition."""

    bootstrap = "served:9092"

    def __init__(self, fetches: list[list[Any]]) -> None:
        self.fetches = list(fetches)

    def add(self, topic: str, idx: int, offset: int) -> int:
        return offset

    def take(self, topic: str, idx: int) -> list[Any]:
        return self.fetches.pop(0) if self.fetches else []

    def hold(self, topic: str, idx: int, held: bool) -> None:
        pass

    def high_watermark(self, topic: str, idx: int) -> None:
        return None

    def end_offsets(self, topic: str, idx: int) -> tuple[int, int] | None:
        return None

    def remove(self, topic: str, idx: int) -> None:
        pass


def _messages(times: list[int], first: int = 0) -> list[_Msg]:
    return [_Msg(first + i, _trade(first + i, ts)) for i, ts in enumerate(times)]


def _read(fetches: list[list[Any]], policy: EventTimePolicy, watermark: int = -1,
          offset: int = -2) -> tuple[list[Any], _SourcePartition]:
    part = _SourcePartition(cast(Any, _Served(fetches)), "m", 3, offset, Codec(), 100, None,
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
    junk = [_Msg(2 + i, b"garbage") for i in range(3)]
    out, _ = _read([msgs + junk + _messages([T0 + NS], first=5), [_Eof()]],
                   EventTimePolicy())
    assert _ids(out) == ["t0", "DL:ahead", "DL:malformed", "DL:malformed", "DL:malformed",
                         "t5"]
    assert [x.offset for x in out[1:5]] == [1, 2, 3, 4]
    junk = [_Msg(2 + i, b"garbage") for i in range(16)]
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
