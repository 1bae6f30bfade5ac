"""The audit log fails closed: edited proofs, empty logs, hostile lines and restarted chains.

- every field of a proof is bound to its claim: any edit of a real proof fails;
- ``audit verify`` over nothing (empty or missing file or topic) fails unless allowed;
- an export line the decoder cannot take is an ``AuditError`` naming the line;
- a chain read back from the audit topic continues where it ends (``ChainResume``),
  checked as read; a guard started twice on the same topics writes one chain.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from riskguard.operators.audit import (
    AuditConfig,
    AuditItem,
    AuditLogic,
    AuditState,
    ChainResume,
    check_proof,
    continue_chain,
    prove,
    read_jsonl,
    sign_checkpoint,
    verify_log,
)
from riskguard.operators.signing.crypto import save_public_key
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord
from signing_fixtures import ENGINE, OUTSIDER, S
from test_audit import KEYS, decisions, resume_states, run_log

from riskguard.cli import main
from riskguard.errors import AuditError

# -- proofs: every field bound ---------------------------------------------------------


def real_proof(record_id: str = "riskguard/p0:5") -> dict[str, Any]:
    """A proof as `riskguard audit prove` prints it and `check-proof` reads it (JSON)."""
    doc = json.loads(json.dumps(prove(run_log(10), record_id)))
    check_proof(doc, KEYS)  # the unedited proof holds
    return doc


def edited(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    at = out
    for k in path[:-1]:
        at = at[k]
    at[path[-1]] = value
    return out


@pytest.mark.parametrize(("path", "value"), [
    (("index",), 4),
    (("index",), 6),
    (("tree_size",), 9),
    (("tree_size",), 6),
    (("leaf_hash",), "00" * 32),
    (("record", "index"), 4),
    (("record", "record_id"), "riskguard/p0:4"),
    (("record", "chain"), "riskguard/p1"),
    (("record", "leaf_hash"), "00" * 32),
    (("record", "kind"), "signal"),
    (("checkpoint", "size"), 9),
    (("checkpoint", "origin"), "riskguard/p1"),
    (("checkpoint", "root"), "ab" * 32),
    (("checkpoint", "key_id"), OUTSIDER.key_id),
    (("checkpoint", "signature"), None),
    (("proof", 0), "00" * 32),
    (("proof",), []),
])
def test_each_edited_field_of_a_real_proof_fails(path: tuple[Any, ...], value: Any) -> None:
    """Editing the index, the tree size, a leaf hash, the record, the checkpoint or the
    path of a real proof makes check_proof fail."""
    with pytest.raises(AuditError):
        check_proof(edited(real_proof(), path, value), KEYS)


def test_a_checkpoint_re_signed_by_an_untrusted_key_fails() -> None:
    """A valid signature by a key that is not trusted does not attest the tree."""
    doc = real_proof()
    cp = msgspec.convert(doc["checkpoint"], AuditCheckpoint)
    forged = sign_checkpoint(cp.origin, cp.size, bytes.fromhex(cp.root), cp.ts, OUTSIDER,
                             last_leaf=cp.last_leaf or "")
    with pytest.raises(AuditError, match="bad_checkpoint"):
        check_proof(edited(doc, ("checkpoint",), msgspec.to_builtins(forged)), KEYS)


Path_ = tuple[Any, ...]


def _scalars(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _scalars(v, (*path, i))
    else:
        yield path, node


def _containers(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    if isinstance(node, dict | list):
        yield path, node
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            yield from _containers(v, (*path, k))


def _other_values(v: Any) -> list[Any]:
    """Values unlike ``v`` in content or JSON type (each must break the proof)."""
    if isinstance(v, bool):
        return [not v, int(v)]
    if isinstance(v, int):
        return [v + 1, v - 1, float(v), str(v)]
    if isinstance(v, float):
        return [v + 1.0, str(v)]
    if isinstance(v, str):
        first = "1" if v[:1] == "0" else "0"
        return [first + v[1:], v + "0", v.upper() if v != v.upper() else v.lower(), ""]
    return [0, "", False]  # None


def mutations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every single edit of ``doc``: each scalar leaf changed, each key dropped, a key
    added to each object, each list shortened and lengthened."""
    for path, v in _scalars(doc):
        for other in _other_values(v):
            if type(other) is not type(v) or other != v:
                yield f"{path} = {other!r}", edited(doc, path, other)
    for path, node in _containers(doc):
        def at(new: Any, path: Path_ = path) -> dict[str, Any]:
            return edited(doc, path, new) if path else new
        if isinstance(node, dict):
            for k in node:
                yield f"{path} without {k!r}", at({x: y for x, y in node.items() if x != k})
            yield f"{path} with an extra key", at({**node, "extra": 0})
        else:
            if node:
                yield f"{path} shortened", at(node[:-1])
            yield f"{path} lengthened", at([*node, node[0] if node else "00" * 32])


