"""Which detectors could fire, on which keys and from when: silence explained.

:class:`DetectorWatch` follows what the detectors were fed in a run
(``guard_core(..., watch=...)``), and :func:`readiness` says, per key, when each part of
the detection became live, or why it never did; the parts and their rules are in
docs/backtests.md ("Which detectors could fire"). The times are the watch's reading of
those rules, not the detectors' own state: the detector learns nothing from points it
flags, so a key whose warm-up held an incident warms up a little later than said here.

>>> from riskguard.dataflows.guard import GuardConfig
>>> from riskguard.dataflows.guard.config import KeysConfig
>>> cfg = GuardConfig(keys=KeysConfig(signing_key="k", trust_file="t", roots_file="r"))
>>> vectors_to_warm(cfg.detector, 14), vectors_to_warm(cfg.detector, 1)
(400, 299)
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.detection.cross_rates import market_group
from riskguard.operators.detection.detector import DetectorLogic
from riskguard.operators.detection.models import DetectorConfig
from riskguard.operators.detection.stale_book import SIDES, StaleBookConfig
from riskguard.operators.detection.venue_confirm import confirm_key
from riskguard.schemas import AnomalySignal, FeatureVector, Scope, ScopeKind

NS = 1_000_000_000
DAY_NS = 86_400 * NS


def vectors_to_warm(config: DetectorConfig, n_features: int) -> int:
    """Feature vectors a key with ``n_features`` features learns before the learned
    detector can act on the next (``warmup_ns`` aside: that is time, not vectors): asked
    of the detector itself, which is fed calm vectors and shown an outlier in a copy of
    its state, until that outlier opens an episode that is not warming up. Only the
    learned detector's own settings matter (the bands' and checks' are left out of the
    cache's key)."""
    return _vectors_to_warm(msgspec.structs.replace(
        config, warmup_ns=0, bands=_BANDS, cross=_CROSS, confirm=_CONFIRM), n_features)


_BANDS, _CROSS, _CONFIRM = (DetectorConfig().bands, DetectorConfig().cross,
                            DetectorConfig().confirm)


MAX_PROBED = 20_000
"""A ``warmup_events`` above this is taken as the count itself, not asked of the detector
(feeding it that many vectors would cost more than the run)."""


@functools.lru_cache(maxsize=64)
def _vectors_to_warm(cfg: DetectorConfig, n_features: int) -> int:
    """Calm vectors fed until an outlier acts: galloping from ``warmup_events - 1`` (a
    state kept at each probe), then halving between the last probe that did not act and
    the first that did (acting, once warm, stays so on calm data). A detector that has
    not acted by its own windows' worth past ``warmup_events`` is taken to need that
    many."""
    if cfg.warmup_events > MAX_PROBED:
        return cfg.warmup_events
    limit = (max(cfg.warmup_events, cfg.range_block) + cfg.hst_window + cfg.threshold_window)
    logic = DetectorLogic(cfg, clock=lambda: 0)
    fed, step, lo = 0, 1, None  # lo: (vectors fed, state) of the last probe that did not act
    at = max(cfg.warmup_events - 1, 0)
    while True:
        fed = _feed(logic, fed, min(at, limit), n_features)
        if _acts(cfg, logic, fed, n_features):
            break
        if fed >= limit:
            return limit
        lo = (fed, logic.snapshot())
        at, step = fed + step, step * 2
    if lo is None:
        return fed
    lo_n, lo_state, hi_n = lo[0], lo[1], fed
    while hi_n - lo_n > 1:
        mid = (lo_n + hi_n) // 2
        probe = DetectorLogic(cfg, clock=lambda: 0, state=lo_state)
        _feed(probe, lo_n, mid, n_features)
        if _acts(cfg, probe, mid, n_features):
            hi_n = mid
        else:
            lo_n, lo_state = mid, probe.snapshot()
    return hi_n


_SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="x", venue="v")


