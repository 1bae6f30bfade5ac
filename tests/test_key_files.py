"""A private key file anyone on the host can read stops the start, naming its setting:
the signing key (owner only) and the Kafka client key (owner and group)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from riskguard.connectors.settings import KafkaSettings

from riskguard.config import decode_section
from riskguard.errors import ConfigError


def _kafka(key: Path) -> KafkaSettings:
    return decode_section({"bootstrap": "127.0.0.1:9093", "security_protocol": "SSL",
                           "ssl_key_location": str(key)}, KafkaSettings, "kafka")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o602])
def test_a_kafka_client_key_others_can_read_or_write_is_refused(
        tmp_path: Path, mode: int) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(key, mode)
    with pytest.raises(ConfigError, match=r"kafka\.ssl_key_location") as err:
        _kafka(key)
    assert f"{mode:04o}" in str(err.value) and "BEGIN" not in str(err.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_a_kafka_client_key_of_its_owner_and_group_loads(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(key, mode)
    assert _kafka(key).client_config()["ssl.key.location"] == str(key)


def test_a_kafka_client_key_not_there_is_left_to_the_client(tmp_path: Path) -> None:
    """The k8s ConfigMap's configs name keys that exist only in the pods."""
    assert _kafka(tmp_path / "absent.key").ssl_key_location == str(tmp_path / "absent.key")


@pytest.mark.parametrize("name", ["ssl.key.location", "ssl.keystore.location"])
def test_a_key_file_passed_through_extra_is_held_to_the_same_rule(
        tmp_path: Path, name: str) -> None:
    key = tmp_path / "client.p12"
    key.write_bytes(b"\0")
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=rf"kafka\.extra\.{name}"):
        decode_section({"bootstrap": "b:1", "extra": {name: str(key)}}, KafkaSettings,
                       "kafka")
    os.chmod(key, 0o600)
    decode_section({"bootstrap": "b:1", "extra": {name: str(key)}}, KafkaSettings, "kafka")
