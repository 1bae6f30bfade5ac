"""Stress runs on scenarios that test nothing or cannot run: known gaps under --strict
(with Monte Carlo runs too), shocks that make invalid prices, and scenario files that
are not TOML or name an impossible time."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskguard.cli import main

GAP = """name = "gap"
duration_s = 90
[market]
venues = ["okx"]
[market.instruments]
"BTC-USDT" = { price = 60000.0 }
[[shocks]]
kind = "price"
onset_s = 70
ramp_s = 5
magnitude = -0.001
venues = ["okx"]
[[expect]]
action = "halt_trading"
scope = "venue:okx"
within_s = 5
known_gap = "the guard does not halt on a 0.1% move"
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stress_inputs")


def _scenario(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_strict_counts_known_gaps_as_failures_in_monte_carlo_runs_too(work, tmp_path, capsys):
    """A known gap passes a plain run and fails a --strict one; with --runs it did pass
    --strict (a GAP counted as passed)."""
    sc = _scenario(tmp_path, GAP)
    run = ["stress", "run", sc, "--workdir", str(work), "--out", str(tmp_path / "o")]
    assert main([*run, "--runs", "1"]) == 0
    assert main([*run, "--runs", "1", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "all checks pass (known gaps failing) in 0%" in out
    assert "0/1 scenarios passed" in out
