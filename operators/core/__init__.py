"""Plumbing shared by every domain: the logic protocol and its bytewax adapter, clocks
and watermarks, de-duplication, end of input, and the Prometheus metrics.

- :mod:`~riskguard.operators.core.base`: :func:`stateful_logic` (the one bridge from an
  engine-neutral logic class to bytewax), :func:`split_dead_letters` and
  :func:`admit_keys` (bounded keys: names past the caps of
  :mod:`~riskguard.operators.core.admission` become dead letters);
- :mod:`~riskguard.operators.core.clock`: injected clocks, :class:`Tick` and the
  :class:`Watermark` over several tick sources;
- :mod:`~riskguard.operators.core.dedup`: drop records whose id was already seen;
- :mod:`~riskguard.operators.core.end_of_input`: a market process's final progress;
- :mod:`~riskguard.operators.core.snapshot`: snapshots as versioned data
  (:func:`persisted`, :func:`encode_snapshot`, :func:`decode_snapshot`);
- :mod:`~riskguard.operators.core.metrics` and :mod:`~riskguard.operators.core.observe`:
  the metrics, and the pass-through step that updates them from records (the
  function ``observe.observe`` is not re-exported here: it would hide its module).
"""

from riskguard.operators.core.admission import AdmissionConfig, KeyAdmission, Known
from riskguard.operators.core.base import (
    AdmitOut,
    Logic,
    SplitOut,
    admit_keys,
    copy_fields,
    copy_state,
    event_order,
    event_time,
    split_dead_letters,
    stateful_logic,
    step_cpu,
    values_of,
)
from riskguard.operators.core.clock import (
    NS_PER_S,
    TICK_IDLE_NS,
    Clock,
    ManualClock,
    RestoredSources,
    Tick,
    Watermark,
    system_clock,
)
from riskguard.operators.core.dedup import IdWindow, RecentIdsLogic, RecentIdsState
from riskguard.operators.core.end_of_input import FinalProgressLogic, FinalProgressState
from riskguard.operators.core.metrics import start_metrics_server, start_metrics_server_from_env
from riskguard.operators.core.observe import (
    ObserveConfig,
    Observer,
    configure,
    key_class,
    observe_all,
    observe_gap,
    observe_rejection,
)
from riskguard.operators.core.snapshot import (
    Snapshot,
    decode_snapshot,
    encode_snapshot,
    is_persisted,
    persisted,
)

__all__ = [
    "NS_PER_S",
    "TICK_IDLE_NS",
    "AdmissionConfig",
    "AdmitOut",
    "Clock",
    "FinalProgressLogic",
    "FinalProgressState",
    "IdWindow",
    "KeyAdmission",
    "Known",
    "Logic",
    "ManualClock",
    "ObserveConfig",
    "Observer",
    "RecentIdsLogic",
    "RecentIdsState",
    "RestoredSources",
    "Snapshot",
    "SplitOut",
    "Tick",
    "Watermark",
    "admit_keys",
    "configure",
    "copy_fields",
    "copy_state",
    "decode_snapshot",
    "encode_snapshot",
    "event_order",
    "event_time",
    "is_persisted",
    "key_class",
    "observe_all",
    "observe_gap",
    "observe_rejection",
    "persisted",
    "split_dead_letters",
    "start_metrics_server",
    "start_metrics_server_from_env",
    "stateful_logic",
    "step_cpu",
    "system_clock",
    "values_of",
]
