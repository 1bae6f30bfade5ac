"""The report's plots: inline SVG that scales to the page, each with an HTML legend.

Four plots share the run's time axis (UTC): prices (each market relative to its first
price; a bar's high-low range shaded around its close), anomaly scores against their
thresholds, limit utilization, and the commands on one row per scope. Labelled incident
windows are shaded on each. A plot with nothing to show is a one-line note saying so.

>>> ax = Axes(0, 120 * NS, 0.0, 1.0)
>>> ax.x(0), ax.x(120 * NS), time_tick(0, 120 * NS, 60 * NS)
(70.0, 948.0, '00:01:00')
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import Any

NS = 1_000_000_000
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
ACTION_COLORS = {
    "alert": "#999999", "widen_quotes": "#bcbd22", "reduce_limits": "#17becf",
    "reduce_only": "#ff7f0e", "cancel_all": "#d62728", "halt_trading": "#7f0000",
    "reroute_order_flow": "#9467bd", "failover_feed": "#1f77b4", "resume": "#2ca02c",
    "pause_withdrawals": "#8c564b", "hedge_delta": "#e377c2",
}
# The SVG scales to the page width (viewBox); legends are HTML lists under each plot.
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 960, 230, 70, 12, 24, 28
#: The threshold line's colour: never one of the series or severity colours.
THRESHOLD_COLOR = "#333333"
SEVERITY_COLORS = {"info": "#1f77b4", "warn": "#ff7f0e", "critical": "#d62728"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def time_tick(t0: int, t1: int, t: float) -> str:
    """A time on the axis, in UTC, as finely as the span needs.

    >>> time_tick(0, 3 * 86_400 * NS, 86_400 * NS), time_tick(0, 3600 * NS, 90 * NS)
    ('1970-01-02', '00:01:30')
    """
    when = dt.datetime.fromtimestamp(t / NS, tz=dt.UTC)
    span = t1 - t0
    if span >= 3 * 86_400 * NS:
        return when.strftime("%Y-%m-%d")
    if span >= 6 * 3600 * NS:
        return when.strftime("%m-%d %H:%M")
    return when.strftime("%H:%M:%S")


class Axes:
    """Event time on x, a value on y, both to SVG coordinates (5 % room on y, none below
    ``floor``: a value that cannot be lower, as a score cannot be below 0)."""

    def __init__(self, t0: int, t1: int, y0: float, y1: float,
                 floor: float | None = None) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1)
        if y1 <= y0:
            y0, y1 = y0 - 1.0, y1 + 1.0
        pad = (y1 - y0) * 0.05
        self.y0, self.y1 = y0 - pad, y1 + pad
        if floor is not None:
            self.y0 = max(self.y0, floor)

    def x(self, t: float) -> float:
        return round(PAD_L + (t - self.t0) / (self.t1 - self.t0) * (W - PAD_L - PAD_R), 2)

    def y(self, v: float) -> float:
        return round(H - PAD_B - (v - self.y0) / (self.y1 - self.y0) * (H - PAD_T - PAD_B), 2)


def frame(ax: Axes, pid: str, title: str, body: list[str], legend: list[tuple[str, str]],
          fmt: str | None = "{:.4g}", *, empty: bool = False) -> str:
    """One plot: the SVG (as wide as the page) and its legend as an HTML list, whose
    entries wrap between entries, never inside a name. ``fmt`` None: no value ticks (the
    body labels its rows); ``empty``: one line saying there is nothing to plot."""
    if empty:
        return f'<p class="note nodata" id="{pid}" data-plot="{pid}">{esc(title)}: no data.</p>'
    parts = [f'<figure class="plot" data-plot="{pid}">'
             f'<svg class="plot" id="{pid}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="{esc(title)}">',
             f'<text x="{PAD_L}" y="15" class="ptitle">{esc(title)}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" '
             f'height="{H - PAD_T - PAD_B}" fill="none" stroke="#ccc"/>']
    for frac in (0.0, 0.5, 1.0) if fmt is not None else ():
        v = ax.y0 + (ax.y1 - ax.y0) * frac
        parts.append(f'<text x="{PAD_L - 4}" y="{ax.y(v) + 4}" text-anchor="end" '
                     f'class="tick">{esc(str(fmt).format(v))}</text>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):  # inside the SVG
        t = ax.t0 + (ax.t1 - ax.t0) * frac
        parts.append(f'<text x="{ax.x(t)}" y="{H - 8}" text-anchor="{anchor}" class="tick">'
                     f'{esc(time_tick(ax.t0, ax.t1, t))}</text>')
    parts.extend(body)
    parts.append("</svg>")
    if legend:
        parts.append('<ul class="legend">' + "".join(
            f'<li><span class="sw" style="background:{color}"></span>{esc(name)}</li>'
            for name, color in legend) + "</ul>")
    parts.append("</figure>")
    return "\n".join(parts)


def bands(ax: Axes, labels: list[dict[str, Any]]) -> list[str]:
    """The labelled incidents' windows, shaded."""
    out = []
    for lab in labels:
        x0, x1 = ax.x(lab["start"]), ax.x(lab["end"])
        out.append(f'<rect class="incident" x="{x0}" y="{PAD_T}" width="{max(x1 - x0, 1.0)}" '
                   f'height="{H - PAD_T - PAD_B}" fill="#f4a6a6" fill-opacity="0.35">'
                   f'<title>{esc(lab["kind"])} {esc(lab["scope"])}</title></rect>')
    return out


