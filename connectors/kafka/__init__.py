"""Kafka source and sink that lose nothing.

The source (:func:`kafka_input`, :mod:`~riskguard.connectors.kafka.source`) reads every
partition assigned, offsets in bytewax recovery state, bad messages as dead letters;
each partition is read in :mod:`~riskguard.connectors.kafka.partition`, what its
partitions share is in :mod:`~riskguard.connectors.kafka.consumer`, and which keys of a
shared topic are this process's in :mod:`~riskguard.connectors.kafka.key_split`. The sink
(:func:`kafka_output`, :mod:`~riskguard.connectors.kafka.sink`) checks every delivery.
"""

from riskguard.connectors.kafka.consumer import (
    EventTimeAlignment,
    SharedConsumer,
    consumer_lag,
    list_partitions,
)
from riskguard.connectors.kafka.key_split import KeySplit
from riskguard.connectors.kafka.sink import KafkaOutput, kafka_output
from riskguard.connectors.kafka.source import (
    Alignment,
    Fetch,
    KafkaInput,
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
