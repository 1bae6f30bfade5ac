"""What an issuer already signed onto a commands topic: its highest delivered ``seq``.

A signing step that starts, or restarts from a snapshot older than its last
delivered command, must never hand out a ``seq`` that subscribers have
already seen: they would drop the new command as a replay, and if it differs
from the one first sent under that ``seq``, it is lost. The topic itself is
the record of what was delivered, so the signer starts after the highest
``seq`` found there (see :func:`riskguard.operators.signing_op.sign_commands`).

Only envelopes whose signature verifies under the signer's own public key
count: a forged message cannot push the sequence anywhere.

The scan reads each partition backwards in windows from its end until it
finds a command of the issuer (one issuer's commands are produced in ``seq``
order, so the last one has the highest ``seq``), and reads on past the end
the broker reports until the topic is quiet for ``idle_s`` (some brokers,
like the dev broker, under-report the high watermark).
"""

from __future__ import annotations

import time
import uuid

import msgspec
from confluent_kafka import Consumer, KafkaError, TopicPartition
from riskguard.connectors.kafka import list_partitions
from riskguard.connectors.settings import KafkaSettings
from riskguard.operators.crypto import PAYLOAD_COMMAND, VerifyKey, decode_envelope

from riskguard.errors import BrokerError, VerificationError


class _Head(msgspec.Struct):
    """The two fields the scan needs from a command payload."""

    issuer: str = ""
    seq: int = 0


_head = msgspec.json.Decoder(_Head)


def last_signed_seq(
    settings: KafkaSettings,
    topic: str,
    key: VerifyKey,
    issuer: str,
    *,
    window: int = 1000,
    idle_s: float = 0.5,
    timeout_s: float = 30.0,
) -> int:
    """Highest ``seq`` that ``issuer`` signed with ``key`` on ``topic`` (0 if none).

    Raises :class:`~riskguard.errors.BrokerError` when the topic cannot be read
    within ``timeout_s``: a signer that cannot tell where its sequence stands
    must not start.
    """
    parts = list_partitions(settings, topic, timeout_s=min(10.0, timeout_s))
    consumer = Consumer({
        **settings.client_config(),
        "group.id": f"riskguard-seq-scan-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
    })
    deadline = time.monotonic() + timeout_s
    try:
        best = 0
        for p in parts:
            best = max(best, _scan_partition(consumer, topic, p, key, issuer, window, idle_s,
                                             deadline))
        return best
    finally:
        consumer.close()


def _scan_partition(consumer: Consumer, topic: str, partition: int, key: VerifyKey, issuer: str,
                    window: int, idle_s: float, deadline: float) -> int:
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=max(0.1, deadline - time.monotonic()))
    except Exception as err:
        msg = f"cannot read the watermarks of {topic}[{partition}]: {err}"
        raise BrokerError(msg) from None
    end: int | None = None  # the first window reads past the reported end
    start = max(low, high - window)
    while True:
        found = _read(consumer, topic, partition, start, end, key, issuer, idle_s, deadline)
        if found or start <= low:
            return found
        end, start = start, max(low, start - window)


def _read(consumer: Consumer, topic: str, partition: int, start: int, end: int | None,
          key: VerifyKey, issuer: str, idle_s: float, deadline: float) -> int:
    """Highest verified ``seq`` of ``issuer`` in offsets ``[start, end)`` (open-ended: until
    the partition is quiet for ``idle_s`` after its end)."""
    consumer.assign([TopicPartition(topic, partition, start)])
    best = 0
    at_end = False
    quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if now > deadline:
            raise BrokerError(f"reading {topic}[{partition}] for the last signed seq timed out")
        if at_end and now - quiet_since >= idle_s:
            return best
        m = consumer.poll(0.05)
        if m is None:
            continue
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                at_end = True
                if end is not None:
                    return best
                continue
            raise BrokerError(f"reading {topic}[{partition}]: {err.str()}")
        quiet_since = time.monotonic()
        offset = m.offset() or 0
        if end is not None and offset >= end:
            return best
        best = max(best, _seq_of(m.value(), key, issuer))


def _seq_of(raw: bytes | None, key: VerifyKey, issuer: str) -> int:
    """The ``seq`` of a command ``issuer`` signed with ``key``; 0 for anything else."""
    if not raw:
        return 0
    try:
        env = decode_envelope(raw)
        if env.payload_type != PAYLOAD_COMMAND:
            return 0
        ours = [s for s in env.signatures if s.key_id == key.key_id]
        if not ours:
            return 0
        key.verify(PAYLOAD_COMMAND, env.payload, ours[0].sig)
        head = _head.decode(env.payload)
    except (VerificationError, msgspec.DecodeError):
        return 0
    return head.seq if head.issuer == issuer else 0
