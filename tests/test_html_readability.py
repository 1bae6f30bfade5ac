"""riskguard's HTML pages read well in headless Chromium: measured, not just parsed.

Each report test renders a page built from a small hand-made run, with a
measuring script appended to a copy of it, at a given window width; the
script writes what the layout engine computed (element widths, scroll vs
client widths, computed colours, texts) into ``<pre id="rg-measure">``, which
``--dump-dom`` returns. The status-page test serves the page with a command
source and reads the lists its own JavaScript built.
"""

from __future__ import annotations

import html
import html.parser
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from riskguard.connectors.status import StatusPoller, StatusServer, page
from riskguard.dataflows.backtest import BacktestResult, Label
from riskguard.dataflows.report import build_report, render_html
from riskguard.schemas import (
    Action,
    AnomalySignal,
    Audience,
    LimitLevel,
    MitigationCommand,
    Scope,
    ScopeKind,
    Severity,
    Utilization,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)")

S = 1_000_000_000
T0 = 1_700_000_000 * S
AUD = Audience(env="dev", topic="riskguard.commands")
LONG_LIMIT = "counterparty.binance.instrument.BTC-USDT-PERP"
REASON = ("anomaly score 7.3 over threshold 1.0 on okx/BTC-USDT while the binance feed was "
          "stale for 41 s; counterparty exposure 0.97 of the gross limit; widening quotes "
          "before reducing limits as the playbook orders, then halting the counterparty "
          "until an operator confirms the venue is healthy again, closingword")

MEASURE = """
<pre id="rg-measure"></pre><script>
(function(){
const r=e=>e.getBoundingClientRect();
const out={inner:window.innerWidth, doc_scroll:document.documentElement.scrollWidth,
  doc_client:document.documentElement.clientWidth, plots:{}, legends:{}, overflow:[],
  cells:[], colors:{}, nodata:{}};
for(const s of document.querySelectorAll("svg.plot")){
  const p=s.parentElement;
  out.plots[s.id]={w:r(s).width, avail:p.clientWidth
    - parseFloat(getComputedStyle(p).paddingLeft) - parseFloat(getComputedStyle(p).paddingRight)};
  const vb=s.viewBox.baseVal;
  for(const t of s.querySelectorAll("text")){const b=t.getBBox();
    if(b.x<vb.x||b.y<vb.y||b.x+b.width>vb.x+vb.width||b.y+b.height>vb.y+vb.height)
      out.overflow.push(s.id+" text: "+t.textContent);}
  }
for(const p of document.querySelectorAll("p.nodata")){
  out.nodata[p.id]={text:p.textContent, h:r(p).height,
    line:parseFloat(getComputedStyle(p).lineHeight)||1.2*parseFloat(getComputedStyle(p).fontSize)};}
for(const f of document.querySelectorAll("[data-plot]")){
  out.legends[f.dataset.plot]=[...f.querySelectorAll(".legend li")].map(li=>({
    text:li.textContent, color:getComputedStyle(li.querySelector(".sw")).backgroundColor,
    over:li.scrollWidth>li.clientWidth, ellipsis:getComputedStyle(li).textOverflow}));}
for(const s of document.querySelectorAll("svg.plot")){
  const legacy=[...s.querySelectorAll("text.legend")].map(t=>t.textContent);
  if(legacy.length && !(s.id in out.legends)){
    out.legends[s.id]=legacy.map(t=>({text:t, color:"", over:false, ellipsis:""}));}}
for(const e of document.querySelectorAll("td,th,li,p,h1,h2")){
  if(e.scrollWidth>e.clientWidth+1) out.overflow.push(e.tagName+": "+e.textContent.slice(0,60));}
for(const td of document.querySelectorAll("#t-log td")){
  const cs=getComputedStyle(td);
  out.cells.push({text:td.textContent, ellipsis:cs.textOverflow, ws:cs.whiteSpace});}
const thr=document.querySelector("#plot-anomaly line.threshold");
const crit=document.querySelector("#plot-anomaly circle.score[data-severity=critical]");
out.colors={threshold:thr?getComputedStyle(thr).stroke:null,
  critical:crit?getComputedStyle(crit).fill:null};
document.getElementById("rg-measure").textContent=JSON.stringify(out);
})();
</script>
"""


def measure(page: str, tmp_path: Path, width: int) -> dict[str, Any]:
    """Render ``page`` (plus the measuring script) at ``width`` px; return the measurements."""
    f = tmp_path / f"page-{width}.html"
    f.write_text(page.replace("</body>", MEASURE + "</body>"))
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-dev-shm-usage",
         f"--window-size={width},1200", "--dump-dom", f.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r'<pre id="rg-measure">(.*?)</pre>', dom, re.S)
    assert m and m.group(1), dom[-2000:]
    return json.loads(html.unescape(m.group(1)))


