"""Shared workload for the guard benchmarks (``guard_throughput.py``, ``guard_latency.py``).

- :func:`setup_env`: topics (``partitions`` per topic), demo keys, a root-signed
  trust file and a guard config derived from ``dataflows/demo.toml`` with
  bench overrides (``[input]`` values, ``playbook.max_commands``).
- :func:`publish`: produce records to the guard's input topics, keyed by
  ``venue/instrument`` as ``riskguard demo`` does.
- :func:`LiveLoad`: the same records re-stamped to the wall clock and produced
  at a steady rate, with fills from fresh (unconfigured) counterparties mixed
  in at a fixed rate; each of those makes one ``reduce_only`` command.
- :func:`start_guard`: the guard as ``python -m bytewax.run riskguard.dataflows.guard``.
- :func:`cpu_seconds`: a process's CPU so far (the dev broker's, from ``/proc``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import (
    INPUT_STREAMS,
    TopicsConfig,
    create_topics,
    topic_name,
    topic_specs,
)
from riskguard.dataflows.demo import DemoKeys, init_keys, stream_of, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.schemas import Fill, encode

from riskguard.config import CommonConfig

NS = 1_000_000_000


@dataclass(frozen=True)
class BenchEnv:
    """One guard environment: its topics (by ``env``), keys and config."""

    bootstrap: str
    env: str
    config: Path
    keys: DemoKeys
    partitions: int

    def topic(self, stream: str) -> str:
        return topic_name(self.env, stream)

    def input_topics(self) -> list[str]:
        return [self.topic(s) for s in INPUT_STREAMS]


def broker_unless(bootstrap: str | None, folder: Path) -> tuple[str, DevBroker | None,
                                                             int | None]:
    """``(bootstrap, broker, broker pid)``: the given cluster, else a dev broker started
    in ``folder`` (the caller stops it)."""
    if bootstrap is not None:
        return bootstrap, None, None
    broker = DevBroker(folder)
    info = broker.start()
    return info.bootstrap, broker, info.pid


def setup_env(
    bootstrap: str, workdir: Path, env: str, *, partitions: int = 4,
    idle_eof_s: float | None = 2.0, batch_size: int = 1000, max_commands: int | None = None,
    starting_offset: str = "earliest", fair_reads: bool = False,
    fetch_wait_ms: int | None = None,
) -> BenchEnv:
    """Create the env's topics, keys, trust file and guard config."""
    workdir.mkdir(parents=True, exist_ok=True)
    common = CommonConfig(env=env, kafka=KafkaSettings(bootstrap=bootstrap),
                          topics=TopicsConfig(default_partitions=partitions))
    create_topics(common.kafka.client_config(), topic_specs(common.env, common.topics))
    keys = init_keys(workdir)
    path = write_config(workdir, bootstrap, keys, env)
    text = path.read_text()
    idle = None if idle_eof_s is None else f"idle_eof_s = {float(idle_eof_s)}"
    text = _set_key(text, "input", "idle_eof_s", idle)
    text = _set_key(text, "input", "batch_size", f"batch_size = {batch_size}")
    text = _set_key(text, "input", "starting_offset", f'starting_offset = "{starting_offset}"')
    text = _set_key(text, "topics", "default_partitions", f"default_partitions = {partitions}")
    # The guard's default alignment skew, not demo.toml's strict merge (set there so demo
    # runs are reproducible): the benchmarks measure the production default.
    text = _set_key(text, "input", "align_skew_s", None)
    text = _set_key(text, "input", "fair_reads", f"fair_reads = {str(fair_reads).lower()}")
    text = _set_key(text, "input", "fetch_wait_max_ms",
                    None if fetch_wait_ms is None else f"fetch_wait_max_ms = {fetch_wait_ms}")
    path.write_text(text)
    if max_commands is not None:
        pb = workdir / "playbook.toml"
        pb.write_text(re.sub(r"(?m)^max_commands = \d+", f"max_commands = {max_commands}",
                             pb.read_text()))
    return BenchEnv(bootstrap, env, path, keys, partitions)


def _set_key(text: str, table: str, key: str, line: str | None) -> str:
    """Replace (or drop, when ``line`` is None) ``key`` in ``[table]``, adding it if absent."""
    head = f"[{table}]\n"
    start = text.index(head) + len(head)
    nxt = text.find("\n[", start)
    end = len(text) if nxt < 0 else nxt + 1
    body = text[start:end]
    pat = re.compile(rf"(?m)^{re.escape(key)}\s*=.*\n")
    if pat.search(body):
        body = pat.sub("" if line is None else line + "\n", body)
    elif line is not None:
        body = line + "\n" + body
    return text[:start] + body + text[end:]




