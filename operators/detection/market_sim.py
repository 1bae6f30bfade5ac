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
    sim = _Sim(cfg or SimConfig())
    for k in range(sim.cfg.duration_s * 1000 // sim.cfg.tick_ms):
        sim.tick(k)
    sim.events.sort(key=attrgetter("ts"))  # every record here has ts
    return Scenario(sim.cfg, tuple(sim.cfg.venues), tuple(sim.instruments), sim.events,
                    sim.incidents)


class _Sim:
    """The generator's state: fair log prices (with their calm or volatile regime),
    implied vols, each venue's bias and last mid, frozen quotes, and the records made.
    One random stream, drawn in a fixed order, makes a scenario a function of its seed."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        rng = self.rng = random.Random(cfg.seed)
        self.linear, self.options = instrument_names(cfg)
        self.instruments = self.linear + self.options
        self.incidents = _plan_incidents(cfg, rng, self.linear, self.options)
        self.by_inst: dict[str, list[Incident]] = {}
        for inc in self.incidents:
            self.by_inst.setdefault(inc.instrument, []).append(inc)
        self.tick_ns = cfg.tick_ms * 1_000_000
        dt_s = cfg.tick_ms / 1000.0
        self.fair = {name: math.log(_PRICES[i % len(_PRICES)])
                     for i, name in enumerate(self.linear)}
        self.base_of = {name: name.split("-")[0] + "-USDT" for name in self.options}
        self.regime = dict.fromkeys(self.instruments, 0)
        self.iv = {name: 0.55 + 0.05 * i for i, name in enumerate(self.options)}
        self.venue_bias = {(v, s): rng.gauss(0.0, 0.0001) for v in cfg.venues
                           for s in self.linear}
        self.last_mid: dict[tuple[str, str], float] = {}
        self.frozen: dict[tuple[str, str], Quote] = {}
        self.events: list[Record] = []
        self.seq = dict.fromkeys(cfg.venues, 0)
        self.counter = 0
        self.p_q = cfg.quote_rate * dt_s
        self.p_t = cfg.trade_rate * dt_s
        self.p_o = cfg.option_quote_rate * dt_s
        self.idx_every = max(1, round(cfg.index_every_s / dt_s))
        self.fund_every = max(1, round(cfg.funding_every_s / dt_s))
        self.hb_every = max(1, round(cfg.heartbeat_every_s / dt_s))

    def nid(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def active(self, inst: str, t: int, kind: str) -> Incident | None:
        for inc in self.by_inst.get(inst, ()):
            if inc.kind == kind and inc.start_ns <= t < inc.end_ns:
                return inc
        return None

    def tick(self, k: int) -> None:
        """Tick ``k``: the fair prices and vols move, each venue publishes, and every
        ``index_every_s`` the index and oracle prices."""
        rng = self.rng
        t = self.cfg.start_ns + k * self.tick_ns
        for name in self.linear:
            if rng.random() < 0.0005:
                self.regime[name] ^= 1
            sigma = (0.00005 if self.regime[name] == 0 else 0.00015)
            self.fair[name] += rng.gauss(0.0, sigma)
        for name in self.options:
            if rng.random() < 0.0005:
                self.regime[name] ^= 1
            self.iv[name] = min(1.5, max(0.2, self.iv[name] + rng.gauss(0.0, 0.0005)))
        for v in self.cfg.venues:
            for name in self.linear:
                self.linear_quote(v, name, k, t)
            for name in self.options:
                if rng.random() >= self.p_o:
                    continue
                self.option_quote(v, name, t)
            if k % self.hb_every == 0:
                self.seq[v] += 1
                self.events.append(VenueStatus(
                    id=self.nid("h"), venue=v, ts=t, recv_ts=t + 3_000_000, seq=self.seq[v],
                ))
        if k % self.idx_every == self.idx_every - 1:
            self.index_prices(t + self.tick_ns - 1, t)

    def linear_quote(self, v: str, name: str, k: int, t: int) -> None:
        """A venue's quote, trade and funding of a linear instrument, as its incidents
        shape them."""
        rng = self.rng
        ts = t + rng.randrange(0, self.tick_ns)
        key = (v, name)
        mid = math.exp(self.fair[name] + self.venue_bias[key] + rng.gauss(0.0, 0.00005))
        spread_bps = 2.0 + abs(rng.gauss(0.0, 0.7))
        mid, spread_bps, qty_mult, rate_mult, stale = self.shaped(v, name, t, ts, mid,
                                                                  spread_bps)
        if not stale:
            self.frozen.pop(key, None)
            self.last_mid[key] = mid
        if rng.random() < self.p_q:
            if stale and key in self.frozen:
                fq = self.frozen[key]
                self.events.append(Quote(
                    id=self.nid("q"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                    bid=fq.bid, bid_size=fq.bid_size, ask=fq.ask, ask_size=fq.ask_size,
                ))
            elif not stale:
                half = mid * spread_bps / 20000.0
                self.events.append(Quote(
                    id=self.nid("q"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                    bid=mid - half, bid_size=rng.uniform(0.5, 5.0),
                    ask=mid + half, ask_size=rng.uniform(0.5, 5.0),
                ))
        if not stale and rng.random() < self.p_t * rate_mult:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            half = mid * spread_bps / 20000.0
            px = mid + half if side is Side.BUY else mid - half
            self.events.append(Trade(
                id=self.nid("t"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                price=px, qty=rng.expovariate(1.0) * qty_mult + 0.001, side=side,
            ))
        if name.endswith("-PERP") and k % self.fund_every == self.fund_every - 1:
            idx = math.exp(self.fair[name])
            self.events.append(FundingRate(
                id=self.nid("f"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
                rate=(mid - idx) / idx * 0.1 + 0.0001, mark_price=mid, index_price=idx,
            ))

    def shaped(self, v: str, name: str, t: int, ts: int, mid: float, spread_bps: float
               ) -> tuple[float, float, float, float, bool]:
        """The mid, spread, trade size and rate multipliers and staleness under the
        incidents active at ``t`` on venue ``v``; a stale feed freezes its last quote."""
        key = (v, name)
        qty_mult = rate_mult = 1.0
        stale = False
        for inc in self.by_inst.get(name, ()):
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
                if inc.magnitude >= 0.5 and key not in self.frozen and key in self.last_mid:
                    last = self.last_mid[key]
                    self.frozen[key] = Quote(
                        id="frozen", venue=v, instrument=name, ts=ts, bid=last * 0.9999,
                        bid_size=1.0, ask=last * 1.0001, ask_size=1.0,
                    )
        return mid, spread_bps, qty_mult, rate_mult, stale

    def option_quote(self, v: str, name: str, t: int) -> None:
        """An option's quote, priced by Black-Scholes at its implied vol (raised in an
        iv_spike)."""
        rng = self.rng
        ts = t + rng.randrange(0, self.tick_ns)
        under = math.exp(self.fair[self.base_of[name]])
        vol = self.iv[name]
        spike = self.active(name, t, "iv_spike")
        if spike is not None:
            vol += spike.magnitude
        vol += rng.gauss(0.0, 0.003)
        strike = float(name.split("-")[2])
        tau = 0.25
        d1 = (math.log(under / strike) + 0.5 * vol * vol * tau) / (vol * math.sqrt(tau))
        d2 = d1 - vol * math.sqrt(tau)
        price = under * _norm_cdf(d1) - strike * _norm_cdf(d2)
        pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        self.events.append(OptionQuote(
            id=self.nid("o"), venue=v, instrument=name, ts=ts, recv_ts=ts + 2_000_000,
            underlying=self.base_of[name], expiry=self.cfg.start_ns + 90 * 86400 * NS,
            strike=strike, option_type=OptionType.CALL,
            bid=max(0.0, price * 0.99), ask=price * 1.01, mark_price=max(0.0, price),
            mark_iv=max(0.0, vol), underlying_price=under, delta=_norm_cdf(d1),
            gamma=pdf / (under * vol * math.sqrt(tau)), vega=under * pdf * math.sqrt(tau),
        ))

    def index_prices(self, ts: int, t: int) -> None:
        """Each linear instrument's index price (the venues' median mid) and oracle
        price (the fair price, off by an oracle_divergence)."""
        for name in self.instruments:
            mids = sorted(self.last_mid[(v, name)] for v in self.cfg.venues
                          if (v, name) in self.last_mid)
            if name not in self.fair:
                continue
            truth = math.exp(self.fair[name])
            if mids:
                self.events.append(IndexPrice(
                    id=self.nid("i"), venue=INDEX_SOURCE, instrument=name, ts=ts,
                    recv_ts=ts + 1_000_000, price=mids[len(mids) // 2],
                ))
            div = self.active(name, t, "oracle_divergence")
            oracle = truth * (1.0 + self.rng.gauss(0.0, 0.0002))
            if div is not None:
                oracle *= 1.0 + div.magnitude
            self.events.append(IndexPrice(
                id=self.nid("i"), venue=ORACLE_SOURCE, instrument=name, ts=ts,
                recv_ts=ts + 1_000_000, price=oracle,
            ))
