"""The guard's backtest flow on bytewax and on Apache Flink: events/s, start-up, first
output, memory, and whether both engines gave the same commands.

Run: ``python bench/engines.py [--copies 2] [--bytewax-copies 40] [--flink-python PATH]``
(about 5 minutes on 2 cores; Flink needs Java 11 or 17 on ``PATH``).

What runs. The flow :func:`riskguard.dataflows.backtest.backtest_flow` builds (the one
``riskguard backtest`` runs), with the demo's keys and config, over JSONL files of the
bundled demo scenario (26,918 records a copy): a tenth of one copy, ``--copies``
back-to-back copies (:func:`scenario_copies`), and for bytewax ``--bytewax-copies``. Each
run is its own process tree, started by the bench:

- **bytewax, 1 worker**: ``python -m bytewax.run "engines:bytewax_flow(...)"``: one
  worker in one process, as ``run_backtest`` runs it. The backtest's own ``JsonlSink``
  takes one worker only, so every bytewax run writes its outputs through this script's
  :class:`StampSink` (one file per worker).
- **bytewax, 2 workers**: ``-w 2``, two workers (threads) in one process. It runs, but
  not as one worker does: the keyed steps take same-time records from the two workers
  in the order they arrive, so a rule may act on another of two same-time signals; and
  the event clock both share is moved by the worker that reads the input, which can run
  more than the allowed lateness ahead of the other, whose records the feature step
  then dead-letters as late. Both vary from run to run.
- **bytewax, 2 processes**: ``-i 0`` / ``-i 1`` with ``-a`` naming both, one worker each
  (riskguard scales with processes, not threads); process 1 starts once process 0
  listens. The backtest flow does not run right this way: its event clock
  (:class:`~riskguard.dataflows.backtest.EventClock`) moves in the process that reads
  the input, so the steps in the other one see time 0 and dead-letter about half the
  records as from the future. It runs over the ``--copies`` input only, to show that,
  and gets no events/s.
- **Flink, parallelism 1 and 2**: the job :func:`riskguard.flink.backtest.run` runs, built
  as it builds it (:func:`flink_child`), on a local mini-cluster in the Flink environment
  ``tests/flink_env.py`` builds (``--flink-python`` names another interpreter with
  riskguard importable), its Python workers in processes of their own and its JVM
  compiling with C1 only (:func:`riskguard.flink.fused.quick_jvm`). At parallelism 1
  the flow is one segment; at 2, its market segment and its firm segment, each in a
  Python worker (``--segments 2``).

Method.

- **Events/s** by subtraction: the rate is the records added over the wall time added
  (process start to exit) from the run over a tenth of a copy to the longest run (bytewax:
  ``--bytewax-copies``, default 40, about 25 s a run; Flink: ``--copies``, default 2,
  about 80 s)::

      rate = (n_long - n_short) / (T_long - T_short)

  What a run pays once (interpreter, JVM, job submission, each worker building the flow,
  shutdown) cancels; what it pays per record (reading the input, shipping it into the
  job, processing it) counts. The time from the first output to the last is no measure
  on Flink: its output is collected by the client, which receives it in batches.
- **CPU per event**: the same subtraction over the CPU seconds of the run's processes
  (sampled with the memory, below): what an added event costs all of them together,
  steadier than wall time on a shared machine. For Flink, also by kind of process (the
  client, the JVM, the Python workers: :func:`process_kind`), with the CPU seconds a
  run costs at 0 records.
- **Start-up** = the fixed cost of a run: the same line's value at 0 records
  (``T_short - n_short / rate``), start-up and shutdown together.
- **First output** = from starting the process (of 2 bytewax processes, the first) to
  the first output of any kind, over the ``--copies`` input.
- **Peak memory** = the largest sum of ``VmRSS`` over the run's process tree (the
  started processes and all their descendants: Flink's JVM and Python processes),
  sampled every 0.2 s, over the ``--copies`` input. A page two processes share counts in
  both.
- **Outputs**: the commands (decision id, action, scope, params) and signals (id, type,
  kind, scope, time, severity) as sorted lists, and the numbers of audit records and
  dead letters, against bytewax's 1 worker over the same ``--copies`` input, as
  ``tests/test_flink_jobs.py`` compares them; where the decision ids differ, whether the
  actions and scopes are still the same.

Every figure's ratio is to bytewax's 1 worker in the same run of the script. The machine
is shared: run it twice and compare the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from riskguard.connectors.broker import free_port
from riskguard.dataflows.backtest import OUTPUTS, backtest_flow
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import scenario_copies
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.flink.backtest import read_records
from riskguard.operators.signing import decode_command
from riskguard.schemas import encode

from riskguard.environment import FLINK_TRACE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START_NS = 1_795_500_000 * 10**9
SAMPLE_S = 0.2


# -- what each run writes: its outputs, and when the first and last of each came -------


def stamps_path(out: Path, name: str, worker: int) -> Path:
    """Where one worker writes when its output ``name`` first came, and how many came."""
    return out / f"{name}.w{worker}.json"


def outputs_path(out: Path, name: str, worker: int) -> Path:
    """Where one worker writes its output ``name`` (one encoded record a line)."""
    return out / f"{name}.w{worker}.jsonl"


def write_outputs(out: Path, name: str, worker: int, items: list[Any],
                  first: float | None) -> None:
    """One worker's output ``name``: its records and the wall time its first came."""
    outputs_path(out, name, worker).write_bytes(b"".join(encode(i) + b"\n" for i in items))
    stamps_path(out, name, worker).write_text(json.dumps({"first": first, "n": len(items)}))


