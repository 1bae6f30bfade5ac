"""Checking an audit log as exported: the whole log, or one record's proof.

:func:`verify_log` re-checks a whole export in one pass: every record's leaf hash and
its link to the record before it (``prev_leaf``), each checkpoint's signature, root
over exactly the records before it and last leaf (extending the
tree the previous one signed, so successive checkpoints are consistent), and gaps,
reorders, repeats and truncation. It raises
:class:`~riskguard.errors.AuditError` naming the first bad record. :func:`prove` makes
a self-contained inclusion proof of one record, and :func:`check_proof` checks one
with every field bound to its claim."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec
from riskguard.operators.audit.chain import record_leaf, replica_of, verify_checkpoint
from riskguard.operators.audit.merkle import CompactRange, inclusion_proof, verify_inclusion
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import GENESIS_LEAF, AuditCheckpoint, AuditRecord
from riskguard.schemas.json_limits import check_json_depth

from riskguard.errors import AuditError, VerificationError


@dataclass
class ChainReport:
    """What verification found for one chain."""

    chain: str
    records: int = 0
    checkpoints: int = 0
    attested: int = 0


@dataclass
class ChainCheck:
    """One chain checked as it is read, in O(log n) memory: its records' compact range,
    its last record's leaf hash and its last good checkpoint. Each checkpoint's root is
    computed by extending the tree the previous one signed, so consistency between them
    holds by construction and a log of n records and c checkpoints costs
    O(n + c log n) hashes."""

    range: CompactRange = field(default_factory=CompactRange)
    cp_size: int = 0
    cp_ts: int | None = None
    last_leaf: str = GENESIS_LEAF

    def append(self, rec: AuditRecord) -> None:
        """Add ``rec`` (its index already checked) after checking its leaf hash and its
        link to the record before it."""
        leaf = record_leaf(rec)
        hexed = leaf.hex()
        if rec.leaf_hash != hexed:
            raise AuditError("leaf_hash_mismatch: record content does not match its leaf hash",
                             chain=rec.chain, index=rec.index)
        if rec.prev_leaf is None:
            raise AuditError("unlinked: the record has no prev_leaf (written before audit "
                             "records were linked)", chain=rec.chain, index=rec.index)
        if rec.prev_leaf != self.last_leaf:
            before = f"record {rec.index - 1}" if rec.index else "the chain's start"
            msg = f"broken_link: its prev_leaf is not the leaf hash of {before}"
            raise AuditError(msg, chain=rec.chain, index=rec.index)
        self.range.append(leaf)
        self.last_leaf = hexed

    def checkpoint(self, cp: AuditCheckpoint, lookup: KeyLookup) -> bool:
        """Check ``cp`` against the records read so far: True if it attests more of the
        chain, False if it repeats the last one's size and root; ``AuditError`` if it
        does not verify or is out of place."""
        try:
            verify_checkpoint(cp, lookup(cp.key_id or "", cp.ts))
        except VerificationError as err:
            msg = f"bad_checkpoint: checkpoint at size {cp.size}: {err}"
            raise AuditError(msg, chain=cp.origin, index=self.cp_size) from None
        if cp.size < self.cp_size:
            msg = f"checkpoint_rollback: size {cp.size} after {self.cp_size}"
            raise AuditError(msg, chain=cp.origin, index=cp.size)
        if cp.size != self.range.size:
            msg = (f"checkpoint_out_of_place: a checkpoint of size {cp.size} after "
                   f"{self.range.size} records")
            raise AuditError(msg, chain=cp.origin, index=min(cp.size, self.range.size))
        if cp.root != self.range.root().hex():
            msg = (f"checkpoint_root_mismatch: records {self.cp_size}..{cp.size - 1} do not "
                   "hash to the signed root")
            raise AuditError(msg, chain=cp.origin, index=self.cp_size)
        if cp.last_leaf != self.last_leaf:
            msg = (f"checkpoint_last_leaf_mismatch: the checkpoint at size {cp.size} signs "
                   f"another last leaf than record {cp.size - 1}'s")
            raise AuditError(msg, chain=cp.origin, index=max(cp.size - 1, 0))
        repeated = cp.size == self.cp_size and self.cp_ts is not None
        self.cp_size = cp.size
        self.cp_ts = cp.ts if self.cp_ts is None else max(self.cp_ts, cp.ts)
        return not repeated


@dataclass
class _Chain:
    check: ChainCheck = field(default_factory=ChainCheck)
    signer: str | None = None  # who signed its first checkpoint (with ``signer_of``)
    report: ChainReport = field(default_factory=lambda: ChainReport(""))


AuditItem: TypeAlias = AuditRecord | AuditCheckpoint
_item_decoder = msgspec.json.Decoder(AuditRecord | AuditCheckpoint)


def _fields(cls: type[msgspec.Struct]) -> frozenset[str]:
    info = msgspec.structs.fields(cls)
    return frozenset([f.encode_name for f in info] + [cls.__struct_config__.tag_field or ""])


_FIELDS = {"audit": _fields(AuditRecord), "audit_checkpoint": _fields(AuditCheckpoint)}


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            msg = f"the key {key[:64]!r} appears twice in one object"
            raise ValueError(msg)
        out[key] = value
    return out


def _check_strict(raw: bytes) -> None:
    """Raise ``ValueError`` if ``raw`` repeats a key in any object, or its item has a
    field its type does not: the leaf hash covers the fields as decoded, so a line with
    more (or two spellings of one) says something the hash does not vouch for."""
    doc = json.loads(raw, object_pairs_hook=_no_repeated_keys)
    if not isinstance(doc, dict):
        return  # the typed decode says what is wrong
    known = _FIELDS.get(doc.get("type"))  # type: ignore[arg-type]
    extra = sorted(k for k in doc if known is not None and k not in known)
    if extra:
        msg = f"unknown field(s) {', '.join(repr(k[:64]) for k in extra[:5])}"
        raise ValueError(msg)


def decode_item(raw: bytes, where: str, *, strict: bool = False) -> AuditItem:
    """One audit record or checkpoint from its JSON bytes.

    Whatever the bytes hold, the failure is an :class:`~riskguard.errors.AuditError`
    naming ``where``, never another exception; nesting deeper than
    :data:`~riskguard.schemas.json_limits.MAX_JSON_DEPTH` is refused before parsing.
    ``strict`` (verification) also refuses a field the item's type does not have and
    a key repeated in any object; without it (a guard reading its topic) such fields
    are ignored, as every reader of a newer writer's records does.

    >>> deep = b'{"type": "audit", "body": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    >>> decode_item(deep, "line 3")
    Traceback (most recent call last):
    ...
    riskguard.errors.AuditError: line 3: not an audit record or checkpoint (JSON nested more ...)
    """
    too_deep = check_json_depth(raw)
    if too_deep is not None:
        msg = f"{where}: not an audit record or checkpoint ({too_deep})"
        raise AuditError(msg)
    try:
        item = _item_decoder.decode(raw)
        if strict:
            _check_strict(raw)
        return item
    except Exception as err:  # hostile input: RecursionError, MemoryError, ...
        why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        msg = f"{where}: not an audit record or checkpoint ({why})"
        raise AuditError(msg) from None


def read_jsonl(lines: Iterable[bytes], *, strict: bool = True) -> list[AuditItem]:
    """Parse an audit export (one record or checkpoint per line); blank lines are skipped.

    A line that is not an audit record or checkpoint (``strict``: exactly, see
    :func:`decode_item`) raises :class:`~riskguard.errors.AuditError` naming the line.
    """
    return [decode_item(line, f"line {n}", strict=strict)
            for n, line in enumerate(lines, start=1) if line.strip()]


KeyLookup = Callable[[str, int], VerifyKey]
"""``lookup(key_id, ts)``: the key that may sign a checkpoint of time ``ts`` under
``key_id`` (a trust file's ``checkpoint_key``: revoked, not yet valid or expired keys
refused), else raise ``VerificationError``."""


def key_lookup(keys: Mapping[str, VerifyKey] | KeyLookup) -> KeyLookup:
    if callable(keys):
        return keys

    def lookup(key_id: str, _ts: int) -> VerifyKey:
        k = keys.get(key_id)
        if k is None:
            raise VerificationError("unknown_key", f"key {key_id!r} is not trusted")
        return k

    return lookup


def verify_log(
    items: Sequence[AuditItem],
    keys: Mapping[str, VerifyKey] | KeyLookup,
    *,
    allow_unattested_tail: bool = False,
    expected_sizes: Mapping[str, int] | None = None,
    signer_of: Callable[[str], str | None] | None = None,
    issuers: Mapping[str, str] | None = None,
) -> dict[str, ChainReport]:
    """Verify an audit log; return a report per chain or raise ``AuditError``.

    Each record must link to the one before it (its ``prev_leaf`` is that record's
    leaf hash, ``broken_link`` otherwise) and each checkpoint must sign the leaf hash
    of the last record it covers (``checkpoint_last_leaf_mismatch``); a record or
    checkpoint of the format before records were linked fails (``unlinked``,
    ``bad_checkpoint``).

    ``keys`` maps checkpoint ``key_id`` to a public key (or is a :data:`KeyLookup`).
    ``expected_sizes`` (chain -> size, e.g. from a checkpoint published elsewhere)
    detects truncation at a checkpoint boundary: a chain must hold that many records a
    checkpoint attests (records after its last checkpoint, which anyone could have
    written, do not count). With ``signer_of`` (a key id -> its
    trust-file name) every checkpoint of a chain must be signed under the name that
    signed its first, and no name signs the chains of two replicas
    (``wrong_signer`` otherwise). ``issuers`` (replica id -> the name that signs its
    chains, ``[replica] issuers``) says whose each replica's chains are: a replica's
    chain (``<origin>@<id>/p<n>``) must be signed by its issuer, and one of a replica
    ``issuers`` does not name fails (``unknown_replica``). Without it, a chain signed
    throughout by another replica's key passes if that replica's own chains are absent.
    A checkpoint repeating an earlier one (``repeated_checkpoint``) fails: the writer
    signs each size once. One pass, O(n + c log n) for n records and c
    checkpoints (:class:`ChainCheck`).
    """
    lookup = key_lookup(keys)
    if issuers is not None and signer_of is None:
        raise ValueError("issuers needs signer_of, the names of the trust file's keys")
    owners = _Owners(signer_of, issuers)
    indices: dict[str, set[int]] = {}
    for it in items:
        if isinstance(it, AuditRecord):
            indices.setdefault(it.chain, set()).add(it.index)
    chains: dict[str, _Chain] = {}
    for it in items:
        if isinstance(it, AuditRecord):
            ch = chains.setdefault(it.chain, _Chain(report=ChainReport(it.chain)))
            _check_record(it, ch, indices[it.chain])
        else:
            ch = chains.setdefault(it.origin, _Chain(report=ChainReport(it.origin)))
            owners.check(it, ch)
            _check_checkpoint(it, ch, lookup)
    for name, ch in chains.items():
        _check_size(name, ch, allow_unattested_tail, (expected_sizes or {}).get(name))
    for name in (expected_sizes or {}):
        if name not in chains:
            raise AuditError("truncated: chain missing entirely", chain=name, index=0)
    return {name: ch.report for name, ch in chains.items()}


def _check_size(name: str, ch: _Chain, allow_unattested_tail: bool,
                want: int | None) -> None:
    """No records after the last checkpoint (unless allowed), and at least ``want``
    attested ones."""
    read, attested = ch.check.range.size, ch.check.cp_size
    if attested < read and not allow_unattested_tail:
        msg = (f"unattested_tail: {read - attested} record(s) after the last "
               "checkpoint (log truncated, or still being written)")
        raise AuditError(msg, chain=name, index=attested)
    if want is not None and attested < want:
        tail = f" (and {read - attested} unsigned after them)" if read > attested else ""
        msg = f"truncated: expected {want} attested records; found {attested}{tail}"
        raise AuditError(msg, chain=name, index=attested)


class _Owners:
    """Who may sign each chain's checkpoints (see :func:`verify_log`)."""

    def __init__(self, signer_of: Callable[[str], str | None] | None,
                 issuers: Mapping[str, str] | None) -> None:
        self.signer_of = signer_of
        self.issuers = issuers
        self.replica_of_name: dict[str, str] = {}  # a signer -> the replica it signs for

    def check(self, cp: AuditCheckpoint, ch: _Chain) -> None:
        if self.signer_of is None:
            return
        name = self.signer_of(cp.key_id or "") or ""
        where = {"chain": cp.origin, "index": ch.check.cp_size}
        replica = replica_of(cp.origin)
        if replica is not None and self.issuers is not None:
            owner = self.issuers.get(replica)
            if owner is None:
                msg = (f"unknown_replica: chain of replica {replica!r}, whose issuer is not "
                       f"given (replicas named: {', '.join(sorted(self.issuers)) or 'none'})")
                raise AuditError(msg, **where)  # type: ignore[arg-type]
            if name != owner:
                msg = (f"wrong_signer: checkpoint at size {cp.size} signed by {name!r}; "
                       f"replica {replica!r}'s issuer is {owner!r}")
                raise AuditError(msg, **where)  # type: ignore[arg-type]
        if replica is not None:
            other = self.replica_of_name.setdefault(name, replica)
            if other != replica:
                msg = (f"wrong_signer: checkpoint at size {cp.size} signed by {name!r}, "
                       f"which signs replica {other!r}'s chains")
                raise AuditError(msg, **where)  # type: ignore[arg-type]
        if ch.signer is None:
            ch.signer = name
        elif name != ch.signer:
            msg = (f"wrong_signer: checkpoint at size {cp.size} signed by {name!r}, the "
                   f"chain's earlier ones by {ch.signer!r}")
            raise AuditError(msg, **where)  # type: ignore[arg-type]


