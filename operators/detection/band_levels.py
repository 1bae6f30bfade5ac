"""Settings of the move bands (``detector.bands``): the levels a key runs with, by what its
bars measure and by product.

A key's settings are :class:`MoveBandConfig`'s, with the levels of its measure (prices, or
volatility indices: :class:`VolatilityLevels`) and then those of the first product whose
``match`` it fits (:class:`ProductBands`); :meth:`MoveBandConfig.for_key` resolves them.
Validation names the table where a bad value is set.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import math
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

import msgspec
from riskguard.schemas.market import Measure

from riskguard.errors import ConfigError
from riskguard.validation import (
    MAX_FLOAT,
    Nanoseconds,
    NonNegativeInt,
    Positive,
    PositiveFinite,
    PositiveSeconds,
    Share,
    check_declared,
)

NS = 1_000_000_000
Levels = Annotated[tuple[PositiveFinite, ...], msgspec.Meta(min_length=1)]
"""One level per horizon."""
Horizons = Annotated[tuple[PositiveSeconds, ...], msgspec.Meta(min_length=1)]
"""The look-backs, in seconds."""
DailyLimit = Annotated[float, msgspec.Meta(gt=0.0, lt=10_000.0)]  # bps of the settlement price
TimeOfDay = Annotated[float, msgspec.Meta(ge=0.0, lt=86_400.0)]  # seconds after 00:00 UTC
AtLeastOne = Annotated[float, msgspec.Meta(ge=1.0, le=MAX_FLOAT)]
CriticalRule = Literal["fast_fall", "slide", "limit", "static", "ratio", "horizons"]
CriticalMoves = Literal["down", "up", "both"]


class BandLevels(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Levels that some keys run with instead of ``detector.bands``' own: each value set
    here replaces that one, and an unset one is inherited."""

    enabled: bool | None = None  # unset: detector.bands.enabled
    horizons_s: Horizons | None = None  # unset: detector.bands.horizons_s
    floor_bps: Levels | None = None  # unset: detector.bands.floor_bps
    cap_bps: Levels | None = None  # unset: detector.bands.cap_bps
    drawdown_s: PositiveSeconds | None = None  # unset: detector.bands.drawdown_s
    daily_limits_bps: tuple[DailyLimit, ...] | None = None  # unset: detector.bands.daily_limits_bps
    settlement_s: TimeOfDay | None = None  # unset: detector.bands.settlement_s
    band_k: Levels | None = None  # unset: detector.bands.band_k
    critical_rules: tuple[CriticalRule, ...] | None = None  # unset: detector.bands.critical_rules
    fast_s: PositiveSeconds | None = None  # unset: detector.bands.fast_s
    deep_bps: Positive | None = None  # unset: detector.bands.deep_bps
    warmup_deep_bps: Positive | None = None  # unset: detector.bands.warmup_deep_bps
    deep_z: Positive | None = None  # unset: detector.bands.deep_z
    slide_z: PositiveFinite | None = None  # unset: detector.bands.slide_z
    static_z: Positive | None = None  # unset: detector.bands.static_z
    critical_ratio: AtLeastOne | None = None  # unset: detector.bands.critical_ratio
    critical_moves: CriticalMoves | None = None  # unset: detector.bands.critical_moves
    confirm_horizons: NonNegativeInt | None = None  # unset: detector.bands.confirm_horizons
    vol_halflife_s: PositiveSeconds | None = None  # unset: detector.bands.vol_halflife_s
    vol_clip: PositiveFinite | None = None  # unset: detector.bands.vol_clip
    warmup_returns: NonNegativeInt | None = None  # unset: detector.bands.warmup_returns
    hysteresis: Share | None = None  # unset: detector.bands.hysteresis
    close_quiet_points: NonNegativeInt | None = None  # unset: detector.bands.close_quiet_points
    close_quiet_ns: Nanoseconds | None = None  # unset: detector.bands.close_quiet_ns
    # unset: detector.bands.deescalate_quiet_points
    deescalate_quiet_points: NonNegativeInt | None = None
    deescalate_quiet_s: PositiveSeconds | None = None  # unset: detector.bands.deescalate_quiet_s
    top_k: NonNegativeInt | None = None  # unset: detector.bands.top_k
    model_version: str | None = None  # unset: detector.bands.model_version


