"""Engine-neutral exposure aggregation in three keyed stages.

Stage 1, :class:`ValuationLogic`, is keyed by *what is being valued*: an
instrument (``i:<instrument>``) or a collateral asset (``a:<asset>``). It
holds that instrument's mark, FX rates and realized-vol estimate together
with the positions (and open orders) of *every* counterparty in it, so a
mark update meets the positions it re-marks without any all-to-all
exchange. It emits one :class:`Contrib` per (counterparty, instrument) whose
value changed, at most once per batch.

Stage 2, :class:`CounterpartyLogic`, is keyed by counterparty. It keeps the
latest contribution per instrument and per collateral asset, detects stale
marks against the counterparty's event-time watermark, and emits the
counterparty's :class:`~riskguard.schemas.Exposure` (at most once per batch).

Stage 3, :class:`FirmLogic`, is keyed by the constant ``"firm"``. It keeps
the latest exposure per counterparty, computes each one's concentration
(share of the firm-wide total) and emits the firm rollup
(``counterparty == "*"``).

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

import math
import pickle
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from riskguard.operators.instruments import (
    InstrumentRegistry,
    InstrumentsConfig,
    InstrumentSpec,
)
from riskguard.schemas import (
    Balance,
    DeadLetter,
    Exposure,
    FeatureVector,
    Fill,
    FundingRate,
    IndexPrice,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    Quote,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
    encode,
    tag_of,
)

from riskguard.errors import ConfigError

__all__ = [
    "Contrib",
    "CounterpartyLogic",
    "ExposureConfig",
    "FirmLogic",
    "InstrumentSpec",
    "InstrumentsConfig",
    "LocalPipeline",
    "ValuationLogic",
    "route",
]

STATE_VERSION = 2


def _copy(state: Any) -> Any:
    """An independent copy (a pickle round trip: several times faster than deepcopy)."""
    return pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

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
        if self.max_evidence < 1:
            where = f"{path}.max_evidence"
            raise ConfigError(where, "must be >= 1", self.max_evidence)
        return InstrumentRegistry(self.instruments, path=f"{path}.instruments")


class Contrib(msgspec.Struct, frozen=True, array_like=True):
    """One (counterparty, instrument-or-asset) contribution, stage 1 -> stage 2.

    ``what`` is ``"i"`` (instrument position) or ``"a"`` (collateral asset).
    Amounts are in the reporting currency. ``valued`` is false when the mark
    or FX rate is missing (``reason`` says which); such a contribution is
    never summed as zero silently, it makes the exposure ``stale``.
    """

    counterparty: str
    what: str
    name: str
    seq: int
    ts: int
    asset: str
    underlying: str
    qty: float
    notional: float
    delta: float
    upnl: float
    orders: float
    collateral: float
    mark_ts: int
    valued: bool
    reason: str
    vol: float
    vol_ts: int
    evidence: tuple[str, ...]


# --------------------------------------------------------------------- routing


def _price_of(ev: Any) -> float | None:
    if isinstance(ev, Trade | IndexPrice):
        return ev.price
    if isinstance(ev, Quote):
        return (ev.bid + ev.ask) / 2.0
    if isinstance(ev, OptionQuote):
        return ev.mark_price
    if isinstance(ev, FundingRate):
        return ev.mark_price
    return None


def _dead(
    ev: Any, reason: str, *, path: str, expected: str, found: str, step: str, now: int
) -> DeadLetter:
    topic = tag_of(type(ev)) if isinstance(ev, msgspec.Struct) and hasattr(ev, "v") else "unknown"
    raw = encode(ev) if isinstance(ev, msgspec.Struct) else repr(ev).encode()
    return DeadLetter(
        topic=topic, ts=now, reason=reason, path=path, expected=expected,
        found=found[:4096], step=step, raw=raw[:65536],
    )


def route(
    ev: Any,
    reg: InstrumentRegistry,
    config: ExposureConfig,
    *,
    step: str = "exposure",
    now: int = 0,
) -> list[tuple[str, tuple[str, str, str, Any]]] | DeadLetter:
    """Where an input record goes in stage 1: ``[(key, (role, key, target, record))]``.

    Our own records (fills, snapshots, orders, balances) for an undeclared
    instrument or asset are dead letters. Market data for instruments we do
    not track is not ours to judge and routes nowhere (``[]``).
    """
    if isinstance(ev, Fill | PositionSnapshot | OpenOrders):
        if reg.get(ev.instrument) is None:
            return _dead(ev, "unknown_instrument", path="$.instrument",
                         expected="a declared instrument", found=ev.instrument, step=step, now=now)
        role = ("fill" if isinstance(ev, Fill)
                else "snap" if isinstance(ev, PositionSnapshot) else "orders")
        key = "i:" + ev.instrument
        return [(key, (role, key, ev.instrument, ev))]
    if isinstance(ev, Balance):
        if not reg.convertible(ev.asset):
            return _dead(ev, "missing_fx", path="$.asset",
                         expected=f"an asset with an FX index to {reg.reporting}",
                         found=ev.asset, step=step, now=now)
        key = "a:" + ev.asset
        return [(key, ("bal", key, ev.asset, ev))]
    if isinstance(ev, FeatureVector):
        inst = ev.key.rsplit("/", 1)[-1]
        if reg.get(inst) is None or config.vol_feature not in ev.values:
            return []
        key = "i:" + inst
        return [(key, ("vol", key, inst, ev))]
    if isinstance(ev, Trade | Quote | IndexPrice | OptionQuote | FundingRate):
        if tag_of(type(ev)) not in config.mark_sources or _price_of(ev) is None:
            return []
        out: list[tuple[str, tuple[str, str, str, Any]]] = []
        spec = reg.get(ev.instrument)
        if spec is not None and (spec.kind != "option") == (not isinstance(ev, OptionQuote)):
            key = "i:" + ev.instrument
            out.append((key, ("mark", key, ev.instrument, ev)))
        for asset in reg.fx_assets_of(ev.instrument):
            out.append(("a:" + asset, ("fx", "a:" + asset, asset, ev)))
            out.extend(("i:" + inst, ("fx", "i:" + inst, asset, ev))
                       for inst in reg.instruments_needing_fx(asset))
        return out
    return _dead(ev, "unexpected_type", path="$.type",
                 expected="fill, position, open_orders, balance, features or market data",
                 found=type(ev).__name__, step=step, now=now)


def _alert_id(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "|".join(str(p) for p in parts)))


def _evidence_add(buf: list[str], rid: str, cap: int) -> None:
    if rid in buf:
        return
    buf.append(rid)
    if len(buf) > cap:
        del buf[0]


# --------------------------------------------------------------------- stage 1


@dataclass
class _Pos:
    qty: float = 0.0
    avg: float | None = None
    venue: str = ""
    snap_ts: int = -1
    orders: float = 0.0
    evidence: list[str] = field(default_factory=list)


@dataclass
class ValuationState:
    """State of one stage-1 key (an instrument or a collateral asset)."""

    version: int = STATE_VERSION
    target: str = ""
    is_asset: bool = False
    mark: float | None = None
    mark_ts: int = -1
    mark_id: str = ""
    opt_delta: float = 0.0
    und_price: float = 0.0
    fx: dict[str, tuple[float, int]] = field(default_factory=dict)
    positions: dict[str, _Pos] = field(default_factory=dict)
    balances: dict[str, tuple[float, int]] = field(default_factory=dict)
    seq: int = 0
    last_ts: int = 0
    alerted: dict[str, str] = field(default_factory=dict)
    seen: dict[str, None] = field(default_factory=dict)
    ewma_price: float = 0.0
    ewma_ts: int = -1
    ewma_var: float = 0.0
    ewma_n: int = 0
    feature_vol: float = -1.0
    feature_vol_ts: int = -1


class ValuationLogic:
    """Stage 1: positions of all counterparties in one instrument, plus its mark."""

    def __init__(self, config: ExposureConfig, reg: InstrumentRegistry,
                 state: ValuationState | None = None) -> None:
        self.config = config
        self.reg = reg
        self.state = state if state is not None else ValuationState()
        self._spec: InstrumentSpec | None = None
        self._ev_tail = -(config.max_evidence - 1)
        if self.state.target and not self.state.is_asset:
            self._set_spec(reg.get(self.state.target))

    def _set_spec(self, spec: InstrumentSpec | None) -> None:
        """Cache what every re-valuation needs from the instrument's spec."""
        self._spec = spec
        if spec is None:
            return
        self._is_option = spec.kind == "option"
        self._same_ccy = spec.underlying_ccy == spec.quote
        self._asset = spec.underlying_asset if self._is_option else spec.base
        self._underlying = spec.underlying_asset

    def snapshot(self) -> ValuationState:
        return _copy(self.state)

    def on_event(self, item: tuple[str, str, str, Any]) -> list[Any]:
        return self.on_batch([item])

    def on_batch(self, items: Iterable[tuple[str, str, str, Any]]) -> list[Any]:
        st = self.state
        out: list[Any] = []
        dirty: dict[str, str] = {}
        everyone = ""
        for role, key, target, ev in items:
            if not st.target:
                st.target, st.is_asset = key[2:], key.startswith("a:")
                if not st.is_asset:
                    self._set_spec(self.reg.get(st.target))
            st.last_ts = max(st.last_ts, ev.ts)
            if role == "mark":
                if ev.ts >= st.mark_ts:
                    self._on_mark(ev)
                    everyone = ev.id
            elif role == "fx":
                cur = st.fx.get(target)
                price = _price_of(ev)
                if price is not None and (cur is None or ev.ts >= cur[1]):
                    st.fx[target] = (price, ev.ts)
                    everyone = ev.id
            elif role == "vol":
                if ev.ts >= st.feature_vol_ts:
                    st.feature_vol = float(ev.values[self.config.vol_feature])
                    st.feature_vol_ts = ev.ts
            elif role == "bal":
                cur_b = st.balances.get(ev.counterparty)
                if cur_b is None or ev.ts >= cur_b[1]:
                    st.balances[ev.counterparty] = (ev.total, ev.ts)
                    dirty[ev.counterparty] = ev.id
            elif role == "fill":
                if self._on_fill(ev):
                    dirty[ev.counterparty] = ev.id
            elif role == "snap":
                out.extend(self._on_snapshot(ev))
                dirty[ev.counterparty] = ev.id
            elif role == "orders":
                pos = self._pos(ev.counterparty, ev.venue)
                pos.orders = ev.notional
                _evidence_add(pos.evidence, ev.id, self.config.max_evidence)
                dirty[ev.counterparty] = ev.id
        if everyone:
            if st.is_asset:
                for cp in st.balances:
                    dirty.setdefault(cp, everyone)
            else:
                for cp, pos in st.positions.items():
                    if pos.qty != 0.0 or pos.orders != 0.0:
                        dirty.setdefault(cp, everyone)
        if dirty:
            if st.is_asset:
                for cp, rid in dirty.items():
                    out.extend(self._emit_collateral(cp, rid))
            elif self._spec is not None:
                vol, vol_ts = self._vol()
                for cp, rid in dirty.items():
                    out.extend(self._emit_position(cp, rid, vol, vol_ts))
        return out

    # -- helpers

    def _pos(self, cp: str, venue: str) -> _Pos:
        pos = self.state.positions.get(cp)
        if pos is None:
            pos = self.state.positions[cp] = _Pos(venue=venue)
        return pos

    def _on_mark(self, ev: Any) -> None:
        st = self.state
        price = _price_of(ev)
        if price is None:
            return
        st.mark, st.mark_ts, st.mark_id = price, ev.ts, ev.id
        if isinstance(ev, OptionQuote):
            st.opt_delta, st.und_price = ev.delta, ev.underlying_price
            return
        if price > 0:
            if st.ewma_ts >= 0 and ev.ts > st.ewma_ts and st.ewma_price > 0:
                r = math.log(price / st.ewma_price)
                inst = r * r / ((ev.ts - st.ewma_ts) / NS_PER_S)
                a = self.config.vol_alpha
                st.ewma_var = inst if st.ewma_n == 0 else (1 - a) * st.ewma_var + a * inst
                st.ewma_n += 1
            if ev.ts > st.ewma_ts:
                st.ewma_price, st.ewma_ts = price, ev.ts

    def _on_fill(self, ev: Fill) -> bool:
        st = self.state
        if ev.id in st.seen:
            return False
        st.seen[ev.id] = None
        if len(st.seen) > self.config.dedup_window:
            del st.seen[next(iter(st.seen))]
        pos = self._pos(ev.counterparty, ev.venue)
        _evidence_add(pos.evidence, ev.id, self.config.max_evidence)
        if ev.ts <= pos.snap_ts:
            return True  # already reflected in the authoritative snapshot
        signed = ev.qty if ev.side == "buy" else -ev.qty
        pos.qty, pos.avg = apply_fill(pos.qty, pos.avg, signed, ev.price)
        return True

    def _on_snapshot(self, ev: PositionSnapshot) -> list[Any]:
        st = self.state
        pos = self._pos(ev.counterparty, ev.venue)
        _evidence_add(pos.evidence, ev.id, self.config.max_evidence)
        out: list[Any] = []
        diff = ev.qty - pos.qty
        tol = self.config.recon_abs_tol + self.config.recon_rel_tol * max(abs(ev.qty), abs(pos.qty))
        if abs(diff) > tol:
            out.append(RiskAlert(
                id=_alert_id("reconciliation_break", ev.counterparty, ev.instrument, ev.id),
                kind="reconciliation_break",
                scope=Scope(kind=ScopeKind.INSTRUMENT, value=ev.instrument, venue=ev.venue),
                ts=ev.ts, severity=Severity.WARN,
                reason=(f"position snapshot {ev.qty} of {ev.instrument} at {ev.counterparty} "
                        f"differs from fills {pos.qty} by {diff}; adopted the snapshot"),
                details={"counterparty": ev.counterparty, "snapshot_qty": ev.qty,
                         "fills_qty": pos.qty, "diff": diff, "tolerance": tol},
                evidence_ids=[ev.id, *pos.evidence[-4:]][: self.config.max_evidence],
            ))
        if ev.avg_price is not None:
            pos.avg = ev.avg_price
        elif pos.avg is None or (pos.qty == 0.0) or (pos.qty > 0) != (ev.qty > 0):
            pos.avg = st.mark
        pos.qty = ev.qty
        pos.snap_ts = max(pos.snap_ts, ev.ts)
        return out

    def _fx(self, ccy: str) -> tuple[float, int] | None:
        if ccy == self.reg.reporting:
            return (1.0, -1)
        return self.state.fx.get(ccy)

    def _vol(self) -> tuple[float, int]:
        st = self.state
        if st.feature_vol >= 0:
            return st.feature_vol, st.feature_vol_ts
        if st.ewma_n >= self.config.vol_min_samples:
            return math.sqrt(st.ewma_var * SECONDS_PER_YEAR), st.ewma_ts
        return -1.0, -1

    def _missing(self, key: str, kind: str, cp: str, rid: str, reason: str) -> list[Any]:
        st = self.state
        if st.alerted.get(key) == kind:
            return []
        st.alerted[key] = kind
        return [RiskAlert(
            id=_alert_id(kind, st.target, cp, rid), kind=kind,
            scope=Scope(kind=ScopeKind.INSTRUMENT, value=st.target), ts=st.last_ts,
            severity=Severity.WARN, reason=reason,
            details={"counterparty": cp}, evidence_ids=[rid],
        )]

    def _emit_position(self, cp: str, rid: str, vol: float, vol_ts: int) -> list[Any]:
        st = self.state
        spec = self._spec
        assert spec is not None
        pos = st.positions[cp]
        reason = ""
        notional = delta = upnl = orders = 0.0
        mark = st.mark
        if mark is None:
            reason = "missing_mark"
            out = self._missing("mark", "missing_mark", cp, rid,
                                f"no mark yet for {st.target}; position of {cp} is unvalued")
        else:
            fxq = self._fx(spec.quote)
            fxu = fxq if self._same_ccy else self._fx(spec.underlying_ccy)
            if fxq is None or fxu is None:
                reason = "missing_fx"
                ccy = spec.quote if fxq is None else spec.underlying_ccy
                out = self._missing("fx", "missing_fx", cp, rid,
                                    f"no FX rate {ccy}->{self.reg.reporting} for {st.target}")
            else:
                out = []
                if st.alerted:
                    st.alerted.clear()
                qm = pos.qty * spec.multiplier
                q_fx = fxq[0]
                if self._is_option:
                    notional = qm * st.und_price * fxu[0]
                    delta = qm * st.opt_delta * st.und_price * fxu[0]
                else:
                    notional = delta = qm * mark * q_fx
                avg = pos.avg
                upnl = 0.0 if avg is None else qm * (mark - avg) * q_fx
                orders = pos.orders * q_fx
        st.seq += 1
        ev = pos.evidence
        evidence = tuple(ev) if rid in ev else (*ev[self._ev_tail:], rid)
        out.append(Contrib(
            cp, "i", st.target, st.seq, st.last_ts, self._asset, self._underlying, pos.qty,
            notional, delta, upnl, orders, 0.0, st.mark_ts, not reason, reason, vol, vol_ts,
            evidence,
        ))
        return out

    def _emit_collateral(self, cp: str, rid: str) -> list[Any]:
        st = self.state
        total, _bts = st.balances[cp]
        fx = self._fx(st.target)
        out: list[Any] = []
        reason = ""
        value = 0.0
        if fx is None:
            reason = "missing_fx"
            why = f"no FX rate {st.target}->{self.reg.reporting} for collateral"
            out.extend(self._missing("fx", "missing_fx", cp, rid, why))
        else:
            value = total * fx[0]
        st.seq += 1
        out.append(Contrib(
            counterparty=cp, what="a", name=st.target, seq=st.seq, ts=st.last_ts,
            asset=st.target, underlying=st.target, qty=total, notional=0.0, delta=0.0,
            upnl=0.0, orders=0.0, collateral=value, mark_ts=fx[1] if fx else -1,
            valued=not reason, reason=reason, vol=-1.0, vol_ts=-1, evidence=(rid,),
        ))
        return out


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
    """State of one counterparty: its latest contributions and their running sums.

    The sums (``gross`` ... ``by_inst``) are kept incrementally, so an update
    costs O(1) instead of a pass over every position; they are re-summed
    exactly from ``contribs`` every ``RESUM_EVERY`` updates to bound float drift.
    """

    version: int = STATE_VERSION
    counterparty: str = ""
    contribs: dict[tuple[str, str], Contrib] = field(default_factory=dict)
    watermark: int = 0
    seq: int = 0
    stale: dict[str, int] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    gross: float = 0.0
    net: float = 0.0
    upnl: float = 0.0
    orders: float = 0.0
    collateral: float = 0.0
    delta: dict[str, float] = field(default_factory=dict)
    by_asset: dict[str, float] = field(default_factory=dict)
    by_inst: dict[str, float] = field(default_factory=dict)
    refs: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    unvalued: dict[str, None] = field(default_factory=dict)
    vols: dict[str, tuple[float, int]] = field(default_factory=dict)
    updates: int = 0


