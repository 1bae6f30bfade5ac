"""riskguard on Apache Flink: the flow bytewax runs, laid out as a Flink job.

The graph tests run here; the job tests run real Flink mini-clusters in the Flink
environment (:mod:`flink_env`) and compare with bytewax on the same input."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource
from flink_env import flink_command, java_missing, kafka_jars
from riskguard.connectors.subscriber import read_topic_bytes
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.dataflows.guard import load_guard_config
from riskguard.flink import FlowRef, core_steps
from riskguard.flink.backtest import read_records
from riskguard.operators.core.clock import call_clock, step_event_time
from riskguard.operators.signing import decode_command
from riskguard.schemas import Codec, encode

from riskguard.cli import main
from riskguard.errors import ConfigError
from tests.kafka_helpers import hold_for_replay

START_NS = 1_795_500_000 * 10**9


def _flow() -> Dataflow:
    flow = Dataflow("t")
    nums = op.input("in", flow, TestingSource([1, 2, 3]))
    halves = op.branch("even", nums, lambda x: x % 2 == 0)
    both = op.merge("both", halves.trues, halves.falses)
    keyed = op.key_on("key", both, str)
    counted = op.stateful_map("count", keyed, lambda s, x: ((s or 0) + 1, x))
    op.output("out", counted, TestingSink([]))
    return flow


def test_a_flow_is_its_core_steps_in_build_order_each_naming_its_streams() -> None:
    steps = core_steps(_flow())
    kinds = [s.kind for s in steps]
    assert kinds[0] == "input" and kinds[-1] == "output"
    assert set(kinds) == {"input", "branch", "merge", "flat_map_batch", "stateful_batch",
                          "output"}
    made: set[str] = set()
    for s in steps:  # every stream a step reads was made by a step before it
        assert set(s.ups) <= made, s
        made.update(s.downs.values())
    merge = next(s for s in steps if s.kind == "merge")
    branch = next(s for s in steps if s.kind == "branch")
    assert merge.ups == (branch.downs["trues"], branch.downs["falses"])
    assert steps[0].name == "in" and steps[-1].name == "out"


def test_a_flow_reference_builds_once_per_process_and_refuses_what_is_not_a_flow() -> None:
    ref = FlowRef("riskguard.flink.graph:_doc_flow")
    assert ref.steps() is ref.steps()
    with pytest.raises(ConfigError, match="module:function"):
        FlowRef("no_colon").build()
    with pytest.raises(ConfigError, match="to return a Dataflow"):
        FlowRef("os.path:join", ("a",)).build()


def test_the_backtest_clock_reads_the_time_the_running_step_has_reached() -> None:
    from riskguard.dataflows.backtest import EventClock

    clock = EventClock()
    clock.set(50)
    assert clock() == 50
    token = step_event_time.set(20)
    try:
        assert clock() == 20
    finally:
        step_event_time.reset(token)
    assert clock() == 50


def test_the_flink_modules_that_do_not_import_flink_have_running_examples() -> None:
    """The segment, the wire, the graph reader and the jobs' helpers run anywhere; their
    >>> examples give the output they show."""
    import doctest
    import importlib

    for name in ("riskguard.flink.segment", "riskguard.flink.wire", "riskguard.flink.graph",
                 "riskguard.flink.plan", "riskguard.flink.backtest", "riskguard.flink.guard"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name


def _keyed_flow(out: list[Any]) -> Dataflow:
    """Branches merged, a keyed step with a deadline and an end, a batch function."""
    from riskguard.operators.core.base import stateful_logic

    class Count:
        def __init__(self, state: Any) -> None:
            self.n = state or 0

        def on_event(self, x: int) -> list[tuple[int, int]]:
            self.n += x
            return [(x, self.n)]

        def on_eof(self) -> list[tuple[str, int]]:
            return [("end", self.n)]

        def snapshot(self) -> int:
            return self.n

    flow = Dataflow("seg")
    nums = op.input("in", flow, TestingSource([[1, 2, 3], [4, 5], [6]]))
    flat = op.flat_map("unbatch", nums, lambda b: b)
    halves = op.branch("even", flat, lambda x: x % 2 == 0)
    both = op.merge("both", halves.falses, op.map("tenfold", halves.trues, lambda x: 10 * x))
    keyed = op.key_on("key", both, lambda x: "big" if x >= 10 else "small")
    counted = stateful_logic("count", keyed, Count)
    op.output("out", op.flat_map_batch("strip", counted, lambda kvs: [v for _k, v in kvs]),
              TestingSink(out))
    return flow


def test_a_segment_gives_what_one_bytewax_worker_gives_batch_by_batch_and_resumes() -> None:
    """The same flow run by bytewax and by a Segment fed the same batches: the same
    outputs in the same order, each key's end included; a segment resumed from its
    snapshot halfway goes on as the unbroken one does."""
    from bytewax.testing import run_main
    from riskguard.flink.segment import Segment

    want: list[Any] = []
    run_main(_keyed_flow(want))
    seg = Segment.of(core_steps(_keyed_flow([])))
    got = [v for batch in ([1, 2, 3], [4, 5], [6]) for _n, v in seg.feed({"in": [batch]})]
    got += [v for _n, v in seg.eof()]
    assert got == want
    first = Segment.of(core_steps(_keyed_flow([])))
    first.feed({"in": [[1, 2, 3]]})
    resumed = Segment.of(core_steps(_keyed_flow([])), state=first.snapshot())
    again = [v for batch in ([4, 5], [6]) for _n, v in resumed.feed({"in": [batch]})]
    assert again + [v for _n, v in resumed.eof()] == want[3:]


def _summing_flow(step: str) -> Dataflow:
    flow = Dataflow("sums")
    nums = op.key_on("k", op.input("in", flow, TestingSource([])), lambda _x: "k")
    op.output("out", op.stateful_map(step, nums, lambda s, x: ((s or 0) + x,) * 2),
              TestingSink([]))
    return flow


def test_a_restore_with_state_for_a_step_the_flow_no_longer_has_is_refused() -> None:
    """State for a step id the flow lacks (a step renamed since the snapshot) fails the
    restore, naming the step, whether a segment or a key's runner restores it; dropping
    it takes ``allow_dropped_state``, and the state of the steps the flow keeps is kept."""
    from riskguard.flink.plan import SegmentPlan
    from riskguard.flink.segment import KeyRunner, Segment

    old = Segment.of(core_steps(_summing_flow("sum")))
    old.feed({"in": [5, 6]})
    snap = old.snapshot()
    (gone,) = snap
    with pytest.raises(ConfigError, match=f"got state for '{gone}'"):
        Segment.of(core_steps(_summing_flow("total")), state=snap)
    steps = {st.step_id: st for st in core_steps(_summing_flow("total"))}
    plan = SegmentPlan.whole(steps, {"in": "records"})
    make = functools.partial(plan.segment, plan.steps_of(steps))
    with pytest.raises(ConfigError, match="--allow-dropped-state"):
        KeyRunner.resume(make, (snap, 0), (), {}, frozenset())
    dropped = Segment.of(core_steps(_summing_flow("total")), state=snap,
                         allow_dropped_state=True)
    assert dropped.keys() == 0 and dropped.feed({"in": [1]}) == [("out", ("k", 1))]
    kept = Segment.of(core_steps(_summing_flow("sum")), state=snap)
    assert kept.feed({"in": [1]}) == [("out", ("k", 12))]


_WORKER_PROBE = """
import socket, sys, urllib.request
from riskguard.flink import worker_metrics as wm
from riskguard.operators.core.metrics import DEAD_LETTERS
base, hold = int(sys.argv[1]), sys.argv[2] == "hold"
if hold:  # another worker of the host holds the port
    held = socket.socket(); held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", base)); held.listen()