class ProductBands(BandLevels, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One product's own levels (``detector.bands.products``), as an exchange gives each
    product its own breaker percentage: a key that ``match`` (a glob on
    ``venue/instrument``, such as ``"deribit/DVOL-*"``) names takes every value set here
    over those of its measure. A key takes the first product it matches."""

    # the keys these levels are for: a glob on venue/instrument ("*/USDCUSDT"); a key takes
    # the first product it matches
    match: Annotated[str, msgspec.Meta(min_length=1)]


DEFAULT_HORIZONS_S = (60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0)
CRITICAL_MOVES = {"down": -1, "up": 1, "both": 0}
CRITICAL_RULES: tuple[str, ...] = get_args(CriticalRule)
"""The rules ``critical_rules`` may list (:mod:`~riskguard.operators.detection.band_rules`)."""
"""``critical_moves``: the sign of the moves the learned bands may make critical (0:
either)."""
#: a volatility index's static levels at the default horizons (a day's: 3,000 bps)
VOLATILITY_CAPS_BPS = (600.0, 1000.0, 1400.0, 2000.0, 2500.0, 3000.0)
#: a volatility index's band widths at the default horizons, in typical moves
VOLATILITY_BAND_K = (7.0, 6.0, 5.5, 5.0, 4.0, 4.0)


def log_interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """``ys`` at ``x``: log-linear between the increasing ``xs``, the end values beyond.

    >>> [log_interpolate((60.0, 6000.0), (100.0, 10000.0), x) for x in (10.0, 600.0, 1e9)]
    [100.0, 1000.0, 10000.0]
    """
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    if i == 0:
        return ys[0]
    if i == len(xs):
        return ys[-1]
    w = math.log(x / xs[i - 1]) / math.log(xs[i] / xs[i - 1])
    return ys[i - 1] * (ys[i] / ys[i - 1]) ** w


class VolatilityLevels(BandLevels, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The levels of keys whose bars are volatility indices (``detector.bands.volatility``,
    bars of ``measure = "volatility"``), over ``detector.bands``: an implied-volatility
    index moves more than a price, and it has no price limits. With horizons other
    than the default ones, the default caps are taken at them (log-linear between the
    default horizons)."""

    # a day's cap of 3,000 bps: a fall of 26 %, a rise of 35 %
    cap_bps: Levels | None = VOLATILITY_CAPS_BPS
    daily_limits_bps: tuple[DailyLimit, ...] | None = ()  # a volatility index is no price
    deep_bps: PositiveFinite | None = 1500.0  # a day's rise of implied volatility by 16 %
    warmup_deep_bps: Positive | None = 1500.0  # the same from the first day
    critical_moves: CriticalMoves | None = "up"  # a rise of implied volatility is the adverse move
    # a day's rise of four typical ones: implied volatility spikes more often than a price
    band_k: Levels | None = VOLATILITY_BAND_K


VOLATILITY_LEVELS = VolatilityLevels()


class MoveBandConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the move bands (``detector.bands``).

    ``horizons_s`` are the look-backs; ``floor_bps`` and ``cap_bps`` give, per
    horizon, the narrowest band and the widest, the static level (critical under the
    ``static`` rule). ``drawdown_s`` is the window of
    the rolling high and low (its band is the largest horizon's).
    ``deescalate_quiet_s``: a critical episode whose moves since its trip have
    been quiet this long de-escalates even before ``close_quiet_points`` quiet
    vectors (coarse bars: three daily bars would be three days).

    ``daily_limits_bps`` are the tiers of the daily price limits, from the settlement
    price taken ``settlement_s`` after midnight UTC each day (empty: none).

    Floors and caps are log moves (700 bps is a fall of 6.8 % or a rise of 7.3 %);
    the daily limits are shares of the settlement price, as an exchange sets them.
    The levels are for prices. ``critical_rules`` say which out-of-band readings are
    critical (:mod:`~riskguard.operators.detection.band_rules`): by default a fast fall
    while the day's range is deep, a slide past a daily limit (5, 10, 15 and 20 % from
    the previous settlement) as deep as ``slide_z`` typical day ranges, and a static
    level passed by a move ``static_z`` typical ones deep (off by default).
    ``volatility`` gives the levels of keys whose bars are volatility indices
    (:class:`~riskguard.schemas.Measure`), which move more: by default a day's cap
    of 3,000 bps and no daily limits. ``products`` give some keys levels of their own
    (:class:`ProductBands`); :meth:`for_key` says which settings a key runs with.
    """

    enabled: bool = True  # false: no move bands (no price_move signals)
    # the look-backs a move is measured over, in seconds (one floor_bps, cap_bps and band_k each)
    horizons_s: Horizons = DEFAULT_HORIZONS_S
    floor_bps: Levels = (50.0, 80.0, 120.0, 200.0, 300.0, 500.0)
    # the static level of each horizon, in bps of log price: the widest its band gets; a
    # move past it is critical under the static rule (by default only before the key's
    # typical moves are learned)
    cap_bps: Levels = (300.0, 500.0, 700.0, 700.0, 700.0, 700.0)
    drawdown_s: PositiveSeconds = 86_400.0
    # tiers of the daily price limits from the previous settlement: the slide rule judges a
    # price past one; under the limit rule each tier is critical once a day
    daily_limits_bps: tuple[DailyLimit, ...] = (500.0, 1000.0, 1500.0, 2000.0)
    settlement_s: TimeOfDay = 0.0  # the settlement price: the last at this time after 00:00 UTC
    band_k: Levels = (7.0, 6.0, 5.5, 5.0, 4.0, 3.0)
    # the evidence that makes a reading critical (band_rules): any one of these rules
    critical_rules: tuple[CriticalRule, ...] = ("fast_fall", "slide", "static")
    # fast_fall: a move over a horizon up to this long out of band ...
    fast_s: PositiveSeconds = 3600.0
    # ... while the day's range from its extreme is past this (inf: no level that holds for
    # every market; a thin coin's ordinary 6 % day is no crash) ...
    deep_bps: Positive = math.inf
    # ... or, while the key has less than drawdown_s of history (its typical day range a
    # guess from shorter moves), past this
    warmup_deep_bps: Positive = 600.0
    deep_z: Positive = 3.0  # ... or past this many of the key's typical day ranges
    slide_z: PositiveFinite = 1.75  # slide: past a daily limit, the day's range this many typical
    static_z: Positive = math.inf  # static: a static level, learned moves this many typical
    critical_ratio: AtLeastOne = 1.25  # ratio: a move this many times its band
    # which moves may be critical: falls of a price (the adverse move of long collateral
    # and the trigger of liquidations); a rally past its band or level is a warning
    critical_moves: CriticalMoves = "down"
    confirm_horizons: NonNegativeInt = 2  # horizons: this many horizons out of band at once
    # half-life of the learned typical moves; a gap in the data longer than this starts the key's
    # warm-up afresh
    vol_halflife_s: PositiveSeconds = 7 * 86_400.0
    # a move teaches the typical move at most as much as one this many typical moves would
    vol_clip: PositiveFinite = 4.0
    # moves a horizon learns before its own band stands (until then the interval returns'
    # volatility, and before those the cap, stand in)
    warmup_returns: NonNegativeInt = 30
    hysteresis: Share = 0.8
    close_quiet_points: NonNegativeInt = 3
    close_quiet_ns: Nanoseconds = 60 * NS
    # a trip eases to a warning after this many quiet readings (no new low, the shortest
    # horizon's move back inside its band) ...
    deescalate_quiet_points: NonNegativeInt = 2
    deescalate_quiet_s: PositiveSeconds = 3600.0  # ... over at least this long
    # horizons named on each signal (the largest moves against their bands)
    top_k: NonNegativeInt = 3
    # recorded on every price_move signal: change it when the levels change
    model_version: str = "1"
    volatility: VolatilityLevels = VOLATILITY_LEVELS
    products: tuple[ProductBands, ...] = ()

    def for_key(self, key: str, measure: Measure | str = Measure.PRICE) -> MoveBandConfig:
        """The settings ``key`` runs with: these, with the levels of its ``measure``,
        then with the values of the first product whose ``match`` it fits.

        >>> cfg = MoveBandConfig(products=(ProductBands(match="deribit/DVOL-ETH",
        ...                                             cap_bps=(4000.0,) * 6),))
        >>> [cfg.for_key(key, measure).cap_bps[-1] for key, measure in
        ...  [("binance/BTCUSDT", "price"), ("deribit/DVOL-BTC", "volatility"),
        ...   ("deribit/DVOL-ETH", "volatility")]]
        [700.0, 3000.0, 4000.0]
        """
        base = self._with(self.volatility) if measure == Measure.VOLATILITY else self
        for product in self.products:
            if fnmatch.fnmatchcase(key, product.match):
                return base._with(product)
        return base

    def _with(self, levels: BandLevels) -> MoveBandConfig:
        changes = {name: value for name in BandLevels.__struct_fields__
                   if (value := getattr(levels, name)) is not None}
        horizons: tuple[float, ...] = changes.get("horizons_s", self.horizons_s)
        if isinstance(levels, VolatilityLevels) and len(horizons) != len(DEFAULT_HORIZONS_S):
            # the default index levels, taken at these horizons
            for name, default in (("cap_bps", VOLATILITY_CAPS_BPS),
                                  ("band_k", VOLATILITY_BAND_K)):
                if getattr(levels, name) == default:
                    changes[name] = tuple(log_interpolate(DEFAULT_HORIZONS_S, default, h)
                                          for h in horizons)
        return msgspec.structs.replace(self, products=(), volatility=_NO_LEVELS, **changes)

    def validate(self, path: str = "detector.bands") -> MoveBandConfig:
        """Raise ``ConfigError`` naming the key of the first bad value: of these settings,
        of those of volatility indices, or of a product over either measure. A value one
        table inherits from another is named where it is set."""
        check_declared(self, path)
        self._validate_levels(path)
        volatility = self._with(self.volatility)
        vol_path = path + ".volatility"
        _check(volatility, vol_path, [(vol_path, self.volatility)], path)
        for i, product in enumerate(self.products):
            where = f"{path}.products[{i}]"
            _check(self._with(product), where, [(where, product)], path)
            _check(volatility._with(product), where,
                   [(where, product), (vol_path, self.volatility)], path)
        return self

    def _validate_levels(self, path: str) -> None:
        """The checks across these levels' fields (each value's own are declared)."""
        n = len(self.horizons_s)
        for name in ("floor_bps", "cap_bps", "band_k"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{path}.{name}", f"must give one value per horizon ({n})",
                                  getattr(self, name))
        if any(b <= a for a, b in itertools.pairwise(self.horizons_s)):
            raise ConfigError(path + ".horizons_s", "must be in increasing order",
                              self.horizons_s)
        for i, (lo, hi) in enumerate(zip(self.floor_bps, self.cap_bps, strict=True)):
            if lo > hi:
                raise ConfigError(f"{path}.floor_bps[{i}]",
                                  f"must not exceed cap_bps[{i}] ({hi})", lo)
        limits = self.daily_limits_bps
        if any(b <= a for a, b in itertools.pairwise(limits)):
            raise ConfigError(path + ".daily_limits_bps", "must be in increasing order", limits)


_NO_LEVELS = VolatilityLevels(**dict.fromkeys(BandLevels.__struct_fields__))


def _check(resolved: MoveBandConfig, where: str, layers: list[tuple[str, BandLevels]],
           base: str) -> None:
    """Validate the settings of the table at ``where``, as resolved over ``layers`` (the
    most specific first) and ``base``; an error names the table that set the value."""
    try:
        resolved._validate_levels(where)
    except ConfigError as err:
        field = err.path[len(where) + 1:]
        name = field.split("[", 1)[0]
        owner = next((p for p, levels in layers if getattr(levels, name) is not None), base)
        if owner == where:
            raise
        raise ConfigError(f"{owner}.{field}", f"{err.expected} (in {where})",
                          err.found) from None