class _StampPartition(StatelessSinkPartition[Any]):
    def __init__(self, out: Path, name: str, worker: int) -> None:
        self.out, self.name, self.worker = out, name, worker
        self.items: list[Any] = []
        self.first: float | None = None

    def write_batch(self, items: list[Any]) -> None:
        if self.first is None:
            self.first = time.time()
        self.items.extend(items)

    def close(self) -> None:
        write_outputs(self.out, self.name, self.worker, self.items, self.first)


class StampSink(DynamicSink[Any]):
    """Keeps an output's records and the wall time the first came; each worker writes
    them to its own files in ``out`` when the flow ends."""

    def __init__(self, out: str | Path, name: str) -> None:
        self.out = Path(out)
        self.name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StampPartition:
        return _StampPartition(self.out, self.name, worker_index)


def bytewax_flow(config: str, records: str, out: str) -> Dataflow:
    """The backtest flow over ``records`` (JSONL), its outputs into :class:`StampSink`\\ s:
    what ``python -m bytewax.run`` runs, in every process."""
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    sinks: dict[str, DynamicSink[Any]] = {name: StampSink(out, name) for name in OUTPUTS}
    return backtest_flow(cfg, digest, signer=signer, trust=trust,
                         records=read_records(records), sinks=sinks)


def flink_child(config: str, records: str, parallelism: int, out: str) -> None:
    """The Flink job of :func:`riskguard.flink.backtest.run` (:func:`riskguard.flink.backtest.job`),
    noting when the client receives each output's first record. Runs in the Flink
    environment, with its Python workers in processes of their own."""
    from pyflink.datastream import StreamExecutionEnvironment
    from riskguard.flink.backtest import collect, job, local_slots
    from riskguard.flink.fused import quick_jvm
    from riskguard.schemas import Codec

    quick_jvm()
    env = StreamExecutionEnvironment.get_execution_environment(
        local_slots(parallelism, min(parallelism, 2)))
    env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    codec = Codec(clock=lambda: 0)
    found: dict[str, list[Any]] = {name: [] for name in OUTPUTS}
    firsts: dict[str, float] = {}
    # at parallelism 2 the flow runs as its two segments, each in a Python worker
    for name, text in collect(job(env, config, records, parallelism=parallelism,
                                  segments=min(parallelism, 2))):
        if name in found:
            firsts.setdefault(name, time.time())
            found[name].append(codec.decode(name, text.encode()))
    for name in OUTPUTS:
        write_outputs(Path(out), name, 0, found[name], firsts.get(name))