DEAD_LETTERS.labels("t", "malformed").inc(3)
env = {"RISKGUARD_METRICS_PORT": str(base), "RISKGUARD_METRICS_ADDR": "127.0.0.1"}
thread = wm.serve_worker_metrics(env, first_wait_s=0.5)
assert wm.serve_worker_metrics(env) is thread  # once a process
assert wm.served.bound.wait(10) and wm.served.port is not None
page = urllib.request.urlopen(f"http://127.0.0.1:{wm.served.port}/metrics", timeout=5).read()
print(wm.served.port - base, [ln for ln in page.decode().splitlines()
                       if ln.startswith("riskguard_dead_letters_total{")])
"""


def test_each_flink_python_worker_serves_the_guards_metrics_on_a_port_of_its_hosts_range(
        ) -> None:
    """:func:`~riskguard.flink.worker_metrics.serve_worker_metrics`, which each segment
    operator calls when it opens (``TickBatchSegment.open``): a worker serves the
    registry it counts in (its dead letters here) on ``$RISKGUARD_METRICS_PORT``, or,
    where another worker of the host holds that port, on the next one; once a process.
    Without the variable it serves nothing; a value that is not a port is refused."""
    from kafka_helpers import free_ports
    from riskguard.flink.worker_metrics import serve_worker_metrics

    assert serve_worker_metrics({}) is None
    with pytest.raises(ConfigError, match="RISKGUARD_METRICS_PORT"):
        serve_worker_metrics({"RISKGUARD_METRICS_PORT": "nine"})
    (base,) = free_ports(1)
    for how, offset in (("free", 0), ("hold", 1)):
        done = subprocess.run([sys.executable, "-c", _WORKER_PROBE, str(base), how],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split(" ", 1)[0] == str(offset), done.stdout
        assert 'stream="t"' in done.stdout and "3.0" in done.stdout, done.stdout


class _QuietLogic(StatefulBatchLogic[int, str, Any]):
    """Says each value it takes, with the event time and the wall-clock time it reads,
    and ``quiet`` at a deadline 10 s (wall clock) after the last; a value after a quiet
    is said as such."""

    def __init__(self, resume: Any) -> None:
        self.due, self.quieted = resume or (None, False)

    def on_batch(self, values: list[int]) -> tuple[list[str], bool]:
        out = [f"{'after quiet ' if self.quieted else ''}{v} at {step_event_time.get()} "
               f"wall {call_clock()}" for v in values]
        self.due, self.quieted = datetime(2026, 1, 1, 0, 0, 10 * values[-1], tzinfo=UTC), False
        return out, False

    def notify_at(self) -> datetime | None:
        return self.due

    def on_notify(self) -> tuple[list[str], bool]:
        self.due, self.quieted = None, True
        return ["quiet"], False

    def snapshot(self) -> Any:
        return (self.due, self.quieted)


def _quiet_flow() -> Dataflow:
    flow = Dataflow("quiet")
    keyed = op.key_on("k", op.input("in", flow, TestingSource([])), lambda _x: "k")
    op.output("out", op.stateful_batch("quiet", keyed, _QuietLogic), TestingSink([]))
    return flow


def test_a_key_restored_from_its_snapshot_and_calls_makes_what_the_lost_run_made() -> None:
    """A key's calls (ticks, and looks at the deadlines, each at a wall-clock time)
    taken again after a restore run as they ran: a deadline that came due between two
    ticks comes between them again, the event time is where it was, and the wall clock
    a flow reads (``call_clock``) reads the same. Calls before the first snapshot are
    taken again from the start."""
    from riskguard.flink.segment import KeyRunner, Segment

    make = functools.partial(Segment.of, core_steps(_quiet_flow()))
    decoders = {"in": lambda rows: [msgspec.msgpack.decode(r[4]) for r in rows]}
    timed = frozenset({"in"})

    def tick(at_s: int, value: int) -> bytes:
        row = ("in", at_s * 10**9, "t/0", at_s, msgspec.msgpack.encode(value))
        return msgspec.msgpack.encode((at_s * 1000, [row]))

    def wall(s: int) -> datetime:  # µs, as datetime holds them, survive the log
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s, microseconds=7)

    def said(made: list[tuple[str, Any]]) -> list[str]:
        return [v for _name, (_key, v) in made]

    def calls(runner: KeyRunner, snapshots: list[Any]) -> list[list[str]]:
        """Tick 1 at 1 s (then a snapshot); at 12 s, the deadline at 10 s; tick 2 at
        13 s: what each said."""
        out = [said(runner.tick(tick(1, 1), wall(1))[1])]
        snapshots.append(runner.snapshot())
        out.append(said(runner.notify(wall(12))))
        return [*out, said(runner.tick(tick(2, 2), wall(13))[1])]

    logged: list[bytes] = []
    unbroken = KeyRunner(make(None), decoders, timed, log=logged.append)
    snapshots: list[Any] = []
    want = calls(unbroken, snapshots)
    ns = (wall(1) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    assert want == [[f"1 at {10**9} wall {ns}"], ["quiet"],
                    [f"after quiet 2 at {2 * 10**9} wall {ns + 12 * 10**9}"]]
    assert len(logged) == 3
    later = said(unbroken.notify(wall(25)))
    # lost after the third call, with a snapshot after the first, or none yet
    for snapshot, taken in ((snapshots[0], 1), ((None, 0), 0)):
        relogged: list[bytes] = []
        back, again = KeyRunner.resume(make, snapshot, logged[taken:3], decoders, timed,
                                       log=relogged.append)
        assert said(again) == [v for said_then in want[taken:] for v in said_then]
        assert back.high == 2 * 10**9
        assert relogged == []  # the calls made again are in the log already
        assert said(back.notify(wall(25))) == later
        assert relogged == logged[3:]  # what comes after is logged as the lost run did


def _gated_flow(market: list[Any], firm: list[Any]) -> Dataflow:
    """A gate under one key that every record passes first, then two key domains."""

    def count(st: int | None, x: int) -> tuple[int, tuple[int, int]]:
        st = (st or 0) + 1
        return st, (x, st)

    flow = Dataflow("gated")
    s = op.input("in", flow, TestingSource(list(range(12)), batch_size=4))
    gated = op.stateful_map("gate", op.key_on("gate_key", s, lambda x: "all"),
                            lambda st, x: (st, x))
    vals = op.map("unkey", gated, lambda kv: kv[1])
    op.output("m_out", op.stateful_map("market", op.key_on(
        "m_key", vals, lambda x: f"m{x % 2}"), count), TestingSink(market))
    op.output("f_out", op.stateful_map("firm", op.key_on(
        "f_key", vals, lambda x: f"f{x % 3}"), count), TestingSink(firm))
    return flow


def test_a_cut_behind_a_gate_every_keyed_step_reads_after_crosses_once() -> None:
    """A keyed step of the first side that every other keyed step reads after (an
    admission gate) is where the input comes in: it runs on the first side, what it
    passes is the one stream that crosses, and the second side reads the input for its
    time. Fed the same batches, the two segments give what bytewax gives."""
    from bytewax.testing import run_main
    from riskguard.flink.plan import SegmentPlan

    want_m: list[Any] = []
    want_f: list[Any] = []
    run_main(_gated_flow(want_m, want_f))
    steps = {st.step_id: st for st in core_steps(_gated_flow([], []))}
    first = frozenset(sid for sid, st in steps.items() if st.kind == "stateful_batch"
                      and (".gate." in sid or ".market." in sid))
    one, two = SegmentPlan.cut(steps, {"in": "records"}, first, route="firm")
    gate = next(sid for sid in first if ".gate." in sid)
    assert [sid for sid, _key in one.routes] == [steps[gate].downs["down"]]
    assert gate in (one.step_ids or ()) and gate not in (two.step_ids or ())
    assert [port for port, _sid, _d in two.inputs] == ["in", steps[gate].downs["down"]]
    a = one.segment(one.steps_of(steps))
    b = two.segment(two.steps_of({st.step_id: st for st in core_steps(_gated_flow([], []))}))
    got: dict[str, list[Any]] = {}
    for batch in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], None):
        made = a.feed({"in": batch}) if batch is not None else a.eof()
        crossing: dict[str, list[Any]] = {}
        for name, item in made:
            (crossing if name in dict(one.routes) else got).setdefault(name, []).append(item)
        more = b.feed(({"in": batch} if batch is not None else {}) | crossing)
        for name, item in more + (b.eof() if batch is None else []):
            got.setdefault(name, []).append(item)
    assert sorted(got["m_out"]) == sorted(want_m)
    assert sorted(got["f_out"]) == sorted(want_f)


def _assert_decides_as(got: dict[str, list[Any]], want: Any) -> None:
    """A Flink segment's outputs are bytewax's: the same commands, signals and as many
    audit records."""
    assert sorted(_command_identity(decode_command(e)) for e in got["commands"]) == sorted(
        map(_command_identity, want.commands))
    assert sorted(map(_signal_identity, got["signals"])) == sorted(
        map(_signal_identity, want.signals))
    assert len(got["audit"]) == want.n_audit


@pytest.mark.slow
def test_the_backtest_flow_as_one_segment_fed_whole_ticks_decides_as_bytewax(
        scenario: dict[str, Path]) -> None:
    """Two copies of the demo scenario (the second starts with every price jumping back,
    where several same-time anomalies open at once), fed to the backtest flow as one
    segment a whole tick at a time: bytewax's commands, signals and audit records."""
    from riskguard.dataflows.backtest import backtest_flow, span_batches
    from riskguard.dataflows.demo_scenario import scenario_copies
    from riskguard.dataflows.guard import load_keys
    from riskguard.flink.segment import Segment
    from riskguard.operators.core.clock import claim_worker

    cfg, digest = load_guard_config(scenario["config"])
    signer, trust = load_keys(cfg)
    records = scenario_copies(2, START_NS)
    want = run_backtest(cfg, digest, records=records, signer=signer, trust=trust)
    seg = Segment.of(core_steps(backtest_flow(cfg, digest, signer=signer, trust=trust,
                                              records=[])))
    claim_worker(0, 1)
    got: dict[str, list[Any]] = {}
    for batch in span_batches(records, len(records), cfg.tick_ns):  # a tick a batch
        for name, item in seg.feed({"in": [batch]}):
            got.setdefault(name, []).append(item)
    for name, item in seg.eof():
        got.setdefault(name, []).append(item)
    _assert_decides_as(got, want)


