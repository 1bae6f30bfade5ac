"""A running guard on the dev broker, fed the malformed corpus before the bundled scenario:
it does not crash, makes one dead letter per bad input with its reason and source offset,
audits each, and the good records after them still give their commands."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import TopicsConfig, create_topics, topic_specs
from riskguard.dataflows.demo import (
    ISSUER,
    PreparedRun,
    init_keys,
    publish_scenario,
    start_guard,
    subscriber_for,
    write_config,
)
from riskguard.dataflows.demo_scenario import DURATION_S
from riskguard.operators.signing.crypto import Signer
from riskguard.schemas import DeadLetter, MitigationCommand
from riskguard.schemas.codec import Codec

from riskguard.cli import main
from riskguard.config import CommonConfig
from tests.kafka_helpers import consume_all
from tests.malformed_corpus import (
    Entry,
    market_entries,
    signed_entries,
    wrong_topic_entries,
)
from tests.test_guard_e2e import assert_never_twice, assert_scenario

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
NS = 1_000_000_000


def _produce(bootstrap: str, topic: str, values: list[bytes | None]) -> list[int]:
    """Produce ``values`` to partition 0 of ``topic``; their offsets, in order."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "message.max.bytes": 2_000_000})
    offsets: list[int] = [-1] * len(values)

    def done(i: int):  # type: ignore[no-untyped-def]
        def report(err, msg) -> None:  # type: ignore[no-untyped-def]
            assert err is None, err
            offsets[i] = msg.offset()
        return report

    for i, v in enumerate(values):
        p.produce(topic, v, partition=0, on_delivery=done(i))
    assert p.flush(30) == 0
    return offsets


@pytest.fixture(scope="module")
def corpus_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("corpus")
    env = f"c{uuid.uuid4().hex[:8]}"
    common = CommonConfig(env=env, kafka=KafkaSettings(bootstrap=kafka_bootstrap),
                          topics=TopicsConfig(default_partitions=2))
    create_topics(common.kafka.client_config(), topic_specs(common.env, common.topics))
    keys = init_keys(work)
    config = write_config(work, kafka_bootstrap, keys, env)
    start_ns = (time.time_ns() // NS - DURATION_S - 5) * NS
    run = PreparedRun(kafka_bootstrap, env, work, config, keys, start_ns, 0)
    signer = Signer.from_file(keys.signing_key, issuer=ISSUER)
    entries: list[Entry] = [
        *market_entries(), *wrong_topic_entries(start_ns),
        *signed_entries(signer, env, run.topic("commands"), run.topic("limit_updates")),
    ]
    where: dict[tuple[str, int], str] = {}
    by_stream: dict[str, list[Entry]] = {}
    for e in entries:
        by_stream.setdefault(e[1], []).append(e)
    for stream, es in by_stream.items():
        topic = run.topic(stream)
        for (label, _s, _v, _r), off in zip(es, _produce(kafka_bootstrap, topic,
                                                         [e[2] for e in es]), strict=True):
            where[(topic, off)] = label
    # a poison pill on the commands topic too: the guard reads it back at start-up
    _produce(kafka_bootstrap, run.topic("commands"), [b"[" * 2000 + b"]" * 2000])
    publish_scenario(kafka_bootstrap, start_ns, env)
    proc = start_guard(run)
    out, _ = proc.communicate(timeout=240)
    dead_codec = Codec()
    dead = [dead_codec.decode("dlq", v)
            for _p, _o, v in consume_all(kafka_bootstrap, run.topic("dead_letters"))]
    return {"run": run, "entries": entries, "where": where, "rc": proc.returncode,
            "out": out.decode(errors="replace"), "dead": dead}


def test_the_corpus_has_at_least_forty_kinds(corpus_run: dict) -> None:
    assert len({e[0] for e in corpus_run["entries"]}) >= 40


def test_the_guard_does_not_crash(corpus_run: dict) -> None:
    assert corpus_run["rc"] == 0, corpus_run["out"][-3000:]


def test_each_bad_input_is_one_dead_letter_with_its_reason_and_offset(corpus_run: dict) -> None:
    dead = corpus_run["dead"]
    assert all(isinstance(d, DeadLetter) for d in dead), [d for d in dead
                                                          if not isinstance(d, DeadLetter)]
    at = Counter((d.topic, d.offset) for d in dead)
    reasons = {(d.topic, d.offset): d.reason for d in dead}
    wrong = []
    for (label, stream, _v, reason) in corpus_run["entries"]:
        topic = corpus_run["run"].topic(stream)
        key = next(k for k, lab in corpus_run["where"].items() if lab == label and k[0] == topic)
        if at[key] != 1 or reasons.get(key) != reason:
            wrong.append((label, reason, reasons.get(key), at[key]))
    assert not wrong, wrong


def test_every_dead_letter_is_audited(corpus_run: dict, capsys: pytest.CaptureFixture) -> None:
    run: PreparedRun = corpus_run["run"]
    rc = main(["audit", "verify", "--topic", run.topic("audit"), "--brokers", run.bootstrap,
               "--trust", str(run.keys.trust_file), "--roots", str(run.keys.roots_file),
               "--allow-tail"])
    assert rc == 0, capsys.readouterr().out
    audited = [v for _p, _o, v in consume_all(run.bootstrap, run.topic("audit"))
               if b'"kind":"rejected_input"' in v]
    assert len(audited) >= len(corpus_run["dead"])


def test_the_good_records_after_them_still_give_their_commands(
        corpus_run: dict, tmp_path: Path) -> None:
    got: list[MitigationCommand] = []
    rejected = []
    with subscriber_for(corpus_run["run"], tmp_path / "sub.sqlite", on_command=got.append,
                        on_reject=rejected.append) as sub:
        sub.poll(idle_timeout_s=2.0)
    assert_scenario(got)
    assert_never_twice(got)
    # the poison pill on the commands topic is refused, and nothing else is
    assert [r.reason for r in rejected] == ["malformed_envelope"]
