"""Kafka source and sink that lose nothing.

**Source** (:func:`kafka_input`, :mod:`~riskguard.connectors.kafka.source`): one bytewax
partition per Kafka partition, assigned (no consumer group) and with offsets kept in
bytewax recovery state. Messages are decoded in batches straight into typed records
through the wire contract; bad ones become :class:`~riskguard.schemas.DeadLetter` on
``errs``. On resume the consumer uses ``auto.offset.reset=error`` so a lost offset is
loud rather than a silent skip. ``key_split_topics`` makes a topic's records stay on the
worker that reads them (see :class:`KafkaInput`). What its partitions share (the
consumer, event-time alignment, lag) is in :mod:`~riskguard.connectors.kafka.consumer`.

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
from riskguard.connectors.kafka.source import KafkaInput, kafka_input

__all__ = [
    "EventTimeAlignment",
    "KafkaInput",
    "KafkaOutput",
    "SharedConsumer",
    "consumer_lag",
    "kafka_input",
    "kafka_output",
    "list_partitions",
]
