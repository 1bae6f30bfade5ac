"""``riskguard run --config guard.toml``: run the guard dataflow in this process, with a
start line, status lines and a summary (docs/cli.md).

Config, keys and Kafka are checked before anything runs (exit 2 on a problem).
bytewax's own arguments go after ``--`` as for ``python -m bytewax.run``; the guard is a
one-worker dataflow (docs/scaling.md), so ``-w``, ``-i`` and ``-a`` are refused.
"""

from __future__ import annotations

import _thread
import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from riskguard.cli_args import seconds
from riskguard.config import no_rules_note
from riskguard.connectors.settings import debug_logging
from riskguard.connectors.topics import INPUT_STREAMS
from riskguard.environment import CONFIG, FLINK_PYTHON, METRICS_PORT, NEW_CONFIG
from riskguard.errors import AuditError, ConfigError, RiskguardError

# the topics the guard writes, in the start line's order
WRITES = ("signals", "exposures", "commands", "audit", "dead_letters")


@dataclass(frozen=True)
class Counts:
    """What the guard has done, from its Prometheus metrics."""

    events_in: float = 0.0
    dead_letters: float = 0.0
    signals: float = 0.0
    commands: float = 0.0
    lag: float | None = None

    def minus(self, base: Counts) -> Counts:
        """The counts since ``base`` (the lag is a level, not a count: kept as is)."""
        return Counts(self.events_in - base.events_in, self.dead_letters - base.dead_letters,
                      self.signals - base.signals, self.commands - base.commands, self.lag)


def read_counts(signals_topic: str, commands_topic: str) -> Counts:
    """This process's counts, read from prometheus-client's default registry."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    totals: dict[str, float] = {}
    lag: float | None = None
    for family in REGISTRY.collect():
        for s in family.samples:
            name = s.name
            if name == "riskguard_events_out_total":
                stream = s.labels.get("stream", "")
                name = {signals_topic: "signals", commands_topic: "commands"}.get(stream, "")
            elif name == "riskguard_kafka_consumer_lag":
                lag = (lag or 0.0) + s.value
                continue
            totals[name] = totals.get(name, 0.0) + s.value
    return Counts(totals.get("riskguard_events_in_total", 0.0),
                  totals.get("riskguard_dead_letters_total", 0.0),
                  totals.get("signals", 0.0), totals.get("commands", 0.0), lag)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def status_line(elapsed_s: float, now: Counts, before: Counts) -> str:
    """One status line: totals since the start, and events in since the last line.

    >>> status_line(20.0, Counts(1500, 2, 7, 3, 40), Counts(1000, 2, 5, 3, 10))
    'status  20 s  in 1,500 (+500)  dead letters 2  signals 7  commands 3  lag 40'
    """
    lag = "-" if now.lag is None else _n(now.lag)
    return (f"status  {elapsed_s:.0f} s  in {_n(now.events_in)} "
            f"(+{_n(now.events_in - before.events_in)})  dead letters {_n(now.dead_letters)}  "
            f"signals {_n(now.signals)}  commands {_n(now.commands)}  lag {lag}")


class StatusReporter:
    """Writes :func:`status_line` every ``every_s`` seconds from a daemon thread.

    ``read`` returns the process's counts; they are shown relative to what it
    returned at construction, so a second run in one process starts at 0.
    """

    def __init__(self, read: Callable[[], Counts], every_s: float, out: TextIO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.every_s = every_s
        self.out = out
        self.clock = clock
        self.base = read()
        self.started = clock()
        self.last = Counts()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def counts(self) -> Counts:
        return self.read().minus(self.base)

    def tick(self) -> None:
        now = self.counts()
        self.out.write(status_line(self.clock() - self.started, now, self.last) + "\n")
        self.out.flush()
        self.last = now

    def start(self) -> StatusReporter:
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="riskguard-status",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class BytewaxArgs:
    """What ``python -m bytewax.run`` would take for a one-worker dataflow, parsed the
    same way."""

    recovery_directory: Path | None = None
    snapshot_interval: timedelta | None = None
    backup_interval: timedelta | None = None


def parse_bytewax_args(argv: list[str], env: dict[str, str] | None = None) -> BytewaxArgs:
    """``-r/-s/-b`` as ``bytewax.run`` takes them (and its ``BYTEWAX_*`` recovery
    variables); ``ConfigError`` names anything else, more workers (``-w``, ``-i/-a``)
    included.

    >>> parse_bytewax_args(["--", "-r", "/", "-s", "5", "-b", "30"]).snapshot_interval
    datetime.timedelta(seconds=5)
    >>> try:
    ...     parse_bytewax_args(["--", "-w", "2"])
    ... except ConfigError as err:
    ...     print(err)
    bytewax arguments: -r DIR -s S -b S (after --; the guard runs one worker); got '-w 2'
    """
    env = dict(os.environ) if env is None else env
    argv = argv[1:] if argv[:1] == ["--"] else argv
    p = argparse.ArgumentParser(prog="riskguard run --", add_help=False, exit_on_error=False)
    p.add_argument("-r", "--recovery-directory", type=Path,
                   default=env.get("BYTEWAX_RECOVERY_DIRECTORY"))
    p.add_argument("-s", "--snapshot-interval", type=int,
                   default=env.get("BYTEWAX_SNAPSHOT_INTERVAL"))
    p.add_argument("-b", "--backup-interval", type=int,
                   default=env.get("BYTEWAX_RECOVERY_BACKUP_INTERVAL"))
    try:
        ns, rest = p.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigError("bytewax arguments", "-r DIR -s S -b S", str(err)) from None
    if rest:
        raise ConfigError("bytewax arguments", "-r DIR -s S -b S (after --; the guard runs "
                          "one worker)", " ".join(rest))
    rec = ns.recovery_directory
    if rec is not None and (ns.snapshot_interval is None or ns.backup_interval is None):
        raise ConfigError("-r", "-s SECONDS and -b SECONDS with a recovery directory", None)
    return BytewaxArgs(
        recovery_directory=Path(rec) if rec is not None else None,
        snapshot_interval=(timedelta(seconds=int(ns.snapshot_interval))
                           if ns.snapshot_interval is not None else None),
        backup_interval=(timedelta(seconds=int(ns.backup_interval))
                         if ns.backup_interval is not None else None),
    )


class Stopped(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so the run ends with its summary."""


