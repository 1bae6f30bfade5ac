"""Backtests of the shipped sample at input batch sizes 1, 7 and 100 give the same
commands, issue times and signals; records of one event time meet a keyed step in input
order whatever the batching (docs/backtests.md, "Same commands as live")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.dataflows.backtest import (
    NS,
    BacktestResult,
    InputPositions,
    run_backtest,
    span_batches,
)
from riskguard.dataflows.calibrate import read_records
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.guard.steps import split_inputs
from riskguard.dataflows.sample_data import sample_files
from riskguard.operators.core.base import event_order, stateful_logic
from riskguard.schemas import Quote, VenueStatus

SIZES = (1, 7, 100)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[BacktestResult, int]]:
    work: Path = tmp_path_factory.mktemp("batching")
    cfg, digest = load_guard_config(write_config(work, "127.0.0.1:9092", init_keys(work)))
    recs = read_records([sample_files()[0]])
    return {b: (run_backtest(cfg, digest, records=recs, batch_size=b), cfg.tick_ns)
            for b in SIZES}


def _decisions(res: BacktestResult) -> list[tuple]:
    return [(c.decision_id, c.command_id, c.action.value, c.scope.label(),
             sorted(c.params.items())) for c in res.commands]


def test_the_commands_decided_do_not_depend_on_the_batch_size(runs):
    """The same commands, in the same order: decision and command ids, actions, scopes,
    params, and issue and expiry times (a command is stamped with the event time of the
    record that decided it, not with the latest time of the batch in hand)."""
    ref, _tick = runs[100]
    assert len(ref.commands) >= 10
    for b in SIZES:
        res, _ = runs[b]
        assert _decisions(res) == _decisions(ref), b
        assert ([(c.issued_at, c.expires_at) for c in res.commands]
                == [(c.issued_at, c.expires_at) for c in ref.commands]), b


def test_signals_agree_where_equal_times_fall_in_one_batch(runs):
    """Batches of 7 and 100 give the same signals on the sample."""
    assert [s.id for s in runs[7][0].signals] == [s.id for s in runs[100][0].signals]


def test_batch_one_gives_the_same_signals_and_issue_times(runs):
    one, ref = runs[1][0], runs[100][0]
    assert [s.id for s in one.signals] == [s.id for s in ref.signals]
    assert [c.issued_at for c in one.commands] == [c.issued_at for c in ref.commands]


class _Seen:
    """Logic that remembers the ids it met, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def on_event(self, rec: Any) -> list[str]:
        self.ids.append(rec.id)
        return [rec.id]

    def snapshot(self) -> list[str]:
        return list(self.ids)


def _met_in_order(records: list[Any], batch_size: int) -> list[str]:
    """The ids a keyed step met, fed quotes and heartbeats by the guard's two paths
    (``split_inputs``) and ordered by ``event_order``, the input numbered as a backtest
    numbers it."""
    flow = Dataflow("ties")
    src = op.flat_map("unbatch", op.input("in", flow, TestingSource(
        span_batches(records, batch_size, NS))), lambda batch: batch)
    market, _rest, status, _trading = split_inputs(op.map("number", src, InputPositions()))
    keyed = op.key_on("venue", op.merge("both", market, status), lambda r: r.venue)
    out: list[str] = []
    met = stateful_logic("seen", keyed, lambda _state: _Seen(), order=event_order)
    op.output("out", op.key_rm("unkey", met), TestingSink(out))
    run_main(flow)
    return out


def test_equal_times_on_two_paths_meet_a_keyed_step_in_input_order():
    """Quotes and heartbeats of one time, interleaved, reach a keyed step by two paths:
    at batch 1 one at a time, at batch 3 a batch holds both paths' shares. Both meet
    them in input order (by event time, then input position)."""
    t = 5 * NS

    def quote(i: int, ts: int) -> Quote:
        return Quote(id=f"q{i}", venue="okx", instrument="BTC-USDT", ts=ts, bid=99.0,
                     bid_size=1.0, ask=101.0, ask_size=1.0, feed="backup")

    def beat(i: int, ts: int) -> VenueStatus:
        return VenueStatus(id=f"h{i}", venue="okx", ts=ts, feed="backup")

    records = [quote(1, t), beat(1, t), quote(2, t), beat(2, t), quote(3, t),
               beat(3, t + 1), quote(4, t + 1), beat(4, t + 2)]
    expected = [r.id for r in records]
    assert _met_in_order(records, 1) == expected
    assert _met_in_order(records, 3) == expected
