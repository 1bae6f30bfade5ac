"""Playbook commands: their fields, ids, evidence and scopes, the command-rate cap, and
the dead letters of unexpected inputs."""

from __future__ import annotations

import hashlib
import uuid

from playbook_cases import FLASH, HALT, RO, A, alert, anomaly, feed, make, resume, venue
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import Rule, Rung, S, Tick, evidence_digest
from riskguard.schemas import (
    FIRM,
    Action,
    Audience,
    DeadLetter,
    MitigationCommand,
    Severity,
    encode,
)


def test_protective_orders_allowed_only_on_reduce_only_and_halt() -> None:
    """reduce_only and halt_trading say risk-reducing orders stay allowed; others do not."""
    ladder = tuple(Rung(action=a) for a in (A, Action.CANCEL_ALL, RO, HALT,
                                            Action.PAUSE_WITHDRAWALS))
    logic = make(Rule(name="all", signal="stale_mark", ladder=ladder))
    out = logic.on_event(alert("stale_mark", venue("okx"), 0))
    assert {c.action.value: c.protective_orders_allowed for c in out} == {
        "alert": False, "cancel_all": False, "reduce_only": True, "halt_trading": True,
        "pause_withdrawals": False}


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


def test_eof_reports_suppressed_commands_of_the_unfinished_window() -> None:
    """At end of input the pending rate-cap alert is still emitted, once."""
    rule = Rule(name="any", signal="anomaly", target="same", ladder=(Rung(action=RO),))
    logic = make(rule, max_commands=1, rate_window_s=60)
    out = feed(logic, [anomaly(1, inst="X-USD"), anomaly(2, inst="Y-USD")])
    assert [c.action for c in out] == [RO]
    (cap,) = logic.on_eof()
    assert (cap.action, cap.scope, cap.params["suppressed"]) == (A, FIRM, 1.0)
    assert logic.on_eof() == []
