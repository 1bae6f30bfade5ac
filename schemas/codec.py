"""The one decode boundary: bytes in, a typed record or a :class:`DeadLetter` out.

Decoding and validation happen in a single msgspec pass; market data's names
(:data:`~riskguard.schemas.types.CachedName`) are matched against their pattern right
after it, once per distinct name. Nothing raises for bad input, so an offset always
moves on: every failure is a ``DeadLetter`` carrying the raw bytes, where they came
from, and why (field path, expected, found). Input too large is ``oversize`` before
parsing; nesting past the parser's recursion limit, or (in a type with free-form
``Any`` values) past :data:`~riskguard.schemas.json_limits.MAX_JSON_DEPTH`, is
``too_deep``; any other exception is a ``decode_error`` naming its type.

>>> codec = Codec(clock=lambda: 7)
>>> codec.decode("t", b'{"type":"index_price","id":"i1","venue":"oracle",'
...                   b'"instrument":"BTC-USD","ts":1,"price":50000.0}').price
50000.0
>>> dl = codec.decode("t", b'{"type":"index_price","id":"i1","venue":"oracle",'
...                        b'"instrument":"BTC-USD","ts":1,"price":"high"}', offset=42)
>>> (dl.reason, dl.path, dl.expected, dl.found, dl.offset, dl.ts)
('validation', '$.price', 'float', 'str', 42, 7)
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from operator import attrgetter
from typing import Any, Union

import msgspec
import msgspec.inspect as mi
from riskguard.schemas.audit import AUDIT_TYPES, DeadLetter
from riskguard.schemas.base import SUPPORTED_MAJOR, Record
from riskguard.schemas.commands import COMMAND_TYPES
from riskguard.schemas.json_limits import MAX_JSON_DEPTH, TOO_DEEP, check_json_depth
from riskguard.schemas.market import MARKET_TYPES
from riskguard.schemas.names import MARKET_NAME_PATTERN, MARKET_NAME_RULE, name_problem
from riskguard.schemas.signals import SIGNAL_TYPES
from riskguard.schemas.trading import TRADING_TYPES
from riskguard.schemas.valuation import VALUATION_TYPES

from riskguard.validation import read_error

ALL_TYPES: tuple[type[Record], ...] = (
    MARKET_TYPES + TRADING_TYPES + SIGNAL_TYPES + COMMAND_TYPES + AUDIT_TYPES + VALUATION_TYPES
)
DEFAULT_MAX_BYTES = 64 * 1024  # a dead letter fits it too (``DeadLetter.of``)

_NAME = re.compile(MARKET_NAME_PATTERN)
#: Names (``CachedName`` fields) a codec remembers as valid; the set is emptied when full.
NAMES_CACHED = 65_536

_encoder = msgspec.json.Encoder()


def encode(record: msgspec.Struct) -> bytes:
    """Encode a record as compact JSON bytes (the wire form)."""
    return _encoder.encode(record)


def tag_of(cls: type[Record]) -> str:
    """The wire tag (``type`` value) of a record class."""
    return str(cls.__struct_config__.tag)


class Codec:
    """A reusable decoder for a fixed set of record types.

    ``clock`` returns the current time in ns; it stamps dead letters only.
    ``topic_max_bytes`` raises the size cap of named topics above ``max_bytes``, e.g. the
    ``detections`` topic whose valuation records carry whole books.

    >>> big = b'{"type":"detect_progress","ts":1,"source":"' + b"x" * 100 + b'"}'
    >>> codec = Codec(max_bytes=64, topic_max_bytes={"detections": 1024})
    >>> codec.decode("detections", big).ts, codec.decode("market", big).reason
    (1, 'oversize')

    ``topic_types`` names the record types each topic carries: a valid record of
    another type on that topic is a ``wrong_topic`` dead letter, so whoever may write
    one topic cannot move what another topic feeds (a fill on the market topic, say).

    >>> from riskguard.schemas import Fill, Trade
    >>> codec = Codec(topic_types={"market": {Trade}, "fills": {Fill}})
    >>> fill = (b'{"type":"fill","id":"f","venue":"okx","counterparty":"okx",'
    ...         b'"instrument":"BTC-USDT","side":"buy","qty":1,"price":2,"ts":1}')
    >>> codec.decode("fills", fill).id, codec.decode("market", fill, offset=9).reason
    ('f', 'wrong_topic')
    """

    def __init__(
        self,
        types: Iterable[type[Record]] = ALL_TYPES,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], int] = time.time_ns,
        topic_max_bytes: dict[str, int] | None = None,
        topic_types: Mapping[str, Collection[type[Record]]] | None = None,
    ) -> None:
        self.types = tuple(types)
        self.topic_types = {t: frozenset(ts) for t, ts in (topic_types or {}).items()}
        self.max_bytes = max_bytes
        self.topic_max_bytes = dict(topic_max_bytes or {})
        self.clock = clock
        self._tags = {tag_of(t) for t in self.types}
        self._decoder: msgspec.json.Decoder[Any] = _decoder_of(self.types)
        # CachedName fields per type: checked after decoding, against the names seen
        self._name_fields = {t: f for t in self.types if (f := cached_name_fields(t))}
        # types whose values nest as deep as the input: depth (and names) checked after
        self._free_form = frozenset(t for t in self.types if has_free_form(t))
        self._names_of = {t: attrgetter(*f) if len(f) > 1 else _one(f[0])
                          for t, f in self._name_fields.items() if t not in self._free_form}
        self._names_ok: set[str] = set()

    def decode(
        self, topic: str, data: bytes, *, partition: int = -1, offset: int = -1
    ) -> Record | DeadLetter:
        """Decode one message; never raises for bad input."""
        try:
            size = len(data)
            # a named topic's cap only raises max_bytes (looked up only past it)
            if size > self.max_bytes and size > (
                    cap := max(self.max_bytes, self.topic_max_bytes.get(topic, 0))):
                return self._dead(
                    topic, data, partition, offset, "oversize", "$",
                    f"at most {cap} bytes", f"{size} bytes",
                )
            rec = self._decoder.decode(data)
            if self.topic_types and (allowed := self.topic_types.get(topic)) is not None \
                    and type(rec) not in allowed:
                return self._wrong_topic(rec, topic, data, partition, offset)
            names = self._names_of.get(type(rec))
            if names is None:
                if type(rec) in self._free_form:
                    return self._check_free_form(rec, topic, data, partition, offset)
                return rec
            if not self._names_ok.issuperset(names(rec)):
                return self._check_names(rec, topic, data, partition, offset)
            return rec
        except Exception as err:  # whatever decoding raises is a dead letter, never a crash
            return self._failed(topic, data, partition, offset, err)

    def _wrong_topic(
        self, rec: Record, topic: str, data: bytes, partition: int, offset: int
    ) -> DeadLetter:
        allowed = ", ".join(sorted(tag_of(t) for t in self.topic_types[topic]))
        return self._dead(topic, data, partition, offset, "wrong_topic", "$.type",
                          f"one of {allowed} (what this topic carries)", tag_of(type(rec)))

    def _check_free_form(
        self, rec: Record, topic: str, data: bytes, partition: int, offset: int
    ) -> Record | DeadLetter:
        """``rec`` if ``data`` nests at most MAX_JSON_DEPTH deep (and its names match),
        else a ``too_deep`` dead letter."""
        if (deep := check_json_depth(data)) is not None:
            return self._dead(
                topic, data, partition, offset, TOO_DEEP, "$",
                f"at most {MAX_JSON_DEPTH} levels of nesting", deep,
            )
        if type(rec) in self._name_fields:
            return self._check_names(rec, topic, data, partition, offset)
        return rec

    def _failed(
        self, topic: str, data: bytes, partition: int, offset: int, err: Exception
    ) -> DeadLetter:
        """The dead letter for an exception raised while decoding ``data``."""
        try:
            if isinstance(err, msgspec.ValidationError):
                return self._classify_validation(topic, data, partition, offset, str(err))
            if isinstance(err, msgspec.DecodeError):
                detail = str(err)
                if data[:3] == b"\xef\xbb\xbf":
                    detail = "byte-order mark before JSON; " + detail
                return self._dead(
                    topic, data, partition, offset, "malformed", "$", "JSON object", detail
                )
            if isinstance(err, UnicodeDecodeError):
                return self._dead(
                    topic, data, partition, offset, "non_utf8", "$", "UTF-8 text",
                    _first_invalid_utf8(data),
                )
            if isinstance(err, RecursionError):
                return self._dead(
                    topic, data, partition, offset, TOO_DEEP, "$",
                    f"at most {MAX_JSON_DEPTH} levels of nesting", "RecursionError",
                    detail=f"RecursionError: {err}",
                )
        except Exception as again:  # classifying failed too: still a dead letter
            err = again
        return self._dead(
            topic, data, partition, offset, "decode_error", "$", "a decodable record",
            type(err).__name__, detail=f"{type(err).__name__}: {err}",
        )

    def _check_names(
        self, rec: Record, topic: str, data: bytes, partition: int, offset: int
    ) -> Record | DeadLetter:
        """``rec`` if its CachedName fields match ``MARKET_NAME_PATTERN`` (remembering them),
        else a dead letter naming the first that does not."""
        ok = self._names_ok
        for field in self._name_fields[type(rec)]:
            value = getattr(rec, field)
            if value in ok:
                continue
            if _NAME.search(value) is None:  # as msgspec checks a Name's pattern
                return self._dead(
                    topic, data, partition, offset, "validation", f"$.{field}",
                    f"a market name ({MARKET_NAME_RULE})", value,
                    detail=name_problem(value) or "",
                )
            if len(ok) >= NAMES_CACHED:
                ok.clear()
            ok.add(value)
        return rec

    def _classify_validation(
        self, topic: str, data: bytes, partition: int, offset: int, text: str
    ) -> DeadLetter:
        bad = read_error(text)
        path = bad.path
        found = bad.got if bad.kind == "value" else bad.message
        if path == "$.type":
            return self._dead(
                topic, data, partition, offset, "unknown_type", path,
                "one of " + ", ".join(sorted(self._tags)), found,
            )
        if path == "$.v":
            return self._dead(
                topic, data, partition, offset, "unknown_version", path,
                f"major version {SUPPORTED_MAJOR}", found,
            )
        if bad.message.startswith("Number out of range"):
            return self._dead(
                topic, data, partition, offset, "non_finite", path,
                "finite number", "out-of-range number",
            )
        if bad.kind == "type":
            return self._dead(
                topic, data, partition, offset, "validation", path, bad.type, bad.got
            )
        if bad.kind == "bound":
            return self._dead(
                topic, data, partition, offset, "validation", path,
                f"{bad.type} {bad.op} {bad.bound}", bad.message,
            )
        if bad.kind == "missing":
            where = f"{path}.{bad.field}"
            if bad.field == "type":
                return self._dead(
                    topic, data, partition, offset, "unknown_type", where,
                    "a `type` tag", "no tag",
                )
            return self._dead(
                topic, data, partition, offset, "validation", where,
                f"required field `{bad.field}`", "missing",
            )
        return self._dead(topic, data, partition, offset, "validation", path, "", bad.message)

    def _dead(
        self, topic: str, data: bytes, partition: int, offset: int,
        reason: str, path: str, expected: str, found: str, *, detail: str = "",
    ) -> DeadLetter:
        return DeadLetter.of(
            topic=topic, partition=partition, offset=offset, ts=self.clock(), reason=reason,
            path=path, expected=expected, found=found, detail=detail, raw=data,
        )


@functools.cache
def _decoder_of(types: tuple[type[Record], ...]) -> msgspec.json.Decoder[Any]:
    """One decoder per set of types (a decoder holds no state: codecs may share it)."""
    union: Any = Union[types] if len(types) > 1 else types[0]  # noqa: UP007
    return msgspec.json.Decoder(union)


@functools.cache
def cached_name_fields(cls: type[Record]) -> tuple[str, ...]:
    """The fields of ``cls`` typed :data:`~riskguard.schemas.types.CachedName` (their
    pattern is in the JSON Schema, and the :class:`Codec` checks it after decoding).

    >>> from riskguard.schemas import Fill, Trade
    >>> cached_name_fields(Trade), cached_name_fields(Fill)
    (('venue', 'instrument', 'feed'), ())
    """
    out = []
    for f in mi.type_info(cls).fields:  # type: ignore[attr-defined]
        t = f.type
        if (isinstance(t, mi.Metadata) and isinstance(t.type, mi.StrType)
                and t.type.pattern is None
                and (t.extra_json_schema or {}).get("pattern") == MARKET_NAME_PATTERN):
            out.append(f.name)
    return tuple(out)


@functools.cache
def has_free_form(cls: type[Record]) -> bool:
    """Whether ``cls`` holds values of any shape (``Any`` somewhere in its fields, or a
    type that contains itself): decoded, they nest as deep as the input does.

    >>> from riskguard.schemas import AuditRecord, Trade
    >>> has_free_form(AuditRecord), has_free_form(Trade)
    (True, False)
    """
    return _has_any(mi.type_info(cls), frozenset())


def _has_any(t: mi.Type, seen: frozenset[type]) -> bool:
    if isinstance(t, mi.AnyType):
        return True
    if isinstance(t, mi.Metadata):
        return _has_any(t.type, seen)
    if isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        if t.cls in seen:
            return True
        return any(_has_any(f.type, seen | {t.cls}) for f in t.fields)
    if isinstance(t, mi.UnionType):
        return any(_has_any(x, seen) for x in t.types)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return _has_any(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return any(_has_any(x, seen) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return _has_any(t.key_type, seen) or _has_any(t.value_type, seen)
    return False


def _one(field: str) -> Callable[[Any], tuple[str]]:
    get = attrgetter(field)
    return lambda rec: (get(rec),)


def _first_invalid_utf8(data: bytes) -> str:
    """Where ``data`` stops being UTF-8 (msgspec's error offset is not into ``data``).

    >>> _first_invalid_utf8(b'{"id":"ok\\xff"}')
    'byte 0xff at 9'
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"byte 0x{data[err.start]:02x} at {err.start}"
    return "invalid UTF-8"


_default_codec = Codec()


def decode(
    topic: str, data: bytes, *, partition: int = -1, offset: int = -1
) -> Record | DeadLetter:
    """Decode with the default codec (every record type, 64 KiB cap, system clock)."""
    return _default_codec.decode(topic, data, partition=partition, offset=offset)
