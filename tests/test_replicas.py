"""Redundant guard replicas: one decision id per decision, whichever replica signed it;
the subscriber executes each decision once; replica config, its hash and its stores."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from audit_fixtures import audited_command
from contract import CHECKS, Case
from playbook_cases import FLASH, VENUES, anomaly, feed
from riskguard.connectors.subscriber import CommandSubscriber, Duplicate, Rejection
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.guard.recovery_marks import claim_recovery_store
from riskguard.operators.audit import ReplicaWatchConfig, ReplicaWatchLogic, ReplicaWatchState
from riskguard.operators.core.clock import ManualClock, Tick
from riskguard.operators.mitigation.playbook import PlaybookConfig, PlaybookLogic
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope, sign_envelope
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import Action, AuditCheckpoint, MitigationCommand, decision_digest
from signing_fixtures import AUD, T0, VENUE_X, S, command, key_entries, signer

from riskguard.errors import ConfigError

REPLICA_A, REPLICA_B = signer("engine-a"), signer("engine-b")
WATCH = ReplicaWatchConfig(peers=("a", "b"), tolerance_s=10, silent_s=60)


def replicas_trust() -> TrustStore:
    """The fixtures' keys plus two replicas' keys, each its own name with the engine role."""
    extra = [{"name": s.issuer, "public_key": s.public_key.hex(), "role": "risk-engine",
              "actions": ["*"], "scopes": ["*"]} for s in (REPLICA_A, REPLICA_B)]
    return TrustStore(parse_trust(trust_doc_to_toml(
        key_entries() + extra, serial=1,
        two_person={"actions": ["resume"], "scopes": ["firm:*"]})))


def _signed(cmd: MitigationCommand, by: Any) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [by]))


D1 = decision_digest("flash|1|x", Action.REDUCE_ONLY, VENUE_X, {}, ["e1"])
D2 = decision_digest("flash|2|x", Action.HALT_TRADING, VENUE_X, {}, ["e1"])
_ACTION = {D1: Action.REDUCE_ONLY, D2: Action.HALT_TRADING}


def _copy(issuer: str, seq: int, decision: str, n: int = 1) -> MitigationCommand:
    """A replica's copy of a decision: its own command id and seq, the decision's id."""
    return command(n, issuer=issuer, seq=seq, action=_ACTION[decision], scope=VENUE_X,
                   decision_id=decision, replica=issuer[-1])


def _subscriber(path: Path, seen: dict[str, list[Any]]) -> CommandSubscriber:
    return CommandSubscriber(
        trust=replicas_trust(), audience=AUD, state_path=path / "sub.sqlite",
        on_command=seen.setdefault("executed", []).append,
        on_reject=seen.setdefault("rejected", []).append,
        on_duplicate=seen.setdefault("duplicates", []).append,
        on_alert=seen.setdefault("gaps", []).append, clock=ManualClock(T0),
        rejection_log=path / "log.jsonl")


# -- decision ids -----------------------------------------------------------------------


def _playbook(issuer: str, replica: str, start_ns: int) -> PlaybookLogic:
    cfg = PlaybookConfig(issuer=issuer, replica=replica, venues=VENUES, rules=(FLASH,))
    return PlaybookLogic(cfg, ManualClock(start_ns))


def test_two_replicas_fed_the_same_signals_make_the_same_decision_ids() -> None:
    """Each replica names itself and issues at its own wall time; each decision (alert,
    reduce_only, halt, resume) has one id on both, and different decisions differ."""
    events = [anomaly(0), *[Tick(ts=s * S) for s in range(1, 41)],
              anomaly(41, phase="close"), *[Tick(ts=s * S) for s in range(42, 80)]]
    a = feed(_playbook("engine-a", "a", 1_000), events)
    b = feed(_playbook("engine-b", "b", 9_999_000), events)
    assert [c.action.value for c in a] == ["alert", "reduce_only", "halt_trading", "resume"]
    assert [c.decision_id for c in a] == [c.decision_id for c in b]
    assert len({c.decision_id for c in a}) == 4
    assert {c.replica for c in a} == {"a"} and {c.replica for c in b} == {"b"}
    assert [c.issued_at for c in a] != [c.issued_at for c in b]


def test_a_single_guard_names_no_replica() -> None:
    (cmd,) = feed(_playbook("guard", "", 0), [anomaly(0)])
    assert cmd.replica is None and cmd.decision_id is not None


def test_a_replica_name_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"playbook\.replica"):
        PlaybookConfig(replica="no spaces")


# -- the subscriber executes each decision once -----------------------------------------


def test_the_second_replicas_copy_is_a_duplicate_not_a_rejection(tmp_path: Path) -> None:
    seen: dict[str, list[Any]] = {}
    sub = _subscriber(tmp_path, seen)
    first = sub.handle(_signed(_copy("engine-a", 1, D1), REPLICA_A), partition=0, offset=0)
    again = sub.handle(_signed(_copy("engine-b", 1, D1), REPLICA_B), partition=0, offset=1)
    assert isinstance(first, MitigationCommand) and isinstance(again, Duplicate)
    assert (again.reason, again.first_issuer, again.first_command_id) == (
        "duplicate_decision", "engine-a", first.command_id)
    assert sub.summary() == {"accepted": 1, "duplicates": 1}
    assert [c.issuer for c in seen["executed"]] == ["engine-a"]
    assert seen.get("rejected") == [] and seen.get("gaps") == []
    logged = [msgspec.json.decode(x) for x in (tmp_path / "log.jsonl").read_bytes().split(b"\n")
              if x]
    assert [(r["outcome"], r["reason"]) for r in logged] == [("duplicate", "duplicate_decision")]


def test_each_signer_keeps_its_own_seq_and_the_next_decision_executes(tmp_path: Path) -> None:
    """B's second command (seq 2, a new decision) is no gap and executes; B's seq 1 again
    is a replay of B's."""
    seen: dict[str, list[Any]] = {}
    sub = _subscriber(tmp_path, seen)
    for i, (by, issuer, seq, d) in enumerate([(REPLICA_A, "engine-a", 1, D1),
                                              (REPLICA_B, "engine-b", 1, D1),
                                              (REPLICA_B, "engine-b", 2, D2),
                                              (REPLICA_A, "engine-a", 2, D2)]):
        sub.handle(_signed(_copy(issuer, seq, d, n=seq), by), partition=0, offset=i)
    assert [(c.issuer, c.seq) for c in seen["executed"]] == [("engine-a", 1), ("engine-b", 2)]
    assert [d.issuer for d in seen["duplicates"]] == ["engine-b", "engine-a"]
    assert seen["gaps"] == []
    replay = sub.handle(_signed(_copy("engine-b", 1, D1), REPLICA_B), partition=0, offset=9)
    assert isinstance(replay, Rejection) and replay.reason == "replayed_seq"


