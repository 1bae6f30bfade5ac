"""How the Kafka source reads: its partitions gathered into one batch a read (the
bundle), and fair reads that take at most a batch per partition."""

from __future__ import annotations

from typing import Any, cast

import pytest

from tests.kafka_helpers import produce, trade_json

pytestmark = pytest.mark.kafka


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
    produce(kafka_bootstrap, busy, [trade_json(id=f"m{i}", ts=i) for i in range(1000)])
    produce(kafka_bootstrap, quiet, [trade_json(id=f"q{i}", ts=i * 100) for i in range(10)])
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
    from riskguard.connectors.kafka.source import BundledPartitions

    return BundledPartitions(cast(Any, parts), cap, one_round=one_round)


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
