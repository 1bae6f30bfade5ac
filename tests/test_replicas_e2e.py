"""Replica drills on the dev broker: two guards in separate failure domains over the same
input, each signing with its own key; the subscriber executes each decision once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.topics import TopicsConfig, create_topics, topic_name, topic_specs
from riskguard.dataflows.demo import (
    ISSUER,
    PreparedRun,
    prepare_run,
    replica_configs,
    start_guard,
    stream_of,
    subscriber_for,
)
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.operators.signing.crypto import decode_envelope
from riskguard.schemas import Fill, MitigationCommand, encode

from tests.kafka_helpers import consume_all
from tests.test_guard_e2e import SOFT, assert_never_twice, assert_scenario, finish_guard

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _replicas(run: PreparedRun) -> tuple[Path, Path]:
    """Configs of replicas a and b: a signs as the run's engine key, b with its own key
    (its own name in the trust file, the engine role); both name every replica."""
    a, b = replica_configs(run.config, run.keys)
    return a, b


def _envelopes(run: PreparedRun) -> list[MitigationCommand]:
    out = []
    for _p, _o, raw in consume_all(run.bootstrap, run.topic("commands")):
        env = decode_envelope(raw)
        out.append(msgspec.json.decode(env.payload, type=MitigationCommand))
    return out


def _execute(run: PreparedRun, state: Path) -> tuple[list[MitigationCommand], dict[str, int]]:
    got: list[MitigationCommand] = []
    with subscriber_for(run, state, on_command=got.append,
                        rejections_topic=run.topic("rejections")) as sub:
        sub.poll(idle_timeout_s=2.0)
        return got, sub.summary()


def _watch(run: PreparedRun, *args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "riskguard.cli", "replicas", "watch", "--brokers",
         run.bootstrap, "--topic", run.topic("audit"), "--peers", "a,b",
         "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file),
         "--from-beginning", "--idle-timeout", "3", *args],
        capture_output=True, text=True, timeout=120, check=True)
    return [msgspec.json.decode(line[6:]) for line in out.stdout.splitlines()
            if line.startswith("ALERT ")]


def test_two_replicas_execute_each_decision_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Both replicas make the same decisions (the same decision ids, each signed by its
    own key); the subscriber executes the scenario's mitigations once and drops every
    other copy as a duplicate; both audit chains verify; the watcher sees one config
    and no divergence but, at most, on a protective rung of the detector's."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    for p in [start_guard(run, config=a), start_guard(run, config=b)]:
        finish_guard(p)
    signed = _envelopes(run)
    # every mechanism-driven decision (reroute, failover, cancel, halt, resume) has one id
    # on both; the detector's protective rungs may differ as between any two runs
    # (tests/test_guard_e2e.py, SOFT), and a differing one is then no duplicate
    by_replica = {r: Counter(c.decision_id for c in signed if c.replica == r and
                             c.action.value not in {"alert", *SOFT}) for r in ("a", "b")}
    assert by_replica["a"] and by_replica["a"] == by_replica["b"]
    assert {c.issuer for c in signed} == {ISSUER, "engine-b"}
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    assert_scenario(executed)
    assert_never_twice(executed)
    assert len({c.decision_id for c in executed}) == len(executed)
    assert summary.get("rejected", 0) == summary.get("rejected.already_in_force", 0)
    assert summary["accepted"] + summary.get("duplicates", 0) + summary.get(
        "rejected", 0) == len(signed)
    logged = [msgspec.json.decode(v) for _p, _o, v in
              consume_all(run.bootstrap, run.topic("rejections"))]
    assert [x.get("outcome") for x in logged].count("duplicate") == summary["duplicates"] > 0
    from riskguard.cli import main

    assert main(["audit", "verify", "--topic", run.topic("audit"), "--brokers", run.bootstrap,
                 "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file)]) == 0
    alerts = _watch(run)
    assert {x["kind"] for x in alerts} <= {"replica_divergence"}, alerts
    assert {x["details"]["action"] for x in alerts} <= SOFT, alerts


@pytest.mark.parametrize("signed", [1, 8], ids=["after-its-first-command", "after-eight"])
def test_a_replica_killed_mid_run_leaves_no_gap_and_no_double(kafka_bootstrap: str,
                                                              tmp_path: Path,
                                                              signed: int) -> None:
    """SIGKILL replica b once it has signed ``signed`` commands: replica a alone carries
    the scenario to its end, and the subscriber executes every expected mitigation
    once."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    guard_a, guard_b = start_guard(run, config=a), start_guard(run, config=b)
    deadline = time.monotonic() + 120
    while len([c for c in _envelopes(run) if c.replica == "b"]) < signed:
        assert guard_b.poll() is None and time.monotonic() < deadline, "b signed too little"
        time.sleep(0.2)
    guard_b.send_signal(signal.SIGKILL)
    guard_b.wait()
    finish_guard(guard_a)
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    assert_scenario(executed)
    assert_never_twice(executed)
    assert summary.get("rejected", 0) == summary.get("rejected.already_in_force", 0)


