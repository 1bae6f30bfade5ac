"""Stress scenarios: a base market plus shocks, run through the guard core, checked.

A scenario (TOML, see ``dataflows/scenarios/*.toml``) is:

- ``[market]``: a generated base market (venues, instruments with start price
  and per-tick volatility, backup feeds, fx rates) or ``file`` = a JSONL
  recording to overlay shocks on;
- ``[[positions]]``: opening fills and balances (so exposures and limits act);
- ``[[shocks]]``: what goes wrong, each with ``onset_s`` and a shape
  (``ramp_s``, ``hold_s``, ``recover_s``) and a ``kind``: ``price``,
  ``cascade``, ``heartbeat_stop``, ``freeze``, ``venue_down``,
  ``withdrawals_halt``, ``balance_freeze``, ``depeg``, ``index_diverge``,
  ``latency``, ``storm`` or ``fills``;
- ``[[expect]]``: mitigations the guard must issue: ``action``, ``scope``
  (fnmatch on the scope label), ``within_s`` of the onset of shock ``shock``;
  ``never = true`` forbids a command instead; ``known_gap = "why"`` marks an
  expectation the guard cannot meet yet (reported as GAP, not counted);
- ``[[end_state]]``: scopes that must end in at least a given state;
- ``[guard]``: overrides merged into the generated guard config;
- ``[zone_loss]``: run by redundant replicas, one lost part-way
  (:mod:`riskguard.dataflows.zone_loss`);
- ``[executor_down]``: an executor acknowledges commands, then stops
  (:mod:`riskguard.dataflows.executor_down`).

Every run also checks two invariants: the guard never reroutes order flow
into a venue it already knew to be unhealthy or breached, and every venue
that is still unhealthy or breached at the end is under a protective
mitigation (reduce_only, reroute, cancel_all or halt) - the *safe state*.

The guard is :func:`riskguard.dataflows.guard.guard_core`, run by
:func:`riskguard.dataflows.backtest.run_backtest`; nothing here decides a
mitigation itself.

>>> sc = load_scenario(scenario_path("flash_crash"))
>>> sc.name, [s.kind for s in sc.shocks]
('flash_crash', ['price'])
"""

from __future__ import annotations

import fnmatch
import math
import random
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.dataflows.backtest import (
    BacktestResult,
    Label,
    deep_merge,
    run_backtest,
)
from riskguard.dataflows.demo import DemoKeys, init_keys
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.dataflows.report import STATE_ORDER, build_report, write_report
from riskguard.dataflows.stress_checks import (
    NS,
    START_NS,
    Check,
    check_run,
)
from riskguard.schemas import (
    Action,
    Balance,
    Fill,
    IndexPrice,
    Quote,
    Side,
    Trade,
    VenueStatus,
)

from riskguard.config import decode_section
from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml
from riskguard.validation import NonNegative, PositiveInt, did_you_mean

MS = 1_000_000
ShockKind = Literal["price", "cascade", "heartbeat_stop", "freeze", "venue_down",
                    "withdrawals_halt", "balance_freeze", "depeg", "index_diverge", "latency",
                    "storm", "fills"]


class InstrumentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    price: float
    vol: float = 0.0002
    kind: Literal["spot", "perp"] = "spot"


class MarketSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The base market. ``instruments`` are ``BASE-QUOTE`` names (``-PERP`` is USD)."""

    venues: tuple[str, ...] = ("binance", "okx", "deribit")
    instruments: dict[str, InstrumentSpec] = {}
    listings: dict[str, tuple[str, ...]] = {}
    backup_feeds: tuple[str, ...] = ()
    tick_ms: PositiveInt = 500
    trade_every: PositiveInt = 2
    fx: dict[str, float] = msgspec.field(default_factory=lambda: {"USDT": 1.0, "USDC": 1.0})
    file: str | None = None


class PositionSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An opening fill (``instrument``) or a balance (``asset``) at ``at_s``."""

    venue: str
    instrument: str = ""
    side: Literal["buy", "sell"] = "buy"
    qty: float = 0.0
    asset: str = ""
    total: float = 0.0
    at_s: float = 2.0


