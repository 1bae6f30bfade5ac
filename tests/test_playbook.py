"""Playbook logic: ladders, repeat trips, de-dup, reroute health, rate cap, recovery."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
    evidence_digest,
)
from riskguard.schemas import (
    FIRM,
    Action,
    AnomalySignal,
    Audience,
    DeadLetter,
    LimitBreach,
    LimitLevel,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    encode,
)

from riskguard.config import decode_section, read_toml
from riskguard.errors import ConfigError

A, RO, HALT = Action.ALERT, Action.REDUCE_ONLY, Action.HALT_TRADING
LADDER = (Rung(action=A), Rung(action=RO, after_s=10, min_severity=Severity.CRITICAL),
          Rung(action=HALT, after_s=30))
VENUES = ("okx", "binance", "deribit")


def venue(v: str) -> Scope:
    return Scope(kind=ScopeKind.VENUE, value=v)


def cp(v: str) -> Scope:
    return Scope(kind=ScopeKind.COUNTERPARTY, value=v)


def anomaly(t: float, *, phase: str = "open", sev: Severity = Severity.WARN,
            inst: str = "BTC-USDT", v: str = "okx", warming: bool = False,
            score: float = 9.0, kind: str = "anomaly") -> AnomalySignal:
    return AnomalySignal(
        id=f"a-{inst}-{v}-{t}-{phase}", kind=kind, phase=phase, key=f"{v}/{inst}",
        scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=v), ts=int(t * S),
        score=score, threshold=3.0, severity=sev, warming_up=warming, model="hst",
        model_version="1")


def alert(kind: str, scope: Scope, t: float, sev: Severity = Severity.WARN) -> RiskAlert:
    return RiskAlert(id=f"r-{kind}-{scope.label()}-{t}", kind=kind, scope=scope, ts=int(t * S),
                     severity=sev, reason=f"{kind} seen")


def breach(name: str, t: float, level: LimitLevel = LimitLevel.BREACH,
           sev: Severity = Severity.WARN, util: float = 1.2) -> LimitBreach:
    return LimitBreach(id=f"b-{name}-{t}-{level}", limit_path=f"counterparty.{name}",
                       kind="gross_notional", scope=cp(name), ts=int(t * S), exposure=util * 100,
                       base_limit=100.0, effective_limit=100.0, utilization=util, level=level,
                       severity=sev)


def resume(scope: Scope, t: float, approvals: int = 0, **params: Any) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"manual-{scope.label()}-{t}", issuer="ops", issued_at=int(t * S),
        expires_at=int(t * S) + 60 * S, audience=Audience(env="dev", topic="commands"),
        action=Action.RESUME, scope=scope,
        params={"approvals": float(approvals), **params}, reason="operator resume")


def make(*rules: Rule, clock: Any = None, **kw: Any) -> PlaybookLogic:
    cfg = PlaybookConfig(issuer="guard", venues=kw.pop("venues", VENUES), rules=rules, **kw)
    return PlaybookLogic(cfg, clock or ManualClock(1_000))


def feed(logic: PlaybookLogic, events: list[Any]) -> list[MitigationCommand]:
    out: list[Any] = []
    for e in events:
        out.extend(logic.on_event(e))
    return out


def acts(cmds: list[MitigationCommand]) -> list[tuple[str, str]]:
    return [(c.action.value, c.scope.label()) for c in cmds]


FLASH = Rule(name="flash", signal="anomaly", scope="instrument:*", target="venue", ladder=LADDER,
             quiet_s=20, repeat_window_s=600)


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


HB = Rule(name="hb", signal="heartbeat_loss", scope="venue:*", target="venue", quiet_s=10,
          ladder=(Rung(action=Action.REROUTE_ORDER_FLOW), Rung(action=Action.CANCEL_ALL,
                                                               after_s=60)))


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


def test_rate_cap_suppresses_and_emits_exactly_one_firm_alert_per_window() -> None:
    """A storm of 5 signals with a cap of 2 per 10 s yields 2 commands then one firm alert."""
    rule = Rule(name="any", signal="anomaly", target="same", ladder=(Rung(action=RO),))
    logic = make(rule, max_commands=2, rate_window_s=10)
    storm = [anomaly(1 + i / 10, inst=f"I{i}-USD") for i in range(5)]
    out = feed(logic, [*storm, *[Tick(ts=s * S) for s in range(2, 10)]])
    assert [c.action for c in out] == [RO, RO]
    out = logic.on_event(Tick(ts=10 * S))
    cap = [c for c in out if c.scope == FIRM]
    assert len(cap) == 1
    assert cap[0].action is A and cap[0].params["suppressed"] == 3.0
    assert "3 command(s) suppressed" in cap[0].reason
    # The held-back commands are retried in the next window, under the same cap.
    assert [c.action for c in out if c.scope != FIRM] == [RO, RO]
    later = feed(logic, [Tick(ts=s * S) for s in range(11, 21)])
    assert [(c.action, c.params.get("suppressed")) for c in later] == [(A, 1.0), (RO, None)]


def test_auto_recovery_waits_for_quiet_period_and_reopen_cancels_it() -> None:
    """Resume comes quiet_s after the last close; a reopen inside the quiet period resets it."""
    rule = Rule(name="flash", signal="anomaly", target="venue", quiet_s=30,
                ladder=(Rung(action=RO),))
    logic = make(rule)
    assert acts(logic.on_event(anomaly(0))) == [("reduce_only", "venue:okx")]
    assert feed(logic, [anomaly(5, phase="close"), Tick(ts=20 * S)]) == []
    assert feed(logic, [anomaly(25), anomaly(40, phase="close")]) == []  # same incident
    assert feed(logic, [Tick(ts=36 * S), Tick(ts=69 * S)]) == []
    out = logic.on_event(Tick(ts=70 * S))
    assert acts(out) == [("resume", "venue:okx")]
    assert out[0].params["actions"] == ["reduce_only"]
    assert "quiet for 30s" in out[0].reason
    assert logic.snapshot().active == {}


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


def test_manual_recovery_waits_for_a_resume_input() -> None:
    """recovery="manual" keeps the mitigation after the quiet period until a resume arrives."""
    rule = Rule(name="recon", signal="reconciliation_break", scope="counterparty:*",
                recovery="manual", quiet_s=5, ladder=(Rung(action=Action.PAUSE_WITHDRAWALS),))
    logic = make(rule)
    out = feed(logic, [alert("reconciliation_break", cp("okx"), 0), Tick(ts=100 * S)])
    assert acts(out) == [("pause_withdrawals", "counterparty:okx")]
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("binance"), 101)) == []
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("okx"), 102)) == []
    assert logic.snapshot().active == {}


def test_a_resume_naming_other_commands_leaves_the_guards_mitigation_in_force() -> None:
    """An operator's resume naming another command (``resumes``) lifts nothing the guard
    holds, as executors do: the guard keeps its mitigation, and resumes it later itself;
    one naming it lifts it."""
    rule = Rule(name="recon", signal="reconciliation_break", scope="counterparty:*",
                recovery="manual", quiet_s=5, ladder=(Rung(action=Action.PAUSE_WITHDRAWALS),))
    logic = make(rule)
    feed(logic, [alert("reconciliation_break", cp("okx"), 0), Tick(ts=100 * S)])
    held = logic.snapshot().active["pause_withdrawals|counterparty:okx"].command_id
    assert logic.on_event(resume(cp("okx"), 101, resumes=["someone-else"])) == []
    assert list(logic.snapshot().active) == ["pause_withdrawals|counterparty:okx"]
    assert logic.on_event(resume(cp("okx"), 102, resumes=[held])) == []
    assert logic.snapshot().active == {}


def test_firm_halt_needs_manual_resume_with_two_approvals() -> None:
    """A firm halt is never auto-resumed; one approval is refused, two clear it."""
    rule = Rule(name="firm", signal="breach", scope="counterparty:*", target="firm", quiet_s=5,
                ladder=(Rung(action=HALT),))
    logic = make(rule)
    out = logic.on_event(breach("okx", 0, sev=Severity.CRITICAL))
    assert acts(out) == [("halt_trading", "firm:*")]
    out = feed(logic, [breach("okx", 1, level=LimitLevel.OK), Tick(ts=10 * S),
                       Tick(ts=20 * S)])
    assert acts(out) == [("alert", "firm:*")]
    assert "two approvals" in out[0].reason
    out = logic.on_event(resume(FIRM, 30, approvals=1))
    assert acts(out) == [("alert", "firm:*")] and "refused" in out[0].reason
    assert list(logic.snapshot().active) == ["halt_trading|firm:*"]
    assert logic.on_event(resume(FIRM, 31, approvals=2)) == []
    assert logic.snapshot().active == {}
    # A fresh incident can halt again.
    assert acts(logic.on_event(breach("okx", 40, sev=Severity.CRITICAL))) == \
        [("halt_trading", "firm:*")]


def test_protective_orders_allowed_only_on_reduce_only_and_halt() -> None:
    """reduce_only and halt_trading say risk-reducing orders stay allowed; others do not."""
    ladder = tuple(Rung(action=a) for a in (A, Action.CANCEL_ALL, RO, HALT,
                                            Action.PAUSE_WITHDRAWALS))
    logic = make(Rule(name="all", signal="stale_mark", ladder=ladder))
    out = logic.on_event(alert("stale_mark", venue("okx"), 0))
    assert {c.action.value: c.protective_orders_allowed for c in out} == {
        "alert": False, "cancel_all": False, "reduce_only": True, "halt_trading": True,
        "pause_withdrawals": False}


def test_scopes_are_exact() -> None:
    """cancel_all for one venue names exactly that venue; resuming another leaves it in force."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", recovery="manual",
                ladder=(Rung(action=Action.CANCEL_ALL),))
    logic = make(rule)
    out = logic.on_event(alert("heartbeat_loss", venue("okx"), 0))
    assert [c.scope for c in out] == [Scope(kind=ScopeKind.VENUE, value="okx")]
    logic.on_event(resume(venue("okx-perp"), 1))
    logic.on_event(resume(Scope(kind=ScopeKind.INSTRUMENT, value="BTC", venue="okx"), 2))
    assert list(logic.snapshot().active) == ["cancel_all|venue:okx"]


