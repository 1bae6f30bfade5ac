"""Audit input is verified before it is believed: garbage on the audit topic is skipped
and counted, peers' records count only where a signed checkpoint vouches for them, and
a replica whose peer's chain cannot be verified starts and alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from audit_fixtures import audited_command
from confluent_kafka import Producer
from contract import CHECKS, Case
from riskguard.operators.audit import (
    AuditConfig,
    AuditLogic,
    ReplicaWatchConfig,
    ReplicaWatchLogic,
)
from riskguard.operators.audit.attest import Attestor
from riskguard.operators.signing.crypto import Signer
from riskguard.schemas import AuditCheckpoint, AuditRecord
from riskguard.schemas.audit import GENESIS_LEAF
from signing_fixtures import S, signer

A, B = signer("engine-a"), signer("engine-b")
MALLORY = signer("mallory")
KEYS = {A.key_id: A.public_key, B.key_id: B.public_key}
WATCH = ReplicaWatchConfig(peers=("a", "b"), tolerance_s=10, silent_s=60)


class Decision(msgspec.Struct, frozen=True, tag="command"):
    """What an audited command's body says, as the watch reads it."""

    decision_id: str
    action: str = "reduce_only"
    scope: dict[str, str] = msgspec.field(
        default_factory=lambda: {"kind": "venue", "value": "okx"})
    evidence_hashes: list[str] = msgspec.field(default_factory=lambda: ["e1"])


def replica_chain(name: str, key: Signer, decisions: list[str], *, every: int = 2,
           config_hash: str = "0" * 64) -> list[Any]:
    """A replica's audit chain: one audited command per decision id, checkpoints signed."""
    logic = AuditLogic(name, key, AuditConfig(checkpoint_every=every, config_hash=config_hash))
    return [out for d in decisions for out in logic.on_event(Decision(decision_id=d))]


def forged_record(chain: str, index: int, decision: str, config_hash: str = "0" * 64
                  ) -> AuditRecord:
    """A record anyone who may write the topic can make: its own hash is right."""
    from riskguard.operators.audit.chain import record_leaf

    rec = msgspec.structs.replace(audited_command(chain, index, decision, config_hash),
                                  prev_leaf=GENESIS_LEAF)  # linked as record 0 is
    return msgspec.structs.replace(rec, leaf_hash=record_leaf(rec).hex())


class Watch:
    def __init__(self) -> None:
        self.now = 0
        self.logic = ReplicaWatchLogic(WATCH, lambda: self.now, keys=KEYS)
        self.alerts: list[Any] = []

    def at(self, t: float, item: Any) -> list[str]:
        self.now = int(t * S)
        out = self.logic.on_event(item)
        self.alerts += out
        return [a.kind for a in out]


def test_records_count_once_a_signed_checkpoint_vouches_for_them() -> None:
    items = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3"])
    att = Attestor(KEYS)
    out = [x for it in items for x in att.on_item(it)]
    assert [x.index for x in out if isinstance(x, AuditRecord)] == [0, 1]  # 2 waits
    assert att.state.counts == {"attested": 2}


def test_forged_records_beside_the_real_ones_are_not_believed() -> None:
    """A forged record claiming index 1 comes first; the checkpoint decides for the real
    one."""
    real = replica_chain("riskguard@a/p0", A, ["d1", "d2"])
    fake = forged_record("riskguard@a/p0", 1, "forged")
    att = Attestor(KEYS)
    out = [x for it in [real[0], fake, *real[1:]] for x in att.on_item(it)]
    recs = [x for x in out if isinstance(x, AuditRecord)]
    assert [r.body["decision_id"] for r in recs] == ["d1", "d2"]
    assert att.state.counts == {"attested": 2, "unattested": 1} and att.state.broken == {}


