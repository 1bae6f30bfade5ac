"""Screenshots of the backtest report and of the status page, at 1280 and 1920 px.

    python docs/screenshots.py          # writes docs/img/{report,status}-{1280,1920}.png

It backtests riskguard's shipped sample (five minutes of three venues, three labelled
incidents) with the demo's config; it runs the demo's guard on the dev broker over the
bundled scenario, with its metrics endpoint, and serves the status page on that
endpoint and the commands on the guard's topic (as ``riskguard status --serve`` does),
once the guard has read every record; and it opens both pages in headless Chromium
(Debian's ``chromium``) at each width: first to measure them (the page's height; legends
whose entries overflow; any element wider than its box; the page wider than the window),
then to take the whole page. ``tests/test_screenshots.py`` runs it into a scratch folder
and checks the measurements and the images.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from riskguard.connectors.broker import DevBroker
from riskguard.connectors.kafka.consumer import scan_topic
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.status import StatusPoller, StatusServer, page, scrape, summarize
from riskguard.dataflows.backtest import backtest_files
from riskguard.dataflows.demo import init_keys, prepare_run, start_guard, write_config
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.sample_data import sample_files
from riskguard.operators.signing import decode_command
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer, decode_envelope

WIDTHS = (1280, 1920)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")
MAX_HEIGHT = 9000  # a taller page is taken down to here
MEASURE = """<script>
(function measure(){
if(document.body.dataset.polls==="0"){setTimeout(measure, 20); return;}
const out={height:document.documentElement.scrollHeight,
  doc_scroll:document.documentElement.scrollWidth,
  doc_client:document.documentElement.clientWidth, over:[], legends:[]};
for(const li of document.querySelectorAll(".legend li")){
  out.legends.push(li.textContent);
  if(li.scrollWidth>li.clientWidth+1) out.over.push("legend: "+li.textContent);}
for(const e of document.querySelectorAll("td,th,li,p,h1,h2,.card,.util span")){
  if(e.scrollWidth>e.clientWidth+1) out.over.push(e.tagName+": "+e.textContent.slice(0,80));}
const p=document.createElement("pre"); p.id="rg-measure"; p.textContent=JSON.stringify(out);
document.body.appendChild(p);
})();
</script>"""


def chromium() -> str | None:
    """Debian's Chromium, where it is installed (``apt-get install chromium``)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(url: str, width: int, height: int, *extra: str) -> subprocess.CompletedProcess:
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="riskguard-chromium-") as profile:
        return subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--virtual-time-budget=3000", *extra, url],
            capture_output=True, text=True, timeout=180, check=True)


def measure(url: str, width: int) -> dict[str, Any]:
    """What the page's layout gives at ``width`` (the page at ``url`` carries
    :data:`MEASURE`)."""
    dom = _browser(url, width, 1000, "--dump-dom").stdout
    m = re.search(r'<pre id="rg-measure">(.*?)</pre>', dom, re.S)
    if not m:
        raise RuntimeError(f"{url}: the page did not measure itself at {width} px")
    return json.loads(html.unescape(m.group(1)))


def shoot(url: str, width: int, height: int, png: Path) -> None:
    """The whole page (up to :data:`MAX_HEIGHT`) at ``width``, as a PNG."""
    _browser(url, width, min(height, MAX_HEIGHT), f"--screenshot={png}")


def _report(work: Path) -> Path:
    """The shipped sample backtested with the demo's config: the report page."""
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work, "127.0.0.1:9092", init_keys(work))
    data, labels = sample_files()
    backtest_files(load_guard_config(config), [data], labels=labels, out_dir=work / "bt")
    return work / "bt" / "report.html"


def _with_measure(page: Path) -> Path:
    out = page.with_name("measured-" + page.name)
    out.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    return out


