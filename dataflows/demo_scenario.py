"""The bundled demo scenario: three venues, BTC and ETH spot, perpetuals and options.

Five minutes of market time (seeded, deterministic), with three incidents:

1. **Flash crash** on okx ``BTC-USDT`` at 150 s: -12 % in 3 s, held 10 s,
   recovered over 20 s.
2. **Heartbeat loss** of binance's primary feed from 200 s to 240 s; binance's
   backup feed keeps publishing, so the guard fails over and back.
3. **Exposure breach** caused by fills: from 225 s, repeated BTC-PERP buys at
   deribit push its gross notional past its limit.

>>> sc = build_scenario(start_ns=0)
>>> len(sc.events) > 10_000, sc.events == build_scenario(start_ns=0).events
(True, True)
>>> [i.kind for i in sc.incidents]
['flash_crash', 'heartbeat_loss', 'exposure_breach']
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from riskguard.schemas import (
    Balance,
    Fill,
    IndexPrice,
    OptionQuote,
    OptionType,
    Quote,
    Record,
    Side,
    Trade,
    VenueStatus,
)

NS = 1_000_000_000
MS = 1_000_000
DURATION_S = 300
VENUES = ("binance", "okx", "deribit")
LISTINGS: dict[str, tuple[str, ...]] = {
    "binance": ("BTC-USDT", "ETH-USDT", "BTC-PERP", "ETH-PERP"),
    "okx": ("BTC-USDT", "ETH-USDT", "BTC-PERP", "ETH-PERP"),
    "deribit": ("BTC-PERP", "ETH-PERP"),
}
OPTIONS = {"BTC-27DEC26-70000-C": ("BTC", 70_000.0), "ETH-27DEC26-3500-C": ("ETH", 3_500.0)}
START_PX = {"BTC": 65_000.0, "ETH": 3_200.0}
EXPIRY_NS = 1_798_329_600 * NS  # 2026-12-27


@dataclass(frozen=True)
class Incident:
    kind: str
    scope: str
    start_ns: int
    end_ns: int


@dataclass
class Scenario:
    events: list[Record] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)


def _crash_factor(t_s: float) -> float:
    """okx BTC-USDT multiplier during the flash crash window."""
    if t_s < 150 or t_s >= 183:
        return 1.0
    if t_s < 153:
        return 1.0 - 0.12 * (t_s - 150) / 3
    if t_s < 163:
        return 0.88
    return 0.88 + 0.12 * (t_s - 163) / 20


def build_scenario(start_ns: int, seed: int = 7) -> Scenario:
    """Generate the scenario with market time starting at ``start_ns``: every 250 ms the
    fair prices move and each venue quotes and trades (:func:`_market_tick`); once a
    second the index prices and heartbeats (:func:`_second`); every second tick the
    options (:func:`_options`); and the book's opening positions and the fills that
    breach a limit (:func:`_book`)."""
    rng = random.Random(seed)
    ev: list[tuple[int, int, Record]] = []
    n = [0]

    def add(rec: Record) -> None:
        n[0] += 1
        ev.append((rec.ts, n[0], rec))  # type: ignore[attr-defined]

    fair = dict(START_PX)
    step_ms = 250
    for tick in range(DURATION_S * 1000 // step_ms):
        t_ms = tick * step_ms
        t_s = t_ms / 1000
        ts = start_ns + t_ms * MS
        for u in fair:
            fair[u] *= math.exp(rng.gauss(0, 0.0004))
        if tick % 4 == 0:
            _second(add, fair, tick, ts, t_s)
        _market_tick(add, rng, fair, tick, ts, t_s)
        if tick % 4 == 2:
            _options(add, rng, fair, tick, ts)
    _book(add, start_ns)
    ev.sort(key=lambda x: (x[0], x[1]))
    incidents = [
        Incident("flash_crash", "instrument:okx/BTC-USDT",
                 start_ns + 150 * NS, start_ns + 183 * NS),
        Incident("heartbeat_loss", "venue:binance", start_ns + 200 * NS, start_ns + 240 * NS),
        Incident("exposure_breach", "counterparty:deribit", start_ns + 225 * NS,
                 start_ns + DURATION_S * NS),
    ]
    return Scenario(events=[e for _, _, e in ev], incidents=incidents)


def _feeds(venue: str, t_s: float) -> tuple[str, ...]:
    """The feeds a venue publishes on at ``t_s``: binance's primary stops from 200 s to
    240 s (its backup goes on)."""
    if venue != "binance":
        return ("primary",)
    return ("backup",) if 200 <= t_s < 240 else ("primary", "backup")


def _second(add: Callable[[Record], None], fair: dict[str, float], tick: int, ts: int,
            t_s: float) -> None:
    for u, px in fair.items():
        add(IndexPrice(id=f"ix-{u}-{tick}", venue="index", instrument=f"{u}-USD",
                       ts=ts, price=round(px, 2)))
    add(IndexPrice(id=f"ix-USDT-{tick}", venue="index", instrument="USDT-USD", ts=ts,
                   price=1.0))
    for venue in VENUES:
        for feed in _feeds(venue, t_s):
            add(VenueStatus(id=f"hb-{venue}-{feed}-{tick}", venue=venue, feed=feed,
                            ts=ts, seq=tick // 4))


def _market_tick(add: Callable[[Record], None], rng: random.Random, fair: dict[str, float],
                 tick: int, ts: int, t_s: float) -> None:
    """Each listed instrument's quote on each feed, and every second tick a trade; okx's
    BTC-USDT crashes (:func:`_crash_factor`)."""
    for venue, listed in LISTINGS.items():
        for inst in listed:
            u = inst.split("-")[0]
            px = fair[u] * (1 + rng.gauss(0, 0.0002))
            if venue == "okx" and inst == "BTC-USDT":
                px *= _crash_factor(t_s)
            spread = px * 0.0001 * (1 + rng.random())
            for feed in _feeds(venue, t_s):
                rid = f"{venue}-{feed}-{inst}-{tick}"
                add(Quote(id=f"q-{rid}", venue=venue, instrument=inst, ts=ts, feed=feed,
                          bid=round(px - spread / 2, 2), ask=round(px + spread / 2, 2),
                          bid_size=round(1 + 4 * rng.random(), 3),
                          ask_size=round(1 + 4 * rng.random(), 3)))
                if tick % 2 == 0:
                    add(Trade(id=f"t-{rid}", venue=venue, instrument=inst, ts=ts + MS,
                              feed=feed, price=round(px, 2),
                              qty=round(0.01 + 0.5 * rng.random(), 4),
                              side=Side.BUY if rng.random() < 0.5 else Side.SELL))


def _options(add: Callable[[Record], None], rng: random.Random, fair: dict[str, float],
             tick: int, ts: int) -> None:
    for inst, (u, strike) in OPTIONS.items():
        spot = fair[u]
        iv = 0.55 + rng.gauss(0, 0.005)
        mark = max(spot - strike, 0) + spot * iv * 0.08
        add(OptionQuote(id=f"o-{inst}-{tick}", venue="deribit", instrument=inst, ts=ts,
                        underlying=u, expiry=EXPIRY_NS, strike=strike,
                        option_type=OptionType.CALL, bid=round(mark * 0.99, 2),
                        ask=round(mark * 1.01, 2), mark_price=round(mark, 2),
                        mark_iv=round(iv, 4), underlying_price=round(spot, 2),
                        delta=0.45, gamma=0.0001, vega=round(spot * 0.002, 3),
                        theta=-round(spot * 0.0005, 3)))


def _book(add: Callable[[Record], None], start_ns: int) -> None:
    """Opening positions and collateral, and the fills that breach deribit's gross
    notional limit."""
    t0 = start_ns + 5 * NS
    for venue in VENUES:
        add(Balance(id=f"bal-{venue}", venue=venue, counterparty=venue, asset="USDT",
                    total=2_000_000.0, ts=t0))
    add(Fill(id="f-open-binance", venue="binance", counterparty="binance", instrument="BTC-PERP",
             side=Side.BUY, qty=2.0, price=START_PX["BTC"], ts=t0 + MS))
    add(Fill(id="f-open-okx", venue="okx", counterparty="okx", instrument="ETH-USDT",
             side=Side.BUY, qty=40.0, price=START_PX["ETH"], ts=t0 + 2 * MS))
    add(Fill(id="f-open-deribit-opt", venue="deribit", counterparty="deribit",
             instrument="BTC-27DEC26-70000-C", side=Side.BUY, qty=10.0, price=4_000.0,
             ts=t0 + 3 * MS))
    for k in range(12):
        add(Fill(id=f"f-deribit-{k}", venue="deribit", counterparty="deribit",
                 instrument="BTC-PERP", side=Side.BUY, qty=5.0, price=START_PX["BTC"],
                 ts=start_ns + (225 + 2 * k) * NS + 7 * MS))


def scenario_copies(copies: int, start_ns: int) -> list[Record]:
    """``copies`` back-to-back copies of the scenario starting at ``start_ns``, each
    shifted by ``DURATION_S`` and with ids made unique per copy (``c<k>-<id>``): a
    backlog of several incidents, as after an outage.

    >>> evs = scenario_copies(2, 0)
    >>> len(evs) == 2 * len(build_scenario(0).events), evs[0].id.startswith("c0-")
    (True, True)
    """
    base = build_scenario(0).events
    span = DURATION_S * NS
    out: list[Record] = []
    replace = msgspec.structs.replace
    for k in range(copies):
        shift = start_ns + k * span
        out.extend(replace(r, id=f"c{k}-{r.id}", ts=r.ts + shift)  # type: ignore[attr-defined]
                   for r in base)
    return out
