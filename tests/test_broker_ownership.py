"""``riskguard broker stop`` stops only the broker it started: not a process that reused a
dead broker's pid, and not another user's broker in a shared state folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from riskguard.connectors.broker import DevBroker, process_identity

from riskguard.errors import BrokerError


def _record(state: Path, pid: int, **extra: object) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "broker.pid").write_text(f"{pid}\n")
    (state / "broker.json").write_text(json.dumps(
        {"pid": pid, "bootstrap": "127.0.0.1:1", "log": "x", **extra}))


@pytest.fixture
def bystander() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_pid_reused_by_another_process_is_not_stopped(
        tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    ident = process_identity(bystander.pid)
    assert ident is not None
    _record(tmp_path, bystander.pid, uid=ident[0], started=str(int(ident[1]) - 100))
    broker = DevBroker(tmp_path)
    assert broker.status() is None
    assert broker.stop() is False
    assert bystander.poll() is None  # still running


def test_another_users_broker_is_not_stopped(
        tmp_path: Path, bystander: subprocess.Popen[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ident = process_identity(bystander.pid)
    assert ident is not None
    _record(tmp_path, bystander.pid, uid=ident[0], started=ident[1])
    monkeypatch.setattr(os, "getuid", lambda: ident[0] + 1)  # as if another user ran it
    with pytest.raises(BrokerError, match="belongs to another user"):
        DevBroker(tmp_path).stop()
    assert bystander.poll() is None
    assert (tmp_path / "broker.json").exists()  # their record stays


def test_its_own_broker_is_stopped(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    ident = process_identity(bystander.pid)
    assert ident is not None
    _record(tmp_path, bystander.pid, uid=ident[0], started=ident[1])
    assert DevBroker(tmp_path).stop() is True
    assert bystander.wait(timeout=10) is not None
