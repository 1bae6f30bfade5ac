"""Backtests of the shipped sample at input batch sizes 1, 7 and 100: what does not depend
on the batching (which commands are decided) and what still does (docs/backtests.md,
"Same commands as live")."""

from __future__ import annotations

from pathlib import Path

import pytest
from riskguard.dataflows.backtest import BacktestResult, run_backtest
from riskguard.dataflows.calibrate import read_records
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.sample_data import sample_files

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
    """The same commands, in the same order: decision and command ids, actions, scopes
    and params; their issue times differ by less than one tick at most (the event clock
    reads the latest event time of the batch in hand, which never spans two ticks)."""
    ref, tick = runs[100]
    assert len(ref.commands) >= 10
    for b in SIZES:
        res, _ = runs[b]
        assert _decisions(res) == _decisions(ref), b
        assert all(abs(c.issued_at - r.issued_at) < tick
                   for c, r in zip(res.commands, ref.commands, strict=True)), b


def test_signals_agree_where_equal_times_fall_in_one_batch(runs):
    """Batches of 7 and 100 give the same signals on the sample."""
    assert [s.id for s in runs[7][0].signals] == [s.id for s in runs[100][0].signals]


@pytest.mark.xfail(strict=True, reason=(
    "records of one event time that reach a keyed step by two paths (a heartbeat and a "
    "quote at a feed failover) meet it in input order at batch 1, one path's share first "
    "in a larger batch; and a command decided on a signal is stamped with the latest "
    "event time of its batch"))
def test_batch_one_gives_the_same_signals_and_issue_times(runs):
    one, ref = runs[1][0], runs[100][0]
    assert [s.id for s in one.signals] == [s.id for s in ref.signals]
    assert [c.issued_at for c in one.commands] == [c.issued_at for c in ref.commands]
