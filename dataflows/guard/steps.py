"""The steps :func:`~riskguard.dataflows.guard.core.guard_core` is built from: inputs
split by kind, event-time ticks, feed selection and the feed monitor, detection, and the
firm process's view of the market processes' signals and parts."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream
from riskguard.connectors.topics import (
    MARKET,
    TRADING,
    Detection,
    TradingRecord,
)
from riskguard.dataflows.guard.config import GuardConfig, known_names
from riskguard.operators.core.base import (
    event_order,
    stateful_logic,
    values_of,
)
from riskguard.operators.core.clock import TICK_IDLE_NS, Clock, Tick
from riskguard.operators.core.dedup import RecentIdsLogic
from riskguard.operators.detection.ops import (
    detect_anomalies,
    detect_dislocations,
    extract_features,
)
from riskguard.operators.exposure import PROGRESS_KEY
from riskguard.operators.exposure.mark_filter import PRICE_TYPE_COUNT, MarkFilterSpec
from riskguard.operators.mitigation.feeds import FeedConfig, FeedMonitorLogic, FeedSelectLogic
from riskguard.schemas import (
    AnomalySignal,
    DeadLetter,
    DetectProgress,
    IndexPrice,
    MarketEvent,
    MitigationCommand,
    RiskAlert,
    Valuation,
    VenueStatus,
)
from riskguard.schemas.base import Record, source_of
from riskguard.schemas.valuation import Part, Progress


def is_broadcast(rec: Any) -> bool:
    """Records every market process reads its own copy of: index and oracle prices and
    venue heartbeats fan out to many keys."""
    t = type(rec)
    return t is IndexPrice or t is VenueStatus


def mark_filter(cfg: GuardConfig) -> MarkFilterSpec:
    """The mark filter exposure valuation's shards run (``mark_interval_ns``,
    ``mark_move_bps``; :class:`~riskguard.operators.exposure.mark_filter.MarkFilter`).
    It remembers a price per venue, instrument and record type the admission gate let
    in: its cap is the gate's (a name past those is a dead letter before any shard)."""
    known, caps = known_names(cfg), cfg.admission
    venues = len(known.venues) + caps.max_venues
    return MarkFilterSpec(cfg.mark_interval_ns, cfg.mark_move_bps,
                          max_keys=PRICE_TYPE_COUNT * venues * max(len(known.instruments), 1))


def split_inputs(records: Stream[Record]) -> tuple[Stream[MarketEvent], Stream[Record],
                                                  Stream[VenueStatus], Stream[TradingRecord]]:
    """``(market data, everything else, heartbeats, trading records)`` of the decoded
    input. Market data, most of it, is split off first so the other filters see only the
    rest."""
    market = op.flat_map_batch("market", records, _market_records)
    rest = op.flat_map_batch("not_market", records,
                             lambda rs: [r for r in rs if not isinstance(r, MARKET)])
    status = op.flat_map_batch("status", rest, _status_records)
    trading = op.flat_map_batch("trading", rest,
                                lambda rs: [r for r in rs if isinstance(r, TRADING)])
    return market, rest, status, trading


def _market_records(recs: list[Any]) -> list[MarketEvent]:
    return [r for r in recs if isinstance(r, MARKET)]


def _market_and_ticks(recs: list[Any]) -> list[MarketEvent | Tick]:
    """The market records and ticks among ``recs``, in order."""
    return [r for r in recs if type(r) is Tick or isinstance(r, MARKET)]


def _status_records(recs: list[Any]) -> list[Any]:
    return [r for r in recs if isinstance(r, VenueStatus)]


def _ticks_in(recs: list[Any]) -> list[Tick]:
    """The ticks among ``recs``, in order: the cross-market check's ``ticks_of`` where its
    input carries the admission gate's ticks."""
    return [r for r in recs if type(r) is Tick]


def unhandled_letter(rec: Any) -> DeadLetter:
    """A valid record of a type the guard does not consume (e.g. on the wrong topic); a
    bare command record is refused as unsigned: nothing unsigned acts."""
    unsigned = isinstance(rec, MitigationCommand)
    topic, partition, offset = source_of(rec) or ("input", -1, -1)
    return DeadLetter.of(
        topic=topic, partition=partition, offset=offset, ts=getattr(rec, "ts", 0) or 0,
        reason="unsigned_command" if unsigned else "unexpected_type",
        expected="a signed command envelope" if unsigned else "a guard input record",
        found=type(rec).__name__, step="guard", raw=msgspec.json.encode(rec),
    )