# -- reading a run back ------------------------------------------------------------------


def first_output(stamps: Iterable[dict[str, Any]]) -> float | None:
    """The earliest time any of ``stamps`` (each a worker's output's first time and
    count) saw an output; None if none saw one.

    >>> first_output([{"first": 5.0, "n": 3}, {"first": None, "n": 0},
    ...               {"first": 4.5, "n": 1}])
    4.5
    >>> first_output([]) is None
    True
    """
    firsts = [s["first"] for s in stamps if s["first"] is not None]
    return min(firsts) if firsts else None


def fit(n_short: int, t_short: float, n_long: int, t_long: float,
        ) -> tuple[float, float] | None:
    """The events/s and the fixed seconds of the line through two runs' (records, wall
    seconds); None when the larger run was not the longer.

    >>> fit(26_918, 40.0, 53_836, 69.0)  # a Flink run over 1 copy, then over 2
    (928.2068965517242, 11.0)
    >>> fit(26_918, 2.0, 53_836, 1.9) is None
    True
    """
    if n_long <= n_short or t_long <= t_short:
        return None
    rate = (n_long - n_short) / (t_long - t_short)
    return rate, t_short - n_short / rate


def command_identity(cmd: Any) -> tuple[Any, ...]:
    """What a command decides: its decision id, action, scope and params."""
    return (cmd.decision_id, cmd.action.value, cmd.scope, sorted(cmd.params.items()))


def signal_identity(sig: Any) -> tuple[Any, ...]:
    """What a signal says happened: its id, type, kind, scope or key, time and severity
    (not which of two same-time records it quotes)."""
    return (sig.id, type(sig).__name__, sig.kind, getattr(sig, "scope", None),
            getattr(sig, "key", None), sig.ts, sig.severity)


@dataclass
class Outputs:
    """A run's outputs as compared between engines: its commands (each as its
    :func:`command_identity`, and as its action and scope alone), its signals, and how
    many audit records and dead letters it wrote."""

    commands: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    audit: int = 0
    dead_letters: int = 0

    def summary(self) -> str:
        """
        >>> Outputs(["a", "b"], ["x", "y"], ["s"], 7, 0).summary()
        '2 commands, 1 signals, 7 audit records, 0 dead letters'
        """
        return (f"{len(self.commands)} commands, {len(self.signals)} signals, "
                f"{self.audit} audit records, {self.dead_letters} dead letters")


def _missing_extra(want: list[str], got: list[str]) -> tuple[int, int]:
    w, g = Counter(want), Counter(got)
    return sum((w - g).values()), sum((g - w).values())


def compare(want: Outputs, got: Outputs) -> str:
    """``got`` against ``want``: "same" or what differs.

    >>> base = Outputs(["a", "b"], ["x", "y"], ["s"], 7, 0)
    >>> compare(base, Outputs(["b", "a"], ["y", "x"], ["s"], 7, 0))
    'same'
    >>> compare(base, Outputs(["a", "c"], ["x", "y"], ["s"], 7, 0))
    'DIFFERENT: 1 of 2 commands with another decision id (the same actions on the same scopes)'
    >>> print(compare(base, Outputs(["a"], ["x"], ["s", "t"], 9, 2)).replace("; ", "\\n"))
    DIFFERENT: 1 commands against 2 (1 missing, 0 extra)
    2 signals against 1 (0 missing, 1 extra)
    9 audit records against 7
    2 dead letters against 0
    """
    diffs = []
    missing, extra = _missing_extra(want.commands, got.commands)
    if missing or extra:
        if _missing_extra(want.actions, got.actions) == (0, 0):
            diffs.append(f"{extra} of {len(got.commands)} commands with another decision id "
                         "(the same actions on the same scopes)")
        else:
            diffs.append(f"{len(got.commands)} commands against {len(want.commands)} "
                         f"({missing} missing, {extra} extra)")
    missing, extra = _missing_extra(want.signals, got.signals)
    if missing or extra:
        diffs.append(f"{len(got.signals)} signals against {len(want.signals)} "
                     f"({missing} missing, {extra} extra)")
    if got.audit != want.audit:
        diffs.append(f"{got.audit} audit records against {want.audit}")
    if got.dead_letters != want.dead_letters:
        diffs.append(f"{got.dead_letters} dead letters against {want.dead_letters}")
    return "same" if not diffs else "DIFFERENT: " + "; ".join(diffs)


