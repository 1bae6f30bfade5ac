"""The report page's tables, read as text: durations in words, numbers never in
scientific notation."""

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


def test_time_in_each_state_reads_as_durations_and_no_number_is_scientific() -> None:
    """27,540 s of reduce-only is ``7 h 39 min``; no cell of the page holds ``e+``."""
    page = render_html(_report())
    states = page[page.index('id="t-states"'):]
    states = states[:states.index("</table>")]
    assert "<td>7 h 39 min</td>" in states and "<th>reduce_only</th>" in states
    assert not re.search(r"\d\.\d+e[+-]\d", page)
    assert "<td>36,000</td>" in page  # the events, as the story counts them

