"""Kafka in, decode and validate, Kafka out: the foundation's reference flow.

Good records go to ``out_topic``; everything that fails the wire contract
goes to ``dlq_topic`` as a dead letter. Run it with, e.g.::

    python -m bytewax.run \\
      "riskguard.dataflows.passthrough:build('127.0.0.1:9092', ['in'], 'out', 'dlq')"
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow
from riskguard.connectors.kafka import Fetch, kafka_input, kafka_output


def build(
    bootstrap: str,
    topics: list[str],
    out_topic: str,
    dlq_topic: str,
    idle_eof_s: float | None = None,
    batch_size: int = 1000,
) -> Dataflow:
    """A validated pass-through from ``topics`` to ``out_topic`` (bad input to ``dlq_topic``)."""
    flow = Dataflow("riskguard_passthrough")
    src = kafka_input("in", flow, brokers=bootstrap, topics=topics, idle_eof_s=idle_eof_s,
                      fetch=Fetch(batch_size=batch_size))
    kafka_output("out", src.oks, brokers=bootstrap, topic=out_topic)
    kafka_output("dlq", src.errs, brokers=bootstrap, topic=dlq_topic)
    return flow
