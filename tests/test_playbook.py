"""Playbook logic: ladders climbing, repeat trips, de-dup, which signals open an
incident, and the playbook config."""

from __future__ import annotations

import pytest
from playbook_cases import FLASH, LADDER, RO, A, acts, alert, anomaly, breach, feed, make, venue
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
)
from riskguard.schemas import Action, LimitLevel, Severity

from riskguard.config import decode_section, read_toml
from riskguard.errors import ConfigError


def test_ladder_climbs_on_persistence_one_command_per_rung_not_per_tick() -> None:
    """alert at open, reduce_only after 10 s, halt_trading after 30 s; ticks between are silent."""
    logic = make(FLASH)
    assert acts(logic.on_event(anomaly(0))) == [("alert", "venue:okx")]
    per_tick = [acts(logic.on_event(Tick(ts=s * S))) for s in range(1, 41)]
    assert per_tick[9 - 1] == []
    assert per_tick[10 - 1] == [("reduce_only", "venue:okx")]
    assert per_tick[30 - 1] == [("halt_trading", "venue:okx")]
    assert sum(len(x) for x in per_tick) == 2


def test_ladder_climbs_at_once_when_severity_worsens() -> None:
    """An escalate to critical reaches the rung whose min_severity is critical before its time."""
    logic = make(FLASH)
    feed(logic, [anomaly(0), Tick(ts=2 * S)])
    out = logic.on_event(anomaly(3, phase="escalate", sev=Severity.CRITICAL))
    assert acts(out) == [("reduce_only", "venue:okx")]
    assert "min_severity critical reached" in out[0].reason


def test_repeated_trips_start_one_rung_higher_each_time() -> None:
    """The second trip within the window starts at rung 2, the third at rung 3."""
    logic = make(FLASH)
    trip1 = feed(logic, [anomaly(0), anomaly(2, phase="close"), Tick(ts=22 * S)])
    assert acts(trip1) == [("alert", "venue:okx")]  # an alert is not "in force": no resume
    trip2 = feed(logic, [anomaly(30), anomaly(31, phase="close"), Tick(ts=51 * S)])
    assert acts(trip2) == [("alert", "venue:okx"), ("reduce_only", "venue:okx"),
                           ("resume", "venue:okx")]
    assert "repeat trip 2" in trip2[1].reason
    trip3 = feed(logic, [anomaly(60)])
    assert acts(trip3) == [("alert", "venue:okx"), ("reduce_only", "venue:okx"),
                           ("halt_trading", "venue:okx")]


def test_trips_outside_the_repeat_window_start_at_the_bottom() -> None:
    """A trip after repeat_window_s has passed starts again at rung 1."""
    rule = Rule(name="flash", signal="anomaly", target="venue", ladder=LADDER, quiet_s=0,
                repeat_window_s=100)
    logic = make(rule)
    feed(logic, [anomaly(0), anomaly(1, phase="close"), Tick(ts=2 * S)])
    assert acts(logic.on_event(anomaly(200))) == [("alert", "venue:okx")]
    assert logic.snapshot().history == {"flash|anomaly|instrument:okx/BTC-USDT": [200 * S]}


def test_same_action_on_same_scope_is_not_reissued_while_in_force() -> None:
    """Two instruments of one venue share the venue's reduce_only; ticks never repeat it."""
    rule = Rule(name="flash", signal="anomaly", target="venue", quiet_s=10,
                ladder=(Rung(action=RO),))
    logic = make(rule)
    out = feed(logic, [anomaly(0, inst="BTC-USDT"), anomaly(1, inst="ETH-USDT"),
                       *[Tick(ts=s * S) for s in range(2, 30)]])
    assert acts(out) == [("reduce_only", "venue:okx")]
    # Only when both incidents are quiet does the shared mitigation lift.
    out = feed(logic, [anomaly(30, inst="BTC-USDT", phase="close"), Tick(ts=45 * S)])
    assert out == []
    out = feed(logic, [anomaly(46, inst="ETH-USDT", phase="close"), Tick(ts=56 * S)])
    assert acts(out) == [("resume", "venue:okx")]
    assert out[0].params["actions"] == ["reduce_only"]


def test_simultaneous_incidents_on_one_venue_get_distinct_command_ids() -> None:
    """Two instruments of one venue opening at the same instant each get their own alert id
    (the signing step refuses one id with two contents)."""
    rule = Rule(name="flash", signal="anomaly", target="venue", ladder=(Rung(action=Action.ALERT),))
    out = feed(make(rule), [anomaly(5, inst="BTC-PERP"), anomaly(5, inst="ETH-PERP")])
    assert acts(out) == [("alert", "venue:okx"), ("alert", "venue:okx")]
    assert out[0].command_id != out[1].command_id


