"""A bytewax dataflow as its core steps: the one graph both engines run.

Every flow is built once, with bytewax's operators, each made of a few core steps
(:data:`CORE_KINDS`) holding the flow's own functions and logic builders. The Flink
adapters run those same steps, so neither logic nor wiring is written twice. This module
does not import Flink.

>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource
>>> flow = Dataflow("doc")
>>> nums = op.input("in", flow, TestingSource([1, 2, 3]))
>>> op.output("out", op.map("double", nums, lambda x: 2 * x), TestingSink([]))
>>> [(s.kind, s.step_id) for s in core_steps(flow)]
[('input', 'doc.in'), ('flat_map_batch', 'doc.double.flat_map_batch'), ('output', 'doc.out')]
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bytewax.dataflow import Dataflow

from riskguard.errors import ConfigError

CORE_KINDS = frozenset({"input", "output", "flat_map_batch", "branch", "merge",
                        "redistribute", "stateful_batch", "inspect_debug"})
"""bytewax's core operators: every other operator is made of these."""


@dataclass(frozen=True)
class CoreStep:
    """One core step: its kind, full step id, the streams it reads and makes, and the
    bytewax operator object (its function, builder, source or sink)."""

    kind: str
    step_id: str
    ups: tuple[str, ...]
    downs: dict[str, str]
    op: Any = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        """The last part of the step id (what a caller names to replace an input or
        output)."""
        return self.step_id.rsplit(".", 1)[-1]


def _ports(op_obj: Any, names: list[str]) -> Iterator[tuple[str, str]]:
    for name in names:
        port = getattr(op_obj, name)
        ids = getattr(port, "stream_ids", None)
        if ids is not None:  # a multi-port (merge): its streams in order
            for i in sorted(ids):
                yield name, ids[i]
        else:
            yield name, port.stream_id


def core_steps(flow: Dataflow) -> list[CoreStep]:
    """Every core step of ``flow``, in the order it was built (each after the steps that
    make its inputs). An operator that is not made of core steps is refused by name."""
    out: list[CoreStep] = []

    def walk(step: Any) -> None:
        if step.substeps:
            for sub in step.substeps:
                walk(sub)
            return
        kind = type(step).__name__
        if kind not in CORE_KINDS:
            raise ConfigError(f"step {step.step_id!r}", "a flow of bytewax core operators",
                              kind)
        ups = tuple(sid for _n, sid in _ports(step, step.ups_names))
        downs = dict(_ports(step, step.dwn_names))
        out.append(CoreStep(kind, step.step_id, ups, downs, step))

    for step in flow.substeps:
        walk(step)
    return out


@dataclass(frozen=True)
class FlowRef:
    """How a worker builds the flow for itself: ``factory`` is ``"module:function"`` and
    ``args`` its (picklable) arguments. A flow holds keys and closures that do not travel;
    its reference does, and each worker process builds the flow once for all its steps.

    >>> ref = FlowRef("riskguard.flink.graph:_doc_flow")
    >>> ref.steps()["doc.double.flat_map_batch"].kind
    'flat_map_batch'
    """

    factory: str
    args: tuple[Any, ...] = ()

    def build(self) -> Dataflow:
        """A new flow from the factory."""
        module, _, name = self.factory.partition(":")
        if not module or not name:
            raise ConfigError("flow factory", "'module:function'", self.factory)
        fn: Callable[..., Dataflow] = getattr(importlib.import_module(module), name)
        flow = fn(*self.args)
        if not isinstance(flow, Dataflow):
            raise ConfigError("flow factory", f"{self.factory} to return a Dataflow",
                              type(flow).__name__)
        return flow

    def steps(self) -> dict[str, CoreStep]:
        """This process's one build of the flow, by step id."""
        with _LOCK:
            found = _BUILT.get(self)
            if found is None:
                found = _BUILT[self] = {s.step_id: s for s in core_steps(self.build())}
            return found


_BUILT: dict[FlowRef, dict[str, CoreStep]] = {}
_LOCK = threading.Lock()


def _doc_flow() -> Dataflow:
    import bytewax.operators as op  # noqa: PLC0415
    from bytewax.testing import TestingSink, TestingSource  # noqa: PLC0415

    flow = Dataflow("doc")
    op.output("out", op.map("double", op.input("in", flow, TestingSource([1])),
                            lambda x: 2 * x), TestingSink([]))
    return flow
