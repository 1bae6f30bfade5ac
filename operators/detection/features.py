"""Engine-neutral feature extraction for market and venue-health keys.

One :class:`FeatureLogic` runs per key: ``venue/instrument`` for market features (index
and oracle prices fanned out to it by :func:`route`), ``venue`` for venue health. With
``cadence="bar"`` (the default) one ``FeatureVector`` per key per event-time bar is
emitted when a later bar's first event arrives (never on the wall clock, so replays are
deterministic); with ``cadence="event"``, one after every event. The features and their
names: docs/detectors.md ("Features"). ``quote_age_s`` is the time since the key's last
quote or trade, ``price_age_s`` since its price last changed (a frozen feed), both at
the vector's event time, so index ticks reveal a feed gone quiet.

Dead letters: ``late`` (older than the key's largest event time minus
``allowed_lateness_ns``; an older event within it still updates the features and counts
in the open bar), ``future`` (more than ``allowed_skew_ns`` ahead of the injected clock)
and ``non_finite`` (NaN or infinity; never reaches the state).

>>> from riskguard.schemas import Quote
>>> cfg = FeatureConfig(venues=("okx",), cadence="event")
>>> logic = FeatureLogic(cfg, clock=lambda: 10**19)
>>> q = Quote(id="q1", venue="okx", instrument="BTC-USDT", ts=1_000_000_000,
...           bid=99.99, bid_size=1.0, ask=100.01, ask_size=3.0)
>>> fv = logic.on_event(q)[0]
>>> (fv.key, round(fv.values["spread_bps"], 3), fv.values["depth_imb"], fv.evidence_ids)
('okx/BTC-USDT', 2.0, -0.5, ['q1'])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from riskguard.operators.core.base import copy_fields
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import source_of
from riskguard.schemas.codec import encode
from riskguard.schemas.market import (
    Bar,
    BookDepth,
    FundingRate,
    IndexPrice,
    Measure,
    OpenInterest,
    OptionQuote,
    PremiumIndexBar,
    Quote,
    Trade,
    VenueStatus,
    mid_price,
)
from riskguard.schemas.signals import FeatureVector, Scope, ScopeKind
from riskguard.schemas.types import INT64_MAX

from riskguard.validation import (
    Nanoseconds,
    PositiveInt,
    PositiveNanoseconds,
    Share,
    check_declared,
)

NS = 1_000_000_000
SECONDS_PER_YEAR = 31_536_000.0

MARKET_FEATURES = (
    "ret_bps", "rv_bps", "trade_rate", "volume_z", "ofi", "spread_bps", "depth_imb",
    "quote_age_s", "price_age_s", "index_dev_bps", "oracle_dev_bps", "basis_bps",
    "funding_bps",
)
OPTION_FEATURES = (
    "iv", "iv_change", "iv_rv_gap", "delta", "gamma", "vega", "spread_bps", "quote_age_s",
)
VENUE_FEATURES = ("hb_gap_s", "seq_gap", "latency_ms", "msg_rate_ratio")

FeatureScale = Literal["interval", "count"]
#: The features that have a scale of their own: the detector never takes the spread it
#: learns for one below it. ``interval``: seconds between a key's events (an age, a
#: gap), at least the key's ordinary time between vectors (its bar or print interval),
#: so a quiet market's seconds between prints are never many sigmas; ``count``: whole
#: events, at least one.
FEATURE_SCALES: dict[str, FeatureScale] = {
    "quote_age_s": "interval", "price_age_s": "interval", "bid_stale_s": "interval",
    "ask_stale_s": "interval", "hb_gap_s": "interval", "seq_gap": "count",
}


class FeatureConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``extract_features``.

    ``venues`` lists the venues whose ``venue/instrument`` keys receive each
    index or oracle price (the fan-out that brings the reference price to
    every key without a per-event exchange). Left empty, the venues are taken
    from the market data routed so far (kept across a restart): list them where an index
    price may come before a venue's first market record. ``index_map`` maps an index
    instrument name to the instruments it prices when the names differ.
    """

    venues: tuple[str, ...] = ()
    index_sources: tuple[str, ...] = ("index",)
    oracle_sources: tuple[str, ...] = ("oracle",)
    # index instrument -> the instruments it prices, where their names differ: its price
    # goes to each of their keys (an index BTC-USD to BTC-USDT and BTC-PERP)
    index_map: dict[str, tuple[str, ...]] = {}
    # bar: one feature vector per key per bar_ns of event time (as its last event left it);
    # event: one after every event
    cadence: Literal["bar", "event"] = "bar"
    bar_ns: PositiveNanoseconds = NS
    allowed_lateness_ns: Nanoseconds = 2 * NS
    allowed_skew_ns: Nanoseconds = 5 * NS
    return_window_ns: PositiveNanoseconds = 5 * NS
    iv_window_ns: PositiveNanoseconds = 10 * NS
    fast_alpha: Share = 0.3
    slow_alpha: Share = 0.01
    rate_halflife_ns: PositiveNanoseconds = 10 * NS
    max_evidence: PositiveInt = 8
    topic: str = "market"
    step: str = "features"

    def validate(self, path: str = "features") -> FeatureConfig:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, path)
        return self


