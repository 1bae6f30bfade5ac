"""A labelled, seeded synthetic crypto market for tests, backtests and benches.

Three venues quote twenty instruments (sixteen linear, four options). Each
instrument's fair price is a regime-switching random walk (a calm and a
volatile regime). Venues add their own small noise. Incidents of seven kinds
are injected with known start and end times:

- ``flash_crash``: one venue's price drops several percent, then recovers;
- ``stale_feed``: one venue's feed for one instrument stops or freezes;
- ``spread_blowout``: one venue's spread widens many times;
- ``volume_spike``: one venue's trade size and rate jump;
- ``iv_spike``: an option's implied volatility jumps on every venue;
- ``oracle_divergence``: the oracle price moves away from every venue;
- ``venue_dislocation``: one venue trades away from the others.

The stream holds ``Trade``, ``Quote``, ``OptionQuote``, ``IndexPrice`` (the
composite ``index``, the median of venue mids, and an on-chain ``oracle``),
``FundingRate`` for perpetuals and ``VenueStatus`` heartbeats, in event-time
order. Everything is derived from the seed, so a scenario is reproducible.

>>> sc = generate(SimConfig(duration_s=5, seed=7, incidents_per_kind=0))
>>> len(sc.instruments), len(sc.venues), sc.incidents
(20, 3, [])
>>> sc.events == generate(SimConfig(duration_s=5, seed=7, incidents_per_kind=0)).events
True
>>> sorted({type(e).__name__ for e in sc.events})[:3]
['IndexPrice', 'OptionQuote', 'Quote']
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from operator import attrgetter

from riskguard.schemas.base import Record
from riskguard.schemas.market import (
    FundingRate,
    IndexPrice,
    OptionQuote,
    OptionType,
    Quote,
    Side,
    Trade,
    VenueStatus,
)

NS = 1_000_000_000
INCIDENT_KINDS = (
    "flash_crash",
    "stale_feed",
    "spread_blowout",
    "volume_spike",
    "iv_spike",
    "oracle_divergence",
    "venue_dislocation",
)
VENUE_KINDS = frozenset(
    {"flash_crash", "stale_feed", "spread_blowout", "volume_spike", "venue_dislocation"}
)
INDEX_SOURCE = "index"
ORACLE_SOURCE = "oracle"


@dataclass(frozen=True)
class Incident:
    """One injected incident. ``venue`` is ``None`` when every venue is affected."""

    kind: str
    instrument: str
    venue: str | None
    start_ns: int
    end_ns: int
    magnitude: float = 0.0

    def keys(self, venues: tuple[str, ...]) -> list[str]:
        """The ``venue/instrument`` keys this incident affects."""
        vs = venues if self.venue is None else (self.venue,)
        return [f"{v}/{self.instrument}" for v in vs]


@dataclass(frozen=True)
class SimConfig:
    """Scenario settings; the defaults are the default quality scenario."""

    seed: int = 20240601
    duration_s: int = 2400
    start_ns: int = 1_700_000_000 * NS
    tick_ms: int = 100
    venues: tuple[str, ...] = ("binance", "okx", "deribit")
    n_linear: int = 16
    n_options: int = 4
    quote_rate: float = 2.0
    trade_rate: float = 1.0
    option_quote_rate: float = 1.0
    index_every_s: float = 1.0
    funding_every_s: float = 60.0
    heartbeat_every_s: float = 1.0
    warmup_s: int = 600
    incidents_per_kind: int = 6


@dataclass
class Scenario:
    """A generated stream plus its labels."""

    config: SimConfig
    venues: tuple[str, ...]
    instruments: tuple[str, ...]
    events: list[Record]
    incidents: list[Incident] = field(default_factory=list)

    @property
    def start_ns(self) -> int:
        return self.config.start_ns

    @property
    def end_ns(self) -> int:
        return self.config.start_ns + self.config.duration_s * NS


_BASES = ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "AVAX", "LINK")
_PRICES = (60000.0, 3000.0, 150.0, 0.6, 0.45, 0.15, 35.0, 15.0)


def instrument_names(cfg: SimConfig) -> tuple[list[str], list[str]]:
    """Linear and option instrument names."""
    linear = []
    for i in range(cfg.n_linear):
        base = _BASES[i % len(_BASES)]
        linear.append(f"{base}-USDT" if i < len(_BASES) else f"{base}-PERP")
    options = []
    for i in range(cfg.n_options):
        base = _BASES[i % 2]
        strike = int(_PRICES[i % 2] * (1.0 + 0.05 * (i // 2)))
        options.append(f"{base}-20250627-{strike}-C")
    return linear, options


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _plan_incidents(cfg: SimConfig, rng: random.Random, linear: list[str],
                    options: list[str]) -> list[Incident]:
    """Place incidents after warm-up, never two on the same instrument at once."""
    start = cfg.start_ns + cfg.warmup_s * NS
    end = cfg.start_ns + cfg.duration_s * NS - 90 * NS
    busy: dict[str, list[tuple[int, int]]] = {}
    out: list[Incident] = []
    durations = {
        "flash_crash": (20, 40), "stale_feed": (30, 60), "spread_blowout": (20, 40),
        "volume_spike": (10, 20), "iv_spike": (20, 40), "oracle_divergence": (30, 60),
        "venue_dislocation": (30, 60),
    }
    if end <= start:
        return out
    for kind in INCIDENT_KINDS:
        pool = options if kind == "iv_spike" else linear
        placed = 0
        tries = 0
        while placed < cfg.incidents_per_kind and tries < 1000:
            tries += 1
            inst = rng.choice(pool)
            lo, hi = durations[kind]
            dur = rng.randint(lo, hi) * NS
            t0 = start + rng.randrange(0, max(1, (end - start - dur) // NS)) * NS
            t1 = t0 + dur
            gap = 60 * NS
            if any(t0 < b + gap and a < t1 + gap for a, b in busy.get(inst, [])):
                continue
            busy.setdefault(inst, []).append((t0, t1))
            venue = rng.choice(cfg.venues) if kind in VENUE_KINDS else None
            mag = {
                "flash_crash": rng.uniform(0.03, 0.08),
                "stale_feed": float(rng.random() < 0.5),  # 1.0 = frozen, 0.0 = stopped
                "spread_blowout": rng.uniform(10.0, 30.0),
                "volume_spike": rng.uniform(10.0, 30.0),
                "iv_spike": rng.uniform(0.3, 0.6),
                "oracle_divergence": rng.uniform(0.02, 0.05) * rng.choice((-1, 1)),
                "venue_dislocation": rng.uniform(0.01, 0.03) * rng.choice((-1, 1)),
            }[kind]
            out.append(Incident(kind, inst, venue, t0, t1, mag))
            placed += 1
    out.sort(key=lambda i: (i.start_ns, i.instrument))
    return out


def generate(cfg: SimConfig | None = None) -> Scenario:
    """Generate a scenario: a time-ordered list of records and its incidents."""
    cfg = cfg or SimConfig()
    rng = random.Random(cfg.seed)
    linear, options = instrument_names(cfg)
    instruments = linear + options
    incidents = _plan_incidents(cfg, rng, linear, options)
    by_inst: dict[str, list[Incident]] = {}
    for inc in incidents:
        by_inst.setdefault(inc.instrument, []).append(inc)

    tick = cfg.tick_ms * 1_000_000
    dt_s = cfg.tick_ms / 1000.0
    n_ticks = cfg.duration_s * 1000 // cfg.tick_ms
    fair = {}
    base_of = {}
    for i, name in enumerate(linear):
        fair[name] = math.log(_PRICES[i % len(_PRICES)])
    for name in options:
        base_of[name] = name.split("-")[0] + "-USDT"
    regime = dict.fromkeys(instruments, 0)
    iv = {name: 0.55 + 0.05 * i for i, name in enumerate(options)}
    venue_bias = {(v, s): rng.gauss(0.0, 0.0001) for v in cfg.venues for s in linear}
    last_mid: dict[tuple[str, str], float] = {}
    frozen: dict[tuple[str, str], Quote] = {}
    events: list[Record] = []
    seq = dict.fromkeys(cfg.venues, 0)
    counter = 0
    p_q = cfg.quote_rate * dt_s
    p_t = cfg.trade_rate * dt_s
    p_o = cfg.option_quote_rate * dt_s
    idx_every = max(1, round(cfg.index_every_s / dt_s))
    fund_every = max(1, round(cfg.funding_every_s / dt_s))
    hb_every = max(1, round(cfg.heartbeat_every_s / dt_s))

    def nid(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}-{counter}"

    def active(inst: str, t: int, kind: str) -> Incident | None:
        for inc in by_inst.get(inst, ()):
            if inc.kind == kind and inc.start_ns <= t < inc.end_ns:
                return inc
        return None

    for k in range(n_ticks):
        t = cfg.start_ns + k * tick
        for name in linear:
            if rng.random() < 0.0005:
                regime[name] ^= 1
            sigma = (0.00005 if regime[name] == 0 else 0.00015)
            fair[name] += rng.gauss(0.0, sigma)
        for name in options:
            if rng.random() < 0.0005:
                regime[name] ^= 1
            iv[name] = min(1.5, max(0.2, iv[name] + rng.gauss(0.0, 0.0005)))
        for v in cfg.venues:
            for name in linear:
                ts = t + rng.randrange(0, tick)
                key = (v, name)
                mid = math.exp(fair[name] + venue_bias[key] + rng.gauss(0.0, 0.00005))
                spread_bps = 2.0 + abs(rng.gauss(0.0, 0.7))
                qty_mult = 1.0
                rate_mult = 1.0
                stale = False
                for inc in by_inst.get(name, ()):
                    if not (inc.start_ns <= t < inc.end_ns) or inc.venue not in (None, v):
                        continue
                    frac = (t - inc.start_ns) / max(1, inc.end_ns - inc.start_ns)
                    if inc.kind == "flash_crash":
                        drop = inc.magnitude * (min(1.0, frac / 0.15) if frac < 0.15
                                                else max(0.0, 1.0 - (frac - 0.15) / 0.85))
                        mid *= 1.0 - drop
                    elif inc.kind == "venue_dislocation":
                        mid *= 1.0 + inc.magnitude
                    elif inc.kind == "spread_blowout":
                        spread_bps *= inc.magnitude
                    elif inc.kind == "volume_spike":
                        qty_mult = inc.magnitude
                        rate_mult = 5.0
                    elif inc.kind == "stale_feed":
                        stale = True
                        if inc.magnitude >= 0.5 and key not in frozen and key in last_mid:
                            frozen[key] = Quote(
                                id="frozen", venue=v, instrument=name, ts=ts,
                                bid=last_mid[key] * 0.9999, bid_size=1.0,
                                ask=last_mid[key] * 1.0001, ask_size=1.0,
                            )
                if not stale:
                    frozen.pop(key, None)
                    last_mid[key] = mid
                if rng.random() < p_q:
                    if stale and key in frozen:
                        fq = frozen[key]
                        events.append(Quote(
                            id=nid("q"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                            bid=fq.bid, bid_size=fq.bid_size, ask=fq.ask, ask_size=fq.ask_size,
                        ))
                    elif not stale:
                        half = mid * spread_bps / 20000.0
                        events.append(Quote(
                            id=nid("q"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                            bid=mid - half, bid_size=rng.uniform(0.5, 5.0),
                            ask=mid + half, ask_size=rng.uniform(0.5, 5.0),
                        ))
                if not stale and rng.random() < p_t * rate_mult:
                    side = Side.BUY if rng.random() < 0.5 else Side.SELL
                    half = mid * spread_bps / 20000.0
                    px = mid + half if side is Side.BUY else mid - half
                    events.append(Trade(
                        id=nid("t"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                        price=px, qty=rng.expovariate(1.0) * qty_mult + 0.001, side=side,
                    ))
                if name.endswith("-PERP") and k % fund_every == fund_every - 1:
                    idx = math.exp(fair[name])
                    events.append(FundingRate(
                        id=nid("f"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                        rate=(mid - idx) / idx * 0.1 + 0.0001, mark_price=mid, index_price=idx,
                    ))
            for name in options:
                if rng.random() >= p_o:
                    continue
                ts = t + rng.randrange(0, tick)
                under = math.exp(fair[base_of[name]])
                vol = iv[name]
                spike = active(name, t, "iv_spike")
                if spike is not None:
                    vol += spike.magnitude
                vol += rng.gauss(0.0, 0.003)
                strike = float(name.split("-")[2])
                tau = 0.25
                d1 = (math.log(under / strike) + 0.5 * vol * vol * tau) / (vol * math.sqrt(tau))
                d2 = d1 - vol * math.sqrt(tau)
                price = under * _norm_cdf(d1) - strike * _norm_cdf(d2)
                pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
                events.append(OptionQuote(
                    id=nid("o"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                    underlying=base_of[name], expiry=cfg.start_ns + 90 * 86400 * NS,
                    strike=strike, option_type=OptionType.CALL,
                    bid=max(0.0, price * 0.99), ask=price * 1.01, mark_price=max(0.0, price),
                    mark_iv=max(0.0, vol), underlying_price=under, delta=_norm_cdf(d1),
                    gamma=pdf / (under * vol * math.sqrt(tau)), vega=under * pdf * math.sqrt(tau),
                ))
            if k % hb_every == 0:
                seq[v] += 1
                events.append(VenueStatus(
                    id=nid("h"), venue=v, ts=t, recv_ts=t + 3_000_000, seq=seq[v],
                ))
        if k % idx_every == idx_every - 1:
            ts = t + tick - 1
            for name in instruments:
                mids = sorted(last_mid[(v, name)] for v in cfg.venues if (v, name) in last_mid)
                if name in fair:
                    truth = math.exp(fair[name])
                    if mids:
                        events.append(IndexPrice(
                            id=nid("i"), venue=INDEX_SOURCE, instrument=name, ts=ts,
                            recv_ts=ts + 1_000_000, price=mids[len(mids) // 2],
                        ))
                    div = active(name, t, "oracle_divergence")
                    oracle = truth * (1.0 + rng.gauss(0.0, 0.0002))
                    if div is not None:
                        oracle *= 1.0 + div.magnitude
                    events.append(IndexPrice(
                        id=nid("i"), venue=ORACLE_SOURCE, instrument=name, ts=ts,
                        recv_ts=ts + 1_000_000, price=oracle,
                    ))
    events.sort(key=attrgetter("ts"))  # every record here has ts
    return Scenario(cfg, tuple(cfg.venues), tuple(instruments), events, incidents)
