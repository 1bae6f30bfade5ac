"""The subscriber's state is anchored: a state lost or rolled back is noticed at start,
and rejections are committed in batches (a flood costs a few synced writes, not one a
message), with the real broker."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from riskguard.connectors.subscriber import CommandSubscriber
from riskguard.connectors.subscriber_state import HighWaterMark
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope, sign_envelope
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind
from signing_fixtures import ENGINE2, OUTSIDER, T0, S, command, trust_store, trust_text

from riskguard.errors import StateError, TrustError

OKX = Scope(kind=ScopeKind.VENUE, value="okx")
# what runs again if a lost state re-reads the topic: each must run once (engine-2 may
# sign any action on a venue)
ACTS = (Action.CANCEL_ALL, Action.HALT_TRADING, Action.PAUSE_WITHDRAWALS, Action.RESUME)
PARAMS: dict[Action, dict[str, object]] = {}


def _signed(cmd: MitigationCommand) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [ENGINE2]))


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    for v in values:
        p.produce(topic, value=v)
        p.poll(0)
    assert p.flush(60) == 0


def _commands(aud: Audience, first: int, n: int) -> list[MitigationCommand]:
    return [command(i, issuer="engine-2", seq=i, action=ACTS[i % len(ACTS)], scope=OKX,
                    audience=aud, params=PARAMS.get(ACTS[i % len(ACTS)], {}), ttl=600 * S)
            for i in range(first, first + n)]


class Run:
    """One subscriber over the topic, with what it executed."""

    def __init__(self, tmp: Path, bootstrap: str, topic: str, executed: list[str], *,
                 accept: bool = False, trust: TrustStore | None = None,
                 verify_threads: int | None = None) -> None:
        self.sub = CommandSubscriber(
            trust=trust or trust_store(), audience=Audience(env="prod", topic=topic),
            state_path=tmp / "state" / "sub.sqlite", high_water=tmp / "mark.hwm",
            on_command=lambda c: executed.append(c.command_id), brokers=bootstrap,
            topic=topic, clock=ManualClock(T0 + S), accept_state_loss=accept,
            verify_threads=verify_threads)

    def drain(self) -> dict[str, int]:
        self.sub.poll(idle_timeout_s=2)
        out = self.sub.summary()
        self.sub.close()
        return out


@pytest.fixture
def topic(new_topic: Callable[..., str]) -> str:
    return new_topic(partitions=1)


@pytest.mark.kafka
def test_a_deleted_state_is_noticed_and_accepting_the_loss_executes_nothing_again(
        tmp_path: Path, kafka_bootstrap: str, topic: str) -> None:
    (tmp_path / "state").mkdir()
    aud = Audience(env="prod", topic=topic)
    _produce(kafka_bootstrap, topic, [_signed(c) for c in _commands(aud, 1, 8)])
    executed: list[str] = []
    Run(tmp_path, kafka_bootstrap, topic, executed).drain()
    assert len(executed) == 8
    shutil.rmtree(tmp_path / "state")
    (tmp_path / "state").mkdir()
    with pytest.raises(StateError, match=r"behind its high-water mark .*engine-2' executed "
                                         r"up to seq 8, the state knows none.*"
                                         r"--accept-state-loss"):
        Run(tmp_path, kafka_bootstrap, topic, executed)
    _produce(kafka_bootstrap, topic, [_signed(c) for c in _commands(aud, 9, 2)])
    summary = Run(tmp_path, kafka_bootstrap, topic, executed, accept=True).drain()
    assert len(executed) == len(set(executed)) == 10  # the two new ones, none again
    assert summary["rejected.replayed_seq"] == 8 and summary["state_loss_accepted"] == 1


@pytest.mark.kafka
def test_a_state_restored_from_an_older_copy_is_noticed(
        tmp_path: Path, kafka_bootstrap: str, topic: str) -> None:
    (tmp_path / "state").mkdir()
    aud = Audience(env="prod", topic=topic)
    _produce(kafka_bootstrap, topic, [_signed(c) for c in _commands(aud, 1, 4)])
    executed: list[str] = []
    Run(tmp_path, kafka_bootstrap, topic, executed).drain()
    shutil.copytree(tmp_path / "state", tmp_path / "old")
    _produce(kafka_bootstrap, topic, [_signed(c) for c in _commands(aud, 5, 4)])
    Run(tmp_path, kafka_bootstrap, topic, executed).drain()
    assert len(executed) == 8
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(tmp_path / "old", tmp_path / "state")
    with pytest.raises(StateError, match="executed up to seq 8, the state knows seq 4"):
        Run(tmp_path, kafka_bootstrap, topic, executed)
    Run(tmp_path, kafka_bootstrap, topic, executed, accept=True).drain()
    assert len(executed) == len(set(executed)) == 8


def test_the_trust_serial_floor_survives_a_lost_state(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    newer = TrustStore(parse_trust(trust_text(serial=5)))
    Run(tmp_path, "", "t", [], trust=newer).sub.close()
    shutil.rmtree(tmp_path / "state")
    (tmp_path / "state").mkdir()
    with pytest.raises(StateError, match="trust serial 5 was accepted"):
        Run(tmp_path, "", "t", [], trust=trust_store())
    with pytest.raises(TrustError, match="rollback refused"):
        Run(tmp_path, "", "t", [], trust=trust_store(), accept=True)


def test_an_unreadable_high_water_mark_stops_start_up_naming_it(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "mark.hwm").write_text("{not json")
    with pytest.raises(Exception, match=r"mark\.hwm: a high-water mark written by riskguard"):
        Run(tmp_path, "", "t", [])


def test_the_mark_follows_the_state_after_each_executed_command(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    run = Run(tmp_path, "", "t", [])
    for c in _commands(Audience(env="prod", topic="t"), 1, 3):
        run.sub.handle(_signed(c), partition=0, offset=c.seq)
    mark = HighWaterMark(tmp_path / "mark.hwm").load()
    assert mark is not None and mark.seq == {"engine-2": 3} and mark.trust_serial == 1
    run.sub.close()


@pytest.mark.kafka
def test_a_flood_of_garbage_is_committed_in_batches_and_a_command_behind_it_executes(
        tmp_path: Path, kafka_bootstrap: str, topic: str) -> None:
    """20,000 garbage messages then a genuine command: every message refused once, a few
    synced commits for all of them, and the command executed."""
    (tmp_path / "state").mkdir()
    aud = Audience(env="prod", topic=topic)
    garbage = [b"not a command %d" % i for i in range(10_000)]
    garbage += [b'{"payload_type":"x","payload":"","signatures":[]}'] * 10_000
    (genuine,) = _commands(aud, 1, 1)
    _produce(kafka_bootstrap, topic, [*garbage, _signed(genuine)])
    executed: list[str] = []
    run = Run(tmp_path, kafka_bootstrap, topic, executed)
    summary = run.drain()
    assert executed == [genuine.command_id]
    assert summary["rejected"] == 20_000
    assert run.sub.state.commits < 100
    again = Run(tmp_path, kafka_bootstrap, topic, executed).drain()
    assert again == {}  # every offset was committed: nothing is read twice


@pytest.mark.kafka
def test_forgeries_checked_on_threads_are_refused_as_one_thread_refuses_them(
        tmp_path: Path, kafka_bootstrap: str, topic: str) -> None:
    """Forged envelopes under a trusted key, between genuine commands: checked in batches
    on two threads, every outcome is the one-thread outcome, in order."""
    aud = Audience(env="prod", topic=topic)
    values = []
    for c in _commands(aud, 1, 6):
        env = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(c), [ENGINE2])
        forged = msgspec.structs.replace(env, payload=env.payload.replace(b'"okx"', b'"bybit"'))
        stranger = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(c), [OUTSIDER])
        values += [b"garbage", encode_envelope(stranger), encode_envelope(forged),
                   encode_envelope(env)]
    _produce(kafka_bootstrap, topic, values)
    outcomes = {}
    for threads in (1, 2):
        (tmp_path / str(threads) / "state").mkdir(parents=True)
        executed: list[str] = []
        run = Run(tmp_path / str(threads), kafka_bootstrap, topic, executed,
                  verify_threads=threads)
        outcomes[threads] = (run.drain(), executed)
    assert outcomes[1] == outcomes[2]
    summary, executed = outcomes[2]
    assert summary["rejected.bad_signature"] == 6 and len(executed) == 6
    assert summary["rejected.unknown_key"] == 6 and summary["rejected.malformed_envelope"] == 6


def test_no_command_reads_every_hold_in_force(tmp_path: Path) -> None:
    """What a hold, a repeat of it and a resume look up in the holds table is found by
    an index, whatever holds the other scopes keep: no statement scans the table, so a
    command's cost does not grow with the holds in force elsewhere."""
    from riskguard.connectors.subscriber_state import SubscriberState

    state = SubscriberState(tmp_path / "sub.sqlite")
    okx = Scope(kind=ScopeKind.VENUE, value="okx")
    statements: list[str] = []
    state.db.set_trace_callback(statements.append)
    halt = command(1, seq=1, scope=okx)
    state.in_force(halt.action.value, okx.label(), b"{}", {"engine-1"})
    state.holds_beside(halt.action.value, okx.label(), halt.command_id)
    state.record(topic="t", partition=0, offset=0, cmd=halt)
    state.record(topic="t", partition=0, offset=1, cmd=command(
        2, seq=2, action=Action.RESUME, scope=okx, params={"resumes": [halt.command_id]}))
    state.db.set_trace_callback(None)
    reads = [s for s in statements if "holds" in s and s.lstrip().startswith(("SELECT",
                                                                            "DELETE"))]
    assert reads
    plans = {s: " ".join(str(row[-1]) for row in state.db.execute(
        "EXPLAIN QUERY PLAN " + s)) for s in reads}
    assert not [s for s, plan in plans.items() if "SCAN holds" in plan], plans
    state.close()
