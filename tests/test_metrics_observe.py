"""The metrics observer: which record moves which Prometheus series, and by how much.

The metrics live on prometheus-client's process-wide registry, so every test
reads values before and after and asserts the difference.
"""

from __future__ import annotations

import pickle
import urllib.request
from typing import Any

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from prometheus_client import REGISTRY
from riskguard.connectors.subscriber import GapAlert, Rejection
from riskguard.operators.core import metrics
from riskguard.operators.core.observe import ObserveConfig, Observer, key_class, observe
from riskguard.schemas import (
    AnomalySignal,
    AuditCheckpoint,
    DeadLetter,
    LimitBreach,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Utilization,
)
from riskguard.schemas.signals import LimitLevel

from riskguard.errors import ConfigError

NS = 1_000_000_000


def value(name: str, **labels: str) -> float:
    """Current sample value (0.0 when the series does not exist yet)."""
    got = REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def signal(key: str, phase: str, *, score: float = 5.0, threshold: float = 3.0,
           warming_up: bool = False, kind: str = "anomaly", n: int = 0) -> AnomalySignal:
    venue, _, inst = key.partition("/")
    scope = (Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue) if inst
             else Scope(kind=ScopeKind.VENUE, value=venue))
    return AnomalySignal(
        id=f"{key}-{phase}-{n}", kind=kind, phase=phase, key=key, scope=scope, ts=n,  # type: ignore[arg-type]
        episode_id=f"{key}-ep", score=score, threshold=threshold, severity=Severity.WARN,
        warming_up=warming_up, model="gaussian", model_version="1",
    )


def util(path: str, kind: str, u: float, level: LimitLevel = LimitLevel.OK) -> Utilization:
    return Utilization(limit_path=path, kind=kind, ts=1,
                       scope=Scope(kind=ScopeKind.COUNTERPARTY, value="x"), exposure=u,
                       base_limit=1.0, effective_limit=1.0, utilization=u, level=level)