def _check_record(rec: AuditRecord, ch: _Chain, present: set[int]) -> None:
    expected = ch.check.range.size
    if rec.index != expected:
        if rec.index < expected:
            msg = f"duplicate_or_reorder: index {rec.index} seen after {expected - 1}"
            raise AuditError(msg,
                             chain=rec.chain, index=rec.index)
        if expected in present:
            msg = f"reorder: record {rec.index} appears before record {expected}"
            raise AuditError(msg,
                             chain=rec.chain, index=expected)
        msg = f"gap: records {expected}..{rec.index - 1} are missing"
        raise AuditError(msg,
                         chain=rec.chain, index=expected)
    ch.check.append(rec)
    ch.report.records += 1


def _check_checkpoint(cp: AuditCheckpoint, ch: _Chain, lookup: KeyLookup) -> None:
    read = ch.check.range.size
    if cp.size > read and cp.size >= ch.check.cp_size:
        try:  # a forged checkpoint is bad_checkpoint, whatever its size
            verify_checkpoint(cp, lookup(cp.key_id or "", cp.ts))
        except VerificationError as err:
            msg = f"bad_checkpoint: checkpoint at size {cp.size}: {err}"
            raise AuditError(msg, chain=cp.origin, index=ch.check.cp_size) from None
        msg = f"truncated: checkpoint covers {cp.size} records; only {read} present"
        raise AuditError(msg, chain=cp.origin, index=read)
    if not ch.check.checkpoint(cp, lookup):
        msg = f"repeated_checkpoint: a second checkpoint at size {cp.size}"
        raise AuditError(msg, chain=cp.origin, index=cp.size)
    ch.report.attested = cp.size
    ch.report.checkpoints += 1


