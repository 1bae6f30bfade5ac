"""An executor's memory of applied commands is bounded (ScopeBook.MAX_REMEMBERED, and
MAX_SAVED across a restart); what it forgot is never executed again, because the
verifying subscriber in front of it refuses every message it handled before by the
issuer's ``seq`` high-water mark, which is never forgotten. Real subscriber, real
signed commands (its in-process ``handle``), an executor on a real ScopeBook."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from riskguard.connectors.subscriber import CommandSubscriber, Rejection
from riskguard.executors import ScopeBook
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope, sign_envelope
from riskguard.schemas.commands import Action, MitigationCommand
from signing_fixtures import ENGINE, T0, VENUE_X, S, command, trust_store

TTL = 600 * S


class SmallBook(ScopeBook):
    """A scope book that forgets after a few commands, as a full one does after 10,000."""

    MAX_REMEMBERED = 4
    MAX_SAVED = 2


@dataclass
class Outcome:
    outcome: str


class CountingExecutor:
    """Acts on ``cancel_all`` (an act, not a hold: nothing in force answers a repeat),
    answers a command its book remembers ``already_applied``, and counts each act."""

    def __init__(self, holds: Path) -> None:
        self.holds = holds
        self.book = SmallBook.load(holds)
        self.acts: list[str] = []

    def apply(self, cmd: MitigationCommand) -> Outcome:
        if self.book.recall(cmd.issuer, cmd.command_id) is not None:
            return Outcome("already_applied")
        self.acts.append(cmd.command_id)
        self.book.remember(cmd.issuer, cmd.command_id, {"change": "cancelled"})
        self.book.save(self.holds)
        return Outcome("applied")


class Desk:
    """A subscriber and the executor behind it, on state kept in ``tmp``."""

    def __init__(self, tmp: Path, clock: ManualClock, *, accept: bool = False) -> None:
        self.rejected: list[Rejection] = []
        self.executor = CountingExecutor(tmp / "holds.json")
        self.sub = CommandSubscriber(
            trust=trust_store(), audience=command().audience,
            state_path=tmp / "sub.sqlite", high_water=tmp / "sub.hwm",
            on_command=self.executor.apply, on_reject=self.rejected.append, clock=clock,
            accept_state_loss=accept)

    def send(self, data: list[bytes]) -> list[Any]:
        return [self.sub.handle(d, partition=0, offset=-1) for d in data]


def _cancel(n: int) -> MitigationCommand:
    return command(n, seq=n, action=Action.CANCEL_ALL, scope=VENUE_X, ttl=TTL)


def _signed(cmd: MitigationCommand) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [ENGINE]))


def _sent(count: int) -> list[bytes]:
    return [_signed(_cancel(n)) for n in range(1, count + 1)]


def test_a_command_the_executor_forgot_is_refused_when_delivered_again(tmp_path: Path) -> None:
    """Ten commands pass through; the executor remembers the last few only. Every one
    delivered again, within its lifetime, is refused by the subscriber (replayed_seq)
    before it reaches the executor: nothing acts twice."""
    clock = ManualClock(T0 + S)
    desk = Desk(tmp_path, clock)
    sent = _sent(10)
    desk.send(sent)
    assert len(desk.executor.acts) == 10
    assert desk.executor.book.recall("engine-1", desk.executor.acts[0]) is None  # forgotten
    again = desk.send(sent)
    assert all(isinstance(r, Rejection) and r.reason == "replayed_seq" for r in again)
    assert len(desk.executor.acts) == 10
    desk.sub.close()


def test_a_restarted_executor_and_subscriber_execute_nothing_twice(tmp_path: Path) -> None:
    """Across a restart the holds file keeps the newest MAX_SAVED commands; the
    subscriber's state keeps every issuer's seq, so the rest are still refused."""
    clock = ManualClock(T0 + S)
    desk = Desk(tmp_path, clock)
    sent = _sent(10)
    desk.send(sent)
    acts = list(desk.executor.acts)
    desk.sub.close()
    back = Desk(tmp_path, clock)
    assert len(back.executor.book.state.applied) == SmallBook.MAX_SAVED
    again = back.send(sent)
    assert {r.reason for r in again if isinstance(r, Rejection)} == {"replayed_seq"}
    assert len(again) == 10 and back.executor.acts == []
    assert acts == desk.executor.acts
    back.sub.close()


def test_a_lost_subscriber_state_accepted_as_lost_executes_nothing_twice(
    tmp_path: Path,
) -> None:
    """The subscriber's state deleted, its high-water mark kept: started with
    accept_state_loss, it takes the mark's seqs, and every command is refused again."""
    clock = ManualClock(T0 + S)
    desk = Desk(tmp_path, clock)
    sent = _sent(10)
    desk.send(sent)
    desk.sub.close()
    for f in tmp_path.glob("sub.sqlite*"):
        f.unlink()
    back = Desk(tmp_path, clock, accept=True)
    again = back.send(sent)
    assert [r.reason for r in again if isinstance(r, Rejection)] == ["replayed_seq"] * 10
    assert back.executor.acts == []
    back.sub.close()


def test_past_its_lifetime_a_forgotten_command_is_refused_as_expired_or_replayed(
    tmp_path: Path,
) -> None:
    """Once the handled ids are pruned (past the lifetime, the leeway and an hour), the
    seq mark still refuses a command delivered again, and freshness refuses it too."""
    clock = ManualClock(T0 + S)
    desk = Desk(tmp_path, clock)
    sent = _sent(10)
    desk.send(sent)
    clock.advance(TTL + 2 * 3600 * S)
    desk.sub.state.prune(clock() - 3600 * S)
    assert desk.sub.state.db.execute("SELECT count(*) FROM handled").fetchone()[0] == 0
    again = desk.send(sent)
    assert all(isinstance(r, Rejection) and r.reason in ("replayed_seq", "expired")
               for r in again)
    assert len(desk.executor.acts) == 10
    desk.sub.close()


def test_the_command_being_executed_at_a_crash_is_answered_by_the_executor(
    tmp_path: Path,
) -> None:
    """The one message the subscriber may deliver again is the one it was executing
    when it stopped (applied, not yet committed): the newest the executor remembers,
    kept in its holds file, so it is answered already_applied without acting."""
    clock = ManualClock(T0 + S)
    desk = Desk(tmp_path, clock)
    sent = _sent(10)
    desk.send(sent[:9])
    desk.executor.apply(_cancel(10))
    desk.sub.close()  # the tenth applied, the subscriber stopped before it recorded it
    back = Desk(tmp_path, clock)
    assert back.send(sent[9:]) and back.executor.acts == []
    assert back.sub.summary().get("accepted") == 1  # handed over, answered, not acted on
    back.sub.close()
