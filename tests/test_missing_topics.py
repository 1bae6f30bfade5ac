"""A missing topic is an error for ``subscribe`` and ``publish`` alike (a misspelt env or
topic must not create topics nobody reads), unless ``publish --create-topics``; an empty
or unreadable data file stops ``publish`` and ``backtest`` with exit 2."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from riskguard.connectors.topics import TopicSpec, create_topics, topic_name
from riskguard.dataflows.demo import init_keys
from riskguard.schemas import Quote, encode

from riskguard.cli import main

NS = 1_000_000_000
T0 = 1_767_225_600 * NS


def _exists(bootstrap: str, topic: str) -> bool:
    return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics


def _quotes(path: Path) -> Path:
    path.write_bytes(b"".join(encode(Quote(
        id=f"q{i}", venue="okx", instrument="BTC-USDT", ts=T0 + i * NS, bid=100.0, ask=101.0,
        bid_size=1.0, ask_size=1.0)) + b"\n" for i in range(3)))
    return path


@pytest.mark.kafka
def test_subscribe_on_a_missing_topic_is_an_error_and_creates_nothing(
        kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys").mkdir()
    keys = init_keys(tmp_path / "keys")
    missing = f"dev.riskguard.comands-{uuid.uuid4().hex[:6]}.v1"
    rc = main(["subscribe", "--topic", missing, "--env", "dev", "--trust",
               str(keys.trust_file), "--roots", str(keys.roots_file), "--brokers",
               kafka_bootstrap, "--state", str(tmp_path / "s.sqlite"), "--idle-timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and missing in err
    assert not _exists(kafka_bootstrap, missing)
    # a missing rejections topic, too: producing to it would create it
    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": kafka_bootstrap}, [TopicSpec(topic)])
    rc = main(["subscribe", "--topic", topic, "--env", "dev", "--trust",
               str(keys.trust_file), "--roots", str(keys.roots_file), "--brokers",
               kafka_bootstrap, "--state", str(tmp_path / "s2.sqlite"), "--idle-timeout", "1",
               "--rejections-topic", f"{topic}-rejectons"])
    err = capsys.readouterr().err
    assert rc == 2 and "rejections topic" in err
    assert not _exists(kafka_bootstrap, f"{topic}-rejectons")


@pytest.mark.kafka
def test_publish_to_a_missing_topic_is_an_error_unless_create_topics(
        kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = f"e{uuid.uuid4().hex[:8]}"
    data = _quotes(tmp_path / "q.jsonl")
    argv = ["publish", str(data), "--topic", "market", "--brokers", kafka_bootstrap,
            "--env", env]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--create-topics" in err
    assert not _exists(kafka_bootstrap, topic_name(env, "market"))
    assert main([*argv, "--create-topics"]) == 0
    assert "produced 3" in capsys.readouterr().out
    assert _exists(kafka_bootstrap, topic_name(env, "market"))
    # auto routing checks each topic as it is first needed
    env2 = f"e{uuid.uuid4().hex[:8]}"
    assert main(["publish", str(data), "--topic", "auto", "--brokers", kafka_bootstrap,
                 "--env", env2]) == 2
    assert not _exists(kafka_bootstrap, topic_name(env2, "market"))


@pytest.mark.parametrize(("name", "content", "says"), [
    ("empty.jsonl", b"", "no rows"),
    ("blank.jsonl", b"\n\n", "no rows"),
    ("quotes.zip", b"hello,1\n", "a zip archive"),
    ("quotes.csv.gz", b"1,2\n", "a gzip stream"),
    ("none.zip", None, "an empty zip archive"),
])
@pytest.mark.parametrize("command", ["publish", "backtest"])
def test_an_empty_or_unreadable_data_file_exits_2_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None,
        says: str, command: str) -> None:
    path = tmp_path / name
    if content is None:
        zipfile.ZipFile(path, "w").close()
    else:
        path.write_bytes(content)
    argv = (["publish", str(path), "--topic", "market", "--check", "--instrument", "X"]
            if command == "publish" else
            ["backtest", "--config", str(_guard_config(tmp_path)), "--data", str(path),
             "--out", str(tmp_path / "out"), "--instrument", "X"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert name in err and says in err


def _guard_config(tmp_path: Path) -> Path:
    from riskguard.dataflows.stress import (
        guard_config_doc,
        load_scenario,
        scenario_keys,
        scenario_path,
    )

    from riskguard.toml_text import dump_toml

    doc = guard_config_doc(load_scenario(scenario_path("flash_crash")), scenario_keys(tmp_path),
                           None)
    path = tmp_path / "guard.toml"
    path.write_text(dump_toml(doc))
    return path
