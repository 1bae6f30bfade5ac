"""The limits' configuration: each limit's spec, the tables that hold them, and the
level a utilization reaches.

>>> s = LimitSpec(limit=100.0, warn=0.8)
>>> level_of(0.85, LimitLevel.OK, s).value
'warn'
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import msgspec
from riskguard.operators.exposure.config import NS_PER_S
from riskguard.operators.exposure.instruments import InstrumentsConfig
from riskguard.schemas import LimitLevel
from riskguard.schemas.signals import parse_limit_path

from riskguard.errors import ConfigError
from riskguard.validation import (
    MAX_FLOAT,
    Fraction,
    Nanoseconds,
    NonNegative,
    Positive,
    PositiveFinite,
    Share,
    check_declared,
    did_you_mean,
)

LimitKind = Literal["gross_notional", "net_notional", "delta", "collateral", "concentration",
                   "open_order_notional"]
KINDS: tuple[str, ...] = get_args(LimitKind)
LEVEL_KINDS: dict[str, tuple[str, ...]] = {
    "firm": KINDS, "cp": KINDS,
    "asset": ("net_notional", "delta"),  # the asset's net notional, its underlying's delta
    "instrument": ("gross_notional", "net_notional"),  # the position's notional, both
}
"""The limit kinds an exposure carries what is needed to measure, at each level of the
hierarchy (``parse_limit_path``'s levels); a limit of another kind is refused."""
LEVEL_ORDER = {LimitLevel.OK: 0, LimitLevel.WARN: 1, LimitLevel.BREACH: 2, LimitLevel.HARD: 3}
"""The levels from lowest to highest."""
UNVALUED_GRACE_NS = 30 * NS_PER_S
MAX_VOL_EXPONENT = 10.0
"""The largest magnitude a volatility scaling's ``exponent`` may have: (ref_vol / vol) to
the 10th already moves a limit a thousandfold for a doubled volatility."""


class VolScaling(msgspec.Struct, frozen=True, kw_only=True):
    """``factor = clamp((ref_vol / vol) ** exponent, lo, hi)``; vol of ``underlying``."""

    underlying: str  # the asset whose realized volatility scales the limit
    # the annualized volatility at which the limit is its base value (0.6: 60 %)
    ref_vol: PositiveFinite
    # how strongly the limit follows the volatility: factor = (ref_vol / vol) ^ exponent;
    # -10 to 10
    exponent: Annotated[float, msgspec.Meta(ge=-MAX_VOL_EXPONENT, le=MAX_VOL_EXPONENT)] = 1.0
    lo: Positive = 0.25  # the factor is never below this ...
    hi: PositiveFinite = 1.0  # ... nor above this (1.0: volatility only ever tightens the limit)


class LimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One limit. ``warn`` and ``hard`` are utilization levels (breach is 1.0).

    ``unvalued_grace_ns``: how long (event time) the exposure this limit measures may
    stay unvalued (no mark or FX rate for a position or collateral it counts) before the
    limit is breached; 0: at once.
    """

    # the limit, in the reporting currency (concentration: a share, 0 to 1, no more); utilization
    # 1.0 is a breach
    limit: NonNegative
    warn: Share = 0.8
    # a second level past the breach (utilization 1.0): 1.25 is 25 % over the limit; crossing
    # it emits a breach signal at level hard; unset: no such level
    hard: Annotated[float, msgspec.Meta(gt=1.0, le=MAX_FLOAT)] | None = None
    # how far utilization must fall below a level (warn, breach, hard) to leave it: with
    # warn 0.8, a warning clears below 0.75; less than warn
    hysteresis: Fraction = 0.05
    manual_reset: bool = False
    # makes the limit move with realized volatility: effective = limit * clamp((ref_vol / vol) ^
    # exponent, lo, hi)
    vol_scaling: VolScaling | None = None
    # how long (event time) the exposure may stay unvalued (no mark or FX rate for part of
    # it) before the limit is breached; 0: at once
    unvalued_grace_ns: Nanoseconds = UNVALUED_GRACE_NS


class CounterpartyLimits(msgspec.Struct, frozen=True, kw_only=True):
    # limit kind (gross_notional, net_notional, delta, collateral, concentration,
    # open_order_notional) -> its limit, on the counterparty's whole exposure
    limits: dict[LimitKind, LimitSpec] = {}
    # asset -> limit kind (net_notional: the asset's net notional, delta: its underlying's
    # delta) -> its limit, on the counterparty's exposure to that asset
    assets: dict[str, dict[LimitKind, LimitSpec]] = {}
    # instrument -> limit kind (gross_notional or net_notional: the position's notional) ->
    # its limit, on the counterparty's position in it
    instruments: dict[str, dict[LimitKind, LimitSpec]] = {}


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Configuration of ``enforce_limits``.

    A counterparty missing from ``counterparties`` fails closed: it gets a
    zero limit of each kind in ``unknown_counterparty_kinds`` (unvalued exposure
    breaches them at once) and an alert.
    ``utilization_interval_ns`` rate-limits utilization output per limit (in
    event time); level changes are always emitted. A utilization that would
    repeat the last one emitted for its limit exactly (the same exposure,
    effective limit and latch, so the same level) is held back until
    ``utilization_heartbeat_ns`` has passed since that one (0: repeats are
    emitted every interval). ``missing_vol_factor`` is the scaling factor used
    while no realized vol is known.
    """

    firm: dict[LimitKind, LimitSpec] = {}  # limit kind -> its limit, on the whole firm's exposure
    # asset -> limit kind (net_notional or delta) -> its limit, on the firm's exposure to
    # that asset
    firm_assets: dict[str, dict[LimitKind, LimitSpec]] = {}
    # counterparty -> its limits; one not listed fails closed (zero limits of
    # unknown_counterparty_kinds)
    counterparties: dict[str, CounterpartyLimits] = {}
    # a counterparty not in counterparties gets a zero limit of each of these kinds, so any
    # exposure to it breaches (it fails closed)
    unknown_counterparty_kinds: tuple[LimitKind, ...] = ("gross_notional", "collateral")
    utilization_interval_ns: Nanoseconds = 1_000_000_000
    # 0: no heartbeat, repeats every interval
    utilization_heartbeat_ns: Nanoseconds = 60_000_000_000
    missing_vol_factor: PositiveFinite = 1.0

    def validate(self, path: str = "limits") -> None:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, path)
        for p, level, kinds in self._tables(path):
            for kind, spec in kinds.items():
                problem = kind_problem(level, kind)
                if problem is not None:
                    raise ConfigError(f"{p}.{kind}", problem, kind)
                _check_across(f"{p}.{kind}", kind, spec)
        self._check_paths(path)

    def check_names(self, instruments: InstrumentsConfig, path: str = "limits") -> None:
        """Raise ``ConfigError`` naming the key of the first limit on an instrument, asset
        or volatility underlying ``instruments`` does not declare: it would measure 0 (or
        the missing-vol factor) for ever."""
        specs = instruments.instruments.values()
        underlyings = {s.underlying_asset for s in specs}
        assets = underlyings | {s.base for s in specs}
        checks: list[tuple[str, str, set[str], str]] = []
        for p, _level, kinds in self._tables(path):
            for kind, spec in kinds.items():
                vs = spec.vol_scaling
                if vs is not None:
                    checks.append((f"{p}.{kind}.vol_scaling.underlying", vs.underlying,
                                   underlyings, "an underlying"))
        checks += [(f"{path}.firm_assets.{a}", a, assets, "an asset")
                   for a in self.firm_assets]
        for cp, cl in self.counterparties.items():
            where = f"{path}.counterparties.{cp}"
            checks += [(f"{where}.assets.{a}", a, assets, "an asset") for a in cl.assets]
            checks += [(f"{where}.instruments.{i}", i, set(instruments.instruments),
                        "an instrument") for i in cl.instruments]
        for where, name, known, what in checks:
            if name not in known:
                raise ConfigError(where, f"{what} [exposure.instruments] declares"
                                  + did_you_mean(name, sorted(known)), name)

    def _check_paths(self, path: str) -> None:
        """Each limit's path reads back as its own: a name holding ``.asset.`` or
        ``.instrument.`` makes a path that reads another way (or two)."""
        named = [(f"{path}.firm_assets.{a}", f"firm.asset.{a}", ("*", "asset", a))
                 for a in self.firm_assets]
        for cp, cl in self.counterparties.items():
            base = f"counterparty.{cp}"
            named.append((f"{path}.counterparties.{cp}", base, (cp, "cp", cp)))
            named += [(f"{path}.counterparties.{cp}.assets.{a}", f"{base}.asset.{a}",
                       (cp, "asset", a)) for a in cl.assets]
            named += [(f"{path}.counterparties.{cp}.instruments.{i}", f"{base}.instrument.{i}",
                       (cp, "instrument", i)) for i in cl.instruments]
        for where, limit_path, meant in named:
            try:
                read = parse_limit_path(limit_path)
            except ValueError:
                read = None
            if read != meant:
                raise ConfigError(where, "a name whose limit path reads one way only (no "
                                  "'.asset.' or '.instrument.' in it)", meant[2])

    def _tables(self, path: str) -> list[tuple[str, str, dict[LimitKind, LimitSpec]]]:
        """``(key path, level, kind -> spec)`` of every table of limits."""
        out = [(f"{path}.firm", "firm", self.firm)]
        out += [(f"{path}.firm_assets.{a}", "asset", kinds)
                for a, kinds in self.firm_assets.items()]
        for cp, cl in self.counterparties.items():
            where = f"{path}.counterparties.{cp}"
            out.append((f"{where}.limits", "cp", cl.limits))
            out += [(f"{where}.assets.{a}", "asset", k) for a, k in cl.assets.items()]
            out += [(f"{where}.instruments.{i}", "instrument", k)
                    for i, k in cl.instruments.items()]
        return out


