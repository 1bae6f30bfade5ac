"""Stress scenarios: every bundled scenario passes; a broken playbook fails the cascade."""

from __future__ import annotations

import tomllib
from importlib import resources

import msgspec
import pytest
from riskguard.dataflows.backtest import BacktestResult
from riskguard.dataflows.monte_carlo import monte_carlo
from riskguard.dataflows.stress import (
    ExecutorDown,
    bundled,
    check_run,
    disable_escalation,
    load_scenario,
    run_scenario,
    scenario_path,
)

from riskguard.errors import ConfigError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("stress")


def test_the_library_ships_the_required_scenarios():
    """The nine scenarios the issue names are bundled."""
    assert set(bundled()) >= {
        "flash_crash", "venue_outage", "ftx_insolvency", "usdc_depeg", "liquidation_cascade",
        "oracle_failure", "latency_storm", "correlated_crash", "cascading_failure"}


@pytest.mark.parametrize("name", bundled())
def test_bundled_scenario_passes_and_ends_safe(name, work):
    """Every expected mitigation happens within its deadline (no FAIL and no known GAP),
    and both invariants hold."""
    o = run_scenario(load_scenario(scenario_path(name)), work)
    failed = [(c.action, c.scope, c.detail) for c in o.checks if c.result in ("FAIL", "GAP")]
    assert failed == []
    assert o.safe
    assert o.report["stress"]["passed"] is True


def test_cascade_mitigations_meet_their_deadlines(work):
    """okx reroutes to binance, binance breaches, both end halted, in time."""
    o = run_scenario(load_scenario(scenario_path("cascading_failure")), work)
    got = {(c.action, c.scope): c.actual_s for c in o.checks if c.action != "invariant"}
    assert got[("reroute_order_flow", "venue:okx")] <= 10
    assert got[("halt_trading", "counterparty:binance")] <= 340
    reroutes = [c for c in o.result.commands if c.action.value == "reroute_order_flow"]
    assert [c.params["targets"] for c in reroutes] == [["binance"]]


def test_broken_playbook_fails_the_cascade_with_a_clear_message(work):
    """With escalation disabled (first rung only) the cascade never halts
    anything: the halt expectations and the safe-end invariant FAIL and say why."""
    pb = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]
    o = run_scenario(load_scenario(scenario_path("cascading_failure")), work,
                     playbook=disable_escalation(pb))
    assert not o.passed
    fails = {(c.action, c.scope): c.detail for c in o.checks if c.result == "FAIL"}
    assert "no halt_trading on counterparty:binance after shock 1 onset" in \
        fails[("halt_trading", "counterparty:binance")]
    assert "counterparty:binance ends in reduce_only, expected at least halt_trading" in \
        fails[("invariant", "ends in a safe state")]


def test_cli_stress_exit_codes(work, tmp_path, capsys):
    """`riskguard stress run` exits 0 when a scenario passes, 1 with --no-escalation."""
    from riskguard.cli import main

    assert main(["stress", "run", "venue_outage", "--out", str(tmp_path / "a"),
                 "--workdir", str(work)]) == 0
    assert main(["stress", "run", "cascading_failure", "--no-escalation", "--out",
                 str(tmp_path / "b"), "--workdir", str(work)]) == 1
    out = capsys.readouterr().out
    assert "PASS venue_outage" in out and "FAIL cascading_failure" in out
    assert (tmp_path / "a" / "venue_outage" / "report.html").is_file()


def test_monte_carlo_reports_delay_distribution_and_safe_share(work):
    """Perturbed runs of the outage: every run ends safe; delays are measured."""
    mc = monte_carlo(load_scenario(scenario_path("venue_outage")), work, runs=3, seed=7)
    assert mc["runs"] == 3 and mc["safe_share"] == 1.0
    assert mc["detection_delay_s"]["n"] == 3
    assert 0 < mc["detection_delay_s"]["p95"] < 10
    assert len({r["detection_delay_s"] for r in mc["per_run"]}) >= 1


