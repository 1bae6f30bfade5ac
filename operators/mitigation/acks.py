"""Whether the playbook's commands were applied: executors' acknowledgements, tracked.

The playbook feeds every verified :class:`~riskguard.schemas.ExecutionAck` and every
command it emits to an :class:`AckTracker`, which turns what goes wrong into alerts: a
required command some executor in ``executors`` has not confirmed within ``timeout_s``
of its ``issued_at`` (processing time), or refused or failed, is a critical
``command_unacknowledged`` (closed by ``command_acknowledged``); a refused or failed
command nothing awaits is ``command_refused``. An ack matches by ``command_id`` or by
``decision_id`` (another replica's copy). The rules: docs/executors.md.

>>> from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind
>>> S = 1_000_000_000
>>> t = AckTracker(AckConfig(executors=("oms",), timeout_s=30))
>>> cmd = MitigationCommand(command_id="c1", issuer="g", issued_at=10 * S,
...     expires_at=99 * S, audience=Audience(env="dev", topic="t"),
...     action=Action.HALT_TRADING, scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="r")
>>> t.sent(cmd)
>>> t.overdue(39 * S, at=39 * S), t.next_due()
([], 40000000000)
>>> [(a.kind, a.severity.value, a.scope.label()) for a in t.overdue(40 * S, at=40 * S)]
[('command_unacknowledged', 'critical', 'venue:okx')]
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import msgspec
from riskguard.schemas import (
    AckOutcome,
    Action,
    ExecutionAck,
    MitigationCommand,
    RiskAlert,
    Scope,
    Severity,
)

from riskguard.errors import ConfigError
from riskguard.validation import PositiveSeconds

S = 1_000_000_000
MAX_AWAITED = 4096
"""Commands awaited at once: past it the oldest already raised as unconfirmed moves to
``forgotten`` (counted as ``forgotten``). Commands not yet raised all stay: they were sent
within ``timeout_s``, which the playbook's rate cap bounds."""
MAX_FORGOTTEN = 4 * MAX_AWAITED
"""Raised commands kept in ``forgotten``, at most: past it the oldest is dropped for good
(counted as ``dropped``), and its scope's alert closes without its confirmation."""
UNACKNOWLEDGED = "command_unacknowledged"
ACKNOWLEDGED = "command_acknowledged"
REFUSED = "command_refused"
_CONFIRMS = frozenset({AckOutcome.APPLIED, AckOutcome.ALREADY_APPLIED})


class AckConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[playbook.acks]``: which executors must confirm which commands, and how soon.

    ``executors`` are the issuer names of the executors' keys (trust-file role
    ``executor``); empty turns the wait off. ``require`` lists the actions that
    must be confirmed; ``timeout_s`` is counted from ``issued_at`` (processing time),
    or from when the command leaves where that is later (a replay sends a rung that
    fell due between two records with the next one).
    """

    executors: tuple[str, ...] = ()
    require: tuple[Action, ...] = (Action.HALT_TRADING, Action.CANCEL_ALL)
    # how long an executor has to confirm a required command, from its issued_at (processing
    # time), before the guard raises command_unacknowledged
    timeout_s: PositiveSeconds = 30.0

    def validate(self, path: str = "playbook.acks") -> None:
        """The checks across values (each value's own are declared on its field)."""
        if len(set(self.executors)) != len(self.executors):
            raise ConfigError(f"{path}.executors", "each executor named once",
                              list(self.executors))


@dataclass
class Awaited:
    """One command waiting for its confirmations."""

    command_id: str
    decision_id: str | None
    action: Action
    scope: Scope
    due: int
    waiting: list[str]
    raised: str = ""  # why its alert was raised ("" while none was)


@dataclass
class AckState:
    """What the tracker remembers (part of the playbook's snapshot)."""

    awaited: dict[str, Awaited] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # raised commands moved out of ``awaited`` past MAX_AWAITED, oldest first: no longer
    # timed, still matched, so a late confirmation closes their scope's alert
    forgotten: dict[str, Awaited] = field(default_factory=dict)

    def copy(self) -> AckState:
        def copied(items: dict[str, Awaited]) -> dict[str, Awaited]:
            return {k: Awaited(a.command_id, a.decision_id, a.action, a.scope, a.due,
                               list(a.waiting), a.raised) for k, a in items.items()}

        return AckState(awaited=copied(self.awaited), counts=dict(self.counts),
                        forgotten=copied(self.forgotten))


class AckTracker:
    """Matches acks to the commands that await them; returns the alerts to raise."""

    def __init__(self, config: AckConfig, state: AckState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else AckState()
        self._required = frozenset(config.require)
        self._timeout = int(config.timeout_s * S)
        self._by_decision = {a.decision_id: k for k, a in self.state.awaited.items()
                             if a.decision_id}
        self._forgotten_by_decision = {a.decision_id: k for k, a in
                                       self.state.forgotten.items() if a.decision_id}
        self._forgotten_on: dict[Scope, int] = {}  # how many forgotten commands, per scope
        for a in self.state.forgotten.values():
            self._forgotten_on[a.scope] = self._forgotten_on.get(a.scope, 0) + 1
        # (due, order sent, command id) of each command not yet raised, soonest first: a
        # look for overdue commands costs nothing until one is due
        self._order = itertools.count()
        self._due = [(a.due, next(self._order), k) for k, a in self.state.awaited.items()
                     if not a.raised]
        heapq.heapify(self._due)
        # each awaited command's place in ``awaited``, and the raised ones by it (oldest
        # first) with their count per scope: making room and closing an alert cost no scan
        self._place = {k: i for i, k in enumerate(self.state.awaited)}
        self._places = itertools.count(len(self._place))
        self._raised = [(self._place[k], k) for k, a in self.state.awaited.items()
                        if a.raised]
        heapq.heapify(self._raised)
        self._raised_on: dict[Scope, int] = {}
        for a in self.state.awaited.values():
            if a.raised:
                self._raised_on[a.scope] = self._raised_on.get(a.scope, 0) + 1

    def _count(self, what: str) -> None:
        self.state.counts[what] = self.state.counts.get(what, 0) + 1

    def sent(self, cmd: MitigationCommand, leaves_at: int | None = None) -> None:
        """The playbook emitted ``cmd``; ``leaves_at``: when it leaves, where that is after
        its ``issued_at`` (a replay meeting a due time between two records issues it at
        that time, and sends it with the later record: no executor could answer before)."""
        self._count("sent")
        if not self.config.executors or cmd.action not in self._required:
            return
        start = cmd.issued_at if leaves_at is None else max(cmd.issued_at, leaves_at)
        awaited = self.state.awaited
        self._unforget(cmd.command_id)  # sent again: awaited afresh
        before = awaited.get(cmd.command_id)
        if before is None:
            if len(awaited) >= MAX_AWAITED:
                self._forget_one()
            self._place[cmd.command_id] = next(self._places)
        elif before.raised:
            self._unraised(before)
        awaited[cmd.command_id] = item = Awaited(
            cmd.command_id, cmd.decision_id, cmd.action, cmd.scope,
            start + self._timeout, list(self.config.executors))
        heapq.heappush(self._due, (item.due, next(self._order), cmd.command_id))
        if len(self._due) > 2 * len(awaited) + 64:  # settled without a look at the heap
            self._due = [(a.due, next(self._order), k) for k, a in awaited.items()
                         if not a.raised]
            heapq.heapify(self._due)
        if cmd.decision_id:
            self._by_decision[cmd.decision_id] = cmd.command_id

    def _raise(self, item: Awaited, why: str) -> None:
        item.raised = why
        self._raised_on[item.scope] = self._raised_on.get(item.scope, 0) + 1
        heapq.heappush(self._raised, (self._place[item.command_id], item.command_id))
        if len(self._raised) > 2 * sum(self._raised_on.values()) + 64:  # settled since
            self._raised = [(self._place[k], k) for k, a in self.state.awaited.items()
                            if a.raised]
            heapq.heapify(self._raised)

    def _unraised(self, item: Awaited) -> None:
        """A raised command leaves ``awaited`` (or is sent again)."""
        left = self._raised_on[item.scope] - 1
        if left:
            self._raised_on[item.scope] = left
        else:
            del self._raised_on[item.scope]

    def _oldest_raised(self) -> str | None:
        awaited, heap = self.state.awaited, self._raised
        while heap:
            place, key = heap[0]
            item = awaited.get(key)
            if item is not None and item.raised and self._place[key] == place:
                return key
            heapq.heappop(heap)  # settled, forgotten or sent again since
        return None

    def _forget_one(self) -> None:
        """Make room: the oldest command already raised as unconfirmed moves to
        ``forgotten`` (none raised: nothing moves)."""
        awaited = self.state.awaited
        key = self._oldest_raised()
        if key is None:
            return
        item = awaited.pop(key)
        del self._place[key]
        self._unraised(item)
        if item.decision_id:
            self._by_decision.pop(item.decision_id, None)
        self._count("forgotten")
        forgotten = self.state.forgotten
        if len(forgotten) >= MAX_FORGOTTEN:
            self._unforget(next(iter(forgotten)))
            self._count("dropped")
        forgotten[key] = item
        self._forgotten_on[item.scope] = self._forgotten_on.get(item.scope, 0) + 1
        if item.decision_id:
            self._forgotten_by_decision[item.decision_id] = key

    def _unforget(self, key: str) -> None:
        item = self.state.forgotten.pop(key, None)
        if item is None:
            return
        left = self._forgotten_on[item.scope] - 1
        if left:
            self._forgotten_on[item.scope] = left
        else:
            del self._forgotten_on[item.scope]
        if item.decision_id:
            self._forgotten_by_decision.pop(item.decision_id, None)

    def _match(self, ack: ExecutionAck) -> Awaited | None:
        """The command ``ack`` answers, awaited or forgotten (by command id, else by
        decision id); None where it names another action or scope: an ack speaks for the
        action and scope it names (the trust file checked the executor may act there)."""
        for items, by_decision in ((self.state.awaited, self._by_decision),
                                   (self.state.forgotten, self._forgotten_by_decision)):
            key = ack.command_id if ack.command_id in items else (
                by_decision.get(ack.decision_id or ""))
            item = items.get(key or "")
            if item is not None:
                return item if ack.action is item.action and ack.scope == item.scope else None
        return None

    def on_ack(self, ack: ExecutionAck, now: int) -> list[RiskAlert]:
        """A verified ack: confirm, or raise what it refused."""
        self._count(ack.outcome.value)
        item = self._match(ack)
        if item is None:
            if ack.outcome in _CONFIRMS:
                return []  # confirms nothing awaited, or a late repeat
            severity = Severity.CRITICAL if ack.action in self._required else Severity.WARN
            return [self._alert(REFUSED, severity, ack.scope, now, ack.command_id,
                                f"{ack.issuer} {ack.outcome.value} {ack.action.value} on "
                                f"{ack.scope.label()}: {ack.reason}", ack)]
        if ack.outcome in _CONFIRMS:
            if ack.issuer in item.waiting:
                item.waiting.remove(ack.issuer)
            if item.waiting:
                return []
            return self._settle(item, now, ack)
        why = f"{ack.issuer} {ack.outcome.value} it: {ack.reason}"
        if item.raised or ack.issuer not in item.waiting:
            return []  # raised already, or from an executor this command does not await
        self._raise(item, ack.outcome.value)
        return [self._alert(UNACKNOWLEDGED, Severity.CRITICAL, item.scope, now,
                            item.command_id, f"{item.action.value} on {item.scope.label()} "
                            f"not applied: {why}", ack)]

    def overdue(self, now: int, at: int) -> list[RiskAlert]:
        """Alerts (at event time ``at``) for commands still unconfirmed ``timeout_s`` after
        they were issued, ``now`` being the processing clock."""
        awaited = self.state.awaited
        due: set[str] = set()
        while self._due and self._due[0][0] <= now:
            when, _order, key = heapq.heappop(self._due)
            item = awaited.get(key)
            if item is not None and not item.raised and item.due == when:
                due.add(key)
        if not due:
            return []
        out = []
        for key in sorted(due, key=self._place.__getitem__):  # in the order sent
            item = awaited[key]
            self._raise(item, "silent")
            self._count("unacknowledged")
            out.append(self._alert(
                UNACKNOWLEDGED, Severity.CRITICAL, item.scope, at, item.command_id,
                f"{item.action.value} on {item.scope.label()} not confirmed within "
                f"{self.config.timeout_s:g}s by {', '.join(item.waiting)}"))
        return out

    def next_due(self) -> int | None:
        """The earliest time an awaited command falls overdue (None: nothing waits)."""
        heap, awaited = self._due, self.state.awaited
        while heap:
            when, _order, key = heap[0]
            item = awaited.get(key)
            if item is not None and not item.raised and item.due == when:
                return when
            heapq.heappop(heap)  # settled, raised or sent again since
        return None

    def _settle(self, item: Awaited, now: int, ack: ExecutionAck) -> list[RiskAlert]:
        if self.state.awaited.get(item.command_id) is item:
            del self.state.awaited[item.command_id]
            del self._place[item.command_id]
            if item.raised:
                self._unraised(item)
            if item.decision_id:
                self._by_decision.pop(item.decision_id, None)
        else:
            self._unforget(item.command_id)
        if not item.raised:
            return []
        # close the scope's alert once nothing on it is still unconfirmed
        if item.scope in self._forgotten_on or item.scope in self._raised_on:
            return []
        return [self._alert(ACKNOWLEDGED, Severity.INFO, item.scope, now, item.command_id,
                            f"{item.action.value} on {item.scope.label()} confirmed", ack)]

    @staticmethod
    def _alert(kind: str, severity: Severity, scope: Scope, now: int, command_id: str,
               reason: str, ack: ExecutionAck | None = None) -> RiskAlert:
        details: dict[str, float | str] = {"command_id": command_id}
        if ack is not None:
            details.update(executor=ack.issuer, outcome=ack.outcome.value)
        return RiskAlert(id=f"{kind}|{command_id}|{ack.issuer if ack else ''}", kind=kind,
                         scope=scope, ts=now, severity=severity, reason=reason[:1000],
                         details=details,
                         evidence_ids=[ack.ack_id] if ack is not None else [])