def test_a_replica_on_another_config_is_refused_at_start_up(kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    """Replica b with a different limit, started after a has audited its decisions,
    stops at once naming the replica and both config hashes."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    finish_guard(start_guard(run, config=a))
    b.write_text(b.read_text().replace("gross_notional = { limit = 2_500_000.0 }",
                                       "gross_notional = { limit = 2_400_000.0 }", 1))
    guard_b = start_guard(run, config=b)
    out, _ = guard_b.communicate(timeout=120)
    assert guard_b.returncode != 0
    assert b"the config its peers run (replica a: sha256" in out


def test_the_replica_that_was_ahead_killed_and_resumed_executes_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path, recovery_dir
) -> None:
    """Replica a starts first and is SIGKILLed once its commands flow; b carries on to
    the end; a resumes from its own recovery store and finishes: every expected
    mitigation executes once, and a's re-derived copies are duplicates."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    recovering = ("-r", str(recovery_dir(1)), "-s", "1", "-b", "10")
    guard_a = start_guard(run, *recovering, config=a)
    deadline = time.monotonic() + 120
    while not [c for c in _envelopes(run) if c.replica == "a"]:
        assert guard_a.poll() is None and time.monotonic() < deadline, "a signed nothing"
        time.sleep(0.2)
    guard_b = start_guard(run, config=b)
    guard_a.send_signal(signal.SIGKILL)
    guard_a.wait()
    finish_guard(guard_b)
    finish_guard(start_guard(run, *recovering, config=a))
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    assert_scenario(executed)
    assert_never_twice(executed)
    assert len({c.decision_id for c in executed}) == len(executed)
    assert summary.get("duplicates", 0) > 0


def _publish_partial(bootstrap: str, run: PreparedRun, drop: Callable[[Any], bool]) -> int:
    """The run's scenario on another cluster's input topics, without what ``drop`` picks
    (a mirrored copy that lost records); the count dropped."""
    create_topics({"bootstrap.servers": bootstrap}, topic_specs(
        run.env, TopicsConfig(default_partitions=2)))
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    dropped = 0
    for rec in build_scenario(run.start_ns).events:
        if drop(rec):
            dropped += 1
            continue
        key = f"{getattr(rec, 'venue', '')}/{getattr(rec, 'instrument', '')}".encode()
        p.produce(topic_name(run.env, stream_of(rec)), encode(rec), key)
        p.poll(0)
    assert p.flush(60) == 0
    return dropped


def _mirror(source: str, target: str, topic: str) -> int:
    """Copy ``topic`` from one cluster to the other, partition for partition."""
    p = Producer({"bootstrap.servers": target})
    rows = consume_all(source, topic)
    for part, _off, value in rows:
        p.produce(topic, value, partition=part)
    assert p.flush(30) == 0
    return len(rows)


def test_a_replica_fed_a_partial_copy_diverges_and_each_decision_executes_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Replica b reads a mirrored cluster whose copy lost deribit's fills; its commands
    and audit records are mirrored back. The watcher raises replica_divergence for the
    deribit breach ladder b missed (and the reroute that breach changed), and the
    subscriber executes each decision once, a's deribit mitigations included."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"e{uuid.uuid4().hex[:8]}")
    a, b = _replicas(run)
    mirror = DevBroker(tmp_path / "mirror")
    other = mirror.start().bootstrap
    try:
        assert _publish_partial(other, run, lambda r: isinstance(r, Fill) and
                                r.counterparty == "deribit") > 0
        b.write_text(b.read_text().replace(f'bootstrap = "{kafka_bootstrap}"',
                                           f'bootstrap = "{other}"', 1))
        for p in [start_guard(run, config=a), start_guard(run, config=b)]:
            finish_guard(p)
        for stream in ("commands", "audit"):
            assert _mirror(other, kafka_bootstrap, run.topic(stream)) > 0
    finally:
        mirror.stop()
    alerts = _watch(run, "--tolerance", "2", "--idle-timeout", "5")
    parted = {(d["made_by"], d["action"], d["scope"]) for d in
              (x["details"] for x in alerts if x["kind"] == "replica_divergence")}
    # b never saw deribit breach: it missed that ladder, and the reroute away from
    # binance it retargeted (deribit no longer below limits) ends differently on each
    assert {("a", "reduce_only", "counterparty:deribit"),
            ("a", "cancel_all", "counterparty:deribit")} <= parted
    assert {scope for _by, _action, scope in parted} <= {"counterparty:deribit",
                                                          "venue:binance"}
    executed, summary = _execute(run, tmp_path / "sub.sqlite")
    assert_scenario(executed)
    assert_never_twice(executed)
    assert len({c.decision_id for c in executed}) == len(executed)
    assert summary.get("rejected", 0) == summary.get("rejected.already_in_force", 0)
