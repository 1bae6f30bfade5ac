"""Engine-neutral exposure aggregation in three keyed stages.

Stage 1, :class:`ShardLogic`, is keyed by a *shard of what is being valued*
(``s<k>``, a stable hash of the instrument or collateral asset over
``valuation_shards`` shards). It holds its instruments' marks, FX rates and
realized-vol estimates together with the positions (and open orders) of
*every* counterparty in them, as dense ``counterparty x instrument`` arrays,
so a mark update meets the positions it re-marks without any all-to-all
exchange. Once per batch it re-values, with whole-array operations, every
counterparty whose positions or marks moved, and emits one :class:`Part` per
such counterparty: its complete sums over the shard.

Stage 2, :class:`CounterpartyLogic`, is keyed by counterparty. It keeps the
latest part per shard, re-sums them exactly, detects stale marks against the
counterparty's event-time watermark, and emits the counterparty's
:class:`~riskguard.schemas.Exposure` (at most once per batch). A position with no
mark or no FX rate, or collateral with no FX rate, is left out of the sums and
named in ``unvalued_instruments`` / ``unvalued_collateral`` (and ``stale``): the
limits count it as unvalued, never as zero.

Stage 3, :class:`FirmLogic`, is keyed by the constant ``"firm"``. It keeps
the latest exposure per counterparty, computes each one's concentration
(share of the firm-wide total) and emits the firm rollup
(``counterparty == "*"``).

**Granularity.** Every record is applied in order, and every counterparty
whose value moved is re-valued once per batch, after the batch's last record:
the emitted exposure always reflects every mark. An excursion that starts and
ends *inside* one input batch (a price spike and its reversal among the same
``batch_size`` records) is therefore not seen by ``enforce_limits``; the
limit levels move at batch boundaries. Fed one record at a time
(:class:`LocalPipeline`, or a source with ``batch_size=1``) it is per record.

**Ticked mode** (``ticked=True``, what ``aggregate_exposure(..., ticks=...)``
builds): stage 1 re-values on each :class:`~riskguard.operators.core.clock.Tick`
instead, stamping its parts with the tick's time; records before a tick (by
``ts``) are in, later ones wait for the next tick, even when they share a
batch. A fill, snapshot, balance or orders record does not wait for the tick:
its counterparty re-values at the next ``position_revalue_ns`` boundary. Stages
2 and 3 emit once per tick (or boundary) time rather than once per batch. The
outputs then depend on the event-time order of records and ticks only, not on
how the input was batched. With several tick sources (guard workers), a record
further than ``reorder_slack_ns`` ahead of their watermark waits in the shard.
Each stage passes the ticks on behind its outputs (:class:`Progress`), so a
consumer of the limits stage can take its clock from the end of the path.

All three are driven by :func:`route` (stateless) and can be chained in
memory with :class:`LocalPipeline` (tests, backtests) or by the bytewax
adapter in :mod:`riskguard.operators.risk`.

>>> cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
...     "BTC-USD": InstrumentSpec(kind="spot", base="BTC", quote="USD")}))
>>> from riskguard.schemas import Fill, Trade
>>> pipe = LocalPipeline(cfg)
>>> _ = pipe.feed(Trade(id="t1", venue="v", instrument="BTC-USD", ts=1, price=50.0,
...                     qty=1.0, side="buy"))
>>> out = pipe.feed(Fill(id="f1", venue="v", counterparty="v", instrument="BTC-USD",
...                      side="buy", qty=2.0, price=40.0, ts=2))
>>> [(e.counterparty, e.gross_notional, e.unrealized_pnl) for e in out.exposures]
[('v', 100.0, 20.0), ('*', 100.0, 20.0)]
"""

from __future__ import annotations

import functools
import heapq
import math
import struct
import uuid
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial, reduce
from itertools import chain, compress, pairwise, repeat
from operator import add, attrgetter, is_, itemgetter
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
from riskguard.connectors.placement import route_worker
from riskguard.operators.core.base import copy_fields, copy_state
from riskguard.operators.core.clock import Clock, Tick, Watermark, system_clock
from riskguard.operators.core.dedup import IdWindow
from riskguard.operators.instruments import (
    InstrumentRegistry,
    InstrumentsConfig,
    InstrumentSpec,
)
from riskguard.operators.limits import LimitSpec, level_of
from riskguard.schemas import (
    Balance,
    DeadLetter,
    Exposure,
    FeatureVector,
    Fill,
    FundingRate,
    IndexPrice,
    LimitLevel,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    Quote,
    Record,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
    encode,
    tag_of,
)
from riskguard.schemas.valuation import Part, Progress

from riskguard.errors import ConfigError

__all__ = [
    "CounterpartyLogic",
    "ExposureConfig",
    "FirmLogic",
    "InstrumentSpec",
    "InstrumentsConfig",
    "LocalPipeline",
    "Part",
    "Progress",
    "Router",
    "ShardLogic",
    "ShardPlace",
    "route",
]

STATE_VERSION = 4
"""Version 4: stage-1 per-instrument columns are numpy arrays (version 3 held lists and
is migrated on resume; stage-2 and stage-3 states are unchanged since version 3)."""


NS_PER_S = 1_000_000_000
SECONDS_PER_YEAR = 365.0 * 24 * 3600
FIRM_KEY = "firm"
_NS = uuid.UUID("8f0b7a52-1c6e-4f57-9d43-7e4f3c2a9b10")

MarkSource = Literal["trade", "quote", "index_price", "option_quote", "funding_rate"]


class ExposureConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Configuration of ``aggregate_exposure``.

    - ``max_mark_age_ns``: a mark older than this (vs the newest event time the
      counterparty has seen) makes the exposure ``stale``.
    - ``recon_abs_tol`` / ``recon_rel_tol``: a position snapshot differing from
      the fill-accumulated position by more than ``abs + rel * |qty|`` is a
      ``reconciliation_break``.
    - ``concentration_basis``: what a counterparty's share is a share of.
    - ``concentration_epsilon``: other counterparties' concentration is
      re-emitted when it moves by more than this (absolute share).
    - ``vol_alpha`` / ``vol_min_samples``: EWMA realized vol of marks (used
      when no feature-stream vol ``vol_feature`` is present).
    - ``valuation_shards``: how many stage-1 keys the instruments are hashed
      over (the unit of parallelism of re-valuation; each shard sends one
      part per touched counterparty per batch, so a few is enough).
    - ``position_revalue_ns`` (ticked mode only): a counterparty whose positions,
      balances or open orders changed (a fill, position snapshot, balance or orders
      record) is re-valued at the next multiple of this in event time, as soon as its
      shard sees any record or tick at or past it, instead of waiting for the next
      tick; price moves still re-value once per tick. A breach caused by a fill then
      reaches the limits within milliseconds, and still falls on the same event time
      however the input was batched. ``0``: wait for the tick.
    - ``reorder_slack_ns`` (ticked mode, several tick sources: one per guard worker): a
      record more than this ahead of the sources' watermark waits in the shard until the
      watermark comes that close. A backlog replayed through several processes, where
      one runs minutes of event time ahead of the other, is then applied in the order
      one worker applies it: a fill is not valued against marks the slower process has
      not sent yet, nor marks against a future the watermark has not reached. Live, the
      workers are within a tick of each other and nothing waits. Keep it at least two
      tick intervals; ``0``: never wait. ``max_hold_ns`` (live runs, wall time) bounds
      the wait of a fill, snapshot, balance or orders record: a cluster whose slower
      process lags still sees a breach within seconds.
    - ``pegs``: asset -> peg price in the reporting currency (e.g. ``{"USDC": 1.0}``).
      When an asset's FX index leaves its peg by ``peg_warn_bps`` a ``depeg``
      alert (warn) opens on ``underlying:<asset>``; past ``peg_critical_bps`` it
      turns critical; back within half of ``peg_warn_bps`` a ``peg_restored``
      closes it (each level is left only ``peg_warn_bps / 2`` below it). Every
      USDC-quoted mark and USDC balance moves with the rate, so a slow slide the
      anomaly detector adapts to is still caught here.
    """

    instruments: InstrumentsConfig = InstrumentsConfig()
    max_mark_age_ns: int = 30 * NS_PER_S
    recon_abs_tol: float = 1e-9
    recon_rel_tol: float = 1e-6
    concentration_basis: Literal["gross_notional", "collateral", "gross_plus_collateral"] = (
        "gross_plus_collateral"
    )
    concentration_epsilon: float = 0.005
    vol_alpha: float = 0.05
    vol_min_samples: int = 20
    vol_feature: str = "realized_vol"
    mark_sources: tuple[MarkSource, ...] = (
        "trade", "quote", "index_price", "option_quote", "funding_rate",
    )
    max_evidence: int = 8
    dedup_window: int = 4096
    valuation_shards: int = 1
    position_revalue_ns: int = 10_000_000
    reorder_slack_ns: int = 2 * NS_PER_S
    max_hold_ns: int = 5 * NS_PER_S
    pegs: dict[str, float] = {}
    peg_warn_bps: float = 50.0
    peg_critical_bps: float = 200.0

    def validate(self, path: str = "exposure") -> InstrumentRegistry:
        """Check every value; return the registry built from ``instruments``."""
        if self.max_mark_age_ns <= 0:
            where = f"{path}.max_mark_age_ns"
            raise ConfigError(where, "must be > 0", self.max_mark_age_ns)
        for name in ("recon_abs_tol", "recon_rel_tol", "concentration_epsilon"):
            val = getattr(self, name)
            if not (math.isfinite(val) and val >= 0):
                where = f"{path}.{name}"
                raise ConfigError(where, "must be a finite number >= 0", val)
        if not 0 < self.vol_alpha <= 1:
            where = f"{path}.vol_alpha"
            raise ConfigError(where, "must be in (0, 1]", self.vol_alpha)
        if self.vol_min_samples < 1:
            where = f"{path}.vol_min_samples"
            raise ConfigError(where, "must be >= 1", self.vol_min_samples)
        if not 1 <= self.valuation_shards <= 4096:
            where = f"{path}.valuation_shards"
            raise ConfigError(where, "must be in [1, 4096]", self.valuation_shards)
        if self.position_revalue_ns < 0:
            where = f"{path}.position_revalue_ns"
            raise ConfigError(where, "must be >= 0 (0: re-value per tick only)",
                              self.position_revalue_ns)
        if self.max_hold_ns <= 0:
            where = f"{path}.max_hold_ns"
            raise ConfigError(where, "must be > 0", self.max_hold_ns)
        if self.reorder_slack_ns < 0:
            where = f"{path}.reorder_slack_ns"
            raise ConfigError(where, "must be >= 0 (0: never hold records back)",
                              self.reorder_slack_ns)
        for asset, peg in self.pegs.items():
            if not (math.isfinite(peg) and peg > 0):
                raise ConfigError(f"{path}.pegs.{asset}", "a finite peg price > 0", peg)
        if not 0 < self.peg_warn_bps <= self.peg_critical_bps:
            where = f"{path}.peg_warn_bps"
            raise ConfigError(where, "> 0 and <= peg_critical_bps",
                              (self.peg_warn_bps, self.peg_critical_bps))
        if self.max_evidence < 1:
            where = f"{path}.max_evidence"
            raise ConfigError(where, "must be >= 1", self.max_evidence)
        return InstrumentRegistry(self.instruments, path=f"{path}.instruments")


# --------------------------------------------------------------------- routing


def _price_of(ev: Any) -> float | None:
    t = type(ev)
    if t is Trade or t is IndexPrice:
        return ev.price
    if t is Quote:
        return (ev.bid + ev.ask) / 2.0
    if t is OptionQuote or t is FundingRate:
        return ev.mark_price
    return None


def _dead(
    ev: Any, reason: str, *, path: str, expected: str, found: str, step: str, now: int
) -> DeadLetter:
    topic = tag_of(type(ev)) if isinstance(ev, Record) else "unknown"
    raw = encode(ev) if isinstance(ev, msgspec.Struct) else repr(ev).encode()
    return DeadLetter.of(
        topic=topic, ts=now, reason=reason, path=path, expected=expected,
        found=found, step=step, raw=raw,
    )


def shard_key(name: str, shards: int, prefix: str = "") -> str:
    """The stage-1 key of an instrument (``"i:<name>"``) or collateral asset (``"a:<name>"``):
    shard ``crc32(name) % shards`` of :func:`shard_keys`.

    A stable hash (crc32), so every worker and every run agrees.

    >>> shard_key("i:BTC-PERP", 1)
    's0'
    """
    return shard_keys(shards, prefix)[zlib.crc32(name.encode()) % shards]


# shard k lives on worker k % W for every worker count W dividing the largest divisor of
# the shard count up to this (the search hashes about shards x that divisor names)
_SPREAD_MAX = 32


@functools.cache
def shard_keys(shards: int, prefix: str = "") -> tuple[str, ...]:
    """The stage-1 keys of ``shards`` shards (``prefix``: a market process's), named so
    that bytewax puts shard ``k`` on worker ``k % W`` for every worker count ``W`` that
    divides ``shards`` (up to 32; past that, every ``W`` dividing its largest divisor up
    to 32): ``<prefix>s<k>`` where bytewax routes that name so, else ``<prefix>s<k>.<j>``
    for the first ``j`` that it routes so. Plain ``s0``, ``s1``, ... would not spread:
    bytewax hashes ``s0`` and ``s1`` both to worker 1 of 2.

    >>> shard_keys(1), shard_keys(2)
    (('s0',), ('s0.1', 's1'))
    >>> keys = shard_keys(4)
    >>> [route_worker(k, 4) for k in keys], [route_worker(k, 2) for k in keys]
    ([0, 1, 2, 3], [0, 1, 0, 1])
    """
    spread = max(d for d in range(1, min(shards, _SPREAD_MAX) + 1) if shards % d == 0)
    worker_of = route_worker.__wrapped__  # unmemoized: the misses would flush its cache
    keys = []
    for k in range(shards):
        key, j = f"{prefix}s{k}", 0
        while worker_of(key, spread) != k % spread:
            key, j = f"{prefix}s{k}.{j}", j + 1
        keys.append(key)
    return tuple(keys)


Item = tuple[str, str, str, Any]
"""A stage-1 item: ``(role, shard_key, target, record)``."""

_MARK_TYPES = (Trade, Quote, IndexPrice, OptionQuote, FundingRate)
_OWN_ROLES: dict[type, str] = {Fill: "fill", PositionSnapshot: "snap", OpenOrders: "orders"}


@dataclass(frozen=True)
class ShardPlace:
    """A market process's share of stage 1 (the README's "Market tier"): its shard keys
    carry ``prefix`` (``m<i>.``: unique among the processes, so the firm tier's
    counterparty stage tells their parts apart), it holds only what ``owns`` says
    (called on ``"i:<instrument>"`` and ``"a:<asset>"``, the names :func:`shard_key`
    hashes), and the progress it passes on announces ``processes`` such processes.

    >>> place = ShardPlace("m1.", lambda name: name.startswith("i:ETH"), 2)
    >>> place.key("i:ETH-PERP", 1), place.owns("i:BTC-PERP")
    ('m1.s0', False)
    """

    prefix: str
    owns: Callable[[str], bool]
    processes: int

    def key(self, name: str, shards: int) -> str:
        """The shard key of ``name`` here."""
        return shard_key(name, shards, self.prefix)


class Router:
    """Stateless routing of input records to stage-1 shards, with per-name caches.

    With a ``place`` (a market process) it routes to that process's shards only, and a
    fill, snapshot, orders record or balance of what another process owns is a
    ``not_owned`` dead letter (the market tier's input keeps them out)."""

    def __init__(self, reg: InstrumentRegistry, config: ExposureConfig,
                 step: str = "exposure", place: ShardPlace | None = None) -> None:
        self.reg, self.config, self.step = reg, config, step
        self.shards = config.valuation_shards
        self.place = place
        prefix = place.prefix if place is not None else ""
        self._all_keys = list(shard_keys(self.shards, prefix))
        self._inst_key = {name: shard_key("i:" + name, self.shards, prefix)
                          for name in config.instruments.instruments
                          if place is None or place.owns("i:" + name)}
        self._mark_ok: dict[type, bool] = {
            t: tag_of(t) in config.mark_sources for t in _MARK_TYPES
        }
        self._market: dict[tuple[str, bool], list[tuple[str, str, str]]] = {}
        # instruments whose plain marks re-mark only their own (non-option) column: the
        # shard key they go to, in runs (see route_batch)
        self._plain: dict[str, str] = {}
        for name in self._inst_key:
            routes = self._market_routes(name, False)
            if routes == [(self._inst_key[name], "mark", name)]:
                self._plain[name] = routes[0][0]
        self._plain_types = frozenset(t for t in (Trade, IndexPrice, Quote) if self._mark_ok[t])

    def asset_key(self, asset: str) -> str:
        place = self.place
        name = "a:" + asset
        return shard_key(name, self.shards) if place is None else place.key(name, self.shards)

    def _owns(self, name: str) -> bool:
        return self.place is None or self.place.owns(name)

    def _market_routes(self, inst: str, is_oq: bool) -> list[tuple[str, str, str]]:
        """``[(key, role, target)]`` for a market-data record on ``inst``."""
        reg = self.reg
        out: list[tuple[str, str, str]] = []
        spec = reg.get(inst)
        if spec is not None and (spec.kind == "option") == is_oq and inst in self._inst_key:
            out.append((self._inst_key[inst], "mark", inst))
        for asset in reg.fx_assets_of(inst):
            keys = {self.asset_key(asset)} if self._owns("a:" + asset) else set()
            keys.update(self._inst_key[i] for i in reg.instruments_needing_fx(asset)
                        if i in self._inst_key)
            out.extend((k, "fx", asset) for k in sorted(keys))
        return out

    def _not_owned(self, ev: Any, path: str, name: str, now: int) -> DeadLetter:
        return _dead(ev, "not_owned", path=path,
                     expected=f"a record this market process owns ({self.place.prefix})"
                     if self.place is not None else "", found=name, step=self.step, now=now)

    def route(self, ev: Any, now: int = 0) -> list[tuple[str, Item]] | DeadLetter:
        """Where ``ev`` goes in stage 1: ``[(key, (role, key, target, record))]``.

        Our own records (fills, snapshots, orders, balances) for an undeclared
        instrument or asset are dead letters. Market data for instruments we do
        not track is not ours to judge and routes nowhere (``[]``).
        """
        t = type(ev)
        ok = self._mark_ok.get(t)
        if ok is not None:
            if not ok:
                return []
            ck = (ev.instrument, t is OptionQuote)
            routes = self._market.get(ck)
            if routes is None:
                routes = self._market[ck] = self._market_routes(*ck)
            return [(k, (role, k, target, ev)) for k, role, target in routes]
        if t is Tick:  # event-time progress: every shard re-values what moved before it
            return [(k, ("tick", k, "", ev)) for k in self._all_keys]
        role = _OWN_ROLES.get(t)
        if role is not None:
            key = self._inst_key.get(ev.instrument)
            if key is None:
                if ev.instrument in self.config.instruments.instruments:
                    return self._not_owned(ev, "$.instrument", ev.instrument, now)
                return _dead(ev, "unknown_instrument", path="$.instrument",
                             expected="a declared instrument", found=ev.instrument,
                             step=self.step, now=now)
            return [(key, (role, key, ev.instrument, ev))]
        if t is Balance:
            if not self.reg.convertible(ev.asset):
                return _dead(ev, "missing_fx", path="$.asset",
                             expected=f"an asset with an FX index to {self.reg.reporting}",
                             found=ev.asset, step=self.step, now=now)
            if not self._owns("a:" + ev.asset):
                return self._not_owned(ev, "$.asset", ev.asset, now)
            key = self.asset_key(ev.asset)
            return [(key, ("bal", key, ev.asset, ev))]
        if t is FeatureVector:
            inst = ev.key.rsplit("/", 1)[-1]
            key = self._inst_key.get(inst)
            if key is None or self.config.vol_feature not in ev.values:
                return []
            return [(key, ("vol", key, inst, ev))]
        return _dead(ev, "unexpected_type", path="$.type",
                     expected="fill, position, open_orders, balance, features or market data",
                     found=type(ev).__name__, step=self.step, now=now)

    def route_batch(self, evs: list[Any], now: int = 0) -> list[Any]:
        """A whole input batch: one ``(key, [items])`` pack per shard, plus dead letters.

        Consecutive plain marks (trades, index prices and quotes of an instrument that is
        nobody's FX index and not an option) travel as one ``("marks", key, "", [records])``
        item per run, which stage 1 applies whole-array; everything else is one
        :data:`Item` per record, in order.
        """
        packs: dict[str, list[Any]] = {}
        runs: dict[str, list[Any]] = {}  # the open run of plain marks per shard key
        out: list[Any] = []
        route = self.route
        plain, plain_types = self._plain, self._plain_types
        for ev in evs:
            if type(ev) in plain_types:
                k = plain.get(ev.instrument)
                if k is not None:
                    run = runs.get(k)
                    if run is not None:
                        run.append(ev)
                        continue
                    run = runs[k] = [ev]
                    pack = packs.get(k)
                    if pack is None:
                        packs[k] = [("marks", k, "", run)]
                    else:
                        pack.append(("marks", k, "", run))
                    continue
            r = route(ev, now)
            if type(r) is list:
                for k, item in r:
                    runs.pop(k, None)
                    pack = packs.get(k)
                    if pack is None:
                        packs[k] = [item]
                    else:
                        pack.append(item)
            else:
                out.append(r)
        out.extend(packs.items())
        return out


def route(
    ev: Any,
    reg: InstrumentRegistry,
    config: ExposureConfig,
    *,
    step: str = "exposure",
    now: int = 0,
) -> list[tuple[str, Item]] | DeadLetter:
    """:meth:`Router.route` without keeping a router (tests, one-off use)."""
    return Router(reg, config, step).route(ev, now)


_WIRE_ENCODER = msgspec.msgpack.Encoder()
_RUN_DECODER = msgspec.msgpack.Decoder(list[Trade | Quote | IndexPrice])


def pack_for_wire(pack: list[Item]) -> list[Item]:
    """A pack bound for a worker in another process, its runs of plain marks (most
    of a pack) each encoded once as msgpack bytes (:func:`unpack_from_wire` reverses it).

    bytewax pickles what crosses a process, and timely pickles each message twice
    (to size it, then to write it): about 2.5 µs a mark one by one, 1 µs inside a
    list, against 0.1 µs to encode and 0.4 µs to decode here. Other items (ticks,
    fills, FX) are few and travel as they are.

    >>> from riskguard.schemas import Trade
    >>> t = Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=1, price=9.5, qty=1.0,
    ...           side="buy")
    >>> wire = pack_for_wire([("marks", "s0", "", [t])])
    >>> type(wire[0][3]).__name__, unpack_from_wire(wire) == [("marks", "s0", "", [t])]
    ('bytes', True)
    """
    return [("marks", it[1], it[2], _WIRE_ENCODER.encode(it[3])) if it[0] == "marks" else it
            for it in pack]


def unpack_from_wire(items: list[Item]) -> list[Item]:
    """``items`` with every run :func:`pack_for_wire` encoded decoded again."""
    return [("marks", it[1], it[2], _RUN_DECODER.decode(it[3]))
            if it[0] == "marks" and type(it[3]) is bytes else it for it in items]


def _alert_id(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "|".join(str(p) for p in parts)))


