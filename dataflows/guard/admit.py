"""Bounded keys at the guard's door: venues, instruments and counterparties beyond the
config's are admitted up to their caps, and what is past a cap becomes a dead letter
before any keyed step holds state for it
(:class:`~riskguard.operators.core.admission.KeyAdmission`, ``[admission]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.connectors.placement import route_worker, worker_of_thread
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.operators.core.admission import KeyAdmission
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import Clock
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.signals import RiskAlert

ADMIT_KEY = "admit"
"""The key the gate runs under in a run of one worker: its caps count over everything the
guard reads. With several workers each worker's gate has a key of its own that lives on
it (:func:`gate_key`), so no record crosses to another worker (or process) to be
admitted, and each worker's event-time ticks stay its own; the caps count per worker."""
_LOCAL: dict[tuple[int, int], str] = {}


def gate_key() -> str:
    """The gate's key on the calling worker: one that lives there (:data:`ADMIT_KEY`
    outside a flow with the ``workers`` probe, as in a backtest)."""
    where = worker_of_thread()
    if where is None:
        return ADMIT_KEY
    key = _LOCAL.get(where)
    if key is None:
        index, count = where
        i = 0
        while route_worker(f"{ADMIT_KEY}{i}", count) != index:
            i += 1
        key = _LOCAL[where] = f"{ADMIT_KEY}{i}"
    return key


@dataclass(frozen=True)
class AdmitOut:
    """What passed the gate, the dead letters of what did not, and the ``admission_cap``
    alerts (a cap's first refusal) for the playbook."""

    oks: Stream[Any]
    errs: Stream[DeadLetter]
    alerts: Stream[RiskAlert]


@operator
def admit_keys(step_id: str, records: Stream[Any], *, cfg: GuardConfig,
               clock: Clock) -> AdmitOut:
    """``records`` with every market and trading record past an admission cap turned
    into a dead letter (``errs``) and a cap's first refusal into an alert (``alerts``);
    everything else passes, in order."""
    known = known_names(cfg)
    def key(rs: list[Any]) -> list[tuple[str, Any]]:
        k = gate_key()
        return [(k, r) for r in rs]

    keyed = op.flat_map_batch("key", records, key)
    gated = stateful_logic("gate", keyed, lambda state: KeyAdmission(
        cfg.admission, known, state=state, clock=clock))
    split = split_dead_letters("split", op.flat_map_batch("unkey", gated, values_of))
    alerts = op.flat_map_batch("alerts", split.oks,
                               lambda rs: [r for r in rs if type(r) is RiskAlert])
    oks = op.flat_map_batch("records", split.oks,
                            lambda rs: [r for r in rs if type(r) is not RiskAlert])
    return AdmitOut(oks=oks, errs=split.errs, alerts=alerts)
