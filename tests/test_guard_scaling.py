"""How the guard's records are placed on workers: bytewax's key routing, and key-split topics.

These check placement, not speed: a key-split topic's records must be read
on the worker that holds their key's state, each exactly once.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main
from confluent_kafka import Producer
from riskguard.connectors import placement
from riskguard.connectors.kafka import KafkaInput, kafka_input
from riskguard.connectors.placement import Broadcast, LocalKeys, Replica, route_worker
from riskguard.schemas import IndexPrice, Trade, VenueState, VenueStatus, encode

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


def test_a_replica_answers_the_same_from_its_memo_and_past_the_memo_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """place() per key is memoized; answers match the direct rule, also past the cap."""
    monkeypatch.setattr(placement, "_PLACED_MAX", 5)
    rep = Replica(1, 3, whole_topic=False, key_prefixes=(b"index/",))
    keys = [None, b"index/BTC-USD", *(f"v{k % 4}/I{k}".encode() for k in range(12))]
    want = [((0 if k is None else route_worker(k, 3)) == 1,
             k is not None and k.startswith(b"index/")) for k in keys]
    for _ in range(3):  # first answers, then memo hits and answers recomputed after eviction
        assert [rep.place(k) for k in keys] == want
    assert rep.place.cache_info().currsize <= 5  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [2, 3])
def test_route_worker_names_the_worker_bytewax_routes_each_state_key_to(workers: int) -> None:
    """route_worker(key, W) agrees with where a W-worker bytewax run keeps each key's state."""
    seen = _worker_of_each_key(workers)
    assert seen == {k: route_worker(k, workers) for k in KEYS}


def test_a_key_split_source_without_the_probe_step_refuses_to_list_its_parts() -> None:
    """KafkaInput(key_split_topics=...) used without kafka_input's probe names the fix."""
    from riskguard.connectors import placement

    saved = dict(placement._CLUSTER)
    placement._CLUSTER.clear()
    try:
        src = KafkaInput("127.0.0.1:1", ["t"], key_split_topics=["t"])
        with pytest.raises(ConfigError, match="probe"):
            src.list_parts()
    finally:
        placement._CLUSTER.update(saved)


def _market_trades(n: int = 120) -> list[tuple[str, Trade]]:
    """``n`` trades over six ``venue/instrument`` keys, each with its Kafka key."""
    keys = ["binance/BTC-PERP", "okx/ETH-USDT", "deribit/ETH-PERP", "okx/BTC-USDT",
            "binance/ETH-USDT", "deribit/BTC-PERP"]
    out = []
    for i in range(n):
        key = keys[i % len(keys)]
        venue, instrument = key.split("/")
        out.append((key, Trade(id=f"t{i}", venue=venue, instrument=instrument, ts=1_000 + i,
                               price=1.0, qty=1.0, side="buy")))
    return out


@pytest.mark.kafka
@pytest.mark.parametrize("bundle", [False, True])
def test_key_split_topic_records_are_read_once_on_the_worker_that_holds_their_key(
    kafka_bootstrap: str, new_topic, bundle: bool
) -> None:
    """With 2 workers, each record of a key-split topic is emitted exactly once, by the
    worker its Kafka key routes to, so keying by that string never moves it (also when
    each worker's replicas are bundled into one source partition)."""
    topic = new_topic(partitions=2)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {}
    for key, rec in _market_trades():
        p.produce(topic, encode(rec), key.encode())
        sent[rec.id] = key
    assert p.flush(30) == 0

    flow = Dataflow("split")
    src = kafka_input("in", flow, brokers=kafka_bootstrap, topics=[topic], idle_eof_s=1.5,
                      key_split_topics=[topic], bundle=bundle)
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


def _read_with_broadcast(flow: Dataflow, bootstrap: str, market: str, status: str,
                         bundle: bool, **placement_options: Any) -> tuple[
        Any, dict[str, list[int]], list[tuple[str, int]]]:
    """``market`` (placed by ``placement_options``) and the broadcast topic ``status``
    (index prices under ``index/`` on ``market`` too) read into ``flow``; the source,
    the workers each record was read on, and the dead letters' reasons and workers."""
    src = kafka_input(
        "in", flow, brokers=bootstrap, topics=[market, status], idle_eof_s=1.5,
        broadcast=Broadcast(topics=frozenset({status}), key_prefixes=(b"index/",),
                            records=lambda r: isinstance(r, IndexPrice | VenueStatus)),
        bundle=bundle, **placement_options,
    )
    read_on: dict[str, list[int]] = {}
    op.inspect_debug("read", src.oks, inspector=lambda _s, rec, _e, worker:
                     read_on.setdefault(rec.id, []).append(worker))
    dead: list[tuple[str, int]] = []
    op.inspect_debug("dead", src.errs, inspector=lambda _s, d, _e, worker:
                     dead.append((d.reason, worker)))
    return src, read_on, dead


