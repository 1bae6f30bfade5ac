"""Cross-market dislocations in event-time order, however the markets are spread.

:class:`~riskguard.operators.detection.cross_rates.CrossRates` judges a market against the
others' latest prices, which, with markets read by several workers, would depend on
which records have arrived. So :func:`cross_points` runs where the input is read and
makes one price point per market per ``bar_ns`` for :func:`shard_of` its group, followed
on the same channel by the reader's :class:`~riskguard.operators.core.clock.Tick` for
every shard; :class:`CrossShard` holds the points until the watermark has passed them
and every market has sent a point at or after their time (a market lagging behind the
others, its exchange's clock or feed behind, is waited for up to
``allowed_lateness_ns``), then judges them one event time at a time: every point of a
time is taken in before any market is judged against the others. A point older than
what the shard has judged is left out of the check and counted; its record still
reaches the features and detectors, which dead-letter it if it is late there too. Any
number of workers or processes, and a resumed run, raise the same dislocations.

>>> from riskguard.operators.core.clock import Tick
>>> from riskguard.schemas import Quote
>>> def quote(venue, inst, s, mid):
...     return Quote(id=f"{venue}{s}", venue=venue, instrument=inst, ts=s * 10**9,
...                  bid=mid - 0.01, bid_size=1.0, ask=mid + 0.01, ask_size=1.0)
>>> points = cross_points(lambda recs: [Tick(ts=recs[-1].ts, source="w0", of=1)],
...                       bar_ns=10**9, shards=1)
>>> shard = CrossShard(CrossRateConfig(warmup_points=5), clock=lambda: 0)
>>> out = []
>>> for s in range(1, 30):
...     b = 100.05 if s < 25 else 97.0   # b's market falls alone
...     batch = [quote("a", "BTCUSD", s, 100.0), quote("b", "BTCUSDT", s, b),
...              quote("c", "BTC-USDC", s, 100.02), quote("d", "XBTUSD", s, 99.99)]
...     for _key, item in points(batch):
...         out += shard.on_event(item)
>>> out += shard.on_eof()
>>> [(sig.key, sig.phase, sig.severity.value, sig.ts // 10**9) for sig in out]
[('b/BTCUSDT', 'open', 'critical', 25)]
"""

from __future__ import annotations

import heapq
import math
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from riskguard.operators.core.clock import TICK_IDLE_NS, Tick, Watermark
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.cross_rates import (
    CrossRateConfig,
    CrossRates,
    CrossRateState,
    market_group,
)
from riskguard.schemas.market import Bar, Measure, Quote, Trade
from riskguard.schemas.signals import AnomalySignal, FeatureVector, Scope, ScopeKind

STATE_VERSION = 2
_RECENT_BARS = 8  # per market, the bars whose first record cross_points remembers


def shard_of(group: str, shards: int) -> str:
    """The shard key a group is judged on: stable across runs and processes.

    >>> shard_of("BTC/USD", 4), shard_of("BTC/USD", 1)
    ('cross/3', 'cross/0')
    """
    return f"cross/{zlib.crc32(group.encode()) % shards}"


def _price(rec: Any) -> float | None:
    t = type(rec)
    if t is Quote:
        return rec.mid
    if t is Trade:
        return float(rec.price)
    if t is Bar and rec.measure is Measure.PRICE:  # a volatility index is no price
        return float(rec.close)
    return None


PricePoint: TypeAlias = tuple[int, str, float, int, str, int | None]
"""A market's price for the cross check: ``(ts, market key, price, bar interval_ns,
record id, recv_ts)``; a plain tuple, cheap to send to another process."""


