"""Bounded keys: the venues, instruments and counterparties the guard keeps state for.

Every market key and counterparty becomes state in several steps, so made-up names from
a feed or trading system would grow it without end. The operator
:func:`~riskguard.operators.core.base.admit_keys`, before the keyed steps of a flow (the
guard's, or one's own), holds them back with :class:`KeyAdmission`: it admits the
names the config lists, and others first come, first admitted, up to ``max_venues``,
``max_instruments_per_venue``, ``max_market_keys`` and ``max_counterparties``. A record
past a cap is a dead letter (``too_many_venues``, ``too_many_instruments``,
``too_many_counterparties``) that never reaches a keyed step; the first refusal of each
cap also raises an ``admission_cap`` alert (critical for counterparties). Its state is
snapshotted, so a resumed guard admits exactly what the stopped one would have.

As every record passes it in order, it also makes the event-time ticks
(:class:`~riskguard.operators.core.clock.EventTicks`) and keeps the last tick's time in
its snapshot: a resumed guard does not tick again a bucket the stopped one ticked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from riskguard.operators.core.clock import EventTicks
from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import source_of
from riskguard.schemas.codec import encode, tag_of
from riskguard.schemas.market import MARKET_TYPES, VenueStatus
from riskguard.schemas.signals import FIRM, RiskAlert, Scope, ScopeKind, Severity
from riskguard.schemas.trading import TRADING_TYPES

Cap = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class AdmissionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[admission]``: how many names the guard admits beyond those its config lists.

    Venues, instruments and counterparties the config names (``features.venues``,
    ``feeds.venues``, ``playbook.venues``, the index and oracle sources,
    ``exposure.instruments`` and its FX indices, ``limits.counterparties``) are always
    admitted. 0 admits none beyond them.
    """

    max_venues: Cap = 32  # venues admitted beyond those the config names
    # instruments admitted beyond those the config names, on each venue
    max_instruments_per_venue: Cap = 256
    # instruments admitted beyond those the config names, over all venues together
    max_market_keys: Cap = 1024
    # counterparties admitted beyond limits.counterparties (a record past a cap is a dead
    # letter, and an admission_cap alert says so)
    max_counterparties: Cap = 256


@dataclass(frozen=True)
class Known:
    """The names the config lists (always admitted)."""

    venues: frozenset[str] = frozenset()
    instruments: frozenset[str] = frozenset()
    counterparties: frozenset[str] = frozenset()


@persisted("riskguard.admission")
@dataclass
class AdmissionState:
    """Names admitted beyond the config (venue -> its instruments; counterparties), how
    many records each cap refused, and the event time of the last tick (-1: none)."""

    venues: dict[str, list[str]] = field(default_factory=dict)
    counterparties: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    alerted: list[str] = field(default_factory=list)  # the caps already alerted
    ticked: int = -1
    version: int = 1


_MARKET = frozenset(MARKET_TYPES)
_FIELD = {"too_many_venues": "venue", "too_many_instruments": "instrument",
          "too_many_counterparties": "counterparty"}
_TRADING = frozenset(TRADING_TYPES)


