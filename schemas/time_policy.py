"""Event-time admission at the input boundary: late, future and ahead events.

An event is *late* when its ``ts`` is more than ``max_lateness_ns`` behind the
highest ``ts`` already seen on the same source partition (the watermark), and
*future* when it is more than ``max_future_skew_ns`` ahead of the processing
clock. Both become dead letters with their raw bytes and source offset.

An event more than ``max_lead_ns`` ahead of the watermark (or a partition's first) is
held until the partition's next event with a time judges it: if that one is more than
``max_lead_ns`` behind it, the held event was a lone bad timestamp, an *ahead* dead
letter, and the watermark never moved to it (else every genuine event after it would
be late). Otherwise it was a genuine jump, and is admitted before the next. A caller
lets a held event go (admitted) where no next event can judge it: at the partition's
end, and after :data:`MAX_BEHIND` dead letters wait behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from riskguard.schemas.audit import DeadLetter

NS = 1_000_000_000
MAX_LEAD_NS = 60 * NS
"""How far ahead of its partition's watermark an event may be without waiting for the
next one to confirm it (:class:`EventTimePolicy`)."""
MAX_BEHIND = 16
"""Messages that are no event with a time (dead letters) a held event waits behind for
one that is, before it is admitted: a burst of bad input does not hold it for ever."""


class _Held:
    def __repr__(self) -> str:
        return "HELD"


HELD: Final = _Held()
"""What :meth:`PartitionWatermark.check` returns for an event it holds."""


@dataclass(frozen=True)
class EventTimePolicy:
    """Admission bounds; ``clock`` gives processing time in ns (None: no future check);
    ``max_lead_ns``: 0 holds no event."""

    max_lateness_ns: int = 5_000_000_000
    max_future_skew_ns: int = 2_000_000_000
    clock: Callable[[], int] | None = None
    max_lead_ns: int = MAX_LEAD_NS

    def start(self, max_ts: int = -1) -> PartitionWatermark:
        """A per-partition tracker, resumed at ``max_ts`` if given."""
        return PartitionWatermark(self, max_ts)

    def now(self) -> int | None:
        """The processing time :meth:`PartitionWatermark.check` compares with (None: no
        clock), for a caller that reads it once for a whole fetch."""
        return None if self.clock is None else self.clock()


class Held(NamedTuple):
    """An event far ahead, waiting for the partition's next to judge it."""

    rec: Any
    raw: bytes
    topic: str
    partition: int
    offset: int


@dataclass
class PartitionWatermark:
    """Tracks the highest event time seen on one partition, and the event held far
    ahead of it (``held``). Once the next event judges the held one, its verdict (the
    event, or its ``ahead`` dead letter) and offset wait in ``judged`` for the caller to
    emit before the next: :meth:`take_judged`."""

    policy: EventTimePolicy
    max_ts: int = field(default=-1)
    held: Held | None = None
    behind: int = 0  # messages without a time read since ``held``
    judged: tuple[Any, int] | None = None

    def check(self, rec: Any, raw: bytes, topic: str, partition: int, offset: int,
              now: int | None = None) -> Any:
        """Return ``rec`` if admissible, a ``DeadLetter`` saying why not, or
        :data:`HELD`.

        ``now``: the processing time, when the caller read the policy's clock once for a
        whole fetch (default: read it here)."""
        ts = getattr(rec, "ts", None)
        if ts is None:
            return rec
        p = self.policy
        if p.clock is not None:
            if now is None:
                now = p.clock()
            if ts > now + p.max_future_skew_ns:
                return DeadLetter.of(
                    topic=topic, partition=partition, offset=offset, ts=now, reason="future",
                    path="$.ts", expected=f"ts <= {now + p.max_future_skew_ns}", found=str(ts),
                    raw=raw,
                )
        if self.held is not None:
            self.judged = self._judge(ts, now)
        if p.max_lead_ns and (self.max_ts < 0 or ts > self.max_ts + p.max_lead_ns):
            self.held = Held(rec, raw, topic, partition, offset)
            return HELD
        if self.max_ts >= 0 and ts < self.max_ts - p.max_lateness_ns:
            return DeadLetter.of(
                topic=topic, partition=partition, offset=offset,
                ts=now if now is not None else self.max_ts, reason="late",
                path="$.ts", expected=f"ts >= {self.max_ts - p.max_lateness_ns}", found=str(ts),
                raw=raw,
            )
        if ts > self.max_ts:  # noqa: PLR1730 - cheaper than max() per record
            self.max_ts = ts
        return rec

    def take_judged(self) -> tuple[Any, int]:
        """The held event's verdict and offset, once judged (then forgotten)."""
        judged = self.judged
        assert judged is not None
        self.judged = None
        return judged

    def release(self) -> tuple[Any, int] | None:
        """The held event, admitted (no next event can judge it), and its offset; None
        when none is held."""
        held = self.held
        if held is None:
            return None
        self.held, self.behind = None, 0
        self.max_ts = max(self.max_ts, held.rec.ts)
        return held.rec, held.offset

    def wait_behind(self) -> bool:
        """A message without a time came after the held event: whether the held event has
        now waited behind :data:`MAX_BEHIND` of them (and is to be let go)."""
        self.behind += 1
        return self.behind >= MAX_BEHIND

    def _judge(self, nxt: int, now: int | None) -> tuple[Any, int]:
        held = self.held
        assert held is not None
        self.held, self.behind = None, 0
        lead, ts = self.policy.max_lead_ns, held.rec.ts
        if nxt >= ts - lead:  # the next goes on from it: a genuine jump
            self.max_ts = max(self.max_ts, ts)
            return held.rec, held.offset
        known = self.max_ts
        since = f"the partition's watermark {known} and " if known >= 0 else ""
        return DeadLetter.of(
            topic=held.topic, partition=held.partition, offset=held.offset,
            ts=now if now is not None else max(known, nxt), reason="ahead", path="$.ts",
            expected=f"ts <= {max(known, nxt) + lead} (at most {lead} ns ahead of the "
                     "records around it)", found=str(ts), raw=held.raw,
            detail=f"a lone time more than {lead} ns ahead of {since}the next record's {nxt}",
        ), held.offset
