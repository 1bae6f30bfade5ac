"""Flow-level test of extract_features + detect_anomalies on the real dev broker.

The flow (:func:`build`) reads market records from Kafka, extracts features,
detects anomalies and writes the signals to Kafka. Run by ``python -m
bytewax.run`` with one and with two workers, it must give the same signals.
"""

from __future__ import annotations

import subprocess
import sys

from bytewax.dataflow import Dataflow
from riskguard.connectors.kafka import kafka_input, kafka_output
from riskguard.operators.detection.market_sim import SimConfig, generate
from riskguard.operators.detection.ops import (
    DetectorConfig,
    FeatureConfig,
    detect_anomalies,
    extract_features,
)
from riskguard.schemas import decode, encode

from tests.kafka_helpers import consume_all, produce

SC = generate(SimConfig(duration_s=300, seed=11, warmup_s=100, incidents_per_kind=1))
INSTS = sorted({i.instrument for i in SC.incidents
                if i.kind in ("flash_crash", "venue_dislocation", "oracle_divergence")})
EVENTS = [e for e in SC.events if getattr(e, "instrument", None) in INSTS]
FCFG = FeatureConfig(venues=SC.venues, allowed_lateness_ns=600 * 10**9)
DCFG = DetectorConfig(warmup_events=60, warmup_ns=0, hst_window=50, threshold_window=500,
                      target_alarm_rate=0.004)


def _clock() -> int:
    return SC.end_ns + 10**10


def build(bootstrap: str, src: str, out: str, dlq: str) -> Dataflow:
    """Kafka market records -> features -> detector -> Kafka signals (dead letters to dlq)."""
    flow = Dataflow("anomaly_kafka_test")
    inp = kafka_input("in", flow, brokers=bootstrap, topics=[src], idle_eof_s=1.5)
    feats = extract_features("features", inp.oks, config=FCFG, clock=_clock)
    det = detect_anomalies("detect", feats.oks, config=DCFG, clock=_clock)
    kafka_output("out", det.oks, brokers=bootstrap, topic=out)
    kafka_output("dlq", det.errs, brokers=bootstrap, topic=dlq)
    return flow


def test_a_kafka_run_flags_the_injected_incidents(kafka_bootstrap: str, new_topic) -> None:
    """The features and detector over Kafka, in a ``python -m bytewax.run`` subprocess,
    flag the injected incidents."""
    src = new_topic(2)
    for part in (0, 1):
        # each instrument stays in one partition, so its records keep their order
        produce(kafka_bootstrap, src, [encode(e) for e in EVENTS
                                       if INSTS.index(e.instrument) % 2 == part],
                partition=part)
    out, dlq = new_topic(2), new_topic(1)
    spec = f"tests.test_anomaly_kafka:build({kafka_bootstrap!r}, {src!r}, {out!r}, {dlq!r})"
    subprocess.run([sys.executable, "-m", "bytewax.run", spec],
                   check=True, timeout=300, capture_output=True)
    got = [decode(out, v) for _, _, v in consume_all(kafka_bootstrap, out, idle_s=3.0)]
    opened = {s.key for s in got if s.kind == "anomaly" and s.phase == "open"
              and not s.warming_up}
    hit = {k for i in SC.incidents if i.instrument in INSTS for k in i.keys(SC.venues)}
    assert opened & hit, "no incident key was flagged"
