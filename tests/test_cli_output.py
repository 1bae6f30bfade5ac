"""What the command line tells a user: ``riskguard run`` says what it runs, how it is doing
and how it ended; librdkafka's log lines go through Python logging (quiet unless asked);
the demo leaves no private keys behind and every command it prints runs as printed; the
dev broker keeps its state per user; ``ops/broker`` finds the project's Python; stress
results read as sentences."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from riskguard.connectors.broker import default_state_dir
from riskguard.connectors.settings import KafkaSettings, configure_logging
from riskguard.dataflows.demo import PreparedRun, prepare_run
from riskguard.dataflows.stress import Check
from riskguard.operators.core.metrics import DEAD_LETTERS, EVENTS_IN, events_in_total

from riskguard.cli import main
from riskguard.cli_run import Counts, StatusReporter, read_counts, status_line
from riskguard.cli_stress import outcome
from tests.docs_helpers import unlike_the_readmes_demo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "riskguard.cli"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    """This environment with the venv first on PATH and no logging asked for."""
    env = {k: v for k, v in os.environ.items() if k not in ("RISKGUARD_LOG",
                                                             "RISKGUARD_BROKER_DIR")}
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"} | extra


# -- librdkafka's log lines ---------------------------------------------------------------


def test_librdkafka_lines_go_to_the_riskguard_kafka_logger_not_stderr(capfd, caplog) -> None:
    """A real AdminClient on a closed port: its connect failures arrive as log records of
    ``riskguard.kafka``, and nothing reaches file descriptor 2."""
    caplog.set_level(logging.DEBUG, logger="riskguard.kafka")
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{_closed_port()}")
    admin = AdminClient(settings.client_config())
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=1.0)
    admin.poll(0.5)  # the Python client hands log lines over on poll
    _, err = capfd.readouterr()
    assert "%3|" not in err and "Connection refused" not in err, err
    refused = [r for r in caplog.records
               if r.name == "riskguard.kafka" and "Connection refused" in r.getMessage()]
    assert refused and refused[0].levelno >= logging.WARNING
    assert "logger" not in settings.redacted()  # printable config holds no logger object


def test_verbose_logging_shows_librdkafka_lines_as_log_lines(capfd) -> None:
    """With logging on (``-v`` is ``warning``), the same lines are shown on stderr, each
    one a riskguard log line."""
    before = configure_logging("warning")
    try:
        admin = AdminClient(KafkaSettings(bootstrap=f"127.0.0.1:{_closed_port()}")
                            .client_config())
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1.0)
        admin.poll(0.5)
    finally:
        configure_logging(before)
    _, err = capfd.readouterr()
    lines = err.splitlines()
    assert lines and all(line.startswith("riskguard ") for line in lines), err
    assert any("riskguard.kafka" in line and "Connection refused" in line for line in lines)


def test_subscriber_clients_log_through_the_riskguard_kafka_logger(capfd) -> None:
    """Reading a topic through: one on a closed port fails with an exception and no
    librdkafka line on stderr."""
    from riskguard.connectors.kafka.consumer import scan_topic
    from riskguard.connectors.settings import KafkaSettings

    from riskguard.errors import BrokerError

    with pytest.raises(BrokerError):
        list(scan_topic(KafkaSettings(bootstrap=f"127.0.0.1:{_closed_port()}"), "t"))
    _, err = capfd.readouterr()
    assert "%3|" not in err and "Connection refused" not in err, err


# -- riskguard run --------------------------------------------------------------------------


def test_status_line_counts_since_the_reporter_started() -> None:
    """A second run in one process starts at 0; ``in`` also shows the growth since the
    last line."""
    reads = iter([Counts(100, 1, 2, 3, 0), Counts(150, 1, 4, 3, 5), Counts(180, 2, 4, 4, 0)])
    ticks = iter([0.0, 10.0, 20.0])
    out: list[str] = []

    class Out:
        def write(self, s: str) -> None:
            out.append(s)

        def flush(self) -> None:
            pass

    rep = StatusReporter(lambda: next(reads), 10.0, Out(), clock=lambda: next(ticks))  # type: ignore[arg-type]
    rep.tick()
    rep.tick()
    assert out == [
        "status  10 s  in 50 (+50)  dead letters 0  signals 2  commands 0  lag 5\n",
        "status  20 s  in 80 (+30)  dead letters 1  signals 2  commands 1  lag 0\n",
    ]


def test_read_counts_reads_this_processes_own_metrics() -> None:
    """The counters the guard's steps increment are what the status line shows."""
    topic = f"t{uuid.uuid4().hex[:8]}"
    before = read_counts("s", "c")
    EVENTS_IN.labels(topic).inc(7)
    DEAD_LETTERS.labels(topic, "bad_json").inc(2)
    polled = events_in_total()
    now = read_counts("s", "c").minus(before)
    assert (now.events_in, now.dead_letters) == (7, 2)
    assert polled == read_counts("s", "c").events_in  # what the start/end poller reads
    assert status_line(1.0, now, Counts()).startswith("status  1 s  in 7 (+7)  dead letters 2")