def read_outputs(out: Path) -> Outputs:
    """Every worker's outputs in ``out``, decoded and reduced to what is compared."""

    def records(name: str) -> list[Any]:
        return [r for p in sorted(out.glob(f"{name}.w*.jsonl")) for r in read_records(p)]

    commands = [decode_command(e) for e in records("commands")]
    return Outputs(
        commands=[repr(command_identity(c)) for c in commands],
        actions=[repr(command_identity(c)[1:3]) for c in commands],
        signals=[repr(signal_identity(s)) for s in records("signals")],
        audit=len(records("audit")), dead_letters=len(records("dead_letters")))


def read_first(out: Path) -> float | None:
    """When the run in ``out`` gave its first output."""
    return first_output([json.loads(p.read_text()) for p in sorted(out.glob("*.w*.json"))])


# -- the process tree and its memory -------------------------------------------------------


def stat_fields(stat: str) -> tuple[int, int]:
    """The parent pid and the CPU clock ticks used (user + system) in a
    ``/proc/<pid>/stat`` line (the command name may hold spaces and parentheses; the
    fields after its last ``)`` do not).

    >>> stat_fields("4242 (python -m (x) y) S 17 4242 4242 0 -1 0 0 0 0 0 250 30 0 0")
    (17, 280)
    """
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(parents: dict[int, int], roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them, given each pid's parent.

    >>> sorted(descendants({2: 1, 3: 2, 4: 3, 5: 1, 9: 8}, [2]))
    [2, 3, 4]
    """
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return found


def status_kib(status: str, key: str = "VmRSS") -> int:
    """A ``/proc/<pid>/status`` field in KiB (0 if absent, as for a zombie).

    >>> status_kib("Name:\\tjava\\nVmHWM:\\t  812345 kB\\nVmRSS:\\t  790000 kB\\n")
    790000
    >>> status_kib("Name:\\tx\\n")
    0
    """
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the process ended meanwhile
        return ""


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def sample_tree(roots: Iterable[int]) -> tuple[int, dict[int, float]]:
    """The summed resident memory (KiB) of ``roots`` and all their descendants now, and
    the CPU seconds each of them has used."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read(f"/proc/{entry}/stat")):
            stats[int(entry)] = stat_fields(stat)
    tree = descendants({pid: ppid for pid, (ppid, _cpu) in stats.items()}, roots)
    rss = sum(status_kib(_read(f"/proc/{pid}/status")) for pid in tree)
    return rss, {pid: stats[pid][1] * TICK_S for pid in tree if pid in stats}


def process_kind(cmdline: str) -> str:
    """Which part of a run a process is, by its command line: Flink's ``JVM``, a
    ``Python worker`` of Flink's, or the ``client`` (the process the bench started).

    >>> process_kind("java -XX:TieredStopAtLevel=1 -cp ...")
    'JVM'
    >>> process_kind("python -m pyflink.fn_execution.beam.beam_boot ...")
    'Python worker'
    >>> process_kind("python engines.py --flink-child ...")
    'client'
    """
    if cmdline.split(" ", 1)[0].endswith("java"):
        return "JVM"
    if "pyflink.fn_execution" in cmdline:
        return "Python worker"
    return "client"


class TreeSampler(threading.Thread):
    """Samples the process trees of the pids :meth:`watch` adds until :meth:`stop`: the
    largest summed memory seen (:attr:`peak_kib`), and the CPU seconds of every process
    seen, each at its last sample (:attr:`cpu_s`; a process that ends between two
    samples loses at most the last 0.2 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roots: list[int] = []
        self.peak_kib = 0
        self._cpu: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._done = threading.Event()

    def watch(self, pid: int) -> None:
        self.roots.append(pid)

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    @property
    def cpu_by_kind(self) -> dict[str, float]:
        """The CPU seconds of each kind of process (:func:`process_kind`)."""
        out: dict[str, float] = {}
        for pid, cpu in self._cpu.items():
            kind = self._kind.get(pid, "client")
            out[kind] = out.get(kind, 0.0) + cpu
        return out

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            rss, cpu = sample_tree(list(self.roots))
            self.peak_kib = max(self.peak_kib, rss)
            self._cpu.update(cpu)
            for pid in cpu.keys() - self._kind.keys():
                self._kind[pid] = process_kind(
                    _read(f"/proc/{pid}/cmdline").replace("\0", " "))

    def stop(self) -> None:
        self._done.set()
        self.join()


def listening(port: int, proc_net_tcp: str) -> bool:
    """Whether ``/proc/net/tcp`` shows a socket listening on ``port`` (without connecting:
    timely would take a probe connection for a peer).

    >>> table = ("  sl  local_address rem_address   st\\n"
    ...          "   0: 0100007F:1F90 00000000:0000 0A\\n")
    >>> listening(8080, table), listening(8081, table)
    (True, False)
    """
    want = f":{port:04X}"
    rows = [ln.split() for ln in proc_net_tcp.splitlines()[1:]]
    return any(len(r) > 3 and r[1].endswith(want) and r[3] == "0A" for r in rows)


# -- running ---------------------------------------------------------------------------


@dataclass
class Run:
    """One engine's run over one input."""

    label: str
    events: int
    started: float
    wall_s: float
    peak_kib: int
    cpu_s: float
    first: float | None
    outputs: Outputs
    processing_first_s: float | None = None
    cpu_by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def first_output_s(self) -> float | None:
        return None if self.first is None else self.first - self.started


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``argv`` in a session of its own, so that a run that hangs is stopped with all the
    processes it started (Flink's JVM and Python workers)."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def _finish(ps: list[subprocess.Popen[bytes]], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in ps:
        try:
            p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in ps:
                os.killpg(q.pid, signal.SIGKILL)
            raise SystemExit(f"a run took over {timeout_s:.0f} s; its log: {log}") from None
    bad = [p.returncode for p in ps if p.returncode != 0]
    if bad:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"a run failed (exit {bad}); the end of {log}:\n{tail}")


def _await_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if listening(port, _read("/proc/net/tcp")):
            return
        time.sleep(0.01)
    raise SystemExit(f"bytewax process 0 did not listen on port {port} in {timeout_s:.0f} s")


LAYOUTS = {"1 worker": 1, "2 workers": 2, "2 processes": 2}
"""The bytewax layouts and their worker counts: one worker; two in one process (``-w 2``);
one in each of two processes (``-i``/``-a``)."""


def run_bytewax(config: Path, records: Path, events: int, layout: str, out: Path,
                timeout_s: float = 900.0) -> Run:
    """The flow under ``python -m bytewax.run`` in one of the :data:`LAYOUTS`."""
    out.mkdir(parents=True)
    log = out / "run.log"
    spec = f"engines:bytewax_flow({str(config)!r}, {str(records)!r}, {str(out)!r})"
    argv = [sys.executable, "-m", "bytewax.run", spec]
    memory = TreeSampler()
    memory.start()
    started = time.time()
    if layout != "2 processes":
        ps = [_spawn([*argv, "-w", str(LAYOUTS[layout])], log, cwd=HERE)]
        memory.watch(ps[0].pid)
    else:
        ports = [free_port(), free_port()]
        addrs = ";".join(f"127.0.0.1:{port}" for port in ports)
        # process 1 starts once process 0 listens: one that connects too early waits
        # out timely's 1 s retry, which would count as start-up in some runs only
        ps = [_spawn([*argv, "-i", "0", "-a", addrs], log, cwd=HERE)]
        memory.watch(ps[0].pid)
        _await_listening(ports[0], ps[0])
        ps.append(_spawn([*argv, "-i", "1", "-a", addrs], log, cwd=HERE))
        memory.watch(ps[1].pid)
    try:
        _finish(ps, log, timeout_s)
    finally:
        memory.stop()
    wall = time.time() - started
    return Run(f"bytewax, {layout}", events, started, wall, memory.peak_kib, memory.cpu_s,
               read_first(out), read_outputs(out))


def flink_python(out: Path, named: str | None) -> tuple[list[str], dict[str, str]]:
    """The interpreter (and environment) Flink jobs run in: ``named``, or the one
    ``tests/flink_env.py`` builds and caches."""
    if named:
        return [named], dict(os.environ)
    spec = importlib.util.spec_from_file_location("flink_env", ROOT / "tests" / "flink_env.py")
    if spec is None or spec.loader is None:
        raise SystemExit("cannot load tests/flink_env.py")
    flink_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flink_env)
    if reason := flink_env.java_missing():
        raise SystemExit(reason)
    cmd, env = flink_env.flink_command(out)
    return list(cmd), dict(env)