def test_target_maps_scopes() -> None:
    """Targets map an instrument signal to its venue, counterparty, underlying or the firm."""
    rules = [Rule(name=t, signal="anomaly", target=t, ladder=(Rung(action=A),))
             for t in ("same", "venue", "counterparty", "underlying", "firm")]
    out = make(*rules).on_event(anomaly(0, inst="ETH-PERP", v="deribit"))
    assert {c.reason.split("'")[1]: c.scope.label() for c in out} == {
        "same": "instrument:deribit/ETH-PERP", "venue": "venue:deribit",
        "counterparty": "counterparty:deribit", "underlying": "underlying:deribit/ETH",
        "firm": "firm:*"}


def test_command_fields_ids_and_evidence() -> None:
    """Commands carry issuer, seq 0, clock times, audience, reason and the signals' digests."""
    clock = ManualClock(5_000)
    logic = make(FLASH, clock=clock, ttl_s=60)
    sig = anomaly(0)
    (cmd,) = logic.on_event(sig)
    assert (cmd.issuer, cmd.seq, cmd.issued_at, cmd.expires_at) == ("guard", 0, 5_000,
                                                                     5_000 + 60 * S)
    assert cmd.audience == Audience(env="dev", topic="commands")
    digest = hashlib.sha256(encode(sig)).hexdigest()
    assert cmd.evidence_hashes == [digest] and cmd.evidence_hash == digest
    assert "rule 'flash'" in cmd.reason and "score 9 / threshold 3 = 3.00x" in cmd.reason
    assert uuid.UUID(cmd.command_id).version == 5
    clock.advance(10)
    esc = anomaly(3, phase="escalate", sev=Severity.CRITICAL)
    (ro,) = logic.on_event(esc)
    assert ro.issued_at == 5_010
    assert ro.evidence_hashes == [digest, evidence_digest(esc)]
    assert ro.evidence_hash == evidence_digest(esc)
    # The same inputs give the same ids in a fresh logic (never random).
    again = make(FLASH, clock=ManualClock(9))
    assert [c.command_id for c in feed(again, [sig, esc])] == [cmd.command_id, ro.command_id]