def test_executed_decisions_survive_a_restart_of_the_subscriber(tmp_path: Path) -> None:
    seen: dict[str, list[Any]] = {}
    sub = _subscriber(tmp_path, seen)
    sub.handle(_signed(_copy("engine-a", 1, D1), REPLICA_A), partition=0, offset=0)
    sub.close()
    again = _subscriber(tmp_path, seen).handle(
        _signed(_copy("engine-b", 1, D1), REPLICA_B), partition=0, offset=1)
    assert isinstance(again, Duplicate)


def test_a_decision_is_forgotten_once_past_its_window_and_newer_ones_fill_the_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within its window (and until it expires) a decision is kept whatever else is;
    past it, only the newest DECISIONS_KEPT are: the oldest goes first."""
    from riskguard.connectors import subscriber_state

    monkeypatch.setattr(subscriber_state, "DECISIONS_KEPT", 1)
    state_path = tmp_path / "sub.sqlite"
    sub = CommandSubscriber(trust=replicas_trust(), audience=AUD, state_path=state_path,
                            on_command=lambda _c: None, clock=ManualClock(T0),
                            decision_window_s=120)
    sub.handle(_signed(_copy("engine-a", 1, D1), REPLICA_A), partition=0, offset=0)
    sub.handle(_signed(_copy("engine-a", 2, D2, n=2), REPLICA_A), partition=0, offset=1)
    sub.state.prune(T0 + 119 * S)
    assert [c.issuer for c in sub.state.copies(D1)] == ["engine-a"]
    sub.state.prune(T0 + 121 * S)
    assert sub.state.copies(D1) == []
    assert [c.issuer for c in sub.state.copies(D2)] == ["engine-a"]


def test_a_key_that_signs_a_guard_commands_id_first_suppresses_nothing(
        tmp_path: Path) -> None:
    """Command ids are each signer's own: an operator's authentic command carrying the id
    a guard will derive (ids are predictable) uses up nothing of the guard's, whose halt
    still executes."""
    from signing_fixtures import OP1

    seen: dict[str, list[Any]] = {}
    sub = _subscriber(tmp_path, seen)
    halt = _copy("engine-a", 1, D2)
    claim = msgspec.structs.replace(
        command(9, issuer="op-alice", action=Action.RESUME, scope=VENUE_X),
        command_id=halt.command_id)
    sub.handle(_signed(claim, OP1))
    sub.handle(_signed(halt, REPLICA_A))
    assert [(c.issuer, c.action) for c in seen["executed"]] == [
        ("op-alice", Action.RESUME), ("engine-a", Action.HALT_TRADING)]
    assert not seen.get("rejected")


def test_a_replica_cannot_sign_for_another(tmp_path: Path) -> None:
    """B's key on a command naming A as issuer is refused, never a duplicate or executed."""
    seen: dict[str, list[Any]] = {}
    sub = _subscriber(tmp_path, seen)
    out = sub.handle(_signed(_copy("engine-a", 1, D1), REPLICA_B), partition=0, offset=0)
    assert isinstance(out, Rejection) and "issuer" in out.detail
    assert not seen.get("executed") and not seen.get("duplicates")


