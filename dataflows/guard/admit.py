"""Bounded keys at the guard's door: venues, instruments and counterparties beyond the
config's are admitted up to their caps, and what is past a cap becomes a dead letter
before any keyed step holds state for it
(:class:`~riskguard.operators.core.admission.KeyAdmission`, ``[admission]``)."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.operators.core.admission import KeyAdmission
from riskguard.operators.core.base import SplitOut, split_dead_letters, stateful_logic, values_of
from riskguard.operators.core.clock import Clock

ADMIT_KEY = "admit"
"""The one key the gate runs under: its caps count over everything the guard reads."""


@operator
def admit_keys(step_id: str, records: Stream[Any], *, cfg: GuardConfig,
               clock: Clock) -> SplitOut[Any]:
    """``records`` with every market and trading record past an admission cap turned
    into a dead letter (``errs``); everything else passes, in order."""
    known = known_names(cfg)
    keyed = op.flat_map_batch("key", records, lambda rs: [(ADMIT_KEY, r) for r in rs])
    gated = stateful_logic("gate", keyed, lambda state: KeyAdmission(
        cfg.admission, known, state=state, clock=clock))
    return split_dead_letters("split", op.flat_map_batch("unkey", gated, values_of))
