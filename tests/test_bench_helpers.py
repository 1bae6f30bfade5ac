"""The benchmark scripts' helpers do what their figures rely on (their examples run, and
the live load renders every scenario record as the codec would encode it)."""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.schemas import encode

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str) -> ModuleType:
    """A ``bench/`` script, imported by its file name (the folder is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.mark.parametrize("name", ["exposure_speed", "guard_throughput", "guard_workload"])
def test_bench_docstring_examples_run(name: str) -> None:
    """Each bench module's >>> examples produce the output they show."""
    module = _bench_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_load_templates_render_each_record_as_encoded() -> None:
    """The latency bench's load producer sends what re-stamping and encoding each record
    would: byte for byte, for every record of the scenario it replays."""
    workload = _bench_module("guard_workload")
    ts = 1_795_500_000_123_456_789
    for rec in build_scenario(0).events:
        rid = f"l12-{rec.id}"
        want = encode(msgspec.structs.replace(rec, id=rid, ts=ts))
        assert workload.RecordTemplate(rec).render(rid, ts) == want, rec


def test_steal_seconds_reads_the_machine() -> None:
    """``STEAL`` reads the hypervisor's share of the cores, a count that never falls."""
    workload = _bench_module("guard_workload")
    a = workload.cpu_seconds(workload.STEAL)
    b = workload.steal_seconds()
    assert 0.0 <= a <= b
