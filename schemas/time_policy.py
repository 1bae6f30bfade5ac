"""Event-time admission at the input boundary: late and future events.

An event is *late* when its ``ts`` is more than ``max_lateness_ns`` behind the
highest ``ts`` already seen on the same source partition (the watermark), and
*future* when it is more than ``max_future_skew_ns`` ahead of the processing
clock. Both become dead letters with their raw bytes and source offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from riskguard.schemas.audit import DeadLetter


@dataclass(frozen=True)
class EventTimePolicy:
    """Admission bounds; ``clock`` gives processing time in ns (None: no future check)."""

    max_lateness_ns: int = 5_000_000_000
    max_future_skew_ns: int = 2_000_000_000
    clock: Callable[[], int] | None = None

    def start(self, max_ts: int = -1) -> PartitionWatermark:
        """A per-partition tracker, resumed at ``max_ts`` if given."""
        return PartitionWatermark(self, max_ts)

    def now(self) -> int | None:
        """The processing time :meth:`PartitionWatermark.check` compares with (None: no
        clock), for a caller that reads it once for a whole fetch."""
        return None if self.clock is None else self.clock()


@dataclass
class PartitionWatermark:
    """Tracks the highest event time seen on one partition."""

    policy: EventTimePolicy
    max_ts: int = field(default=-1)

    def check(self, rec: Any, raw: bytes, topic: str, partition: int, offset: int,
              now: int | None = None) -> Any:
        """Return ``rec`` if admissible, else a ``DeadLetter`` saying why.

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
