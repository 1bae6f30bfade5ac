"""A verifying subscriber for signed mitigation commands.

:class:`CommandSubscriber` reads a command topic (``assign()``, no consumer group) and
checks each message (``docs/security.md``), in this order: the envelope's signature over
the exact payload bytes (nothing in the payload is trusted before it) with the key's
trust, role, two-person rule, audience, freshness and lifetime; two people for a resume
of the firm-wide halt; a ``seq`` at or below the issuer's (a replay); another replica's
copy of an executed decision (:class:`Duplicate`; a ``decision_id`` held with other
content is a :class:`DecisionConflict`, never dropped for it); a ``command_id`` already
handled; a ``seq`` gap (:class:`GapAlert`, alerted, not refused); a held action already
in force (``already_in_force``); a held action on a scope where ``MAX_HOLDS`` other
commands of its signer hold it already (``too_many_holds``; the guard's replicas are
one signer, and no signer's holds use up another's room). Only then does it call the
user's callback with the typed :class:`~riskguard.schemas.MitigationCommand`.

An authentic command not executed because its state already holds goes to
``on_settled(command, reason, settles)``, ``settles`` naming the executed command that
holds it (docs/executors.md). A callback answering ``already_applied`` names the same
way the command in force that answers it (``settles``); naming none, it says the
command itself was applied before (redelivered after a crash), and the command is in
force. A callback result whose ``outcome`` is ``refused`` or ``failed`` consumes the
command but records it neither as in force nor as its decision's executed copy, so the
next copy (re-derived, or another replica's) is executed, never confirmed in its place.
A callback that raises leaves the message to be read again: ``poll`` seeks back to it
before the exception propagates.

The state lives in SQLite (:mod:`~riskguard.connectors.subscriber_state`). An executed
command is committed *after* the callback returns, so a crash re-delivers at most the
command being executed (make the executor idempotent on ``command_id``). Rejections are
committed in batches (:data:`COMMIT_EVERY`, :data:`COMMIT_EVERY_S`); each carries a
machine-readable ``reason`` and its offset is consumed, so an unreadable message is
refused once. An unforeseen exception in the checks is a rejection too
(``verify_error``). Signatures of a batch are checked up front on ``verify_threads``
threads (Ed25519 releases the GIL); the other checks run one message at a time, in
order. A state behind its :class:`~riskguard.connectors.subscriber_state.HighWaterMark`
stops start-up (:class:`~riskguard.errors.StateError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.settings import KafkaSettings, as_settings
from riskguard.connectors.subscriber_state import (
    MAX_HOLDS,
    Copy,
    HighWaterMark,
    Mark,
    SubscriberState,
    content_key,
    params_key,
    state_behind,
)
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.observe import (
    observe_conflict,
    observe_duplicate,
    observe_gap,
    observe_rejection,
)
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Reason, decode_envelope
from riskguard.operators.signing.trust import DEFAULT_LEEWAY_NS, TrustStore
from riskguard.schemas.action_params import HELD_ACTIONS
from riskguard.schemas.commands import Action, Audience, MitigationCommand, SignedEnvelope
from riskguard.schemas.signals import ScopeKind

from riskguard.errors import (
    BrokerError,
    StateError,
    TrustError,
    VerificationError,
)

__all__ = ["DEFAULT_DECISION_WINDOW_S", "Alert", "CommandSubscriber",
           "DecisionConflict", "Duplicate", "GapAlert", "Outcome", "Rejection",
           "SubscriberState", "TrustBehind"]

_logger = logging.getLogger("riskguard.subscriber")

DEFAULT_DECISION_WINDOW_S = 3600.0
"""How long an executed decision is remembered, at least (and until its command expires);
past it the newest :data:`~riskguard.connectors.subscriber_state.DECISIONS_KEPT` stay."""
# the AckOutcome values of a command the executor did not apply
_NOT_APPLIED = frozenset({"refused", "failed"})
COMMIT_EVERY = 2048
"""Rejections committed in one transaction at most, while polling (one synced write)."""
COMMIT_EVERY_S = 0.5
"""... or after this long, whichever comes first."""
PRUNE_EVERY_S = 60.0
"""How often a long poll forgets the expired handled ids, as every poll does at its end."""
CHECK_AHEAD = 64
"""Messages decoded, and their signatures checked on the verify threads, at a time."""
NOT_A_REPLICA = "decision_not_replica"
TOO_MANY_HOLDS = "too_many_holds"


@dataclass(frozen=True)
class Rejection:
    """Why a message was not executed, and what it was: its first
    :data:`REJECTED_RAW_BYTES` bytes (``raw``), its whole length and SHA-256."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    issuer: str = ""
    command_id: str = ""
    seq: int = -1
    raw: bytes = field(default=b"", repr=False)  # a log line shows its length and digest
    raw_len: int = 0
    raw_sha256: str = ""


