"""Backtest and stress reports: metrics as JSON, and a self-contained HTML page.

Definitions (all in event time):

- **Alarm**: one episode of a guard signal at warn or critical (an info signal,
  such as a regime change, is shown but never an alarm): an anomaly episode
  (``anomaly``, ``price_move``, ``dislocation``) counted once, at its first open or
  escalation that is live (not warming up) at warn or higher; a ``RiskAlert`` at
  warn or higher that opens something (not ``*_restored``); or a ``LimitBreach``
  going to ``breach`` / ``hard`` (once until it clears).
- An alarm **matches** a label when its time is in ``[start, end + grace]``
  and its scope is related to the label's scope (same label or fnmatch
  pattern; the same venue/counterparty; ``firm:*`` matches everything).
- **Recall** of kind *k*: labelled incidents of kind *k* matched by at least
  one alarm, over incidents of kind *k* (episode level: many alarms on one
  incident count once).
- **Precision** of kind *k*: alarms matched to kind *k*, over those plus the
  false alarms (alarms matching no label) of the signal kinds that detected
  kind *k* at least once. ``None`` when no alarm is attributable.
- **Detection delay**: first matching alarm minus incident start (>= 0);
  **mitigation delay** the same for the first matching non-alert command.
- **False alarms per instrument-day**: false alarms over
  (priced ``venue/instrument`` keys x days of data).
- **Mitigation state** of a scope: its most severe action in force (resume
  lifts the actions it lists); time in each state is summed per scope and for
  the firm's worst state over time.

>>> pct([1.0, 2.0, 3.0, 4.0], 50), pct([], 95)
(2.0, None)
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from riskguard.dataflows.backtest import BacktestResult, Label, run_info
from riskguard.dataflows.readiness import to_json
from riskguard.dataflows.report_html import event_what, render_html
from riskguard.dataflows.signal_text import score_text
from riskguard.schemas import (
    Action,
    AnomalySignal,
    LimitBreach,
    LimitLevel,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)

NS = 1_000_000_000
DAY_NS = 86_400 * NS
CLOSING_ALERTS = frozenset({"heartbeat_restored", "feed_restored"})
#: Mitigation states, least to most severe (``alert`` and ``resume`` are not states).
STATE_ORDER = (
    "normal", "widen_quotes", "reduce_limits", "hedge_delta", "failover_feed",
    "pause_withdrawals", "reduce_only", "reroute_order_flow", "cancel_all", "halt_trading",
)
_RANK = {s: i for i, s in enumerate(STATE_ORDER)}


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    k = max(0, math.ceil(q / 100 * len(xs)) - 1)
    return xs[min(k, len(xs) - 1)]


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


# -- alarms and matching -------------------------------------------------------------


ALARM_SEVERITIES = frozenset({Severity.WARN, Severity.CRITICAL})
OPENING_PHASES = frozenset({"open", "escalate"})


def alarm_signals(signals: Iterable[Any]) -> list[Any]:
    """The signals that raise an alarm (module docstring), in stream order."""
    out: list[Any] = []
    open_breach: set[str] = set()
    raised: set[tuple[str, str]] = set()
    for s in signals:
        if isinstance(s, AnomalySignal):
            episode = (s.kind, s.episode)
            if (s.phase in OPENING_PHASES and not s.warming_up
                    and s.severity in ALARM_SEVERITIES and episode not in raised):
                raised.add(episode)
                out.append(s)
        elif isinstance(s, RiskAlert):
            if s.kind not in CLOSING_ALERTS and s.severity in ALARM_SEVERITIES:
                out.append(s)
        elif isinstance(s, LimitBreach):
            key = f"{s.scope.label()}|{s.limit_path}|{s.kind}"
            if s.level in (LimitLevel.BREACH, LimitLevel.HARD):
                if key not in open_breach:
                    open_breach.add(key)
                    out.append(s)
            else:
                open_breach.discard(key)
    return out


def alarms_of(signals: Iterable[Any]) -> list[tuple[int, str, Scope]]:
    """Alarm episodes ``(ts, signal_kind, scope)`` from the guard's signal stream.

    >>> okx = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
    >>> def sig(phase, severity, warming_up=False):
    ...     return AnomalySignal(id=f"{phase}-{severity}", key="okx/BTC-USDT", scope=okx, ts=1,
    ...                          phase=phase, episode_id="okx/BTC-USDT#1", score=2.0,
    ...                          threshold=1.0, severity=Severity(severity),
    ...                          warming_up=warming_up, model="m", model_version="1")
    >>> len(alarms_of([sig("open", "info"), sig("escalate", "warn"), sig("escalate", "critical")]))
    1
    >>> alarms_of([sig("open", "warn", warming_up=True), sig("close", "warn")])
    []
    """
    out = [(s.ts, "breach" if isinstance(s, LimitBreach) else s.kind, s.scope)
           for s in alarm_signals(signals)]
    out.sort(key=lambda a: (a[0], a[1], a[2].label()))
    return out


def _venue(scope: Scope) -> str | None:
    if scope.kind in (ScopeKind.VENUE, ScopeKind.COUNTERPARTY):
        return scope.value
    return scope.venue


def _parse_label_scope(text: str) -> tuple[str, str | None, str]:
    kind, _, rest = text.partition(":")
    if "/" in rest and kind in ("instrument", "underlying"):
        v, _, val = rest.partition("/")
        return kind, v, val
    return kind, None, rest


def scope_related(pattern: str, scope: Scope) -> bool:
    """Does an alarm/command ``scope`` concern the labelled ``pattern``?

    >>> okx = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
    >>> scope_related("venue:okx", okx), scope_related("instrument:*/BTC-USDT", okx)
    (True, True)
    >>> scope_related("venue:binance", okx), scope_related("firm:*", okx)
    (False, True)
    """
    label = scope.label()
    if pattern.startswith("firm") or fnmatch.fnmatchcase(label, pattern):
        return True
    kind, venue, value = _parse_label_scope(pattern)
    if scope.kind is ScopeKind.FIRM:
        return False
    sv = _venue(scope)
    if kind in ("venue", "counterparty"):
        return sv is not None and fnmatch.fnmatchcase(sv, value)
    if venue is None or sv is None or not fnmatch.fnmatchcase(sv, venue):
        return False
    if scope.kind in (ScopeKind.VENUE, ScopeKind.COUNTERPARTY):
        return True
    base = value.split("-")[0]
    return fnmatch.fnmatchcase(scope.value, value) or fnmatch.fnmatchcase(scope.value, base)


def episode_metrics(alarms: list[tuple[int, str, Scope]], labels: Sequence[Label], *,
                    grace_ns: int = 60 * NS, start_ns: int | None = None,
                    end_ns: int | None = None) -> dict[str, Any]:
    """Precision/recall/F1 per incident kind, detection delays and false alarms.

    ``start_ns``/``end_ns`` restrict scoring to a time window (a fold): alarms outside
    it are ignored, and only labels that start in it are scored. A label that starts
    before the window but whose ``[start, end + grace]`` reaches into it still claims
    its alarms there, which count neither true nor false (an incident straddling the
    split is not a false alarm of the later fold).
    """
    lo = -(2**63) if start_ns is None else start_ns
    hi = 2**63 if end_ns is None else end_ns
    alarms = [a for a in alarms if lo <= a[0] < hi]
    outside = [lab for lab in labels if not lo <= lab.start_ns < hi
               and lab.start_ns < hi and lab.end_ns + grace_ns >= lo]
    labels = [lab for lab in labels if lo <= lab.start_ns < hi]
    if outside:
        alarms = [a for a in alarms if not _claimed(a, outside, grace_ns)
                  or _claimed(a, labels, grace_ns)]
    matched_to: list[set[int]] = [set() for _ in alarms]
    delays: dict[int, float] = {}
    for j, lab in enumerate(labels):
        for i, (ts, _kind, scope) in enumerate(alarms):
            if lab.start_ns <= ts <= lab.end_ns + grace_ns and scope_related(lab.scope, scope):
                matched_to[i].add(j)
                if j not in delays:
                    delays[j] = (ts - lab.start_ns) / NS
    kinds = sorted({lab.kind for lab in labels})
    false_alarms = [a for a, m in zip(alarms, matched_to, strict=True) if not m]
    fa_by_sig = Counter(a[1] for a in false_alarms)
    by_kind: dict[str, Any] = {}
    tp_all = 0
    for k in kinds:
        idx = {j for j, lab in enumerate(labels) if lab.kind == k}
        detected = sorted(j for j in idx if j in delays)
        tp_alarms = [a for a, m in zip(alarms, matched_to, strict=True) if m & idx]
        sig_kinds = {a[1] for a in tp_alarms}
        fp = sum(fa_by_sig[s] for s in sig_kinds)
        tp_all += len(tp_alarms)
        by_kind[k] = _prf(len(idx), len(detected), len(tp_alarms), fp)
        by_kind[k]["detection_delay_s"] = _delays([delays[j] for j in detected])
        by_kind[k]["detected_by"] = sorted(sig_kinds)
    n_tp_alarms = sum(1 for m in matched_to if m)
    allk = _prf(len(labels), len(delays), n_tp_alarms, len(false_alarms))
    allk["detection_delay_s"] = _delays(list(delays.values()))
    del tp_all
    return {"by_kind": by_kind, "all": allk, "false_alarms": len(false_alarms),
            "false_alarms_by_signal": dict(sorted(fa_by_sig.items())),
            "alarms": len(alarms), "labels": len(labels),
            "missed": [{"kind": lab.kind, "scope": lab.scope, "start": lab.start_ns}
                       for j, lab in enumerate(labels) if j not in delays]}


def _claimed(alarm: tuple[int, str, Scope], labels: Sequence[Label], grace_ns: int) -> bool:
    ts, _kind, scope = alarm
    return any(lab.start_ns <= ts <= lab.end_ns + grace_ns and scope_related(lab.scope, scope)
               for lab in labels)


def _prf(n_labels: int, n_detected: int, tp: int, fp: int) -> dict[str, Any]:
    recall = n_detected / n_labels if n_labels else None
    precision = tp / (tp + fp) if tp + fp else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision and recall else (0.0 if n_labels else None))
    return {"labels": n_labels, "detected": n_detected, "true_alarms": tp, "false_alarms": fp,
            "precision": _r(precision, 4), "recall": _r(recall, 4), "f1": _r(f1, 4)}


def _delays(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": _r(pct(values, 50), 3), "p95": _r(pct(values, 95), 3)}


def mitigation_delays(commands: Sequence[MitigationCommand], labels: Sequence[Label],
                      grace_ns: int = 60 * NS) -> dict[str, Any]:
    """First non-alert command related to each label: delay from the incident start."""
    vals = []
    for lab in labels:
        for c in commands:
            if c.action in (Action.ALERT, Action.RESUME):
                continue
            if lab.start_ns <= c.issued_at <= lab.end_ns + grace_ns and scope_related(
                    lab.scope, c.scope):
                vals.append((c.issued_at - lab.start_ns) / NS)
                break
    return _delays(vals)


# -- mitigation state ------------------------------------------------------------------


def state_timeline(commands: Sequence[MitigationCommand]) -> list[tuple[int, str, str]]:
    """``(ts, scope, state)`` whenever a scope's mitigation state changes."""
    active: dict[str, set[str]] = {}
    out: list[tuple[int, str, str]] = []
    cur: dict[str, str] = {}
    for c in sorted(commands, key=lambda c: c.issued_at):
        label = c.scope.label()
        acts = active.setdefault(label, set())
        if c.action is Action.RESUME:
            lifted = c.params.get("actions")
            if isinstance(lifted, list):
                acts.difference_update(lifted)
            else:
                acts.clear()
        elif c.action is not Action.ALERT and c.action.value in _RANK:
            acts.add(c.action.value)
        state = max(acts, key=lambda a: _RANK[a], default="normal")
        if cur.get(label, "normal") != state:
            cur[label] = state
            out.append((c.issued_at, label, state))
    return out