def concentration_levels(config: LimitsConfig) -> dict[str, tuple[float, ...]]:
    """Per configured counterparty with a concentration limit, the shares at which its
    level changes (warn, breach and hard, and each less the hysteresis): the firm
    rollup re-sends a quiet counterparty's concentration when it crosses one, however
    little it moved. A vol-scaled limit's are those of its base limit.

    >>> cfg = LimitsConfig(counterparties={"okx": CounterpartyLimits(
    ...     limits={"concentration": LimitSpec(limit=0.5, warn=0.8, hysteresis=0.1)})})
    >>> concentration_levels(cfg)
    {'okx': (0.35, 0.4, 0.45, 0.5)}
    """
    out: dict[str, tuple[float, ...]] = {}
    for cp, cl in config.counterparties.items():
        spec = cl.limits.get("concentration")
        if spec is None:
            continue
        at = [spec.warn, 1.0, *([spec.hard] if spec.hard is not None else [])]
        shares = {round(spec.limit * u, 12) for u in at}
        shares |= {round(spec.limit * (u - spec.hysteresis), 12) for u in at}
        out[cp] = tuple(sorted(x for x in shares if 0.0 < x <= 1.0))
    return out


def kind_problem(level: str, kind: str) -> str | None:
    """Why a limit of ``kind`` cannot be measured at ``level``, or None if it can.

    >>> kind_problem("asset", "delta") is None, kind_problem("instrument", "delta")[:46]
    (True, 'an instrument limit is one of gross_notional, ')
    """
    allowed = LEVEL_KINDS.get(level, ())
    if kind in allowed:
        return None
    what = {"asset": "an asset limit", "instrument": "an instrument limit"}.get(level, "a limit")
    return (f"{what} is one of {', '.join(allowed)} (the exposure does not carry its "
            f"{kind.replace('_', ' ')} per {level})")


