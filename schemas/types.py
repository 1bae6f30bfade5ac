"""Constrained scalar types shared by every wire record.

Times are integer nanoseconds since the Unix epoch, UTC. Amounts are floats
that must be finite: the JSON decoder already refuses ``NaN``/``Infinity``
literals and overflowing numbers, and the bounds below keep JSON Schema
consumers honest too.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from riskguard.schemas.names import MARKET_NAME_PATTERN

MAX_FLOAT = 1.7976931348623157e308
INT64_MAX = 2**63 - 1

Nanos = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX, description="ns since epoch, UTC")]
DurationNs = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX, description="duration in ns")]
Finite = Annotated[float, msgspec.Meta(ge=-MAX_FLOAT, le=MAX_FLOAT)]
Positive = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_FLOAT)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_FLOAT)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Offset = Annotated[int, msgspec.Meta(ge=-2, le=INT64_MAX)]
RecordId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# "$" alone also matches before a final newline in Python's re (msgspec's, and Python
# JSON Schema validators'): "(?!\n)" makes every pattern end at the end of the string,
# as "$" does in the ECMA regexes JSON Schema names.
_END = r"$(?!\n)"
_NAME_CHARS = r"[A-Za-z0-9_.:/@+-]+"
NAME_PATTERN = rf"^{_NAME_CHARS}{_END}"
HEX_DIGEST_PATTERN = rf"^[0-9a-f]{{64}}{_END}"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NAME_PATTERN)]
MarketName = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                          pattern=MARKET_NAME_PATTERN)]
"""A venue, instrument, underlying, counterparty, asset or feed: one grammar
(:mod:`~riskguard.schemas.names`), no ``/``, nothing that reads as a path."""
CachedName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=64,
                 extra_json_schema={"pattern": MARKET_NAME_PATTERN}),
]
"""A :data:`MarketName` on the hot path (market data's venue, instrument and feed): the
same JSON Schema, but the pattern is checked by :class:`~riskguard.schemas.codec.Codec`
after decoding, against the names it already accepted, instead of by a regex call per
field per record (most of a trade's decode time). Decoded any other way than
through a ``Codec``, the pattern is not checked."""
ScopeValue = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=64,
                 pattern=rf"^(?:\*|{MARKET_NAME_PATTERN[1:-len(_END)]}){_END}",
                 description="a market name, or * for firm-wide"),
]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="free-form label")]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
HexDigest = Annotated[str, msgspec.Meta(pattern=HEX_DIGEST_PATTERN)]