RESUM_EVERY = 4096


class CounterpartyLogic:
    """Stage 2: one counterparty's contributions -> its :class:`Exposure`."""

    def __init__(self, config: ExposureConfig, state: CounterpartyState | None = None) -> None:
        self.config = config
        if state is not None and state.version < STATE_VERSION:
            state = _migrate_cp(state)
        self.state = state if state is not None else CounterpartyState()

    def snapshot(self) -> CounterpartyState:
        return _copy(self.state)

    def on_event(self, c: Contrib) -> list[Any]:
        return self.on_batch([c])

    def on_batch(self, items: Iterable[Contrib]) -> list[Any]:
        st = self.state
        contribs = st.contribs
        changed: list[Contrib] = []
        gross, net, upnl, orders = st.gross, st.net, st.upnl, st.orders
        delta, by_asset, by_inst = st.delta, st.by_asset, st.by_inst
        marks, unvalued, vols = st.marks, st.unvalued, st.vols
        watermark = st.watermark
        for c in items:
            key = (c.what, c.name)
            old = contribs.get(key)
            if old is not None and old.seq >= c.seq:
                continue
            changed.append(c)
            watermark = max(watermark, c.ts)
            if c.what != "i" or old is None or (c.qty == 0.0 and c.orders == 0.0):
                # collateral, a new position or a closed one: the general path
                st.gross, st.net, st.upnl, st.orders = gross, net, upnl, orders
                if old is not None:
                    self._add(old, -1)
                if c.what == "i" and c.qty == 0.0 and c.orders == 0.0:
                    contribs.pop(key, None)
                else:
                    contribs[key] = c
                    self._add(c, 1)
                gross, net, upnl, orders = st.gross, st.net, st.upnl, st.orders
                continue
            # the hot path: a held position re-valued (same instrument, asset, underlying)
            contribs[key] = c
            name, n, on = c.name, c.notional, old.notional
            gross += abs(n) - abs(on)
            net += n - on
            upnl += c.upnl - old.upnl
            orders += c.orders - old.orders
            delta[c.underlying] += c.delta - old.delta
            by_asset[c.asset] += n - on
            by_inst[name] = n
            if c.valued:
                marks[name] = c.mark_ts
                if not old.valued:
                    unvalued.pop(name, None)
            elif old.valued:
                unvalued[name] = None
                marks.pop(name, None)
            if c.vol >= 0:
                cur = vols.get(c.underlying)
                if cur is None or c.vol_ts > cur[1]:
                    vols[c.underlying] = (c.vol, c.vol_ts)
        st.gross, st.net, st.upnl, st.orders = gross, net, upnl, orders
        st.watermark = watermark
        if not changed:
            return []
        st.counterparty = changed[-1].counterparty
        st.updates += len(changed)
        if st.updates >= RESUM_EVERY:
            _resum(st)
        self._note_evidence(changed)
        return self._emit()

    def _note_evidence(self, changed: list[Contrib]) -> None:
        """Keep the newest ``max_evidence`` distinct record ids that moved the exposure."""
        st = self.state
        cap = self.config.max_evidence
        if len(changed) == 1:
            for rid in changed[0].evidence:
                _evidence_add(st.evidence, rid, cap)
            return
        recent: dict[str, None] = {}
        for c in reversed(changed):
            for rid in reversed(c.evidence):
                recent[rid] = None
            if len(recent) >= cap:
                break
        for rid in reversed(list(recent)[:cap]):
            _evidence_add(st.evidence, rid, cap)

    def _add(self, c: Contrib, sign: int) -> None:
        """Add (``sign=1``) or remove (``-1``) one contribution from the running sums."""
        st = self.state
        name = c.name
        if c.what == "a":
            st.collateral += sign * c.collateral
            if not c.valued:
                _toggle(st.unvalued, name, sign)
            return
        n = c.notional
        st.gross += sign * abs(n)
        st.net += sign * n
        st.upnl += sign * c.upnl
        st.orders += sign * c.orders
        refs = st.refs
        for table, k, v in ((st.delta, c.underlying, c.delta), (st.by_asset, c.asset, n)):
            rk = ("d:" if table is st.delta else "a:") + k
            left = refs.get(rk, 0) + sign
            if left:
                refs[rk] = left
                table[k] = table.get(k, 0.0) + sign * v
            else:
                refs.pop(rk, None)
                table.pop(k, None)
        if sign > 0:
            st.by_inst[name] = n
            if c.valued:
                st.marks[name] = c.mark_ts
            else:
                st.unvalued[name] = None
            if c.vol >= 0:
                cur = st.vols.get(c.underlying)
                if cur is None or c.vol_ts > cur[1]:
                    st.vols[c.underlying] = (c.vol, c.vol_ts)
        else:
            st.by_inst.pop(name, None)
            st.marks.pop(name, None)
            st.unvalued.pop(name, None)

    def _emit(self) -> list[Any]:
        st = self.state
        cfg = self.config
        out: list[Any] = []
        horizon = st.watermark - cfg.max_mark_age_ns
        marks = st.marks
        old: dict[str, int] = {}
        if marks and min(marks.values()) < horizon:
            old = {name: ts for name, ts in marks.items() if ts < horizon}
        for name, mark_ts in old.items():
            if name in st.stale:
                continue
            st.stale[name] = mark_ts
            c = st.contribs[("i", name)]
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
                evidence_ids=list(c.evidence[-4:]),
            ))
        if st.stale:
            for name in [n for n in st.stale if n not in old]:
                del st.stale[name]
        stale = sorted({*st.unvalued, *old}) if st.unvalued or old else []
        st.seq += 1
        out.append(Exposure(
            counterparty=st.counterparty, ts=st.watermark, gross_notional=st.gross,
            net_notional=st.net, delta_by_underlying=dict(st.delta),
            notional_by_asset=dict(st.by_asset), notional_by_instrument=dict(st.by_inst),
            collateral=st.collateral, unrealized_pnl=st.upnl, open_order_notional=st.orders,
            stale=bool(stale), stale_instruments=stale, evidence_ids=st.evidence,
            seq=st.seq, vol_by_underlying={k: v for k, (v, _t) in sorted(st.vols.items())},
        ))
        st.evidence = []
        return out


