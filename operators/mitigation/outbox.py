"""How the playbook lets a command out: its ids, the rate cap, the ack tracker, the output.

A :class:`CommandOutbox` builds each command the playbook decides (a ``uuid5`` id from
its seed, a decision id over what decided it, the audience, ``issued_at`` and
``expires_at`` from the processing clock), admits it through the command-rate cap
(:class:`~riskguard.operators.mitigation.rate_cap.RateCap`), tells the
:class:`~riskguard.operators.mitigation.acks.AckTracker` it was sent, and collects what
one step of the playbook emits. It reports the commands a rate-cap window held back as
one firm-wide alert. Its own state lasts one step: the output, the receive time of the
record that triggered it, and (while a replay catches up) when the commands leave.

>>> from riskguard.operators.mitigation.acks import AckTracker
>>> from riskguard.operators.mitigation.incidents import PlaybookState
>>> from riskguard.schemas import Scope, ScopeKind
>>> cfg = PlaybookConfig(issuer="guard", max_commands=1)
>>> cap = RateCap(max_commands=1, window_ns=10 * S, state=PlaybookState())
>>> outbox = CommandOutbox(cfg, lambda: 5, cap, AckTracker(cfg.acks))
>>> okx = Scope(kind=ScopeKind.VENUE, value="okx")
>>> first = outbox.command("seed-1", okx, Action.REDUCE_ONLY, {}, "flash crash", [])
>>> outbox.emit(first, capped=True), outbox.emit(
...     outbox.command("seed-2", okx, Action.HALT_TRADING, {}, "worse", []), capped=True)
(True, False)
>>> [(c.action.value, c.issued_at, c.protective_orders_allowed) for c in outbox.out]
[('reduce_only', 5, True)]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeAlias

from riskguard.operators.mitigation.acks import AckTracker
from riskguard.operators.mitigation.rate_cap import HeldBack, RateCap
from riskguard.operators.mitigation.rules import COMMAND_NAMESPACE, PlaybookConfig, S
from riskguard.schemas import (
    FIRM,
    Action,
    Audience,
    DeadLetter,
    MitigationCommand,
    Scope,
    decision_digest,
)
from riskguard.schemas.commands import PROTECTIVE

Output: TypeAlias = MitigationCommand | DeadLetter


class CommandOutbox:
    """Builds the playbook's commands and lets out those the rate cap admits."""

    def __init__(self, config: PlaybookConfig, clock: Callable[[], int], cap: RateCap,
                 acks: AckTracker) -> None:
        self.config = config
        self.clock = clock
        self.cap = cap
        self.acks = acks
        self.out: list[Output] = []  # what the current step emits
        self.recv_ts: int | None = None  # the triggering record's receive time
        self.leaves_at: int | None = None  # while catching up: the clock outside it

    def command(self, seed: str, scope: Scope, action: Action,
                params: dict[str, Any], reason: str, evidence: list[str], *,
                basis: str | None = None,
                decided_by: list[str] | None = None) -> MitigationCommand:
        """A command with id ``uuid5(seed)`` and a decision id over ``basis`` (what
        decided it, without event or wall time; default ``seed``), the action, scope,
        params and the ids of the signals that decided it (``evidence`` digests cover
        receive times, which differ between replicas)."""
        cfg = self.config
        now = self.clock()
        return MitigationCommand(
            command_id=str(uuid.uuid5(COMMAND_NAMESPACE, seed)), issuer=cfg.issuer, seq=0,
            issued_at=now,
            expires_at=now + int(cfg.ttl_s * S),
            audience=Audience(env=cfg.env, topic=cfg.topic), action=action, scope=scope,
            params=params, reason=reason[:4096], evidence_hashes=list(evidence),
            evidence_hash=evidence[-1] if evidence else None,
            protective_orders_allowed=action in PROTECTIVE,
            recv_ts=self.recv_ts,
            decision_id=decision_digest(seed if basis is None else basis, action, scope,
                                        params, decided_by or []),
            replica=cfg.replica or None,
        )

    def emit(self, cmd: MitigationCommand, *, capped: bool) -> bool:
        """Let ``cmd`` out (``capped``: if the rate cap admits it); whether it went."""
        if capped and not self.cap.admit(cmd.command_id, cmd.scope):
            return False
        self.out.append(cmd)
        self.acks.sent(cmd, self.leaves_at)
        return True

    def report_held_back(self, held: HeldBack) -> None:
        """One firm-wide alert for the commands a rate-cap window held back."""
        cfg = self.config
        self.emit(self.command(
            f"rate_cap|{held.window_start}", FIRM, Action.ALERT,
            {"suppressed": float(held.commands), "window_start": float(held.window_start)},
            f"command-rate cap hit: {held.commands} command(s) suppressed in the "
            f"{cfg.rate_window_s:g}s window from {held.window_start} ns "
            f"(max {cfg.max_commands} per venue or scope; {held.keys}); they "
            "are retried while their incidents stay open", []), capped=False)
