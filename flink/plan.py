"""Which core steps a segment runs, what feeds it and where what it makes goes.

A :class:`SegmentPlan` travels with a Flink function (it pickles: step ids and names,
no functions); in the worker it picks its steps out of the flow the worker built and
makes the segment, the decoders of the rows that feed it and the encoders of the rows
it makes. It does not import Flink.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from riskguard.flink.graph import CoreStep
from riskguard.flink.segment import Segment, State
from riskguard.schemas import Codec, encode

from riskguard.errors import ConfigError

SINK = "sink"
"""The segment key of rows bound for a sink."""

Rowish = Sequence[Any]
"""A row of a tick as a segment gets it (:data:`~riskguard.flink.wire.PackedRow`): input,
event time ns, source, position, bytes."""

Encoder = Callable[[str, Any, int, int], Iterator[Any]]
"""An output's item (its name, the item, its number among what the call made, and the
tick's time in ns) as the rows it leaves in."""

DECODERS = ("records", "kafka", "wire")
"""How an input's rows become the items its stream carries: ``records`` one batch of
wire records (the backtest's input step takes batches), ``kafka`` ``(topic, partition,
offset, value)`` messages (``topic/partition`` is the row's source), ``wire`` records as
another segment wrote them (:class:`~riskguard.flink.wire.Wire`)."""