def _evidence_add(buf: list[str], rid: str, cap: int) -> None:
    if rid in buf:
        return
    buf.append(rid)
    if len(buf) > cap:
        del buf[0]


# ------------------------------------------------------------- event-time progress

# The stage-2 key every shard's progress reaches, counterparties or not: the firm, the
# limits and the playbook hear time advance even before any position exists.
PROGRESS_KEY = "~progress"


def split_progress(items: list[Any]) -> tuple[list[Any], list[Progress]]:
    """``items`` without, and with only, their :class:`Progress` (one scan unless
    both kinds are there)."""
    progress = [it for it in items if type(it) is Progress]
    if not progress:
        return items, []
    if len(progress) == len(items):
        return [], progress
    return [it for it in items if type(it) is not Progress], progress


# --------------------------------------------------------------------- stage 1


@dataclass
class Pending:
    """What the records applied since the last re-valuation moved (stage 1)."""

    changed: dict[int, str] = field(default_factory=dict)  # column -> id that re-valued it
    touched: dict[int, list[str]] = field(default_factory=dict)  # row -> own ids, oldest 1st
    touched_ts: dict[int, int] = field(default_factory=dict)
    touched_cols: dict[int, tuple[str, int]] = field(default_factory=dict)  # col -> (id, row)
    coll_dirty: dict[int, str] = field(default_factory=dict)
    recv: int | None = None  # newest receive time among them
    first_recv: int | None = None  # receive time of the first of them (ticked mode)

    def __bool__(self) -> bool:
        return bool(self.changed or self.touched or self.coll_dirty)

    def copy(self) -> Pending:
        return Pending(dict(self.changed), {k: list(v) for k, v in self.touched.items()},
                       dict(self.touched_ts), dict(self.touched_cols), dict(self.coll_dirty),
                       self.recv, self.first_recv)


def _note_first(acc: Pending, items: Sequence[Any]) -> None:
    """Ticked mode: the receive time of the first record since the last tick."""
    if acc.first_recv is None and items:
        it = items[0]
        ev = it[3][0] if it[0] == "marks" else it[3]
        acc.first_recv = getattr(ev, "recv_ts", None)


_OWN_ITEM_ROLES = frozenset(("fill", "snap", "orders", "bal"))


def _item_ts(it: Item) -> int:
    """Event time of a stage-1 item (a run of plain marks: its first mark's)."""
    return it[3][0].ts if it[0] == "marks" else it[3].ts


def _split_at(items: list[Item], due: int) -> tuple[list[Item], list[Item] | None]:
    """``items`` before the first record (or tick) with ``ts >= due``, and the rest from
    it (``None``: none reaches ``due``); a run of plain marks is split inside."""
    for n, it in enumerate(items):
        if it[0] == "marks":
            run = it[3]
            m = next((x for x, e in enumerate(run) if e.ts >= due), -1)
            if m < 0:
                continue
            head = [*items[:n], ("marks", it[1], it[2], run[:m])] if m else items[:n]
            return head, [("marks", it[1], it[2], run[m:]), *items[n + 1:]]
        if it[3].ts >= due:
            return items[:n], items[n:]
    return items, None


NEVER_STALE = 2**62
_LEVEL_RANK = {LimitLevel.OK: 0, LimitLevel.WARN: 1, LimitLevel.BREACH: 2}
_VECTOR_MIN = 64  # fewer plain marks than this are applied one by one (measured crossover)
_SMALL_HELD = 32  # up to this many held instruments, realized vols are ranked in a loop
# A book of at most this many cells, none of its rows holding more than _SEQ_SUM_MAX, is
# re-valued in Python rather than whole-array: a tick's re-valuation of a few positions
# costs numpy's per-call overhead many times over (about 200 against 60 µs for the demo
# book). The results are the same bits: numpy sums a segment of up to 8 terms in order,
# ``a0 + (z + a1 + ... + ak)`` (``z`` is :data:`_SUM_ZERO`), and bincount from 0.0 in order.
_SMALL_CELLS = 64
_SEQ_SUM_MAX = 8
# the EWMA recursion's cost in Python-loop steps: one numpy step across every column,
# and the per-column overhead of the loop (measured, see :func:`_ewma_runs`)
_STEP_COST, _COLUMN_COST = 130, 6


def _run_starts(a: Any) -> Any:
    """Mask of the positions where a run of equal values in ``a`` starts."""
    out = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=out[1:])
    return out


def _run_ends(a: Any) -> Any:
    """Mask of the positions where a run of equal values in ``a`` ends."""
    out = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=out[:-1])
    return out


def _shifted(a: Any, first: Any) -> Any:
    """``a`` moved one place right, ``first`` in front (its last value dropped)."""
    out = np.empty_like(a)
    if len(a):
        out[0] = first
        out[1:] = a[:-1]
    return out


def _not_before_earlier(js: Any, ts: Any, starts: Any) -> Any:
    """Mask: ``ts`` is not older than any earlier ``ts`` of its run of equal ``js``
    (``starts``: where those runs start), a per-run running maximum in one pass.

    >>> js, ts = np.array([0, 0, 0, 1, 1]), np.array([5, 3, 5, 9, 8])
    >>> _not_before_earlier(js, ts, _run_starts(js)).tolist()
    [True, False, True, True, False]
    """
    _u, rank = np.unique(ts, return_inverse=True)  # times as ranks: room for a run offset
    n = len(ts)
    g = np.cumsum(starts) - 1
    top = np.maximum.accumulate(g * n + rank) - g * n  # the running max rank per run
    prev = _shifted(top, -1)
    prev[starts] = -1
    return rank >= prev


