"""The attestor and the replica watch against forged and replayed audit items: records
anyone may write, and copies of genuine checkpoints."""

from __future__ import annotations

from typing import Any

import msgspec
from riskguard.operators.audit import ReplicaWatchConfig, ReplicaWatchLogic
from riskguard.operators.audit.attest import Attestor
from riskguard.operators.audit.chain import record_leaf, sign_checkpoint
from riskguard.operators.audit.merkle import CompactRange
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
from riskguard.schemas.audit import GENESIS_LEAF, AuditCheckpoint, AuditRecord
from signing_fixtures import ENGINE, ENGINE2

KEYS = {ENGINE.key_id: ENGINE.public_key, ENGINE2.key_id: ENGINE2.public_key}
NAMES = {ENGINE.key_id: "engine-1", ENGINE2.key_id: "engine-2"}
S = 1_000_000_000
Item = AuditRecord | AuditCheckpoint


def command(chain: str, index: int, decision: str, pad: str = "",
            prev_leaf: str = GENESIS_LEAF) -> AuditRecord:
    """A command record of ``chain`` with its leaf hash, linked to ``prev_leaf`` (what
    anyone can write)."""
    body: dict[str, Any] = {"decision_id": decision, "action": "reduce_only",
                            "scope": {"kind": "venue", "value": "okx"}}
    if pad:
        body["pad"] = pad
    rec = AuditRecord(record_id=f"{chain}:{index}", chain=chain, index=index, ts=index,
                      kind="command", operator="mitigation", operator_version="t",
                      config_hash="0" * 64, input_digest="0" * 64, body=body,
                      prev_leaf=prev_leaf)
    return msgspec.structs.replace(rec, leaf_hash=record_leaf(rec).hex())


def signed_chain(chain: str, decisions: list[str], signer: Any, every: int = 8) -> list[Item]:
    """A replica's chain: its records and a checkpoint every ``every`` records."""
    rng, out, prev = CompactRange(), [], GENESIS_LEAF  # type: ignore[var-annotated]
    for i, d in enumerate(decisions):
        rec = command(chain, i, d, prev_leaf=prev)
        out.append(rec)
        rng.append(record_leaf(rec))
        prev = rec.leaf_hash or ""
        if rng.size % every == 0 or i == len(decisions) - 1:
            out.append(sign_checkpoint(chain, rng.size, rng.root(), i, signer, last_leaf=prev))
    return out


def watch(clock: ManualClock, **kw: Any) -> ReplicaWatchLogic:
    cfg = ReplicaWatchConfig(peers=("a", "b"), tolerance_s=5, silent_s=60, **kw)
    return ReplicaWatchLogic(cfg, clock, keys=KEYS, signer_of=NAMES.get)


def test_a_replayed_checkpoint_does_not_keep_a_dead_replica_alive() -> None:
    """Replica a writes two decisions and stops; copies of its last (genuine)
    checkpoint keep arriving. a is reported silent all the same: a checkpoint counts
    as the replica writing only if it is newer than the last believed."""
    a = signed_chain("riskguard@a/p0", ["d0", "d1"], ENGINE)
    b = signed_chain("riskguard@b/p0", [f"d{i}" for i in range(40)], ENGINE2, every=2)
    clock = ManualClock(0)
    w = watch(clock)
    alerts = [x for it in a + b[:3] for x in w.on_event(it)]
    for k, it in enumerate(b[3:]):
        clock.advance(8 * S)
        alerts += w.on_event(it)
        if k % 3 == 0:
            alerts += w.on_event(a[-1])
        if k == 10:  # a restart in between keeps what was believed
            w = ReplicaWatchLogic(w.config, clock, decode_snapshot(encode_snapshot(
                w.snapshot())), keys=KEYS, signer_of=NAMES.get)
    silent = [x for x in alerts if x.kind == "replica_silent"]
    assert [x.details["replica"] for x in silent] == ["a"]
    assert w.state.attest is not None
    assert w.state.attest.counts["replayed_checkpoints"] > 5


def test_a_checkpoint_of_the_same_size_signed_later_is_news() -> None:
    """The same tree signed again at a later time is the replica writing."""
    a = signed_chain("riskguard@a/p0", ["d0"], ENGINE)
    cp = a[-1]
    assert isinstance(cp, AuditCheckpoint)
    att = Attestor(KEYS)
    assert [type(x).__name__ for it in a for x in att.on_item(it)] == [
        "AuditRecord", "AuditCheckpoint"]
    assert att.on_item(cp) == []
    later = sign_checkpoint(cp.origin, cp.size, bytes.fromhex(cp.root), cp.ts + 1, ENGINE,
                            last_leaf=cp.last_leaf or "")
    assert att.on_item(later) == [later]