def prove(items: Sequence[AuditItem], record_id: str) -> dict[str, Any]:
    """An inclusion proof of ``record_id`` under the first checkpoint that covers it.

    The result is plain JSON-able data a third party checks with
    :func:`check_proof` (or any RFC 6962 verifier).
    """
    target: AuditRecord | None = None
    leaves: list[bytes] = []
    for it in items:
        if isinstance(it, AuditRecord):
            if target is None and it.record_id == record_id:
                target = it
            if target is not None and it.chain == target.chain:
                leaves.append(record_leaf(it))
            elif target is None:
                continue
        elif target is not None and it.origin == target.chain and it.size > target.index:
            chain_leaves = [record_leaf(r) for r in items
                            if isinstance(r, AuditRecord) and r.chain == target.chain][: it.size]
            proof = inclusion_proof(target.index, chain_leaves)
            return {
                "record": msgspec.to_builtins(target),
                "leaf_hash": record_leaf(target).hex(),
                "index": target.index,
                "tree_size": it.size,
                "proof": [p.hex() for p in proof],
                "checkpoint": msgspec.to_builtins(it),
            }
    if target is None:
        msg = f"no record with id {record_id!r}"
        raise AuditError(msg)
    msg = f"record {record_id!r} is not yet covered by a checkpoint"
    raise AuditError(msg,
                     chain=target.chain, index=target.index)