def test_evidence_digest_matches_audit_input_digest() -> None:
    """The digest a command cites is the audit record's input_digest of that signal."""
    from riskguard.operators.audit import AuditConfig, AuditLogic
    from riskguard.operators.signing.crypto import Signer

    sig = anomaly(0)
    audit = AuditLogic("c", Signer.from_private_bytes(bytes(32), issuer="a"), AuditConfig())
    (rec,) = audit.on_event(sig)
    assert rec.input_digest == evidence_digest(sig)


def test_unexpected_inputs_become_dead_letters() -> None:
    """Non-resume commands and unknown items go to errs with a reason, not raised."""
    logic = make(FLASH)
    cmd = resume(venue("okx"), 0)
    cmd = MitigationCommand(**{**{f: getattr(cmd, f) for f in cmd.__struct_fields__},
                               "action": Action.HALT_TRADING})
    (dl,) = logic.on_event(cmd)
    assert isinstance(dl, DeadLetter) and dl.reason == "unexpected_command"
    assert (dl.expected, dl.found) == ("resume", "halt_trading")
    (dl,) = logic.on_event("junk")
    assert isinstance(dl, DeadLetter) and dl.reason == "unexpected_type" and dl.found == "str"


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


# -- flow level ------------------------------------------------------------------------


def _flow(events: list[Any], oks: list[Any], errs: list[Any]) -> Any:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource
    from riskguard.operators.mitigation.ops import plan_mitigation

    flow = Dataflow("playbook_test")
    out = plan_mitigation("playbook", op.input("in", flow, TestingSource(events)),
                          config=PlaybookConfig(issuer="guard", venues=VENUES,
                                                rules=(FLASH, HB)),
                          clock=lambda: 77)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    return flow