def _bundled_playbook() -> dict:
    return tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]


def test_executor_down_fails_when_nothing_acts_on_unconfirmed_halts(work):
    """Without the unacknowledged_command rule the silent executor goes unnoticed: the
    escalation check and the firm-wide reduce-only expectation FAIL."""
    pb = _bundled_playbook()
    pb["rules"] = [r for r in pb["rules"] if r["name"] != "unacknowledged_command"]
    o = run_scenario(load_scenario(scenario_path("executor_down")), work, playbook=pb)
    fails = {c.scope: c.detail for c in o.checks if c.result == "FAIL"}
    assert "an unconfirmed halt or cancel-all is an incident" in fails
    assert "not escalated within 30s" in fails["an unconfirmed halt or cancel-all is an incident"]
    assert "firm:*" in fails


def test_an_executor_that_confirms_everything_raises_nothing(work):
    """The same cascade with the executor up throughout: every halt and cancel-all is
    confirmed, and nothing escalates."""
    sc = load_scenario(scenario_path("executor_down"))
    sc = msgspec.structs.replace(sc, executor_down=ExecutorDown(name="oms", down_at_s=10_000))
    o = run_scenario(sc, work)
    assert [c.reason for c in o.result.commands if "unacknowledged" in c.reason] == []
    assert {c.action.value for c in o.result.commands} >= {"halt_trading", "cancel_all"}
    assert o.report["stress"]["executor_down"]["acknowledged"] == len(o.result.commands)


SMALL = """name = "small"
duration_s = 60
limits = { okx = 1.0 }
[market]
venues = ["binance", "okx"]
tick_ms = 500
trade_every = 2
[market.instruments]
"BTC-USDT" = { price = 65000.0 }
[[positions]]
venue = "okx"
instrument = "BTC-USDT"
qty = 3.0
[[shocks]]
kind = "price"
venues = ["okx"]
instruments = ["BTC-*"]
onset_s = 10
magnitude = -0.3
[[expect]]
action = "halt_trading"
scope = "venue:binance"
never = true
"""


@pytest.mark.parametrize(("good", "bad", "key", "says"), [
    (None, None, None, None),
    ("limits = { okx", "limits = { okk", "limits.okk", "did you mean `okx`"),
    ('venues = ["okx"]', 'venues = ["okkx"]', "shocks[0].venues", "did you mean `okx`"),
    ('instruments = ["BTC-*"]', 'instruments = ["ETH-*"]', "shocks[0].instruments", ""),
    ('venue = "okx"', 'venue = "okex"', "positions[0].venue", ""),
    ('instrument = "BTC-USDT"', 'instrument = "BTC-USD"', "positions[0].instrument", ""),
    ('scope = "venue:binance"', 'scope = "venue:binanse"', "expect[0].scope",
     "did you mean `venue:binance`"),
    ("tick_ms = 500", "tick_ms = 0", "market.tick_ms", ">= 1"),
    ("trade_every = 2", "trade_every = 0", "market.trade_every", ">= 1"),
    ("duration_s = 60", "duration_s = -10", "duration_s", ">= 1"),
])
def test_a_scenario_naming_nothing_in_its_market_is_refused(tmp_path, good, bad, key, says):
    """A venue, instrument or scope the market does not have (the check would test
    nothing and pass), or a tick, trade spacing or duration below 1, is refused naming
    the key."""
    path = tmp_path / "s.toml"
    if good is None:
        path.write_text(SMALL)
        assert load_scenario(path).limits == {"okx": 1.0}
        return
    assert good in SMALL
    path.write_text(SMALL.replace(good, bad, 1))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert err.value.path == key and says in str(err.value), str(err.value)


def test_a_run_without_events_fails(tmp_path):
    """A scenario that produced no events checks nothing: it FAILs."""
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    checks = check_run(load_scenario(path), BacktestResult())
    assert any(c.result == "FAIL" and "no events" in c.detail for c in checks)