def _ewma_runs(var: Any, fresh: Any, x: Any, first: Any, lens: Any, alpha: float) -> Any:
    """``var`` after the EWMA recursion ``v = (1 - alpha) * v + alpha * x`` over each
    column's run of ``x`` (run ``k`` is ``x[first[k]:first[k] + lens[k]]``; a ``fresh``
    column starts from its first ``x``). Bit-identical either way it is computed: step
    by step across all runs at once when runs are short (many columns, few marks each),
    else run by run on Python floats (the same IEEE operations as numpy's).

    >>> v = _ewma_runs(np.array([1.0, 0.0]), np.array([False, True]),
    ...                np.array([2.0, 4.0, 3.0, 5.0]), np.array([0, 2]), np.array([2, 2]), 0.5)
    >>> v.tolist()
    [2.75, 4.0]
    """
    beta = 1 - alpha
    steps = int(lens.max())
    if steps * _STEP_COST < len(x) + _COLUMN_COST * len(lens):
        v = var.copy()
        v[fresh] = x[first[fresh]]
        done = fresh.astype(np.int64)  # a fresh column used its first x already
        for s in range(steps):
            k = np.flatnonzero(lens > done + s)
            if not len(k):
                break
            v[k] = beta * v[k] + alpha * x[first[k] + done[k] + s]
        return v
    xs = x.tolist()
    out = var.tolist()
    for c, (start, n, new) in enumerate(zip(first.tolist(), lens.tolist(), fresh.tolist(),
                                            strict=True)):
        v, lo = (xs[start], start + 1) if new else (out[c], start)
        for xv in xs[lo:start + n]:
            v = beta * v + alpha * xv
        out[c] = v
    return np.array(out, dtype=np.float64)


# the zero numpy's short pairwise sum starts from (-0.0 since numpy 2: the sum of -0.0s
# keeps its sign), read off numpy itself so the small-book path matches it bit for bit
_SUM_ZERO = float(np.add.reduceat(np.array([-0.0, -0.0]), np.array([0]))[0])


def _seq_sum(xs: list[float]) -> float:
    """numpy's ``add.reduceat`` of one segment of at most :data:`_SEQ_SUM_MAX` terms, the
    same bits (0.0 for none).

    >>> xs = [0.1, 0.2, 0.3, 1e16, -1e16]
    >>> _seq_sum(xs) == float(np.add.reduceat(np.array(xs), np.array([0]))[0])
    True
    """
    if len(xs) < 2:
        return xs[0] if xs else 0.0
    rest = _SUM_ZERO
    for x in xs[1:]:
        rest += x
    return xs[0] + rest


def _row_reduce(ufunc: Any, flat: Any, bounds: Any, empty: float) -> list[Any]:
    """Per-row ``ufunc`` reduction of row-major ``flat`` values split at ``bounds``
    (``empty`` for a row with none). Only the rows that hold values start a segment:
    each then runs to the next such row's start, which is its own end.

    >>> bounds = np.array([0, 2, 2, 3, 3])  # rows of 2, 0, 1 and 0 values
    >>> _row_reduce(np.add, np.array([1.0, 2.0, 4.0]), bounds, 0.0)
    [3.0, 0.0, 4.0, 0.0]
    """
    n = len(bounds) - 1
    held = bounds[1:] > bounds[:-1]
    if not len(flat) or not held.any():
        return [empty] * n
    red = ufunc.reduceat(flat, bounds[:-1][held])
    out = np.full(n, empty, dtype=red.dtype)
    out[held] = red
    return out.tolist()


@dataclass
class _Layout:
    """Where a shard's open positions are (derived from its state, not state): rebuilt
    only when a position opens or closes, not on every re-valuation."""

    active: Any  # bool, rows x columns: a position or open orders in the cell
    r: Any  # row of each open position, row-major
    c: Any  # its column
    flat: Any  # its index in the row-major grid
    bounds: Any  # row r's positions are [bounds[r], bounds[r + 1])
    names: list[list[str]]  # per row, its positions' instrument names (shared by parts)
    mult: Any  # each position's contract multiplier
    und: Any  # row * underlyings + its underlying's code (the delta bincount's bins)
    held_u: Any  # bool, rows x underlyings: the row holds that underlying
    held_cols: Any  # the columns anyone holds
    # a small book (:data:`_SMALL_CELLS`, rows of at most :data:`_SEQ_SUM_MAX` cells) is
    # re-valued in Python: each row's columns, and each held column's rows
    row_cols: list[list[int]] | None = None
    col_rows: dict[int, list[int]] | None = None


class _Valued(NamedTuple):
    """One re-valuation's per-row results (either core), for :meth:`ShardLogic._parts`."""

    rows: list[int]
    gross: list[float]
    net: list[float]
    upnl: list[float]
    orders: list[float]
    delta: list[dict[str, float]]
    by_asset: list[dict[str, float]]
    names: list[list[str]]
    notionals: list[list[float]]
    mark_ts: list[bytes]
    oldest: list[int]
    ts: list[int]
    unvalued: list[list[str]]
    evidence: list[list[str]]


@dataclass
class ShardState:
    """State of one stage-1 shard: its instruments' marks and every counterparty's
    positions in them (dense ``counterparty x instrument`` arrays), plus the
    balances held in its collateral assets."""

    version: int = STATE_VERSION
    key: str = ""
    insts: list[str] = field(default_factory=list)
    cps: list[str] = field(default_factory=list)
    qty: Any = None
    avg: Any = None  # nan: no average entry price (any value while flat)
    orders: Any = None
    snap_ts: Any = None
    # per instrument (column), numpy arrays since version 4 (lists before)
    mark: Any = None  # float64; nan: no mark yet
    mark_ts: Any = None  # int64
    mark_id: Any = None  # object (str)
    opt_delta: Any = None
    und_price: Any = None
    last_ts: Any = None  # int64
    ewma_price: Any = None
    ewma_ts: Any = None  # int64
    ewma_var: Any = None
    ewma_n: Any = None  # int64
    feature_vol: Any = None
    feature_vol_ts: Any = None  # int64
    seen: list[dict[str, None]] = field(default_factory=list)
    alerted: dict[str, dict[str, str]] = field(default_factory=dict)
    evidence: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    fx: dict[str, tuple[float, int]] = field(default_factory=dict)
    balances: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    asset_ts: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    # ticked mode: applied but not yet re-valued, and the newest tick that re-valued
    pending: Pending | None = None
    tick_ts: int = 0
    # ticked mode: each guard worker's [newest tick, processing time seen], and their
    # watermark at the last re-valuation (clock.Watermark)
    tick_sources: dict[str, list[int]] = field(default_factory=dict)
    tick_wm: int = -1
    # ticked mode: when the rows moved by own records re-value (0: none pending), and the
    # receive time of the first of those records
    fast_due: int = 0
    fast_recv: int | None = None
    # ticked mode, several tick sources: items too far ahead of the watermark, waiting
    # (a heap of (ts, arrival, item, wall time it is due regardless; -1: none))
    held: list[tuple[int, int, Item, int]] = field(default_factory=list)
    arrivals: int = 0
    forced: int = 0  # live: held items applied after max_hold_ns, the watermark behind
    peg_level: dict[str, str] = field(default_factory=dict)  # asset -> "warn" | "breach"


# the per-instrument columns: dtype, and the value of an instrument not marked yet
_COLUMNS: dict[str, tuple[Any, Any]] = {
    "mark": (np.float64, math.nan), "mark_ts": (np.int64, -1), "mark_id": (object, ""),
    "opt_delta": (np.float64, 0.0), "und_price": (np.float64, 0.0), "last_ts": (np.int64, 0),
    "ewma_price": (np.float64, 0.0), "ewma_ts": (np.int64, -1), "ewma_var": (np.float64, 0.0),
    "ewma_n": (np.int64, 0), "feature_vol": (np.float64, -1.0),
    "feature_vol_ts": (np.int64, -1),
}
# the counterparty x instrument grids, and the value of a cell without a position
_GRIDS: dict[str, tuple[Any, Any]] = {
    "qty": (np.float64, 0.0), "avg": (np.float64, 0.0), "orders": (np.float64, 0.0),
    "snap_ts": (np.int64, -1),
}


def _migrate_shard_v3(state: ShardState) -> ShardState:
    """A version-3 shard state (per-instrument lists) as version 4 (numpy columns)."""
    cols: dict[str, Any] = {name: np.array(getattr(state, name) or [], dtype=dt)
                            for name, (dt, _fill) in _COLUMNS.items()}
    return replace(state, version=4, **cols)


def _widen(st: ShardState, insts: list[str]) -> None:
    """Give ``st`` the columns of ``insts`` (a name-ordered superset of its instruments):
    each new one empty, as a fresh shard's, and the held ones moved to their new places,
    with everything that refers to a column by index."""
    at = {name: j for j, name in enumerate(insts)}
    moved = [at[name] for name in st.insts]
    k = len(insts)
    for name, (dt, fill) in _GRIDS.items():
        old = getattr(st, name)
        grid = np.full((old.shape[0], k), fill, dtype=dt)
        grid[:, moved] = old
        setattr(st, name, grid)
    for name, (dt, fill) in _COLUMNS.items():
        col = np.full(k, fill, dtype=dt)
        col[moved] = getattr(st, name)
        setattr(st, name, col)
    seen: list[dict[str, None]] = [{} for _ in range(k)]
    for j, ids in zip(moved, st.seen, strict=True):
        seen[j] = ids
    st.seen = seen
    st.evidence = {(i, moved[j]): ids for (i, j), ids in st.evidence.items()}
    if st.pending is not None:
        st.pending.changed = {moved[j]: rid for j, rid in st.pending.changed.items()}
        st.pending.touched_cols = {moved[j]: v for j, v in st.pending.touched_cols.items()}
    st.insts = list(insts)


