"""What an issuer already signed onto a commands topic: its highest delivered ``seq``,
and the newest trust-file serial its commands state.

A signing step that starts, or restarts from an older snapshot, must never hand out a
``seq`` subscribers have already seen (they would drop the new command as a replay), so
the signer starts after the highest ``seq`` found on the topic
(:func:`riskguard.operators.signing.ops.sign_commands`). Only envelopes verified under
the signer's own key count: a forged message cannot push the sequence, and anything
unreadable is ignored.

The scan reads the newest window of every partition at once, on past the end the broker
reports until the topic is quiet for ``idle_s`` (the dev broker under-reports the high
watermark); a partition with no command of the issuer there is then read backwards in
windows (one issuer's commands are produced in ``seq`` order).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import msgspec
from confluent_kafka import Consumer, KafkaError, TopicPartition
from riskguard.connectors.kafka import list_partitions
from riskguard.connectors.kafka.consumer import reading_consumer
from riskguard.connectors.settings import KafkaSettings
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, VerifyKey, decode_envelope
from riskguard.schemas.json_limits import check_json_depth

from riskguard.errors import BrokerError


class _Head(msgspec.Struct):
    """The fields the scan needs from a command payload."""

    issuer: str = ""
    seq: int = 0
    trust_serial: int = 0


_head = msgspec.json.Decoder(_Head)


class Signed(NamedTuple):
    """Where an issuer's signing stands on a commands topic: its highest ``seq``, and the
    highest ``trust_serial`` stated by its commands in the newest window of each partition
    that holds any (0: none). Serials rise with ``seq``, so that is the file it last ran
    on, unless a start on an older file got past the check before."""

    seq: int = 0
    trust_serial: int = 0

    def joined(self, other: Signed) -> Signed:
        return Signed(max(self.seq, other.seq), max(self.trust_serial, other.trust_serial))


def last_signed_seq(
    settings: KafkaSettings,
    topic: str,
    key: VerifyKey,
    issuer: str,
    *,
    window: int = 1000,
    idle_s: float = 0.5,
    timeout_s: float = 30.0,
) -> Signed:
    """Highest ``seq`` that ``issuer`` signed with ``key`` on ``topic`` (0 if none), and
    the highest trust serial those commands state.

    Raises :class:`~riskguard.errors.BrokerError` when the topic cannot be read
    within ``timeout_s``: a signer that cannot tell where its sequence stands
    must not start.
    """
    parts = list_partitions(settings, topic, timeout_s=min(10.0, timeout_s))
    consumer = reading_consumer(settings, "seq-scan")
    deadline = time.monotonic() + timeout_s
    try:
        starts: dict[int, tuple[int, int]] = {}  # partition -> (low, first window's start)
        for p in parts:
            low, high = _watermarks(consumer, topic, p, deadline)
            starts[p] = (low, max(low, high - window))
        # The newest windows of all partitions in one read: one quiet period, not one each.
        found = _read(consumer, topic, {p: (s, None) for p, (_low, s) in starts.items()}, key,
                      issuer, idle_s, deadline)
        best = Signed()
        for p, (low, tail) in starts.items():
            got, end = found[p], tail
            while not got.seq and end > low:  # nothing of ours there: older windows, backwards
                begin = max(low, end - window)
                got = _read(consumer, topic, {p: (begin, end)}, key, issuer, idle_s,
                            deadline)[p]
                end = begin
            best = best.joined(got)
        return best
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, topic: str, partition: int, deadline: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=max(0.1, deadline - time.monotonic()))
    except Exception as err:
        msg = f"cannot read the watermarks of {topic}[{partition}]: {err}"
        raise BrokerError(msg) from None
    return int(low), int(high)


def _read(consumer: Consumer, topic: str, windows: dict[int, tuple[int, int | None]],
          key: VerifyKey, issuer: str, idle_s: float, deadline: float) -> dict[int, Signed]:
    """Where ``issuer``'s verified signing stands per partition in its window of offsets
    ``[start, end)``. An open window (``end`` None) reads on past the partition's
    reported end, until every partition is done and the topic was quiet for ``idle_s``."""
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _end) in windows.items()])
    best = dict.fromkeys(windows, Signed())
    done: set[int] = set()  # read to the window's end, or (open) to the partition's end
    wait = idle_s if any(end is None for _start, end in windows.values()) else 0.0
    quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if now > deadline:
            raise BrokerError(f"reading {topic} for the last signed seq timed out")
        if len(done) == len(windows) and now - quiet_since >= wait:
            return best
        m = consumer.poll(0.05)
        if m is None:
            continue
        err = m.error()
        p = m.partition() or 0
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                done.add(p)
                continue
            raise BrokerError(f"reading {topic}[{p}]: {err.str()}")
        end = windows[p][1]
        if end is not None and (m.offset() or 0) >= end:
            done.add(p)
            continue
        quiet_since = time.monotonic()
        done.discard(p)
        best[p] = best[p].joined(signed_of(m.value(), key, issuer))


def signed_of(raw: bytes | None, key: VerifyKey, issuer: str) -> Signed:
    """The ``seq`` and trust serial of a command ``issuer`` signed with ``key``; zeros for
    anything else.

    >>> signed_of(b"[" * 2000 + b"]" * 2000, VerifyKey(bytes(32)), "engine-1")
    Signed(seq=0, trust_serial=0)
    """
    if not raw:
        return Signed()
    try:
        env = decode_envelope(raw)
        if env.payload_type != PAYLOAD_COMMAND:
            return Signed()
        ours = [s for s in env.signatures if s.key_id == key.key_id]
        if not ours:
            return Signed()
        key.verify(PAYLOAD_COMMAND, env.payload, ours[0].sig)
        if check_json_depth(env.payload) is not None:
            return Signed()
        head = _head.decode(env.payload)
    except Exception:  # whatever cannot be read is not a command of ours
        return Signed()
    return Signed(head.seq, head.trust_serial) if head.issuer == issuer else Signed()