class Shock(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One shock. ``magnitude`` means: price/index move fraction (-0.3 = -30 %),
    depeg target price (0.87), latency seconds, storm multiplier, cascade
    first-tranche move."""

    kind: ShockKind
    onset_s: float
    venues: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    ramp_s: float = 0.0
    hold_s: float = math.inf
    recover_s: float = 0.0
    magnitude: float = 0.0
    asset: str = ""
    label: str = ""
    # cascade
    tranches: int = 3
    gap_s: float = 30.0
    feedback: float = 1.5
    volume: float = 1.0
    # fills
    side: Literal["buy", "sell"] = "buy"
    qty: float = 0.0
    count: int = 1
    every_s: float = 1.0

    def fraction(self, t_s: float) -> float:
        """0 before onset, ramps to 1, holds, recovers to 0."""
        dt = t_s - self.onset_s
        if dt < 0:
            return 0.0
        if dt < self.ramp_s:
            return dt / self.ramp_s
        dt -= self.ramp_s
        if dt < self.hold_s:
            return 1.0
        dt -= self.hold_s
        if self.recover_s > 0 and dt < self.recover_s:
            return 1.0 - dt / self.recover_s
        return 0.0

    def end_s(self, duration_s: float) -> float:
        if self.kind == "fills":
            return self.onset_s + self.count * self.every_s
        if self.kind == "cascade":
            return self.onset_s + self.tranches * (self.gap_s + self.ramp_s)
        return min(duration_s, self.onset_s + self.ramp_s + self.hold_s + self.recover_s)

    def hits(self, venue: str, instrument: str) -> bool:
        return (not self.venues or venue in self.venues) and (
            not self.instruments or any(fnmatch.fnmatchcase(instrument, p)
                                        for p in self.instruments))


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    action: str
    scope: str
    within_s: float = math.inf
    shock: int = 0
    never: bool = False
    known_gap: str = ""


class EndState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scope: str
    at_least: str


class ZoneLoss(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[zone_loss]`` of a scenario: ``replicas`` run it; ``lost`` is lost
    ``lost_at_s`` after the start."""

    replicas: Annotated[tuple[str, ...], msgspec.Meta(min_length=2)] = ("a", "b")
    lost: str = "b"
    lost_at_s: NonNegative = 0.0

    def __post_init__(self) -> None:
        if len(set(self.replicas)) != len(self.replicas):
            raise ConfigError("zone_loss.replicas", "distinct replica ids",
                              list(self.replicas))
        if self.lost not in self.replicas:
            raise ConfigError("zone_loss.lost", f"one of {list(self.replicas)}", self.lost)


class ExecutorDown(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[executor_down]`` of a scenario: executor ``name`` acknowledges each command
    ``ack_latency_s`` after it was issued, until ``down_at_s`` after the start."""

    name: str = "oms"
    down_at_s: NonNegative = 0.0
    ack_latency_s: NonNegative = 0.5


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    duration_s: PositiveInt = 600
    seed: int = 1
    market: MarketSpec = MarketSpec()
    limits: dict[str, float] = {}
    positions: tuple[PositionSpec, ...] = ()
    shocks: tuple[Shock, ...] = ()
    expect: tuple[Expect, ...] = ()
    end_state: tuple[EndState, ...] = ()
    guard: dict[str, Any] = {}
    # run by redundant replicas, one lost part-way (riskguard.dataflows.zone_loss)
    zone_loss: ZoneLoss | None = None
    # an executor that acknowledges, then goes down (riskguard.dataflows.executor_down)
    executor_down: ExecutorDown | None = None


# -- loading ---------------------------------------------------------------------


def scenario_dir() -> Path:
    return Path(str(resources.files("riskguard.dataflows").joinpath("scenarios")))


def bundled() -> list[str]:
    """Names of the bundled scenarios."""
    return sorted(p.stem for p in scenario_dir().glob("*.toml"))


def scenario_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = scenario_dir() / f"{name_or_path}.toml"
    if not q.is_file():
        raise ConfigError("stress.scenario", f"a scenario file or one of {bundled()}",
                          name_or_path)
    return q


def load_scenario(path: str | Path) -> Scenario:
    """A checked scenario file; a ConfigError naming the file or the key otherwise."""
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"scenario {Path(path).name}", "a TOML file", str(err)) from None
    except OSError as err:
        raise ConfigError(f"scenario {Path(path).name}", "a readable file",
                          err.strerror or str(err)) from None
    sc = decode_section(data, Scenario, "")
    for i, e in enumerate(sc.expect):
        if e.action not in {a.value for a in Action}:
            where = f"expect[{i}].action"
            raise ConfigError(where, "a command action", e.action)
        if not e.never and not 0 <= e.shock < len(sc.shocks):
            where = f"expect[{i}].shock"
            raise ConfigError(where, f"a shock index < {len(sc.shocks)}", e.shock)
    for i, es in enumerate(sc.end_state):
        if es.at_least not in STATE_ORDER:
            where = f"end_state[{i}].at_least"
            raise ConfigError(where, f"one of {STATE_ORDER}", es.at_least)
    check_shocks(sc)
    check_names(sc)
    return sc


MAX_STORM = 1000
_TIMES = ("onset_s", "ramp_s", "recover_s", "gap_s", "every_s")


def check_shocks(sc: Scenario) -> None:
    """Refuse a shock that cannot run or would make invalid records (which the guard
    dead-letters, so the scenario would test nothing): a number that is not finite
    (``hold_s`` may be inf), a time below 0 or an onset past ``duration_s``, a price move
    to 0 or below (-1.3 for -13 %), a depeg target at or below 0, a latency past the
    run, a storm of more than :data:`MAX_STORM` copies."""
    for i, s in enumerate(sc.shocks):
        def bad(key: str, want: str, found: Any, i: int = i) -> ConfigError:
            return ConfigError(f"shocks[{i}].{key}", want, found)
        for key in ("magnitude", "feedback", "volume", "qty", *_TIMES):
            if not math.isfinite(getattr(s, key)):
                raise bad(key, "a finite number", getattr(s, key))
        if not s.hold_s >= 0:  # NaN too
            raise bad("hold_s", "seconds, 0 or more (inf: to the end)", s.hold_s)
        for key in _TIMES:
            if getattr(s, key) < 0:
                raise bad(key, "seconds, 0 or more", getattr(s, key))
        if s.onset_s > sc.duration_s:
            raise bad("onset_s", f"a time within the scenario (at most duration_s = "
                      f"{sc.duration_s})", s.onset_s)
        if s.kind in ("price", "index_diverge", "cascade") and not s.magnitude > -1:
            raise bad("magnitude", "a move above -1 (-0.13 is -13 %; -1 or below makes "
                      "prices of 0 or less)", s.magnitude)
        if s.kind == "cascade" and any(
                not s.magnitude * s.feedback ** k > -1 for k in range(min(s.tranches, 64))):
            raise bad("feedback", "a feedback whose tranches each move above -1 "
                      f"(magnitude {s.magnitude:g} x feedback^k)", s.feedback)
        if s.kind == "depeg" and not s.magnitude > 0:
            raise bad("magnitude", "a depeg target price above 0", s.magnitude)
        if s.kind == "latency" and not 0 <= s.magnitude <= sc.duration_s:
            raise bad("magnitude", f"seconds, 0 to {sc.duration_s} (the scenario's "
                      "duration_s)", s.magnitude)
        if s.kind == "storm" and not 0 <= s.magnitude <= MAX_STORM:
            raise bad("magnitude", f"copies of each quote, 0 to {MAX_STORM}", s.magnitude)


def check_names(sc: Scenario) -> None:
    """Refuse a venue, instrument or scope that names nothing in the scenario's market
    (a misspelt one tests nothing, and its checks pass)."""
    m = sc.market
    venues = list(m.venues)
    insts = None if m.file else list(m.instruments)  # a recording names its own
    for v in m.listings:
        _known(f"market.listings.{v}", v, venues, "venues")
    for v in sc.limits:
        _known(f"limits.{v}", v, venues, "venues")
    for i, ps in enumerate(sc.positions):
        _known(f"positions[{i}].venue", ps.venue, venues, "venues")
        if ps.instrument:
            _known(f"positions[{i}].instrument", ps.instrument, insts, "instruments")
    for i, s in enumerate(sc.shocks):
        for v in s.venues:
            _known(f"shocks[{i}].venues", v, venues, "venues")
        names = insts
        if insts is not None and s.kind == "index_diverge":  # it moves an index: BTC-USD
            names = sorted({f"{_base(n)}-USD" for n in insts})
        for pat in s.instruments:
            if names is not None and not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise ConfigError(f"shocks[{i}].instruments", "a pattern matching one of the "
                                  f"market's instruments{did_you_mean(pat, names)}", pat)
    _check_scopes(sc, venues, insts)


def _known(where: str, name: str, names: list[str] | None, what: str,
           shown: str = "{}") -> None:
    if names is not None and name not in names:
        raise ConfigError(where, f"one of the market's {what}"
                          + did_you_mean(name, names, shown=shown), name)


def _check_scopes(sc: Scenario, venues: list[str], insts: list[str] | None) -> None:
    scopes = [(f"expect[{i}].scope", e.scope) for i, e in enumerate(sc.expect)]
    scopes += [(f"end_state[{i}].scope", e.scope) for i, e in enumerate(sc.end_state)]
    for where, scope in scopes:
        kind, _, value = scope.partition(":")
        if any(c in value for c in "*?[/"):
            continue  # a pattern, or a venue-qualified name
        if kind in ("venue", "counterparty"):
            _known(where, value, venues, "venues", f"{kind}:{{}}")
        elif kind == "instrument":
            _known(where, value, insts, "instruments", f"{kind}:{{}}")


# -- market generation -----------------------------------------------------------------


def _quote_ccy(inst: str) -> str:
    parts = inst.split("-")
    return "USD" if len(parts) < 2 or parts[1] == "PERP" else parts[1]


def _base(inst: str) -> str:
    return inst.split("-", maxsplit=1)[0]


@dataclass
class _Gen:
    rng: random.Random
    n: int = 0

    def nid(self, p: str) -> str:
        self.n += 1
        return f"{p}-{self.n}"


def _price_mult(sc: Scenario, venue: str, inst: str, t_s: float) -> float:
    m = 1.0
    for s in sc.shocks:
        if not s.hits(venue, inst):
            continue
        if s.kind == "price":
            m *= 1.0 + s.magnitude * s.fraction(t_s)
        elif s.kind == "cascade":
            for k in range(s.tranches):
                on = s.onset_s + k * (s.gap_s + s.ramp_s)
                size = s.magnitude * s.feedback ** k
                dt = t_s - on
                if dt >= 0:
                    m *= 1.0 + size * (min(1.0, dt / s.ramp_s) if s.ramp_s > 0 else 1.0)
    return m


def _market_mult(sc: Scenario, underlying: str, t_s: float) -> float:
    m = 1.0
    for s in sc.shocks:
        if s.kind == "price" and not s.venues and any(
                _base(i) == underlying and s.hits("", i) for i in sc.market.instruments):
            m *= 1.0 + s.magnitude * s.fraction(t_s)
    return m


def _fx(sc: Scenario, ccy: str, t_s: float) -> float:
    px = sc.market.fx.get(ccy, 1.0)
    for s in sc.shocks:
        if s.kind == "depeg" and s.asset == ccy:
            px += (s.magnitude - px) * s.fraction(t_s)
    return px


def _active(sc: Scenario, kind: str, venue: str, inst: str, t_s: float) -> Shock | None:
    for s in sc.shocks:
        kinds = (kind, "venue_down") if kind in ("heartbeat_stop", "freeze") else (kind,)
        if s.kind in kinds and s.hits(venue, inst) and s.fraction(t_s) > 0:
            return s
    return None


def generate_market(sc: Scenario, start_ns: int = START_NS) -> list[Any]:
    """The scenario's records, shocks applied, in arrival (``recv_ts``) order."""
    m = sc.market
    g = _Gen(random.Random(sc.seed))
    rng = g.rng
    if m.file:
        base = list(read_all(ReplaySource([ReplayFile(m.file)])))
        out = _overlay(sc, base, start_ns)
    else:
        out = _generate(sc, g, start_ns)
    out.extend(_positions(sc, g, start_ns))
    out.extend(_fill_shocks(sc, g, start_ns))
    del rng
    order = {id(r): i for i, r in enumerate(out)}
    out.sort(key=lambda r: (r.recv_ts if getattr(r, "recv_ts", None) is not None else r.ts,
                            order[id(r)]))
    return out


def _generate(sc: Scenario, g: _Gen, start_ns: int) -> list[Any]:
    """The scenario's market records, tick by tick: each underlying's fair price moves,
    then each venue quotes and trades (:func:`_venue_tick`), and once a second the index
    and FX prices are published (:func:`_index_tick`)."""
    m = sc.market
    rng = g.rng
    insts = list(m.instruments)
    unders = sorted({_base(i) for i in insts})
    fair = {u: next(spec.price for i, spec in m.instruments.items() if _base(i) == u)
            for u in unders}
    vol = {u: next(spec.vol for i, spec in m.instruments.items() if _base(i) == u)
           for u in unders}
    out: list[Any] = []
    frozen: dict[tuple[str, str], tuple[float, float]] = {}
    tick_ns = m.tick_ms * MS
    per_s = max(1, 1000 // m.tick_ms)
    n_ticks = sc.duration_s * 1000 // m.tick_ms
    for k in range(n_ticks):
        ts = start_ns + k * tick_ns
        t_s = k * m.tick_ms / 1000
        for u in unders:
            fair[u] *= math.exp(rng.gauss(0.0, vol[u]))
        for venue in m.venues:
            _venue_tick(sc, g, out, frozen, fair, venue, k, ts, t_s)
        if k % per_s == 0:
            _index_tick(sc, g, out, fair, unders, ts, t_s)
    return out


def _venue_tick(sc: Scenario, g: _Gen, out: list[Any],
                frozen: dict[tuple[str, str], tuple[float, float]], fair: dict[str, float],
                venue: str, k: int, ts: int, t_s: float) -> None:
    """One venue's tick: a quote per listed instrument and feed (repeated in a latency
    storm, frozen in a freeze, none on a primary feed that stopped), a trade every
    ``trade_every`` ticks, and once a second its heartbeat."""
    m = sc.market
    rng = g.rng
    listed = m.listings.get(venue, tuple(m.instruments))
    feeds = ("primary", "backup") if venue in m.backup_feeds else ("primary",)
    delay = _delay(sc, venue, t_s)
    storm = _active(sc, "storm", venue, "*", t_s)
    reps = max(1, int(storm.magnitude)) if storm else 1
    for inst in listed:
        u = _base(inst)
        mid = fair[u] / _fx(sc, _quote_ccy(inst), t_s) * _price_mult(sc, venue, inst, t_s)
        mid *= 1.0 + rng.gauss(0.0, 0.00005)
        spread = mid * 0.0001 * (1.0 + rng.random())
        key = (venue, inst)
        frz = _active(sc, "freeze", venue, inst, t_s)
        if frz is None:
            frozen.pop(key, None)
        elif key not in frozen:
            frozen[key] = (mid, spread)
        for feed in feeds:
            if feed == "primary" and venue in m.backup_feeds and _active(
                    sc, "heartbeat_stop", venue, inst, t_s):
                continue  # the primary is down; the backup keeps publishing
            qmid, qspread = frozen.get(key, (mid, spread))
            for _r in range(reps):
                out.append(Quote(
                    id=g.nid("q"), venue=venue, instrument=inst, ts=ts, feed=feed,
                    recv_ts=ts + 2 * MS + delay, bid=round(qmid - qspread / 2, 8),
                    ask=round(qmid + qspread / 2, 8),
                    bid_size=round(1 + 4 * rng.random(), 3),
                    ask_size=round(1 + 4 * rng.random(), 3)))
            if frz is None and k % m.trade_every == 0:
                out.append(_trade(sc, g, venue, inst, feed, mid, ts, t_s, delay))
    per_s = max(1, 1000 // m.tick_ms)
    if k % per_s == 0:
        wd = _active(sc, "withdrawals_halt", venue, "*", t_s) is None
        for feed in feeds:
            if _active(sc, "heartbeat_stop", venue, "*", t_s) and feed == "primary":
                continue
            out.append(VenueStatus(id=g.nid("hb"), venue=venue, feed=feed, ts=ts,
                                   recv_ts=ts + 3 * MS + delay, seq=k // per_s,
                                   withdrawals_enabled=wd))


def _trade(sc: Scenario, g: _Gen, venue: str, inst: str, feed: str, mid: float, ts: int,
           t_s: float, delay: int) -> Trade:
    """A trade at the mid: larger and a sell in a liquidation cascade."""
    rng = g.rng
    qty = 0.01 + 0.5 * rng.random()
    casc = _active(sc, "cascade", venue, inst, t_s)
    if casc is not None:
        qty *= casc.volume
    return Trade(
        id=g.nid("t"), venue=venue, instrument=inst, ts=ts + MS, feed=feed,
        recv_ts=ts + 3 * MS + delay, price=round(mid, 8), qty=round(qty, 6),
        side=Side.SELL if casc is not None or rng.random() < 0.5 else Side.BUY)


def _index_tick(sc: Scenario, g: _Gen, out: list[Any], fair: dict[str, float],
                unders: list[str], ts: int, t_s: float) -> None:
    """Once a second: each underlying's index price (a market-wide move, a price shock
    on every venue, moves it too; an index_diverge shock moves it alone), each FX rate,
    and the balances a balance_freeze freezes at its onset."""
    m = sc.market
    for u in unders:
        px = fair[u] * _market_mult(sc, u, t_s)
        for s in sc.shocks:
            if s.kind == "index_diverge" and (not s.instruments or any(
                    fnmatch.fnmatchcase(f"{u}-USD", p) for p in s.instruments)):
                px *= 1.0 + s.magnitude * s.fraction(t_s)
        out.append(IndexPrice(id=g.nid("ix"), venue="index", instrument=f"{u}-USD",
                              ts=ts, recv_ts=ts + MS, price=round(px, 8)))
    for ccy in sorted(m.fx):
        out.append(IndexPrice(id=g.nid("fx"), venue="index", instrument=f"{ccy}-USD",
                              ts=ts, recv_ts=ts + MS, price=round(_fx(sc, ccy, t_s), 8)))
    for s in sc.shocks:
        if s.kind == "balance_freeze" and abs(t_s - s.onset_s) < 1e-9:
            out.extend(_frozen_balances(sc, g, s, ts))


def _delay(sc: Scenario, venue: str, t_s: float) -> int:
    s = _active(sc, "latency", venue, "*", t_s)
    return int(s.magnitude * s.fraction(t_s) * NS) if s else 0


def _frozen_balances(sc: Scenario, g: _Gen, s: Shock, ts: int) -> list[Any]:
    out = []
    for p in sc.positions:
        if p.asset and (not s.venues or p.venue in s.venues):
            out.append(Balance(id=g.nid("bal"), venue=p.venue, counterparty=p.venue,
                               asset=p.asset, total=p.total, available=0.0, locked=p.total,
                               ts=ts, recv_ts=ts + 2 * MS))
    return out


def _overlay(sc: Scenario, base: list[Any], start_ns: int) -> list[Any]:
    """Shocks on a recorded base: price moves, heartbeat stops, latency (time-shifted)."""
    out = []
    t0 = min((r.ts for r in base if hasattr(r, "ts")), default=start_ns)
    for r in base:
        ts = getattr(r, "ts", None)
        if ts is None:
            continue
        t_s = (ts - t0) / NS
        venue = getattr(r, "venue", "")
        inst = getattr(r, "instrument", "")
        if isinstance(r, VenueStatus) and _active(sc, "heartbeat_stop", venue, "*", t_s):
            continue
        mult = _price_mult(sc, venue, inst, t_s)
        rec = r
        if isinstance(r, Trade) and mult != 1.0:
            rec = msgspec.structs.replace(r, price=r.price * mult)
        elif isinstance(r, Quote) and mult != 1.0:
            rec = msgspec.structs.replace(r, bid=r.bid * mult, ask=r.ask * mult)
        delay = _delay(sc, venue, t_s)
        recv = (getattr(rec, "recv_ts", None) or ts) + delay
        out.append(msgspec.structs.replace(rec, recv_ts=recv))
    return out


def _positions(sc: Scenario, g: _Gen, start_ns: int) -> list[Any]:
    out: list[Any] = []
    for p in sc.positions:
        ts = start_ns + int(p.at_s * NS)
        if p.asset:
            out.append(Balance(id=g.nid("bal"), venue=p.venue, counterparty=p.venue,
                               asset=p.asset, total=p.total, ts=ts, recv_ts=ts + 2 * MS))
        else:
            out.append(Fill(id=g.nid("fill"), venue=p.venue, counterparty=p.venue,
                            instrument=p.instrument, side=Side(p.side), qty=p.qty,
                            price=_spot(sc, p.instrument), ts=ts, recv_ts=ts + 2 * MS))
    return out


def _spot(sc: Scenario, inst: str) -> float:
    u = _base(inst)
    return next((s.price for i, s in sc.market.instruments.items() if _base(i) == u), 1.0)


def _fill_shocks(sc: Scenario, g: _Gen, start_ns: int) -> list[Any]:
    out: list[Any] = []
    for s in sc.shocks:
        if s.kind != "fills":
            continue
        for k in range(s.count):
            ts = start_ns + int((s.onset_s + k * s.every_s) * NS) + 7 * MS
            for venue in s.venues:
                for inst in s.instruments:
                    out.append(Fill(id=g.nid("fill"), venue=venue, counterparty=venue,
                                    instrument=inst, side=Side(s.side), qty=s.qty,
                                    price=_spot(sc, inst), ts=ts, recv_ts=ts + 2 * MS))
    return out


def shock_labels(sc: Scenario, s: Shock, start_ns: int = START_NS) -> list[Label]:
    """The labels of one shock: one per venue it hits (``firm:*`` when it names none), so
    that an alarm on a venue it spared detects nothing."""
    start = start_ns + int(s.onset_s * NS)
    end = start_ns + int(s.end_s(sc.duration_s) * NS)
    scopes = [f"venue:{v}" for v in s.venues] or ["firm:*"]
    return [Label(s.label or s.kind, scope, start, end) for scope in scopes]


def scenario_labels(sc: Scenario, start_ns: int = START_NS) -> list[Label]:
    """The labels of every shock (:func:`shock_labels`; the report shades them)."""
    return [lab for s in sc.shocks for lab in shock_labels(sc, s, start_ns)]


# -- the guard config ---------------------------------------------------------------


def guard_config_doc(sc: Scenario, keys: DemoKeys, playbook: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The guard config for a scenario: defaults derived from its market, then ``[guard]``."""
    pkg = resources.files("riskguard.dataflows")
    pb = playbook if playbook is not None else tomllib.loads(
        pkg.joinpath("playbook.toml").read_text())["playbook"]
    m = sc.market
    insts = {i: {"kind": "perp" if i.endswith("-PERP") else s.kind, "base": _base(i),
                 "quote": _quote_ccy(i)} for i, s in m.instruments.items()}
    index_map: dict[str, list[str]] = {}
    for i in m.instruments:
        index_map.setdefault(f"{_base(i)}-USD", []).append(i)
    limits = {v: {"limits": {"gross_notional": {"limit": sc.limits.get(v, 5_000_000.0),
                                                "hard": 1.25}}} for v in m.venues}
    doc: dict[str, Any] = {
        "env": "stress",
        "tick_ns": NS,
        "input": {"max_lateness_ns": 10 * NS},
        "feeds": {"venues": {v: {"primary": "primary", "backup": "backup",
                                 "max_gap_ns": 3 * NS, "restore_after_ns": 10 * NS,
                                 # one event-ordered stream: no cross-topic skew to allow for
                                 "skew_ns": 0}
                             for v in m.venues}},
        "features": {"venues": list(m.venues), "index_sources": ["index"],
                     "index_map": index_map, "allowed_lateness_ns": 5 * NS},
        "detector": {"warmup_events": 60, "warmup_ns": 60 * NS, "hst_window": 50},
        "exposure": {"max_mark_age_ns": 30 * NS, "pegs": dict(sorted(m.fx.items())),
                     "instruments": {
            "reporting_currency": "USD",
            "fx_index": {c: f"{c}-USD" for c in sorted(m.fx)},
            "instruments": insts}},
        "limits": {"counterparties": limits},
        "playbook": {**pb, "venues": list(m.venues)},
        "audit": {"checkpoint_every": 1000, "checkpoint_interval_ns": 60 * NS},
        "keys": {"issuer": "riskguard-guard", "signing_key": keys.signing_key.name,
                 "trust_file": keys.trust_file.name, "roots_file": keys.roots_file.name},
    }
    return deep_merge(doc, sc.guard)


def disable_escalation(playbook: dict[str, Any]) -> dict[str, Any]:
    """A deliberately broken playbook: every ladder keeps only its first rung."""
    rules = [{**r, "ladder": r["ladder"][:1]} for r in playbook.get("rules", [])]
    return {**playbook, "rules": rules}


# -- running ---------------------------------------------------------------------


@dataclass
class StressOutcome:
    scenario: str
    checks: list[Check]
    result: BacktestResult
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(c.result != "FAIL" for c in self.checks)

    @property
    def safe(self) -> bool:
        return all(c.result == "PASS" for c in self.checks if c.action == "invariant")


_KEYS: dict[str, DemoKeys] = {}


def scenario_keys(workdir: Path) -> DemoKeys:
    k = str(workdir)
    if k not in _KEYS:
        workdir.mkdir(parents=True, exist_ok=True)
        existing = DemoKeys(workdir / "engine.key", workdir / "trust.toml",
                            workdir / "roots.toml", workdir / "limit-admin.key")
        _KEYS[k] = existing if all(Path(p).is_file() for p in (
            existing.signing_key, existing.trust_file, existing.roots_file,
            existing.admin_key)) else init_keys(workdir)
    return _KEYS[k]


def run_scenario(sc: Scenario, workdir: str | Path, *, playbook: dict[str, Any] | None = None,
                 out_dir: str | Path | None = None, start_ns: int = START_NS) -> StressOutcome:
    """Generate the scenario, run the guard over it, check it, build the report."""
    if sc.zone_loss is not None:
        from riskguard.dataflows.zone_loss import run_zone_loss  # noqa: PLC0415

        return run_zone_loss(sc, sc.zone_loss, workdir, playbook=playbook,
                             out_dir=out_dir, start_ns=start_ns)
    if sc.executor_down is not None:
        from riskguard.dataflows.executor_down import run_executor_down  # noqa: PLC0415

        return run_executor_down(sc, sc.executor_down, workdir, playbook=playbook,
                                 out_dir=out_dir, start_ns=start_ns)
    records = generate_market(sc, start_ns)
    res, digest = backtest_scenario(sc, records, workdir, playbook=playbook, out_dir=out_dir)
    return scenario_outcome(sc, res, check_run(sc, res, start_ns), digest, start_ns, out_dir)


def backtest_scenario(sc: Scenario, records: list[Any], workdir: str | Path, *,
                      playbook: dict[str, Any] | None = None,
                      replica: dict[str, Any] | None = None,
                      out_dir: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> tuple[BacktestResult, str]:
    """The guard over ``records`` on the scenario's config (with ``replica`` as its
    ``[replica]`` table, and ``overrides`` merged in); the result and the config hash."""
    work = Path(workdir)
    doc = guard_config_doc(sc, scenario_keys(work), playbook)
    if replica is not None:
        doc["replica"] = replica
    if overrides:
        doc = deep_merge(doc, overrides)
    cfg_path = work / f"guard-{sc.name}{'-' + replica['id'] if replica else ''}.toml"
    cfg_path.write_text(dump_toml(doc))
    cfg, digest = load_guard_config(cfg_path)
    signer, trust = load_keys(cfg)
    res = run_backtest(cfg, digest, records=records, signer=signer, trust=trust,
                       out_dir=out_dir, batch_size=20)
    return res, digest


def scenario_outcome(sc: Scenario, res: BacktestResult, checks: list[Check], digest: str,
                     start_ns: int, out_dir: str | Path | None,
                     **extra: Any) -> StressOutcome:
    """The outcome of ``checks`` on ``res``, with its report (written to ``out_dir``);
    ``extra`` joins the report's ``stress`` section."""
    passed = all(c.result != "FAIL" for c in checks)
    stress = {"scenario": sc.name, "description": sc.description, "passed": passed,
              "checks": [c.as_dict() for c in checks], **extra}
    report = build_report(res, scenario_labels(sc, start_ns), title=f"stress: {sc.name}",
                          config_hash=digest, inputs=[sc.name], extra={"stress": stress})
    if out_dir is not None:
        write_report(report, out_dir)
    return StressOutcome(sc.name, checks, res, report)


__all__ = [
    "Check", "EndState", "ExecutorDown", "Expect", "MarketSpec", "Scenario", "Shock",
    "StressOutcome",
    "bundled", "check_run", "disable_escalation", "generate_market", "guard_config_doc",
    "load_scenario", "run_scenario", "scenario_labels", "scenario_path", "shock_labels",
]