def make(out_dir: Path, widths: tuple[int, ...] = WIDTHS, *,
         bootstrap: str | None = None) -> dict[str, dict[int, Any]]:
    """Take every screenshot into ``out_dir``; returns each page's measurements by width.
    The status page's guard runs on the dev broker at ``bootstrap`` (default: one of its
    own, stopped at the end)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict[int, Any]] = {"report": {}, "status": {}}
    with tempfile.TemporaryDirectory(prefix="riskguard-shots-") as tmp:
        work = Path(tmp)
        page = _report(work / "report")
        measured = _with_measure(page)
        for w in widths:
            found["report"][w] = measure(measured.as_uri(), w)
            shoot(page.as_uri(), w, found["report"][w]["height"], out_dir / f"report-{w}.png")
        with _live_guard(work / "status", bootstrap) as poller:
            plain, measuring = _serve(poller)
            try:
                for w in widths:
                    found["status"][w] = measure(f"http://127.0.0.1:{measuring.port}/", w)
                    shoot(f"http://127.0.0.1:{plain.port}/", w, found["status"][w]["height"],
                          out_dir / f"status-{w}.png")
            finally:
                plain.close()
                measuring.close()
    return found


@contextlib.contextmanager
def _live_guard(work: Path, bootstrap: str | None) -> Iterator[Any]:
    """The demo's guard running on the dev broker over the bundled scenario, with its
    metrics endpoint: a status poller of that endpoint and of the commands on its topic
    (verified under its key), once the guard has read every record."""
    broker = None
    if bootstrap is None:
        broker = DevBroker(work / "broker")
        bootstrap = broker.start().bootstrap
    guard = None
    try:
        run = prepare_run(bootstrap, work, env=f"shots{os.getpid()}")
        text = run.config.read_text()
        run.config.write_text(text.replace("idle_eof_s = 4.0", "idle_eof_s = 600.0"))
        port = _free_port()
        os.environ["RISKGUARD_METRICS_PORT"] = str(port)
        try:
            guard = start_guard(run)
        finally:
            del os.environ["RISKGUARD_METRICS_PORT"]
        metrics = f"http://127.0.0.1:{port}/metrics"
        key = Signer.from_file(run.keys.signing_key).public_key
        deadline = time.monotonic() + 180
        while _served(metrics)["health"]["events_in"] < run.records \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        # then until every command the guard counts has reached its topic
        commands = _commands(bootstrap, run.topic("commands"), key)
        while len(commands) < _served(metrics)["commands"]["total"] \
                and time.monotonic() < deadline:
            time.sleep(0.2)
            commands = _commands(bootstrap, run.topic("commands"), key)
        yield StatusPoller([metrics], commands=lambda: commands)
    finally:
        if guard is not None:
            guard.terminate()
            guard.wait(30)
        if broker is not None:
            broker.stop()


def _served(metrics: str) -> dict[str, Any]:
    """What the guard's metrics endpoint says (nothing counted while it does not answer)."""
    try:
        return summarize([scrape(metrics, 2.0)])
    except (KeyError, OSError):
        return {"health": {"events_in": 0}, "commands": {"total": 0}}


def _commands(bootstrap: str, topic: str, key: Any) -> list[Any]:
    """The commands on ``topic``, each verified under ``key``."""
    commands = []
    for _part, _offset, raw in scan_topic(KafkaSettings(bootstrap=bootstrap), topic):
        env = decode_envelope(raw)
        if env.payload_type == PAYLOAD_COMMAND:
            key.verify(PAYLOAD_COMMAND, env.payload, env.signatures[0].sig)
            commands.append(decode_command(env))
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(poller: Any) -> tuple[StatusServer, StatusServer]:
    """The status page as ``riskguard status --serve`` serves it, and the same page
    carrying :data:`MEASURE`, each from its own server."""
    body = page(60_000)
    measured = body.replace(b"</body>", MEASURE.encode() + b"</body>")
    return (StatusServer(poller, body=body).start(),
            StatusServer(poller, body=measured).start())


def main() -> int:
    out = Path(__file__).resolve().parent / "img"
    found = make(out)
    for name, by_width in found.items():
        for w, m in by_width.items():
            print(f"{name}-{w}.png  height {m['height']} px  overflowing {m['over'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
