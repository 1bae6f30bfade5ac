"""A careless operator gets one clear line: a misspelt command, flag, signal or enum value
is named with what was meant, and an error in a playbook file names that file."""

from __future__ import annotations

from pathlib import Path

import pytest
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.stress import (
    guard_config_doc,
    load_scenario,
    scenario_keys,
    scenario_path,
)
from riskguard.operators.mitigation.playbook import PlaybookConfig, Rule, Rung
from riskguard.schemas import Action

from riskguard.cli import main
from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    return capsys.readouterr().err


def test_a_misspelt_command_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean 'run'?" in _err(capsys, ["runn"])


def test_a_misspelt_flag_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean --config (for --confg)?" in _err(capsys, ["run", "--confg", "x"])
    assert "--config (for --confgi)" in _err(capsys, ["backtest", "--confgi=x", "--out", "o"])


def test_an_unknown_signal_is_refused_with_the_name_it_meant() -> None:
    rule = Rule(name="crash", signal="price_moves", ladder=(Rung(action=Action.ALERT),))
    with pytest.raises(ConfigError) as err:
        PlaybookConfig(issuer="g", rules=(rule,))
    assert err.value.path == "playbook.rules[0].signal"
    assert "did you mean `price_move`?" in str(err.value)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("careless")
    doc = guard_config_doc(load_scenario(scenario_path("flash_crash")), scenario_keys(d), None)
    pb = doc.pop("playbook")
    (d / "playbook.toml").write_text(dump_toml({"playbook": pb}))
    (d / "guard.toml").write_text('playbook_file = "playbook.toml"\n' + dump_toml(doc))
    load_guard_config(d / "guard.toml")  # as written, it loads
    return d


def _break_playbook(d: Path, old: str, new: str) -> None:
    text = (d / "playbook.toml").read_text()
    assert old in text
    (d / "playbook.toml").write_text(text.replace(old, new, 1))


def test_an_error_in_a_playbook_file_names_that_file(
        config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = (config_dir / "playbook.toml").read_text()
    try:
        _break_playbook(config_dir, 'signal = "price_move"', 'signal = "price_moves"')
        with pytest.raises(ConfigError) as err:
            load_guard_config(config_dir / "guard.toml")
        assert err.value.file == str(config_dir / "playbook.toml")
        assert main(["run", "--config", str(config_dir / "guard.toml")]) == 2
        line = capsys.readouterr().err
        assert f"fix it in {config_dir / 'playbook.toml'}" in line
        assert "did you mean `price_move`?" in line
    finally:
        (config_dir / "playbook.toml").write_text(good)


def test_an_invalid_enum_value_lists_the_valid_ones(config_dir: Path) -> None:
    good = (config_dir / "playbook.toml").read_text()
    try:
        _break_playbook(config_dir, '{ action = "halt_trading"', '{ action = "halt"')
        with pytest.raises(ConfigError) as err:
            load_guard_config(config_dir / "guard.toml")
        text = str(err.value)
        assert "must be one of alert, widen_quotes" in text and "resume" in text
        assert "did you mean `halt_trading`?" in text
    finally:
        (config_dir / "playbook.toml").write_text(good)


@pytest.mark.parametrize(("scope", "says"), [
    ("venu:*", "did you mean `venue:...`?"),
    ("okx", "matches no scope"),
])
def test_a_scope_pattern_no_scope_label_can_match_is_refused(scope: str, says: str) -> None:
    rule = Rule(name="r", signal="anomaly", scope=scope, ladder=(Rung(action=Action.ALERT),))
    with pytest.raises(ConfigError) as err:
        PlaybookConfig(issuer="g", rules=(rule,))
    assert err.value.path == "playbook.rules[0].scope" and says in str(err.value)


@pytest.mark.parametrize("scope", ["*", "venue:*", "instrument:okx/*", "*okx*", "firm:*"])
def test_scope_patterns_that_can_match_are_accepted(scope: str) -> None:
    rule = Rule(name="r", signal="anomaly", scope=scope, ladder=(Rung(action=Action.ALERT),))
    PlaybookConfig(issuer="g", rules=(rule,))
