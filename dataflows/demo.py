"""``riskguard demo``: the guard dataflow on the bundled scenario, end to end.

It starts the dev broker (unless one is given), makes topics, demo keys, a trust file
and a config in a work directory, publishes the scenario
(:mod:`riskguard.dataflows.demo_scenario`), runs the guard while the subscriber verifies
and prints what it issues, injects one forged command, and ends with ``riskguard audit
verify``. The work directory holds the demo's private keys: a temporary one is removed
at the end, also on Ctrl-C or an error, unless ``keep_dir``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Consumer, TopicPartition
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings, with_logger
from riskguard.connectors.subscriber import CommandSubscriber, GapAlert, Rejection, TrustBehind
from riskguard.connectors.topics import TopicsConfig, create_topics, topic_name, topic_specs
from riskguard.dataflows.demo_scenario import DURATION_S, build_scenario, scenario_copies
from riskguard.dataflows.signal_text import score_text
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    encode_envelope,
    generate_key_file,
    sign_envelope,
)
from riskguard.operators.signing.trust import (
    RootSet,
    TrustStore,
    sig_path,
    sign_trust_file,
)
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import (
    Action,
    AnomalySignal,
    Audience,
    Balance,
    Fill,
    LimitBreach,
    MitigationCommand,
    OpenOrders,
    PositionSnapshot,
    RiskAlert,
    Scope,
    ScopeKind,
    VenueStatus,
    decode,
    encode,
)

from riskguard.environment import CONFIG
from riskguard.toml_text import dump_toml

NS = 1_000_000_000
ISSUER = "riskguard-guard"
ENV = "demo"


def stream_of(rec: Any) -> str:
    """Which input topic a scenario record is published to."""
    if isinstance(rec, VenueStatus):
        return "venue_status"
    if isinstance(rec, Fill):
        return "fills"
    if isinstance(rec, PositionSnapshot):
        return "positions"
    if isinstance(rec, Balance | OpenOrders):
        return "balances"
    return "market"


@dataclass
class DemoKeys:
    signing_key: Path
    trust_file: Path
    roots_file: Path
    admin_key: Path


def init_keys(workdir: Path) -> DemoKeys:
    """Engine, limit-admin and root keys; a trust file signed by the root."""
    engine = generate_key_file(workdir / "engine.key")
    admin = generate_key_file(workdir / "limit-admin.key")
    root = generate_key_file(workdir / "root.key")
    keys = [
        {"name": ISSUER, "public_key": engine.public_key.raw.hex(), "role": "risk-engine",
         "actions": ["*"], "scopes": ["*"]},
        {"name": "limit-admin", "public_key": admin.public_key.raw.hex(), "role": "limit-admin",
         "actions": ["limit_update"], "scopes": ["*"]},
    ]
    trust = workdir / "trust.toml"
    trust.write_text(trust_doc_to_toml(keys, two_person={"actions": ["resume"],
                                                         "scopes": ["firm:*"]}))
    sign_trust_file(trust, Signer.from_file(workdir / "root.key"))
    roots = workdir / "roots.toml"
    roots.write_text(f'threshold = 1\n\n[[roots]]\npublic_key = "{root.public_key.raw.hex()}"\n')
    return DemoKeys(workdir / "engine.key", trust, roots, workdir / "limit-admin.key")


def replica_configs(config: Path, keys: DemoKeys, ids: tuple[str, ...] = ("a", "b"),
                    ) -> list[Path]:
    """Configs of redundant replicas of the demo guard at ``config`` (docs/replicas.md):
    the first signs with the demo engine key, each other with its own ``engine-<id>``
    key, added to the trust file (re-signed at the next serial)."""
    work = config.parent
    entries: list[dict[str, object]] = []
    peers = ", ".join(f'"{i}"' for i in ids)
    text = config.read_text()
    paths = []
    for n, rid in enumerate(ids):
        body = text
        if n:
            key = generate_key_file(work / f"engine-{rid}.key")
            entries.append({"name": f"engine-{rid}", "public_key": key.public_key.raw.hex(),
                            "role": "risk-engine", "actions": ["*"], "scopes": ["*"]})
            body = (body.replace(f'issuer = "{ISSUER}"', f'issuer = "engine-{rid}"', 1)
                    .replace(f'signing_key = "{keys.signing_key.name}"',
                             f'signing_key = "engine-{rid}.key"', 1))
        path = work / f"{config.stem}-{rid}.toml"
        path.write_text(body + f'\n[replica]\nid = "{rid}"\npeers = [{peers}]\n')
        paths.append(path)
    add_trusted_keys(keys, entries)
    return paths


def add_executor_key(keys: DemoKeys, name: str) -> Signer:
    """An executor's signing key (``executor-<name>.key`` beside the demo keys), trusted
    with role ``executor`` for every action and scope under the issuer ``name``; made
    once, then reused."""
    work = keys.trust_file.parent
    path = work / f"executor-{name}.key"
    if path.is_file():
        return Signer.from_file(path, issuer=name)
    key = generate_key_file(path)
    add_trusted_keys(keys, [{"name": name, "public_key": key.public_key.raw.hex(),
                             "role": "executor", "actions": ["*"], "scopes": ["*"]}])
    return Signer.from_file(path, issuer=name)


def add_trusted_keys(keys: DemoKeys, entries: list[dict[str, object]]) -> None:
    """Add ``entries`` to the demo trust file at its next serial, re-signed by the demo
    root key."""
    import tomllib  # noqa: PLC0415

    trust = tomllib.loads(keys.trust_file.read_text())
    keys.trust_file.write_text(trust_doc_to_toml(
        [*trust["keys"], *entries], serial=int(trust.get("serial", 1)) + 1,
        two_person=trust.get("two_person")))
    sig_path(keys.trust_file).unlink(missing_ok=True)
    sign_trust_file(keys.trust_file, Signer.from_file(keys.trust_file.parent / "root.key"))


def write_config(workdir: Path, bootstrap: str, keys: DemoKeys, env: str = ENV,
                 overrides: str = "") -> Path:
    """The demo guard config: the bundled template plus [kafka] and [keys].

    ``overrides`` is TOML text placed before the template's own tables
    (top-level keys only), e.g. ``'env = "t1"'`` is set via ``env``.
    """
    pkg = resources.files("riskguard.dataflows")
    (workdir / "playbook.toml").write_text(pkg.joinpath("playbook.toml").read_text())
    text = pkg.joinpath("demo.toml").read_text().replace(f'env = "{ENV}"', f'env = "{env}"', 1)
    text = overrides + "\n" + text if overrides else text
    text += (
        f'\n[kafka]\nbootstrap = "{bootstrap}"\n\n[keys]\nissuer = "{ISSUER}"\n'
        f'signing_key = "{keys.signing_key.name}"\ntrust_file = "{keys.trust_file.name}"\n'
        f'roots_file = "{keys.roots_file.name}"\n'
    )
    path = workdir / "guard.toml"
    path.write_text(text)
    return path


def publish_scenario(bootstrap: str, start_ns: int, env: str = ENV, *,
                     copies: int = 1, between_s: tuple[float, float] | None = None) -> int:
    """Produce the scenario to the input topics; returns the record count.

    ``copies`` > 1: that many back-to-back copies (:func:`scenario_copies`).
    ``between_s``: only the records from ``a`` to before ``b`` seconds of scenario time
    (a live run fed in two parts).
    """
    events = build_scenario(start_ns).events if copies == 1 else scenario_copies(
        copies, start_ns)
    if between_s is not None:
        lo, hi = (start_ns + int(t * NS) if math.isfinite(t) else None for t in between_s)
        at = [getattr(r, "ts", start_ns) for r in events]  # every scenario record has one
        events = [r for r, ts in zip(events, at, strict=True)
                  if (lo is None or ts >= lo) and (hi is None or ts < hi)]
    producer = CheckedProducer(KafkaSettings(bootstrap=bootstrap),
                               what="the demo scenario", linger_ms=20,
                               delivery_timeout_s=55, errors_only=True)
    for rec in events:
        key = f"{getattr(rec, 'venue', '')}/{getattr(rec, 'instrument', '')}".encode()
        producer.produce(topic_name(env, stream_of(rec)), encode(rec), key)
    producer.flush()
    return len(events)


@dataclass
class Tally:
    signals: Counter[str] = field(default_factory=Counter)
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    executed: list[MitigationCommand] = field(default_factory=list)


def _clock_s(ts: int, start_ns: int) -> str:
    return f"t+{(ts - start_ns) / NS:6.1f}s"


def describe_signal(rec: Any, start_ns: int) -> str | None:
    """One line for a signal worth showing (warm-up and utilization noise are skipped)."""
    if isinstance(rec, AnomalySignal):
        if rec.warming_up:
            return None
        top = ", ".join(f"{c.feature} z={c.zscore:+.1f}" for c in rec.top_features[:2])
        return (f"{_clock_s(rec.ts, start_ns)} SIGNAL  {rec.kind + '/' + rec.phase:<21} "
                f"{rec.scope.label():<34} {score_text(rec)}  [{top}]")
    if isinstance(rec, LimitBreach):
        return (f"{_clock_s(rec.ts, start_ns)} SIGNAL  {'breach/' + rec.level.value:<21} "
                f"{rec.limit_path:<34} util {rec.utilization:.0%} of "
                f"{rec.effective_limit:,.0f}")
    if isinstance(rec, RiskAlert):
        return (f"{_clock_s(rec.ts, start_ns)} SIGNAL  {rec.kind:<21} {rec.scope.label():<34} "
                f"{rec.reason}")
    return None


def run_demo(
    *,
    bootstrap: str | None = None,
    workdir: Path | None = None,
    out: TextIO = sys.stdout,
    timeout_s: float = 110.0,
    keep_dir: bool = False,
) -> tuple[int, Tally]:
    """Run the whole demo; returns (exit code, tally).

    A temporary work directory (no ``workdir``) is removed at the end, whatever
    happens, unless ``keep_dir``; ``workdir`` is always kept.
    """
    say = out.write
    broker = None
    temporary = workdir is None
    work = (Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="riskguard-demo-")))
    work = work.resolve()
    keep = keep_dir or not temporary
    done = False
    try:
        work.mkdir(parents=True, exist_ok=True)
        if bootstrap is None:
            broker = DevBroker(work / "broker")
            bootstrap = broker.start().bootstrap
            say(f"dev broker (in memory only) on {bootstrap}\n")
        say(f"work dir {work} ({'kept' if keep else 'removed at the end; --keep-dir keeps it'})"
            "\n")
        rc, tally = _run(bootstrap, work, say, timeout_s)
        done = True
        return rc, tally
    finally:
        if broker is not None:
            broker.stop()
            say("dev broker stopped\n")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
            say(f"work dir {work} removed\n")
        if done:
            _after(say, work, keep, bootstrap if broker is None else None)


def audit_verify_command(bootstrap: str, work: Path, env: str = ENV) -> list[str]:
    """The ``riskguard audit verify`` command line for the demo's audit topic."""
    return ["riskguard", "audit", "verify", "--topic", topic_name(env, "audit"),
            "--brokers", bootstrap, "--trust", str(work / "trust.toml"),
            "--roots", str(work / "roots.toml")]