def states_at(timeline: Sequence[tuple[int, str, str]], ts: int) -> dict[str, str]:
    """Every scope's mitigation state at event time ``ts``."""
    cur: dict[str, str] = {}
    for t, label, state in timeline:
        if t > ts:
            break
        cur[label] = state
    return cur


def time_in_states(timeline: Sequence[tuple[int, str, str]], start_ns: int,
                   end_ns: int) -> dict[str, Any]:
    """Seconds each scope (and the firm's worst state) spent in each state."""
    by_scope: dict[str, dict[str, float]] = {}
    last: dict[str, tuple[int, str]] = {}
    worst: dict[str, float] = {}
    cur: dict[str, str] = {}
    prev_t: int = start_ns
    for t_raw, label, state in [*timeline, (end_ns, "", "")]:
        t: int = max(min(t_raw, end_ns), start_ns)
        w = max(cur.values(), key=lambda s: _RANK[s], default="normal")
        worst[w] = worst.get(w, 0.0) + (t - prev_t) / NS
        prev_t = t
        if not label:
            break
        t0, s0 = last.get(label, (start_ns, "normal"))
        sc = by_scope.setdefault(label, {})
        sc[s0] = sc.get(s0, 0.0) + (t - t0) / NS
        last[label] = (t, state)
        cur[label] = state
    for label, (t0, s0) in last.items():
        by_scope[label][s0] = by_scope[label].get(s0, 0.0) + (end_ns - t0) / NS
    return {
        "worst": {s: round(v, 3) for s, v in sorted(worst.items(), key=lambda x: _RANK[x[0]])
                  if v > 0},
        "by_scope": {lab: {s: round(v, 3) for s, v in sorted(c.items(),
                                                           key=lambda x: _RANK[x[0]]) if v > 0}
                     for lab, c in sorted(by_scope.items())},
    }


