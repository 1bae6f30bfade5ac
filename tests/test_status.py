"""``riskguard status``: scraping real Prometheus endpoints, the summary, the CLI and the page.

Each test serves its own prometheus_client registry with ``start_http_server``
on 127.0.0.1 (the same code path as a guard process) and scrapes it.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from riskguard.connectors.status import (
    Scrape,
    StatusPoller,
    StatusServer,
    render_text,
    scrape,
    summarize,
)

from riskguard.cli import main
from riskguard.errors import RiskguardError


@dataclass
class Guard:
    """A fake guard process's metrics: the same names and labels as operators/core/metrics.py."""

    url: str
    events_in: Counter
    dead: Counter
    episodes: Gauge
    util: Gauge
    commands: Counter
    last_command: Gauge
    failover: Gauge
    age: Gauge
    lag: Gauge
    latency: Histogram
    acks: Counter
    alerts: Counter


def serve_guard(*, events: float = 0, dead: float = 0, age: float = 30.0) -> Guard:
    reg = CollectorRegistry()
    g = Guard(
        url="",
        events_in=Counter("riskguard_events_in_total", "in", ["stream"], registry=reg),
        dead=Counter("riskguard_dead_letters_total", "dl", ["stream", "reason"], registry=reg),
        episodes=Gauge("riskguard_episodes_open", "eps", ["key_class"], registry=reg),
        util=Gauge("riskguard_limit_utilization", "u", ["counterparty", "limit", "kind"],
                   registry=reg),
        commands=Counter("riskguard_commands_total", "c", ["action", "scope_kind"], registry=reg),
        last_command=Gauge("riskguard_last_command_timestamp_seconds", "t",
                           ["action", "scope_kind"], registry=reg),
        failover=Gauge("riskguard_feed_failover_state", "f", ["venue"], registry=reg),
        age=Gauge("riskguard_audit_checkpoint_age_seconds", "a", registry=reg),
        lag=Gauge("riskguard_kafka_consumer_lag", "lag", ["stream", "partition"], registry=reg),
        latency=Histogram("riskguard_detection_to_command_seconds", "l", registry=reg),
        acks=Counter("riskguard_command_acks_total", "k", ["action", "outcome"], registry=reg),
        alerts=Counter("riskguard_risk_alerts_total", "r", ["kind", "severity"], registry=reg),
    )
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    g.url = f"http://127.0.0.1:{server.server_port}/metrics"
    if events:
        g.events_in.labels("dev.riskguard.market.v1").inc(events)
    if dead:
        g.dead.labels("dev.riskguard.market.v1", "bad_json").inc(dead)
    g.age.set(age)
    return g


def test_summary_sums_counters_and_takes_max_util_and_min_checkpoint_age_across_processes() -> None:
    """Two processes: events and episodes add up, utilization is the max, age the min."""
    a = serve_guard(events=700, dead=7, age=900)
    b = serve_guard(events=300, dead=3, age=12)
    a.episodes.labels("market").set(2)
    b.episodes.labels("market").set(1)
    b.episodes.labels("option").set(1)
    a.util.labels("okx", "counterparty.okx", "gross").set(0.5)
    b.util.labels("okx", "counterparty.okx", "gross").set(0.93)
    b.util.labels("*", "firm", "gross").set(0.4)
    a.commands.labels("widen_quotes", "instrument").inc(3)
    b.commands.labels("halt_trading", "firm").inc()
    a.failover.labels("binance").set(1)
    a.lag.labels("dev.riskguard.market.v1", "0").set(40)
    b.lag.labels("dev.riskguard.market.v1", "1").set(2)
    a.latency.observe(0.02)
    a.latency.observe(0.04)
    s = summarize([scrape(a.url), scrape(b.url)], top=2)
    h = s["health"]
    assert (h["up"], h["events_in"], h["dead_letters"]) == (True, 1000.0, 10.0)
    assert h["dead_letter_ratio"] == pytest.approx(0.01)
    assert s["episodes_open"] == {"total": 4.0, "by_class": {"market": 3.0, "option": 1.0}}
    assert [(u["limit"], u["utilization"]) for u in s["utilizations"]] == [
        ("counterparty.okx", 0.93), ("firm", 0.4)]
    assert s["commands"]["by_action"] == {"halt_trading": 1.0, "widen_quotes": 3.0}
    assert s["feeds"]["on_backup"] == ["binance"]
    assert s["checkpoint_age_s"] == 12.0
    assert s["lag"] == {"total": 42.0, "by_stream": {"dev.riskguard.market.v1": 42.0}}
    assert s["detection_to_command_mean_s"] == pytest.approx(0.03)