def _after(say: Callable[[str], Any], work: Path, kept: bool, bootstrap: str | None) -> None:
    """What can still be done once the demo is over; every command printed runs as is."""
    if kept:
        say(f"\nwork dir kept: {work} (it holds the demo's private keys: delete it when "
            "done)\n")
    if bootstrap is None:
        say("\nthe dev broker is stopped, so the demo's topics are gone; to keep them (and "
            "the work dir), run the demo on a broker that stays up:\n"
            '  riskguard demo --bootstrap "$(riskguard broker start)" --keep-dir\n')
    elif kept:
        say("verify the audit log again with:\n"
            f"  {shlex.join(audit_verify_command(bootstrap, work))}\n")


@dataclass(frozen=True)
class PreparedRun:
    """Everything a guard run over the bundled scenario needs."""

    bootstrap: str
    env: str
    workdir: Path
    config: Path
    keys: DemoKeys
    start_ns: int
    records: int

    def topic(self, stream: str) -> str:
        return topic_name(self.env, stream)


def prepare_run(bootstrap: str, workdir: Path, *, env: str = ENV, partitions: int = 2,
                overrides: str = "", copies: int = 1,
                publish_until_s: float = math.inf) -> PreparedRun:
    """Create topics, keys, trust file and config; publish the scenario (``copies``
    back-to-back copies of it), up to ``publish_until_s`` seconds of it (the rest:
    :func:`publish_scenario` with ``between_s``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    create_topics(KafkaSettings(bootstrap=bootstrap).client_config(),
                  topic_specs(env, TopicsConfig(default_partitions=partitions)))
    keys = init_keys(workdir)
    config = write_config(workdir, bootstrap, keys, env, overrides)
    # on a whole minute: bars, ticks and move bands then cut every prepared run alike
    start_ns = (time.time_ns() // NS - copies * DURATION_S - 5) // 60 * 60 * NS
    n = publish_scenario(bootstrap, start_ns, env, copies=copies,
                         between_s=None if math.isinf(publish_until_s)
                         else (0.0, publish_until_s))
    return PreparedRun(bootstrap, env, workdir, config, keys, start_ns, n)


def start_guard(run: PreparedRun, *bytewax_args: str,
                config: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the guard dataflow as ``python -m bytewax.run`` with extra arguments (and
    another ``config`` than the run's, e.g. a market process's: :func:`tier_config`)."""
    env = {**os.environ, CONFIG: str(Path(config or run.config).resolve())}
    # in the work dir: bytewax.run puts its current folder first on sys.path, where a
    # clone named riskguard would hide the package
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard", *bytewax_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=run.workdir.resolve(),
    )


