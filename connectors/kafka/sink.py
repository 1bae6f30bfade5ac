"""The Kafka sink (:func:`kafka_output`): our own, because bytewax's ``KafkaSink``
ignores delivery failures.

It writes through a :class:`~riskguard.connectors.kafka.producer.CheckedProducer` with
error-only delivery reports, and flushes at every epoch boundary (the sink partition's
snapshot, i.e. before bytewax commits the epoch) and on close. Any unacknowledged
message raises :class:`~riskguard.errors.DeliveryError`, failing the flow loudly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from riskguard.connectors.kafka.consumer import list_partitions
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings, as_settings
from riskguard.operators.core.metrics import (
    DELIVERY_ERRORS,
    EVENTS_OUT,
)
from riskguard.schemas.codec import encode

_FAILING: set[str] = set()  # what has raised in this process: the flow is failing


def flow_failing(what: str) -> None:
    """Note that ``what`` (a sink's topic, a source's partition) is about to raise: the
    flow is failing, and the sinks closed while bytewax unwinds drop what they still
    hold instead of raising again, which would abort the process before the first error
    is reported (a restart from recovery writes it again)."""
    _FAILING.add(what)


class _SinkPartition(StatefulSinkPartition[tuple[bytes | None, bytes], None]):
    def __init__(self, sink: KafkaOutput, idx: int) -> None:
        self._failed = False
        self._topic, self._idx = sink.topic, idx
        self._out = EVENTS_OUT.labels(sink.topic)
        self._producer = CheckedProducer(
            sink.settings, what=f"Kafka sink for topic {sink.topic!r} partition {idx} "
            "(-1: by key)", delivery_timeout_s=sink.delivery_timeout_s,
            linger_ms=sink.linger_ms, flush_timeout_s=sink.flush_timeout_s,
            errors_only=True, on_failed=DELIVERY_ERRORS.labels(sink.topic).inc,
            on_raise=self._failing)

    def _failing(self) -> None:
        self._failed = True
        flow_failing(self._topic)

    def write_batch(self, values: list[tuple[bytes | None, bytes]]) -> None:
        # idx -1: librdkafka's partitioner picks
        self._producer.produce_all(self._topic, values, self._idx)
        self._out.inc(len(values))
        self._producer.check()

    def snapshot(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        # after a failure anywhere, raising again while bytewax unwinds would abort the
        # process before the first error is reported (see flow_failing)
        if self._failed or _FAILING:
            self._producer.drop()
            return
        self._producer.flush()


class KafkaOutput(FixedPartitionedSink[tuple[bytes | None, bytes], None]):
    """Delivery-checked Kafka sink, written by the one worker of its dataflow.

    Items are ``(route_key, (kafka_key, value_bytes))``; :func:`kafka_output`
    builds them. librdkafka chooses each message's Kafka partition from its Kafka key,
    so a key's messages stay in order. ``delivery_timeout_s`` bounds how long librdkafka
    retries a message before reporting it failed.

    ``partition``: every item goes to this Kafka partition (modulo the topic's count):
    a market process writes the ``detections`` partition of its index, which the firm
    process knows to align on (``Alignment(progress_topics=...)``).
    """

    def __init__(
        self,
        brokers: str | KafkaSettings,
        topic: str,
        *,
        delivery_timeout_s: float = 30.0,
        linger_ms: int = 5,
        flush_timeout_s: float | None = None,
        partition: int | None = None,
    ) -> None:
        self.partition = partition
        self.settings = as_settings(brokers)
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s
        self.linger_ms = linger_ms
        self.flush_timeout_s = flush_timeout_s or delivery_timeout_s + 5.0

    def list_parts(self) -> list[str]:
        return ["kafka"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPartition:
        _FAILING.clear()  # a new execution starts healthy
        idx = -1  # librdkafka's partitioner picks by key
        if self.partition is not None:
            idx = self.partition % len(list_partitions(self.settings, self.topic))
        return _SinkPartition(self, idx)


def route_key(record: Any) -> str:
    """A record's own Kafka key: its ``key``, or else its id ('' when it has neither)."""
    for attr in ("key", "id", "command_id", "record_id", "update_id"):
        value = getattr(record, attr, None)
        if isinstance(value, str):
            return value
    return ""


def kafka_message(item: Any) -> tuple[str, tuple[bytes | None, bytes]]:
    """``(key, (key bytes or None, value bytes))`` of an item as the sink writes it: a
    ``(key, record)`` pair, or a record keyed by its route."""
    if isinstance(item, tuple):
        key, value = item
    else:
        key, value = route_key(item), item
    data = value if isinstance(value, bytes) else encode(value)
    return key, (key.encode() if key else None, data)


@operator
def kafka_output(
    step_id: str,
    up: Stream[Any],
    *,
    brokers: str | KafkaSettings,
    topic: str,
    key: Callable[[Any], str] | None = None,
    **kwargs: Any,
) -> None:
    """Write records (or ``(key, record)`` / ``(key, bytes)`` pairs) to ``topic``.

    Records are encoded with the wire contract. The Kafka key is the given
    ``key(record)``, the pair's key, or the record's id. Keyword arguments are
    those of :class:`KafkaOutput`.
    """
    # one Python call per batch (bytewax's map calls one per item)
    if key is not None:
        kv = op.flat_map_batch("encode", up,
                               lambda recs: [kafka_message((key(r), r)) for r in recs])
    else:
        kv = op.flat_map_batch("encode", up, lambda items: list(map(kafka_message, items)))
    op.output("kafka_output", kv, KafkaOutput(brokers, topic, **kwargs))
