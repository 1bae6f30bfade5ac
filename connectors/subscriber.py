"""A verifying subscriber for signed mitigation commands.

:class:`CommandSubscriber` reads a command topic (``assign()``, no consumer
group) and for each message, in this order:

1. parses only the outer envelope, then verifies the signature over the
   exact payload bytes (nothing in the payload is trusted before this);
2. checks the key is trusted, not revoked and inside its validity window;
3. checks the key may sign that action for that scope (and the two-person rule);
4. checks the audience (environment and topic);
5. checks freshness, with a clock-skew leeway (10 s by default);
6. drops replays: a ``seq`` at or below the issuer's high-water mark, or a
   ``command_id`` already executed, is a no-op; another replica's copy of a
   decision already executed (same ``decision_id``, kept for
   ``decision_window_s`` and until it expires) is dropped as a
   :class:`Duplicate` (``duplicate_decision``, counted apart from rejections, and
   logged with ``"outcome": "duplicate"`` where rejections are);
   and (``dedupe_in_force``, on by
   default) so is a mitigation already in force on the same exact scope with
   the same params until a ``resume`` lifts it, reason ``already_in_force``: a guard restarted from
   recovery may re-derive a mitigation under a new id, and an executor must
   not act twice;
7. raises a :class:`GapAlert` when ``seq`` jumps (a command may have been lost);
8. only then calls the user's callback with the typed
   :class:`~riskguard.schemas.MitigationCommand`.

An authentic command that is not executed because its state already holds (another
replica's copy of an executed decision, a mitigation already in force) goes to
``on_settled(command, reason)``: an executor acknowledges it as ``already_applied``
(:class:`~riskguard.connectors.acks.AckingExecutor`), so the guard that sent that copy
learns it holds, and does not escalate it as unconfirmed. A state "holds" only if the
executor applied it: when the callback returns a result whose ``outcome`` is
``refused`` or ``failed`` (an :class:`~riskguard.connectors.acks.Applied`), the command
is consumed but recorded neither as in force nor as its decision's executed copy, so
the next copy (re-derived, or another replica's) is executed, never confirmed in its
place. A callback that raises leaves the message to be read again: ``poll`` seeks back
to it before the exception propagates.

Its state (per-issuer ``seq`` high-water marks, executed ``command_id``s,
consumed offsets and the highest trust-file serial seen) lives in SQLite and
is committed in one transaction *after* the callback returns, so a crash
re-delivers at most the command being executed (make the executor
idempotent on ``command_id``; it always gets one). Every rejection carries
a machine-readable ``reason``, is counted, and goes to ``on_reject``, an
optional rejections topic and an optional JSONL log; its offset is consumed
like an executed command's, so a message that cannot be read (nested too
deep, say: ``malformed_envelope``) is refused once, never re-read on every
start. An exception the checks raise unforeseen is a rejection too
(``verify_error``, naming its type), never the end of the subscriber.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from riskguard.connectors.settings import with_logger
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.observe import observe_duplicate, observe_gap, observe_rejection
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Reason, decode_envelope
from riskguard.operators.signing.trust import DEFAULT_LEEWAY_NS, TrustStore
from riskguard.schemas.commands import Audience, MitigationCommand

from riskguard.errors import BrokerError, DeliveryError, TrustError, VerificationError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seq_hw (issuer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (command_id TEXT PRIMARY KEY, issuer TEXT NOT NULL,
                                 seq INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, part INTEGER NOT NULL,
                                    next_offset INTEGER NOT NULL, PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS in_force (action TEXT NOT NULL, scope TEXT NOT NULL,
                                     command_id TEXT NOT NULL, params BLOB NOT NULL,
                                     PRIMARY KEY (action, scope));
CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, issuer TEXT NOT NULL,
                                      command_id TEXT NOT NULL,
                                      keep_until INTEGER NOT NULL);
"""
DEFAULT_DECISION_WINDOW_S = 3600.0
"""How long an executed decision is remembered, at least (and until its command
expires): a replica's copy arriving later than that is no longer dropped as a
duplicate (it would have expired already with the default lifetimes)."""
# Actions that are momentary, not a state an executor holds.
_MOMENTARY = frozenset({"alert", "resume"})
# What an executor's callback may report for a command it did not apply (AckOutcome values).
_NOT_APPLIED = frozenset({"refused", "failed"})


