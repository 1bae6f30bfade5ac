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

from riskguard.flink.graph import CoreStep, FlowRef
from riskguard.flink.segment import Segment, State
from riskguard.schemas import Codec, encode

from riskguard.errors import ConfigError

SINK = "sink"
"""The segment key of rows bound for a sink."""

Rowish = Sequence[Any]
"""A row as a keyed function gets it: input, event time ns, source, position, bytes."""

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
    any other to a sink, keyed by what ``sink_keys`` (a factory of name -> function) says."""

    inputs: tuple[tuple[str, str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    step_ids: frozenset[str] | None = None
    routes: tuple[tuple[str, str], ...] = ()
    sink_keys: tuple[str, tuple[Any, ...]] | None = None

    @classmethod
    def whole(cls, steps: Mapping[str, CoreStep], decoders: Mapping[str, str],
              sink_keys: tuple[str, tuple[Any, ...]] | None = None) -> SegmentPlan:
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
            sink_keys=sink_keys)

    def steps_of(self, steps: Mapping[str, CoreStep]) -> list[CoreStep]:
        """This segment's steps, in build order."""
        return [s for s in steps.values() if s.kind not in ("input", "output")
                and (self.step_ids is None or s.step_id in self.step_ids)]

    def segment(self, steps: Sequence[CoreStep], state: State | None = None) -> Segment:
        """A new segment of ``steps`` (resumed from ``state``)."""
        return Segment(steps, {port: sid for port, sid, _d in self.inputs},
                       dict(self.outputs), state)

    def decoders(self, ref: FlowRef) -> dict[str, Callable[[list[Rowish]], list[Any]]]:
        """Each input's rows into its stream's items."""
        out: dict[str, Callable[[list[Rowish]], list[Any]]] = {}
        for port, _sid, kind in self.inputs:
            if kind == "records":
                # as replay reads JSONL: no receive stamp
                out[port] = functools.partial(_records, Codec(clock=lambda: 0))
            elif kind == "kafka":
                out[port] = _messages
            else:
                from riskguard.flink.wire import Wire  # noqa: PLC0415

                out[port] = functools.partial(_crossed, Wire())
        return out

    def encoders(self, ref: FlowRef) -> dict[str, Callable[[str, Any, int], Iterator[Any]]]:
        """Each output's items into rows."""
        from pyflink.common import Row  # noqa: PLC0415

        routes = dict(self.routes)
        keys: dict[str, Callable[[Any], str | None]] = (
            {} if self.sink_keys is None else _call(*self.sink_keys))
        out: dict[str, Callable[[str, Any, int], Iterator[Any]]] = {}
        for _sid, name in self.outputs:
            if name in routes:
                from riskguard.flink.wire import Wire  # noqa: PLC0415

                out[name] = _to_segment(Row, routes[name], Wire())
            else:
                out[name] = _to_sink(Row, keys.get(name))
        return out


def _call(factory: str, args: tuple[Any, ...]) -> Any:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


def _records(codec: Codec, rows: list[Rowish]) -> list[list[Any]]:
    return [[codec.decode("records", bytes(r[4])) for r in rows]]


def _crossed(wire: Any, rows: list[Rowish]) -> list[Any]:
    return [wire.decode(bytes(r[4])) for r in rows]


def _messages(rows: list[Rowish]) -> list[tuple[str, int, int, bytes]]:
    out = []
    for r in rows:
        topic, _, partition = r[2].rpartition("/")
        out.append((topic, int(partition), r[3], bytes(r[4])))
    return out


def _ts(item: Any) -> int:
    ts = getattr(item, "ts", None)
    if ts is None and type(item) is tuple and len(item) == 2:
        ts = getattr(item[1], "ts", None)
    return ts if type(ts) is int else 0


def _to_sink(row: Any, key: Callable[[Any], str | None] | None,
             ) -> Callable[[str, Any, int], Iterator[Any]]:
    def rows(name: str, item: Any, n: int) -> Iterator[Any]:
        yield row(SINK, name, _ts(item), None if key is None else key(item), n, encode(item))

    return rows


def _to_segment(row: Any, key: str, wire: Any) -> Callable[[str, Any, int], Iterator[Any]]:
    def rows(name: str, item: Any, n: int) -> Iterator[Any]:
        yield row(key, name, _ts(item), "", n, wire.encode(item))

    return rows
