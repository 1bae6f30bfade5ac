"""Limits logic: levels, hysteresis, latches, fail-closed, dynamic limits, signed updates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
)
from riskguard.operators.exposure.limit_updates import (
    Approved,
    Verifier,
    route_update,
    trust_verifier,
)
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE, Signer, sign_envelope
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas import (
    Exposure,
    LimitBreach,
    LimitLevel,
    LimitUpdate,
    RiskAlert,
    Signature,
    SignedEnvelope,
    Utilization,
    encode,
)
from signing_fixtures import ADMIN, AUD, ENGINE, OP1, OUTSIDER, T0, write_signed_trust
from test_exposure_unvalued import drive

from riskguard.errors import ConfigError, VerificationError

S = 1_000_000_000


def exp(ts: int, gross: float, cp: str = "okx", **kw: object) -> Exposure:
    return Exposure(counterparty=cp, ts=ts, gross_notional=gross, net_notional=gross,
                    evidence_ids=[f"e{ts}"], **kw)


def cfg(**spec: object) -> LimitsConfig:
    return LimitsConfig(
        counterparties={"okx": CounterpartyLimits(
            limits={"gross_notional": LimitSpec(limit=100.0, **spec)})},
        utilization_interval_ns=10,
    )


def levels(outs: list[object]) -> list[str]:
    return [o.level.value for o in outs if isinstance(o, Utilization)]


def update(**kw: object) -> LimitUpdate:
    base: dict[str, object] = {
        "update_id": "u1", "issuer": "limits-admin", "issued_at": 5, "expires_at": 10**18,
        "audience": AUD, "limit_path": "counterparty.okx", "kind": "gross_notional"}
    base.update(kw)
    return LimitUpdate(**base)


def test_hysteresis_stops_flapping_around_the_warn_level() -> None:
    """0.81 -> warn; 0.78 stays warn (within 0.05); 0.74 drops to ok."""
    logic = LimitsLogic(cfg())
    assert levels(drive(logic, [exp(0, 81.0)])) == ["warn"]
    assert levels(drive(logic, [exp(100, 78.0)])) == ["warn"]
    assert levels(drive(logic, [exp(200, 74.0)])) == ["ok"]


def test_breach_event_carries_path_kind_utilization_limit_exposure_and_evidence() -> None:
    """Crossing 100% emits a LimitBreach with everything the playbooks need."""
    logic = LimitsLogic(cfg(hard=1.5))
    drive(logic, [exp(0, 10.0)])
    outs = drive(logic, [exp(1, 120.0)])
    (b,) = [o for o in outs if isinstance(o, LimitBreach)]
    assert (b.limit_path, b.kind, b.utilization, b.effective_limit, b.exposure) == (
        "counterparty.okx", "gross_notional", 1.2, 100.0, 120.0)
    assert (b.level, b.severity.value, b.evidence_ids) == (LimitLevel.BREACH, "critical", ["e1"])
    outs = drive(logic, [exp(2, 160.0)])
    assert [o.level.value for o in outs if isinstance(o, LimitBreach)] == ["hard"]
    outs = drive(logic, [exp(3, 10.0)])
    assert [(o.level.value, o.severity.value) for o in outs if isinstance(o, LimitBreach)] == [
        ("ok", "info")]


def test_utilization_is_rate_limited_but_level_changes_always_emit() -> None:
    """Within the interval only level changes produce Utilization records."""
    logic = LimitsLogic(cfg())
    assert levels(drive(logic, [exp(0, 10.0)])) == ["ok"]
    assert levels(drive(logic, [exp(1, 20.0), exp(2, 30.0)])) == []
    assert levels(drive(logic, [exp(3, 90.0)])) == ["warn"]
    assert levels(drive(logic, [exp(13, 91.0)])) == ["warn"]


def test_unknown_counterparty_fails_closed_with_zero_limit_and_alert() -> None:
    """No configured limits -> zero limit, breach on any exposure, one critical alert."""
    logic = LimitsLogic(cfg())
    outs = drive(logic, [exp(0, 1.0, cp="kraken"), exp(1, 2.0, cp="kraken")])
    alerts = [o for o in outs if isinstance(o, RiskAlert)]
    assert [(a.kind, a.severity.value) for a in alerts] == [("unknown_counterparty", "critical")]
    util = next(o for o in outs if isinstance(o, Utilization) and o.kind == "gross_notional")
    assert (util.effective_limit, util.level) == (0.0, LimitLevel.BREACH)


def test_dynamic_limit_scales_with_realized_vol_and_reports_inputs() -> None:
    """Effective = base * clamp((ref/vol)^exp, lo, hi): vol 1.0 vs ref 0.5 halves the limit."""
    vs = VolScaling(underlying="BTC", ref_vol=0.5, lo=0.25, hi=1.0)
    logic = LimitsLogic(cfg(vol_scaling=vs))
    outs = drive(logic, [exp(0, 60.0, vol_by_underlying={"BTC": 1.0})])
    (u,) = [o for o in outs if isinstance(o, Utilization)]
    assert (u.base_limit, u.effective_limit, u.utilization, u.level) == (
        100.0, 50.0, 1.2, LimitLevel.BREACH)
    assert u.inputs["realized_vol"] == 1.0 and u.inputs["factor"] == 0.5
    outs = drive(logic, [exp(100, 60.0, vol_by_underlying={"BTC": 10.0})])
    assert next(o for o in outs if isinstance(o, Utilization)).effective_limit == 25.0
    outs = drive(logic, [exp(200, 60.0)])
    u = next(o for o in outs if isinstance(o, Utilization))
    assert (u.effective_limit, u.inputs["vol_known"]) == (100.0, 0.0)


def test_manual_reset_latch_holds_breach_until_signed_reset() -> None:
    """A latched limit stays breached after exposure falls, until reset_latch arrives."""
    logic = LimitsLogic(cfg(manual_reset=True))
    drive(logic, [exp(0, 150.0)])
    outs = drive(logic, [exp(100, 10.0)])
    assert levels(outs) == ["breach"] and next(
        o for o in outs if isinstance(o, Utilization)).latched
    outs = drive(logic, [update(reset_latch=True)])
    assert [o.kind for o in outs if isinstance(o, RiskAlert)] == ["limit_update_accepted"]
    assert levels(outs) == ["ok"]
    assert [o.level.value for o in outs if isinstance(o, LimitBreach)] == ["ok"]


def test_turning_manual_reset_off_does_not_lift_a_latch_already_set() -> None:
    """An update that only sets manual_reset = false leaves the latched breach as it is
    (its audit says no latch was reset); the limit stays breached until reset_latch."""
    logic = LimitsLogic(cfg(manual_reset=True))
    drive(logic, [exp(0, 150.0), exp(100, 10.0)])
    outs = drive(logic, [update(manual_reset=False)])
    (accepted,) = [o for o in outs if isinstance(o, RiskAlert)]
    assert accepted.details["latch_reset"] == "False"
    assert levels(drive(logic, [exp(200, 10.0)])) in ([], ["breach"])
    assert not [o for o in drive(logic, [exp(300, 10.0)]) if isinstance(o, LimitBreach)]
    outs = drive(logic, [update(update_id="u2", reset_latch=True)])
    assert [o.level.value for o in outs if isinstance(o, LimitBreach)] == ["ok"]


def test_accepted_update_changes_limit_and_audits_old_and_new_values() -> None:
    """Limit 100 -> 200 is audited with both values and used from then on."""
    logic = LimitsLogic(cfg())
    drive(logic, [exp(0, 150.0)])
    outs = drive(logic, [update(limit=200.0, reason="raise for event")])
    (a,) = [o for o in outs if isinstance(o, RiskAlert)]
    assert (a.kind, a.details["old_limit"], a.details["new_limit"]) == (
        "limit_update_accepted", 100.0, 200.0)
    outs = drive(logic, [exp(100, 160.0)])
    u = next(o for o in outs if isinstance(o, Utilization))
    assert (u.effective_limit, u.level) == (200.0, LimitLevel.WARN)
    assert drive(logic, [update(limit=1.0)]) == []  # same update_id replayed


def test_an_unchanged_utilization_repeats_only_at_the_heartbeat() -> None:
    """Every interval while the exposure moves; an exact repeat waits for the heartbeat,
    then goes out once; a level change is never held back."""
    logic = LimitsLogic(msgspec.structs.replace(cfg(), utilization_heartbeat_ns=1_000))
    sent = [u.ts for t, g in [(0, 50.0), (100, 55.0), (200, 55.0), (900, 55.0),
                              (1_100, 55.0), (1_200, 55.0), (1_300, 85.0)]
            for u in drive(logic, [exp(t, g)]) if isinstance(u, Utilization)]
    assert sent == [0, 100, 1_100, 1_300]
    every = LimitsLogic(msgspec.structs.replace(cfg(), utilization_heartbeat_ns=0))
    assert [len(drive(every, [exp(t, 50.0)])) for t in (0, 100, 200)] == [1, 1, 1]
    with pytest.raises(ConfigError, match="utilization_heartbeat_ns"):
        msgspec.structs.replace(cfg(), utilization_heartbeat_ns=-1).validate()


def test_invalid_update_values_are_rejected_and_the_old_limit_stays() -> None:
    """A warn level above 1 is rejected with a reason; the limit is unchanged."""
    logic = LimitsLogic(cfg())
    outs = drive(logic, [update(update_id="u2", warn=2.0)])
    assert [(o.kind, o.details["reason"]) for o in outs if isinstance(o, RiskAlert)] == [
        ("limit_update_rejected", "invalid_update")]
    assert logic.current_spec("counterparty.okx", "gross_notional") == LimitSpec(limit=100.0)


def test_route_update_rejects_bad_paths_and_kinds() -> None:
    """Malformed limit paths and unknown kinds never reach the keyed state."""
    assert route_update(update(), 0)[0] == "okx"
    assert route_update(update(limit_path="firm.asset.BTC", kind="delta"), 0)[0] == "*"
    bad = route_update(update(limit_path="desk.x"), 0)
    assert isinstance(bad, RiskAlert) and bad.details["reason"] == "bad_path"
    bad = route_update(update(kind="vibes"), 0)
    assert isinstance(bad, RiskAlert) and bad.details["reason"] == "bad_kind"


def test_limit_config_errors_name_the_key() -> None:
    """A negative limit is a ConfigError naming the counterparty and kind."""
    bad = LimitsConfig(counterparties={"okx": CounterpartyLimits(
        limits={"gross_notional": LimitSpec(limit=-5.0)})})
    with pytest.raises(ConfigError, match=r"counterparties.okx.limits.gross_notional.limit"):
        bad.validate()


# ------------------------------------------------- trust-file verifier


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> Verifier:
    """The real verifier over a root-signed trust file written to disk."""
    trust, roots = write_signed_trust(Path(tmp_path_factory.mktemp("trust")))
    return trust_verifier(TrustStore.load(trust, RootSet.load(roots)), AUD)


def fresh(**kw: object) -> LimitUpdate:
    return update(issued_at=T0, expires_at=T0 + 60 * S, **kw)


def test_trust_verifier_accepts_a_limit_admin_signature(verifier: Verifier) -> None:
    """A limit update signed by the trust file's limit-admin key verifies to the update."""
    env = sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(limit=7.0)), [ADMIN])
    approved = verifier(env, T0 + S)
    assert isinstance(approved, Approved)
    upd = approved.update
    assert (upd.limit_path, upd.kind, upd.limit) == ("counterparty.okx", "gross_notional", 7.0)
    assert (approved.approvers, approved.cap) == (1, 1_000_000.0)


