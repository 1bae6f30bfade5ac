"""riskguard on Apache Flink (the ``flink`` extra, ``riskguard[flink]``).

The same flows, logic classes and wiring as on bytewax: a flow is built once with
bytewax's operators and read as its core steps (:mod:`riskguard.flink.graph`); a
:class:`Segment` runs a part of them in one process, the way one bytewax worker runs
them (:mod:`riskguard.flink.segment`), and a :class:`SegmentPlan` says which part
(:mod:`riskguard.flink.plan`). :mod:`riskguard.flink.fused` hosts a segment in a Flink
operator fed a tick at a time; it and the jobs (:mod:`riskguard.flink.backtest`,
:mod:`riskguard.flink.guard`) need ``apache-flink``; see ``docs/engines.md`` for the
environment they run in.
"""

from riskguard.flink.graph import CoreStep, FlowRef, core_steps
from riskguard.flink.plan import SegmentPlan
from riskguard.flink.segment import Segment

__all__ = ["CoreStep", "FlowRef", "Segment", "SegmentPlan", "core_steps"]
