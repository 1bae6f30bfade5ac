"""Kafka source and sink that lose nothing.

**Source** (:func:`kafka_input`, :mod:`~riskguard.connectors.kafka.source`): every
partition of its topics read by one worker, assigned (no consumer group), with offsets
kept in bytewax recovery state. Messages are decoded in batches straight into typed
records through the wire contract; bad ones become :class:`~riskguard.schemas.DeadLetter`
on ``errs``. On resume the consumer uses ``auto.offset.reset=error`` so a lost offset is
loud rather than a silent skip. A :class:`KeySplit` keeps, of a topic several processes
share, the keys that are this one's. What its partitions share (the consumer,
event-time alignment, lag) is in :mod:`~riskguard.connectors.kafka.consumer`.

**Sink** (:func:`kafka_output`, :mod:`~riskguard.connectors.kafka.sink`): our own,
because bytewax's ``KafkaSink`` ignores delivery failures. It produces with
``enable.idempotence=true`` and ``acks=all``, asks librdkafka for error-only delivery
reports, and flushes at every epoch boundary (the sink partition's snapshot, i.e.
before bytewax commits the epoch) and on close. Any unacknowledged message raises
:class:`~riskguard.errors.DeliveryError`, failing the flow loudly.
"""

from riskguard.connectors.kafka.consumer import (
    EventTimeAlignment,
    SharedConsumer,
    consumer_lag,
    list_partitions,
)
from riskguard.connectors.kafka.sink import KafkaOutput, kafka_output
from riskguard.connectors.kafka.source import (
    Alignment,
    Fetch,
    KafkaInput,
    KeySplit,
    RecordChecks,
    StartSignal,
    kafka_input,
)

__all__ = [
    "Alignment",
    "EventTimeAlignment",
    "Fetch",
    "KafkaInput",
    "KafkaOutput",
    "KeySplit",
    "RecordChecks",
    "SharedConsumer",
    "StartSignal",
    "consumer_lag",
    "kafka_input",
    "kafka_output",
    "list_partitions",
]