def cross_points(ticks_of: Callable[[list[Any]], list[Tick]], *, bar_ns: int,
                 shards: int) -> Callable[[list[Any]], list[tuple[str, Any]]]:
    """A batch function for where market records are read: ``(shard key, PricePoint)`` for
    each market's first priced record of each ``bar_ns``, then ``(shard key, tick)``
    for each of ``ticks_of(batch)`` and every shard. A record earlier than the point
    already sent for its bar (input out of order, as an engine that spreads one
    reader's records over several tasks delivers it) is sent too: the shard judges a
    bar's earliest point and drops the others. Per worker thread; it keeps no state a
    resume needs."""
    last_bar: dict[int, dict[str, dict[int, int]]] = {}
    groups: dict[str, str | None] = {}
    shard_keys = [f"cross/{i}" for i in range(shards)]

    def points(recs: list[Any]) -> list[tuple[str, Any]]:
        seen = last_bar.get(threading.get_ident())
        if seen is None:
            seen = last_bar[threading.get_ident()] = {}
        out: list[tuple[str, Any]] = []
        for rec in recs:
            price = _price(rec)
            if price is None or not 0.0 < price < math.inf:
                continue
            key = f"{rec.venue}/{rec.instrument}"
            ts = rec.ts
            bar = ts // bar_ns
            bars = seen.get(key)
            if bars is None:
                bars = seen[key] = {}
            first = bars.get(bar)
            if first is not None and first <= ts:
                continue  # the bar's point is out
            bars[bar] = ts  # the bar's first record, or an earlier one arriving late
            if len(bars) > _RECENT_BARS:
                del bars[min(bars)]
            if key in groups:
                shard = groups[key]
            else:
                group = market_group(key)
                shard = groups[key] = None if group is None else shard_of(group, shards)
            if shard is None:
                continue
            out.append((shard, (ts, key, price, getattr(rec, "interval_ns", 0), rec.id,
                                rec.recv_ts)))
        for tick in ticks_of(recs):
            out.extend((k, tick) for k in shard_keys)
        return out

    return points


@persisted("riskguard.cross_shard")
@dataclass
class CrossShardState:
    """One shard's groups, the points waiting for the watermark, and its progress."""

    version: int = STATE_VERSION
    groups: dict[str, CrossRateState] = field(default_factory=dict)
    # (ts, market key, arrival number, point): a heap
    held: list[tuple[int, str, int, PricePoint]] = field(default_factory=list)
    arrivals: int = 0
    judged_ts: int = -1  # every point before this has been judged
    last_bar: dict[str, int] = field(default_factory=dict)  # per market: last bar judged
    sources: dict[str, list[int]] = field(default_factory=dict)
    late: int = 0
    progress: dict[str, int] = field(default_factory=dict)  # per market: its newest point