FLOW_EVENTS: list[Any] = [
    anomaly(0), alert("heartbeat_loss", venue("binance"), 1), "not a signal",
    *[Tick(ts=s * S) for s in range(2, 40, 2)],
    anomaly(40, phase="close"), alert("heartbeat_restored", venue("binance"), 41),
    *[Tick(ts=s * S) for s in range(42, 80, 2)],
]
FLOW_EXPECTED = [("alert", "venue:okx"), ("reroute_order_flow", "venue:binance"),
                 ("reduce_only", "venue:okx"), ("halt_trading", "venue:okx"),
                 ("reroute_order_flow", "venue:binance"),  # narrowed: okx is halted
                 ("resume", "venue:binance"), ("resume", "venue:okx")]


def test_flow_plans_commands_and_routes_bad_items_to_errs() -> None:
    """run_main: the adapter emits the logic's commands in order; junk goes to errs."""
    from bytewax.testing import run_main

    oks: list[Any] = []
    errs: list[Any] = []
    run_main(_flow(FLOW_EVENTS, oks, errs))
    assert acts(oks) == FLOW_EXPECTED
    assert oks[-1].params["actions"] == ["halt_trading", "reduce_only"]
    assert oks[4].params["targets"] == ["deribit"]
    assert all(c.issued_at == 77 and c.seq == 0 for c in oks)
    assert [(e.reason, e.found) for e in errs] == [("unexpected_type", "str")]


