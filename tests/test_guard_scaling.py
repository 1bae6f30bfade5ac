"""How the guard's records are placed on workers: bytewax's key routing, and key-split topics.

These check placement, not speed: a key-split topic's records must be read
on the worker that holds their key's state, each exactly once.
"""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main
from confluent_kafka import Producer
from riskguard.connectors.kafka import KafkaInput, kafka_input, route_worker
from riskguard.schemas import Trade, encode

from riskguard.errors import ConfigError

KEYS = [f"k{i}" for i in range(40)] + ["binance/BTC-PERP", "okx/ETH-USDT", "deribit/ETH-PERP"]


def _worker_of_each_key(workers: int) -> dict[str, int]:
    flow = Dataflow("route_probe")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(KEYS)), lambda k: k)
    counted = op.stateful_map("count", keyed, lambda n, _v: ((n or 0) + 1, None))
    seen: dict[str, int] = {}
    op.inspect_debug("where", counted,
                     inspector=lambda _s, kv, _e, worker: seen.__setitem__(kv[0], worker))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


@pytest.mark.parametrize("workers", [2, 3])
def test_route_worker_names_the_worker_bytewax_routes_each_state_key_to(workers: int) -> None:
    """route_worker(key, W) agrees with where a W-worker bytewax run keeps each key's state."""
    seen = _worker_of_each_key(workers)
    assert seen == {k: route_worker(k, workers) for k in KEYS}


def test_a_key_split_source_without_the_probe_step_refuses_to_list_its_parts() -> None:
    """KafkaInput(key_split_topics=...) used without kafka_input's probe names the fix."""
    from riskguard.connectors import kafka

    saved = dict(kafka._CLUSTER)
    kafka._CLUSTER.clear()
    try:
        src = KafkaInput("127.0.0.1:1", ["t"], key_split_topics=["t"])
        with pytest.raises(ConfigError, match="probe"):
            src.list_parts()
    finally:
        kafka._CLUSTER.update(saved)


@pytest.mark.kafka
def test_key_split_topic_records_are_read_once_on_the_worker_that_holds_their_key(
    kafka_bootstrap: str, new_topic
) -> None:
    """With 2 workers, each record of a key-split topic is emitted exactly once, by the
    worker its Kafka key routes to, so keying by that string never moves it."""
    topic = new_topic(partitions=2)
    keys = ["binance/BTC-PERP", "okx/ETH-USDT", "deribit/ETH-PERP", "okx/BTC-USDT",
            "binance/ETH-USDT", "deribit/BTC-PERP"]
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {}
    for i in range(120):
        key = keys[i % len(keys)]
        venue, instrument = key.split("/")
        rec = Trade(id=f"t{i}", venue=venue, instrument=instrument, ts=1_000 + i, price=1.0,
                    qty=1.0, side="buy")
        p.produce(topic, encode(rec), key.encode())
        sent[rec.id] = key
    assert p.flush(30) == 0

    flow = Dataflow("split")
    src = kafka_input("in", flow, brokers=kafka_bootstrap, topics=[topic], idle_eof_s=1.5,
                      key_split_topics=[topic])
    read_on: dict[str, list[int]] = {}
    op.inspect_debug("read", src.oks, inspector=lambda _s, rec, _e, worker:
                     read_on.setdefault(rec.id, []).append(worker))
    keyed = op.key_on("key", src.oks, lambda r: f"{r.venue}/{r.instrument}")
    kept = op.stateful_map("state", keyed, lambda s, r: (s, r))
    state_on: dict[str, int] = {}
    op.inspect_debug("state_on", kept, inspector=lambda _s, kv, _e, worker:
                     state_on.__setitem__(kv[1].id, worker))
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    assert sorted(read_on) == sorted(sent)
    assert all(len(ws) == 1 for ws in read_on.values()), "a record was read twice"
    assert {rid: ws[0] for rid, ws in read_on.items()} == state_on
    assert state_on == {rid: route_worker(key, 2) for rid, key in sent.items()}
    assert set(state_on.values()) == {0, 1}
