"""Backtest and stress reports: metrics as JSON, and a self-contained HTML page.

Definitions (all in event time):

- **Alarm**: one episode of a guard signal: an anomaly/regime-change signal
  with ``phase == "open"`` (not warming up), a ``RiskAlert`` that opens
  something (not ``*_restored``), or a ``LimitBreach`` going to ``breach`` /
  ``hard`` (once until it clears).
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
import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from riskguard.dataflows.backtest import BacktestResult, Label, run_info
from riskguard.schemas import (
    Action,
    AnomalySignal,
    LimitBreach,
    LimitLevel,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
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


def alarms_of(signals: Iterable[Any]) -> list[tuple[int, str, Scope]]:
    """Alarm episodes ``(ts, signal_kind, scope)`` from the guard's signal stream."""
    out: list[tuple[int, str, Scope]] = []
    open_breach: set[str] = set()
    for s in signals:
        if isinstance(s, AnomalySignal):
            if s.phase == "open" and not s.warming_up:
                out.append((s.ts, s.kind, s.scope))
        elif isinstance(s, RiskAlert):
            if s.kind not in CLOSING_ALERTS:
                out.append((s.ts, s.kind, s.scope))
        elif isinstance(s, LimitBreach):
            key = f"{s.scope.label()}|{s.limit_path}|{s.kind}"
            if s.level in (LimitLevel.BREACH, LimitLevel.HARD):
                if key not in open_breach:
                    open_breach.add(key)
                    out.append((s.ts, "breach", s.scope))
            else:
                open_breach.discard(key)
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

    ``start_ns``/``end_ns`` restrict scoring to a time window (held-out folds):
    alarms outside it are ignored, and so are labels that start outside it.
    """
    lo = -(2**63) if start_ns is None else start_ns
    hi = 2**63 if end_ns is None else end_ns
    alarms = [a for a in alarms if lo <= a[0] < hi]
    labels = [lab for lab in labels if lo <= lab.start_ns < hi]
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


def build_report(res: BacktestResult, labels: Sequence[Label], *, title: str,
                 config_hash: str = "", inputs: Sequence[str] = (), grace_ns: int = 60 * NS,
                 extra: dict[str, Any] | None = None, max_price_series: int = 6) -> dict[str, Any]:
    """Everything the JSON and HTML reports show, from one run's outputs."""
    alarms = alarms_of(res.signals)
    ep = episode_metrics(alarms, labels, grace_ns=grace_ns)
    span_days = max(res.end_ns - res.start_ns, NS) / DAY_NS
    inst_days = max(len(res.keys), 1) * span_days
    cmds = res.commands
    timeline = state_timeline(cmds)
    report: dict[str, Any] = {
        "title": title,
        "config_hash": config_hash,
        "inputs": list(inputs),
        "summary": {
            "events": res.n_events, "start_ns": res.start_ns, "end_ns": res.end_ns,
            "duration_s": round((res.end_ns - res.start_ns) / NS, 3),
            "instruments": len(res.keys), "signals": len(res.signals), "alarms": len(alarms),
            "commands": len(cmds), "dead_letters": len(res.dead_letters),
            "audit_records": res.n_audit, "labels": len(labels),
        },
        "episodes": ep,
        "detection_delay_s": ep["all"]["detection_delay_s"],
        "mitigation_delay_s": mitigation_delays(cmds, labels, grace_ns),
        "false_alarms": {
            "count": ep["false_alarms"], "instrument_days": round(inst_days, 6),
            "per_instrument_day": round(ep["false_alarms"] / inst_days, 4),
            "by_signal": ep["false_alarms_by_signal"],
        },
        "commands": _command_counts(cmds),
        "mitigation_states": time_in_states(timeline, res.start_ns, res.end_ns),
        "command_log": [
            {"t": c.issued_at, "action": c.action.value, "scope": c.scope.label(),
             "command_id": c.command_id, "params": _params(c), "reason": c.reason}
            for c in cmds
        ],
        "labels": [{"kind": lab.kind, "scope": lab.scope, "start": lab.start_ns,
                    "end": lab.end_ns} for lab in labels],
        "series": _series(res, labels, max_price_series),
    }
    if extra:
        report.update(extra)
    report["run"] = run_info(res.wall_s, res.n_events)
    return report


