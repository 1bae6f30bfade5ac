"""The benchmark scripts' helpers do what their figures rely on (their examples run, and
the live load renders every scenario record as the codec would encode it)."""

from __future__ import annotations

import doctest
import importlib
import os
import sys
import time
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


@pytest.mark.parametrize("name", ["exposure_speed", "exposure_stages", "guard_throughput",
                                  "guard_workload", "shared_data", "incidents", "guard_engines",
                                  "code_size"])
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


def _proc_stat_steal() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    assert fields[0] == "cpu"  # the all-cores line: user nice system idle iowait irq softirq steal
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def test_steal_seconds_reads_the_steal_column() -> None:
    """``steal_seconds`` is ``/proc/stat``'s steal column in seconds, not a neighbour's."""
    workload = _bench_module("guard_workload")
    before = _proc_stat_steal()
    got = workload.steal_seconds()
    assert before <= got <= _proc_stat_steal()


def test_core_timeline_reads_counters_beside_pids() -> None:
    """A :class:`CoreTimeline` entry may be a counter to read: its cores are its growth
    over the period (a counter of 2 s per wall second reads about 2 cores)."""
    throughput = _bench_module("guard_throughput")
    t0 = time.monotonic()
    timeline = throughput.CoreTimeline([os.getpid(), lambda: 2.0 * (time.monotonic() - t0)],
                                       period_s=0.1)
    timeline.start()
    time.sleep(0.25)
    timeline.stop()
    assert timeline.overall[1] == pytest.approx(2.0, rel=0.2)
    assert all(row[1] == pytest.approx(2.0, rel=0.2) for row in timeline.rows)


def test_synthetic_calm_markets_load_as_calm_series_of_each_kind(tmp_path: Path) -> None:
    """Two days of each kind, as 1- and 5-minute files the incident loader reads: no
    label, the thin market's minutes mostly without a trade and its prices on its
    quote steps, and the volatile market moving more than the liquid one."""
    calm = _bench_module("synthetic_calm")
    incidents = _bench_module("incidents")
    calm.write_markets(tmp_path, days=2, seed=1)
    loaded = incidents.load_all(tmp_path)
    assert incidents.load_labels(tmp_path / "labels.toml") == []
    by_symbol = {s.records[0].instrument: s for s in loaded.series}
    assert len(by_symbol) == 2 * len(calm.KINDS)
    assert {s.records[0].interval_ns for s in loaded.series} == {60 * 10**9, 300 * 10**9}
    thin = by_symbol["THINUSD"].records
    assert 0.6 < sum(1 for b in thin if b.volume == 0.0) / len(thin) < 0.8
    assert all(abs(b.close / 0.02 - round(b.close / 0.02)) < 1e-6 for b in thin)

    def day_moves(symbol: str) -> float:
        closes = [b.close for b in by_symbol[symbol].records]
        return sum(abs(closes[i] / closes[i - 1] - 1.0) for i in range(1, len(closes)))

    assert day_moves("VOLATILEUSD") > 1.5 * day_moves("LIQUIDUSD")


def test_versus_revision_reads_a_runs_figure_and_names_a_missing_one(tmp_path: Path) -> None:
    """The figure is the first match's group, thousands separators dropped; a run whose
    output has none stops the comparison, showing what the script printed."""
    import re

    versus = _bench_module("versus_revision")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fake.py").write_text(
        "import sys\nprint('pass-through: 1,250 events/s')\n"
        "print(f'guard: 300 events/s (ratio 0.24{sys.argv[1]})')\n")
    python = Path(sys.executable)
    pattern = re.compile(r"\(ratio ([0-9.]+)")
    assert versus.figure(python, tmp_path, ["fake.py", "7"], pattern) == 0.247
    assert versus.figure(python, tmp_path, ["fake.py", "0"], re.compile(r"([0-9,]+) events/s")
                         ) == 1250.0
    with pytest.raises(SystemExit, match=re.escape("no match for 'nothing ([0-9]+)'")):
        versus.figure(python, tmp_path, ["fake.py", "0"], re.compile(r"nothing ([0-9]+)"))


def test_code_size_leaves_docstrings_and_comments_out_of_code() -> None:
    """A docstring of any length and a comment line count as lines, never as code."""
    measure = _bench_module("code_size").measure
    source = ('"""Module.\n\nMore."""\n\n\nclass A:\n    """One\n    two."""\n\n'
              '    # why\n    x = 1  # and why\n')
    assert dict(measure(source)) == {"lines": 11, "non-blank": 7, "code": 2}
