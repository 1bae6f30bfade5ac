"""Dislocations between markets of one base asset, found without configuring pegs.

A stablecoin depeg, a single-venue flash crash or a perpetual torn from spot shows first
as one market of an asset parting from the others. :class:`CrossRates` keeps, per market
group (base asset and quote unit, :func:`market_group`), the latest price of every
market and compares each with the **middle of the other venues**, one price per venue
(the median of its markets; with an even count, the middle price nearer the market), a
dollar stablecoin's markets first brought to the dollar by its rate
(:func:`quote_rates`): ``dev`` (log ratio, in bps)
against its learned usual offset and spread (not learned while dislocated); a market is
dislocated past ``max(floor_bps, band_k * spread)``, critical at ``critical_ratio``
times that, and judged only against at least ``min_markets - 1`` fresh other venues
(with fewer, against every other market, its own venue's too). Details:
docs/detectors.md ("Cross-market dislocations").

Signals are :class:`~riskguard.schemas.AnomalySignal` records of kind
``dislocation`` on the dislocated market; ``top_features`` give ``dev_bps``
(the deviation from the usual offset, in bps, and in usual spreads as
``zscore``) and the market it was compared with.

>>> from riskguard.schemas import FeatureVector, Scope, ScopeKind
>>> logic = CrossRates(CrossRateConfig())
>>> def px(venue, inst, i, p):
...     scope = Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue)
...     return FeatureVector(key=f"{venue}/{inst}", scope=scope, ts=i * 60 * 10**9,
...                          values={}, price=p)
>>> out = []
>>> for i in range(300):
...     for venue, inst, p in (("a", "BTCUSD", 100.0), ("b", "BTCUSDT", 100.05),
...                            ("c", "BTC-USDC", 99.98)):
...         out += logic.on_event(px(venue, inst, i, p * (1 + 0.0001 * (i % 3))))
>>> out
[]
>>> sig = logic.on_event(px("b", "BTCUSDT", 300, 98.0))[0]
>>> (sig.kind, sig.key, sig.severity.value, sig.top_features[0].feature)
('dislocation', 'b/BTCUSDT', 'critical', 'dev_bps')
"""

from __future__ import annotations

import functools
import math
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.signals import (
    SEVERITY_RANK,
    AnomalySignal,
    Contribution,
    FeatureVector,
    Severity,
)

from riskguard.validation import (
    MAX_FLOAT,
    Nanoseconds,
    NonNegativeInt,
    PositiveFinite,
    PositiveInt,
    PositiveSeconds,
    check_declared,
)

