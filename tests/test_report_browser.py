"""The HTML report renders in headless Chromium: plots (SVG) and tables with the numbers."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from riskguard.dataflows.stress import load_scenario, run_scenario, scenario_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)")


def test_report_page_renders_plots_and_tables(tmp_path):
    """Chromium's DOM of report.html holds the SVG plots with their series, incident
    bands and command marks (the scenario scores no anomaly: that plot is a one-line
    note), and the tables show the scenario's numbers (commands per action/scope, the
    PASS verdict)."""
    o = run_scenario(load_scenario(scenario_path("cascading_failure")), tmp_path / "w",
                     out_dir=tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    for pid in ("plot-price", "plot-util", "plot-commands"):
        assert re.search(rf'<svg[^>]*id="{pid}"', dom), pid
    assert re.search(r'<p class="note nodata" id="plot-anomaly"[^>]*>[^<]*: no data\.</p>', dom)
    assert dom.count('class="incident"') >= 3 * 2  # two shocks shaded on each plot
    assert dom.count('class="cmd"') == len(o.result.commands)
    assert dom.count('class="series"') >= 2
    assert '<span id="verdict">PASS</span>' in dom
    for tid in ("t-summary", "t-episodes", "t-delays", "t-false", "t-commands", "t-states",
                "t-log", "t-expect"):
        assert f'id="{tid}"' in dom, tid
    assert "<td>halt_trading</td><td>counterparty:binance</td><td>1</td>" in dom
    assert "<td>reroute_order_flow</td><td>venue:okx</td><td>1</td>" in dom
    n = o.report["summary"]["events"]
    assert f"<td>{n:,}</td>" in dom  # counts have thousands separators


def test_report_page_screenshot_is_not_blank(tmp_path):
    """A screenshot of the page is a real PNG of non-trivial size."""
    run_scenario(load_scenario(scenario_path("venue_outage")), tmp_path / "w",
                 out_dir=tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", f"--screenshot={shot}", "--window-size=1100,1400",
         (tmp_path / "out" / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
