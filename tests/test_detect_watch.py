"""The firm tier's watch on its detect workers: the contract, the alert rules, and the
guard's firm tier raising and mitigating it in a replay."""

from __future__ import annotations

from typing import Any

import pytest
from contract import CHECKS, Case
from riskguard.dataflows.backtest import dump_toml, run_backtest
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.stress import (
    generate_market,
    guard_config_doc,
    load_scenario,
    scenario_path,
)
from riskguard.operators.core.clock import Tick
from riskguard.operators.detection.detect_watch import DetectWatchLogic, DetectWatchState
from riskguard.schemas import DetectProgress, RiskAlert

S = 1_000_000_000


class Replayed:
    """A watch whose processing time is the newest tick's event time (a replay clock)."""

    def __init__(self, state: DetectWatchState | None, workers: int = 2) -> None:
        self.now = 0
        self.logic = DetectWatchLogic(workers, 5 * S, state, clock=lambda: self.now)

    def on_event(self, tick: Tick) -> list[RiskAlert]:
        self.now = max(self.now, tick.ts)
        return self.logic.on_event(tick)

    def snapshot(self) -> DetectWatchState:
        return self.logic.snapshot()


def ticks(spec: str) -> list[Tick]:
    """``"0:f 0:a 1:b"``: at second 0 the firm ticks, w0 ("a") and w1 ("b") report."""
    out = []
    for item in spec.split():
        t, who = item.split(":")
        source = {"f": "host/1/w0", "a": "detect/w0", "b": "detect/w1"}[who]
        out.append(Tick(ts=int(t) * S, source=source))
    return out


# w1 goes quiet after second 0 (alerted at 5) and is back at 7; w0 goes quiet after
# 12 (alerted at 17) and is back at 20. The contract's split points (10, 15 and 20 of
# 30) fall where every worker has just reported: a resume counts silence afresh.
EVENTS = ticks("0:a 0:b 0:f 2:a 3:f 5:a 6:f 7:b 7:a 7:f "
               "8:a 8:b 8:f 9:a 9:b 9:f 10:a 10:b 10:f 11:f "
               "12:a 12:b 13:b 14:f 16:b 17:f 18:b 19:f 20:a 21:f")
CASE = Case(name="detect_watch", builder=Replayed, events=EVENTS,
            normalize=lambda outs: [(a.kind, a.id, a.ts, a.details["worker"]) for a in outs])


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_detect_watch_logic_meets_the_contract(check: Any) -> None:
    check(CASE)


def run(events: list[Tick], workers: int = 2) -> list[tuple[int, str, str]]:
    watch = Replayed(None, workers)
    return [(t.ts // S, a.kind, str(a.details["worker"]))
            for t in events for a in watch.on_event(t)]


def test_a_silent_worker_is_alerted_once_and_its_return_closes_it() -> None:
    assert run(EVENTS) == [(5, "detect_silent", "detect/w1"),
                           (7, "detect_restored", "detect/w1"),
                           (17, "detect_silent", "detect/w0"),
                           (20, "detect_restored", "detect/w0")]


def test_no_alert_while_the_firms_time_has_not_passed_the_silent_workers_progress() -> None:
    now = [0]
    watch = DetectWatchLogic(1, 10 * S, clock=lambda: now[0])
    assert watch.on_event(Tick(ts=20 * S, source="detect/w0")) == []  # ahead, then silent
    now[0] = 30 * S
    assert watch.on_event(Tick(ts=19 * S, source="h/w0")) == []  # the firm is behind it
    assert [a.kind for a in watch.on_event(Tick(ts=21 * S, source="h/w0"))] == [
        "detect_silent"]


def test_a_worker_never_heard_from_is_silent_from_the_start() -> None:
    assert run(ticks("0:f 0:a 3:f 3:a 6:f 6:a")) == [(6, "detect_silent", "detect/w1")]


def test_restored_comes_once_every_silent_worker_is_back() -> None:
    out = run(ticks("0:a 0:b 0:f 6:f 7:a 8:f 9:b"))
    assert out == [(6, "detect_silent", "detect/w0"), (6, "detect_silent", "detect/w1"),
                   (9, "detect_restored", "detect/w0,detect/w1")]


def test_a_resumed_watch_counts_silence_afresh_not_from_another_process_times() -> None:
    now = [0]
    watch = DetectWatchLogic(1, 10 * S, clock=lambda: now[0])
    watch.on_batch([Tick(ts=5 * S, source="detect/w0"), Tick(ts=5 * S, source="h/w0")])
    snap = watch.snapshot()
    now[0] = 600 * S  # restarted ten minutes later: the old processing times mean nothing
    resumed = DetectWatchLogic(1, 10 * S, snap, clock=lambda: now[0])
    assert resumed.on_event(Tick(ts=6 * S, source="h/w0")) == []
    now[0] += 11 * S  # and now it really has been silent
    assert [a.kind for a in resumed.on_event(Tick(ts=7 * S, source="h/w0"))] == [
        "detect_silent"]


def test_a_firm_tier_replay_alerts_a_silent_detect_worker_and_mitigates_it(tmp_path) -> None:
    """The guard as a firm tier over a replay (processing time = event time): the detect
    worker's progress stops for 40 s of a scenario, so the firm tier raises
    ``detect_silent`` (audited with the other signals), the playbook sends a firm-wide
    alert and, a minute on, wider quotes; its progress comes back and
    ``detect_restored`` closes the incident."""
    sc = load_scenario(scenario_path("flash_crash"))
    doc = guard_config_doc(sc, init_keys(tmp_path))
    doc["tier"] = {"role": "firm", "silent_s": 10.0}
    cfg = tmp_path / "firm.toml"
    cfg.write_text(dump_toml(doc))
    recs = sorted(generate_market(sc), key=lambda r: r.ts)
    t0, t1 = recs[0].ts, recs[-1].ts
    quiet = (t0 + 20 * S, t0 + 100 * S)  # no detect progress in between
    progress = [DetectProgress(ts=t, source="detect/w0") for t in range(t0, t1, S)
                if not quiet[0] <= t < quiet[1]]
    res = run_backtest(*load_guard_config(cfg),
                       records=sorted([*recs, *progress], key=lambda r: r.ts))
    kinds = [(s.kind, s.ts) for s in res.signals
             if isinstance(s, RiskAlert) and s.kind.startswith("detect_")]
    assert [k for k, _ in kinds] == ["detect_silent", "detect_restored"], kinds
    # silent_s after the last progress, which came one second before the quiet period
    # (a backtest's clock is never more than a tick ahead of the record it processes)
    assert quiet[0] - S + 10 * S <= kinds[0][1] < quiet[1]
    assert quiet[1] <= kinds[1][1] < quiet[1] + 5 * S
    firm = [(c.action.value, c.reason) for c in res.commands if c.scope.label() == "firm:*"]
    assert [a for a, _ in firm][:3] == ["alert", "widen_quotes", "resume"], firm
    assert "detect_silent" in firm[0][1]
