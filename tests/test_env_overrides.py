"""Each RISKGUARD_* variable a deployment sets is checked: text it does not take stops
the start and names the variable, never read as some other setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.guard.live import check_peer_configs

from riskguard.environment import NEW_CONFIG
from riskguard.errors import ConfigError

PEERS = {"b": "2" * 64}
OURS = "1" * 64


@pytest.mark.parametrize("text", ["0", "", " "])
def test_new_config_0_or_empty_keeps_the_peer_check(monkeypatch, text: str) -> None:
    """``RISKGUARD_NEW_CONFIG=0`` does not let a replica start on another config."""
    monkeypatch.setenv(NEW_CONFIG, text)
    with pytest.raises(ConfigError, match="the config its peers run"):
        check_peer_configs("a", OURS, PEERS)


@pytest.mark.parametrize("text", ["false", "no", "yes", "true", "2"])
def test_new_config_other_text_is_refused_naming_the_variable(monkeypatch, text: str) -> None:
    monkeypatch.setenv(NEW_CONFIG, text)
    for peers in (PEERS, {"b": OURS}):  # whether or not the configs differ
        with pytest.raises(ConfigError, match=NEW_CONFIG) as err:
            check_peer_configs("a", OURS, peers)
        assert repr(text) in str(err.value) or text in str(err.value)


def test_new_config_1_starts_on_a_new_config(monkeypatch) -> None:
    monkeypatch.setenv(NEW_CONFIG, "1")
    check_peer_configs("a", OURS, PEERS)


@pytest.mark.parametrize("text", ["²", "1a", "-1", "٣x"])
def test_a_tier_index_that_is_no_ascii_number_is_a_config_error(
        monkeypatch, tmp_path: Path, text: str) -> None:
    """``RISKGUARD_TIER_INDEX=²`` (a Unicode digit int() refuses) is refused by name,
    not a ValueError."""
    path = tmp_path / "guard.toml"
    path.write_text('env = "dev"\n')
    monkeypatch.setenv("RISKGUARD_TIER_INDEX", text)
    with pytest.raises(ConfigError, match="RISKGUARD_TIER_INDEX"):
        load_guard_config(path)


def _client_config(level: str) -> subprocess.CompletedProcess[str]:
    code = ("from riskguard.connectors.settings import KafkaSettings\n"
            "KafkaSettings(bootstrap='127.0.0.1:1').client_config()\n")
    env = {**os.environ, "RISKGUARD_LOG": level}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_log_level_that_names_no_level_stops_a_kafka_client_naming_the_variable() -> None:
    """``RISKGUARD_LOG=warn`` under ``python -m bytewax.run`` (no CLI to check it) is
    refused where the first Kafka client is configured, not read as ``off``."""
    bad = _client_config("warn")
    assert bad.returncode != 0
    assert "RISKGUARD_LOG" in bad.stderr and "warning" in bad.stderr, bad.stderr[-2000:]
    for good in ("warning", "WARNING", "off", ""):
        ok = _client_config(good)
        assert ok.returncode == 0, (good, ok.stderr[-2000:])
