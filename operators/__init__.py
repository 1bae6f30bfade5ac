"""riskguard's bytewax operators, and the engine-neutral logic under them, by domain.

Every public operator and its configuration is importable from here, as bytewax's own
are from ``bytewax.operators``::

    from riskguard.operators import aggregate_exposure, enforce_limits, plan_mitigation

Each domain is a subpackage; its ``ops`` module holds its operators, the other modules
the logic classes they adapt (docs/api.md lists them all):

- :mod:`riskguard.operators.detection`: market records in, anomaly and dislocation
  signals out (features, the online detector, move bands, cross rates);
- :mod:`riskguard.operators.exposure`: positions and marks in, exposures and limit
  levels out (sharded valuation, counterparty and firm rollup, limits);
- :mod:`riskguard.operators.mitigation`: signals in, graduated mitigation commands out
  (the playbook and its rules, feed failover);
- :mod:`riskguard.operators.signing`: keys, signed envelopes, the trust file; commands
  signed on the way out and operators' commands verified on the way in;
- :mod:`riskguard.operators.audit`: the tamper-evident audit log (Merkle chains with
  signed checkpoints), its verification and proofs;
- :mod:`riskguard.operators.core`: plumbing every domain uses (the logic protocol and
  its bytewax adapter, clocks, de-duplication, metrics).

>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> import bytewax.operators as op
>>> from riskguard.schemas import Quote
>>> flow = Dataflow("features")
>>> quotes = op.input("in", flow, TestingSource([Quote(id="q1", venue="okx",
...     instrument="BTC-USDT", ts=0, bid=99.0, bid_size=1.0, ask=101.0, ask_size=1.0)]))
>>> feats = extract_features("features", quotes, config=FeatureConfig(venues=("okx",)),
...                          clock=lambda: 10**19)
>>> got = []
>>> op.output("out", feats.oks, TestingSink(got))
>>> run_main(flow)
>>> [(key, vec.price, vec.values["spread_bps"]) for key, vec in got]
[('okx/BTC-USDT', 100.0, 200.0)]
"""

from riskguard.operators.audit import (
    AuditConfig,
    ReplicaWatchConfig,
    audit_log,
    watch_replicas,
)
from riskguard.operators.core import (
    AdmissionConfig,
    AdmitOut,
    Clock,
    Known,
    SplitOut,
    Tick,
    admit_keys,
    split_dead_letters,
    stateful_logic,
    step_cpu,
    system_clock,
)
from riskguard.operators.detection import (
    BandLevels,
    CrossRateConfig,
    DetectorConfig,
    DetectOut,
    FeatureConfig,
    FeaturesOut,
    MarketProgress,
    MoveBandConfig,
    ProductBands,
    StaleBookConfig,
    StaleBookProduct,
    VenueConfirmConfig,
    VolatilityLevels,
    confirm_across_venues,
    detect_anomalies,
    detect_dislocations,
    extract_features,
)
from riskguard.operators.exposure import (
    Approved,
    CounterpartyLimits,
    ExposureConfig,
    ExposureOut,
    InstrumentsConfig,
    InstrumentSpec,
    LimitsConfig,
    LimitsOut,
    LimitSpec,
    ShardPlace,
    SumOut,
    ValuedOut,
    Verifier,
    VolScaling,
    aggregate_exposure,
    enforce_limits,
    sum_exposures,
    trust_verifier,
    value_positions,
)
from riskguard.operators.mitigation import (
    FeedConfig,
    PlaybookConfig,
    Rule,
    Rung,
    VenueFeeds,
    plan_mitigation,
)
from riskguard.operators.signing import SignConfig, Signer, sign_commands

__all__ = [
    "AdmissionConfig",
    "AdmitOut",
    "Approved",
    "AuditConfig",
    "BandLevels",
    "Clock",
    "CounterpartyLimits",
    "CrossRateConfig",
    "DetectOut",
    "DetectorConfig",
    "ExposureConfig",
    "ExposureOut",
    "FeatureConfig",
    "FeaturesOut",
    "FeedConfig",
    "InstrumentSpec",
    "InstrumentsConfig",
    "Known",
    "LimitSpec",
    "LimitsConfig",
    "LimitsOut",
    "MarketProgress",
    "MoveBandConfig",
    "PlaybookConfig",
    "ProductBands",
    "ReplicaWatchConfig",
    "Rule",
    "Rung",
    "ShardPlace",
    "SignConfig",
    "Signer",
    "SplitOut",
    "StaleBookConfig",
    "StaleBookProduct",
    "SumOut",
    "Tick",
    "ValuedOut",
    "VenueConfirmConfig",
    "VenueFeeds",
    "Verifier",
    "VolScaling",
    "VolatilityLevels",
    "admit_keys",
    "aggregate_exposure",
    "audit_log",
    "confirm_across_venues",
    "detect_anomalies",
    "detect_dislocations",
    "enforce_limits",
    "extract_features",
    "plan_mitigation",
    "sign_commands",
    "split_dead_letters",
    "stateful_logic",
    "step_cpu",
    "sum_exposures",
    "system_clock",
    "trust_verifier",
    "value_positions",
    "watch_replicas",
]