# -- report ---------------------------------------------------------------------------


def _thin(points: Sequence[tuple[int, float]], n: int = 300) -> list[list[float]]:
    if len(points) <= n:
        return [[t, _r(v) or 0.0] for t, v in points]
    step = len(points) / n
    return [[points[int(i * step)][0], _r(points[int(i * step)][1]) or 0.0] for i in range(n)]


def _thin_ranges(points: Sequence[tuple[int, float, float]], n: int = 300,
                 ) -> list[list[float]]:
    """Bars' ``[t, low, high]``, at most ``n``: each kept point holds its bucket's lowest
    low and highest high (a crash's wick is never thinned away)."""
    if len(points) <= n:
        return [[t, _r(lo) or 0.0, _r(hi) or 0.0] for t, lo, hi in points]
    step = len(points) / n
    out = []
    for i in range(n):
        bucket = points[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]
        out.append([bucket[0][0], _r(min(b[1] for b in bucket)) or 0.0,
                    _r(max(b[2] for b in bucket)) or 0.0])
    return out


def build_report(res: BacktestResult, labels: Sequence[Label], *, title: str,
                 config_hash: str = "", inputs: Sequence[str] = (), grace_ns: int = 60 * NS,
                 extra: dict[str, Any] | None = None, max_price_series: int = 6) -> dict[str, Any]:
    """Everything the JSON and HTML reports show, from one run's outputs.

    Without labels, no alarm is judged: they are counted as unlabelled, and every figure
    that needs labels (episodes, delays, false alarms) is None (``labelled`` false)."""
    alarms = alarms_of(res.signals)
    labelled = bool(labels)
    ep = episode_metrics(alarms, labels, grace_ns=grace_ns) if labelled else None
    span_days = max(res.end_ns - res.start_ns, NS) / DAY_NS
    inst_days = max(len(res.keys), 1) * span_days
    cmds = res.commands
    timeline = state_timeline(cmds)
    report: dict[str, Any] = {
        "title": title,
        "config_hash": config_hash,
        "inputs": list(inputs),
        "labelled": labelled,
        "summary": _summary(res, len(alarms), len(labels)),
        "episodes": ep,
        "detection_delay_s": ep["all"]["detection_delay_s"] if ep else None,
        "mitigation_delay_s": mitigation_delays(cmds, labels, grace_ns) if ep else None,
        "false_alarms": {
            "count": ep["false_alarms"] if ep else None,
            "instrument_days": round(inst_days, 6),
            "per_instrument_day": round(ep["false_alarms"] / inst_days, 4) if ep else None,
            "by_signal": ep["false_alarms_by_signal"] if ep else None,
        },
        "alarms_by_signal": dict(sorted(Counter(a[1] for a in alarms).items())),
        "commands": _command_counts(cmds),
        "mitigation_states": time_in_states(timeline, res.start_ns, res.end_ns),
        "state_changes": [[t, label, state] for t, label, state in timeline],
        "command_log": [
            {"t": c.issued_at, "action": c.action.value, "scope": c.scope.label(),
             "command_id": c.command_id, "params": _params(c), "reason": c.reason,
             "verified": res.verified.get(c.command_id, "not checked"),
             "ack": ack_status(c, res)}
            for c in cmds
        ],
        "events": events_of(res.signals),
        "labels": [{"kind": lab.kind, "scope": lab.scope, "start": lab.start_ns,
                    "end": lab.end_ns} for lab in labels],
        "series": _series(res, labels, max_price_series),
        "readiness": _readiness(res),
    }
    if extra:
        report.update(extra)
    report["run"] = run_info(res.wall_s, res.n_events, res.startup_s)
    return report