def test_a_forged_checkpoint_breaks_its_chain_and_nothing_under_it_is_believed() -> None:
    fake = forged_record("riskguard@b/p0", 0, "d1")
    cp = AuditCheckpoint(origin="riskguard@b/p0", size=1, root=fake.leaf_hash or "",
                         ts=1, key_id=MALLORY.key_id, signature=b"x" * 64)
    att = Attestor(KEYS)
    assert att.on_item(fake) == [] and att.on_item(cp) == []
    assert "checkpoint at size 1" in att.state.broken["riskguard@b/p0"]


def test_forged_records_neither_hide_a_dead_replica_nor_raise_a_false_divergence() -> None:
    """b is dead after d1: forged b records keep writing, and a forged a decision nobody
    made appears. The watch hears only what checkpoints vouch for: b is silent, no
    divergence on the forged decision, and b's forged checkpoint is an alert."""
    w = Watch()
    a_items = replica_chain("riskguard@a/p0", A, [f"d{i}" for i in range(1, 9)])
    b_items = replica_chain("riskguard@b/p0", B, ["d1", "d2"])
    kinds: list[str] = []
    for t, it in enumerate(b_items):
        kinds += w.at(t, it)
    for i, it in enumerate(a_items):
        kinds += w.at(i * 10, it)
        kinds += w.at(i * 10 + 1, forged_record("riskguard@b/p0", 2 + i, f"d{i + 3}"))
    kinds += w.at(81, forged_record("riskguard@a/p0", 8, "never-made"))
    cp = AuditCheckpoint(origin="riskguard@b/p0", size=9, root="0" * 64, ts=1,
                         key_id=MALLORY.key_id, signature=b"x" * 64)
    kinds += w.at(82, cp)
    kinds += w.at(100, None)
    assert "replica_silent" in kinds and "replica_unverified" in kinds
    diverged = {a.details["decision_id"] for a in w.alerts if a.kind == "replica_divergence"}
    assert "never-made" not in diverged and diverged <= {f"d{i}" for i in range(3, 9)}
    assert w.logic.state.attest is not None
    assert w.logic.state.attest.counts["attested"] == 10  # a's 8 and b's 2, nothing forged


def test_the_watch_with_keys_meets_the_contract(check: Any = None) -> None:
    items = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3"]) + replica_chain(
        "riskguard@b/p0", B, ["d1", "d2"])
    case = Case(name="watch_attested",
                builder=lambda state: ReplicaWatchLogic(WATCH, lambda: 0, state, keys=KEYS),
                events=items)
    for c in CHECKS:
        c(case)


