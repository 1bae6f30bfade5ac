"""Audit records, checkpoints and dead letters."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

import msgspec
from riskguard.schemas.base import Record
from riskguard.schemas.types import (
    INT64_MAX,
    NAME_PATTERN,
    HexDigest,
    Name,
    Nanos,
    Offset,
    RecordId,
    Seq,
    Text,
)

GENESIS_LEAF = "0" * 64
"""The ``prev_leaf`` of a chain's first record (no leaf hash is 32 zero bytes)."""
MAX_DEAD_LETTER_BYTES = 64 * 1024
"""An encoded :meth:`DeadLetter.of` is never longer: the default codec's cap, so every
consumer of a dead-letter topic reads it."""


class AuditRecord(Record, frozen=True, kw_only=True, tag="audit"):
    """One decision, appended to a per-partition hash chain.

    ``kind`` is ``signal``, ``breach``, ``command``, ``rejected_input``,
    ``limit_update_accepted``, ``limit_update_rejected``, ``rejection`` or
    ``key_event``. ``prev_leaf`` is the leaf hash of the chain's record before it
    (64 zeros, :data:`GENESIS_LEAF`, for record 0), so each record names the one it follows.
    ``leaf_hash`` is the RFC 6962 leaf hash of the record's canonical body (everything
    but ``leaf_hash``, ``prev_leaf`` included). A record without ``prev_leaf`` (written
    before records were linked) never verifies.
    """

    record_id: RecordId
    chain: Name
    index: Seq
    ts: Nanos
    kind: Name
    operator: Name
    operator_version: Name
    config_hash: HexDigest
    input_digest: HexDigest
    body: dict[str, Any] = {}
    prev_leaf: HexDigest | None = None
    leaf_hash: HexDigest | None = None


class AuditCheckpoint(Record, frozen=True, kw_only=True, tag="audit_checkpoint"):
    """A signed statement that chain ``origin`` had ``size`` leaves with ``root``, the
    last of them ``last_leaf`` (64 zeros at size 0). A checkpoint without
    ``last_leaf`` (written before records were linked) never verifies."""

    origin: Name
    size: Seq
    root: HexDigest
    ts: Nanos
    last_leaf: HexDigest | None = None
    key_id: Name | None = None
    signature: bytes | None = None


class DeadLetter(Record, frozen=True, kw_only=True, tag="dead_letter"):
    """An input that could not be used, with everything needed to replay it.

    ``reason`` is a short code (``malformed``, ``validation``, ``unknown_type``,
    ``unknown_version``, ``oversize``, ``too_deep``, ``non_utf8``, ``decode_error``,
    ``late``, ``future``, ``non_finite``, ``unknown_instrument``, ``missing_mark`` ...).
    ``path``, ``expected`` and ``found`` locate the problem inside the record.

    Build one with :meth:`of`: it keeps the encoded record within
    :data:`MAX_DEAD_LETTER_BYTES`, so ``raw`` may be the input's first bytes only
    (``raw_truncated``); ``raw_len`` and ``raw_sha256`` always describe the whole
    input. They are None in records written before they existed.
    """

    topic: Name
    partition: int = -1
    offset: Offset = -1
    ts: Nanos
    reason: Name
    path: Text = "$"
    expected: Text = ""
    found: Text = ""
    detail: Text = ""
    step: Name = "decode"
    raw: bytes = b""
    raw_len: Seq | None = None
    raw_sha256: HexDigest | None = None
    raw_truncated: bool = False

    @classmethod
    def of(
        cls, *, topic: str, ts: int, reason: str, raw: bytes | bytearray | memoryview = b"",
        partition: int = -1, offset: int = -1, path: str = "$", expected: str = "",
        found: str = "", detail: str = "", step: str = "decode",
        max_bytes: int = MAX_DEAD_LETTER_BYTES,
    ) -> DeadLetter:
        """A dead letter whose encoding fits in ``max_bytes`` and decodes under the wire
        schema, whatever it is given: ``raw`` is cut to what fits (its length and SHA-256
        are kept whole), texts are cut (shorter still if they crowd out ``raw``), names
        that are not a ``Name`` become ``"unknown"`` and numbers are clamped.

        >>> dl = DeadLetter.of(topic="market", ts=1, reason="oversize", raw=b"x" * 100_000)
        >>> len(dl.raw), dl.raw_len, dl.raw_truncated, dl.raw_sha256[:8]
        (48933, 100000, True, 'd69e6898')
        >>> len(msgspec.json.encode(dl)) <= MAX_DEAD_LETTER_BYTES
        True
        """
        data = bytes(raw)
        texts = [_text(t, _TEXT_LIMITS[0]) for t in (path, expected, found, detail)]
        bare = cls(
            topic=_name(topic), partition=min(max(partition, -INT64_MAX), INT64_MAX),
            offset=min(max(offset, -2), INT64_MAX),
            ts=min(max(ts, 0), INT64_MAX), reason=_name(reason), step=_name(step),
            path=texts[0] or "$", expected=texts[1], found=texts[2], detail=texts[3],
            raw=data, raw_len=len(data), raw_sha256=hashlib.sha256(data).hexdigest(),
        )
        # JSON takes at most 6 bytes a character (\u00XX) and base64 4 per 3 bytes
        if _FIXED_BYTES + 6 * sum(map(len, texts)) + (len(data) + 2) // 3 * 4 <= max_bytes:
            return bare  # surely fits: most dead letters
        for limit in _TEXT_LIMITS:  # the schema's 4096 characters, fewer if raw is crowded out
            p, e, f, d = (t[:limit] for t in texts)
            dl = msgspec.structs.replace(bare, path=p or "$", expected=e, found=f, detail=d,
                                         raw=b"")
            room = max_bytes - len(_encode(dl))  # what raw's base64 may take
            if room >= max_bytes // 2:
                break
        keep = max(room, 0) // 4 * 3  # base64: 4 characters per 3 bytes, no padding
        if len(data) <= keep:
            return msgspec.structs.replace(dl, raw=data)
        return msgspec.structs.replace(dl, raw=data[:keep], raw_truncated=True)


AUDIT_TYPES = (AuditRecord, AuditCheckpoint, DeadLetter)

_encode = msgspec.json.Encoder().encode
_NAME = re.compile(NAME_PATTERN)
_TEXT_LIMITS = (4096, 1024, 128, 0)  # characters; 4096 is the schema's (Text)
# an encoded dead letter without its texts and raw: field names, three names of at most
# 64 characters, four integers of at most 20 characters and a digest (about 520 in all)
_FIXED_BYTES = 1024


def _name(value: str) -> str:
    """``value`` if it is a valid ``Name``, else ``"unknown"``."""
    return _short_name(value) if len(value) <= 64 else "unknown"


@functools.lru_cache(maxsize=1024)  # topics, reasons and steps repeat
def _short_name(value: str) -> str:
    return value if _NAME.search(value) else "unknown"


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, lone surrogates (not UTF-8) replaced."""
    value = value[:limit]
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value