@pytest.mark.slow
def test_the_backtest_flow_cut_into_a_market_and_a_firm_segment_decides_as_bytewax(
        scenario: dict[str, Path]) -> None:
    """The backtest flow cut where its keys change domain: feeds, features, detection
    and the cross-market and cross-venue checks in one segment, the firm-wide rest in
    another, fed tick by tick with what crosses msgspec-encoded between them. Over two
    copies of the scenario: bytewax's commands, signals and audit records, and what
    crosses is the market segment's marks, signals and dead letters."""
    from riskguard.dataflows.backtest import backtest_flow, span_batches
    from riskguard.dataflows.demo_scenario import scenario_copies
    from riskguard.dataflows.guard import load_keys
    from riskguard.flink.backtest import market_steps
    from riskguard.flink.plan import SegmentPlan
    from riskguard.flink.wire import Wire
    from riskguard.operators.core.clock import claim_worker

    cfg, digest = load_guard_config(scenario["config"])
    signer, trust = load_keys(cfg)
    records = scenario_copies(2, START_NS)
    want = run_backtest(cfg, digest, records=records, signer=signer, trust=trust)

    def steps() -> dict[str, Any]:
        flow = backtest_flow(cfg, digest, signer=signer, trust=trust, records=[])
        return {s.step_id: s for s in core_steps(flow)}

    built = steps()
    first = market_steps(built)
    market, firm = SegmentPlan.cut(built, {"in": "records"}, first, route="firm")
    # the admission gate runs first, in the market segment: what it lets through
    # crosses once, and the firm segment reads its records from there
    assert sorted(sid.split(".")[2] for sid in dict(market.routes)) == [
        "admit", "detect", "features", "marks", "with_dislocations"]
    one = market.segment(market.steps_of(built))
    two = firm.segment(firm.steps_of(steps()))
    claim_worker(0, 1)
    wire, routes = Wire(), dict(market.routes)
    got: dict[str, list[Any]] = {}

    def run(made: list[tuple[str, Any]], batch: list[Any] | None) -> None:
        crossing: dict[str, list[Any]] = {}
        for name, item in made:
            if name in routes:
                crossing.setdefault(name, []).append(wire.decode(wire.encode(item)))
            else:
                got.setdefault(name, []).append(item)
        more = two.feed(({"in": [batch]} if batch is not None else {}) | crossing)
        for name, item in more:
            got.setdefault(name, []).append(item)

    for batch in span_batches(records, len(records), cfg.tick_ns):
        run(one.feed({"in": [batch]}), batch)
    run(one.eof(), None)
    for name, item in two.eof():
        got.setdefault(name, []).append(item)
    _assert_decides_as(got, want)


