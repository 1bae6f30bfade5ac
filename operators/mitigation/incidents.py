"""The playbook's state and how it reads a signal: incidents, mitigations in force, and
each signal's kind, source, evidence digest and one-line description."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.mitigation.acks import AckState
from riskguard.operators.mitigation.rules import CLOSERS, MAX_EVIDENCE
from riskguard.schemas import (
    Action,
    AnomalySignal,
    LimitBreach,
    RiskAlert,
    Scope,
    Severity,
    encode,
)

STATE_VERSION = 2

# -- state ---------------------------------------------------------------------


@dataclass
class Incident:
    """One rule's episode for one signal source (``key = rule|source``)."""

    key: str
    rule: str
    kind: str
    signal_scope: Scope
    target: Scope
    opened_at: int
    severity: Severity
    start_rung: int
    rung: int = -1
    closed_at: int | None = None
    evidence: list[str] = field(default_factory=list)
    detail: str = ""
    # the ids of its signals (recent ones): what its commands' decision ids cover
    signal_ids: list[str] | None = None


@dataclass
class Mitigation:
    """An action in force on one exact scope, and the incidents that hold it."""

    action: Action
    scope: Scope
    params: dict[str, Any]
    owners: list[str]
    rule: str
    command_id: str
    since: int
    manual: bool = False
    held_notified: bool = False
    decision_id: str = ""


@persisted("riskguard.playbook")
@dataclass
class PlaybookState:
    """Everything the playbook remembers; snapshots are independent copies."""

    version: int = STATE_VERSION
    now: int = 0
    incidents: dict[str, Incident] = field(default_factory=dict)
    active: dict[str, Mitigation] = field(default_factory=dict)
    history: dict[str, list[int]] = field(default_factory=dict)
    unhealthy: dict[str, list[str]] = field(default_factory=dict)
    breached: dict[str, list[str]] = field(default_factory=dict)
    window_start: int = 0
    suppressed: list[str] = field(default_factory=list)
    # the rate window per rate key (a scope's venue, else its label): commands issued,
    # and commands held back, in the window from ``window_start``
    window_counts: dict[str, int] = field(default_factory=dict)
    suppressed_by: dict[str, int] = field(default_factory=dict)
    # Named tick sources (one per guard worker): latest ts and processing time seen.
    sources: dict[str, list[int]] = field(default_factory=dict)
    watermark: int = -1
    # Signals too far ahead of the watermark, waiting: a heap of
    # (ts, arrival, signal, processing time it arrived)
    held: list[tuple[int, int, AnomalySignal | RiskAlert | LimitBreach, int]] = field(
        default_factory=list)
    arrivals: int = 0
    forced: int = 0  # held signals applied after max_hold_s, the watermark still behind
    # commands awaiting executors' acknowledgements (AckTracker)
    acks: AckState = field(default_factory=AckState)


# -- helpers -------------------------------------------------------------------


def copy_lists(d: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: list(v) for k, v in d.items()}


def evidence_digest(record: msgspec.Struct) -> str:
    """SHA-256 hex of the record's wire bytes: the audit log's ``input_digest``."""
    return hashlib.sha256(encode(record)).hexdigest()


def signal_kind(sig: Any) -> str:
    if isinstance(sig, AnomalySignal):
        return sig.kind
    if isinstance(sig, LimitBreach):
        return "breach"
    return str(sig.kind)


def source_key(sig: Any, kind: str) -> str:
    label = sig.scope.label()
    if isinstance(sig, LimitBreach):
        return f"breach|{label}|{sig.limit_path}|{sig.kind}"
    return f"{CLOSERS.get(kind, kind)}|{label}"


def describe(sig: Any) -> str:
    kind = signal_kind(sig)
    head = f"{kind} {sig.severity.value} on {sig.scope.label()}"
    if isinstance(sig, AnomalySignal):
        ratio = sig.score / sig.threshold if sig.threshold > 0 else math.inf
        feats = ", ".join(f"{c.feature} z={c.zscore:.1f}" for c in sig.top_features[:3])
        phase = f"{sig.phase}, {sig.rule}" if sig.rule else sig.phase
        return (f"{head} ({phase}): score {sig.score:.3g} / threshold {sig.threshold:.3g}"
                f" = {ratio:.2f}x" + (f"; top {feats}" if feats else ""))
    if isinstance(sig, LimitBreach):
        return (f"{head}: {sig.kind} {sig.limit_path} at {sig.utilization:.0%} of limit "
                f"{sig.effective_limit:.6g} (exposure {sig.exposure:.6g}, level "
                f"{sig.level.value})")
    return f"{head}: {sig.reason}"[:512]


def score_ratio(sig: AnomalySignal) -> float:
    return sig.score / sig.threshold if sig.threshold > 0 else math.inf


def pushed(ids: list[str] | None, sig_id: str) -> list[str]:
    """``ids`` with ``sig_id`` last (a list made for a pre-decision-id snapshot)."""
    ids = [] if ids is None else ids
    push_evidence(ids, sig_id)
    return ids


def push_evidence(evidence: list[str], digest: str) -> None:
    if digest not in evidence:
        evidence.append(digest)
        del evidence[:-MAX_EVIDENCE]


def mark_reason(table: dict[str, list[str]], name: str, why: str, on: bool) -> bool:
    """Set or clear ``why`` among ``name``'s reasons; whether they changed."""
    before = table.get(name, [])
    reasons = [r for r in before if r != why]
    if on:
        reasons.append(why)
    reasons.sort()
    if reasons:
        table[name] = reasons
    else:
        table.pop(name, None)
    return reasons != before
