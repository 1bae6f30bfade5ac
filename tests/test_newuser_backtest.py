"""A new user's own exchange files through ``riskguard backtest`` and ``riskguard explain``,
as the docs tell them: a Binance kline zip, a CryptoDataDownload OHLCV export and a
Tardis.dev trades CSV (tests/newuser_files.py writes each to its published layout, with a
crash in it). Each gives a report with its price plot, its counts and its commands, that
says without labels that its alarms are unscored; a file too short to warm the learned
detector says so at the end of the run; explain says what could fire at the crash."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from riskguard.dataflows.demo import init_keys

from riskguard.cli import main
from tests.docs_helpers import DOCS, blocks, unmatched
from tests.newuser_files import binance_klines_zip, cryptodatadownload_csv, tardis_trades_csv


@pytest.fixture(scope="module")
def guard_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config as a new user writes one from the README: keys, the bundled playbook, no
    instruments (market data only)."""
    work = tmp_path_factory.mktemp("newuser")
    keys = init_keys(work)
    shutil.copy(str(resources.files("riskguard.dataflows") / "playbook.toml"),
                work / "playbook.toml")
    path = work / "guard.toml"
    path.write_text(f'env = "dev"\nplaybook_file = "playbook.toml"\n\n[keys]\n'
                    f'signing_key = "{keys.signing_key.name}"\nissuer = "riskguard-guard"\n'
                    f'trust_file = "{keys.trust_file.name}"\n'
                    f'roots_file = "{keys.roots_file.name}"\n')
    return path