def tier_config(config: Path, role: str, **tier: Any) -> Path:
    """A copy of guard config ``config`` with ``tier.role = role`` (``market`` or
    ``firm``) and any other ``[tier]`` settings given (e.g. ``index``, ``owners``),
    beside it (a market process's named after its index)."""
    suffix = f"-{tier['index']}" if "index" in tier else ""
    path = config.with_name(f"guard-{role}{suffix}.toml")
    path.write_text(config.read_text() + dump_toml({"tier": {"role": role, **tier}}))
    return path


def subscriber_for(run: PreparedRun, state: Path, **callbacks: Any) -> CommandSubscriber:
    """A verifying subscriber on the run's commands topic."""
    trust = TrustStore.load(run.keys.trust_file, RootSet.load(run.keys.roots_file))
    topic = run.topic("commands")
    return CommandSubscriber(trust=trust, audience=Audience(env=run.env, topic=topic),
                             state_path=state, brokers=run.bootstrap, topic=topic, **callbacks)


class _Timeline:
    """Prints signals, commands and rejections in event-time order, round by round.

    A command is held until the signal it cites (by evidence hash) has been read, and
    shows at the earliest event time it can have been signed: its cause's, or the command
    before it's (commands are signed in ``seq`` order), whichever is later. One whose
    cause does not come prints without a time.
    """

    def __init__(self, say: Callable[[str], Any], start_ns: int, signals: _SignalTail) -> None:
        self.say = say
        self.start_ns = start_ns
        self.signals = signals
        self.pending: list[tuple[int, int, str]] = []
        self.waiting: list[tuple[MitigationCommand, int]] = []
        self.signed_by = 0  # the earliest time the last command shown was signed
        self.n = 0

    def add(self, ts: int, text: str) -> None:
        self.n += 1
        self.pending.append((ts, self.n, text))

    def command(self, cmd: MitigationCommand) -> None:
        self.waiting.append((cmd, 0))

    def flush(self, final: bool = False) -> None:
        for k, (cmd, rounds) in enumerate(self.waiting):
            when = self.signals.event_time.get(cmd.evidence_hash or "")
            if when is None and rounds < 5 and not final:  # it and every later one wait
                self.waiting = [(c, r + 1) for c, r in self.waiting[k:]]
                break
            extra = f" {dict(cmd.params)}" if cmd.params else ""
            if when is not None:
                when = self.signed_by = max(when, self.signed_by)
            stamp = _clock_s(when, self.start_ns) if when is not None else " " * 9
            self.add(when if when is not None else self.signed_by,  # in seq order either way
                     f"{stamp} COMMAND {cmd.action.value:<21} {cmd.scope.label():<34} "
                     f"seq {cmd.seq:<3} verified{extra}\n          reason: {cmd.reason}")
        else:
            self.waiting = []
        for _ts, _n, text in sorted(self.pending):
            self.say(text + "\n")
        self.pending = []


