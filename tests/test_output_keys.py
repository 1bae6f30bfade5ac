"""Both engines write each of the guard's output topics under the same Kafka keys: a
market's signals, a counterparty's exposures and a chain's audit records each keep one
partition, in order, on bytewax as on Flink."""

from __future__ import annotations

from audit_fixtures import audited_command
from playbook_cases import anomaly
from riskguard.connectors.kafka.sink import kafka_message
from riskguard.dataflows.guard.kafka_io import OUTPUT_STREAMS, output_keys
from riskguard.flink.plan import sink_rows
from riskguard.schemas import DeadLetter, Exposure


def test_each_output_topic_is_keyed_alike_on_both_engines() -> None:
    samples = {
        "dead_letters": DeadLetter.of(topic="t", partition=0, offset=7, ts=1,
                                      reason="malformed", raw=b"{"),
        "signals": anomaly(1.0),
        "exposures": Exposure(counterparty="okx", ts=1, gross_notional=1.0, net_notional=1.0),
        "audit": audited_command("guard-1", 0, "d1"),
    }
    keys = output_keys("guard-1")
    assert set(keys) == set(OUTPUT_STREAMS)
    for name, rec in samples.items():
        _route, (bytewax_key, _value) = kafka_message((keys[name](rec), rec))
        flink_key = next(sink_rows(lambda *fields: fields, keys[name])(name, rec, 1, 0))[3]
        assert (flink_key.encode() if flink_key else None) == bytewax_key, name
    assert keys["signals"](samples["signals"]) == "okx/BTC-USDT"
    assert keys["exposures"](samples["exposures"]) == "okx"
    assert keys["audit"](samples["audit"]) == "guard-1"
    assert keys["commands"](None) == "guard-1"
