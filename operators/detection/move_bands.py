r"""Move bands: a deterministic price-move detector beside the learned one.

:class:`MoveBands` runs CME-style dynamic circuit-breaker logic per key on the price each
feature vector carries (its close, and the low and high since the previous vector): log
moves over several horizons and the day's drawdown/rally against volatility-scaled bands
within floors and caps, daily price limits from the settlement, and an
open/escalate/deescalate/close episode that resets after a trip. Rules and defaults:
docs/detectors.md ("Move bands").

Signals are :class:`~riskguard.schemas.AnomalySignal` records of kind ``price_move``:
``score`` is the largest move-to-band ratio and ``threshold`` is 1; ``top_features`` name
the horizons (``move_1h``, ``drawdown_1d``) with the move in bps as ``value`` and in
typical moves as ``zscore`` (``from_settlement`` names a daily limit, with no typical move).

>>> from riskguard.schemas import FeatureVector, Scope, ScopeKind
>>> bands = MoveBands(MoveBandConfig(), key="binance/BTCUSDT")
>>> scope = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")
>>> def bar(i, close, low=None):
...     return FeatureVector(key="binance/BTCUSDT", scope=scope, ts=(i + 1) * 60 * 10**9,
...                          values={}, price=close, low=low or close, high=close,
...                          interval_ns=60 * 10**9, evidence_ids=[f"b{i}"])
>>> calm = [s for i in range(600) for s in bands.on_vector(bar(i, 100.0 + (i % 5) * 0.02))]
>>> calm
[]
>>> sig = bands.on_vector(bar(600, 93.0, low=92.0))[0]
>>> (sig.kind, sig.phase, sig.severity.value, sig.top_features[0].feature)
('price_move', 'open', 'critical', 'move_1m')
"""

from __future__ import annotations

import bisect
import math
import uuid
from dataclasses import dataclass, field
from typing import Literal

from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.band_levels import (
    CRITICAL_MOVES,
    MoveBandConfig,
    log_interpolate,
)
from riskguard.operators.detection.band_rules import (
    LIMIT,
    MOVE,
    RANGE,
    SETTLEMENT,
    CriticalRules,
    Reading,
)
from riskguard.schemas.signals import (
    SEVERITY_RANK,
    AnomalySignal,
    Contribution,
    FeatureVector,
    Severity,
)

NS = 1_000_000_000
_NAMESPACE = uuid.UUID("0b6f4c52-5d0e-5b8e-8f7a-3f0c2a9d6e41")
_DAY = 86_400 * NS
_MAX_FINITE = 1.7976931348623157e308


def log_ratio(a: float, b: float) -> float:
    """``log(a / b)`` of two positive prices, also where ``a / b`` under- or overflows
    (1e-300 over 1e300).

    >>> log_ratio(1e-300, 1e300) == math.log(1e-300) - math.log(1e300)
    True
    """
    q = a / b
    return math.log(q) if 0.0 < q < math.inf else math.log(a) - math.log(b)


@persisted("riskguard.move_bands")
@dataclass
class MoveBandState:
    """One key's move-band state: price history in two tiers, volatility, episode."""

    version: int = 1
    # fine tier: one (slot id, close, low, high) per ``_FINE_NS``; coarse: per ``_COARSE_NS``
    fine: list[tuple[int, float, float, float]] = field(default_factory=list)
    coarse: list[tuple[int, float, float, float]] = field(default_factory=list)
    interval_ns: int = 0
    last_ts: int = -1
    last_close: float = 0.0
    var_rate: float = 0.0  # squared log return per ns
    n_returns: int = 0
    since_ts: int = -1  # the key's first vector, or where a gap made it warm up afresh
    # per horizon (ns): [mean squared move over that horizon, horizons' worth of samples]
    h_var: dict[int, list[float]] = field(default_factory=dict)
    signals: int = 0
    episodes: int = 0
    ep_open: bool = False
    ep_severity: str = "info"
    ep_quiet: int = 0
    ep_last_ts: int = 0
    # since the episode turned critical: the last critical reading (the reference of
    # its severity, -1 when none), its close, and the quiet readings since
    reset_ts: int = -1
    reset_price: float = 0.0
    reset_quiet: int = 0
    # the trip's direction (-1 a fall, 1 a rise) and the furthest price since in it
    reset_dir: int = 0
    reset_extreme: float = 0.0
    reset_loud_ts: int = -1  # the last reading since the trip that was not quiet
    # daily limits: when the current day started (its settlement time), the previous
    # day's settlement price (0: unknown) and the tiers reached today falling and rising
    day_start: int = -1
    settle: float = 0.0
    tiers_down: int = 0
    tiers_up: int = 0