PROCESS_MODE = "_python_worker_execution_mode"
"""PyFlink's switch between loopback (the client's interpreter) and process mode."""


def moments(trace: Path, started: float) -> dict[str, float]:
    """Seconds from ``started`` to the first time each once-only moment was traced (over
    every process that wrote the trace).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "trace.txt"
    >>> _ = p.write_text("client 103.8 5\\nopen 114.4 7\\nlate_rows 116.0 7 1\\nopen 114.0 8\\n")
    >>> moments(p, 100.0)
    {'client': 3.8, 'open': 14.0}
    """
    if not trace.exists():
        return {}
    seen: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        what, at, _pid, *count = line.split()
        if not count:
            seen[what] = min(seen.get(what, float(at)), float(at))
    return {what: round(at - started, 3) for what, at in seen.items()}


def late_rows(trace: Path) -> int | None:
    """How many rows came behind the watermark, over every segment operator (each
    writes its running count, ``late_rows TIME PID COUNT``); None without a trace.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "trace.txt"
    >>> lines = ["open 1.0 7", "late_rows 2.0 7 1", "late_rows 2.1 7 2", "late_rows 3.0 8 1"]
    >>> _ = p.write_text("\\n".join(lines))
    >>> late_rows(p)
    3
    """
    if not trace.exists():
        return None
    counts: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        what, _at, pid, *count = line.split()
        if what == "late_rows":
            counts[pid] = max(counts.get(pid, 0), int(count[0]))
    return sum(counts.values())


