"""Limits logic: levels, hysteresis, latches, fail-closed, dynamic limits, signed updates."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from riskguard.operators.keyring import (
    LIMIT_UPDATE_TYPE,
    LocalKeyring,
    sign_envelope,
)
from riskguard.operators.limits import (
    CounterpartyLimits,
    LimitsConfig,
    LimitsLogic,
    LimitSpec,
    VolScaling,
    drive,
    route_update,
)
from riskguard.schemas import (
    Audience,
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

from riskguard.errors import ConfigError, VerificationError

ADMIN = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TRADER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
RING = LocalKeyring({
    "admin": (ADMIN.public_key(), frozenset({"limit-admin"})),
    "trader": (TRADER.public_key(), frozenset({"trader"})),
})


def exp(ts: int, gross: float, cp: str = "okx", **kw: object) -> tuple[str, Exposure]:
    return ("exp", Exposure(counterparty=cp, ts=ts, gross_notional=gross, net_notional=gross,
                            evidence_ids=[f"e{ts}"], **kw))  # type: ignore[arg-type]


def cfg(**spec: object) -> LimitsConfig:
    return LimitsConfig(
        counterparties={"okx": CounterpartyLimits(
            limits={"gross_notional": LimitSpec(limit=100.0, **spec)})},  # type: ignore[arg-type]
        utilization_interval_ns=10,
    )


def levels(outs: list[object]) -> list[str]:
    return [o.level.value for o in outs if isinstance(o, Utilization)]


def update(**kw: object) -> LimitUpdate:
    base: dict[str, object] = dict(
        update_id="u1", issuer="ops", issued_at=5, expires_at=10**18,
        audience=Audience(env="test", topic="limits"), limit_path="counterparty.okx",
        kind="gross_notional")
    base.update(kw)
    return LimitUpdate(**base)  # type: ignore[arg-type]


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
    outs = drive(logic, [("upd", update(reset_latch=True))])
    assert [o.kind for o in outs if isinstance(o, RiskAlert)] == ["limit_update_accepted"]
    assert levels(outs) == ["ok"]
    assert [o.level.value for o in outs if isinstance(o, LimitBreach)] == ["ok"]


def test_accepted_update_changes_limit_and_audits_old_and_new_values() -> None:
    """Limit 100 -> 200 is audited with both values and used from then on."""
    logic = LimitsLogic(cfg())
    drive(logic, [exp(0, 150.0)])
    outs = drive(logic, [("upd", update(limit=200.0, reason="raise for event"))])
    (a,) = [o for o in outs if isinstance(o, RiskAlert)]
    assert (a.kind, a.details["old_limit"], a.details["new_limit"]) == (
        "limit_update_accepted", 100.0, 200.0)
    outs = drive(logic, [exp(100, 150.0)])
    u = next(o for o in outs if isinstance(o, Utilization))
    assert (u.effective_limit, u.level) == (200.0, LimitLevel.WARN)
    assert drive(logic, [("upd", update(limit=1.0))]) == []  # same update_id replayed


def test_invalid_update_values_are_rejected_and_the_old_limit_stays() -> None:
    """A warn level above 1 is rejected with a reason; the limit is unchanged."""
    logic = LimitsLogic(cfg())
    outs = drive(logic, [("upd", update(update_id="u2", warn=2.0))])
    assert [(o.kind, o.details["reason"]) for o in outs if isinstance(o, RiskAlert)] == [
        ("limit_update_rejected", "invalid_update")]
    assert logic.current_spec("counterparty.okx", "gross_notional") == LimitSpec(limit=100.0)


def test_route_update_rejects_bad_paths_and_kinds() -> None:
    """Malformed limit paths and unknown kinds never reach the keyed state."""
    assert route_update(update(), 0)[0] == "okx"  # type: ignore[index]
    assert route_update(update(limit_path="firm.asset.BTC", kind="delta"), 0)[0] == "*"  # type: ignore[index]
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


# ----------------------------------------------------------------- keyring


def test_keyring_accepts_limit_admin_signature() -> None:
    """A limit-admin signature over the PAE verifies and returns the update."""
    env = sign_envelope(ADMIN, "admin", LIMIT_UPDATE_TYPE, encode(update(limit=7.0)))
    assert RING(env, 6).limit == 7.0


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: SignedEnvelope(payload_type=LIMIT_UPDATE_TYPE, payload=p, signatures=[]),
         "unsigned"),
        (lambda p: sign_envelope(STRANGER, "admin", LIMIT_UPDATE_TYPE, p), "bad_signature"),
        (lambda p: sign_envelope(TRADER, "trader", LIMIT_UPDATE_TYPE, p), "wrong_role"),
        (lambda p: sign_envelope(ADMIN, "admin", "application/json", p), "wrong_payload_type"),
        (lambda p: SignedEnvelope(
            payload_type=LIMIT_UPDATE_TYPE, payload=p + b" ",
            signatures=sign_envelope(ADMIN, "admin", LIMIT_UPDATE_TYPE, p).signatures),
         "bad_signature"),
        (lambda p: SignedEnvelope(
            payload_type=LIMIT_UPDATE_TYPE, payload=p,
            signatures=[Signature(key_id="admin", sig=b"\x00" * 64)]), "bad_signature"),
    ],
    ids=["unsigned", "forged", "wrong-role", "wrong-type", "tampered", "zero-sig"],
)
def test_keyring_rejects_unsigned_forged_and_wrong_role(make, reason) -> None:  # type: ignore[no-untyped-def]
    """Each way an envelope can be bad raises VerificationError with its reason code."""
    with pytest.raises(VerificationError) as info:
        RING(make(encode(update(limit=7.0))), 6)
    assert info.value.reason == reason


def test_keyring_rejects_expired_updates() -> None:
    """An update past expires_at is refused as expired."""
    env = sign_envelope(ADMIN, "admin", LIMIT_UPDATE_TYPE, encode(update(expires_at=6)))
    with pytest.raises(VerificationError, match="expired"):
        RING(env, 6)
