"""Bounded keys at the guard's door: venues, instruments and counterparties beyond the
config's are admitted up to their caps, and what is past a cap becomes a dead letter
before any keyed step holds state for it
(:class:`~riskguard.operators.core.admission.KeyAdmission`, ``[admission]``)."""

from __future__ import annotations

from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.operators.core.admission import KeyAdmission
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import Clock
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import Record
from riskguard.schemas.signals import RiskAlert

ADMIT_KEY = "admit"
"""The one key the gate runs under: its caps count over everything the guard reads (a
guard process runs one worker, so no record crosses to another to be admitted)."""


@dataclass(frozen=True)
class AdmitOut:
    """What passed the gate, the dead letters of what did not, and the ``admission_cap``
    alerts (a cap's first refusal) for the playbook."""

    oks: Stream[Record]
    errs: Stream[DeadLetter]
    alerts: Stream[RiskAlert]


@operator
def admit_keys(step_id: str, records: Stream[Record], *, cfg: GuardConfig,
               clock: Clock) -> AdmitOut:
    """``records`` with every market and trading record past an admission cap turned
    into a dead letter (``errs``) and a cap's first refusal into an alert (``alerts``);
    everything else passes, in order."""
    known = known_names(cfg)
    keyed = op.flat_map_batch("key", records, lambda rs: [(ADMIT_KEY, r) for r in rs])
    gated = stateful_logic("gate", keyed, lambda state: KeyAdmission(
        cfg.admission, known, state=state, clock=clock))
    split = split_dead_letters("split", op.flat_map_batch("unkey", gated, values_of))
    alerts = op.flat_map_batch("alerts", split.oks,
                               lambda rs: [r for r in rs if type(r) is RiskAlert])
    oks = op.flat_map_batch("records", split.oks,
                            lambda rs: [r for r in rs if type(r) is not RiskAlert])
    return AdmitOut(oks=oks, errs=split.errs, alerts=alerts)
