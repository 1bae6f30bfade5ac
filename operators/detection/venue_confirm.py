"""A price move confirmed on another venue: a warning made critical.

The move bands judge each market alone. When one venue's market of an asset trips
them (critical) and another venue's market of the same asset, priced in the same
unit (:func:`~riskguard.operators.detection.cross_rates.market_group`), is already
past its own warning band in the same direction, that warning is not one market's
noise: the asset is moving, and the slower venue is a bar or two behind. The
warning episode is escalated to critical, as the band episode it is, and eased back
to a warning once no other venue of the asset is critical that way any more (its own
bands go on judging it; its own close ends it).

A venue alone in its fall does not spread by this rule: a peer that is not at
warning in the same direction stays as it is, and an escalation this rule made
never confirms another (only a market's own bands count as the trip).

:class:`VenueConfirmLogic` runs under one key, over the band signals
(``kind == "price_move"``) of every market, in the order they come (event time with
one detector worker, so it is off by default: :class:`VenueConfirmConfig`); its signals are
``price_move`` signals of the escalated episode (``model == "VenueConfirm"``), their
ids derived from the episode, phase and time.

>>> from riskguard.schemas import AnomalySignal, Contribution, Scope, ScopeKind, Severity
>>> def band(venue, inst, phase, sev, move_bps, ts=1):
...     key = f"{venue}/{inst}"
...     return AnomalySignal(id=f"{key}{ts}{phase}", kind="price_move", phase=phase,
...         key=key, scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue),
...         ts=ts, episode_id=f"{key}#move1", score=1.0, threshold=1.0,
...         severity=Severity(sev), model="MoveBands", model_version="1",
...         top_features=[Contribution(feature="move_1h", value=move_bps, zscore=-3.0)])
>>> logic = VenueConfirmLogic(VenueConfirmConfig())
>>> logic.on_event(band("kraken", "XBTUSD", "open", "warn", -250.0))
[]
>>> [(s.key, s.phase, s.severity.value, s.model)
...  for s in logic.on_event(band("gemini", "BTCUSD", "open", "critical", -720.0, ts=2))]
[('kraken/XBTUSD', 'escalate', 'critical', 'VenueConfirm')]
>>> [(s.key, s.phase, s.severity.value)
...  for s in logic.on_event(band("gemini", "BTCUSD", "close", "critical", -80.0, ts=9))]
[('kraken/XBTUSD', 'deescalate', 'warn')]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.detection.cross_rates import market_group
from riskguard.schemas.signals import AnomalySignal, Contribution, Severity

from riskguard.errors import ConfigError

STATE_VERSION = 1
MODEL = "VenueConfirm"
_NAMESPACE = uuid.UUID("6f3b1c1e-8d0a-4f5e-9d55-3c1d2f0b7a41")


class VenueConfirmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the cross-venue confirmation (``detector.confirm``): off by default.

    It judges the band signals in the order they reach its one key, which is event
    time only when the detector runs on one worker (a backtest, a one-worker guard):
    over several workers, signals of different markets arrive out of step and it can
    confirm on other bars than one worker would.
    """

    enabled: bool = False
    model_version: str = "1"

    def validate(self, where: str = "detector.confirm") -> VenueConfirmConfig:
        if not self.model_version:
            raise ConfigError(f"{where}.model_version", "a version label", self.model_version)
        return self


@dataclass
class VenueConfirmState:
    """Each market's open band episode, as its own last signal left it, and the episodes
    this rule escalated (market key -> episode id)."""

    version: int = STATE_VERSION
    episodes: dict[str, AnomalySignal] = field(default_factory=dict)
    raised: dict[str, str] = field(default_factory=dict)


def _episode(sig: AnomalySignal) -> str:
    return sig.episode_id or sig.id


def _direction(sig: AnomalySignal) -> int:
    """-1 for a fall, 1 for a rise, 0 if the signal does not say (its largest move)."""
    move = sig.top_features[0].value if sig.top_features else 0.0
    return -1 if move < 0 else 1 if move > 0 else 0


class VenueConfirmLogic:
    """Band signals of every market in; escalations and easings of warning episodes out
    (see the module)."""

    def __init__(self, config: VenueConfirmConfig,
                 state: VenueConfirmState | None = None) -> None:
        if state is not None and state.version != STATE_VERSION:
            raise ConfigError("detector.confirm.state.version", str(STATE_VERSION),
                              state.version)
        self.config = config
        self.state = state if state is not None else VenueConfirmState()
        self._groups: dict[str, str | None] = {}

    def snapshot(self) -> VenueConfirmState:
        st = self.state  # signals are immutable: the dicts are copied
        return VenueConfirmState(version=st.version, episodes=dict(st.episodes),
                                 raised=dict(st.raised))

    def on_event(self, sig: Any) -> list[AnomalySignal]:
        if (not isinstance(sig, AnomalySignal) or sig.kind != "price_move"
                or sig.model == MODEL or sig.warming_up):
            return []
        group = self._group(sig.key)
        if group is None:
            return []
        st = self.state
        if sig.phase == "close":
            st.episodes.pop(sig.key, None)
            st.raised.pop(sig.key, None)
        else:
            st.episodes[sig.key] = sig
            if st.raised.get(sig.key) not in (None, _episode(sig)):
                del st.raised[sig.key]  # a new episode: the old one's escalation ended
        return self._judge(group, sig.ts)

    # -- internals ---------------------------------------------------------
    def _group(self, key: str) -> str | None:
        if key not in self._groups:
            self._groups[key] = market_group(key)
        return self._groups[key]

    def _judge(self, group: str, ts: int) -> list[AnomalySignal]:
        """Escalate the group's warning episodes a peer's own trip confirms; ease those
        no peer confirms any more (in key order: the outcome depends on the state)."""
        st = self.state
        members = sorted(k for k in st.episodes if self._group(k) == group)
        trips = [(k, _direction(st.episodes[k])) for k in members
                 if st.episodes[k].severity is Severity.CRITICAL]
        out: list[AnomalySignal] = []
        for key in members:
            own = st.episodes[key]
            d = _direction(own)
            peer = next((k for k, pd in trips if k != key and d and pd == d), None)
            want = own.severity is Severity.WARN and peer is not None
            raised = st.raised.get(key) == _episode(own)
            if want and not raised:
                st.raised[key] = _episode(own)
                out.append(self._signal(own, "escalate", Severity.CRITICAL, ts, peer))
            elif raised and not want:
                del st.raised[key]
                if own.severity is Severity.WARN:
                    out.append(self._signal(own, "deescalate", Severity.WARN, ts, None))
        return out

    def _signal(self, own: AnomalySignal, phase: str, severity: Severity, ts: int,
                peer: str | None) -> AnomalySignal:
        eid = _episode(own)
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
            top_features=top[:4], recv_ts=None)


def venue_confirm_builder(config: VenueConfirmConfig
                          ) -> Callable[[VenueConfirmState | None], VenueConfirmLogic]:
    def build(state: VenueConfirmState | None) -> VenueConfirmLogic:
        return VenueConfirmLogic(config, state)

    return build
