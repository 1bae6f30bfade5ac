"""The guard dataflow end to end on the real broker, over the bundled scenario."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from riskguard.connectors.kafka import list_partitions
from riskguard.connectors.settings import KafkaSettings
from riskguard.dataflows.demo import (
    PreparedRun,
    prepare_run,
    start_guard,
    subscriber_for,
    tier_config,
)
from riskguard.dataflows.demo_scenario import DURATION_S
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas import (
    Audience,
    MitigationCommand,
    Scope,
    ScopeKind,
    Trade,
    encode,
)

from tests.kafka_helpers import consume_all, free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NS = 1_000_000_000
# What the bundled scenario must produce, in order, per scope.
EXPECTED: dict[str, list[str]] = {
    "venue:okx": ["alert", "widen_quotes"],                    # flash crash on okx BTC-USDT
    "instrument:okx/BTC-USDT": ["alert", "reduce_only"],       # its price move
    "venue:binance": ["reroute_order_flow", "failover_feed"],  # binance primary feed lost
    "counterparty:deribit": ["reduce_only"],                   # fills breach deribit's limit
}


def _recovering(recovery: Path) -> tuple[str, ...]:
    """bytewax.run arguments: recover from ``recovery``, snapshot every second, keep
    10 s of backups."""
    return ("-r", str(recovery), "-s", "1", "-b", "10")


def _prepare(kafka_bootstrap: str, tmp_path: Path, name: str) -> PreparedRun:
    env = f"e{uuid.uuid4().hex[:8]}"
    return prepare_run(kafka_bootstrap, tmp_path / name, env=env)


def finish_guard(proc, timeout_s: float = 150.0) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except Exception:
        proc.kill()
        raise
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


def _executed(run: PreparedRun, state: Path) -> tuple[list[MitigationCommand], dict[str, int]]:
    got: list[MitigationCommand] = []
    with subscriber_for(run, state, on_command=got.append) as sub:
        sub.poll(idle_timeout_s=2.0)
        return got, sub.summary()


def _by_scope(cmds: list[MitigationCommand]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in cmds:
        out.setdefault(c.scope.label(), []).append(c.action.value)
    return out


@pytest.fixture(scope="module")
def baseline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted single-worker run, shared by the comparisons below."""
    tmp = tmp_path_factory.mktemp("baseline")
    run = _prepare(kafka_bootstrap, tmp, "run")
    finish_guard(start_guard(run))
    cmds, summary = _executed(run, tmp / "sub.sqlite")
    return run, cmds, summary


def test_bundled_scenario_produces_the_expected_commands_in_order(baseline) -> None:
    """Each incident yields its mitigations in ladder order on exactly its scope, and
    nothing else: no command for a scope the scenario never troubles."""
    _run, cmds, summary = baseline
    assert_scenario(cmds)
    assert_never_twice(cmds)
    assert summary.get("rejected", 0) == 0
    assert all(c.scope.kind is not ScopeKind.FIRM for c in cmds)