def _readiness(res: BacktestResult) -> dict[str, Any] | None:
    ready = res.readiness()
    return to_json(ready) if ready is not None else None


def _summary(res: BacktestResult, n_alarms: int, n_labels: int) -> dict[str, Any]:
    return {
        "events": res.n_events, "start_ns": res.start_ns, "end_ns": res.end_ns,
        "duration_s": round((res.end_ns - res.start_ns) / NS, 3),
        "instruments": len(res.keys), "signals": len(res.signals), "alarms": n_alarms,
        "commands": len(res.commands), "dead_letters": res.n_dead_letters,
        "dead_letters_by_reason": dict(sorted(res.dead_letter_counts.items())),
        "audit_records": res.n_audit, "labels": n_labels, "markets": sorted(res.keys),
    }


def _command_counts(cmds: Sequence[MitigationCommand]) -> dict[str, Any]:
    by_action = Counter(c.action.value for c in cmds)
    by_scope = Counter(c.scope.kind.value for c in cmds)
    pairs = Counter((c.action.value, c.scope.label()) for c in cmds)
    return {
        "by_action": dict(sorted(by_action.items())),
        "by_scope_kind": dict(sorted(by_scope.items())),
        "by_action_scope": [[a, s, n] for (a, s), n in sorted(pairs.items())],
    }