def check_spec(path: str, kind: str, spec: LimitSpec) -> None:
    """Raise :class:`ConfigError` naming ``path`` if ``spec`` is invalid (a limit built in
    Python, such as one a signed update sets)."""
    if kind not in KINDS:
        raise ConfigError(path, f"a limit kind, one of {', '.join(KINDS)}", kind)
    check_declared(spec, path)
    _check_across(path, kind, spec)


def _check_across(path: str, kind: str, spec: LimitSpec) -> None:
    if kind == "concentration" and spec.limit > 1.0:
        raise ConfigError(f"{path}.limit", "a share of the firm's exposure, 0 to 1, for a "
                          "concentration limit", spec.limit)
    if spec.hysteresis >= spec.warn:
        raise ConfigError(f"{path}.hysteresis", f"must be below warn ({spec.warn})",
                          spec.hysteresis)
    vs = spec.vol_scaling
    if vs is not None and vs.lo > vs.hi:
        raise ConfigError(f"{path}.vol_scaling.lo", f"must not exceed hi ({vs.hi})", vs.lo)


def vol_factor(
    spec: LimitSpec, vols: dict[str, float], missing: float
) -> tuple[float, dict[str, float]]:
    """The dynamic scaling factor and the inputs that produced it. It is computed in log
    space and clamped there, so no volatility (0, inf) and no exponent raises; a factor
    that still cannot be computed is the tightest the spec allows, never above 1
    (``factor_unknown``).

    >>> vs = VolScaling(underlying="BTC", ref_vol=0.5, lo=0.25, hi=1.5)
    >>> vol_factor(LimitSpec(limit=1.0, vol_scaling=vs), {"BTC": 1.0}, 1.0)[0]
    0.5
    >>> vol_factor(LimitSpec(limit=1.0, vol_scaling=vs), {"BTC": 0.1}, 1.0)[0]
    1.5
    >>> vol_factor(LimitSpec(limit=1.0, vol_scaling=vs), {"BTC": float("inf")}, 1.0)[0]
    0.25
    """
    vs = spec.vol_scaling
    if vs is None:
        return 1.0, {}
    inputs = {"ref_vol": vs.ref_vol, "exponent": vs.exponent, "lo": vs.lo, "hi": vs.hi}
    vol = vols.get(vs.underlying)
    if vol is None or math.isnan(vol):  # unknown, or nan (never compared as a number)
        inputs["vol_known"] = 0.0
        inputs["factor"] = missing
        return missing, inputs
    log_raw = _log_ratio_power(vs.ref_vol, vol, vs.exponent)
    if math.isnan(log_raw):  # a negative vol: no factor can be read from it
        factor = min(vs.lo, 1.0)
        inputs.update(vol_known=1.0, factor_unknown=1.0, factor=factor)
        return factor, inputs
    if log_raw <= math.log(vs.lo):
        factor = vs.lo
    elif log_raw >= math.log(vs.hi):
        factor = vs.hi
    else:
        factor = min(max(math.exp(log_raw), vs.lo), vs.hi)
    raw = math.exp(min(max(log_raw, -_LOG_BOUND), _LOG_BOUND))
    realized = vol if math.isfinite(vol) else MAX_FLOAT
    inputs.update(vol_known=1.0, realized_vol=realized, raw_factor=raw, factor=factor)
    return factor, inputs


