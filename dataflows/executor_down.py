"""Executor down: a stress scenario in which the trading system stops acknowledging.

An executor acknowledges every verified command ``ack_latency_s`` after it was issued,
until ``executor_down.down_at_s``; then it neither acts nor answers. The scenario runs
twice: without acks, to learn which commands the guard issues (their ids are
deterministic), then with the acks of those issued before the executor went down placed
in the input where they would arrive. It passes only if nothing confirmed raised
anything, every required command issued after the executor went down raised a
``command_unacknowledged`` incident within ``timeout_s`` and a tick, and the scenario's
own expectations and invariants hold (docs/backtests.md).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

from riskguard.connectors.acks import AckSigner, Applied
from riskguard.dataflows.demo import add_executor_key
from riskguard.dataflows.stress import (
    NS,
    Check,
    ExecutorDown,
    Scenario,
    StressOutcome,
    backtest_scenario,
    check_run,
    generate_market,
    scenario_keys,
    scenario_outcome,
)
from riskguard.operators.mitigation.acks import UNACKNOWLEDGED
from riskguard.operators.signing.crypto import decode_envelope
from riskguard.schemas import AckOutcome, Action, MitigationCommand

REQUIRED = (Action.HALT_TRADING, Action.CANCEL_ALL)
ACK_TIMEOUT_S = 30.0


def run_executor_down(sc: Scenario, spec: ExecutorDown, workdir: str | Path, *,
                      playbook: dict[str, Any] | None = None,
                      out_dir: str | Path | None = None, start_ns: int) -> StressOutcome:
    """Run ``sc`` with an executor that acknowledges until ``spec.down_at_s``; check it."""
    work = Path(workdir)
    executor = add_executor_key(scenario_keys(work), spec.name)
    acks_cfg = {"playbook": {"acks": {"executors": [spec.name], "timeout_s": ACK_TIMEOUT_S,
                                      "require": [a.value for a in REQUIRED]}}}
    records = generate_market(sc, start_ns)
    first, _digest = backtest_scenario(sc, records, work, playbook=playbook,
                                       overrides=acks_cfg)
    down_ns = start_ns + int(spec.down_at_s * NS)
    confirmed = [c for c in first.commands if c.issued_at < down_ns]
    with_acks = insert_acks(records, confirmed, executor_acks(executor, sc, spec), NS)
    res, digest = backtest_scenario(sc, with_acks, work, playbook=playbook, overrides=acks_cfg)
    checks = check_run(sc, res, start_ns)
    checks.extend(_ack_checks(res.commands, down_ns, spec))
    acked = {c.command_id for c in confirmed}
    return scenario_outcome(sc, res, checks, digest, start_ns, out_dir, executor_down={
        "executor": spec.name, "down_at_s": spec.down_at_s,
        "acknowledged": sum(c.command_id in acked for c in res.commands)})


def executor_acks(executor: Any, sc: Scenario, spec: ExecutorDown) -> Any:
    """``ack(command) -> (arrival ns, envelope)``: the executor's signed ``applied``, its
    ``seq`` rising with each call (call it in the order the acks arrive)."""
    latency = int(spec.ack_latency_s * NS)
    env = str(sc.guard.get("env", "stress"))

    now = [0]
    signer = AckSigner(executor, env=env, clock=lambda: now[0])  # one seq, rising

    def ack(cmd: MitigationCommand) -> tuple[int, Any]:
        now[0] = at = cmd.issued_at + latency
        data = signer.sign(signer.ack(cmd, Applied(AckOutcome.APPLIED)))
        return at, decode_envelope(data)

    return ack


def leaves_at(cmd: MitigationCommand, tick_ns: int) -> int:
    """When ``cmd`` leaves the playbook at the latest: at the first ``tick_ns`` boundary at
    or after its ``issued_at`` (a rung due between two ticks goes out with the next), from
    which an executor can answer and its ack timeout runs."""
    return -(-cmd.issued_at // tick_ns) * tick_ns


def insert_acks(records: list[Any], commands: list[MitigationCommand], ack: Any,
                tick_ns: int = 1) -> list[Any]:
    """``records`` with each command's ack placed before the first record later than it
    arrives (records are in event-time order; an ack has no event time of its own), and
    never before the record the command can have left with: the first at or after the
    ``tick_ns`` boundary that follows its ``issued_at`` (a rung that falls due between
    two ticks is issued at its own time and sent when the next tick reaches the
    playbook).

    >>> from types import SimpleNamespace as R
    >>> out = insert_acks([R(ts=1), R(ts=5)], [R(id="c", issued_at=1)],
    ...                   lambda c: (3, "ack-" + c.id))
    >>> [getattr(r, "ts", r) for r in out]
    [1, 'ack-c', 5]
    >>> out = insert_acks([R(ts=1), R(ts=5), R(ts=9)], [R(id="c", issued_at=2)],
    ...                   lambda c: (3, "ack-" + c.id), tick_ns=4)
    >>> [getattr(r, "ts", r) for r in out]
    [1, 5, 'ack-c', 9]
    """
    times = [getattr(r, "ts", 0) for r in records]

    def arrival(cmd: MitigationCommand, at: int) -> int:
        left = bisect.bisect_left(times, leaves_at(cmd, tick_ns))
        return max(at, times[left]) if left < len(times) else at

    placed = sorted((bisect.bisect_right(times, arrival(c, at)), n, env)
                    for n, (c, (at, env)) in enumerate((c, ack(c)) for c in commands))
    out: list[Any] = []
    start = 0
    for index, _n, env in placed:
        out.extend(records[start:index])
        out.append(env)
        start = index
    out.extend(records[start:])
    return out


def _ack_checks(commands: list[MitigationCommand], down_ns: int,
                spec: ExecutorDown) -> list[Check]:
    escalations = [c for c in commands if f"{UNACKNOWLEDGED} critical on" in c.reason]
    before = [c for c in escalations if c.issued_at < down_ns + int(ACK_TIMEOUT_S * NS)]
    unconfirmed = [c for c in commands if c.action in REQUIRED and c.issued_at >= down_ns
                   and UNACKNOWLEDGED not in c.reason]
    due = int((ACK_TIMEOUT_S + 1) * NS)
    late = [f"{c.action.value} on {c.scope.label()}" for c in unconfirmed
            if not any(c.issued_at < e.issued_at <= leaves_at(c, NS) + due
                       for e in escalations)]
    acted = sorted({c.action.value for c in escalations})
    return [
        Check("invariant", "confirmed commands raise nothing", None, None,
              "FAIL" if before else "PASS",
              f"{len(before)} escalation(s) while {spec.name} confirmed: "
              f"{[c.reason[:80] for c in before[:2]]}" if before
              else f"nothing raised while {spec.name} confirmed"),
        Check("invariant", "an unconfirmed halt or cancel-all is an incident", None, None,
              "FAIL" if late or not unconfirmed else "PASS",
              f"not escalated within {ACK_TIMEOUT_S:g}s: {late[:4]}" if late
              else "no halt or cancel-all issued after the executor went down"
              if not unconfirmed
              else f"{len(unconfirmed)} unconfirmed; the playbook acted: {', '.join(acted)}"),
    ]