def _forged(p: bytes) -> SignedEnvelope:
    real = sign_envelope(PAYLOAD_LIMIT_UPDATE, p, [OUTSIDER]).signatures[0]
    admin_id = sign_envelope(PAYLOAD_LIMIT_UPDATE, p, [ADMIN]).signatures[0].key_id
    return SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, payload=p,
                          signatures=[Signature(key_id=admin_id, sig=real.sig)])


def _tampered(p: bytes) -> SignedEnvelope:
    sigs = sign_envelope(PAYLOAD_LIMIT_UPDATE, p, [ADMIN]).signatures
    return SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, payload=p + b" ", signatures=sigs)


def _signed_by(signer: Signer, payload_type: str = PAYLOAD_LIMIT_UPDATE) -> Callable[
        [bytes], SignedEnvelope]:
    return lambda p: sign_envelope(payload_type, p, [signer])


@pytest.mark.parametrize(
    ("make", "issuer", "reason"),
    [
        (lambda p: SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, payload=p, signatures=[]),
         "limits-admin", "unsigned"),
        (_forged, "limits-admin", "bad_signature"),
        (_signed_by(OUTSIDER), "mallory", "unknown_key"),
        (_signed_by(OP1), "op-alice", "role_not_permitted"),
        (_signed_by(ENGINE), "engine-1", "role_not_permitted"),
        (_signed_by(ADMIN, "application/json"), "limits-admin", "wrong_payload_type"),
        (_tampered, "limits-admin", "bad_signature"),
    ],
    ids=["unsigned", "forged", "unknown-key", "operator-role", "engine-role", "wrong-type",
         "tampered"],
)
def test_trust_verifier_rejects_unsigned_forged_and_wrong_role(
    verifier: Verifier, make: Callable[[bytes], SignedEnvelope], issuer: str, reason: str
) -> None:
    """Each way an update envelope can be bad raises VerificationError with its reason."""
    with pytest.raises(VerificationError) as info:
        verifier(make(encode(fresh(limit=7.0, issuer=issuer))), T0 + S)
    assert info.value.reason == reason