def poly(ax: Axes, pts: Sequence[Sequence[float]], color: str) -> str:
    coords = " ".join(f"{ax.x(t)},{ax.y(v)}" for t, v in pts)
    return f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.2" ' \
           f'points="{coords}"/>'


def range_band(ax: Axes, lows: Sequence[Sequence[float]], highs: Sequence[Sequence[float]],
               color: str) -> str:
    """A shaded band from each point's low to its high (a bar's range)."""
    ring = [*((t, v) for t, v in highs), *((t, v) for t, v in reversed(lows))]
    coords = " ".join(f"{ax.x(t)},{ax.y(v)}" for t, v in ring)
    return (f'<polygon class="range" fill="{color}" fill-opacity="0.22" stroke="none" '
            f'points="{coords}"/>')


def price_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    """Prices of different instruments differ by orders of magnitude: each is plotted
    relative to its first value (percent change); a bar's close is the line, its high-low
    range shaded around it."""
    series = rep["series"]["prices"]
    ranges = rep["series"].get("ranges", {})
    measures = rep["series"].get("measures", {})
    norm = {k: (v[0][1] or 1.0) for k, v in series.items() if v}

    def rel(k: str, p: float) -> float:
        return 100.0 * (p / norm[k] - 1.0)

    ys = [rel(k, p[1]) for k, v in series.items() for p in v]
    ys += [rel(k, x) for k, v in ranges.items() if k in norm for p in v for x in p[1:]]
    ax = Axes(t0, t1, min(ys, default=0.0), max(ys, default=1.0))
    body = bands(ax, rep["labels"])
    legend = []
    for i, (k, v) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        if ranges.get(k):
            body.append(range_band(ax, [[t, rel(k, lo)] for t, lo, _hi in ranges[k]],
                                   [[t, rel(k, hi)] for t, _lo, hi in ranges[k]], color))
        body.append(poly(ax, [[t, rel(k, p)] for t, p in v], color))
        what = " (volatility index)" if measures.get(k) == "volatility" else ""
        legend.append((f"{k}{what}", color))
    if ranges:
        legend.append(("shaded: each bar's high-low range", "#bbbbbb"))
    shaded = [*(["bars' high-low range"] if ranges else []),
              *(["incident windows"] if rep["labels"] else [])]
    title = ("Price, % from first value" + (" (close)" if ranges else "")
             + (f"; {' and '.join(shaded)} shaded" if shaded else ""))
    return frame(ax, "plot-price", title, body, legend, "{:+.2f}%", empty=not ys)


