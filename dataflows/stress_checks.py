"""The checks of a stress run: each expected mitigation in time, each forbidden command
not issued, and the safe-state invariants (no reroute into a venue known bad, and
whatever is still bad at the end is under protection).

>>> Check("alert", "venue:okx", 60.0, 2.5, "PASS", "venue:okx: ...").as_dict()["result"]
'PASS'
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from riskguard.dataflows.report import STATE_ORDER, state_timeline, states_at
from riskguard.schemas import Action, LimitBreach, LimitLevel, MitigationCommand, RiskAlert

if TYPE_CHECKING:
    from riskguard.dataflows.backtest import BacktestResult
    from riskguard.dataflows.stress import Scenario, Shock

NS = 1_000_000_000
START_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
PROTECTIVE = frozenset({"reduce_only", "reroute_order_flow", "cancel_all", "halt_trading"})
_RANK = {s: i for i, s in enumerate(STATE_ORDER)}


@dataclass
class Check:
    action: str
    scope: str
    deadline_s: float | None
    actual_s: float | None
    result: str  # PASS | FAIL | GAP
    detail: str
    never: bool = False  # a forbidden command: PASS when it was not issued

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "scope": self.scope, "deadline_s": self.deadline_s,
                "actual_s": self.actual_s, "result": self.result, "detail": self.detail}


def _bad_intervals(signals: Iterable[Any]) -> dict[str, list[tuple[int, int | None, str]]]:
    """Per venue: when the guard knew it was unhealthy (heartbeat) or breached."""
    out: dict[str, list[tuple[int, int | None, str]]] = {}
    open_: dict[tuple[str, str], int] = {}
    for s in sorted(signals, key=lambda s: s.ts):
        if isinstance(s, RiskAlert) and s.kind in ("heartbeat_loss", "heartbeat_restored"):
            key = (s.scope.value, "heartbeat_loss")
            on = s.kind == "heartbeat_loss"
        elif isinstance(s, LimitBreach) and s.scope.kind.value in ("venue", "counterparty"):
            key = (s.scope.value, f"breach {s.limit_path}")
            on = s.level in (LimitLevel.BREACH, LimitLevel.HARD)
        else:
            continue
        if on and key not in open_:
            open_[key] = s.ts
        elif not on and key in open_:
            out.setdefault(key[0], []).append((open_.pop(key), s.ts, key[1]))
    for (v, why), t in open_.items():
        out.setdefault(v, []).append((t, None, why))
    return out


def check_run(sc: Scenario, res: BacktestResult, start_ns: int = START_NS,
              shocks: tuple[Shock, ...] | None = None, tolerance_ns: int = 2 * NS
              ) -> list[Check]:
    """Expected mitigations, forbidden commands and the safe-state invariants."""
    shocks = shocks if shocks is not None else sc.shocks
    cmds = sorted(res.commands, key=lambda c: c.issued_at)
    checks: list[Check] = []
    if res.n_events == 0:  # nothing ran: no check below means anything
        checks.append(Check("invariant", "the guard saw events", None, None, "FAIL",
                            "the scenario produced no events"))
    # a shock that makes invalid records tests nothing; a latency shock's records may
    # come late, as it means them to
    latency = any(s.kind == "latency" for s in shocks)
    dead = {k: n for k, n in sorted(res.dead_letter_counts.items())
            if not (latency and k == "late")}
    if dead:
        reasons = ", ".join(f"{k} {v:,}" for k, v in dead.items())
        checks.append(Check("invariant", "every generated record accepted", None, None, "FAIL",
                            f"{sum(dead.values()):,} dead letter(s) ({reasons}): the guard "
                            "never saw those records, so the checks below test less than "
                            "the scenario says"))
    for e in sc.expect:
        match = [c for c in cmds if c.action.value == e.action
                 and fnmatch.fnmatchcase(c.scope.label(), e.scope)]
        if e.never:
            checks.append(Check(e.action, e.scope, None, None,
                                "FAIL" if match else "PASS",
                                _forbidden(match[0], start_ns) if match else "never issued",
                                never=True))
            continue
        ref = start_ns + int(shocks[e.shock].onset_s * NS)
        after = [c for c in match if c.issued_at >= ref]
        deadline = None if math.isinf(e.within_s) else e.within_s
        if after:
            c = after[0]
            actual = round((c.issued_at - ref) / NS, 3)
            ok = actual <= e.within_s
            detail = f"{c.scope.label()}: {c.reason[:160]}"
            if not ok:
                detail = f"too late ({actual:.1f}s > {e.within_s:g}s); " + detail
        else:
            actual, ok = None, False
            seen = sorted({(c.action.value, c.scope.label()) for c in cmds if c.issued_at >= ref})
            detail = (f"no {e.action} on {e.scope} after shock {e.shock} onset; commands "
                      f"issued after it: {seen[:8] or 'none'}")
        result = "PASS" if ok else ("GAP" if e.known_gap else "FAIL")
        if e.known_gap and not ok:
            detail = f"known gap: {e.known_gap}; {detail}"
        checks.append(Check(e.action, e.scope, deadline, actual, result, detail))
    checks.extend(_invariants(sc, res, cmds, start_ns, tolerance_ns))
    return checks


def _forbidden(c: MitigationCommand, start_ns: int) -> str:
    return f"forbidden but issued at t+{(c.issued_at - start_ns) / NS:.1f}s: {c.reason[:160]}"


def _invariants(sc: Scenario, res: BacktestResult, cmds: list[MitigationCommand],
                start_ns: int, tol: int) -> list[Check]:
    bad = _bad_intervals(res.signals)
    timeline = state_timeline(cmds)
    out = []
    # 1. Never reroute into a venue known to be unhealthy, breached, or itself mitigated.
    violations = []
    for c in cmds:
        if c.action is not Action.REROUTE_ORDER_FLOW:
            continue
        targets = c.params.get("targets", [])
        known = c.issued_at - tol
        states = states_at(timeline, known)
        for t in targets if isinstance(targets, list) else []:
            for a, b, why in bad.get(t, []):
                if a <= known and (b is None or b > c.issued_at):
                    violations.append(f"t+{(c.issued_at - start_ns) / NS:.1f}s reroute from "
                                      f"{c.scope.value} to {t} while {t} had {why}")
            st = max((states.get(f"venue:{t}", "normal"),
                      states.get(f"counterparty:{t}", "normal")), key=lambda s: _RANK[s])
            if st in ("halt_trading", "cancel_all", "reroute_order_flow"):
                violations.append(f"t+{(c.issued_at - start_ns) / NS:.1f}s reroute from "
                                  f"{c.scope.value} to {t} while {t} was under {st}")
    out.append(Check("invariant", "no reroute into a breached or unhealthy venue", None, None,
                     "FAIL" if violations else "PASS",
                     "; ".join(violations[:3]) or
                     f"{sum(c.action is Action.REROUTE_ORDER_FLOW for c in cmds)} reroute(s), "
                     "all to healthy venues below their limits"))
    # 2. Safe end state: whatever is still bad at the end is under protection.
    end = states_at(timeline, res.end_ns + NS)
    firm = end.get("firm:*", "normal")
    unsafe = []
    for v, spans in sorted(bad.items()):
        still = [why for a, b, why in spans if b is None]
        if not still:
            continue
        st = max((end.get(f"venue:{v}", "normal"), end.get(f"counterparty:{v}", "normal"),
                  firm), key=lambda s: _RANK[s])
        if st not in PROTECTIVE:
            unsafe.append(f"{v} still has {', '.join(still)} but is only in state {st}")
    for es in sc.end_state:
        matched = [s for lab, s in end.items() if fnmatch.fnmatchcase(lab, es.scope)]
        best = max(matched, key=lambda s: _RANK[s], default="normal")
        if _RANK[best] < _RANK[es.at_least]:
            unsafe.append(f"{es.scope} ends in {best}, expected at least {es.at_least}")
    out.append(Check("invariant", "ends in a safe state", None, None,
                     "FAIL" if unsafe else "PASS",
                     "; ".join(unsafe) or "end states: " + ", ".join(
                         f"{k}={v}" for k, v in sorted(end.items()) if v != "normal")))
    return out