def test_a_down_endpoint_makes_health_down_but_keeps_the_others_numbers() -> None:
    """One unreachable process: health DOWN, its error shown, the live one still counted."""
    a = serve_guard(events=5)
    s = summarize([scrape(a.url), scrape("http://127.0.0.1:1/metrics", timeout_s=2)])
    assert s["health"]["up"] is False
    assert s["health"]["events_in"] == 5.0
    down = [t for t in s["health"]["targets"] if not t["up"]]
    assert len(down) == 1
    assert "refused" in down[0]["error"].lower()
    assert "DOWN" in render_text(s)


def test_scrape_rejects_a_url_without_http_scheme() -> None:
    """A file path or bare host is a usage error, not a silent DOWN."""
    with pytest.raises(RiskguardError, match="http://"):
        scrape("localhost:3030/metrics")


def test_render_text_shows_health_lag_episodes_mitigations_and_top_utilizations() -> None:
    """The one-screen text carries each number of the summary."""
    g = serve_guard(events=200, dead=2, age=45)
    g.episodes.labels("venue").set(1)
    g.commands.labels("cancel_all", "venue").inc(2)
    g.util.labels("deribit", "counterparty.deribit", "netdelta").set(0.815)
    text = render_text(summarize([scrape(g.url)]))
    assert "health      UP  targets 1/1 up" in text
    assert "in 200" in text
    assert "dead-lettered 2 (1.00%)" in text
    assert "lag         not exposed" in text
    assert "episodes    1 open  venue=1" in text
    assert "commands    2 issued  cancel_all=2" in text
    assert "last checkpoint 45 s ago" in text
    assert "counterparty.deribit netdelta" in text
    assert "81.5%" in text
    assert len(text.splitlines()) <= 24


def test_cli_status_prints_the_summary_and_exits_1_when_a_target_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`riskguard status --url` exit code 0 when up, 1 when any endpoint is down; --json parses."""
    g = serve_guard(events=11)
    assert main(["status", "--url", g.url]) == 0
    assert "in 11" in capsys.readouterr().out
    assert main(["status", "--url", g.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["health"]["events_in"] == 11.0
    assert main(["status", "--url", g.url, "--url", "http://127.0.0.1:1/metrics",
                 "--timeout", "2"]) == 1
    assert "DOWN" in capsys.readouterr().out


def test_poller_timeline_records_new_commands_between_scrapes() -> None:
    """First poll lists existing commands (since start); later polls add only the increase."""
    g = serve_guard()
    g.commands.labels("widen_quotes", "instrument").inc(2)
    g.last_command.labels("widen_quotes", "instrument").set(1_700_000_000)
    clock = iter([1_700_000_100.0, 1_700_000_200.0, 1_700_000_300.0])
    poller = StatusPoller([g.url], now=lambda: next(clock))
    first = poller.poll()["timeline"]
    assert first == [{"ts": 1_700_000_000, "action": "widen_quotes", "scope_kind": "instrument",
                      "count": 2.0, "initial": True}]
    assert len(poller.poll()["timeline"]) == 1  # nothing new
    g.commands.labels("halt_trading", "firm").inc()
    third = poller.poll()["timeline"]
    assert third[0] == {"ts": 1_700_000_300.0, "action": "halt_trading", "scope_kind": "firm",
                        "count": 1.0, "initial": False}
    assert len(third) == 2


def test_status_server_serves_a_self_contained_page_and_json() -> None:
    """The page has no external assets (no src=/href= URLs); /api/status is the summary."""
    g = serve_guard(events=3)
    server = StatusServer(StatusPoller([g.url]), port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            page = r.read().decode()
        with urllib.request.urlopen(base + "/api/status", timeout=5) as r:
            data = json.loads(r.read())
    finally:
        server.close()
    assert "<script>" in page
    assert "src=" not in page
    assert "href=" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert data["health"]["events_in"] == 3.0
    assert data["timeline"] == []


class _Dom(html.parser.HTMLParser):
    """Collects text by element id and the attributes of utilization/mitigation/timeline rows."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {"util": [], "mit": [], "tl": []}
        self.body: dict[str, Any] = {}
        self._stack: list[str | None] = []
        self._parent: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        cls = a.get("class") or ""
        if tag == "div" and cls.startswith("util"):
            self.rows["util"].append(a)
        if tag in ("ul", "ol", "div") and a.get("id"):
            self._parent.append(a["id"] or "")
        if tag == "li" and self._parent:
            key = {"mitigations": "mit", "timeline": "tl"}.get(self._parent[-1], self._parent[-1])
            self.rows.setdefault(key, []).append(a)
        self._stack.append(a.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            ident = self._stack.pop()
            if ident and self._parent and ident == self._parent[-1]:
                self._parent.pop()

    def handle_data(self, data: str) -> None:
        for ident in reversed(self._stack):
            if ident:
                self.text[ident] = self.text.get(ident, "") + data
                break


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def status_page_dom(url: str, *, poll_ms: int = 300, budget_ms: int = 2000) -> _Dom:
    """Serve the status page for metrics ``url``; return the DOM headless Chromium renders."""
    server = StatusServer(StatusPoller([url]), port=0, poll_ms=poll_ms).start()
    try:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-dev-shm-usage",
             f"--virtual-time-budget={budget_ms}", "--dump-dom",
             f"http://127.0.0.1:{server.port}/"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    return dom


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed "
                    "(.ci/run installs it: apt-get install -y chromium)")
