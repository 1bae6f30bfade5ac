"""Bytewax adapters for :mod:`riskguard.operators.audit.chain` (:func:`audit_log`) and
:mod:`riskguard.operators.audit.replica_watch` (:func:`watch_replicas`).

>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from riskguard.operators.audit import AuditConfig, verify_log
>>> from riskguard.operators.signing.crypto import Signer
>>> from riskguard.schemas import IndexPrice
>>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
>>> decisions = [IndexPrice(id=f"i{i}", venue="oracle", instrument="BTC-USD", ts=i, price=1.0)
...              for i in range(5)]
>>> flow = Dataflow("audit_demo")
>>> log = audit_log("audit", op.input("in", flow, TestingSource(decisions)), signer=signer,
...                 config=AuditConfig(checkpoint_every=2))
>>> out = []
>>> op.output("out", log, TestingSink(out))
>>> run_main(flow)
>>> "".join("R" if isinstance(x, AuditRecord) else "C" for x in out)
'RRCRRCRC'
>>> verify_log(out, {signer.key_id: signer.public_key})["riskguard/p0"].attested
5
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from riskguard.operators.audit.chain import AuditConfig, AuditLogic, AuditState
from riskguard.operators.audit.replica_watch import ReplicaWatchConfig, ReplicaWatchLogic
from riskguard.operators.audit.resume import continue_chain
from riskguard.operators.core.base import stateful_logic
from riskguard.operators.core.clock import Clock, Tick, system_clock
from riskguard.operators.signing.crypto import Signer
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord
from riskguard.schemas.base import Record
from riskguard.schemas.signals import RiskAlert

_enc = msgspec.json.Encoder()


class ChainAudit:
    """Builds the chain's :class:`AuditLogic` from the key carried with the first event
    (or from the restored state), continuing the chain as :func:`continue_chain` says."""

    def __init__(self, signer: Signer, config: AuditConfig, state: AuditState | None,
                 resume: Mapping[str, AuditState]) -> None:
        self.signer = signer
        self.config = config
        self.resume = resume
        self.logic = None
        if state is not None:
            start = continue_chain(state.chain, state, resume)
            self.logic = AuditLogic(state.chain, signer, config, start)

    def on_event(self, event: tuple[str, Any]) -> list[AuditRecord | AuditCheckpoint]:
        chain, item = event
        if self.logic is None:
            start = continue_chain(chain, None, self.resume)
            self.logic = AuditLogic(chain, self.signer, self.config, start)
        return self.logic.on_event(item)

    def on_eof(self) -> list[AuditRecord | AuditCheckpoint]:
        return [] if self.logic is None else self.logic.on_eof()

    def snapshot(self) -> AuditState | None:
        return None if self.logic is None else self.logic.snapshot()


def _stable(item: Any) -> bytes:
    return _enc.encode(item) if isinstance(item, msgspec.Struct) else repr(item).encode()


@operator
def audit_log(
    step_id: str,
    decisions: Stream[Record],
    *,
    signer: Signer,
    config: AuditConfig | None = None,
    resume: Mapping[str, AuditState] | None = None,
) -> Stream[AuditRecord | AuditCheckpoint]:
    """Append every decision to a Merkle chain; emit records and signed checkpoints.

    Decisions are spread over ``config.partitions`` chains named
    ``<origin>/p<n>`` by a stable hash of their bytes. At end of input each
    chain closes with a checkpoint over its unattested records.

    ``resume`` maps a chain to the state it has on the audit topic
    (:class:`~riskguard.operators.audit.ChainResume`, or
    :func:`riskguard.connectors.audit_tail.read_audit_tail` at start-up): a
    chain found there continues at its next index instead of starting again at
    0; with a recovery snapshot, :func:`~riskguard.operators.audit.continue_chain`
    decides which of the two it continues from.
    """
    cfg = config or AuditConfig()
    found = dict(resume or {})

    def chain_of(item: Any) -> str:
        return f"{cfg.origin}/p{zlib.crc32(_stable(item)) % cfg.partitions}"

    keyed = op.map("key", decisions, lambda item: (chain_of(item), (chain_of(item), item)))

    def build(state: AuditState | None) -> ChainAudit:
        return ChainAudit(signer, cfg, state, found)

    out = stateful_logic("stateful", keyed, build)
    return op.key_rm("unkey", out)


@operator
def watch_replicas(
    step_id: str,
    audit: Stream[AuditRecord | AuditCheckpoint | Tick],
    *,
    config: ReplicaWatchConfig,
    clock: Clock = system_clock,
) -> Stream[RiskAlert]:
    """Watch redundant guard replicas through the audit topic's records and checkpoints
    (and any other items, as ticks of processing time): ``replica_divergence``,
    ``replica_silent``/``replica_restored`` and ``replica_config_mismatch`` alerts
    (:mod:`~riskguard.operators.audit.replica_watch`). One key: the audit topic of one
    guard's replicas carries a few records per decision."""
    keyed = op.map("key", audit, lambda item: ("replicas", item))
    out = stateful_logic("stateful", keyed, lambda state: ReplicaWatchLogic(config, clock,
                                                                             state))
    return op.key_rm("unkey", out)
