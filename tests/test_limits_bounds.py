"""Limits that bad settings or extreme inputs cannot switch off or crash: the volatility
factor's range, limit paths read one way only, a concentration's share."""

from __future__ import annotations

import math

import pytest
from riskguard.operators.exposure.config import ExposureConfig
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
    concentration_levels,
    vol_factor,
)
from riskguard.operators.exposure.limit_updates import (
    Approved,
    UpdateGate,
    Verifier,
    trust_verifier,
)
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.exposure.rollup import FirmLogic
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE, Signer, sign_envelope
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import (
    DeadLetter,
    Exposure,
    LimitBreach,
    RiskAlert,
    SignedEnvelope,
    Utilization,
    encode,
)
from riskguard.schemas.signals import parse_limit_path
from signing_fixtures import ADMIN, AUD, T0, TWO_PERSON
from test_limits import S, update

from riskguard.config import decode_section
from riskguard.errors import ConfigError

VOLS = [0.0, 5e-324, 1e-300, 0.2, 1e300, math.inf, -1.0]
EXPONENTS = [-10.0, -1.0, 0.0, 0.5, 1.0, 10.0]


def _scaled(exponent: float = 1.0, lo: float = 0.25, hi: float = 1.5) -> LimitSpec:
    return LimitSpec(limit=100.0, vol_scaling=VolScaling(
        underlying="BTC", ref_vol=0.5, exponent=exponent, lo=lo, hi=hi))


@pytest.mark.parametrize("vol", VOLS)
@pytest.mark.parametrize("exponent", EXPONENTS)
def test_the_vol_factor_is_a_number_between_lo_and_hi_whatever_the_vol(
        vol: float, exponent: float) -> None:
    """(ref_vol / vol) ** exponent overflowed or divided by zero for a vol of 0, inf or
    1e-300; in log space it is clamped to [lo, hi] and never raises. A negative vol (no
    volatility at all) never loosens: the tightest factor, at most 1."""
    factor, inputs = vol_factor(_scaled(exponent), {"BTC": vol}, 1.0)
    assert 0.25 <= factor <= 1.5
    assert all(math.isfinite(v) for v in inputs.values())
    if vol < 0:
        assert factor == 0.25 and inputs["factor_unknown"] == 1.0


def test_the_vol_factor_follows_the_formula_where_it_can_be_computed() -> None:
    assert vol_factor(_scaled(2.0), {"BTC": 1.0}, 1.0)[0] == pytest.approx(0.25)
    assert vol_factor(_scaled(-1.0), {"BTC": 0.6}, 1.0)[0] == pytest.approx(1.2)
    assert vol_factor(_scaled(1.0, lo=0.1), {"BTC": 0.0}, 1.0)[0] == 1.5  # no vol: hi
    assert vol_factor(_scaled(-1.0, lo=0.1), {"BTC": 0.0}, 1.0)[0] == 0.1


def test_an_exponent_past_ten_stops_start_up_naming_the_key() -> None:
    table = {"counterparties": {"okx": {"limits": {"delta": {"limit": 1.0, "vol_scaling": {
        "underlying": "BTC", "ref_vol": 0.5, "exponent": 2000.0}}}}}}
    with pytest.raises(ConfigError) as err:
        decode_section(table, LimitsConfig, "limits")
    assert err.value.path == "limits.counterparties.okx.limits.delta.vol_scaling.exponent"
    built = LimitsConfig(counterparties={"okx": CounterpartyLimits(
        limits={"delta": _scaled(exponent=-11.0)})})
    with pytest.raises(ConfigError, match="exponent"):
        built.validate()