def test_status_page_in_headless_chromium_shows_the_numbers_of_the_metrics() -> None:
    """Chromium runs the page's JS, which polls /api/status; the DOM numbers equal the metrics."""
    g = serve_guard(events=1234, dead=17, age=61)
    g.episodes.labels("market").set(2)
    g.episodes.labels("option").set(1)
    g.util.labels("okx", "counterparty.okx", "gross").set(0.925)
    g.util.labels("binance", "counterparty.binance", "netdelta").set(0.5)
    g.commands.labels("widen_quotes", "instrument").inc(4)
    g.commands.labels("halt_trading", "firm").inc(1)
    g.last_command.labels("halt_trading", "firm").set(1_700_000_000)
    g.failover.labels("bybit").set(1)
    g.acks.labels("halt_trading", "applied").inc(1)
    g.acks.labels("widen_quotes", "applied").inc(3)
    g.acks.labels("widen_quotes", "refused").inc(1)
    g.alerts.labels("command_unacknowledged", "critical").inc(2)
    dom = status_page_dom(g.url, poll_ms=500, budget_ms=3000)
    assert int(dom.body["data-polls"]) >= 2, "the page polls /api/status repeatedly"
    t = dom.text
    assert t["health"] == "UP"
    assert t["events-in"] == "1234"
    assert t["dead-letters"] == "17"
    assert t["dl-ratio"] == f"{17 / 1234 * 100:.2f}%"
    assert t["lag"] == "not exposed"
    assert t["episodes-open"] == "3"
    assert t["episodes-by-class"] == "market=2 option=1"
    assert t["commands-total"] == "5"
    assert t["commands-acks"] == "acknowledged 4, refused 1, unconfirmed in time 2"
    assert t["checkpoint-age"] == "61 s"
    assert t["feeds-backup"] == "bybit"
    utils = [(r["data-limit"], r["data-kind"], float(r["data-value"])) for r in dom.rows["util"]]
    assert utils == [("counterparty.okx", "gross", 0.925),
                     ("counterparty.binance", "netdelta", 0.5)]
    assert "warn" in dom.rows["util"][0]["class"]  # >= 80% is drawn amber
    issued = {r["data-action"]: float(r["data-count"]) for r in dom.rows["issued"]}
    assert issued == {"halt_trading": 1.0, "widen_quotes": 4.0}
    assert [r.get("class") for r in dom.rows["mit"]] == ["unknown"]  # no command source
    timeline = {(r["data-action"], r["data-scope"], float(r["data-count"]))
                for r in dom.rows["tl"]}
    assert timeline == {("halt_trading", "firm", 1.0), ("widen_quotes", "instrument", 4.0)}


