"""riskguard on Apache Flink (the ``flink`` extra, ``riskguard[flink]``).

The same flows, logic classes and wiring as on bytewax: a flow is built once with
bytewax's operators, and :func:`to_flink` runs its core steps as Flink functions
(:mod:`riskguard.flink.graph` reads the graph, :mod:`riskguard.flink.functions` runs
it, with each logic's snapshot in Flink keyed state). ``to_flink`` needs
``apache-flink``; see ``docs/engines.md`` for the environment it runs in.
"""

from typing import Any

from riskguard.flink.graph import CoreStep, FlowRef, core_steps

__all__ = ["CoreStep", "FlowRef", "core_steps", "to_flink"]


def __getattr__(name: str) -> Any:
    if name == "to_flink":  # imports pyflink: only where the extra is installed
        from riskguard.flink.job import to_flink  # noqa: PLC0415

        return to_flink
    raise AttributeError(name)