def _command_counts(cmds: Sequence[MitigationCommand]) -> dict[str, Any]:
    by_action = Counter(c.action.value for c in cmds)
    by_scope = Counter(c.scope.kind.value for c in cmds)
    pairs = Counter((c.action.value, c.scope.label()) for c in cmds)
    return {
        "by_action": dict(sorted(by_action.items())),
        "by_scope_kind": dict(sorted(by_scope.items())),
        "by_action_scope": [[a, s, n] for (a, s), n in sorted(pairs.items())],
    }


def _series(res: BacktestResult, labels: Sequence[Label], max_price_series: int
            ) -> dict[str, Any]:
    """Plot series: the most-labelled (then the first) keys' prices, anomaly ratios, and
    the six most utilized limits."""
    wanted = [k for lab in labels for k in res.prices if scope_related(lab.scope, _key_scope(k))]
    keys = list(dict.fromkeys([*wanted, *sorted(res.prices)]))[:max_price_series]
    anomalies = [s for s in res.signals if isinstance(s, AnomalySignal) and not s.warming_up]
    util: dict[str, list[tuple[int, float]]] = {}
    for u in res.utilizations:
        util.setdefault(f"{u.limit_path}.{u.kind}", []).append((u.ts, u.utilization))
    top_util = sorted(util, key=lambda k: -max(v for _, v in util[k]))[:6]
    return {
        "prices": {k: _thin(res.prices[k]) for k in keys},
        "anomalies": [[s.ts, _r(s.score / s.threshold if s.threshold > 0 else 0.0, 4),
                       s.key, s.severity.value] for s in anomalies],
        "utilization": {k: _thin(util[k]) for k in top_util},
    }


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


# -- HTML / SVG -----------------------------------------------------------------------

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_ACTION_COLORS = {
    "alert": "#999999", "widen_quotes": "#bcbd22", "reduce_limits": "#17becf",
    "reduce_only": "#ff7f0e", "cancel_all": "#d62728", "halt_trading": "#7f0000",
    "reroute_order_flow": "#9467bd", "failover_feed": "#1f77b4", "resume": "#2ca02c",
    "pause_withdrawals": "#8c564b", "hedge_delta": "#e377c2",
}
# The SVG scales to the page width (viewBox); legends are HTML lists under each plot.
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 960, 230, 70, 12, 24, 28
#: The threshold line's colour: never one of the series or severity colours.
THRESHOLD_COLOR = "#333333"
_SEVERITY_COLORS = {"info": "#1f77b4", "warn": "#ff7f0e", "critical": "#d62728"}


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


class _Axes:
    def __init__(self, t0: int, t1: int, y0: float, y1: float) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1)
        if y1 <= y0:
            y0, y1 = y0 - 1.0, y1 + 1.0
        pad = (y1 - y0) * 0.05
        self.y0, self.y1 = y0 - pad, y1 + pad

    def x(self, t: float) -> float:
        return round(PAD_L + (t - self.t0) / (self.t1 - self.t0) * (W - PAD_L - PAD_R), 2)

    def y(self, v: float) -> float:
        return round(H - PAD_B - (v - self.y0) / (self.y1 - self.y0) * (H - PAD_T - PAD_B), 2)


