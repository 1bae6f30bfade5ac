"""What the report counts as an alarm and what its timeline shows: an alarm is an episode
at warn or critical while its detector is live, counted once; info-level signals are
shown, never counted; an episode that opened while its detector warmed up shows that open
before any later phase, and one wholly inside the warm-up is left out."""

from __future__ import annotations

from typing import Any

from riskguard.dataflows.backtest import BacktestResult
from riskguard.dataflows.report import alarms_of, build_report, events_of, render_html
from riskguard.schemas import AnomalySignal, RiskAlert, Scope, ScopeKind, Severity

S = 1_000_000_000
T0 = 1_704_067_200 * S
OKX = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")


def _sig(n: int, kind: str, phase: str, severity: str, *, episode: str | None = "e1",
         warming_up: bool = False) -> AnomalySignal:
    return AnomalySignal(id=f"s{n}", kind=kind, phase=phase, key="okx/BTC-USDT", scope=OKX,
                         ts=T0 + n * 10 * S, episode_id=episode and f"okx/BTC-USDT#{episode}",
                         score=2.0, threshold=1.0, severity=Severity(severity),
                         warming_up=warming_up, model="m", model_version="1")


def _report(signals: list[Any]) -> dict[str, Any]:
    res = BacktestResult(start_ns=T0, end_ns=T0 + 3600 * S, n_events=100,
                         keys={"okx/BTC-USDT"}, signals=signals)
    return build_report(res, [], title="alarms")


def _timeline(page: str) -> str:
    return page[page.index('id="t-timeline"'):page.index("<h2>Plots")]


def test_an_info_signal_is_shown_in_the_timeline_but_never_counted_as_an_alarm() -> None:
    """A regime change (info) and an info alert sit in the timeline as signals; only the
    warn price move is an alarm, in the counts, the story and the timeline alike."""
    accepted = RiskAlert(id="a1", kind="limit_update_accepted", scope=OKX, ts=T0 + 5 * S,
                         severity=Severity.INFO, reason="limit raised")
    rep = _report([accepted, _sig(1, "price_move", "open", "warn", episode="move1"),
                   _sig(2, "regime_change", "open", "info", episode=None)])
    assert rep["summary"]["alarms"] == 1
    assert rep["alarms_by_signal"] == {"price_move": 1}
    assert [(e["what"], e["alarm"]) for e in rep["events"]] == [
        ("limit_update_accepted", False), ("price_move open", True),
        ("regime_change open", False)]
    page = render_html(rep)
    assert "the guard raised 1 alarm (price_move 1)" in page
    assert "shown in the timeline but not alarms: " in page and "regime_change 1" in page
    rows = _timeline(page)
    assert "<td>alarm</td><td>price_move open (warn)</td>" in rows
    assert "<td>signal</td><td>regime_change open (info)</td>" in rows


def test_an_episode_opened_in_warm_up_shows_its_open_before_its_close() -> None:
    """An anomaly that opened while the detector warmed up and closed once it was warm:
    the timeline shows the open (marked warming up) and then the close; it acted on
    nothing, so it is no alarm."""
    rep = _report([_sig(1, "anomaly", "open", "warn", warming_up=True),
                   _sig(2, "anomaly", "close", "warn")])
    assert [(e["what"], e.get("warming_up", False), e["alarm"]) for e in rep["events"]] == [
        ("anomaly open", True, False), ("anomaly close", False, False)]
    assert rep["summary"]["alarms"] == 0
    rows = _timeline(render_html(rep))
    assert rows.index("anomaly open (warn, warming up)") < rows.index("anomaly close (warn)")


def test_an_episode_that_escalates_once_warm_is_one_alarm_at_its_escalation() -> None:
    """Opened in warm-up, escalated to critical once warm (the playbook acts on that), then
    closed: one alarm, at the escalation, with the open shown before it."""
    signals = [_sig(1, "anomaly", "open", "warn", warming_up=True),
               _sig(2, "anomaly", "escalate", "critical"), _sig(3, "anomaly", "close", "critical")]
    assert alarms_of(signals) == [(T0 + 20 * S, "anomaly", OKX)]
    assert [(e["what"], e["alarm"]) for e in events_of(signals)] == [
        ("anomaly open", False), ("anomaly escalate", True), ("anomaly close", False)]


def test_an_info_open_that_escalates_to_warn_is_one_alarm_at_the_warning() -> None:
    """An episode counts once, at the first moment it is warn or higher."""
    signals = [_sig(1, "anomaly", "open", "info"), _sig(2, "anomaly", "escalate", "warn"),
               _sig(3, "anomaly", "escalate", "critical")]
    assert alarms_of(signals) == [(T0 + 20 * S, "anomaly", OKX)]


def test_an_episode_wholly_inside_the_warm_up_is_left_out() -> None:
    """Every phase warming up: nothing in the timeline, no alarm."""
    signals = [_sig(1, "anomaly", "open", "critical", warming_up=True),
               _sig(2, "anomaly", "close", "critical", warming_up=True)]
    assert events_of(signals) == [] and alarms_of(signals) == []


def test_no_later_phase_is_shown_without_its_open() -> None:
    """Over a mix of episodes (two keys' worth, warm-up and not), each episode the
    timeline shows starts with its open."""
    signals = [_sig(1, "anomaly", "open", "info", episode="a", warming_up=True),
               _sig(2, "price_move", "open", "warn", episode="m1"),
               _sig(3, "anomaly", "escalate", "warn", episode="a", warming_up=True),
               _sig(4, "anomaly", "deescalate", "info", episode="a"),
               _sig(5, "price_move", "close", "warn", episode="m1"),
               _sig(6, "anomaly", "close", "warn", episode="a"),
               _sig(7, "anomaly", "open", "warn", episode="b", warming_up=True),
               _sig(8, "anomaly", "close", "warn", episode="b", warming_up=True)]
    seen: dict[str, str] = {}
    for e in events_of(signals):
        kind, phase = e["what"].split()
        seen.setdefault(kind, phase)
        assert seen[kind] == "open", e
    assert len(events_of(signals)) == 6


def test_the_unlabelled_sentence_agrees_with_the_number_of_alarms() -> None:
    """No labels: the page says none, one or several alarms went unjudged in sentences
    whose verbs agree with the count."""
    def story(n: int) -> str:
        signals = [_sig(i, "price_move", "open", "warn", episode=f"move{i}")
                   for i in range(1, n + 1)]
        page = render_html(_report(signals))
        return page[page.index("<b>Not scored:</b>"):page.index("</li>", page.index("Not scored"))]
    assert "the guard raised no alarm to judge. To score a run, rerun" in story(0)
    assert ("so the one alarm is unlabelled: it is counted neither true nor false. To score "
            "it, rerun") in story(1)
    assert ("so the 2 alarms are unlabelled: none is counted true or false. To score them, "
            "rerun") in story(2)
    assert "1 alarm are" not in story(1)
