"""The shared progress bar: silent unless stderr is a terminal, one redrawn line when it is."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from riskguard.cli import main
from riskguard.progress import Progress, is_terminal


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_nothing_when_the_stream_is_not_a_terminal():
    buf = io.StringIO()
    with Progress("backtest", total=10, stream=buf, every_s=0) as bar:
        for _ in range(10):
            bar.advance()
        bar.note("x")
    assert not bar.enabled
    assert buf.getvalue() == ""


def test_progress_renders_one_carriage_return_line_in_a_terminal_and_erases_it():
    buf = _Tty()
    clock = iter(float(i) for i in range(100))
    with Progress("publish", total=4, unit="bytes", stream=buf, every_s=0.5,
                  clock=lambda: next(clock)) as bar:
        assert bar.enabled
        bar.update(1)
        bar.update(4)
    text = buf.getvalue()
    frames = [f for f in text.split("\r") if f.strip()]
    assert frames == ["publish [#####...............]  25% 1/4 bytes",
                      "publish [####################] 100% 4/4 bytes"]
    assert "\n" not in text  # never a line of its own in the command's output
    assert text.endswith("\r")  # erased at the end: the summary starts on a clean line


def test_progress_redraws_at_most_every_interval_of_the_injected_clock():
    buf = io.StringIO()
    now = [0.0]
    bar = Progress("stress", total=100, stream=buf, force=True, every_s=1.0,
                   clock=lambda: now[0])
    for i in range(10):
        bar.update(i)  # same instant: only the first draws
    now[0] = 2.0
    bar.update(50)
    assert [f for f in buf.getvalue().split("\r") if f] == [
        "stress [....................]   0% 0/100", "stress [##########..........]  50% 50/100"]


def test_progress_without_a_total_shows_a_count_and_a_note():
    bar = Progress("calibrate", stream=io.StringIO(), force=True)
    bar.advance(1234)
    bar.note("candidate 3")
    assert bar.line() == "calibrate 1,234 candidate 3"


def test_a_closed_stream_is_not_a_terminal():
    s = io.StringIO()
    s.close()
    assert not is_terminal(s)


def _tty_stderr(monkeypatch: pytest.MonkeyPatch) -> _Tty:
    """stderr as a terminal, so the commands draw their progress line (set in the test
    body: capsys re-takes sys.stderr as the test's call starts)."""
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    return tty


@pytest.fixture(scope="module")
def guard_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from riskguard.dataflows.demo import init_keys, write_config

    work = tmp_path_factory.mktemp("progress")
    return write_config(work, "127.0.0.1:9092", init_keys(work))


def _frames(tty: _Tty) -> list[str]:
    return [f.strip() for f in tty.getvalue().split("\r") if f.strip()]


def test_publish_draws_its_progress_line_in_a_terminal(monkeypatch, tmp_path, capsys):
    tty_stderr = _tty_stderr(monkeypatch)
    from riskguard.dataflows.sample_data import sample_files

    rc = main(["publish", str(sample_files()[0]), "--topic", "auto", "--check"])
    assert rc == 0
    frames = _frames(tty_stderr)
    # the first batch is drawn at once; later ones at most every 0.1 s
    assert frames[0] == ("publish [####................]  21% 187,812/905,773 bytes "
                         "(1,000 records, 0 rejected)")
    assert all(f.startswith("publish [") and "rejected)" in f for f in frames)
    assert "\n" not in tty_stderr.getvalue()


def test_backtest_draws_its_progress_line_in_a_terminal(monkeypatch, guard_toml, tmp_path):
    tty_stderr = _tty_stderr(monkeypatch)
    rc = main(["backtest", "--config", str(guard_toml), "--sample", "--out", str(tmp_path)])
    assert rc == 0
    frames = _frames(tty_stderr)
    assert frames and all(f.startswith("backtest [") for f in frames)
    assert frames[-1].endswith("events")


def test_calibrate_draws_its_progress_line_in_a_terminal(monkeypatch, guard_toml, tmp_path):
    tty_stderr = _tty_stderr(monkeypatch)
    rc = main(["calibrate", "--config", str(guard_toml), "--sample", "--out", str(tmp_path),
               "--grid", '{"detector.warmup_events": [60]}'])
    assert rc == 0
    frames = _frames(tty_stderr)
    # one candidate besides the defaults, then the two held-out runs: 4 backtests
    assert frames[0] == "calibrate [....................]   0% 0/4 backtests"
    assert frames[-1] == "calibrate [####################] 100% 4/4 backtests"


def test_stress_draws_its_progress_line_in_a_terminal(monkeypatch, tmp_path, capsys):
    tty_stderr = _tty_stderr(monkeypatch)
    rc = main(["stress", "run", "flash_crash", "--out", str(tmp_path)])
    assert rc == 0
    frames = _frames(tty_stderr)
    assert frames[0] == "stress [....................]   0% 0/1 scenarios running flash_crash"
    assert "PASS flash_crash" in capsys.readouterr().out
