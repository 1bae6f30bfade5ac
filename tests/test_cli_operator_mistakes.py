"""An operator's typo or bad value is refused with one line on stderr and a non-zero exit,
never signed or run: ``command new`` params, ``keys sign-trust`` on a broken trust file,
``calibrate --grid`` keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from riskguard.dataflows.calibrate import calibrate
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.stress import MarketSpec, Scenario, generate_market, guard_config_doc
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, decode_envelope, sign_envelope
from riskguard.schemas import MitigationCommand
from riskguard.schemas.commands import Action
from signing_fixtures import OP1, ROOTS, command, seed, trust_text

from riskguard.cli import main
from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml


def _one_line_error(capsys: pytest.CaptureFixture[str], prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _key_file(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.pem"
    key = Ed25519PrivateKey.from_private_bytes(seed(name))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


def _new(tmp: Path, action: str, *extra: str) -> list[str]:
    return ["command", "new", "--action", action, "--scope", "venue:okx", "--reason", "INC-9",
            "--key", str(_key_file(tmp, "op-alice")), "--issuer", "op-alice", "--env", "prod",
            "--topic", "riskguard.commands", "--seq", "7", "--out", str(tmp / "cmd.json"),
            *extra]


# -- command new / show / cosign -----------------------------------------------------------


@pytest.mark.parametrize(("extra", "reason"), [
    (["--param", "bps=abc"], "param 'bps' must be a number > 0 and <= 10000; got 'abc'"),
    (["--param", "bps=25", "--param", "bsp=5"], "unknown param 'bsp' (did you mean `bps`?)"),
    ([], "param 'bps' is required"),
])
def test_command_new_refuses_to_sign_widen_quotes_with_bad_params(tmp_path, capsys, extra,
                                                                   reason) -> None:
    """bps=abc, an unknown param, no bps: one line naming the param, nothing written."""
    assert main(_new(tmp_path, "widen_quotes", *extra)) == 2
    err = _one_line_error(capsys, "riskguard command new: bad_params: widen_quotes: ")
    assert reason in err
    assert not (tmp_path / "cmd.json").exists()


def test_command_new_refuses_lift_on_an_action_that_is_not_a_resume(tmp_path, capsys) -> None:
    """--lift only means something on a resume."""
    assert main(_new(tmp_path, "halt_trading", "--lift", "reduce_only")) == 2
    assert "halt_trading: takes no params; got 'actions'" in _one_line_error(
        capsys, "riskguard command new: ")


def test_command_new_types_params_by_the_action(tmp_path, capsys) -> None:
    """A one-venue reroute is a list of one target; bps is a number; show says nothing is
    wrong with it."""
    assert main(_new(tmp_path, "reroute_order_flow", "--param", "targets=deribit",
                     "--param", "from=okx")) == 0
    cmd = msgspec.json.decode(decode_envelope((tmp_path / "cmd.json").read_bytes()).payload,
                              type=MitigationCommand)
    assert cmd.params == {"targets": ["deribit"], "from": "okx"}
    assert main(["command", "show", str(tmp_path / "cmd.json")]) == 0
    assert "invalid" not in capsys.readouterr().out


@pytest.mark.parametrize(("action", "protective"), [
    ("halt_trading", True), ("reduce_only", True), ("cancel_all", False)])
def test_an_operators_halt_keeps_protective_orders_allowed_as_the_guard_s_does(
        tmp_path, action, protective) -> None:
    """A halt or reduce-only signed by hand carries protective_orders_allowed = true, as
    the playbook's do (the wire contract's rule)."""
    assert main(_new(tmp_path, action)) == 0
    cmd = msgspec.json.decode(decode_envelope((tmp_path / "cmd.json").read_bytes()).payload,
                              type=MitigationCommand)
    assert cmd.protective_orders_allowed is protective


def _signed_file(tmp: Path, cmd: MitigationCommand) -> Path:
    path = tmp / "old.json"
    env = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [OP1])
    path.write_bytes(msgspec.json.encode(env) + b"\n")
    return path


def test_command_show_reports_a_signed_command_with_bad_params_invalid(tmp_path,
                                                                        capsys) -> None:
    """A file signed before params were checked (widen_quotes without bps) is shown with
    "invalid: <reason>" and exit 1; cosign refuses to add a signature to it."""
    path = _signed_file(tmp_path, command(1, issuer="op-alice", action=Action.WIDEN_QUOTES,
                                          params={"bsp": 25.0}))
    assert main(["command", "show", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == ("invalid: widen_quotes: unknown param 'bsp' (did you "
                                    "mean `bps`?); it takes bps")
    bob = _key_file(tmp_path, "op-bob")
    before = path.read_bytes()
    assert main(["command", "cosign", str(path), "--key", str(bob)]) == 2
    _one_line_error(capsys, "riskguard command cosign: bad_params: widen_quotes: ")
    assert path.read_bytes() == before


def test_command_show_of_a_missing_or_garbled_file_is_one_line(tmp_path, capsys) -> None:
    """No traceback for a file that is not there or not an envelope."""
    assert main(["command", "show", str(tmp_path / "nope.json")]) == 2
    _one_line_error(capsys, "riskguard command show: ")
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["command", "show", str(tmp_path / "junk.json")]) == 2
    _one_line_error(capsys, "riskguard command show: malformed_envelope")


# -- keys sign-trust -----------------------------------------------------------------------


def _root_key(tmp: Path) -> Path:
    return _key_file(tmp, "root-0")


@pytest.mark.parametrize(("text", "reason"), [
    ("version = 1\nserial = \n", "not valid TOML"),
    ('version = 1\n[[keys]]\nname = "x"\npublic_key = "zz"\nrole = "operator"\n',
     "keys[0].public_key"),
    ("version = 2\n", "version"),
])
def test_sign_trust_refuses_a_trust_file_no_verifier_could_load(tmp_path, capsys, text,
                                                                reason) -> None:
    """Not TOML, or TOML that is not a valid trust file: nothing signed, one line."""
    trust = tmp_path / "trust.toml"
    trust.write_text(text)
    assert main(["keys", "sign-trust", str(trust), "--key", str(_root_key(tmp_path))]) == 2
    err = _one_line_error(capsys, "riskguard keys sign-trust: not signed: ")
    assert reason in err
    assert not (tmp_path / "trust.toml.sig").exists()


def test_sign_trust_signs_a_valid_trust_file(tmp_path, capsys) -> None:
    """The same file, valid, is signed and then checks against its root."""
    trust = tmp_path / "trust.toml"
    trust.write_text(trust_text())
    assert main(["keys", "sign-trust", str(trust), "--key", str(_root_key(tmp_path))]) == 0
    assert (tmp_path / "trust.toml.sig").exists()
    roots = tmp_path / "roots.toml"
    roots.write_text(f'threshold = 1\n[[roots]]\npublic_key = "{ROOTS[0].public_key.hex()}"\n')
    assert main(["keys", "check-trust", str(trust), "--roots", str(roots)]) == 0


def test_sign_trust_of_a_missing_file_is_one_line(tmp_path, capsys) -> None:
    assert main(["keys", "sign-trust", str(tmp_path / "nope.toml"),
                 "--key", str(_root_key(tmp_path))]) == 2
    _one_line_error(capsys, "riskguard keys sign-trust: ")


# -- calibrate --grid ----------------------------------------------------------------------


def _calibrate(tmp: Path, grid: str) -> list[str]:
    return ["calibrate", "--config", str(tmp / "guard.toml"), "--data", str(tmp / "x.csv"),
            "--labels", str(tmp / "labels.json"), "--out", str(tmp / "out"), "--grid", grid]


@pytest.mark.parametrize("inline", [True, False])
def test_calibrate_grid_with_a_misspelt_key_is_refused_before_running(tmp_path, capsys,
                                                                     inline) -> None:
    """Inline JSON or a file: an unknown key is refused before anything is read or run,
    naming the key and the one meant."""
    grid = json.dumps({"detector.warmup_event": [60, 300]})
    if not inline:
        (tmp_path / "grid.json").write_text(grid)
        grid = str(tmp_path / "grid.json")
    assert main(_calibrate(tmp_path, grid)) == 2
    err = _one_line_error(capsys, "riskguard calibrate: detector.warmup_event: is not a "
                                  "known setting (did you mean `detector.warmup_events`?)")
    assert "[60, 300]" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("grid", "reason"), [
    ('{"detector.warmup_events": 60}', "detector.warmup_events: a non-empty list"),
    ('{"detector.warmup_events": [60}', "--grid: valid JSON"),
    ('{"feeds.max_gap_s": ["3"]}', "feeds.max_gap_s: positive numbers"),
    ('{"tick_ns.x": [1]}', "tick_ns.x: a path into config tables"),
    ("missing.json", "--grid missing.json: a readable JSON file"),
])
def test_calibrate_bad_grids_are_one_line(tmp_path, capsys, monkeypatch, grid,
                                          reason) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(_calibrate(tmp_path, grid)) == 2
    assert reason in _one_line_error(capsys, "riskguard calibrate: ")


def test_calibrate_help_says_grid_takes_a_file_or_inline_json(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--grid FILE|JSON" in out and "a JSON file, or inline JSON starting with '{'" in out


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    work = tmp_path_factory.mktemp("calib-grid")
    sc = Scenario(name="g", duration_s=120, seed=1, market=MarketSpec(venues=("okx",)))
    cfg = work / "guard.toml"
    cfg.write_text(dump_toml(guard_config_doc(sc, init_keys(work))))
    return cfg, generate_market(sc)


@pytest.mark.parametrize(("grid", "path"), [
    ({"detector.warmup_event": [60]}, "detector.warmup_event"),
    ({"detector.warmup_events": [60, "many"]}, "detector.warmup_events"),
])
def test_calibrate_refuses_a_bad_grid_before_any_candidate_runs(small_setup, tmp_path, grid,
                                                                path) -> None:
    """A bad key, or a bad value in any candidate, stops calibrate() before the first run
    (a candidate never carries a key the guard would ignore)."""
    cfg, recs = small_setup
    runs: list[object] = []
    with pytest.raises(ConfigError) as err:
        calibrate(cfg, recs, [], work=tmp_path, grid=grid, objective="recall", fa_budget=1.0,
                  runner=lambda *a, **k: runs.append(a))
    assert err.value.path == path
    assert runs == []
