"""The consumer-lag gauge (``riskguard status`` reads it): the high watermark minus the next
offset to read, 0 when caught up, never computed from an offset sentinel."""

from __future__ import annotations

import pytest
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID
from prometheus_client import REGISTRY
from riskguard.connectors.kafka import consumer_lag
from riskguard.dataflows.passthrough import build
from riskguard.schemas import encode
from riskguard.schemas.market import Trade

from tests.kafka_helpers import produce


def lag_of(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("riskguard_kafka_consumer_lag",
                                     {"stream": topic, "partition": str(partition)})


def trades(n: int) -> list[bytes]:
    return [encode(Trade(id=f"t{k}", venue="okx", instrument="BTC-USDT", ts=k + 1,
                         price=100.0, qty=1.0, side="buy")) for k in range(n)]


@pytest.mark.parametrize(("offset", "lo", "hi", "lag"), [
    (25, 0, 25, 0),                 # caught up
    (20, 0, 25, 5),                 # five left to read
    (25, 0, 23, 0),                 # a high watermark under-reported: never below 0
    (OFFSET_BEGINNING, 0, 0, 0),    # an empty partition, nothing read yet
    (OFFSET_BEGINNING, 3, 10, 7),   # nothing read yet: all that is there
    (OFFSET_INVALID, 3, 10, 7),
    (OFFSET_END, 3, 10, 0),         # starts at the end: nothing before it is to read
    (OFFSET_BEGINNING, None, 10, None),  # the low watermark unknown: not reported
    (7, 0, None, None),             # the high watermark unknown: not reported
])
def test_lag_is_the_high_watermark_minus_the_next_offset_never_a_sentinel(
    offset: int, lo: int | None, hi: int | None, lag: int | None,
) -> None:
    """A sentinel (OFFSET_BEGINNING -2, OFFSET_END -1, OFFSET_INVALID -1001) is never used
    as an offset: with nothing read yet the lag is what the partition holds."""
    assert consumer_lag(offset, lo, hi) == lag


@pytest.mark.kafka
def test_a_caught_up_source_reports_lag_0_on_every_partition(
    kafka_bootstrap: str, new_topic,
) -> None:
    """25 messages on partition 0, 3 on partition 1, a topic with no message at all
    (watermarks (0, 0)), read a few at a time: once everything is read, every
    partition's lag is 0 (not the lag of the first read, nor the sentinel's 2)."""
    full, empty = new_topic(2), new_topic(1)
    produce(kafka_bootstrap, full, trades(25), partition=0)
    produce(kafka_bootstrap, full, trades(3), partition=1)
    out, dlq = new_topic(1), new_topic(1)
    run_main(build(kafka_bootstrap, [full, empty], out, dlq, idle_eof_s=1.0, batch_size=1))
    assert (lag_of(full, 0), lag_of(full, 1), lag_of(empty, 0)) == (0.0, 0.0, 0.0)


@pytest.mark.kafka
def test_a_partition_that_never_had_data_costs_no_watermark_round_trip_at_its_end(
    kafka_bootstrap: str, new_topic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At its end a partition is caught up: its lag is 0 without asking the broker for
    its watermarks, which a start over hundreds of silent partitions would otherwise
    wait on, one round trip each. A bounded run still asks once each at its idle end,
    to confirm nothing is left."""
    from riskguard.connectors.kafka.consumer import SharedConsumer

    asked: list[tuple[str, int]] = []
    real = SharedConsumer.end_offsets

    def counted(self: SharedConsumer, topic: str, idx: int, timeout_s: float = 5.0) -> object:
        asked.append((topic, idx))
        return real(self, topic, idx, timeout_s)

    monkeypatch.setattr(SharedConsumer, "end_offsets", counted)
    silent = new_topic(8)
    out, dlq = new_topic(1), new_topic(1)
    run_main(build(kafka_bootstrap, [silent], out, dlq, idle_eof_s=1.0))
    assert all(lag_of(silent, k) == 0.0 for k in range(8))
    assert len(asked) <= 8  # the idle end's check, once each; none for the lag gauge


@pytest.mark.kafka
def test_a_backlog_shows_in_the_lag_gauge_from_the_first_read(
    kafka_bootstrap: str, new_topic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first read's fetch carries the high watermark: a backlogged partition's lag
    is set then, not one gauge period later (the run is over well before one)."""
    from prometheus_client.metrics import Gauge

    backlog = new_topic(1)
    for _ in range(5):  # five produce batches: the dev broker's high watermark is the last
        produce(kafka_bootstrap, backlog, trades(20), partition=0)
    seen: list[float] = []
    real = Gauge.set

    def recorded(self: Gauge, value: float) -> None:
        if getattr(self, "_labelvalues", ()) == (backlog, "0"):
            seen.append(value)
        real(self, value)

    monkeypatch.setattr(Gauge, "set", recorded)
    out, dlq = new_topic(1), new_topic(1)
    run_main(build(kafka_bootstrap, [backlog], out, dlq, idle_eof_s=1.0, batch_size=5))
    assert seen and seen[0] > 0 and seen[-1] == 0.0
