"""Bytes between Flink operators: rows packed for Flink state, and records msgspec-encoded
where they cross from one segment to another (never pickled).

>>> from riskguard.schemas import Trade
>>> t = Trade(id="t", venue="v", instrument="BTC-USDT", ts=5, price=1.0, qty=1.0, side="buy")
>>> wire = Wire()
>>> wire.decode(wire.encode(("okx/BTC-USDT", t))) == ("okx/BTC-USDT", t)
True
>>> wire.decode(wire.encode(t)) == t
True
>>> unpack_row(pack_row(("in", 5, "m/0", 7, b"x"), 0))
('in', 5, 'm/0', 7, b'x', 0)
"""

from __future__ import annotations

from typing import Any, Union

import msgspec
from riskguard.operators.core.clock import Tick
from riskguard.schemas.codec import ALL_TYPES

_ROW = msgspec.msgpack.Encoder()
_ROW_DECODER = msgspec.msgpack.Decoder(tuple[str, int, str, int, bytes, int])


def pack_row(row: Any, at_ms: int) -> bytes:
    """A keyed operator's row (:data:`riskguard.flink.fused.VALUE`) and its Flink
    timestamp as bytes, for Flink list state."""
    return _ROW.encode((row[0], row[1], row[2], row[3], bytes(row[4]), at_ms))


def unpack_row(data: bytes) -> tuple[str, int, str, int, bytes, int]:
    """A row from :func:`pack_row`."""
    return _ROW_DECODER.decode(data)


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