def test_trust_verifier_rejects_expired_updates(verifier: Verifier) -> None:
    """An update past expires_at (beyond the leeway) is refused as expired."""
    env = sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(limit=7.0)), [ADMIN])
    with pytest.raises(VerificationError) as info:
        verifier(env, T0 + 3600 * S)
    assert info.value.reason == "expired"


def test_rejected_update_in_the_flow_is_audited_and_the_old_limit_stays(
    verifier: Verifier,
) -> None:
    """Through enforce_limits: a forged update becomes a rejection alert, a signed one
    is accepted and audited, and only the accepted one changes the limit."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators.exposure.ops import enforce_limits

    good = sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(update_id="u9", limit=300.0)),
                         [ADMIN])
    bad = _signed_by(OP1)(encode(fresh(update_id="u8", limit=1e9, issuer="op-alice")))
    flow = Dataflow("limits_trust")
    exps = op.input("exp", flow, TestingSource([Exposure(
        counterparty="okx", ts=1, gross_notional=150.0, net_notional=150.0)]))
    upds = op.input("upd", flow, TestingSource([bad, good]))
    out = enforce_limits("limits", exps, upds, config=cfg(), verifier=verifier,
                         clock=lambda: T0 + S)
    alerts: list[RiskAlert] = []
    utils: list[Utilization] = []
    op.output("a", out.alerts, TestingSink(alerts))
    op.output("u", out.utilizations, TestingSink(utils))
    run_main(flow)
    kinds = sorted((a.kind, a.details.get("reason", "")) for a in alerts)
    assert kinds == [("limit_update_accepted", ""),
                     ("limit_update_rejected", "role_not_permitted")]
    assert {u.effective_limit for u in utils} <= {100.0, 300.0}
    assert 1e9 not in {u.effective_limit for u in utils}


def test_limits_set_by_updates_are_capped_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each limit a signed update sets beyond the configured ones is a row every exposure
    is evaluated against: past MAX_OVERRIDES an update naming a new one is rejected, one
    changing a limit already set still applies."""
    from riskguard.operators.exposure import limits as limits_module

    monkeypatch.setattr(limits_module, "MAX_OVERRIDES", 2)
    logic = LimitsLogic(cfg())
    paths = [f"counterparty.okx.instrument.I{n}" for n in range(3)]
    outs = [drive(logic, [update(update_id=f"u{n}", limit_path=p, limit=10.0)])
            for n, p in enumerate(paths)]
    kinds = [[(o.kind, o.details.get("reason")) for o in out if isinstance(o, RiskAlert)]
             for out in outs]
    assert kinds[0] == kinds[1] == [("limit_update_accepted", None)]
    assert kinds[2] == [("limit_update_rejected", "too_many_overrides")]
    again = drive(logic, [update(update_id="u9", limit_path=paths[0], limit=20.0)])
    assert [o.kind for o in again if isinstance(o, RiskAlert)] == ["limit_update_accepted"]
    assert logic.current_spec(paths[0], "gross_notional").limit == 20.0  # type: ignore[union-attr]


