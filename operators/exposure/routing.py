"""Routing to stage 1: input records to the shards of what they value, and progress.

A shard is keyed by a stable hash of an instrument (``i:<name>``) or a collateral
asset (``a:<name>``) over ``valuation_shards``: :func:`shard_key`. :class:`Router`
turns each input record into stage-1 items for its shards (or a dead letter);
:class:`ShardPlace` restricts that to what one market process owns."""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

import msgspec
from riskguard.operators.core.clock import Tick
from riskguard.operators.exposure.config import ExposureConfig
from riskguard.operators.exposure.instruments import (
    InstrumentRegistry,
)
from riskguard.operators.exposure.mark_filter import DETECTION_ONLY
from riskguard.schemas import (
    Balance,
    DeadLetter,
    FeatureVector,
    Fill,
    FundingRate,
    IndexPrice,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    Quote,
    Record,
    Trade,
    encode,
    tag_of,
)
from riskguard.schemas.base import source_of
from riskguard.schemas.valuation import Progress


def _dead(
    ev: Any, reason: str, *, path: str, expected: str, found: str, step: str, now: int
) -> DeadLetter:
    # the input it was read from (a fill's topic, partition and offset), where known
    topic, partition, offset = source_of(ev) or (
        tag_of(type(ev)) if isinstance(ev, Record) else "unknown", -1, -1)
    raw = encode(ev) if isinstance(ev, msgspec.Struct) else repr(ev).encode()
    return DeadLetter.of(
        topic=topic, partition=partition, offset=offset, ts=now, reason=reason, path=path,
        expected=expected, found=found, step=step, raw=raw,
    )


def shard_key(name: str, shards: int, prefix: str = "") -> str:
    """The stage-1 key of an instrument (``"i:<name>"``) or collateral asset (``"a:<name>"``):
    shard ``crc32(name) % shards`` of :func:`shard_keys`.

    A stable hash (crc32), so every worker and every run agrees.

    >>> shard_key("i:BTC-PERP", 1)
    's0'
    """
    return shard_keys(shards, prefix)[zlib.crc32(name.encode()) % shards]


@functools.cache
def shard_keys(shards: int, prefix: str = "") -> tuple[str, ...]:
    """The stage-1 keys of ``shards`` shards (``prefix``: a market process's).

    >>> shard_keys(2), shard_keys(1, "m1.")
    (('s0', 's1'), ('m1.s0',))
    """
    return tuple(f"{prefix}s{k}" for k in range(shards))


def shard_process(shard: str) -> str:
    """The market process a stage-1 shard key (or a progress source named
    ``<worker>@<shard>``) belongs to: its :class:`ShardPlace` prefix, ``""`` for the
    shards of one pipeline.

    >>> shard_process("m1.s0"), shard_process("market/1@m1.s3"), shard_process("s2")
    ('m1.', 'm1.', '')
    """
    shard = shard.rpartition("@")[2]
    return shard[:shard.rfind(".") + 1]


R = TypeVar("R")


class Item(NamedTuple, Generic[R]):
    """A stage-1 item: what ``record`` does at shard ``shard``.

    ``role``: ``mark``, ``fx`` or ``vol`` (market data and features on ``target``, an
    instrument or asset), ``marks`` (a run of plain marks, ``record`` a list), ``tick``,
    or an own record: ``fill``, ``snap``, ``orders`` (on instrument ``target``) or ``bal``
    (on asset ``target``)."""

    role: str
    shard: str
    target: str
    record: R


StageRecord: TypeAlias = (
    Trade | Quote | IndexPrice | OptionQuote | FundingRate | Fill | PositionSnapshot
    | OpenOrders | Balance | FeatureVector | Tick | list[Trade | Quote | IndexPrice])
HeldItem: TypeAlias = Item[StageRecord]
"""A stage-1 item as a shard's snapshot holds it: the record typed, so that it
restores as the record it was (a run of plain marks is a list)."""

_MARK_TYPES = (Trade, Quote, IndexPrice, OptionQuote, FundingRate)
_OWN_ROLES: dict[type, str] = {Fill: "fill", PositionSnapshot: "snap", OpenOrders: "orders"}


@dataclass(frozen=True)
class ShardPlace:
    """A market process's share of stage 1 (docs/scaling.md, "The market tier"): its shard keys
    carry ``prefix`` (``m<i>.``: unique among the processes, so the firm process's
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
        self._mark_ok.update(dict.fromkeys(DETECTION_ONLY, False))  # bars, depth: nowhere
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
        """Where ``ev`` goes in stage 1: ``[(key, Item(role, key, target, ev))]``.

        Our own records (fills, snapshots, orders, balances) for an undeclared
        instrument or asset are dead letters. Market data for instruments we do
        not track, a mark source not configured, and bars and depth (detection's) are not
        ours to judge and route nowhere (``[]``).
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
            return [(k, Item(role, k, target, ev)) for k, role, target in routes]
        if t is Tick:  # event-time progress: every shard re-values what moved before it
            return [(k, Item("tick", k, "", ev)) for k in self._all_keys]
        role = _OWN_ROLES.get(t)
        if role is not None:
            key = self._inst_key.get(ev.instrument)
            if key is None:
                if ev.instrument in self.config.instruments.instruments:
                    return self._not_owned(ev, "$.instrument", ev.instrument, now)
                return _dead(ev, "unknown_instrument", path="$.instrument",
                             expected="a declared instrument", found=ev.instrument,
                             step=self.step, now=now)
            if t is Fill and not math.isfinite(ev.qty * ev.price):  # no amount to add up
                return _dead(ev, "non_finite", path="$.qty", expected="a notional that is a "
                             "number (qty x price)", found=f"{ev.qty:g} x {ev.price:g}",
                             step=self.step, now=now)
            return [(key, Item(role, key, ev.instrument, ev))]
        if t is Balance:
            if not self.reg.convertible(ev.asset):
                return _dead(ev, "missing_fx", path="$.asset",
                             expected=f"an asset with an FX index to {self.reg.reporting}",
                             found=ev.asset, step=self.step, now=now)
            if not self._owns("a:" + ev.asset):
                return self._not_owned(ev, "$.asset", ev.asset, now)
            key = self.asset_key(ev.asset)
            return [(key, Item("bal", key, ev.asset, ev))]
        if t is FeatureVector:
            inst = ev.key.rsplit("/", 1)[-1]
            key = self._inst_key.get(inst)
            if key is None or self.config.vol_feature not in ev.values:
                return []
            return [(key, Item("vol", key, inst, ev))]
        return _dead(ev, "unexpected_type", path="$.type",
                     expected="fill, position, open_orders, balance, features or market data",
                     found=type(ev).__name__, step=self.step, now=now)

    def route_batch(self, evs: list[Any], now: int = 0) -> list[Any]:
        """A whole input batch: one ``(key, [items])`` pack per shard, plus dead letters.

        Consecutive plain marks (trades, index prices and quotes of an instrument that is
        nobody's FX index and not an option) travel as one ``Item("marks", key, "", [records])``
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
                        packs[k] = [Item("marks", k, "", run)]
                    else:
                        pack.append(Item("marks", k, "", run))
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
