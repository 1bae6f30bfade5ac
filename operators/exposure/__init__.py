"""Engine-neutral exposure aggregation in three keyed stages, then limits.

Stage 1, :class:`ShardLogic`, keyed by a shard of instruments and collateral assets
(``s<k>``), holds their marks with every counterparty's positions in them and emits one
:class:`Part` per counterparty whose value moved; stage 2, :class:`CounterpartyLogic`,
sums a counterparty's parts into its :class:`~riskguard.schemas.Exposure` (a position or
collateral that cannot be valued is named, never counted as zero); stage 3,
:class:`FirmLogic`, adds concentration and the firm rollup (``counterparty == "*"``).
Untimed, counterparties re-value once per batch, so an excursion inside one batch is not
seen; ticked (``aggregate_exposure(..., ticks=...)``), once per tick, independent of
batching. Details: docs/exposure.md ("Stages").

Where each part lives:

- :mod:`~riskguard.operators.exposure.ops`: the bytewax operators
  :func:`aggregate_exposure` (or :func:`value_positions` then :func:`sum_exposures`)
  and :func:`enforce_limits`;
- :mod:`~riskguard.operators.exposure.config`: :class:`ExposureConfig`;
- :mod:`~riskguard.operators.exposure.instruments`: the instrument registry and
  reporting-currency conversion;
- :mod:`~riskguard.operators.exposure.routing`: sharding, records to stage-1 shards;
- :mod:`~riskguard.operators.exposure.shards` (stage 1, its state in
  :mod:`~riskguard.operators.exposure.shard_state`), its marks and realized vols in
  :mod:`~riskguard.operators.exposure.marks`, its re-valuation in
  :mod:`~riskguard.operators.exposure.valuation` (numpy helpers in
  :mod:`~riskguard.operators.exposure.arrays`);
- :mod:`~riskguard.operators.exposure.rollup`: stages 2 and 3;
- :mod:`~riskguard.operators.exposure.limits`: limit levels, hysteresis, latches, their
  specs and tables in :mod:`~riskguard.operators.exposure.limit_specs`.
"""

from riskguard.operators.exposure.config import (
    FIRM_KEY,
    NS_PER_S,
    SECONDS_PER_YEAR,
    STATE_VERSION,
    ExposureConfig,
    MarkSource,
)
from riskguard.operators.exposure.instruments import (
    InstrumentRegistry,
    InstrumentsConfig,
    InstrumentSpec,
)
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
)
from riskguard.operators.exposure.limit_updates import (
    MAX_UPDATED_COUNTERPARTIES,
    Approved,
    UpdateGate,
    UpdateGateState,
    Verifier,
    trust_verifier,
)
from riskguard.operators.exposure.limits import LimitsLogic, LimitsState
from riskguard.operators.exposure.ops import (
    ExposureOut,
    LimitsOut,
    SumOut,
    ValuedOut,
    aggregate_exposure,
    enforce_limits,
    sum_exposures,
    value_positions,
)
from riskguard.operators.exposure.rollup import (
    CounterpartyLogic,
    CounterpartyState,
    FirmLogic,
    FirmState,
)
from riskguard.operators.exposure.routing import (
    PROGRESS_KEY,
    Item,
    Router,
    ShardPlace,
    route,
    shard_key,
    shard_keys,
    split_progress,
)
from riskguard.operators.exposure.shard_state import Pending, ShardState
from riskguard.operators.exposure.shards import ShardLogic, apply_fill
from riskguard.operators.exposure.valuation import NEVER_STALE
from riskguard.schemas.valuation import Part, Progress

__all__ = [
    "FIRM_KEY",
    "MAX_UPDATED_COUNTERPARTIES",
    "NEVER_STALE",
    "NS_PER_S",
    "PROGRESS_KEY",
    "SECONDS_PER_YEAR",
    "STATE_VERSION",
    "Approved",
    "CounterpartyLimits",
    "CounterpartyLogic",
    "CounterpartyState",
    "ExposureConfig",
    "ExposureOut",
    "FirmLogic",
    "FirmState",
    "InstrumentRegistry",
    "InstrumentSpec",
    "InstrumentsConfig",
    "Item",
    "LimitSpec",
    "LimitsConfig",
    "LimitsLogic",
    "LimitsOut",
    "LimitsState",
    "MarkSource",
    "Part",
    "Pending",
    "Progress",
    "Router",
    "ShardLogic",
    "ShardPlace",
    "ShardState",
    "SumOut",
    "UpdateGate",
    "UpdateGateState",
    "ValuedOut",
    "Verifier",
    "VolScaling",
    "aggregate_exposure",
    "apply_fill",
    "enforce_limits",
    "route",
    "shard_key",
    "shard_keys",
    "split_progress",
    "sum_exposures",
    "trust_verifier",
    "value_positions",
]