@pytest.fixture
def prepared(kafka_bootstrap: str, tmp_path: Path) -> PreparedRun:
    """Topics, keys and a guard config for the bundled scenario, its records published."""
    return prepare_run(kafka_bootstrap, tmp_path / "run", env=f"c{uuid.uuid4().hex[:8]}")


@pytest.mark.kafka
@pytest.mark.slow
def test_run_prints_a_start_line_status_lines_and_a_summary(
        prepared: PreparedRun, recovery_dir: Callable[[int], Path]) -> None:
    """The guard runs in the CLI's process: start line (config hash, Kafka, topics, key id,
    recovery dir), status lines, then a summary of what it did; nothing on stderr."""
    rec = recovery_dir(1)
    proc = subprocess.run(
        [*CLI, "run", "--config", str(prepared.config), "--status-every", "1",
         "--", "-r", str(rec), "-s", "1", "-b", "10"],
        capture_output=True, text=True, env=_env(), timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    start = lines[0]
    for part in (f"config {prepared.config}", "(sha256 ", f"Kafka {prepared.bootstrap}",
                 f"reads {prepared.env}.riskguard.{{market,", "commands,audit",
                 "signing key ", f"recovery dir {rec}", "1 worker(s)", "status every 1 s"):
        assert part in start, (part, start)
    assert any(line.startswith("status  ") for line in lines[1:-1]), proc.stdout
    summary = next(line for line in lines if line.startswith("summary  "))
    assert summary.startswith("summary  ended after "), summary
    # the time is told apart: start-up, the events, the quiet before the end
    assert re.search(r"after [\d.]+ s \(start-up [\d.]+ s, events [\d.]+ s, then quiet "
                     r"[\d.]+ s\): ", summary), summary
    assert f"{prepared.records:,} events in, 0 dead letters" in summary
    commands = int(re.search(r"(\d+) commands", summary).group(1))  # type: ignore[union-attr]
    # then which detectors could fire, and the keys that never warmed up
    after = lines[lines.index(summary) + 1:]
    assert after and after[0].startswith("detectors: "), after
    assert any(line.startswith("  live for the whole run: cross-venue confirmation")
               for line in after)  # two venues of BTC from the first event
    assert any(line.startswith("  live for part of it: ") and " in)" in line for line in after)
    assert commands > 0


@pytest.mark.kafka
@pytest.mark.slow
def test_run_interrupted_prints_its_summary_and_exits_130(prepared: PreparedRun) -> None:
    """Ctrl-C ends the run with a summary line, not a traceback. (Run without its
    playbook: the line after the start line says no command will be issued.)"""
    text = prepared.config.read_text()
    assert "idle_eof_s = 4.0" in text and 'playbook_file = "playbook.toml"' in text
    # the run must still be going when the signal lands: no idle end in the meantime
    prepared.config.write_text(text.replace("idle_eof_s = 4.0", "idle_eof_s = 600.0")
                               .replace('playbook_file = "playbook.toml"', ""))
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(prepared.config), "--status-every", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    start = proc.stdout.readline()
    assert start.startswith("riskguard run: config "), start
    assert proc.stdout.readline().startswith("note: the playbook has no rules")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert any(line.startswith("summary  interrupted after ") for line in out.splitlines()), out


# -- the demo -------------------------------------------------------------------------------


def _shadowed_folder(tmp_path: Path) -> Path:
    """A folder holding a clone named riskguard (symlinks to this one): the folder a user
    stands in when the clone would hide the package."""
    parent = tmp_path / "work"
    clone = parent / "riskguard"
    clone.mkdir(parents=True)
    for name in ("riskguard", "operators", "connectors", "dataflows", "schemas"):
        (clone / name).symlink_to(ROOT / name)
    return parent


@pytest.mark.slow
def test_demo_removes_its_work_dir_and_the_commands_it_prints_run_as_printed(
        tmp_path: Path) -> None:
    """From the parent folder of a clone named riskguard: the demo runs, its private keys
    are gone at the end, no librdkafka line leads (or follows) its output, each line of
    its output the README shows matches one line it printed (allowing other digits), the
    README shows every command, rejection, summary and audit line it printed, and the
    command it prints to keep the topics runs as printed; that run keeps its work dir and
    prints an ``audit verify`` that also runs as printed."""
    cwd = _shadowed_folder(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = _env(TMPDIR=str(temp), RISKGUARD_BROKER_DIR=str(tmp_path / "broker-state"))
    first = subprocess.run([str(BIN / "riskguard"), "demo"], cwd=cwd, capture_output=True,
                           text=True, env=env, timeout=300, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert first.stderr == ""
    assert first.stdout.startswith("dev broker (in memory only) on 127.0.0.1:")
    assert list(temp.iterdir()) == []  # the riskguard-demo-* dir and its keys are gone
    missing, not_shown = unlike_the_readmes_demo(first.stdout.splitlines())
    assert missing == []
    assert not_shown == [], "the run printed lines the README does not show"
    printed = [line[2:] for line in first.stdout.splitlines() if line.startswith("  riskguard ")]
    assert printed == ['riskguard demo --bootstrap "$(riskguard broker start)" --keep-dir']
    try:
        second = subprocess.run(["bash", "-c", printed[0]], cwd=cwd, capture_output=True,
                                text=True, env=env, timeout=300, check=False)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        kept = [p for p in temp.iterdir() if p.name.startswith("riskguard-demo-")]
        assert len(kept) == 1 and (kept[0] / "engine.key").exists()
        assert f"work dir kept: {kept[0]}" in second.stdout
        again = [line[2:] for line in second.stdout.splitlines()
                 if line.startswith("  riskguard ")]
        assert len(again) == 1 and again[0].startswith("riskguard audit verify --topic ")
        third = subprocess.run(["bash", "-c", again[0]], cwd=cwd, capture_output=True,
                               text=True, env=env, timeout=120, check=False)
        assert third.returncode == 0, third.stdout + third.stderr
        assert third.stdout.startswith("ok   chain riskguard/p0: ")
    finally:
        subprocess.run([str(BIN / "riskguard"), "broker", "stop"], env=env, timeout=60,
                       check=False, capture_output=True)


@pytest.mark.slow
def test_demo_interrupted_removes_its_work_dir_and_stops_its_broker(tmp_path: Path) -> None:
    """Ctrl-C during the demo: exit 130, the work dir with its keys removed, the dev broker
    it started stopped."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    # as a terminal starts it, SIGINT at its default: a shell's background job (a suite
    # run with &) ignores SIGINT, and a child inherits that (the same process execs)
    at_default = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    proc = subprocess.Popen([sys.executable, "-c", at_default, *CLI[1:], "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(TMPDIR=str(temp)))
    assert proc.stdout is not None
    proc.stdout.readline()  # dev broker ... on ...
    work = proc.stdout.readline()
    assert work.startswith(f"work dir {temp}"), work
    pid = int((Path(work.split()[2]) / "broker" / "broker.pid").read_text())
    masks = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
             if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (masks, out, err)
    assert err.strip() == "riskguard demo: interrupted", err
    assert list(temp.iterdir()) == []
    assert _stopped(pid), f"the demo's broker (pid {pid}) still runs"


def _stopped(pid: int, within_s: float = 10.0) -> bool:
    """Whether process ``pid`` is gone, or a zombie (it has exited; a container's init
    may not reap an orphan at once), within ``within_s``."""
    import time

    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# -- the dev broker -------------------------------------------------------------------------


def test_broker_state_is_per_user_never_the_current_folder(tmp_path: Path) -> None:
    """``riskguard broker start`` from any folder keeps its pid and log under the user's
    state dir ($XDG_STATE_HOME here), not in ./ops/.run."""
    state = tmp_path / "state"
    env = _env(XDG_STATE_HOME=str(state))
    here = tmp_path / "somewhere"
    here.mkdir()
    assert default_state_dir({"XDG_STATE_HOME": str(state)}) == state / "riskguard" / "broker"
    start = subprocess.run([*CLI, "broker", "start"], cwd=here, capture_output=True,
                           text=True, env=env, timeout=60, check=False)
    try:
        assert start.returncode == 0, start.stderr
        assert (state / "riskguard" / "broker" / "broker.pid").exists()
        assert list(here.iterdir()) == []
    finally:
        stop = subprocess.run([*CLI, "broker", "stop"], cwd=here, capture_output=True,
                              text=True, env=env, timeout=60, check=False)
    assert stop.stderr == "stopped\n"


def test_ops_broker_finds_the_project_venv_without_activation(tmp_path: Path) -> None:
    """With only the system's PATH (no venv activated), ops/broker still runs riskguard's
    broker command: "not running" for an empty state dir, exit 1."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv beside this clone")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "RISKGUARD_BROKER_DIR": str(tmp_path / "state")}
    proc = subprocess.run(["bash", str(ROOT / "ops" / "broker"), "status"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("not running (state dir "), proc.stderr
    assert "riskguard broker start" in proc.stderr


# -- stress wording -------------------------------------------------------------------------


def test_stress_checks_read_as_sentences() -> None:
    """A ``never`` expectation says whether the command was issued, not ``actual -``."""
    assert outcome(Check("halt_trading", "venue:binance", None, None, "PASS", "never issued",
                         never=True)) == ("never halt_trading", "not issued")
    assert outcome(Check("halt_trading", "venue:binance", None, None, "FAIL", "x",
                         never=True)) == ("never halt_trading", "issued")
    assert outcome(Check("reduce_only", "venue:okx", 180.0, None, "FAIL", "x")) == (
        "reduce_only", "not issued (deadline 180s)")
    assert outcome(Check("invariant", "ends in a safe state", None, None, "PASS", "")) == (
        "invariant", "holds")


@pytest.mark.slow
def test_stress_run_prints_no_dash_for_never_and_invariants(tmp_path: Path, capsys) -> None:
    """The flash crash forbids halting binance and deribit: both lines say 'not issued'."""
    assert main(["stress", "run", "flash_crash", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "actual -" not in out
    assert re.search(r"PASS never halt_trading +venue:binance +not issued", out), out
    assert re.search(r"PASS invariant +ends in a safe state +holds", out), out


def test_an_interrupt_a_c_extension_turned_into_another_error_is_still_noted() -> None:
    """confluent-kafka, interrupted while it reads its config, raises TypeError instead of
    KeyboardInterrupt: the run still notes the signal, so it ends as interrupted (130),
    not as stopped on an error."""
    import os

    from riskguard.cli_run import stop_signals

    received: list[int] = []
    with pytest.raises(TypeError), stop_signals(received):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)  # let the handler run
        except KeyboardInterrupt as err:
            msg = "expected configuration property name as type unicode string"
            raise TypeError(msg) from err
    assert received == [signal.SIGINT]


def test_run_on_flink_without_pyflink_names_the_python_to_use(capsys, monkeypatch) -> None:
    """``--engine flink`` needs a Python with riskguard[flink]; the test venv has none, and
    the refusal says how to name one, before anything starts."""
    monkeypatch.delenv("RISKGUARD_FLINK_PYTHON", raising=False)
    rc = main(["run", "--engine", "flink", "--config", "guard.toml"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "RISKGUARD_FLINK_PYTHON" in err and "--engine flink" in err


@pytest.mark.kafka
def test_run_on_flink_hands_new_config_to_the_job(
        prepared: PreparedRun, tmp_path: Path, monkeypatch, capsys) -> None:
    """``--new-config`` reaches the Flink job (as ``$RISKGUARD_NEW_CONFIG=1``), which
    checks the peers' configs in its own process. A stand-in interpreter records what the
    job would be started with; the job itself is not the subject here."""
    seen = tmp_path / "seen"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s" "$RISKGUARD_NEW_CONFIG" > {seen}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("RISKGUARD_FLINK_PYTHON", str(fake))
    monkeypatch.delenv("RISKGUARD_NEW_CONFIG", raising=False)
    for flag, want in ((["--new-config"], "1"), ([], "")):
        rc = main(["run", "--engine", "flink", *flag, "--config", str(prepared.config)])
        assert rc == 0, capsys.readouterr().err
        assert seen.read_text() == want, flag


def test_every_option_and_argument_of_every_command_says_what_it_is() -> None:
    """``riskguard COMMAND --help`` describes each option and positional argument: none
    is listed bare, as ``subscribe``'s ``--state`` or ``--idle-timeout`` once were."""
    import argparse

    from riskguard.cli import build_parser

    bare: list[str] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif action.help is None or not str(action.help).strip():
                bare.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "riskguard")
    assert bare == []