def route(record: Any, config: FeatureConfig,
          local: Callable[[str], bool] | None = None,
          seen: dict[str, set[str]] | None = None) -> list[tuple[str, Any]]:
    """Key a raw market record: ``venue/instrument``, ``venue``, or a fan-out.

    Index and oracle prices go to every configured venue's key of the
    instrument (``index_map`` lets one index price several instruments). With
    no ``venues`` configured they go to the venues ``seen`` trading that
    instrument so far (taken from the data; :func:`route_batch` keeps ``seen``).
    ``local``: when every worker reads its own copy of index prices and
    venue heartbeats (a broadcast source), each copy goes only to the keys
    ``local`` says live on this worker.

    >>> from riskguard.schemas import IndexPrice
    >>> ip = IndexPrice(id="i", venue="index", instrument="BTC-USDT", ts=1, price=5.0)
    >>> [k for k, _ in route(ip, FeatureConfig(venues=("a", "b")))]
    ['a/BTC-USDT', 'b/BTC-USDT']
    >>> [k for k, _ in route(ip, FeatureConfig(venues=("a", "b")), lambda k: k[0] == "b")]
    ['b/BTC-USDT']
    >>> [k for k, _ in route(ip, FeatureConfig(), seen={"BTC-USDT": {"okx"}})]
    ['okx/BTC-USDT']
    """
    if isinstance(record, IndexPrice):
        targets = config.index_map.get(record.instrument, (record.instrument,))
        if config.venues:
            keys = [f"{v}/{inst}" for inst in targets for v in config.venues]
        else:
            known = seen or {}
            keys = [f"{v}/{inst}" for inst in targets for v in sorted(known.get(inst, ()))]
        return [(k, record) for k in keys if local is None or local(k)]
    if isinstance(record, VenueStatus):
        return [(record.venue, record)] if local is None or local(record.venue) else []
    return [(f"{record.venue}/{record.instrument}", record)]


def route_batch(records: list[Any], config: FeatureConfig,
                local: Callable[[str], bool] | None = None,
                seen: dict[str, set[str]] | None = None) -> list[tuple[str, Any]]:
    """:func:`route` over a whole batch, in order (one dataflow call per batch).

    With no ``venues`` configured, ``seen`` (kept by the caller across batches)
    learns which venues trade each instrument from the records routed here.

    >>> from riskguard.schemas import Trade
    >>> t = Trade(id="t", venue="a", instrument="BTC-USDT", ts=1, price=5.0, qty=1.0,
    ...           side="buy")
    >>> [k for k, _ in route_batch([t, t], FeatureConfig(venues=("a",)))]
    ['a/BTC-USDT', 'a/BTC-USDT']
    """
    out: list[tuple[str, Any]] = []
    fanned = (IndexPrice, VenueStatus)
    learn = seen is not None and not config.venues
    for rec in records:
        if type(rec) in fanned:
            out.extend(route(rec, config, local, seen))
        else:
            out.append((f"{rec.venue}/{rec.instrument}", rec))
            if learn:
                seen.setdefault(rec.instrument, set()).add(rec.venue)  # type: ignore[union-attr]
    return out