class ShardLogic:
    """Stage 1: the positions of all counterparties in one shard of instruments.

    Records are applied in order (fills, snapshots, FX, vol and option marks one by one;
    runs of plain marks whole-array per column, which gives the same state because marks
    on different instruments commute, and runs are flushed before any snapshot or FX
    record); then, once per batch, every counterparty whose positions or marks changed is
    re-valued with whole-array operations and gets one :class:`Part`.
    Coalescing is per batch: the part reflects every record of the batch.
    """

    def __init__(self, config: ExposureConfig, reg: InstrumentRegistry,
                 state: ShardState | None = None, *, ticked: bool = False,
                 clock: Clock = system_clock, wall_clock: Clock | None = None,
                 forward_ticks: bool = False,
                 on_reorder: Callable[[str, int], None] | None = None,
                 place: ShardPlace | None = None) -> None:
        self.config = config
        # a market process's shard: its key prefix, what it owns, the processes downstream
        # expects progress from (ShardPlace)
        self.place = place
        # told ("held", 1) when a record waits for the watermark, ("forced", n) when n
        # apply after max_hold_ns without it (a metrics counter in the guard)
        self.on_reorder = on_reorder
        # ticked mode: pass each tick on once it is applied (see _progress)
        self.forward_ticks = forward_ticks
        self.clock = clock
        # live runs: a fill's position boundary also passes by wall time (on_deadline)
        self.wall_clock = wall_clock
        self._fast_deadline: int | None = None
        self.reg = reg
        self.ticked = ticked
        if isinstance(state, ShardState) and state.version == 3:
            state = _migrate_shard_v3(state)
        if state is not None and (not isinstance(state, ShardState)
                                  or state.version != STATE_VERSION):
            where = "exposure.valuation"
            raise ConfigError(where, f"a version-{STATE_VERSION} shard snapshot (start a "
                              "fresh recovery store after upgrading)",
                              getattr(state, "version", type(state).__name__))
        self.state = state if state is not None else ShardState()
        if not hasattr(self.state, "tick_sources"):  # a snapshot from before the field
            self.state.tick_sources = {}
        if not hasattr(self.state, "held"):  # a snapshot from before records could wait
            self.state.held, self.state.arrivals, self.state.forced = [], 0, 0
        self._slack = config.reorder_slack_ns
        # live runs: when the oldest held own record (fill, snapshot, balance, orders) is
        # due regardless of the watermark (derived from the dues the held entries carry)
        self._held_due = self._next_held_due() if wall_clock is not None else None
        self._watermark = Watermark.resume(self.state.tick_sources)
        self._ready = False
        self._peg_here: frozenset[str] = frozenset()
        if self.state.key:
            self._adopt_config()
            self._derive()

    def _adopt_config(self) -> None:
        """A resumed shard meets today's config. An instrument configured since its snapshot
        that hashes here gets its empty column (in name order, as in a fresh shard). An
        instrument or collateral asset it holds that now hashes to another shard
        (``valuation_shards`` or a market process's owners changed) is a config error: its
        positions or balances would be counted twice."""
        st = self.state
        configured = self.config.instruments.instruments
        away = [i for i in st.insts if i in configured and not self._here("i:" + i)]
        away += [a for a in st.balances if not self._here("a:" + a)]  # collateral held
        if away:
            where = "exposure.valuation_shards"
            raise ConfigError(
                where, f"what resumed shard {st.key!r} holds still hashing to it (the "
                "valuation_shards, and in a market process the owners, its snapshot was taken "
                "with; or a fresh recovery store)",
                f"{', '.join(away[:5])}{' ...' if len(away) > 5 else ''} hashing elsewhere")
        held = set(st.insts)
        new = [i for i in configured if i not in held and self._here("i:" + i)]
        if new:
            _widen(st, sorted([*st.insts, *new]))

    def snapshot(self) -> ShardState:
        """An independent copy, field by field (arrays copied, immutable leaves shared):
        several times faster than a pickle round trip of the dedup windows and evidence."""
        st = self.state
        if not st.key:
            return copy_state(st)
        cols = {name: getattr(st, name).copy() for name in _COLUMNS}
        return ShardState(
            version=st.version, key=st.key, insts=list(st.insts), cps=list(st.cps),
            qty=st.qty.copy(), avg=st.avg.copy(), orders=st.orders.copy(),
            snap_ts=st.snap_ts.copy(), seen=[d.copy() for d in st.seen],
            alerted={k: v.copy() for k, v in st.alerted.items()},
            evidence={k: v.copy() for k, v in st.evidence.items()}, fx=st.fx.copy(),
            balances={k: v.copy() for k, v in st.balances.items()},
            asset_ts=st.asset_ts.copy(), seq=st.seq,
            pending=None if st.pending is None else st.pending.copy(), tick_ts=st.tick_ts,
            tick_sources={k: list(v) for k, v in st.tick_sources.items()},
            tick_wm=st.tick_wm, fast_due=st.fast_due, held=list(st.held),
            arrivals=st.arrivals, forced=st.forced,
            fast_recv=st.fast_recv, peg_level=dict(st.peg_level),
            **cols,
        )

    # -- layout

    def _init(self, key: str) -> None:
        st = self.state
        st.key = key
        st.insts = sorted(i for i in self.config.instruments.instruments if self._here("i:" + i))
        k = len(st.insts)
        for name, (dt, fill) in _GRIDS.items():
            setattr(st, name, np.full((0, k), fill, dtype=dt))
        for name, (dt, fill) in _COLUMNS.items():
            setattr(st, name, np.full(k, fill, dtype=dt))
        st.seen = [{} for _ in range(k)]
        self._derive()

    def _derive(self) -> None:
        """Per-instrument constants and caches derived from config + state (not state)."""
        st = self.state
        reg = self.reg
        specs = [reg.get(i) for i in st.insts]
        if any(s is None for s in specs):
            missing = [i for i, s in zip(st.insts, specs, strict=True) if s is None]
            where = "exposure.instruments"
            raise ConfigError(where, "every instrument held in a resumed snapshot",
                              ", ".join(missing))
        sp: list[InstrumentSpec] = [s for s in specs if s is not None]
        self._col = {name: j for j, name in enumerate(st.insts)}
        self._names = np.array(st.insts, dtype=object)
        self._mult = np.array([s.multiplier for s in sp], dtype=float)
        self._is_opt_list = [s.kind == "option" for s in sp]
        self._is_opt = np.array(self._is_opt_list, dtype=bool)
        self._quote = [s.quote for s in sp]
        self._uccy = [s.underlying_ccy for s in sp]
        und = [s.underlying_asset for s in sp]
        asset = [s.underlying_asset if s.kind == "option" else s.base for s in sp]
        self._und_names = sorted(set(und))
        self._asset_names = sorted(set(asset))
        ux = {u: k for k, u in enumerate(self._und_names)}
        ax = {a: k for k, a in enumerate(self._asset_names)}
        self._und_code = np.array([ux[u] for u in und], dtype=np.int64)
        self._asset_code = np.array([ax[a] for a in asset], dtype=np.int64)
        # the same as Python lists, for the small-book re-valuation
        self._mult_l = self._mult.tolist()
        self._und_code_l = self._und_code.tolist()
        self._asset_code_l = self._asset_code.tolist()
        # no options and asset == underlying everywhere: notional by asset is the delta
        self._asset_is_delta = not any(self._is_opt_list) and asset == und
        needing: dict[str, list[int]] = {}
        for j, s in enumerate(sp):
            for ccy in {s.quote, s.underlying_ccy}:
                if ccy != reg.reporting:
                    needing.setdefault(ccy, []).append(j)
        self._needing = needing
        cfg = self.config
        self._peg_here = frozenset(a for a in cfg.pegs if self._here("a:" + a))
        w = cfg.peg_warn_bps / cfg.peg_critical_bps
        self._peg_spec = LimitSpec(limit=1.0, warn=w, hysteresis=w / 2)
        self._row = {cp: i for i, cp in enumerate(st.cps)}
        self._seen = [IdWindow(ids, cfg.dedup_window) for ids in st.seen]  # fill ids
        self._any_orders = bool(st.orders.any())  # else open-order sums are skipped
        self._lay: _Layout | None = None
        self._refresh_fx()
        self._ready = True

    def _here(self, name: str) -> bool:
        """Is ``name`` (``i:<instrument>``, ``a:<asset>``) held by this shard?"""
        n = self.config.valuation_shards
        place = self.place
        if place is None:
            return shard_key(name, n) == self.state.key
        return place.key(name, n) == self.state.key and place.owns(name)

    def _refresh_fx(self) -> None:
        fx = self.state.fx
        rep = self.reg.reporting

        def rate(ccy: str) -> float:
            if ccy == rep:
                return 1.0
            cur = fx.get(ccy)
            return math.nan if cur is None else cur[0]

        self._fxq = np.array([rate(c) for c in self._quote], dtype=float)
        self._fxu = np.array([rate(c) for c in self._uccy], dtype=float)

    def _row_of(self, cp: str) -> int:
        i = self._row.get(cp)
        if i is not None:
            return i
        st = self.state
        i = self._row[cp] = len(st.cps)
        st.cps.append(cp)
        self._lay = None
        if i >= st.qty.shape[0]:
            cap = max(8, 2 * st.qty.shape[0])
            k = len(st.insts)
            for name, (dt, fill) in _GRIDS.items():
                old = getattr(st, name)
                grid = np.full((cap, k), fill, dtype=dt)
                grid[: old.shape[0]] = old
                setattr(st, name, grid)
        return i

    def _layout(self) -> _Layout:
        """The open positions' layout, rebuilt after a position opened or closed."""
        lay = self._lay
        if lay is not None:
            return lay
        st = self.state
        n, k = len(st.cps), len(st.insts)
        active = (st.qty[:n] != 0.0) | (st.orders[:n] != 0.0)
        flat = np.flatnonzero(active)
        counts = np.count_nonzero(active, axis=1)
        r = np.repeat(np.arange(n), counts)  # row-major: each row's cells in one run
        c = flat - r * k
        bounds = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        names_all = self._names[c].tolist()
        b = bounds.tolist()
        names = [names_all[lo:hi] for lo, hi in pairwise(b)]
        n_u = len(self._und_names)
        und = r * n_u + self._und_code[c]
        held_u = np.bincount(und, None, n * n_u).reshape(n, n_u) > 0
        self._lay = lay = _Layout(active, r, c, flat, bounds, names, self._mult[c], und,
                                  held_u, np.flatnonzero(active.any(axis=0)))
        if len(flat) <= _SMALL_CELLS and int(counts.max(initial=0)) <= _SEQ_SUM_MAX:
            c_l = c.tolist()
            lay.row_cols = [c_l[lo:hi] for lo, hi in pairwise(b)]
            lay.col_rows = {}
            for row, cols in enumerate(lay.row_cols):
                for col in cols:
                    lay.col_rows.setdefault(col, []).append(row)
        return lay

    def _opened_or_closed(self, old: float, new: float) -> None:
        """A cell's quantity (or open orders) went from ``old`` to ``new``: when one of
        them is zero and the other is not, the layout is rebuilt at the next re-valuation."""
        if (old == 0.0) is not (new == 0.0):
            self._lay = None

    def _vols(self) -> tuple[Any, Any]:
        """Realized vol and its time per instrument (feature stream first, else EWMA)."""
        st = self.state
        fv, fts = st.feature_vol, st.feature_vol_ts
        ewma_ok = st.ewma_n >= self.config.vol_min_samples
        ev = np.sqrt(st.ewma_var * SECONDS_PER_YEAR)
        use_f = fv >= 0
        vol = np.where(use_f, fv, np.where(ewma_ok, ev, -1.0))
        vts = np.where(use_f, fts, np.where(ewma_ok, st.ewma_ts, -1))
        return vol, vts

    # -- events

    def on_event(self, item: Item) -> list[Any]:
        if self.ticked:
            return self._on_ticked([item])
        return self._process([item])

    def on_batch(self, packs: Iterable[list[Item]]) -> list[Any]:
        """The dataflow hands over packs (one per upstream batch); apply them in order."""
        packs = list(packs)
        items = packs[0] if len(packs) == 1 else [it for p in packs for it in p]
        if any(type(it[3]) is bytes for it in items):  # from another process
            items = unpack_from_wire(items)
        if self.ticked:
            return self._on_ticked(items)
        return self._process(items)

    def on_eof(self) -> list[Any]:
        """Ticked: apply the records still waiting for the watermark (in event-time
        order), then re-value what the records after the last tick moved."""
        st = self.state
        if not self.ticked:
            return []
        out: list[Any] = []
        if st.held:
            held, st.held = st.held, []
            out.extend(self._apply_segment([h[2] for h in sorted(held)]))
        if not st.pending:
            return out
        return out + self._flush(max(st.tick_ts, int(st.last_ts.max(initial=0))))

    def _flush(self, ts: int) -> list[Any]:
        st = self.state
        acc = st.pending
        st.pending = Pending()
        st.tick_ts = ts
        st.fast_due, st.fast_recv = 0, None
        if not acc:
            return []
        # the receive time of the first record this re-valuation covers: a command it
        # leads to measures its latency from there, the wait for the tick included
        recv = acc.first_recv if acc.first_recv is not None else acc.recv
        return self._revalue([], acc, recv, ts)

    def _on_ticked(self, items: list[Item]) -> list[Any]:
        """Ticked mode: records are applied as they come and re-valued once per tick, so
        parts are a function of the event-time order of the records and the ticks, not of
        how they were cut into batches. A record is before a tick when its ``ts`` is
        smaller (the tick is made by the first record at or past its ``ts``)."""
        st = self.state
        tick_recs = sorted((it[3] for it in items if it[0] == "tick"), key=lambda t: t.ts)
        ticks = [t.ts for t in tick_recs]
        # the processes' watermark after each tick: with several, every one ticks each
        # bucket, so the shard re-values once per bucket (at the slowest's tick)
        now = self.clock() if tick_recs else 0
        wms = [self._watermark.tick_time(t, now) for t in tick_recs]
        holding = self._slack > 0 and self._watermark.several()
        if not ticks and not holding:
            return self._apply_segment(items)
        if not st.key:
            self._init(items[0][1])
        # with several sources, an item waits until the watermark is within the slack of
        # it: ``admit[k]`` is how far segment k (after tick k - 1) lets items in
        admit: list[int] = []
        if holding:
            admit.append(st.tick_wm + self._slack)
            for wm in wms:
                admit.append(max(admit[-1], wm + self._slack))
            held, top, released = st.held, admit[-1], []
            while held and held[0][0] <= top:
                released.append(heapq.heappop(held)[2])
            if released:
                items = [*released, *items]
        # per record, one C-level bisect: segment k takes a record at ts when
        # ts < ticks[k] and ts <= admit[k]; both bounds rise with k, so their minimum
        # does too, and the segment is the first k whose bound exceeds ts (past the
        # last: the record waits)
        bounds = ([min(t, a + 1) for t, a in zip(ticks, admit, strict=False)] + [admit[-1] + 1]
                  if admit else ticks)
        segment_of = partial(bisect_right, bounds)
        wait = len(ticks) + 1
        segments: list[list[Item]] = [[] for _ in range(wait)]
        for it in items:
            role = it[0]
            if role == "tick":
                continue
            if role == "marks":  # a run of plain marks may straddle a tick: split it
                run = it[3]
                times = [ev.ts for ev in run]
                k = segment_of(min(times))
                if k == segment_of(max(times)):  # the whole run in one segment
                    if k == wait:
                        self._hold(it)
                    else:
                        segments[k].append(it)
                    continue
                parts: dict[int, list[Any]] = {}
                for ev, ts in zip(run, times, strict=True):
                    parts.setdefault(segment_of(ts), []).append(ev)
                for k, evs in parts.items():
                    part = ("marks", it[1], it[2], evs)
                    if k == wait:
                        self._hold(part)
                    else:
                        segments[k].append(part)
                continue
            k = segment_of(it[3].ts)
            if k == wait:
                self._hold(it)
            else:
                segments[k].append(it)
        out: list[Any] = []
        for k, seg in enumerate(segments):
            if seg:
                out.extend(self._apply_segment(seg))
            if k < len(ticks):
                if st.fast_due and st.fast_due <= ticks[k]:  # it fell due before the tick
                    out.extend(self._flush_fast())
                wm = wms[k]
                if wm > st.tick_wm:
                    st.tick_wm = wm
                    out.extend(self._flush(max(st.tick_ts, wm)))
                if self.forward_ticks:
                    out.extend(self._progress(tick_recs[k]))
        return out

    def _progress(self, tick: Tick) -> list[Progress]:
        """``tick`` passed on once everything before it is valued, to every counterparty
        this shard may send parts to and to :data:`PROGRESS_KEY`; named per shard
        (``<worker>@<shard>``), counting every shard's copies in ``of``."""
        source = f"{tick.source}@{self.state.key}" if tick.source else ""
        of = (tick.of if self.place is None else self.place.processes) \
            * self.config.valuation_shards
        cps = self.state.cps
        return [Progress(counterparty=PROGRESS_KEY, ts=tick.ts, source=source, of=of,
                         via=tuple(cps)),
                *(Progress(counterparty=cp, ts=tick.ts, source=source, of=of) for cp in cps)]

    def _hold(self, it: Item) -> None:
        st = self.state
        st.arrivals += 1
        due = -1
        if self.wall_clock is not None and it[0] in _OWN_ITEM_ROLES:
            due = self.wall_clock() + self.config.max_hold_ns
            if self._held_due is None or due < self._held_due:
                self._held_due = due
        heapq.heappush(st.held, (_item_ts(it), st.arrivals, it, due))
        if self.on_reorder is not None:
            self.on_reorder("held", 1)

    def _next_held_due(self) -> int | None:
        return min((h[3] for h in self.state.held if h[3] >= 0), default=None)

    def _release_overdue(self, now: int) -> list[Any]:
        """Live: apply, in event-time order, what is held up to the newest own record
        held past ``max_hold_ns`` of wall time; it re-values at its position boundary."""
        st = self.state
        upto = max((h[0] for h in st.held if 0 <= h[3] <= now), default=None)
        items: list[Item] = []
        while upto is not None and st.held and st.held[0][0] <= upto:
            items.append(heapq.heappop(st.held)[2])
        st.forced += len(items)
        if self.on_reorder is not None and items:
            self.on_reorder("forced", len(items))
        self._held_due = self._next_held_due()
        return self._apply_segment(items) if items else []

    def _apply_segment(self, items: list[Item]) -> list[Any]:
        """Ticked mode: apply records between two ticks, re-valuing the rows that own
        records moved at each ``position_revalue_ns`` boundary the records cross."""
        st = self.state
        step = self.config.position_revalue_ns
        if st.pending is None:
            st.pending = Pending()
        acc = st.pending  # fast flushes take rows out of it; only ticks replace it
        out: list[Any] = []
        rest = items
        while rest:
            if st.fast_due:
                head, tail = _split_at(rest, st.fast_due)
                if head:
                    _note_first(acc, head)
                    out.extend(self._apply(head, acc))
                if tail is None:
                    return out
                out.extend(self._flush_fast())
                rest = tail
                continue
            k = next((n for n, it in enumerate(rest) if it[0] in _OWN_ITEM_ROLES), -1) \
                if step else -1
            head = rest if k < 0 else rest[:k + 1]
            _note_first(acc, head)
            out.extend(self._apply(head, acc))
            if k < 0:
                return out
            ev = rest[k][3]
            st.fast_due = (ev.ts // step + 1) * step
            st.fast_recv = getattr(ev, "recv_ts", None)
            if self.wall_clock is not None:
                self._fast_deadline = self.wall_clock() + min(step, st.fast_due - ev.ts)
            rest = rest[k + 1:]
        return out

    def next_deadline_ns(self) -> int | None:
        """Live runs (``wall_clock``): when, in wall time, the pending position boundary
        passes even if no record at or past it arrives (event time taken to run at wall
        speed from the record that set it). None: nothing pending, or a replay."""
        if self.wall_clock is None:
            return None
        due = self._held_due
        if not self.state.fast_due:
            return due
        if self._fast_deadline is None:  # resumed with a boundary pending: flush now
            self._fast_deadline = self.wall_clock()
        return self._fast_deadline if due is None else min(due, self._fast_deadline)

    def on_deadline(self) -> list[Any]:
        """The wall-time deadline passed: release own records held past ``max_hold_ns``;
        re-value the rows own records moved, stamped with their boundary, as a record
        crossing it would have."""
        out: list[Any] = []
        now = self.wall_clock() if self.wall_clock is not None else 0
        if self._held_due is not None and now >= self._held_due:
            out.extend(self._release_overdue(now))
        if self._fast_deadline is not None and now < self._fast_deadline:
            return out
        self._fast_deadline = None
        if not self.state.fast_due:
            return out
        return out + self._flush_fast()

    def _flush_fast(self) -> list[Any]:
        """Re-value only the rows own records moved since the last tick (or fast flush),
        stamped with the boundary; price moves stay pending for the tick."""
        st = self.state
        acc = st.pending
        due, recv = st.fast_due, st.fast_recv
        st.fast_due, st.fast_recv = 0, None
        if acc is None or not acc.touched:
            return []
        rows = acc.touched
        fast = Pending(touched=rows, touched_ts=acc.touched_ts, touched_cols=acc.touched_cols,
                       coll_dirty={i: r for i, r in acc.coll_dirty.items() if i in rows})
        acc.touched, acc.touched_ts, acc.touched_cols = {}, {}, {}
        acc.coll_dirty = {i: r for i, r in acc.coll_dirty.items() if i not in rows}
        return self._revalue([], fast, recv, max(due, st.tick_ts))

    def _mark_one(self, j: int, ev: Any, changed: dict[int, str]) -> None:
        """Apply one mark to column ``j`` (the reference semantics of :meth:`_apply_marks`)."""
        # reads via .item() (Python scalars): numpy scalars make each compare and each
        # float operation several times slower; the IEEE results are the same
        st = self.state
        ts = ev.ts
        if ts > st.last_ts.item(j):
            st.last_ts[j] = ts
        if ts < st.mark_ts.item(j):
            return
        price = _price_of(ev)
        if price is None:  # a funding rate without a mark price
            return
        rid = ev.id
        st.mark[j] = price
        st.mark_ts[j] = ts
        st.mark_id[j] = rid
        changed[j] = rid
        if self._is_opt_list[j]:
            st.opt_delta[j], st.und_price[j] = ev.delta, ev.underlying_price
        elif price > 0:
            ets = st.ewma_ts.item(j)
            if ts > ets:
                if ets >= 0 and (prev := st.ewma_price.item(j)) > 0:
                    r = math.log(price / prev)
                    inst = r * r / ((ts - ets) / NS_PER_S)
                    alpha = self.config.vol_alpha
                    n = st.ewma_n.item(j)
                    st.ewma_var[j] = (inst if n == 0
                                      else (1 - alpha) * st.ewma_var.item(j) + alpha * inst)
                    st.ewma_n[j] = n + 1
                st.ewma_price[j] = price
                st.ewma_ts[j] = ts

    def _apply_marks(self, runs: list[list[Any]], changed: dict[int, str]) -> int | None:
        """Apply runs of plain marks (trades, index prices, quotes on non-option columns,
        see :meth:`Router.route_batch`) in order, whole-array; newest receive time.

        Marks on different columns commute, so grouping by column keeps the per-record
        semantics of :meth:`_mark_one` exactly (the same float operations in the same
        order, so the EWMA is bit-identical however the records were batched). Within a
        column, a mark is accepted when it is not older than the column's mark nor than
        any earlier mark of the column in the runs, so the accepted ones are in time order
        whatever the arrival order.
        """
        ms = runs[0] if len(runs) == 1 else [e for r in runs for e in r]
        rts = [e.recv_ts for e in ms]
        recv = (max(r for r in rts if r is not None) if rts.count(None) != len(rts)
                else None)
        col = self._col
        if len(ms) < _VECTOR_MIN:
            for ev in ms:
                self._mark_one(col[ev.instrument], ev, changed)
            return recv
        st = self.state
        cj = np.array([col[e.instrument] for e in ms], dtype=np.int64)
        order = np.argsort(cj, kind="stable")
        js = cj[order]
        ts = np.array([e.ts for e in ms], dtype=np.int64)[order]
        try:
            px = np.array([e.price for e in ms], dtype=np.float64)[order]
        except AttributeError:  # quotes: the mid
            px = np.array([_price_of(e) for e in ms], dtype=np.float64)[order]
        starts = _run_starts(js)
        cols = js[starts]
        st.last_ts[cols] = np.maximum(st.last_ts[cols],
                                      np.maximum.reduceat(ts, np.flatnonzero(starts)))
        # accepted: not older than the column's mark, nor than any earlier mark of the run
        # on that column (several venues' prices of one instrument interleave)
        acc = ts >= st.mark_ts[js]
        if ((js[1:] == js[:-1]) & (ts[1:] < ts[:-1])).any():
            acc &= _not_before_earlier(js, ts, starts)
        a = np.flatnonzero(acc)
        if not len(a):
            return recv
        # the accepted marks are in time order per column: the last one is the mark
        js, ts, px, order = js[a], ts[a], px[a], order[a]
        last = np.flatnonzero(_run_ends(js))
        ac = js[last]
        st.mark[ac] = px[last]
        st.mark_ts[ac] = ts[last]
        ids = [ms[k].id for k in order[last].tolist()]
        st.mark_id[ac] = ids
        changed.update(zip(ac.tolist(), ids, strict=True))
        self._ewma(js, ts, px)
        return recv

    def _ewma(self, js: Any, ts: Any, px: Any) -> None:
        """The EWMA of realized variance over accepted marks grouped by column, each
        column's in time order."""
        st = self.state
        f = np.flatnonzero(px > 0)
        if not len(f):
            return
        fj, ft, fp = js[f], ts[f], px[f]
        new_f = _run_starts(fj)
        # an update needs a strictly newer time than the column's previous update
        keep = ft > np.where(new_f, st.ewma_ts[fj], _shifted(ft, 0))
        kj, kt, kp = fj[keep], ft[keep], fp[keep]
        if not len(kj):
            return
        new_k = _run_starts(kj)
        pt = np.where(new_k, st.ewma_ts[kj], _shifted(kt, 0))
        pp = np.where(new_k, st.ewma_price[kj], _shifted(kp, 0.0))
        h = np.flatnonzero((pt >= 0) & (pp > 0))
        if len(h):
            r = np.array(list(map(math.log, (kp[h] / pp[h]).tolist())))
            x = r * r / ((kt[h] - pt[h]) / NS_PER_S)
            hj = kj[h]
            first = np.flatnonzero(_run_starts(hj))
            cols = hj[first]
            lens = np.diff(np.append(first, len(hj)))
            cnt = st.ewma_n[cols]
            st.ewma_var[cols] = _ewma_runs(st.ewma_var[cols], cnt == 0, x, first, lens,
                                           self.config.vol_alpha)
            st.ewma_n[cols] = cnt + lens
        lk = np.flatnonzero(_run_ends(kj))
        st.ewma_price[kj[lk]] = kp[lk]
        st.ewma_ts[kj[lk]] = kt[lk]

    def _process(self, items: Sequence[Item]) -> list[Any]:
        """Apply ``items`` and re-value what they moved (one part per moved counterparty)."""
        acc = Pending()
        out = self._apply(items, acc)
        if not acc:
            return out
        return self._revalue(out, acc, acc.recv)

    def _apply(self, items: Sequence[Item], acc: Pending) -> list[Any]:
        """Apply ``items`` in order, noting in ``acc`` what they moved; return alerts."""
        st = self.state
        if not st.key and items:
            self._init(items[0][1])
        out: list[Any] = []
        col = self._col
        last_ts = st.last_ts
        changed, touched, touched_ts = acc.changed, acc.touched, acc.touched_ts
        touched_cols, coll_dirty = acc.touched_cols, acc.coll_dirty
        fx_dirty = False
        runs: list[list[Any]] = []  # plain marks not applied yet (they commute with fills)
        row_get = self._row.get
        evidence = st.evidence
        cap, windows = self.config.max_evidence, self._seen
        recv = acc.recv
        for role, _key, target, ev in items:
            if role == "marks":
                runs.append(ev)
                continue
            if runs and role in ("fx", "snap"):  # these read or re-value marks
                rt = self._apply_marks(runs, changed)
                if rt is not None and (recv is None or rt > recv):
                    recv = rt
                runs = []
            rt = getattr(ev, "recv_ts", None)
            if rt is not None and (recv is None or rt > recv):
                recv = rt
            ts = ev.ts
            if role == "mark":
                self._mark_one(col[target], ev, changed)
                continue
            if role == "fx":
                cur = st.fx.get(target)
                price = _price_of(ev)
                for j in self._needing.get(target, ()):
                    if ts > last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
                        last_ts[j] = ts
                if target in st.balances:
                    st.asset_ts[target] = max(st.asset_ts.get(target, 0), ts)
                if price is not None and (cur is None or ts >= cur[1]):
                    st.fx[target] = (price, ts)
                    fx_dirty = True
                    if target in self._peg_here:
                        out.extend(self._peg_check(target, price, ev))
                    for j in self._needing.get(target, ()):
                        changed[j] = ev.id
                    for cp in st.balances.get(target, {}):
                        coll_dirty[self._row_of(cp)] = ev.id
                continue
            if role == "vol":
                j = col[target]
                if ts > last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
                    last_ts[j] = ts
                if ts >= st.feature_vol_ts[j]:
                    st.feature_vol[j] = float(ev.values[self.config.vol_feature])
                    st.feature_vol_ts[j] = ts
                continue
            i = row_get(ev.counterparty)
            if i is None:
                i = self._row_of(ev.counterparty)
            if role == "bal":
                held = st.balances.setdefault(target, {})
                st.asset_ts[target] = max(st.asset_ts.get(target, 0), ts)
                cur_b = held.get(ev.counterparty)
                if cur_b is None or ts >= cur_b[1]:
                    held[ev.counterparty] = (ev.total, ts)
                    coll_dirty[i] = ev.id
                    touched.setdefault(i, []).append(ev.id)
                    touched_ts[i] = max(touched_ts.get(i, 0), ts)
                continue
            j = col[target]
            rid = ev.id
            if role == "fill":
                seen = windows[j]
                if rid in seen.ids:  # a replayed fill is dropped whole: it moves nothing,
                    continue         # not even the instrument's event time
                seen.add(rid)
            if ts > last_ts[j]:  # noqa: PLR1730 - cheaper than max() per record
                last_ts[j] = ts
            if role == "fill":
                if ts > st.snap_ts.item(i, j):  # else already in the authoritative snapshot
                    signed = ev.qty if ev.side == "buy" else -ev.qty
                    a = st.avg.item(i, j)
                    q0 = st.qty.item(i, j)
                    q, new_avg = apply_fill(q0, None if q0 == 0.0 or math.isnan(a) else a,
                                            signed, ev.price)
                    st.qty[i, j] = q
                    self._opened_or_closed(q0, q)
                    # flat: no average (0.0 rather than nan keeps the PnL sums nan-free;
                    # a flat position's average is never read)
                    st.avg[i, j] = (0.0 if q == 0.0 else math.nan) if new_avg is None else new_avg
            elif role == "snap":
                out.extend(self._on_snapshot(ev, i, j))
            else:  # orders
                self._opened_or_closed(st.orders.item(i, j), ev.notional)
                st.orders[i, j] = ev.notional
                self._any_orders = True
            buf = evidence.get((i, j))
            if buf is None:
                evidence[(i, j)] = [rid]
            else:
                _evidence_add(buf, rid, cap)
            own = touched.get(i)
            if own is None:
                touched[i] = [rid]
                touched_ts[i] = ts
            else:
                own.append(rid)
                if ts > touched_ts[i]:  # noqa: PLR1730 - cheaper than max() per record
                    touched_ts[i] = ts
            if j not in touched_cols:
                touched_cols[j] = (rid, i)
        if runs:
            rt = self._apply_marks(runs, changed)
            if rt is not None and (recv is None or rt > recv):
                recv = rt
        if fx_dirty:
            self._refresh_fx()
        acc.recv = recv
        return out

    def _peg_check(self, asset: str, price: float, ev: Any) -> list[RiskAlert]:
        """A ``depeg`` alert when ``asset``'s rate leaves its peg, ``peg_restored`` when it
        is back; raised by the asset's own shard only. The levels are the limits' own
        (:func:`~riskguard.operators.limits.level_of`): critical at ``peg_critical_bps``,
        warn at ``peg_warn_bps``, each left only half ``peg_warn_bps`` below it."""
        cfg = self.config
        peg = cfg.pegs[asset]
        off = abs(price / peg - 1.0) * 1e4
        levels = self.state.peg_level
        old = LimitLevel(levels.get(asset, LimitLevel.OK))
        new = level_of(off / cfg.peg_critical_bps, old, self._peg_spec)
        if new is LimitLevel.OK:
            if old is LimitLevel.OK:
                return []
            del levels[asset]
            kind, sev = "peg_restored", Severity.INFO
        else:
            levels[asset] = new.value
            if _LEVEL_RANK[new] <= _LEVEL_RANK[old]:  # no rise: the open incident stands
                return []
            kind = "depeg"
            sev = Severity.CRITICAL if new is LimitLevel.BREACH else Severity.WARN
        return [RiskAlert(
            id=_alert_id(kind, asset, ev.id), kind=kind,
            scope=Scope(kind=ScopeKind.UNDERLYING, value=asset), ts=ev.ts, recv_ts=ev.recv_ts,
            severity=sev,
            reason=(f"{asset} at {price:g} is {off:.0f} bps off its peg {peg:g} "
                    f"(warn {cfg.peg_warn_bps:g}, critical {cfg.peg_critical_bps:g} bps)"),
            details={"price": price, "peg": peg, "deviation_bps": off},
            evidence_ids=[ev.id],
        )]

    def _on_snapshot(self, ev: PositionSnapshot, i: int, j: int) -> list[Any]:
        st = self.state
        ev_buf = st.evidence.setdefault((i, j), [])
        _evidence_add(ev_buf, ev.id, self.config.max_evidence)
        out: list[Any] = []
        qty = float(st.qty[i, j])
        diff = ev.qty - qty
        cfg = self.config
        tol = cfg.recon_abs_tol + cfg.recon_rel_tol * max(abs(ev.qty), abs(qty))
        if abs(diff) > tol:
            out.append(RiskAlert(
                id=_alert_id("reconciliation_break", ev.counterparty, ev.instrument, ev.id),
                kind="reconciliation_break",
                scope=Scope(kind=ScopeKind.INSTRUMENT, value=ev.instrument, venue=ev.venue),
                ts=ev.ts, severity=Severity.WARN,
                reason=(f"position snapshot {ev.qty} of {ev.instrument} at {ev.counterparty} "
                        f"differs from fills {qty} by {diff}; adopted the snapshot"),
                details={"counterparty": ev.counterparty, "snapshot_qty": ev.qty,
                         "fills_qty": qty, "diff": diff, "tolerance": tol},
                evidence_ids=[ev.id, *ev_buf[-4:]][: cfg.max_evidence],
            ))
        avg = float(st.avg[i, j])
        if ev.avg_price is not None:
            st.avg[i, j] = ev.avg_price
        elif math.isnan(avg) or qty == 0.0 or (qty > 0) != (ev.qty > 0):
            st.avg[i, j] = st.mark[j]
        self._opened_or_closed(qty, ev.qty)
        st.qty[i, j] = ev.qty
        st.snap_ts[i, j] = max(int(st.snap_ts[i, j]), ev.ts)
        return out

    def _missing_alerts(self, bad: list[int], good: Any, active_all: Any,
                        touched_cols: dict[int, tuple[str, int]],
                        changed: dict[int, str]) -> list[Any]:
        """``missing_mark`` / ``missing_fx`` once per instrument until it is valued again.

        ``bad``: columns re-valued or touched in this batch that cannot be valued;
        ``good``: mask of those that were valued (their alert latch is cleared).
        """
        st = self.state
        out: list[Any] = []
        if st.alerted:
            for name in [nm for nm in st.alerted if nm in self._col and good[self._col[nm]]]:
                del st.alerted[name]
        for j in bad:
            name = st.insts[j]
            if mark_missing := math.isnan(st.mark[j]):
                kind, why = "missing_mark", f"no mark yet for {name}"
            else:
                fxq = self._fxq[j]
                ccy = self._quote[j] if math.isnan(fxq) else self._uccy[j]
                kind, why = "missing_fx", f"no FX rate {ccy}->{self.reg.reporting} for {name}"
            seen = st.alerted.setdefault(name, {})
            slot = "mark" if mark_missing else "fx"
            if seen.get(slot) == kind:
                continue
            seen[slot] = kind
            hit = touched_cols.get(j)
            if hit is not None:
                rid, row = hit
            else:
                rid, row = changed.get(j) or st.mark_id[j], int(np.argmax(active_all[:, j]))
            cp = st.cps[row]
            reason = (f"{why}; position of {cp} is unvalued" if mark_missing else why)
            out.append(RiskAlert(
                id=_alert_id(kind, name, cp, rid), kind=kind,
                scope=Scope(kind=ScopeKind.INSTRUMENT, value=name), ts=int(st.last_ts[j]),
                severity=Severity.WARN, reason=reason,
                details={"counterparty": cp}, evidence_ids=[rid],
            ))
        return out

    def _collateral(self, cp: str) -> tuple[float, list[str], int, list[Any]]:
        """``(value, unvalued assets, newest ts, alerts)`` of ``cp``'s balances here."""
        st = self.state
        value = 0.0
        unvalued: list[str] = []
        ts = 0
        alerts: list[Any] = []
        rep = self.reg.reporting
        for asset, held in st.balances.items():
            cur = held.get(cp)
            if cur is None:
                continue
            ts = max(ts, st.asset_ts.get(asset, 0))
            fx = (1.0, -1) if asset == rep else st.fx.get(asset)
            key = "a:" + asset
            if fx is None:
                unvalued.append(asset)
                seen = st.alerted.setdefault(key, {})
                if seen.get("fx") != "missing_fx":
                    seen["fx"] = "missing_fx"
                    alerts.append(RiskAlert(
                        id=_alert_id("missing_fx", asset, cp, cur[1]), kind="missing_fx",
                        scope=Scope(kind=ScopeKind.INSTRUMENT, value=asset),
                        ts=st.asset_ts.get(asset, 0), severity=Severity.WARN,
                        reason=f"no FX rate {asset}->{rep} for collateral",
                        details={"counterparty": cp}, evidence_ids=[str(cur[1])],
                    ))
            else:
                st.alerted.pop(key, None)
                value += cur[0] * fx[0]
        return value, unvalued, ts, alerts

    def _revalue(self, out: list[Any], acc: Pending, recv_ts: int | None,
                 ts: int | None = None) -> list[Any]:
        """One :class:`Part` per counterparty whose value ``acc`` says may have moved
        (stamped ``ts`` when given: the tick that re-valued it)."""
        if not self.state.cps:
            return out
        lay = self._layout()
        core = self._revalue_small if lay.row_cols is not None else self._revalue_whole
        valued = core(out, acc, lay)
        if valued is None:
            return out
        return self._parts(out, acc, lay, valued, recv_ts, ts)

    def _revalue_whole(self, out: list[Any], acc: Pending, lay: _Layout) -> _Valued | None:
        """The rows ``acc`` moved, valued with whole-array operations (any book); missing
        mark and FX alerts go to ``out``. None: no row moved."""
        changed, touched = acc.changed, acc.touched
        touched_cols, coll_dirty = acc.touched_cols, acc.coll_dirty
        st = self.state
        n = len(st.cps)
        cap = self.config.max_evidence
        active_all = lay.active
        mark = st.mark
        fxq, fxu = self._fxq, self._fxu
        valued = ~(np.isnan(mark) | np.isnan(fxq) | np.isnan(fxu))
        dirty = np.zeros(n, dtype=bool)
        jc = np.fromiter(changed, dtype=np.int64, count=len(changed))
        if len(jc):
            held_jc = active_all[:, jc]
            dirty |= held_jc.any(axis=1)
        if touched:
            dirty[list(touched)] = True
        if coll_dirty:
            dirty[list(coll_dirty)] = True
        if touched_cols or changed:
            cand = np.zeros(len(st.insts), dtype=bool)
            if len(jc):
                cand[jc] = held_jc.any(axis=0)
            if touched_cols:
                cand[list(touched_cols)] = True
            bad = np.flatnonzero(cand & ~valued).tolist()
            if bad or st.alerted:
                out.extend(self._missing_alerts(bad, cand & valued, active_all, touched_cols,
                                                changed))
        rows = np.flatnonzero(dirty)
        if not len(rows):
            return None
        opt = self._is_opt
        und_px = st.und_price
        nf = np.where(valued, np.where(opt, und_px * fxu, mark * fxq), 0.0)
        df = np.where(valued, np.where(opt, st.opt_delta * und_px * fxu, nf), 0.0)
        fx_v = np.where(valued, fxq, 0.0)
        mark_v = np.where(valued, mark, 0.0)
        # the held positions of the dirty rows only, row-major (a few thousand cells rather
        # than the whole counterparty x instrument grid)
        m = len(rows)
        rows_l = rows.tolist()
        n_u = len(self._und_names)
        if m == n:  # every row: the layout's cached gathers
            act, r_i, c_i, flat, bounds_a = active_all, lay.r, lay.c, lay.flat, lay.bounds
            names_rows = lay.names
            mult, ug, held_u = lay.mult, lay.und, lay.held_u
        else:
            act = active_all[rows]
            pick = np.flatnonzero(dirty[lay.r])
            c_i, flat = lay.c[pick], lay.flat[pick]
            r_i = (np.cumsum(dirty) - 1)[lay.r[pick]]
            bounds_a = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(np.diff(lay.bounds)[rows], out=bounds_a[1:])
            names_rows = [lay.names[i] for i in rows_l]
            mult, ug, held_u = lay.mult[pick], r_i * n_u + self._und_code[c_i], lay.held_u[rows]
        qm = st.qty.ravel()[flat] * mult
        notional = qm * nf[c_i]
        upnl = qm * (mark_v[c_i] - st.avg.ravel()[flat]) * fx_v[c_i]
        # no average entry price (nan): no unrealized PnL for that position
        upnl[np.isnan(upnl)] = 0.0
        # each row's positions are one run (row-major): a segmented sum, 10x a bincount's
        gross = _row_reduce(np.add, np.abs(notional), bounds_a, 0.0)
        net = _row_reduce(np.add, notional, bounds_a, 0.0)
        upnl_s = _row_reduce(np.add, upnl, bounds_a, 0.0)
        ord_s = (_row_reduce(np.add, st.orders.ravel()[flat] * fx_v[c_i], bounds_a, 0.0)
                 if self._any_orders else [0.0] * m)
        d_u: Any = np.bincount(ug, qm * df[c_i], m * n_u).reshape(m, n_u).tolist()
        held_all_u: Any = held_u.all(axis=1).tolist()
        held_u_l = held_u.tolist()
        same = self._asset_is_delta
        if not same:
            n_a = len(self._asset_names)
            ag = r_i * n_a + self._asset_code[c_i]
            d_a: Any = np.bincount(ag, notional, m * n_a).reshape(m, n_a).tolist()
            held_a = np.bincount(ag, None, m * n_a).reshape(m, n_a) > 0
            held_all_a: Any = held_a.all(axis=1).tolist()
            held_a_l = held_a.tolist()
        mts_c = np.where(valued, st.mark_ts, NEVER_STALE)[c_i]
        # every per-row list in one pass each, then sliced per row
        not_all = notional.tolist()
        # parts carry packed little-endian int64s, not per-position int objects
        mts_b = mts_c.astype("<i8", copy=False).tobytes()
        bounds = bounds_a.tolist()
        ts_rows = _row_reduce(np.maximum, st.last_ts[c_i], bounds_a, 0)
        oldest_rows = _row_reduce(np.minimum, mts_c, bounds_a, NEVER_STALE)
        und_names = self._und_names
        any_unvalued = (act & ~valued).any(axis=1).tolist()
        if len(jc):
            # evidence: ids of the newest ``cap`` re-valuing records per row
            cmask = np.zeros(len(st.insts), dtype=bool)
            cmask[jc] = True
            trig = np.empty(len(st.insts), dtype=object)
            trig[jc] = list(changed.values())
            flagged = np.flatnonzero(cmask[c_i])
            ends = np.searchsorted(flagged, bounds_a[1:])[r_i[flagged]]
            kept = flagged[ends - np.arange(len(flagged)) <= cap]
            cc_all = trig[c_i[kept]].tolist()
            cbounds: Any = np.searchsorted(kept, bounds_a).tolist()
        # the per-row lists, one comprehension each
        spans = list(pairwise(bounds))
        not_rows = [not_all[lo:hi] for lo, hi in spans]
        mts_rows = [mts_b[8 * lo:8 * hi] for lo, hi in spans]
        ds = [dict(zip(und_names, row, strict=True)) if full
              else dict(compress(zip(und_names, row, strict=True), held))
              for row, full, held in zip(d_u, held_all_u, held_u_l, strict=True)]
        # sharing one dict for both is safe: parts and exposures never mutate them
        if same:
            as_ = ds
        else:
            as_ = [dict(zip(self._asset_names, row, strict=True)) if full
                   else dict(compress(zip(self._asset_names, row, strict=True), held))
                   for row, full, held in zip(d_a, held_all_a, held_a_l, strict=True)]
        evid: list[list[str]] = ([cc_all[lo:hi] for lo, hi in pairwise(cbounds)] if len(jc)
                                 else [[] for _ in rows_l])
        unvalued: list[list[str]] = [[] for _ in rows_l]
        if any(any_unvalued):
            valued_l = valued.tolist()
            c_l = c_i.tolist()
            for k, (lo, hi) in enumerate(spans):
                if any_unvalued[k]:
                    unvalued[k] = [nm for nm, c in zip(names_rows[k], c_l[lo:hi], strict=True)
                                   if not valued_l[c]]
        return _Valued(rows_l, gross, net, upnl_s, ord_s, ds, as_, names_rows, not_rows,
                       mts_rows, oldest_rows, ts_rows, unvalued, evid)

    def _revalue_small(self, out: list[Any], acc: Pending, lay: _Layout) -> _Valued | None:
        """:meth:`_revalue_whole` for a small book (``lay.row_cols``), in Python: the same
        values, bit for bit (the same IEEE operations in the same order; see
        :data:`_SMALL_CELLS`), at a fraction of the numpy calls' fixed cost."""
        changed, touched = acc.changed, acc.touched
        touched_cols, coll_dirty = acc.touched_cols, acc.coll_dirty
        st = self.state
        row_cols, col_rows = lay.row_cols, lay.col_rows
        assert row_cols is not None and col_rows is not None  # a small layout
        held_changed = [j for j in changed if j in col_rows]
        dirty = set(touched)
        dirty.update(coll_dirty)
        for j in held_changed:
            dirty.update(col_rows[j])
        rows = sorted(dirty)
        cand = dict.fromkeys(held_changed)
        cand.update(dict.fromkeys(touched_cols))
        # per column needed: (valued, notional factor, delta factor, fx, mark, mark time)
        mark, mark_ts, fxq, fxu = st.mark, st.mark_ts, self._fxq, self._fxu
        opt, und_px, opt_delta = self._is_opt_list, st.und_price, st.opt_delta
        col: dict[int, tuple[bool, float, float, float, float, int]] = {}
        isnan = math.isnan
        for j in chain.from_iterable([row_cols[i] for i in rows] + [list(cand)]):
            if j in col:
                continue
            mk, q, u = mark.item(j), fxq.item(j), fxu.item(j)
            if isnan(mk) or isnan(q) or isnan(u):  # no mark or no FX rate
                col[j] = (False, 0.0, 0.0, 0.0, 0.0, NEVER_STALE)
            elif opt[j]:
                up = und_px.item(j)
                col[j] = (True, up * u, opt_delta.item(j) * up * u, q, mk, mark_ts.item(j))
            else:
                nf = mk * q
                col[j] = (True, nf, nf, q, mk, mark_ts.item(j))
        if cand:
            bad = sorted(j for j in cand if not col[j][0])
            if bad or st.alerted:
                good = np.zeros(len(st.insts), dtype=bool)
                good[[j for j in cand if col[j][0]]] = True
                out.extend(self._missing_alerts(bad, good, lay.active, touched_cols, changed))
        if not rows:
            return None
        cap = self.config.max_evidence
        qty, avg, orders = st.qty, st.avg, st.orders
        any_orders = self._any_orders
        mult, und_code, asset_code = self._mult_l, self._und_code_l, self._asset_code_l
        und_names, asset_names = self._und_names, self._asset_names
        last_ts = st.last_ts
        same = self._asset_is_delta
        v = _Valued(rows, [], [], [], [], [], [], [], [], [], [], [], [], [])
        for i in rows:
            cols = row_cols[i]
            nots: list[float] = []
            ups: list[float] = []
            ords: list[float] = []
            mts: list[int] = []
            du: dict[int, float] = {}
            da: dict[int, float] = {}
            unvalued: list[str] = []
            for c, name in zip(cols, lay.names[i], strict=True):
                ok, nf, df, fxv, mv, mt = col[c]
                qm = qty.item(i, c) * mult[c]
                nt = qm * nf
                up = qm * (mv - avg.item(i, c)) * fxv
                nots.append(nt)
                ups.append(0.0 if isnan(up) else up)  # no average entry price: no PnL
                if any_orders:
                    ords.append(orders.item(i, c) * fxv)
                mts.append(mt)
                u = und_code[c]
                du[u] = du.get(u, 0.0) + qm * df
                if not same:
                    a = asset_code[c]
                    da[a] = da.get(a, 0.0) + nt
                if not ok:
                    unvalued.append(name)
            v.gross.append(_seq_sum([abs(x) for x in nots]))
            v.net.append(_seq_sum(nots))
            v.upnl.append(_seq_sum(ups))
            v.orders.append(_seq_sum(ords))
            d = {und_names[u]: du[u] for u in sorted(du)}
            v.delta.append(d)
            v.by_asset.append(d if same else {asset_names[a]: da[a] for a in sorted(da)})
            v.names.append(lay.names[i])
            v.notionals.append(nots)
            v.mark_ts.append(struct.pack(f"<{len(mts)}q", *mts))
            v.oldest.append(min(mts, default=NEVER_STALE))
            v.ts.append(max((last_ts.item(c) for c in cols), default=0))
            v.unvalued.append(unvalued)
            v.evidence.append([changed[c] for c in cols if c in changed][-cap:])
        return v

    def _parts(self, out: list[Any], acc: Pending, lay: _Layout, v: _Valued,
               recv_ts: int | None, ts: int | None) -> list[Any]:
        """The rows' parts from their values: own records and collateral added to each
        row's evidence and time, stamped ``ts`` when given."""
        touched, touched_ts, coll_dirty = acc.touched, acc.touched_ts, acc.coll_dirty
        st = self.state
        cap = self.config.max_evidence
        rows_l = v.rows
        m = len(rows_l)
        evid, ts_rows, unvalued = v.evidence, v.ts, v.unvalued
        cps = st.cps if m == len(st.cps) else [st.cps[i] for i in rows_l]
        # realized vol per underlying is a market property: one dict shared by every part
        uvol = self._und_vols(lay.held_cols)
        uvol_values = {u: x for u, (x, _t) in sorted(uvol.items())}
        where = {i: k for k, i in enumerate(rows_l)} if m != len(st.cps) else None
        for i, own in touched.items():  # own records last, newest kept
            k = i if where is None else where[i]
            evid[k] = ([e for e in evid[k] if e not in own] + own)[-cap:]
            ts_rows[k] = max(ts_rows[k], touched_ts.get(i, 0))
        colls = [0.0] * m
        if st.balances:
            for k, cp in enumerate(cps):
                colls[k], unv_coll, cts, alerts = self._collateral(cp)
                out.extend(alerts)
                unvalued[k].extend(unv_coll)
                ts_rows[k] = max(ts_rows[k], cts)
        for i, rid in coll_dirty.items():
            k = i if where is None else where[i]
            if rid not in evid[k]:
                evid[k] = [*evid[k][1 - cap:], rid] if cap > 1 else [rid]
        if ts is not None:
            ts_rows = [ts] * m
        seq0 = st.seq
        st.seq += m
        key = st.key
        out.extend(
            Part(cp, key, seq, ts, g, nt, u, o, c, d, a, nm, no, mb, old, unv, uvol,
                 uvol_values, ev, recv_ts)
            for cp, seq, ts, g, nt, u, o, c, d, a, nm, no, mb, old, unv, ev in zip(
                cps, range(seq0 + 1, seq0 + m + 1), ts_rows, v.gross, v.net, v.upnl, v.orders,
                colls, v.delta, v.by_asset, v.names, v.notionals, v.mark_ts, v.oldest, unvalued,
                evid, strict=True))
        return out

    def _und_vols(self, held_cols: Any) -> dict[str, tuple[float, int]]:
        """Newest realized vol per underlying among ``held_cols`` (the instruments anyone
        holds here): ``{underlying: (vol, its time)}`` in underlying order; on a tie in
        time, the last of ``held_cols`` wins."""
        if len(held_cols) <= _SMALL_HELD:
            return self._und_vols_small(held_cols.tolist())
        return self._und_vols_whole(held_cols)

    def _und_vols_whole(self, held_cols: Any) -> dict[str, tuple[float, int]]:
        """:meth:`_und_vols` in whole-array steps."""
        vol, vol_ts = self._vols()
        idx = held_cols[vol_ts[held_cols] >= 0]
        uv: dict[str, tuple[float, int]] = {}
        if len(idx):
            codes = self._und_code[idx]
            vts = vol_ts[idx]
            order = np.lexsort((vts, codes))
            sc = codes[order]
            last = np.flatnonzero(_run_ends(sc))
            best = idx[order[last]]
            names = map(self._und_names.__getitem__, sc[last].tolist())
            uv = dict(zip(names, zip(vol[best].tolist(), vol_ts[best].tolist(), strict=True),
                          strict=True))
        return uv

    def _und_vols_small(self, held: list[int]) -> dict[str, tuple[float, int]]:
        """:meth:`_und_vols` one column at a time: for a few held instruments, each of
        the whole-array path's numpy calls costs more than the loop (4 against 23 µs per
        re-valuation for the demo's 3 held instruments). The same values, bit for bit."""
        st = self.state
        fv, fts = st.feature_vol, st.feature_vol_ts
        ewma_n, ewma_var, ewma_ts = st.ewma_n, st.ewma_var, st.ewma_ts
        need = self.config.vol_min_samples
        codes = self._und_code
        best: dict[int, tuple[int, float]] = {}  # underlying code -> (time, vol)
        for j in held:
            f = float(fv[j])
            if f >= 0:
                t, v = int(fts[j]), f
            elif ewma_n[j] >= need:
                t, v = int(ewma_ts[j]), math.sqrt(float(ewma_var[j]) * SECONDS_PER_YEAR)
            else:
                continue
            if t < 0:
                continue
            u = int(codes[j])
            cur = best.get(u)
            if cur is None or t >= cur[0]:
                best[u] = (t, v)
        names = self._und_names
        return {names[u]: (v, t) for u, (t, v) in sorted(best.items())}


def apply_fill(
    qty: float, avg: float | None, signed: float, price: float
) -> tuple[float, float | None]:
    """Average-cost position accounting: new ``(qty, avg_entry_price)``.

    >>> apply_fill(0.0, None, 2.0, 10.0)
    (2.0, 10.0)
    >>> apply_fill(2.0, 10.0, 2.0, 20.0)
    (4.0, 15.0)
    >>> apply_fill(4.0, 15.0, -1.0, 30.0)
    (3.0, 15.0)
    >>> apply_fill(3.0, 15.0, -5.0, 30.0)
    (-2.0, 30.0)
    """
    new = qty + signed
    if qty == 0.0 or avg is None:
        return new, price
    if (qty > 0) == (signed > 0):
        return new, (avg * abs(qty) + price * abs(signed)) / abs(new)
    if new == 0.0:
        return 0.0, None
    if (new > 0) != (qty > 0):
        return new, price
    return new, avg


# --------------------------------------------------------------------- stage 2


@dataclass
class CounterpartyState:
    """State of one counterparty: its latest :class:`Part` per shard."""

    version: int = STATE_VERSION
    counterparty: str = ""
    parts: dict[str, Part] = field(default_factory=dict)
    watermark: int = 0
    seq: int = 0
    stale: dict[str, int] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)


