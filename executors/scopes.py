"""Which markets a command's scope names, and the per-scope trading states an executor holds.

Engine-neutral: nothing here imports a trading system. An executor for
NautilusTrader, CCXT or a FIX gateway maps riskguard's names to its own with a
:class:`MarketMap` and keeps what is in force in a :class:`ScopeBook`.

**The overlap rule.** Every ``halt_trading``, ``reduce_only``, ``reduce_limits`` and
``widen_quotes`` is held on the exact scope it names. An order's state is the most
restrictive state held on any scope that covers its market (HALTED > REDUCING >
ACTIVE): the firm, its venue, its counterparty, its underlying (on every venue or on
its venue) and its instrument (likewise). Its notional cap is the base cap times the
smallest ``reduce_limits`` factor held on those scopes. A ``resume`` lifts holds on
exactly its own scope (the actions in ``params.actions``, the commands in
``params.resumes``, or all of them), never on a wider or narrower one: resuming
``venue:okx`` under a firm halt leaves okx halted, by the firm.

>>> from riskguard.schemas.signals import FIRM
>>> markets = MarketMap.from_dict({
...     "venues": {"okx": {"venue": "OKX"}, "binance": {"venue": "BINANCE"}},
...     "instruments": [
...         {"venue": "okx", "name": "BTC-USDT", "id": "BTCUSDT.OKX", "underlying": "BTC"},
...         {"venue": "binance", "name": "BTC-USDT", "id": "BTCUSDT.BINANCE",
...          "underlying": "BTC"}]})
>>> book = ScopeBook()
>>> okx, binance = markets.market("BTCUSDT.OKX"), markets.market("BTCUSDT.BINANCE")
>>> _ = book.hold("halt_trading", Scope(kind=ScopeKind.VENUE, value="okx"), "c1",
...               issuer="desk")
>>> book.state_for(okx).name, book.state_for(binance).name
('HALTED', 'ACTIVE')
>>> _ = book.hold("halt_trading", FIRM, "c2", issuer="desk")
>>> _ = book.lift(Scope(kind=ScopeKind.VENUE, value="okx"))
>>> book.state_for(okx).name, book.governing(okx)[0].scope_label
('HALTED', 'firm:*')
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgspec
from riskguard.operators.core.dedup import signer_id
from riskguard.schemas.action_params import HELD_ACTIONS as HELD
from riskguard.schemas.action_params import resume_lifts
from riskguard.schemas.signals import Scope, ScopeKind

from riskguard.atomic import write_atomic
from riskguard.errors import ConfigError
from riskguard.validation import did_you_mean

__all__ = ["HELD_ACTIONS", "MAX_NOTIONAL", "Hold", "Market", "MarketMap", "ScopeBook",
           "ScopeBookState", "TradeState", "covers"]

MAX_NOTIONAL = 9_223_372_036.0
"""The largest ``max_notional`` taken: NautilusTrader's ``MONEY_MAX`` in its standard
precision build (its high precision build takes up to 17_014_118_346_046)."""


class TradeState(IntEnum):
    """An order's trading state, ordered by restriction (NautilusTrader's names)."""

    ACTIVE = 0
    REDUCING = 1
    """Only orders that reduce a position."""
    HALTED = 2
    """No new orders; cancels only."""


_STATES: Mapping[str, TradeState] = {
    "halt_trading": TradeState.HALTED, "reduce_only": TradeState.REDUCING}
HELD_ACTIONS: Mapping[str, TradeState | None] = {a: _STATES.get(a) for a in sorted(HELD)}
"""Actions held on a scope until a ``resume`` lifts them, and the state each imposes
(``None``: a cap or a quote width, no trading state)."""


@dataclass(frozen=True)
class Market:
    """One tradable market in riskguard's names and the trading system's ``key``.

    ``name`` and ``underlying`` are None for a market only known by its venue (an order
    on an instrument the map does not list, on a venue it does).
    """

    key: str
    venue: str | None
    name: str | None = None
    underlying: str | None = None
    counterparty: str | None = None
    system_venue: str | None = None
    max_notional: float | None = None


def covers(scope: Scope, market: Market) -> bool:
    """True if ``scope`` names ``market`` (the firm names every market).

    >>> m = Market(key="BTCUSDT.OKX", venue="okx", name="BTC-USDT", underlying="BTC",
    ...            counterparty="okx")
    >>> [covers(Scope(kind=ScopeKind.UNDERLYING, value="BTC", venue=v), m) for v in (None,
    ...  "okx", "binance")]
    [True, True, False]
    """
    if scope.kind is ScopeKind.FIRM:
        return True
    if scope.kind is ScopeKind.VENUE:
        return market.venue == scope.value
    if scope.kind is ScopeKind.COUNTERPARTY:
        return market.counterparty is not None and market.counterparty == scope.value
    if scope.venue is not None and market.venue != scope.venue:
        return False
    if scope.kind is ScopeKind.UNDERLYING:
        return market.underlying is not None and market.underlying == scope.value
    return market.name is not None and market.name == scope.value


_MAP_KEYS = ("venues", "instruments")
_VENUE_KEYS = ("venue", "counterparty")
_INSTRUMENT_KEYS = ("venue", "name", "id", "underlying", "max_notional")


def _known_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse the first key of ``table`` not in ``known``, naming the one meant.

    >>> try:
    ...     _known_keys({"venue": "OKX", "countreparty": "x"}, _VENUE_KEYS, "venues.okx")
    ... except ConfigError as err:
    ...     print(str(err).split(": ", 1)[0], "(did you mean `counterparty`?)" in str(err))
    venues.okx.countreparty True
    """
    for key in table:
        if key not in known:
            hint = did_you_mean(key, known)
            raise ConfigError(f"{where}.{key}",
                              f"a known key ({', '.join(sorted(known))}){hint}", key)