def test_a_signed_exponent_of_2000_is_refused_and_the_limits_run_on() -> None:
    """A one-person update that only tightens (hi 1.0) set exponent 2000: the next
    exposure raised OverflowError, and the snapshot kept it, so the flow crash-looped."""
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
        limits={"gross_notional": _scaled(hi=1.0)})})
    logic = LimitsLogic(cfg)

    def exposure(ts: int, gross: float) -> Exposure:
        return Exposure(counterparty="okx", ts=ts, gross_notional=gross, net_notional=gross,
                        vol_by_underlying={"BTC": 0.2})

    logic.on_event(exposure(1, 50.0))
    steep = update(vol_scaling={"ref_vol": 0.5, "exponent": 2000.0, "lo": 0.25, "hi": 1.0})
    [alert] = logic.on_event(Approved(steep, 1, 1e6))
    assert isinstance(alert, RiskAlert) and alert.details["reason"] == "invalid_update"
    assert "exponent" in str(alert.details["detail"])
    resumed = LimitsLogic(cfg, logic.snapshot())
    [util] = [o for o in resumed.on_event(exposure(2 * 10**9, 60.0)) if isinstance(o, Utilization)]
    assert util.effective_limit == 100.0


def test_a_configured_negative_exponent_with_an_infinite_vol_does_not_crash() -> None:
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
        limits={"gross_notional": _scaled(exponent=-1.0)})})
    outs = LimitsLogic(cfg).on_event(Exposure(
        counterparty="okx", ts=1, gross_notional=50.0, net_notional=50.0,
        vol_by_underlying={"BTC": math.inf}))
    [util] = [o for o in outs if isinstance(o, Utilization)]
    assert util.effective_limit == 150.0  # (0.5 / inf) ** -1 = inf: clamped to hi


# -- limit paths: one reading, for the limits and for the signature check alike --------

def _scoped_verifier(*scopes: str) -> Verifier:
    entries = [{"name": "limits-admin", "public_key": ADMIN.public_key.hex(),
                "role": "limit-admin", "actions": ["limit_update"], "scopes": list(scopes)}]
    trust = TrustStore(parse_trust(trust_doc_to_toml(entries, two_person=TWO_PERSON)))
    return trust_verifier(trust, AUD)


def _signed(path: str, uid: str, *signers: Signer, **kw: object) -> SignedEnvelope:
    upd = update(update_id=uid, issued_at=T0, expires_at=T0 + 60 * S, limit_path=path,
                 audience=AUD, **{"limit": 500.0, **kw})
    return sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(upd), list(signers))


DOTTED = LimitsConfig(counterparties={
    "okx": CounterpartyLimits(limits={"gross_notional": LimitSpec(limit=100.0)}),
    "okx.eu": CounterpartyLimits(limits={"gross_notional": LimitSpec(limit=100.0)})})


def test_a_key_scoped_to_okx_cannot_change_the_limits_of_okx_eu() -> None:
    """The scope label was built from the path's second dotted part: a key scoped to
    counterparty:okx passed for counterparty.okx.eu, whose limits the limits (reading
    the rest of the path as the counterparty) then changed."""
    gate = UpdateGate(DOTTED, _scoped_verifier("counterparty:okx"), clock=lambda: T0 + S)
    refused = gate.on_event(_signed("counterparty.okx.eu", "x1", ADMIN))
    assert [type(o) for o in refused] == [RiskAlert, DeadLetter]
    assert refused[0].details["reason"] == "scope_not_authorized"  # type: ignore[union-attr]
    assert [o[0] for o in gate.on_event(_signed("counterparty.okx", "x2", ADMIN))] == ["okx"]
    eu = UpdateGate(DOTTED, _scoped_verifier("counterparty:okx.eu"), clock=lambda: T0 + S)
    assert [o[0] for o in eu.on_event(_signed("counterparty.okx.eu.asset.BTC", "x3", ADMIN,
                                             kind="delta"))] == ["okx.eu"]


@pytest.mark.parametrize("path", ["counterparty.okx.asset.BTC.instrument.X",
                                  "counterparty.a.instrument.b.asset.c", "counterparty.okx.asset.",
                                  "firm.asset.A.asset.B", "limits.okx"])