# -- jobs on a Flink mini-cluster -------------------------------------------------------


def _signal_identity(sig: Any) -> tuple[Any, ...]:
    """What a signal says happened: its id (from its evidence), type, kind, scope, time
    and severity; not the detail of which of two same-time records it quotes."""
    return (sig.id, type(sig).__name__, sig.kind, getattr(sig, "scope", None),
            getattr(sig, "key", None), sig.ts, sig.severity)


def _command_identity(cmd: Any) -> tuple[Any, ...]:
    return (cmd.decision_id, cmd.action.value, cmd.scope, sorted(cmd.params.items()))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("flink-scenario")
    keys = init_keys(work)
    config = write_config(work, "127.0.0.1:9", keys, f"f{uuid.uuid4().hex[:6]}")
    records = work / "records.jsonl"
    records.write_bytes(b"".join(encode(r) + b"\n" for r in build_scenario(START_NS).events))
    return {"config": config, "records": records, "work": work}


def test_the_backtest_job_is_the_backtest_flow_over_its_records_file(
        scenario: dict[str, Path]) -> None:
    """What ``python -m riskguard.flink.backtest`` lays onto Flink: the flow ``riskguard
    backtest`` runs, with one input step for the records file and its five outputs.
    (Running it on Flink against bytewax is ``bench/engines.py``'s: the live job's test
    here covers the same adapter at parallelism 1 and 2.)"""
    from riskguard.flink.backtest import flow_for

    steps = core_steps(flow_for(str(scenario["config"]), 100))
    assert [s.name for s in steps if s.kind == "input"] == ["in"]
    assert sorted(s.name for s in steps if s.kind == "output") == sorted(
        ("commands", "signals", "utilization", "audit", "dead_letters"))
    assert len(read_records(scenario["records"])) > 20_000


