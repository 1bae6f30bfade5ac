"""A tamper-evident audit log: RFC 6962 Merkle chains with signed checkpoints.

Every decision becomes an :class:`~riskguard.schemas.AuditRecord` appended to
a chain (one chain per worker partition). The leaf hash of a record is
``SHA-256(0x00 || canonical body)`` and inner nodes are
``SHA-256(0x01 || left || right)``, as in RFC 6962, so a leaf can never be
passed off as a node. Every ``checkpoint_every`` records, or every
``checkpoint_interval_ns`` of event time, the chain emits a signed
:class:`~riskguard.schemas.AuditCheckpoint` (origin, size, root).

:func:`verify_log` re-checks a whole export: every record's leaf hash and
its inclusion under the next checkpoint, consistency between successive
checkpoints, checkpoint signatures, and gaps, reorders and truncation. It
raises :class:`~riskguard.errors.AuditError` naming the first bad record.
:func:`prove` makes a self-contained inclusion proof of one record, and
:func:`check_proof` checks one with every field bound to its claim.
:class:`ChainResume` rebuilds a chain's append state from its log as read
back, checking it on the way, so a restarted guard continues each chain where
the audit topic ends (:func:`continue_chain`). docs/audit.md is the reference.

>>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
>>> root = root_of(leaves)
>>> verify_inclusion(leaves[3], 3, 5, inclusion_proof(3, leaves), root)
>>> verify_consistency(2, 5, root_of(leaves[:2]), root, consistency_proof(2, leaves))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec
from riskguard.operators.signing.crypto import PAYLOAD_AUDIT_CHECKPOINT, Signer, VerifyKey
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord, DeadLetter
from riskguard.schemas.json_limits import check_json_depth

import riskguard
from riskguard.errors import AuditError, ConfigError, SigningError, VerificationError

STATE_VERSION = 1
EMPTY_ROOT = hashlib.sha256(b"").digest()
_NS_PER_S = 1_000_000_000

# -- RFC 6962 Merkle tree ----------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``.

    >>> leaf_hash(b"").hex()[:16]
    '6e340b9cffb37a98'
    """
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes (RFC 6962 MTH)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def tree_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first; an unpaired last node is promoted."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def proof_from_levels(index: int, levels: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Inclusion proof of leaf ``index`` from :func:`tree_levels` output."""
    proof = []
    i = index
    for level in levels[:-1]:
        sib = i ^ 1
        if sib < len(level):
            proof.append(level[sib])
        i >>= 1
    return proof


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``leaves``."""
    if not 0 <= index < len(leaves):
        msg = f"inclusion proof: index {index} outside a tree of size {len(leaves)}"
        raise AuditError(msg, index=index)
    return proof_from_levels(index, tree_levels(leaves))


def consistency_proof(size1: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Proof that the tree of ``size1`` leaves is a prefix of the tree over ``leaves``."""
    n = len(leaves)
    if not 0 < size1 <= n:
        msg = f"consistency proof: size {size1} outside 1..{n}"
        raise AuditError(msg)
    if size1 == n:
        return []
    return _subproof(size1, leaves, True)


