"""Bounded state under floods: the playbook's rate cap is per venue (a flood on one
cannot starve another), incidents the cap holds back sleep instead of being visited by
every event, and the admission gate keeps venues, instruments and counterparties past
their caps out of every keyed step, naming each refused input."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from contract import CHECKS, Case
from playbook_cases import FLASH, S, acts, alert, anomaly, feed, make
from riskguard.operators.core.admission import AdmissionConfig, KeyAdmission, Known
from riskguard.operators.core.clock import Tick
from riskguard.operators.mitigation.playbook import Rule, Rung
from riskguard.operators.mitigation.rate_cap import rate_key
from riskguard.schemas import (
    Action,
    DeadLetter,
    Fill,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
    VenueStatus,
)
from riskguard.schemas.base import stamp_source

FLOOD = Rule(name="junk", signal="anomaly", scope="instrument:*", target="same",
             ladder=(Rung(action=Action.ALERT),), quiet_s=1_000)
UNKNOWN_CP = Rule(name="unknown_cp", signal="unknown_counterparty", target="same",
                  recovery="manual", ladder=(Rung(action=Action.REDUCE_ONLY),))


def test_a_flood_on_one_venue_cannot_starve_another_venues_mitigations() -> None:
    """300 junk instruments on binance, then a real crash on okx: every okx rung goes out
    when it falls due; binance's alerts are capped at max_commands a window."""
    logic = make(FLASH, FLOOD, max_commands=20, rate_window_s=10)
    junk = [anomaly(0.001 * i, inst=f"JUNK-{i}", v="binance") for i in range(300)]
    flood = feed(logic, junk)
    assert len(flood) <= 2 * 20  # binance's budget (the flash rule's alert on it too)
    crash = feed(logic, [anomaly(1, v="okx", sev=Severity.CRITICAL)])
    assert ("alert", "venue:okx") in acts(crash)
    assert ("reduce_only", "venue:okx") in acts(crash)  # min_severity critical: at once
    later = feed(logic, [Tick(ts=31 * S)])
    assert ("halt_trading", "venue:okx") in acts(later)


def test_the_rate_key_is_the_scopes_venue_else_the_scope() -> None:
    inst = Scope(kind=ScopeKind.INSTRUMENT, value="X", venue="okx")
    cp = Scope(kind=ScopeKind.COUNTERPARTY, value="okx")
    assert (rate_key(inst), rate_key(cp)) == ("venue:okx", "counterparty:okx")


def test_incidents_held_back_by_the_cap_are_not_visited_by_every_event() -> None:
    """5,000 unknown counterparties on a cap of 20 a window: the events in between cost
    what changed, not what waits (the work per event stays flat as incidents pile up)."""
    logic = make(UNKNOWN_CP, max_commands=20, rate_window_s=10)
    scopes = [Scope(kind=ScopeKind.COUNTERPARTY, value=f"cp{i}") for i in range(5_000)]
    calls = 0
    real_climb = logic._climb

    def counted(inc: Any, rule: Any) -> None:
        nonlocal calls
        calls += 1
        real_climb(inc, rule)

    logic._climb = counted  # type: ignore[method-assign]
    out = feed(logic, [alert("unknown_counterparty", sc, 0.0001 * i, Severity.CRITICAL)
                       for i, sc in enumerate(scopes)])
    assert len(out) == 5_000  # each counterparty's own budget: none starves another
    assert calls < 3 * 5_000  # each incident visited a bounded number of times


def test_incidents_sharing_a_capped_venue_sleep_until_the_window_rolls() -> None:
    """A venue flooded past its cap: its held-back incidents are woken when the window
    rolls, and meanwhile events elsewhere do not visit them."""
    logic = make(FLOOD, max_commands=5, rate_window_s=10)
    out = feed(logic, [anomaly(0.001 * i, inst=f"J{i}", v="binance") for i in range(200)])
    assert len(out) == 5
    visits = 0
    real_climb = logic._climb

    def counted(inc: Any, rule: Any) -> None:
        nonlocal visits
        visits += 1
        real_climb(inc, rule)

    logic._climb = counted  # type: ignore[method-assign]
    feed(logic, [anomaly(1 + 0.001 * i, inst=f"OK{i}", v="okx") for i in range(50)])
    assert visits <= 2 * 50  # the 195 sleeping binance incidents were not visited
    rolled = feed(logic, [Tick(ts=10 * S)])
    assert len([c for c in rolled if c.scope.venue == "binance"]) == 5