_LOG_BOUND = 690.0  # exp(690) ~ 1e300: the raw factor as shown, never inf or 0


def _log_ratio_power(ref_vol: float, vol: float, exponent: float) -> float:
    """``log((ref_vol / vol) ** exponent)``, without overflow or division by zero: +-inf
    for a vol of 0 or inf, 0 for an exponent of 0, nan for a negative vol."""
    if vol < 0:
        return math.nan
    if exponent == 0.0:
        return 0.0
    log_vol = -math.inf if vol == 0 else math.log(vol)
    return exponent * (math.log(ref_vol) - log_vol)


def level_of(u: float, prev: LimitLevel, spec: LimitSpec) -> LimitLevel:
    """Level of utilization ``u`` given the previous level (hysteresis on the way down).

    >>> s = LimitSpec(limit=1.0, warn=0.8, hysteresis=0.05)
    >>> level_of(0.79, LimitLevel.OK, s).value, level_of(0.81, LimitLevel.OK, s).value
    ('ok', 'warn')
    >>> level_of(0.77, LimitLevel.WARN, s).value, level_of(0.74, LimitLevel.WARN, s).value
    ('warn', 'ok')
    """
    thresholds = [(LimitLevel.WARN, spec.warn), (LimitLevel.BREACH, 1.0)]
    if spec.hard is not None:
        thresholds.append((LimitLevel.HARD, spec.hard))
    up = LimitLevel.OK
    for lvl, thr in thresholds:
        if u >= thr:
            up = lvl
    if LEVEL_ORDER[up] >= LEVEL_ORDER[prev]:
        return up
    level = LimitLevel.OK
    for lvl, thr in thresholds:
        if LEVEL_ORDER[lvl] <= LEVEL_ORDER[prev] and u >= thr - spec.hysteresis:
            level = lvl
    return level