def test_a_path_that_reads_more_than_one_way_is_refused_before_any_limit(path: str) -> None:
    gate = UpdateGate(DOTTED, _scoped_verifier("*"), clock=lambda: T0 + S)
    refused = gate.on_event(_signed(path, "amb", ADMIN))
    assert [type(o) for o in refused] == [RiskAlert, DeadLetter]
    assert refused[0].details["reason"] == "bad_scope"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        parse_limit_path(path)


@pytest.mark.parametrize(("table", "key"), [
    ({"counterparties": {"okx.asset.BTC": {}}}, "limits.counterparties.okx.asset.BTC"),
    ({"counterparties": {"okx": {"instruments": {"A.asset.B": {}}}}},
     "limits.counterparties.okx.instruments.A.asset.B"),
    ({"firm_assets": {"X.instrument.Y": {}}}, "limits.firm_assets.X.instrument.Y"),
])
def test_a_configured_name_whose_path_reads_another_way_stops_start_up(
        table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_section(table, LimitsConfig, "limits").validate("limits")
    assert err.value.path == key


def test_an_unknown_counterparty_whose_name_reads_as_a_path_is_its_own_key() -> None:
    """Counterparty names come from the input: one named like a path is evaluated (its
    zero limits breach) as itself, never raising."""
    outs = LimitsLogic(DOTTED).on_event(Exposure(counterparty="x.asset.y", ts=1,
                                                 gross_notional=5.0, net_notional=5.0))
    utils = [o for o in outs if isinstance(o, Utilization)]
    assert utils and all(u.scope.value == "x.asset.y" for u in utils)
    assert [u.level.value for u in utils if u.kind == "gross_notional"] == ["breach"]


# -- limit kinds: only what each level of the hierarchy can measure --------------------

@pytest.mark.parametrize(("table", "key"), [
    ({"instruments": {"BTC-C": {"delta": {"limit": 100.0}}}}, "instruments.BTC-C.delta"),
    ({"instruments": {"BTC-C": {"concentration": {"limit": 0.5}}}},
     "instruments.BTC-C.concentration"),
    ({"instruments": {"BTC-C": {"open_order_notional": {"limit": 1.0}}}},
     "instruments.BTC-C.open_order_notional"),
    ({"assets": {"BTC": {"collateral": {"limit": 100.0}}}}, "assets.BTC.collateral"),
    ({"assets": {"BTC": {"gross_notional": {"limit": 100.0}}}}, "assets.BTC.gross_notional"),
])
def test_a_limit_kind_its_level_cannot_measure_stops_start_up(
        table: dict[str, object], key: str) -> None:
    """Below the counterparty an instrument delta limit measured the position's notional
    and an instrument concentration limit breached at 20x: the exposure carries no such
    amount per instrument (or asset), so the config is refused naming the key."""
    cfg = decode_section({"counterparties": {"okx": table}}, LimitsConfig, "limits")
    with pytest.raises(ConfigError) as err:
        cfg.validate("limits")
    assert err.value.path == f"limits.counterparties.okx.{key}"


def test_the_kinds_each_level_measures_are_what_they_say() -> None:
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
        instruments={"BTC-C": {"gross_notional": LimitSpec(limit=100.0),
                               "net_notional": LimitSpec(limit=100.0)}},
        assets={"BTC": {"delta": LimitSpec(limit=1000.0),
                        "net_notional": LimitSpec(limit=100.0)}})})
    cfg.validate()
    outs = LimitsLogic(cfg).on_event(Exposure(
        counterparty="okx", ts=1, gross_notional=10.0, net_notional=-10.0,
        instruments=["BTC-C"], instrument_notionals=[-10.0],
        delta_by_underlying={"BTC": 900.0}, notional_by_asset={"BTC": -10.0}))
    measured = {(u.limit_path, u.kind): u.exposure for u in outs if isinstance(u, Utilization)}
    assert measured == {
        ("counterparty.okx.instrument.BTC-C", "gross_notional"): 10.0,
        ("counterparty.okx.instrument.BTC-C", "net_notional"): 10.0,
        ("counterparty.okx.asset.BTC", "delta"): 900.0,
        ("counterparty.okx.asset.BTC", "net_notional"): 10.0}


