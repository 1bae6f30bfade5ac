"""``riskguard audit verify``: what verification refuses, and the CLI around it."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from riskguard.operators.audit import AuditConfig, AuditLogic, verify_log
from riskguard.schemas.audit import GENESIS_LEAF, AuditCheckpoint, AuditRecord
from signing_fixtures import ENGINE

from riskguard.errors import AuditError

ROOT = Path(__file__).resolve().parent.parent
KEYS = {ENGINE.key_id: ENGINE.public_key}
Log = list[AuditRecord | AuditCheckpoint]


def chain_log(n: int, every: int = 4, chain: str = "riskguard/p0") -> Log:
    logic = AuditLogic(chain, ENGINE, AuditConfig(checkpoint_every=every))
    out: Log = [x for i in range(n) for x in logic.on_event({"n": i})]
    return out + logic.on_eof()


def reason(items: Log, **kw: object) -> str:
    with pytest.raises(AuditError) as err:
        verify_log(items, KEYS, **kw)  # type: ignore[arg-type]
    return str(err.value.reason).split(":")[0]


def test_the_runbook_names_failure_codes_verification_gives() -> None:
    """The replay runbook's example codes are ones ``verify_log`` reports: a deleted
    record is a ``gap``."""
    text = (ROOT / "ops/runbooks/replay-audit-log.md").read_text()
    named = re.search(r"record \(for example `(\w+)` or `(\w+)`\)", text)
    assert named is not None
    log = chain_log(4)
    del log[1]
    assert reason(log) == "gap"
    source = (ROOT / "operators/audit/verify.py").read_text()
    for code in named.groups():
        assert f'"{code}:' in source or f'f"{code}:' in source, code


def _write(path: Path, items: Log) -> str:
    path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in items))
    return str(path)


def _pubkey(tmp_path: Path) -> str:
    pub = tmp_path / "engine.pub"
    pub.write_text(ENGINE.public_key.hex())
    return str(pub)


@pytest.mark.parametrize("size", ["\u00b2", "\u0663", "-1", "", "8x"])
def test_expect_size_takes_ascii_digits_only(tmp_path: Path, size: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``--expect-size CHAIN=²`` (a digit to str.isdigit, not to int) is a usage error."""
    from riskguard.cli import main

    log = _write(tmp_path / "audit.jsonl", chain_log(8))
    code = main(["audit", "verify", "--file", log, "--pubkey", _pubkey(tmp_path),
                 "--expect-size", f"riskguard/p0={size}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--expect-size" in err and "bug" not in err


@pytest.mark.parametrize("origin", ["risk guard", "r" * 27, "a/b", "a@b@c", "", "x\n"])
def test_an_origin_that_would_make_unreadable_chain_names_is_refused(origin: str) -> None:
    """``[audit] origin`` is constrained so that ``<origin>@<replica id>/p<n>`` is a
    valid chain name: an origin with a space or past 26 characters made records no
    reader could decode."""
    from riskguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit\.origin"):
        AuditConfig(origin=origin)


def test_the_longest_origin_replica_id_and_partition_still_read_back() -> None:
    """The longest names the config takes decode as audit items."""
    from riskguard.operators.audit import decode_item

    cfg = AuditConfig(origin="o" * 26 + "@" + "r" * 32, partitions=1000, checkpoint_every=1)
    items = AuditLogic(f"{cfg.origin}/p{cfg.partitions - 1}", ENGINE, cfg).on_event({"n": 1})
    assert [decode_item(msgspec.json.encode(x), "line") for x in items] == items
    from riskguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit\.partitions"):
        AuditConfig(partitions=1001)


def test_audit_origin_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from riskguard.cli import main

    with pytest.raises(SystemExit) as out:
        main(["run", "--config", "missing.toml", "--audit-origin", "risk guard"])
    assert out.value.code == 2
    assert "--audit-origin" in capsys.readouterr().err


def _lines(items: Log) -> list[bytes]:
    return [msgspec.json.encode(x) for x in items]


@pytest.mark.parametrize("edit", ["added field", "repeated key", "repeated body key",
                                  "added checkpoint field"])
def test_verification_reads_each_line_exactly(edit: str) -> None:
    """A line with a field its type lacks, or a key twice (the decoder keeps the last,
    a reader may see the first), is not what the leaf hash or signature vouches for."""
    import json

    from riskguard.operators.audit import decode_item, read_jsonl

    raw = _lines(chain_log(4))
    if edit == "added field":
        doc = json.loads(raw[0])
        doc["approved_by"] = "CFO"
        raw[0] = json.dumps(doc).encode()
    elif edit == "repeated key":
        raw[1] = raw[1].replace(b'{"type":"audit",', b'{"type":"audit","kind":"breach",', 1)
    elif edit == "repeated body key":
        raw[1] = raw[1].replace(b'"body":{', b'"body":{"repr":"{}",', 1)
    else:
        raw[4] = raw[4].replace(b'{"type":"audit_checkpoint",',
                                b'{"type":"audit_checkpoint","note":"x",', 1)
    assert verify_log(read_jsonl(raw, strict=False), KEYS)  # what the hash covers verifies
    with pytest.raises(AuditError, match=r"line [125]"):
        read_jsonl(raw)
    where = next(n for n, line in enumerate(raw) if line != _lines(chain_log(4))[n])
    decode_item(raw[where], "topic")  # a guard's read takes newer writers' fields
    with pytest.raises(AuditError):
        decode_item(raw[where], "topic", strict=True)


def test_verify_cli_fails_an_edited_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from riskguard.cli import main

    raw = _lines(chain_log(4))
    raw[2] = raw[2].replace(b'{"type":"audit",', b'{"type":"audit","approved_by":"CFO",', 1)
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"\n".join(raw) + b"\n")
    assert main(["audit", "verify", "--file", str(log), "--pubkey", _pubkey(tmp_path)]) == 1
    assert "line 3" in capsys.readouterr().out


def _timed_log(signer: object, ts: int, chain: str = "riskguard/p0") -> Log:
    from riskguard.schemas.market import IndexPrice

    logic = AuditLogic(chain, signer, AuditConfig(checkpoint_every=2))  # type: ignore[arg-type]
    return [x for i in range(2) for x in logic.on_event(IndexPrice(
        id=f"i{i}", venue="oracle", instrument="BTC-USD", ts=ts, price=1.0))]


@pytest.mark.parametrize(("offset_s", "ok"), [(-50, True), (-10, False), (3600, False),
                                               (-200, False)])
def test_a_checkpoint_outside_its_keys_validity_window_fails(
        tmp_path: Path, offset_s: int, ok: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """With ``--trust``, a checkpoint's key is judged at the checkpoint's time: one
    signed after the key's ``not_after`` (or before its ``not_before``) fails."""
    from signing_fixtures import EXPIRED, T0, S, write_signed_trust

    from riskguard.cli import main

    trust, roots = write_signed_trust(tmp_path)
    log = _write(tmp_path / "audit.jsonl", _timed_log(EXPIRED, T0 + offset_s * S))
    code = main(["audit", "verify", "--file", log, "--trust", str(trust),
                 "--roots", str(roots)])
    out = capsys.readouterr().out
    assert code == (0 if ok else 1), out
    if not ok:
        assert "bad_checkpoint" in out


def test_a_repeated_checkpoint_fails_verification_and_a_start_ignores_it() -> None:
    """The writer signs each size once: a copy of a checkpoint (even the last one, over
    the same root) fails ``verify_log``; a guard continuing its chain is not stopped by
    it."""
    from test_audit import resume_states

    log = chain_log(8)
    last = log[-1]
    assert isinstance(last, AuditCheckpoint)
    assert reason([*log, last]) == "repeated_checkpoint"
    first = next(x for x in log if isinstance(x, AuditCheckpoint))
    assert reason([*log[:5], first, *log[5:]]) == "repeated_checkpoint"
    assert resume_states([*log, last], KEYS)["riskguard/p0"].size == 8



def _unsigned_records(chain: str, start: int, stop: int, prev: str = GENESIS_LEAF) -> Log:
    """Records anyone can write: correct leaf hashes, linked from ``prev``, no
    checkpoint."""
    from riskguard.operators.audit import record_leaf

    out: Log = []
    for i in range(start, stop):
        rec = AuditRecord(record_id=f"{chain}:{i}", chain=chain, index=i, ts=i,
                          kind="command", operator="mitigation", operator_version="t",
                          config_hash="0" * 64, input_digest="0" * 64, body={"n": i},
                          prev_leaf=prev)
        rec = msgspec.structs.replace(rec, leaf_hash=record_leaf(rec).hex())
        prev = rec.leaf_hash or ""
        out.append(rec)
    return out


def test_expect_size_counts_attested_records_only(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A log truncated at a checkpoint with unsigned records appended in place of the
    lost ones fails ``--expect-size``, even with ``--allow-tail``."""
    from riskguard.cli import main

    real = chain_log(8)
    cut = next(i for i, x in enumerate(real) if isinstance(x, AuditCheckpoint)) + 1
    last = real[cut - 2]
    assert isinstance(last, AuditRecord) and last.leaf_hash is not None
    forged = real[:cut] + _unsigned_records("riskguard/p0", 4, 8, last.leaf_hash)
    assert reason(forged, allow_unattested_tail=True,
                  expected_sizes={"riskguard/p0": 8}) == "truncated"
    log = _write(tmp_path / "audit.jsonl", forged)
    args = ["audit", "verify", "--file", log, "--pubkey", _pubkey(tmp_path), "--allow-tail"]
    assert main([*args, "--expect-size", "riskguard/p0=8"]) == 1
    assert "expected 8 attested records; found 4" in capsys.readouterr().out
    assert main([*args, "--expect-size", "riskguard/p0=4"]) == 0
    assert "4 after the last checkpoint, not verified" in capsys.readouterr().out


def test_a_chain_with_no_checkpoint_is_reported_as_unverified(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under ``--allow-tail`` a chain with no signed checkpoint passes only as a tail,
    and its line says nothing of it is verified; ``--expect-size`` on it fails."""
    from riskguard.cli import main

    log = _write(tmp_path / "audit.jsonl",
                 chain_log(8) + _unsigned_records("riskguard/p9", 0, 3))
    args = ["audit", "verify", "--file", log, "--pubkey", _pubkey(tmp_path), "--allow-tail"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "chain riskguard/p9: 3 records, 0 signed checkpoints, 0 attested; NO signed " \
           "checkpoint: none of its records is verified" in out
    assert "chain riskguard/p0: 8 records, 2 signed checkpoints, 8 attested\n" in out
    assert main([*args, "--expect-size", "riskguard/p9=1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def _replica_log(chain: str, signer: object) -> Log:
    logic = AuditLogic(chain, signer, AuditConfig(checkpoint_every=2))  # type: ignore[arg-type]
    return [x for i in range(4) for x in logic.on_event({"n": i})]


def test_one_replicas_key_cannot_vouch_for_anothers_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Replica b's key (engine-2) signing a whole chain of replica a: fails with the
    replicas' issuers given; without them, fails when b's own chains are in the log
    too (one name signs one replica's chains)."""
    from signing_fixtures import ENGINE2, write_signed_trust

    from riskguard.cli import main

    trust, roots = write_signed_trust(tmp_path)
    keys = ["--trust", str(trust), "--roots", str(roots)]
    forged_a = _replica_log("riskguard@a/p0", ENGINE2)
    real_b = _replica_log("riskguard@b/p0", ENGINE2)
    real_a = _replica_log("riskguard@a/p0", ENGINE)
    both = _write(tmp_path / "both.jsonl", real_b + forged_a)
    only = _write(tmp_path / "only.jsonl", forged_a)
    good = _write(tmp_path / "good.jsonl", real_a + real_b)
    named = ["--issuer", "a=engine-1", "--issuer", "b=engine-2"]

    def verify(log: str, *extra: str) -> tuple[int, str]:
        code = main(["audit", "verify", "--file", log, *keys, *extra])
        return code, capsys.readouterr().out

    assert verify(both)[0] == 1  # engine-2 signs b's chains: not a's too
    code, out = verify(only, *named)
    assert code == 1 and "wrong_signer" in out and "issuer is 'engine-1'" in out
    code, out = verify(only, "--issuer", "b=engine-2")
    assert code == 1 and "unknown_replica" in out
    assert verify(good, *named)[0] == 0
    config = tmp_path / "guard.toml"
    config.write_text('[replica]\nid = "a"\npeers = ["a", "b"]\n'
                      'issuers = { a = "engine-1", b = "engine-2" }\n')
    assert verify(only, "--config", str(config))[0] == 1
    assert verify(good, "--config", str(config))[0] == 0


def test_check_proof_with_issuers_refuses_another_replicas_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from riskguard.operators.audit import prove
    from signing_fixtures import ENGINE2, write_signed_trust

    from riskguard.cli import main

    trust, roots = write_signed_trust(tmp_path)
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(prove(_replica_log("riskguard@a/p0", ENGINE2),
                                      "riskguard@a/p0:1")))
    args = ["audit", "check-proof", str(proof), "--trust", str(trust), "--roots", str(roots)]
    assert main(args) == 0  # any checkpoint key vouches without the issuers
    capsys.readouterr()
    assert main([*args, "--issuer", "a=engine-1", "--issuer", "b=engine-2"]) == 1
    assert "wrong_signer" in capsys.readouterr().out
    assert main([*args, "--issuer", "a=engine-2"]) == 0
    assert main(["audit", "check-proof", str(proof), "--pubkey", _pubkey(tmp_path),
                 "--issuer", "a=engine-1"]) == 2


def _rewritten(rec: AuditRecord, **change: object) -> AuditRecord:
    """``rec`` with ``change`` made and its own leaf hash right again (what anyone who
    can write the topic can do)."""
    from riskguard.operators.audit import record_leaf

    fake = msgspec.structs.replace(rec, leaf_hash=None, **change)
    return msgspec.structs.replace(fake, leaf_hash=record_leaf(fake).hex())


def _attested(items: Log) -> tuple[list[int], dict[str, str]]:
    """What an attestor believes of ``items``: the indices attested, and the chains
    reported."""
    from riskguard.operators.audit.attest import Attestor

    att = Attestor(KEYS)
    out = [x.index for it in items for x in att.on_item(it) if isinstance(x, AuditRecord)]
    return out, att.state.broken


def test_a_record_rewritten_with_its_own_hash_right_breaks_the_next_ones_link() -> None:
    """Record 5 altered, its leaf hash recomputed: record 6 no longer links to it.
    ``verify_log`` names record 6 at once (not the checkpoint three records later);
    the attestor believes the records of the first checkpoint and none after."""
    log = chain_log(8)
    at = next(i for i, x in enumerate(log) if isinstance(x, AuditRecord) and x.index == 5)
    log[at] = _rewritten(log[at], kind="signal")  # type: ignore[arg-type]
    with pytest.raises(AuditError) as err:
        verify_log(log, KEYS)
    assert (str(err.value.reason).split(":")[0], err.value.index) == ("broken_link", 6)
    indices, broken = _attested(log)
    assert indices == [0, 1, 2, 3]
    assert "record 5" in broken["riskguard/p0"]


def test_records_reordered_and_renumbered_break_the_links() -> None:
    """Records 1 and 2 swapped, each given the other's index (and record id) and its
    leaf hash recomputed: each still links to the record it followed when written, so
    record 1 does not link to record 0. Refused by ``verify_log`` and the attestor."""
    log = chain_log(8)
    one, two = log[1], log[2]
    assert isinstance(one, AuditRecord) and isinstance(two, AuditRecord)
    log[1] = _rewritten(two, index=1, record_id=one.record_id)
    log[2] = _rewritten(one, index=2, record_id=two.record_id)
    with pytest.raises(AuditError) as err:
        verify_log(log, KEYS)
    assert (str(err.value.reason).split(":")[0], err.value.index) == ("broken_link", 1)
    indices, broken = _attested(log)
    assert indices == []
    assert "record 2" in broken["riskguard/p0"]


def test_a_log_of_the_format_before_links_fails_closed() -> None:
    """A record without ``prev_leaf`` or a checkpoint without ``last_leaf`` (written
    before records were linked) verifies nowhere: ``verify_log`` and a guard reading
    its chain back refuse them, and the attestor believes none of it."""
    from test_audit import resume_states

    log = chain_log(4)
    first = log[0]
    assert isinstance(first, AuditRecord)
    unlinked = [_rewritten(first, prev_leaf=None), *log[1:]]
    assert reason(unlinked) == "unlinked"
    with pytest.raises(AuditError, match="unlinked"):
        resume_states(unlinked, KEYS)
    assert _attested(unlinked)[0] == []
    cp = log[-1]
    assert isinstance(cp, AuditCheckpoint)
    old = msgspec.structs.replace(cp, last_leaf=None)  # as signed before: the body lacked it
    assert reason([*log[:-1], old]) == "bad_checkpoint"
    indices, broken = _attested([*log[:-1], old])
    assert indices == [] and "names no last leaf" in broken["riskguard/p0"]


def test_a_checkpoint_signing_another_last_leaf_is_refused() -> None:
    """The writer's key signs the true root with a last leaf that is not its last
    record's: ``verify_log`` says so, and the attestor, whose walk back starts from that
    leaf, finds no record to start from and believes none."""
    from riskguard.operators.audit.chain import sign_checkpoint

    log = chain_log(4)
    cp = log[-1]
    assert isinstance(cp, AuditCheckpoint)
    log[-1] = sign_checkpoint(cp.origin, cp.size, bytes.fromhex(cp.root), cp.ts, ENGINE,
                              last_leaf="ab" * 32)
    with pytest.raises(AuditError) as err:
        verify_log(log, KEYS)
    assert (str(err.value.reason).split(":")[0], err.value.index) == (
        "checkpoint_last_leaf_mismatch", 3)
    indices, broken = _attested(log)
    assert indices == [] and "record 3" in broken["riskguard/p0"]