def test_flow_with_two_workers_gives_the_same_commands() -> None:
    """cluster_main with 2 workers: everything meets under the one "firm" key."""
    from bytewax.testing import cluster_main

    oks: list[Any] = []
    errs: list[Any] = []
    cluster_main(_flow(FLOW_EVENTS, oks, errs), [], 0, worker_count_per_proc=2)
    assert acts(oks) == FLOW_EXPECTED
    assert len(errs) == 1


def test_flow_resume_after_abort_equals_uninterrupted(tmp_path: Any) -> None:
    """Abort halfway with recovery on; the resumed run issues the rest, none twice."""
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    init_db_dir(tmp_path, 1)
    half = len(FLOW_EVENTS) // 2
    events = [*FLOW_EVENTS[:half], TestingSource.ABORT(), *FLOW_EVENTS[half:]]
    oks: list[Any] = []
    errs: list[Any] = []
    rc = RecoveryConfig(str(tmp_path))
    run_main(_flow(events, oks, errs), epoch_interval=timedelta(0), recovery_config=rc)
    assert 0 < len(oks) < len(FLOW_EXPECTED)
    run_main(_flow(events, oks, errs), epoch_interval=timedelta(0), recovery_config=rc)
    assert acts(oks) == FLOW_EXPECTED
    uninterrupted: list[Any] = []
    run_main(_flow(FLOW_EVENTS, uninterrupted, []))
    assert [c.command_id for c in oks] == [c.command_id for c in uninterrupted]


def test_eof_reports_suppressed_commands_of_the_unfinished_window() -> None:
    """At end of input the pending rate-cap alert is still emitted, once."""
    rule = Rule(name="any", signal="anomaly", target="same", ladder=(Rung(action=RO),))
    logic = make(rule, max_commands=1, rate_window_s=60)
    out = feed(logic, [anomaly(1, inst="X-USD"), anomaly(2, inst="Y-USD")])
    assert [c.action for c in out] == [RO]
    (cap,) = logic.on_eof()
    assert (cap.action, cap.scope, cap.params["suppressed"]) == (A, FIRM, 1.0)
    assert logic.on_eof() == []


def test_resume_input_does_not_move_event_time() -> None:
    """A resume's issued_at is processing time: it must not expire quiet periods early."""
    rule = Rule(name="flash", signal="anomaly", target="venue", quiet_s=30,
                ladder=(Rung(action=RO),))
    logic = make(rule)
    feed(logic, [anomaly(0), anomaly(1, phase="close")])
    assert logic.on_event(resume(venue("binance"), 10_000)) == []
    assert logic.snapshot().now == 1 * S
    assert list(logic.snapshot().active) == ["reduce_only|venue:okx"]