def _frame(ax: _Axes, pid: str, title: str, body: list[str],
           legend: list[tuple[str, str]], fmt: str = "{:.4g}", *, empty: bool = False) -> str:
    """One plot: the SVG (as wide as the page) and its legend as an HTML list, whose
    entries wrap between entries, never inside a name."""
    parts = [f'<figure class="plot" data-plot="{pid}">'
             f'<svg class="plot" id="{pid}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{PAD_L}" y="15" class="ptitle">{_esc(title)}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" '
             f'height="{H - PAD_T - PAD_B}" fill="none" stroke="#ccc"/>']
    for frac in (0.0, 0.5, 1.0):
        v = ax.y0 + (ax.y1 - ax.y0) * frac
        parts.append(f'<text x="{PAD_L - 4}" y="{ax.y(v) + 4}" text-anchor="end" '
                     f'class="tick">{_esc(fmt.format(v))}</text>')
    for frac, anchor in ((0.0, "middle"), (0.5, "middle"), (1.0, "end")):  # end: inside the SVG
        t = ax.t0 + (ax.t1 - ax.t0) * frac
        parts.append(f'<text x="{ax.x(t)}" y="{H - 8}" text-anchor="{anchor}" class="tick">'
                     f't+{(t - ax.t0) / NS:.0f}s</text>')
    parts.extend(body)
    if empty:
        parts.append(f'<text class="nodata" x="{(PAD_L + W - PAD_R) / 2}" '
                     f'y="{PAD_T + (H - PAD_T - PAD_B) * 0.3 + 6}" '
                     'text-anchor="middle">no data</text>')
    parts.append("</svg>")
    if legend:
        parts.append('<ul class="legend">' + "".join(
            f'<li><span class="sw" style="background:{color}"></span>{_esc(name)}</li>'
            for name, color in legend) + "</ul>")
    parts.append("</figure>")
    return "\n".join(parts)


def _bands(ax: _Axes, labels: list[dict[str, Any]]) -> list[str]:
    out = []
    for lab in labels:
        x0, x1 = ax.x(lab["start"]), ax.x(lab["end"])
        out.append(f'<rect class="incident" x="{x0}" y="{PAD_T}" width="{max(x1 - x0, 1.0)}" '
                   f'height="{H - PAD_T - PAD_B}" fill="#f4a6a6" fill-opacity="0.35">'
                   f'<title>{_esc(lab["kind"])} {_esc(lab["scope"])}</title></rect>')
    return out


def _poly(ax: _Axes, pts: list[list[float]], color: str, norm: float = 1.0) -> str:
    coords = " ".join(f"{ax.x(t)},{ax.y(v / norm)}" for t, v in pts)
    return f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.2" ' \
           f'points="{coords}"/>'


def _price_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    series = rep["series"]["prices"]
    # Prices of different instruments differ by orders of magnitude: plot each
    # relative to its first value (percent change).
    norm = {k: (v[0][1] or 1.0) for k, v in series.items() if v}
    ys = [100.0 * (p[1] / norm[k] - 1.0) for k, v in series.items() for p in v]
    ax = _Axes(t0, t1, min(ys, default=0.0), max(ys, default=1.0))
    body = _bands(ax, rep["labels"])
    legend = []
    for i, (k, v) in enumerate(sorted(series.items())):
        color = _COLORS[i % len(_COLORS)]
        pts = [[t, 100.0 * (p / norm[k] - 1.0)] for t, p in v]
        body.append(_poly(ax, pts, color))
        legend.append((k, color))
    return _frame(ax, "plot-price", "Price, % from first value (incident windows shaded)",
                  body, legend, "{:+.2f}%", empty=not ys)


def _anomaly_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    pts = rep["series"]["anomalies"]
    top = max([p[1] for p in pts] + [2.0])
    ax = _Axes(t0, t1, 0.0, min(top, 50.0))
    body = _bands(ax, rep["labels"])
    body.append(_threshold(ax))
    for t, ratio, key, sev in pts:
        color = _SEVERITY_COLORS.get(sev, _SEVERITY_COLORS["info"])
        body.append(f'<circle class="score" data-severity="{_esc(sev)}" cx="{ax.x(t)}" '
                    f'cy="{ax.y(min(ratio, 50.0))}" r="3" fill="{color}">'
                    f'<title>{_esc(key)} score/threshold {ratio}</title></circle>')
    return _frame(ax, "plot-anomaly", "Anomaly score / threshold at each signal (threshold = 1)",
                  body, [("threshold", THRESHOLD_COLOR), *_SEVERITY_COLORS.items()], "{:.3g}",
                  empty=not pts)