PROOF_FIELDS = ("record", "leaf_hash", "index", "tree_size", "proof", "checkpoint")


def check_proof(doc: Any, keys: Mapping[str, VerifyKey] | KeyLookup, *,
                signer_of: Callable[[str], str | None] | None = None,
                issuers: Mapping[str, str] | None = None) -> None:
    """Verify a document made by :func:`prove`; return nothing or raise ``AuditError``.

    The document claims "record ``record_id`` is leaf ``index`` of chain ``origin``'s
    tree of ``tree_size`` leaves, whose root the checkpoint signs", and every field is
    bound to that claim: the leaf hash is recomputed from the record's body; index,
    ``record_id`` (``<chain>:<index>``), tree size and the checkpoint's size and origin
    agree; the inclusion path leads from that leaf to the signed root; the signature
    verifies under a checkpoint key ``keys`` accepts; and the document is exactly what
    :func:`prove` prints for those values (else ``malformed``). With ``issuers``
    (replica id -> issuer) and ``signer_of`` (a key id -> its trust-file name), a
    replica's chain must be signed by its issuer (``wrong_signer``,
    ``unknown_replica``); without them, any checkpoint key vouches for any chain.
    """
    rec, cp, index, tree_size, claimed, path, leaf = _read_proof(doc)
    chain, at = rec.chain, rec.index
    if rec.leaf_hash != leaf.hex():
        raise AuditError("leaf_hash_mismatch: the record's leaf_hash is not the hash of "
                         "its body", chain=chain, index=at)
    if claimed != leaf:
        raise AuditError("leaf_hash_mismatch: the proof's leaf_hash is not the hash of "
                         "the record", chain=chain, index=at)
    if rec.record_id != f"{chain}:{at}":
        msg = f"record_id_mismatch: record_id {rec.record_id!r} is not '{chain}:{at}'"
        raise AuditError(msg, chain=chain, index=at)
    if index != at:
        msg = f"index_mismatch: the proof says leaf {index}; the record is {at}"
        raise AuditError(msg, chain=chain, index=at)
    if not 0 <= index < tree_size:
        msg = f"index_mismatch: leaf {index} is outside a tree of size {tree_size}"
        raise AuditError(msg, chain=chain, index=at)
    if cp.size != tree_size:
        msg = f"size_mismatch: the proof says size {tree_size}; the checkpoint signs {cp.size}"
        raise AuditError(msg, chain=chain, index=at)
    if cp.origin != chain:
        msg = f"chain_mismatch: the checkpoint is for chain {cp.origin!r}"
        raise AuditError(msg, chain=chain, index=at)
    try:
        verify_checkpoint(cp, key_lookup(keys)(cp.key_id or "", cp.ts))
    except VerificationError as err:
        msg = f"bad_checkpoint: {err}"
        raise AuditError(msg, chain=chain, index=at) from None
    if issuers is not None:
        _check_issuer(cp, chain, at, signer_of, issuers)
    verify_inclusion(leaf, index, tree_size, path, bytes.fromhex(cp.root))
    canonical = {
        "record": msgspec.to_builtins(rec), "leaf_hash": leaf.hex(), "index": index,
        "tree_size": tree_size, "proof": [h.hex() for h in path],
        "checkpoint": msgspec.to_builtins(cp),
    }
    if not _same_json(doc, canonical):
        raise AuditError("not_canonical: the document differs from the proof of what it "
                         "claims (a field added, left out or spelled otherwise)",
                         chain=chain, index=at)


