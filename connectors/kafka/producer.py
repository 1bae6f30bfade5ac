"""A Kafka producer that checks every delivery: :class:`CheckedProducer`.

Everything riskguard writes to Kafka goes through it: the flow's sink, ``riskguard
publish`` and the feed bridge, executors' acks, the subscriber's rejections, the replica
watch's and the guard's start-up alerts, ``riskguard command publish`` and the demo. It
produces with ``enable.idempotence`` and ``acks=all``; a message Kafka did not
acknowledge, failed or still queued when a flush times out, raises
:class:`~riskguard.errors.DeliveryError` naming the writer, the topic and the reasons.
None is dropped silently."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaException, Producer
from riskguard.connectors.settings import KafkaSettings, as_settings

from riskguard.errors import DeliveryError


class CheckedProducer:
    """Produces to Kafka (``settings``: an address or :class:`KafkaSettings`) and checks
    every delivery.

    ``what`` names the writer in its errors. ``errors_only``: librdkafka reports only the
    failed deliveries (no Python call per message; :attr:`acked` stays 0).
    ``on_failed`` is called for each failed delivery, ``on_raise`` just before a
    :class:`~riskguard.errors.DeliveryError` is raised (what was still queued is dropped
    by then). ``flush_timeout_s`` (default ``delivery_timeout_s`` + 5) bounds a
    :meth:`flush`.
    """

    def __init__(self, settings: KafkaSettings | str, *, what: str,
                 delivery_timeout_s: float = 30.0, linger_ms: int = 5,
                 flush_timeout_s: float | None = None, errors_only: bool = False,
                 on_failed: Callable[[], Any] | None = None,
                 on_raise: Callable[[], Any] | None = None) -> None:
        config = as_settings(settings).client_config()
        config.update({
            "enable.idempotence": True, "acks": "all",
            "message.timeout.ms": int(delivery_timeout_s * 1000), "linger.ms": linger_ms,
            "on_delivery": self._delivered,
        })
        if errors_only:
            config["delivery.report.only.error"] = True
        self._producer = Producer(config)
        self.what = what
        self.flush_timeout_s = flush_timeout_s or delivery_timeout_s + 5.0
        self.acked = 0
        self.errors: list[str] = []
        self._on_failed = on_failed
        self._on_raise = on_raise

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked += 1
            return
        self.errors.append(f"{msg.topic()}: {err.str()}")
        if self._on_failed is not None:
            self._on_failed()

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                partition: int = -1) -> None:
        """Queue one message (``partition`` -1: librdkafka's partitioner picks by key);
        a full local queue waits for deliveries to drain. Raises once any delivery
        failed, and at once for a message librdkafka refuses to queue (a partition the
        topic does not have, a message over its size limit)."""
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self._producer.poll(0.05)
                self._raise_if_failed()
            except KafkaException as err:
                self._refused(topic, err)

    def produce_all(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
                    partition: int = -1) -> None:
        """:meth:`produce` each ``(key, value)`` of a batch (one Python call a batch)."""
        produce = self._producer.produce
        for key, value in messages:
            try:
                produce(topic, value, key, partition=partition)
            except (BufferError, KafkaException):
                self.produce(topic, value, key, partition)

    def _refused(self, topic: str, err: KafkaException) -> None:
        """A message librdkafka would not queue: a failed delivery, raised now."""
        self.errors.append(f"{topic}: {err.args[0].str() if err.args else err}")
        if self._on_failed is not None:
            self._on_failed()
        self._raise_if_failed()

    def check(self) -> None:
        """Serve the delivery reports that have come; raises if any failed."""
        self._producer.poll(0)
        self._raise_if_failed()

    def flush(self) -> None:
        """Wait for every delivery; raises if any failed or is still queued."""
        self._raise_if_failed(self._producer.flush(self.flush_timeout_s))

    def drop(self) -> None:
        """Forget what is still queued (the writer is failing anyway)."""
        self._producer.purge()
        self._producer.flush(0)

    def _raise_if_failed(self, undelivered: int = 0) -> None:
        if not self.errors and not undelivered:
            return
        reasons = sorted(set(self.errors))[:5]
        total = len(self.errors) + undelivered
        acked = f"; {self.acked} acknowledged" if self.acked else ""
        msg = (f"{self.what}: {total} record(s) not acknowledged by Kafka "
               f"({len(self.errors)} failed, {undelivered} still queued after "
               f"{self.flush_timeout_s:.0f} s{acked}); reasons: {reasons or ['flush timeout']}")
        self.drop()
        if self._on_raise is not None:
            self._on_raise()
        raise DeliveryError(msg, undelivered=total, reasons=reasons)
