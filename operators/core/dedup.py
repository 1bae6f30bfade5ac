"""Drop records whose id was already seen: the firm process's guard against re-sent
signals (a resumed market process re-sends its signals with the same ids, and the
playbook's escalation is not idempotent).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from riskguard.operators.core.snapshot import persisted


class IdWindow:
    """The last ``keep`` ids added to ``ids`` (a plain dict, id -> value, in arrival
    order: the caller's snapshot state), the oldest dropped in O(1): the order is kept in
    a deque beside it, as ``del ids[next(iter(ids))]`` slows as the window grows.

    >>> ids: dict[str, int] = {}
    >>> window = IdWindow(ids, keep=2)
    >>> for n, rid in enumerate(["a", "b", "c"]):
    ...     window.add(rid, n)
    >>> ids, "a" in window
    ({'b': 1, 'c': 2}, False)
    """

    __slots__ = ("_order", "_stale", "ids", "keep")

    def __init__(self, ids: dict[str, Any], keep: int) -> None:
        self.ids = ids
        self.keep = keep
        self._order = deque(ids)
        self._stale: dict[str, int] = {}  # places in the order an id was discarded from

    def _drop_oldest(self) -> None:
        rid = self._order.popleft()
        stale = self._stale.get(rid)
        if stale is None:
            del self.ids[rid]
        elif stale > 1:
            self._stale[rid] = stale - 1
        else:
            del self._stale[rid]

    def __contains__(self, rid: str) -> bool:
        return rid in self.ids

    def add(self, rid: str, value: Any = None) -> None:
        """Remember ``rid`` (not in the window yet), dropping the oldest beyond ``keep``."""
        ids = self.ids
        ids[rid] = value
        self._order.append(rid)
        while len(ids) > self.keep:
            self._drop_oldest()

    def discard(self, rid: str) -> None:
        """Forget ``rid`` before its turn; added again, it takes its new place.

        >>> ids: dict[str, int] = {}
        >>> window = IdWindow(ids, keep=2)
        >>> window.add("a"); window.add("b"); window.discard("a"); window.add("c")
        >>> window.add("a"); window.add("d")
        >>> list(ids)
        ['a', 'd']
        """
        if self.ids.pop(rid, self) is self:
            return
        self._stale[rid] = self._stale.get(rid, 0) + 1
        if len(self._order) > 2 * self.keep:
            self._order = deque(self.ids)
            self._stale.clear()


class Expiries:
    """When each id of ``ids`` (a plain dict, id -> expiry time: the caller's snapshot
    state) expires, soonest first, so the expired are found without a pass over every
    id; stale heap entries are skipped.

    >>> ids = {"a": 5, "b": 9}
    >>> expiries = Expiries(ids)
    >>> ids["c"] = 3; expiries.add("c", 3)
    >>> list(expiries.before(6))
    ['c', 'a']
    """

    __slots__ = ("_heap", "ids")

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids
        self._heap = [(exp, rid) for rid, exp in ids.items()]
        heapq.heapify(self._heap)

    def add(self, rid: str, expires: int) -> None:
        """``rid`` (set in ``ids`` by the caller) expires at ``expires``."""
        heap = self._heap
        heapq.heappush(heap, (expires, rid))
        if len(heap) > 2 * len(self.ids) + 64:
            self._heap = [(exp, rid) for rid, exp in self.ids.items()]
            heapq.heapify(self._heap)

    def before(self, horizon: int) -> Iterator[str]:
        """The ids still in ``ids`` that expire before ``horizon``, soonest first; the
        caller forgets each one as it comes (an id is looked up in ``ids`` just before)."""
        heap, ids = self._heap, self.ids
        while heap and heap[0][0] < horizon:
            exp, rid = heapq.heappop(heap)
            if ids.get(rid) == exp:
                yield rid


MAX_IDS_PER_SIGNER = 16_384
"""Signed ids a :class:`SignedReplays` keeps per signer until they expire."""


class SignedReplays:
    """Replay checks of signed messages, each signer's own: the ids it had accepted until
    they expire (past ``leeway_ns``), its highest ``seq``, and at most ``quota`` ids
    remembered per signer. Past the quota its next message is refused, never an id
    forgotten early, and no key's messages crowd out another's.

    ``seen`` (``signer_id`` -> expiry), ``signers`` (``signer_id`` -> signer) and
    ``high_water`` are the caller's snapshot state; the counts and the expiry order are
    derived. ``numbered_only``: a ``seq`` of 0 (a signer keeping no sequence) passes the
    high-water check, and only the id guards it.

    >>> replays = SignedReplays({}, {}, {}, leeway_ns=0, quota=2)
    >>> replays.remember("alice", "c1", 5, expires_at=10)
    >>> [replays.refusal("alice", rid, seq, now=5) for rid, seq in [("c1", 6), ("c2", 5)]]
    [('id', "'c1' of 'alice' was already accepted"), ('seq', "seq 5 <= high-water 5 of 'alice'")]
    >>> replays.remember("alice", "c2", 6, expires_at=10)
    >>> replays.refusal("alice", "c3", 7, now=5)[0], replays.refusal("alice", "c3", 7, now=11)
    ('quota', None)
    """

    __slots__ = ("_counts", "_expiring", "high_water", "leeway_ns", "numbered_only", "quota",
                 "seen", "signers")

    def __init__(self, seen: dict[str, int], signers: dict[str, str],
                 high_water: dict[str, int], *, leeway_ns: int,
                 quota: int = MAX_IDS_PER_SIGNER, numbered_only: bool = False) -> None:
        self.seen, self.signers, self.high_water = seen, signers, high_water
        self.leeway_ns, self.quota, self.numbered_only = leeway_ns, quota, numbered_only
        self._expiring = Expiries(seen)
        self._counts: dict[str, int] = {}
        for signer in signers.values():
            self._counts[signer] = self._counts.get(signer, 0) + 1

    def refusal(self, signer: str, rid: str, seq: int, now: int) -> tuple[str, str] | None:
        """Why the message ``rid`` of ``signer`` is refused at ``now``: ``("id" | "seq" |
        "quota", detail)``, or None when it is new. Forgets what has expired first."""
        for gone in self._expiring.before(now - self.leeway_ns):
            del self.seen[gone]
            owner = self.signers.pop(gone, "")
            left = self._counts.get(owner, 1) - 1
            if left > 0:
                self._counts[owner] = left
            else:
                self._counts.pop(owner, None)
        if signer_id(signer, rid) in self.seen:
            return "id", f"{rid!r} of {signer!r} was already accepted"
        high = self.high_water.get(signer)
        if high is not None and seq <= high and (seq or not self.numbered_only):
            return "seq", f"seq {seq} <= high-water {high} of {signer!r}"
        mine = self._counts.get(signer, 0)
        if mine >= self.quota:
            return "quota", (f"{mine} messages of {signer!r} accepted and not yet expired "
                             f"(at most {self.quota})")
        return None

    def remember(self, signer: str, rid: str, seq: int, expires_at: int) -> None:
        """The message ``rid`` of ``signer`` was accepted: kept until it expires."""
        key = signer_id(signer, rid)
        self.seen[key] = expires_at
        self.signers[key] = signer
        self._counts[signer] = self._counts.get(signer, 0) + 1
        self._expiring.add(key, expires_at)
        if seq:  # seq 0: the signer keeps no sequence
            self.high_water[signer] = seq


def signer_id(signer: str, rid: str) -> str:
    """How a replay window names a signed message: by its signer and its id, each signer's
    ids its own, so no key can use up another's.

    >>> signer_id("op-alice", "c1")
    'op-alice:c1'
    """
    return f"{signer}:{rid}"


@persisted("riskguard.recent_ids")
@dataclass
class RecentIdsState:
    """Ids let through, oldest first (a dict keeps insertion order)."""

    ids: dict[str, None] = field(default_factory=dict)
    version: int = 1


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
        self._window = IdWindow(self.state.ids, keep)

    def snapshot(self) -> RecentIdsState:
        return RecentIdsState(ids=dict(self.state.ids))

    def on_event(self, record: Any) -> list[Any]:
        return self.on_batch([record])

    def on_batch(self, records: list[Any]) -> list[Any]:
        window = self._window
        out = []
        for rec in records:
            if rec.id not in window:
                window.add(rec.id)
                out.append(rec)
        return out
