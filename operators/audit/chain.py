"""Appending to an audit chain: records, signed checkpoints, and :class:`AuditLogic`.

Every decision becomes an :class:`~riskguard.schemas.AuditRecord` appended to a chain
(one chain per worker partition). Every ``checkpoint_every`` records, or every
``checkpoint_interval_ns`` of event time, the chain emits a signed
:class:`~riskguard.schemas.AuditCheckpoint` (origin, size, root, last leaf). Each
record carries the leaf hash of the record before it (``prev_leaf``), so a checkpoint's
last leaf names, link by link, every record it covers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from riskguard.operators.audit.merkle import CompactRange, leaf_hash
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import PAYLOAD_AUDIT_CHECKPOINT, Signer, VerifyKey
from riskguard.schemas.audit import GENESIS_LEAF, AuditCheckpoint, AuditRecord, DeadLetter

import riskguard
from riskguard.errors import SigningError, VerificationError
from riskguard.validation import PositiveInt, PositiveNanoseconds, check_declared

STATE_VERSION = 2
_NS_PER_S = 1_000_000_000


def replica_of(chain: str) -> str | None:
    """The replica of a chain name ``<origin>@<replica>/p<n>`` (None: not a replica's).

    >>> replica_of("riskguard@a/p0"), replica_of("riskguard/p0")
    ('a', None)
    """
    head = chain.split("/", 1)[0]
    return head.split("@", 1)[1] if "@" in head else None


def record_body(rec: AuditRecord) -> bytes:
    """Canonical bytes of a record without its ``leaf_hash`` (sorted-key JSON)."""
    return msgspec.json.encode(msgspec.structs.replace(rec, leaf_hash=None), order="sorted")


def record_leaf(rec: AuditRecord) -> bytes:
    """The RFC 6962 leaf hash of a record."""
    return leaf_hash(record_body(rec))


def checkpoint_body(cp: AuditCheckpoint) -> bytes:
    """The bytes a checkpoint signature covers (with PAE type audit-checkpoint)."""
    return msgspec.json.encode([cp.origin, cp.size, cp.root, cp.ts, cp.key_id, cp.last_leaf])


def sign_checkpoint(origin: str, size: int, root: bytes, ts: int, signer: Signer, *,
                    last_leaf: str) -> AuditCheckpoint:
    """A checkpoint for ``origin`` signed by ``signer``; ``last_leaf`` is the leaf hash
    (hex) of record ``size - 1`` (:data:`~riskguard.schemas.audit.GENESIS_LEAF` at 0)."""
    cp = AuditCheckpoint(origin=origin, size=size, root=root.hex(), ts=ts,
                         last_leaf=last_leaf, key_id=signer.key_id)
    sig = signer.sign(PAYLOAD_AUDIT_CHECKPOINT, checkpoint_body(cp))
    return msgspec.structs.replace(cp, signature=sig.sig)


def verify_checkpoint(cp: AuditCheckpoint, key: VerifyKey) -> None:
    """Return nothing if ``cp`` is signed by ``key``; raise ``VerificationError``. A
    checkpoint without ``last_leaf`` (of the format before records were linked) fails."""
    if cp.signature is None:
        raise VerificationError("unsigned", f"checkpoint {cp.origin}@{cp.size} has no signature")
    if cp.last_leaf is None:
        raise VerificationError("unlinked", f"checkpoint {cp.origin}@{cp.size} names no "
                                            "last leaf (written before records were linked)")
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


MAX_AUDIT_PARTITIONS = 1000
"""Audit chains per origin at most (``p0`` to ``p999``)."""
ORIGIN_BASE_PATTERN = r"^[A-Za-z0-9_.:+-]{1,26}$(?!\n)"
"""An ``[audit] origin`` (and ``--audit-origin``): letters, digits and ``_.:+-``, at most
26 characters, so that ``<origin>@<replica id>/p<n>`` is always a valid chain name
(64 characters at most)."""
ORIGIN_PATTERN = r"^[A-Za-z0-9_.:+-]{1,26}(@[A-Za-z0-9_-]{1,32})?$(?!\n)"
"""An origin as the guard runs it: the configured one, a replica's with ``@<id>``."""
Origin = Annotated[str, msgspec.Meta(min_length=1, max_length=59, pattern=ORIGIN_PATTERN)]


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the audit step.

    ``origin`` prefixes every chain name (``<origin>/p<partition>``);
    a checkpoint is emitted every ``checkpoint_every`` records or when event
    time has moved ``checkpoint_interval_ns`` since the last one;
    ``partitions`` is the number of chains; ``config_hash`` is the hash of
    the guard configuration stamped on every record.
    """

    # prefixes every chain's name (<origin>/p<partition>; a replica's <origin>@<replica id>);
    # at most 26 of A-Z a-z 0-9 _ . : + -, so that every chain name is a valid name
    origin: Origin = "riskguard"
    checkpoint_every: PositiveInt = 1000
    checkpoint_interval_ns: PositiveNanoseconds = 60 * _NS_PER_S
    # the number of audit chains decisions are spread over
    partitions: Annotated[int, msgspec.Meta(ge=1, le=MAX_AUDIT_PARTITIONS)] = 1
    # the version stamped on every audit record (default: riskguard's)
    operator_version: str = riskguard.__version__
    # stamped on every audit record; the guard sets it to its config's hash at start-up
    config_hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] = "0" * 64

    def __post_init__(self) -> None:
        check_declared(self, "audit")


@persisted("riskguard.audit")
@dataclass
class AuditState:
    """One chain's append state: its size, Merkle peaks and last record's leaf hash."""

    chain: str
    size: int = 0
    peaks: list[bytes] = field(default_factory=list)
    last_leaf: str = GENESIS_LEAF
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
            body=body if isinstance(body, dict) else {"value": body}, prev_leaf=st.last_leaf,
        )
        leaf = record_leaf(rec)
        st.last_leaf = leaf.hex()
        rec = msgspec.structs.replace(rec, leaf_hash=st.last_leaf)
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
        cp = sign_checkpoint(st.chain, st.size, self._range.root(), st.last_ts, self.signer,
                             last_leaf=st.last_leaf)
        st.since_checkpoint = 0
        st.last_checkpoint_ts = st.last_ts
        return cp

    def snapshot(self) -> AuditState:
        st = self.state
        return AuditState(chain=st.chain, size=st.size, peaks=list(st.peaks),
                          last_leaf=st.last_leaf, since_checkpoint=st.since_checkpoint,
                          last_checkpoint_ts=st.last_checkpoint_ts, last_ts=st.last_ts,
                          version=st.version)