# -- replica config ---------------------------------------------------------------------


def _config(tmp_path: Path, name: str, extra: str) -> Path:
    dataflows = Path(__file__).resolve().parents[1] / "dataflows"
    base = (dataflows / "demo.toml").read_text()
    (tmp_path / "playbook.toml").write_text((dataflows / "playbook.toml").read_text())
    keys = ('[keys]\nsigning_key = "signing.key"\ntrust_file = "trust.toml"\n'
            'roots_file = "roots.toml"\n')
    path = tmp_path / name
    path.write_text(base + "\n" + keys + extra)
    return path


def test_replicas_share_the_config_hash_and_name_their_chains(tmp_path: Path) -> None:
    """Keys, the replica section and the Kafka address are not part of what decides."""
    a, ha = load_guard_config(_config(tmp_path, "a.toml",
                                      'issuer = "engine-a"\n[replica]\nid = "a"\n'
                                      'peers = ["a", "b"]\n'))
    b, hb = load_guard_config(_config(tmp_path, "b.toml",
                                      'issuer = "engine-b"\n[replica]\nid = "b"\n'
                                      'peers = ["a", "b"]\n[kafka]\nbootstrap = "zone-b:9092"\n'))
    assert ha == hb
    assert (a.playbook.replica, a.audit.origin, b.audit.origin) == (
        "a", "riskguard@a", "riskguard@b")
    _other, hc = load_guard_config(_config(tmp_path, "c.toml",
                                           '[replica]\nid = "a"\n[limits.counterparties.kraken.'
                                           'limits]\ngross_notional = { limit = 7.0 }\n'))
    assert hc != ha


