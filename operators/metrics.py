"""Prometheus metrics shared by every riskguard operator and connector.

They register on prometheus-client's default registry, which is the one
bytewax serves on its own metrics endpoint (``BYTEWAX_DATAFLOW_API_ENABLED``).
Label values are bounded: streams, reasons, actions and scope kinds, never
per-record ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_IN = Counter(
    "riskguard_events_in_total", "Records decoded at the input boundary", ["stream"]
)
DEAD_LETTERS = Counter(
    "riskguard_dead_letters_total", "Records sent to the dead-letter stream", ["stream", "reason"]
)
EVENTS_OUT = Counter(
    "riskguard_events_out_total", "Records written by riskguard sinks", ["stream"]
)
DELIVERY_ERRORS = Counter(
    "riskguard_kafka_delivery_errors_total", "Kafka messages the broker did not acknowledge",
    ["stream"],
)

DETECTION_TO_COMMAND = Histogram(
    "riskguard_detection_to_command_seconds",
    "From the triggering event's receive time to the signed command's emit time",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
COMMANDS = Counter(
    "riskguard_commands_total", "Signed mitigation commands emitted", ["action", "scope_kind"]
)
