"""Our Kafka sink fails loudly when the broker cannot acknowledge writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.kafka import kafka_output
from riskguard.connectors.topics import TopicSpec, create_topics
from riskguard.schemas import Trade

from riskguard.errors import BrokerError, DeliveryError
from tests.errors_util import chain, chain_text

pytestmark = pytest.mark.kafka


def _trades(stop_broker: threading.Event) -> Iterator[Trade]:
    for i in range(200_000):
        if i == 2_000:
            stop_broker.set()
            time.sleep(0.5)  # let the broker die while the flow is still writing
        yield Trade(id=f"t{i}", venue="v", instrument="i", ts=i, price=1.0, qty=1.0, side="buy")


def test_flow_fails_loudly_when_broker_dies_during_a_write(tmp_path) -> None:
    """Stopping the broker mid-write makes run_main raise DeliveryError, never report success."""
    broker = DevBroker(tmp_path)
    info = broker.start()
    create_topics({"bootstrap.servers": info.bootstrap}, [TopicSpec("out", 1)])
    stop = threading.Event()
    threading.Thread(target=lambda: (stop.wait(60), broker.stop()), daemon=True).start()
    flow = Dataflow("sink_failure")
    items = op.input("in", flow, TestingSource(_trades(stop), batch_size=500))
    kafka_output("out", items, brokers=info.bootstrap, topic="out", delivery_timeout_s=2.0)
    try:
        with pytest.raises(Exception) as caught:
            run_main(flow)
    finally:
        broker.stop()
    errors = chain(caught.value)
    assert any(isinstance(e, DeliveryError) for e in errors), chain_text(caught.value)


def test_unreachable_broker_at_start_is_a_clear_error() -> None:
    """Listing partitions on a dead address raises BrokerError naming the address."""
    from riskguard.connectors.kafka import list_partitions
    from riskguard.connectors.settings import KafkaSettings

    with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
        list_partitions(KafkaSettings(bootstrap="127.0.0.1:1"), "any", timeout_s=1.0)


_INPUT_FAILS = """
import os, signal, sys, time
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from riskguard.connectors.kafka import kafka_output
from riskguard.connectors.kafka.sink import flow_failing
from riskguard.errors import BrokerError
from riskguard.schemas import Trade

bootstrap, broker_pid = sys.argv[1], int(sys.argv[2])

def items():
    for i in range(50):
        yield Trade(id=f"t{i}", venue="v", instrument="i", ts=i, price=1.0, qty=1.0,
                    side="buy")
    os.kill(broker_pid, signal.SIGSTOP)  # gone: what the sink holds stays queued
    time.sleep(0.5)
    flow_failing("in[0]")  # as the Kafka source does before it raises
    raise BrokerError("cannot confirm the end of input (drill)")

flow = Dataflow("input_fails")
kafka_output("out", op.input("in", flow, TestingSource(items(), batch_size=10)),
             brokers=bootstrap, topic="out", delivery_timeout_s=1.0)
run_main(flow)
"""


def test_an_input_failing_while_the_sink_holds_undelivered_messages_reports_the_input(
        tmp_path) -> None:
    """The broker freezes, the input raises: bytewax closes the sink while it unwinds,
    and the sink, which cannot deliver what it holds, drops it instead of raising again
    (a second error there aborts the process before the first is reported)."""
    import os
    import signal
    import subprocess
    import sys

    broker = DevBroker(tmp_path)
    info = broker.start()
    create_topics({"bootstrap.servers": info.bootstrap}, [TopicSpec("out", 1)])
    pid = broker.status().pid  # type: ignore[union-attr]
    try:
        done = subprocess.run([sys.executable, "-c", _INPUT_FAILS, info.bootstrap, str(pid)],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        os.kill(pid, signal.SIGCONT)
        broker.stop()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "BrokerError: cannot confirm the end of input (drill)" in done.stderr
    assert "panic in a destructor" not in done.stderr