def _check_issuer(cp: AuditCheckpoint, chain: str, at: int,
                  signer_of: Callable[[str], str | None] | None,
                  issuers: Mapping[str, str]) -> None:
    if signer_of is None:
        raise ValueError("issuers needs signer_of, the names of the trust file's keys")
    replica = replica_of(chain)
    if replica is None:
        return
    owner = issuers.get(replica)
    if owner is None:
        msg = f"unknown_replica: chain of replica {replica!r}, whose issuer is not given"
        raise AuditError(msg, chain=chain, index=at)
    name = signer_of(cp.key_id or "")
    if name != owner:
        msg = f"wrong_signer: signed by {name!r}; replica {replica!r}'s issuer is {owner!r}"
        raise AuditError(msg, chain=chain, index=at)


def _read_proof(doc: Any) -> tuple[AuditRecord, AuditCheckpoint, int, int, bytes,
                                    list[bytes], bytes]:
    """A proof document's record, checkpoint, index, tree size, claimed leaf hash and
    path, and the leaf hash of the record; ``AuditError`` (``malformed``) if it is not a
    JSON object of exactly those fields, each of its type."""
    if not isinstance(doc, Mapping):
        msg = f"malformed: a proof is a JSON object; got {type(doc).__name__}"
        raise AuditError(msg)
    missing = [k for k in PROOF_FIELDS if k not in doc]
    extra = sorted(str(k) for k in doc if k not in PROOF_FIELDS)
    if missing or extra:
        msg = (f"malformed: a proof has exactly the fields {', '.join(PROOF_FIELDS)}; "
               f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        raise AuditError(msg)
    try:
        rec = msgspec.convert(doc["record"], AuditRecord)
        cp = msgspec.convert(doc["checkpoint"], AuditCheckpoint)
        index = _proof_int(doc["index"], "index")
        tree_size = _proof_int(doc["tree_size"], "tree_size")
        claimed = _proof_digest(doc["leaf_hash"], "leaf_hash")
        if not isinstance(doc["proof"], list):
            raise TypeError("proof must be a list of hashes")
        path = [_proof_digest(h, f"proof[{k}]") for k, h in enumerate(doc["proof"])]
        # text JSON can carry but UTF-8 cannot (a lone surrogate) fails here, as malformed
        leaf = record_leaf(rec)
    except (TypeError, ValueError, msgspec.ValidationError) as err:  # UnicodeError too
        msg = f"malformed: {err}"
        raise AuditError(msg) from None
    return rec, cp, index, tree_size, claimed, path, leaf


def _proof_int(v: Any, name: str) -> int:
    if type(v) is not int:
        msg = f"{name} must be an integer; got {v!r}"[:200]
        raise TypeError(msg)
    return v


def _proof_digest(v: Any, name: str) -> bytes:
    if not isinstance(v, str) or len(v) != 64 or v.strip("0123456789abcdef"):
        msg = f"{name} must be 64 lowercase hex digits; got {v!r}"[:200]
        raise ValueError(msg)
    return bytes.fromhex(v)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, type for type (``True`` is not ``1``, ``1.0`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