@pytest.mark.slow
def test_the_backtest_job_as_two_segments_in_two_python_workers_decides_as_bytewax(
        tmp_path: Path) -> None:
    """``python -m riskguard.flink.backtest --segments 2 --parallelism 2`` on a
    mini-cluster over two copies of the demo scenario (the second starts with several
    same-time anomalies): the market segment and the firm segment, each in a Python
    worker of its own, give bytewax's commands, signals and audit records."""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.demo_scenario import scenario_copies
    from riskguard.dataflows.guard import load_keys

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:9", keys, f"f{uuid.uuid4().hex[:6]}")
    records = scenario_copies(2, START_NS)
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(encode(r) + b"\n" for r in records))
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    want = run_backtest(cfg, digest, records=read_records(path), signer=signer, trust=trust)
    cmd, env = flink_command(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [*cmd, "-m", "riskguard.flink.backtest", "--config", str(config), "--records",
         str(path), "--segments", "2", "--parallelism", "2", "--out", str(out)],
        check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codec = Codec(clock=lambda: 0)

    def got(name: str) -> list[Any]:
        return [codec.decode(name, line) for line in
                (out / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]

    assert sorted(_command_identity(decode_command(e)) for e in got("commands")) == sorted(
        map(_command_identity, want.commands))
    assert sorted(map(_signal_identity, got("signals"))) == sorted(
        map(_signal_identity, want.signals))
    assert len(got("audit")) == want.n_audit
    assert got("dead_letters") == []


@pytest.mark.slow
def test_java_makes_a_tick_one_row_in_event_time_then_source_order(tmp_path: Path) -> None:
    """``tick_batches`` (``flink/java/TickBatches.java``, compiled by
    :mod:`riskguard.flink.java_build`) on a mini-cluster: each key's tick is one row, its
    rows in event time, then source and position order, whatever order they came in; a
    row without event time takes the latest a timed input gave before it."""
    if reason := java_missing():
        pytest.skip(reason)
    import json

    cmd, env = flink_command(tmp_path)
    done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py")],
                          env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    batches = sorted(json.loads(line) for line in done.stdout.splitlines())
    ms = 1_000_000
    assert batches == [
        [1999, False, [["in", 1100 * ms, "t/0", 1, "b"]]],  # key b: a row of its own
        [1999, False, [["in", 1200 * ms, "t/0", 4, "z"], ["in", 1200 * ms, "t/0", 9, "y"],
                       ["acks", 1500 * ms, "acks/0", 0, "n"],
                       ["in", 1500 * ms, "t/1", 3, "x"]]],
        [2999, False, [["in", 2500 * ms, "t/1", 4, "w"]]],
    ]


@pytest.mark.slow
def test_a_records_file_line_java_cannot_read_goes_on_as_text_and_fails_no_job(
        tmp_path: Path) -> None:
    """``RecordsFile.rows`` (``flink/java/RecordsFile.java``) over a file of ``ts,pos,
    base64`` lines, three of them not as written (a time past a long, a position that is
    no number, bytes that are not base64): the job ends, and each such line goes on as
    its own text with the time and position of the line before it, for the flow to
    dead-letter. The Python side never writes a time past a long
    (:func:`~riskguard.flink.backtest.source_rows`)."""
    if reason := java_missing():
        pytest.skip(reason)
    import base64
    import json

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    lines = [f"5,0,{b64('a')}", f"10000000000000000000,1,{b64('b')}", f"6,x,{b64('c')}",
             "7,3,not base64!", f"8,4,{b64('d')}"]
    path = tmp_path / "records.csv"
    path.write_text("".join(line + "\n" for line in lines))
    cmd, env = flink_command(tmp_path)
    done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                           "records", str(path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        ["all", "in", 5, "", 0, "a"],
        ["all", "in", 5, "", 0, lines[1]],
        ["all", "in", 5, "", 0, lines[2]],
        ["all", "in", 5, "", 0, lines[3]],
        ["all", "in", 8, "", 4, "d"],
    ]


def test_a_backtest_line_whose_ts_no_record_may_have_takes_the_time_before_it() -> None:
    """:func:`~riskguard.flink.backtest.source_rows`: a ``ts`` past int64 (or below 0)
    is no event time (a long in Java could not hold it); the line goes on at the time
    before it, and the flow dead-letters it as bytewax does (validation, ``$.ts``)."""
    from riskguard.flink.backtest import source_rows

    big = (b'{"type":"trade","id":"t","venue":"v","instrument":"BTC-USDT",'
           b'"ts":10000000000000000000,"price":1.0,"qty":1.0,"side":"buy"}')
    rows = source_rows([b'{"ts": 5}', big, big.replace(b"10000000000000000000", b"-3"),
                        b'{"ts": 9223372036854775807}'])
    assert [ts for ts, _pos, _line in rows] == [5, 5, 5, 2**63 - 1]
    letter = Codec(clock=lambda: 0).decode("records", big)
    assert (letter.reason, letter.path) == ("validation", "$.ts")


def _records_with_bad_lines(path: Path, n: int = 300) -> Path:
    """``n`` records of the demo scenario as JSONL, with a blank line, a line that is no
    JSON, a record no schema takes and a line ending in CRLF among them."""
    lines = [encode(r) for r in build_scenario(START_NS).events[:n]]
    lines[40:40] = [b"", b"not json at all", b'{"type":"trade","id":"t","ts":"soon"}']
    lines[120] += b"\r"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _letter_identity(d: Any) -> tuple[Any, ...]:
    return (d.topic, d.partition, d.offset, d.reason, d.path, d.raw)


def test_the_flink_backtest_decodes_a_line_as_bytewax_reads_it(tmp_path: Path) -> None:
    """A records file's rows as the Flink backtest hands them to its segment (a line
    number each, ``source_rows``) decode as :func:`read_records` reads the file for
    bytewax: a dead letter names the file, no partition, the line (blank lines
    counted) and the line's bytes without its ending."""
    from riskguard.flink.backtest import numbered_lines, source_rows
    from riskguard.flink.plan import SegmentPlan

    path = _records_with_bad_lines(tmp_path / "bad.jsonl")
    numbered = numbered_lines(path)
    rows = [("in", ts, "", pos, line) for ts, pos, line in source_rows(
        [line for _i, line in numbered], [i for i, _line in numbered])]
    plan = SegmentPlan(inputs=(("in", "s", "records"),), outputs=(),
                       sources=(("in", path.name),))
    (got,) = plan.decoders()["in"](rows)
    want = read_records(path)
    assert got == want
    letters = [_letter_identity(d) for d in want if type(d).__name__ == "DeadLetter"]
    assert [d[:4] for d in letters] == [("bad.jsonl", -1, 41, "malformed"),
                                         ("bad.jsonl", -1, 42, "validation")]
    assert letters[0][5] == b"not json at all"
    assert not any(r.raw.endswith((b"\n", b"\r")) for r in want
                   if type(r).__name__ == "DeadLetter")


@pytest.mark.slow
@pytest.mark.parametrize("segments", [1, 2])
def test_the_flink_backtests_dead_letters_name_the_line_as_bytewaxs_do(
        tmp_path: Path, segments: int) -> None:
    """``python -m riskguard.flink.backtest`` over a records file with a line that is no
    JSON and one no schema takes: its dead letters are bytewax's for the same file, each
    naming the file, the line and its bytes, once."""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.guard import load_keys

    keys = init_keys(tmp_path)
    config = write_config(tmp_path, "127.0.0.1:9", keys, f"f{uuid.uuid4().hex[:6]}")
    path = _records_with_bad_lines(tmp_path / "records.jsonl")
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    want = run_backtest(cfg, digest, records=read_records(path), signer=signer, trust=trust)
    assert len(want.dead_letters) == 2
    cmd, env = flink_command(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [*cmd, "-m", "riskguard.flink.backtest", "--config", str(config), "--records",
         str(path), "--segments", str(segments), "--out", str(out)],
        check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    codec = Codec(clock=lambda: 0)
    got = [codec.decode("dead_letters", line) for line in
           (out / "dead_letters.jsonl").read_bytes().splitlines() if line.strip()]
    assert sorted(map(_letter_identity, got)) == sorted(
        map(_letter_identity, want.dead_letters))
    assert [(d.topic, d.offset) for d in sorted(got, key=lambda d: d.offset)] == [
        ("records.jsonl", 41), ("records.jsonl", 42)]


def test_beams_state_sampler_runs_without_its_thread_in_a_segments_worker(
        tmp_path: Path) -> None:
    """What :func:`~riskguard.flink.fused.threadless_state_sampler` leaves of Beam's state
    sampler, in the Flink environment's Beam: a bundle's start and stop start no thread
    and join none, steps still enter and leave their states, and the sampler is the
    current tracker only while started."""
    if reason := java_missing():
        pytest.skip(reason)
    probe = """
import threading
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory
from riskguard.flink.fused import threadless_state_sampler
threadless_state_sampler(); threadless_state_sampler()
sampler = statesampler.StateSampler("s", CounterFactory())
threads = threading.active_count()
for _ in range(3):
    sampler.reset()
    sampler.start()
    assert statesampler.get_current_tracker() is sampler
    assert threading.active_count() == threads
    before = sampler.state_transition_count
    with sampler.scoped_state("step", "process"):
        assert sampler.current_state().name.step_name == "step"
    assert sampler.state_transition_count == before + 2
    sampler.stop_if_still_running()
    assert sampler.finished and statesampler.get_current_tracker() is None
print("ok")
"""
    cmd, env = flink_command(tmp_path)
    done = subprocess.run([*cmd, "-c", probe], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.kafka
@pytest.mark.slow
def test_a_row_behind_the_watermark_goes_on_alone_after_the_rows_that_made_it_late(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """Messages at 1.0 s, 5.0 s, then 1.5 s and 7.0 s of event time on one partition,
    the watermark moving with each: the tick ending at 1,999 ms goes on when 5.0 s
    passes it; the message at 1.5 s, behind the watermark, goes on by itself, marked
    late, for the flow's lateness rules to judge, but only after the tick of 5.0 s, the
    message that made it late (bytewax's admission sees them in that order, and judges
    1.5 s against 5.0 s). Flink's Prometheus reporter serves the late row's count under
    the name the ops alert ``RiskguardFlinkRowsBehindWatermark`` reads."""
    if reason := java_missing():
        pytest.skip(reason)
    import json

    from confluent_kafka import Producer

    topic = new_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for at_ms in (1000, 5000, 1500, 7000):
        producer.produce(topic, str(at_ms).encode())
        producer.flush(10)  # one message a batch: the dev broker reports batches
    del producer
    from kafka_helpers import free_ports

    cmd, env = flink_command(tmp_path)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                           kafka_bootstrap, topic, "3", str(free_ports(1)[0])], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    *batches, metrics = [json.loads(line) for line in done.stdout.splitlines()]
    ms = 1_000_000
    assert batches == [
        [1999, False, [["in", 1000 * ms, "p/0", 0, "1000"]]],
        [5999, False, [["in", 5000 * ms, "p/0", 1, "5000"]]],
        [1999, True, [["in", 1500 * ms, "p/0", 2, "1500"]]],
    ]
    alert = (Path(__file__).parents[1] / "ops" / "prometheus" / "alerts.yml").read_text()
    name = "flink_taskmanager_job_task_operator_lateRows"
    assert name in alert
    counted = [line for line in metrics["metrics"] if line.startswith(name + "{")]
    assert [float(line.rsplit(" ", 1)[1]) for line in counted] == [1.0], metrics


@pytest.mark.kafka
@pytest.mark.slow
def test_the_guard_source_stamps_event_time_and_a_quiet_partition_holds_no_tick_back(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """The live guard's Kafka source (``flink/java/kafka/KafkaIo.java``): a message's
    event time is its top-level ``ts``, else its Kafka timestamp, never more than the
    allowed skew (0.5 s here) past that; and a partition that sent one message (a
    limit update at 1.2 s) and then nothing stops holding the watermark back a second
    later, where one that sent nothing yet is waited for ten minutes. The ticks up to
    the busy partition's 5.0 s then go on, each in event time, then source order; and
    once every partition that sent something is quiet, the watermark passes the newest
    tick, so 5.0 s goes on too, not held until a next message. A ``ts`` no record may
    have (below 0) is no event time: the message goes with its neighbours, for the flow
    to dead-letter, not behind the watermark."""
    if reason := java_missing():
        pytest.skip(reason)
    import json

    from confluent_kafka import Producer

    busy, quiet = new_topic(), new_topic()
    sent = [
        (busy, b'{"ts": 1000000000, "x": 1}', None),
        (quiet, b'{"kind": "limit", "ts": 1200000000}', None),
        (busy, b'{"a": {"ts": 9}, "ts": 1500000000}', None),  # nested ts is not its ts
        (busy, b'{"kind": "ack"}', 1_700),  # no ts: its Kafka timestamp, in ms
        (busy, b'{"ts": -1}', 1_800),  # no record's ts: as if it had none
        (busy, b'{"ts": 2500000000}', None),
        (busy, b'{"ts": 100000000000}', 2_200),  # 100 s ahead of its Kafka time: 2.7 s
        (busy, b'{"ts": 5000000000}', None),
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for topic, value, kafka_ms in sent:
        producer.produce(topic, value, **({"timestamp": kafka_ms} if kafka_ms else {}))
        producer.flush(10)  # one message a batch: the dev broker reports batches
    del producer
    cmd, env = flink_command(tmp_path)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                           "guard", kafka_bootstrap, f"{busy},{quiet}", "3"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ms = 1_000_000
    assert sorted(json.loads(line) for line in done.stdout.splitlines()) == [
        [1999, False, [["kafka", 1000 * ms, f"{busy}/0", 0, '{"ts": 1000000000, "x": 1}'],
                       ["kafka", 1200 * ms, f"{quiet}/0", 0,
                        '{"kind": "limit", "ts": 1200000000}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 1,
                        '{"a": {"ts": 9}, "ts": 1500000000}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 2, '{"kind": "ack"}'],
                       ["kafka", 1500 * ms, f"{busy}/0", 3, '{"ts": -1}']]],
        [2999, False, [["kafka", 2500 * ms, f"{busy}/0", 4, '{"ts": 2500000000}'],
                       ["kafka", 100_000 * ms, f"{busy}/0", 5, '{"ts": 100000000000}']]],
        [5999, False, [["kafka", 5000 * ms, f"{busy}/0", 6, '{"ts": 5000000000}']]],
    ]


@pytest.mark.kafka
@pytest.mark.slow
def test_the_guard_source_hears_every_partition_within_two_fetch_rounds_of_a_backlog(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """24 partitions, each with a backlog of 600 messages of about 1 KB, read with the
    live guard's fetch settings (``set_fetches`` in ``flink/guard.py``): every partition
    hands on its first message within the first two fetch rounds' worth of messages
    (``FETCH_BYTES`` a partition), long before the quiet rule would pass it over. The
    Kafka consumer hands on one partition's fetched records before the next one's: at
    1 MiB a partition, each partition's backlog would come whole, the last partition's
    first message after 13,800 others, and on a large backlog the quiet rule would pass
    over the partitions still waiting, making their rows late."""
    if reason := java_missing():
        pytest.skip(reason)
    from confluent_kafka import Producer
    from riskguard.flink.guard import FETCH_BYTES

    partitions, backlog, size = 24, 600, 1_024
    topic = new_topic(partitions=partitions)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0,
                         "batch.size": 16_384})
    pad = "x" * (size - 30)
    for n in range(backlog):
        for p in range(partitions):
            producer.produce(topic, f'{{"ts": {(n + 1) * 1_000_000}, "pad": "{pad}"}}'
                             .encode(), partition=p)
        producer.poll(0)
    assert producer.flush(60) == 0
    del producer
    cmd, env = flink_command(tmp_path)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    limit = 2 * partitions * FETCH_BYTES // size
    done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                           "order", kafka_bootstrap, topic, str(limit)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    heard = {int(line.split()[0]) for line in done.stdout.splitlines()}
    assert len(done.stdout.splitlines()) == limit
    assert heard == set(range(partitions))


@pytest.mark.kafka
@pytest.mark.slow
def test_a_row_without_event_time_after_a_restore_takes_the_latest_before_the_checkpoint(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """The guard source's rows stamped by ``RowTime`` (``flink/java/TickBatches.java``):
    a message without a ``ts`` (an ack) takes the latest event time a timed message gave,
    and that time is in the checkpoint. Messages at 1, 2 and 5 s (the 5 s tick goes on
    once the partition is quiet); the job is cancelled after a checkpoint and restored
    from it; an ack then goes in the 5 s tick, not at 0 (a tick of its own, far
    behind)."""
    if reason := java_missing():
        pytest.skip(reason)
    import json

    from confluent_kafka import Producer

    topic = new_topic()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    cmd, env = flink_command(tmp_path)
    env["RISKGUARD_FLINK_JARS"] = ";".join(kafka_jars())
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def send(*messages: tuple[bytes, int]) -> None:
        for value, kafka_ms in messages:
            producer.produce(topic, value, timestamp=kafka_ms)
            producer.flush(10)  # one message a batch: the dev broker reports batches

    def job(n: int) -> list[Any]:
        done = subprocess.run([*cmd, str(Path(__file__).parent / "flink_ticks_job.py"),
                               "restore", kafka_bootstrap, topic, str(checkpoints), str(n)],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines()]

    send((b'{"ts": 1000000000}', 1_000), (b'{"ts": 2000000000}', 2_000),
         (b'{"ts": 5000000000}', 5_000))
    assert [b[0] for b in job(3)] == [1999, 2999, 5999]
    send((b'{"kind": "ack"}', 6_000), (b'{"ts": 8000000000}', 8_000))
    ms = 1_000_000
    # (then the 8 s tick too, once the partition is quiet)
    assert job(1)[0] == [5999, False, [["kafka", 5000 * ms, f"{topic}/0", 3, '{"kind": "ack"}']]]


@pytest.mark.kafka
def test_the_live_guard_flow_admits_each_partition_under_its_own_key_and_writes_five_topics(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The flow the Flink guard job runs: raw messages admitted per partition (each
    one's lateness watermark in its keyed state), the guard core, and an output per
    topic; the Kafka connector stands in for the input step, and the flow runs whole
    as one segment. The client plans the job from the same steps built without reading
    the command and audit topics."""
    from riskguard.dataflows.demo import prepare_run
    from riskguard.flink.guard import OUTPUT_STREAMS, guard_flow
    from riskguard.flink.plan import SegmentPlan

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"fg{uuid.uuid4().hex[:6]}")
    steps = core_steps(guard_flow(str(run.config)))
    assert [s.name for s in steps if s.kind == "input"] == ["kafka"]
    assert sorted(s.name for s in steps if s.kind == "output") == sorted(OUTPUT_STREAMS)
    assert "riskguard_guard.admit.stateful" in {s.step_id for s in steps}
    plan = SegmentPlan.whole({s.step_id: s for s in steps}, {"kafka": "kafka"})
    assert [p for p, _s, _d in plan.inputs] == ["kafka"]
    planned = core_steps(guard_flow(str(run.config), resume=False))
    assert [(s.step_id, s.kind, s.ups, s.downs) for s in planned] == [
        (s.step_id, s.kind, s.ups, s.downs) for s in steps]
    assert sorted(n for _s, n in plan.outputs) == sorted(OUTPUT_STREAMS)
    # a Kafka message without a value (a tombstone) reaches the admission as None and
    # leaves as a dead letter naming where it was, as does a value that is no JSON
    rows = [("kafka", 5, f"{run.topic('trades')}/1", 7, None),
              ("kafka", 5, f"{run.topic('trades')}/2", 9, b"not json")]
    msgs = plan.decoders()["kafka"](rows)
    assert msgs == [(run.topic("trades"), 1, 7, None), (run.topic("trades"), 2, 9, b"not json")]
    out = plan.segment(plan.steps_of({s.step_id: s for s in steps})).feed({"kafka": msgs})
    letters = [x for name, x in out if name == "dead_letters"]
    assert [(d.topic, d.partition, d.offset, d.raw) for d in letters] == [
        (run.topic("trades"), 1, 7, b""), (run.topic("trades"), 2, 9, b"not json")]
    assert "tombstone" in letters[0].found


def _topic_count(run: Any, stream: str) -> int:
    return len(read_topic_bytes(run.bootstrap, run.topic(stream), idle_timeout_s=1.0))


def _commands_on(run: Any) -> list[Any]:
    topic = run.topic("commands")
    return [decode_command(Codec().decode(topic, raw))
            for raw in read_topic_bytes(run.bootstrap, topic, idle_timeout_s=1.0)]


def _distinct_commands(run: Any) -> int:
    """The commands on the run's topic, a copy a restart wrote again counted once."""
    return len({cmd.command_id for cmd in _commands_on(run)})


def _missing_commands(run: Any, want: list[Any]) -> str:
    """The wanted commands not on the run's topic: action, scope, time and reason."""
    got = {_command_identity(cmd) for cmd in _commands_on(run)}
    return "; ".join(f"{c.action.value} {c.scope} issued at {c.issued_at} ({c.reason})"
                     for c in want if _command_identity(c) not in got)


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[Any],
          timeout_s: float, every_s: float = 2.0,
          detail: Callable[[], str] = lambda: "") -> None:
    """Wait for ``ready``; past the timeout, fail saying ``detail()`` (how far it got)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"the Flink job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f} s {detail()}"
        time.sleep(every_s)


def _served(port: int, name: str) -> float:
    """The sum of the samples of ``name`` served on ``port`` (0 where nothing is)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _guard_job(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    return subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=log.parent, start_new_session=True)


@pytest.mark.kafka
@pytest.mark.slow
def test_the_live_flink_guard_killed_and_rescaled_executes_bytewaxs_commands_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The demo scenario's first 180 s published to the dev broker (two partitions a
    topic), the guard run live on Flink (``riskguard run --engine flink``) at
    parallelism 1: killed whole (the CLI, the mini-cluster and its Python workers) once
    commands flow and a checkpoint is taken; the rest of the scenario published,
    the job restarted from its last checkpoint at parallelism 2, then interrupted.
    The subscriber executes bytewax's commands (decision, action, scope, params), each
    once, and nothing is dead-lettered. The first run's Python worker serves the guard's
    own metrics on ``$RISKGUARD_METRICS_PORT``, its events and commands counted. Both
    runs trace their start-up (``$RISKGUARD_FLINK_TRACE``). (With the whole scenario
    published at once, a fast run could be killed after its last command.)"""
    if reason := java_missing():
        pytest.skip(reason)
    from riskguard.dataflows.demo import prepare_run, publish_scenario, subscriber_for
    from riskguard.flink.guard import latest_checkpoint

    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"fl{uuid.uuid4().hex[:6]}",
                      publish_until_s=180.0)
    hold_for_replay(run)  # the restored job catches up on a backlog
    cfg, digest = load_guard_config(run.config)
    want = run_backtest(cfg, digest, records=build_scenario(run.start_ns).events)
    from kafka_helpers import free_ports

    cmd, env = flink_command(tmp_path)
    trace = tmp_path / "trace.txt"
    (metrics_port,) = free_ports(1)
    env |= {"RISKGUARD_FLINK_JARS": ";".join(kafka_jars()), "RISKGUARD_FLINK_PYTHON": cmd[0],
            "RISKGUARD_FLINK_TRACE": str(trace), "RISKGUARD_METRICS_PORT": str(metrics_port),
            "RISKGUARD_METRICS_ADDR": "127.0.0.1"}
    checkpoints = (tmp_path / "checkpoints").as_uri()
    args = [sys.executable, "-m", "riskguard.cli", "run", "--engine", "flink", "--config",
            str(run.config), "--", "--checkpoints", checkpoints, "--checkpoint-interval-ms",
            "1000"]
    log = tmp_path / "job.log"
    first = _guard_job([*args, "--parallelism", "1"], env, log)
    try:
        _wait("a command and a checkpoint", lambda: _topic_count(run, "commands") >= 1
              and latest_checkpoint(checkpoints) is not None, first, 300, every_s=0.5)
        # the Python worker serves the guard's own metrics, counted where the flow runs
        _wait("the worker's metrics", lambda: _served(metrics_port, "riskguard_events_in_total")
              > 0 and _served(metrics_port, "riskguard_commands_total") > 0, first, 30,
              detail=lambda: f"(events in {_served(metrics_port, 'riskguard_events_in_total')}"
              f", commands {_served(metrics_port, 'riskguard_commands_total')})")
        os.killpg(first.pid, signal.SIGKILL)  # the CLI, the job and its Python workers
        first.wait(30)
        at_kill = _distinct_commands(run)
        assert at_kill < len(want.commands), "the kill came after the last command"
        publish_scenario(run.bootstrap, run.start_ns, run.env, between_s=(180.0, math.inf))
        second = _guard_job([*args, "--parallelism", "2", "--restore", "latest"], env, log)
        try:
            _wait("commands", lambda: _distinct_commands(run) >= len(want.commands),
                  second, 300, detail=lambda: (
                      f"{_distinct_commands(run)} of {len(want.commands)} commands "
                      f"({at_kill} at the kill), "
                      f"{_topic_count(run, 'dead_letters')} dead letters; missing: "
                      f"{_missing_commands(run, want.commands)}"))
            second.send_signal(signal.SIGINT)  # the CLI stops the job, then sums up
            assert second.wait(60) == 130, log.read_text()[-3000:]
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert sum(line.startswith("riskguard run: config ") for line in lines) == 2
    assert lines[-1].startswith("summary  interrupted after "), lines[-1]
    executed: list[Any] = []
    with subscriber_for(run, tmp_path / "sub.sqlite", on_command=executed.append) as sub:
        sub.poll(idle_timeout_s=2.0)
        summary = sub.summary()
    assert sorted(map(_command_identity, executed)) == sorted(
        map(_command_identity, want.commands)), log.read_text()[-3000:]
    # the restored job went on with the sequence and the audit chain where they stood
    assert summary.get("gaps", 0) == 0 and summary.get("rejected", 0) == 0, summary
    assert main(["audit", "verify", "--topic", run.topic("audit"), "--brokers",
                 run.bootstrap, "--trust", str(run.keys.trust_file), "--roots",
                 str(run.keys.roots_file), "--allow-tail"]) == 0  # a live log
    topic = run.topic("signals")
    signals = {_signal_identity(Codec().decode(topic, raw))
               for raw in read_topic_bytes(run.bootstrap, topic, idle_timeout_s=1.0)}
    assert signals == set(map(_signal_identity, want.signals))
    assert _topic_count(run, "dead_letters") == 0
    # each run's client and segment operators traced their start-up, once each a process
    moments = [line.split()[0] for line in trace.read_text().splitlines()
               if line.split()[0] != "late_rows"]
    assert moments.count("client") == moments.count("submitted") == 2, moments
    assert {"open", "opened", "first_input", "first_output"} <= set(moments), moments