PER_INSTRUMENT = Rule(name="per", signal="anomaly", scope="instrument:*", target="same",
                      ladder=(Rung(action=Action.REDUCE_ONLY),), quiet_s=10_000,
                      recovery="manual")
REROUTE = Rule(name="rr", signal="heartbeat_loss", scope="venue:*", target="venue",
               quiet_s=10_000, ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))


def _with_reroute(mitigated: int, **kw: Any) -> Any:
    """A playbook with ``mitigated`` instruments under reduce_only on binance and okx's
    order flow rerouted to binance and deribit."""
    logic = make(PER_INSTRUMENT, REROUTE, **kw)
    feed(logic, [anomaly(1, inst=f"J{i}", v="binance") for i in range(mitigated)])
    out = logic.on_event(alert("heartbeat_loss", feed_scope("okx"), 2, Severity.CRITICAL))
    assert acts(out) == [("reroute_order_flow", "venue:okx")]
    return logic


def feed_scope(v: str) -> Scope:
    return Scope(kind=ScopeKind.VENUE, value=v)


def test_a_reroute_in_force_does_not_make_every_event_scan_the_mitigations() -> None:
    """2,000 instruments under reduce_only and one reroute in force: a tick or a signal
    that changes no venue's health and no mitigation does not look for reroute targets
    again (that look reads every mitigation in force)."""
    logic = _with_reroute(2_000, max_commands=1_000_000)
    looks = 0
    real = logic._healthy_alternatives

    def counted(*args: Any, **kw: Any) -> list[str]:
        nonlocal looks
        looks += 1
        return real(*args, **kw)

    logic._healthy_alternatives = counted  # type: ignore[method-assign]
    quiet = feed(logic, [Tick(ts=(3 + k) * S) for k in range(500)]
                 + [anomaly(600, inst="J7", v="binance")])
    assert quiet == []
    more = feed(logic, [anomaly(600, inst=f"K{i}", v="binance") for i in range(500)])
    assert len(more) == 500  # new instrument mitigations move no reroute
    assert looks == 0
    out = logic.on_event(alert("heartbeat_loss", feed_scope("deribit"), 601, Severity.CRITICAL))
    assert ("reroute_order_flow", "venue:okx") in acts(out)  # narrowed to binance at once
    assert next(c for c in out if c.scope.value == "okx").params["targets"] == ["binance"]


def test_a_retarget_the_rate_cap_held_back_is_retried_when_the_window_rolls() -> None:
    """deribit goes down while okx's window is full: okx's reroute is narrowed when the
    window rolls, by a tick alone."""
    logic = _with_reroute(0, max_commands=1, rate_window_s=10)
    out = logic.on_event(alert("heartbeat_loss", feed_scope("deribit"), 4, Severity.CRITICAL))
    assert ("reroute_order_flow", "venue:okx") not in acts(out)
    later = feed(logic, [Tick(ts=k * S) for k in range(5, 12)])
    narrowed = [c for c in later if c.scope.value == "okx"]
    assert [c.params["targets"] for c in narrowed] == [["binance"]]


# -- the admission gate ----------------------------------------------------------------


def _trade(v: str, i: str, n: int = 0) -> Trade:
    t = Trade(id=f"t{n}", venue=v, instrument=i, ts=1, price=1.0, qty=1.0, side="buy")
    stamp_source(t, "prod.riskguard.market.v1", 3, n)
    return t


def _fill(cp: str, n: int = 0) -> Fill:
    f = Fill(id=f"f{n}", venue="okx", counterparty=cp, instrument="BTC-USDT", side="buy",
             qty=1.0, price=1.0, ts=1)
    stamp_source(f, "prod.riskguard.fills.v1", 0, n)
    return f


KNOWN = Known(venues=frozenset({"okx"}), instruments=frozenset({"BTC-USDT"}),
              counterparties=frozenset({"okx"}))


