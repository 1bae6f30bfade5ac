"""A venue's heartbeat on one feed, from what its websocket connections are doing.

cryptofeed has no connect or disconnect callback: its connection handler reconnects
by itself and only logs. So the bridge looks at the connections at every heartbeat
(their state, a number that grows at each reconnect, the time of their newest
message) and :class:`VenueHealth` turns what it sees into one
:class:`~riskguard.schemas.VenueStatus` per heartbeat:

- ``down``: a connection is closed (reconnecting, or never connected yet), or it was
  lost and re-made since the last heartbeat (the gap is real even if it was short:
  messages sent in it were missed);
- ``degraded``: every connection is open, but one has carried no message for longer
  than ``silence_ns`` (counted from its connect when it has had none);
- ``ok``: every connection is open and has carried a message within ``silence_ns``
  (or connected less than ``silence_ns`` ago).

The guard fails a venue over to its backup feed on ``down`` or on a heartbeat gap
(``max_gap_ns``, :mod:`riskguard.operators.mitigation.feeds`); ``degraded`` is a
warning only. Time comes from the caller (``now_ns``): the logic reads no clock.

>>> h = VenueHealth("binance", "primary", silence_ns=10)
>>> up = lambda session, last: ConnectionSeen(open=True, session=session,
...                                         last_message_ns=last, opened_ns=0)
>>> [h.on_check(t, [c]).state.value for t, c in (
...     (1, up(1, None)), (5, up(1, 4)), (20, up(1, 4)), (21, up(2, 21)), (22, up(2, 22)))]
['ok', 'ok', 'degraded', 'down', 'ok']
>>> h.on_check(23, [ConnectionSeen(open=False, session=2)]).state.value
'down'
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from riskguard.operators.core.snapshot import persisted
from riskguard.schemas.market import VenueState, VenueStatus


@dataclass(frozen=True)
class ConnectionSeen:
    """One websocket connection at a heartbeat.

    ``session`` grows by one at each (re)connect; ``last_message_ns`` is when its newest
    message of this session arrived, ``opened_ns`` when this session began (None: unknown).
    """

    open: bool
    session: int = 0
    last_message_ns: int | None = None
    opened_ns: int | None = None


@persisted("riskguard.venue_health")
@dataclass
class HealthState:
    """What :class:`VenueHealth` remembers between heartbeats; plain data."""

    version: int = 1
    seq: int = 0
    # per connection, at the last heartbeat: [session, open (0/1)]
    seen: list[list[int]] = field(default_factory=list)
    last_state: str = ""


class VenueHealth:
    """One venue's heartbeat on one feed (``primary`` or ``backup``)."""

    def __init__(self, venue: str, feed: str, *, silence_ns: int,
                 state: HealthState | None = None) -> None:
        self.venue = venue
        self.feed = feed
        self.silence_ns = silence_ns
        self.s = state or HealthState()

    def state_of(self, now_ns: int, conns: Sequence[ConnectionSeen]) -> VenueState:
        """The venue's state now, given its connections (remembers nothing)."""
        if not conns or not all(c.open for c in conns):
            return VenueState.DOWN
        seen = self.s.seen if len(self.s.seen) == len(conns) else [[c.session, 1] for c in conns]
        if any(was_open and c.session != session for (session, was_open), c in zip(seen, conns,
                                                                                   strict=True)):
            return VenueState.DOWN  # lost and re-made between two heartbeats
        for c in conns:
            since = c.last_message_ns if c.last_message_ns is not None else c.opened_ns
            if since is not None and now_ns - since > self.silence_ns:
                return VenueState.DEGRADED
        return VenueState.OK

    def on_check(self, now_ns: int, conns: Sequence[ConnectionSeen]) -> VenueStatus:
        """The heartbeat at ``now_ns``."""
        state = self.state_of(now_ns, conns)
        s = self.s
        s.seen = [[c.session, int(c.open)] for c in conns]
        s.last_state = state.value
        s.seq += 1
        return VenueStatus(id=f"{self.venue}:{self.feed}:hb:{now_ns}", venue=self.venue,
                           ts=now_ns, recv_ts=now_ns, feed=self.feed, state=state, seq=s.seq)

    def snapshot(self) -> HealthState:
        return copy.deepcopy(self.s)