def test_the_audit_topic_verifies(baseline) -> None:
    """`riskguard audit verify` passes on the audit topic the run wrote."""
    from riskguard.cli import main

    run, _, _ = baseline
    rc = main(["audit", "verify", "--topic", run.topic("audit"), "--brokers", run.bootstrap,
               "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file)])
    assert rc == 0


Pairs = set[tuple[str, str]]


def _mitigations(cmds: list[MitigationCommand]) -> tuple[Pairs, Pairs]:
    """What an executor did: every (action, scope) it put in force, and what is still in
    force at the end (alerts are momentary; resumes lift what they list)."""
    done: set[tuple[str, str]] = set()
    held: set[tuple[str, str]] = set()
    for c in cmds:
        scope, action = c.scope.label(), c.action.value
        if action == "resume":
            lifted = c.params.get("actions") or [a for a, sc in held if sc == scope]
            held -= {(str(a), scope) for a in lifted}
        elif action != "alert":
            done.add((action, scope))
            held.add((action, scope))
    return done, held


SOFT = frozenset({"widen_quotes", "reduce_only", "reduce_limits"})


def assert_same_outcome(cmds: list[MitigationCommand], base: list[MitigationCommand], *,
                         extra_scopes_ok: bool = False) -> None:
    """Same outcome as the reference run:

    - every mechanism-driven mitigation (reroute, failover, cancel, halt) matches exactly;
    - the detector's protective rungs (widen quotes, reduce-only, reduce limits) may differ on
      a scope both runs mitigate: whether the detector also flags the stale feed in the
      seconds before a failover depends on bar timing;
    - each run meets the scenario's expected ladders, and nothing is executed twice while in
      force.

    ``extra_scopes_ok`` lets a run that crashed mid-way add protective rungs on other scopes.
    """
    done, _ = _mitigations(cmds)
    base_done, _ = _mitigations(base)
    hard = {m for m in done if m[0] not in SOFT}
    base_hard = {m for m in base_done if m[0] not in SOFT}
    assert hard == base_hard, f"{sorted(hard ^ base_hard)}; commands: {_pairs(cmds)}"
    scopes, base_scopes = {sc for _, sc in done}, {sc for _, sc in base_done}
    if extra_scopes_ok:
        assert base_scopes <= scopes, f"{sorted(base_scopes - scopes)} never mitigated"
    else:
        assert scopes == base_scopes, f"{sorted(scopes ^ base_scopes)}; {_pairs(cmds)}"
    assert_scenario(cmds, extra_scopes_ok=extra_scopes_ok)
    assert_never_twice(cmds)


def _pairs(cmds: list[MitigationCommand]) -> list[tuple[str, str, str]]:
    return [(c.action.value, c.scope.label(), c.reason[:120]) for c in cmds
            if c.action.value != "alert"]


def assert_scenario(cmds: list[MitigationCommand], *, extra_scopes_ok: bool = False) -> None:
    # Alerts only inform; a scope the scenario never troubles may get one (e.g. drift).
    by_scope = _by_scope([c for c in cmds if c.action.value != "alert"])
    extra = set(by_scope) - set(EXPECTED)
    if extra_scopes_ok:
        extra = {sc for sc in extra if not set(by_scope[sc]) - {"resume"} <= SOFT}
    assert not extra, f"unexpected scopes: {extra}"
    for scope, actions in EXPECTED.items():
        seen = [a for a in by_scope.get(scope, []) if a not in ("resume", "alert")]
        want = [a for a in actions if a != "alert"]
        assert [a for a in seen if a in want][: len(want)] == want, f"{scope}: {seen}"


def assert_never_twice(cmds: list[MitigationCommand]) -> None:
    held: dict[tuple[str, str], bytes] = {}
    for c in cmds:
        scope, action = c.scope.label(), c.action.value
        if action == "resume":
            for a in c.params.get("actions") or []:
                held.pop((str(a), scope), None)
        elif action != "alert":
            params = msgspec.json.encode(c.params, order="sorted")
            assert held.get((action, scope)) != params, f"{action} on {scope} executed twice"
            held[(action, scope)] = params


def _anomaly_ids(run: PreparedRun) -> list[str]:
    return [d["id"] for _p, _o, v in consume_all(run.bootstrap, run.topic("signals"))
            if (d := msgspec.json.decode(v)).get("type") == "anomaly"]


MARKET_OWNERS = {"BTC": 0, "ETH": 1}


def _market_config(run: PreparedRun, index: int) -> Path:
    """A market process's config; it names a signing key the process does not have
    (as ops/k8s's market pods mount none): a market process signs nothing."""
    path = tier_config(run.config, "market", index=index, market_processes=2,
                       owners=MARKET_OWNERS)
    text = re.sub(r'signing_key = "[^"]*"', 'signing_key = "not-mounted.key"', path.read_text())
    path.write_text(text)
    return path


def _start_markets(run: PreparedRun, args: tuple[str, ...] = (),
                   more: tuple[str, ...] = ()) -> list:
    """Two market processes (BTC and ETH, ``tier.role = "market"``), each a 1-worker
    ``python -m bytewax.run`` of the guard (``args`` for the first, ``more`` for the
    second), once both have put progress on the detections topic; then the firm process
    fed by them."""
    procs = [start_guard(run, *a, config=_market_config(run, i))
             for i, a in enumerate((args, more))]
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while len(seen) < 2:
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, \
            "no progress from both market processes"
        got = consume_all(run.bootstrap, run.topic("detections"), idle_s=0.2, timeout_s=1.0)
        seen = {d["source"] for _p, _o, v in got
                if (d := msgspec.json.decode(v)).get("type") == "detect_progress"}
    return procs


def _start_firm_of_markets(run: PreparedRun, *args: str):
    return start_guard(run, *args, config=tier_config(run.config, "firm",
                                                        market_processes=2))


def test_two_market_processes_and_a_firm_tier_give_one_workers_commands(
    baseline, kafka_bootstrap, tmp_path
) -> None:
    """Two market processes splitting the scenario by underlying (BTC, ETH), each its own
    1-worker dataflow, and a firm process summing their valuations: the same mitigations as
    one whole guard, every anomaly audited once, nothing late, and each bad record
    dead-lettered exactly once: a malformed market record, fill and heartbeat, and a
    market record whose Kafka key names another process's underlying."""
    _, base, _ = baseline
    run = _prepare(kafka_bootstrap, tmp_path, "market")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(run.topic("market"), b'{"type":"trade","id":', key=b"okx/BTC-USDT")
    producer.produce(run.topic("fills"), b'{"type":"fill","id":', key=b"okx/ETH-PERP")
    producer.produce(run.topic("venue_status"), b'{"type":"venue_status"', key=b"okx")
    # at the scenario's end: read last in its partition, it must not be late
    eth = Trade(id="misplaced-1", venue="okx", instrument="ETH-PERP",
                ts=run.start_ns + DURATION_S * NS, price=3_200.0, qty=1.0, side="buy")
    producer.produce(run.topic("market"), encode(eth), key=b"okx/BTC-PERP")
    assert producer.flush(10) == 0
    procs = _start_markets(run)
    procs.append(_start_firm_of_markets(run))
    for p in procs:
        finish_guard(p)
    cmds, _ = _executed(run, tmp_path / "sub.sqlite")
    assert_same_outcome(cmds, base)
    ids = _anomaly_ids(run)
    assert ids and len(ids) == len(set(ids))
    dead = [msgspec.json.decode(v) for _p, _o, v in consume_all(kafka_bootstrap,
                                                                 run.topic("dead_letters"))]
    assert not [d for d in dead if d.get("reason") in ("late", "not_owned")], [
        (d["topic"], d["reason"]) for d in dead]
    bad = sorted((d["topic"], d["reason"]) for d in dead)
    assert bad == sorted([(run.topic("fills"), "malformed"), (run.topic("market"), "malformed"),
                          (run.topic("market"), "misplaced"),
                          (run.topic("venue_status"), "malformed")]), bad


def test_a_market_process_killed_halfway_and_resumed_gives_one_workers_commands(
    baseline, kafka_bootstrap, tmp_path, recovery_dir
) -> None:
    """SIGKILL the BTC market process once its progress passes 150 s of the scenario's
    event time (before the fills that breach deribit's limit at 235 s), resume it from
    recovery while the ETH process and the firm process run on: the firm takes each
    part once (by its shard's sequence), each signal once (by id), and the subscriber
    executes one whole guard's commands, none twice. (The resumed process names its
    ticks as before; if time stood still for it, it would send too few parts, below
    the sequences already taken, and the breach would be lost.)"""
    _, base, _ = baseline
    run = _prepare(kafka_bootstrap, tmp_path, "market-kill")
    args = _recovering(recovery_dir(1))
    # the BTC process replays the scenario in seconds: follow its progress from before
    # it starts, to kill it early
    progress = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "tests",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    progress.assign([TopicPartition(run.topic("detections"), p, 0) for p in
                     list_partitions(KafkaSettings(bootstrap=kafka_bootstrap),
                                     run.topic("detections"))])
    progress.consume(10, 0.5)
    btc, eth = [start_guard(run, *a, config=_market_config(run, i))
                for i, a in enumerate((args, _recovering(recovery_dir(1))))]
    firm = _start_firm_of_markets(run, *_recovering(recovery_dir(1)))
    deadline, reached = time.monotonic() + 120, -1
    try:
        while time.monotonic() < deadline and btc.poll() is None \
                and reached < run.start_ns + 150 * 10**9:
            for m in progress.consume(500, 0.02):
                if m.error() is None and b'"detect_progress"' in m.value():
                    d = msgspec.json.decode(m.value())
                    if d.get("source") == "market/0":
                        reached = max(reached, d["ts"])
    finally:
        progress.close()
    assert btc.poll() is None, "the BTC market process ended before it could be killed"
    os.kill(btc.pid, signal.SIGKILL)
    btc.wait()
    finish_guard(start_guard(run, *args, config=_market_config(run, 0)))
    finish_guard(eth)
    finish_guard(firm)
    cmds, _ = _executed(run, tmp_path / "sub.sqlite")
    assert len({c.command_id for c in cmds}) == len(cmds)
    assert_same_outcome(cmds, base)
    ids = _anomaly_ids(run)
    assert len(ids) == len(set(ids))


def test_sigkill_halfway_then_resume_executes_every_command_exactly_once(
    baseline, kafka_bootstrap, tmp_path, recovery_dir
) -> None:
    """Kill the dataflow with SIGKILL once commands start flowing, resume from recovery, and
    the subscriber ends with exactly the uninterrupted run's commands: none lost, none twice."""
    _, base, _ = baseline
    run = _prepare(kafka_bootstrap, tmp_path, "kill")
    args = _recovering(recovery_dir(1))
    executed: list[MitigationCommand] = []
    state = tmp_path / "sub.sqlite"
    first = start_guard(run, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if consume_all(kafka_bootstrap, run.topic("commands"), idle_s=0.2, timeout_s=1.0):
            break
    assert first.poll() is None, "the run ended before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with subscriber_for(run, state, on_command=executed.append) as sub:
        sub.poll(idle_timeout_s=1.0)
    finish_guard(start_guard(run, *args))
    with subscriber_for(run, state, on_command=executed.append) as sub:
        sub.poll(idle_timeout_s=2.0)
    ids = [c.command_id for c in executed]
    assert len(ids) == len(set(ids)), "a command was executed twice"
    assert_same_outcome(executed, base)


def test_a_forged_command_on_the_topic_is_rejected_with_its_reason(baseline, tmp_path) -> None:
    """A command signed by a key the trust file does not list is never executed."""
    run, _, _ = baseline
    forger = Signer.from_private_bytes(b"\x09" * 32, issuer="riskguard-guard")
    now = time.time_ns()
    cmd = MitigationCommand(
        command_id=str(uuid.uuid4()), issuer="riskguard-guard", seq=999_999, issued_at=now,
        expires_at=now + 60 * NS, audience=Audience(env=run.env, topic=run.topic("commands")),
        action="halt_trading", scope=Scope(kind=ScopeKind.FIRM, value="*"), reason="forged",
    )
    p = Producer({"bootstrap.servers": run.bootstrap})
    p.produce(run.topic("commands"), encode_envelope(sign_envelope(PAYLOAD_COMMAND, encode(cmd),
                                                                   [forger])))
    assert p.flush(10) == 0
    executed: list[MitigationCommand] = []
    rejections = []
    with subscriber_for(run, tmp_path / "fresh.sqlite", on_command=executed.append,
                        on_reject=rejections.append) as sub:
        sub.poll(idle_timeout_s=2.0)
    # the baseline's own commands may have expired by now on a slow machine: not this
    assert [r.reason for r in rejections
            if r.seq in (-1, 999_999) and r.reason != "expired"] == ["unknown_key"]
    assert all(c.command_id != cmd.command_id for c in executed)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian package 'chromium' is not installed (.ci/run installs it)")
def test_status_page_against_a_running_guard_shows_its_metrics(
    kafka_bootstrap, tmp_path, monkeypatch
) -> None:
    """`riskguard status --serve` in headless Chromium, against a live guard run on the demo
    scenario: the page shows the guard's own numbers (events, commands, mitigations)."""
    from riskguard.connectors.status import scrape, summarize

    from tests.test_status import status_page_dom

    port = free_ports(1)[0]
    monkeypatch.setenv("RISKGUARD_METRICS_PORT", str(port))
    run = _prepare(kafka_bootstrap, tmp_path, "status")
    # Keep the guard up after the scenario is drained, so the page can be read.
    run.config.write_text(run.config.read_text().replace("idle_eof_s = 4.0", "idle_eof_s = 60.0"))
    guard = start_guard(run)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 120
        last = None
        while time.monotonic() < deadline:
            time.sleep(2)
            try:
                s = summarize([scrape(url)])
            except Exception:
                continue
            now = (s["health"]["events_in"], s["commands"]["total"])
            if now == last and now[0] >= run.records:
                break
            last = now
        want = summarize([scrape(url)])
        dom = status_page_dom(url)
    finally:
        guard.kill()
        guard.wait()
    t = dom.text
    assert t["health"] == "UP"
    assert t["events-in"] == str(int(want["health"]["events_in"]))
    assert int(t["events-in"]) >= run.records
    # the counts of commands issued (active mitigations need a command source)
    mit = {r["data-action"]: float(r["data-count"]) for r in dom.rows["issued"]}
    assert mit and mit == {a: float(n) for a, n in want["commands"]["by_action"].items()}
    assert "reduce_only" in mit and "failover_feed" in mit
