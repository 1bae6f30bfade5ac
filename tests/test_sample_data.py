"""The sample dataset shipped in the package: generated (the shipped files are what the
generator writes), small, and `backtest --sample` / `calibrate --sample` run on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.sample_data import sample_files, write_sample
from riskguard.schemas import DeadLetter, decode

from riskguard.cli import main


@pytest.fixture(scope="module")
def guard_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sample")
    return write_config(work, "127.0.0.1:9092", init_keys(work))


def test_the_shipped_sample_is_what_the_generator_writes(tmp_path):
    data, labels = sample_files()
    fresh = write_sample(tmp_path)
    assert data.read_bytes() == fresh[0].read_bytes()
    assert labels.read_text() == fresh[1].read_text()


def test_the_sample_is_small_and_every_row_decodes_under_the_wire_contract():
    data, labels = sample_files()
    assert data.stat().st_size < 1_000_000
    rows = data.read_bytes().splitlines()
    assert 3000 < len(rows) < 6000
    assert not any(isinstance(decode("sample", r), DeadLetter) for r in rows)
    assert len(json.loads(labels.read_text())["incidents"]) == 3


def test_backtest_sample_detects_the_three_labelled_incidents(guard_toml, tmp_path, capsys):
    rc = main(["backtest", "--config", str(guard_toml), "--sample", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "incidents 3  detected 3" in out.out and "recall 1.0" in out.out
    assert out.err == ""  # no progress line when stderr is not a terminal
    assert (tmp_path / "report.html").is_file()


def test_calibrate_sample_writes_a_calibrated_config(guard_toml, tmp_path, capsys):
    rc = main(["calibrate", "--config", str(guard_toml), "--sample", "--out", str(tmp_path),
               "--grid", '{"detector.warmup_events": [60]}'])
    out = capsys.readouterr().out
    assert rc == 0
    assert "held-out chosen" in out
    assert (tmp_path / "calibrated.toml").is_file()
    assert (tmp_path / "calibration.json").is_file()


@pytest.mark.parametrize("command", ["backtest", "calibrate"])
def test_neither_data_nor_sample_is_one_line_and_exit_2(guard_toml, tmp_path, capsys, command):
    rc = main([command, "--config", str(guard_toml), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--sample" in err and len(err.splitlines()) == 1