@pytest.mark.kafka
def test_garbage_and_a_forged_peer_chain_on_the_audit_topic_do_not_stop_a_replica(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Replica a's audit topic holds garbage, and records of replica b with another config
    hash under a checkpoint no trusted key signed: a starts (its peers' hash is not
    compared), says so, and alerts replica_unverified on the signals topic."""
    from kafka_helpers import consume_all
    from riskguard.dataflows.demo import prepare_run, replica_configs
    from riskguard.dataflows.guard import build_flow, load_guard_config

    run = prepare_run(kafka_bootstrap, tmp_path, env=f"ai{tmp_path.name[-6:]}")
    cfg_a, _ = replica_configs(run.config, run.keys)
    cfg, digest = load_guard_config(cfg_a)
    forged = [forged_record("riskguard@b/p0", 0, "d1", config_hash="f" * 64)]
    forged.append(AuditCheckpoint(origin="riskguard@b/p0", size=1,
                                  root=forged[0].leaf_hash or "", ts=1,
                                  key_id=MALLORY.key_id, signature=b"x" * 64))
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in [b"\x00garbage", b'{"type":"audit"}', *map(msgspec.json.encode, forged)]:
        p.produce(run.topic("audit"), value)
    assert p.flush(30) == 0
    notes: list[str] = []
    build_flow(cfg, digest, on_note=notes.append)
    assert any("2 message(s)" in n and "skipped" in n for n in notes)
    assert any("replica chain riskguard@b/p0 cannot be verified" in n for n in notes)
    alerts = [msgspec.json.decode(v) for _p, _o, v in consume_all(
        kafka_bootstrap, run.topic("signals"), expect=1)]
    assert [a["kind"] for a in alerts] == ["replica_unverified"]


def test_past_max_held_bytes_a_chain_holds_its_oldest_records_and_a_checkpoint_attests_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Records waiting for a checkpoint are capped in bytes: past the cap a record at a
    new index is not held (counted, the chain reported), in O(1); the oldest stay, so
    the checkpoint over them still attests them."""
    from riskguard.operators.audit import attest

    items = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3", "d4"], every=2)
    records = [x for x in items if isinstance(x, AuditRecord)]
    monkeypatch.setattr(attest, "MAX_HELD_BYTES", sum(map(attest._size, records[:2])))
    first = next(x for x in items if isinstance(x, AuditCheckpoint))
    att = Attestor(KEYS)
    for rec in records:
        att.on_item(rec)
    assert sorted(att.state.chains["riskguard@a/p0"].pending) == [0, 1]
    assert "records waited for checkpoints" in att.state.broken["riskguard@a/p0"]
    assert att.state.counts["held_over_cap"] == 2
    assert [x.index for x in att.on_item(first) if isinstance(x, AuditRecord)] == [0, 1]
    assert att.state.chains["riskguard@a/p0"].held == 0


def test_a_checkpoint_forgets_its_own_range_without_a_pass_over_every_record_held() -> None:
    """Junk far ahead of a chain stays held (it counts toward the cap), but a checkpoint
    forgets only the records of its own range: its cost is that range, not all that is
    held."""

    class NoScan(dict):  # type: ignore[type-arg]
        def scan(self, *_args):  # type: ignore[no-untyped-def]
            raise AssertionError("a checkpoint scanned every record held")

        __iter__ = keys = values = items = scan

    items = replica_chain("riskguard@a/p0", A, ["d1", "d2"], every=2)
    att = Attestor(KEYS)
    att.on_item(items[0])
    att.on_item(items[1])
    for i in range(100, 1100):
        att.on_item(forged_record("riskguard@a/p0", i, f"junk{i}"))
    tail = att.state.chains["riskguard@a/p0"]
    tail.pending = NoScan(tail.pending)
    out = att.on_item(items[2])
    assert [x.index for x in out if isinstance(x, AuditRecord)] == [0, 1]
    assert tail.held == len(tail.pending) == 1000 and min(dict.keys(tail.pending)) == 100


def test_forged_candidates_count_toward_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap counts every record held, forged ones claiming a place included: junk
    cannot make the attestor hold more than its cap."""
    from riskguard.operators.audit import attest

    forged = [forged_record("riskguard@a/p0", i, f"x{n}") for i in range(3) for n in range(3)]
    monkeypatch.setattr(attest, "MAX_HELD_BYTES", 4 * max(map(attest._size, forged)))
    att = Attestor(KEYS)
    for rec in forged:
        att.on_item(rec)
    tail = att.state.chains["riskguard@a/p0"]
    assert tail.held == sum(map(len, tail.pending.values())) == 4
    assert att.state.counts["held_over_cap"] == 5


def test_a_flood_filling_the_byte_cap_costs_only_the_flooded_chain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A forger fills the bytes held with copies of chain a's records (other content,
    own hashes right) before chain b's records come. Chain a is reported and believes
    nothing (its real records cannot all be held), but chain b's records, arriving with
    the cap full, still are attested: a chain within its share of the cap takes the
    room of the chain holding the most. Never more than the cap is held."""
    from riskguard.operators.audit import attest

    a_items = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3", "d4"], every=4)
    b_items = replica_chain("riskguard@b/p0", B, ["d1", "d2", "d3", "d4"], every=4)
    a_real = [x for x in a_items if isinstance(x, AuditRecord)]
    flood = [_copy(r, n) for n in range(20) for r in a_real]
    cap = 6 * max(map(attest._size, flood + a_real))
    monkeypatch.setattr(attest, "MAX_HELD_BYTES", cap)
    att = Attestor(KEYS)
    out = []
    for it in flood + b_items + a_items:
        out += att.on_item(it)
        assert att._bytes <= cap
    assert [(x.chain, x.index) for x in out if isinstance(x, AuditRecord)] == [
        ("riskguard@b/p0", i) for i in range(4)]
    assert list(att.state.broken) == ["riskguard@a/p0"]
    assert att.state.counts["held_over_cap"] > 0


def _copy(real: AuditRecord, n: int) -> AuditRecord:
    """A forged record made from a real one: other content, its own hash right."""
    from riskguard.operators.audit.chain import record_leaf

    fake = msgspec.structs.replace(real, body={**real.body, "forged": n}, leaf_hash=None)
    return msgspec.structs.replace(fake, leaf_hash=record_leaf(fake).hex())


def _diverging(watch: ReplicaWatchLogic, now: list[int], junk: list[Any]) -> list[str]:
    """Junk first, then replica b dies after its second decision while a makes eight:
    the alert kinds the watch raises."""
    kinds = []
    for item in junk:
        kinds += [x.kind for x in watch.on_event(item)]
    a = replica_chain("riskguard@a/p0", A, [f"d{i}" for i in range(1, 9)])
    b = replica_chain("riskguard@b/p0", B, ["d1", "d2"])
    for t, it in enumerate(b):
        now[0] = t * S
        kinds += [x.kind for x in watch.on_event(it)]
    for i, it in enumerate(a):
        now[0] = (10 + i * 10) * S
        kinds += [x.kind for x in watch.on_event(it)]
    now[0] = 400 * S
    return kinds + [x.kind for x in watch.on_event(None)]


def test_junk_chain_names_cannot_blind_the_watch() -> None:
    """Anyone who may write the audit topic can make up chain names. A watch that knows
    its peers and the guard's audit origin and chain count follows only their chains, so
    1,100 made-up ones (other replicas, other origins, other partitions) take no place
    from them: b's divergence is still raised. A watch that follows every chain says
    when it stops following new ones, critically."""
    from riskguard.operators.audit.attest import MAX_CHAINS, OVER_CAP

    junk = [forged_record(name, 0, "x") for i in range(1_100) for name in (
        f"riskguard@j{i}/p0", f"junk{i}@a/p0", f"riskguard@a/p{i + 1}")]
    now = [0]
    pinned = msgspec.structs.replace(WATCH, origin="riskguard", partitions=1)
    kinds = _diverging(ReplicaWatchLogic(pinned, lambda: now[0], keys=KEYS), now, junk)
    assert "replica_divergence" in kinds and "replica_unverified" not in kinds
    loose = ReplicaWatchLogic(ReplicaWatchConfig(), lambda: now[0], keys=KEYS)
    kinds = _diverging(loose, now, junk[: MAX_CHAINS + 1])
    assert "replica_unverified" in kinds
    assert loose.state.attest is not None and OVER_CAP in loose.state.attest.broken


def test_junk_chain_names_on_the_audit_topic_neither_hide_a_peer_nor_grow_a_start(
        kafka_bootstrap: str, new_topic: Any) -> None:
    """Guard start-up reads its own chains and its peers' from the audit topic (dev
    broker). 1,100 made-up chain names, under other replicas' names and under its own
    origin, do not crowd out peer b (its config hash is still read, so a differing
    config is still caught) and hold no state of their own."""
    from riskguard.connectors.audit_tail import read_audit_tail
    from riskguard.connectors.settings import KafkaSettings

    topic = new_topic(partitions=1)
    peer = replica_chain("riskguard@b/p0", B, ["d1", "d2"], config_hash="f" * 64)
    junk = [forged_record(name, 0, "x") for i in range(1_100)
            for name in (f"riskguard@j{i}/p0", f"riskguard@a/j{i}")]
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for item in [*junk, *peer]:
        p.produce(topic, msgspec.json.encode(item))
    assert p.flush(30) == 0
    tail = read_audit_tail(KafkaSettings(bootstrap=kafka_bootstrap), topic, KEYS,
                           origin="riskguard@a", partitions=1, replicas=("a", "b"))
    assert tail.peers == {"b": "f" * 64}
    assert tail.chains == {} and tail.unverified == {}


NAMES = {A.key_id: "engine-a", B.key_id: "engine-b"}


def test_no_trusted_key_vouches_for_another_replica_s_chain() -> None:
    """Replica b's key writes records and a checkpoint under replica a's chain name. Tied
    to its signer (a's issuer named, or the signer of its first checkpoint), the chain
    believes none of them and is reported; a's own checkpoints still attest a's records."""
    real = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3", "d4"])
    forged = replica_chain("riskguard@a/p0", B, ["x1", "x2"])
    for issuers in ({"a": "engine-a"}, {}):
        att = Attestor(KEYS, signer_of=NAMES.get, issuers=issuers)
        first = [x for it in real[:3] for x in att.on_item(it)]  # a's first checkpoint
        stolen = [x for it in forged for x in att.on_item(it)]
        rest = [x for it in real[3:] for x in att.on_item(it)]
        assert stolen == []
        assert "signed by 'engine-b'" in att.state.broken["riskguard@a/p0"]
        believed = [r.body["decision_id"] for r in first + rest if isinstance(r, AuditRecord)]
        assert believed == ["d1", "d2", "d3", "d4"]
    named = Attestor(KEYS, signer_of=NAMES.get, issuers={"a": "engine-a"})
    assert [x for it in forged for x in named.on_item(it)] == []  # even as the first


def test_a_start_refuses_its_own_chain_vouched_for_by_another_key(
        kafka_bootstrap: str, new_topic: Any) -> None:
    """Replica a's start (dev broker): its own chain with a checkpoint signed by replica
    b's key does not verify, so a does not extend it; signed by a's own key, it does."""
    from riskguard.connectors.audit_tail import read_audit_tail
    from riskguard.connectors.settings import KafkaSettings

    from riskguard.errors import AuditError

    def start(items: list[Any]) -> Any:
        topic = new_topic(partitions=1)
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        for item in items:
            p.produce(topic, msgspec.json.encode(item))
        assert p.flush(30) == 0
        return read_audit_tail(KafkaSettings(bootstrap=kafka_bootstrap), topic, KEYS,
                               origin="riskguard@a", partitions=1, replicas=("a", "b"),
                               signer_of=NAMES.get, issuer="engine-a")

    started = start(replica_chain("riskguard@a/p0", A, ["d1", "d2"]))
    assert started.chains["riskguard@a/p0"].size == 2
    with pytest.raises(AuditError, match="does not sign for 'engine-a'"):
        start(replica_chain("riskguard@a/p0", B, ["d1", "d2"]))


def test_audit_verify_refuses_a_chain_vouched_for_by_two_keys() -> None:
    """``verify_log`` with the trust file's names: a chain whose later checkpoint another
    trusted key signed (even over the true root) fails as wrong_signer; without names it
    is taken as any good checkpoint."""
    from riskguard.operators.audit import verify_log
    from riskguard.operators.audit.chain import sign_checkpoint

    from riskguard.errors import AuditError

    items = replica_chain("riskguard@a/p0", A, ["d1", "d2", "d3", "d4"])
    cps = [i for i, it in enumerate(items) if isinstance(it, AuditCheckpoint)]
    second = items[cps[1]]
    items[cps[1]] = sign_checkpoint(second.origin, second.size, bytes.fromhex(second.root),
                                    second.ts, B, last_leaf=second.last_leaf or "")
    assert verify_log(items, KEYS)["riskguard@a/p0"].records == 4
    with pytest.raises(AuditError, match="wrong_signer"):
        verify_log(items, KEYS, signer_of=NAMES.get)
