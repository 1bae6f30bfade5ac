"""Each action's params are typed: check_params refuses what an executor could misread, and
every command the guard's playbook makes passes it."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from riskguard.dataflows.stress import load_scenario, run_scenario, scenario_path
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
)
from riskguard.schemas import (
    FIRM,
    Action,
    AnomalySignal,
    Audience,
    MitigationCommand,
    Scope,
    ScopeKind,
    Severity,
)
from riskguard.schemas.action_params import (
    ACTION_PARAMS,
    check_params,
    check_rung_params,
    command_params_schema,
    markdown_table,
    params_json_schema,
)

from riskguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD = [
    ("alert", {}),
    ("alert", {"suppressed": 3.0, "window_start": 1e18}),
    ("alert", {"failed_action": "reroute_order_flow"}),
    ("widen_quotes", {"bps": 25.0}),
    ("widen_quotes", {"bps": 25}),
    ("reduce_limits", {"factor": 0.5}),
    ("reduce_limits", {"factor": 1.0}),
    ("reduce_only", {}),
    ("cancel_all", {}),
    ("halt_trading", {}),
    ("reroute_order_flow", {"targets": ["okx", "deribit"], "from": "binance"}),
    ("hedge_delta", {"target_delta": -1.5, "hedge_instrument": "BTC-PERP"}),
    ("hedge_delta", {"target_delta": 0.0, "hedge_instrument": "binance/BTC-USDT"}),
    ("pause_withdrawals", {}),
    ("failover_feed", {"backup_feed": "backup"}),
    ("resume", {}),
    ("resume", {"actions": ["halt_trading"], "approvals": 2.0}),
    ("resume", {"actions": ["reduce_only", "widen_quotes"], "resumes": ["c-1", "c-2"]}),
]

BAD = [
    ("widen_quotes", {"bps": "abc"}, "param 'bps' must be a number > 0 and <= 10000; got 'abc'"),
    ("widen_quotes", {}, "param 'bps' is required"),
    ("widen_quotes", {"bps": 25.0, "bsp": 1.0}, "unknown param 'bsp' (did you mean `bps`?)"),
    ("widen_quotes", {"bps": 0.0}, "param 'bps' must be"),
    ("widen_quotes", {"bps": 25_000.0}, "param 'bps' must be"),
    ("widen_quotes", {"bps": math.inf}, "param 'bps' must be"),
    ("widen_quotes", {"bps": True}, "param 'bps' must be"),
    ("reduce_limits", {"factor": 1.5}, "param 'factor' must be a number > 0 and <= 1"),
    ("reduce_limits", {"factor": ["0.5"]}, "param 'factor' must be"),
    ("halt_trading", {"actions": ["halt_trading"]}, "takes no params; got 'actions'"),
    ("reroute_order_flow", {}, "param 'targets' is required"),
    ("reroute_order_flow", {"targets": "okx"}, "param 'targets' must be a list"),
    ("reroute_order_flow", {"targets": []}, "param 'targets' must be a list"),
    ("reroute_order_flow", {"targets": ["ok x"]}, "param 'targets' must be a list"),
    ("hedge_delta", {"target_delta": 1.0}, "param 'hedge_instrument' is required"),
    ("hedge_delta", {"target_delta": 1.0, "hedge_instrument": "a/b/c"},
     "param 'hedge_instrument' must be an instrument's market name, or venue/instrument"),
    ("hedge_delta", {"target_delta": 1.0, "hedge_instrument": "binance/../x"},
     "param 'hedge_instrument' must be"),
    ("failover_feed", {"backup_feed": 1.0}, "param 'backup_feed' must be a market name"),
    ("failover_feed", {"backup_feed": "../x"}, "param 'backup_feed' must be a market name"),
    ("reroute_order_flow", {"targets": [".."]}, "param 'targets' must be a list"),
    ("resume", {"actions": []}, "param 'actions' must be a list"),
    ("resume", {"actions": ["resume"]}, "param 'actions' must be a list"),
    ("resume", {"actions": ["halt"]}, "param 'actions' must be a list"),
    ("resume", {"approvals": -1.0}, "param 'approvals' must be a number >= 0"),
    ("alert", {"note": "x"}, "unknown param 'note'"),
    ("halt", {}, "'halt' is not an action"),
]


@pytest.mark.parametrize(("action", "params"), GOOD)
def test_params_an_executor_can_act_on_pass(action, params) -> None:
    """Every action's documented params, with in-bounds values, pass."""
    assert check_params(action, params) is None


@pytest.mark.parametrize(("action", "params", "reason"), BAD)
def test_bad_params_are_refused_with_a_one_line_reason_naming_the_param(
        action, params, reason) -> None:
    """Wrong type, out of bounds, missing, unknown: the reason names the action and param."""
    got = check_params(action, params)
    assert got is not None and reason in got
    assert "\n" not in got
    assert got.startswith(f"{action}:") or action not in ACTION_PARAMS


def test_the_table_covers_every_action_and_its_required_params_are_the_playbooks() -> None:
    """One spec per Action; a playbook rung may leave out what the playbook fills in."""
    assert set(ACTION_PARAMS) == {a.value for a in Action}
    assert check_rung_params("reroute_order_flow", {}) is None
    assert check_rung_params("widen_quotes", {}) is not None