def test_time_driven_rungs_wait_for_the_slowest_tick_source() -> None:
    """With ticks from two guard processes, a 60 s rung climbs only when the slower one's
    event time has passed it; an immediate rung still fires on the signal itself."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", quiet_s=30,
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    logic = make(rule)
    out = feed(logic, [Tick(ts=100 * S, source="p1"), Tick(ts=100 * S, source="p2"),
                       alert("heartbeat_loss", venue("binance"), 101)])
    assert acts(out) == [("reroute_order_flow", "venue:binance")]
    # p1 races ahead to t=200; p2 (which carries binance's heartbeats) is still at 110.
    out = feed(logic, [Tick(ts=110 * S, source="p2"), Tick(ts=200 * S, source="p1")])
    assert out == []
    # p2 delivers the restore at 140 and then moves on: the incident closed before 163.
    out = feed(logic, [alert("heartbeat_restored", venue("binance"), 140),
                       Tick(ts=200 * S, source="p2")])
    assert acts(out) == [("resume", "venue:binance")]


def _stream(source: str, signals: list[Any], until_s: int, of: int = 2) -> list[Any]:
    """One guard worker's playbook input: a tick at each second it reaches, then its
    signals of that second."""
    out: list[Any] = []
    for t in range(until_s + 1):
        out.append(Tick(ts=t * S, source=source, of=of))
        out.extend(sig for sig in signals if t * S <= sig.ts < (t + 1) * S)
    return out


def _one_worker(*streams: list[Any]) -> list[Any]:
    """The same inputs as one worker meets them: one tick source, everything in event-time
    order (a tick before the signals of its second)."""
    merged = [e for s in streams for e in s]
    ticks = {e.ts: Tick(ts=e.ts, source="w", of=1) for e in merged if isinstance(e, Tick)}
    signals = [e for e in merged if not isinstance(e, Tick)]
    return sorted([*ticks.values(), *signals], key=lambda e: (e.ts, not isinstance(e, Tick)))


def _two_incidents(of: int = 2) -> tuple[list[Any], list[Any]]:
    """binance's heartbeats (worker 1) fail twice; okx flash-crashes in between (worker 2)."""
    hb = [alert("heartbeat_loss", venue("binance"), 10, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 25),
          alert("heartbeat_loss", venue("binance"), 110, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 200)]
    crash = [anomaly(40), anomaly(41, phase="escalate", sev=Severity.CRITICAL),
             anomaly(45, phase="close"), anomaly(150, v="binance"),
             anomaly(152, v="binance", phase="close")]
    return _stream("p1", hb, 260, of), _stream("p2", crash, 260, of)


def _planned(logic: PlaybookLogic, events: list[Any]) -> list[tuple[str, str, str]]:
    cmds = [*feed(logic, events), *logic.on_eof()]
    return [(c.action.value, c.scope.label(), c.reason) for c in cmds]


def test_a_process_far_ahead_waits_so_two_processes_plan_what_one_worker_does() -> None:
    """Replaying a backlog, one process can run minutes of event time ahead of the other.
    Its signals wait for the watermark and are applied in event-time order, so any
    interleaving of the two processes' inputs plans exactly the one-worker commands."""
    import random

    p1, p2 = _two_incidents()
    rules = (FLASH, HB)
    reference = _planned(make(*rules), _one_worker(p1, p2))
    assert ("cancel_all", "venue:binance") in [c[:2] for c in reference]
    rng = random.Random(7)
    for order in ("p2 first", "p1 first", *(f"shuffle {i}" for i in range(20))):
        if order == "p2 first":
            events = p2 + p1
        elif order == "p1 first":
            events = p1 + p2
        else:  # each process's own order kept, the two interleaved at random
            a, b, events = list(p1), list(p2), []
            while a or b:
                events.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
        assert _planned(make(*rules), events) == reference, order