def test_key_class_is_bounded_by_scope_kind_and_option_shape() -> None:
    """Keys reduce to a class: venue, market, option (by name shape or config), firm."""
    assert key_class(Scope(kind=ScopeKind.VENUE, value="okx")) == "venue"
    assert key_class(Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")) == "market"
    assert key_class(Scope(kind=ScopeKind.INSTRUMENT, value="BTC-27DEC26-70000-C")) == "option"
    assert key_class(Scope(kind=ScopeKind.INSTRUMENT, value="BTCOPT1"), {"BTCOPT1"}) == "option"
    assert key_class(Scope(kind=ScopeKind.COUNTERPARTY, value="okx")) == "counterparty"


def test_episode_gauge_follows_open_and_close_and_ignores_replayed_opens() -> None:
    """open +1, escalate 0, a replayed open of the same key 0, close -1; unknown close 0."""
    obs = Observer()
    before = value("riskguard_episodes_open", key_class="market")
    obs.observe(signal("ep1/BTC-USDT", "open"))
    assert value("riskguard_episodes_open", key_class="market") == before + 1
    obs.observe(signal("ep1/BTC-USDT", "escalate"))
    obs.observe(signal("ep1/BTC-USDT", "open"))
    assert value("riskguard_episodes_open", key_class="market") == before + 1
    assert obs.open_episodes() == {"market": 1}
    obs.observe(signal("ep1/BTC-USDT", "close"))
    obs.observe(signal("ep2/ETH-USDT", "close"))
    assert value("riskguard_episodes_open", key_class="market") == before
    assert obs.open_episodes() == {}


def test_regime_changes_are_counted_but_open_no_episode() -> None:
    """A regime change is a signal (counted by kind) but not an episode."""
    obs = Observer()
    before_eps = value("riskguard_episodes_open", key_class="venue")
    before_sig = value("riskguard_anomaly_signals_total", key_class="venue",
                       kind="regime_change", phase="open")
    obs.observe(signal("rc-venue", "open", kind="regime_change"))
    assert value("riskguard_episodes_open", key_class="venue") == before_eps
    assert value("riskguard_anomaly_signals_total", key_class="venue", kind="regime_change",
                 phase="open") == before_sig + 1


def test_score_and_threshold_histograms_skip_warming_up_signals() -> None:
    """Scores go to the key class's histogram; a warming-up score is not observed."""
    obs = Observer()
    count0 = value("riskguard_anomaly_score_count", key_class="option")
    sum0 = value("riskguard_anomaly_score_sum", key_class="option")
    thr0 = value("riskguard_anomaly_threshold_sum", key_class="option")
    obs.observe(signal("h/BTC-27DEC26-70000-C", "open", score=7.5, threshold=4.0))
    obs.observe(signal("h/BTC-27DEC26-70000-C", "escalate", score=99.0, warming_up=True))
    assert value("riskguard_anomaly_score_count", key_class="option") == count0 + 1
    assert value("riskguard_anomaly_score_sum", key_class="option") == pytest.approx(sum0 + 7.5)
    assert value("riskguard_anomaly_threshold_sum", key_class="option") == pytest.approx(thr0 + 4)


def test_utilization_gauge_is_per_counterparty_limit_and_kind() -> None:
    """The latest utilization of each limit is its gauge value; the counterparty is parsed."""
    obs = Observer()
    obs.observe(util("counterparty.gaugecp", "gross", 0.4))
    obs.observe(util("counterparty.gaugecp", "gross", 0.85))
    obs.observe(util("firm", "gross", 0.2))
    assert value("riskguard_limit_utilization", counterparty="gaugecp",
                 limit="counterparty.gaugecp", kind="gross") == 0.85
    assert value("riskguard_limit_utilization", counterparty="*", limit="firm",
                 kind="gross") == 0.2


def test_a_utilization_of_an_unparsed_path_is_labelled_by_each_ones_scope() -> None:
    """A limit path that is not a configured one (no counterparty in it) takes the
    counterparty label from each record's scope, which may differ between records."""
    obs = Observer()
    for cp, u in (("scopeA", 0.3), ("scopeB", 0.6)):
        rec = msgspec.structs.replace(util("odd-path", "gross", u),
                                      scope=Scope(kind=ScopeKind.COUNTERPARTY, value=cp))
        obs.observe(rec)
    assert value("riskguard_limit_utilization", counterparty="scopeA", limit="odd-path",
                 kind="gross") == 0.3
    assert value("riskguard_limit_utilization", counterparty="scopeB", limit="odd-path",
                 kind="gross") == 0.6


def test_breaches_count_by_kind_and_level_and_move_the_gauge() -> None:
    """A LimitBreach increments its (kind, level) counter and sets the utilization gauge."""
    before = value("riskguard_limit_breaches_total", kind="netdelta", level="hard")
    breach = LimitBreach(
        id="b1", limit_path="counterparty.breachcp", kind="netdelta", ts=2,
        scope=Scope(kind=ScopeKind.COUNTERPARTY, value="breachcp"), exposure=3.0,
        base_limit=2.0, effective_limit=2.0, utilization=1.5, level=LimitLevel.HARD,
        severity=Severity.CRITICAL,
    )
    assert observe(breach) is breach
    assert value("riskguard_limit_breaches_total", kind="netdelta", level="hard") == before + 1
    assert value("riskguard_limit_utilization", counterparty="breachcp",
                 limit="counterparty.breachcp", kind="netdelta") == 1.5


def alert(kind: str, venue: str) -> RiskAlert:
    return RiskAlert(id=f"{kind}-{venue}", kind=kind, ts=1, reason=kind,
                     scope=Scope(kind=ScopeKind.VENUE, value=venue))


def test_feed_failover_gauge_is_1_on_backup_and_0_after_restore() -> None:
    """feed_failover sets the venue's gauge to 1, feed_restored back to 0; alerts counted."""
    before = value("riskguard_risk_alerts_total", kind="feed_failover", severity="warn")
    observe(alert("feed_failover", "fo-venue"))
    assert value("riskguard_feed_failover_state", venue="fo-venue") == 1
    assert value("riskguard_risk_alerts_total", kind="feed_failover", severity="warn") == before + 1
    observe(alert("feed_restored", "fo-venue"))
    assert value("riskguard_feed_failover_state", venue="fo-venue") == 0


def test_heartbeat_loss_marks_the_feed_stale_until_restored() -> None:
    """heartbeat_loss -> riskguard_feed_stale 1; heartbeat_restored -> 0."""
    observe(alert("heartbeat_loss", "hb-venue"))
    assert value("riskguard_feed_stale", venue="hb-venue") == 1
    observe(alert("heartbeat_restored", "hb-venue"))
    assert value("riskguard_feed_stale", venue="hb-venue") == 0


def test_audit_checkpoint_sets_last_time_and_the_age_counts_from_it() -> None:
    """The gauge holds the newest checkpoint's ts; an older one does not move it back."""
    newest = 4_000_000_000 * NS  # far future: age clamps at 0 rather than going negative
    observe(AuditCheckpoint(origin="o", size=3, root="ab" * 32, ts=newest))
    observe(AuditCheckpoint(origin="o", size=2, root="cd" * 32, ts=newest - 10 * NS))
    assert value("riskguard_audit_last_checkpoint_timestamp_seconds") == 4_000_000_000
    assert value("riskguard_audit_checkpoint_age_seconds") == 0.0


def test_operator_dead_letters_count_but_source_decode_failures_are_not_double_counted() -> None:
    """kafka_input already counts decode failures (partition >= 0); operator ones count here."""
    before_op = value("riskguard_dead_letters_total", stream="dl-features", reason="non_finite")
    before_src = value("riskguard_dead_letters_total", stream="dl-src", reason="bad_json")
    observe(DeadLetter(topic="dl-features", ts=1, reason="non_finite", step="features"))
    observe(DeadLetter(topic="dl-src", partition=0, offset=5, ts=1, reason="bad_json"))
    assert value("riskguard_dead_letters_total", stream="dl-features",
                 reason="non_finite") == before_op + 1
    assert value("riskguard_dead_letters_total", stream="dl-src", reason="bad_json") == before_src


def test_keyed_items_and_unknown_records_pass_through_unchanged() -> None:
    """(key, record) pairs are observed by their value; anything else is returned as is."""
    item = ("ep3/BTC-USDT", signal("ep3/BTC-USDT", "open"))
    obs = Observer()
    assert obs.observe(item) is item
    assert obs.open_episodes() == {"market": 1}
    other = {"not": "a record"}
    assert obs.observe(other) is other


def test_record_command_counts_action_scope_latency_and_last_time() -> None:
    """One command: +1 (action, scope kind), latency observed in seconds, last time set."""
    c0 = value("riskguard_commands_total", action="halt_trading", scope_kind="firm")
    l0 = value("riskguard_detection_to_command_seconds_count")
    s0 = value("riskguard_detection_to_command_seconds_sum")
    metrics.record_command("halt_trading", "firm", recv_ts_ns=10 * NS, now_ns=10 * NS + NS // 4)
    metrics.record_command("halt_trading", "firm", recv_ts_ns=None, now_ns=11 * NS)
    assert value("riskguard_commands_total", action="halt_trading", scope_kind="firm") == c0 + 2
    assert value("riskguard_detection_to_command_seconds_count") == l0 + 1
    assert value("riskguard_detection_to_command_seconds_sum") == pytest.approx(s0 + 0.25)
    assert value("riskguard_last_command_timestamp_seconds", action="halt_trading",
                 scope_kind="firm") == 11.0


def test_measured_snapshot_returns_the_state_and_records_its_pickled_size() -> None:
    """The snapshot passes through; size histogram sum grows by len(pickle.dumps(state))."""
    state = {"counts": list(range(100))}
    n0 = value("riskguard_snapshot_duration_seconds_count", step="snap-test")
    b0 = value("riskguard_snapshot_size_bytes_sum", step="snap-test")
    got = metrics.measured_snapshot("snap-test", lambda: state)
    assert got is state
    assert value("riskguard_snapshot_duration_seconds_count", step="snap-test") == n0 + 1
    assert value("riskguard_snapshot_size_bytes_sum", step="snap-test") == b0 + len(
        pickle.dumps(state, pickle.HIGHEST_PROTOCOL))


def test_subscriber_hooks_count_rejections_by_reason_and_gaps_by_issuer() -> None:
    """observe_rejection / observe_gap take the subscriber's own Rejection and GapAlert."""
    from riskguard.operators.core.observe import observe_gap, observe_rejection

    r0 = value("riskguard_subscriber_rejections_total", reason="bad_signature")
    g0 = value("riskguard_subscriber_gaps_total", issuer="riskguard")
    observe_rejection(Rejection(reason="bad_signature", detail="", topic="t", partition=0,
                                offset=1))
    observe_gap(GapAlert(issuer="riskguard", expected=3, got=5, partition=0, offset=9))
    assert value("riskguard_subscriber_rejections_total", reason="bad_signature") == r0 + 1
    assert value("riskguard_subscriber_gaps_total", issuer="riskguard") == g0 + 1


def test_metrics_server_serves_the_default_registry_and_is_idempotent() -> None:
    """start_metrics_server(0) binds a free port; the text has riskguard series."""
    port = metrics.start_metrics_server(0, "127.0.0.1")
    assert metrics.start_metrics_server(port, "127.0.0.1") == port
    metrics.EVENTS_IN.labels("served-stream").inc(3)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'riskguard_events_in_total{stream="served-stream"} 3.0' in text
    assert "riskguard_audit_checkpoint_age_seconds" in text


def test_idle_clients_cannot_pile_up_threads_in_the_metrics_server() -> None:
    """40 clients connect to the metrics port and send nothing: at most 16 are served at
    once (a thread and its deadline each), the rest are closed at once; once they go,
    a scrape is answered."""
    import contextlib
    import socket
    import threading
    import time

    port = metrics.start_metrics_server(0, "127.0.0.1")
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        time.sleep(1.0)
        assert threading.active_count() - before <= 2 * 16
        closed = 0
        for s in idle:
            s.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                closed += s.recv(1) == b""
        assert closed >= 40 - 16
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed ones as it reads them
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert b"riskguard_events_in_total" in r.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("addr", ["10.255.255.1", "not an address"])
def test_a_metrics_address_not_of_this_host_is_a_config_error(addr: str) -> None:
    """``RISKGUARD_METRICS_ADDR`` that names no address of this host stops the start
    naming it; on a Flink worker it used to read as every port being in use, and the
    worker kept retrying without serving."""
    from riskguard.flink.worker_metrics import serve_worker_metrics, served

    env = {"RISKGUARD_METRICS_PORT": "0", "RISKGUARD_METRICS_ADDR": addr}
    with pytest.raises(ConfigError, match="RISKGUARD_METRICS_ADDR"):
        metrics.start_metrics_server_from_env(env)
    before = served.thread
    with pytest.raises(ConfigError, match="RISKGUARD_METRICS_ADDR"):
        serve_worker_metrics({**env, "RISKGUARD_METRICS_PORT": "9250"})
    assert served.thread is before


def test_metrics_server_port_from_env_is_validated() -> None:
    """RISKGUARD_METRICS_PORT unset -> no server; not a number -> ConfigError naming it."""
    assert metrics.start_metrics_server_from_env({}) is None
    with pytest.raises(ConfigError, match="RISKGUARD_METRICS_PORT"):
        metrics.start_metrics_server_from_env({"RISKGUARD_METRICS_PORT": "http"})
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        metrics.start_metrics_server(70000)


def test_observe_in_a_two_worker_flow_counts_every_episode_once() -> None:
    """Two worker threads share the process observer: 40 keys open then close -> net 0."""
    from riskguard.operators.core import observe as observe_mod

    keys = [f"mt{i}/BTC-USDT" for i in range(40)]
    inp = [signal(k, "open") for k in keys] + [signal(k, "close", n=1) for k in keys]
    before = value("riskguard_episodes_open", key_class="market")
    opened0 = value("riskguard_anomaly_signals_total", key_class="market", kind="anomaly",
                    phase="open")
    observe_mod.configure(ObserveConfig())
    flow = Dataflow("observe_two_workers")
    out: list[AnomalySignal] = []
    s = op.input("in", flow, TestingSource(inp))
    keyed = op.key_on("key", s, lambda r: r.key)
    seen = op.map("observe", keyed, observe)
    op.output("out", seen, TestingSink(out))
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=2)
    assert len(out) == 80
    assert value("riskguard_episodes_open", key_class="market") == before
    assert value("riskguard_anomaly_signals_total", key_class="market", kind="anomaly",
                 phase="open") == opened0 + 40


def test_plan_mitigation_counts_signals_that_wait_for_the_watermark() -> None:
    """A signal further than the slack ahead of two processes' watermark waits: the
    operator counts it in ``riskguard_reorder_total{step, outcome="held"}`` (``step`` is
    the operator's full step id)."""
    from riskguard.operators.core.clock import Tick
    from riskguard.operators.mitigation.ops import plan_mitigation
    from riskguard.operators.mitigation.playbook import PlaybookConfig, Rule, Rung
    from riskguard.schemas import Action, RiskAlert, Severity

    s = 1_000_000_000
    rule = Rule(name="hb", signal="heartbeat_loss", target="venue",
                ladder=(Rung(action=Action.REROUTE_ORDER_FLOW),))
    cfg = PlaybookConfig(issuer="guard", venues=("okx", "binance"), rules=(rule,))
    ahead = RiskAlert(id="hb-1", kind="heartbeat_loss", ts=60 * s, severity=Severity.WARN,
                      scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="lost")
    labels = {"step": "reorder_metric.pb_reorder", "outcome": "held"}
    before = value("riskguard_reorder_total", **labels)
    flow = Dataflow("reorder_metric")
    inp = op.input("in", flow, TestingSource([Tick(ts=10 * s, source="p1", of=2),
                                              Tick(ts=10 * s, source="p2", of=2), ahead]))
    out: list[Any] = []
    op.output("out", plan_mitigation("pb_reorder", inp, config=cfg, clock=lambda: 0).oks,
              TestingSink(out))
    run_main(flow)
    assert [c.action for c in out] == [Action.REROUTE_ORDER_FLOW]  # applied at the end
    assert value("riskguard_reorder_total", **labels) == before + 1