@pytest.mark.kafka
@pytest.mark.parametrize("bundle", [False, True])
def test_broadcast_records_reach_every_worker_once_and_fan_out_to_local_keys_only(
    kafka_bootstrap: str, new_topic, bundle: bool
) -> None:
    """With 2 workers: every worker emits its own copy of each index price (a broadcast
    key on the key-split topic) and of each heartbeat (a broadcast topic); a fan-out
    through LocalKeys reaches every key exactly once in all; market records and a
    malformed heartbeat are emitted once; an index price under a non-broadcast key
    becomes one ``not_broadcast`` dead letter instead of reaching one worker only."""
    market, status = new_topic(partitions=2), new_topic(partitions=2)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    trades = [Trade(id=f"t{i}", venue=v, instrument="BTC-PERP", ts=1_000 + i, price=1.0,
                    qty=1.0, side="buy") for i, v in enumerate(["okx", "binance", "deribit"] * 4)]
    for t in trades:
        p.produce(market, encode(t), f"{t.venue}/{t.instrument}".encode())
    for i in range(6):
        ip = IndexPrice(id=f"i{i}", venue="index", instrument="BTC-PERP", ts=2_000 + i,
                        price=1.0)
        p.produce(market, encode(ip), b"index/BTC-PERP")
    stray = IndexPrice(id="stray", venue="index", instrument="BTC-PERP", ts=3_000, price=1.0)
    p.produce(market, encode(stray), b"okx/BTC-PERP")
    for i in range(4):
        hb = VenueStatus(id=f"h{i}", venue="okx", ts=4_000 + i, state=VenueState.OK)
        p.produce(status, encode(hb), b"okx/")
    p.produce(status, b"{not json", b"okx/")
    assert p.flush(30) == 0

    flow = Dataflow("broadcast")
    src, read_on, dead = _read_with_broadcast(flow, kafka_bootstrap, market, status, bundle,
                                              key_split_topics=[market])
    targets = [f"k{n}" for n in range(20)]
    local = LocalKeys()
    fanned = op.flat_map("fan", op.filter("idx", src.oks, lambda r: isinstance(r, IndexPrice)),
                         lambda r: [(k, r.id) for k in targets if local(k)])
    got: list[tuple[str, str, int]] = []
    op.inspect_debug("landed", op.stateful_map("at", fanned, lambda s, v: (s, v)),
                     inspector=lambda _s, kv, _e, worker: got.append((kv[0], kv[1], worker)))
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    for t in trades:
        assert len(read_on[t.id]) == 1, t.id
    for rid in [f"i{i}" for i in range(6)] + [f"h{i}" for i in range(4)]:
        assert sorted(read_on[rid]) == [0, 1], rid
    assert "stray" not in read_on
    assert sorted(r for r, _w in dead) == ["malformed", "not_broadcast"]
    # each (key, index price) once in all, on the worker that holds the key
    assert sorted((k, rid) for k, rid, _w in got) == sorted(
        (k, f"i{i}") for k in targets for i in range(6))
    assert all(w == route_worker(k, 2) for k, _rid, w in got)


@pytest.mark.parametrize(("workers", "partitions"), [(1, 4), (2, 4), (4, 4), (3, 6), (2, 8)])
def test_an_aligned_partition_is_read_by_the_worker_its_keys_route_to(
    workers: int, partitions: int
) -> None:
    """With W dividing the partition count, partition i (read by worker i % W) holds only
    keys that bytewax routes to worker i % W, for every such W."""
    for key in KEYS:
        assert placement.aligned_partition(key, partitions) % workers == route_worker(key, workers)
    assert placement.aligned_partitions(b"index/BTC", partitions, (b"index/",)) == list(
        range(partitions))


def _aligned_flow(bootstrap: str, market: str, status: str, bundle: bool) -> tuple[
        Dataflow, dict[str, list[int]], list[tuple[str, int]], dict[str, int]]:
    flow = Dataflow("aligned")
    src, read_on, dead = _read_with_broadcast(flow, bootstrap, market, status, bundle,
                                              aligned_topics=[market])
    keyed = op.key_on("key", op.filter("trades", src.oks, lambda r: isinstance(r, Trade)),
                      lambda r: f"{r.venue}/{r.instrument}")
    state_on: dict[str, int] = {}
    op.inspect_debug("state_on", op.stateful_map("state", keyed, lambda s, r: (s, r)),
                     inspector=lambda _s, kv, _e, worker: state_on.__setitem__(kv[1].id, worker))
    return flow, read_on, dead, state_on