def _key(rec: Any) -> bytes:
    return f"{getattr(rec, 'venue', '')}/{getattr(rec, 'instrument', '')}".encode()


def producer(bootstrap: str, linger_ms: int = 20) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms,
                     "queue.buffering.max.messages": 1_000_000})


def publish(bench: BenchEnv, records: list[Any]) -> int:
    """Produce ``records`` to the env's input topics, every delivery checked; returns how
    many."""
    p = CheckedProducer(KafkaSettings(bootstrap=bench.bootstrap), what="the bench workload",
                        delivery_timeout_s=115, linger_ms=20, errors_only=True)
    topics = {s: bench.topic(s) for s in INPUT_STREAMS}
    for rec in records:
        p.produce(topics[stream_of(rec)], encode(rec), _key(rec))
    p.flush()
    return len(records)


_BY_KEY = [-1]  # librdkafka's partitioner: each key keeps one partition


def _produce(p: Producer, topic: str, data: bytes, key: bytes, parts: list[int], *,
             backoff_s: float) -> None:
    """Produce one record to each of ``parts``, polling while the local queue is full."""
    for part in parts:
        while True:
            try:
                p.produce(topic, data, key, partition=part)
                break
            except BufferError:
                p.poll(backoff_s)


def start_guard(
    bench: BenchEnv, *bytewax_args: str, log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m bytewax.run riskguard.dataflows.guard`` on the env's config.

    Its output goes to ``log`` (default: ``guard-<n>.log`` beside the config).
    """
    env = {**os.environ, "RISKGUARD_CONFIG": str(bench.config)}
    if log is None:
        n = len(list(bench.config.parent.glob("guard-*.log")))
        log = bench.config.parent / f"guard-{n}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard", *bytewax_args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def steal_seconds() -> float:
    """CPU seconds the hypervisor has taken from this machine's cores since boot
    (``/proc/stat`` steal, all cores): this box is a VM whose 2 vCPUs lose about 4% of
    their time idle and 15% with both busy (2026-11-24), so a run that needs both cores
    loses more than one that needs one."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds process ``pid`` has used (0.0 if unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: utime and stime are the 12th and 13th fields
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unknown_fill(i: int, ts: int, *, closing: bool = False) -> Fill:
    """A fill from a counterparty no config names (fails closed: one reduce_only); with
    ``closing``, the fill that flattens that position again (the reduce_only carried
    out: the counterparty holds nothing more, so marks re-value it no more)."""
    return Fill(id=f"unk-{'close' if closing else 'fill'}-{i}", venue="binance",
                counterparty=f"cp-unknown-{i}", instrument="BTC-PERP",
                side="sell" if closing else "buy", qty=0.01, price=65_000.0, ts=ts)


class RecordTemplate:
    """A record's encoding with its ``id`` and ``ts`` left open: :meth:`render` gives
    ``encode(replace(record, id=..., ts=...))`` without re-encoding the rest: 1.6
    against 2.2 µs a record (2026-11-24), for a load producer that shares the machine's
    2 cores with the guard under test and the dev broker.

    >>> from riskguard.schemas import Trade
    >>> t = Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=1, price=1.5, qty=2.0,
    ...           side="buy")
    >>> RecordTemplate(t).render("x-7", 99) == encode(msgspec.structs.replace(t, id="x-7", ts=99))
    True
    """

    _ID, _TS = "\x01template-id\x01", 7_777_777_777_777_777_777

    def __init__(self, rec: Any) -> None:
        data = encode(msgspec.structs.replace(rec, id=self._ID, ts=self._TS))
        id_token, ts_token = msgspec.json.encode(self._ID), str(self._TS).encode()
        if data.count(id_token) != 1 or data.count(ts_token) != 1:
            msg = f"cannot template {rec!r}: its id and ts must each appear once"
            raise ValueError(msg)
        self.id_first = data.index(id_token) < data.index(ts_token)
        first, second = (id_token, ts_token) if self.id_first else (ts_token, id_token)
        head, rest = data.split(first)
        mid, tail = rest.split(second)
        self.parts = (head, mid, tail)

    def render(self, rid: str, ts: int) -> bytes:
        head, mid, tail = self.parts
        id_b, ts_b = msgspec.json.encode(rid), str(ts).encode()
        if self.id_first:
            return b"".join((head, id_b, mid, ts_b, tail))
        return b"".join((head, ts_b, mid, id_b, tail))


class LiveLoad:
    """Scenario records re-stamped to now, produced at ``rate`` events/s.

    Every ``1 / incident_rate`` s one :func:`unknown_fill` is produced as well
    (once ``incidents_on`` is set). ``sent_at[counterparty]`` keeps when each
    incident fill was handed to the producer (ns). With ``incident_hold_s`` each
    incident's position is closed that long after it opened (``closing``), so
    the book holds about ``incident_rate * incident_hold_s`` incident counterparties at
    any time: a steady book. ``None`` never closes them: the book grows by
    ``incident_rate`` counterparties a second for the whole run, each re-valued on
    every tick after it opened.

    ``linger_ms`` is the producer's ``linger.ms``. Each produce request becomes one
    stored batch in the dev broker, and Tansu's in-memory engine lists every batch a
    partition holds on each fetch, so small batches (1 ms, and 20 ms too) make the
    broker's CPU climb through a run until it, not the guard, sets the latency
    (``guard_latency.py --load-linger-ms`` shows it).
    """

    def __init__(self, bench: BenchEnv, rate: float, incident_rate: float,
                 linger_ms: int = 50, incident_hold_s: float | None = None) -> None:
        self.bench = bench
        self.rate = rate
        self.incident_rate = incident_rate
        self.incident_hold_ns = None if incident_hold_s is None else int(incident_hold_s * NS)
        self.closed = 0
        self._open: deque[tuple[int, int]] = deque()  # (when to close, incident), in order
        self.p = producer(bench.bootstrap, linger_ms=linger_ms)
        self.topics = {s: bench.topic(s) for s in INPUT_STREAMS}
        self.sent = 0
        self.incidents = 0
        self.incidents_on = False
        self.sent_at: dict[str, int] = {}
        # each scenario record encoded once as a template, with its topic, key,
        # partitions and id
        self._plans = []
        for r in build_scenario(0).events:
            topic = self.topics[stream_of(r)]
            key = _key(r)
            self._plans.append((RecordTemplate(r), topic, key, _BY_KEY, r.id))
        self._records = self._cycle()

    def _cycle(self) -> Iterator[tuple[RecordTemplate, str, bytes, list[int], str]]:
        """The scenario's records over and over, the cycle's number in each copy's id."""
        k = 0
        while True:
            for template, topic, key, parts, rid in self._plans:
                yield template, topic, key, parts, f"l{k}-{rid}"
            k += 1

    def _produce(self, rec: Any) -> None:
        topic = self.topics[stream_of(rec)]
        data, key = encode(rec), _key(rec)
        _produce(self.p, topic, data, key, _BY_KEY, backoff_s=0.01)

    def run(self, seconds: float, *, step_s: float = 0.005) -> None:
        """Produce at the steady rate for ``seconds`` of wall time."""
        t0 = time.monotonic()
        end = t0 + seconds
        done = 0
        inc_done = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - t0) * self.rate)
            ts = time.time_ns()
            while done < due:
                template, topic, key, parts, rid = next(self._records)
                _produce(self.p, topic, template.render(rid, ts), key, parts, backoff_s=0.01)
                done += 1
            if self.incidents_on:
                inc_due = int((now - t0) * self.incident_rate)
                while inc_done < inc_due:
                    i = self.incidents
                    fill = unknown_fill(i, ts)
                    self.sent_at[fill.counterparty] = time.time_ns()
                    self._produce(fill)
                    self.incidents += 1
                    inc_done += 1
                    if self.incident_hold_ns is not None:
                        self._open.append((ts + self.incident_hold_ns, i))
            while self._open and self._open[0][0] <= ts:
                self._produce(unknown_fill(self._open.popleft()[1], ts, closing=True))
                self.closed += 1
            self.p.poll(0)
            sleep = step_s - (time.monotonic() - now)
            if sleep > 0:
                time.sleep(sleep)
        self.sent += done
        self.p.flush(30)


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def commands_until_quiet(bootstrap: str, topic: str, partitions: int,
                         idle_polls: int = 5) -> Iterator[tuple[Any, float]]:
    """Every command on ``topic`` from the beginning with its Kafka timestamp (ms), until
    ``idle_polls`` polls of 0.2 s in a row bring nothing."""
    from riskguard.operators.signing import decode_command
    from riskguard.operators.signing.crypto import decode_envelope

    tail = Tail(bootstrap, topic, partitions)
    try:
        idle = 0
        while idle < idle_polls:
            msgs = tail.poll(0.2)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                yield decode_command(decode_envelope(m.value())), float(m.timestamp()[1])
    finally:
        tail.close()


class Tail:
    """Reads a topic from the beginning (assign, no group)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "riskguard-bench",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        self.c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self, timeout_s: float = 0.1) -> list[Any]:
        msgs = self.c.consume(5000, timeout_s)
        return [m for m in msgs if m.error() is None]

    def close(self) -> None:
        self.c.close()