_FINE_NS = 60 * NS
_COARSE_NS = 900 * NS
RANGE_PER_SIGMA = 1.355
"""A random walk's root mean square day-range reading (the larger of the fall from the
window's high and the rise from its low), in its standard deviations over the window:
the stand-in for a key's typical day range while it learns its own."""


def _level(share: float, falling: bool) -> float:
    """A share of the price as a log move: a fall of 7 % is 725 bps, a rise 677."""
    return -math.log1p(-share) if falling else math.log1p(share)


def _label(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class MoveBands:
    """Per-key move bands; ``on_vector(FeatureVector) -> [AnomalySignal]``.

    Vectors without a price (venue-health keys) are ignored.
    """

    def __init__(self, config: MoveBandConfig, key: str = "",
                 state: MoveBandState | None = None) -> None:
        self.config = config
        self.key = key
        self.s = state if state is not None else MoveBandState()
        c = config
        self._h_ns = [int(h * NS) for h in c.horizons_s]
        self._k = list(c.band_k)
        self._floor = [b * 1e-4 for b in c.floor_bps]
        self._cap = [b * 1e-4 for b in c.cap_bps]
        self._dd_ns = int(c.drawdown_s * NS)
        self._limits = [b * 1e-4 for b in c.daily_limits_bps]
        self._settle_ns = int(c.settlement_s * NS)
        self._rules = CriticalRules(c, CRITICAL_MOVES[c.critical_moves])
        self.rule: str | None = None  # the critical rule of the last critical reading
        self._for_interval = -1
        self._plan: list[tuple[int, bool, float, float, float, str, float]] = []
        self._params_at: dict[int, tuple[float, float, float]] = {}
        self._done_range: tuple[int, int, list[tuple[int, float, float, float]], float,
                                float] | None = None
        self._returns: list[tuple[int, float]] = []
        self._dd_names = (f"drawdown_{_label(c.drawdown_s)}", f"rally_{_label(c.drawdown_s)}")
        self._weights: dict[int, dict[int, tuple[float, float]]] = {}  # see _learn
        self._decay_per_ns = math.log(2.0) / (c.vol_halflife_s * NS)
        self._deescalate_ns = int(c.deescalate_quiet_s * NS)
        self._fine_keep = max(h for h in self._h_ns if h <= 3600 * NS) // _FINE_NS + 2 \
            if any(h <= 3600 * NS for h in self._h_ns) else 2
        self._longest_ns = max(*self._h_ns, self._dd_ns)
        self._coarse_keep = self._longest_ns // _COARSE_NS + 2

    def snapshot(self) -> MoveBandState:
        """An independent copy (the tiers' tuples are immutable)."""
        s = self.s
        snap = MoveBandState(**s.__dict__)
        snap.fine = list(s.fine)
        snap.coarse = list(s.coarse)
        snap.h_var = {h: list(v) for h, v in s.h_var.items()}
        return snap

    @property
    def sigma_per_sqrt_ns(self) -> float | None:
        """The learned volatility, or None while warming up."""
        s = self.s
        if s.n_returns < self.config.warmup_returns or s.var_rate <= 0.0:
            return None
        return math.sqrt(s.var_rate)

    def on_vector(self, fv: FeatureVector) -> list[AnomalySignal]:
        price = fv.price
        if price is None or not 0.0 < price < math.inf:
            return []
        s = self.s
        ts = fv.ts
        if ts < s.last_ts:
            return []  # the features step already dead-lettered what was too late
        low = fv.low if fv.low is not None and 0.0 < fv.low <= price else price
        high = fv.high if fv.high is not None and fv.high >= price else price
        if fv.interval_ns:
            if s.interval_ns and fv.interval_ns != s.interval_ns:
                self._forget_other_horizons(fv.interval_ns)
            s.interval_ns = fv.interval_ns  # bars: no horizon is shorter than one bar
        gap = s.last_ts > 0 and 0 < s.interval_ns < (ts - s.last_ts) // 2
        if gap:
            self._after_gap(ts, price, low, high)
        if s.since_ts < 0:
            s.since_ts = ts
        self._rules.young = ts - s.since_ts < self._dd_ns
        # measured last, the full look-back's returns are what is learned
        since = (self._measure(ts, low, high, price, s.reset_ts)
                 if s.ep_open and s.reset_ts >= 0 else None)
        ratios = self._measure(ts, low, high, price)
        if self._limits:
            self._daily_limits(ts, low, high, ratios, since)
        out = self._episode(fv, low, high, ratios, since)
        if not s.ep_open:
            self._learn(ts, price, gap)
        self._record(ts, price, low, high)
        s.last_ts = ts
        s.last_close = price
        return out

    def _measure(self, ts: int, low: float, high: float, close: float,
                 since: int | None = None) -> list[Reading]:
        """A :class:`~riskguard.operators.detection.band_rules.Reading` per horizon and
        for the drawdown/rally. With ``since`` (a trip's time), no move reaches back
        before it: such a horizon, and the drawdown, are measured from the trip's price."""
        s = self.s
        sigma = self.sigma_per_sqrt_ns
        interval = s.interval_ns
        out: list[Reading] = []
        if interval != self._for_interval:
            self._plan_for(interval)
        returns = self._returns
        returns.clear()
        log, sqrt, inf = math.log, math.sqrt, math.inf
        h_var = s.h_var
        warm = self.config.warmup_returns
        fine, coarse = s.fine, s.coarse
        # a tier with a slot for every step finds a slot by its position
        fine_first = fine[0][0] if fine and fine[-1][0] - fine[0][0] == len(fine) - 1 else None
        coarse_first = (coarse[0][0] if coarse and coarse[-1][0] - coarse[0][0]
                        == len(coarse) - 1 else None)
        for h, on_fine, k, floor, cap, name, sqrt_h in self._plan:
            at = ts - h
            if since is not None and at <= since:
                ref = s.reset_price  # the trip's price is the reference
            else:
                found = (self._reference(fine, _FINE_NS, fine_first, at, h, since) if on_fine
                         else self._reference(coarse, _COARSE_NS, coarse_first, at, h, since))
                if found is None:
                    continue
                ref = found
            q = low / ref  # inline log_ratio: the hot loop
            down = log(q) if 0.0 < q < inf else log(low) - log(ref)
            q = high / ref
            up = log(q) if 0.0 < q < inf else log(high) - log(ref)
            move = down if -down >= up else up
            returns.append((h, move))
            hv = h_var.get(h)
            if hv is not None and hv[1] >= warm:
                scale: float | None = sqrt(hv[0])
            else:
                scale = None if sigma is None else sigma * sqrt_h
            if scale is None:
                out.append(Reading(abs(move) / cap, move, name, cap, -1.0, h))
            else:
                learned = max(floor, k * scale)
                out.append(Reading(abs(move) / min(cap, learned), move, name, cap, scale, h,
                                   MOVE, abs(move) / learned))
        if coarse:
            out.append(self._range_reading(ts, low, high, close, since))
        return out

    def _reference(self, tier: list[tuple[int, float, float, float]], slot_ns: int,
                   first: int | None, at: int, h: int,
                   since: int | None) -> float | None:
        """A horizon ``h``'s reference price at ``at = ts - h``: the close of the last
        slot ending at or before ``at`` (slot ``k`` covers ``((k - 1) * slot_ns, k *
        slot_ns]``); none across a gap; the trip's price for a slot before ``since``."""
        want = at // slot_ns  # the last slot that ended at or before ``at``
        i = (min(want - first, len(tier) - 1) if first is not None
             else bisect.bisect_right(tier, (want, math.inf)) - 1)
        if i < 0:
            return None
        slot = tier[i]
        if slot[0] * slot_ns < at - h:
            return None  # across a gap in the data
        return self.s.reset_price if since is not None and slot[0] * slot_ns < since \
            else slot[1]

    def _range_reading(self, ts: int, low: float, high: float, close: float,
                       since: int | None) -> Reading:
        """The drawdown or rally from the day's extremes (since a trip: from the trip's),
        with its own scale: a drawdown is no close-to-close move. Its ``close`` is the
        same range to ``close``."""
        hi, lo = self._day_range(ts) if since is None else self._range_since(since)
        hi, lo = max(hi, high), min(lo, low)
        h = max(self._dd_ns, self.s.interval_ns)
        k, floor, cap = self._params(h)
        dd, ru = log_ratio(low, hi), log_ratio(high, lo)
        falling = -dd >= ru
        move, name = (dd, self._dd_names[0]) if falling else (ru, self._dd_names[1])
        self._returns.append((-h, move))
        sigma = self.sigma_per_sqrt_ns
        scale = self._scale(-h, None if sigma is None else sigma * RANGE_PER_SIGMA, h)
        band = self._band(k, floor, cap, scale)
        learned = band if scale is None else max(floor, k * scale)
        return Reading(abs(move) / band, move, name, cap, -1.0 if scale is None else scale, h,
                       RANGE, abs(move) / learned,
                       log_ratio(close, hi) if falling else log_ratio(close, lo))

    def _daily_limits(self, ts: int, low: float, high: float, ratios: list[Reading],
                      since: list[Reading] | None) -> None:
        """The move from the settlement price joins the measures, as its ratio to the first
        daily limit, and as a limit on the reading that first reaches a tier that day. A
        price at a tier's level reaches it (to a part in 10^12: 1 - 93/100 is 0.06999...)."""
        s = self.s
        start = (ts - 1 - self._settle_ns) // _DAY * _DAY + self._settle_ns
        if start != s.day_start:
            # only a price from the day before counts (not a state kept while the limits
            # were off, or with another settlement time)
            s.settle = s.last_close if start - _DAY < s.last_ts <= start else 0.0
            s.day_start, s.tiers_down, s.tiers_up = start, 0, 0
        if not s.settle > 0.0:
            return
        limits = self._limits
        fall, rise = 1.0 - low / s.settle, high / s.settle - 1.0
        log_fall, log_rise = log_ratio(low, s.settle), log_ratio(high, s.settle)
        falling = fall >= rise
        ratios.append(Reading((max(fall, rise) + 1e-12) / limits[0],
                              log_fall if falling else log_rise, "from_settlement",
                              _level(limits[0], falling), -1.0, 0, SETTLEMENT))
        for down, reach, move in ((True, fall, log_fall), (False, rise, log_rise)):
            tiers = bisect.bisect_right(limits, reach + 1e-12)
            if tiers <= (s.tiers_down if down else s.tiers_up):
                continue
            if down:
                s.tiers_down = tiers
            else:
                s.tiers_up = tiers
            tier = limits[tiers - 1]
            limit = Reading((reach + 1e-12) / tier, move, "from_settlement",
                            _level(tier, down), -1.0, 0, LIMIT)
            ratios.append(limit)
            if since is not None:
                since.append(limit)
                # with the whole day's range: a new tier is judged against the day's fall
                since.extend(r for r in ratios if r.kind == RANGE)

    def _plan_for(self, interval: int) -> None:
        """Per horizon for data of this interval: ``(h, on the fine tier, band_k, floor,
        cap, name, sqrt(h))``; a horizon shorter than the interval becomes the
        interval."""
        self._for_interval = interval
        self._rules.for_interval(interval)
        if len(self._params_at) > 256:  # intervals that keep changing: bars of any length
            self._params_at.clear()
        self._plan = [(h, h <= 3600 * NS and h % _FINE_NS == 0, *self._params(h),
                       f"move_{_label(h / NS)}", math.sqrt(h))
                      for h in sorted({max(h, interval) for h in self._h_ns})]

    def _forget_other_horizons(self, interval: int) -> None:
        """Bars of a new ``interval``: past 64 horizons learned (intervals that keep
        changing), only those of this interval's plan stay. Done on the change itself, a
        state transition, so a resumed key forgets exactly what an unbroken one does."""
        h_var = self.s.h_var
        if len(h_var) > 64:
            keep = {max(h, interval) for h in self._h_ns} | {-max(self._dd_ns, interval)}
            for key in [k for k in h_var if k not in keep]:
                del h_var[key]

    def _day_range(self, ts: int) -> tuple[float, float]:
        """The highest high and lowest low of the coarse slots within ``drawdown_s`` of
        ``ts``; the complete slots' part is kept until a slot rolls or one expires."""
        tier = self.s.coarse
        first = -(-ts // _COARSE_NS) - self._dd_ns // _COARSE_NS
        last = tier[-1]
        done = self._done_range
        if done is None or done[0] != first or done[1] != len(tier) or done[2] != tier[-2:-1]:
            old = [x for x in tier[:-1] if x[0] >= first]
            done = self._done_range = (first, len(tier), tier[-2:-1],
                                       max((x[3] for x in old), default=-math.inf),
                                       min((x[2] for x in old), default=math.inf))
        if last[0] < first:
            return done[3], done[4]
        return max(done[3], last[3]), min(done[4], last[2])

    def _range_since(self, since: int) -> tuple[float, float]:
        """The highest high and lowest low after ``since`` (whole coarse slots after the
        one holding it) and the close at it."""
        first = -(-since // _COARSE_NS) + 1
        p = self.s.reset_price
        hi, lo = p, p
        for k, _c, low, high in reversed(self.s.coarse):
            if k < first:
                break
            hi, lo = max(hi, high), min(lo, low)
        return hi, lo

    def _params(self, h_ns: int) -> tuple[float, float, float]:
        """``(band_k, floor, cap)`` at horizon ``h_ns``: log-linear between the configured
        horizons, the end values beyond them (remembered per horizon)."""
        got = self._params_at.get(h_ns)
        if got is None:
            hs = self._h_ns
            got = self._params_at[h_ns] = (
                log_interpolate(hs, self._k, h_ns), log_interpolate(hs, self._floor, h_ns),
                log_interpolate(hs, self._cap, h_ns))
        return got

    def _scale(self, key: int, sigma: float | None, h_ns: int = 0) -> float | None:
        """The typical size of measure ``key`` (a horizon in ns; minus it for the
        drawdown): the root mean square of the key's own such moves once it has seen
        ``warmup_returns`` horizons' worth, else ``sigma * sqrt(h)`` from interval
        returns, else None (warming up)."""
        hv = self.s.h_var.get(key)
        if hv is not None and hv[1] >= self.config.warmup_returns:
            return math.sqrt(hv[0])
        return None if sigma is None else sigma * math.sqrt(h_ns or key)

    @staticmethod
    def _band(k: float, floor: float, cap: float, scale: float | None) -> float:
        """``k * scale`` within ``[floor, cap]``; the cap while warming up."""
        if scale is None:
            return cap
        return min(cap, max(floor, k * scale))

    def _after_gap(self, ts: int, price: float, low: float, high: float) -> None:
        """The data resumes at ``ts`` after a gap: one longer than every look-back
        restarts an open trip from this price (as CME restarts its window); one longer
        than ``vol_halflife_s`` makes the key warm up afresh."""
        s = self.s
        gap_ns = ts - s.last_ts
        if gap_ns > self._longest_ns and s.ep_open and s.reset_ts >= 0:
            s.reset_ts, s.reset_price, s.reset_quiet, s.reset_loud_ts = ts, price, 0, ts
            s.reset_extreme = low if s.reset_dir < 0 else high
        if gap_ns * self._decay_per_ns > math.log(2.0):
            s.h_var.clear()
            s.var_rate, s.n_returns, s.since_ts = 0.0, 0, ts

    def _learn(self, ts: int, price: float, gap: bool) -> None:
        s = self.s
        if s.last_ts < 0 or ts <= s.last_ts:
            return
        # missing data is no time learned over: the bar after a gap follows the last
        dt = s.interval_ns if gap else ts - s.last_ts
        clip2 = self.config.vol_clip ** 2
        warm = self.config.warmup_returns
        weights = self._weights.get(dt)
        if weights is None:
            if len(self._weights) > 64:  # irregular steps (event cadence): keep a few
                self._weights.clear()
            weights = self._weights[dt] = {}
        for key, move in self._returns:
            hv = s.h_var.get(key)
            if hv is None:
                hv = s.h_var[key] = [0.0, 0.0]
            got = weights.get(key)
            if got is None:
                span = abs(key)
                w = min(1.0, dt / span)  # overlapping moves: one horizon's worth per horizon
                got = weights[key] = (
                    w, min(w, -math.expm1(-self._decay_per_ns * max(dt, span // 10))))
            w, a_warm = got
            m2 = move * move
            if hv[1] >= warm and hv[0] == 0.0 < m2:
                # a flat stretch taught no typical move (clipped to a multiple of it, no
                # move would ever count): its first move starts the learning afresh
                hv[1], a = 0.0, 1.0
            elif hv[1] >= warm:
                m2 = min(m2, clip2 * hv[0])
                a = a_warm
            else:
                a = w / (hv[1] + w)
            hv[0] += a * (m2 - hv[0])
            hv[1] += w
        if gap:
            return
        r2 = log_ratio(price, s.last_close) ** 2 / dt
        if s.n_returns >= self.config.warmup_returns and s.var_rate == 0.0 < r2:
            s.n_returns, a = 0, 1.0  # the first move after a flat stretch, as above
        elif s.n_returns >= self.config.warmup_returns:
            lim = self.config.vol_clip ** 2 * s.var_rate
            r2 = min(r2, lim)
            a = -math.expm1(-self._decay_per_ns * dt)
        else:
            a = 1.0 / (s.n_returns + 1)
        s.var_rate += a * (r2 - s.var_rate)
        s.n_returns += 1

    def _record(self, ts: int, close: float, low: float, high: float) -> None:
        s = self.s
        for tier, slot_ns, keep in ((s.fine, _FINE_NS, self._fine_keep),
                                    (s.coarse, _COARSE_NS, self._coarse_keep)):
            k = -(-ts // slot_ns)
            if tier and tier[-1][0] == k:
                _sid, _c, lo, hi = tier[-1]
                tier[-1] = (k, close, min(lo, low), max(hi, high))
            else:
                tier.append((k, close, low, high))
                while tier and tier[0][0] <= k - keep:
                    del tier[0]

    def _severity(self, readings: list[Reading]) -> tuple[Severity | None, float]:
        """``(severity or None when every move is in its band and below its static
        level, largest ratio)``: critical when one of the key's critical rules holds
        (the rule's name is kept in ``self.rule``), else a warning."""
        top = max((r[0] for r in readings), default=0.0)
        if not (top >= 1.0 or any(abs(r[1]) >= r[3] for r in readings)):
            return None, top
        self.rule = self._rules.first(readings)
        return (Severity.CRITICAL if self.rule is not None else Severity.WARN), top

    def _trip(self, fv: FeatureVector, low: float, high: float,
              ratios: list[Reading]) -> None:
        """A critical reading: the moves that judge severity start from here, and the
        trip's direction is that of its largest move."""
        s = self.s
        s.reset_ts = fv.ts
        s.reset_price = fv.price or 0.0
        s.reset_quiet = 0
        s.reset_loud_ts = fv.ts
        move = max(ratios, key=lambda r: r[0])[1] if ratios else 0.0
        s.reset_dir = -1 if move < 0 else 1
        s.reset_extreme = low if s.reset_dir < 0 else high

    def _episode(self, fv: FeatureVector, low: float, high: float,
                 ratios: list[Reading],
                 since: list[Reading] | None
                 ) -> list[AnomalySignal]:
        s = self.s
        c = self.config
        sev, top = self._severity(ratios)
        if sev is not None:
            s.ep_quiet = 0
            s.ep_last_ts = fv.ts
            if not s.ep_open:
                s.ep_open = True
                s.episodes += 1
                s.ep_severity = sev.value
                if sev is Severity.CRITICAL:
                    self._trip(fv, low, high, ratios)
                return [self._signal(fv, "open", sev, top, ratios)]
        elif not s.ep_open:
            return []
        else:
            s.ep_quiet = s.ep_quiet + 1 if top < c.hysteresis else 0
            if s.ep_quiet >= c.close_quiet_points and fv.ts - s.ep_last_ts >= c.close_quiet_ns:
                s.ep_open = False
                s.reset_ts = -1
                return [self._signal(fv, "close", Severity(s.ep_severity), top, ratios)]
        if since is None:  # not critical yet: severity on the whole look-back
            if sev is not None and SEVERITY_RANK[sev] > SEVERITY_RANK[Severity(s.ep_severity)]:
                s.ep_severity = sev.value
                if sev is Severity.CRITICAL:
                    self._trip(fv, low, high, ratios)
                return [self._signal(fv, "escalate", sev, top, ratios)]
            return []
        now, top_since = self._severity(since)
        if now is Severity.CRITICAL:
            self._trip(fv, low, high, since)
            if s.ep_severity != Severity.CRITICAL.value:
                s.ep_severity = Severity.CRITICAL.value
                return [self._signal(fv, "escalate", Severity.CRITICAL, top_since, since)]
            return []
        # quiet: no move since the trip past hysteresis in its direction and no new
        # extreme that way (a price still grinding that way has not found its level)
        price = fv.price or 0.0
        further = price < s.reset_extreme if s.reset_dir < 0 else price > s.reset_extreme
        if further:
            s.reset_extreme = price
        way, shortest = s.reset_dir, self._plan[0][0]
        loud = any(r.kind == MOVE and r.horizon_ns <= shortest and r.ratio >= c.hysteresis
                   and r.move * way > 0.0 for r in since)
        s.reset_quiet = s.reset_quiet + 1 if not (loud or further) else 0
        if not s.reset_quiet:
            s.reset_loud_ts = fv.ts
        elif (s.ep_severity == Severity.CRITICAL.value
              and (s.reset_quiet >= c.deescalate_quiet_points
                   or fv.ts - s.reset_loud_ts >= self._deescalate_ns)
              and fv.ts - s.reset_ts >= c.close_quiet_ns):
            s.ep_severity = Severity.WARN.value
            return [self._signal(fv, "deescalate", Severity.WARN, top_since, since)]
        return []

    def _signal(self, fv: FeatureVector,
                phase: Literal["open", "escalate", "deescalate", "close"],
                severity: Severity, top: float,
                ratios: list[Reading]) -> AnomalySignal:
        s = self.s
        s.signals += 1
        contributions = [
            Contribution(feature=name, value=max(-_MAX_FINITE, min(_MAX_FINITE, move * 1e4)),
                         zscore=max(-1e12, min(1e12, move / scale)) if scale > 0 else 0.0)
            for _ratio, move, name, _cap, scale, *_rest in sorted(
                    ratios, key=lambda r: (-r[0], r[2]))[
                : self.config.top_k]]
        key = self.key or fv.key
        sid = str(uuid.uuid5(_NAMESPACE, f"{key}:{s.signals}:{phase}:{fv.ts}"))
        return AnomalySignal(
            id=sid, kind="price_move", phase=phase, key=key, scope=fv.scope, ts=fv.ts,
            recv_ts=fv.recv_ts, episode_id=f"{key}#move{s.episodes}",
            score=min(top, _MAX_FINITE),
            threshold=1.0, severity=severity, warming_up=False,
            top_features=contributions, model="MoveBands",
            model_version=self.config.model_version, evidence_ids=list(fv.evidence_ids),
            rule=(self.rule if severity is Severity.CRITICAL and phase in ("open", "escalate")
                  else None),
        )