def anomaly_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    pts = rep["series"]["anomalies"]
    top = max([p[1] for p in pts] + [2.0])
    ax = Axes(t0, t1, 0.0, min(top, 50.0), floor=0.0)
    body = bands(ax, rep["labels"])
    body.append(threshold(ax))
    for t, ratio, key, sev in pts:
        color = SEVERITY_COLORS.get(sev, SEVERITY_COLORS["info"])
        body.append(f'<circle class="score" data-severity="{esc(sev)}" cx="{ax.x(t)}" '
                    f'cy="{ax.y(min(ratio, 50.0))}" r="3" fill="{color}">'
                    f'<title>{esc(key)} score/threshold {ratio}</title></circle>')
    return frame(ax, "plot-anomaly", "Anomaly score / threshold at each signal (threshold = 1)",
                 body, [("threshold", THRESHOLD_COLOR), *SEVERITY_COLORS.items()], "{:.3g}",
                 empty=not pts)


def threshold(ax: Axes) -> str:
    y1 = ax.y(1.0)
    return (f'<line class="threshold" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y1}" y2="{y1}" '
            f'stroke="{THRESHOLD_COLOR}" stroke-dasharray="4 3"/>')


def util_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    series = rep["series"]["utilization"]
    top = max([p[1] for v in series.values() for p in v] + [1.1])
    ax = Axes(t0, t1, 0.0, top, floor=0.0)
    body = bands(ax, rep["labels"])
    body.append(threshold(ax))
    legend = [("limit (1.0)", THRESHOLD_COLOR)] if series else []
    for i, (k, v) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        body.append(poly(ax, v, color))
        legend.append((k, color))
    return frame(ax, "plot-util", "Limit utilization (1.0 = limit)", body, legend, "{:.2f}",
                 empty=not any(series.values()))


def command_plot(rep: dict[str, Any], t0: int, t1: int) -> str:
    log = rep["command_log"]
    scopes = sorted({c["scope"] for c in log})[:12] or ["-"]
    ax = Axes(t0, t1, 0.0, float(len(scopes)))
    body = bands(ax, rep["labels"])
    row = {s: i for i, s in enumerate(scopes)}
    for i, s in enumerate(scopes):
        body.append(f'<text x="{PAD_L + 4}" y="{ax.y(i + 0.5) - 6}" class="tick">{esc(s)}</text>')
    for scope in scopes:
        cmds = sorted((c for c in log if c["scope"] == scope), key=lambda c: c["t"])
        y = ax.y(row[scope] + 0.5) - 5
        for c, x in zip(cmds, side_by_side([ax.x(c["t"]) for c in cmds]), strict=True):
            color = ACTION_COLORS.get(c["action"], "#333")
            body.append(f'<rect class="cmd" x="{round(x - MARK_W / 2, 2)}" y="{y}"'
                        f' width="{MARK_W}" height="10" fill="{color}"><title>'
                        f'{esc(c["action"])} {esc(c["scope"])}: {esc(c["reason"])}</title></rect>')
    legend = [(a, ACTION_COLORS.get(a, "#333")) for a in rep["commands"]["by_action"]]
    return frame(ax, "plot-commands", "Commands timeline (one row per scope)", body, legend,
                 None, empty=not log)


MARK_W = 6


def side_by_side(xs: Sequence[float], gap: float = MARK_W + 1) -> list[float]:
    """Where to draw marks meant for ``xs`` (in order) so that none hides another: marks
    closer than ``gap`` sit side by side around their mean, inside the plot.

    >>> side_by_side([100.0, 100.0, 300.0])
    [96.5, 103.5, 300.0]
    """
    lo, hi = PAD_L + gap / 2, W - PAD_R - gap / 2
    groups: list[list[int]] = []
    for i, x in enumerate(xs):
        if groups and x - xs[groups[-1][-1]] < gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = list(xs)
    for g in groups:
        first = sum(xs[i] for i in g) / len(g) - gap * (len(g) - 1) / 2
        for k, i in enumerate(g):
            out[i] = first + k * gap
    for i in range(len(out)):  # groups widened into each other: push right, then back in
        out[i] = max(out[i], lo, out[i - 1] + gap if i else lo)
    for i in reversed(range(len(out))):
        out[i] = min(out[i], hi, out[i + 1] - gap if i + 1 < len(out) else hi)
    return [round(x, 2) for x in out]


def plots(rep: dict[str, Any], t0: int, t1: int) -> list[str]:
    """The four plots, in page order."""
    return [price_plot(rep, t0, t1), anomaly_plot(rep, t0, t1), util_plot(rep, t0, t1),
            command_plot(rep, t0, t1)]
