"""Coverage-guided fuzzing (atheris) of the parsers and verifiers, a short run per target.

Each target (``tests/fuzz/harness.py``) runs a few thousand inputs in its own
process, from the seed corpus ``tests/fuzz/seeds.py`` writes; a broken
invariant (an exception riskguard does not document, or an acceptance it must
never make) makes libFuzzer write a crash file and exit non-zero. The runs use
a fixed seed, so a failure here reproduces. ``bench/fuzz.py`` runs the same
targets for a million inputs each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

atheris = pytest.importorskip(
    "atheris", reason="atheris ships wheels for CPython 3.11-3.13 on Linux x86_64 only")

FUZZ = Path(__file__).resolve().parent / "fuzz"
CRASHES = FUZZ / "crashes"
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

import harness  # noqa: E402  (tests/fuzz/ is on sys.path only from here)
import seeds  # noqa: E402

# Inputs per target: each run takes about 5-20 s here (start-up included), far below
# the suite's budget; the slow ones sign or verify Ed25519, or load a whole config.
RUNS = {"codec": 30_000, "envelope": 30_000, "resign": 6_000, "trust": 2_000,
        "config": 1_500, "audit": 20_000, "proof": 20_000, "formats": 5_000}
MAX_LEN = {"codec": 8192, "envelope": 4096, "resign": 2048, "trust": 8192,
           "config": 32768, "audit": 16384, "proof": 8192, "formats": 4096}


KNOWN_OPEN: dict[str, str] = {}
"""Saved reproducers of failures not fixed yet, and why. While one still fails, its
replay and its target's short run are expected to fail (xfail); once fixed, both run
as usual (drop the entry then)."""


def still_open(target: str) -> list[str]:
    """The known-open reproducers of ``target`` that still break it."""
    out = []
    for name, why in KNOWN_OPEN.items():
        if name.split("-", 1)[0] != target or not (CRASHES / name).exists():
            continue
        try:
            harness.TARGETS[target]((CRASHES / name).read_bytes())
        except Exception:
            out.append(f"{name}: {why}")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return seeds.write_corpus(tmp_path_factory.mktemp("corpus"))


def fuzz(name: str, workdir: Path, corpus_dir: Path, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(FUZZ / "targets.py"), name, *args,
           f"-artifact_prefix={workdir}/", str(corpus_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                          cwd=workdir, env={**os.environ, **(env or {})})


def artifacts(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.iterdir()
                  if p.name.startswith(("crash-", "timeout-", "oom-", "leak-", "slow-unit-")))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(harness.TARGETS))
def test_a_short_fuzz_run_breaks_no_invariant(name: str, corpus: dict[str, Path],
                                              tmp_path: Path) -> None:
    """A few thousand coverage-guided inputs, from the seeds: exit 0 and no crash file."""
    if open_ := still_open(name):
        pytest.xfail("; ".join(open_))
    work = tmp_path / "work"
    work.mkdir()
    runs = RUNS[name]
    words = seeds.write_dictionary(tmp_path / "dict", name)
    r = fuzz(name, work, corpus[name], f"-runs={runs}", f"-max_len={MAX_LEN[name]}",
             f"-dict={words}", "-seed=1", "-timeout=60", "-rss_limit_mb=4096",
             "-print_final_stats=1")
    out = r.stdout + r.stderr
    found = artifacts(work)
    assert r.returncode == 0 and not found, (
        f"{name}: exit {r.returncode}, {[p.name for p in found]}\n{out[-6000:]}")
    assert f"stat::number_of_executed_units: {runs}" in out, out[-3000:]


def reproducers() -> Iterator[Any]:
    for path in sorted(CRASHES.glob("*")):
        if path.name.split("-", 1)[0] in harness.TARGETS:
            yield pytest.param(path, id=path.name)


@pytest.mark.parametrize("path", list(reproducers()))
def test_every_saved_reproducer_now_passes_its_target(path: Path) -> None:
    """Each input a fuzzer once broke an invariant with (named ``<target>-...``)."""
    target = path.name.split("-", 1)[0]
    if path.name in KNOWN_OPEN and still_open(target):
        pytest.xfail(KNOWN_OPEN[path.name])
    harness.TARGETS[target](path.read_bytes())


def test_a_broken_invariant_in_a_fuzz_run_exits_non_zero_with_the_input(
        tmp_path: Path) -> None:
    """The runner really reports what a target raises: replaying an input through a
    target that raises writes no artifact but exits non-zero naming the exception."""
    bad = tmp_path / "input"
    bad.write_bytes(b"not a command")
    r = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:];"
         "import harness; harness.TARGETS['resign'] = harness.broken_for_tests;"
         "import runpy; runpy.run_path(sys.argv[0] + '/targets.py', run_name='__main__')",
         str(FUZZ), "resign", str(bad)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert r.returncode != 0
    assert "FalseAccept" in r.stdout + r.stderr


def test_keep_going_records_each_distinct_failure_once_and_every_occurrence(
        tmp_path: Path) -> None:
    """The bench's mode: the first input of each failure kept, every one counted."""
    run = harness.keep_going("resign", harness.broken_for_tests, tmp_path)
    run(b"a")
    run(b"b")
    saved = sorted(p.name for p in tmp_path.iterdir() if p.name != "findings.tsv")
    assert len(saved) == 1 and saved[0].startswith("resign-false_accept-"), saved
    assert (tmp_path / saved[0]).read_bytes() == b"a"
    lines = (tmp_path / "findings.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["resign", "false_accept"]] * 2


def test_the_seed_corpus_is_the_same_every_time(tmp_path: Path) -> None:
    a = seeds.write_corpus(tmp_path / "a")
    b = seeds.write_corpus(tmp_path / "b")
    for name in harness.TARGETS:
        files_a = {p.name: p.read_bytes() for p in a[name].iterdir()}
        assert files_a, name
        assert files_a == {p.name: p.read_bytes() for p in b[name].iterdir()}


def test_every_seed_passes_its_target() -> None:
    for name, inputs in seeds.all_seeds().items():
        for data in inputs:
            harness.TARGETS[name](data)


def test_the_seeds_reach_acceptance_so_the_oracles_are_exercised() -> None:
    """Signed seeds that verify, logs that verify, proofs that check: the fuzzer starts
    from inputs the verifiers accept, and mutates them from there."""
    from riskguard.operators.audit import check_proof, read_jsonl, verify_log
    from riskguard.operators.signing.crypto import decode_envelope

    from riskguard.errors import VerificationError

    world = seeds.audit_world()
    accepted = 0
    for data in seeds.envelope_seeds():
        env = decode_envelope(data)
        try:
            harness._TRUST.verify(env, expected_payload_type=env.payload_type,
                                  audience=seeds.AUD, now_ns=seeds.T0)
        except VerificationError:
            continue
        accepted += 1
    assert accepted >= 6
    for log in seeds.audit_seeds(world)[::2]:
        verify_log(read_jsonl(log.splitlines()), seeds.AUDIT_KEYS)
    for doc in world.proofs:
        check_proof(doc, seeds.AUDIT_KEYS)


def test_the_envelope_oracle_refuses_an_accepted_envelope_nobody_signed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A verifier that accepted everything would be caught: the oracle checks the
    signatures itself, with cryptography."""
    from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope
    from riskguard.operators.signing.trust import VerifiedMessage
    from riskguard.schemas.commands import MitigationCommand, Signature, SignedEnvelope
    from signing_fixtures import command

    class AcceptsAll:
        def check_ahead(self, *_args: Any) -> None:
            pass

        def verify(self, env: Any, **_kw: Any) -> Any:
            return VerifiedMessage(
                payload_type=env.payload_type, payload=env.payload, issuer="engine-1",
                signers=(), message=msgspec.json.decode(env.payload, type=MitigationCommand))

    forged = SignedEnvelope(payload_type=PAYLOAD_COMMAND,
                            payload=msgspec.json.encode(command(99)),
                            signatures=[Signature(key_id="x", sig=bytes(64))])
    monkeypatch.setattr(harness, "_TRUST", AcceptsAll())
    with pytest.raises(harness.FalseAccept, match="nobody signed"):
        harness.fuzz_envelope(encode_envelope(forged))


def test_the_proof_oracle_refuses_an_accepted_proof_of_another_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A check_proof that accepted everything would be caught too."""
    import json

    doc = json.loads(json.dumps(seeds.audit_world().proofs[0]))
    doc["record"]["body"] = {"forged": True}
    monkeypatch.setattr(harness, "check_proof", lambda _doc, _keys: None)
    with pytest.raises(harness.FalseAccept, match="record"):
        harness.fuzz_proof(json.dumps(doc).encode())


def test_the_json_mutator_changes_structure_deterministically() -> None:
    """Same seed, same output; outputs differ from the input and mostly stay JSON-like;
    what is not JSON is left to libFuzzer's own mutations (None)."""
    doc = seeds.proof_seeds(seeds.audit_world())[0]
    outs = [harness.mutate_json(doc, s) for s in range(40)]
    assert outs == [harness.mutate_json(doc, s) for s in range(40)]
    assert all(o is not None for o in outs)
    assert sum(o != doc for o in outs if o is not None) >= 30
    assert harness.mutate_json(b"not json", 1) is None
    line_mutator = harness.MUTATORS["audit"]
    log = seeds.audit_seeds(seeds.audit_world())[0]
    assert line_mutator(log, 7) is not None
    assert len((line_mutator(log, 7) or b"").split(b"\n")) == len(log.split(b"\n"))
