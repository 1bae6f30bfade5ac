"""The event-time ticks the guard's admission gate makes
(:func:`~riskguard.operators.core.base.admit_keys`, ``[admission]``): the gate sees every
record the process reads, in order, so its ticks are the process's, and their memory is
in its snapshot."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from riskguard.operators.core.clock import EventTicks
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.signals import RiskAlert


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