@dataclass(frozen=True)
class MarketMap:
    """riskguard venue and instrument names to the trading system's (configurable).

    ``venues`` maps a riskguard venue to the system's venue id and its counterparty
    (by default the venue's own name); ``markets`` lists every instrument by its
    system key (a NautilusTrader ``InstrumentId`` string, a CCXT symbol...).
    """

    venues: Mapping[str, str]
    counterparties: Mapping[str, str]
    markets: tuple[Market, ...]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str = "markets") -> MarketMap:
        """Build from the TOML shape ``[venues.<name>] venue, counterparty`` and
        ``[[instruments]] venue, name, id, underlying, max_notional``; raises
        :class:`~riskguard.errors.ConfigError` naming the entry that does not fit, and
        the first unknown key (a typo never passes silently)."""
        _known_keys(doc, _MAP_KEYS, where)
        venues: dict[str, str] = {}
        cps: dict[str, str] = {}
        for name, v in dict(doc.get("venues") or {}).items():
            if not isinstance(v, Mapping) or not isinstance(v.get("venue"), str):
                raise ConfigError(f"{where}.venues.{name}",
                                  'a table with venue = "<system venue id>"', v)
            _known_keys(v, _VENUE_KEYS, f"{where}.venues.{name}")
            venues[name] = v["venue"]
            cps[name] = str(v.get("counterparty") or name)
        markets: list[Market] = []
        for i, row in enumerate(doc.get("instruments") or []):
            at = f"{where}.instruments[{i}]"
            if not isinstance(row, Mapping):
                raise ConfigError(at, "must be a table", row)
            _known_keys(row, _INSTRUMENT_KEYS, at)
            missing = [k for k in ("venue", "name", "id") if not isinstance(row.get(k), str)]
            if missing:
                raise ConfigError(at, f"needs {', '.join(missing)} (strings)", dict(row))
            if row["venue"] not in venues:
                raise ConfigError(f"{at}.venue",
                                  f"a venue under [{where}.venues] (one of {sorted(venues)})",
                                  row["venue"])
            cap = row.get("max_notional")
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float)
                                    or not 0 < cap <= MAX_NOTIONAL):  # False for nan
                raise ConfigError(f"{at}.max_notional", "must be a number above 0, at most "
                                  f"{MAX_NOTIONAL:,.0f}", cap)
            markets.append(Market(
                key=row["id"], venue=row["venue"], name=row["name"],
                underlying=row.get("underlying"), counterparty=cps[row["venue"]],
                system_venue=venues[row["venue"]],
                max_notional=float(cap) if cap is not None else None))
        keys = [m.key for m in markets]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError(f"{where}.instruments", "each id listed once", dup)
        return cls(venues=venues, counterparties=cps, markets=tuple(markets))

    def market(self, key: str, *, system_venue: str | None = None) -> Market:
        """The market of system key ``key``; one not listed is known by its venue only
        (``system_venue``), or by nothing (only a firm scope covers it)."""
        for m in self.markets:
            if m.key == key:
                return m
        venue = next((n for n, v in self.venues.items() if v == system_venue), None)
        return Market(key=key, venue=venue, counterparty=self.counterparties.get(venue or ""),
                      system_venue=system_venue)

    def resolve(self, scope: Scope) -> tuple[list[Market], str | None]:
        """The listed markets ``scope`` names, and why it names nothing (None if it does).

        A venue or counterparty scope must name a configured venue or counterparty (it
        may list no instrument); an underlying or instrument scope must name a listed one.
        """
        found = [m for m in self.markets if covers(scope, m)]
        if scope.kind is ScopeKind.FIRM:
            return found, None
        if scope.kind is ScopeKind.VENUE and scope.value not in self.venues:
            return [], f"venue {scope.value!r} is not in the market map ({sorted(self.venues)})"
        if scope.kind is ScopeKind.COUNTERPARTY and scope.value not in self.counterparties.values():
            return [], (f"counterparty {scope.value!r} is not in the market map "
                        f"({sorted(set(self.counterparties.values()))})")
        if scope.kind in (ScopeKind.UNDERLYING, ScopeKind.INSTRUMENT) and not found:
            return [], f"{scope.label()} names no instrument in the market map"
        return found, None

    def system_venues(self, scope: Scope) -> list[str]:
        """The system venue ids a venue or counterparty scope names (all for the firm)."""
        if scope.kind is ScopeKind.FIRM:
            return sorted(set(self.venues.values()))
        if scope.kind is ScopeKind.VENUE:
            return [self.venues[scope.value]] if scope.value in self.venues else []
        if scope.kind is ScopeKind.COUNTERPARTY:
            return sorted(self.venues[v] for v, cp in self.counterparties.items()
                          if cp == scope.value)
        return []

    def find(self, ref: str) -> Market | None:
        """The one listed market named ``ref`` (``venue/name``, ``name`` when only one venue
        lists it, or a system key); None if there is none or more than one."""
        venue, _, name = ref.rpartition("/")
        hits = [m for m in self.markets
                if m.key == ref or (m.name == name and (not venue or m.venue == venue))]
        return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True, kw_only=True)