def test_signals_ahead_of_the_watermark_wait_only_beyond_the_slack() -> None:
    """Live, the workers are within a tick of each other: a signal up to
    ``reorder_slack_s`` ahead of the watermark acts at once; one further ahead waits for
    the watermark, and end of input applies whatever still waits."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))
    logic = make(rule, reorder_slack_s=2.0)
    feed(logic, [Tick(ts=100 * S, source="p1", of=2), Tick(ts=100 * S, source="p2", of=2)])
    assert acts(logic.on_event(alert("heartbeat_loss", venue("okx"), 101.9))) == [
        ("reroute_order_flow", "venue:okx")]
    assert logic.on_event(alert("heartbeat_loss", venue("binance"), 105)) == []
    assert logic.on_event(Tick(ts=103 * S, source="p1", of=2)) == []  # p2 still at 100
    # (okx's flow, rerouted partly to binance, is retargeted too)
    assert ("reroute_order_flow", "venue:binance") in acts(
        logic.on_event(Tick(ts=103 * S, source="p2", of=2)))
    assert logic.on_event(alert("heartbeat_loss", venue("deribit"), 200)) == []
    resumed = PlaybookLogic(logic.config, logic.clock, logic.snapshot())
    # (no healthy venue is left to reroute to: the rule escalates to an alert)
    assert acts(resumed.on_eof()) == [("alert", "venue:deribit")]


def test_a_signal_waits_for_the_watermark_at_most_max_hold_s_of_processing_time() -> None:
    """Live, a cluster whose exposure path falls behind must still act within seconds: a
    signal held for ``max_hold_s`` of processing time is applied at the next event,
    without moving the watermark that times ladders and quiet periods; ``on_reorder``
    hears of both (the guard counts them in ``riskguard_reorder_total``)."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))
    clock = ManualClock(0)
    logic = make(rule, clock=clock, max_hold_s=5.0)
    told: list[tuple[str, int]] = []
    logic.on_reorder = lambda outcome, n: told.append((outcome, n))
    feed(logic, [Tick(ts=100 * S, source="p1", of=2), Tick(ts=100 * S, source="p2", of=2)])
    assert logic.on_event(alert("heartbeat_loss", venue("binance"), 110)) == []
    clock.advance(4 * S)
    assert logic.on_event(Tick(ts=100 * S, source="p1", of=2)) == []
    clock.advance(S)
    assert acts(logic.on_event(Tick(ts=100 * S, source="p1", of=2))) == [
        ("reroute_order_flow", "venue:binance")]
    st = logic.snapshot()
    assert (st.forced, st.held, st.watermark) == (1, [], 100 * S)
    assert told == [("held", 1), ("forced", 1)]


def test_after_a_restart_the_dead_processes_tick_sources_stop_holding_time() -> None:
    """Restored from a snapshot, the tick sources it names are gone (every process restarts
    under a new name): once the new process ticks (one more source than the ticks
    announce), time-driven rungs follow it at once, not after the dead one goes idle."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue", quiet_s=30,
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    clock = ManualClock(1_000)
    logic = make(rule, clock=clock)
    feed(logic, [Tick(ts=100 * S, source="old", of=1),
                 alert("heartbeat_loss", venue("binance"), 101)])
    resumed = PlaybookLogic(logic.config, clock, logic.snapshot())
    clock.advance(S)  # well inside the 30 s idle window of the dead source
    out = feed(resumed, [Tick(ts=100 * S, source="new", of=1),
                         Tick(ts=162 * S, source="new", of=1)])
    assert acts(out) == [("cancel_all", "venue:binance")]
    assert set(resumed.snapshot().sources) == {"new"}


def test_without_named_sources_signals_move_the_clock() -> None:
    """Unnamed ticks and signals drive time as before (backtests, single process)."""
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),
                        Rung(action=Action.CANCEL_ALL, after_s=60)))
    out = feed(make(rule), [alert("heartbeat_loss", venue("binance"), 100), Tick(ts=161 * S)])
    assert acts(out) == [("reroute_order_flow", "venue:binance"), ("cancel_all", "venue:binance")]


def test_at_end_of_input_a_source_that_finished_early_does_not_hold_the_clock() -> None:
    """A process that finished its input early stops ticking, so the watermark stays at
    its last tick and the other process's signals wait. At end of input every source has
    ended: they apply in event-time order with the clock stepping up to each, and the
    clock ends where one worker's does, so the quiet periods that one worker sees end
    (resumes) end here too."""
    hb = [alert("heartbeat_loss", venue("binance"), 10, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 25),
          alert("heartbeat_loss", venue("binance"), 110, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 200)]
    early, late = _stream("p1", [], 5), _stream("p2", hb, 260)
    reference = _planned(make(HB), _one_worker(early, late))
    assert [c[:2] for c in reference].count(("resume", "venue:binance")) == 2
    for events in (early + late, late + early):
        assert _planned(make(HB), events) == reference


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
