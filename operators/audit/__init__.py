"""The tamper-evident audit log: RFC 6962 Merkle chains with signed checkpoints.

Every decision becomes an :class:`~riskguard.schemas.AuditRecord` appended to a chain
(one chain per worker partition), and every so often a signed
:class:`~riskguard.schemas.AuditCheckpoint`. docs/audit.md is the reference.

- :mod:`~riskguard.operators.audit.ops`: the bytewax operator :func:`audit_log`;
- :mod:`~riskguard.operators.audit.chain`: appending (:class:`AuditLogic`,
  :class:`AuditConfig`), record leaves and checkpoint signatures;
- :mod:`~riskguard.operators.audit.merkle`: the RFC 6962 tree, its proofs and
  :class:`CompactRange`;
- :mod:`~riskguard.operators.audit.verify`: :func:`verify_log` over an export,
  :func:`prove` and :func:`check_proof` for one record;
- :mod:`~riskguard.operators.audit.resume`: continuing a chain after a restart;
- :mod:`~riskguard.operators.audit.replica_watch`: redundant replicas' chains compared
  (:func:`watch_replicas`).
"""

from riskguard.operators.audit.chain import (
    KIND_BY_TAG,
    OPERATOR_BY_TAG,
    STATE_VERSION,
    AuditConfig,
    AuditLogic,
    AuditState,
    checkpoint_body,
    record_body,
    record_leaf,
    sign_checkpoint,
    verify_checkpoint,
)
from riskguard.operators.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    inclusion_proof,
    leaf_hash,
    node_hash,
    proof_from_levels,
    root_from_inclusion,
    root_of,
    tree_levels,
    verify_inclusion,
)
from riskguard.operators.audit.ops import audit_log, watch_replicas
from riskguard.operators.audit.replica_watch import (
    ReplicaWatchConfig,
    ReplicaWatchLogic,
    ReplicaWatchState,
    replica_of,
)
from riskguard.operators.audit.resume import (
    ChainResume,
    continue_chain,
)
from riskguard.operators.audit.verify import (
    PROOF_FIELDS,
    AuditItem,
    ChainCheck,
    ChainReport,
    KeyLookup,
    check_proof,
    decode_item,
    prove,
    read_jsonl,
    verify_log,
)

__all__ = [
    "EMPTY_ROOT",
    "KIND_BY_TAG",
    "OPERATOR_BY_TAG",
    "PROOF_FIELDS",
    "STATE_VERSION",
    "AuditConfig",
    "AuditItem",
    "AuditLogic",
    "AuditState",
    "ChainCheck",
    "ChainReport",
    "ChainResume",
    "CompactRange",
    "KeyLookup",
    "ReplicaWatchConfig",
    "ReplicaWatchLogic",
    "ReplicaWatchState",
    "audit_log",
    "check_proof",
    "checkpoint_body",
    "continue_chain",
    "decode_item",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "proof_from_levels",
    "prove",
    "read_jsonl",
    "record_body",
    "record_leaf",
    "replica_of",
    "root_from_inclusion",
    "root_of",
    "sign_checkpoint",
    "tree_levels",
    "verify_checkpoint",
    "verify_inclusion",
    "verify_log",
    "watch_replicas",
]