def test_forged_records_ahead_of_a_replicas_own_raise_no_false_divergence() -> None:
    """Unsigned records with correct leaf hashes, one per index of replica a's chain
    and written before a's own, neither stop a's records being attested nor make the
    watch report a divergence."""
    decisions = [f"d{i}" for i in range(8)]
    a = signed_chain("riskguard@a/p0", decisions, ENGINE)
    b = signed_chain("riskguard@b/p0", decisions, ENGINE2)
    forged = [command("riskguard@a/p0", i, f"forged{i}") for i in range(8)]
    clock = ManualClock(0)
    w = watch(clock, issuers={"a": "engine-1", "b": "engine-2"})
    alerts = [x for it in forged + a + b for x in w.on_event(it)]
    clock.advance(6 * S)
    alerts += w.on_event(None)
    assert alerts == []
    assert w.state.attest is not None
    assert w.state.attest.counts["attested"] == 16


def test_however_many_forgeries_claim_an_index_the_real_record_is_kept() -> None:
    """Twenty forged records at each index before the real ones: the checkpoint still
    finds the real ones, and every later checkpoint of the chain attests."""
    chain = "riskguard@a/p0"
    real = signed_chain(chain, [f"d{i}" for i in range(16)], ENGINE, every=4)
    forged = [command(chain, i, f"f{i}-{n}") for n in range(20) for i in (0, 2)]
    att = Attestor(KEYS)
    out = [x for it in forged + real for x in att.on_item(it)]
    assert [x.index for x in out if isinstance(x, AuditRecord)] == list(range(16))
    assert att.state.broken == {}
    assert att.state.chains[chain].held == 0


def test_forged_records_far_ahead_are_not_held() -> None:
    """A record whose index no checkpoint can reach soon is counted, never held."""
    from riskguard.operators.audit.attest import MAX_AHEAD

    att = Attestor(KEYS)
    for i in range(50):
        att.on_item(command("riskguard@a/p0", MAX_AHEAD + i, f"far{i}", pad="x" * 8000))
    assert att.state.chains["riskguard@a/p0"].held == 0
    assert att.state.counts["unattested"] == 50
    real = signed_chain("riskguard@a/p0", ["d0", "d1"], ENGINE)
    assert sum(isinstance(x, AuditRecord) for it in real for x in att.on_item(it)) == 2


def test_contested_records_survive_a_restore() -> None:
    """What is held, forged claimants included, is in the snapshot: restored, the
    attestor attests the real records when their checkpoint comes."""
    chain = "riskguard@a/p0"
    real = signed_chain(chain, [f"d{i}" for i in range(4)], ENGINE, every=4)
    att = Attestor(KEYS)
    for it in [command(chain, i, f"f{i}") for i in range(4)] + real[:-1]:
        assert att.on_item(it) == []
    restored = Attestor(KEYS, state=decode_snapshot(encode_snapshot(att.snapshot())))
    assert restored.state.chains[chain].held == 8
    held_bytes = att.state.chains[chain].held_bytes
    assert held_bytes > 0 and restored.state.chains[chain].held_bytes == held_bytes
    out = restored.on_item(real[-1])
    assert [x.index for x in out if isinstance(x, AuditRecord)] == [0, 1, 2, 3]
    assert restored.state.chains[chain].held == 0


def _forgery(real: AuditRecord, n: int) -> AuditRecord:
    """What a forger who reads the topic makes of a real record: other content, its own
    leaf hash right, every other field (its index, its link back) kept."""
    fake = msgspec.structs.replace(real, body={**real.body, "forged": n}, leaf_hash=None)
    return msgspec.structs.replace(fake, leaf_hash=record_leaf(fake).hex())


def test_a_flood_of_claimants_at_every_index_is_resolved_in_one_pass(monkeypatch: Any) -> None:
    """Twenty forged records at each of 64 indices, written before the real ones, each
    a copy of the real record with other content (so enough to spend any bounded search
    among claimants: choosing by root alone tried 100,000 leaves and gave up). The
    checkpoint's last leaf and each record's link back pick the real ones, one leaf
    appended per record covered: all 64 are attested and the chain is not reported."""
    from riskguard.operators.audit import attest
    from riskguard.operators.audit.chain import AuditConfig, AuditLogic

    appended = [0]

    class Counted(CompactRange):
        def append(self, leaf: bytes) -> None:
            appended[0] += 1
            super().append(leaf)

    monkeypatch.setattr(attest, "CompactRange", Counted)
    chain = "riskguard@a/p0"
    log = AuditLogic(chain, ENGINE, AuditConfig(checkpoint_every=64))
    real = [x for i in range(64) for x in log.on_event({"decision_id": f"d{i}"})]
    records = [x for x in real if isinstance(x, AuditRecord)]
    forged = [_forgery(r, n) for r in records for n in range(20)]
    att = Attestor(KEYS)
    assert [x for it in forged + real[:-1] for x in att.on_item(it)] == []
    out = att.on_item(real[-1])
    assert out == [*records, real[-1]]
    assert att.state.broken == {}
    assert att.state.counts == {"attested": 64, "unattested": 64 * 20}
    assert appended[0] == 64
    assert att.state.chains[chain].held == 0
