"""The reference guard dataflow: raw feeds in, signed mitigation commands out (the
wiring: :mod:`~riskguard.dataflows.guard.core`).

Run it with ``riskguard run --config guard.toml`` or
``RISKGUARD_CONFIG=guard.toml python -m bytewax.run riskguard.dataflows.guard``
(add ``-r`` for recovery). Every parameter comes from that one TOML file;
``dataflows/guard.example.toml`` documents them.

- :mod:`~riskguard.dataflows.guard.config`: :class:`GuardConfig` and its loading;
- :mod:`~riskguard.dataflows.guard.core`: :func:`guard_core`, the whole guard;
- :mod:`~riskguard.dataflows.guard.steps`: the steps the core is built from;
- :mod:`~riskguard.dataflows.guard.market`: the market processes that feed the firm
  process (``tier.role``);
- :mod:`~riskguard.dataflows.guard.kafka_io`: the Kafka source of each process;
- :mod:`~riskguard.dataflows.guard.live`: :func:`build_flow`, the live dataflow of any
  process, and :func:`from_env` behind ``python -m bytewax.run``.
"""

import os
from typing import Any

from bytewax.dataflow import Dataflow
from riskguard.connectors.topics import (
    DETECTED,
    DETECTIONS,
    FIRM_STREAMS,
    HANDLED,
    INPUT_STREAMS,
    MARKET,
    MARKET_STREAMS,
    STREAM_TYPES,
    TRADING,
)
from riskguard.dataflows.guard.config import (
    NS,
    GuardConfig,
    InputConfig,
    KeysConfig,
    TierConfig,
    apply_gc_policy,
    check_grants,
    load_guard_config,
    load_keys,
    price_key_prefixes,
    process_keys,
)
from riskguard.dataflows.guard.core import (
    GuardOut,
    guard_core,
)
from riskguard.dataflows.guard.kafka_io import (
    exposures_key,
)
from riskguard.dataflows.guard.live import (
    build_flow,
    from_env,
)
from riskguard.dataflows.guard.market import (
    MarketOut,
    MarketOwners,
    market_core,
    market_owners,
    market_source,
)
from riskguard.dataflows.guard.steps import is_broadcast
from riskguard.operators.exposure.mark_filter import MarkFilter

from riskguard.environment import check_environment


def __getattr__(name: str) -> Any:
    """``flow``: the guard built from ``$RISKGUARD_CONFIG`` (``python -m bytewax.run
    riskguard.dataflows.guard``)."""
    if name == "flow":
        check_environment(os.environ)  # a misspelt RISKGUARD_* name stops the start
        flow: Dataflow = from_env()
        return flow
    raise AttributeError(name)


__all__ = [
    "DETECTED",
    "DETECTIONS",
    "FIRM_STREAMS",
    "HANDLED",
    "INPUT_STREAMS",
    "MARKET",
    "MARKET_STREAMS",
    "NS",
    "STREAM_TYPES",
    "TRADING",
    "GuardConfig",
    "GuardOut",
    "InputConfig",
    "KeysConfig",
    "MarkFilter",
    "MarketOut",
    "MarketOwners",
    "TierConfig",
    "apply_gc_policy",
    "build_flow",
    "check_grants",
    "exposures_key",
    "from_env",
    "guard_core",
    "is_broadcast",
    "load_guard_config",
    "load_keys",
    "market_core",
    "market_owners",
    "market_source",
    "price_key_prefixes",
    "process_keys",
]
