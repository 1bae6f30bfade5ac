"""Bytes between Flink operators: ticks of rows packed in Java, and records
msgspec-encoded where they cross from one segment to another (never pickled).

>>> import msgspec
>>> from riskguard.schemas import Trade
>>> t = Trade(id="t", venue="v", instrument="BTC-USDT", ts=5, price=1.0, qty=1.0, side="buy")
>>> wire = Wire()
>>> wire.decode(wire.encode(("okx/BTC-USDT", t))) == ("okx/BTC-USDT", t)
True
>>> wire.decode(wire.encode(t)) == t
True
>>> unpack_batch(msgspec.msgpack.encode((9, [("in", 5, "m/0", 7, b"x")])))
(9, [('in', 5, 'm/0', 7, b'x')])
"""

from __future__ import annotations

from typing import Any, Union

import msgspec
from riskguard.operators.core.clock import Tick
from riskguard.schemas.codec import ALL_TYPES

PackedRow = tuple[str, int, str | None, int, bytes | None]
"""A row of a packed tick: input, event time (ns), source, position, bytes (None for a
Kafka message without a value)."""

_BATCH_DECODER = msgspec.msgpack.Decoder(tuple[int, list[PackedRow]])


def unpack_batch(data: bytes) -> tuple[int, list[PackedRow]]:
    """A tick as Java packs it (``flink/java/Packed.java``): its last ms and its rows."""
    return _BATCH_DECODER.decode(data)


CROSSED = "crossed"
"""The input name of a row that carries what one call of a segment made for the next
segment, packed (:func:`pack_crossed`): one row a call, where a row an item cost PyFlink
a row's encoding and decoding each."""

_PACK = msgspec.msgpack.Encoder()
_CROSSED_DECODER = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def pack_crossed(items: list[tuple[str, bytes]]) -> bytes:
    """Items for the next segment, in the order made: each its stream id and its
    :class:`Wire` bytes.

    >>> unpack_crossed(pack_crossed([("s1", b"Ra"), ("s2", b"Rb")]))
    [('s1', b'Ra'), ('s2', b'Rb')]
    """
    return _PACK.encode(items)


def unpack_crossed(data: bytes) -> list[tuple[str, bytes]]:
    """What :func:`pack_crossed` packed."""
    return _CROSSED_DECODER.decode(data)


class Wire:
    """msgpack for what crosses between segments: a wire record or a :class:`Tick`, bare or
    as a ``(key, record)`` pair; one byte before it says which."""

    def __init__(self) -> None:
        records: Any = Union[ALL_TYPES]  # noqa: UP007
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[int, Any] = {
            ord("R"): msgspec.msgpack.Decoder(records),
            ord("K"): msgspec.msgpack.Decoder(tuple[str, records]),
            ord("T"): msgspec.msgpack.Decoder(Tick),
            ord("U"): msgspec.msgpack.Decoder(tuple[str, Tick]),
        }

    def encode(self, item: Any) -> bytes:
        if type(item) is tuple:
            return (b"U" if type(item[1]) is Tick else b"K") + self._encoder.encode(item)
        return (b"T" if type(item) is Tick else b"R") + self._encoder.encode(item)

    def decode(self, data: bytes) -> Any:
        return self._decoders[data[0]].decode(memoryview(data)[1:])
