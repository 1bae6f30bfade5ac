"""Backtest inputs that hold little or nothing usable: dead letters are counted (not
kept one by one), a file of nothing but dead letters is an error, and the report's span
starts at the earliest event time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from riskguard.connectors.replay import ReplayFile
from riskguard.dataflows.backtest import MAX_KEPT_DEAD_LETTERS, backtest_files, run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.sample_data import sample_files

from riskguard.cli import main

BAD = (b'{"type": "trade", "v": 1, "id": "x%d", "venue": "okx", "instrument": "BTC-USDT", '
       b'"ts": 1767225600000000000, "price": "oops", "qty": 1.0, "side": "buy"}\n')


@pytest.fixture(scope="module")
def guard_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bt_inputs")
    return write_config(work, "127.0.0.1:9092", init_keys(work))


def _bad_rows(n: int) -> bytes:
    return b"".join(BAD % i for i in range(n))


def test_dead_letters_are_counted_by_reason_and_only_a_few_kept(guard_toml, tmp_path):
    """Every dead letter is counted (summary and its reasons); only the first few stay
    in memory, and the file on disk has them all."""
    rows = sample_files()[0].read_bytes().splitlines(keepends=True)[:300]
    data = tmp_path / "mixed.jsonl"
    n_bad = MAX_KEPT_DEAD_LETTERS + 50
    data.write_bytes(b"".join(rows) + _bad_rows(n_bad))
    rep = backtest_files(guard_toml, [data], out_dir=tmp_path / "out")
    assert rep["summary"]["dead_letters"] == n_bad
    assert rep["summary"]["dead_letters_by_reason"] == {"validation": n_bad}
    lines = (tmp_path / "out" / "dead_letters.jsonl").read_bytes().splitlines()
    assert len(lines) == n_bad
    res = run_backtest(*load_guard_config(guard_toml), files=[ReplayFile(data)])
    assert res.n_dead_letters == n_bad and len(res.dead_letters) == MAX_KEPT_DEAD_LETTERS


def test_a_file_of_nothing_but_dead_letters_is_exit_2_with_one_line(guard_toml, tmp_path,
                                                                    capsys):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(_bad_rows(40))
    rc = main(["backtest", "--config", str(guard_toml), "--data", str(data), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == ("riskguard backtest: data: at least one record accepted; got '0 accepted, "
                   "40 refused as dead letters (validation 40)'")
    assert not (tmp_path / "out" / "report.json").exists()


def test_the_report_starts_at_the_earliest_event_not_the_first_row(guard_toml, tmp_path):
    """A file whose first row is late in time (the rest in order): the span is min..max."""
    rows = sample_files()[0].read_bytes().splitlines(keepends=True)[:300]
    data = tmp_path / "first_late.jsonl"
    data.write_bytes(rows[-1] + b"".join(rows[:-1]))
    ts = [json.loads(r)["ts"] for r in rows]
    rep = backtest_files(guard_toml, [data], out_dir=tmp_path / "out")
    assert (rep["summary"]["start_ns"], rep["summary"]["end_ns"]) == (min(ts), max(ts))


@pytest.mark.parametrize(("rows", "said"), [
    (b"", "data file e.jsonl: a file holding rows; got 'no rows (an empty file)'"),
    (_bad_rows(3), "data: at least one record accepted; got '0 accepted, 3 refused as dead "
                   "letters (validation 3)'"),
])
def test_explain_on_a_file_with_nothing_usable_is_exit_2_with_one_line(
        guard_toml, tmp_path, capsys, rows, said):
    data = tmp_path / "e.jsonl"
    data.write_bytes(rows)
    rc = main(["explain", "--config", str(guard_toml), "--data", str(data)])
    out = capsys.readouterr()
    assert rc == 2 and out.err.strip() == f"riskguard explain: {said}"
    assert out.out == ""


def test_explain_says_how_many_rows_it_refused_and_bounds_its_moment(guard_toml, tmp_path,
                                                                     capsys):
    rows = sample_files()[0].read_bytes().splitlines(keepends=True)[:200]
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(rows) + _bad_rows(2))
    assert main(["explain", "--config", str(guard_toml), "--data", str(data)]) == 0
    assert "2 row(s) refused as dead letters (validation 2)" in capsys.readouterr().out
    rc = main(["explain", "--config", str(guard_toml), "--data", str(data), "--at",
               "999999999999999999999999"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("riskguard explain: --at: a time from 1970 to 2262")


def test_a_lone_row_a_year_ahead_issues_no_command_and_is_one_dead_letter(guard_toml,
                                                                          tmp_path):
    """One wrong year in the data must not jump the backtest's clock (heartbeats lost,
    marks stale, signed commands) nor make the rest of the file late."""
    rows = sample_files()[0].read_bytes().splitlines(keepends=True)[:2000]
    bad = json.loads(rows[6])
    bad["id"], bad["ts"] = "wrong-year", bad["ts"] + 365 * 86_400 * 10**9
    data = tmp_path / "one_bad_time.jsonl"
    data.write_bytes(b"".join(rows[:20]) + json.dumps(bad).encode() + b"\n"
                     + b"".join(rows[20:]))
    res = run_backtest(*load_guard_config(guard_toml), files=[ReplayFile(data)])
    assert (res.commands, res.signals) == ([], [])
    assert [(d.reason, d.found) for d in res.dead_letters] == [("ahead", str(bad["ts"]))]