def _run(bootstrap: str, work: Path, say: Callable[[str], Any],
         timeout_s: float) -> tuple[int, Tally]:
    run = prepare_run(bootstrap, work)
    start_ns = run.start_ns
    say(f"published {run.records:,} scenario records ({DURATION_S} s of market time, 3 venues)"
        "\n\n")
    guard = start_guard(run)
    tally = Tally()
    signals = _SignalTail(bootstrap, run.topic("signals"))
    timeline = _Timeline(say, start_ns, signals)

    def accepted(cmd: MitigationCommand) -> None:
        tally.executed.append(cmd)
        tally.commands[(cmd.action.value, cmd.scope.label())] += 1
        timeline.command(cmd)

    def rejected(rej: Rejection) -> None:
        tally.rejections[rej.reason] += 1
        timeline.add(2**62, f"          REJECTED {rej.reason}: {rej.detail}")

    def gap(alert: GapAlert | TrustBehind) -> None:
        timeline.add(2**62, f"          GAP ALERT {alert}")

    def read_signals(drain: bool = False) -> None:
        for rec in signals.poll(drain=drain):
            line = describe_signal(rec, start_ns)
            if line:
                tally.signals[type(rec).__name__] += 1
                timeline.add(rec.ts, line)

    sub = subscriber_for(run, work / "sub.sqlite", on_command=accepted, on_reject=rejected,
                         on_alert=gap)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            read_signals()
            sub.poll(idle_timeout_s=0.3)
            timeline.flush()
            if guard.poll() is not None:
                break
        if not _guard_finished(guard, say):
            return 1, tally
        read_signals(drain=True)
        sub.poll(idle_timeout_s=1.0)
        timeline.flush(final=True)
        say("\ninjecting a forged command (signed by a key the trust file does not list)\n")
        _inject_forged(bootstrap, run.topic("commands"))
        sub.poll(idle_timeout_s=1.5)
        timeline.flush(final=True)
    finally:
        sub.close()
        signals.close()
        if guard.poll() is None:  # Ctrl-C or an error: the guard must not outlive the demo
            guard.kill()
            guard.wait()
    _summary(tally, say)
    return _verify_audit(bootstrap, work, say), tally