NS = 1_000_000_000
_NAMESPACE = uuid.UUID("2c1b8e0a-7f43-5b7e-9d1e-5a6f0c3b8d27")
QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "DAI", "EUR", "BTC", "ETH")
USD_LIKE = frozenset({"FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "DAI"})
ALIASES = {"XBT": "BTC"}
PERPETUAL = frozenset({"PERP", "PERPETUAL", "SWAP"})


def split_instrument(name: str) -> tuple[str, str] | None:
    """``(base, quote)`` of an instrument name, or None when it names no known quote.

    A perpetual's suffix (``-PERP``, ``-PERPETUAL``, ``-SWAP``) is dropped; a bare
    perpetual (``BTC-PERP``, Deribit's ``BTC-PERPETUAL``) is dollar-quoted. A settlement
    currency after ``:`` (ccxt's ``BTC/USDT:USDT``, which
    :func:`~riskguard.schemas.names.normalise_name` makes ``BTC-USDT:USDT``) is
    dropped; ``_`` joins a base and its quote as ``-`` does (Gate's ``BTC_USDT``,
    Deribit's ``BTC_USDC-PERPETUAL``), and a suffix after ``_`` that is no quote (a
    COIN-M ``_PERP`` or delivery date) is dropped.

    >>> [split_instrument(n) for n in ("BTCUSDT", "BTC-USD", "XBTUSD", "BTCTUSD",
    ...                                "BTCUSD_PERP", "ETH-27DEC26-3500-C")]
    [('BTC', 'USDT'), ('BTC', 'USD'), ('BTC', 'USD'), ('BTC', 'TUSD'), ('BTC', 'USD'), None]
    >>> [split_instrument(n) for n in ("BTC-PERP", "ETH-PERPETUAL", "BTC-USDT-SWAP")]
    [('BTC', 'USD'), ('ETH', 'USD'), ('BTC', 'USDT')]
    >>> [split_instrument(n) for n in ("BTC_USDT", "BTC-USDT:USDT", "BTC_USDC-PERPETUAL")]
    [('BTC', 'USDT'), ('BTC', 'USDT'), ('BTC', 'USDC')]
    """
    text = name.upper().partition(":")[0]
    head = text.split("_", 1)[0]
    parsed = _split(head)
    if parsed is None and "_" in text:
        parsed = _split(text.replace("_", "-"))
    return parsed


def _split(text: str) -> tuple[str, str] | None:
    parts = text.split("-")
    if len(parts) > 1 and parts[-1] in PERPETUAL:
        parts = parts[:-1]
        if len(parts) == 1 and parts[0].isalpha():
            return ALIASES.get(parts[0], parts[0]), "USD"
    if len(parts) == 2 and parts[1] in QUOTES:
        base, quote = parts
    elif len(parts) == 1:
        head = parts[0]
        # the longest quote that leaves a base of three letters or more (XBT-USD, not XB-TUSD)
        quote = next((q for q in QUOTES if head.endswith(q) and len(head) - len(q) >= 3), "")
        if not quote:
            return None
        base = head[: -len(quote)]
    else:
        return None
    return ALIASES.get(base, base), quote


def instrument_base(name: str) -> str:
    """The base asset an instrument belongs to: :func:`split_instrument`'s base, else the
    part of its name before the first ``-`` (an option, a dated future). What the market
    tier owns an undeclared instrument by, so a group's markets share an owner.

    >>> [instrument_base(n) for n in ("BTCUSDT", "XBTUSD", "BTC-USD", "BTC-27DEC26-70000-C")]
    ['BTC', 'BTC', 'BTC', 'BTC']
    """
    parsed = split_instrument(name)
    return parsed[0] if parsed is not None else name.split("-", 1)[0]


def market_group(key: str) -> str | None:
    """The group a ``venue/instrument`` key is compared within: its base asset and its
    quote's unit (every dollar stablecoin counts as USD: their cross rate is what a depeg
    moves). None for venue keys and names with no known quote.

    >>> [market_group(k) for k in ("a/BTCUSDT", "b/XBTUSD", "c/ETH-BTC", "okx")]
    ['BTC/USD', 'BTC/USD', 'ETH/BTC', None]
    """
    _venue, sep, inst = key.partition("/")
    if not sep:
        return None
    parsed = split_instrument(inst)
    if parsed is None:
        return None
    base, quote = parsed
    return f"{base}/{'USD' if quote in USD_LIKE else quote}"


@functools.lru_cache(maxsize=65_536)
def venue_quote(key: str) -> tuple[str, str]:
    """The venue of a ``venue/instrument`` key and its instrument's quote ("" for none).

    >>> venue_quote("binance/BTCUSDT"), venue_quote("okx")
    (('binance', 'USDT'), ('okx', ''))
    """
    venue, _, inst = key.partition("/")
    parsed = split_instrument(inst) if inst else None
    return venue, parsed[1] if parsed else ""


def _middle(values: list[tuple[float, str]]) -> tuple[float, str]:
    """The median of sorted ``(value, key)`` pairs, with the upper middle's key."""
    n = len(values)
    hi = values[n // 2]
    return hi if n % 2 else ((values[n // 2 - 1][0] + hi[0]) / 2, hi[1])


def quote_rates(fresh: list[tuple[str, float]]) -> dict[str, float]:
    """Per dollar stablecoin quoted in ``fresh`` (``(market key, log price)`` of one
    dollar group), how far its markets lie from the markets quoted in dollars: the
    median over its venues (one price each, the median of the venue's markets) outside
    the middle of the dollar venues' prices. Nothing without two venues quoting in
    dollars: then no quote is told from the unit, and every stablecoin counts as a
    dollar.

    A depeg moves every market of its stablecoin on every venue together, while the
    dollar venues agree with each other: the stablecoin's rate takes the move, so the
    stablecoin's markets are the dislocated ones even where they are most of the
    group. One dollar venue parting from the other stays inside their range and moves
    no rate.

    >>> import math
    >>> usdt = math.log(103.0)
    >>> fresh = [("a/BTCUSDT", usdt), ("b/BTCUSDT", usdt), ("c/BTC-USDT", usdt),
    ...          ("d/BTC-USD", math.log(100.0)), ("e/XBTUSD", math.log(100.0))]
    >>> {q: round(r * 1e4) for q, r in quote_rates(fresh).items()}
    {'USDT': 296}
    >>> quote_rates(fresh[:4])
    {}
    """
    by_quote: dict[str, dict[str, list[tuple[float, str]]]] = {}
    for k, lp in fresh:
        venue, quote = venue_quote(k)
        by_quote.setdefault(quote, {}).setdefault(venue, []).append((lp, k))
    dollar = by_quote.pop("USD", None)
    if dollar is None or len(dollar) < 2:
        return {}
    prices = sorted(_middle(sorted(ms)) for ms in dollar.values())
    n = len(prices)
    lo, hi = prices[(n - 1) // 2][0], prices[n // 2][0]
    rates: dict[str, float] = {}
    for quote, venues in by_quote.items():
        mid = _middle(sorted(_middle(sorted(ms)) for ms in venues.values()))[0]
        rates[quote] = mid - min(max(mid, lo), hi)
    return rates


class CrossRateConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the cross-market dislocation check (``detector.cross``).

    On by default. Prices are judged in event-time order once every worker has
    passed them (:mod:`~riskguard.operators.detection.cross_shard`), on ``shards``
    shard keys, each holding the groups that hash to it.
    """

    enabled: bool = True  # false: no dislocation signals
    shards: PositiveInt = 4
    min_markets: Annotated[int, msgspec.Meta(ge=2)] = 3
    floor_bps: PositiveFinite = 50.0
    band_k: PositiveFinite = 8.0
    # a dislocation is critical past this many times its band (the larger of floor_bps and
    # band_k usual spreads), else a warning
    critical_ratio: Annotated[float, msgspec.Meta(ge=1.0, le=MAX_FLOAT)] = 2.0
    halflife_s: PositiveSeconds = 86_400.0
    max_age_ns: Nanoseconds = 120 * NS
    # a market whose prices come behind the others' (its feed or its exchange's clock
    # lagging) is waited for this long behind the newest event time read; a price later
    # than that is left out of the check and counted
    allowed_lateness_ns: Nanoseconds = 10 * NS
    # comparisons a market learns its usual offset from before it can be judged
    warmup_points: NonNegativeInt = 60
    # a dislocation closes after this many comparisons back inside the band
    close_quiet_points: NonNegativeInt = 3
    model_version: str = "1"  # recorded on every dislocation signal

    def validate(self, path: str = "detector.cross") -> CrossRateConfig:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, path)
        return self


@dataclass
class MarketState:
    """One market of a base: its latest price and its usual offset from the others."""

    ts: int = -1
    logp: float = 0.0
    interval_ns: int = 0
    mean: float = 0.0  # usual dev, bps
    var: float = 0.0
    n: int = 0
    ep_open: bool = False
    ep_severity: str = "info"
    ep_quiet: int = 0
    episodes: int = 0


@persisted("riskguard.cross_rates")
@dataclass
class CrossRateState:
    """One base asset's markets."""

    version: int = 1
    markets: dict[str, MarketState] = field(default_factory=dict)
    signals: int = 0


class CrossRates:
    """Per base asset; ``on_event(FeatureVector) -> [AnomalySignal]``."""

    def __init__(self, config: CrossRateConfig, state: CrossRateState | None = None) -> None:
        self.config = config
        self.s = state if state is not None else CrossRateState()
        self._decay_per_ns = math.log(2.0) / (config.halflife_s * NS)

    def snapshot(self) -> CrossRateState:
        return CrossRateState(version=self.s.version, signals=self.s.signals,
                              markets={k: MarketState(**m.__dict__)
                                       for k, m in self.s.markets.items()})

    def on_event(self, fv: FeatureVector) -> list[AnomalySignal]:
        return self.on_time([fv])

    def on_time(self, vectors: list[FeatureVector]) -> list[AnomalySignal]:
        """Prices of one event time: every market's price is taken in first, then each
        market is judged against the others (in key order), so markets whose bars close
        together are compared bar with bar whatever order they come in."""
        s = self.s
        taken: dict[str, tuple[FeatureVector, MarketState, int]] = {}
        for fv in vectors:
            price = fv.price
            if price is None or not 0.0 < price < math.inf:
                continue
            m = s.markets.get(fv.key)
            if m is None:
                m = s.markets[fv.key] = MarketState()
            if fv.ts < m.ts:
                continue
            dt = fv.ts - m.ts if m.ts >= 0 else 0
            if fv.key in taken:  # the key's second price of the time: its first's dt
                dt = taken[fv.key][2]
            m.ts, m.logp, m.interval_ns = fv.ts, math.log(price), fv.interval_ns
            taken[fv.key] = (fv, m, dt)
        out: list[AnomalySignal] = []
        seen: dict[int, tuple[list[tuple[str, float]], dict[str, float]]] = {}
        for key in sorted(taken):
            fv, m, dt = taken[key]
            now = seen.get(fv.ts)
            if now is None:
                now = seen[fv.ts] = self._fresh(key, fv.ts)
            ref = self._reference(key, m.logp, *now)
            if ref is not None:
                out.extend(self._judge(fv, m, (m.logp - ref[0]) * 1e4, ref[1], dt))
        return out

    def _fresh(self, key: str, ts: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """The fresh markets at ``ts`` (key, log price) and each dollar stablecoin's rate
        (:func:`quote_rates`) in ``key``'s group."""
        max_age = self.config.max_age_ns
        fresh = [(k, o.logp) for k, o in self.s.markets.items()
                 if ts - o.ts <= max(max_age, 2 * o.interval_ns)]
        group = market_group(key)
        return fresh, quote_rates(fresh) if group and group.endswith("/USD") else {}

    def _reference(self, key: str, logp: float, fresh: list[tuple[str, float]],
                   rates: dict[str, float]) -> tuple[float, str] | None:
        """The log price market ``key`` (at ``logp``) is judged against, and the market it
        came from: the middle of one price per other venue; None with too few."""
        venue, _quote = venue_quote(key)
        venues: dict[str, list[tuple[float, str]]] = {}
        for k, lp in fresh:
            v, q = venue_quote(k)
            if v != venue:
                venues.setdefault(v, []).append((lp - rates.get(q, 0.0), k))
        votes = [_middle(sorted(ms)) for ms in venues.values()]
        need = max(1, self.config.min_markets - 1)
        if len(votes) < need:
            # too few other venues: every other market counts, its own venue's too
            votes = [(lp - rates.get(venue_quote(k)[1], 0.0), k) for k, lp in fresh
                     if k != key]
            if len(votes) < need:
                return None  # with one other market, which of the two moved cannot be told
        votes.sort()
        n = len(votes)
        lo, hi = votes[(n - 1) // 2], votes[n // 2]
        # an even count: the middle value nearer the market (itself when between them)
        return lo if logp <= lo[0] else hi if logp >= hi[0] else (logp, lo[1])

    def _judge(self, fv: FeatureVector, m: MarketState, dev: float, ref_key: str,
               dt: int) -> list[AnomalySignal]:
        c = self.config
        warm = m.n >= c.warmup_points
        excess = dev - m.mean
        band = max(c.floor_bps, c.band_k * math.sqrt(m.var)) if warm else math.inf
        ratio = abs(excess) / band
        out: list[AnomalySignal] = []
        if ratio >= 1.0:
            sev = Severity.CRITICAL if ratio >= c.critical_ratio else Severity.WARN
            m.ep_quiet = 0
            if not m.ep_open:
                m.ep_open, m.ep_severity = True, sev.value
                m.episodes += 1
                out.append(self._signal(fv, m, "open", sev, excess, ratio, ref_key))
            elif SEVERITY_RANK[sev] > SEVERITY_RANK[Severity(m.ep_severity)]:
                m.ep_severity = sev.value
                out.append(self._signal(fv, m, "escalate", sev, excess, ratio, ref_key))
        elif m.ep_open:
            m.ep_quiet += 1
            if m.ep_quiet >= c.close_quiet_points:
                m.ep_open = False
                out.append(self._signal(fv, m, "close", Severity(m.ep_severity), excess,
                                        ratio, ref_key))
        # the usual offset is learned neither from a dislocation nor from no number
        if not m.ep_open and math.isfinite(dev):
            a = 1.0 / (m.n + 1) if not warm else -math.expm1(-self._decay_per_ns * max(dt, 1))
            d = dev - m.mean
            if warm:
                # a step moves the offset by at most 4 usual spreads, and never less than
                # 4 spreads at which band_k spreads make the floor: a market whose spread
                # learned as 0 still follows a slow drift of its offset
                lim = 4.0 * max(math.sqrt(m.var), c.floor_bps / c.band_k)
                d = max(-lim, min(lim, d))
            m.mean += a * d
            m.var = (1.0 - a) * (m.var + a * d * d)
            m.n += 1
        return out

    def _signal(self, fv: FeatureVector, m: MarketState,
                phase: Literal["open", "escalate", "close"], severity: Severity,
                excess: float, ratio: float, ref_key: str) -> AnomalySignal:
        s = self.s
        s.signals += 1
        spread = math.sqrt(m.var)
        sid = str(uuid.uuid5(_NAMESPACE, f"{fv.key}:{s.signals}:{phase}:{fv.ts}"))
        excess = max(-1e300, min(1e300, excess))
        top = [Contribution(feature="dev_bps", value=excess,
                            zscore=max(-1e12, min(1e12, excess / spread)) if spread else 0.0)]
        if ref_key:
            top.append(Contribution(feature="vs_" + ref_key.replace("/", ":")[:60],
                                    value=excess, zscore=0.0))
        return AnomalySignal(
            id=sid, kind="dislocation", phase=phase, key=fv.key, scope=fv.scope, ts=fv.ts,
            recv_ts=fv.recv_ts, episode_id=f"{fv.key}#cross{m.episodes}",
            score=min(ratio, 1e300), threshold=1.0, severity=severity, warming_up=False,
            top_features=top, model="CrossRates", model_version=self.config.model_version,
            evidence_ids=list(fv.evidence_ids),
        )