class KeyAdmission:
    """``on_batch(records) -> records, or a dead letter in place of each refused one``.
    Records of other types pass untouched. With ``ticks``, the batch's ticks follow it
    (made from what passes; ``ticks.untimed`` should name the dead letter and alert
    types)."""

    def __init__(self, config: AdmissionConfig, known: Known, *,
                 state: AdmissionState | None = None, clock: Any = None,
                 ticks: EventTicks | None = None) -> None:
        self.config = config
        self.known = known
        self.clock = clock
        self.state = state if state is not None else AdmissionState()
        self.ticks = ticks
        if ticks is not None and self.state.ticked >= 0:
            ticks.restore(self.state.ticked)
        # derived: the admitted names as sets (the state keeps lists, in admission order)
        self._venues = {v: set(i) for v, i in self.state.venues.items()}
        self._counterparties = set(self.state.counterparties)
        self._keys = sum(len(i) for i in self._venues.values())
        self._extra_venues = sum(1 for v in self._venues if v not in known.venues)

    def snapshot(self) -> AdmissionState:
        st = self.state
        return AdmissionState(venues={v: list(i) for v, i in st.venues.items()},
                              counterparties=list(st.counterparties),
                              refused=dict(st.refused), alerted=list(st.alerted),
                              ticked=st.ticked if self.ticks is None else self.ticks.last_ts,
                              version=st.version)

    def on_event(self, rec: Any) -> list[Any]:
        return self.on_batch([rec])

    def on_batch(self, recs: list[Any]) -> list[Any]:
        out = []
        for rec in recs:
            t = type(rec)
            if t in _MARKET:
                why = self._market(rec)
            elif t in _TRADING:
                why = self._counterparty(rec.counterparty)
            else:
                why = None
            if why is None:
                out.append(rec)
            else:
                out.append(self._dead(rec, *why))
                alert = self._alert(rec, why[0], why[2])
                if alert is not None:
                    out.append(alert)
        if self.ticks is not None:
            out.extend(self.ticks.crossing(out))
        return out

    def _alert(self, rec: Any, reason: str, expected: str) -> RiskAlert | None:
        """The ``admission_cap`` alert of a cap's first refusal (None after it)."""
        venue = getattr(rec, "venue", "")
        key = f"{reason}|{venue}" if reason == "too_many_instruments" else reason
        if key in self.state.alerted:
            return None
        self.state.alerted.append(key)
        ours = reason == "too_many_counterparties"
        scope = (Scope(kind=ScopeKind.VENUE, value=venue)
                 if reason == "too_many_instruments" else FIRM)
        return RiskAlert(
            id=f"admission_cap|{key}", kind="admission_cap", scope=scope, ts=rec.ts,
            severity=Severity.CRITICAL if ours else Severity.WARN,
            reason=f"{reason}: names past the cap are dead letters from here on ({expected})",
            details={"reason": reason, "first_refused": str(getattr(rec, _FIELD[reason], ""))})

    def _market(self, rec: Any) -> tuple[str, str, str] | None:
        venue = rec.venue
        admitted = self._venues.get(venue)
        if admitted is None:
            if venue not in self.known.venues:
                if self._extra_venues >= self.config.max_venues:
                    return ("too_many_venues", "$.venue", f"one of the {self._extra_venues} "
                            f"venues admitted beyond the config (max_venues "
                            f"{self.config.max_venues})")
                self._extra_venues += 1
            admitted = self._venues[venue] = set()
            self.state.venues[venue] = []
        if type(rec) is VenueStatus:
            return None  # a venue's heartbeat: its venue is its key
        inst = rec.instrument
        if inst in admitted or inst in self.known.instruments:
            return None
        cfg = self.config
        if len(admitted) >= cfg.max_instruments_per_venue or self._keys >= cfg.max_market_keys:
            return ("too_many_instruments", "$.instrument",
                    f"one of the instruments admitted beyond the config "
                    f"(max_instruments_per_venue {cfg.max_instruments_per_venue}, "
                    f"max_market_keys {cfg.max_market_keys}; {venue} has {len(admitted)})")
        admitted.add(inst)
        self.state.venues[venue].append(inst)
        self._keys += 1
        return None

    def _counterparty(self, cp: str) -> tuple[str, str, str] | None:
        if cp in self._counterparties or cp in self.known.counterparties:
            return None
        if len(self._counterparties) >= self.config.max_counterparties:
            return ("too_many_counterparties", "$.counterparty",
                    f"one of the {len(self._counterparties)} counterparties admitted beyond "
                    f"the config (max_counterparties {self.config.max_counterparties})")
        self._counterparties.add(cp)
        self.state.counterparties.append(cp)
        return None

    def _dead(self, rec: Any, reason: str, path: str, expected: str) -> DeadLetter:
        refused = self.state.refused
        refused[reason] = refused.get(reason, 0) + 1
        topic, partition, offset = source_of(rec) or (tag_of(type(rec)), -1, -1)
        found = getattr(rec, path[2:], "")
        return DeadLetter.of(topic=topic, partition=partition, offset=offset,
                             ts=self.clock() if self.clock is not None else rec.ts,
                             reason=reason, path=path, expected=expected, found=str(found),
                             step="admit", raw=encode(rec))