def test_the_json_schema_of_params_follows_the_table() -> None:
    """Each action's params schema is closed, requires what the table requires, and
    carries its bounds; the command-level clauses name every action."""
    wq = params_json_schema("widen_quotes")
    assert wq["additionalProperties"] is False and wq["required"] == ["bps"]
    assert wq["properties"]["bps"] | {"description": ""} == {
        "type": "number", "exclusiveMinimum": 0, "maximum": 10_000, "description": ""}
    assert params_json_schema("halt_trading")["properties"] == {}
    clauses = command_params_schema()["allOf"]
    assert [c["if"]["properties"]["action"]["const"] for c in clauses] == list(ACTION_PARAMS)


def test_docs_commands_md_shows_the_current_table() -> None:
    """docs/commands.md carries the generated table verbatim (it cannot drift)."""
    page = (ROOT / "docs" / "commands.md").read_text()
    assert markdown_table() in page


def test_a_playbook_rung_with_params_its_action_does_not_take_is_refused() -> None:
    """Config time, not at the executor: a rung param its action does not take stops
    start-up, naming the rung."""
    with pytest.raises(ConfigError, match=r"^playbook\.rules\[0\]\.ladder\[0\]\.params: "
                                          r"widen_quotes: unknown param 'bsp'"):
        PlaybookConfig(rules=(Rule(name="r", signal="anomaly", ladder=(
            Rung(action=Action.WIDEN_QUOTES, params={"bps": 25.0, "bsp": 25.0}),)),))


# -- every command the guard makes passes ---------------------------------------------


@pytest.mark.parametrize("name", ["cascading_failure", "latency_storm", "ftx_insolvency"])
def test_every_command_the_guard_emits_on_a_stress_scenario_passes(name) -> None:
    """The whole guard (stress scenario through the backtest path, bundled playbook):
    every command it signs has params its action takes."""
    with tempfile.TemporaryDirectory() as work:
        res = run_scenario(load_scenario(scenario_path(name)), work).result
    assert res.commands
    bad = [(c.action.value, c.params, check_params(c.action.value, c.params))
           for c in res.commands if check_params(c.action.value, c.params) is not None]
    assert bad == []
    kinds = {c.action.value for c in res.commands}
    assert kinds & {"reroute_order_flow", "resume", "failover_feed", "halt_trading",
                    "pause_withdrawals"}


def _anomaly(t: float, v: str, phase: str = "open", inst: str = "BTC-USDT") -> AnomalySignal:
    return AnomalySignal(
        id=f"a-{v}-{inst}-{t}-{phase}", kind="anomaly", phase=phase, key=f"{v}/{inst}",
        scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=v), ts=int(t * S),
        score=9.0, threshold=3.0, severity=Severity.WARN, warming_up=False, model="hst",
        model_version="1")


def _resume(t: float, approvals: float) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"manual-{t}", issuer="ops", issued_at=int(t * S),
        expires_at=int(t * S) + 60 * S, audience=Audience(env="dev", topic="commands"),
        action=Action.RESUME, scope=FIRM, params={"actions": ["halt_trading"],
                                                  "approvals": approvals},
        reason="operator resume")


def test_every_command_of_the_playbooks_rare_paths_passes() -> None:
    """The alerts the playbook writes itself (rate cap, no reroute target, a firm halt
    held and a resume of it refused), its reroutes and its resumes all pass."""
    venue_rules = (
        Rule(name="route", signal="anomaly", scope="instrument:okx/*", target="venue",
             quiet_s=5, ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),)),
        Rule(name="lonely", signal="anomaly", scope="instrument:solo/*", target="venue",
             alternatives=("solo",), ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),)),
        Rule(name="halt", signal="anomaly", scope="instrument:deribit/*", target="firm",
             quiet_s=5, ladder=(Rung(action=Action.HALT_TRADING),)),
        Rule(name="storm", signal="anomaly", scope="instrument:storm/*", target="same",
             quiet_s=5, ladder=(Rung(action=Action.WIDEN_QUOTES, params={"bps": 10.0}),)),
    )
    logic = PlaybookLogic(PlaybookConfig(issuer="guard", venues=("okx", "binance", "deribit"),
                                         rules=venue_rules, max_commands=3, rate_window_s=10),
                          ManualClock(1_000))
    events: list[Any] = [_anomaly(1, "okx"), _anomaly(1, "solo"), _anomaly(1, "deribit"),
                         # four instruments on one venue: its cap (3) holds the fourth back
                         *[_anomaly(2, "storm", inst=f"C{i}-USDT") for i in range(4)],
                         _anomaly(3, "okx", "close"), _anomaly(3, "deribit", "close"),
                         *[_anomaly(4, "storm", "close", f"C{i}-USDT") for i in range(4)],
                         *[Tick(ts=t * S) for t in range(5, 40)],
                         _resume(40, 1.0), _resume(41, 2.0), Tick(ts=42 * S)]
    out: list[MitigationCommand] = []
    for e in events:
        out.extend(logic.on_event(e))
    seen = {(c.action.value, *sorted(c.params)) for c in out}
    assert {("alert", "suppressed", "window_start"), ("alert", "failed_action"),
            ("alert", "held_command"), ("alert", "resume_id"),
            ("reroute_order_flow", "from", "targets"),
            ("resume", "actions", "resumes")} <= seen, seen
    assert [check_params(c.action.value, c.params) for c in out] == [None] * len(out)