def _threshold(ax: _Axes) -> str:
    y1 = ax.y(1.0)
    return (f'<line class="threshold" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y1}" y2="{y1}" '
            f'stroke="{THRESHOLD_COLOR}" stroke-dasharray="4 3"/>')


def _util_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    series = rep["series"]["utilization"]
    top = max([p[1] for v in series.values() for p in v] + [1.1])
    ax = _Axes(t0, t1, 0.0, top)
    body = _bands(ax, rep["labels"])
    body.append(_threshold(ax))
    legend = [("limit (1.0)", THRESHOLD_COLOR)] if series else []
    for i, (k, v) in enumerate(sorted(series.items())):
        color = _COLORS[i % len(_COLORS)]
        body.append(_poly(ax, v, color))
        legend.append((k, color))
    return _frame(ax, "plot-util", "Limit utilization (1.0 = limit)", body, legend, "{:.2f}",
                  empty=not any(series.values()))


def _command_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    log = rep["command_log"]
    scopes = sorted({c["scope"] for c in log})[:12] or ["-"]
    ax = _Axes(t0, t1, 0.0, float(len(scopes)))
    body = _bands(ax, rep["labels"])
    row = {s: i for i, s in enumerate(scopes)}
    for i, s in enumerate(scopes):
        body.append(f'<text x="{PAD_L + 4}" y="{ax.y(i + 0.5) - 6}" class="tick">{_esc(s)}</text>')
    for c in log:
        if c["scope"] not in row:
            continue
        color = _ACTION_COLORS.get(c["action"], "#333")
        y = ax.y(row[c["scope"]] + 0.5) - 5
        body.append(f'<rect class="cmd" x="{ax.x(c["t"]) - 3}" y="{y}"'
                    f' width="6" height="10" fill="{color}"><title>{_esc(c["action"])} '
                    f'{_esc(c["scope"])}: {_esc(c["reason"])}</title></rect>')
    legend = [(a, _ACTION_COLORS.get(a, "#333")) for a in rep["commands"]["by_action"]]
    return _frame(ax, "plot-commands", "Commands timeline (one row per scope)", body, legend,
                  "{:.0f}", empty=not log)