@pytest.mark.kafka
@pytest.mark.parametrize("bundle", [False, True])
def test_aligned_topic_records_are_read_once_where_their_key_lives(
    kafka_bootstrap: str, new_topic, bundle: bool
) -> None:
    """With 2 workers and a 4-partition topic produced with aligned_partitions: each
    market record is read exactly once, on the worker that holds its key's state (so
    keying never moves it); each worker emits one copy of every index price (written to
    every partition) and of every heartbeat; nothing is counted as misaligned."""
    market, status = new_topic(partitions=4), new_topic(partitions=2)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {}
    for key, rec in _market_trades():
        for part in placement.aligned_partitions(key, 4, (b"index/",)):
            p.produce(market, encode(rec), key.encode(), partition=part)
        sent[rec.id] = key
    for i in range(5):
        ip = IndexPrice(id=f"i{i}", venue="index", instrument="BTC-PERP", ts=2_000 + i,
                        price=1.0)
        for part in placement.aligned_partitions(b"index/BTC-PERP", 4, (b"index/",)):
            p.produce(market, encode(ip), b"index/BTC-PERP", partition=part)
    for i in range(3):
        p.produce(status, encode(VenueStatus(id=f"h{i}", venue="okx", ts=4_000 + i,
                                             state=VenueState.OK)), b"okx/")
    assert p.flush(30) == 0
    before = _misaligned(market)

    flow, read_on, dead, state_on = _aligned_flow(kafka_bootstrap, market, status, bundle)
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    assert not dead
    assert all(len(read_on[rid]) == 1 for rid in sent), "a record was read twice"
    assert {rid: read_on[rid][0] for rid in sent} == state_on
    assert state_on == {rid: route_worker(key, 2) for rid, key in sent.items()}
    assert set(state_on.values()) == {0, 1}
    for rid in [f"i{i}" for i in range(5)] + [f"h{i}" for i in range(3)]:
        assert sorted(read_on[rid]) == [0, 1], rid
    assert _misaligned(market) == before


def _misaligned(topic: str) -> float:
    from riskguard.operators.core.metrics import MISALIGNED

    return MISALIGNED.labels(topic)._value.get()


@pytest.mark.kafka
def test_a_record_produced_to_the_wrong_aligned_partition_is_still_read_once_and_counted(
    kafka_bootstrap: str, new_topic
) -> None:
    """A producer that ignores aligned_partitions costs a move downstream, never a record:
    each is read once, its state still lives where its key routes, and the source counts
    it in riskguard_misaligned_records_total."""
    market, status = new_topic(partitions=2), new_topic(partitions=1)
    key = "okx/BTC-PERP"
    wrong = 1 - placement.aligned_partition(key, 2)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    ids = [f"w{i}" for i in range(7)]
    for i, rid in enumerate(ids):
        rec = Trade(id=rid, venue="okx", instrument="BTC-PERP", ts=1_000 + i, price=1.0,
                    qty=1.0, side="buy")
        p.produce(market, encode(rec), key.encode(), partition=wrong)
    assert p.flush(30) == 0
    before = _misaligned(market)

    flow, read_on, dead, state_on = _aligned_flow(kafka_bootstrap, market, status, False)
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    assert not dead
    assert read_on == {rid: [wrong] for rid in ids}
    assert state_on == dict.fromkeys(ids, route_worker(key, 2))
    assert _misaligned(market) == before + len(ids)


@pytest.mark.kafka
def test_an_aligned_topic_whose_partitions_the_workers_do_not_divide_is_a_config_error(
    kafka_bootstrap: str, new_topic
) -> None:
    """3 partitions cannot be aligned with 2 workers: start-up names the topic and count."""
    market = new_topic(partitions=3)
    saved = dict(placement._CLUSTER)
    placement._CLUSTER["workers"] = 2
    try:
        src = KafkaInput(kafka_bootstrap, [market], aligned_topics=[market])
        with pytest.raises(ConfigError, match=r"^kafka\.aligned_topics: .*multiple of the 2 "
                           rf"workers.*{market}: 3 partitions"):
            src.list_parts()
    finally:
        placement._CLUSTER.clear()
        placement._CLUSTER.update(saved)
    with pytest.raises(ConfigError, match="neither key-split nor broadcast"):
        KafkaInput(kafka_bootstrap, [market], aligned_topics=[market],
                   key_split_topics=[market])