def _cmd(n: int, action: Action, scope: Scope, at: int, ttl: int = 600 * S,
         reason: str = "test", **params: Any) -> MitigationCommand:
    return MitigationCommand(
        command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"riskguard-html/{n}")), issuer="engine-1",
        seq=n, issued_at=at, expires_at=at + ttl, audience=AUD, action=action, scope=scope,
        params=params, reason=reason)


def _signal(n: int, ratio: float, sev: Severity) -> AnomalySignal:
    return AnomalySignal(id=f"s{n}", key="okx/BTC-USDT", ts=T0 + n * 10 * S,
                         scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"),
                         score=ratio, threshold=1.0, severity=sev, model="m", model_version="1")


def _report(*, empty: bool = False) -> dict[str, Any]:
    okx = Scope(kind=ScopeKind.VENUE, value="okx")
    res = BacktestResult(start_ns=T0, end_ns=T0 + 300 * S, n_events=100, keys={"okx/BTC-USDT"})
    if not empty:
        res.prices = {"okx/BTC-USDT-PERPETUAL-SWAP": [(T0 + i * S, 100.0 + i % 7)
                                                      for i in range(0, 300, 5)]}
        res.signals = [_signal(1, 0.5, Severity.INFO), _signal(2, 1.6, Severity.WARN),
                       _signal(3, 4.2, Severity.CRITICAL)]
        cp = Scope(kind=ScopeKind.COUNTERPARTY, value="binance")
        res.utilizations = [Utilization(ts=T0 + i * S, limit_path=LONG_LIMIT, kind="gross",
                                        scope=cp, exposure=1.0, base_limit=2.0,
                                        effective_limit=2.0, utilization=0.5 + i / 400,
                                        level=LimitLevel.OK)
                            for i in range(0, 300, 10)]
        res.commands = [_cmd(1, Action.WIDEN_QUOTES, okx, T0 + 30 * S, reason=REASON),
                        _cmd(2, Action.HALT_TRADING, okx, T0 + 60 * S)]
    labels = [Label(kind="venue_outage", scope="venue:okx", start_ns=T0 + 20 * S,
                    end_ns=T0 + 90 * S)]
    return build_report(res, labels, title="html check")


@pytest.fixture(scope="module")
def full_page() -> str:
    return render_html(_report())


@pytest.mark.parametrize("width", [800, 1400])
def test_report_plots_take_the_full_width_and_nothing_overflows(full_page, tmp_path,
                                                                  width) -> None:
    """Every plot is as wide as its container (within 2%), at a narrow and a wide
    window; the page never scrolls sideways, no cell or heading overflows and no
    text of a plot (ticks, titles) falls outside the plot's box."""
    m = measure(full_page, tmp_path, width)
    assert set(m["plots"]) == {"plot-price", "plot-anomaly", "plot-util", "plot-commands"}
    for pid, p in m["plots"].items():
        assert p["w"] >= 0.98 * p["avail"], (pid, p)
        assert p["w"] <= p["avail"] + 1, (pid, p)
    assert m["doc_scroll"] <= m["doc_client"], m["doc_scroll"]
    assert m["overflow"] == []


def test_report_legends_and_reasons_show_whole_words(full_page, tmp_path) -> None:
    """Legend entries name the whole series (no cut, no ellipsis, no overflow) and
    the command log shows the whole reason, up to its last word."""
    m = measure(full_page, tmp_path, 800)
    util = [x["text"] for x in m["legends"]["plot-util"]]
    assert util == ["limit (1.0)", f"{LONG_LIMIT}.gross"]
    price = [x["text"] for x in m["legends"]["plot-price"]]
    assert price == ["okx/BTC-USDT-PERPETUAL-SWAP"]
    for entries in m["legends"].values():
        for x in entries:
            assert not x["over"] and x["ellipsis"] != "ellipsis", x
    reasons = [c for c in m["cells"] if c["text"].startswith("anomaly score 7.3")]
    assert [c["text"] for c in reasons] == [REASON]
    assert all(c["ellipsis"] != "ellipsis" and c["ws"] != "nowrap" for c in m["cells"])


def test_report_threshold_and_critical_have_distinct_colours(full_page, tmp_path) -> None:
    """The computed stroke of the threshold line differs from the computed fill of a
    critical score, and so do their legend swatches."""
    m = measure(full_page, tmp_path, 1000)
    c = m["colors"]
    assert c["threshold"] and c["critical"], c
    assert c["threshold"] != c["critical"]
    legend = {x["text"]: x["color"] for x in m["legends"]["plot-anomaly"]}
    assert legend["threshold"] == c["threshold"]
    assert legend["critical"] == c["critical"]
    assert len(set(legend.values())) == len(legend), legend