def _table(tid: str, head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    h = "".join(f"<th>{_esc(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(x))}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f'<table id="{tid}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def render_html(rep: dict[str, Any]) -> str:
    """The self-contained report page (inline SVG, no scripts, no external files)."""
    s = rep["summary"]
    t0, t1 = s["start_ns"], max(s["end_ns"], s["start_ns"] + 1)
    ep = rep["episodes"]
    ep_rows = [[k, v["labels"], v["detected"], v["true_alarms"], v["false_alarms"],
                v["precision"], v["recall"], v["f1"], v["detection_delay_s"]["p50"],
                v["detection_delay_s"]["p95"]] for k, v in ep["by_kind"].items()]
    a = ep["all"]
    ep_rows.append(["all", a["labels"], a["detected"], a["true_alarms"], a["false_alarms"],
                    a["precision"], a["recall"], a["f1"], a["detection_delay_s"]["p50"],
                    a["detection_delay_s"]["p95"]])
    dd, md, fa = rep["detection_delay_s"], rep["mitigation_delay_s"], rep["false_alarms"]
    states = rep["mitigation_states"]
    state_cols = [x for x in STATE_ORDER if any(x in v for v in states["by_scope"].values())
                  or x in states["worst"]]
    sections = [
        f"<h1>{_esc(rep['title'])}</h1>",
        f'<p id="run-info">generated {_esc(rep["run"]["generated_at"])}, wall '
        f'{_esc(rep["run"]["wall_s"])} s, {_esc(rep["run"]["events_per_s"])} events/s</p>',
        _table("t-summary", ["events", "duration s", "instruments", "signals", "alarms",
                             "commands", "dead letters", "labels", "config"],
               [[s["events"], s["duration_s"], s["instruments"], s["signals"], s["alarms"],
                 s["commands"], s["dead_letters"], s["labels"], rep["config_hash"][:12]]]),
    ]
    if "stress" in rep:
        st = rep["stress"]
        sections.append(f'<h2>Stress scenario {_esc(st["scenario"])}: '
                         f'<span id="verdict">{"PASS" if st["passed"] else "FAIL"}</span></h2>')
        sections.append(_table("t-expect", ["expected", "scope", "deadline s", "actual s",
                                            "result", "detail"],
                               [[e["action"], e["scope"], e["deadline_s"], e["actual_s"],
                                 e["result"], e["detail"]] for e in st["checks"]]))
    sections += [
        "<h2>Plots</h2>", _price_plot(rep, t0, t1), _anomaly_plot(rep, t0, t1),
        _util_plot(rep, t0, t1), _command_plot(rep, t0, t1),
        "<h2>Episodes per incident kind</h2>",
        _table("t-episodes", ["kind", "incidents", "detected", "true alarms", "false alarms",
                              "precision", "recall", "F1", "delay p50 s", "delay p95 s"], ep_rows),
        "<h2>Delays and false alarms</h2>",
        _table("t-delays", ["measure", "n", "p50 s", "p95 s"],
               [["detection delay", dd["n"], dd["p50"], dd["p95"]],
                ["mitigation delay", md["n"], md["p50"], md["p95"]]]),
        _table("t-false", ["false alarms", "instrument-days", "per instrument-day"],
               [[fa["count"], fa["instrument_days"], fa["per_instrument_day"]]]),
        "<h2>Commands by action and scope</h2>",
        _table("t-commands", ["action", "scope", "count"], rep["commands"]["by_action_scope"]),
        "<h2>Time in each mitigation state (s)</h2>",
        _table("t-states", ["scope", *state_cols],
               [[lab, *[v.get(c, 0.0) for c in state_cols]]
                for lab, v in [("(firm worst)", states["worst"]),
                               *states["by_scope"].items()]]),
        "<h2>Command log</h2>",
        _table("t-log", ["t+ s", "action", "scope", "params", "reason"],
               [[round((c["t"] - t0) / NS, 3), c["action"], c["scope"],
                 json.dumps(c["params"], sort_keys=True), c["reason"]]
                for c in rep["command_log"]]),
    ]
    css = ("body{font-family:sans-serif;margin:20px;color:#222}table{border-collapse:collapse;"
           "margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 7px;font-size:12px;"
           "text-align:left;overflow-wrap:break-word}th{background:#f0f0f0}"
           ".tick{font-size:10px;fill:#444}.ptitle{font-size:12px;font-weight:bold}"
           ".nodata{font-size:16px;fill:#777}figure.plot{margin:6px 0 14px}"
           "svg.plot{display:block;width:100%;height:auto}"
           ".legend{display:flex;flex-wrap:wrap;gap:2px 16px;list-style:none;margin:2px 0 0 "
           "70px;padding:0;font-size:12px}.legend li{overflow-wrap:break-word;min-width:0}"
           ".sw{display:inline-block;width:12px;height:4px;margin-right:5px;"
           "vertical-align:middle}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(rep['title'])}</title><style>{css}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def strip_run(text: str) -> str:
    """Drop the run-specific (wall-clock) parts of a JSON or HTML report."""
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        doc.pop("run", None)
        return json.dumps(doc, sort_keys=True)
    return "\n".join(line for line in text.splitlines() if 'id="run-info"' not in line)


__all__ = [
    "STATE_ORDER", "alarms_of", "build_report", "episode_metrics", "mitigation_delays", "pct",
    "render_html", "scope_related", "state_timeline", "states_at", "strip_run",
    "time_in_states", "write_report",
]
