"""Every runbook command block marked ``# test:`` runs, in order, and succeeds.

Blocks of one runbook share a scratch directory (later steps use files made
by earlier ones) and run under ``bash -euo pipefail`` with the riskguard CLI
of this interpreter first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from riskguard.operators.signing.crypto import decode_envelope

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "ops" / "runbooks"
BLOCK = re.compile(r"```bash\n(# test:[^\n]*\n.*?)```", re.S)
TESTED = ("trust-file-rotation.md", "replay-audit-log.md", "lost-recovery-directory.md",
          "firm-wide-halt.md")


def blocks(name: str) -> list[tuple[str, str]]:
    """(title, script) of each ``# test:`` block in a runbook, in document order."""
    text = (RUNBOOKS / name).read_text()
    out = []
    for body in BLOCK.findall(text):
        title = body.splitlines()[0].removeprefix("# test:").strip()
        out.append((title, body))
    return out


def run_all(name: str, cwd: Path, extra_env: dict[str, str]) -> list[str]:
    env = {**os.environ, **extra_env,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHON": sys.executable, "TMPDIR": str(cwd),
           "ENTRYPOINT": str(ROOT / "ops" / "k8s" / "entrypoint.sh")}
    ran = []
    for title, script in blocks(name):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, f"{name}: block {title!r} failed:\n{r.stdout}\n{r.stderr}"
        ran.append(title)
    return ran


def test_every_runbook_exists_has_tested_blocks_and_links_key_rotation() -> None:
    """Each runbook of the issue is present with at least one ``# test:`` block."""
    for name in TESTED:
        assert len(blocks(name)) >= 1, name
    assert (RUNBOOKS / "key-rotation.md").exists()
    assert "key-rotation.md" in (RUNBOOKS / "trust-file-rotation.md").read_text()


def _write_trust(tmp: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from signing_fixtures import trust_text

    (tmp / "trust.toml").write_text(trust_text(1))


def test_trust_file_rotation_runbook(tmp_path: Path) -> None:
    """Roots pinned 2-of-3; serial bumped; one signature refused, two accepted; tamper refused."""
    _write_trust(tmp_path)
    ran = run_all("trust-file-rotation.md", tmp_path, {})
    assert ran == ["pin roots", "bump serial and re-sign with two roots",
                   "a tampered trust file is refused"]
    assert "serial = 2" in (tmp_path / "trust.toml").read_text()
    assert (tmp_path / "roots.toml").read_text().startswith("threshold = 2")


def test_replay_audit_log_runbook(tmp_path: Path) -> None:
    """verify succeeds on the export, the proof checks, a deleted record is caught."""
    sys.path.insert(0, str(ROOT / "tests"))
    from riskguard.operators.signing.crypto import save_public_key
    from signing_fixtures import ENGINE
    from test_audit import run_log

    log = run_log(10)
    (tmp_path / "audit.jsonl").write_bytes(b"\n".join(msgspec.json.encode(x) for x in log) + b"\n")
    save_public_key(tmp_path / "engine.pub", ENGINE.public_key)
    ran = run_all("replay-audit-log.md", tmp_path, {"RECORD_ID": "riskguard/p0:5"})
    assert len(ran) == 3
    assert '"index"' in (tmp_path / "proof.json").read_text()


def test_lost_recovery_directory_runbook(tmp_path: Path) -> None:
    """The entrypoint refuses a volume that lost its partition; a fresh market tier has one
    partition of its own per process."""
    ran = run_all("lost-recovery-directory.md", tmp_path, {})
    assert len(ran) == 2
    for name in ("rec-market-0", "rec-market-1", "rec-firm"):
        assert sorted(p.name for p in (tmp_path / name).glob("part-*")) == ["part-0.sqlite3"]


def test_firm_wide_halt_runbook(tmp_path: Path) -> None:
    """Against a halted guard's metrics: status shows halt_trading; the trust file needs two."""
    sys.path.insert(0, str(ROOT / "tests"))
    from signing_fixtures import ROOTS, write_signed_trust
    from test_operator_commands import key_file

    write_signed_trust(tmp_path, roots=ROOTS[:1])
    os.replace(key_file(tmp_path, "op-alice"), tmp_path / "alice.pem")
    os.replace(key_file(tmp_path, "op-bob"), tmp_path / "bob.pem")
    reg = CollectorRegistry()
    cmds = Counter("riskguard_commands_total", "c", ["action", "scope_kind"], registry=reg)
    Counter("riskguard_events_in_total", "in", ["stream"], registry=reg).labels("m").inc(50)
    Gauge("riskguard_episodes_open", "e", ["key_class"], registry=reg).labels("market").set(1)
    cmds.labels("halt_trading", "firm").inc()
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        ran = run_all("firm-wide-halt.md", tmp_path, {"METRICS_URL": url, "NEXT_SEQ": "1"})
    finally:
        server.shutdown()
    assert len(ran) == 3
    assert len(decode_envelope((tmp_path / "resume.json").read_bytes()).signatures) == 2
    assert '"halt_trading": 1.0' in (tmp_path / "status.json").read_text()


@pytest.mark.parametrize("name", TESTED)
def test_runbook_blocks_only_call_existing_cli_commands(name: str) -> None:
    """Every ``riskguard <cmd> <sub>`` in a tested block answers --help (no invented commands)."""
    calls = set()
    for _title, script in blocks(name):
        for m in re.finditer(r"riskguard ([a-z-]+)(?: ([a-z-]+))?", script):
            calls.add((m.group(1), m.group(2)))
    for cmd, sub in sorted(calls, key=str):
        argv = [sys.executable, "-m", "riskguard.cli", cmd]
        if sub and cmd in ("keys", "audit", "topics"):
            argv.append(sub)
        r = subprocess.run([*argv, "--help"], capture_output=True, text=True, check=False)
        assert r.returncode == 0, (cmd, sub, r.stderr)