@pytest.mark.parametrize("record_id", ["riskguard/p0:3", "riskguard/p0:4", "riskguard/p0:5"])
def test_every_single_edit_of_every_json_leaf_of_a_proof_fails(record_id: str) -> None:
    """No edit of a real proof document (a command's, a price's and a dead letter's) leaves
    check_proof passing: each scalar changed in value or type, each key dropped or added,
    each list shortened or lengthened."""
    doc = real_proof(record_id)
    passed, tried = [], 0
    for what, bad in mutations(doc):
        tried += 1
        try:
            check_proof(bad, KEYS)
        except AuditError:
            continue
        passed.append(what)
    assert tried > 100
    assert passed == []


def _cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes,
               name: str = "proof.json") -> tuple[int, list[str]]:
    pub = tmp_path / "engine.pub"
    if not pub.exists():
        save_public_key(pub, ENGINE.public_key)
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    capsys.readouterr()
    rc = main(["audit", "check-proof", str(path), "--pubkey", str(pub)])
    out = capsys.readouterr()
    return rc, (out.out + out.err).splitlines()


def test_cli_check_proof_fails_an_edited_index_and_passes_the_real_proof(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check-proof` prints ok (exit 0) for a real proof and FAIL (exit 1) once its index
    is edited."""
    doc = real_proof()
    rc, lines = _cli_check(tmp_path, capsys, json.dumps(doc))
    assert rc == 0 and lines[0].startswith("ok   record riskguard/p0:5 is leaf 5")
    rc, lines = _cli_check(tmp_path, capsys, json.dumps(edited(doc, ("index",), 4)))
    assert (rc, len(lines)) == (1, 1) and lines[0].startswith("FAIL")
    assert "index_mismatch" in lines[0]


@pytest.mark.parametrize("text", [
    b"not json at all", b"", b"\xff\xfe", b"[1, 2]", b"{}", b'{"record": {}}', b"null",
    b'{"index": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    json.dumps({**real_proof(), "proof": "00"}).encode(),
    json.dumps({**real_proof(), "index": True}).encode(),
], ids=["text", "empty", "binary", "list", "no-fields", "some-fields", "null", "deep",
        "proof-not-list", "bool-index"])
def test_cli_check_proof_on_a_malformed_document_is_one_fail_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes) -> None:
    """A proof file that is not JSON, not an object or lacks fields gives exit 1 and
    one FAIL line, not a traceback."""
    rc, lines = _cli_check(tmp_path, capsys, text)
    assert (rc, len(lines)) == (1, 1) and lines[0].startswith("FAIL "), lines


def test_cli_check_proof_on_a_missing_file_is_one_fail_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A proof path that does not exist gives exit 1 and one FAIL line."""
    save_public_key(tmp_path / "engine.pub", ENGINE.public_key)
    rc = main(["audit", "check-proof", str(tmp_path / "nope.json"), "--pubkey",
               str(tmp_path / "engine.pub")])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1 and len(lines) == 1 and "cannot read proof file" in lines[0]


# -- hostile export lines -------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b'{"type": "audit", "body": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
    b'{"type": "audit", "body": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    b"[" * 1_000_000,
    b"\xff\xfe\x00",
    b'{"type": "audit_checkpoint", "size": 1e999}',
    b'{"type": "audit", "index": 99999999999999999999999999999}',
    b"null",
], ids=["deep-list", "deep-object", "unclosed", "binary", "huge-float", "huge-int", "null"])
def test_a_hostile_export_line_is_an_audit_error_naming_the_line(line: bytes) -> None:
    """read_jsonl never raises anything but AuditError, and names the bad line."""
    good = msgspec.json.encode(run_log(1)[0])
    with pytest.raises(AuditError, match=r"^line 2: not an audit record or checkpoint"):
        read_jsonl([good, line])


# -- verify over nothing ------------------------------------------------------------


def _cli_verify(capsys: pytest.CaptureFixture[str], *args: str,
                pub: Path) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(["audit", "verify", *args, "--pubkey", str(pub)])
    out = capsys.readouterr()
    return rc, (out.out + out.err).splitlines()


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    path = tmp_path / "engine.pub"
    save_public_key(path, ENGINE.public_key)
    return path


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_verify_of_an_empty_file_fails_unless_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pub: Path, content: str) -> None:
    """No records is exit 1 with one FAIL line; --allow-empty accepts it (exit 0)."""
    f = tmp_path / "audit.jsonl"
    f.write_text(content)
    rc, lines = _cli_verify(capsys, "--file", str(f), pub=pub)
    assert (rc, len(lines)) == (1, 1) and lines[0].startswith("FAIL empty:")
    rc, lines = _cli_verify(capsys, "--file", str(f), "--allow-empty", pub=pub)
    assert rc == 0 and lines == [f"ok   file {str(f)!r} holds no audit records (--allow-empty)"]


def test_verify_of_a_missing_file_is_one_fail_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pub: Path) -> None:
    """A --file that does not exist: exit 1 and one FAIL line, even with --allow-empty."""
    for extra in ((), ("--allow-empty",)):
        rc, lines = _cli_verify(capsys, "--file", str(tmp_path / "nope.jsonl"), *extra, pub=pub)
        assert (rc, len(lines)) == (1, 1), lines
        assert lines[0].startswith("FAIL cannot read file") and "No such file" in lines[0]


@pytest.mark.kafka
def test_verify_of_an_empty_or_missing_topic_fails_and_a_written_one_passes(
        kafka_bootstrap: str, new_topic: Any, capsys: pytest.CaptureFixture[str],
        pub: Path) -> None:
    """On the real broker: an empty topic fails (passes with --allow-empty), a topic that
    does not exist fails either way and is not created by looking, a topic holding a log
    passes."""
    from riskguard.connectors.kafka import list_partitions
    from riskguard.connectors.settings import KafkaSettings

    from riskguard.errors import BrokerError
    from tests.kafka_helpers import produce

    at = ("--brokers", kafka_bootstrap)
    empty = new_topic()
    rc, lines = _cli_verify(capsys, "--topic", empty, *at, pub=pub)
    assert (rc, len(lines)) == (1, 1) and lines[0].startswith("FAIL empty:")
    rc, lines = _cli_verify(capsys, "--topic", empty, *at, "--allow-empty", pub=pub)
    assert rc == 0 and len(lines) == 1

    missing = f"{empty}-missing"
    for extra in ((), ("--allow-empty",)):
        rc, lines = _cli_verify(capsys, "--topic", missing, *at, *extra, pub=pub)
        assert (rc, len(lines)) == (1, 1) and "does not exist" in lines[0], lines
    with pytest.raises(BrokerError, match="does not exist"):
        list_partitions(KafkaSettings(bootstrap=kafka_bootstrap), missing)

    written = new_topic()
    produce(kafka_bootstrap, written, [msgspec.json.encode(x) for x in run_log(10)])
    rc, lines = _cli_verify(capsys, "--topic", written, *at, pub=pub)
    assert rc == 0 and lines == [
        "ok   chain riskguard/p0: 10 records, 3 signed checkpoints, 10 attested"]


# -- chains continued after a restart ---------------------------------------------------


CFG = AuditConfig(checkpoint_every=4, checkpoint_interval_ns=3600 * S)


def _run(logic: AuditLogic, ds: list[object]) -> list[AuditItem]:
    return [out for d in ds for out in logic.on_event(d)]


def test_state_read_back_equals_the_writers_state_after_every_event() -> None:
    """After each decision, ChainResume over the log written so far gives exactly the
    writer's own snapshot (size, peaks, checkpoint position and times)."""
    logic = AuditLogic("riskguard/p0", ENGINE, CFG)
    log: list[AuditItem] = []
    for d in decisions(11):
        log += logic.on_event(d)
        assert resume_states(log, KEYS) == {"riskguard/p0": logic.snapshot()}


def test_a_chain_continued_from_the_topic_equals_an_uninterrupted_chain() -> None:
    """Stopped after any number of decisions and continued from what it wrote, the chain
    is the very same log as one that never stopped (and verifies as one chain)."""
    ds = decisions(11)
    whole = AuditLogic("riskguard/p0", ENGINE, CFG)
    expect = _run(whole, ds) + whole.on_eof()
    for cut in range(1, len(ds)):
        written = _run(AuditLogic("riskguard/p0", ENGINE, CFG), ds[:cut])
        state = continue_chain("riskguard/p0", None, resume_states(written, KEYS))
        second = AuditLogic("riskguard/p0", ENGINE, CFG, state)
        log = written + _run(second, ds[cut:]) + second.on_eof()
        assert log == expect
        assert verify_log(log, KEYS)["riskguard/p0"].records == len(ds)


def test_two_runs_without_resume_break_the_chain_and_with_resume_do_not() -> None:
    """The defect and its fix side by side: a second writer from index 0 makes verify fail
    with duplicate_or_reorder; a second writer resumed from the first's log does not."""
    first = _run(AuditLogic("riskguard/p0", ENGINE, CFG), decisions(6))
    fresh = AuditLogic("riskguard/p0", ENGINE, CFG)
    broken = first + _run(fresh, decisions(6)) + fresh.on_eof()
    with pytest.raises(AuditError, match="duplicate_or_reorder"):
        verify_log(broken, KEYS)
    with pytest.raises(AuditError, match="duplicate_or_reorder"):
        resume_states(broken, KEYS)  # nor would a third run continue it
    resumed = AuditLogic("riskguard/p0", ENGINE, CFG,
                         continue_chain("riskguard/p0", None, resume_states(first, KEYS)))
    good = first + _run(resumed, decisions(6)) + resumed.on_eof()
    report = verify_log(good, KEYS)["riskguard/p0"]
    assert (report.records, report.attested) == (12, 12)


def _damaged(kind: str) -> list[AuditItem]:
    log = run_log(10)
    rec_at = [i for i, x in enumerate(log) if isinstance(x, AuditRecord)]
    cp_at = [i for i, x in enumerate(log) if isinstance(x, AuditCheckpoint)]
    if kind == "gap":
        del log[rec_at[2]]
    elif kind == "reorder":
        log[rec_at[1]], log[rec_at[2]] = log[rec_at[2]], log[rec_at[1]]
    elif kind == "leaf":
        rec = log[rec_at[3]]
        assert isinstance(rec, AuditRecord)
        log[rec_at[3]] = msgspec.structs.replace(rec, kind="signal")
    elif kind == "forged_checkpoint":
        cp = log[cp_at[0]]
        assert isinstance(cp, AuditCheckpoint)
        log[cp_at[0]] = sign_checkpoint(cp.origin, cp.size, bytes.fromhex(cp.root), cp.ts,
                                        OUTSIDER, last_leaf=cp.last_leaf or "")
    elif kind == "wrong_root":
        cp = log[cp_at[1]]
        assert isinstance(cp, AuditCheckpoint)
        log[cp_at[1]] = sign_checkpoint(cp.origin, cp.size, b"\xab" * 32, cp.ts, ENGINE,
                                        last_leaf=cp.last_leaf or "")
    elif kind == "checkpoint_early":
        log.insert(rec_at[1], log[cp_at[0]])
    elif kind == "rollback":
        log.append(log[cp_at[0]])
    return log


@pytest.mark.parametrize(("kind", "reason"), [
    ("gap", "gap"), ("reorder", "gap"), ("leaf", "leaf_hash_mismatch"),
    ("forged_checkpoint", "bad_checkpoint"), ("wrong_root", "checkpoint_root_mismatch"),
    ("checkpoint_early", "checkpoint_out_of_place"), ("rollback", "checkpoint_rollback"),
])
def test_a_chain_that_does_not_verify_as_read_is_not_continued(kind: str, reason: str) -> None:
    """Every damage verify_log catches, ChainResume catches too: nothing is continued."""
    with pytest.raises(AuditError, match=reason):
        resume_states(_damaged(kind), KEYS)


def test_only_the_origins_chains_are_followed() -> None:
    """Chains of another origin on the topic are neither checked nor continued."""
    other = run_log(3)
    foreign = [msgspec.structs.replace(x, chain="other/p0") if isinstance(x, AuditRecord)
               else msgspec.structs.replace(x, origin="other/p0") for x in other]
    assert set(resume_states([*foreign, *run_log(3)], KEYS, origin="riskguard")) == {
        "riskguard/p0"}
    assert ChainResume(KEYS, origin="riskguard").states() == {}


def test_a_restored_state_wins_unless_the_topic_is_ahead_of_it() -> None:
    """continue_chain: restored and not behind the topic -> restored; behind -> the topic;
    same size but another tree -> AuditError; nothing anywhere -> a new chain."""
    ds = decisions(9)
    logic = AuditLogic("c", ENGINE, CFG)
    _run(logic, ds[:4])
    at4 = logic.snapshot()
    written = _run(logic, ds[4:])
    on_topic = resume_states(_run(AuditLogic("c", ENGINE, CFG), ds[:4]) + written, KEYS)
    assert continue_chain("c", at4, on_topic) == on_topic["c"]          # topic ahead
    at9 = logic.snapshot()
    assert continue_chain("c", at9, on_topic) is at9                     # same point
    assert continue_chain("c", at9, resume_states([], KEYS)) is at9     # topic empty
    shorter = resume_states(_run(AuditLogic("c", ENGINE, CFG), ds[:2]), KEYS)
    assert continue_chain("c", at4, shorter) is at4                      # topic behind
    other = resume_states(_run(AuditLogic("c", ENGINE, CFG), decisions(10)[1:]), KEYS)
    assert other["c"].size == at9.size
    with pytest.raises(AuditError, match="restored_state_mismatch"):
        continue_chain("c", at9, other)
    assert continue_chain("c", None, {}) is None
    copy_ = continue_chain("c", None, on_topic)
    assert copy_ == on_topic["c"] and copy_ is not on_topic["c"]
    assert copy_ is not None and copy_.peaks is not on_topic["c"].peaks


def test_the_audit_operator_continues_chains_it_is_given() -> None:
    """Two dataflow runs of audit_log, the second given the first's chains (two chains,
    two workers): the outputs together verify, each chain numbered without a break."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, cluster_main
    from riskguard.operators.audit.ops import audit_log

    cfg = AuditConfig(checkpoint_every=3, partitions=2)

    def run(resume: dict[str, AuditState] | None) -> list[AuditItem]:
        flow = Dataflow("audit_twice")
        out: list[AuditItem] = []
        src = op.input("in", flow, TestingSource(decisions(12)))
        op.output("out", audit_log("audit", src, signer=ENGINE, config=cfg, resume=resume),
                  TestingSink(out))
        cluster_main(flow, [], 0, worker_count_per_proc=2)
        return out

    first = run(None)
    second = run(resume_states(first, KEYS, origin="riskguard"))
    both = first + second
    report = verify_log(both, KEYS)
    assert sorted(report) == ["riskguard/p0", "riskguard/p1"]
    assert sum(r.records for r in report.values()) == 24
    for name in report:
        idx = [x.index for x in both if isinstance(x, AuditRecord) and x.chain == name]
        assert idx == list(range(len(idx)))


# -- the guard on the real broker ------------------------------------------------------


def _audit_chains(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Each chain's record indices on the audit topic, in topic order."""
    from riskguard.connectors.audit_tail import read_items
    from riskguard.connectors.settings import KafkaSettings

    out: dict[str, list[int]] = {}
    for it in read_items(KafkaSettings(bootstrap=bootstrap), topic):
        if isinstance(it, AuditRecord):
            out.setdefault(it.chain, []).append(it.index)
    return out


def _verify_topic(run: Any) -> int:
    return main(["audit", "verify", "--topic", run.topic("audit"), "--brokers", run.bootstrap,
                 "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file)])


@pytest.mark.kafka
def test_the_guard_refuses_to_start_on_an_audit_chain_that_does_not_verify(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """build_flow reads the audit topic back; a chain of its origin numbered 0, 1, 2, 0, ...
    (two writers from index 0) stops the start with one AuditError line, and so does a
    missing audit topic (BrokerError)."""
    from riskguard.connectors.topics import TopicSpec, create_topics, topic_name
    from riskguard.dataflows.demo import prepare_run
    from riskguard.dataflows.guard import build_flow, load_guard_config

    from riskguard.errors import BrokerError
    from tests.kafka_helpers import produce

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"r{uuid.uuid4().hex[:8]}")
    records = [msgspec.json.encode(x) for x in run_log(3) if isinstance(x, AuditRecord)]
    # one chain, one partition, as the guard writes it (keyed by chain)
    produce(kafka_bootstrap, run.topic("audit"), records + records, partition=0)
    cfg, digest = load_guard_config(run.config)
    with pytest.raises(AuditError) as err:
        build_flow(cfg, digest)
    assert "duplicate_or_reorder" in str(err.value) and "\n" not in str(err.value)
    gone = msgspec.structs.replace(cfg, env=f"x{uuid.uuid4().hex[:8]}")
    create_topics({"bootstrap.servers": kafka_bootstrap},
                  [TopicSpec(topic_name(gone.env, "commands"), partitions=1)])
    with pytest.raises(BrokerError, match="does not exist"):
        build_flow(gone, digest)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_guard_run_twice_on_the_same_topics_writes_one_chain(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A second run (no recovery directory) continues the first's chain: `audit verify` over
    the topic passes, the chain numbered 0..n-1 without a break, the second run's records
    after the first's."""
    from riskguard.dataflows.demo import prepare_run, start_guard

    from tests.test_guard_e2e import finish_guard

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"r{uuid.uuid4().hex[:8]}")
    finish_guard(start_guard(run))
    first = _audit_chains(run.bootstrap, run.topic("audit"))
    assert first and all(ix for ix in first.values())
    finish_guard(start_guard(run))
    both = _audit_chains(run.bootstrap, run.topic("audit"))
    assert both.keys() == first.keys()
    for name, ix in both.items():
        assert ix == list(range(len(ix))) and len(ix) > len(first[name]), name
    assert _verify_topic(run) == 0


@pytest.mark.kafka
@pytest.mark.slow
def test_a_guard_killed_and_resumed_from_recovery_keeps_one_chain(
        kafka_bootstrap: str, tmp_path: Path, recovery_dir: Any) -> None:
    """SIGKILL once audit records are on the topic, resume from the recovery directory: the
    records written after the last snapshot are not written again under the same indices
    (the topic, being ahead of the snapshot, wins), and `audit verify` passes."""
    from riskguard.dataflows.demo import prepare_run, start_guard

    from tests.kafka_helpers import consume_all
    from tests.test_guard_e2e import finish_guard

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"k{uuid.uuid4().hex[:8]}")
    args = ("-r", str(recovery_dir(1)), "-s", "1", "-b", "10")
    first = start_guard(run, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if consume_all(kafka_bootstrap, run.topic("audit"), idle_s=0.2, timeout_s=1.0):
            break
    assert first.poll() is None, "the run ended before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    finish_guard(start_guard(run, *args))
    for name, ix in _audit_chains(run.bootstrap, run.topic("audit")).items():
        assert ix == list(range(len(ix))), name
    assert _verify_topic(run) == 0