def processing_first(trace: Path) -> float | None:
    """Seconds from the first record any segment operator took to the first it gave, from
    their trace lines; None without both.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "trace.txt"
    >>> _ = p.write_text("first_input 100.0 7\\nfirst_output 103.5 7\\nfirst_input 99.0 8\\n")
    >>> processing_first(p)
    4.5
    """
    seen = moments(trace, 0.0)
    if "first_input" not in seen or "first_output" not in seen:
        return None
    return seen["first_output"] - seen["first_input"]


def run_flink(config: Path, records: Path, events: int, parallelism: int, out: Path,
              python: tuple[list[str], dict[str, str]], timeout_s: float = 1800.0) -> Run:
    """The Flink job at ``parallelism`` on a local mini-cluster, in its own process."""
    out.mkdir(parents=True)
    log = out / "run.log"
    cmd, env = python
    # PyFlink runs a local job's Python functions in the client process (loopback) unless
    # told otherwise: each worker in a process of its own, as on a cluster
    env = {**env, PROCESS_MODE: "process", FLINK_TRACE: str(out / "trace.txt")}
    argv = [*cmd, str(HERE / "engines.py"), "--flink-child", str(config), str(records),
            str(parallelism), str(out)]
    memory = TreeSampler()
    memory.start()
    started = time.time()
    p = _spawn(argv, log, env=env, cwd=out)
    memory.watch(p.pid)
    try:
        _finish([p], log, timeout_s)
    finally:
        memory.stop()
    wall = time.time() - started
    return Run(f"Flink, parallelism {parallelism}", events, started, wall, memory.peak_kib,
               memory.cpu_s, read_first(out), read_outputs(out),
               processing_first(out / "trace.txt"), memory.cpu_by_kind)