def test_names_past_a_cap_are_dead_letters_naming_their_input() -> None:
    gate = KeyAdmission(AdmissionConfig(max_venues=1, max_instruments_per_venue=2,
                                        max_market_keys=3, max_counterparties=1), KNOWN,
                        clock=lambda: 9)
    recs = [_trade("okx", f"J{i}", i) for i in range(4)]
    recs += [_trade("kraken", "BTC-USDT", 10), _trade("kraken", "K1", 11),
             _trade("bybit", "BTC-USDT", 12), _fill("okx", 13), _fill("cp1", 14),
             _fill("cp2", 15)]
    out = gate.on_batch(recs)
    dead = [(d.reason, d.topic, d.partition, d.offset) for d in out if isinstance(d, DeadLetter)]
    assert dead == [
        ("too_many_instruments", "prod.riskguard.market.v1", 3, 2),
        ("too_many_instruments", "prod.riskguard.market.v1", 3, 3),
        ("too_many_venues", "prod.riskguard.market.v1", 3, 12),
        ("too_many_counterparties", "prod.riskguard.fills.v1", 0, 15)]
    assert gate.state.refused == {"too_many_instruments": 2, "too_many_venues": 1,
                                  "too_many_counterparties": 1}
    assert isinstance(gate.on_event(_trade("okx", "BTC-USDT"))[0], Trade)  # named: always
    # each cap's first refusal (of instruments: per venue) is an alert, never silent
    alerts = [(a.details["reason"], a.scope.label(), a.severity.value) for a in out
              if isinstance(a, RiskAlert)]
    assert alerts == [("too_many_instruments", "venue:okx", "warn"),
                      ("too_many_venues", "firm:*", "warn"),
                      ("too_many_counterparties", "firm:*", "critical")]
    assert all(a.kind == "admission_cap" for a in out if isinstance(a, RiskAlert))


def test_the_gate_meets_the_contract_so_a_resume_admits_exactly_what_it_would_have() -> None:
    cfg = AdmissionConfig(max_venues=2, max_instruments_per_venue=3, max_market_keys=5,
                          max_counterparties=2)
    events = ([_trade(v, f"I{i}", i) for v in ("okx", "a", "b", "c") for i in range(5)]
              + [_fill(f"cp{i}", i) for i in range(4)]
              + [VenueStatus(id="h", venue="zz", ts=1)])
    case = Case(name="admission", builder=lambda st: KeyAdmission(cfg, KNOWN, state=st,
                                                                 clock=lambda: 1),
                events=events)
    for check in CHECKS:
        check(case)


@pytest.mark.parametrize("n", [10, 1_000])
def test_the_gates_state_is_bounded_by_its_caps_whatever_comes(n: int) -> None:
    cfg = AdmissionConfig(max_venues=4, max_instruments_per_venue=8, max_market_keys=16,
                          max_counterparties=4)
    gate = KeyAdmission(cfg, KNOWN, clock=lambda: 1)
    gate.on_batch([_trade(f"v{i % 50}", f"I{i}", i) for i in range(n)]
                  + [_fill(f"cp{i}", i) for i in range(n)])
    st = gate.state
    assert len(st.venues) <= 4 + 1 and sum(map(len, st.venues.values())) <= 16
    assert len(st.counterparties) <= 4


def test_the_guard_turns_names_past_the_caps_into_dead_letters_and_still_meets_the_crash(
        tmp_path: Any) -> None:
    """The gate is wired into the guard: 300 made-up instruments on okx just before the
    flash crash on okx, 50 admitted; the other 250 are dead letters (each of their two
    trades), and the crash still gets its alert and reduce_only."""
    from riskguard.dataflows.stress import (
        backtest_scenario,
        generate_market,
        load_scenario,
        scenario_path,
    )
    from riskguard.dataflows.stress_checks import NS, START_NS

    sc = load_scenario(scenario_path("flash_crash"))
    onset = START_NS + int(sc.shocks[0].onset_s * NS)
    junk = [Trade(id=f"j{j}-{i}", venue="okx", instrument=f"JUNK-{i}",
                  ts=onset - 5 * NS + (j * 300 + i) * 10_000_000, price=100.0 + j, qty=1.0,
                  side="buy") for j in range(2) for i in range(300)]
    recs = sorted([*generate_market(sc), *junk], key=lambda r: r.ts)
    res, _ = backtest_scenario(sc, recs, tmp_path, overrides={"admission": {
        "max_instruments_per_venue": 50, "max_market_keys": 50}}, out_dir=tmp_path / "out")
    assert res.dead_letter_counts["too_many_instruments"] == 250 * 2
    lines = (tmp_path / "out" / "dead_letters.jsonl").read_bytes().splitlines()
    dead = [msgspec.json.decode(line, type=DeadLetter) for line in lines]
    refused = [d for d in dead if d.reason == "too_many_instruments"]
    assert len(refused) == 250 * 2
    assert {d.found for d in refused} == {f"JUNK-{i}" for i in range(50, 300)}
    okx = {(c.action.value, c.scope.label()) for c in res.commands}
    assert {("alert", "venue:okx"), ("reduce_only", "venue:okx")} <= okx
    capped = [a for a in res.signals if getattr(a, "kind", "") == "admission_cap"]
    assert [(a.scope.label(), a.details["first_refused"]) for a in capped] == [
        ("venue:okx", "JUNK-50")]