def test_one_file_serves_every_replica_with_its_id_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$RISKGUARD_REPLICA_ID`` sets ``[replica] id``, and ``issuers`` gives each replica
    its own issuer: one ConfigMap entry for every pod."""
    path = _config(tmp_path, "all.toml", '[replica]\npeers = ["a", "b"]\n'
                   'issuers = { a = "engine-a", b = "engine-b" }\n')
    seen = {}
    for rid in ("a", "b"):
        monkeypatch.setenv("RISKGUARD_REPLICA_ID", rid)
        cfg, digest = load_guard_config(path)
        seen[rid] = (cfg.replica.id, cfg.keys.issuer, cfg.playbook.issuer, cfg.audit.origin,
                     digest)
    assert seen["a"][:4] == ("a", "engine-a", "engine-a", "riskguard@a")
    assert seen["b"][:4] == ("b", "engine-b", "engine-b", "riskguard@b")
    assert seen["a"][4] == seen["b"][4]
    monkeypatch.delenv("RISKGUARD_REPLICA_ID")
    with pytest.raises(ConfigError, match="RISKGUARD_REPLICA_ID"):
        load_guard_config(path)


@pytest.mark.parametrize(("section", "where"), [
    ('[replica]\nid = "a b"\n', "replica.id"),
    ('[replica]\nid = "a"\npeers = ["b", "c"]\n', "replica.peers"),
    ('[replica]\nid = "a"\npeers = ["a", "a"]\n', "replica.peers"),
    ('[replica]\nname = "a"\n', "name"),
    ('[replica]\nid = "a"\npeers = ["a", "b"]\nissuers = { a = "x" }\n', "replica.issuers"),
    ('[replica]\nid = "a"\npeers = ["a", "b"]\nissuers = { a = "x", b = "x" }\n',
     "replica.issuers"),
])
def test_a_bad_replica_section_stops_start_up_naming_the_key(tmp_path: Path, section: str,
                                                             where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_guard_config(_config(tmp_path, "bad.toml", section))


def test_two_replicas_never_share_a_recovery_store(tmp_path: Path) -> None:
    claim_recovery_store(tmp_path, "a")
    claim_recovery_store(tmp_path, "a")  # the same replica restarting
    with pytest.raises(ConfigError, match="replica 'a'"):
        claim_recovery_store(tmp_path, "b")


def test_a_recovery_store_mark_cut_short_leaves_no_mark(tmp_path: Path) -> None:
    """A mark whose write fails (no room for a byte) is not left behind empty: an empty
    mark reads as a single guard's store, and replica 'a' would be refused its own."""
    script = ("import sys; from pathlib import Path; "
              "from riskguard.dataflows.guard.recovery_marks import claim_recovery_store; "
              "claim_recovery_store(Path(sys.argv[1]), 'a')")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc
    assert list(tmp_path.iterdir()) == []
    claim_recovery_store(tmp_path, "a")


# -- the replica watch -----------------------------------------------------------------


class _Timed:
    """The watch with its clock set from each event ``(processing time s, item)``."""

    def __init__(self, state: ReplicaWatchState | None = None,
                 config: ReplicaWatchConfig = WATCH) -> None:
        self.now = 0
        self.logic = ReplicaWatchLogic(config, lambda: self.now, state)

    def on_event(self, event: tuple[float, Any]) -> list[Any]:
        self.now = int(event[0] * S)
        return self.logic.on_event(event[1])

    def snapshot(self) -> ReplicaWatchState:
        return self.logic.snapshot()


def _checkpoint(origin: str, size: int) -> AuditCheckpoint:
    return AuditCheckpoint(origin=origin, size=size, root="0" * 64, ts=size)


H2 = "2" * 64
WATCH_EVENTS: list[tuple[float, Any]] = [
    (0, audited_command("riskguard@a/p0", 0, "d1")),
    (1, audited_command("riskguard@b/p0", 0, "d1")),
    (2, audited_command("riskguard@a/p0", 1, "d2")), (20, None),  # b never makes d2
    (21, audited_command("riskguard@b/p0", 1, "d2")),  # late: no new alert
    (22, _checkpoint("riskguard@a/p0", 2)), (50, _checkpoint("riskguard@a/p0", 3)),
    (90, _checkpoint("riskguard@a/p0", 4)),  # b silent since 21
    (95, audited_command("riskguard@b/p0", 2, "d3", config_hash=H2)),  # back, other config
    (96, audited_command("riskguard@a/p0", 5, "d3")), (97, None),
]


def test_the_watch_alerts_divergence_silence_and_config_mismatch_once_each() -> None:
    logic = _Timed()
    out = [(t, a.kind, a.details.get("replica", a.details.get("missing_from")))
           for t, ev in WATCH_EVENTS for a in logic.on_event((t, ev))]
    assert out == [(20, "replica_divergence", "b"), (90, "replica_silent", "b"),
                   (95, "replica_restored", "b"), (95, "replica_config_mismatch", "b")]
    assert logic.logic.state.counts == {"matched": 2, "diverged": 1, "late_copies": 1}


def test_a_config_mismatch_is_alerted_again_after_it_ended_and_its_memory_is_bounded() -> None:
    """b flips between two configs 200 times: each time it differs from a's again that is
    a new mismatch alert; while it agrees none; and the pairs remembered stay those of
    the configs in force."""
    logic = _Timed()
    kinds = []
    for i in range(400):
        digest = H2 if i % 2 else "0" * 64
        logic.on_event((i, audited_command("riskguard@a/p0", i, f"a{i}")))
        for a in logic.on_event((i, audited_command("riskguard@b/p0", i, f"a{i}",
                                                    config_hash=digest))):
            kinds.append((i, a.kind))
    assert [k for k in kinds if k[1] == "replica_config_mismatch"] == [
        (i, "replica_config_mismatch") for i in range(1, 400, 2)]
    assert len(logic.logic.state.mismatched) <= 1