class CounterpartyLogic:
    """Stage 2: one counterparty's parts (one per shard) -> its :class:`Exposure`.

    Each part is the counterparty's complete sum over one shard, so the
    exposure is an exact re-sum over at most ``valuation_shards`` parts (no
    running sums, no drift). At most one exposure per batch.
    """

    def __init__(self, config: ExposureConfig, state: CounterpartyState | None = None, *,
                 ticked: bool = False) -> None:
        self.config = config
        self.ticked = ticked
        if state is not None and state.version == 3:
            state = replace(state, version=STATE_VERSION)
        if state is not None and state.version != STATE_VERSION:
            where = "exposure.counterparty"
            raise ConfigError(where, f"a version-{STATE_VERSION} snapshot (start a fresh "
                              "recovery store after upgrading)", state.version)
        self.state = state if state is not None else CounterpartyState()
        self._recv_ts: int | None = None  # newest receive time among this batch's parts

    def snapshot(self) -> CounterpartyState:
        # parts are frozen and never mutated: a shallow rebuild is an independent copy
        st = self.state
        return CounterpartyState(
            version=st.version, counterparty=st.counterparty, parts=dict(st.parts),
            watermark=st.watermark, seq=st.seq, stale=dict(st.stale),
            evidence=list(st.evidence),
        )

    def on_event(self, p: Part) -> list[Any]:
        return self.on_batch([p])

    def on_batch(self, items: Iterable[Part]) -> list[Any]:
        if not self.ticked:
            return self._batch(items)
        parts, progress = split_progress(list(items))
        out = _per_tick(self._batch, parts) if parts else []
        out.extend(progress)  # behind the exposures they follow
        return out

    def _batch(self, items: Iterable[Part]) -> list[Any]:
        st = self.state
        parts = st.parts
        cap = self.config.max_evidence
        changed = False
        self._recv_ts = None
        for p in items:
            old = parts.get(p.shard)
            if old is not None and old.seq >= p.seq:
                continue
            parts[p.shard] = p
            changed = True
            if p.recv_ts is not None and (self._recv_ts is None or p.recv_ts > self._recv_ts):
                self._recv_ts = p.recv_ts
            st.counterparty = p.counterparty
            st.watermark = max(st.watermark, p.ts)
            if st.evidence:
                for rid in p.evidence:
                    _evidence_add(st.evidence, rid, cap)
            else:  # the common case: the first part since the last emit
                st.evidence = list(dict.fromkeys(p.evidence))[-cap:]
        if not changed:
            return []
        return self._emit()

    def _emit(self) -> list[Any]:
        st = self.state
        cfg = self.config
        ps = [st.parts[k] for k in sorted(st.parts)] if len(st.parts) > 1 else list(
            st.parts.values())
        gross = net = upnl = orders = coll = 0.0
        names: list[str] = []
        notionals: list[float] = []
        vols: dict[str, tuple[float, int]] = {}
        unvalued: list[str] = []
        vol_values: dict[str, float] | None = None
        if len(ps) == 1:
            # a part's dicts are built for it alone and never mutated: share them
            p = ps[0]
            gross, net, upnl, orders, coll = p.gross, p.net, p.upnl, p.orders, p.collateral
            delta, by_asset = p.delta, p.by_asset
            names, notionals = p.position_lists()
            vol_values = p.vol_values
            unvalued = p.unvalued
        else:
            delta, by_asset = {}, {}
            for p in ps:
                gross += p.gross
                net += p.net
                upnl += p.upnl
                orders += p.orders
                coll += p.collateral
                for k, v in p.delta.items():
                    delta[k] = delta.get(k, 0.0) + v
                for k, v in p.by_asset.items():
                    by_asset[k] = by_asset.get(k, 0.0) + v
                pn, pv = p.position_lists()  # shards hold disjoint instruments
                names.extend(pn)
                notionals.extend(pv)
                for k, vt in p.vols.items():
                    cur = vols.get(k)
                    if cur is None or vt[1] > cur[1]:
                        vols[k] = vt
                if p.unvalued:
                    unvalued.extend(p.unvalued)
        out: list[Any] = []
        horizon = st.watermark - cfg.max_mark_age_ns
        old: dict[str, int] = {}
        if (ps[0].oldest if len(ps) == 1 else min((p.oldest for p in ps),
                                                  default=NEVER_STALE)) < horizon:
            for p in ps:
                if p.oldest < horizon:
                    mts = np.frombuffer(p.mark_ts, dtype="<i8")
                    stale_ix = np.flatnonzero(mts < horizon).tolist()
                    held = p.position_lists()[0]
                    old.update((held[x], int(mts[x])) for x in stale_ix)
        for name, mark_ts in old.items():
            if name in st.stale:
                continue
            st.stale[name] = mark_ts
            out.append(RiskAlert(
                id=_alert_id("stale_mark", st.counterparty, name, mark_ts, st.watermark),
                kind="stale_mark",
                scope=Scope(kind=ScopeKind.INSTRUMENT, value=name),
                ts=st.watermark, severity=Severity.WARN,
                reason=(f"mark of {name} is {(st.watermark - mark_ts) / NS_PER_S:.3f}s "
                        f"old (max {cfg.max_mark_age_ns / NS_PER_S:g}s); exposure of "
                        f"{st.counterparty} is stale"),
                details={"counterparty": st.counterparty, "mark_ts": mark_ts,
                         "watermark": st.watermark},
                evidence_ids=list(st.evidence[-4:]),
            ))
        if st.stale:
            for name in [n for n in st.stale if n not in old]:
                del st.stale[name]
        stale = sorted({*unvalued, *old}) if unvalued or old else []
        unv_inst: list[str] = []
        unv_coll: list[str] = []
        if unvalued:  # a part's unvalued names: its positions', then collateral assets'
            positions = set(names)
            unv_inst = sorted({n for n in unvalued if n in positions})
            unv_coll = sorted({n for n in unvalued if n not in positions})
        st.seq += 1
        out.append(Exposure(
            counterparty=st.counterparty, ts=st.watermark, gross_notional=gross,
            net_notional=net, delta_by_underlying=delta,
            notional_by_asset=by_asset, instruments=names, instrument_notionals=notionals,
            collateral=coll, unrealized_pnl=upnl, open_order_notional=orders,
            stale=bool(stale), stale_instruments=stale, evidence_ids=st.evidence,
            seq=st.seq, recv_ts=self._recv_ts, vol_by_underlying=(
                vol_values if vol_values is not None
                else {k: v for k, (v, _t) in sorted(vols.items())}),
            unvalued_instruments=unv_inst, unvalued_collateral=unv_coll,
        ))
        st.evidence = []
        return out


