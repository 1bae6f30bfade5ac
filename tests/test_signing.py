"""The signing step: seq assignment, idempotent re-emission, resume, and fail-closed."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from riskguard.operators.signing import SignConfig, SignLogic, decode_command, sign_builder
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer
from riskguard.operators.signing.ops import sign_commands
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.commands import SignedEnvelope
from signing_fixtures import AUD, ENGINE, T0, command, trust_store

from riskguard.errors import ConfigError, SigningError


def test_seq_is_monotonic_per_issuer_starting_at_one_and_issuer_is_stamped() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    outs = [logic.on_event(command(i, issuer="someone-else", seq=0))[0] for i in range(1, 4)]
    cmds = [decode_command(e) for e in outs if isinstance(e, SignedEnvelope)]
    assert [c.seq for c in cmds] == [1, 2, 3]
    assert {c.issuer for c in cmds} == {"engine-1"}


def test_signed_envelopes_verify_against_the_trust_file() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    [env] = logic.on_event(command(7))
    assert isinstance(env, SignedEnvelope)
    out = trust_store().verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=AUD,
                               now_ns=T0)
    assert out.message.seq == 1  # type: ignore[union-attr]


def test_reemitted_identical_command_keeps_command_id_and_seq_and_bytes() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    first = logic.on_event(command(1))
    logic.on_event(command(2))
    again = logic.on_event(command(1))
    assert again == first
    assert logic.snapshot().last_seq == 2


def test_same_command_id_with_different_content_is_a_dead_letter_not_a_new_seq() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    logic.on_event(command(1))
    [dl] = logic.on_event(command(1, ttl=5 * 60 * 1_000_000_000))
    assert isinstance(dl, DeadLetter)
    assert dl.reason == "command_id_reuse"
    assert logic.snapshot().last_seq == 1


def test_resumed_logic_continues_the_sequence_and_never_reuses_a_seq() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    for i in range(1, 4):
        logic.on_event(command(i))
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    resumed = SignLogic(ENGINE, SignConfig(), snap)
    [env] = resumed.on_event(command(4))
    assert decode_command(env).seq == 4  # type: ignore[arg-type]


def test_snapshot_holds_no_key_material() -> None:
    logic = SignLogic(ENGINE, SignConfig())
    logic.on_event(command(1))
    blob = pickle.dumps(logic.snapshot())
    from signing_fixtures import seed
    assert seed("engine-1") not in blob
    assert b"Signer" not in blob


def test_non_command_input_goes_to_dead_letters() -> None:
    [dl] = SignLogic(ENGINE, SignConfig()).on_event({"not": "a command"})
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.expected, dl.found) == ("validation", "MitigationCommand", "dict")


def test_missing_or_invalid_key_stops_before_anything_is_emitted(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot be read"):
        Signer.from_file(tmp_path / "nope.pem")
    with pytest.raises(SigningError, match="must be a riskguard Signer"):
        SignLogic("not a signer", SignConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sign\.issuer"):
        SignLogic(Signer.from_private_bytes(bytes(32)), SignConfig())


def test_bytewax_flow_signs_with_recovery_resume_equal_to_uninterrupted(tmp_path: Path) -> None:
    """Abort halfway with recovery on: each command is signed under one seq, and the resumed
    run's seqs jump past every seq the crashed run could have delivered (no reuse)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path), "1"], check=True)
    cmds = [command(i) for i in range(1, 7)]
    inp = [*cmds[:3], TestingSource.ABORT(), *cmds[3:]]
    out: list[SignedEnvelope] = []

    def build() -> Dataflow:
        flow = Dataflow("sign_resume")
        s = sign_commands("sign", op.input("in", flow, TestingSource(inp)), ENGINE)
        op.output("out", s.oks, TestingSink(out))
        return flow

    rc = RecoveryConfig(str(tmp_path))
    run_main(build(), epoch_interval=timedelta(0), recovery_config=rc)
    run_main(build(), epoch_interval=timedelta(0), recovery_config=rc)
    by_id: dict[str, set[int]] = {}
    for e in out:
        c = decode_command(e)
        by_id.setdefault(c.command_id, set()).add(c.seq)
    gap = SignConfig().resume_seq_gap
    assert {cid: sorted(s) for cid, s in by_id.items()} == {
        c.command_id: [i if i <= 3 else gap + i] for i, c in enumerate(cmds, start=1)
    }


def test_two_workers_still_give_one_gapless_sequence() -> None:
    cmds = [command(i) for i in range(1, 21)]
    out: list[SignedEnvelope] = []
    flow = Dataflow("sign_2w")
    s = sign_commands("sign", op.input("in", flow, TestingSource(cmds)), ENGINE)
    op.output("out", s.oks, TestingSink(out))
    cluster_main(flow, addresses=None, proc_id=0, worker_count_per_proc=2)
    assert sorted(decode_command(e).seq for e in out) == list(range(1, 21))


def test_sign_builder_resumes_from_state() -> None:
    build = sign_builder(ENGINE, SignConfig())
    logic = build(None)
    logic.on_event(command(1))
    assert build(logic.snapshot()).snapshot().last_seq == 1


def _signed_with_floor(cmds: list, floor: int, tmp_path: Path | None = None) -> list[int]:
    out: list[SignedEnvelope] = []
    flow = Dataflow("sign_floor")
    s = sign_commands("sign", op.input("in", flow, TestingSource(cmds)), ENGINE,
                      seq_floor=floor)
    op.output("out", s.oks, TestingSink(out))
    rc = RecoveryConfig(str(tmp_path)) if tmp_path is not None else None
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    return [decode_command(e).seq for e in out]


def test_a_fresh_start_continues_above_the_seq_already_delivered() -> None:
    """A new run onto a topic that holds older commands of the issuer never reuses their seqs."""
    assert _signed_with_floor([command(i) for i in range(1, 4)], floor=41) == [42, 43, 44]


def test_a_resume_whose_snapshot_predates_delivered_commands_starts_above_them(tmp_path) -> None:
    """The crash bug this guards against: commands signed after the last snapshot were
    delivered, the restart re-derives them (maybe in another order) from an older state.
    With the topic's high-water as the floor no delivered seq is handed out again; with a
    floor below the snapshot (topic retention), the snapshot wins and there is no gap."""
    import subprocess
    import sys

    for floor, resumed in ((9, [10, 11]), (0, [3, 4])):
        inp = [command(1), command(2), TestingSource.ABORT(), command(3), command(4)]
        rec = tmp_path / str(floor)
        rec.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True)
        assert _signed_with_floor(inp, 0, rec) == [1, 2]
        assert _signed_with_floor(inp, floor, rec) == resumed