class _CountedReads(dict):  # type: ignore[type-arg]
    """A dict counting the times it is read whole."""

    reads = 0

    def __iter__(self) -> Any:
        type(self).reads += 1
        return super().__iter__()


def test_a_window_roll_does_not_read_every_incidents_repeat_history() -> None:
    """5,000 incidents within their repeat window: each rate-window roll (here every
    event, as in a replay of sparse bars) forgets what expired without reading all of
    them, and forgets it all the same."""
    logic = make(PER_INSTRUMENT, max_commands=1_000_000, rate_window_s=1)
    feed(logic, [anomaly(1, inst=f"J{i}", v="binance") for i in range(5_000)])
    logic.state.history = _CountedReads(logic.state.history)
    feed(logic, [Tick(ts=(2 + k) * S) for k in range(200)])
    assert _CountedReads.reads == 0
    assert len(logic.state.history) == 5_000  # repeat_window_s: trips of second 1 count
    feed(logic, [Tick(ts=(1 + int(PER_INSTRUMENT.repeat_window_s) + 1) * S)])
    assert logic.state.history == {}


def test_a_flow_of_ones_own_bounds_its_feature_keys_with_admit_keys() -> None:
    """admit_keys before extract_features (no guard): 40 made-up instruments on okx after
    the known BTC-USDT, 5 admitted beyond it; the other 35 are dead letters naming their
    source and input, one admission_cap alert says so, and the features step keeps state
    for the 6 admitted markets only."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators import FeatureConfig, admit_keys, extract_features

    trades = [Trade(id="t-btc", venue="okx", instrument="BTC-USDT", ts=S, price=100.0,
                    qty=1.0, side="buy")]
    for i in range(40):
        junk = Trade(id=f"t{i}", venue="okx", instrument=f"JUNK-{i}", ts=S + i, price=1.0,
                     qty=1.0, side="buy")
        stamp_source(junk, "t.riskguard.market.v1", 0, 100 + i)
        trades.append(junk)
    flow = Dataflow("own_flow")
    gate = admit_keys("admit", op.input("in", flow, TestingSource(trades)),
                      config=AdmissionConfig(max_instruments_per_venue=5, max_market_keys=5),
                      known=Known(venues=frozenset({"okx"}),
                                  instruments=frozenset({"BTC-USDT"})),
                      clock=lambda: S)
    feats = extract_features("features", gate.oks,
                             config=FeatureConfig(venues=("okx",), cadence="event"),
                             clock=lambda: 10**19)
    vectors: list[Any] = []
    refused: list[DeadLetter] = []
    alerts: list[RiskAlert] = []
    op.output("vectors", feats.oks, TestingSink(vectors))
    op.output("refused", gate.errs, TestingSink(refused))
    op.output("alerts", gate.alerts, TestingSink(alerts))
    run_main(flow)
    assert {key for key, _ in vectors} == {"okx/BTC-USDT", *(f"okx/JUNK-{i}" for i in range(5))}
    assert [(d.reason, d.found, d.topic, d.offset) for d in refused] == [
        ("too_many_instruments", f"JUNK-{i}", "t.riskguard.market.v1", 100 + i)
        for i in range(5, 40)]
    assert all(msgspec.json.decode(d.raw)["instrument"] == d.found for d in refused)
    assert [(a.kind, a.details["first_refused"]) for a in alerts] == [
        ("admission_cap", "JUNK-5")]