def _per_tick(batch: Any, items: list[Any]) -> list[Any]:
    """Ticked mode: ``batch`` once per ``ts`` among ``items`` (one tick each), oldest
    first; the outputs concatenated."""
    if len(items) == 1:  # the usual batch: one tick's part or exposure
        return list(batch(items))
    groups: dict[int, list[Any]] = {}
    for it in items:
        groups.setdefault(it.ts, []).append(it)
    return [out for t in sorted(groups) for out in batch(groups[t])]


# --------------------------------------------------------------------- stage 3


def _sum_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise sums, keys in first-seen order, each summed in list order (C-level loops).

    >>> _sum_dicts([{"a": 1.0, "b": 2.0}, {"b": 0.5, "c": 4.0}])
    {'a': 1.0, 'b': 2.5, 'c': 4.0}
    >>> _sum_dicts([{"b": 1.0}, {"a": 2.0, "b": 0.5}])
    {'b': 1.5, 'a': 2.0}
    >>> _sum_dicts([{"a": 1.0, "b": 2.0}, {"b": 0.5, "a": 4.0}])  # every key in each
    {'a': 5.0, 'b': 2.5}
    """
    if ds and min(map(len, ds)) == len(set().union(*ds)):  # every dict holds every key
        return {k: sum(map(itemgetter(k), ds)) for k in ds[0]}
    # a dict without a key adds 0.0 for it: no bits change (a sum from 0 is never -0.0)
    return {k: sum(map(dict.get, ds, repeat(k), repeat(0.0)))
            for k in dict.fromkeys(chain.from_iterable(ds))}


@dataclass
class FirmState:
    version: int = STATE_VERSION
    latest: dict[str, Exposure] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    firm: Exposure | None = None
    seq: int = 0
    # ticked mode: per progress source, each stage-2 key's newest ts, and what was passed
    # on; the limits keys progress has reached, and how many sources each one hears
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    reached: dict[str, None] = field(default_factory=dict)
    sources_of: int = 0


class FirmLogic:
    """Stage 3: latest exposure per counterparty -> concentration + firm rollup.

    Each rollup is an exact re-sum over every counterparty in name order (no running
    sums, no drift, the same whatever order they arrived in), done with C-level loops;
    per-counterparty Python work is only for the updated ones and those whose share moved
    by more than ``concentration_epsilon``.
    """

    def __init__(self, config: ExposureConfig, state: FirmState | None = None, *,
                 ticked: bool = False) -> None:
        self.config = config
        self.ticked = ticked
        self.state = state if state is not None else FirmState()
        if not hasattr(self.state, "progress"):  # a snapshot from before progress
            self.state.progress, self.state.passed = {}, {}
            self.state.reached, self.state.sources_of = {}, 0
        # derived from state, in counterparty name order: names, latest exposures, the
        # concentration basis and the share last emitted
        st = self.state
        self._names = sorted(st.latest)
        self._exps = [st.latest[cp] for cp in self._names]
        self._at = {cp: k for k, cp in enumerate(self._names)}
        self._basis_v = np.array([self._basis(e) for e in self._exps], dtype=float)
        self._shares = np.array([st.shares.get(cp, 0.0) for cp in self._names], dtype=float)

    def snapshot(self) -> FirmState:
        """An independent copy, field by field (exposures are immutable: shared)."""
        st = self.state
        return copy_fields(st, latest=dict(st.latest), shares=dict(st.shares),
                           progress={k: dict(v) for k, v in st.progress.items()},
                           passed=dict(st.passed), reached=dict(st.reached))

    def on_event(self, e: Exposure) -> list[Exposure]:
        return self.on_batch([e])

    def _basis(self, e: Exposure) -> float:
        b = self.config.concentration_basis
        if b == "gross_notional":
            return e.gross_notional
        if b == "collateral":
            return max(e.collateral, 0.0)
        return e.gross_notional + max(e.collateral, 0.0)

    def on_batch(self, items: Iterable[Exposure]) -> list[Any]:
        if not self.ticked:
            return self._batch(items)
        exps, progress = split_progress(list(items))
        out: list[Any] = _per_tick(self._batch, exps) if exps else []
        if progress:
            out.extend(self._progress(progress))
        if len(self.state.reached) < len(self._names) + 1:
            out.extend(self._reach_new_keys())
        return out

    def _reach_new_keys(self) -> list[Progress]:
        """A counterparty's first exposure makes a new limits key: it hears every
        source's progress at once, behind that exposure, so a consumer waiting for its
        ticks (the tick count ``of`` announced it) waits one hop, not a tick interval."""
        st = self.state
        keys = ["*", *self._names]
        new = [k for k in keys if k not in st.reached]
        st.reached.update(dict.fromkeys(new))
        return self._to_limits_keys(new, st.passed, len(keys))

    def _progress(self, items: list[Progress]) -> list[Progress]:
        """Each source's progress once every stage-2 key it reaches has passed it (the
        minimum over them), to every limits key: each counterparty with an exposure, and
        the firm's (``"*"``)."""
        st = self.state
        moved: dict[str, int] = {}
        for p in items:
            seen = st.progress.setdefault(p.source, {})
            if len(p.via) > len(seen) - 1:  # a counterparty joined: hold for its copy
                for cp in p.via:
                    seen.setdefault(cp, -1)
            if p.ts > seen.get(p.counterparty, -1):
                seen[p.counterparty] = p.ts
                low = min(seen.values())
                if low > st.passed.get(p.source, -1):
                    st.passed[p.source] = moved[p.source] = low
        st.sources_of = max(st.sources_of, *(p.of for p in items))
        if not moved:
            return []
        keys = ["*", *self._names]
        n_keys = len(keys)
        if len(st.reached) < n_keys:
            # a key not reached yet hears every source's progress, not only the ones that
            # moved now (_reach_new_keys): a source that has finished moves no more
            keys = [k for k in keys if k in st.reached]
        return self._to_limits_keys(keys, moved, n_keys)

    def _to_limits_keys(self, keys: list[str], at: dict[str, int],
                        n_keys: int) -> list[Progress]:
        """Each source's progress ``at`` to each of ``keys``, announcing every source on
        each of the ``n_keys`` limits keys."""
        of = self.state.sources_of * n_keys
        return [Progress(counterparty=k, ts=ts, source=src, of=of)
                for k in keys for src, ts in at.items()]

    def _store(self, e: Exposure) -> None:
        """``e`` is ``cp``'s latest: in the state and in the name-ordered layout."""
        cp = e.counterparty
        self.state.latest[cp] = e
        k = self._at.get(cp)
        if k is None:  # a new counterparty: insert it in name order
            k = bisect_right(self._names, cp)
            self._names.insert(k, cp)
            self._exps.insert(k, e)
            self._at = {c: n for n, c in enumerate(self._names)}
            self._basis_v = np.insert(self._basis_v, k, self._basis(e))
            self._shares = np.insert(self._shares, k, 0.0)
        else:
            self._exps[k] = e
            self._basis_v[k] = self._basis(e)

    def _batch(self, items: Iterable[Exposure]) -> list[Exposure]:
        st = self.state
        updated: dict[str, None] = {}  # in first-update order (the evidence order)
        for e in items:
            old = st.latest.get(e.counterparty)
            if old is not None and old.seq >= e.seq:
                continue
            self._store(e)
            updated[e.counterparty] = None
        if not updated:
            return []
        exps = self._exps
        total = float(np.add.reduce(self._basis_v))

        def add_up(field: str) -> float:
            return reduce(add, map(attrgetter(field), exps), 0.0)

        gross, net, coll = add_up("gross_notional"), add_up("net_notional"), add_up("collateral")
        upnl, orders = add_up("unrealized_pnl"), add_up("open_order_notional")
        ts = max(0, *map(attrgetter("ts"), exps))
        # every by-asset dict is its delta dict (linear books): the same sums, done once
        deltas = list(map(attrgetter("delta_by_underlying"), exps))
        assets = list(map(attrgetter("notional_by_asset"), exps))
        shared = all(map(is_, assets, deltas))
        delta = _sum_dicts(deltas)
        by_asset = dict(delta) if shared else _sum_dicts(assets)
        firm_vols = _newest_vols(exps)
        stale = set(chain.from_iterable(map(attrgetter("stale_instruments"), exps)))
        unv_inst = set(chain.from_iterable(map(attrgetter("unvalued_instruments"), exps)))
        unv_coll = set(chain.from_iterable(map(attrgetter("unvalued_collateral"), exps)))
        evidence = [rid for cp in updated for rid in st.latest[cp].evidence_ids]
        shares = self._basis_v / total if total > 0 else np.zeros(len(exps))
        emit = np.abs(shares - self._shares) > self.config.concentration_epsilon
        at = self._at
        emit[[at[cp] for cp in updated]] = True
        out: list[Exposure] = []
        for k in np.flatnonzero(emit).tolist():
            share = float(shares[k])
            self._shares[k] = share
            name = self._names[k]
            st.shares[name] = share
            # an exposure re-emitted because others moved its share is as of now
            out.append(msgspec.structs.replace(
                exps[k], concentration=share, vol_by_underlying=firm_vols,
                ts=exps[k].ts if name in updated else ts))
        st.seq += 1
        st.firm = Exposure(
            counterparty="*", ts=ts, gross_notional=gross, net_notional=net,
            delta_by_underlying=delta, notional_by_asset=by_asset, collateral=coll,
            unrealized_pnl=upnl, open_order_notional=orders,
            concentration=max(st.shares.values(), default=0.0), stale=bool(stale),
            stale_instruments=sorted(stale), evidence_ids=evidence[-self.config.max_evidence:],
            seq=st.seq, vol_by_underlying=firm_vols, unvalued_instruments=sorted(unv_inst),
            unvalued_collateral=sorted(unv_coll),
        )
        out.append(st.firm)
        return out