class Hold:
    """One action held on one exact scope by one command."""

    action: str
    scope_label: str
    scope: Scope
    command_id: str
    issuer: str
    """Who signed the command (never empty)."""
    state: TradeState | None = None
    factor: float | None = None
    bps: float | None = None


@dataclass
class ScopeBookState:
    """What a :class:`ScopeBook` holds; ``snapshot()`` copies it, ``restore()`` resumes."""

    # scope, action, signer_id(issuer, command id): ids are each signer's own
    holds: dict[tuple[str, str, str], Hold] = field(default_factory=dict)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 1


def _key(hold: Hold) -> tuple[str, str, str]:
    """A hold's key in :attr:`ScopeBookState.holds`: scope, action, and its signer's id."""
    return (hold.scope_label, hold.action, signer_id(hold.issuer, hold.command_id))


HOLDS_FILE_VERSION = 1
"""The version a holds file states; a file stating none or another is refused."""


class _SavedBook(msgspec.Struct, kw_only=True):
    holds: list[Hold]
    applied: dict[str, dict[str, Any]]
    version: int


class ScopeBook:
    """Holds per exact scope, and the states and caps they give each market."""

    MAX_REMEMBERED = 10_000
    """Command ids remembered for idempotence; past it the oldest half is forgotten.
    What the executor must answer by itself is the command it was applying when the
    subscriber stopped or its ack failed (the subscriber commits a command after its
    callback returns): the newest. Every message the subscriber committed is refused
    by its issuer's ``seq`` high-water mark, which it never forgets, so an id forgotten
    here is not executed again, provided commands reach the executor only through
    the subscriber (docs/executors.md)."""
    MAX_SAVED = 256
    """Of those, how many the holds file keeps (the newest: see :attr:`MAX_REMEMBERED`)."""
    MAX_HOLDS_PER_ACTION = 64
    """Holds of one action on one scope by one signer (each stricter than the last, or a
    repeat of a halt the subscriber let through); past it, :meth:`hold` raises
    ``OverflowError``. Another signer's holds never use up this one's room."""

    def __init__(self, state: ScopeBookState | None = None) -> None:
        self.state = state or ScopeBookState()

    def hold(self, action: str, scope: Scope, command_id: str, *, issuer: str,
             factor: float | None = None, bps: float | None = None,
             party: Collection[str] | None = None) -> list[Hold]:
        """Hold ``action`` on exactly ``scope`` for ``command_id``, beside the holds of
        that action there by other commands (each is lifted only by a resume naming it or
        all of them; the strictest applies); returns those others. ``issuer`` is who
        signed the command; ``party`` the signers whose holds share its room (default:
        ``issuer`` alone; the guard's replicas share theirs).

        >>> book, okx = ScopeBook(), Scope(kind=ScopeKind.VENUE, value="okx")
        >>> _ = book.hold("reduce_limits", okx, "a", issuer="desk", factor=0.5)
        >>> [h.command_id for h in book.hold("reduce_limits", okx, "b", issuer="desk",
        ...                                  factor=0.3)]
        ['a']
        >>> _ = book.lift(okx, command_ids=["b"]); [h.factor for h in book.holds()]
        [0.5]
        """
        if action not in HELD_ACTIONS:
            msg = f"{action!r} is not held on a scope (one of {sorted(HELD_ACTIONS)})"
            raise ValueError(msg)
        if not issuer:
            msg = f"a hold of {action} by command {command_id!r} names no issuer"
            raise ValueError(msg)
        label = scope.label()
        key = (label, action, signer_id(issuer, command_id))
        others = [h for k, h in self.state.holds.items()
                  if k[0] == label and k[1] == action and k != key]
        room = frozenset(party) if party is not None else frozenset({issuer})
        own = sum(1 for h in others if h.issuer in room)
        if own >= self.MAX_HOLDS_PER_ACTION:
            msg = (f"{own} commands of {issuer!r} already hold {action} on {label} "
                   f"(at most {self.MAX_HOLDS_PER_ACTION} a signer)")
            raise OverflowError(msg)
        self.state.holds[key] = Hold(
            action=action, scope_label=label, scope=scope, command_id=command_id,
            state=HELD_ACTIONS[action], factor=factor, bps=bps, issuer=issuer)
        return others

    def on(self, label: str, action: str) -> list[Hold]:
        """The holds of ``action`` on exactly the scope labelled ``label``."""
        return [h for (lbl, act, _), h in self.state.holds.items()
                if lbl == label and act == action]

    def at_least_as_strict(self, action: str, scope: Scope, *, factor: float | None = None,
                           bps: float | None = None,
                           issuers: Collection[str] | None = None) -> Hold | None:
        """The hold of ``action`` on exactly ``scope`` that already asks for as much as
        ``factor`` (a ``reduce_limits`` at most it) or ``bps`` (a ``widen_quotes`` at
        least it), if any: a looser value never replaces a stricter one (only a
        ``resume`` lifts a hold). With ``issuers``, only a hold one of them signed
        counts: another signer's is lifted by a resume naming it, which must not lift
        this command's cut with it.

        >>> book = ScopeBook()
        >>> venue = Scope(kind=ScopeKind.VENUE, value="okx")
        >>> _ = book.hold("reduce_limits", venue, "c1", issuer="desk", factor=0.1)
        >>> book.at_least_as_strict("reduce_limits", venue, factor=1.0).command_id
        'c1'
        >>> book.at_least_as_strict("reduce_limits", venue, factor=0.05) is None
        True
        """
        for old in self.on(scope.label(), action):
            if issuers is not None and old.issuer not in issuers:
                continue
            if factor is not None and old.factor is not None and old.factor <= factor:
                return old
            if bps is not None and old.bps is not None and old.bps >= bps:
                return old
        return None

    def lift(self, scope: Scope, *, actions: Iterable[str] = (),
             command_ids: Iterable[str] = ()) -> list[Hold]:
        """Lift holds on exactly ``scope``: those of ``actions`` and of ``command_ids``
        where given, else all of them; returns what it lifted."""
        acts, ids = set(actions), set(command_ids)
        label = scope.label()
        gone = [h for (lbl, _, _), h in self.state.holds.items() if lbl == label
                and resume_lifts(acts, ids, h.action, h.command_id)]
        for h in gone:
            del self.state.holds[_key(h)]
        return gone

    def holds(self, action: str | None = None) -> list[Hold]:
        return [h for h in self.state.holds.values() if action is None or h.action == action]

    def governing(self, market: Market) -> list[Hold]:
        """The trading-state holds covering ``market``, most restrictive first."""
        hits = [h for h in self.state.holds.values()
                if h.state is not None and covers(h.scope, market)]
        return sorted(hits, key=lambda h: (-int(h.state or 0), h.scope_label))

    def state_for(self, market: Market) -> TradeState:
        """The most restrictive state held on any scope covering ``market``."""
        top = self.governing(market)
        if not top or top[0].state is None:
            return TradeState.ACTIVE
        return top[0].state

    def firm_state(self) -> TradeState:
        """The state held on ``firm:*``: the only one that covers every order."""
        return self.state_for(Market(key="", venue=None))

    def factor_for(self, market: Market) -> tuple[float, Hold | None]:
        """The smallest ``reduce_limits`` factor covering ``market`` (1.0 if none)."""
        hits = [h for h in self.holds("reduce_limits")
                if h.factor is not None and covers(h.scope, market)]
        best = min(hits, key=lambda h: (h.factor, h.scope_label), default=None)
        return (best.factor or 1.0, best) if best is not None else (1.0, None)

    def remember(self, issuer: str, command_id: str, outcome: dict[str, Any]) -> None:
        """Record what ``issuer``'s command ``command_id`` did, so a repeat is answered
        without acting. Ids are each signer's own: another key's command carrying the
        same id is not a repeat of it."""
        self.state.applied[signer_id(issuer, command_id)] = outcome
        if len(self.state.applied) > self.MAX_REMEMBERED:
            for old in list(self.state.applied)[: self.MAX_REMEMBERED // 2]:
                del self.state.applied[old]

    def recall(self, issuer: str, command_id: str) -> dict[str, Any] | None:
        return self.state.applied.get(signer_id(issuer, command_id))

    def snapshot(self) -> ScopeBookState:
        return copy.deepcopy(self.state)

    def save(self, path: str | Path) -> None:
        """Write what is held to ``path`` (JSON), atomically and durably: a restarted
        executor must come back holding what it held, not trading freely. Only the
        newest :attr:`MAX_SAVED` remembered commands go with it (the one a restart may
        deliver again is the newest)."""
        st = self.state
        applied = st.applied
        if len(applied) > self.MAX_SAVED:
            newest = itertools.islice(reversed(applied.items()), self.MAX_SAVED)
            applied = dict(reversed(list(newest)))
        data = msgspec.json.encode(_SavedBook(holds=list(st.holds.values()),
                                              applied=applied, version=st.version))
        write_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> ScopeBook:
        """The book saved at ``path`` (an empty one where there is no file yet); a file
        that cannot be read stops the executor rather than starting it with no holds, and
        so does a hold naming no issuer (0.1's holds files do not carry over)."""
        p = Path(path)
        if not p.exists():
            return cls()
        try:
            saved = msgspec.json.decode(p.read_bytes(), type=_SavedBook)
        except (OSError, msgspec.DecodeError) as err:
            raise ConfigError(str(p), "the executor's saved holds (JSON)", str(err)) from None
        if saved.version != HOLDS_FILE_VERSION:
            raise ConfigError(str(p), f"a holds file of version {HOLDS_FILE_VERSION}",
                              f"version {saved.version}")
        unnamed = [f"{h.action} on {h.scope_label} (command {h.command_id})"
                   for h in saved.holds if not h.issuer]
        if unnamed:
            raise ConfigError(str(p), "holds that each name their issuer (a 0.1 holds file "
                              "does not carry over: start the executor and its subscriber "
                              "afresh)", "no issuer on " + "; ".join(unnamed[:5]))
        return cls(ScopeBookState(holds={_key(h): h for h in saved.holds},
                                  applied=saved.applied, version=saved.version))

    @classmethod
    def restore(cls, state: ScopeBookState) -> ScopeBook:
        return cls(copy.deepcopy(state))