def _vector(i: int, n_features: int, outlier: bool = False) -> FeatureVector:
    """The ``i``-th calm vector (a slow wave in each feature, never past its own range
    after the first period: no episode opens while the key learns), or an outlier."""
    return FeatureVector(key="v/x", scope=_SCOPE, ts=(i + 1) * NS, evidence_ids=[],
                         values={f"f{j}": 60.0 if outlier else math.sin(0.7 * i + j)
                                 for j in range(max(n_features, 1))})


def _feed(logic: DetectorLogic, fed: int, upto: int, n_features: int) -> int:
    for i in range(fed, upto):
        logic.on_event(_vector(i, n_features))
    return max(fed, upto)


def _acts(cfg: DetectorConfig, logic: DetectorLogic, fed: int, n_features: int) -> bool:
    """Would an outlier after ``fed`` calm vectors open (or escalate) an episode that
    acts? Asked of a copy of the state."""
    probe = DetectorLogic(cfg, clock=lambda: 0, state=logic.snapshot())
    out = probe.on_event(_vector(fed, n_features, outlier=True))
    return any(isinstance(s, AnomalySignal) and s.kind == "anomaly" and not s.warming_up
               for s in out)


@dataclass
class KeyProgress:
    """What one detector key was fed: its feature vectors, and those carrying a price."""

    key: str
    vectors: int = 0
    first_ts: int = -1
    last_ts: int = -1
    n_features: int = 0
    needed: int = 0  # vectors the learned detector learns first (vectors_to_warm)
    warm_vector_ts: int | None = None  # the first vector after them
    priced: int = 0
    first_priced_ts: int = -1
    returns_ts: int | None = None  # when the bands had warmup_returns returns
    warmup_returns: int = 0  # the key's own (its product's or measure's levels)
    interval_ns: int = 0
    measure: str = "price"
    depth_ts: int = -1  # the first vector with both book sides' staleness (a depth feed)
    depth_span: tuple[int, int] = (0, 0)  # its vectors, and the time from the first to the last
    # the longest one side rested while the other changed more recently: (seconds, side)
    depth_rest: tuple[float, str] = (0.0, "")
    # at a moment (``at``): the bid and ask sides' seconds unchanged there
    depth_now: tuple[float, float] | None = None
    times: list[int] = field(default_factory=list)  # every vector's ts (when kept) ...
    priced_times: list[int] = field(default_factory=list)  # ... and every priced one's
    depth_sides: list[tuple[int, float, float]] = field(default_factory=list)  # ... sides

    @property
    def venue_key(self) -> bool:
        return "/" not in self.key

    def at(self, ts: int) -> KeyProgress:
        """This key as it was at event time ``ts`` (its times must have been kept)."""
        warmup_returns = self.warmup_returns
        n = bisect.bisect_right(self.times, ts)
        m = bisect.bisect_right(self.priced_times, ts)
        return KeyProgress(
            key=self.key, vectors=n, first_ts=self.first_ts,
            last_ts=self.times[n - 1] if n else self.first_ts, n_features=self.n_features,
            needed=self.needed,
            # needed 0: never asked, as the key never came near warming up
            warm_vector_ts=self.times[self.needed] if self.needed and n > self.needed else None,
            priced=m, first_priced_ts=self.priced_times[0] if m else -1,
            returns_ts=(self.priced_times[warmup_returns] if m > warmup_returns else None),
            warmup_returns=warmup_returns, interval_ns=self.interval_ns, measure=self.measure,
            depth_ts=self.depth_ts if 0 <= self.depth_ts <= ts else -1,
            depth_span=self.depth_span,  # its typical gap, not the count up to ts
            **self._depth_at(ts))

    def _depth_at(self, ts: int) -> dict[str, Any]:
        """The longest rest up to ``ts`` and the sides there, from the kept sides."""
        sides = self.depth_sides[:bisect.bisect_right(self.depth_sides, (ts, math.inf))]
        rest = (0.0, "")
        for _t, bid, ask in sides:
            rest = _longer_rest(rest, bid, ask)
        return {"depth_rest": rest, "depth_now": sides[-1][1:] if sides else None}


def _longer_rest(rest: tuple[float, str], bid: float, ask: float) -> tuple[float, str]:
    """``rest`` (the longest one side rested while the other changed more recently, and
    which side), or this snapshot's if it is longer."""
    if max(bid, ask) > rest[0] and bid != ask:
        return max(bid, ask), "bid" if bid > ask else "ask"
    return rest