def _series(res: BacktestResult, labels: Sequence[Label], most: int) -> dict[str, Any]:
    """The plots' data: the most-labelled (then first) markets' prices and bars' ranges,
    anomaly score ratios, and the six most used limits' utilization."""
    wanted = [k for lab in labels for k in res.prices if scope_related(lab.scope, _key_scope(k))]
    keys = list(dict.fromkeys([*wanted, *sorted(res.prices)]))[:most]
    anomalies = [s for s in res.signals if isinstance(s, AnomalySignal) and not s.warming_up]
    util: dict[str, list[tuple[int, float]]] = {}
    for u in res.utilizations:
        util.setdefault(f"{u.limit_path}.{u.kind}", []).append((u.ts, u.utilization))
    top_util = sorted(util, key=lambda k: -max(v for _, v in util[k]))[:6]
    return {
        "prices": {k: _thin(res.prices[k]) for k in keys},
        "ranges": {k: _thin_ranges(res.ranges[k]) for k in keys if res.ranges.get(k)},
        "measures": {k: res.measures[k] for k in keys if k in res.measures},
        "anomalies": [[s.ts, _r(s.score / s.threshold if s.threshold > 0 else 0.0, 4),
                       s.key, s.severity.value] for s in anomalies],
        "utilization": {k: _thin(util[k]) for k in top_util},
    }