@contextmanager
def stop_signals(received: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM interrupt the run, each noted in ``received``: an interrupt
    inside a C extension can come out as another exception (confluent-kafka turns one
    into a TypeError), and the run still ended because it was told to."""

    done = threading.Event()
    lock = threading.Lock()

    def nudge(signum: int) -> None:
        # librdkafka callbacks print and drop an interrupt: raise it again until the end
        while not done.wait(2.0):
            with lock:
                if not done.is_set():
                    _thread.interrupt_main(signal.Signals(signum))

    def stop(signum: int, _frame: Any) -> None:
        if done.is_set():
            return
        if not received:
            threading.Thread(target=nudge, args=(signum,), name="riskguard-stop",
                             daemon=True).start()
        received.append(signum)
        raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        with lock:
            done.set()
        time.sleep(0.05)  # a nudge already on its way lands here, and is ignored
        for sig, handler in before.items():
            signal.signal(sig, handler)


_PANIC = re.compile(r"^thread '.*' panicked at ")
_PANIC_MORE = re.compile(r"^(Box<dyn Any>|stack backtrace:|\s+\d+: |\s+at |note: |\s*$)")


def drop_panic_reports(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` without the reports Rust's panic hook writes (bytewax ends a run that way
    on Ctrl-C or a failed step; the CLI names the error in one line instead).

    >>> list(drop_panic_reports([b"a\\n", b"thread '<unnamed>' panicked at src/run.rs:1:2:\\n",
    ...     b"Box<dyn Any>\\n", b"stack backtrace:\\n", b"   0: std::x\\n", b"b\\n"]))
    [b'a\\n', b'b\\n']
    """
    skipping = False
    for line in lines:
        text = line.decode(errors="replace")
        if _PANIC.match(text):
            skipping = True
            continue
        if skipping and _PANIC_MORE.match(text):
            continue
        skipping = False
        yield line


@contextmanager
def without_panic_reports(enabled: bool) -> Iterator[None]:
    """Route file descriptor 2 through :func:`drop_panic_reports` while the dataflow runs
    (every other line goes through as it comes)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    target = os.fdopen(os.dup(saved), "wb", 0)  # here: saved may close before pump starts

    def pump() -> None:
        with os.fdopen(read_end, "rb") as src, target as dst:
            for line in drop_panic_reports(src):
                dst.write(line)

    thread = threading.Thread(target=pump, name="riskguard-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer goes: the pump reads to its end
        os.close(saved)
        thread.join(timeout=5)


def innermost(err: BaseException) -> BaseException:
    """The riskguard error behind what bytewax raised, else the deepest cause."""
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    ours = [e for e in seen if isinstance(e, RiskguardError)]
    return ours[-1] if ours else seen[-1]


def audit_origin(text: str) -> str:
    """``--audit-origin``: a name ``[audit] origin`` takes (at most 26 of A-Z a-z 0-9
    ``_.:+-``).

    >>> audit_origin("riskguard-20261127")
    'riskguard-20261127'
    >>> audit_origin("risk guard")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be 1 to 26 of A-Z a-z 0-9 _ . : + -; got 'risk guard'
    """
    from riskguard.operators.audit.chain import ORIGIN_BASE_PATTERN  # noqa: PLC0415

    if re.match(ORIGIN_BASE_PATTERN, text) is None:
        msg = f"must be 1 to 26 of A-Z a-z 0-9 _ . : + -; got {text[:80]!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def with_audit_origin(cfg: Any, origin: str) -> Any:
    """``cfg`` with its audit chains under ``origin`` (a replica's keep its ``@id``)."""
    import msgspec  # noqa: PLC0415

    replica = f"@{cfg.replica.id}" if cfg.replica.id else ""
    return msgspec.structs.replace(cfg, audit=msgspec.structs.replace(
        cfg.audit, origin=f"{origin}{replica}"))


def new_origin_note(config: Path, origin: str, today: str | None = None) -> str:
    """What to do when the last checkpoint of the guard's audit chain does not verify:
    the command that starts a new chain origin, the old one left for the auditors.

    >>> new_origin_note(Path("g.toml"), "riskguard@a", "20261127").split(": ")[1]
    'riskguard run --config g.toml --audit-origin riskguard-20261127 (or set [audit] origin)'
    """
    import datetime  # noqa: PLC0415

    day = today or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    # an earlier day's suffix replaced, and short enough for the day's to fit
    base = re.sub(r"-\d{8}$", "", origin.split("@", 1)[0])[:17]
    return ("its chain cannot be extended (a new checkpoint would vouch for it); start a new "
            f"audit origin, leaving this one for audit: riskguard run --config {config} "
            f"--audit-origin {base}-{day} (or set [audit] origin)")


def _start_line(cfg: Any, digest: str, config: Path, key_id: str | None, bw: BytewaxArgs,
                every_s: float) -> str:
    env = cfg.env
    topics = (f"reads {env}.riskguard.{{{','.join(INPUT_STREAMS)}}}.v1, writes "
              f"{env}.riskguard.{{{','.join(WRITES)}}}.v1" if cfg.tier.role == "whole" else
              f"tier {cfg.tier.role} on topics {env}.riskguard.*.v1")
    recovery = (f"recovery dir {bw.recovery_directory}" if bw.recovery_directory else
                "no recovery dir (state starts empty on restart)")
    status = f"status every {every_s:g} s" if every_s > 0 else "no status lines"
    signing = (f"signing key {key_id} (issuer {cfg.keys.issuer})" if key_id else
               "signs nothing")
    return (f"riskguard run: config {config} (sha256 {digest[:12]}), env {env}, Kafka "
            f"{cfg.kafka.bootstrap}, {topics}, {signing}, {recovery}, 1 worker(s), {status}")


class FirstLast:
    """When this process's first event came in and when the count last moved: polls
    ``read`` (the events-in count) every ``every_s`` from a daemon thread."""

    def __init__(self, read: Callable[[], float], every_s: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.read, self.every_s, self.clock = read, every_s, clock
        self.first: float | None = None
        self.last: float | None = None
        self._count = read()
        self._base = self._count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="riskguard-first-last",
                                        daemon=True)

    def poll(self) -> None:
        n = self.read()
        if n != self._count:
            now = self.clock()
            if self.first is None:
                self.first = now
            self.last = now
            self._count = n

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def start(self) -> FirstLast:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()


def timing(started: float, ended: float, first: float | None, last: float | None) -> str:
    """How a run's time went: start-up, events, then the quiet before it ended.

    >>> timing(0.0, 14.2, 10.0, 11.1)
    'start-up 10.0 s, events 1.1 s, then quiet 3.1 s'
    >>> timing(0.0, 9.0, None, None)
    'start-up 9.0 s, no event came in'
    """
    if first is None or last is None:
        return f"start-up {ended - started:.1f} s, no event came in"
    return (f"start-up {first - started:.1f} s, events {last - first:.1f} s, then quiet "
            f"{ended - last:.1f} s")


def _summary(c: Counts, elapsed_s: float, how: str, spent: str = "") -> str:
    spent = f" ({spent})" if spent else ""
    return (f"summary  {how} after {elapsed_s:.1f} s{spent}: {_n(c.events_in)} events in, "
            f"{_n(c.dead_letters)} dead letters, {_n(c.signals)} signals, "
            f"{_n(c.commands)} commands")


def _run(args: argparse.Namespace) -> int:
    from riskguard.cli import STARTED, reach_kafka  # noqa: PLC0415  (imports this module)
    from riskguard.dataflows.guard import apply_gc_policy  # noqa: PLC0415  (heavy imports)
    from riskguard.dataflows.guard.recovery_marks import claim_recovery  # noqa: PLC0415
    from riskguard.dataflows.readiness import (  # noqa: PLC0415
        DetectorWatch,
        readiness,
        summary_lines,
    )
    from riskguard.operators.core.metrics import (  # noqa: PLC0415
        events_in_total,
        start_metrics_server_from_env,
    )

    config = Path(args.config).resolve()
    flink = args.engine == "flink"
    bw = parse_bytewax_args([] if flink else list(args.bytewax))
    python = flink_python() if flink else None
    cfg, digest, signer, trust, notes = _load(config, args.audit_origin)
    if flink and cfg.tier.role != "whole":
        raise ConfigError("tier.role", "'whole' (the tiers run on bytewax)", cfg.tier.role)
    if bw.recovery_directory is not None:
        claim_recovery(bw.recovery_directory, cfg.replica.id,
                       None if trust is None else trust.serial)
    reach_kafka(cfg.kafka, f"[kafka] bootstrap in {config}")
    if python is not None:
        # the guard's metrics are the job's Python workers' to serve, on the port
        # $RISKGUARD_METRICS_PORT names (riskguard.flink.worker_metrics): not here, where
        # nothing is counted, and where the port would push the first worker off it
        return _run_on_flink(python, config, list(args.bytewax), cfg, digest, signer.key_id,
                             new_config=args.new_config)
    os.environ[CONFIG] = str(config)  # as python -m bytewax.run would see it
    if args.new_config:
        os.environ[NEW_CONFIG] = "1"
    start_metrics_server_from_env()
    watch = DetectorWatch(cfg.detector)
    flow = _build(config, cfg, digest, signer, trust, watch, notes)
    apply_gc_policy(cfg)
    out = sys.stdout
    reporter = StatusReporter(
        lambda: read_counts(cfg.topic("signals"), cfg.topic("commands")),
        args.status_every, out)
    first_last = FirstLast(events_in_total).start()  # polled every 0.1 s: one metric

    def started() -> None:
        _starting(out, _start_line(cfg, digest, config, signer and signer.key_id, bw,
                                   args.status_every), cfg, notes)
        reporter.start()

    try:  # from the start line on, however it ends, it ends with the summary
        how, rc = _serve(flow, bw, started)
    finally:
        reporter.stop()
        first_last.stop()
    _end(out, reporter.counts(), how, STARTED, first_last,
         summary_lines(readiness(watch, cfg)) if watch.keys else [])
    return rc


def _serve(flow: Any, bw: Any, started: Callable[[], Any]) -> tuple[str, int]:
    """Run ``flow`` on bytewax in this process (``started`` once the signals are set);
    how it ended, and the exit code."""
    from bytewax.recovery import RecoveryConfig  # noqa: PLC0415
    from bytewax.run import cli_main  # noqa: PLC0415  (what python -m bytewax.run calls)

    recovery = (RecoveryConfig(str(bw.recovery_directory), bw.backup_interval)
                if bw.recovery_directory else None)
    epoch = bw.snapshot_interval or (None if recovery else timedelta(seconds=10))
    debug = debug_logging()
    received: list[int] = []
    try:
        with stop_signals(received), without_panic_reports(not debug):
            started()
            cli_main(flow, workers_per_process=1, process_id=None, addresses=None,
                     epoch_interval=epoch, recovery_config=recovery)
    except KeyboardInterrupt as err:
        return ("stopped (SIGTERM)", 143) if isinstance(err, Stopped) else ("interrupted", 130)
    except Exception as err:
        return _stopped_by(err, received, debug=debug)
    return "ended", 0


def _end(out: TextIO, counts: Counts, how: str, started: float, first_last: FirstLast,
         detectors: list[str]) -> None:
    """The summary line (how the time went), then which detectors could fire."""
    ended = time.perf_counter()
    spent = timing(started, ended, first_last.first, first_last.last)
    out.write(_summary(counts, ended - started, how, spent) + "\n")
    if detectors:
        out.write("\n".join(detectors) + "\n")
    out.flush()


def _starting(out: TextIO, start_line: str, cfg: Any, notes: list[str]) -> None:
    """The start line, then what the start noted, one line each."""
    from riskguard.cli import one_line  # noqa: PLC0415  (imports this module)

    out.write(start_line + "\n")
    if not cfg.playbook.rules and cfg.tier.role in ("whole", "firm"):
        out.write(no_rules_note() + "\n")  # a market process plans nothing
    for note in notes:
        out.write(one_line(note) + "\n")
    out.flush()


def _load(config: Path, audit_origin: str | None = None
          ) -> tuple[Any, str, Any, Any, list[str]]:
    """The guard config, its hash, signing key, trust store and the notes of
    :func:`check_grants` (no key, trust store or notes for a market process); an error
    names what to fix in ``config``. ``audit_origin``:
    write the audit chains under this origin."""
    from riskguard.dataflows.guard import (  # noqa: PLC0415
        check_grants,
        load_guard_config,
        process_keys,
    )

    try:
        cfg, digest = load_guard_config(config)  # names the bad key
    except ConfigError as err:
        if err.file or config.is_file():  # a playbook file the config names: that file
            err.add_note(f"fix it in {err.file or config} (dataflows/guard.example.toml "
                         "describes every setting)")
        raise
    try:
        signer, trust = process_keys(cfg)
    except RiskguardError as err:
        err.add_note(f"check [keys] in {config} (relative paths are relative to the config "
                     "file's folder)")
        raise
    notes = check_grants(cfg, signer, trust, time.time_ns())  # before a record is read
    if audit_origin:
        cfg = with_audit_origin(cfg, audit_origin)
    return cfg, digest, signer, trust, notes


def _build(config: Path, cfg: Any, digest: str, signer: Any, trust: Any, watch: Any,
           notes: list[str]) -> Any:
    """The live dataflow; what starting it notes goes to ``notes``."""
    from riskguard.dataflows.guard import build_flow  # noqa: PLC0415

    try:
        return build_flow(cfg, digest, signer=signer, trust=trust, watch=watch,
                          on_note=notes.append)
    except AuditError as err:
        if "bad_checkpoint" in str(err):
            err.add_note(new_origin_note(config, cfg.audit.origin))
        raise


def _stopped_by(err: Exception, received: list[int], *, debug: bool) -> tuple[str, int]:
    """How the dataflow ended when it raised ``err`` (an interrupt bytewax wrapped, or an
    error, said on stderr), and the exit code."""
    from riskguard.cli import one_line  # noqa: PLC0415  (imports this module)

    cause = innermost(err)
    if isinstance(cause, KeyboardInterrupt) or received:
        sigterm = isinstance(cause, Stopped) or signal.SIGTERM in received
        return ("stopped (SIGTERM)", 143) if sigterm else ("interrupted", 130)
    if debug:
        import traceback  # noqa: PLC0415

        traceback.print_exception(err, file=sys.stderr)
    sys.stderr.write(one_line(f"riskguard run: the dataflow stopped: "
                              f"{type(cause).__name__}: {cause}") + "\n")
    return "stopped on an error", 1


def flink_python() -> str:
    """The interpreter that runs the Flink job: ``$RISKGUARD_FLINK_PYTHON``, or this one
    if it has PyFlink (``riskguard[flink]``, which needs a venv of its own)."""
    import importlib.util  # noqa: PLC0415

    named = os.environ.get(FLINK_PYTHON)
    if named:
        return named
    if importlib.util.find_spec("pyflink") is not None:
        return sys.executable
    raise ConfigError("--engine flink", "a Python with riskguard[flink] installed, named by "
                      "$RISKGUARD_FLINK_PYTHON (docs/engines.md, Set up Flink)",
                      f"no PyFlink in {sys.executable}")


def _run_on_flink(python: str, config: Path, job_args: list[str], cfg: Any, digest: str,
                  key_id: str, *, new_config: bool = False) -> int:
    """The guard as a Flink job (``python -m riskguard.flink.guard``) in a child process,
    with a start line, a summary and the same exit codes; no status lines (the counts are
    the job's Flink metrics). ``new_config`` (``--new-config``) reaches the job as
    ``$RISKGUARD_NEW_CONFIG``."""
    import subprocess  # noqa: PLC0415

    env = {**os.environ, **({NEW_CONFIG: "1"} if new_config else {})}

    out = sys.stdout
    job_args = job_args[1:] if job_args[:1] == ["--"] else job_args
    port = os.environ.get(METRICS_PORT)
    metrics_note = (f", riskguard metrics from each Python worker on port {port} (or the "
                    "next free)" if port else "")
    started = time.monotonic()
    how, rc = "ended", 0
    received: list[int] = []
    job: subprocess.Popen[bytes] | None = None
    try:
        with stop_signals(received):
            out.write(f"riskguard run: config {config} (sha256 {digest[:12]}), env {cfg.env}, "
                      f"Kafka {cfg.kafka.bootstrap}, on Flink ({python} -m "
                      f"riskguard.flink.guard {' '.join(job_args)}), signing key {key_id} "
                      f"(issuer {cfg.keys.issuer}); counts: the Flink job's metrics"
                      f"{metrics_note}\n")
            out.flush()
            job = subprocess.Popen([python, "-m", "riskguard.flink.guard", "--config",
                                    str(config), *job_args], env=env)
            if job.wait() != 0:
                how, rc = f"stopped on an error (the Flink job exited {job.returncode})", 1
    except KeyboardInterrupt as err:
        sigterm = isinstance(err, Stopped) or signal.SIGTERM in received
        how, rc = ("stopped (SIGTERM)", 143) if sigterm else ("interrupted", 130)
    finally:
        if job is not None and job.poll() is None:
            job.terminate()
            try:
                job.wait(30)
            except subprocess.TimeoutExpired:
                job.kill()
    out.write(f"summary  {how} after {time.monotonic() - started:.1f} s\n")
    out.flush()
    return rc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the guard dataflow from a TOML config",
        description="Run the guard dataflow in this process. Prints a start line, a status "
                    "line every --status-every seconds and a summary at the end. Exit codes: "
                    "0 ended, 1 stopped on an error, 2 could not start, 130 interrupted, "
                    "143 SIGTERM.",
    )
    p.add_argument("--config", required=True, help="guard TOML config")
    p.add_argument("--new-config", action="store_true",
                   help="start this replica on a config its peers do not run yet (the first "
                        "replica of a planned config change; docs/replicas.md)")
    p.add_argument("--audit-origin", metavar="NAME", type=audit_origin,
                   help="write the audit chains under this origin instead of [audit] "
                   "origin (start a new chain when the last one cannot be extended)")
    p.add_argument("--status-every", type=seconds(zero=True), default=10.0, metavar="SECONDS",
                   help="print a status line every SECONDS (default 10; 0: none)")
    p.add_argument("--engine", choices=("bytewax", "flink"), default="bytewax",
                   help="bytewax (default: in this process) or flink (the Flink job in a "
                        "child process, run by $RISKGUARD_FLINK_PYTHON; docs/engines.md)")
    p.add_argument("bytewax", nargs=argparse.REMAINDER,
                   help="engine arguments after --: bytewax.run's (e.g. -- -r "
                        "recovery/ -s 5 -b 30), or with --engine flink the job's (e.g. -- "
                        "--parallelism 2 --checkpoints file:///var/lib/riskguard/chk)")
    p.set_defaults(func=_run)