def write_input(path: Path, copies: float) -> int:
    """``copies`` back-to-back copies of the demo scenario as JSONL (a fraction: that
    share of the first copy); how many records."""
    records = scenario_copies(max(1, int(copies)), START_NS)
    if copies < 1:
        records = records[:int(len(records) * copies)]
    with path.open("wb") as fh:
        for i in range(0, len(records), 10_000):
            fh.write(b"".join(encode(r) + b"\n" for r in records[i:i + 10_000]))
    return len(records)


# -- printing -------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> str:
    """``value`` as a multiple of ``base``.

    >>> ratio(1_076.7, 53_836.0), ratio(2.0, 2.0), ratio(None, 3.0)
    ('0.020x', '1.00x', '-')
    """
    if value is None or not base:
        return "-"
    r = value / base
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x"


def _figure(value: float | None, base: float | None, fmt: str) -> str:
    return "- | -" if value is None else f"{value:{fmt}} | {ratio(value, base)}"


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


@dataclass
class Engine:
    """One engine and layout: its runs over a tenth of a copy (``short``), over the
    ``--copies`` input (``shared``) and over ``--bytewax-copies`` (``long``), those it ran."""

    label: str
    short: Run | None = None
    shared: Run | None = None
    long: Run | None = None

    def line(self, cpu: bool = False) -> tuple[float, float] | None:
        """(events/s, fixed s) through its short run and its longest, by wall time or
        (``cpu``) by the CPU seconds of their process trees."""
        longest = self.long or self.shared
        if self.short is None or longest is None:
            return None
        if cpu:
            return fit(self.short.events, self.short.cpu_s, longest.events, longest.cpu_s)
        return fit(self.short.events, self.short.wall_s, longest.events, longest.wall_s)

    def cpu_us(self) -> float | None:
        """CPU microseconds an added event costs (all the run's processes together)."""
        line = self.line(cpu=True)
        return None if line is None else 1e6 / line[0]