class DetectorWatch:
    """Follows a run's feature vectors (:meth:`vector`) and market records
    (:meth:`market`): per key, and which markets each group has from when. Thread-safe
    (bytewax runs a process's workers as threads)."""

    def __init__(self, detector: DetectorConfig, *, keep_times: bool = False) -> None:
        self.detector = detector
        self.keep_times = keep_times  # every vector's time, to read any moment (explain)
        self.keys: dict[str, KeyProgress] = {}
        self.markets: dict[str, int] = {}  # venue/instrument -> first ts (index prices too)
        self._lock = threading.Lock()

    def vector(self, fv: FeatureVector) -> None:
        with self._lock:
            p = self.keys.get(fv.key)
            if p is None:
                p = self.keys[fv.key] = KeyProgress(key=fv.key, first_ts=fv.ts,
                                                    n_features=len(fv.values))
            if p.vectors + 1 >= self.detector.warmup_events and not p.needed:
                # asked once a key could be near it (a short run never pays for it)
                p.needed = vectors_to_warm(self.detector, p.n_features)
            p.vectors += 1
            p.last_ts = max(p.last_ts, fv.ts)
            if self.keep_times:
                p.times.append(fv.ts)
                if fv.price:
                    p.priced_times.append(fv.ts)
            if SIDES[0] in fv.values:
                if p.depth_ts < 0:
                    p.depth_ts = fv.ts
                p.depth_span = (p.depth_span[0] + 1, fv.ts - p.depth_ts)
                bid, ask = fv.values[SIDES[0]], fv.values.get(SIDES[1], 0.0)
                p.depth_rest = _longer_rest(p.depth_rest, bid, ask)
                if self.keep_times:
                    p.depth_sides.append((fv.ts, bid, ask))
            if p.needed and p.vectors == p.needed + 1:  # the first scored once it has them
                p.warm_vector_ts = fv.ts
            if fv.price:
                p.priced += 1
                if p.first_priced_ts < 0:
                    p.first_priced_ts = fv.ts
                    p.warmup_returns = self.detector.bands.for_key(
                        fv.key, fv.measure).warmup_returns
                if p.priced == p.warmup_returns + 1:
                    p.returns_ts = fv.ts
                p.interval_ns = fv.interval_ns or p.interval_ns
                p.measure = str(fv.measure)

    def market(self, rec: Any) -> None:
        venue = getattr(rec, "venue", None)
        instrument = getattr(rec, "instrument", None)
        if venue is None or instrument is None:
            return
        key = f"{venue}/{instrument}"
        if key not in self.markets:
            with self._lock:
                self.markets.setdefault(key, rec.ts)

    def at(self, ts: int) -> DetectorWatch:
        """What the detectors had been fed by event time ``ts`` (with ``keep_times``)."""
        past = DetectorWatch(self.detector)
        past.keys = {k: p.at(ts) for k, p in self.keys.items() if p.first_ts <= ts}
        past.markets = {k: t for k, t in self.markets.items() if t <= ts}
        return past


@dataclass(frozen=True)
class Part:
    """One part of the detection on one key: live from when (None: never), what it needs
    to be live, why it was not, and what makes it fire once live."""

    name: str
    live_from: int | None
    needs: str
    why: str = ""
    fires: str = ""


PARTS = ("learned detector", "move bands, static levels", "move bands, learned bands",
         "daily price limits", "cross-market check", "cross-venue confirmation",
         "stale book sides")
SIGNALS = {PARTS[0]: "anomaly", PARTS[1]: "price_move", PARTS[2]: "price_move",
           PARTS[3]: "price_move", PARTS[4]: "dislocation", PARTS[5]: "price_move",
           PARTS[6]: "stale_feed"}


