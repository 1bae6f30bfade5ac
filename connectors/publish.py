"""Publish a user's files to the guard's input topics (``riskguard publish``).

Files are read as a replay reads them (:class:`~riskguard.connectors.replay.ReplaySource`),
merged in event time. A row that does not decode, or a record whose type its topic does
not carry (``STREAM_TYPES``), is a reject (a :class:`~riskguard.schemas.DeadLetter`,
never produced). Good records are produced idempotent with ``acks=all``, keyed
``venue/instrument``; a delivery that fails raises :class:`~riskguard.errors.DeliveryError`.

>>> route(Trade(id="t", venue="okx", instrument="BTC-USDT", ts=1, price=1.0, qty=1.0,
...             side=Side.BUY), "auto")
'market'
>>> route(Trade(id="t", venue="okx", instrument="BTC-USDT", ts=1, price=1.0, qty=1.0,
...             side=Side.BUY), "fills").reason
'wrong_topic'
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from riskguard.connectors.formats.core import is_compressed
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.replay import ReplayFile, ReplaySource
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import INPUT_STREAMS, STREAM_TYPES, topic_name
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec, encode, tag_of
from riskguard.schemas.commands import SignedEnvelope
from riskguard.schemas.market import Side, Trade  # noqa: F401  (doctest)

from riskguard.errors import BrokerError, ConfigError

AUTO = "auto"
STREAMS = INPUT_STREAMS  # what a user may publish to: the topics the guard reads


def check_stream(stream: str) -> str:
    """``stream`` if the guard reads that topic (or ``auto``); a ConfigError naming them."""
    if stream != AUTO and stream not in STREAMS:
        raise ConfigError("publish --topic", f"one of {', '.join((*STREAMS, AUTO))}", stream)
    return stream


def route(rec: Any, stream: str) -> str | DeadLetter:
    """The stream ``rec`` goes to, or the reject that says why it goes nowhere."""
    kind = type(rec)
    if stream == AUTO:
        for name in STREAMS:
            if kind in STREAM_TYPES[name]:
                return name
        expected = "a record one of the input topics carries"
    elif kind in STREAM_TYPES[stream]:
        return stream
    else:
        allowed = ", ".join(sorted(tag_of(t) for t in STREAM_TYPES[stream]))
        expected = f"one of {allowed} (what the {stream} topic carries)"
    src = _source(rec)
    return DeadLetter.of(
        topic=src[0], offset=src[1], ts=getattr(rec, "ts", 0) or 0, reason="wrong_topic",
        path="$.type", expected=expected, found=tag_of(kind), step="publish", raw=encode(rec),
    )


def _source(rec: Any) -> tuple[str, int]:
    d = getattr(rec, "__dict__", None)
    src = d.get("source") if d else None
    return (src[0], src[2]) if src else ("publish", -1)


class _Claims(msgspec.Struct):
    """What a signed payload names that keys it (a limit update's limit, its issuer)."""

    limit_path: str = ""
    kind: str = ""
    issuer: str = ""


_claims = msgspec.json.Decoder(_Claims)


def envelope_key(env: SignedEnvelope) -> bytes:
    """A signed envelope's Kafka key: a limit update's ``limit_path/kind`` (the
    compacted ``limit_updates`` topic keeps the newest update of each limit), else its
    issuer (a command: one issuer's commands keep one partition, in ``seq`` order), else
    its payload's SHA-256: never none, which a compacted topic refuses.

    >>> def env(payload):
    ...     return SignedEnvelope(payload_type="x", signatures=[], payload=payload)
    >>> envelope_key(env(b'{"limit_path":"counterparty.okx","kind":"gross_notional"}'))
    b'counterparty.okx/gross_notional'
    >>> envelope_key(env(b'{"issuer":"op-alice","command_id":"c1"}'))
    b'op-alice'
    """
    try:
        claims = _claims.decode(env.payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        claims = _Claims()
    if claims.limit_path:
        return f"{claims.limit_path}/{claims.kind}".encode()
    if claims.issuer:
        return claims.issuer.encode()
    return hashlib.sha256(env.payload).hexdigest().encode()


def key_of(rec: Any) -> bytes | None:
    """``venue/instrument`` (as the demo publishes), a signed envelope's
    :func:`envelope_key`, else the record's own id, else none."""
    if isinstance(rec, SignedEnvelope):
        return envelope_key(rec)
    venue = getattr(rec, "venue", None)
    if isinstance(venue, str):
        return f"{venue}/{getattr(rec, 'instrument', '') or ''}".encode()
    for attr in ("key", "id", "command_id", "update_id"):
        value = getattr(rec, attr, None)
        if isinstance(value, str):
            return value.encode()
    return None


def read_files(
    paths: Sequence[str | Path], *, fmt: str = "auto", venue: str = "file",
    instrument: str = "unknown", batch_size: int = 1000, market: str = "auto",
    contract_size: float | None = None, measure: str = "price",
) -> tuple[int | None, Iterator[tuple[int, list[Any]]]]:
    """``(total bytes, batches)``: each batch with the bytes read so far (for progress).
    Offsets count decompressed bytes, so with a compressed file the total is unknown
    (None)."""
    files = [ReplayFile(p, format=fmt, venue=venue, instrument=instrument, market=market,
                        contract_size=contract_size, measure=measure) for p in paths]
    for f in files:
        f.require_rows()
    src = ReplaySource(files, codec=Codec(clock=lambda: 0), batch_size=batch_size)
    total: int | None = sum(Path(p).stat().st_size for p in paths)
    if any(is_compressed(p) for p in paths):
        total = None

    def batches() -> Iterator[tuple[int, list[Any]]]:
        part = src.build_part("publish", "replay", None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    return
                yield part.bytes_read(), batch
        finally:
            part.close()

    return total, batches()


@dataclass
class PublishResult:
    read: int = 0
    produced: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)


class Publisher:
    """Produces records to ``<env>.riskguard.<stream>.v1`` and checks every delivery."""

    def __init__(self, settings: KafkaSettings, env: str, *, delivery_timeout_s: float = 30.0,
                 linger_ms: int = 20,
                 create: Callable[[str], Any] | None = None) -> None:
        """``create(topic)`` makes a topic that does not exist yet; without it a missing
        topic is a :class:`~riskguard.errors.BrokerError` before anything goes to it (a
        misspelt env would otherwise create topics the guard never reads)."""
        self._producer = CheckedProducer(settings, what=f"the {env} input topics",
                                         delivery_timeout_s=delivery_timeout_s,
                                         linger_ms=linger_ms)
        self.env = env
        self._topics: dict[str, str] = {}
        self._settings = settings
        self._create = create

    @property
    def acked(self) -> int:
        """Records Kafka acknowledged so far."""
        return self._producer.acked

    def topic(self, stream: str) -> str:
        if stream not in self._topics:
            name = topic_name(self.env, stream)
            self._exists(name)
            self._topics[stream] = name
        return self._topics[stream]

    def _exists(self, name: str) -> None:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        # the whole topic list: asking for one topic by name may create it
        try:
            md = AdminClient(self._settings.client_config()).list_topics(
                timeout=5)
        except Exception:  # unreachable: the first delivery says so (DeliveryError)
            return
        if name in md.topics and md.topics[name].error is None:
            return
        if self._create is None:
            msg = (f"topic {name!r} does not exist at {self._settings.bootstrap}; create the "
                   "guard's topics with: riskguard topics create --env "
                   f"{self.env} (or pass --create-topics), or check --env")
            raise BrokerError(msg)
        self._create(name)

    def produce(self, stream: str, rec: Any) -> None:
        self._producer.produce(self.topic(stream), encode(rec), key_of(rec))
        self._producer.check()

    def flush(self) -> None:
        """Wait for every delivery; raises DeliveryError if any was not acknowledged."""
        self._producer.flush()


def publish(
    batches: Iterator[tuple[int, list[Any]]], stream: str, publisher: Publisher | None, *,
    on_reject: Callable[[DeadLetter], Any] = lambda _d: None,
    on_progress: Callable[[int, PublishResult], Any] = lambda _n, _r: None,
) -> PublishResult:
    """Route, check and produce every record; ``publisher=None`` only checks them."""
    res = PublishResult()
    for pos, batch in batches:
        for rec in batch:
            res.read += 1
            where = rec if isinstance(rec, DeadLetter) else route(rec, stream)
            if isinstance(where, DeadLetter):
                res.rejected[where.reason] += 1
                on_reject(where)
                continue
            res.per_topic[where] += 1
            if publisher is not None:
                publisher.produce(where, rec)
        on_progress(pos, res)
    if publisher is not None:
        publisher.flush()
        res.produced = publisher.acked
    else:
        res.produced = 0
    return res
