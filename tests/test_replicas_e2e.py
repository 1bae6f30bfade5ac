"""Replica drills on the dev broker: two guards in separate failure domains over the same
input, each signing with its own key; the subscriber executes each decision once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from riskguard.dataflows.demo import ISSUER, PreparedRun, prepare_run, start_guard, subscriber_for
from riskguard.operators.signing.crypto import Signer, decode_envelope, generate_key_file
from riskguard.operators.signing.trust import sign_trust_file, trust_doc_to_toml
from riskguard.schemas import MitigationCommand

from tests.kafka_helpers import consume_all
from tests.test_guard_e2e import _assert_never_twice, _assert_scenario, _finish

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _replicas(run: PreparedRun) -> tuple[Path, Path]:
    """Configs of replicas a and b: a signs as the run's engine key, b with its own key
    (its own name in the trust file, the engine role); both name every replica."""
    work = run.workdir
    b_key = generate_key_file(work / "engine-b.key")
    trust = tomllib.loads(run.keys.trust_file.read_text())
    keys = [*trust["keys"], {"name": "engine-b", "public_key": b_key.public_key.raw.hex(),
                             "role": "risk-engine", "actions": ["*"], "scopes": ["*"]}]
    run.keys.trust_file.write_text(trust_doc_to_toml(
        keys, serial=int(trust.get("serial", 1)) + 1, two_person=trust.get("two_person")))
    for sig in work.glob("trust.toml.sig*"):
        sig.unlink()
    sign_trust_file(run.keys.trust_file, Signer.from_file(work / "root.key"))
    text = run.config.read_text()
    a = work / "guard-a.toml"
    a.write_text(text + '\n[replica]\nid = "a"\npeers = ["a", "b"]\n')
    b = work / "guard-b.toml"
    b.write_text(text.replace(f'issuer = "{ISSUER}"', 'issuer = "engine-b"', 1)
                 .replace(f'signing_key = "{run.keys.signing_key.name}"',
                          'signing_key = "engine-b.key"', 1)
                 + '\n[replica]\nid = "b"\npeers = ["a", "b"]\n')
    return a, b


def _envelopes(run: PreparedRun) -> list[MitigationCommand]:
    out = []
    for _p, _o, raw in consume_all(run.bootstrap, run.topic("commands")):
        env = decode_envelope(raw)
        out.append(msgspec.json.decode(env.payload, type=MitigationCommand))
    return out


def _execute(run: PreparedRun, state: Path) -> tuple[list[MitigationCommand], dict[str, int]]:
    got: list[MitigationCommand] = []
    with subscriber_for(run, state, on_command=got.append) as sub:
        sub.poll(idle_timeout_s=2.0)
        return got, sub.summary()


def _watch(run: PreparedRun) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "riskguard.cli", "replicas", "watch", "--brokers",
         run.bootstrap, "--topic", run.topic("audit"), "--peers", "a,b",
         "--from-beginning", "--idle-timeout", "3"],
        capture_output=True, text=True, timeout=120, check=True)
    return [msgspec.json.decode(line[6:]) for line in out.stdout.splitlines()
            if line.startswith("ALERT ")]


def test_two_replicas_execute_each_decision_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Both replicas make the same decisions (the same decision ids, each signed by its
    own key); the subscriber executes the scenario's mitigations once, drops every
    other copy as a duplicate, refuses nothing; both audit chains verify; the watcher
    sees the same config and no divergence."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    for p in [start_guard(run, config=a), start_guard(run, config=b)]:
        _finish(p)
    signed = _envelopes(run)
    by_replica = {r: Counter(c.decision_id for c in signed if c.replica == r and
                             c.action.value != "alert") for r in ("a", "b")}
    assert by_replica["a"] and by_replica["a"] == by_replica["b"]
    assert {c.issuer for c in signed} == {ISSUER, "engine-b"}
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    _assert_scenario(executed)
    _assert_never_twice(executed)
    assert len({c.decision_id for c in executed}) == len(executed)
    assert summary.get("rejected", 0) == 0
    assert summary["accepted"] + summary.get("duplicates", 0) == len(signed)
    from riskguard.cli import main

    assert main(["audit", "verify", "--topic", run.topic("audit"), "--brokers", run.bootstrap,
                 "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file)]) == 0
    assert [x["kind"] for x in _watch(run)] == []


def test_a_replica_killed_mid_run_leaves_no_gap_and_no_double(kafka_bootstrap: str,
                                                              tmp_path: Path) -> None:
    """SIGKILL replica b once it has signed its first commands: replica a alone carries
    the scenario to its end, and the subscriber executes every expected mitigation
    once."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    guard_a, guard_b = start_guard(run, config=a), start_guard(run, config=b)
    deadline = time.monotonic() + 120
    while not [c for c in _envelopes(run) if c.replica == "b"]:
        assert guard_b.poll() is None and time.monotonic() < deadline, "b signed nothing"
        time.sleep(0.2)
    guard_b.send_signal(signal.SIGKILL)
    guard_b.wait()
    _finish(guard_a)
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    _assert_scenario(executed)
    _assert_never_twice(executed)
    assert summary.get("rejected", 0) == 0


def test_a_replica_on_another_config_is_refused_at_start_up(kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    """Replica b with a different limit, started after a has audited its decisions,
    stops at once naming the replica and both config hashes."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    _finish(start_guard(run, config=a))
    b.write_text(b.read_text().replace("gross_notional = { limit = 2_500_000.0 }",
                                       "gross_notional = { limit = 2_400_000.0 }", 1))
    guard_b = start_guard(run, config=b)
    out, _ = guard_b.communicate(timeout=120)
    assert guard_b.returncode != 0
    assert b"the config its peers run (replica a: sha256" in out