def key_parts(watch: DetectorWatch, key: str, cfg: Any) -> list[Part]:
    """Each part of the detection on ``key`` (``cfg`` the guard config)."""
    p = watch.keys[key]
    parts = [_learned(p, cfg.detector)]
    if p.depth_ts >= 0:
        parts.append(_stale(p, cfg.detector.stale_book.for_key(key)))
    if p.venue_key or p.first_priced_ts < 0:
        return parts
    bands = cfg.detector.bands.for_key(key, p.measure)
    if not bands.enabled:
        off = "turned off for this key (detector.bands)"
        parts += [Part(PARTS[1], None, "detector.bands.enabled", off),
                  Part(PARTS[2], None, "detector.bands.enabled", off)]
    else:
        parts += [_static(p, bands), _scaled(p, bands), _daily(p, bands)]
    parts += [_cross(watch, p, cfg.detector.cross), _confirm(watch, p, cfg.detector)]
    return parts


def _learned(p: KeyProgress, c: DetectorConfig) -> Part:
    needed = p.needed or vectors_to_warm(c, p.n_features)
    needs = f"{needed:,} vectors over {duration(c.warmup_ns)}"
    fires = (f"a score past the key's adaptive threshold (a share {c.target_alarm_rate:g} of "
             "its scores pass it)")
    live = max(p.warm_vector_ts, p.first_ts + c.warmup_ns) if p.warm_vector_ts else None
    if live is not None and live <= p.last_ts:
        return Part(PARTS[0], live, needs, fires=fires)
    why = []
    if p.vectors <= needed:
        why.append("too few events")
    if p.last_ts - p.first_ts < c.warmup_ns:
        why.append("too little time")
    return Part(PARTS[0], None, needs,
                f"{' and '.join(why)}: {p.vectors:,} vectors over "
                f"{duration(p.last_ts - p.first_ts)}", fires)


def _stale(p: KeyProgress, c: StaleBookConfig) -> Part:
    """The stale book-side check on a depth feed: a side can be stale once the feed has
    run ``stale_s`` and ``updates`` of its typical times between snapshots."""
    if not c.enabled:
        return Part(PARTS[6], None, "detector.stale_book.enabled", "turned off")
    n, span = p.depth_span
    gap = span // (n - 1) if n > 1 else 0
    needs = (f"book-depth snapshots over {duration(int(c.stale_s * NS))} and {c.updates} "
             "of the key's typical times between them")
    level = int(c.level_s(gap / NS) * NS)
    fires = (f"one side unchanged that long ({duration(level)} on this feed) while the "
             "other changed: critical until the side changes")
    if p.depth_rest[0] > 0.0:
        fires += (f"; the longest a side rested while the other changed: "
                  f"{duration(int(p.depth_rest[0] * NS))} ({p.depth_rest[1]})")
    if p.depth_now is not None:
        fires += (f"; here the bid side unchanged {duration(int(p.depth_now[0] * NS))}, "
                  f"the ask {duration(int(p.depth_now[1] * NS))}")
    live = p.depth_ts + level
    if live <= p.last_ts:
        return Part(PARTS[6], live, needs, fires=fires)
    return Part(PARTS[6], None, needs, f"the depth feed spans "
                f"{duration(p.last_ts - p.depth_ts)}", fires)


def _static(p: KeyProgress, bands: Any) -> Part:
    shortest = int(min(bands.horizons_s) * NS)
    caps = ", ".join(f"{c:g} bps in {duration(int(h * NS))}"
                     for h, c in zip(bands.horizons_s, bands.cap_bps, strict=True))
    live = p.first_priced_ts + max(shortest, p.interval_ns)
    needs = "the price one horizon back"
    way = _adverse(bands)
    if "static" not in bands.critical_rules:
        severity = "a warning"
    elif math.isinf(bands.static_z):
        severity = (f"a {way} critical until the key's typical moves are learned (static), "
                    "then as below")
    else:
        severity = f"a {way} critical when also {bands.static_z:g} typical moves deep (static)"
    if "static" in bands.critical_rules and way != "move":
        severity += ", any other a warning"
    fires = f"a move past its cap ({caps}): {severity}"
    if live <= p.last_ts and p.priced > 1:
        return Part(PARTS[1], live, needs, fires=fires)
    return Part(PARTS[1], None, needs, f"the data spans {duration(p.last_ts - p.first_ts)}, "
                f"less than its shortest horizon ({duration(max(shortest, p.interval_ns))})",
                fires)


