"""Timing each stateful step (``step_cpu``) changes nothing the flow makes, and times only
the keys built while it is open."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.operators.core import stateful_logic, step_cpu


class Running:
    """A running sum per key, with a deadline it never reaches."""

    def __init__(self, state: Any = None) -> None:
        self.total = state or 0

    def on_event(self, x: int) -> list[tuple[int, int]]:
        self.total += x
        return [(x, self.total)]

    def next_deadline_ns(self) -> int | None:
        return None

    def snapshot(self) -> Any:
        return self.total


def _run(xs: list[int]) -> list[Any]:
    out: list[Any] = []
    flow = Dataflow("t")
    keyed = op.key_on("k", op.input("in", flow, TestingSource(xs, batch_size=7)),
                      lambda x: str(x % 3))
    summed = stateful_logic("sum", keyed, Running)
    op.output("out", op.map("twice", summed, lambda kv: (kv[0], kv[1][1] * 2)),
              TestingSink(out))
    run_main(flow)
    return out


def test_a_timed_run_makes_what_an_untimed_run_makes() -> None:
    xs = list(range(100))
    plain = _run(xs)
    with step_cpu() as cpu:
        timed = _run(xs)
    assert timed == plain
    assert list(cpu) == ["t.sum"]
    assert cpu["t.sum"] >= 0.0


def test_keys_built_after_it_closes_are_not_timed() -> None:
    with step_cpu() as cpu:
        pass
    _run([1, 2, 3])
    assert cpu == {}