def _subproof(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if complete else [root_of(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], complete), root_of(d[k:])]
    return [*_subproof(m - k, d[k:], False), root_of(d[:k])]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 2.1.3.2); raises if malformed."""
    if not 0 <= index < size:
        msg = f"inclusion proof: index {index} outside a tree of size {size}"
        raise AuditError(msg, index=index)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32:
            raise AuditError("inclusion proof: element is not 32 bytes", index=index)
        if sn == 0:
            raise AuditError("inclusion proof: too long", index=index)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("inclusion proof: too short", index=index)
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Return nothing if ``leaf`` is at ``index`` of the tree with ``root``; else raise."""
    if len(leaf) != 32 or len(root) != 32:
        raise AuditError("inclusion proof: leaf and root must be 32 bytes", index=index)
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise AuditError("inclusion proof does not lead to the root", index=index)


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       proof: Sequence[bytes]) -> None:
    """Return nothing if tree ``size1``/``root1`` is a prefix of ``size2``/``root2``."""
    if size2 < size1:
        msg = f"consistency: size went back from {size1} to {size2}"
        raise AuditError(msg)
    if size1 == size2:
        if proof or root1 != root2:
            raise AuditError("consistency: equal sizes need equal roots and an empty proof")
        return
    if size1 == 0:
        if proof:
            raise AuditError("consistency: a proof from the empty tree must be empty")
        return
    if not proof:
        raise AuditError("consistency: empty proof")
    if any(len(p) != 32 for p in proof):
        raise AuditError("consistency: proof element is not 32 bytes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditError("consistency: proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        msg = f"consistency: tree {size1} is not a prefix of tree {size2}"
        raise AuditError(msg)


class CompactRange:
    """Append-only Merkle state in O(log n): the roots of the perfect subtrees."""

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        self.size = size
        self.peaks = list(peaks)

    def append(self, leaf: bytes) -> None:
        self.peaks.append(leaf)
        n = self.size
        while n & 1:
            right = self.peaks.pop()
            left = self.peaks.pop()
            self.peaks.append(node_hash(left, right))
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        r = self.peaks[-1]
        for p in reversed(self.peaks[:-1]):
            r = node_hash(p, r)
        return r


# -- records and checkpoints -------------------------------------------------


def record_body(rec: AuditRecord) -> bytes:
    """Canonical bytes of a record without its ``leaf_hash`` (sorted-key JSON)."""
    return msgspec.json.encode(msgspec.structs.replace(rec, leaf_hash=None), order="sorted")


def record_leaf(rec: AuditRecord) -> bytes:
    """The RFC 6962 leaf hash of a record."""
    return leaf_hash(record_body(rec))


def checkpoint_body(cp: AuditCheckpoint) -> bytes:
    """The bytes a checkpoint signature covers (with PAE type audit-checkpoint)."""
    return msgspec.json.encode([cp.origin, cp.size, cp.root, cp.ts, cp.key_id])


def sign_checkpoint(origin: str, size: int, root: bytes, ts: int,
                    signer: Signer) -> AuditCheckpoint:
    """A checkpoint for ``origin`` signed by ``signer``."""
    cp = AuditCheckpoint(origin=origin, size=size, root=root.hex(), ts=ts, key_id=signer.key_id)
    sig = signer.sign(PAYLOAD_AUDIT_CHECKPOINT, checkpoint_body(cp))
    return msgspec.structs.replace(cp, signature=sig.sig)


def verify_checkpoint(cp: AuditCheckpoint, key: VerifyKey) -> None:
    """Return nothing if ``cp`` is signed by ``key``; raise ``VerificationError``."""
    if cp.signature is None:
        raise VerificationError("unsigned", f"checkpoint {cp.origin}@{cp.size} has no signature")
    key.verify(PAYLOAD_AUDIT_CHECKPOINT, checkpoint_body(cp), cp.signature)


KIND_BY_TAG = {
    "anomaly": "signal",
    "risk_alert": "signal",
    "limit_breach": "breach",
    "envelope": "command",
    "command": "command",
    "dead_letter": "rejected_input",
    "limit_update": "limit_update_accepted",
}
OPERATOR_BY_TAG = {
    "anomaly": "anomaly",
    "risk_alert": "mitigation",
    "limit_breach": "limits",
    "envelope": "sign",
    "command": "mitigation",
    "limit_update": "limits",
}


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the audit step.

    ``origin`` prefixes every chain name (``<origin>/p<partition>``);
    a checkpoint is emitted every ``checkpoint_every`` records or when event
    time has moved ``checkpoint_interval_ns`` since the last one;
    ``partitions`` is the number of chains; ``config_hash`` is the hash of
    the guard configuration stamped on every record.
    """

    origin: str = "riskguard"
    checkpoint_every: int = 1000
    checkpoint_interval_ns: int = 60 * _NS_PER_S
    partitions: int = 1
    operator_version: str = riskguard.__version__
    config_hash: str = "0" * 64

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError("audit.checkpoint_every", "an integer >= 1", self.checkpoint_every)
        if self.checkpoint_interval_ns < 1:
            raise ConfigError("audit.checkpoint_interval_ns", "an integer >= 1 (ns)",
                              self.checkpoint_interval_ns)
        if self.partitions < 1:
            raise ConfigError("audit.partitions", "an integer >= 1", self.partitions)
        hexdigits = "0123456789abcdef"
        if len(self.config_hash) != 64 or any(c not in hexdigits for c in self.config_hash):
            raise ConfigError("audit.config_hash", "64 lowercase hex digits", self.config_hash)


@dataclass
class AuditState:
    """One chain's append state."""

    chain: str
    size: int = 0
    peaks: list[bytes] = field(default_factory=list)
    since_checkpoint: int = 0
    last_checkpoint_ts: int | None = None
    last_ts: int = 0
    version: int = STATE_VERSION


_encoder = msgspec.json.Encoder()


def _tag(item: Any) -> str:
    cfg = getattr(type(item), "__struct_config__", None)
    tag = getattr(cfg, "tag", None)
    return tag if isinstance(tag, str) else type(item).__name__


def _event_ts(item: Any, fallback: int) -> int:
    for name in ("ts", "issued_at", "recv_ts"):
        v = getattr(item, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return fallback


class AuditLogic:
    """Appends decisions to one Merkle chain and emits signed checkpoints."""

    def __init__(self, chain: str, signer: Signer, config: AuditConfig,
                 state: AuditState | None = None) -> None:
        if not isinstance(signer, Signer):
            msg = f"step 'audit': signer must be a riskguard Signer; got {type(signer).__name__}"
            raise SigningError(msg)
        self.signer = signer
        self.config = config
        if state is None:
            state = AuditState(chain=chain)
        elif state.version != STATE_VERSION:
            raise ConfigError("audit.state.version", str(STATE_VERSION), state.version)
        self.state = state
        self._range = CompactRange(state.size, state.peaks)

    def on_event(self, decision: Any) -> list[AuditRecord | AuditCheckpoint]:
        st = self.state
        cfg = self.config
        ts = _event_ts(decision, st.last_ts)
        tag = _tag(decision)
        if isinstance(decision, msgspec.Struct):
            raw = _encoder.encode(decision)
            body = msgspec.to_builtins(decision)
            if isinstance(decision, DeadLetter):
                # the input's bytes stay on the dead-letter topic; its length and SHA-256
                # bind them here, and the record stays well inside the 64 KiB cap
                body.pop("raw", None)
        else:
            raw = repr(decision).encode()
            body = {"repr": repr(decision)[:4096]}
        operator = (decision.step if isinstance(decision, DeadLetter)
                    else OPERATOR_BY_TAG.get(tag, tag))
        rec = AuditRecord(
            record_id=f"{st.chain}:{st.size}", chain=st.chain, index=st.size, ts=ts,
            kind=KIND_BY_TAG.get(tag, tag)[:64], operator=operator[:64] or "unknown",
            operator_version=cfg.operator_version, config_hash=cfg.config_hash,
            input_digest=hashlib.sha256(raw).hexdigest(),
            body=body if isinstance(body, dict) else {"value": body},
        )
        leaf = record_leaf(rec)
        rec = msgspec.structs.replace(rec, leaf_hash=leaf.hex())
        self._range.append(leaf)
        st.size = self._range.size
        st.peaks = self._range.peaks
        st.since_checkpoint += 1
        st.last_ts = max(st.last_ts, ts)
        if st.last_checkpoint_ts is None:
            st.last_checkpoint_ts = ts
        out: list[AuditRecord | AuditCheckpoint] = [rec]
        if (st.since_checkpoint >= cfg.checkpoint_every
                or st.last_ts - st.last_checkpoint_ts >= cfg.checkpoint_interval_ns):
            out.append(self._checkpoint())
        return out

    def on_eof(self) -> list[AuditRecord | AuditCheckpoint]:
        """Close the chain with a checkpoint over any unattested records."""
        return [self._checkpoint()] if self.state.since_checkpoint else []

    def _checkpoint(self) -> AuditCheckpoint:
        st = self.state
        cp = sign_checkpoint(st.chain, st.size, self._range.root(), st.last_ts, self.signer)
        st.since_checkpoint = 0
        st.last_checkpoint_ts = st.last_ts
        return cp

    def snapshot(self) -> AuditState:
        st = self.state
        return AuditState(chain=st.chain, size=st.size, peaks=list(st.peaks),
                          since_checkpoint=st.since_checkpoint,
                          last_checkpoint_ts=st.last_checkpoint_ts, last_ts=st.last_ts,
                          version=st.version)


def audit_builder(chain: str, signer: Signer,
                  config: AuditConfig) -> Callable[[AuditState | None], AuditLogic]:
    """``builder(state | None)`` for one chain; the signer never enters state."""

    def build(state: AuditState | None) -> AuditLogic:
        return AuditLogic(chain, signer, config, state)

    return build


# -- verification --------------------------------------------------------------


@dataclass
class ChainReport:
    """What verification found for one chain."""

    chain: str
    records: int = 0
    checkpoints: int = 0
    attested: int = 0


@dataclass
class _Chain:
    leaves: list[bytes] = field(default_factory=list)
    cp_size: int = 0
    cp_root: bytes = EMPTY_ROOT
    report: ChainReport = field(default_factory=lambda: ChainReport(""))


AuditItem: TypeAlias = AuditRecord | AuditCheckpoint
_item_decoder = msgspec.json.Decoder(AuditRecord | AuditCheckpoint)


def decode_item(raw: bytes, where: str) -> AuditItem:
    """One audit record or checkpoint from its JSON bytes.

    Whatever the bytes hold (not JSON, another record type, nesting deep
    enough to exhaust the decoder's recursion), the failure is an
    :class:`~riskguard.errors.AuditError` naming ``where``, never another
    exception. Nesting deeper than
    :data:`~riskguard.schemas.json_limits.MAX_JSON_DEPTH` is refused before
    parsing.

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
        return _item_decoder.decode(raw)
    except Exception as err:  # hostile input: RecursionError, MemoryError, ...
        why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        msg = f"{where}: not an audit record or checkpoint ({why})"
        raise AuditError(msg) from None


def read_jsonl(lines: Iterable[bytes]) -> list[AuditItem]:
    """Parse an audit export (one record or checkpoint per line); blank lines are skipped.

    A line that is not an audit record or checkpoint raises
    :class:`~riskguard.errors.AuditError` naming the line.
    """
    return [decode_item(line, f"line {n}") for n, line in enumerate(lines, start=1)
            if line.strip()]


KeyLookup = Callable[[str], VerifyKey]


def _key_lookup(keys: Mapping[str, VerifyKey] | KeyLookup) -> KeyLookup:
    if callable(keys):
        return keys

    def lookup(key_id: str) -> VerifyKey:
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
    prove_each: bool = True,
) -> dict[str, ChainReport]:
    """Verify an audit log; return a report per chain or raise ``AuditError``.

    ``keys`` maps checkpoint ``key_id`` to a public key (or is a lookup that
    raises ``VerificationError``). ``expected_sizes`` (chain -> size, e.g.
    from a checkpoint published elsewhere) detects truncation at a checkpoint
    boundary. With ``prove_each`` every record's inclusion proof under the
    checkpoint that first covers it is built and verified.
    """
    lookup = _key_lookup(keys)
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
            _check_checkpoint(it, ch, lookup, prove_each=prove_each)
    for name, ch in chains.items():
        if ch.cp_size < len(ch.leaves) and not allow_unattested_tail:
            msg = (
                f"unattested_tail: {len(ch.leaves) - ch.cp_size} record(s) after the last "
                "checkpoint (log truncated, or still being written)"
            )
            raise AuditError(
                msg,
                chain=name, index=ch.cp_size,
            )
        want = (expected_sizes or {}).get(name)
        if want is not None and len(ch.leaves) < want:
            msg = f"truncated: expected {want} records; found {len(ch.leaves)}"
            raise AuditError(msg,
                             chain=name, index=len(ch.leaves))
    for name in (expected_sizes or {}):
        if name not in chains:
            raise AuditError("truncated: chain missing entirely", chain=name, index=0)
    return {name: ch.report for name, ch in chains.items()}


def _check_record(rec: AuditRecord, ch: _Chain, present: set[int]) -> None:
    expected = len(ch.leaves)
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
    leaf = record_leaf(rec)
    if rec.leaf_hash is None or rec.leaf_hash != leaf.hex():
        raise AuditError("leaf_hash_mismatch: record content does not match its leaf hash",
                         chain=rec.chain, index=rec.index)
    ch.leaves.append(leaf)
    ch.report.records += 1


def _check_checkpoint(cp: AuditCheckpoint, ch: _Chain, lookup: KeyLookup, *,
                      prove_each: bool) -> None:
    where = ch.cp_size
    try:
        key = lookup(cp.key_id or "")
        verify_checkpoint(cp, key)
    except VerificationError as err:
        msg = f"bad_checkpoint: checkpoint at size {cp.size}: {err}"
        raise AuditError(msg,
                         chain=cp.origin, index=where) from None
    if cp.size < ch.cp_size:
        msg = f"checkpoint_rollback: size {cp.size} after {ch.cp_size}"
        raise AuditError(msg,
                         chain=cp.origin, index=cp.size)
    if cp.size > len(ch.leaves):
        msg = (
            f"truncated: checkpoint covers {cp.size} records; only "
                         f"{len(ch.leaves)} present"
        )
        raise AuditError(msg, chain=cp.origin, index=len(ch.leaves))
    leaves = ch.leaves[: cp.size]
    levels = tree_levels(leaves) if leaves else [[]]
    root = levels[-1][0] if leaves else EMPTY_ROOT
    if root.hex() != cp.root:
        msg = (
            f"checkpoint_root_mismatch: records {where}..{cp.size - 1} do not "
                         f"hash to the signed root"
        )
        raise AuditError(msg, chain=cp.origin, index=where)
    if prove_each:
        for i in range(ch.cp_size, cp.size):
            verify_inclusion(leaves[i], i, cp.size, proof_from_levels(i, levels), root)
    if 0 < ch.cp_size < cp.size:
        verify_consistency(ch.cp_size, cp.size, ch.cp_root, root,
                           consistency_proof(ch.cp_size, leaves))
    ch.report.attested = cp.size
    ch.report.checkpoints += 1
    ch.cp_size = cp.size
    ch.cp_root = root


# -- continuing a chain after a restart -------------------------------------------


@dataclass
class _Tail:
    range: CompactRange = field(default_factory=CompactRange)
    cp_size: int = 0
    cp_ts: int | None = None
    first_ts: int | None = None
    last_ts: int = 0


class ChainResume:
    """Rebuilds each chain's append state from its log as read back, checking it on the way.

    A guard that starts without a recovery snapshot must continue each of its
    chains where the audit topic ends, not start another at index 0 (that
    would break the chain for every verifier). Feed it the topic's items in
    order with :meth:`add`; :meth:`states` then gives, per chain, the
    :class:`AuditState` an uninterrupted :class:`AuditLogic` would have now:
    its size, its Merkle peaks (the :class:`CompactRange`), and where its
    last checkpoint was.

    It checks what it reads as :func:`verify_log` does, in one pass and
    O(log n) memory per chain: indices run 0, 1, 2, ... with no gap or
    repeat; every leaf hash is the hash of its record's body; every
    checkpoint is signed by a key ``keys`` accepts, signs the root of
    exactly the records before it, and never goes back. Anything else raises
    :class:`~riskguard.errors.AuditError`: a chain that does not verify as
    read must not be extended (its next checkpoint would sign the damage).
    Records after the chain's last checkpoint (a process stopped between two)
    are taken as read; the next checkpoint covers them.

    Only chains named ``<origin>/...`` are followed (``origin`` None: all).

    >>> from riskguard.operators.signing.crypto import Signer
    >>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
    >>> cfg = AuditConfig(checkpoint_every=2)
    >>> first = AuditLogic("riskguard/p0", signer, cfg)
    >>> log = [out for i in range(3) for out in first.on_event({"n": i})]
    >>> resume = ChainResume({signer.key_id: signer.public_key}, origin="riskguard")
    >>> for item in log:
    ...     resume.add(item)
    >>> state = resume.states()["riskguard/p0"]
    >>> (state.size, state.since_checkpoint)
    (3, 1)
    >>> second = AuditLogic("riskguard/p0", signer, cfg, state)
    >>> [r.index for r in second.on_event({"n": 3}) if isinstance(r, AuditRecord)]
    [3]
    """

    def __init__(self, keys: Mapping[str, VerifyKey] | KeyLookup, *,
                 origin: str | None = None) -> None:
        self._lookup = _key_lookup(keys)
        self._prefix = None if origin is None else f"{origin}/"
        self._tails: dict[str, _Tail] = {}

    def add(self, item: AuditItem) -> None:
        """Check one record or checkpoint and extend its chain; raise ``AuditError``."""
        if isinstance(item, AuditRecord):
            if self._ours(item.chain):
                self._record(item, self._tails.setdefault(item.chain, _Tail()))
        elif self._ours(item.origin):
            self._checkpoint(item, self._tails.setdefault(item.origin, _Tail()))

    def _ours(self, chain: str) -> bool:
        return self._prefix is None or chain.startswith(self._prefix)

    @staticmethod
    def _record(rec: AuditRecord, t: _Tail) -> None:
        expected = t.range.size
        if rec.index != expected:
            kind = "duplicate_or_reorder" if rec.index < expected else "gap"
            msg = f"{kind}: record {rec.index} where record {expected} belongs"
            raise AuditError(msg, chain=rec.chain, index=expected)
        leaf = record_leaf(rec)
        if rec.leaf_hash != leaf.hex():
            raise AuditError("leaf_hash_mismatch: record content does not match its leaf hash",
                             chain=rec.chain, index=rec.index)
        t.range.append(leaf)
        t.last_ts = max(t.last_ts, rec.ts)
        if t.first_ts is None:
            t.first_ts = rec.ts

    def _checkpoint(self, cp: AuditCheckpoint, t: _Tail) -> None:
        try:
            verify_checkpoint(cp, self._lookup(cp.key_id or ""))
        except VerificationError as err:
            msg = f"bad_checkpoint: checkpoint at size {cp.size}: {err}"
            raise AuditError(msg, chain=cp.origin, index=t.cp_size) from None
        if cp.size < t.cp_size:
            msg = f"checkpoint_rollback: size {cp.size} after {t.cp_size}"
            raise AuditError(msg, chain=cp.origin, index=cp.size)
        if cp.size != t.range.size:
            msg = (f"checkpoint_out_of_place: a checkpoint of size {cp.size} after "
                   f"{t.range.size} records")
            raise AuditError(msg, chain=cp.origin, index=min(cp.size, t.range.size))
        if cp.root != t.range.root().hex():
            msg = (f"checkpoint_root_mismatch: records {t.cp_size}..{cp.size - 1} do not hash "
                   "to the signed root")
            raise AuditError(msg, chain=cp.origin, index=t.cp_size)
        t.cp_size = cp.size
        t.cp_ts = cp.ts

    def states(self) -> dict[str, AuditState]:
        """Per chain read (that has records), the state to continue it from."""
        return {
            name: AuditState(
                chain=name, size=t.range.size, peaks=list(t.range.peaks),
                since_checkpoint=t.range.size - t.cp_size,
                # as AuditLogic keeps it: the first record's time until a checkpoint is made
                last_checkpoint_ts=t.cp_ts if t.cp_ts is not None else t.first_ts,
                last_ts=t.last_ts,
            )
            for name, t in self._tails.items() if t.range.size
        }


def resume_states(items: Iterable[AuditItem], keys: Mapping[str, VerifyKey] | KeyLookup, *,
                  origin: str | None = None) -> dict[str, AuditState]:
    """:class:`ChainResume` over ``items``: the state to continue each chain from."""
    resume = ChainResume(keys, origin=origin)
    for it in items:
        resume.add(it)
    return resume.states()


def continue_chain(chain: str, restored: AuditState | None,
                   found: Mapping[str, AuditState]) -> AuditState | None:
    """The state a chain's :class:`AuditLogic` starts from, given what a recovery snapshot
    restored (``restored``) and what the audit topic holds (``found``, from
    :class:`ChainResume`).

    - Nothing restored: the chain continues where the topic ends (a fresh
      start on a topic another run wrote to).
    - Restored, and the topic holds no more records than it: the restored
      state wins. (The topic holding fewer means records were lost from it;
      verification reports the gap.) At equal sizes the two must be the same
      tree, else ``AuditError``: the topic holds another history.
    - Restored, but the topic holds more (the process wrote records after its
      last snapshot and stopped, or another process wrote to the chain): the
      chain continues where the topic ends, as on a fresh start. Continuing
      from the snapshot would give new records the indices of records already
      written. The decisions replayed from the snapshot are appended again,
      with new indices: the log says what the guard decided, twice.

    The result is a copy; ``found`` is never changed.

    >>> top = {"c": AuditState(chain="c", size=5, peaks=[b"a" * 32, b"b" * 32])}
    >>> continue_chain("c", None, top).size
    5
    >>> continue_chain("c", AuditState(chain="c", size=3), top).size
    5
    >>> continue_chain("c", AuditState(chain="c", size=7), top).size
    7
    >>> continue_chain("d", None, top) is None
    True
    """
    seen = found.get(chain)
    if restored is not None and (seen is None or seen.size <= restored.size):
        if seen is not None and seen.size == restored.size and seen.peaks != restored.peaks:
            msg = (f"restored_state_mismatch: the recovery snapshot and the audit topic both "
                   f"hold {seen.size} records, with different hashes")
            raise AuditError(msg, chain=chain, index=seen.size)
        return restored
    if seen is None:
        return None
    return AuditState(chain=seen.chain, size=seen.size, peaks=list(seen.peaks),
                      since_checkpoint=seen.since_checkpoint,
                      last_checkpoint_ts=seen.last_checkpoint_ts, last_ts=seen.last_ts,
                      version=seen.version)


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


def check_proof(doc: Any, keys: Mapping[str, VerifyKey] | KeyLookup) -> None:
    """Verify a document made by :func:`prove`; return nothing or raise ``AuditError``.

    The document claims "record ``record_id`` is leaf ``index`` of chain
    ``origin``'s tree of ``tree_size`` leaves, whose root the checkpoint
    signs". Every field of it is bound to that claim:

    - the leaf hash is recomputed from the record's body, and both the
      record's ``leaf_hash`` and the document's must equal it;
    - the record's ``index`` equals ``index``, its ``record_id`` is
      ``<chain>:<index>``, and ``0 <= index < tree_size``;
    - the inclusion path leads from that leaf, at exactly that index in a tree
      of exactly that size, to the checkpoint's root;
    - the checkpoint's ``size`` equals ``tree_size``, its ``origin`` is the
      record's ``chain``, and its signature verifies under a key ``keys``
      accepts for checkpoints;
    - the document is exactly what :func:`prove` prints for those values: no
      field missing, none added, no other spelling of the same bytes.

    A document that is not a JSON object of those fields raises
    ``AuditError`` (``malformed``) too.
    """
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
    except (TypeError, ValueError, msgspec.ValidationError) as err:
        msg = f"malformed: {err}"
        raise AuditError(msg) from None
    chain, at = rec.chain, rec.index
    leaf = record_leaf(rec)
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
        verify_checkpoint(cp, _key_lookup(keys)(cp.key_id or ""))
    except VerificationError as err:
        msg = f"bad_checkpoint: {err}"
        raise AuditError(msg, chain=chain, index=at) from None
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