def _guard_finished(guard: Any, say: Callable[[str], Any]) -> bool:
    """Whether the guard's dataflow ended well; else it is stopped and said why."""
    if guard.poll() is None:
        guard.kill()
        say("guard did not finish in time\n")
        return False
    if guard.returncode != 0:
        log = guard.stdout.read().decode(errors="replace") if guard.stdout else ""
        say(f"guard dataflow failed (exit {guard.returncode}):\n{log[-3000:]}\n")
        return False
    return True


def _verify_audit(bootstrap: str, work: Path, say: Callable[[str], Any]) -> int:
    """Verify the audit log as a user runs it: the command line it prints, in a process
    of its own (``-P``: a folder named riskguard where the demo runs does not hide the
    package, as it does not from the ``riskguard`` script); 0 if it verifies."""
    command = audit_verify_command(bootstrap, work)
    say(f"\nverifying the audit log: {shlex.join(command)}\n")
    verified = subprocess.run([sys.executable, "-P", "-m", "riskguard.cli", *command[1:]],
                              capture_output=True, text=True, check=False)
    say(verified.stdout + verified.stderr)
    return 0 if verified.returncode == 0 else 1


def _inject_forged(bootstrap: str, topic: str) -> None:
    forger = Signer.from_private_bytes(b"\x07" * 32, issuer=ISSUER)
    now = time.time_ns()
    cmd = MitigationCommand(
        command_id="forged-0001", issuer=ISSUER, seq=10_000, issued_at=now,
        expires_at=now + 60 * NS,
        audience=Audience(env=ENV, topic=topic), action=Action.HALT_TRADING,
        scope=Scope(kind=ScopeKind.FIRM, value="*"), reason="not from riskguard",
    )
    env = sign_envelope(PAYLOAD_COMMAND, encode(cmd), [forger])
    producer = CheckedProducer(KafkaSettings(bootstrap=bootstrap), what="the forged command",
                               delivery_timeout_s=5)
    producer.produce(topic, encode_envelope(env), ISSUER.encode())
    producer.flush()


def _summary(t: Tally, say: Callable[[str], Any]) -> None:
    say("\nSUMMARY\n")
    say(f"  signals shown: {sum(t.signals.values())}  ({dict(t.signals)})\n")
    say(f"  {'action':<20} {'scope':<36} {'count':>5}\n")
    for (action, scope), c in sorted(t.commands.items()):
        say(f"  {action:<20} {scope:<36} {c:>5}\n")
    say(f"  verified and executed: {len(t.executed)}   rejected: {sum(t.rejections.values())} "
        f"{dict(t.rejections)}\n")


class _SignalTail:
    """Reads the signals topic from the beginning (assign, no group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.c = Consumer(with_logger({"bootstrap.servers": bootstrap,
                                       "group.id": "riskguard-demo",
                                       "enable.auto.commit": False, "fetch.wait.max.ms": 20}))
        self.c.assign([TopicPartition(topic, p, 0) for p in range(2)])
        self.event_time: dict[str, int] = {}

    def poll(self, drain: bool = False) -> list[Any]:
        out = []
        idle = 0
        while True:
            msgs = self.c.consume(500, 0.1)
            for m in msgs:
                value = m.value()
                if m.error() is None and value is not None:
                    rec = decode("signals", value)
                    # Commands cite their signals by the sha256 of these exact bytes.
                    self.event_time[hashlib.sha256(value).hexdigest()] = getattr(rec, "ts", 0)
                    out.append(rec)
            if msgs:
                idle = 0
                continue
            idle += 1
            if not drain or idle >= 5:
                return out

    def close(self) -> None:
        self.c.close()
