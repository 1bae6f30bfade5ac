"""Audit records for the replica watch's tests."""

from __future__ import annotations

from riskguard.schemas.audit import AuditRecord


def audited_command(chain: str, index: int, decision_id: str,
                    config_hash: str = "0" * 64) -> AuditRecord:
    """An audited command of ``chain``, as a replica's audit step writes one."""
    return AuditRecord(
        record_id=f"{chain}:{index}", chain=chain, index=index, ts=index, kind="command",
        operator="mitigation", operator_version="test", config_hash=config_hash,
        input_digest="0" * 64,
        body={"decision_id": decision_id, "action": "reduce_only",
              "scope": {"kind": "venue", "value": "okx"}, "evidence_hashes": ["e1"]})
