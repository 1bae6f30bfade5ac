"""Kafka source -> sink pass-through on the dev broker: riskguard vs bytewax stock.

- stock: bytewax ``KafkaSource`` -> ``to_sink()`` -> bytewax ``KafkaSink`` (no decoding);
- ours: ``kafka_input`` (decode + validate into typed records) -> ``kafka_output``
  (encode, idempotent acks=all producer, delivery-checked flush at epoch boundaries).

Both run as one bytewax worker in a subprocess over the same input topic. The rate
is taken from the output messages' own producer timestamps (first to last), so
process start-up is not counted. Goal: ours / stock >= 1.0.

    python bench/kafka_passthrough.py [--n 200000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from confluent_kafka import Consumer, Producer, TopicPartition
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.topics import TopicSpec, create_topics


def stock(bootstrap: str, src: str, out: str) -> Dataflow:
    from bytewax.connectors.kafka import KafkaSink, KafkaSource

    flow = Dataflow("stock")
    msgs = op.input("in", flow, KafkaSource([bootstrap], [src], tail=True))
    op.output("out", op.map("to_sink", msgs, lambda m: m.to_sink()), KafkaSink([bootstrap], out))
    return flow


def ours(bootstrap: str, src: str, out: str, dlq: str) -> Dataflow:
    from riskguard.dataflows.passthrough import build

    return build(bootstrap, [src], out, dlq)


def fill(bootstrap: str, topic: str, n: int) -> None:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from decode import corpus

    data = corpus(1000)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        while True:
            try:
                p.produce(topic, data[i % 1000], str(i).encode())
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def measure(bootstrap: str, spec: str, out: str, n: int, partitions: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", spec], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parent),
    )
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "fetch.wait.max.ms": 50})
    c.assign([TopicPartition(out, p, 0) for p in range(partitions)])
    seen, first, last = 0, None, None
    deadline = time.monotonic() + 300
    try:
        while seen < n and time.monotonic() < deadline:
            for m in c.consume(5000, 0.2):
                if m.error() is not None:
                    continue
                ts = m.timestamp()[1]
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
                seen += 1
    finally:
        proc.kill()
        proc.wait()
        c.close()
    if seen < n or first is None or last is None or last <= first:
        msg = f"only {seen} of {n} messages came out"
        raise SystemExit(msg)
    return n / ((last - first) / 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = DevBroker(tempfile.mkdtemp())
        bootstrap = broker.start().bootstrap
    try:
        tag = uuid.uuid4().hex[:6]
        src, out_s, out_o, dlq = (
            f"{x}-{tag}" for x in ("in", "out-stock", "out-ours", "dlq")
        )
        create_topics({"bootstrap.servers": bootstrap}, [
            TopicSpec(src, args.partitions), TopicSpec(out_s, args.partitions),
            TopicSpec(out_o, args.partitions), TopicSpec(dlq, 1),
        ])
        fill(bootstrap, src, args.n)
        mod = "kafka_passthrough"
        base = measure(bootstrap, f"{mod}:stock({bootstrap!r}, {src!r}, {out_s!r})", out_s,
                       args.n, args.partitions)
        mine = measure(bootstrap, f"{mod}:ours({bootstrap!r}, {src!r}, {out_o!r}, {dlq!r})", out_o,
                       args.n, args.partitions)
        print(f"bytewax KafkaSource->KafkaSink (no decode)   {base:10,.0f} events/s  (baseline)")
        print(f"riskguard kafka_input->kafka_output          {mine:10,.0f} events/s  "
              f"ratio {mine / base:.2f}x  (goal >= 1.0x)")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