def _newest_vols(exps: list[Exposure]) -> dict[str, float]:
    """Per underlying, the vol of the newest exposure (first in name order on a tie).

    Exposures of one batch share one vol dict, so each distinct dict is ranked by
    (newest ts, first position reaching it) and the best rank sets each key.
    """
    seen: dict[int, list[Any]] = {}
    for pos, e in enumerate(exps):
        vd = e.vol_by_underlying
        if vd:
            cur = seen.get(id(vd))
            if cur is None:
                seen[id(vd)] = [e.ts, pos, vd]
            elif e.ts > cur[0]:
                cur[0], cur[1] = e.ts, pos
    vols: dict[str, tuple[float, int]] = {}
    for t, _pos, vd in sorted(seen.values(), key=lambda r: (-r[0], r[1])):
        for k, v in vd.items():
            if k not in vols:
                vols[k] = (v, t)
    return {k: v for k, (v, _t) in sorted(vols.items())}


# --------------------------------------------------------------------- in memory


@dataclass
class PipelineOut:
    exposures: list[Exposure] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    errs: list[DeadLetter] = field(default_factory=list)


@dataclass
class PipelineState:
    version: int = STATE_VERSION
    valuation: dict[str, ShardState] = field(default_factory=dict)
    counterparty: dict[str, CounterpartyState] = field(default_factory=dict)
    firm: FirmState | None = None