@pytest.mark.parametrize(("path", "kind"), [
    ("counterparty.okx.instrument.BTC-C", "delta"),
    ("counterparty.okx.instrument.BTC-C", "concentration"),
    ("counterparty.okx.asset.BTC", "open_order_notional"),
    ("firm.asset.BTC", "collateral"),
])
def test_an_update_setting_a_kind_its_level_cannot_measure_is_refused(
        path: str, kind: str) -> None:
    logic = LimitsLogic(DOTTED)
    [alert] = logic.on_event(Approved(update(limit_path=path, kind=kind, limit=0.5), 1, None))
    assert isinstance(alert, RiskAlert)
    assert alert.details["reason"] == "invalid_update"
    assert logic.current_spec(path, kind) is None
    gate = UpdateGate(DOTTED, _scoped_verifier("*"), clock=lambda: T0 + S)
    [refused] = gate.on_event(_signed(path, "k1", ADMIN, kind=kind, limit=0.5))
    assert isinstance(refused, RiskAlert) and refused.details["reason"] == "bad_kind"


# -- the two-person rule on limits: judged where the limit in force is known -----------

ADMIN2 = Signer.from_private_bytes(b"\x07" * 32, issuer="limits-admin-2")


def _two_admin_verifier(**two_person: object) -> Verifier:
    entries = [{"name": name, "public_key": key.public_key.hex(), "role": "limit-admin",
                "actions": ["limit_update"], "scopes": ["*"]}
               for name, key in (("limits-admin", ADMIN), ("limits-admin-2", ADMIN2))]
    rule = {"actions": ["resume"], "scopes": ["firm:*"], **two_person}
    return trust_verifier(TrustStore(parse_trust(trust_doc_to_toml(entries, two_person=rule))),
                          AUD)


class _Guard:
    """The gate and the limits, as the guard chains them: a signed update in, the
    limits' verdict out."""

    def __init__(self, cfg: LimitsConfig, verifier: Verifier) -> None:
        self.gate = UpdateGate(cfg, verifier, clock=lambda: T0 + S)
        self.logic = LimitsLogic(cfg)
        self.n = 0

    def send(self, kind: str, limit: float, *signers: Signer) -> str:
        self.n += 1
        out = self.gate.on_event(_signed("counterparty.okx", f"v{self.n}", *signers,
                                         kind=kind, limit=limit, issuer=signers[0].issuer))
        if not isinstance(out[0], tuple):
            return f"gate:{out[0].details['reason']}"  # type: ignore[union-attr]
        [alert] = [o for o in self.logic.on_event(out[0][1]) if isinstance(o, RiskAlert)]
        return alert.details.get("reason") or "accepted"  # type: ignore[return-value]


def test_one_admin_may_cut_a_limit_set_above_the_cap_but_not_raise_one_past_it() -> None:
    """The trust verifier judged an update alone against limit_cap (1,000,000), so one
    admin could not even cut a limit configured at 5,000,000 to 2,000,000. The limits,
    which know the limit in force, judge it: a cut needs one person, a rise past the cap
    above where the limit stood needs two, however it is carried."""
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=5_000_000.0)})})
    guard = _Guard(cfg, _two_admin_verifier(limit_cap=1_000_000.0))
    assert guard.send("gross_notional", 2_000_000.0, ADMIN) == "accepted"
    assert guard.send("gross_notional", 4_000_000.0, ADMIN) == "two_person_required"
    assert guard.send("gross_notional", 4_000_000.0, ADMIN, ADMIN2) == "accepted"
    assert guard.send("gross_notional", 900_000.0, ADMIN2) == "accepted"
    assert guard.send("gross_notional", 1_000_000.0, ADMIN2) == "accepted"  # up to the cap
    assert guard.send("gross_notional", 1_000_001.0, ADMIN) == "two_person_required"
    assert guard.logic.current_spec("counterparty.okx", "gross_notional").limit == 1e6  # type: ignore[union-attr]


