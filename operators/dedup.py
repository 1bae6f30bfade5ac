"""Drop records whose id was already seen: the firm tier's guard against re-sent signals.

A detect tier that resumes from its recovery snapshot runs again over the
records it had read after that snapshot, and sends their anomaly signals a
second time (with the same ids: a detector's signal id is derived from its
key, its count and the feature vector's time). The playbook's escalation is
not idempotent, so the firm tier drops every id it has already let through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecentIdsState:
    """Ids let through, oldest first (a dict keeps insertion order)."""

    ids: dict[str, None] = field(default_factory=dict)


class RecentIdsLogic:
    """Let each ``id`` through once among the last ``keep`` ids let through.

    >>> from types import SimpleNamespace as R
    >>> logic = RecentIdsLogic(keep=2)
    >>> [r.id for r in logic.on_batch([R(id="a"), R(id="b"), R(id="a")])]
    ['a', 'b']
    >>> [r.id for r in logic.on_batch([R(id="c"), R(id="a")])]  # "a" fell out of the window
    ['c', 'a']
    """

    def __init__(self, keep: int, state: RecentIdsState | None = None) -> None:
        self.keep = keep
        self.state = state if state is not None else RecentIdsState()

    def snapshot(self) -> RecentIdsState:
        return RecentIdsState(ids=dict(self.state.ids))

    def on_event(self, record: Any) -> list[Any]:
        return self.on_batch([record])

    def on_batch(self, records: list[Any]) -> list[Any]:
        ids, keep = self.state.ids, self.keep
        out = []
        for rec in records:
            if rec.id in ids:
                continue
            ids[rec.id] = None
            if len(ids) > keep:
                del ids[next(iter(ids))]  # the oldest
            out.append(rec)
        return out