class CrossShard:
    """``on_event(PricePoint | Tick) -> [AnomalySignal]`` for one shard key: a point
    that comes after its time was judged is left out and counted."""

    def __init__(self, config: CrossRateConfig, clock: Callable[[], int],
                 state: CrossShardState | None = None, *, bar_ns: int = 1_000_000_000,
                 on_reorder: Callable[[str, int], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.bar_ns = bar_ns
        # told ("late", 1) for each point left out (a metrics counter in the guard)
        self.on_reorder = on_reorder
        self.state = state if state is not None else CrossShardState()
        self._rates = {g: CrossRates(config, s) for g, s in self.state.groups.items()}
        self._watermark = Watermark.resume(self.state.sources, TICK_IDLE_NS)
        self._markets: dict[str, tuple[str | None, Scope]] = {}

    def snapshot(self) -> CrossShardState:
        st = self.state
        return CrossShardState(
            version=st.version, groups={g: r.snapshot() for g, r in self._rates.items()},
            held=list(st.held), arrivals=st.arrivals, judged_ts=st.judged_ts,
            last_bar=dict(st.last_bar), sources={k: list(v) for k, v in st.sources.items()},
            late=st.late, progress=dict(st.progress))

    def on_event(self, item: PricePoint | Tick) -> list[AnomalySignal]:
        st = self.state
        if type(item) is Tick:
            wm = self._watermark.tick_time(item, self.clock())
            return self._judge_before(self._bound(wm))
        assert type(item) is tuple
        ts, key = item[0], item[1]
        if ts > st.progress.get(key, -1):
            st.progress[key] = ts
        if ts < st.judged_ts:
            st.late += 1  # its time has been judged without it
            if self.on_reorder is not None:
                self.on_reorder("late", 1)
            return []
        st.arrivals += 1
        heapq.heappush(st.held, (ts, key, st.arrivals, item))
        return []

    def _bound(self, wm: int) -> int:
        """How far the shard may judge at watermark ``wm``: up to the slowest market's
        newest point, but never more than ``allowed_lateness_ns`` behind ``wm``. A
        market whose newest point is further behind (silent that long, or gone) is
        forgotten (:meth:`_forget_behind`) and holds nothing back; its next point, if
        one comes, makes it a market again."""
        if wm < 0:
            return wm
        floor = wm - self.config.allowed_lateness_ns
        self._forget_behind(floor)
        slowest = min(self.state.progress.values(), default=wm)
        return min(wm, max(slowest + 1, floor))

    def _forget_behind(self, floor: int) -> None:
        """Forget each market whose newest point is before ``floor``, and the last bar
        judged of each market not sending whose bar is wholly before the judged time
        (any point of it would be late): the per-market maps hold the markets still
        sending, not every market seen."""
        st = self.state
        progress = st.progress
        for key in [k for k, ts in progress.items() if ts < floor]:
            del progress[key]
            self._markets.pop(key, None)
        judged_bar = st.judged_ts // self.bar_ns  # bars before it are wholly judged
        for key in [k for k, bar in st.last_bar.items()
                    if bar < judged_bar and k not in progress]:
            del st.last_bar[key]

    def on_eof(self) -> list[AnomalySignal]:
        """End of input: judge every point still waiting."""
        held = self.state.held
        return self._judge_before(max(p[0] for p in held) + 1) if held else []

    def _judge_before(self, wm: int) -> list[AnomalySignal]:
        """Judge the points before ``wm`` (a worker's tick at ``wm`` may still be followed
        by its other records at that same time), one event time at a time: every point of
        a time is taken in before any market is judged (bars of all venues close
        together), in group then market order."""
        st = self.state
        held = st.held
        out: list[AnomalySignal] = []
        while held and held[0][0] < wm:
            ts = held[0][0]
            at: dict[str, list[FeatureVector]] = {}
            while held and held[0][0] == ts:
                _ts, key, _n, point = heapq.heappop(held)
                bar = ts // self.bar_ns
                if st.last_bar.get(key, -1) >= bar:
                    continue  # a resumed reader's second point for a bar already judged
                st.last_bar[key] = bar
                group, scope = self._market(key)
                if group is not None:
                    at.setdefault(group, []).append(self._vector(point, scope))
            for group in sorted(at):
                rates = self._rates.get(group)
                if rates is None:
                    rates = self._rates[group] = CrossRates(self.config)
                out.extend(rates.on_time(at[group]))
        st.judged_ts = max(st.judged_ts, wm)
        return out

    def _market(self, key: str) -> tuple[str | None, Scope]:
        """A market key's group and scope, parsed once per key."""
        got = self._markets.get(key)
        if got is None:
            venue, _, instrument = key.partition("/")
            got = self._markets[key] = (market_group(key), Scope(
                kind=ScopeKind.INSTRUMENT, value=instrument, venue=venue))
        return got

    @staticmethod
    def _vector(point: PricePoint, scope: Scope) -> FeatureVector:
        ts, key, price, interval_ns, record_id, recv_ts = point
        return FeatureVector(key=key, scope=scope, ts=ts, recv_ts=recv_ts, values={},
                             price=price, interval_ns=interval_ns, evidence_ids=[record_id])


def cross_shard_builder(config: CrossRateConfig, clock: Callable[[], int], *, bar_ns: int,
                        on_reorder: Callable[[str, int], None] | None = None,
                        ) -> Callable[[CrossShardState | None], CrossShard]:
    """``builder(state_or_None) -> CrossShard`` for ``stateful_logic``."""
    config.validate()

    def build(state: CrossShardState | None) -> CrossShard:
        return CrossShard(config, clock, state, bar_ns=bar_ns, on_reorder=on_reorder)

    return build
