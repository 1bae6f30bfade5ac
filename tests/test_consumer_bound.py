"""A partition whose reader is held back (event-time alignment through a backlog) is paused
in librdkafka once its list is full, and resumed when its reader has taken it down: memory
stays bounded, and every message is handed over once, in order."""

from __future__ import annotations

import time

import pytest
from riskguard.connectors.kafka import consumer
from riskguard.connectors.kafka.consumer import SharedConsumer

from tests.kafka_helpers import produce


@pytest.mark.kafka
@pytest.mark.parametrize("cap", ["messages", "bytes"])
def test_a_held_partition_is_paused_at_its_cap_and_loses_nothing(
    kafka_bootstrap: str, new_topic, monkeypatch: pytest.MonkeyPatch, cap: str,
) -> None:
    """Capped at 40 messages, or at 40 messages' worth of bytes (large messages)."""
    if cap == "messages":
        monkeypatch.setattr(SharedConsumer, "max_buffered", property(lambda _self: 40))
    else:
        monkeypatch.setattr(consumer, "MAX_BUFFERED_BYTES", 40 * 1000)
    topic = new_topic(2)
    for part in (0, 1):
        for start in range(0, 400, 50):  # several produce batches
            produce(kafka_bootstrap, topic, [b"%d" % k + b" " * 995
                                             for k in range(start, start + 50)],
                    partition=part)
    shared = SharedConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": "bound-test",
                             "enable.auto.commit": False}, batch_size=10)
    shared.add(topic, 0, 0)
    shared.add(topic, 1, 0)
    got: dict[int, list[bytes]] = {0: [], 1: []}
    most_held = 0
    deadline = time.monotonic() + 60
    while len(got[1]) < 400 and time.monotonic() < deadline:  # only partition 1 is read
        got[1].extend(m.value() for m in shared.take(topic, 1) if not m.error())
        most_held = max(most_held, len(shared._pending[(topic, 0)]))
        shared.wait(0.05)
    assert len(got[1]) == 400
    assert (topic, 0) in shared._paused, most_held
    assert most_held <= 40 + 2 * 20  # paused past its cap (a fill takes 20), not 400
    while len(got[0]) < 400 and time.monotonic() < deadline:  # now its reader catches up
        got[0].extend(m.value() for m in shared.take(topic, 0) if not m.error())
        shared.wait(0.05)
    assert got[0] == [b"%d" % k + b" " * 995 for k in range(400)]
    assert (topic, 0) not in shared._paused
    shared.remove(topic, 0)
    shared.remove(topic, 1)