def ack_status(c: MitigationCommand, res: BacktestResult) -> str:
    """Whether executors acknowledged a command: who applied (or refused) it, else why no
    acknowledgement was to be had."""
    got = [a for a in res.acks if a.get("command_id") == c.command_id]
    if got:
        return "; ".join(f"{a.get('outcome')} by {a.get('issuer')}" for a in got)
    if not res.ack_executors:
        return "not awaited (no executor named in [playbook.acks])"
    if c.action.value in res.ack_required:
        return "NOT acknowledged (required; no ack in the input)"
    return "no ack in the input (not required)"


def events_of(signals: Iterable[Any]) -> list[dict[str, Any]]:
    """The signals a reader of the report follows, each with ``alarm`` true where it raised
    one (:func:`alarm_signals`): every phase of each anomaly episode live at some point
    (its warm-up phases included, so no escalation appears without its open), each alert,
    each limit level a breach reaches."""
    signals = list(signals)
    alarms = {id(s) for s in alarm_signals(signals)}
    live = {(s.kind, s.episode) for s in signals
            if isinstance(s, AnomalySignal) and not s.warming_up}
    out: list[dict[str, Any]] = []
    for s in signals:
        if isinstance(s, AnomalySignal):
            if (s.kind, s.episode) not in live:
                continue
            top = ", ".join(f"{c.feature} z={c.zscore:+.1f}" for c in s.top_features[:2])
            event = {"t": s.ts, "what": f"{s.kind} {s.phase}", "scope": s.scope.label(),
                     "severity": s.severity.value,
                     "detail": f"{score_text(s)}" + (f" by {s.rule}" if s.rule else "")
                     + (f" [{top}]" if top else "")}
            if s.warming_up:
                event["warming_up"] = True
        elif isinstance(s, RiskAlert):
            event = {"t": s.ts, "what": s.kind, "scope": s.scope.label(),
                     "severity": s.severity.value, "detail": s.reason}
        elif isinstance(s, LimitBreach) and s.level in (LimitLevel.BREACH, LimitLevel.HARD):
            event = {"t": s.ts, "what": f"limit {s.level.value}", "scope": s.scope.label(),
                     "severity": s.severity.value,
                     "detail": f"{s.limit_path} {s.kind} at {s.utilization:.0%} of "
                               f"{s.effective_limit:,.0f}"}
        else:
            continue
        event["alarm"] = id(s) in alarms
        out.append(event)
    out.sort(key=lambda e: (e["t"], e["scope"]))
    return out


def _params(c: MitigationCommand) -> dict[str, Any]:
    return {k: v for k, v in sorted(c.params.items()) if k in (
        "targets", "from", "actions", "bps", "factor", "backup_feed")}


def _key_scope(key: str) -> Scope:
    venue, _, inst = key.partition("/")
    return Scope(kind=ScopeKind.INSTRUMENT, value=inst or venue, venue=venue if inst else None)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    pj = d / "report.json"
    pj.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    ph = d / "report.html"
    ph.write_text(render_html(report))
    return pj, ph


def strip_run(text: str) -> str:
    """Drop the run-specific (wall-clock) parts of a JSON or HTML report."""
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        doc.pop("run", None)
        return json.dumps(doc, sort_keys=True)
    return "\n".join(line for line in text.splitlines() if 'class="run-info"' not in line)


__all__ = [
    "ALARM_SEVERITIES", "STATE_ORDER", "ack_status", "alarm_signals", "alarms_of", "build_report",
    "episode_metrics", "event_what", "events_of", "mitigation_delays", "pct",
    "render_html", "scope_related", "state_timeline", "states_at", "strip_run",
    "time_in_states", "write_report",
]