def test_a_divergence_alert_names_both_sides_and_the_decision() -> None:
    logic = _Timed()
    for ev in WATCH_EVENTS[:4]:
        (alert, *_) = logic.on_event(ev) or [None]
    assert alert is not None
    d = alert.details
    assert (d["decision_id"], d["made_by"], d["missing_from"], d["action"], d["scope"]) == (
        "d2", "a", "b", "reduce_only", "venue:okx")
    assert d["evidence"] == "e1" and d["last_write_s_ago.b"] == 19.0
    assert alert.severity.value == "critical"


def test_chains_of_no_watched_replica_are_ignored() -> None:
    logic = _Timed()
    assert logic.on_event((0, audited_command("riskguard/p0", 0, "d1"))) == []
    assert logic.on_event((0, audited_command("riskguard@c/p0", 0, "d1"))) == []
    assert logic.on_event((60, None)) == []


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_watch_meets_the_contract(check: Any) -> None:
    check(Case("replica_watch", _Timed, WATCH_EVENTS, splits=(3, 5, 8)))


def test_the_watch_takes_kafka_topic_and_peers_from_a_replicas_config(tmp_path: Path) -> None:
    """``--config``: the config's [kafka] (TLS/SASL settings too), its env's audit topic
    and [replica] peers; flags win."""
    import argparse

    from riskguard.cli_replicas import watch_settings

    path = tmp_path / "guard.toml"
    path.write_text('env = "prod"\n[kafka]\nbootstrap = "k:9093"\nsecurity_protocol = "SSL"\n'
                    '[replica]\nid = "a"\npeers = ["a", "b"]\n')
    ns = argparse.Namespace(config=str(path), brokers=None, topic=None, peers=None)
    settings, topic, peers = watch_settings(ns)
    assert (settings.bootstrap, settings.security_protocol, topic, peers) == (
        "k:9093", "SSL", "prod.riskguard.audit.v1", ("a", "b"))
    ns = argparse.Namespace(config=str(path), brokers="x:1", topic="t", peers="a,b,c")
    settings, topic, peers = watch_settings(ns)
    # --brokers changes the address only: the config's TLS settings still apply
    assert (settings.bootstrap, settings.security_protocol, topic, peers) == (
        "x:1", "SSL", "t", ("a", "b", "c"))
    with pytest.raises(ConfigError, match="--topic"):
        watch_settings(argparse.Namespace(config=None, brokers=None, topic=None, peers=None))


