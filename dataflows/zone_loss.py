"""Zone loss: a stress scenario run by two guard replicas, one lost part-way.

None of the lost replica's commands issued after ``zone_loss.lost_at_s`` reach the
executor, which acts on the first copy of each decision (``decision_id``) of the merged
commands, as :class:`~riskguard.connectors.subscriber.CommandSubscriber` does. It passes
only if every decision executed exactly once, the executed mitigations are exactly one
replica's (none lost), and the scenario's own expectations and invariants hold on what
was executed (docs/backtests.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from riskguard.dataflows.stress import (
    NS,
    Check,
    Scenario,
    StressOutcome,
    ZoneLoss,
    backtest_scenario,
    check_run,
    generate_market,
    scenario_outcome,
)
from riskguard.schemas import MitigationCommand


def executed_once(copies: list[MitigationCommand]) -> tuple[list[MitigationCommand], int]:
    """What an executor acts on: the first copy of each decision, in issue order (ties
    by replica); and how many copies it dropped as duplicates.

    >>> from riskguard.schemas import Action, Audience, Scope, ScopeKind
    >>> def copy(replica, at):
    ...     return MitigationCommand(command_id=f"{replica}{at}", issuer=replica, issued_at=at,
    ...         expires_at=at + 1, audience=Audience(env="e", topic="t"),
    ...         action=Action.ALERT, scope=Scope(kind=ScopeKind.VENUE, value="x"), reason="r",
    ...         decision_id="d" * 64, replica=replica)
    >>> done, dropped = executed_once([copy("b", 5), copy("a", 4)])
    >>> [c.replica for c in done], dropped
    (['a'], 1)
    """
    seen: set[str] = set()
    out: list[MitigationCommand] = []
    for c in sorted(copies, key=lambda c: (c.issued_at, c.replica or "")):
        key = c.decision_id or c.command_id
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
    return out, len(copies) - len(out)


def run_zone_loss(sc: Scenario, loss: ZoneLoss, workdir: str | Path, *,
                  playbook: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                  start_ns: int) -> StressOutcome:
    """Run ``sc`` on every replica of ``loss``, lose one, and check what executes."""
    records = generate_market(sc, start_ns)
    runs = {rid: backtest_scenario(sc, records, workdir, playbook=playbook,
                                   replica={"id": rid, "peers": list(loss.replicas)})
            for rid in loss.replicas}
    lost_ns = start_ns + int(loss.lost_at_s * NS)
    arrived = [c for rid, (res, _d) in runs.items() for c in res.commands
               if rid != loss.lost or c.issued_at < lost_ns]
    executed, dropped = executed_once(arrived)
    survivor = next(r for r in loss.replicas if r != loss.lost)
    base, digest = runs[survivor]
    merged = replace(base, commands=executed)
    checks = check_run(sc, merged, start_ns)
    checks.extend(replica_checks(executed, dropped, base.commands, loss))
    return scenario_outcome(sc, merged, checks, digest, start_ns, out_dir, zone_loss={
        "lost": loss.lost, "lost_at_s": loss.lost_at_s, "executed": len(executed),
        "duplicates": dropped})


def replica_checks(executed: list[MitigationCommand], dropped: int,
                    survivor: list[MitigationCommand], loss: ZoneLoss) -> list[Check]:
    """Each decision executed once; every decision of the surviving replica executed, and
    none later than that replica issued it (the time to protection did not grow)."""
    twice = [k for k, n in Counter(c.decision_id for c in executed).items() if n > 1]
    first = {c.decision_id: c.issued_at for c in executed}
    missing = sorted({(c.action.value, c.scope.label()) for c in survivor
                      if c.decision_id not in first})
    late = sorted({(c.action.value, c.scope.label()) for c in survivor
                   if first.get(c.decision_id, c.issued_at) > c.issued_at})
    kept = next(r for r in loss.replicas if r != loss.lost)
    return [
        Check("invariant", "each decision executed once", None, None,
              "FAIL" if twice else "PASS",
              f"{len(twice)} decision(s) executed twice" if twice else
              f"{len(executed)} executed, {dropped} copies dropped as duplicates"),
        Check("invariant", f"no protection lost when replica {loss.lost} went", None, None,
              "FAIL" if missing or late else "PASS",
              f"not executed: {missing[:4]}; executed later: {late[:4]}" if missing or late
              else f"every decision of replica {kept} executed, none later than it was "
                   "issued"),
    ]