@dataclass(frozen=True)
class SegmentPlan:
    """A segment's steps (``step_ids``; None: all the flow's but its inputs and outputs),
    its inputs (``(port, stream id)``, with how each port's rows decode), and its outputs
    (``(stream id, name)``): a name in ``routes`` goes to the segment key given there,
    any other to a sink, keyed by what ``sink_keys`` (a factory of name -> function) says.
    ``sources`` names the file a ``records`` port reads (``(port, name)``): a record
    that is none is a dead letter naming it and the row's position (its line)."""

    inputs: tuple[tuple[str, str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    step_ids: frozenset[str] | None = None
    routes: tuple[tuple[str, str], ...] = ()
    sink_keys: tuple[str, tuple[Any, ...]] | None = None
    sources: tuple[tuple[str, str], ...] = ()

    @classmethod
    def whole(cls, steps: Mapping[str, CoreStep], decoders: Mapping[str, str],
              sink_keys: tuple[str, tuple[Any, ...]] | None = None, *,
              sources: Mapping[str, str] | None = None) -> SegmentPlan:
        """The whole flow as one segment: each input step a port (decoded as
        ``decoders`` names), each output step a sink."""
        ins = [s for s in steps.values() if s.kind == "input"]
        for s in ins:
            if decoders.get(s.name) not in DECODERS:
                raise ConfigError(f"input step {s.name!r}", f"a decoder of {DECODERS}",
                                  decoders.get(s.name))
        return cls(
            inputs=tuple((s.name, s.downs["down"], decoders[s.name]) for s in ins),
            outputs=tuple((s.ups[0], s.name) for s in steps.values() if s.kind == "output"),
            sink_keys=sink_keys, sources=tuple(sorted((sources or {}).items())))

    @classmethod
    def cut(cls, steps: Mapping[str, CoreStep], decoders: Mapping[str, str],
            first: frozenset[str], *, route: str,
            sink_keys: tuple[str, tuple[Any, ...]] | None = None,
            sources: Mapping[str, str] | None = None,
            ) -> tuple[SegmentPlan, SegmentPlan]:
        """The flow as two segments, cut where its keys change domain: the first runs
        the keyed steps ``first`` (step ids) and every step only they feed, the second
        everything else; each runs the stateless steps before it on the input itself (a
        map of the input costs less than moving its output). A keyed step of ``first``
        that every other keyed step reads after (the admission gate) counts as where the
        input comes in. What the first makes for the second crosses under the stream's
        id, to segment key ``route``."""
        keyed_up = _keyed_ancestors(steps)
        gate = frozenset(k for k in first if all(
            k in keyed_up[s.step_id] for s in steps.values()
            if s.kind == "stateful_batch" and s.step_id != k))
        keyed_up = {sid: ups - gate for sid, ups in keyed_up.items()}
        made = {sid: s.step_id for s in steps.values() for sid in s.downs.values()}
        feeds_first = _stateless_before(steps, set(first), made, {}) | set(first)
        inner = [s for s in steps.values() if s.kind not in ("input", "output")]
        one: set[str] = set(gate)
        for s in inner:  # build order: a step after those that feed it
            ups = keyed_up[s.step_id]
            # the first side's keyed steps, what feeds them, and what only they feed
            # (past that, the second side's own inputs join: its side)
            if ups and ups <= first and (s.step_id in feeds_first or all(
                    made.get(u) in one for u in s.ups)):
                one.add(s.step_id)
        two = {s.step_id for s in inner if keyed_up[s.step_id] and s.step_id not in one}
        if not one - gate or not two:
            raise ConfigError("segments", "keyed steps on both sides of the cut",
                              sorted(first))
        runs = [own | _stateless_before(steps, own, made, keyed_up) for own in (one, two)]
        # the steps from the input to the gate run on both sides (the event clock)
        runs[1] |= _stateless_before(steps, set(gate), made, keyed_up)
        crossing = sorted({u for sid in runs[1] for u in steps[sid].ups
                           if made.get(u) in runs[0] and made[u] not in runs[1]})
        plans = []
        for own, run, extra_in in ((one, runs[0], []), (two, runs[1], crossing)):
            # every input feeds both sides: a side's event time is the input's, also
            # where it reads the records only as the gate passes them on
            ins = [(s.name, s.downs["down"], decoders[s.name]) for s in steps.values()
                   if s.kind == "input"]
            outs = [(s.ups[0], s.name) for s in steps.values() if s.kind == "output"
                    and made.get(s.ups[0]) in (own if own is one else run - one)]
            if own is one:
                outs += [(sid, sid) for sid in crossing]
            plans.append(cls(
                inputs=tuple(ins + [(sid, sid, "wire") for sid in extra_in]),
                outputs=tuple(outs), step_ids=frozenset(run),
                routes=tuple((sid, route) for sid in crossing) if own is one else (),
                sink_keys=sink_keys, sources=tuple(sorted((sources or {}).items()))))
        return plans[0], plans[1]

    def steps_of(self, steps: Mapping[str, CoreStep]) -> list[CoreStep]:
        """This segment's steps, in build order."""
        return [s for s in steps.values() if s.kind not in ("input", "output")
                and (self.step_ids is None or s.step_id in self.step_ids)]

    def segment(self, steps: Sequence[CoreStep], state: State | None = None, *,
                allow_dropped_state: bool = False) -> Segment:
        """A new segment of ``steps`` (resumed from ``state``; state for a step it does
        not have is refused unless ``allow_dropped_state``: :class:`Segment`)."""
        return Segment(steps, {port: sid for port, sid, _d in self.inputs},
                       dict(self.outputs), state, allow_dropped_state=allow_dropped_state)

    def decoders(self) -> dict[str, Callable[[list[Rowish]], list[Any]]]:
        """Each input's rows into its stream's items."""
        out: dict[str, Callable[[list[Rowish]], list[Any]]] = {}
        sources = dict(self.sources)
        for port, _sid, kind in self.inputs:
            if kind == "records":
                # as replay reads JSONL: no receive stamp
                out[port] = functools.partial(_records, Codec(clock=lambda: 0),
                                              sources.get(port, "records"))
            elif kind == "kafka":
                out[port] = _messages
            else:
                from riskguard.flink.wire import Wire  # noqa: PLC0415

                out[port] = functools.partial(_crossed, Wire())
        return out

    def encoders(self) -> dict[str, Encoder]:
        """Each sink output's items into rows (what goes to another segment crosses
        packed, a call's items in one row: ``TickBatchSegment``)."""
        from pyflink.common import Row  # noqa: PLC0415

        routes = dict(self.routes)
        keys: dict[str, Callable[[Any], str | None]] = (
            {} if self.sink_keys is None else _call(*self.sink_keys))
        return {name: sink_rows(Row, keys.get(name)) for _sid, name in self.outputs
                if name not in routes}


def _keyed_ancestors(steps: Mapping[str, CoreStep]) -> dict[str, frozenset[str]]:
    """Each step's keyed steps upstream of it (itself included), by step id."""
    made: dict[str, frozenset[str]] = {}
    out: dict[str, frozenset[str]] = {}
    for s in steps.values():  # build order: every step after those that feed it
        up = frozenset().union(*(made.get(u, frozenset()) for u in s.ups))
        out[s.step_id] = up | {s.step_id} if s.kind == "stateful_batch" else up
        for sid in s.downs.values():
            made[sid] = out[s.step_id]
    return out


def _stateless_before(steps: Mapping[str, CoreStep], own: set[str], made: dict[str, str],
                      keyed_up: dict[str, frozenset[str]]) -> set[str]:
    """The stateless steps that feed ``own``, however indirectly, up to the input or a
    keyed step (with ``keyed_up``, only those with no keyed step upstream)."""
    found: set[str] = set()
    todo = [u for sid in own for u in steps[sid].ups]
    while todo:
        maker = made.get(todo.pop())
        if maker is None or maker in found or keyed_up.get(maker, frozenset()) or \
                steps[maker].kind in ("input", "stateful_batch"):
            continue
        found.add(maker)
        todo.extend(steps[maker].ups)
    return found


def _call(factory: str, args: tuple[Any, ...]) -> Any:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


def _records(codec: Codec, source: str, rows: list[Rowish]) -> list[list[Any]]:
    """A tick's rows as one batch of records; a row that is none is a dead letter naming
    ``source`` and the row's position."""
    return [[codec.decode(source, r[4], offset=r[3]) for r in rows]]


def _crossed(wire: Any, rows: list[Rowish]) -> list[Any]:
    return [wire.decode(r[4]) for r in rows]


def _messages(rows: list[Rowish]) -> list[tuple[str, int, int, bytes | None]]:
    """Kafka rows as the admission takes messages; a message without a value (a
    tombstone) keeps its None, for the admission to dead-letter."""
    out = []
    for r in rows:
        topic, _, partition = r[2].rpartition("/")
        out.append((topic, int(partition), r[3], r[4]))
    return out


def _ts(item: Any) -> int:
    ts = getattr(item, "ts", None)
    if ts is None and type(item) is tuple and len(item) == 2:
        ts = getattr(item[1], "ts", None)
    return ts if type(ts) is int else 0


def sink_rows(row: Any, key: Callable[[Any], str | None] | None) -> Encoder:
    """An output's items as sink rows (made by ``row``), each under ``key(item)`` ('' or
    no ``key``: no Kafka key), with its event time and encoded value."""

    def rows(name: str, item: Any, n: int, _at_ns: int) -> Iterator[Any]:
        yield row(SINK, name, _ts(item), None if key is None else key(item) or None, n,
                  encode(item))

    return rows