def _backtest(guard_toml: Path, data: Path, out: Path, capsys: pytest.CaptureFixture[str],
              ) -> tuple[str, dict, str]:
    rc = main(["backtest", "--config", str(guard_toml), "--data", str(data),
               "--out", f"{out}/"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    return stdout, json.loads((out / "report.json").read_text()), \
        (out / "report.html").read_text()


@pytest.mark.parametrize(("make", "market", "bars"), [
    (binance_klines_zip, "binance/BTCUSDT", True),
    (cryptodatadownload_csv, "binance/ETHUSDT", True),  # Binance_ETHUSDT_1h.csv
    (tardis_trades_csv, "deribit/BTC-PERPETUAL", False),
])
def test_each_file_gives_a_report_with_its_prices_counts_and_verified_commands(
        guard_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        make: Callable[[Path], Path], market: str, bars: bool) -> None:
    """The report counts the file's one market, plots its price (a bar's close with its
    high-low range around it), shows the reduce-only the crash brought (on the market, or
    on its venue for the learned detector's rule), each command verified against the
    trust file, and the paths it prints are clean."""
    data = make(tmp_path)
    out = tmp_path / "bt"
    stdout, rep, page = _backtest(guard_toml, data, out, capsys)
    assert f"report: {out}/report.html, {out}/report.json" in stdout and "//" not in stdout
    assert rep["summary"]["instruments"] == 1 and rep["summary"]["markets"] == [market]
    prices = rep["series"]["prices"][market]
    assert len(prices) > 100
    if bars:
        ranges = {t: (lo, hi) for t, lo, hi in rep["series"]["ranges"][market]}
        assert all(ranges[t][0] <= close <= ranges[t][1] for t, close in prices)
        assert 'class="range"' in page and "high-low range" in page
    reduce = {c["scope"] for c in rep["command_log"] if c["action"] == "reduce_only"}
    assert reduce & {f"instrument:{market}", f"venue:{market.partition('/')[0]}"}
    assert {c["verified"] for c in rep["command_log"]} == {"verified"}
    price_plot = page[page.index('id="plot-price"'):page.index('id="plot-anomaly"')]
    assert "no data" not in price_plot and 'class="series"' in price_plot
    assert f"1 market ({market})" in page


def test_without_labels_alarms_are_unlabelled_and_the_page_says_how_to_add_them(
        guard_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --labels: no alarm is counted false, and report.json holds no figure that needs
    labels (episodes, precision, delays, false alarms are null); the run and the page say
    so, and the page shows a labels file for this run's market and first alarm."""
    stdout, rep, page = _backtest(guard_toml, tardis_trades_csv(tmp_path), tmp_path / "bt",
                                  capsys)
    assert rep["labelled"] is False and rep["summary"]["alarms"] >= 1
    assert rep["episodes"] is None
    assert rep["detection_delay_s"] is None and rep["mitigation_delay_s"] is None
    fa = rep["false_alarms"]
    assert fa["count"] is None and fa["per_instrument_day"] is None and fa["by_signal"] is None
    assert "unlabelled: without --labels no alarm is counted true or false" in stdout
    assert "false alarm" not in stdout
    assert "are unlabelled: none is counted true or false" in page
    assert "--labels labels.json" in page
    assert "instrument:deribit/BTC-PERPETUAL" in page[page.index("Not scored"):]
    assert 'id="t-false"' not in page and 'id="t-unlabelled"' in page


def test_a_file_too_short_to_warm_the_detector_says_so_at_the_end(
        guard_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """200 trades over 200 s: the run ends naming the key whose learned detector never
    warmed up, with both reasons, and what became live when (nothing was from the first
    trade, so nothing is said to be live for the whole run)."""
    data = tardis_trades_csv(tmp_path, n=200, crash_at=150)
    stdout, rep, page = _backtest(guard_toml, data, tmp_path / "bt", capsys)
    tail = stdout[stdout.index("detectors: "):]
    assert "live for the whole run" not in tail
    assert ("live for part of it: move bands, learned bands (every key, from 30 s in); move "
            "bands, static levels (every key, from 1 min in)") in tail
    assert ("never warmed up (the learned detector needs 400 vectors over 5 min): 1 of 1 "
            "key(s), too few events and too little time: deribit/BTC-PERPETUAL "
            "(200 vectors over 3 min 19 s)") in tail
    assert rep["readiness"]["never_warm"] == ["deribit/BTC-PERPETUAL"]
    assert "never warmed up" in page


def test_explain_says_what_could_fire_at_the_crash_and_what_could_not(
        guard_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At the crash (found by itself: the largest one-minute move), the static levels
    could fire and their 1-minute cap was passed; the learned detector, on a short file,
    could not, and explain says what it needed; --at names another moment."""
    data = tardis_trades_csv(tmp_path, n=200, crash_at=150)
    assert main(["explain", "--config", str(guard_toml), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "the largest 1 min move in the data" in out
    fire = out[out.index("could fire here:"):out.index("could not:")]
    assert "move bands, static levels" in fire and "past its 300 bps" in fire
    # what makes a band reading critical is the key's critical rules, said as they are
    assert "critical until the key's typical moves are learned (static)" in fire
    assert "3 typical day ranges, or 600 bps in the key's first day (fast_fall)" in fire
    assert "(slide)" in fire
    cannot = out[out.index("could not:"):]
    assert "learned detector" in cannot and "needs 400 vectors over 5 min" in cannot
    assert "price_move open" in out and "(critical)" in out
    page = (DOCS / "backtests.md").read_text()
    shown_out = blocks(page[page.index("```\nexplain: "):])[0][1]
    assert unmatched(shown_out.splitlines()[1:], out.splitlines()[1:]) == [], (
        "docs/backtests.md shows explain's output otherwise")
    assert main(["explain", "--config", str(guard_toml), "--data", str(data),
                 "--at", "2024-01-01T00:00:30Z"]) == 0
    early = capsys.readouterr().out
    assert early.startswith("explain: 2024-01-01 00:00:30 UTC")
    assert "(no price that far back)" in early


@pytest.mark.parametrize("make", [binance_klines_zip, cryptodatadownload_csv])
def test_explain_gives_the_largest_move_as_the_moves_here_give_it(
        guard_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        make: Callable[[Path], Path]) -> None:
    """On bars, the headline's largest move and the moves-here line measure the same way
    (the bar's low or high against the close one horizon back): the same number."""
    assert main(["explain", "--config", str(guard_toml), "--data", str(make(tmp_path))]) == 0
    out = capsys.readouterr().out
    head = re.search(r"the largest (.+?) move in the data, ([+-]\d+) bps", out)
    here = re.search(r"moves here: (.+?) ([+-]\d+) bps", out)
    assert head and here, out
    assert (head.group(1), head.group(2)) == (here.group(1), here.group(2))
