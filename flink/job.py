"""A riskguard flow as a Flink DataStream job.

:func:`to_flink` lays a flow's core steps (:mod:`riskguard.flink.graph`) onto a
:class:`~pyflink.datastream.StreamExecutionEnvironment`: the caller gives a Flink stream
for each input step and gets a Flink stream for each output step, to sink as it likes
(a Kafka sink, a collection). Records travel between Flink tasks pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream
from riskguard.flink.functions import Branch, FlatMapBatch, Inspect, StatefulBatch
from riskguard.flink.graph import CoreStep, FlowRef

from riskguard.errors import ConfigError

PICKLED = Types.PICKLED_BYTE_ARRAY()


def _key(kv: tuple[str, Any]) -> str:
    return kv[0]


def _union(ups: list[DataStream | None]) -> DataStream | None:
    live = [s for s in ups if s is not None]
    if not live:
        return None
    return live[0] if len(live) == 1 else live[0].union(*live[1:])


def _parallelism(streams: list[DataStream | None]) -> int:
    return max((s._j_data_stream.getParallelism() for s in streams if s is not None),
               default=1)


def _lay(step: CoreStep, ref: FlowRef, ups: list[DataStream | None],
         placed: Placement) -> dict[str, DataStream | None]:
    """The Flink streams one core step makes, by its output port name. A stateless step
    runs at its input's parallelism (chained to it, records in order, as a bytewax
    worker maps what it holds); only keyed steps and ``redistribute`` move records."""
    out = _lay_step(step, ref, ups, step.step_id not in placed.unheld)
    par = placed.parallelism.get(step.step_id)
    if par is None and step.kind not in ("stateful_batch", "redistribute", "merge"):
        par = _parallelism(ups)
    if par is not None:
        for s in out.values():
            if s is not None:
                s.set_parallelism(par)
    if placed.uids and step.kind not in ("merge", "redistribute"):  # those make no operator
        for port, s in out.items():
            if s is not None:
                s.uid(step.step_id if port == "down" else f"{step.step_id}.{port}")
    return out


def _lay_step(step: CoreStep, ref: FlowRef, ups: list[DataStream | None],
              hold: bool) -> dict[str, DataStream | None]:
    up = ups[0] if ups else None
    sid = step.step_id
    if step.kind == "merge":
        return {"down": _union(ups)}
    if up is None:  # fed by nothing (an empty merge): makes nothing
        return dict.fromkeys(step.downs)
    if step.kind == "flat_map_batch":
        return {"down": up.flat_map(FlatMapBatch(ref, sid), output_type=PICKLED).name(sid)}
    if step.kind == "branch":
        return {"trues": up.filter(Branch(ref, sid, True)).name(sid + ".trues"),
                "falses": up.filter(Branch(ref, sid, False)).name(sid + ".falses")}
    if step.kind == "redistribute":
        return {"down": up.rebalance()}
    if step.kind == "inspect_debug":
        return {"down": up.map(Inspect(ref, sid), output_type=PICKLED).name(sid)}
    if step.kind == "stateful_batch":
        keyed = up.key_by(_key, key_type=Types.STRING())
        return {"down": keyed.process(StatefulBatch(ref, sid, hold),
                                      output_type=PICKLED).name(sid)}
    raise ConfigError(f"step {sid!r}", "a core step the Flink adapter runs", step.kind)


@dataclass(frozen=True)
class Placement:
    """How particular steps are laid out: ``parallelism`` by step id (a step that must
    see all its input in one task), and the keyed steps that order their input
    themselves (``unheld``: they take each record at once). With ``uids`` each
    operator's uid is its step id, so a checkpoint or savepoint maps onto the job again
    whatever its parallelism (Flink's own ids change with how operators chain); a job
    that never restores (a backtest) leaves them out, as PyFlink's chaining of Python
    operators can then make two operators of one uid."""

    parallelism: dict[str, int] = field(default_factory=dict)
    unheld: frozenset[str] = frozenset()
    uids: bool = False


def to_flink(ref: FlowRef, inputs: dict[str, DataStream], *,
             watermarks: dict[str, Any] | None = None,
             placement: Placement | None = None) -> dict[str, DataStream]:
    """Lay the flow ``ref`` builds onto the environment of ``inputs``.

    ``inputs`` maps each input step's name (``op.input("in", ...)`` is ``"in"``) to the
    Flink stream that replaces it; an input step not given is refused by name. Returns
    each output step's name mapped to the stream it would write (an output fed by
    nothing is left out). ``watermarks`` maps a core step's id to the watermark strategy
    assigned to its output (where records first carry event time; keyed steps hold
    records for the watermark). ``placement``: see :class:`Placement`."""
    placed = placement or Placement()
    streams: dict[str, DataStream | None] = {}
    outputs: dict[str, DataStream] = {}
    steps = list(ref.steps().values())
    wanted = {s.name for s in steps if s.kind == "input"}
    unknown = sorted(set(inputs) - wanted)
    if unknown:
        raise ConfigError("Flink inputs", f"input steps of the flow {sorted(wanted)}", unknown)
    for step in steps:
        if step.kind == "input":
            if step.name not in inputs:
                raise ConfigError(f"input step {step.name!r}", "a Flink stream for it",
                                  "none given")
            streams[step.downs["down"]] = inputs[step.name]
            continue
        ups = [streams[u] for u in step.ups]
        if step.kind == "output":
            if ups[0] is not None:
                outputs[step.name] = ups[0]
            continue
        strategy = (watermarks or {}).get(step.step_id)
        for port, made in _lay(step, ref, ups, placed).items():
            if strategy is not None and made is not None:
                made = made.assign_timestamps_and_watermarks(strategy)  # noqa: PLW2901
                if placed.uids:
                    made.uid(f"{step.step_id}.{port}.watermarks")
                if step.step_id in placed.parallelism:
                    made.set_parallelism(placed.parallelism[step.step_id])
            streams[step.downs[port]] = made
    return outputs
