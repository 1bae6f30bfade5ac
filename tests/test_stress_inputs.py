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


BASE = """name = "s"
duration_s = 90
[market]
venues = ["okx"]
[market.instruments]
"BTC-USDT" = { price = 60000.0 }
"""


@pytest.mark.parametrize(("shock", "key", "want"), [
    ('kind = "price"\nonset_s = 30\nmagnitude = nan', "magnitude", "a finite number"),
    ('kind = "price"\nonset_s = 30\nmagnitude = -1.3', "magnitude", "a move above -1"),
    ('kind = "price"\nonset_s = 1e308\nmagnitude = -0.3', "onset_s", "at most duration_s"),
    ('kind = "price"\nonset_s = -5.0\nmagnitude = -0.3', "onset_s", "0 or more"),
    ('kind = "cascade"\nonset_s = 30\nmagnitude = -0.2\nfeedback = 3.0', "feedback",
     "tranches each move above -1"),
    ('kind = "depeg"\nonset_s = 30\nasset = "USDT"\nmagnitude = 0.0', "magnitude",
     "above 0"),
    ('kind = "storm"\nonset_s = 30\nmagnitude = 1e9', "magnitude", "0 to 1000"),
])
def test_a_shock_that_cannot_run_or_makes_invalid_prices_is_refused_naming_it(
        tmp_path, capsys, shock, key, want):
    sc = _scenario(tmp_path, f'{BASE}[[shocks]]\nvenues = ["okx"]\n{shock}\n')
    assert main(["stress", "run", sc, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"riskguard stress run: shocks[0].{key}: ") and want in err
    assert len(err.splitlines()) == 1


def test_a_scenario_file_that_is_not_toml_is_one_line(tmp_path, capsys):
    sc = _scenario(tmp_path, 'name = "bad\n')
    assert main(["stress", "run", sc]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("riskguard stress run: scenario s.toml: a TOML file; got")
    assert "unexpected" not in err


def test_a_scenario_whose_records_are_dead_letters_fails(work):
    """A shock the loader would refuse (-130 %), built directly: the guard dead-letters
    every shocked record, and the run FAILs saying how many and why, instead of passing
    checks that saw none of them."""
    import msgspec
    from riskguard.dataflows.stress import Scenario, Shock, load_scenario, run_scenario

    base = load_scenario(_scenario(work, BASE, "base.toml"))
    sc = msgspec.structs.replace(base, shocks=(Shock(kind="price", venues=("okx",),
                                                     onset_s=60.0, magnitude=-1.3),))
    assert isinstance(sc, Scenario)
    o = run_scenario(sc, work)
    bad = [c for c in o.checks if c.scope == "every generated record accepted"]
    assert [c.result for c in bad] == ["FAIL"]
    assert "dead letter(s) (validation" in bad[0].detail
    assert not o.safe


def test_a_shock_on_some_venues_labels_those_venues_only():
    """A shock on okx and deribit of three venues: an alarm on binance (spared) detects
    nothing; the label of one venue each (it was venue:*, which matched binance too)."""
    from riskguard.dataflows.report import scope_related
    from riskguard.dataflows.stress import Scenario, Shock, scenario_labels
    from riskguard.schemas import Scope, ScopeKind

    sc = Scenario(name="s", duration_s=90, shocks=(
        Shock(kind="price", venues=("okx", "deribit"), onset_s=30.0, magnitude=-0.1),
        Shock(kind="price", onset_s=40.0, magnitude=-0.1)))
    labels = scenario_labels(sc)
    assert [lab.scope for lab in labels] == ["venue:okx", "venue:deribit", "firm:*"]
    binance = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="binance")
    assert not any(scope_related(lab.scope, binance) for lab in labels[:2])
