"""Limits that bad settings or extreme inputs cannot switch off or crash: the volatility
factor's range, limit paths read one way only, a concentration's share."""

from __future__ import annotations

import math

import pytest
from riskguard.config import decode_section
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
    vol_factor,
)
from riskguard.operators.exposure.limit_updates import Approved
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.schemas import Exposure, RiskAlert, Utilization
from test_limits import update

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
