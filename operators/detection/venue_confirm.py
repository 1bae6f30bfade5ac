"""A price move confirmed on another venue: a warning made critical.

When one venue's market of an asset trips its move bands (critical) and another venue's
market of the same group (:func:`~riskguard.operators.detection.cross_rates.market_group`)
is already past its own warning band in the same direction, that warning episode is
escalated to critical, and eased back to a warning once no trip confirms it. Only a
market's own bands count as a trip.

:class:`VenueConfirmLogic` runs per market group (:func:`confirm_key`) over the band
signals of its markets and each market's :class:`MarketProgress`. Signals wait until
every market of the group has passed their time and are judged in ``(ts, market)``
order, so any number of workers, batch sizes or a resumed run confirm the same
episodes; a group waits ``join_s`` after first hearing from a market, and a market
silent for ``TICK_IDLE_NS`` stops holding it back. Details: docs/detectors.md
("Cross-venue confirmation").

>>> from riskguard.schemas import AnomalySignal, Contribution, Scope, ScopeKind, Severity
>>> def band(venue, inst, phase, sev, move_bps, ts=1):
...     key = f"{venue}/{inst}"
...     return AnomalySignal(id=f"{key}{ts}{phase}", kind="price_move", phase=phase,
...         key=key, scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue),
...         ts=ts, episode_id=f"{key}#move1", score=1.0, threshold=1.0,
...         severity=Severity(sev), model="MoveBands", model_version="1",
...         top_features=[Contribution(feature="move_1h", value=move_bps, zscore=-3.0)])
>>> logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0)
>>> def progress(ts, *markets):
...     return [s for m in markets for s in logic.on_event(MarketProgress(ts=ts, market=m))]
>>> logic.on_event(band("kraken", "XBTUSD", "open", "warn", -250.0))
[]
>>> progress(1, "kraken/XBTUSD", "gemini/BTCUSD")
[]
>>> logic.on_event(band("gemini", "BTCUSD", "open", "critical", -720.0, ts=2))
[]
>>> progress(2, "gemini/BTCUSD")  # kraken has not passed ts 2 yet
[]
>>> [(s.key, s.phase, s.severity.value, s.model)
...  for s in logic.on_event(MarketProgress(ts=2, market="kraken/XBTUSD"))]
[('kraken/XBTUSD', 'escalate', 'critical', 'VenueConfirm')]
>>> logic.on_event(band("gemini", "BTCUSD", "close", "critical", -80.0, ts=9))
[]
>>> [(s.key, s.phase, s.severity.value) for s in logic.on_eof()]
[('kraken/XBTUSD', 'deescalate', 'warn')]
"""

from __future__ import annotations

import functools
import heapq
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from riskguard.operators.core.clock import NS_PER_S, TICK_IDLE_NS, Watermark
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.detection.cross_rates import market_group
from riskguard.schemas.signals import AnomalySignal, Contribution, Severity

from riskguard.errors import ConfigError
from riskguard.validation import Seconds, check_declared

STATE_VERSION = 2
MODEL = "VenueConfirm"
_NAMESPACE = uuid.UUID("6f3b1c1e-8d0a-4f5e-9d55-3c1d2f0b7a41")


class VenueConfirmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the cross-venue confirmation (``detector.confirm``)."""

    enabled: bool = True
    # after it first hears from a market (at start, and after a restart), a group waits
    # this long (clock time) before judging, so every market's first batch is in
    join_s: Seconds = 10.0
    model_version: Annotated[str, msgspec.Meta(min_length=1)] = "1"

    def validate(self, where: str = "detector.confirm") -> VenueConfirmConfig:
        """Raise ``ConfigError`` naming the key of the first bad value."""
        check_declared(self, where)
        return self


class MarketProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A market's detector has sent every signal of event time ``ts`` and before."""

    ts: int
    market: str


@functools.lru_cache(maxsize=65_536)
def confirm_key(market: str) -> str | None:
    """The key a market's band signals and progress are judged under (its group's), or
    None for a market no group takes.

    >>> confirm_key("kraken/XBTUSD"), confirm_key("binance/BTCUSDT"), confirm_key("x/?")
    ('confirm/BTC/USD', 'confirm/BTC/USD', None)
    """
    group = market_group(market)
    return None if group is None else f"confirm/{group}"