def _toggle(table: dict[str, None], name: str, sign: int) -> None:
    if sign > 0:
        table[name] = None
    else:
        table.pop(name, None)


def _resum(st: CounterpartyState) -> None:
    """Recompute every running sum of ``st`` exactly from its contributions."""
    st.updates = 0
    st.gross = st.net = st.upnl = st.orders = st.collateral = 0.0
    for table in (st.delta, st.by_asset, st.by_inst, st.refs, st.marks, st.unvalued):
        table.clear()
    parts: dict[str, list[float]] = {}
    for (what, name), c in st.contribs.items():
        if what == "a":
            parts.setdefault("collateral", []).append(c.collateral)
            if not c.valued:
                st.unvalued[name] = None
            continue
        parts.setdefault("gross", []).append(abs(c.notional))
        parts.setdefault("net", []).append(c.notional)
        parts.setdefault("upnl", []).append(c.upnl)
        parts.setdefault("orders", []).append(c.orders)
        parts.setdefault("d:" + c.underlying, []).append(c.delta)
        parts.setdefault("a:" + c.asset, []).append(c.notional)
        st.by_inst[name] = c.notional
        if c.valued:
            st.marks[name] = c.mark_ts
        else:
            st.unvalued[name] = None
    for k, vals in parts.items():
        total = math.fsum(vals)
        if k.startswith("d:"):
            st.delta[k[2:]] = total
            st.refs[k] = len(vals)
        elif k.startswith("a:"):
            st.by_asset[k[2:]] = total
            st.refs[k] = len(vals)
        else:
            setattr(st, k, total)