class LocalPipeline:
    """All three stages chained in memory, one record at a time.

    The same logic the dataflow runs, without an engine: for tests,
    backtests and the from-scratch comparisons.
    """

    def __init__(self, config: ExposureConfig, state: PipelineState | None = None) -> None:
        self.config = config
        self.reg = config.validate()
        self.router = Router(self.reg, config)
        st = state if state is not None else PipelineState()
        self.val = {k: ShardLogic(config, self.reg, s) for k, s in st.valuation.items()}
        self.cps = {k: CounterpartyLogic(config, s) for k, s in st.counterparty.items()}
        self.firm = FirmLogic(config, st.firm)

    def snapshot(self) -> PipelineState:
        return PipelineState(
            valuation={k: v.snapshot() for k, v in self.val.items()},
            counterparty={k: v.snapshot() for k, v in self.cps.items()},
            firm=self.firm.snapshot(),
        )

    def feed(self, ev: Any) -> PipelineOut:
        out = PipelineOut()
        routed = self.router.route(ev)
        if isinstance(routed, DeadLetter):
            out.errs.append(routed)
            return out
        exps: list[Exposure] = []
        for key, item in routed:
            logic = self.val.get(key)
            if logic is None:
                logic = self.val[key] = ShardLogic(self.config, self.reg)
            for x in logic.on_event(item):
                if isinstance(x, RiskAlert):
                    out.alerts.append(x)
                    continue
                cpl = self.cps.get(x.counterparty)
                if cpl is None:
                    cpl = self.cps[x.counterparty] = CounterpartyLogic(self.config)
                for y in cpl.on_event(x):
                    if isinstance(y, RiskAlert):
                        out.alerts.append(y)
                    else:
                        exps.append(y)
        for e in exps:
            out.exposures.extend(self.firm.on_event(e))
        return out

    def feed_all(self, events: Sequence[Any]) -> PipelineOut:
        total = PipelineOut()
        for ev in events:
            o = self.feed(ev)
            total.exposures.extend(o.exposures)
            total.alerts.extend(o.alerts)
            total.errs.extend(o.errs)
        return total

    def latest(self) -> dict[str, Exposure]:
        """The latest exposure per counterparty (with concentration) and ``"*"``."""
        out = {cp: msgspec.structs.replace(e, concentration=self.firm.state.shares.get(cp, 0.0))
               for cp, e in self.firm.state.latest.items()}
        if self.firm.state.firm is not None:
            out["*"] = self.firm.state.firm
        return out
