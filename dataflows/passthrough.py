"""Kafka in, decode and validate, Kafka out: the foundation's reference flow.

Good records go to ``out_topic``; everything that fails the wire contract
goes to ``dlq_topic`` as a dead letter. Run it on a cluster with, e.g.::

    python -m bytewax.run \\
      "riskguard.dataflows.passthrough:build('127.0.0.1:9092', ['in'], 'out', 'dlq')" -w 2
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow
from riskguard.connectors.kafka import kafka_input, kafka_output


def build(
    bootstrap: str,
    topics: list[str],
    out_topic: str,
    dlq_topic: str,
    idle_eof_s: float | None = None,
    batch_size: int = 1000,
    share_consumer: bool = False,
    bundle: bool = False,
) -> Dataflow:
    """A validated pass-through from ``topics`` to ``out_topic`` (bad input to ``dlq_topic``)."""
    flow = Dataflow("riskguard_passthrough")
    src = kafka_input(
        "in", flow, brokers=bootstrap, topics=topics, idle_eof_s=idle_eof_s,
        batch_size=batch_size, share_consumer=share_consumer, bundle=bundle,
    )
    kafka_output("out", src.oks, brokers=bootstrap, topic=out_topic)
    kafka_output("dlq", src.errs, brokers=bootstrap, topic=dlq_topic)
    return flow