def _migrate_cp(state: CounterpartyState) -> CounterpartyState:
    """A version-1 snapshot (no running sums) upgraded to the current layout."""
    new = CounterpartyState(
        counterparty=state.counterparty, contribs=dict(state.contribs),
        watermark=state.watermark, seq=state.seq, stale=dict(state.stale),
        evidence=list(state.evidence),
    )
    for c in new.contribs.values():
        if c.what == "i" and c.vol >= 0:
            cur = new.vols.get(c.underlying)
            if cur is None or c.vol_ts > cur[1]:
                new.vols[c.underlying] = (c.vol, c.vol_ts)
    _resum(new)
    return new


# --------------------------------------------------------------------- stage 3


@dataclass
class FirmState:
    version: int = STATE_VERSION
    latest: dict[str, Exposure] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    firm: Exposure | None = None
    seq: int = 0


class FirmLogic:
    """Stage 3: latest exposure per counterparty -> concentration + firm rollup."""

    def __init__(self, config: ExposureConfig, state: FirmState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else FirmState()

    def snapshot(self) -> FirmState:
        return _copy(self.state)

    def on_event(self, e: Exposure) -> list[Exposure]:
        return self.on_batch([e])

    def _basis(self, e: Exposure) -> float:
        b = self.config.concentration_basis
        if b == "gross_notional":
            return e.gross_notional
        if b == "collateral":
            return max(e.collateral, 0.0)
        return e.gross_notional + max(e.collateral, 0.0)

    def on_batch(self, items: Iterable[Exposure]) -> list[Exposure]:
        st = self.state
        updated: list[str] = []
        for e in items:
            old = st.latest.get(e.counterparty)
            if old is not None and old.seq >= e.seq:
                continue
            st.latest[e.counterparty] = e
            if e.counterparty not in updated:
                updated.append(e.counterparty)
        if not updated:
            return []
        total = sum(self._basis(e) for e in st.latest.values())
        gross = net = coll = upnl = orders = 0.0
        delta: dict[str, float] = {}
        by_asset: dict[str, float] = {}
        vols: dict[str, tuple[float, int]] = {}
        stale: set[str] = set()
        ts = 0
        evidence: list[str] = []
        for cp in sorted(st.latest):
            e = st.latest[cp]
            gross += e.gross_notional
            net += e.net_notional
            coll += e.collateral
            upnl += e.unrealized_pnl
            orders += e.open_order_notional
            ts = max(ts, e.ts)
            for k, v in e.delta_by_underlying.items():
                delta[k] = delta.get(k, 0.0) + v
            for k, v in e.notional_by_asset.items():
                by_asset[k] = by_asset.get(k, 0.0) + v
            for k, v in e.vol_by_underlying.items():
                if k not in vols or e.ts > vols[k][1]:
                    vols[k] = (v, e.ts)
            stale.update(e.stale_instruments)
        for cp in updated:
            evidence.extend(st.latest[cp].evidence_ids)
        firm_vols = {k: v for k, (v, _t) in sorted(vols.items())}
        out: list[Exposure] = []
        eps = self.config.concentration_epsilon
        for cp in sorted(st.latest):
            e = st.latest[cp]
            share = self._basis(e) / total if total > 0 else 0.0
            if cp in updated or abs(share - st.shares.get(cp, 0.0)) > eps:
                st.shares[cp] = share
                out.append(msgspec.structs.replace(
                    e, concentration=share, vol_by_underlying=firm_vols))
        st.seq += 1
        st.firm = Exposure(
            counterparty="*", ts=ts, gross_notional=gross, net_notional=net,
            delta_by_underlying=delta, notional_by_asset=by_asset, collateral=coll,
            unrealized_pnl=upnl, open_order_notional=orders,
            concentration=max(st.shares.values(), default=0.0), stale=bool(stale),
            stale_instruments=sorted(stale), evidence_ids=evidence[-self.config.max_evidence:],
            seq=st.seq, vol_by_underlying=firm_vols,
        )
        out.append(st.firm)
        return out


# --------------------------------------------------------------------- in memory


@dataclass
class PipelineOut:
    exposures: list[Exposure] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    errs: list[DeadLetter] = field(default_factory=list)


@dataclass
class PipelineState:
    version: int = STATE_VERSION
    valuation: dict[str, ValuationState] = field(default_factory=dict)
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
        st = state if state is not None else PipelineState()
        self.val = {k: ValuationLogic(config, self.reg, s) for k, s in st.valuation.items()}
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
        routed = route(ev, self.reg, self.config)
        if isinstance(routed, DeadLetter):
            out.errs.append(routed)
            return out
        exps: list[Exposure] = []
        for key, item in routed:
            logic = self.val.get(key)
            if logic is None:
                logic = self.val[key] = ValuationLogic(self.config, self.reg)
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
