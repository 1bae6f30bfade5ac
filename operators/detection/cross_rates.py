"""Dislocations between markets of one base asset, found without configuring pegs.

A stablecoin depeg, a single-venue flash crash or a perpetual torn from spot shows first
as one market of an asset parting from the others. :class:`CrossRates` keeps, per market
group (base asset and quote unit, :func:`market_group`), the latest price of every
market and compares each with the **median of the others**: ``dev`` (log ratio, in bps)
against its learned usual offset and spread (not learned while dislocated); a market is
dislocated past ``max(floor_bps, band_k * spread)``, critical at ``critical_ratio``
times that, and judged only against at least ``min_markets - 1`` fresh others. Details:
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
    NonNegativeInt,
    PositiveFinite,
    PositiveInt,
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
    perpetual (``BTC-PERP``, Deribit's ``BTC-PERPETUAL``) is dollar-quoted.

    >>> [split_instrument(n) for n in ("BTCUSDT", "BTC-USD", "XBTUSD", "BTCTUSD",
    ...                                "BTCUSD_PERP", "ETH-27DEC26-3500-C")]
    [('BTC', 'USDT'), ('BTC', 'USD'), ('BTC', 'USD'), ('BTC', 'TUSD'), ('BTC', 'USD'), None]
    >>> [split_instrument(n) for n in ("BTC-PERP", "ETH-PERPETUAL", "BTC-USDT-SWAP")]
    [('BTC', 'USD'), ('ETH', 'USD'), ('BTC', 'USDT')]
    """
    head = name.upper().split("_", 1)[0]
    parts = head.split("-")
    if len(parts) > 1 and parts[-1] in PERPETUAL:
        parts = parts[:-1]
        if len(parts) == 1 and parts[0].isalpha():
            return ALIASES.get(parts[0], parts[0]), "USD"
    if len(parts) == 2 and parts[1] in QUOTES:
        base, quote = parts
    elif len(parts) == 1:
        # the longest quote that leaves a base of three letters or more (XBT-USD, not XB-TUSD)
        quote = next((q for q in QUOTES if head.endswith(q) and len(head) - len(q) >= 3), "")
        if not quote:
            return None
        base = head[: -len(quote)]
    else:
        return None
    return ALIASES.get(base, base), quote


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
    halflife_s: PositiveFinite = 86_400.0
    max_age_ns: NonNegativeInt = 120 * NS
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
        for key in sorted(taken):
            fv, m, dt = taken[key]
            ref = self._reference(key, fv.ts, m.logp)
            if ref is not None:
                out.extend(self._judge(fv, m, (m.logp - ref[0]) * 1e4, ref[1], dt))
        return out

    def _reference(self, key: str, ts: int, logp: float) -> tuple[float, str] | None:
        """The price market ``key`` is judged against at ``ts``, and the market it came
        from; None with too few fresh others."""
        max_age = self.config.max_age_ns
        others = sorted((o.logp, k) for k, o in self.s.markets.items()
                        if k != key and ts - o.ts <= max(max_age, 2 * o.interval_ns))
        if len(others) < max(1, self.config.min_markets - 1):
            return None  # with one other market, which of the two moved cannot be told
        mid = len(others) // 2
        return (others[mid] if len(others) % 2 else
                ((others[mid - 1][0] + others[mid][0]) / 2, others[mid][1]))

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
                lim = 4.0 * math.sqrt(m.var)
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
