"""``riskguard limit new|show``: a limit admin's signed runtime change to one limit,
checked as the guard checks it, and published keyed by its limit."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from riskguard.dataflows.demo import DemoKeys, init_keys
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE, decode_envelope
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas.commands import LimitUpdate

from riskguard.cli import main


@pytest.fixture
def keys(tmp_path: Path) -> DemoKeys:
    return init_keys(tmp_path)


def _new(keys: DemoKeys, out: Path, *extra: str, key: Path | None = None,
         issuer: str = "limit-admin", env: str = "dev") -> list[str]:
    return ["limit", "new", "--path", "counterparty.okx", "--kind", "gross_notional",
            "--reason", "T-1", "--key", str(key or keys.admin_key), "--issuer", issuer,
            "--env", env, "--out", str(out), *extra]


def test_a_signed_limit_update_verifies_as_the_guard_verifies_it(
        keys: DemoKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lu.json"
    assert main(_new(keys, out, "--limit", "800000", "--warn", "700000")) == 0
    assert "riskguard publish" in capsys.readouterr().out
    env = decode_envelope(out.read_bytes())
    upd = msgspec.json.decode(env.payload, type=LimitUpdate)
    assert (upd.limit_path, upd.kind, upd.limit, upd.warn) == (
        "counterparty.okx", "gross_notional", 800_000.0, 700_000.0)
    assert upd.audience.topic == "dev.riskguard.limit_updates.v1"
    trust = TrustStore.load(keys.trust_file, RootSet.load(keys.roots_file))
    trust.verify(env, expected_payload_type=PAYLOAD_LIMIT_UPDATE, audience=upd.audience,
                 now_ns=upd.issued_at)
    assert main(["limit", "show", str(out), "--trust", str(keys.trust_file),
                 "--roots", str(keys.roots_file)]) == 0
    assert "valid for env 'dev'" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "says"), [
    ([], "--limit"),
    (["--limit", "-5"], ">= 0.0"),
])
def test_an_update_the_guard_would_refuse_is_not_signed(
        keys: DemoKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], says: str) -> None:
    assert main(_new(keys, tmp_path / "lu.json", *extra)) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "lu.json").exists()


def test_show_says_not_valid_for_a_key_whose_role_may_not_change_limits(
        keys: DemoKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lu.json"
    assert main(_new(keys, out, "--limit", "5", key=keys.signing_key,
                     issuer="riskguard-guard")) == 0
    assert main(["limit", "show", str(out), "--trust", str(keys.trust_file),
                 "--roots", str(keys.roots_file)]) == 1
    assert "NOT VALID: role_not_permitted" in capsys.readouterr().out


@pytest.mark.kafka
def test_published_it_is_keyed_by_its_limit_on_the_compacted_topic(
        keys: DemoKeys, tmp_path: Path, kafka_bootstrap: str) -> None:
    """A compacted topic (limit_updates) refuses a record without a key on Apache Kafka:
    the update goes out keyed ``limit_path/kind``."""
    env = f"lim{uuid.uuid4().hex[:8]}"
    out = tmp_path / "lu.json"
    assert main(_new(keys, out, "--limit", "800000", env=env)) == 0
    assert main(["publish", str(out), "--topic", "limit_updates", "--env", env,
                 "--brokers", kafka_bootstrap, "--create-topics"]) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "t",
                         "enable.auto.commit": False})
    topic = f"{env}.riskguard.limit_updates.v1"
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    msg = None
    for _ in range(100):  # the dev broker does not wake a held fetch: poll in short steps
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            break
    consumer.close()
    assert msg is not None and msg.key() == b"counterparty.okx/gross_notional"


def test_cosign_adds_a_second_signature_over_the_same_bytes_once(
        keys: DemoKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lu.json"
    assert main(_new(keys, out, "--limit", "900000")) == 0
    payload = decode_envelope(out.read_bytes()).payload
    assert main(["limit", "cosign", str(out), "--key", str(keys.admin_key)]) == 2
    assert "has not signed this yet" in capsys.readouterr().err
    assert main(["limit", "cosign", str(out), "--key", str(keys.signing_key)]) == 0
    env = decode_envelope(out.read_bytes())
    assert env.payload == payload and len(env.signatures) == 2