@persisted("riskguard.venue_confirm")
@dataclass
class VenueConfirmState:
    """Each market's open band episode, as its own last signal left it, the episodes this
    rule escalated (market key -> episode id), the signals waiting for every market's
    progress, and that progress."""

    version: int = STATE_VERSION
    episodes: dict[str, AnomalySignal] = field(default_factory=dict)
    raised: dict[str, str] = field(default_factory=dict)
    # (ts, market key, arrival number, signal): a heap
    held: list[tuple[int, str, int, AnomalySignal]] = field(default_factory=list)
    arrivals: int = 0
    judged_ts: int = -1  # every signal at or before this has been judged
    sources: dict[str, list[int]] = field(default_factory=dict)
    late: int = 0


def _direction(sig: AnomalySignal) -> int:
    """-1 for a fall, 1 for a rise, 0 if the signal does not say (its largest move)."""
    move = sig.top_features[0].value if sig.top_features else 0.0
    return -1 if move < 0 else 1 if move > 0 else 0


def _is_band(sig: Any) -> bool:
    return (type(sig) is AnomalySignal and sig.kind == "price_move" and sig.model != MODEL
            and not sig.warming_up)


class VenueConfirmLogic:
    """``on_event(AnomalySignal | MarketProgress) -> [AnomalySignal]`` for one market
    group: escalations and easings of warning episodes (see the module)."""

    def __init__(self, config: VenueConfirmConfig, clock: Callable[[], int],
                 state: VenueConfirmState | None = None,
                 on_reorder: Callable[[str, int], None] | None = None) -> None:
        if state is not None and state.version != STATE_VERSION:
            raise ConfigError("detector.confirm.state.version", str(STATE_VERSION),
                              state.version)
        self.config = config
        self.clock = clock
        # told ("late", 1) for each signal judged after its group's time passed it
        self.on_reorder = on_reorder
        self.state = state if state is not None else VenueConfirmState()
        self._watermark = Watermark.resume(self.state.sources, TICK_IDLE_NS)
        self._join_ns = int(config.join_s * NS_PER_S)
        self._joined_at: int | None = None  # not kept: a restart waits for its markets again

    def snapshot(self) -> VenueConfirmState:
        st = self.state  # signals are immutable: the containers are copied
        return VenueConfirmState(
            version=st.version, episodes=dict(st.episodes), raised=dict(st.raised),
            held=list(st.held), arrivals=st.arrivals, judged_ts=st.judged_ts,
            sources={k: list(v) for k, v in st.sources.items()}, late=st.late)

    def on_batch(self, items: list[Any]) -> list[AnomalySignal]:
        """A batch's signals are all taken in before its progress moves time: the markets
        a batch brings join before any of them passes a signal."""
        out: list[AnomalySignal] = []
        progress: list[MarketProgress] = []
        for item in items:
            if type(item) is MarketProgress:
                progress.append(item)
            else:
                out.extend(self._take(item))
        if progress:
            now = self.clock()
            if self._joined_at is None:
                self._joined_at = now
            update = self._watermark.update
            wm = -1
            for p in progress:
                wm = update(p.market, p.ts, now)
            if now - self._joined_at >= self._join_ns:
                out.extend(self._judge_through(wm))
        return out

    def on_event(self, item: Any) -> list[AnomalySignal]:
        return self.on_batch([item])

    def _take(self, item: Any) -> list[AnomalySignal]:
        st = self.state
        if not _is_band(item) or confirm_key(item.key) is None:
            return []
        if item.ts <= st.judged_ts:
            st.late += 1  # its time was judged without it: it counts from now
            if self.on_reorder is not None:
                self.on_reorder("late", 1)
            return self._apply(item)
        st.arrivals += 1
        heapq.heappush(st.held, (item.ts, item.key, st.arrivals, item))
        return []

    def on_eof(self) -> list[AnomalySignal]:
        """End of input: judge every signal still waiting."""
        held = self.state.held
        return self._judge_through(max(h[0] for h in held)) if held else []

    def _judge_through(self, wm: int) -> list[AnomalySignal]:
        """Judge the held signals up to ``wm``, one event time at a time: all of a time's
        signals are taken in before it is judged (markets on one bar move together)."""
        st = self.state
        held = st.held
        out: list[AnomalySignal] = []
        while held and held[0][0] <= wm:
            ts = held[0][0]
            groups: set[str] = set()
            while held and held[0][0] == ts:
                sig = heapq.heappop(held)[3]
                self._take_in(sig)
                groups.add(confirm_key(sig.key) or "")
            for group in sorted(groups):
                out.extend(self._judge(group, ts))
        st.judged_ts = max(st.judged_ts, wm)
        return out

    def _apply(self, sig: AnomalySignal) -> list[AnomalySignal]:
        self._take_in(sig)
        return self._judge(confirm_key(sig.key) or "", sig.ts)

    def _take_in(self, sig: AnomalySignal) -> None:
        """A market's own signal: its episode as the signal leaves it."""
        st = self.state
        if sig.phase == "close":
            st.episodes.pop(sig.key, None)
            st.raised.pop(sig.key, None)
        else:
            st.episodes[sig.key] = sig
            if st.raised.get(sig.key) not in (None, sig.episode):
                del st.raised[sig.key]  # a new episode: the old one's escalation ended

    def _judge(self, group: str, ts: int) -> list[AnomalySignal]:
        """Escalate the group's warning episodes a peer's own trip confirms; ease those no
        peer confirms any more (in key order: the outcome depends on the state)."""
        st = self.state
        members = sorted(k for k in st.episodes if confirm_key(k) == group)
        trips = [(k, _direction(st.episodes[k])) for k in members
                 if st.episodes[k].severity is Severity.CRITICAL]
        out: list[AnomalySignal] = []
        for key in members:
            own = st.episodes[key]
            d = _direction(own)
            venue = key.partition("/")[0]
            # a trip on the market's own venue (another quote of it) confirms nothing
            peer = next((k for k, pd in trips
                         if d and pd == d and k.partition("/")[0] != venue), None)
            want = own.severity is Severity.WARN and peer is not None
            raised = st.raised.get(key) == own.episode
            if want and not raised:
                st.raised[key] = own.episode
                out.append(self._signal(own, "escalate", Severity.CRITICAL, ts, peer))
            elif raised and not want:
                del st.raised[key]
                if own.severity is Severity.WARN:
                    out.append(self._signal(own, "deescalate", Severity.WARN, ts, None))
        return out

    def _signal(self, own: AnomalySignal, phase: str, severity: Severity, ts: int,
                peer: str | None) -> AnomalySignal:
        eid = own.episode
        top = list(own.top_features)
        if peer is not None:
            trip = self.state.episodes[peer]
            move = trip.top_features[0] if trip.top_features else None
            top = [Contribution(feature=f"tripped_on_{peer.partition('/')[0]}",
                                value=move.value if move else 0.0,
                                zscore=move.zscore if move else 0.0), *top]
        return msgspec.structs.replace(
            own, id=str(uuid.uuid5(_NAMESPACE, f"{eid}:{phase}:{ts}")), phase=phase, ts=ts,
            severity=severity, model=MODEL, model_version=self.config.model_version,
            top_features=top[:4], recv_ts=None,
            rule="confirmation" if severity is Severity.CRITICAL and phase == "escalate"
            else None)


def venue_confirm_builder(config: VenueConfirmConfig, clock: Callable[[], int],
                          on_reorder: Callable[[str, int], None] | None = None,
                          ) -> Callable[[VenueConfirmState | None], VenueConfirmLogic]:
    """``builder(state_or_None) -> VenueConfirmLogic`` for ``stateful_logic``."""
    config.validate()

    def build(state: VenueConfirmState | None) -> VenueConfirmLogic:
        return VenueConfirmLogic(config, clock, state, on_reorder)

    return build
