"""When a bounded run's Kafka partition ends: after an idle period with nothing left
at the broker (and loudly when the broker cannot say), and, for a partition other
flows write as they go, on its writers' final progress or once they stay quiet."""

from __future__ import annotations

from typing import Any, cast

import pytest
from riskguard.schemas import Codec, encode

from tests.kafka_helpers import produce, trade_json
from tests.served_partition import ServedConsumer, ServedMessage

pytestmark = pytest.mark.kafka


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

    msgs = [ServedMessage(i, trade_json(id=f"r{i}", ts=i)) for i in range(6)]
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
    shared = _Stalling([[ServedMessage(0, trade_json(id="r0", ts=0))]], 0, end=2)
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
    from riskguard.connectors.kafka.partition import END_UNANSWERED, SourcePartition

    from riskguard.errors import BrokerError

    END_UNANSWERED.clear()
    t = iter(range(0, 10**12, 10**8))  # 0.1 s per clock reading
    shared = _Unanswering([[ServedMessage(0, trade_json(id="r0", ts=0))]], answered=0)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t))
    got: list[Any] = []
    with pytest.raises(BrokerError, match="partition 0: the broker at served:9092 has not"):
        for _ in range(10_000):
            got.extend(part.next_batch())
    assert [r.id for r in got] == ["r0"]
    assert shared.asked >= 5
    END_UNANSWERED.clear()


def test_a_broker_that_answers_again_lets_the_idle_end_complete() -> None:
    """Unanswered questions followed by an answer: the partition ends normally, and the
    cluster's unanswered time starts again from zero."""
    from riskguard.connectors.kafka.partition import END_UNANSWERED, SourcePartition

    END_UNANSWERED.clear()
    t = iter(range(0, 10**12, 10**8))
    shared = _Unanswering([[ServedMessage(0, trade_json(id="r0", ts=0))]], answered=0)
    part = SourcePartition(cast(Any, shared), "t", 0, -2, Codec(), 100, 10**9, None,
                            lambda: next(t))
    for _ in range(25):  # idle past 1 s, then 2 unanswered rechecks 0.25 s apart
        part.next_batch()
    assert shared.asked >= 1 and [k for k, _c in END_UNANSWERED] == ["served:9092"]
    shared.answered = 10**9
    assert [r.id for r in _read_until_end(part)] == []
    assert not END_UNANSWERED


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
        produce(kafka_bootstrap, topic, [trade_json(id=f"r{i}", ts=i)], partition=0)
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
