"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from riskguard.connectors.kafka import list_partitions
from riskguard.connectors.kafka.consumer import scan_topic
from riskguard.connectors.settings import KafkaSettings

if TYPE_CHECKING:
    from riskguard.dataflows.demo import PreparedRun


def trade_json(**over: object) -> bytes:
    """A trade's JSON value, ``over`` replacing or adding fields (any value: the malformed
    cases put wrong types in)."""
    base = {"type": "trade", "id": "b", "venue": "okx", "instrument": "BTC-USDT", "ts": 1,
            "price": 1.0, "qty": 1.0, "side": "buy"}
    base.update(over)
    return json.dumps(base).encode()


def produce(
    bootstrap: str, topic: str, values: Iterable[bytes], partition: int | None = None
) -> int:
    """Produce raw values and wait for every ack; returns how many were sent."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    n = 0
    for v in values:
        if partition is None:
            p.produce(topic, v)
        else:
            p.produce(topic, v, partition=partition)
        n += 1
    assert p.flush(30) == 0, "test producer could not deliver"
    return n


def topic_values(bootstrap: str, topic: str, idle_s: float = 0.5) -> list[bytes]:
    """Every message value of ``topic``, each partition's in order, read to its end."""
    return [v for _p, _o, v in scan_topic(KafkaSettings(bootstrap=bootstrap), topic,
                                          idle_s=idle_s)]


def consume_all(bootstrap: str, topic: str, expect: int | None = None, idle_s: float = 1.5,
                timeout_s: float = 30.0) -> list[tuple[int, int, bytes]]:
    """Every message of ``topic`` as ``(partition, offset, value)``.

    Stops after ``expect`` messages; without ``expect``, once every partition has
    reported its end (librdkafka's end-of-partition event, from the fetch response) with
    nothing after it, or after ``idle_s`` with neither messages nor end events. (The dev
    broker's listed high watermark under-reports, so ListOffsets is never used here.)
    """
    parts = list_partitions(KafkaSettings(bootstrap=bootstrap), topic)
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": False,
        "fetch.wait.max.ms": 20, "enable.partition.eof": True,
    })
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[tuple[int, int, bytes]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.1)
            for m in msgs:
                err = m.error()
                if err is None:
                    at_end.discard(m.partition())
                    out.append((m.partition(), m.offset(), m.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
            if msgs:
                last = time.monotonic()
            if expect is not None:
                if len(out) >= expect:
                    break
            elif len(at_end) == len(parts) or time.monotonic() - last > idle_s:
                break
    finally:
        c.close()
    return out


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (for bytewax ``-a`` addresses)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def hold_for_replay(run: PreparedRun) -> None:
    """A backlog replay's hold bounds: a record or signal waits for the slower process as
    long as it takes. The 5 s wall-time defaults trade order for latency live; on a loaded
    machine a replay reaches them, and what is released early may apply out of order."""
    book = run.config.parent / "playbook.toml"
    text = book.read_text()
    assert "max_hold_s = 5.0" in text
    book.write_text(text.replace("max_hold_s = 5.0", "max_hold_s = 300.0", 1))
    text = run.config.read_text()
    assert "[exposure]\n" in text
    run.config.write_text(
        text.replace("[exposure]\n", "[exposure]\nmax_hold_ns = 300_000_000_000\n", 1))
