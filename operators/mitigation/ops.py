"""Bytewax adapter for :mod:`riskguard.operators.mitigation.playbook`.

>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from riskguard.operators.mitigation.playbook import S, Rule, Rung, Tick
>>> from riskguard.schemas import Action, RiskAlert, Scope, ScopeKind, Severity
>>> cfg = PlaybookConfig(issuer="guard", venues=("okx", "binance", "kraken"), rules=(Rule(
...     name="venue_down", signal="heartbeat_loss", scope="venue:*", quiet_s=30,
...     ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
...             Rung(action=Action.CANCEL_ALL, after_s=20))),))
>>> okx = Scope(kind=ScopeKind.VENUE, value="okx")
>>> events = [
...     RiskAlert(id="h1", kind="heartbeat_loss", scope=okx, ts=1 * S, reason="gap 5s"),
...     Tick(ts=10 * S),
...     RiskAlert(id="h2", kind="heartbeat_restored", scope=okx, ts=12 * S, reason="back"),
...     Tick(ts=43 * S),
... ]
>>> flow = Dataflow("playbook_demo")
>>> planned = plan_mitigation("playbook", op.input("in", flow, TestingSource(events)),
...                           config=cfg, clock=lambda: 7)
>>> out = []
>>> op.output("out", planned.oks, TestingSink(out))
>>> run_main(flow)
>>> for c in out:
...     print(c.action.value, c.scope.label(), c.params.get("targets") or c.params["actions"])
reroute_order_flow venue:okx ['binance', 'kraken']
resume venue:okx ['reroute_order_flow']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.operators.core.base import SplitOut, split_dead_letters, stateful_logic
from riskguard.operators.core.clock import TICK_IDLE_NS, system_clock
from riskguard.operators.core.metrics import reorder_counter
from riskguard.operators.core.observe import observe
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookInput,
    Tick,
    playbook_builder,
)
from riskguard.schemas.commands import MitigationCommand

__all__ = ["PlaybookConfig", "Tick", "plan_mitigation"]

FIRM_KEY = "firm"


def _input_time(value: Any) -> int:
    """Event time of a playbook input: ``ts``, a resume's ``issued_at``, or 0 for anything
    else (it goes first, and is dead-lettered)."""
    ts = getattr(value, "ts", None)
    return ts if ts is not None else getattr(value, "issued_at", 0)


@operator
def plan_mitigation(
    step_id: str,
    signals: Stream[PlaybookInput],
    *,
    config: PlaybookConfig,
    clock: Callable[[], int] = system_clock,
    wall_clock: Callable[[], int] | None = None,
    idle_ns: int = TICK_IDLE_NS,
) -> SplitOut[MitigationCommand]:
    """Turn signals into graduated, de-duplicated, rate-capped mitigation commands.

    ``signals`` carries :class:`~riskguard.schemas.AnomalySignal`,
    :class:`~riskguard.schemas.RiskAlert`, :class:`~riskguard.schemas.LimitBreach`,
    verified manual ``resume`` :class:`~riskguard.schemas.MitigationCommand`, verified
    :class:`~riskguard.schemas.ExecutionAck` and
    :class:`~riskguard.operators.mitigation.playbook.Tick` items, all under one key
    (``"firm"``); anything else goes to ``errs`` as a dead letter. Commands leave with
    ``seq=0`` for the signing step to number. ``wall_clock`` (live runs only) wakes it
    when an awaited ack falls overdue with no event to notice it. ``idle_ns``: how long
    (processing time) a tick source may be silent before it stops holding the clock back
    (the market tier's firm: ``tier.market_wait_s``).
    """
    config.validate(f"step '{step_id}'")
    keyed = op.key_on("key", signals, lambda _s: FIRM_KEY)
    out = stateful_logic("stateful", keyed,
                         playbook_builder(config, clock, reorder_counter(step_id),
                                          observe, wall_clock, idle_ns),
                         order=_input_time)
    return split_dead_letters("split", op.key_rm("unkey", out))