def test_report_empty_plots_are_one_line_notes_saying_no_data(tmp_path) -> None:
    """A run with no prices, signals, utilizations or commands shows each plot as one
    rendered line, its title and "no data", with no plot height; a page whose plots all
    have data has no such note."""
    m = measure(render_html(_report(empty=True)), tmp_path, 1000)
    assert not m["plots"], m["plots"]
    for pid in ("plot-price", "plot-anomaly", "plot-util", "plot-commands"):
        nd = m["nodata"][pid]
        assert nd["text"].endswith(": no data."), nd
        assert 8 < nd["h"] <= 1.5 * nd["line"], nd
    full = measure(render_html(_report()), tmp_path, 1000)
    assert full["nodata"] == {}, full["nodata"]


class _Lists(html.parser.HTMLParser):
    """The attributes and text of each ``li`` of the status page's lists, by list id."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[str, list[dict[str, Any]]] = {}
        self._ids: list[str] = []
        self._li: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("ul", "ol"):
            self._ids.append(a.get("id") or "")
        elif tag == "li" and self._ids:
            self._li = {**a, "text": ""}
            self.lists.setdefault(self._ids[-1], []).append(self._li)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ul", "ol") and self._ids:
            self._ids.pop()
        elif tag == "li":
            self._li = None

    def handle_data(self, data: str) -> None:
        if self._li is not None:
            self._li["text"] += data


def _status_lists(poller: StatusPoller) -> dict[str, list[dict[str, Any]]]:
    server = StatusServer(poller, port=0, poll_ms=60_000).start()
    try:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-dev-shm-usage",
             "--virtual-time-budget=1500", "--dump-dom", f"http://127.0.0.1:{server.port}/"],
            capture_output=True, text=True, timeout=120, check=True)
    finally:
        server.close()
    p = _Lists()
    p.feed(proc.stdout)
    return p.lists


def test_status_page_lists_active_mitigations_apart_from_history() -> None:
    """Commands: a halt lifted by a resume of that action on that scope, a widen on
    the same scope that the resume does not list, a limit cut past its expiry (held
    until a resume, as an executor holds it), an alert, a halt on another venue, a
    withdrawal pause and a cancel (one-off acts), and one not issued yet. Active: the
    widen, the other halt and the limit cut; history: every issued command with its
    state, newest first."""
    okx, bybit = Scope(kind=ScopeKind.VENUE, value="okx"), Scope(kind=ScopeKind.VENUE,
                                                                  value="bybit")
    cp, deribit = (Scope(kind=ScopeKind.COUNTERPARTY, value=v) for v in ("binance", "deribit"))
    inst = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
    firm = Scope(kind=ScopeKind.FIRM, value="*")
    cmds = [
        _cmd(1, Action.REDUCE_LIMITS, cp, T0 + 50 * S, ttl=60 * S),
        _cmd(2, Action.HALT_TRADING, okx, T0 + 100 * S, ttl=3600 * S),
        _cmd(3, Action.WIDEN_QUOTES, okx, T0 + 200 * S, ttl=3600 * S, reason=REASON),
        _cmd(4, Action.RESUME, okx, T0 + 500 * S, actions=["halt_trading"]),
        _cmd(5, Action.CANCEL_ALL, inst, T0 + 600 * S, ttl=3600 * S),
        _cmd(6, Action.ALERT, firm, T0 + 700 * S),
        _cmd(7, Action.HALT_TRADING, bybit, T0 + 800 * S, ttl=3600 * S),
        _cmd(8, Action.PAUSE_WITHDRAWALS, deribit, T0 + 850 * S, ttl=3600 * S),
        _cmd(9, Action.RESUME, deribit, T0 + 900 * S),
        _cmd(10, Action.HALT_TRADING, firm, T0 + 2000 * S),
    ]
    ids = {i + 1: c.command_id for i, c in enumerate(cmds)}
    poller = StatusPoller([], now=lambda: (T0 + 1000 * S) / S, commands=lambda: cmds)
    lists = _status_lists(poller)
    active = {(x["data-action"], x["data-scope"]) for x in lists["mitigations"]}
    assert active == {("widen_quotes", "venue:okx"), ("halt_trading", "venue:bybit"),
                      ("reduce_limits", "counterparty:binance")}
    widen = [x for x in lists["mitigations"] if x["data-action"] == "widen_quotes"]
    assert widen[0]["text"].endswith(REASON)
    history = [(x["data-command-id"], x["data-state"]) for x in lists["history"]]
    assert history == [(ids[9], "resume"), (ids[8], "act"), (ids[7], "active"),
                       (ids[6], "alert"), (ids[5], "act"), (ids[4], "resume"),
                       (ids[3], "active"), (ids[2], "lifted"), (ids[1], "active")]
    assert f"by {ids[4]}" in lists["history"][-2]["text"]


def test_status_page_without_a_command_source_does_not_claim_active_mitigations() -> None:
    """Without a command source the page says which mitigations are in force is not
    known, instead of listing every command ever issued as active."""
    lists = _status_lists(StatusPoller([]))
    assert [x.get("class") for x in lists["mitigations"]] == ["unknown"]
    assert "not known" in lists["mitigations"][0]["text"]


STATUS_MEASURE = """<script>
(function wait(){
if(document.body.dataset.polls==="0"){setTimeout(wait, 20); return;}
const out={doc_scroll:document.documentElement.scrollWidth,
  doc_client:document.documentElement.clientWidth, over:[]};
for(const e of document.querySelectorAll("li,.util span,.card,h1,h2")){
  if(e.scrollWidth>e.clientWidth+1) out.over.push(e.textContent.slice(0,80));}
const p=document.createElement("pre"); p.id="rg-measure"; p.textContent=JSON.stringify(out);
document.body.appendChild(p);
})();
</script>"""


def test_status_page_long_names_and_reasons_wrap_inside_their_boxes(tmp_path) -> None:
    """A long limit name and a long reason stay inside their boxes at an 800 px
    window, and the page does not scroll sideways."""
    reg = CollectorRegistry()
    util = Gauge("riskguard_limit_utilization", "u", ["counterparty", "limit", "kind"],
                 registry=reg)
    util.labels("binance", f"{LONG_LIMIT}-QUARTERLY-20261225.asset.USDT", "gross").set(0.9)
    metrics, _t = start_http_server(0, addr="127.0.0.1", registry=reg)
    okx = Scope(kind=ScopeKind.VENUE, value="okx")
    cmds = [_cmd(1, Action.WIDEN_QUOTES, okx, T0, reason=REASON.replace(" ", "_", 30))]
    poller = StatusPoller([f"http://127.0.0.1:{metrics.server_port}/metrics"],
                          now=lambda: (T0 + S) / S, commands=lambda: cmds)
    server = StatusServer(poller, body=page(60_000).replace(
        b"</body>", STATUS_MEASURE.encode() + b"</body>")).start()
    try:
        dom = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-dev-shm-usage",
             "--window-size=800,1200", "--virtual-time-budget=2000", "--dump-dom",
             f"http://127.0.0.1:{server.port}/"],
            capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        server.close()
        metrics.shutdown()
    m = re.search(r'<pre id="rg-measure">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    out = json.loads(html.unescape(m.group(1)))
    assert out["over"] == []
    assert out["doc_scroll"] <= out["doc_client"]


@pytest.fixture(scope="module")
def bars_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report of a new user's Binance kline zip, through `riskguard backtest` (bars
    with their ranges, the story, the timeline, the detectors per key, no labels)."""
    from riskguard.dataflows.demo import init_keys

    from riskguard.cli import main
    from tests.newuser_files import binance_klines_zip

    work = tmp_path_factory.mktemp("bars-page")
    keys = init_keys(work)
    config = work / "guard.toml"
    config.write_text(f'[keys]\nsigning_key = "{keys.signing_key.name}"\n'
                      f'issuer = "riskguard-guard"\ntrust_file = "{keys.trust_file.name}"\n'
                      f'roots_file = "{keys.roots_file.name}"\n')
    data = binance_klines_zip(work)
    assert main(["backtest", "--config", str(config), "--data", str(data), "--out",
                 str(work / "bt")]) == 0
    return (work / "bt" / "report.html").read_text()


@pytest.mark.parametrize("width", [1280, 1920])
def test_a_backtest_report_of_bars_fits_laptop_and_desktop_widths(bars_page, tmp_path,
                                                                   width) -> None:
    """At 1280 and 1920 px the report of a kline file (story, timeline, four plots, the
    detectors per key) never scrolls sideways, no cell or text overflows, every plot is
    as wide as the page and every legend entry is whole, the bars' range among them."""
    m = measure(bars_page, tmp_path, width)
    assert m["doc_scroll"] <= m["doc_client"], m["doc_scroll"]
    assert m["overflow"] == []
    for pid, p in m["plots"].items():
        assert 0.98 * p["avail"] <= p["w"] <= p["avail"] + 1, (pid, p)
    price = [x["text"] for x in m["legends"]["plot-price"]]
    assert price == ["binance/BTCUSDT", "shaded: each bar's high-low range"]
    for entries in m["legends"].values():
        for x in entries:
            assert not x["over"] and x["ellipsis"] != "ellipsis", x