def test_summarize_of_nothing_is_down_and_empty() -> None:
    """No targets at all is not healthy."""
    s = summarize([Scrape(url="x", error="boom")])
    assert s["health"]["up"] is False
    assert s["utilizations"] == []
    assert s["checkpoint_age_s"] is None


def test_summary_counts_what_executors_acknowledged_refused_and_left_unconfirmed() -> None:
    """Across processes: acks by outcome, and the guard's unconfirmed-command alerts."""
    a, b = serve_guard(), serve_guard()
    a.acks.labels("halt_trading", "applied").inc(2)
    b.acks.labels("halt_trading", "already_applied").inc(1)
    b.acks.labels("cancel_all", "failed").inc(1)
    a.acks.labels("widen_quotes", "refused").inc(2)
    b.alerts.labels("command_unacknowledged", "critical").inc(1)
    b.alerts.labels("heartbeat_loss", "critical").inc(5)
    s = summarize([scrape(a.url), scrape(b.url)])
    assert {k: s["acks"][k] for k in ("acknowledged", "refused", "unacknowledged")} == {
        "acknowledged": 3, "refused": 3, "unacknowledged": 1}
    assert {(r["action"], r["outcome"]): r["count"] for r in s["acks"]["by_action_outcome"]} == {
        ("cancel_all", "failed"): 1, ("halt_trading", "already_applied"): 1,
        ("halt_trading", "applied"): 2, ("widen_quotes", "refused"): 2}
    assert "executors   acknowledged 3  refused 3  unconfirmed in time 1" in render_text(s)



def test_idle_clients_cannot_take_every_thread_of_the_status_server() -> None:
    """12 clients connect and send nothing: 8 (max_connections) are served and the other
    4 closed at once, each idle one is closed after idle_timeout_s, and the server
    answers again once they are gone."""
    import socket
    import threading
    import time

    server = StatusServer(StatusPoller([]), port=0, max_connections=8,
                          idle_timeout_s=2.0).start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
    try:
        deadline = time.monotonic() + 1.5
        while server.httpd.refused < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.httpd.refused == 4
        assert threading.active_count() - before <= 2 * 8  # a thread and its deadline each
        for s in idle:  # each is closed by the server: refused, or idle past the timeout
            s.settimeout(30)
            assert s.recv(1) == b""
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
    finally:
        for s in idle:
            s.close()
        server.close()


def test_a_client_trickling_bytes_keeps_its_slot_no_longer_than_the_deadline() -> None:
    """A client sending one byte of its request line every 0.3 s, under the idle timeout
    (0.5 s) each time, is cut off at three times that timeout all the same."""
    import socket
    import time

    server = StatusServer(StatusPoller([]), port=0, max_connections=2,
                          idle_timeout_s=0.5).start()
    slow = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    try:
        with pytest.raises(OSError):
            for byte in b"GET /healthz HTTP/1.1 and more and more and more":
                slow.send(bytes([byte]))
                time.sleep(0.3)
                slow.settimeout(0.01)
                try:
                    if slow.recv(1) == b"":
                        raise ConnectionResetError("closed by the server")
                except TimeoutError:
                    pass
        assert time.monotonic() - started < 5
    finally:
        slow.close()
        server.close()


def test_requests_within_half_a_poll_share_one_scrape() -> None:
    """A looping client (or many pages) cannot make the status server scrape the guard
    once per request: requests within half the page's poll period share one."""
    poller = StatusPoller([])
    polls: list[int] = []
    real = poller.poll

    def counted() -> dict[str, Any]:
        polls.append(1)
        return real()

    poller.poll = counted  # type: ignore[method-assign]
    server = StatusServer(poller, port=0, poll_ms=60_000).start()
    try:
        for _ in range(20):
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.port}/api/status", timeout=5) as r:
                assert "health" in json.loads(r.read())
    finally:
        server.close()
    assert len(polls) == 1
