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


def _envelopes(signer: Signer, first_seq: int, n: int) -> list[bytes]:
    logic = SignLogic(signer, SignConfig(), SignState(issuer=signer.issuer, last_seq=first_seq - 1))
    return [encode_envelope(logic.on_event(command(i))[0]) for i in range(first_seq, first_seq + n)]


def test_an_empty_topic_has_no_delivered_seq(kafka_bootstrap, new_topic) -> None:
    topic = new_topic()
    assert last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                           ENGINE.issuer, idle_s=0.2) == 0


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
    assert got == 7


def test_the_scan_walks_back_past_a_window_of_other_traffic(kafka_bootstrap, new_topic) -> None:
    topic = new_topic()
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 40, 3))
    produce(kafka_bootstrap, topic, _envelopes(other, 1, 25))
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, window=10, idle_s=0.2)
    assert got == 42


def test_an_unreachable_broker_stops_start_up_with_a_broker_error() -> None:
    """A signer that cannot tell where its sequence stands must not start."""
    with pytest.raises(BrokerError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        last_signed_seq(KafkaSettings(bootstrap="127.0.0.1:1"), "commands",
                        ENGINE.public_key, ENGINE.issuer, timeout_s=2)


def test_all_partitions_are_read_together_and_each_walks_back_on_its_own(
        kafka_bootstrap, new_topic) -> None:
    """With the newest windows of all partitions read together, a partition whose window
    holds only other traffic still walks back on its own, and an empty one counts as
    nothing."""
    topic = new_topic(partitions=3)
    other = Signer.from_private_bytes(b"\x05" * 32, issuer="other-engine")
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 1, 3), partition=0)
    produce(kafka_bootstrap, topic, _envelopes(ENGINE, 10, 3), partition=1)
    produce(kafka_bootstrap, topic, _envelopes(other, 1, 25), partition=1)
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, window=10, idle_s=0.2)
    assert got == 12
