"""Every write to Kafka is checked: a delivery the broker refuses raises DeliveryError
naming the writer, the topic and the reason, on the real dev broker; what it acknowledged
is counted and readable."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka_helpers import consume_all
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import TopicSpec, create_topics

from riskguard.errors import DeliveryError


def _topic(bootstrap: str) -> str:
    name = f"checked-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, [TopicSpec(name, partitions=1)])
    return name


def test_acknowledged_messages_are_counted_and_on_the_topic(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    producer = CheckedProducer(KafkaSettings(bootstrap=kafka_bootstrap), what="test writer")
    producer.produce(topic, b"m0", b"k")
    producer.produce_all(topic, [(b"k", b"m1"), (None, b"m2")])
    producer.flush()
    assert producer.acked == 3
    assert [v for _p, _o, v in consume_all(kafka_bootstrap, topic, expect=3)] == [
        b"m0", b"m1", b"m2"]


@pytest.mark.parametrize("errors_only", [False, True])
def test_a_refused_message_raises_naming_writer_topic_and_reason(
        kafka_bootstrap: str, errors_only: bool) -> None:
    """Once the producer knows the topic, a message to a partition it does not have is
    refused as it is queued: that raises at once, counted as a failed delivery."""
    topic = _topic(kafka_bootstrap)
    failed: list[int] = []
    raised: list[bool] = []
    producer = CheckedProducer(
        KafkaSettings(bootstrap=kafka_bootstrap), what="test writer",
        errors_only=errors_only, on_failed=lambda: failed.append(1),
        on_raise=lambda: raised.append(True))
    producer.produce(topic, b"fine", b"k", 0)
    producer.flush()
    assert producer.acked == (0 if errors_only else 1)
    with pytest.raises(DeliveryError) as err:
        producer.produce_all(topic, [(b"k", b"nowhere")], 7)
    assert str(err.value).startswith("test writer: 1 record(s) not acknowledged by Kafka")
    assert err.value.reasons[0].startswith(f"{topic}: ")
    assert "partition" in err.value.reasons[0].lower()
    assert failed == [1] and raised == [True]


def test_a_later_check_raises_once_a_delivery_failed(kafka_bootstrap: str) -> None:
    """Before the producer knows the topic, the same message fails on its way: a later
    ``check`` (or the ``produce`` after it) raises."""
    topic = _topic(kafka_bootstrap)
    producer = CheckedProducer(KafkaSettings(bootstrap=kafka_bootstrap), what="test writer",
                               delivery_timeout_s=1, linger_ms=0)
    producer.produce(topic, b"nowhere", None, 3)
    deadline = time.monotonic() + 10
    with pytest.raises(DeliveryError, match="test writer"):
        while time.monotonic() < deadline:  # the report comes with a later poll
            producer.check()
            producer.produce(topic, b"fine", None, 0)
            time.sleep(0.01)