def test_the_watch_tells_each_message_that_is_no_audit_item(
        kafka_bootstrap: str, new_topic: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``riskguard replicas watch`` on the dev broker: a message that is no audit item
    is a ``DEAD`` line (a dead letter with its partition, offset, reason and bytes) and
    is counted; the watch goes on."""
    import base64

    from confluent_kafka import Producer
    from signing_fixtures import write_signed_trust

    from riskguard.cli import main

    topic = new_topic(partitions=1)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"\x00junk", b'{"type":"audit"}'):
        p.produce(topic, value)
    assert p.flush(30) == 0
    trust, roots = write_signed_trust(tmp_path)
    assert main(["replicas", "watch", "--brokers", kafka_bootstrap, "--topic", topic,
                 "--trust", str(trust), "--roots", str(roots), "--from-beginning",
                 "--idle-timeout", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    dead = [msgspec.json.decode(line[5:]) for line in out if line.startswith("DEAD ")]
    assert [(d["reason"], d["partition"], d["offset"]) for d in dead] == [
        ("unreadable_audit_item", 0, 0), ("unreadable_audit_item", 0, 1)]
    assert base64.b64decode(dead[0]["raw"]) == b"\x00junk"
    summary = msgspec.json.decode(next(x for x in out if x.startswith("SUMMARY "))[8:])
    assert summary["unreadable"] == 2


def test_bytewax_run_claims_its_recovery_directory_as_riskguard_run_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m bytewax.run riskguard.dataflows.guard -r DIR`` (the Kubernetes
    entrypoint) marks DIR with its trust serial and refuses a store that ran on a newer
    trust file, before the flow is built (before anything is read)."""
    from bytewax.recovery import init_db_dir
    from riskguard.dataflows.demo import init_keys, write_config
    from riskguard.dataflows.guard import live
    from riskguard.dataflows.guard.recovery_marks import REPLICA_MARK, TRUST_MARK

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:1", keys, "dev", "")
    built: list[int] = []

    def build_flow(*_args: Any, **_kwargs: Any) -> None:
        built.append(1)  # the Kafka reads begin here: not the subject of this test

    monkeypatch.setattr(live, "build_flow", build_flow)
    monkeypatch.setattr(live, "apply_gc_policy", lambda _cfg: None)
    monkeypatch.setenv("RISKGUARD_CONFIG", str(config))
    monkeypatch.delenv("BYTEWAX_RECOVERY_DIRECTORY", raising=False)
    monkeypatch.delenv("RISKGUARD_METRICS_PORT", raising=False)
    store = tmp_path / "recovery"
    store.mkdir()
    monkeypatch.setattr(sys, "argv", ["bytewax.run", "riskguard.dataflows.guard", "-r",
                                      str(store), "-s", "5", "-b", "10"])
    with pytest.raises(ConfigError, match=r"python -m bytewax\.recovery"):
        live.from_env()  # a folder bytewax has not initialised, named with the command
    assert built == []
    init_db_dir(store, 1)
    live.from_env()
    assert built == [1]
    assert (store / TRUST_MARK).read_text().strip().isdigit()
    assert (store / REPLICA_MARK).read_text() == "\n"  # a single guard's
    (store / TRUST_MARK).write_text("99\n")
    with pytest.raises(ConfigError, match="serial 99"):
        live.from_env()
    assert built == [1]


def test_a_recovery_store_refuses_a_trust_file_older_than_the_one_it_ran_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``riskguard run -r DIR`` remembers the trust file's serial in its recovery store;
    a start on an older, still root-signed trust file (one that may list keys since
    revoked) stops before anything is read, naming both serials."""
    from bytewax.recovery import init_db_dir
    from riskguard.dataflows.demo import init_keys, write_config
    from riskguard.dataflows.guard.recovery_marks import TRUST_MARK

    from riskguard.cli import main

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:1", keys, "dev", "")
    store = tmp_path / "recovery"
    store.mkdir()
    init_db_dir(store, 1)
    (store / TRUST_MARK).write_text("99\n")
    assert main(["run", "--config", str(config), "--", "-r", str(store), "-s", "5",
                 "-b", "10"]) == 2
    err = capsys.readouterr().err
    assert "keys.trust_file" in err and "serial 99" in err


def test_a_guard_restored_from_an_old_snapshot_does_not_execute_its_old_decisions_again(
        tmp_path: Path) -> None:
    """A guard restored from a snapshot hours old reads its input again and re-derives
    the decisions it made then: same decision id and command id, a new seq above what it
    delivered, fresh issued_at. Hours past the decision window and the ids' expiry, the
    subscriber still drops the copy as a duplicate; a decision it never executed (a
    genuine catch-up) still executes."""
    clock = ManualClock(T0)
    seen: dict[str, list[Any]] = {}
    sub = CommandSubscriber(trust=replicas_trust(), audience=AUD,
                            state_path=tmp_path / "sub.sqlite", clock=clock,
                            on_command=seen.setdefault("executed", []).append,
                            on_reject=seen.setdefault("rejected", []).append)
    sub.handle(_signed(_copy("engine-a", 1, D1), REPLICA_A), partition=0, offset=0)
    later = T0 + 5 * 3600 * S
    clock.set(later)
    sub.state.prune(later - 3600 * S)  # what a poll does: ids and copies past their time
    again = msgspec.structs.replace(_copy("engine-a", 1_000_001, D1), issued_at=later,
                                    expires_at=later + 60 * S)
    assert isinstance(sub.handle(_signed(again, REPLICA_A), partition=0, offset=1),
                      Duplicate)
    catch_up = msgspec.structs.replace(_copy("engine-a", 1_000_002, D2, n=2),
                                       issued_at=later, expires_at=later + 60 * S)
    assert sub.handle(_signed(catch_up, REPLICA_A), partition=0, offset=2) == catch_up
    assert [c.decision_id for c in seen["executed"]] == [D1, D2]
