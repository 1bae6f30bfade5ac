"""A command subscriber under a flood of garbage: how many messages a second it refuses,
and how late a genuine command behind 100,000 of them executes.

Method. On the dev broker (or ``--bootstrap``), fresh topics per measure, a trust file
listing four keys (the guard's, an executor's and two operators'), and a
:class:`~riskguard.connectors.subscriber.CommandSubscriber` with a SQLite state on local
disk (synced commits, its high-water mark beside it):

- **refused per second**, per kind of garbage: ``--count`` messages already on the
  topic (a fifth as many with a bad signature), the subscriber's ``poll`` timed from its
  first refusal to its last. Kinds: random bytes; JSON that is no envelope; an envelope
  whose key id names no trusted key; an envelope naming the guard's key with a bad
  signature, each a different one in canonical form (each costs an Ed25519 check, so
  fewer of them), checked on one thread and on one thread per core (the subscriber's
  default). The baseline is a bare Kafka consumer reading the same topic in the same
  run (no verification, no state): the ratio says what the subscriber adds to reading.
  On the dev broker both wait on fetches, so the rate of cheap garbage is mostly the
  broker's; the CPU a refusal costs (this process, every thread, over the same span)
  is the subscriber's own, and steadier.
- **a genuine command behind 100,000 garbage messages**, two ways. *Flooding*: a
  producer sends ``--behind`` garbage messages at ``--flood-rate`` a second (20,000)
  and then one genuine command while the subscriber runs; the figure is the command's
  execution time minus its Kafka timestamp (its arrival). *Backlog*: the same messages
  are already on the topic when the subscriber starts; the figure is from its start.
  The baseline is the same genuine command alone on an empty topic, in the same run.

    python bench/subscriber_flood.py [--count 50000] [--behind 100000]
                                     [--flood-rate 20000] [--bootstrap H:P]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_workload import broker_unless
from riskguard.connectors.subscriber import CommandSubscriber, usable_cores
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    encode_envelope,
    pae_prefix,
    sign_envelope,
)
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind

S = 1_000_000_000
GUARD = Signer.from_private_bytes(bytes(range(32)), issuer="guard")
STRANGER = Signer.from_private_bytes(bytes(range(1, 33)), issuer="guard")


OTHERS = [Signer.from_private_bytes(bytes([i]) * 32, issuer=name)
          for i, name in ((7, "executor"), (8, "alice"), (9, "bob"))]


def _trust() -> TrustStore:
    guard = {"name": "guard", "public_key": GUARD.public_key.hex(), "role": "risk-engine",
             "actions": ["*"], "scopes": ["*"]}
    others = [{"name": k.issuer, "public_key": k.public_key.hex(),
               "role": "executor" if k.issuer == "executor" else "operator"} for k in OTHERS]
    return TrustStore(parse_trust(trust_doc_to_toml([guard, *others])))


def _command(topic: str, seq: int) -> MitigationCommand:
    now = time.time_ns()
    return MitigationCommand(
        command_id=str(uuid.uuid4()), issuer="guard", seq=seq, issued_at=now,
        expires_at=now + 300 * S, audience=Audience(env="bench", topic=topic),
        action=Action.HALT_TRADING, scope=Scope(kind=ScopeKind.VENUE, value="okx"),
        reason="bench", protective_orders_allowed=True)


def _signed(cmd: MitigationCommand, by: Signer = GUARD) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [by]))


def garbage(kind: str, topic: str, n: int) -> list[bytes]:
    """``n`` messages of one kind of garbage."""
    if kind == "random bytes":
        return [os.urandom(120) for _ in range(n)]
    if kind == "JSON, no envelope":
        return [b'{"type":"command","id":%d,"note":"not signed"}' % i for i in range(n)]
    if kind == "unknown key id":
        return [_signed(_command(topic, i + 1), STRANGER) for i in range(n)]
    body = msgspec.json.decode(_signed(_command(topic, 1)))
    out = []
    for _ in range(n):  # the guard's key id; a bad signature with S < L (no early refusal)
        sig = os.urandom(63) + bytes([os.urandom(1)[0] & 0x0F])
        body["signatures"][0]["sig"] = base64.b64encode(sig).decode()
        out.append(msgspec.json.encode(body))
    return out


class Bench:
    """Topics on one broker, and what runs over them."""

    def __init__(self, bootstrap: str, work: Path) -> None:
        self.bootstrap = bootstrap
        self.work = work
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                                  "queue.buffering.max.messages": 1_000_000, "acks": "all"})

    def topic(self) -> str:
        name = f"bench-flood-{uuid.uuid4().hex[:8]}"
        self.admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
        return name

    def produce(self, topic: str, values: list[bytes], rate: float | None = None) -> None:
        """Produce ``values`` as fast as the producer goes, or at ``rate`` a second."""
        start = time.perf_counter()
        for i, v in enumerate(values):
            self.producer.produce(topic, v)
            self.producer.poll(0)
            if rate is not None and i % 500 == 0:
                ahead = i / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
        assert self.producer.flush(120) == 0

    def subscriber(self, topic: str, on_command: Callable[[Any], Any],
                   verify_threads: int | None = None) -> CommandSubscriber:
        state = self.work / uuid.uuid4().hex
        state.mkdir()
        return CommandSubscriber(trust=_trust(), audience=Audience(env="bench", topic=topic),
                                 state_path=state / "sub.sqlite", on_command=on_command,
                                 brokers=self.bootstrap, topic=topic,
                                 verify_threads=verify_threads)

    def bare_read_s(self, topic: str, n: int) -> float:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uuid.uuid4().hex,
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got, start = 0, 0.0
        while got < n:
            msgs = c.consume(512, 1.0)
            if msgs and not start:
                start = time.perf_counter()
            got += len(msgs)
        took = time.perf_counter() - start
        c.close()
        return took

    def refused_s(self, topic: str, n: int, verify_threads: int | None = None
                  ) -> tuple[float, float]:
        """Seconds from the first refusal to the last (as the bare read is timed from its
        first message: the broker's first fetch is no part of either), and the CPU
        seconds this process used over them (every thread: the verify threads', the
        Kafka client's)."""
        sub = self.subscriber(topic, lambda _c: None, verify_threads)
        first: list[tuple[float, float]] = []

        def note_first(_rejection: Any) -> None:
            if not first:
                first.append((time.perf_counter(), time.process_time()))

        sub.on_reject = note_first
        sub.connect()  # first: the figure is the handling, not the join
        assert sub.poll(max_messages=n, idle_timeout_s=10) == n
        took = time.perf_counter() - first[0][0]
        cpu = time.process_time() - first[0][1]
        sub.close()
        scale = n / (n - 1)  # the first refusal's own time, as the others'
        return took * scale, cpu * scale


def ed25519_verify_us(n: int = 2000) -> float:
    """µs one Ed25519 check of a command envelope's size takes here, on one thread
    (bare ``cryptography``): the forged envelopes' baseline, measured in the same run."""
    env = msgspec.json.decode(_signed(_command("t", 1)))
    message = pae_prefix(PAYLOAD_COMMAND) + base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    key = GUARD.public_key
    start = time.perf_counter()
    for _ in range(n):
        key.verifies(message, sig)
    return 1e6 * (time.perf_counter() - start) / n


def _rates(b: Bench, count: int) -> None:
    print(f"refused per second ({count:,} messages each; baseline: a bare consumer of the "
          "same topic)")
    cores = usable_cores()
    verify_us = ed25519_verify_us()
    print(f"  (one Ed25519 check here: {verify_us:.0f} µs, {1e6 / verify_us:,.0f}/s on one "
          f"thread; {cores} core{'s' if cores > 1 else ''})")
    for kind, threads in (("random bytes", None), ("JSON, no envelope", None),
                          ("unknown key id", None), ("bad signature", 1),
                          ("bad signature", None)):
        n = count if kind != "bad signature" else max(count // 5, 200)
        topic = b.topic()
        b.produce(topic, garbage(kind, topic, n))
        bare = b.bare_read_s(topic, n)
        took, cpu = b.refused_s(topic, n, threads)
        label = kind if kind != "bad signature" else (
            f"{kind}, {threads or cores} thread{'s' if (threads or cores) > 1 else ''}")
        line = (f"  {label:<26} {n / took:>9,.0f}/s   bare read {n / bare:>9,.0f}/s   "
                f"ratio {bare / took:.2f}x of the bare read's speed   "
                f"CPU {1e6 * cpu / n:6.1f} µs a refusal")
        if kind == "bad signature":
            line += f"   {n / took * verify_us / 1e6:.2f}x one thread's Ed25519 rate"
        print(line)


def _behind(b: Bench, behind: int, *, flooding: float | None) -> float:
    """Seconds from the genuine command's arrival (garbage ``flooding`` in at that rate)
    or the subscriber's start (a backlog) to its execution."""
    topic = b.topic()
    junk = garbage("JSON, no envelope", topic, behind)
    executed: list[float] = []
    arrived: list[float] = []
    sub = b.subscriber(topic, lambda _c: executed.append(time.time()))

    def send() -> None:
        b.produce(topic, junk, flooding)
        b.producer.produce(topic, _signed(_command(topic, 1)),
                           on_delivery=lambda _e, m: arrived.append(m.timestamp()[1] / 1e3))
        b.producer.flush(60)

    if flooding is None:
        send()
    sub.connect()
    started = time.time()
    sender = threading.Thread(target=send) if flooding is not None else None
    if sender is not None:
        sender.start()
    while not executed:
        sub.poll(max_messages=4096, idle_timeout_s=0.5)
    if sender is not None:
        sender.join()
    sub.close()
    return executed[0] - (arrived[0] if flooding is not None else started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--behind", type=int, default=100_000)
    ap.add_argument("--flood-rate", type=float, default=20_000.0,
                    help="garbage messages a second while the subscriber runs")
    ap.add_argument("--bootstrap")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bootstrap, broker, _pid = broker_unless(args.bootstrap, Path(tmp) / "broker")
        try:
            b = Bench(bootstrap, Path(tmp))
            _rates(b, args.count)
            alone = _behind(b, 0, flooding=None)
            print(f"a genuine command alone: executed {alone * 1000:.0f} ms after the "
                  "subscriber started (baseline)")
            for flooding in (args.flood_rate, None):
                took = _behind(b, args.behind, flooding=flooding)
                what = (f"arrival (the garbage flooding in at {flooding:,.0f}/s)"
                        if flooding is not None else
                        "subscriber's start (the garbage already on the topic)")
                print(f"behind {args.behind:,} garbage messages: executed "
                      f"{took * 1000:,.0f} ms after its {what}; {took / alone:.1f}x the "
                      "baseline")
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
