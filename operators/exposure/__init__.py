"""Engine-neutral exposure aggregation in three keyed stages.

Exposure and limits: positions and marks in, each counterparty's exposure and the
firm rollup out, then limit levels, breaches and utilization.

The exposure aggregation runs in three keyed stages.

Stage 1, :class:`ShardLogic`, is keyed by a *shard of what is being valued*
(``s<k>``, a stable hash of the instrument or collateral asset over
``valuation_shards`` shards). It holds its instruments' marks, FX rates and
realized-vol estimates together with the positions (and open orders) of
*every* counterparty in them, as dense ``counterparty x instrument`` arrays,
so a mark update meets the positions it re-marks without any all-to-all
exchange. Once per batch it re-values, with whole-array operations, every
counterparty whose positions or marks moved, and emits one :class:`Part` per
such counterparty: its complete sums over the shard.

Stage 2, :class:`CounterpartyLogic`, is keyed by counterparty. It keeps the
latest part per shard, re-sums them exactly, detects stale marks against the
counterparty's event-time watermark, and emits the counterparty's
:class:`~riskguard.schemas.Exposure` (at most once per batch). A position with no
mark or no FX rate, or collateral with no FX rate, is left out of the sums and
named in ``unvalued_instruments`` / ``unvalued_collateral`` (and ``stale``): the
limits count it as unvalued, never as zero.

Stage 3, :class:`FirmLogic`, is keyed by the constant ``"firm"``. It keeps
the latest exposure per counterparty, computes each one's concentration
(share of the firm-wide total) and emits the firm rollup
(``counterparty == "*"``).

**Granularity.** Every record is applied in order, and every counterparty
whose value moved is re-valued once per batch, after the batch's last record:
the emitted exposure always reflects every mark. An excursion that starts and
ends *inside* one input batch (a price spike and its reversal among the same
``batch_size`` records) is therefore not seen by ``enforce_limits``; the
limit levels move at batch boundaries. Fed one record at a time
(:class:`LocalPipeline`, or a source with ``batch_size=1``) it is per record.

**Ticked mode** (``ticked=True``, what ``aggregate_exposure(..., ticks=...)``
builds): stage 1 re-values on each :class:`~riskguard.operators.core.clock.Tick`
instead, stamping its parts with the tick's time; records before a tick (by
``ts``) are in, later ones wait for the next tick, even when they share a
batch. A fill, snapshot, balance or orders record does not wait for the tick:
its counterparty re-values at the next ``position_revalue_ns`` boundary. Stages
2 and 3 emit once per tick (or boundary) time rather than once per batch. The
outputs then depend on the event-time order of records and ticks only, not on
how the input was batched. With several tick sources (guard workers), a record
further than ``reorder_slack_ns`` ahead of their watermark waits in the shard.
Each stage passes the ticks on behind its outputs (:class:`Progress`), so a
consumer of the limits stage can take its clock from the end of the path.

All three are driven by :func:`route` (stateless) and can be chained in
memory with :class:`LocalPipeline` (tests, backtests) or by the bytewax
operators in :mod:`riskguard.operators.exposure.ops`.

Where each part lives:

- :mod:`~riskguard.operators.exposure.ops`: the bytewax operators
  :func:`aggregate_exposure` (or :func:`value_positions` then :func:`sum_exposures`)
  and :func:`enforce_limits`;
- :mod:`~riskguard.operators.exposure.config`: :class:`ExposureConfig`;
- :mod:`~riskguard.operators.exposure.instruments`: the instrument registry and
  reporting-currency conversion;
- :mod:`~riskguard.operators.exposure.routing`: sharding, records to stage-1 shards;
- :mod:`~riskguard.operators.exposure.shards` (stage 1, its state in
  :mod:`~riskguard.operators.exposure.shard_state`), its marks and re-valuation in
  :mod:`~riskguard.operators.exposure.valuation` (numpy helpers in
  :mod:`~riskguard.operators.exposure.arrays`);
- :mod:`~riskguard.operators.exposure.rollup`: stages 2 and 3;
- :mod:`~riskguard.operators.exposure.pipeline`: :class:`LocalPipeline`;
- :mod:`~riskguard.operators.exposure.limits`: limit levels, hysteresis, latches, their
  specs and tables in :mod:`~riskguard.operators.exposure.limit_specs`.

>>> cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
...     "BTC-USD": InstrumentSpec(kind="spot", base="BTC", quote="USD")}))
>>> from riskguard.schemas import Fill, Trade
>>> pipe = LocalPipeline(cfg)
>>> _ = pipe.feed(Trade(id="t1", venue="v", instrument="BTC-USD", ts=1, price=50.0,
...                     qty=1.0, side="buy"))
>>> out = pipe.feed(Fill(id="f1", venue="v", counterparty="v", instrument="BTC-USD",
...                      side="buy", qty=2.0, price=40.0, ts=2))
>>> [(e.counterparty, e.gross_notional, e.unrealized_pnl) for e in out.exposures]
[('v', 100.0, 20.0), ('*', 100.0, 20.0)]
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
from riskguard.operators.exposure.pipeline import LocalPipeline, PipelineOut, PipelineState
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
    "LocalPipeline",
    "MarkSource",
    "Part",
    "Pending",
    "PipelineOut",
    "PipelineState",
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
