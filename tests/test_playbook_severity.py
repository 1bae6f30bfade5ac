"""Playbook severity: rungs gated on critical, de-escalation inside an episode, and the
bundled playbook's price-move and regime-change rules."""

from __future__ import annotations

from playbook_cases import HALT, RO, A, acts, anomaly, feed, make
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
)
from riskguard.schemas import Severity

from riskguard.config import decode_section, read_toml

GATED = Rule(name="move", signal="price_move", scope="instrument:*", target="venue",
             quiet_s=20, repeat_window_s=600,
             ladder=(Rung(action=A), Rung(action=RO, requires=Severity.CRITICAL),
                     Rung(action=HALT, after_s=30, requires=Severity.CRITICAL)))


def test_a_lasting_warning_never_climbs_past_a_rung_that_requires_critical() -> None:
    """A warn incident open for minutes only alerts: the gated rungs and every rung after
    them wait for the severity, however long it lasts."""
    logic = make(GATED)
    out = feed(logic, [anomaly(0, kind="price_move"),
                       *[Tick(ts=s * S) for s in range(1, 300)]])
    assert acts(out) == [("alert", "venue:okx")]


def test_a_critical_escalation_passes_the_gate_at_once_and_the_delay_still_counts() -> None:
    """On critical the gated reduce_only comes at once; the halt still waits its 30 s."""
    logic = make(GATED)
    feed(logic, [anomaly(0, kind="price_move"), Tick(ts=5 * S)])
    out = logic.on_event(anomaly(6, phase="escalate", sev=Severity.CRITICAL, kind="price_move"))
    assert acts(out) == [("reduce_only", "venue:okx")]
    assert "severity critical" in out[0].reason
    later = feed(logic, [Tick(ts=s * S) for s in range(7, 40)])
    assert acts(later) == [("halt_trading", "venue:okx")]


def test_a_repeat_trip_does_not_start_past_a_gate() -> None:
    """Repeated warn trips start higher up the ladder, but never past a rung whose
    severity they have not reached."""
    logic = make(GATED)
    out = []
    for k in range(3):
        t = 40.0 * k
        out += feed(logic, [anomaly(t, kind="price_move"),
                            anomaly(t + 1, phase="close", kind="price_move"),
                            Tick(ts=int((t + 30) * S))])
    assert {a for a, _ in acts(out)} == {"alert"}


def test_the_default_playbook_reduces_on_critical_moves_and_alerts_on_a_regime_change() -> None:
    """The bundled playbook: a critical price move alerts and goes reduce-only on its
    instrument (a warning is no command); a regime change only alerts (it cuts no
    limits)."""
    from importlib import resources

    doc = read_toml(str(resources.files("riskguard.dataflows").joinpath("playbook.toml")))
    cfg = decode_section(doc["playbook"], PlaybookConfig)
    logic = PlaybookLogic(cfg, ManualClock(1_000))
    assert logic.on_event(anomaly(0, kind="price_move")) == []
    move = anomaly(1, kind="price_move", sev=Severity.CRITICAL, phase="escalate")
    assert acts(logic.on_event(move)) == [("alert", "instrument:okx/BTC-USDT"),
                                          ("reduce_only", "instrument:okx/BTC-USDT")]
    regime = anomaly(5, kind="regime_change", inst="ETH-USDT", sev=Severity.INFO)
    quiet = feed(logic, [regime, *[Tick(ts=s * S) for s in range(6, 400)]])
    assert ("reduce_limits", "underlying:okx/ETH") not in acts(quiet)
    assert ("alert", "underlying:okx/ETH") in acts(quiet)


def _default_playbook() -> PlaybookLogic:
    from importlib import resources

    doc = read_toml(str(resources.files("riskguard.dataflows").joinpath("playbook.toml")))
    return PlaybookLogic(decode_section(doc["playbook"], PlaybookConfig), ManualClock(1_000))


def test_a_price_move_that_deescalates_lifts_its_reduce_only_after_the_quiet_period() -> None:
    """The bundled playbook (``price_move`` at critical, quiet 300 s): a trip goes
    reduce-only; a ``deescalate`` to warn starts the quiet period while the episode goes
    on, and 300 s later the reduce-only is resumed; a second trip before that keeps it
    in force with no second command; one after it goes reduce-only again."""
    logic = _default_playbook()
    trip = anomaly(0, kind="price_move", sev=Severity.CRITICAL)
    assert acts(logic.on_event(trip)) == [("alert", "instrument:okx/BTC-USDT"),
                                          ("reduce_only", "instrument:okx/BTC-USDT")]
    ease = anomaly(60, kind="price_move", phase="deescalate")
    again = anomaly(200, kind="price_move", phase="escalate", sev=Severity.CRITICAL)
    held = feed(logic, [ease, *[Tick(ts=s * S) for s in range(61, 200)], again,
                        *[Tick(ts=s * S) for s in range(201, 500)]])
    assert acts(held) == []  # back to critical inside the quiet period: still in force
    out = feed(logic, [anomaly(500, kind="price_move", phase="deescalate"),
                       *[Tick(ts=s * S) for s in range(501, 900)]])
    assert acts(out) == [("resume", "instrument:okx/BTC-USDT")]
    tripped = logic.on_event(anomaly(900, kind="price_move", phase="escalate",
                                     sev=Severity.CRITICAL))
    assert ("reduce_only", "instrument:okx/BTC-USDT") in acts(tripped)


def test_a_deescalation_keeps_the_incident_of_a_rule_it_still_meets() -> None:
    """A rule matching warn price moves: the fall to warn lowers the incident's
    severity (its critical-gated rungs no longer climb) but does not end it."""
    logic = make(GATED)
    feed(logic, [anomaly(0, kind="price_move", sev=Severity.CRITICAL), Tick(ts=5 * S)])
    logic.on_event(anomaly(6, kind="price_move", phase="deescalate"))
    later = feed(logic, [Tick(ts=s * S) for s in range(7, 200)])
    assert acts(later) == []  # no halt at 30 s: the gate needs critical; no resume
    (inc,) = logic.state.incidents.values()
    assert inc.severity is Severity.WARN and inc.closed_at is None