def test_updates_open_limits_keys_for_a_bounded_number_of_counterparties(
    verifier: Verifier,
) -> None:
    """Through enforce_limits with the trust file's verifier: a limit-admin key naming
    ever new counterparties opens limits keys for the first MAX_UPDATED_COUNTERPARTIES;
    each one past the cap is a rejection alert and a dead letter, while the firm, a
    configured counterparty and an admitted one still take updates."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators.exposure.limit_updates import MAX_UPDATED_COUNTERPARTIES
    from riskguard.operators.exposure.ops import enforce_limits
    from riskguard.schemas import DeadLetter

    def signed(n: int, path: str, kind: str = "gross_notional") -> SignedEnvelope:
        return sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(
            update_id=f"u{n}", limit_path=path, limit=50.0, kind=kind)), [ADMIN])

    cap = MAX_UPDATED_COUNTERPARTIES
    envs = [signed(n, f"counterparty.junk{n}") for n in range(cap + 2)]
    envs += [signed(cap + 2, "firm"), signed(cap + 3, "counterparty.okx"),
             signed(cap + 4, "counterparty.junk0.asset.BTC", "delta")]
    flow = Dataflow("limits_cap")
    exps = op.input("exp", flow, TestingSource([Exposure(
        counterparty="okx", ts=1, gross_notional=1.0, net_notional=1.0)]))
    out = enforce_limits("limits", exps, op.input("upd", flow, TestingSource(envs)),
                         config=cfg(), verifier=verifier, clock=lambda: T0 + S)
    alerts: list[RiskAlert] = []
    dead: list[DeadLetter] = []
    op.output("a", out.alerts, TestingSink(alerts))
    op.output("d", out.errs, TestingSink(dead))
    run_main(flow)
    rejected = [a for a in alerts if a.kind == "limit_update_rejected"]
    assert [(a.details["reason"], a.scope.value) for a in rejected] == [
        ("too_many_counterparties", f"junk{cap}"), ("too_many_counterparties", f"junk{cap + 1}")]
    accepted = {a.evidence_ids[0] for a in alerts if a.kind == "limit_update_accepted"}
    assert accepted == {f"u{n}" for n in range(cap)} | {f"u{n}" for n in (cap + 2, cap + 3,
                                                                           cap + 4)}
    assert [(d.reason, d.found, d.step) for d in dead] == [
        ("too_many_counterparties", f"junk{n}", "verify_limit_update") for n in (cap, cap + 1)]
    assert all(d.raw for d in dead)


@pytest.mark.parametrize(("change", "needs_two"), [
    ({"limit": 900_000.0}, False),
    ({"limit": 2_000_000.0}, True),
    ({"limit": 600_000.0, "vol_scaling": {"ref_vol": 0.6, "lo": 0.5, "hi": 2.0}}, True),
    ({"vol_scaling": {"ref_vol": 0.6, "lo": 1000.0, "hi": 1000.0}}, True),
    ({"vol_scaling": {"ref_vol": 0.6, "lo": 0.25, "hi": 1.0}}, False),
], ids=["under-cap", "over-cap", "factor-over-cap", "factor-alone", "factor-tightens"])
def test_a_raise_past_the_two_person_cap_needs_two_people_whatever_carries_it(
    verifier: Verifier, change: dict[str, object], needs_two: bool,
) -> None:
    """The trust file's limit_cap (1,000,000): one limit-admin key cannot raise a limit
    past it, neither by the limit itself nor by a volatility factor allowed above 1
    (vol_scaling.hi), which multiplies the limit it scales. The verifier passes on the
    approvals and the cap; the limits, which know the limit in force, decide."""
    env = sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(**change)), [ADMIN])
    approved = verifier(env, T0 + S)
    assert isinstance(approved, Approved)
    assert (approved.approvers, approved.cap) == (1, 1_000_000.0)
    logic = LimitsLogic(LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=5_000.0, vol_scaling=VolScaling(
            underlying="BTC", ref_vol=0.6))})}))
    [alert] = [o for o in logic.on_event(approved) if isinstance(o, RiskAlert)]
    assert alert.details.get("reason") == ("two_person_required" if needs_two else None)


def test_a_replayed_update_is_refused_until_it_expires(verifier: Verifier) -> None:
    """The gate remembers each accepted update (its signer and id) until it expires, not
    for a count: a replay of a raise after 2,000 other updates is still refused, and is
    a dead letter; an older seq of a signer that numbers its updates is refused too."""
    from riskguard.operators.exposure.limit_updates import UpdateGate
    from riskguard.schemas import DeadLetter

    gate = UpdateGate(cfg(), verifier, clock=lambda: T0 + S)

    def send(**kw: object) -> list[object]:
        return gate.on_event(sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(**kw)), [ADMIN]))

    raise_ = sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(fresh(update_id="raise", limit=9e5)),
                           [ADMIN])
    assert [type(o) for o in gate.on_event(raise_)] == [tuple]
    for n in range(2_000):
        send(update_id=f"filler{n}", limit=100.0)
    refused = gate.on_event(raise_)
    assert [type(o) for o in refused] == [RiskAlert, DeadLetter]
    assert refused[0].details["reason"] == "replayed_update_id"  # type: ignore[attr-defined]
    assert [type(o) for o in send(update_id="s5", seq=5, limit=1.0)] == [tuple]
    stale = send(update_id="s3", seq=3, limit=1.0)
    assert stale[0].details["reason"] == "replayed_seq"  # type: ignore[attr-defined]


def test_one_signer_s_update_id_does_not_use_up_another_s() -> None:
    """Update ids are each signer's own, at the gate and at the limits: an update of
    another key carrying the same id is not a replay of it, and both apply."""
    from riskguard.operators.exposure.limit_updates import UpdateGate

    def decoded(env: SignedEnvelope, now: int) -> LimitUpdate:  # the trust file is not the point
        return msgspec.json.decode(env.payload, type=LimitUpdate)

    gate, logic = UpdateGate(cfg(), decoded, clock=lambda: 0), LimitsLogic(cfg())
    accepted = []
    for issuer, limit in (("adm-mallory", 1.0), ("adm-bob", 50.0)):
        env = SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, signatures=[], payload=encode(
            update(update_id="same", issuer=issuer, limit=limit)))
        [(_key, upd)] = gate.on_event(env)
        accepted += [o.kind for o in drive(logic, [upd]) if isinstance(o, RiskAlert)]
    assert accepted == ["limit_update_accepted"] * 2
    assert logic.current_spec("counterparty.okx", "gross_notional").limit == 50.0  # type: ignore[union-attr]


def test_two_updates_under_the_cap_alone_cannot_raise_a_limit_past_it_together() -> None:
    """The two-person cap (5e6) is checked against the limit an update leaves in force,
    with what earlier updates set: a factor allowed up to 5e6 on a limit of 1, then the
    limit raised to 5e6, each under the cap alone, would let the limit reach 2.5e13. The
    second is refused from one person and accepted from two."""
    cfgs = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=100.0, vol_scaling=VolScaling(
            underlying="BTC", ref_vol=0.6))})})
    logic = LimitsLogic(cfgs)

    def send(n: int, people: int, **kw: object) -> list[tuple[str, object]]:
        outs = drive(logic, [Approved(update(update_id=f"u{n}", **kw), people, 5e6)])
        return [(o.kind, o.details.get("reason")) for o in outs if isinstance(o, RiskAlert)]

    factor = {"ref_vol": 0.6, "lo": 0.25, "hi": 5e6}
    assert send(1, 1, limit=1.0, vol_scaling=factor) == [("limit_update_accepted", None)]
    assert send(2, 1, limit=5e6) == [("limit_update_rejected", "two_person_required")]
    assert send(3, 1, limit=2.0) == [("limit_update_rejected", "two_person_required")]
    assert send(4, 1, limit=0.5) == [("limit_update_accepted", None)]  # a cut
    assert send(5, 2, limit=5e6) == [("limit_update_accepted", None)]


def test_one_signer_s_flood_leaves_another_s_updates_alone(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The updates remembered against replay are counted per signer: one key past its
    quota is refused (too_many_updates), another's still apply; an update refused on its
    way (a bad kind) is not remembered, so it takes no place in the quota."""
    from riskguard.operators.exposure import limit_updates
    from riskguard.operators.exposure.limit_updates import UpdateGate

    monkeypatch.setattr(limit_updates, "MAX_REMEMBERED_UPDATES", 3)

    def decoded(env: SignedEnvelope, now: int) -> LimitUpdate:  # the trust file is not the point
        return msgspec.json.decode(env.payload, type=LimitUpdate)

    gate = UpdateGate(cfg(), decoded, clock=lambda: 0)

    def send(issuer: str, n: int, kind: str = "gross_notional") -> str:
        env = SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, signatures=[], payload=encode(
            update(update_id=f"{issuer}{n}", issuer=issuer, kind=kind, limit=1.0)))
        out = gate.on_event(env)[0]
        return "ok" if isinstance(out, tuple) else out.details["reason"]  # type: ignore[attr-defined]

    assert [send("mallory", n, "vibes") for n in range(5)] == ["bad_kind"] * 5
    assert [send("mallory", n) for n in range(4)] == ["ok", "ok", "ok", "too_many_updates"]
    assert send("bob", 0) == "ok"