def test_warming_up_signals_never_trigger_anything() -> None:
    """A detector still warming up is ignored, even at critical severity."""
    logic = make(FLASH)
    out = feed(logic, [anomaly(0, warming=True, sev=Severity.CRITICAL),
                       *[Tick(ts=s * S) for s in range(1, 60, 5)]])
    assert out == []
    assert logic.snapshot().incidents == {}


def test_rule_conditions_filter_signals() -> None:
    """min_severity, scope pattern and min_score_ratio must all hold for a rule to match."""
    rule = Rule(name="okx_only", signal="anomaly", scope="instrument:okx/*",
                min_severity=Severity.WARN, min_score_ratio=2.0, ladder=(Rung(action=A),))
    logic = make(rule)
    assert logic.on_event(anomaly(0, v="binance")) == []
    assert logic.on_event(anomaly(1, sev=Severity.INFO)) == []
    assert logic.on_event(anomaly(2, score=5.0)) == []  # ratio 1.67 < 2
    assert acts(logic.on_event(anomaly(3, score=7.0))) == [("alert", "instrument:okx/BTC-USDT")]


def test_incidents_that_cannot_move_are_not_revisited_by_every_event() -> None:
    """An event's cost does not grow with the open incidents that cannot move: 200
    counterparties on their last rung are skipped by later events; a close on one puts it
    to sleep until its quiet period ends, and it resumes then."""
    rule = Rule(name="cp", signal="breach", scope="counterparty:*", target="counterparty",
                quiet_s=30, ladder=(Rung(action=RO),))
    logic = make(rule, max_commands=1_000)
    opened = feed(logic, [breach(f"c{k}", 1 + k / 1_000) for k in range(200)])
    assert len(opened) == 200
    assert logic._awake == set()  # all on their last rung
    assert feed(logic, [Tick(ts=100 * S)]) == []
    assert feed(logic, [breach("c7", 101, level=LimitLevel.OK)]) == []
    # closed: asleep until its quiet period ends
    c7 = "cp|breach|counterparty:c7|counterparty.c7|gross_notional"
    assert logic._awake == set()
    assert logic._sleeping == [(131 * S, c7)]
    assert acts(feed(logic, [Tick(ts=131 * S)])) == [("resume", "counterparty:c7")]
    assert logic._awake == set()
    assert len(logic.snapshot().incidents) == 199


def test_config_errors_name_the_key_path() -> None:
    """Bad playbook values raise ConfigError naming where they are."""
    with pytest.raises(ConfigError, match=r"playbook\.rules\[0\]\.ladder\[1\]\.params: "
                                          r"widen_quotes: param 'bps'"):
        PlaybookConfig(rules=(Rule(name="x", signal="anomaly", ladder=(
            Rung(action=A), Rung(action=Action.WIDEN_QUOTES, params={"bps": -5.0}))),))
    with pytest.raises(ConfigError, match=r"playbook\.rules\[0\]\.ladder\[0\]\.params: "
                                          r"hedge_delta: param 'hedge_instrument' is required"):
        PlaybookConfig(rules=(Rule(name="x", signal="anomaly", ladder=(
            Rung(action=Action.HEDGE_DELTA, params={"target_delta": 0.0}),)),))
    with pytest.raises(ConfigError, match=r"playbook\.rules\[1\]\.name"):
        PlaybookConfig(rules=(Rule(name="x", signal="anomaly", ladder=(Rung(action=A),)),
                              Rule(name="x", signal="anomaly", ladder=(Rung(action=A),))))
    with pytest.raises(ConfigError, match=r"playbook\.max_commands: must be >= 1; got 0"):
        PlaybookConfig(max_commands=0)
    with pytest.raises(ConfigError, match=r"ladder\[0\]\.action: must not be resume"):
        PlaybookConfig(rules=(Rule(name="x", signal="anomaly", ladder=(
            Rung(action=Action.RESUME),)),))


def test_default_playbook_toml_decodes_and_runs() -> None:
    """dataflows/playbook.toml is a valid [playbook] section and its heartbeat rule reroutes."""
    data = read_toml("dataflows/playbook.toml")["playbook"]
    cfg = decode_section(data, PlaybookConfig, "playbook")
    assert {r.name for r in cfg.rules} >= {"flash_crash", "venue_heartbeat", "firm_breach"}
    logic = PlaybookLogic(cfg, ManualClock(0))
    out = logic.on_event(alert("heartbeat_loss", venue("okx"), 0))
    assert [(c.action.value, c.params.get("targets")) for c in out] == [
        ("reroute_order_flow", ["binance", "deribit"])]
    bad = {**data, "rules": [{**data["rules"][0], "ladder": [{"action": "explode"}]}]}
    with pytest.raises(ConfigError, match=r"playbook\.rules\[0\]\.ladder\[0\]\.action"):
        decode_section(bad, PlaybookConfig, "playbook")