def _scaled(p: KeyProgress, bands: Any) -> Part:
    needs = f"{bands.warmup_returns + 1} prices (its volatility)"
    fires = (f"a move past {bands.band_k[0]:g} (shortest horizon) to {bands.band_k[-1]:g} "
             "(longest) times its typical move there, within the floor and cap: a warning; "
             f"{critical_when(bands)}")
    if p.returns_ts is not None:
        return Part(PARTS[2], p.returns_ts, needs, fires=fires)
    return Part(PARTS[2], None, needs, f"too few events: {p.priced:,} prices", fires)


def _adverse(bands: Any) -> str:
    """The moves the band rules may make critical, in a word."""
    return {"down": "fall", "up": "rise", "both": "move"}[bands.critical_moves]


def critical_when(bands: Any) -> str:
    """When a reading of move bands with these settings is critical: each of their
    ``critical_rules``, in words.

    >>> from riskguard.operators.detection.band_levels import MoveBandConfig
    >>> critical_when(MoveBandConfig(critical_rules=("ratio", "horizons")))[:60]
    'critical on a fall 1.25 times its band (ratio), or a fall ou'
    """
    moves = _adverse(bands)
    said = {
        "fast_fall": f"a {moves} out of band within {duration(int(bands.fast_s * NS))} while "
                     "the day's range is past "
                     + ("" if math.isinf(bands.deep_bps) else f"{bands.deep_bps:g} bps or ")
                     + f"{bands.deep_z:g} typical day ranges, or {bands.warmup_deep_bps:g} "
                     "bps in the key's first day",
        "slide": f"a {moves} past a daily limit with the day's range {bands.slide_z:g} "
                 "typical ones deep",
        "static": (f"a {moves} past its cap before the key's typical moves are learned"
                   if math.isinf(bands.static_z) else
                   f"a {moves} past its cap and {bands.static_z:g} typical moves deep"),
        "limit": f"a {moves} to a daily limit tier, the first time a day",
        "ratio": f"a {moves} {bands.critical_ratio:g} times its band",
        "horizons": f"a {moves} out of band on {bands.confirm_horizons} horizons at once",
    }
    rules = [f"{said[r]} ({r})" for r in bands.critical_rules]
    return f"critical on {', or '.join(rules)}" if rules else "never critical"


def _daily(p: KeyProgress, bands: Any) -> Part:
    if not bands.daily_limits_bps:
        return Part(PARTS[3], None, "daily_limits_bps", "none for this key's measure")
    settle = int(bands.settlement_s * NS)
    first = (p.first_priced_ts - settle) // DAY_NS * DAY_NS + DAY_NS + settle
    needs = f"a settlement price (at {utc(settle)[11:16]} UTC) before the move"
    rules, way = bands.critical_rules, _adverse(bands)
    severity = ", ".join(
        [*([f"a {way} critical the first time a day at each (limit)"] if "limit" in rules
           else []),
         *([f"a {way} critical with the day's range {bands.slide_z:g} typical ones deep "
            "(slide)"] if "slide" in rules else [])]) or "a warning"
    fires = (f"a move past {', '.join(f'{x:g}' for x in bands.daily_limits_bps)} bps of the "
             f"previous settlement: {severity}")
    if first <= p.last_ts:
        return Part(PARTS[3], first, needs, fires=fires)
    return Part(PARTS[3], None, needs, f"no settlement time in the data up to "
                f"{utc(p.last_ts)}", fires)


def _group(watch: DetectorWatch, group: str | None, of: Any) -> list[tuple[int, str]]:
    if group is None:
        return []
    return sorted((ts, k) for k, ts in watch.markets.items() if of(k) == group)


