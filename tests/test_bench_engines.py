"""The engines bench's helpers do what its figures rely on: its examples run, the rate
and start-up come from the two runs' line, the outputs check tells a changed decision
from a changed action, and the sampler walks the whole process tree. No timing is
asserted."""

from __future__ import annotations

import doctest
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.flink.backtest import read_records

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _engines() -> ModuleType:
    """``bench/engines.py``, imported by its file name (the folder is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("engines")


def test_the_engines_bench_examples_run() -> None:
    """Each >>> example in bench/engines.py gives the output it shows."""
    engines = _engines()
    tests = doctest.DocTestFinder(exclude_empty=True).find(engines, "engines")
    assert tests, "the module has examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_the_line_through_two_runs_gives_the_rate_and_the_fixed_cost() -> None:
    """Two runs of a made-up engine that takes 3 s once and 2 ms a record: the rate is
    500 records/s and the start-up 3 s, whatever the two sizes."""
    engines = _engines()
    for short, long in ((100, 10_000), (2_691, 53_836)):
        rate, fixed = engines.fit(short, 3 + short / 500, long, 3 + long / 500)
        assert rate == pytest.approx(500)
        assert fixed == pytest.approx(3)


def test_an_engine_without_a_short_run_gets_no_rate() -> None:
    """The 2-process bytewax layout runs over the shared input only: no line, no rate."""
    engines = _engines()
    run = engines.Run("bytewax, 2 processes", 100, 0.0, 5.0, 1024, 4.0, 1.0, engines.Outputs())
    assert engines.Engine("bytewax, 2 processes", shared=run).line() is None
    short = engines.Run("bytewax, 1 worker", 10, 0.0, 2.0, 1024, 1.0, 1.0, engines.Outputs())
    eng = engines.Engine("bytewax, 1 worker", short=short, shared=run)
    rate, fixed = eng.line()
    assert (rate, fixed) == (pytest.approx(30), pytest.approx(2 - 10 / 30))
    assert eng.cpu_us() == pytest.approx(3e6 / 90)  # 3 CPU s for 90 more events


def test_the_outputs_check_tells_another_decision_from_another_action() -> None:
    """Commands that take the same actions on the same scopes under other decision ids
    are reported as such; a missing command is reported as missing; a repeated command counts
    twice (a multiset, not a set)."""
    engines = _engines()
    want = engines.Outputs(["d1", "d2"], ["halt okx", "resume okx"], ["s1"], 4, 0)
    other_ids = engines.Outputs(["d1", "d9"], ["resume okx", "halt okx"], ["s1"], 4, 0)
    assert engines.compare(want, other_ids) == (
        "DIFFERENT: 1 of 2 commands with another decision id "
        "(the same actions on the same scopes)")
    twice = engines.Outputs(["d1", "d1"], ["halt okx", "halt okx"], ["s1"], 4, 0)
    assert engines.compare(want, twice) == (
        "DIFFERENT: 2 commands against 2 (1 missing, 1 extra)")
    assert engines.compare(want, want) == "same"


def test_outputs_written_per_worker_are_read_back_together(tmp_path: Path) -> None:
    """What each worker's sink writes (records and first-output time) is what the
    comparison and the first-output figure read, over all workers' files."""
    engines = _engines()
    records = build_scenario(0).events[:3]  # any wire records round-trip
    engines.write_outputs(tmp_path, "audit", 0, records[:2], 12.5)
    engines.write_outputs(tmp_path, "audit", 1, records[2:], 11.0)
    engines.write_outputs(tmp_path, "commands", 0, [], None)
    assert engines.read_first(tmp_path) == 11.0
    back = [r for w in (0, 1) for r in read_records(engines.outputs_path(tmp_path, "audit", w))]
    assert back == records
    assert engines.read_outputs(tmp_path).summary() == (
        "0 commands, 0 signals, 3 audit records, 0 dead letters")


def test_the_input_holds_the_copies_asked_for(tmp_path: Path) -> None:
    """Two copies are twice the scenario's records; a tenth of a copy is its first
    tenth."""
    engines = _engines()
    one = len(build_scenario(0).events)
    assert engines.write_input(tmp_path / "two.jsonl", 2) == 2 * one
    assert len(read_records(tmp_path / "two.jsonl")) == 2 * one
    assert engines.write_input(tmp_path / "tenth.jsonl", 0.1) == int(one * 0.1)


CHILD = """
import pathlib, sys, time
held = bytearray(64 << 20)
held[::4096] = b"x" * len(held[::4096])  # touch every page: resident, not just reserved
pathlib.Path(sys.argv[1]).touch()
time.sleep(60)
"""


def test_the_sampler_counts_the_children_of_a_process(tmp_path: Path) -> None:
    """A shell that runs a Python child holding 64 MiB: the tree's resident memory counts
    the child's, which the shell alone does not hold, and its CPU seconds count the
    child's too."""
    engines = _engines()
    ready, script = tmp_path / "ready", tmp_path / "child.py"
    script.write_text(CHILD)
    # "; :" keeps the shell alive as the child's parent (it would exec a lone command)
    shell = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" "{script}" "{ready}"; :'])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        own = engines.status_kib(Path(f"/proc/{shell.pid}/status").read_text())
        rss, cpu = engines.sample_tree([shell.pid])
        assert rss >= own + (64 << 10)
        assert len(cpu) == 2 and shell.pid in cpu  # the shell and its child
        assert sum(cpu.values()) > 0  # the child touched 64 MiB
    finally:
        for pid in engines.descendants(_parents(engines), [shell.pid]) - {shell.pid}:
            os.kill(pid, signal.SIGKILL)
        shell.wait(10)


def _parents(engines: ModuleType) -> dict[int, int]:
    """Every process's parent, as the sampler reads them."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := engines._read(f"/proc/{entry}/stat")):
            out[int(entry)] = engines.stat_fields(stat)[0]
    return out
