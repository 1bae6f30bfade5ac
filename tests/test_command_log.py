"""Reading the highest seq an issuer already delivered to a commands topic (real broker)."""

from __future__ import annotations

import pytest
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.settings import KafkaSettings
from riskguard.operators.signing import SignConfig, SignLogic, SignState
from riskguard.operators.signing.crypto import Signer, encode_envelope
from signing_fixtures import ENGINE, command

from riskguard.errors import BrokerError
from tests.kafka_helpers import produce

pytestmark = pytest.mark.kafka


def _one_by_one(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    """Each message in a produce of its own: the dev broker's high watermark counts
    produce batches, so only this makes its offsets and the scan's windows line up."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for v in values:
        p.produce(topic, v, partition=partition)
        assert p.flush(10) == 0


@pytest.fixture
def windows_read(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, tuple[int, int | None]]]:
    """The windows of offsets each read of the scan covered, in order."""
    from riskguard.connectors import command_log

    seen: list[dict[int, tuple[int, int | None]]] = []
    real = command_log._read

    def spy(consumer, topic, windows, *args):  # type: ignore[no-untyped-def]
        seen.append(dict(windows))
        return real(consumer, topic, windows, *args)

    monkeypatch.setattr(command_log, "_read", spy)
    return seen


def _envelopes(signer: Signer, first_seq: int, n: int, trust_serial: int = 0) -> list[bytes]:
    logic = SignLogic(signer, SignConfig(), SignState(issuer=signer.issuer, last_seq=first_seq - 1),
                      trust_serial=trust_serial)
    return [encode_envelope(logic.on_event(command(i))[0]) for i in range(first_seq, first_seq + n)]


def test_an_empty_topic_has_no_delivered_seq(kafka_bootstrap, new_topic) -> None:
    topic = new_topic()
    assert last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                           ENGINE.issuer, idle_s=0.2).seq == 0


def test_the_last_verified_command_of_the_issuer_gives_the_seq(kafka_bootstrap, new_topic) -> None:
    """Other issuers' commands, forgeries under our issuer name and junk do not count."""
    topic = new_topic(partitions=2)
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    forger = Signer.from_private_bytes(b"\x09" * 32, issuer=ENGINE.issuer)
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 1, 7), partition=0)
    produce(kafka_bootstrap, topic, _envelopes(other, 100, 3), partition=0)
    produce(kafka_bootstrap, topic, [*_envelopes(forger, 5000, 2), b"not json", b""], partition=1)
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, idle_s=0.2)
    assert got.seq == 7


def test_the_scan_walks_back_past_a_window_of_other_traffic(kafka_bootstrap, new_topic,
                                                              windows_read) -> None:
    topic = new_topic()
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    _one_by_one(kafka_bootstrap, topic, _envelopes(ENGINE, 40, 3, trust_serial=4))
    _one_by_one(kafka_bootstrap, topic, _envelopes(other, 1, 25, trust_serial=9))
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, window=10, idle_s=0.2)
    assert (got.seq, got.trust_serial) == (42, 4)
    assert len(windows_read) > 1  # the newest window held none of ours: it walked back


def test_an_unreachable_broker_stops_start_up_with_a_broker_error() -> None:
    """A signer that cannot tell where its sequence stands must not start."""
    with pytest.raises(BrokerError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        last_signed_seq(KafkaSettings(bootstrap="127.0.0.1:1"), "commands",
                        ENGINE.public_key, ENGINE.issuer, timeout_s=2)


def test_all_partitions_are_read_together_and_each_walks_back_on_its_own(
        kafka_bootstrap, new_topic, windows_read) -> None:
    """With the newest windows of all partitions read together, a partition whose window
    holds only other traffic still walks back on its own, and an empty one counts as
    nothing."""
    topic = new_topic(partitions=3)
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    _one_by_one(kafka_bootstrap, topic, _envelopes(ENGINE, 1, 3), partition=0)
    _one_by_one(kafka_bootstrap, topic, _envelopes(ENGINE, 10, 3), partition=1)
    _one_by_one(kafka_bootstrap, topic, _envelopes(other, 1, 25), partition=1)
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, window=10, idle_s=0.2)
    assert got.seq == 12
    assert len(windows_read[0]) == 3 and any(1 in w and len(w) == 1 for w in windows_read[1:])


def test_the_newest_trust_serial_the_issuer_s_commands_state_is_read_back(
        kafka_bootstrap, new_topic) -> None:
    """Each command states the trust file its signer ran on; the scan gives the highest of
    the issuer's own. Another issuer's, or a forger's under our name, do not count."""
    topic = new_topic(partitions=2)
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    forger = Signer.from_private_bytes(b"\x09" * 32, issuer=ENGINE.issuer)
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 1, 2, trust_serial=3), partition=0)
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 3, 1, trust_serial=5), partition=1)
    produce(kafka_bootstrap, topic, _envelopes(other, 9, 1, trust_serial=80), partition=0)
    produce(kafka_bootstrap, topic, _envelopes(forger, 99, 1, trust_serial=90), partition=1)
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, idle_s=0.2)
    assert (got.seq, got.trust_serial) == (3, 5)


def test_a_guard_start_refuses_a_trust_file_older_than_its_own_commands_state(
        kafka_bootstrap, tmp_path) -> None:
    """Without a recovery store (or on Flink) the commands topic remembers: a guard whose
    last commands were signed under trust serial 99 does not start on an older file."""
    from riskguard.connectors.topics import TopicSpec, create_topics
    from riskguard.dataflows.demo import init_keys, write_config
    from riskguard.dataflows.guard import load_guard_config, load_keys
    from riskguard.dataflows.guard.live import read_signed_seq

    from riskguard.errors import ConfigError

    keys = init_keys(tmp_path)
    cfg, _digest = load_guard_config(str(write_config(tmp_path, kafka_bootstrap, keys,
                                                      "tsr", "")))
    signer, trust = load_keys(cfg)
    issuer = cfg.sign.issuer or signer.issuer
    topic = cfg.topic("commands")
    create_topics({"bootstrap.servers": kafka_bootstrap}, [TopicSpec(topic, partitions=1)])
    assert read_signed_seq(cfg, signer.public_key, issuer, trust) == 0
    produce(kafka_bootstrap, topic, _envelopes(signer, 1, 2, trust_serial=trust.serial))
    assert read_signed_seq(cfg, signer.public_key, issuer, trust) == 2
    produce(kafka_bootstrap, topic, _envelopes(signer, 3, 1, trust_serial=99))
    with pytest.raises(ConfigError, match=r"keys\.trust_file: a trust file of serial 99 or later"):
        read_signed_seq(cfg, signer.public_key, issuer, trust)