@persisted("riskguard.features")
@dataclass
class FeatureState:
    """Everything one key remembers. Plain data; see :meth:`FeatureLogic.snapshot`."""

    version: int = 1
    key: str = ""
    kind: str = ""
    watermark: int = -1
    bar: int = -1
    pending: bool = False
    last_ts: int = 0
    evidence: list[str] = field(default_factory=list)
    recv_lag_ns: int = 0
    # price
    mid: float = 0.0
    logp: float = 0.0
    quote_ts: int = -1  # last quote or trade
    px_low: float = 0.0  # the price's range since the last vector (a bar's own range)
    px_high: float = 0.0
    interval_ns: int = 0  # the bar interval of a key fed bars
    measure: Measure = Measure.PRICE  # what its bars' values are
    range_bps: float = 0.0
    # book depth within the innermost band, and when each side last changed
    has_depth: bool = False
    bid_depth: float = 0.0
    ask_depth: float = 0.0
    bid_depth_ts: int = -1
    ask_depth_ts: int = -1
    has_quotes: bool = False
    change_ts: int = -1
    spread_bps: float = 0.0
    depth_imb: float = 0.0
    hist: deque[tuple[int, float]] = field(default_factory=deque)
    rv_var: float = 0.0
    last_trade: float = 0.0
    # trades
    rate: float = 0.0
    rate_ts: int = -1
    vol_fast: float = 0.0
    vol_mean: float = 0.0
    vol_var: float = 0.0
    n_trades: int = 0
    ofi_num: float = 0.0
    ofi_den: float = 0.0
    # references
    index_px: float = 0.0
    oracle_px: float = 0.0
    basis_bps: float = 0.0
    funding_bps: float = 0.0
    # options
    iv: float = 0.0
    iv_hist: deque[tuple[int, float]] = field(default_factory=deque)
    under_logp: float = 0.0
    under_ts: int = -1
    under_var_rate: float = 0.0
    delta: float = 0.0
    gamma: float = 0.0
    vega: float = 0.0
    # venue health
    hb_ts: int = -1
    hb_gap_s: float = 0.0
    hb_seq: int = -1
    seq_gap: float = 0.0
    latency_ms: float = 0.0
    hb_rate_fast: float = 0.0
    hb_rate_slow: float = 0.0


def _depth_problem(rec: BookDepth) -> tuple[str, str, str] | None:
    """``(path, expected, found)`` of the first thing wrong with a depth snapshot."""
    n = len(rec.bands_pct)
    if n == 0 or len(rec.bid_depth) != n or len(rec.ask_depth) != n:
        return ("$.bands_pct", "bands_pct, bid_depth and ask_depth of one non-zero length",
                f"{n}, {len(rec.bid_depth)}, {len(rec.ask_depth)}")
    for name in ("bands_pct", "bid_depth", "ask_depth"):
        for i, x in enumerate(getattr(rec, name)):
            if not (math.isfinite(x) and x >= 0.0) or (name == "bands_pct" and x == 0.0):
                return (f"$.{name}[{i}]", "finite number > 0" if name == "bands_pct"
                        else "finite number >= 0", repr(x))
    if rec.mid is not None and not (math.isfinite(rec.mid) and rec.mid > 0.0):
        return ("$.mid", "finite number > 0", repr(rec.mid))
    return None


_CHECKS: dict[type, tuple[str, ...]] = {
    Trade: ("price", "qty"),
    Bar: ("open", "high", "low", "close", "volume"),
    BookDepth: (),
    Quote: ("bid", "ask", "bid_size", "ask_size"),
    OptionQuote: ("bid", "ask", "mark_price", "mark_iv", "underlying_price", "delta", "gamma",
                  "vega", "theta", "strike"),
    IndexPrice: ("price",),
    FundingRate: ("rate",),
    PremiumIndexBar: (),  # signed fractions, not prices: checked where read
    OpenInterest: (),
    VenueStatus: (),
}
_SNAPSHOTS = (Bar, BookDepth)
#: relative change below which a depth band counts as unchanged (a frozen book)
DEPTH_CHANGE = 1e-3
_POSITIVE = {"price", "bid", "ask", "underlying_price", "strike", "open", "high", "low",
             "close"}
#: entries a price or IV history keeps at most (past it, the oldest go first)
MAX_HIST = 65_536
#: the largest trade size or bar volume taken: its square, in the volume statistics,
#: stays finite
MAX_QTY = 1e150


def _derived_problem(rec: Any) -> tuple[str, str, str] | None:
    """``(path, expected, found)`` when valid fields give a feature that overflows (a
    funding rate of 1e305 in bps), or a size past ``MAX_QTY``; else None."""
    t = type(rec)
    if t is Trade or t is Bar:
        path, qty = ("$.qty", rec.qty) if t is Trade else ("$.volume", rec.volume)
        if qty > MAX_QTY:
            return path, f"at most {MAX_QTY:g} (volume_z squares it)", repr(qty)
        if t is Bar:
            if not math.isfinite((rec.high - rec.low) / rec.close * 1e4):
                return "$.close", "a close whose range_bps is finite", repr(rec.close)
            buy = rec.taker_buy_volume
            if buy is not None and not (math.isfinite(buy) and 0.0 <= buy <= MAX_QTY):
                return "$.taker_buy_volume", f"0 to {MAX_QTY:g} (ofi)", repr(buy)
    elif t is FundingRate:
        if not math.isfinite(rec.rate * 1e4):
            return "$.rate", "a rate whose funding_bps is finite", repr(rec.rate)
        if rec.mark_price and rec.index_price and not math.isfinite(
                (rec.mark_price - rec.index_price) / rec.index_price * 1e4):
            return ("$.index_price", "mark and index prices whose basis_bps is finite",
                    f"mark {rec.mark_price!r} index {rec.index_price!r}")
    elif t is PremiumIndexBar and not math.isfinite(rec.close * 1e4):
        return "$.close", "a premium whose basis_bps is finite", repr(rec.close)
    return None


