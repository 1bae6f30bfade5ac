"""What a command's reason says about why its rung was reached."""

from __future__ import annotations

from playbook_cases import anomaly, feed, make
from riskguard.operators.mitigation.playbook import Rule, Rung, S, Tick
from riskguard.schemas import Action, Severity

AT_ONCE = Rule(name="move", signal="price_move", scope="instrument:*", target="same",
               ladder=(Rung(action=Action.ALERT), Rung(action=Action.REDUCE_ONLY)))


def test_a_rung_reached_at_once_says_opened_while_the_watermark_lags() -> None:
    """With two tick sources the clock of rungs is their watermark, which a signal can
    run ahead of: a second rung with no delay is still reached on opening, and no
    reroute is blamed."""
    logic = make(AT_ONCE)
    ticks = [Tick(ts=0, source=p, of=2) for p in ("p0", "p1")]
    out = feed(logic, [*ticks, anomaly(1, kind="price_move", sev=Severity.CRITICAL)])
    assert [c.action for c in out] == [Action.ALERT, Action.REDUCE_ONLY]
    assert "rung 2/2 reduce_only on instrument:okx/BTC-USDT (opened;" in out[1].reason
    assert "reroute" not in out[1].reason
    assert logic.state.watermark < 1 * S


def test_a_rung_passed_on_the_way_to_a_higher_one_says_so() -> None:
    """A critical signal reaches the last rung by severity and climbs through a delayed
    one: that one's reason names the rung it leads to, not a reroute."""
    rule = Rule(name="jump", signal="price_move", scope="instrument:*", target="same",
                ladder=(Rung(action=Action.ALERT), Rung(action=Action.REDUCE_ONLY, after_s=30),
                        Rung(action=Action.HALT_TRADING, after_s=60,
                             min_severity=Severity.CRITICAL)))
    out = feed(make(rule), [anomaly(1, kind="price_move", sev=Severity.CRITICAL)])
    assert [c.action for c in out] == [Action.ALERT, Action.REDUCE_ONLY, Action.HALT_TRADING]
    assert "(on the way to rung 3;" in out[1].reason