def test_listing_limit_update_among_the_two_person_actions_makes_every_update_two_people(
) -> None:
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=5_000_000.0)})})
    guard = _Guard(cfg, _two_admin_verifier(actions=["limit_update"],
                                            scopes=["counterparty:okx"]))
    assert guard.send("gross_notional", 1.0, ADMIN) == "gate:two_person_required"
    assert guard.send("gross_notional", 1.0, ADMIN, ADMIN2) == "accepted"


def test_a_concentration_limit_is_a_share_and_its_raise_is_judged_against_a_share_cap(
) -> None:
    """A concentration limit accepted 7.0, and a one-person update to 5.0 switched it off:
    the two-person cap is an amount (1,000,000). It is a share (at most 1), and a raise
    past concentration_cap needs two people."""
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "concentration": LimitSpec(limit=0.6)})})
    guard = _Guard(cfg, _two_admin_verifier(limit_cap=1_000_000.0, concentration_cap=0.7))
    assert guard.send("concentration", 5.0, ADMIN) == "invalid_update"
    assert guard.send("concentration", 0.65, ADMIN) == "accepted"
    assert guard.send("concentration", 0.8, ADMIN) == "two_person_required"
    assert guard.send("concentration", 0.8, ADMIN, ADMIN2) == "accepted"
    assert guard.send("concentration", 0.5, ADMIN) == "accepted"
    with pytest.raises(ConfigError) as err:
        decode_section({"counterparties": {"okx": {"limits": {"concentration": {
            "limit": 7.0}}}}}, LimitsConfig, "limits").validate("limits")
    assert err.value.path == "limits.counterparties.okx.limits.concentration.limit"


def test_with_an_amount_cap_and_no_share_cap_any_concentration_raise_needs_two() -> None:
    cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(limits={
        "concentration": LimitSpec(limit=0.6)})})
    guard = _Guard(cfg, _two_admin_verifier(limit_cap=1_000_000.0))
    assert guard.send("concentration", 0.61, ADMIN) == "two_person_required"
    assert guard.send("concentration", 0.4, ADMIN) == "accepted"
    assert guard.send("concentration", 1.0, ADMIN, ADMIN2) == "accepted"


# -- concentration: a quiet counterparty pushed past its limit by the others ------------

def test_a_quiet_counterparty_pushed_past_its_concentration_limit_is_sent_again() -> None:
    """The firm rollup re-sent a quiet counterparty's share only when it moved by more
    than concentration_epsilon (0.05 here), so others shrinking a little at a time took
    it past its limit (0.6) unreported. Crossing a level of its limit sends it again."""
    limits = LimitsConfig(counterparties={
        "quiet": CounterpartyLimits(limits={"concentration": LimitSpec(limit=0.6)}),
        "busy": CounterpartyLimits()})
    levels = concentration_levels(limits)
    assert levels == {"quiet": (0.45, 0.48, 0.57, 0.6)}
    exposure_cfg = ExposureConfig(concentration_basis="gross_notional",
                                  concentration_epsilon=0.05)

    def breaches(firm: FirmLogic) -> list[int]:
        def exposure(cp: str, seq: int, gross: float) -> Exposure:
            return Exposure(counterparty=cp, ts=seq, seq=seq, gross_notional=gross,
                            net_notional=gross)

        sent = firm.on_batch([exposure("quiet", 1, 59.0), exposure("busy", 1, 41.0)])
        for seq in range(2, 12):  # busy shrinks by 0.7 a step: quiet's share rises
            sent += firm.on_batch([exposure("busy", seq, 41.0 - 0.7 * (seq - 1))])
        logic = LimitsLogic(limits)
        return [o.ts for e in sent if e.counterparty == "quiet" for o in logic.on_event(e)
                if isinstance(o, LimitBreach)]

    assert breaches(FirmLogic(exposure_cfg)) == []  # 0.59 -> 0.634: never 0.05 apart
    assert breaches(FirmLogic(exposure_cfg, concentration_levels=levels)) == [4]  # 0.6027