def report(engines: list[Engine]) -> None:
    """The table of figures, each with its ratio to the first engine (bytewax, 1 worker),
    then each run's own figures and outputs."""
    base = engines[0]
    assert base.shared is not None
    want = base.shared.outputs
    base_rate, base_fixed = base.line() or (None, None)
    print()
    print("| engine | events/s | ratio | CPU µs an event | ratio | start-up s | ratio "
          "| first output s | ratio | from processing start s | peak memory MiB | ratio "
          "| outputs against bytewax, 1 worker |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for eng in engines:
        run = eng.shared
        assert run is not None
        rate, fixed = eng.line() or (None, None)
        check = "-" if eng is base else compare(want, run.outputs)
        print(f"| {eng.label} | {_figure(rate, base_rate, ',.0f')} "
              f"| {_figure(eng.cpu_us(), base.cpu_us(), ',.0f')} "
              f"| {_figure(fixed, base_fixed, '.1f')} "
              f"| {_figure(run.first_output_s, base.shared.first_output_s, '.1f')} "
              f"| {'-' if run.processing_first_s is None else f'{run.processing_first_s:.1f}'} "
              f"| {_figure(run.peak_kib / 1024, base.shared.peak_kib / 1024, ',.0f')} "
              f"| {check} |")
    print(f"\noutputs of bytewax, 1 worker over {base.shared.events:,} records: "
          f"{want.summary()}")
    print("each run: records; wall s; CPU s; first output s; peak memory MiB; outputs")
    for eng in engines:
        for run in (eng.short, eng.shared, eng.long):
            if run is not None:
                first = "-" if run.first_output_s is None else f"{run.first_output_s:.1f}"
                print(f"  {run.label}: {run.events:,}; {run.wall_s:.1f}; {run.cpu_s:.1f}; {first}; "
                      f"{run.peak_kib / 1024:,.0f}; {run.outputs.summary()}")
    for eng in engines:
        if eng.short is not None and eng.shared is not None and eng.shared.cpu_by_kind:
            added = eng.shared.events - eng.short.events
            short, shared = eng.short.cpu_by_kind, eng.shared.cpu_by_kind
            parts = [f"{kind} {(shared.get(kind, 0.0) - short.get(kind, 0.0)) / added * 1e6:,.0f}"
                     for kind in ("client", "JVM", "Python worker")]
            fixed = sum(eng.short.cpu_by_kind.values()) - (
                eng.short.events * (eng.cpu_us() or 0.0) / 1e6)
            print(f"{eng.label}: CPU µs an added event by process: {', '.join(parts)}; "
                  f"fixed CPU s of a run {fixed:.1f}")
    for eng in engines[1:]:
        if eng.long is not None and base.long is not None:
            print(f"outputs over {base.long.events:,} records, {eng.label} against "
                  f"{base.label}: {compare(base.long.outputs, eng.long.outputs)}")


def _say(what: str) -> None:
    print(f"{what} ({_load()}) ...", flush=True)


SHORT = 0.1
"""The short run's input: this share of one copy."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--flink-child"]:
        config, records, parallelism, out = args[1:5]
        flink_child(config, records, int(parallelism), out)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=2,
                    help="demo scenario copies every engine runs over (default 2)")
    ap.add_argument("--bytewax-copies", type=int, default=40,
                    help="copies for bytewax's events/s (default 40)")
    ap.add_argument("--flink-python", help="a Python with apache-flink and riskguard "
                    "(default: the venv tests/flink_env.py builds)")
    ap.add_argument("--skip-flink", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    opts = ap.parse_args(args)
    if not 1 <= opts.copies < opts.bytewax_copies:
        ap.error("need 1 <= --copies < --bytewax-copies")

    work = Path(tempfile.mkdtemp(prefix="rg-bench-engines-"))
    config = write_config(work, "127.0.0.1:9", init_keys(work), "bench")
    sizes = {c: write_input(work / f"records-{c}.jsonl", c)
             for c in (SHORT, opts.copies, opts.bytewax_copies)}
    print(f"riskguard engines bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores: the backtest flow over {SHORT}, {opts.copies} and "
          f"(bytewax) {opts.bytewax_copies} demo copies "
          f"({', '.join(f'{n:,}' for n in sizes.values())} records)")
    flink = None if opts.skip_flink else flink_python(work, opts.flink_python)

    def bytewax(layout: str, copies: float) -> Run:
        _say(f"bytewax, {layout}, {copies} copies")
        return run_bytewax(config, work / f"records-{copies}.jsonl", sizes[copies], layout,
                           work / f"bytewax-{layout.replace(' ', '-')}-{copies}")

    def on_flink(par: int, copies: float) -> Run:
        assert flink is not None
        _say(f"Flink, parallelism {par}, {copies} copies")
        return run_flink(config, work / f"records-{copies}.jsonl", sizes[copies], par,
                         work / f"flink-p{par}-{copies}", flink)

    engines = [Engine(f"bytewax, {layout}") for layout in LAYOUTS]
    try:
        for eng, layout in zip(engines, LAYOUTS, strict=True):
            if layout != "2 processes":
                eng.short = bytewax(layout, SHORT)
            eng.shared = bytewax(layout, opts.copies)
        for par in () if flink is None else (1, 2):
            eng = Engine(f"Flink, parallelism {par}")
            eng.short = on_flink(par, SHORT)
            eng.shared = on_flink(par, opts.copies)
            engines.append(eng)
        for eng, layout in zip(engines[:2], LAYOUTS, strict=False):
            eng.long = bytewax(layout, opts.bytewax_copies)
        report(engines)
    finally:
        if opts.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