def _imbalance(b: float, a: float) -> float:
    """``(b - a) / (b + a)`` of two sizes >= 0 (0 when both are 0); in halves where
    ``b + a`` overflows, not where it does not (halves of 5e-324 round to 0)."""
    total = b + a
    if total == math.inf:
        half_b, half_a = 0.5 * b, 0.5 * a
        return (half_b - half_a) / (half_b + half_a)
    return (b - a) / total if total > 0.0 else 0.0


def _remember(h: deque[tuple[int, float]], ts: int, x: float) -> None:
    """Append ``(ts, x)`` to a history. Of a run of one time only the first and the last
    entry are kept: the only ones the oldest entry can be once the history is trimmed
    (frozen timestamps do not grow it)."""
    if len(h) > 1 and h[-1][0] == ts == h[-2][0]:
        h[-1] = (ts, x)
        return
    h.append((ts, x))
    if len(h) > MAX_HIST:
        h.popleft()


class FeatureLogic:
    """Per-key feature state machine; ``on_event`` returns vectors or dead letters."""

    def __init__(self, config: FeatureConfig, clock: Callable[[], int],
                 state: FeatureState | None = None) -> None:
        self.config = config
        self.clock = clock
        self.s = state if state is not None else FeatureState()
        self._fast = config.fast_alpha
        self._slow = config.slow_alpha
        self._rate_tau = config.rate_halflife_ns / math.log(2.0)
        self._lateness = config.allowed_lateness_ns
        self._skew = config.allowed_skew_ns
        self._bar_ns = config.bar_ns
        self._by_bar = config.cadence == "bar"
        self._max_evidence = config.max_evidence
        self._return_window = config.return_window_ns
        self._rv_alpha = config.fast_alpha * 0.3
        self._scope: tuple[str, bool, Scope] | None = None  # (key, is_venue, scope)

    def snapshot(self) -> FeatureState:
        """An independent copy of the state."""
        s = self.s  # scalars and strings shared; containers copied
        return copy_fields(s, evidence=list(s.evidence), hist=deque(s.hist),
                           iv_hist=deque(s.iv_hist))

    def on_event(self, rec: Any) -> list[FeatureVector | DeadLetter]:
        if rec.__class__ is OpenInterest:
            return []  # accepted, no feature from it: it moves no clock and emits nothing
        bad = self._reject(rec)
        if bad is not None:
            return [bad]
        s = self.s
        ts = rec.ts
        out: list[FeatureVector | DeadLetter] = []
        bar = ts // self._bar_ns
        by_bar = self._by_bar
        if by_bar and s.pending and bar > s.bar and s.kind:
            out.append(self._vector(s.last_ts))
            s.pending = False
        if ts > s.watermark:
            s.watermark = ts
            if bar > s.bar:  # noqa: PLR1730  # hot path: a compare beats a max() call
                s.bar = bar
        s.last_ts = s.watermark
        t = type(rec)
        if t is Quote:
            self._quote(rec, ts)
        else:
            self._apply(rec, ts)
        ev = s.evidence
        ev.append(rec.id)
        if len(ev) > self._max_evidence:
            del ev[0]
        s.pending = True
        if not s.kind:
            return out
        if not by_bar or t in _SNAPSHOTS:  # a bar or a book snapshot is whole at its ts
            out.append(self._vector(s.last_ts))
            s.pending = False
        return out

    def on_eof(self) -> list[FeatureVector | DeadLetter]:
        """Flush the open bar at end of input (backtests)."""
        s = self.s
        if self.config.cadence == "bar" and s.pending and s.kind:
            s.pending = False
            vec = self._vector(s.last_ts)
            return [vec]
        return []

    def _dead(self, rec: Any, reason: str, path: str, expected: str, found: str) -> DeadLetter:
        try:
            raw = encode(rec)
        except (TypeError, ValueError, msgspec.EncodeError):
            raw = repr(rec).encode()
        topic, partition, offset = source_of(rec) or (self.config.topic, -1, -1)
        return DeadLetter.of(
            topic=topic, partition=partition, offset=offset, ts=self.clock(), reason=reason,
            path=path, expected=expected, found=found, step=self.config.step, raw=raw,
        )

    def _reject(self, rec: Any) -> DeadLetter | None:
        t = type(rec)
        # fast path for the common records: one finiteness test of a sum (NaN or inf in
        # any term makes it non-finite; a rare overflow falls through to the full check)
        if t is Quote:
            bid, ask = rec.bid, rec.ask
            ok = (math.isfinite(bid + ask + rec.bid_size + rec.ask_size)
                  and bid > 0.0 and ask > 0.0)
        elif t is Trade:
            ok = (math.isfinite(rec.price + rec.qty) and rec.price > 0.0
                  and rec.qty <= MAX_QTY)
        else:
            ok = False
        if ok:
            ts = rec.ts
            wm = self.s.watermark
            if (wm < 0 or ts >= wm - self._lateness) and ts <= self.clock() + self._skew:
                return None
        fields = _CHECKS.get(t)
        if fields is None:
            return self._dead(rec, "unknown_type", "$.type", "a market record",
                              type(rec).__name__)
        for name in fields:
            x = getattr(rec, name)
            if not math.isfinite(x):
                return self._dead(rec, "non_finite", f"$.{name}", "finite number", repr(x))
            if name in _POSITIVE and x <= 0.0 and not (isinstance(rec, OptionQuote)
                                                       and name in ("bid", "ask")):
                return self._dead(rec, "validation", f"$.{name}", "float > 0", repr(x))
        if t is BookDepth:
            bad = _depth_problem(rec)
            if bad is not None:
                return self._dead(rec, "validation", bad[0], bad[1], bad[2])
        if t is Bar and not rec.low <= min(rec.open, rec.close) <= max(rec.open, rec.close) \
                <= rec.high:
            return self._dead(rec, "validation", "$.low", "low <= open, close <= high",
                              f"open {rec.open!r} high {rec.high!r} low {rec.low!r} "
                              f"close {rec.close!r}")
        bad = _derived_problem(rec)
        if bad is not None:
            return self._dead(rec, "non_finite", bad[0], bad[1], bad[2])
        ts = rec.ts
        wm = self.s.watermark
        lateness = self.config.allowed_lateness_ns
        if wm >= 0 and ts < wm - lateness:
            return self._dead(rec, "late", "$.ts", f"ts >= {wm - lateness} (watermark "
                              f"{wm} minus allowed lateness {lateness} ns)", str(ts))
        limit = self.clock() + self.config.allowed_skew_ns
        if ts > limit:
            return self._dead(rec, "future", "$.ts", f"ts <= {limit} (clock plus allowed "
                              f"skew {self.config.allowed_skew_ns} ns)", str(ts))
        return None

    def _quote(self, rec: Quote, ts: int) -> None:
        """The most common record, on its own short path (same steps as ``_apply``)."""
        s = self.s
        if not s.kind:
            s.kind = "market"
        if not s.key:
            s.key = f"{rec.venue}/{rec.instrument}"
        bid, ask = rec.bid, rec.ask
        mid = mid_price(bid, ask)
        s.spread_bps = (ask - bid) / mid * 1e4
        # halves: bid_size + ask_size overflows past 9e307, and the ratio is the same
        bsz, asz = 0.5 * rec.bid_size, 0.5 * rec.ask_size
        depth = bsz + asz
        s.depth_imb = (bsz - asz) / depth if depth > 0 else 0.0
        if ts > s.quote_ts:  # noqa: PLR1730  # hot path: a compare beats a max() call
            s.quote_ts = ts
        s.has_quotes = True
        self._price(mid, ts)
        if rec.recv_ts is not None:
            s.recv_lag_ns = rec.recv_ts - ts

    def _apply(self, rec: Any, ts: int) -> None:
        """Every record but a quote (``on_event`` sends those to :meth:`_quote`): the
        step for its type (:data:`_STEPS`)."""
        step = _STEPS.get(type(rec))
        if step is not None:
            step(self, rec, ts)
        if getattr(rec, "recv_ts", None) is not None:
            self.s.recv_lag_ns = rec.recv_ts - ts

    def _name(self, rec: Any) -> None:
        """A market key's kind and name, from its first record."""
        s = self.s
        if not s.kind:
            s.kind = "market"
        if not s.key:
            s.key = f"{rec.venue}/{rec.instrument}"

    def _on_trade(self, rec: Trade, ts: int) -> None:
        s = self.s
        self._name(rec)
        if rec.price != s.last_trade:
            s.change_ts = max(s.change_ts, ts)
        s.last_trade = rec.price
        s.quote_ts = max(s.quote_ts, ts)
        self._trade(rec.qty, 1.0 if rec.side == "buy" else -1.0, ts)
        if not s.has_quotes:
            self._price(rec.price, ts)

    def _on_index(self, rec: IndexPrice, ts: int) -> None:
        if rec.venue in self.config.oracle_sources:
            self.s.oracle_px = rec.price
        else:
            self.s.index_px = rec.price

    def _on_funding(self, rec: FundingRate, ts: int) -> None:
        s = self.s
        self._name(rec)
        s.funding_bps = rec.rate * 1e4
        if rec.mark_price and rec.index_price:
            s.basis_bps = (rec.mark_price - rec.index_price) / rec.index_price * 1e4

    def _on_premium(self, rec: PremiumIndexBar, ts: int) -> None:
        """The perpetual's premium over its index: the basis, as a funding record gives
        it."""
        self._name(rec)
        self.s.basis_bps = rec.close * 1e4

    def _on_option(self, rec: OptionQuote, ts: int) -> None:
        s = self.s
        s.kind = "option"
        if not s.key:
            s.key = f"{rec.venue}/{rec.instrument}"
        self._option(rec, ts)

    def _bar(self, rec: Bar, ts: int) -> None:
        """A closed bar: the market was seen at ``ts`` (so ``price_age_s`` restarts, unless
        the bar is flat at the last price: a frozen feed), over its range. A bar more
        than two intervals after the last price starts the path afresh at its open."""
        s = self.s
        self._name(rec)
        frozen = rec.low == rec.high == s.mid
        s.interval_ns = rec.interval_ns
        s.measure = rec.measure
        h = s.hist
        if h and 0 < 2 * rec.interval_ns < ts - max(h[-1][0], s.quote_ts):
            # a gap in the data: the price path restarts at this bar's open, so
            # neither its return nor its range spans the missing time
            h.clear()
            h.append((rec.start, math.log(rec.open)))
            s.mid, s.logp = rec.open, h[0][1]
            s.px_low = s.px_high = rec.open
        s.quote_ts = max(s.quote_ts, ts)
        s.range_bps = (rec.high - rec.low) / rec.close * 1e4
        if not rec.price_only and rec.volume > 0.0:
            buy = rec.taker_buy_volume
            sign = 0.0 if buy is None else (2.0 * buy - rec.volume) / rec.volume
            self._trade(rec.volume, sign, ts)
        self._price(rec.close, ts)
        if not frozen and ts > s.change_ts:
            s.change_ts = ts
        s.px_low = min(s.px_low, rec.low)
        s.px_high = max(s.px_high, rec.high)

    def _depth(self, rec: BookDepth, ts: int) -> None:
        """A depth snapshot: the innermost band's depth per side, and since when it has
        not changed by more than ``DEPTH_CHANGE`` (a frozen side is a stale feed)."""
        s = self.s
        self._name(rec)
        i = min(range(len(rec.bands_pct)), key=rec.bands_pct.__getitem__)
        bid, ask = rec.bid_depth[i], rec.ask_depth[i]
        if not s.has_depth or abs(bid - s.bid_depth) > DEPTH_CHANGE * max(bid, s.bid_depth):
            s.bid_depth_ts = max(s.bid_depth_ts, ts)
        if not s.has_depth or abs(ask - s.ask_depth) > DEPTH_CHANGE * max(ask, s.ask_depth):
            s.ask_depth_ts = max(s.ask_depth_ts, ts)
        s.bid_depth, s.ask_depth, s.has_depth = bid, ask, True
        s.quote_ts = max(s.quote_ts, ts)
        if rec.mid is not None:
            self._price(rec.mid, ts)

    def _price(self, mid: float, ts: int) -> None:
        s = self.s
        if mid < s.px_low or s.px_low == 0.0:
            s.px_low = mid
        if mid > s.px_high:  # noqa: PLR1730  # hot path: a compare beats a max() call
            s.px_high = mid
        logp = math.log(mid)
        if s.mid > 0.0:
            r = logp - s.logp
            s.rv_var += self._rv_alpha * (r * r - s.rv_var)
            if mid != s.mid and ts > s.change_ts:
                s.change_ts = ts
        else:
            s.change_ts = ts
        s.mid = mid
        s.logp = logp
        _remember(s.hist, ts, logp)
        h = s.hist
        horizon = ts - self._return_window
        while len(h) > 2 and h[1][0] <= horizon:
            h.popleft()

    def _trade(self, qty: float, sign: float, ts: int) -> None:
        s = self.s
        if s.rate_ts >= 0:
            dt = max(0, ts - s.rate_ts)
            s.rate = s.rate * math.exp(-dt / self._rate_tau)
        s.rate += NS / self._rate_tau
        s.rate_ts = max(s.rate_ts, ts)
        f = self._fast
        s.vol_fast += f * (qty - s.vol_fast) if s.n_trades else qty
        if s.n_trades == 0:
            s.vol_mean = qty
        else:
            a = self._slow if s.n_trades > 50 else 1.0 / (s.n_trades + 1)
            d = qty - s.vol_mean
            if s.n_trades > 50:
                # winsorized at 4 sd: a burst of huge trades must not become its own yardstick
                lim = 4.0 * math.sqrt(s.vol_var)
                d = lim if d > lim else d
            s.vol_mean += a * d
            s.vol_var = (1 - a) * (s.vol_var + a * d * d)
        s.n_trades += 1
        s.ofi_num += f * (sign * qty - s.ofi_num)
        s.ofi_den += f * (qty - s.ofi_den)

    def _option(self, rec: OptionQuote, ts: int) -> None:
        s = self.s
        s.iv = rec.mark_iv
        s.delta, s.gamma, s.vega = rec.delta, rec.gamma, rec.vega
        mid = mid_price(rec.bid, rec.ask)
        s.spread_bps = (rec.ask - rec.bid) / mid * 1e4 if mid > 0 else 0.0
        s.quote_ts = max(s.quote_ts, ts)
        h = s.iv_hist
        _remember(h, ts, rec.mark_iv)
        horizon = ts - self.config.iv_window_ns
        while len(h) > 2 and h[1][0] <= horizon:
            h.popleft()
        lp = math.log(rec.underlying_price)
        if s.under_ts >= 0 and ts > s.under_ts:
            r = lp - s.under_logp
            dt_s = (ts - s.under_ts) / NS
            s.under_var_rate += self._slow * 3 * (r * r / dt_s - s.under_var_rate)
        s.under_logp = lp
        s.under_ts = max(s.under_ts, ts)

    def _venue(self, rec: VenueStatus, ts: int) -> None:
        s = self.s
        s.kind = "venue"
        s.key = rec.venue
        if s.hb_ts >= 0 and ts > s.hb_ts:
            gap = (ts - s.hb_ts) / NS
            s.hb_gap_s = gap
            inst = 1.0 / gap
            s.hb_rate_fast += self._fast * (inst - s.hb_rate_fast)
            s.hb_rate_slow += self._slow * (inst - s.hb_rate_slow)
        elif s.hb_ts < 0:
            s.hb_rate_fast = s.hb_rate_slow = 0.0
        if s.hb_seq >= 0:
            s.seq_gap = float(max(0, rec.seq - s.hb_seq - 1))
        s.hb_seq = max(s.hb_seq, rec.seq)
        s.hb_ts = max(s.hb_ts, ts)
        if rec.recv_ts is not None:
            s.latency_ms = (rec.recv_ts - ts) / 1e6

    def values(self, now: int) -> dict[str, float]:
        """The current feature values of this key, evaluated at event time ``now`` (one
        that cannot be computed stays NaN or infinite: :meth:`_vector` refuses it)."""
        s = self.s
        if s.kind == "venue":
            gap = max(s.hb_gap_s, (now - s.hb_ts) / NS) if s.hb_ts >= 0 else 0.0
            ratio = s.hb_rate_fast / s.hb_rate_slow if s.hb_rate_slow > 0 else 1.0
            vals = {"hb_gap_s": gap, "seq_gap": s.seq_gap, "latency_ms": s.latency_ms,
                    "msg_rate_ratio": ratio}
        elif s.kind == "option":
            h = s.iv_hist
            iv_change = s.iv - h[0][1] if h else 0.0
            rv = math.sqrt(max(0.0, s.under_var_rate) * SECONDS_PER_YEAR)
            vals = {"iv": s.iv, "iv_change": iv_change, "iv_rv_gap": s.iv - rv,
                    "delta": s.delta, "gamma": s.gamma, "vega": s.vega,
                    "spread_bps": s.spread_bps,
                    "quote_age_s": (now - s.quote_ts) / NS if s.quote_ts >= 0 else 0.0}
        else:
            h = s.hist
            ret = (s.logp - h[0][1]) * 1e4 if h else 0.0
            rate = s.rate
            if s.rate_ts >= 0 and now > s.rate_ts:
                rate *= math.exp(-(now - s.rate_ts) / self._rate_tau)
            std = math.sqrt(s.vol_var)
            vz = (s.vol_fast - s.vol_mean) / std if std > 0 else 0.0
            ofi = s.ofi_num / s.ofi_den if s.ofi_den > 0 else 0.0
            last = s.last_trade or s.mid
            idx = ((s.mid - s.index_px) / s.index_px * 1e4
                   if s.index_px > 0 and s.mid > 0 else 0.0)
            ora = (s.oracle_px - last) / last * 1e4 if s.oracle_px > 0 and last > 0 else 0.0
            qts = s.quote_ts if s.quote_ts >= 0 else s.change_ts
            vals = {
                "ret_bps": ret, "rv_bps": math.sqrt(max(0.0, s.rv_var)) * 1e4,
                "trade_rate": rate, "volume_z": vz, "ofi": ofi,
                "spread_bps": s.spread_bps, "depth_imb": s.depth_imb,
                "quote_age_s": (now - qts) / NS if qts >= 0 else 0.0,
                "price_age_s": (now - s.change_ts) / NS if s.change_ts >= 0 else 0.0,
                "index_dev_bps": idx, "oracle_dev_bps": ora,
                "basis_bps": s.basis_bps, "funding_bps": s.funding_bps,
            }
            if s.interval_ns:
                vals["range_bps"] = s.range_bps
            if s.has_depth:
                b, a = s.bid_depth, s.ask_depth
                vals["bid_depth_log"] = math.log1p(b)
                vals["ask_depth_log"] = math.log1p(a)
                vals["depth_imb_band"] = _imbalance(b, a)
                vals["bid_stale_s"] = (now - s.bid_depth_ts) / NS
                vals["ask_stale_s"] = (now - s.ask_depth_ts) / NS
        return vals

    def _vector(self, now: int) -> FeatureVector | DeadLetter:
        """The key's vector at ``now``, carrying (and clearing) the pending evidence ids;
        a ``non_finite`` dead letter naming the first feature that overflows (an index
        price of 1e-306 against a price of 100), never a zero."""
        s = self.s
        key = s.key
        is_venue = s.kind == "venue"
        cached = self._scope
        if cached is not None and cached[0] == key and cached[1] is is_venue:
            scope = cached[2]
        else:
            if is_venue:
                scope = Scope(kind=ScopeKind.VENUE, value=key)
            else:
                venue, _, inst = key.partition("/")
                scope = Scope(kind=ScopeKind.INSTRUMENT, value=inst or key,
                              venue=venue or None)
            self._scope = (key, is_venue, scope)  # frozen: shared by this key's vectors
        priced = s.kind == "market" and s.mid > 0.0
        values = self.values(now)
        vec = FeatureVector(
            key=key, scope=scope, ts=now,
            recv_ts=min(now + s.recv_lag_ns, INT64_MAX) if s.recv_lag_ns else None,
            values=values, evidence_ids=s.evidence,
            price=s.mid if priced else None, low=s.px_low if priced else None,
            high=s.px_high if priced else None, interval_ns=s.interval_ns,
            measure=s.measure,
        )
        s.evidence = []  # the vector owns the list now
        s.px_low = s.px_high = s.mid
        if not math.isfinite(sum(values.values())):  # NaN/inf in any (or a rare overflow)
            for name, v in values.items():
                if not math.isfinite(v):
                    return self._dead(vec, "non_finite", f"$.values.{name}",
                                      "finite number", repr(v))
        return vec


_STEPS: dict[type, Callable[[FeatureLogic, Any, int], None]] = {
    Trade: FeatureLogic._on_trade, Bar: FeatureLogic._bar, BookDepth: FeatureLogic._depth,
    IndexPrice: FeatureLogic._on_index, FundingRate: FeatureLogic._on_funding,
    PremiumIndexBar: FeatureLogic._on_premium, OptionQuote: FeatureLogic._on_option,
    VenueStatus: FeatureLogic._venue,
}
"""What each record type (but a quote) does to its key's state."""


def feature_builder(config: FeatureConfig, clock: Callable[[], int]
                    ) -> Callable[[FeatureState | None], FeatureLogic]:
    """``builder(state_or_None) -> FeatureLogic`` for ``stateful_logic``."""
    config.validate()

    def build(state: FeatureState | None) -> FeatureLogic:
        return FeatureLogic(config, clock, state)

    return build