@dataclass(frozen=True)
class Duplicate:
    """Another replica's copy of a decision already executed: dropped, not refused.
    ``first_issuer`` and ``first_command_id`` name the copy that was executed."""

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
class DecisionConflict:
    """A command carrying the ``decision_id`` of an executed copy, but not that copy's
    content (action, scope, params) or not from a guard replica: never dropped as a
    duplicate of it. ``first`` describes the executed copy, ``got`` this one."""

    decision_id: str
    issuer: str
    command_id: str
    got: str
    first_issuer: str
    first_command_id: str
    first: str
    partition: int
    offset: int


@dataclass(frozen=True)
class GapAlert:
    """``seq`` jumped: commands between ``expected`` and ``got - 1`` were not seen."""

    issuer: str
    expected: int
    got: int
    partition: int
    offset: int


@dataclass(frozen=True)
class TrustBehind:
    """A verified command states it was signed under trust file serial ``signed_under``,
    newer than this subscriber's ``ours``: keys revoked since are still trusted here, so
    the trust file wants updating. Alerted once per newer serial each signer states (one
    signer stating a far newer one silences no other's); the command is not refused for
    it (a forger states whatever serial it likes)."""

    issuer: str
    command_id: str
    signed_under: int
    ours: int


Alert: TypeAlias = "GapAlert | TrustBehind"
Outcome: TypeAlias = MitigationCommand | Rejection | Duplicate


REJECTED_RAW_BYTES = 4096
"""How much of a refused message its :class:`Rejection` carries (base64 in the log)."""


def _fields(rej: Rejection) -> dict[str, Any]:
    """``asdict(rej)``, without its deep copy of every field (a flood's hot path)."""
    return {"reason": rej.reason, "detail": rej.detail, "topic": rej.topic,
            "partition": rej.partition, "offset": rej.offset, "issuer": rej.issuer,
            "command_id": rej.command_id, "seq": rej.seq, "raw": rej.raw,
            "raw_len": rej.raw_len, "raw_sha256": rej.raw_sha256}


def lifts_firm_halt(cmd: MitigationCommand) -> bool:
    """Whether ``cmd`` is a resume that would lift a firm-wide ``halt_trading`` (its
    ``actions`` name it, or name nothing: all). The guard never resumes one by itself,
    and no one person may: it needs two approvers."""
    if cmd.action is not Action.RESUME or cmd.scope.kind is not ScopeKind.FIRM:
        return False
    wanted = cmd.params.get("actions")
    return not wanted or (isinstance(wanted, list) and "halt_trading" in wanted)


def _holds(cmd: MitigationCommand, outcome: str, result: Any) -> bool:
    """Whether an applied ``cmd`` is in force by itself. An ``already_applied`` naming
    another command in ``settles`` is answered by that one's hold (at least as strict):
    that one holds, not it. One naming none is ``cmd`` itself applied before (redelivered
    after its ack or commit was lost): it holds as it did."""
    if outcome != "already_applied":
        return True
    return str(getattr(result, "settles", "") or "") in ("", cmd.command_id)


def _describe(content: bytes) -> str:
    action, scope, params = msgspec.json.decode(content)
    return f"{action} on {scope}" + (f" {params}" if params else "")


