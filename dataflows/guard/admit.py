"""Bounded keys at the guard's door: venues, instruments and counterparties beyond the
config's are admitted up to their caps, and what is past a cap becomes a dead letter
before any keyed step holds state for it
(:class:`~riskguard.operators.core.admission.KeyAdmission`, ``[admission]``). The gate
also makes the process's event-time ticks, so their memory is in its snapshot."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.operators.core.admission import KeyAdmission
from riskguard.operators.core.base import split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import Clock, EventTicks, Tick
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import Record
from riskguard.schemas.signals import RiskAlert

ADMIT_KEY = "admit"
"""The one key the gate runs under: its caps count over everything the guard reads (a
guard process runs one worker, so no record crosses to another to be admitted)."""


@dataclass(frozen=True)
class TickSpec:
    """The ticks the gate makes: each ``tick_ns`` of event time, named ``source``
    (None: this process, ``<host>/<pid>``), announcing ``of`` sources (0: unknown);
    records of the ``untimed`` types make none."""

    tick_ns: int
    source: str | None = None
    of: int = 0
    untimed: tuple[type, ...] = ()

    def maker(self) -> EventTicks:
        process = f"{socket.gethostname()}/{os.getpid()}"
        return EventTicks(self.tick_ns, self.source if self.source is not None else process,
                          self.of, process=process,
                          untimed=frozenset((DeadLetter, RiskAlert, *self.untimed)))


@dataclass(frozen=True)
class AdmitOut:
    """What passed the gate, the dead letters of what did not, the ``admission_cap``
    alerts (a cap's first refusal) for the playbook, the ticks (none without a
    :class:`TickSpec`), and what passed with the ticks in their places (``timed``)."""

    oks: Stream[Record]
    errs: Stream[DeadLetter]
    alerts: Stream[RiskAlert]
    ticks: Stream[Tick]
    timed: Stream[Record | Tick]


@operator
def admit_keys(step_id: str, records: Stream[Record], *, cfg: GuardConfig,
               clock: Clock, ticking: TickSpec | None = None) -> AdmitOut:
    """``records`` with every market and trading record past an admission cap turned
    into a dead letter (``errs``) and a cap's first refusal into an alert (``alerts``);
    everything else passes, in order. With ``ticking``, the event-time ticks of what
    passes (``ticks``)."""
    known = known_names(cfg)
    keyed = op.flat_map_batch("key", records, lambda rs: [(ADMIT_KEY, r) for r in rs])
    gated = stateful_logic("gate", keyed, lambda state: KeyAdmission(
        cfg.admission, known, state=state, clock=clock,
        ticks=ticking.maker() if ticking is not None else None))
    split = split_dead_letters("split", op.flat_map_batch("unkey", gated, values_of))
    # alerts and ticks are few: one pass over the records sets them aside
    made = op.flat_map_batch("made", split.oks, lambda rs: [
        r for r in rs if type(r) is RiskAlert or type(r) is Tick])
    alerts = op.flat_map_batch("alerts", made,
                               lambda rs: [r for r in rs if type(r) is RiskAlert])
    made_ticks = op.flat_map_batch("ticks", made,
                                   lambda rs: [r for r in rs if type(r) is Tick])
    oks = op.flat_map_batch("records", split.oks, lambda rs: [
        r for r in rs if type(r) is not RiskAlert and type(r) is not Tick])
    return AdmitOut(oks=oks, errs=split.errs, alerts=alerts, ticks=made_ticks,
                    timed=split.oks)
