"""Audit log: RFC 6962 vectors, append/checkpoint logic, verify + prove, tamper detection."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import msgspec
import pytest
from riskguard.operators.audit import (
    EMPTY_ROOT,
    AuditConfig,
    AuditLogic,
    AuditState,
    ChainResume,
    CompactRange,
    check_proof,
    inclusion_proof,
    leaf_hash,
    prove,
    read_jsonl,
    root_of,
    sign_checkpoint,
    verify_inclusion,
    verify_log,
)
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord, DeadLetter
from riskguard.schemas.market import IndexPrice
from signing_fixtures import ENGINE, OUTSIDER, T0, S, command

from riskguard.errors import AuditError

V = json.loads((Path(__file__).parent / "vectors/transparency_dev/rfc6962_proofs.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in V["leaves"]]
KEYS = {ENGINE.key_id: ENGINE.public_key}


def resume_states(items: list[Any], keys: Any, *, origin: str | None = None,
                  ) -> dict[str, AuditState]:
    """:class:`ChainResume` over ``items``: the state to continue each chain from."""
    resume = ChainResume(keys, origin=origin)
    for it in items:
        resume.add(it)
    return resume.states()


def test_rfc6962_reference_roots_for_every_size() -> None:
    assert root_of([]) == EMPTY_ROOT == bytes.fromhex(V["empty_root"])
    for n in range(1, 9):
        assert root_of(LEAVES[:n]).hex() == V["roots"][n - 1]
        c = CompactRange()
        for leaf in LEAVES[:n]:
            c.append(leaf)
        assert c.root().hex() == V["roots"][n - 1]


@pytest.mark.parametrize("vec", V["inclusion"], ids=lambda v: f"{v['leaf']}@{v['size']}")
def test_transparency_dev_inclusion_vectors(vec: dict) -> None:  # type: ignore[type-arg]
    i, n = vec["leaf"] - 1, vec["size"]
    proof = [bytes.fromhex(p) for p in vec["proof"]]
    assert inclusion_proof(i, LEAVES[:n]) == proof
    root = bytes.fromhex(V["roots"][n - 1])
    verify_inclusion(LEAVES[i], i, n, proof, root)
    for bad in ([*proof, root], proof[:-1] if proof else [root]):
        with pytest.raises(AuditError):
            verify_inclusion(LEAVES[i], i, n, bad, root)
    if n > 1:
        with pytest.raises(AuditError):
            verify_inclusion(LEAVES[i], i ^ 1, n, proof, root)


def test_every_inclusion_proof_round_trips_up_to_33_leaves() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(33)]
    for n in range(1, 34):
        root = root_of(leaves[:n])
        for i in range(n):
            verify_inclusion(leaves[i], i, n, inclusion_proof(i, leaves[:n]), root)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert root_of([a, b]) != leaf_hash(a + b)


# -- logic ------------------------------------------------------------------


def decisions(n: int) -> list[object]:
    out: list[object] = []
    for i in range(n):
        if i % 3 == 0:
            out.append(command(i + 1, issued_at=T0 + i * S))
        elif i % 3 == 1:
            out.append(IndexPrice(id=f"p{i}", venue="oracle", instrument="BTC-USD",
                                  ts=T0 + i * S, price=50_000.0 + i))
        else:
            out.append(DeadLetter(topic="fills", ts=T0 + i * S, reason="malformed",
                                  step="decode", raw=b"{oops"))
    return out


Log = list[AuditRecord | AuditCheckpoint]


def run_log(n: int, every: int = 4, interval: int = 3600 * S) -> Log:
    logic = AuditLogic("riskguard/p0", ENGINE,
                       AuditConfig(checkpoint_every=every, checkpoint_interval_ns=interval))
    out: list[AuditRecord | AuditCheckpoint] = []
    for d in decisions(n):
        out.extend(logic.on_event(d))
    out.extend(logic.on_eof())
    return out


def test_records_carry_kind_operator_digest_and_config_hash() -> None:
    recs = [x for x in run_log(3) if isinstance(x, AuditRecord)]
    assert [(r.index, r.kind, r.operator) for r in recs] == [
        (0, "command", "mitigation"), (1, "index_price", "index_price"),
        (2, "rejected_input", "decode"),
    ]
    assert all(len(r.input_digest) == 64 and r.config_hash == "0" * 64 for r in recs)
    assert recs[0].record_id == "riskguard/p0:0"


def test_checkpoint_every_n_records_and_at_eof() -> None:
    out = run_log(10, every=4)
    cps = [x for x in out if isinstance(x, AuditCheckpoint)]
    assert [c.size for c in cps] == [4, 8, 10]


def test_checkpoint_every_t_seconds_of_event_time() -> None:
    out = run_log(7, every=1000, interval=3 * S)
    assert [c.size for c in out if isinstance(c, AuditCheckpoint)] == [4, 7]


def test_resumed_chain_equals_uninterrupted_chain() -> None:
    cfg = AuditConfig(checkpoint_every=3)
    ds = decisions(9)
    whole = AuditLogic("c", ENGINE, cfg)
    expect = [o for d in ds for o in whole.on_event(d)]
    first = AuditLogic("c", ENGINE, cfg)
    got = [o for d in ds[:5] for o in first.on_event(d)]
    second = AuditLogic("c", ENGINE, cfg, pickle.loads(pickle.dumps(first.snapshot())))
    got += [o for d in ds[5:] for o in second.on_event(d)]
    assert got == expect


def test_clean_log_verifies_with_every_record_attested() -> None:
    report = verify_log(run_log(10), KEYS)
    assert (report["riskguard/p0"].records, report["riskguard/p0"].checkpoints,
            report["riskguard/p0"].attested) == (10, 3, 10)


def test_jsonl_export_round_trips() -> None:
    log = run_log(6)
    lines = [msgspec.json.encode(x) for x in log]
    assert read_jsonl(lines) == log


# -- tampering: each caught and located ----------------------------------------


def locate(items: list[AuditRecord | AuditCheckpoint]) -> tuple[str, int | None]:
    with pytest.raises(AuditError) as err:
        verify_log(items, KEYS)
    return str(err.value.reason).split(":")[0], err.value.index


def test_flipped_byte_in_a_record_is_caught_at_that_record() -> None:
    log = run_log(10)
    line = bytearray(msgspec.json.encode(log[5]))
    pos = line.index(b"oracle")
    line[pos] ^= 0x01
    log[5] = read_jsonl([bytes(line)])[0]
    assert isinstance(log[5], AuditRecord)
    assert locate(log) == ("leaf_hash_mismatch", log[5].index)


def test_dropped_record_is_caught_as_a_gap_at_its_index() -> None:
    log = run_log(10)
    del log[2]  # record index 2
    assert locate(log) == ("gap", 2)


def test_swapped_records_are_caught_as_a_reorder() -> None:
    log = run_log(10)
    log[1], log[2] = log[2], log[1]
    assert locate(log) == ("reorder", 1)


def test_truncated_tail_is_caught_at_the_first_unattested_record() -> None:
    log = run_log(10)
    assert isinstance(log[-1], AuditCheckpoint)
    cut = log[:-2]  # drops the final checkpoint and record 9
    assert locate(cut) == ("unattested_tail", 8)


def test_truncation_at_a_checkpoint_boundary_is_caught_with_an_expected_size() -> None:
    log = run_log(10)
    upto = next(i for i, x in enumerate(log) if isinstance(x, AuditCheckpoint) and x.size == 8)
    with pytest.raises(AuditError) as err:
        verify_log(log[: upto + 1], KEYS, expected_sizes={"riskguard/p0": 10})
    assert (err.value.reason.split(":")[0], err.value.index) == ("truncated", 8)


def test_forged_checkpoint_is_caught_bad_signature_or_unknown_key() -> None:
    log = run_log(10)
    i = next(i for i, x in enumerate(log) if isinstance(x, AuditCheckpoint))
    cp = log[i]
    assert isinstance(cp, AuditCheckpoint)
    log[i] = msgspec.structs.replace(cp, root="ab" * 32)  # keeps the old signature
    assert locate(log) == ("bad_checkpoint", 0)
    log[i] = sign_checkpoint(cp.origin, cp.size, b"\xab" * 32, cp.ts, OUTSIDER,
                             last_leaf=cp.last_leaf or "")
    assert locate(log) == ("bad_checkpoint", 0)


def test_rewritten_record_with_recomputed_leaf_hash_fails_the_signed_root() -> None:
    """Record 7, the last before the checkpoint at 8, rewritten: no later record's link
    names it before the checkpoint, whose root then fails. (An earlier record rewritten
    fails the next one's link: ``tests/test_audit_verify.py``.)"""
    from riskguard.operators.audit import record_leaf
    log = run_log(10)
    at = next(i for i, x in enumerate(log) if isinstance(x, AuditRecord) and x.index == 7)
    rec = log[at]
    assert isinstance(rec, AuditRecord)
    forged = msgspec.structs.replace(rec, kind="signal", leaf_hash=None)
    log[at] = msgspec.structs.replace(forged, leaf_hash=record_leaf(forged).hex())
    assert locate(log) == ("checkpoint_root_mismatch", 4)


def test_prove_gives_a_proof_a_third_party_can_check() -> None:
    log = run_log(10)
    doc = json.loads(json.dumps(prove(log, "riskguard/p0:5")))
    assert (doc["index"], doc["tree_size"]) == (5, 8)
    check_proof(doc, KEYS)
    doc["proof"][0] = "00" * 32
    with pytest.raises(AuditError):
        check_proof(doc, KEYS)


def test_cli_audit_verify_names_the_first_bad_record_and_prove_checks(tmp_path: Path) -> None:
    from riskguard.operators.signing.crypto import save_public_key

    from riskguard.cli import main

    log = run_log(10)
    pub = tmp_path / "engine.pub"
    save_public_key(pub, ENGINE.public_key)
    good = tmp_path / "audit.jsonl"
    good.write_bytes(b"\n".join(msgspec.json.encode(x) for x in log) + b"\n")
    assert main(["audit", "verify", "--file", str(good), "--pubkey", str(pub)]) == 0
    bad = tmp_path / "bad.jsonl"
    del log[3]
    bad.write_bytes(b"\n".join(msgspec.json.encode(x) for x in log) + b"\n")
    assert main(["audit", "verify", "--file", str(bad), "--pubkey", str(pub)]) == 1


def test_cli_subscribe_exits_non_zero_on_a_trust_file_error(tmp_path: Path) -> None:
    from riskguard.cli import main

    (tmp_path / "trust.toml").write_text("version = 1\n")
    (tmp_path / "roots.toml").write_text("threshold = 1\n")
    rc = main(["subscribe", "--topic", "t", "--env", "prod", "--trust",
               str(tmp_path / "trust.toml"), "--roots", str(tmp_path / "roots.toml")])
    assert rc == 3