class CommandSubscriber:
    """Consume, verify, de-duplicate and hand over signed mitigation commands.

    ``high_water`` names the high-water mark file (default ``<state_path>.hwm``; keep it
    on another volume than the state where you can). A state behind it (deleted, or
    restored from an older copy) stops start-up with :class:`~riskguard.errors.StateError`
    unless ``accept_state_loss``: then the state takes the mark's seqs and trust serial,
    so nothing executed before runs again, and nothing older than the commands'
    lifetime can (freshness refuses it).
    """

    def __init__(
        self,
        *,
        trust: TrustStore,
        audience: Audience,
        state_path: str | Path,
        on_command: Callable[[MitigationCommand], Any],
        on_reject: Callable[[Rejection], None] | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        brokers: str | KafkaSettings = "",
        topic: str = "",
        rejections_topic: str | None = None,
        rejection_log: str | Path | None = None,
        leeway_ns: int = DEFAULT_LEEWAY_NS,
        clock: Clock = system_clock,
        dedupe_in_force: bool = True,
        on_duplicate: Callable[[Duplicate], None] | None = None,
        decision_window_s: float = DEFAULT_DECISION_WINDOW_S,
        on_settled: Callable[[MitigationCommand, str, str], None] | None = None,
        on_conflict: Callable[[DecisionConflict], None] | None = None,
        high_water: str | Path | None = None,
        accept_state_loss: bool = False,
        verify_threads: int | None = None,
    ) -> None:
        self.on_settled = on_settled
        self.on_conflict = on_conflict
        self.dedupe_in_force = dedupe_in_force
        self.on_duplicate = on_duplicate
        self.decision_window_ns = int(decision_window_s * 1_000_000_000)
        self.trust = trust
        self.replicas = trust.doc.replica_issuers()
        self.audience = audience
        self.on_command = on_command
        self.on_reject = on_reject
        self.on_alert = on_alert
        self.brokers = brokers
        self.topic = topic or audience.topic
        self.rejections_topic = rejections_topic
        self.rejection_log = Path(rejection_log) if rejection_log else None
        self._log_fh: Any = None
        self.leeway_ns = leeway_ns
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self._unobserved: Counter[str] = Counter()  # rejections not yet in the metrics
        self.state = SubscriberState(state_path)
        self.mark = HighWaterMark(high_water or f"{state_path}.hwm")
        try:
            self._anchor(accept_state_loss)
        except BaseException:
            self.state.close()
            raise
        self._batching = False
        # the newest serial each signer's commands stated, once alerted: what one signer
        # states never silences another's alert (keyed by trust-file names only)
        self._trust_alerted: dict[str, int] = {}
        self.verify_threads = verify_threads or usable_cores()
        self._pool = (ThreadPoolExecutor(self.verify_threads, thread_name_prefix="verify")
                      if self.verify_threads > 1 else None)
        self._consumer: Any = None
        self._producer: Any = None

    def _anchor(self, accept_state_loss: bool) -> None:
        """Check the state against the high-water mark and the trust file's serial."""
        mark = self.mark.load()
        if mark is not None:
            behind = state_behind(mark, self.state.high_waters(), self.state.trust_serial())
            if behind is not None and not accept_state_loss:
                msg = (f"subscriber state {self.state.path} is behind its high-water mark "
                       f"{self.mark.path}: {behind} (the state was lost or restored from an "
                       "older copy, and would execute again what it executed); restore the "
                       "latest state, or start with --accept-state-loss (accept_state_loss"
                       "=True): nothing at or below the mark, and nothing older than the "
                       "commands' lifetime, is executed again")
                raise StateError(msg)
            if behind is not None:
                self.stats["state_loss_accepted"] += 1
                for issuer, seq in mark.seq.items():
                    self.state.raise_seq(issuer, seq)
                self.state.set_trust_serial(mark.trust_serial)
        old = self.state.trust_serial()
        if old is not None and self.trust.serial < old:
            msg = (f"trust file serial {self.trust.serial} is older than serial {old} already "
                   "accepted by this subscriber (rollback refused): load the newer trust file, "
                   f"or, to go back to this one's keys, give it serial {old + 1} or more and "
                   "have the roots sign it again")
            raise TrustError(msg)
        self.state.set_trust_serial(self.trust.serial)
        self.state.flush()
        self._save_mark()

    def _save_mark(self) -> None:
        self.mark.save(Mark(seq=self.state.high_waters(),
                            trust_serial=self.state.trust_serial() or 0))

    def flush(self) -> None:
        """Commit what was handled (one synced write), then raise the high-water mark."""
        if self.state.flush():
            self._save_mark()
        if self._log_fh is not None:
            self._log_fh.flush()
        for reason, n in self._unobserved.items():  # counted per batch, not per message
            observe_rejection(reason, n)
        self._unobserved.clear()

    # -- one message ---------------------------------------------------------

    def handle(self, data: bytes, *, partition: int = -1, offset: int = -1) -> Outcome:
        """Verify and (maybe) execute one message; returns the command or the rejection.

        Called directly (not from :meth:`poll`), every outcome is committed before it
        returns."""
        try:
            return self._handle(data, partition, offset)
        finally:
            if not self._batching:
                self.flush()

    def _handle(self, data: bytes, partition: int, offset: int,
                decoded: SignedEnvelope | Exception | None = None) -> Outcome:
        now = self.clock()
        try:
            if decoded is None:
                decoded = _decoded(data)
            if isinstance(decoded, Exception):
                raise decoded
            verified = self.trust.verify(decoded, expected_payload_type=PAYLOAD_COMMAND,
                                         audience=self.audience, now_ns=now,
                                         leeway_ns=self.leeway_ns)
        except VerificationError as err:
            claimed = err.message if isinstance(err.message, MitigationCommand) else None
            return self._reject(err.reason, err.detail, partition, offset, claimed, data=data)
        except Exception as err:  # a check failing unforeseen refuses; the offset moves on
            return self._reject("verify_error", f"{type(err).__name__}: {err}", partition, offset,
                                data=data)
        cmd = verified.message
        assert isinstance(cmd, MitigationCommand)  # PAYLOAD_COMMAND decodes to a command
        if lifts_firm_halt(cmd) and len(verified.approvers) < 2:
            return self._reject(Reason.TWO_PERSON_REQUIRED.value,
                                "a resume of the firm-wide halt_trading needs two people, "
                                f"whatever the trust file's [two_person]; got "
                                f"{', '.join(verified.approvers) or 'none'}",
                                partition, offset, cmd, data=data)
        hw = self.state.high_water(cmd.issuer)
        if hw is not None and cmd.seq <= hw:
            return self._reject(Reason.REPLAYED_SEQ.value,
                                f"seq {cmd.seq} <= high-water {hw} of {cmd.issuer!r}",
                                partition, offset, cmd, data=data)
        if cmd.decision_id:
            found = self._decision(cmd, partition, offset, data)
            if found is not None:
                return found
        if self.state.seen(cmd.issuer, cmd.command_id):
            # re-derived under a new seq: the seq is used up; the id was answered already
            return self._reject(Reason.REPLAYED_COMMAND_ID.value,
                                f"command_id {cmd.command_id!r} of {cmd.issuer!r} already "
                                "handled",
                                partition, offset, cmd, record=True, data=data)
        self._check_gap(cmd, hw, partition, offset)
        if cmd.trust_serial > max(self.trust.serial, self._trust_alerted.get(cmd.issuer, 0)):
            self._trust_behind(cmd)
        in_force = self._in_force(cmd, partition, offset, data)
        if in_force is not None:
            return in_force
        if self._holds_full(cmd):
            return self._reject(TOO_MANY_HOLDS,
                                f"{MAX_HOLDS} commands of {cmd.issuer!r} already hold "
                                f"{cmd.action.value} on {cmd.scope.label()}; a resume "
                                "naming one makes room",
                                partition, offset, cmd, record=True, data=data)
        return self._execute(cmd, now, partition, offset)

    def _in_force(self, cmd: MitigationCommand, partition: int, offset: int,
                  data: bytes) -> Outcome | None:
        """The refusal of a command whose hold is in force already (executing it again
        would act twice), or None."""
        if not self.dedupe_in_force or cmd.action.value not in HELD_ACTIONS:
            return None
        holder = self.state.in_force(cmd.action.value, cmd.scope.label(),
                                     params_key(cmd), self.party(cmd.issuer))
        if holder is None:
            return None
        self._settled(cmd, "already_in_force", holder)
        rej = self._reject("already_in_force",
                           f"{cmd.action.value} on {cmd.scope.label()} is in force "
                           f"since command {holder}", partition, offset, cmd, record=True,
                           data=data)
        self.flush()  # its ack is out
        return rej

    def party(self, issuer: str) -> frozenset[str]:
        """The signers whose hold in force answers ``issuer``'s command: the guard's
        replicas for one of them, else ``issuer`` alone. Another signer's hold never
        does: a resume lifting it by name would leave this command's hold lifted too."""
        return self.replicas if issuer in self.replicas else frozenset({issuer})

    def _holds_full(self, cmd: MitigationCommand) -> bool:
        """Whether ``cmd`` would hold its action on its scope beside ``MAX_HOLDS`` others
        of its signer's (refused: no hold in force is forgotten to make room). Only its
        own party's count: another key's holds never use up the guard's room."""
        action = cmd.action.value
        return (action in HELD_ACTIONS and self.state.holds_beside(
            action, cmd.scope.label(), cmd.command_id, self.party(cmd.issuer),
            issuer=cmd.issuer) >= MAX_HOLDS)

    def _execute(self, cmd: MitigationCommand, now: int, partition: int,
                 offset: int) -> MitigationCommand:
        result = self.on_command(cmd)
        outcome = str(getattr(result, "outcome", "applied"))
        applied = outcome not in _NOT_APPLIED
        if not applied:
            self.stats["not_applied"] += 1
        self.state.record(topic=self.topic, partition=partition, offset=offset, cmd=cmd,
                          executed=applied, holds=_holds(cmd, outcome, result),
                          keep_decision_until=now + self.decision_window_ns)
        self.flush()  # executed: committed before the next message, with what came before
        self.stats["accepted"] += 1
        return cmd

    def _check_gap(self, cmd: MitigationCommand, hw: int | None, partition: int,
                   offset: int) -> None:
        expected = (hw or 0) + 1
        if cmd.seq > expected:
            self.stats["gaps"] += 1
            alert = GapAlert(issuer=cmd.issuer, expected=expected, got=cmd.seq,
                             partition=partition, offset=offset)
            observe_gap(alert)
            if self.on_alert is not None:
                self.on_alert(alert)

    def _trust_behind(self, cmd: MitigationCommand) -> None:
        self._trust_alerted[cmd.issuer] = cmd.trust_serial
        self.stats["trust_behind"] += 1
        alert = TrustBehind(issuer=cmd.issuer, command_id=cmd.command_id,
                            signed_under=cmd.trust_serial, ours=self.trust.serial)
        _logger.warning("command %s of %s was signed under trust file serial %d; this "
                     "subscriber's is %d: update its trust file", cmd.command_id, cmd.issuer,
                     cmd.trust_serial, self.trust.serial)
        if self.on_alert is not None:
            self.on_alert(alert)

    def _decision(self, cmd: MitigationCommand, partition: int, offset: int,
                  data: bytes) -> Outcome | None:
        """A duplicate of an executed copy, a refusal (not from a replica), or None: the
        command is checked and executed on its own (after a conflict alert if its id was
        executed with other content)."""
        copies = self.state.copies(cmd.decision_id or "")
        content = content_key(cmd)
        from_replica = cmd.issuer in self.replicas
        same = next((c for c in copies if c.content == content and c.issuer in self.replicas),
                    None)
        if same is not None and from_replica:
            return self._duplicate(cmd, same, partition, offset)
        if copies:
            self._conflict(cmd, copies[0], content, partition, offset)
        if not from_replica:
            return self._reject(NOT_A_REPLICA,
                                f"decision_id {cmd.decision_id!r} from {cmd.issuer!r}, which "
                                "is not a guard replica named in the trust file "
                                f"({', '.join(sorted(self.replicas)) or 'none'})",
                                partition, offset, cmd, record=True, data=data)
        return None

    def _conflict(self, cmd: MitigationCommand, first: Copy, content: bytes,
                  partition: int, offset: int) -> None:
        c = DecisionConflict(decision_id=cmd.decision_id or "", issuer=cmd.issuer,
                             command_id=cmd.command_id, got=_describe(content),
                             first_issuer=first.issuer, first_command_id=first.command_id,
                             first=_describe(first.content), partition=partition,
                             offset=offset)
        self.stats["conflicts"] += 1
        observe_conflict(c)
        if self.on_conflict is not None:
            self.on_conflict(c)
        self._log({"outcome": "conflict", "topic": self.topic, **asdict(c)}, c.issuer)

    def _duplicate(self, cmd: MitigationCommand, first: Copy, partition: int,
                   offset: int) -> Duplicate:
        """Drop another replica's copy of an executed decision; its seq and id count as
        seen."""
        dup = Duplicate(decision_id=cmd.decision_id or "", topic=self.topic,
                        partition=partition, offset=offset, issuer=cmd.issuer,
                        command_id=cmd.command_id, seq=cmd.seq, first_issuer=first.issuer,
                        first_command_id=first.command_id)
        self.stats["duplicates"] += 1
        observe_duplicate(dup)
        self._settled(cmd, dup.reason, first.command_id)
        if self.on_duplicate is not None:
            self.on_duplicate(dup)
        self._log({"outcome": "duplicate", **asdict(dup)}, dup.issuer)
        self.state.record(topic=self.topic, partition=partition, offset=offset, cmd=cmd,
                          executed=False)
        self.flush()  # its ack is out
        return dup

    def _settled(self, cmd: MitigationCommand, reason: str, settles: str) -> None:
        if self.on_settled is not None:
            self.on_settled(cmd, reason, settles)

    def _log(self, entry: dict[str, Any], issuer: str) -> None:
        """One line to the rejection log and the rejections topic, where they are set."""
        line = msgspec.json.encode(entry)
        if self.rejection_log is not None:
            if self._log_fh is None:
                self._log_fh = self.rejection_log.open("ab")
            self._log_fh.write(line + b"\n")
        if self._producer is not None and self.rejections_topic:
            self._producer.produce(self.rejections_topic, line, issuer.encode() or None)

    def _reject(self, reason: str, detail: str, partition: int, offset: int,
                cmd: MitigationCommand | None = None, *, record: bool = False,
                data: bytes = b"") -> Rejection:
        """Refuse ``cmd`` (message ``data``); with ``record`` its seq and id still count as
        seen (a no-op)."""
        rej = Rejection(
            reason=reason, detail=detail[:500], topic=self.topic, partition=partition,
            offset=offset, issuer=cmd.issuer if cmd else "",
            command_id=cmd.command_id if cmd else "", seq=cmd.seq if cmd else -1,
            raw=bytes(data[:REJECTED_RAW_BYTES]), raw_len=len(data),
            raw_sha256=hashlib.sha256(data).hexdigest(),
        )
        self.stats["rejected"] += 1
        self.stats[f"rejected.{reason}"] += 1
        self._unobserved[reason] += 1
        if self.on_reject is not None:
            self.on_reject(rej)
        if self.rejection_log is not None or self._producer is not None:
            self._log(_fields(rej), rej.issuer)
        self.state.record(topic=self.topic, partition=partition, offset=offset,
                          cmd=cmd if record else None, executed=False)
        return rej

    # -- Kafka -----------------------------------------------------------------

    def connect(self) -> None:
        """Join the topic at the stored offsets (``poll`` does it when not done yet)."""
        if not self.brokers:
            raise BrokerError("subscriber: no brokers configured")
        settings = as_settings(self.brokers)  # a KafkaSettings carries TLS and SASL
        conf: dict[str, Any] = settings.client_config()
        where = settings.bootstrap
        try:
            md = AdminClient(conf).list_topics(timeout=10)
        except Exception as err:
            msg = f"subscriber: cannot reach Kafka at {where}: {err}"
            raise BrokerError(msg) from err
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            msg = f"subscriber: topic {self.topic!r} does not exist at {where}"
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
            rej = md.topics.get(self.rejections_topic)
            if rej is None or rej.error is not None:  # producing to it would create it
                msg = (f"subscriber: rejections topic {self.rejections_topic!r} does not "
                       f"exist at {where}; create it (riskguard topics create) or "
                       "check --rejections-topic")
                raise BrokerError(msg)
            self._producer = CheckedProducer(
                settings, what=f"subscriber rejections to {self.rejections_topic}",
                delivery_timeout_s=5, errors_only=True)

    def poll(self, *, max_messages: int | None = None, idle_timeout_s: float = 2.0,
             poll_timeout_s: float = 0.2) -> int:
        """Consume until ``max_messages`` handled or nothing arrives for ``idle_timeout_s``;
        returns how many messages were handled (accepted or rejected)."""
        if self._consumer is None:
            self.connect()
        handled = 0
        idle_since = pruned_at = time.monotonic()
        self._batching = True
        try:
            while max_messages is None or handled < max_messages:
                want = 512 if max_messages is None else min(512, max_messages - handled)
                msgs = self._consumer.consume(want, poll_timeout_s)
                if time.monotonic() - pruned_at >= PRUNE_EVERY_S:  # a session of days
                    self._prune()
                    pruned_at = time.monotonic()
                if not msgs:
                    if time.monotonic() - idle_since >= idle_timeout_s:
                        break
                    self.flush()
                    continue
                idle_since = time.monotonic()
                handled += self._handle_batch(msgs)
        finally:
            self._batching = False
            self.flush()
        self._flush_rejections()
        self._prune()
        return handled

    def _prune(self) -> None:
        """Forget the handled ids and decision copies expired an hour past the leeway."""
        self.state.prune(self.clock() - self.leeway_ns - 3600 * 1_000_000_000)
        self.flush()

    def _handle_batch(self, msgs: list[Any]) -> int:
        """Handle consumed messages in order; on an exception, seek every partition back
        to its first message not handled (read again, never skipped) and raise."""
        handled = 0
        since = time.monotonic()
        decoded: list[SignedEnvelope | Exception | None] = []
        pool = self._pool
        for i, msg in enumerate(msgs):
            if i % CHECK_AHEAD == 0:  # a few at a time: the decoded are not held long
                ahead = msgs[i:i + CHECK_AHEAD]
                decoded = (self._check_signatures_ahead(ahead, pool)
                           if pool is not None and len(ahead) > 1 else [None] * len(ahead))
            if msg.error() is not None:
                self.stats["consumer_errors"] += 1
                continue
            try:
                self._handle(msg.value() or b"", msg.partition(), msg.offset(),
                             decoded[i % CHECK_AHEAD])
            except BaseException:
                self._seek_back(msgs[i:])
                raise
            handled += 1
            if handled % COMMIT_EVERY == 0 or time.monotonic() - since >= COMMIT_EVERY_S:
                self.flush()
                since = time.monotonic()
        return handled

    def _check_signatures_ahead(self, msgs: list[Any], pool: ThreadPoolExecutor
                                ) -> list[SignedEnvelope | Exception | None]:
        """Each message that may be an envelope decoded (or why not), once; the
        commands' signatures checked. The rest are decoded when handled."""
        decoded: list[SignedEnvelope | Exception | None] = []
        envelopes = []
        for msg in msgs:
            data = msg.value() if msg.error() is None else None
            env = _decoded(data) if data and b'"signatures"' in data else None
            decoded.append(env)
            if isinstance(env, SignedEnvelope) and env.payload_type == PAYLOAD_COMMAND:
                envelopes.append((env.payload, env.signatures))
        if envelopes:
            self.trust.check_ahead(PAYLOAD_COMMAND, envelopes, pool, self.verify_threads)
        return decoded

    def _seek_back(self, unhandled: list[Any]) -> None:
        self.flush()  # what was handled before stays handled
        first: dict[int, int] = {}
        for m in unhandled:
            if m.error() is None and m.partition() not in first:
                first[m.partition()] = m.offset()
        for part, off in first.items():
            self._consumer.seek(TopicPartition(self.topic, part, off))

    def _flush_rejections(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def summary(self) -> dict[str, int]:
        """Counters: accepted, rejected, rejected.<reason>, duplicates, conflicts, gaps,
        consumer_errors."""
        return dict(sorted(self.stats.items()))

    def close(self) -> None:
        """Close the consumer, flush the rejections and close the state and log files;
        a rejection that Kafka refused raises after everything is closed."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        try:
            self._flush_rejections()
        finally:
            self._producer = None
            self.flush()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            self.state.close()

    def __enter__(self) -> CommandSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset
    narrows), else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _decoded(data: bytes) -> SignedEnvelope | Exception:
    """The envelope, or what refuses it (raised when the message is handled)."""
    try:
        return decode_envelope(data)
    except Exception as err:  # a refusal with its reason, or one unforeseen (verify_error)
        return err.with_traceback(None)  # held until handled: not its frames
