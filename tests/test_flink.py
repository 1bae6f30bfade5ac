"""riskguard on Apache Flink, the adapter's Python half: a flow read as its core steps,
run in segments batch by batch, cut where its keys change domain, resumed from
snapshots, and the rows the jobs hand it decoded as bytewax reads its input. Nothing
here starts a JVM; the jobs on Flink mini-clusters are ``tests/test_flink_jobs.py``'s."""

from __future__ import annotations

import functools
import random
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource
from flink_cases import (
    START_NS,
    command_identity,
    letter_identity,
    records_with_bad_lines,
    signal_identity,
)
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.dataflows.guard import load_guard_config
from riskguard.flink import FlowRef, core_steps
from riskguard.flink.backtest import read_records
from riskguard.operators.core.clock import call_clock, step_event_time
from riskguard.operators.signing import decode_command
from riskguard.schemas import Codec, encode

from riskguard.errors import ConfigError


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
base, how = int(sys.argv[1]), sys.argv[2]
if how != "free":  # another worker of the host (or its predecessor) holds the port
    held = socket.socket(); held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", base)); held.listen()
DEAD_LETTERS.labels("t", "malformed").inc(3)
env = {"RISKGUARD_METRICS_PORT": str(base), "RISKGUARD_METRICS_ADDR": "127.0.0.1"}
if how == "one-port":  # a one-slot TaskManager: wait for the port, never move
    env["RISKGUARD_METRICS_PORTS"] = "1"
thread = wm.serve_worker_metrics(env, first_wait_s=0.5, retry_s=0.2)
assert wm.serve_worker_metrics(env) is thread  # once a process
if how == "one-port":
    assert not wm.served.bound.wait(2.0), wm.served.port  # past first_wait_s, unmoved
    held.close()
assert wm.served.bound.wait(10) and wm.served.port is not None
page = urllib.request.urlopen(f"http://127.0.0.1:{wm.served.port}/metrics", timeout=5).read()
print(wm.served.port - base, [ln for ln in page.decode().splitlines()
                       if ln.startswith("riskguard_dead_letters_total{")])
"""


def _free_run(n: int) -> int:
    """A port that is free with the ``n - 1`` after it, below the range the OS gives
    client connections, so another test's Kafka client cannot take one meanwhile."""
    for base in random.sample(range(20_000, 32_000), 200):
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise AssertionError("no run of free ports found")


def test_each_flink_python_worker_serves_the_guards_metrics_on_a_port_of_its_hosts_range(
        ) -> None:
    """:func:`~riskguard.flink.worker_metrics.serve_worker_metrics`, which each segment
    operator calls when it opens (``TickBatchSegment.open``): a worker serves the
    registry it counts in (its dead letters here) on ``$RISKGUARD_METRICS_PORT``, or,
    where another worker of the host holds that port, on the next one (with
    ``$RISKGUARD_METRICS_PORTS=1``, on that port once it is free); once a process.
    Without the variable it serves nothing; a value that is not a port is refused."""
    from riskguard.flink.worker_metrics import serve_worker_metrics

    assert serve_worker_metrics({}) is None
    with pytest.raises(ConfigError, match="RISKGUARD_METRICS_PORT"):
        serve_worker_metrics({"RISKGUARD_METRICS_PORT": "nine"})
    for ports in ("0", "17", "one"):
        with pytest.raises(ConfigError, match="RISKGUARD_METRICS_PORTS"):
            serve_worker_metrics({"RISKGUARD_METRICS_PORT": "9250",
                                  "RISKGUARD_METRICS_PORTS": ports})
    base = _free_run(2)
    for how, offset in (("free", 0), ("hold", 1), ("one-port", 0)):
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
    assert sorted(command_identity(decode_command(e)) for e in got["commands"]) == sorted(
        map(command_identity, want.commands))
    assert sorted(map(signal_identity, got["signals"])) == sorted(
        map(signal_identity, want.signals))
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
        "admit", "detect", "features", "feed_unkey", "with_dislocations"]
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


def test_a_backtest_line_whose_ts_no_record_may_have_takes_the_time_before_it() -> None:
    """:func:`~riskguard.flink.backtest.source_rows`: a ``ts`` past int64 (or below 0)
    is no event time (a long in Java could not hold it); the line goes on at the time
    before it, and the flow dead-letters it as bytewax does (validation, ``$.ts``)."""
    from riskguard.flink.backtest import source_rows

    big = (b'{"type":"trade","id":"t","venue":"v","instrument":"BTC-USDT",'
           b'"ts":10000000000000000000,"price":1.0,"qty":1.0,"side":"buy"}')
    rows = source_rows(enumerate([b'{"ts": 5}', big, big.replace(b"10000000000000000000", b"-3"),
                                  b'{"ts": 9223372036854775807}']))
    assert [ts for ts, _pos, _line in rows] == [5, 5, 5, 2**63 - 1]
    letter = Codec(clock=lambda: 0).decode("records", big)
    assert (letter.reason, letter.path) == ("validation", "$.ts")


def test_the_flink_backtest_decodes_a_line_as_bytewax_reads_it(tmp_path: Path) -> None:
    """A records file's rows as the Flink backtest hands them to its segment (a line
    number each, ``source_rows``) decode as :func:`read_records` reads the file for
    bytewax: a dead letter names the file, no partition, the line (blank lines
    counted) and the line's bytes without its ending."""
    from riskguard.flink.backtest import numbered_lines, source_rows
    from riskguard.flink.plan import SegmentPlan

    path = records_with_bad_lines(tmp_path / "bad.jsonl")
    rows = [("in", ts, "", pos, line)
            for ts, pos, line in source_rows(numbered_lines(path))]
    plan = SegmentPlan(inputs=(("in", "s", "records"),), outputs=(),
                       sources=(("in", path.name),))
    (got,) = plan.decoders()["in"](rows)
    want = read_records(path)
    assert got == want
    letters = [letter_identity(d) for d in want if type(d).__name__ == "DeadLetter"]
    assert [d[:4] for d in letters] == [("bad.jsonl", -1, 41, "malformed"),
                                         ("bad.jsonl", -1, 42, "validation")]
    assert letters[0][5] == b"not json at all"
    assert not any(r.raw.endswith((b"\n", b"\r")) for r in want
                   if type(r).__name__ == "DeadLetter")



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

