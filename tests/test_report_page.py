"""The report page's tables and plots, read as text: durations in words, numbers never in
scientific notation, plots that say only what they show (incident windows where there
are labels, scores from zero, both of two commands given at once, a one-line note in
place of an empty plot)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from riskguard.dataflows.backtest import BacktestResult, Label
from riskguard.dataflows.report import build_report, render_html
from riskguard.schemas import (
    Action,
    AnomalySignal,
    Audience,
    MitigationCommand,
    Scope,
    ScopeKind,
    Severity,
)

S = 1_000_000_000
T0 = 1_704_067_200 * S
AUD = Audience(env="dev", topic="riskguard.commands")
MARKET = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")


def _cmd(n: int, action: Action, at: int) -> MitigationCommand:
    return MitigationCommand(
        command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"riskguard-page/{n}")),
        issuer="engine-1", seq=n, issued_at=at, expires_at=at + 600 * S, audience=AUD,
        action=action, scope=MARKET, params={}, reason=f"rung {n}")


def _report(labels: list[Label] | None = None) -> dict[str, Any]:
    """Ten hours of one market: an alert and a reduce-only at the same moment, lifted
    7 h 39 min later; one warn score; no limit measured anything."""
    res = BacktestResult(start_ns=T0, end_ns=T0 + 36_000 * S, n_events=36_000,
                         keys={"binance/BTCUSDT"})
    res.prices = {"binance/BTCUSDT": [(T0 + i * 60 * S, 42_000.0 + i % 9) for i in range(600)]}
    res.signals = [AnomalySignal(id="s1", key="binance/BTCUSDT", scope=MARKET, ts=T0 + 600 * S,
                                 score=1.2, threshold=1.0, severity=Severity.WARN, model="m",
                                 model_version="1")]
    res.commands = [_cmd(1, Action.ALERT, T0 + 601 * S), _cmd(2, Action.REDUCE_ONLY, T0 + 601 * S),
                    _cmd(3, Action.RESUME, T0 + 601 * S + 27_540 * S)]
    return build_report(res, labels or [], title="page")


def _plot(page: str, pid: str) -> str:
    start = page.index(f'data-plot="{pid}"')
    return page[start:page.index("</figure>", start)]


def test_time_in_each_state_reads_as_durations_and_no_number_is_scientific() -> None:
    """27,540 s of reduce-only is ``7 h 39 min``; no cell of the page holds ``e+``."""
    page = render_html(_report())
    states = page[page.index('id="t-states"'):]
    states = states[:states.index("</table>")]
    assert "<td>7 h 39 min</td>" in states and "<th>reduce_only</th>" in states
    assert not re.search(r"\d\.\d+e[+-]\d", page)
    assert "<td>36,000</td>" in page  # the events, as the story counts them


def test_the_price_plot_speaks_of_incident_windows_only_where_there_are_labels() -> None:
    """Unlabelled: the title says nothing of incident windows; labelled: it does."""
    assert "incident windows" not in _plot(render_html(_report()), "plot-price")
    label = Label(kind="crash", scope="instrument:binance/BTCUSDT", start_ns=T0 + 500 * S,
                  end_ns=T0 + 900 * S)
    assert "incident windows shaded" in _plot(render_html(_report([label])), "plot-price")


def test_the_score_axis_starts_at_zero_and_the_commands_axis_has_no_numbers() -> None:
    """Scores are never negative, so the score axis's lowest tick is 0; the commands plot
    names its rows (scopes), not numbers."""
    page = render_html(_report())
    ticks = re.findall(r'class="tick">([^<]*)</text>', _plot(page, "plot-anomaly"))
    assert ticks[0] == "0" and not any(t.startswith("-") for t in ticks)
    cmd_ticks = re.findall(r'class="tick">([^<]*)</text>', _plot(page, "plot-commands"))
    assert "instrument:binance/BTCUSDT" in cmd_ticks
    assert not [t for t in cmd_ticks if re.fullmatch(r"-?\d+", t)]


def test_two_commands_at_one_moment_are_both_visible() -> None:
    """The alert and the reduce-only given at the same time sit side by side, not one on
    top of the other."""
    marks = re.findall(r'<rect class="cmd" x="([\d.]+)" y="([\d.]+)"',
                       _plot(render_html(_report()), "plot-commands"))
    assert len(marks) == 3
    assert abs(float(marks[0][0]) - float(marks[1][0])) >= 6  # a mark is 6 wide


def test_an_empty_plot_is_a_one_line_note() -> None:
    """No limit measured anything: the utilization plot is one line saying so, with no
    plot height; the plots with data stay plots."""
    page = render_html(_report())
    note = re.search(r'<p class="note nodata" id="plot-util"[^>]*>([^<]*)</p>', page)
    assert note and note.group(1) == "Limit utilization (1.0 = limit): no data."
    assert '<svg class="plot" id="plot-util"' not in page
    assert '<svg class="plot" id="plot-price"' in page