def select_feeds(market: Stream[MarketEvent], status: Stream[VenueStatus], cfg: GuardConfig,
                  local_keys: Callable[[str], bool] | None) -> Stream[MarketEvent]:
    """Feed selection (primary/backup failover) on the features' key (venue/instrument),
    so market data changes worker at most once before features; heartbeats fan out."""
    fcfg = cfg.feeds
    instruments = tuple(sorted(cfg.exposure.instruments.instruments))  # each gets heartbeats

    def feed_keys(recs: list[Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for rec in recs:
            if type(rec) is VenueStatus:
                if rec.venue in fcfg.venues:
                    keys = [f"{rec.venue}/{i}" for i in instruments]
                    out.extend((k, rec) for k in keys if local_keys is None or local_keys(k))
                continue
            key = f"{rec.venue}/{rec.instrument}"
            if local_keys is not None and type(rec) is IndexPrice and not local_keys(key):
                continue  # another market process's copy of this index price goes on
            out.append((key, rec))
        return out

    # per-batch steps on the market path: bytewax's filter and map pay a call per record
    keyed = op.flat_map_batch("feed_key", op.merge("feed_in", market, status), feed_keys)
    return op.flat_map_batch(
        "feed_unkey",
        stateful_logic("feed_select", keyed, bind_venue(fcfg), order=event_order),
        values_of,
    )


def with_own_index(market: Stream[MarketEvent], market_ok: Stream[MarketEvent]
                   ) -> Stream[MarketEvent]:
    """A market process's feed-selected market data with its own copy of every index price,
    which feeds its own keys and marks its own shards."""
    return op.merge(
        "feat_market",
        op.flat_map_batch("selected_not_index", market_ok,
                          lambda rs: [r for r in rs if type(r) is not IndexPrice]),
        op.flat_map_batch("index_copies", market,
                          lambda rs: [r for r in rs if type(r) is IndexPrice]),
    )


def detect_on(feat_market: Stream[MarketEvent], status: Stream[VenueStatus],
               cfg: GuardConfig, clock: Clock, local_keys: Callable[[str], bool] | None,
               timed: Stream[Record | Tick] | None = None, watch: Any = None,
               ) -> tuple[Stream[AnomalySignal], list[Stream[DeadLetter]]]:
    """Features and anomaly detection on ``feat_market``; with ``timed`` (what passed the
    admission gate, its ticks in their places), the cross-market check too, on every
    market record as read. ``watch`` (a
    :class:`~riskguard.dataflows.readiness.DetectorWatch`) sees what the detectors get."""
    feats = extract_features("features", op.merge("feat_in", feat_market, status),
                             config=cfg.features, clock=clock, local_keys=local_keys)
    read = (op.flat_map_batch("market_timed", timed, _market_and_ticks)
            if timed is not None and (cfg.detector.cross.enabled or watch is not None)
            else None)
    if watch is not None:  # nothing flows on from these steps
        op.flat_map_batch("watch_vectors", feats.oks, lambda kvs: _watched(
            watch.vector, (fv for _k, fv in kvs)))
        op.flat_map_batch("watch_markets", read if read is not None else feat_market,
                          lambda recs: _watched(watch.market, recs))
    detected = detect_anomalies("detect", feats.oks, config=cfg.detector, clock=clock)
    anomalies = op.key_rm("anomalies", detected.oks)
    if cfg.detector.cross.enabled and read is not None:
        anomalies = op.merge("with_dislocations", anomalies, detect_dislocations(
            "cross", read, config=cfg.detector.cross,
            ticks_of=_ticks_in,
            clock=clock, bar_ns=cfg.features.bar_ns))
    return anomalies, [feats.errs, detected.errs]


def _watched(see: Callable[[Any], None], items: Any) -> list[Any]:
    for item in items:
        see(item)
    return []


def market_ticks(processes: int) -> Any:
    """The firm process: each :class:`~riskguard.schemas.DetectProgress` as a Tick from its
    market process, among ``1 + processes`` tick sources."""

    def ticks(recs: list[Any]) -> list[Tick]:
        return [Tick(ts=r.ts, source=r.source, of=1 + processes)
                for r in recs if type(r) is DetectProgress]

    return ticks


class FirmClock:
    """The firm process's own ticks, held at the slowest market process's progress.

    The firm's steps stop waiting for a source silent for
    :data:`~riskguard.operators.core.clock.TICK_IDLE_NS`, so a restarting market process
    would let the firm's own ticks run past signals it has yet to resend. Held to every
    market process heard from within ``wait_ns`` of processing time, a shorter restart
    leaves the firm's outputs unchanged; one silent for longer holds nothing back (the
    firm must go on valuing fills and enforcing limits). Progress from a source not in
    ``sources`` is ignored: the detections topic's records do not pass admission.

    The firm's own input may go quiet before the market processes' (a replay reads it
    in seconds): while its own time is held, each market process's progress sends its
    newest own tick again at the held time, at least every ``TICK_IDLE_NS / 4`` of
    processing time and whenever the held time moves, so the hold does not fall idle
    while a market process restarts.

    >>> clock = FirmClock(("m0", "m1"), wait_ns=100, clock=lambda: now)
    >>> now = 0
    >>> clock([Tick(ts=50, source="firm")])   # no market process heard from yet
    []
    >>> clock([DetectProgress(ts=40, source="m0"), DetectProgress(ts=70, source="m1"),
    ...        Tick(ts=60, source="firm")])
    [Tick(ts=40, source='firm', of=0)]
    >>> clock([DetectProgress(ts=45, source="m0")])   # the firm's own input is quiet
    [Tick(ts=45, source='firm', of=0)]
    >>> now = 150   # m0 silent past the wait: it no longer holds the firm
    >>> clock([DetectProgress(ts=90, source="m1"), Tick(ts=80, source="firm")])
    [Tick(ts=80, source='firm', of=0)]
    >>> clock([DetectProgress(ts=1, source="not-a-market"), Tick(ts=85, source="firm")])
    [Tick(ts=85, source='firm', of=0)]
    >>> sorted(clock.markets)
    ['m0', 'm1']
    """

    def __init__(self, sources: Collection[str], wait_ns: int, clock: Clock) -> None:
        self.sources = frozenset(sources)
        self.processes = len(self.sources)
        self.wait_ns = wait_ns
        self.clock = clock
        self.started: int | None = None
        self.markets: dict[str, tuple[int, int]] = {}  # source -> (newest ts, heard at)
        # per own tick source: its newest tick, and the ts and processing time it was
        # last sent at
        self.own: dict[str, tuple[Tick, int, int]] = {}

    def __call__(self, recs: list[Any]) -> list[Tick]:
        now = self.clock()
        if self.started is None:
            self.started = now
        out: list[Tick] = []
        heard = False
        for r in recs:
            if type(r) is DetectProgress:
                if r.source not in self.sources:
                    continue
                seen = self.markets.get(r.source)
                self.markets[r.source] = (r.ts if seen is None else max(r.ts, seen[0]), now)
                heard = True
            elif type(r) is Tick:
                out.extend(self._own_tick(r, now))
        if heard and self.own:
            out.extend(self._resend_held(now))
        return out

    def _own_tick(self, tick: Tick, now: int) -> list[Tick]:
        """``tick`` as far as the market processes let it go (nothing: not yet)."""
        last = self.own.get(tick.source)
        newest = tick if last is None or tick.ts >= last[0].ts else last[0]
        held = self._held(now)
        if held is None or tick.ts <= held:
            self.own[tick.source] = (newest, tick.ts, now)
            return [tick]
        if held >= 0:
            self.own[tick.source] = (newest, held, now)
            return [Tick(ts=held, source=tick.source, of=tick.of)]
        self.own[tick.source] = (newest, -1, -1) if last is None else (newest, *last[1:])
        return []

    def _resend_held(self, now: int) -> list[Tick]:
        """Each own source whose newest tick is held back, at the held time, when that
        time moved or the source would otherwise fall idle downstream."""
        held = self._held(now)
        if held is None or held < 0:
            return []
        out: list[Tick] = []
        for name, (newest, sent_ts, sent_at) in self.own.items():
            ts = min(held, newest.ts)
            if ts > sent_ts or (newest.ts > held and now - sent_at >= TICK_IDLE_NS // 4):
                self.own[name] = (newest, max(ts, sent_ts), now)
                out.append(Tick(ts=ts, source=name, of=newest.of))
        return out

    def _held(self, now: int) -> int | None:
        """How far the firm's own ticks may go: None for anywhere, -1 for nowhere yet."""
        live = [ts for ts, heard in self.markets.values() if now - heard < self.wait_ns]
        starting = (len(self.markets) < self.processes
                    and self.started is not None and now - self.started < self.wait_ns)
        if starting and not live:
            return -1
        return min(live) if live else None


def _signals_in(recs: list[Any]) -> list[tuple[str, Any]]:
    """The anomaly signals on the detections topic, and the stage-1 alerts inside market
    processes' valuations, keyed for the one id window."""
    out: list[tuple[str, Any]] = []
    for r in recs:
        t = type(r)
        if t is AnomalySignal:
            out.append(("detections", r))
        elif t is Valuation:
            out.extend(("detections", a) for a in r.alerts)
    return out


def market_parts(detected: Stream[Detection], ticks: Stream[Tick], cfg: GuardConfig
                 ) -> Stream[Part | Progress]:
    """The firm process: the parts and progress of the market processes' valuations (each
    record's parts before its progress), and its own ticks as progress too, which carry
    time on when every market process has gone quiet."""
    processes = cfg.tier.market_processes
    market_sources = processes * cfg.exposure.valuation_shards

    def parts_of(recs: list[Any]) -> list[Part | Progress]:
        out: list[Part | Progress] = []
        for r in recs:
            if type(r) is Valuation:
                out.extend(r.parts)
                out.extend(r.progress)
        return out

    def own_progress(recs: list[Tick]) -> list[Progress]:
        # a tick's ``of`` counts the firm itself and the market processes
        return [Progress(counterparty=PROGRESS_KEY, ts=t.ts, source=f"{t.source}@firm",
                         of=t.of - processes + market_sources) for t in recs]

    return op.merge("parts_in", op.flat_map_batch("valuations", detected, parts_of),
                    op.flat_map_batch("own_progress", ticks, own_progress))


def first_of_each_id(detected: Stream[Detection], keep: int
                     ) -> Stream[AnomalySignal | RiskAlert]:
    """The firm process's anomaly signals and stage-1 alerts, each id once: a market
    process resumed from its snapshot resends the signals made after it."""
    signals = op.flat_map_batch("anomaly_in", detected, _signals_in)
    return op.flat_map_batch(
        "anomalies", stateful_logic("anomaly_ids", signals,
                                    lambda state: RecentIdsLogic(keep, state)),
        values_of)


def progress_records(ticks: list[Tick], name: str) -> list[DetectProgress]:
    """A market process: each of its ticks as a :class:`~riskguard.schemas.DetectProgress`
    from ``name`` (kept across restarts, so the firm waits for the same source)."""
    return [DetectProgress(ts=t.ts, source=name) for t in ticks]


def bind_venue(fcfg: FeedConfig) -> Any:
    return lambda state: PerVenueLogic(FeedSelectLogic, fcfg, state)


def monitor_builder(fcfg: FeedConfig, clock: Clock) -> Any:
    monitor = functools.partial(FeedMonitorLogic, clock=clock)
    return lambda state: PerVenueLogic(monitor, fcfg, state)


class PerVenueLogic:
    """Builds a feed logic for its key's venue, learned from the first record (bytewax
    builders do not see the key); ticks before it are dropped."""

    def __init__(self, cls: Any, fcfg: FeedConfig, state: Any) -> None:
        self.cls = cls
        self.fcfg = fcfg
        self.logic: Any = None
        self._batch: Any = None  # the logic's batch path, bound once it exists
        if state is not None:
            self._bind(cls(fcfg, state.venue, state))

    def _bind(self, logic: Any) -> None:
        self.logic = logic
        self._batch = getattr(logic, "on_batch", None) or (
            lambda events: [out for e in events for out in logic.on_event(e)])

    def on_event(self, event: Any) -> list[Any]:
        return self.on_batch([event])

    def on_batch(self, events: list[Any]) -> list[Any]:
        """The logic's own batch path when it has one, else one event at a time."""
        if self.logic is None:
            first = next((k for k, e in enumerate(events) if not isinstance(e, Tick)), None)
            if first is None:
                return []
            events = events[first:]
            self._bind(self.cls(self.fcfg, events[0].venue))
        return self._batch(events)

    def snapshot(self) -> Any:
        return None if self.logic is None else self.logic.snapshot()
