"""Audit records, checkpoints and dead letters."""

from __future__ import annotations

from typing import Any

from riskguard.schemas.base import Record
from riskguard.schemas.types import HexDigest, Name, Nanos, Offset, RecordId, Seq, Text


class AuditRecord(Record, frozen=True, kw_only=True, tag="audit"):
    """One decision, appended to a per-partition hash chain.

    ``kind`` is ``signal``, ``breach``, ``command``, ``rejected_input``,
    ``limit_update_accepted``, ``limit_update_rejected``, ``rejection`` or
    ``key_event``. ``leaf_hash`` is the RFC 6962 leaf hash of the record's
    canonical body (everything but ``leaf_hash``).
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
    leaf_hash: HexDigest | None = None


class AuditCheckpoint(Record, frozen=True, kw_only=True, tag="audit_checkpoint"):
    """A signed statement that chain ``origin`` had ``size`` leaves with ``root``."""

    origin: Name
    size: Seq
    root: HexDigest
    ts: Nanos
    key_id: Name | None = None
    signature: bytes | None = None


class DeadLetter(Record, frozen=True, kw_only=True, tag="dead_letter"):
    """An input that could not be used, with everything needed to replay it.

    ``reason`` is a short code (``malformed``, ``validation``, ``unknown_type``,
    ``unknown_version``, ``oversize``, ``non_utf8``, ``late``, ``future``,
    ``non_finite``, ``unknown_instrument``, ``missing_mark`` ...). ``path``,
    ``expected`` and ``found`` locate the problem inside the record.
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


AUDIT_TYPES = (AuditRecord, AuditCheckpoint, DeadLetter)
