"""Fault drills for the guard dataflow on this machine (issue: operations)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from riskguard.connectors.broker import DevBroker
from riskguard.dataflows.demo import PreparedRun, prepare_run, start_guard, subscriber_for
from riskguard.schemas import MitigationCommand

from tests.kafka_helpers import consume_all
from tests.test_guard_e2e import assert_same_outcome, finish_guard

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _prepare(bootstrap: str, tmp: Path, name: str, overrides: str = "") -> PreparedRun:
    return prepare_run(bootstrap, tmp / name, env=f"d{uuid.uuid4().hex[:8]}", overrides=overrides)


def _executed(run: PreparedRun, state: Path) -> list[MitigationCommand]:
    got: list[MitigationCommand] = []
    with subscriber_for(run, state, on_command=got.append) as sub:
        sub.poll(idle_timeout_s=2.0)
    return got


def _wait_for_commands(run: PreparedRun, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if consume_all(run.bootstrap, run.topic("commands"), idle_s=0.2, timeout_s=1.0):
            return
    pytest.fail("the guard never started emitting commands")


@pytest.fixture(scope="module")
def reference(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reference")
    run = _prepare(kafka_bootstrap, tmp, "ref")
    finish_guard(start_guard(run))
    return _executed(run, tmp / "sub.sqlite")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs for the recovery directory (skips if this sandbox cannot mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); no full-disk drill")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_recovery_disk_stops_the_flow_loudly_and_resumes_after_space_is_freed(
    reference, kafka_bootstrap, tmp_path, small_disk
) -> None:
    """With the recovery disk full, the guard exits non-zero instead of running without
    snapshots; once space is freed it resumes and nothing is lost."""
    run = _prepare(kafka_bootstrap, tmp_path, "disk")
    rec = small_disk / "recovery"
    rec.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True,
                   capture_output=True)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)
    proc = start_guard(run, "-r", str(rec), "-s", "1", "-b", "10")
    out, _ = proc.communicate(timeout=150)
    text = out.decode(errors="replace")
    assert proc.returncode != 0, "the guard ran on without being able to snapshot"
    assert "full" in text.lower() or "space" in text.lower() or "disk" in text.lower(), text[-2000:]
    executed = _executed(run, tmp_path / "sub.sqlite")
    filler.unlink()
    finish_guard(start_guard(run, "-r", str(rec), "-s", "1", "-b", "10"))
    executed += _executed(run, tmp_path / "sub.sqlite")
    assert len({c.command_id for c in executed}) == len(executed)
    assert_same_outcome(executed, reference)


def test_unreachable_broker_at_start_is_a_clear_error_within_the_timeout(tmp_path) -> None:
    """Pointing the guard at a dead address fails fast, naming the address."""
    from riskguard.dataflows.demo import init_keys, write_config

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:1", keys, env="nobroker")
    env = {**os.environ, "RISKGUARD_CONFIG": str(config)}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard"],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in r.stdout + r.stderr
    assert time.monotonic() - t0 < 40


def test_broker_gone_mid_run_fails_loudly_and_restart_resumes_from_recovery(
    reference, tmp_path, recovery_dir
) -> None:
    """A broker that stops answering mid-run stops the guard loudly: its sink cannot
    deliver, or (all output delivered) its input cannot confirm its end. When the broker
    comes back, a restart from recovery completes with every command delivered once."""
    broker = DevBroker(tmp_path / "own-broker")
    bootstrap = broker.start().bootstrap
    try:
        run = _prepare(bootstrap, tmp_path, "gone")
        rec = recovery_dir(1)
        _override_delivery_timeout(run, 3.0)
        proc = start_guard(run, "-r", str(rec), "-s", "1", "-b", "10")
        _wait_for_commands(run, [proc])
        pid = broker.status().pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)  # gone: no answers, connections hang
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            os.kill(pid, signal.SIGCONT)  # back
        assert proc.returncode != 0
        said = out.decode(errors="replace")
        assert "not acknowledged" in said or "cannot confirm the end of input" in said, (
            said[-2000:])
        executed = _executed(run, tmp_path / "sub.sqlite")
        finish_guard(start_guard(run, "-r", str(rec), "-s", "1", "-b", "10"))
        executed += _executed(run, tmp_path / "sub.sqlite")
        assert len({c.command_id for c in executed}) == len(executed)
        # Catching up after the restart, the detector may add protective rungs elsewhere.
        assert_same_outcome(executed, reference, extra_scopes_ok=True)
    finally:
        broker.stop()


def _override_delivery_timeout(run: PreparedRun, seconds: float) -> None:
    """Shorten the sink's delivery timeout so the drill does not wait 30 s."""
    text = run.config.read_text()
    run.config.write_text(f"sink_delivery_timeout_s = {seconds}\n" + text)


def test_missing_or_invalid_signing_key_emits_nothing_unsigned(kafka_bootstrap, tmp_path) -> None:
    """Without a usable signing key the guard refuses to start, names the key file, and no
    command reaches the commands topic."""
    run = _prepare(kafka_bootstrap, tmp_path, "nokey")
    run.keys.signing_key.unlink()
    proc = start_guard(run)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert str(run.keys.signing_key) in out.decode(errors="replace")
    run.keys.signing_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    os.chmod(run.keys.signing_key, 0o600)
    proc = start_guard(run)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "key" in out.decode(errors="replace").lower()
    assert consume_all(kafka_bootstrap, run.topic("commands"), idle_s=1.0, timeout_s=5) == []
