"""Playbook flow level: the bytewax operator plans the logic's commands, on one or two
workers, and resumes after an abort."""

from __future__ import annotations

from typing import Any

from playbook_cases import FLASH, HB, VENUES, acts, alert, anomaly, venue
from riskguard.operators.mitigation.playbook import PlaybookConfig, S, Tick


def _flow(events: list[Any], oks: list[Any], errs: list[Any]) -> Any:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource
    from riskguard.operators.mitigation.ops import plan_mitigation

    flow = Dataflow("playbook_test")
    out = plan_mitigation("playbook", op.input("in", flow, TestingSource(events)),
                          config=PlaybookConfig(issuer="guard", venues=VENUES,
                                                rules=(FLASH, HB)),
                          clock=lambda: 77)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    return flow


FLOW_EVENTS: list[Any] = [
    anomaly(0), alert("heartbeat_loss", venue("binance"), 1), "not a signal",
    *[Tick(ts=s * S) for s in range(2, 40, 2)],
    anomaly(40, phase="close"), alert("heartbeat_restored", venue("binance"), 41),
    *[Tick(ts=s * S) for s in range(42, 80, 2)],
]


FLOW_EXPECTED = [("alert", "venue:okx"), ("reroute_order_flow", "venue:binance"),
                 ("reduce_only", "venue:okx"), ("halt_trading", "venue:okx"),
                 ("reroute_order_flow", "venue:binance"),  # narrowed: okx is halted
                 ("resume", "venue:binance"), ("resume", "venue:okx")]


def test_flow_plans_commands_and_routes_bad_items_to_errs() -> None:
    """run_main: the adapter emits the logic's commands in order; junk goes to errs."""
    from bytewax.testing import run_main

    oks: list[Any] = []
    errs: list[Any] = []
    run_main(_flow(FLOW_EVENTS, oks, errs))
    assert acts(oks) == FLOW_EXPECTED
    assert oks[-1].params["actions"] == ["halt_trading", "reduce_only"]
    assert oks[4].params["targets"] == ["deribit"]
    assert all(c.issued_at == 77 and c.seq == 0 for c in oks)
    assert [(e.reason, e.found) for e in errs] == [("unexpected_type", "str")]


def test_flow_with_two_workers_gives_the_same_commands() -> None:
    """cluster_main with 2 workers: everything meets under the one "firm" key."""
    from bytewax.testing import cluster_main

    oks: list[Any] = []
    errs: list[Any] = []
    cluster_main(_flow(FLOW_EVENTS, oks, errs), [], 0, worker_count_per_proc=2)
    assert acts(oks) == FLOW_EXPECTED
    assert len(errs) == 1


def test_flow_resume_after_abort_equals_uninterrupted(tmp_path: Any) -> None:
    """Abort halfway with recovery on; the resumed run issues the rest, none twice."""
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    init_db_dir(tmp_path, 1)
    half = len(FLOW_EVENTS) // 2
    events = [*FLOW_EVENTS[:half], TestingSource.ABORT(), *FLOW_EVENTS[half:]]
    oks: list[Any] = []
    errs: list[Any] = []
    rc = RecoveryConfig(str(tmp_path))
    run_main(_flow(events, oks, errs), epoch_interval=timedelta(0), recovery_config=rc)
    assert 0 < len(oks) < len(FLOW_EXPECTED)
    run_main(_flow(events, oks, errs), epoch_interval=timedelta(0), recovery_config=rc)
    assert acts(oks) == FLOW_EXPECTED
    uninterrupted: list[Any] = []
    run_main(_flow(FLOW_EVENTS, uninterrupted, []))
    assert [c.command_id for c in oks] == [c.command_id for c in uninterrupted]