def _cross(watch: DetectorWatch, p: KeyProgress, c: Any) -> Part:
    if not c.enabled:
        return Part(PARTS[4], None, "detector.cross.enabled", "turned off")
    group = market_group(p.key)
    members = _group(watch, group, market_group)
    needs = (f"{c.min_markets} markets of {group or 'one asset and quote'} (another venue "
             f"or an index price) and {c.warmup_points} comparisons")
    fires = (f"a market leaving its usual offset from the others by more than {c.floor_bps:g} "
             f"bps and {c.band_k:g} usual spreads; critical at {c.critical_ratio:g} times")
    if group is None:
        return Part(PARTS[4], None, needs, f"{p.key} names no known quote")
    if len(members) < c.min_markets:
        return Part(PARTS[4], None, needs, f"the data has {len(members)}")
    ready = members[c.min_markets - 1][0]
    step = max(p.interval_ns, (p.last_ts - p.first_ts) // max(p.priced - 1, 1))
    live = max(ready, p.first_priced_ts) + c.warmup_points * step
    if live <= p.last_ts:
        return Part(PARTS[4], live, needs, fires=fires)
    return Part(PARTS[4], None, needs, f"too few events after {utc(ready)}", fires)


def _confirm(watch: DetectorWatch, p: KeyProgress, c: DetectorConfig) -> Part:
    if not c.confirm.enabled:
        return Part(PARTS[5], None, "detector.confirm.enabled", "turned off")
    members = [m for m in _group(watch, confirm_key(p.key), confirm_key)
               if watch.keys.get(m[1]) is not None]
    venues = sorted({k.partition("/")[0] for _ts, k in members})
    needs = "the asset on a second venue"
    fires = "a band warning here while a band on another venue of the asset trips: critical"
    if len(venues) >= 2:
        return Part(PARTS[5], members[1][0], needs, fires=fires)
    return Part(PARTS[5], None, needs, f"the data has it on {len(venues)} venue", fires)


# -- the whole run ------------------------------------------------------------------


@dataclass
class Readiness:
    """Every key's parts, and what they add up to over the run."""

    keys: dict[str, list[Part]] = field(default_factory=dict)
    watch: DetectorWatch | None = None

    def never_warm(self) -> list[tuple[str, Part]]:
        """Keys whose learned detector never warmed up, with its part."""
        return [(k, parts[0]) for k, parts in self.keys.items() if parts[0].live_from is None]

    def by_part(self) -> dict[str, tuple[list[str], list[str], list[str]]]:
        """Part -> (keys live from their first event, keys live from part way, keys never
        live)."""
        out: dict[str, tuple[list[str], list[str], list[str]]] = {}
        assert self.watch is not None
        for key, parts in self.keys.items():
            first = self.watch.keys[key].first_ts
            for part in parts:
                all_along, later, never = out.setdefault(part.name, ([], [], []))
                if part.live_from is None:
                    never.append(key)
                elif part.live_from <= first:
                    all_along.append(key)
                else:
                    later.append(key)
        return out

    def live_from(self, name: str, key: str) -> int | None:
        """When part ``name`` became live on ``key`` (None: never)."""
        return next(p.live_from for p in self.keys[key] if p.name == name)


def readiness(watch: DetectorWatch, cfg: Any) -> Readiness:
    """Every key's parts over a run (:func:`key_parts`)."""
    return Readiness({k: key_parts(watch, k, cfg) for k in sorted(watch.keys)}, watch)


def summary_lines(r: Readiness, most: int = 4) -> list[str]:
    """What a run says at its end: which parts were live for the whole run (from each
    key's first event), which from part way (and from when, counted from the run's
    start), which never (and why), and the keys that never warmed up (and why)."""
    if not r.keys:
        return ["detectors: no feature vector reached them (no market data)"]
    assert r.watch is not None
    first = min(p.first_ts for p in r.watch.keys.values())
    last = max(p.last_ts for p in r.watch.keys.values())
    venues = sum(1 for p in r.watch.keys.values() if p.venue_key)
    what = f"{len(r.keys) - venues} market(s)" + (f", {venues} venue(s)" if venues else "")
    out = [f"detectors: {what}, {utc(first)} to {utc(last)}"]
    groups = r.by_part()
    whole = [n for n in PARTS if n in groups and not groups[n][1] and not groups[n][2]]
    if whole:  # most parts need some data first: a run may well have none
        out.append("  live for the whole run: " + "; ".join(whole))
    part_way = sorted(((_since(r, n, [*groups[n][0], *groups[n][1]], first), n) for n in PARTS
                       if n in groups and n not in whole and (groups[n][0] or groups[n][1])),
                      key=lambda x: x[0][0])  # in the order they became live
    if part_way:
        out.append("  live for part of it: " + "; ".join(
            f"{n} ({_some(groups[n])}, {when})" for (_t, when), n in part_way))
    never = [n for n in PARTS if n in groups and not groups[n][0] and not groups[n][1]]
    for name in never:
        key = groups[name][2][0]
        part = next(x for x in r.keys[key] if x.name == name)
        out.append(f"  never live: {name} (needs {part.needs}; {part.why})")
    rests = sorted(((p.depth_rest[0], k, p.depth_rest[1]) for k, p in r.watch.keys.items()
                    if p.depth_ts >= 0), reverse=True)
    if rests:  # what a calm day of a book says its stale_s must be above
        out.append("  book sides at rest, the longest one side rested while the other "
                   "changed: " + "; ".join(f"{k} {duration(int(s * NS))} ({side or '-'})"
                                           for s, k, side in rests[:most])
                   + (f" and {len(rests) - most} more" if len(rests) > most else ""))
    cold = r.never_warm()
    if cold:
        by_why: dict[str, list[str]] = {}
        for key, part in cold:
            why, _, had = part.why.partition(": ")
            by_why.setdefault(why, []).append(f"{key} ({had})")
        shown = "; ".join(f"{why}: {', '.join(keys[:most])}"
                          + (f" and {len(keys) - most} more" if len(keys) > most else "")
                          for why, keys in by_why.items())
        out.append(f"never warmed up (the learned detector needs {cold[0][1].needs}): "
                   f"{len(cold)} of {len(r.keys)} key(s), {shown}")
    return out


def _since(r: Readiness, name: str, keys: list[str], first: int) -> tuple[int, str]:
    """From when part ``name`` was live on ``keys``, counted from the run's start
    ``first``: the earliest time, and in words (``from 30 s in``, or the earliest and
    latest key's)."""
    times = sorted(t - first for k in keys if (t := r.live_from(name, k)) is not None)
    lo, hi = duration(times[0]), duration(times[-1])
    return times[0], f"from {lo} in" if lo == hi else f"from {lo} to {hi} in"


def _some(group: tuple[list[str], list[str], list[str]]) -> str:
    """How many of the keys a part applies to were live at some point."""
    live = len(group[0]) + len(group[1])
    total = live + len(group[2])
    return f"{live} of {total} key(s)" if live < total else "every key"


def to_json(r: Readiness) -> dict[str, Any]:
    """The readiness as the report keeps it."""
    return {"keys": {k: [{"part": p.name, "signal": SIGNALS[p.name], "live_from": p.live_from,
                          "needs": p.needs, "why": p.why, "fires": p.fires} for p in parts]
                     for k, parts in r.keys.items()},
            "never_warm": [k for k, _ in r.never_warm()],
            "lines": summary_lines(r)}


def utc(ts: int) -> str:
    """An event time as a UTC date and time.

    >>> utc(1_704_067_260 * NS)
    '2024-01-01 00:01:00 UTC'
    """
    import datetime as dt  # noqa: PLC0415

    t = dt.datetime.fromtimestamp(ts / NS, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(ns: int) -> str:
    """A span of event time in words.

    >>> duration(199 * NS), duration(300 * NS), duration(86_340 * NS), duration(3 * DAY_NS)
    ('3 min 19 s', '5 min', '23 h 59 min', '3 days')
    """
    s = max(0, ns) / NS
    if s < 60:
        return f"{s:.0f} s" if s >= 1 or s == 0 else f"{s:.3g} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    if s < 86_400:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d = s / 86_400
    if math.isclose(d, 1.0):
        return "1 day"
    return f"{d:.0f} days" if math.isclose(d, round(d)) else f"{d:.1f} days"


__all__ = [
    "DetectorWatch", "KeyProgress", "Part", "Readiness", "duration", "key_parts", "readiness",
    "summary_lines", "to_json", "utc", "vectors_to_warm",
]