@dataclass(frozen=True)
class Rejection:
    """Why a message was not executed."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    issuer: str = ""
    command_id: str = ""
    seq: int = -1


@dataclass(frozen=True)
class Duplicate:
    """Another replica's copy of a decision already executed: dropped, not refused.

    ``reason`` is ``duplicate_decision``; ``first_issuer`` and ``first_command_id``
    name the copy that was executed."""

    decision_id: str
    topic: str
    partition: int
    offset: int
    issuer: str
    command_id: str
    seq: int
    first_issuer: str
    first_command_id: str
    reason: str = "duplicate_decision"


@dataclass(frozen=True)
class GapAlert:
    """``seq`` jumped: commands between ``expected`` and ``got - 1`` were not seen."""

    issuer: str
    expected: int
    got: int
    partition: int
    offset: int


class SubscriberState:
    """Durable replay state in SQLite."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def high_water(self, issuer: str) -> int | None:
        row = self.db.execute("SELECT seq FROM seq_hw WHERE issuer=?", (issuer,)).fetchone()
        return None if row is None else int(row[0])

    def seen(self, command_id: str) -> bool:
        q = "SELECT 1 FROM seen WHERE command_id=?"
        return self.db.execute(q, (command_id,)).fetchone() is not None

    def decided(self, decision_id: str) -> tuple[str, str] | None:
        """``(issuer, command_id)`` of the executed copy of ``decision_id``, if any."""
        row = self.db.execute("SELECT issuer, command_id FROM decisions WHERE decision_id=?",
                              (decision_id,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def in_force(self, action: str, scope: str, params: bytes) -> str | None:
        """The command_id holding ``action`` on ``scope`` with these exact params, if any."""
        row = self.db.execute(
            "SELECT command_id FROM in_force WHERE action=? AND scope=? AND params=?",
            (action, scope, params)).fetchone()
        return None if row is None else str(row[0])

    def next_offsets(self, topic: str) -> dict[int, int]:
        rows = self.db.execute("SELECT part, next_offset FROM offsets WHERE topic=?", (topic,))
        return {int(p): int(o) for p, o in rows}

    def trust_serial(self) -> int | None:
        row = self.db.execute("SELECT v FROM meta WHERE k='trust_serial'").fetchone()
        return None if row is None else int(row[0])

    def set_trust_serial(self, serial: int) -> None:
        self.db.execute("INSERT INTO meta VALUES ('trust_serial', ?) ON CONFLICT(k) "
                        "DO UPDATE SET v=excluded.v", (serial,))

    def commit(self, *, topic: str, partition: int, offset: int,
               cmd: MitigationCommand | None, executed: bool = True,
               keep_decision_until: int = 0) -> None:
        """Record a handled command (if any), what it leaves in force, its decision, and
        the consumed offset, atomically."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if cmd is not None and executed and cmd.decision_id:
                self.db.execute("INSERT OR IGNORE INTO decisions VALUES (?, ?, ?, ?)",
                                (cmd.decision_id, cmd.issuer, cmd.command_id,
                                 max(cmd.expires_at, keep_decision_until)))
            if cmd is not None and executed:
                scope = cmd.scope.label()
                action = cmd.action.value
                if action == "resume":
                    lifted = cmd.params.get("actions")
                    if isinstance(lifted, list) and lifted:
                        self.db.executemany(
                            "DELETE FROM in_force WHERE action=? AND scope=?",
                            [(str(a), scope) for a in lifted])
                    else:
                        self.db.execute("DELETE FROM in_force WHERE scope=?", (scope,))
                elif action not in _MOMENTARY:
                    self.db.execute("INSERT OR REPLACE INTO in_force VALUES (?, ?, ?, ?)",
                                    (action, scope, cmd.command_id, _params_key(cmd)))
            if cmd is not None:
                self.db.execute(
                    "INSERT INTO seq_hw VALUES (?, ?) ON CONFLICT(issuer) DO UPDATE SET "
                    "seq=max(seq, excluded.seq)", (cmd.issuer, cmd.seq))
                self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)",
                                (cmd.command_id, cmd.issuer, cmd.seq, cmd.expires_at))
            if offset >= 0:
                self.db.execute(
                    "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT(topic, part) DO UPDATE "
                    "SET next_offset=max(next_offset, excluded.next_offset)",
                    (topic, partition, offset + 1))

    def prune(self, before_ns: int) -> int:
        """Forget executed ids that expired before ``before_ns`` (freshness rejects them)."""
        cur = self.db.execute("DELETE FROM seen WHERE expires_at < ?", (before_ns,))
        self.db.execute("DELETE FROM decisions WHERE keep_until < ?", (before_ns,))
        return cur.rowcount

    def close(self) -> None:
        self.db.close()


Outcome: TypeAlias = MitigationCommand | Rejection | Duplicate


def _params_key(cmd: MitigationCommand) -> bytes:
    """Canonical bytes of a command's params (an update with new params is not a repeat)."""
    return msgspec.json.encode(cmd.params, order="sorted")


class CommandSubscriber:
    """Consume, verify, de-duplicate and hand over signed mitigation commands."""

    def __init__(
        self,
        *,
        trust: TrustStore,
        audience: Audience,
        state_path: str | Path,
        on_command: Callable[[MitigationCommand], Any],
        on_reject: Callable[[Rejection], None] | None = None,
        on_alert: Callable[[GapAlert], None] | None = None,
        brokers: str = "",
        topic: str = "",
        rejections_topic: str | None = None,
        rejection_log: str | Path | None = None,
        leeway_ns: int = DEFAULT_LEEWAY_NS,
        clock: Clock = system_clock,
        dedupe_in_force: bool = True,
        on_duplicate: Callable[[Duplicate], None] | None = None,
        decision_window_s: float = DEFAULT_DECISION_WINDOW_S,
        on_settled: Callable[[MitigationCommand, str], None] | None = None,
    ) -> None:
        self.on_settled = on_settled
        self.dedupe_in_force = dedupe_in_force
        self.on_duplicate = on_duplicate
        self.decision_window_ns = int(decision_window_s * 1_000_000_000)
        self.trust = trust
        self.audience = audience
        self.on_command = on_command
        self.on_reject = on_reject
        self.on_alert = on_alert
        self.brokers = brokers
        self.topic = topic or audience.topic
        self.rejections_topic = rejections_topic
        self.rejection_log = Path(rejection_log) if rejection_log else None
        self.leeway_ns = leeway_ns
        self.clock = clock
        self.state = SubscriberState(state_path)
        self.stats: Counter[str] = Counter()
        old = self.state.trust_serial()
        if old is not None and trust.serial < old:
            self.state.close()
            msg = (f"trust file serial {trust.serial} is older than serial {old} already "
                   "accepted by this subscriber (rollback refused)")
            raise TrustError(msg)
        self.state.set_trust_serial(trust.serial)
        self._consumer: Any = None
        self._producer: Any = None

    # -- one message ---------------------------------------------------------

    def handle(self, data: bytes, *, partition: int = -1, offset: int = -1) -> Outcome:
        """Verify and (maybe) execute one message; returns the command or the rejection."""
        now = self.clock()
        try:
            env = decode_envelope(data)
            verified = self.trust.verify(env, expected_payload_type=PAYLOAD_COMMAND,
                                         audience=self.audience, now_ns=now,
                                         leeway_ns=self.leeway_ns)
        except VerificationError as err:
            return self._reject(err.reason, err.detail, partition, offset)
        except Exception as err:  # a check failing unforeseen refuses; the offset moves on
            return self._reject("verify_error", f"{type(err).__name__}: {err}", partition, offset)
        cmd = verified.message
        assert isinstance(cmd, MitigationCommand)  # PAYLOAD_COMMAND decodes to a command
        hw = self.state.high_water(cmd.issuer)
        if hw is not None and cmd.seq <= hw:
            return self._reject(Reason.REPLAYED_SEQ.value,
                                f"seq {cmd.seq} <= high-water {hw} of {cmd.issuer!r}",
                                partition, offset, cmd)
        first = self.state.decided(cmd.decision_id) if cmd.decision_id else None
        if first is not None:
            return self._duplicate(cmd, first, partition, offset)
        if self.state.seen(cmd.command_id):
            # Authentic under a new seq (re-derived after a restart): the seq is used up.
            # The executor answered this id when it handled it: nothing to settle.
            return self._reject(Reason.REPLAYED_COMMAND_ID.value,
                                f"command_id {cmd.command_id!r} already executed",
                                partition, offset, cmd, record=True)
        expected = (hw or 0) + 1
        if cmd.seq > expected:
            self.stats["gaps"] += 1
            alert = GapAlert(issuer=cmd.issuer, expected=expected, got=cmd.seq,
                             partition=partition, offset=offset)
            observe_gap(alert)
            if self.on_alert is not None:
                self.on_alert(alert)
        holder = None
        if self.dedupe_in_force and cmd.action.value not in _MOMENTARY:
            holder = self.state.in_force(cmd.action.value, cmd.scope.label(), _params_key(cmd))
        if holder is not None:
            # Authentic, but the same mitigation already holds on this exact scope (for
            # example re-derived after a restart): executing it again would act twice.
            self._settled(cmd, "already_in_force")
            return self._reject("already_in_force",
                                f"{cmd.action.value} on {cmd.scope.label()} is in force "
                                f"since command {holder}", partition, offset, cmd, record=True)
        result = self.on_command(cmd)
        applied = str(getattr(result, "outcome", "applied")) not in _NOT_APPLIED
        if not applied:
            self.stats["not_applied"] += 1
        self.state.commit(topic=self.topic, partition=partition, offset=offset, cmd=cmd,
                          executed=applied, keep_decision_until=now + self.decision_window_ns)
        self.stats["accepted"] += 1
        return cmd

    def _duplicate(self, cmd: MitigationCommand, first: tuple[str, str], partition: int,
                   offset: int) -> Duplicate:
        """Drop another replica's copy of an executed decision: counted and logged as a
        duplicate; its seq and id count as seen."""
        dup = Duplicate(decision_id=cmd.decision_id or "", topic=self.topic,
                        partition=partition, offset=offset, issuer=cmd.issuer,
                        command_id=cmd.command_id, seq=cmd.seq, first_issuer=first[0],
                        first_command_id=first[1])
        self.stats["duplicates"] += 1
        observe_duplicate(dup)
        self._settled(cmd, dup.reason)
        if self.on_duplicate is not None:
            self.on_duplicate(dup)
        self._log({"outcome": "duplicate", **asdict(dup)}, dup.issuer)
        self.state.commit(topic=self.topic, partition=partition, offset=offset, cmd=cmd,
                          executed=False)
        return dup

    def _settled(self, cmd: MitigationCommand, reason: str) -> None:
        if self.on_settled is not None:
            self.on_settled(cmd, reason)

    def _log(self, entry: dict[str, Any], issuer: str) -> None:
        """One line to the rejection log and the rejections topic, where they are set."""
        line = msgspec.json.encode(entry)
        if self.rejection_log is not None:
            with self.rejection_log.open("ab") as fh:
                fh.write(line + b"\n")
        if self._producer is not None and self.rejections_topic:
            self._producer.produce(self.rejections_topic, value=line, key=issuer.encode() or None)

    def _reject(self, reason: str, detail: str, partition: int, offset: int,
                cmd: MitigationCommand | None = None, *, record: bool = False) -> Rejection:
        """Refuse ``cmd``; with ``record`` its seq and id still count as seen (a no-op)."""
        rej = Rejection(
            reason=reason, detail=detail[:500], topic=self.topic, partition=partition,
            offset=offset, issuer=cmd.issuer if cmd else "",
            command_id=cmd.command_id if cmd else "", seq=cmd.seq if cmd else -1,
        )
        self.stats["rejected"] += 1
        self.stats[f"rejected.{reason}"] += 1
        observe_rejection(rej)
        if self.on_reject is not None:
            self.on_reject(rej)
        self._log(asdict(rej), rej.issuer)
        self.state.commit(topic=self.topic, partition=partition, offset=offset,
                          cmd=cmd if record else None, executed=False)
        return rej

    # -- Kafka -----------------------------------------------------------------

    def _connect(self) -> None:
        if not self.brokers:
            raise BrokerError("subscriber: no brokers configured")
        conf: dict[str, Any] = with_logger({"bootstrap.servers": self.brokers})
        try:
            md = AdminClient(conf).list_topics(self.topic, timeout=10)
        except Exception as err:
            msg = f"subscriber: cannot reach Kafka at {self.brokers}: {err}"
            raise BrokerError(msg) from err
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            msg = f"subscriber: topic {self.topic!r} does not exist at {self.brokers}"
            raise BrokerError(msg)
        stored = self.state.next_offsets(self.topic)
        self._consumer = Consumer({
            **conf, "group.id": f"riskguard-subscriber-{id(self)}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        })
        self._consumer.assign([
            TopicPartition(self.topic, p, stored.get(p, OFFSET_BEGINNING))
            for p in sorted(tmd.partitions)
        ])
        if self.rejections_topic:
            self._producer = Producer({**conf, "enable.idempotence": True, "acks": "all"})

    def poll(self, *, max_messages: int | None = None, idle_timeout_s: float = 2.0,
             poll_timeout_s: float = 0.2) -> int:
        """Consume until ``max_messages`` handled or nothing arrives for ``idle_timeout_s``.

        Returns how many messages were handled (accepted or rejected).
        """
        if self._consumer is None:
            self._connect()
        handled = 0
        idle_since = time.monotonic()
        while max_messages is None or handled < max_messages:
            msg = self._consumer.poll(poll_timeout_s)
            if msg is None:
                if time.monotonic() - idle_since >= idle_timeout_s:
                    break
                continue
            if msg.error() is not None:
                self.stats["consumer_errors"] += 1
                continue
            idle_since = time.monotonic()
            try:
                self.handle(msg.value() or b"", partition=msg.partition(), offset=msg.offset())
            except BaseException:
                # not committed: read it again on the next poll (or after a restart), never
                # skip it because a later message's offset was committed first
                self._consumer.seek(TopicPartition(self.topic, msg.partition(), msg.offset()))
                raise
            handled += 1
        self._flush_rejections()
        self.state.prune(self.clock() - self.leeway_ns - 3600 * 1_000_000_000)
        return handled

    def _flush_rejections(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(10)
            if left:
                msg = f"subscriber: {left} rejection record(s) not delivered"
                raise DeliveryError(msg, undelivered=left, reasons=["flush timeout"])

    def summary(self) -> dict[str, int]:
        """Counters: accepted, rejected, rejected.<reason>, gaps, consumer_errors."""
        return dict(sorted(self.stats.items()))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._flush_rejections()
        self._producer = None
        self.state.close()

    def __enter__(self) -> CommandSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CONNECT_S = 10.0
"""How long :func:`read_topic_bytes` waits for a topic's first message or end event."""


def read_topic_bytes(brokers: str, topic: str, *, idle_timeout_s: float = 3.0) -> list[bytes]:
    """Every message value of ``topic`` from the beginning (assign, no group), in order
    within each partition.

    Done once every partition has reported its end (librdkafka's end-of-partition event)
    with nothing after it, or once ``idle_timeout_s`` passes with neither a message nor
    an end event; the wait for the first one allows at least ``CONNECT_S`` for the
    connection, so a slow start does not read as an empty topic."""
    conf: dict[str, Any] = with_logger({"bootstrap.servers": brokers})
    md = AdminClient(conf).list_topics(topic, timeout=10)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        msg = f"topic {topic!r} does not exist at {brokers}"
        raise BrokerError(msg)
    consumer = Consumer({**conf, "group.id": f"riskguard-reader-{id(conf)}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    parts = sorted(tmd.partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[bytes] = []
    at_end: set[int] = set()
    quiet_s = max(idle_timeout_s, CONNECT_S)
    last = time.monotonic()
    try:
        while len(at_end) < len(parts) and time.monotonic() - last < quiet_s:
            m = consumer.poll(0.2)
            if m is None:
                continue
            last = time.monotonic()
            quiet_s = idle_timeout_s
            err, part = m.error(), m.partition()
            if err is None:
                at_end.discard(part)
                out.append(m.value() or b"")
            elif err.code() == KafkaError._PARTITION_EOF and part is not None:
                at_end.add(part)
    finally:
        consumer.close()
    return out
