"""Playbook reroutes: only to healthy venues below their limits, narrowed as venues go
bad, and a climb when none is left."""

from __future__ import annotations

import pytest
from playbook_cases import HALT, HB, acts, alert, breach, feed, make, venue
from riskguard.operators.mitigation.playbook import Rule, Rung, S, Tick
from riskguard.schemas import Action


def test_reroute_picks_only_healthy_unbreached_alternatives() -> None:
    """okx goes down while binance is in breach: flow goes to deribit only."""
    logic = make(HB, venues=("okx", "binance", "deribit", "kraken"))
    feed(logic, [breach("binance", 0), alert("heartbeat_loss", venue("kraken"), 1)])
    out = logic.on_event(alert("heartbeat_loss", venue("okx"), 2))
    # okx's reroute avoids kraken (down) and binance (breached); kraken's earlier reroute
    # to okx and deribit is narrowed to deribit now that okx is down too.
    assert acts(out) == [("reroute_order_flow", "venue:okx"),
                         ("reroute_order_flow", "venue:kraken")]
    assert out[0].params == {"targets": ["deribit"], "from": "okx"}
    assert "deribit" in out[0].reason
    assert out[1].params == {"targets": ["deribit"], "from": "kraken"}
    assert "retargeted to deribit; okx no longer healthy" in out[1].reason


def test_reroute_escalates_to_next_rung_when_no_alternative_qualifies() -> None:
    """With every other venue unhealthy or breached, cancel_all is issued at once instead."""
    logic = make(HB, venues=("okx", "binance"))
    logic.on_event(breach("binance", 0))
    out = logic.on_event(alert("heartbeat_loss", venue("okx"), 1))
    assert acts(out) == [("cancel_all", "venue:okx")]
    assert "no healthy reroute target" in out[0].reason


def test_cascade_reroutes_away_then_halts_never_rerouting_into_a_bad_venue() -> None:
    """A loses heartbeat -> reroute to B; B breaches -> B is halted, never rerouted to A or B."""
    hb = Rule(name="hb", signal="heartbeat_loss", scope="venue:*", target="venue",
              alternatives=("A", "B"), ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                                               Rung(action=HALT, after_s=300)))
    br = Rule(name="cp", signal="breach", scope="counterparty:*", target="venue",
              alternatives=("A", "B"), ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                                               Rung(action=HALT, after_s=300)))
    logic = make(hb, br, venues=("A", "B"))
    first = logic.on_event(alert("heartbeat_loss", venue("A"), 0))
    assert acts(first) == [("reroute_order_flow", "venue:A")]
    assert first[0].params["targets"] == ["B"]
    second = logic.on_event(breach("B", 5))
    # B cannot be rerouted (A is down) so it halts; A's reroute has lost its only
    # target, so A's ladder climbs to its halt at once instead of waiting 300 s.
    assert acts(second) == [("halt_trading", "venue:B"), ("halt_trading", "venue:A")]
    assert second[0].protective_orders_allowed is True
    assert "no healthy reroute target" in second[0].reason
    everything = first + second + feed(logic, [Tick(ts=s * S) for s in range(6, 400, 7)])
    for c in everything:
        if c.action is Action.REROUTE_ORDER_FLOW and c.scope.value == "B":
            pytest.fail(f"rerouted B: {c.params}")
    assert acts(everything) == [("reroute_order_flow", "venue:A"), ("halt_trading", "venue:B"),
                                ("halt_trading", "venue:A")]
    assert logic.snapshot().active["reroute_order_flow|venue:A"].params["targets"] == []
