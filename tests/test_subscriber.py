"""The verifying subscriber: every check in order, durable replay state, real broker end to end."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.subscriber import (
    REJECTED_RAW_BYTES,
    CommandSubscriber,
    GapAlert,
    Rejection,
)
from riskguard.connectors.subscriber_state import SubscriberState
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing import SignConfig, SignLogic
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, encode_envelope, sign_envelope
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.schemas.commands import MitigationCommand
from signing_fixtures import (
    AUD,
    ENGINE,
    ENGINE2,
    FIRM,
    OP1,
    OP2,
    T0,
    VENUE_X,
    S,
    command,
    key_entries,
    trust_store,
    trust_text,
)

from riskguard.errors import TrustError


def env_bytes(cmd: MitigationCommand, signer=ENGINE) -> bytes:  # type: ignore[no-untyped-def]
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [signer]))


class Harness:
    def __init__(self, path: Path, clock: ManualClock | None = None,
                 trust: TrustStore | None = None, *, dedupe_in_force: bool = False) -> None:
        # The generic tests reuse one halt command shape; in-force dedup has its own tests.
        self.executed: list[MitigationCommand] = []
        self.rejected: list[Rejection] = []
        self.alerts: list[GapAlert] = []
        self.sub = CommandSubscriber(
            trust=trust or trust_store(), audience=AUD, state_path=path / "sub.sqlite",
            on_command=self.executed.append, on_reject=self.rejected.append,
            on_alert=self.alerts.append, clock=clock or ManualClock(T0),
            rejection_log=path / "rejections.jsonl", dedupe_in_force=dedupe_in_force,
        )


def test_valid_command_is_handed_over_typed_and_counted(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    cmd = command(1, seq=1)
    assert h.sub.handle(env_bytes(cmd), partition=0, offset=0) == cmd
    assert h.executed == [cmd]
    assert h.sub.summary() == {"accepted": 1}


def test_replayed_seq_is_a_no_op_with_reason_replayed_seq(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    data = env_bytes(command(1, seq=1))
    h.sub.handle(data)
    rej = h.sub.handle(data)
    assert isinstance(rej, Rejection)
    assert (rej.reason, rej.seq, rej.command_id) == ("replayed_seq", 1, command(1).command_id)
    assert len(h.executed) == 1


def test_replayed_command_id_under_a_new_seq_is_replayed_command_id(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.sub.handle(env_bytes(command(1, seq=1)))
    rej = h.sub.handle(env_bytes(command(1, seq=2)))
    assert isinstance(rej, Rejection)
    assert rej.reason == "replayed_command_id"
    assert len(h.executed) == 1


def test_a_rederived_command_uses_up_its_seq_so_the_next_one_is_no_gap(tmp_path: Path) -> None:
    """After a restart the signer re-sends an executed command under a new seq: it is
    refused as a replayed id, and the command after it continues the sequence."""
    h = Harness(tmp_path)
    h.sub.handle(env_bytes(command(1, seq=1)))
    h.sub.handle(env_bytes(command(1, seq=2)))
    assert h.sub.handle(env_bytes(command(2, seq=3))) == command(2, seq=3)
    assert h.alerts == []
    assert [c.seq for c in h.executed] == [1, 3]


def test_seq_jump_raises_a_gap_alert_and_still_executes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.sub.handle(env_bytes(command(1, seq=1)), partition=0, offset=0)
    h.sub.handle(env_bytes(command(2, seq=4)), partition=0, offset=1)
    assert h.alerts == [GapAlert(issuer="engine-1", expected=2, got=4, partition=0, offset=1)]
    assert len(h.executed) == 2
    assert h.sub.summary()["gaps"] == 1


def test_a_command_signed_under_a_newer_trust_file_is_alerted_once_and_executes(
        tmp_path: Path) -> None:
    """The guard signs under trust file serial N; a subscriber still on an older file
    (keys revoked since still trusted here) says so once per newer serial, and goes on:
    a forger states whatever serial it likes, so refusing would stop only honest ones."""
    from riskguard.connectors.subscriber import TrustBehind

    h = Harness(tmp_path)
    ours = h.sub.trust.serial
    for n in (1, 2):
        h.sub.handle(env_bytes(command(n, seq=n, trust_serial=ours + 1)))
    h.sub.handle(env_bytes(command(3, seq=3, trust_serial=ours)))
    assert h.alerts == [TrustBehind(issuer="engine-1", command_id=command(1).command_id,
                                    signed_under=ours + 1, ours=ours)]
    assert len(h.executed) == 3 and h.sub.summary()["trust_behind"] == 1


def test_a_key_stating_a_far_newer_trust_serial_does_not_silence_the_guard_s_alert(
        tmp_path: Path) -> None:
    """An operator's key states trust file serial 10**9 on its command: alerted. The
    guard's next command, signed under the real next serial, is alerted too: what one
    signer states never uses up another's alert (each signer is alerted once per newer
    serial it states)."""
    from riskguard.connectors.subscriber import TrustBehind

    h = Harness(tmp_path)
    ours = h.sub.trust.serial
    claim = command(1, issuer="op-alice", seq=1, trust_serial=10**9)
    guard = command(2, issuer="engine-1", seq=1, trust_serial=ours + 1)
    h.sub.handle(env_bytes(claim, OP1))
    h.sub.handle(env_bytes(guard, ENGINE))
    assert [a.issuer for a in h.alerts if isinstance(a, TrustBehind)] == [
        "op-alice", "engine-1"]
    assert h.alerts[-1] == TrustBehind(issuer="engine-1", command_id=guard.command_id,
                                       signed_under=ours + 1, ours=ours)


def test_rejections_have_reasons_are_counted_and_logged(tmp_path: Path) -> None:
    h = Harness(tmp_path, clock=ManualClock(T0 + 3600 * S))
    h.sub.handle(b"garbage", partition=0, offset=7)
    h.sub.handle(env_bytes(command(1)), partition=0, offset=8)
    assert [r.reason for r in h.rejected] == ["malformed_envelope", "expired"]
    assert h.sub.summary() == {"rejected": 2, "rejected.expired": 1,
                               "rejected.malformed_envelope": 1}
    lines = (tmp_path / "rejections.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(x)["reason"] for x in lines] == ["malformed_envelope", "expired"]
    # what was refused goes with the refusal: its bytes (cut to 4 KiB), length and SHA-256
    logged = msgspec.json.decode(lines[0])
    assert (base64.b64decode(logged["raw"]), logged["raw_len"]) == (b"garbage", 7)
    assert logged["raw_sha256"] == hashlib.sha256(b"garbage").hexdigest()
    big = h.sub.handle(b"x" * 100_000, partition=0, offset=9)
    assert isinstance(big, Rejection)
    assert (len(big.raw), big.raw_len) == (REJECTED_RAW_BYTES, 100_000)
    assert "xxx" not in repr(big) and "raw_len=100000" in repr(big)  # a log line's size


def test_unauthorized_and_wrong_audience_are_rejected_before_the_callback(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    from riskguard.schemas.commands import Action, Audience
    sent = [(command(1, action=Action.RESUME), ENGINE),
            (command(2, audience=Audience(env="dev", topic=AUD.topic)), ENGINE),
            (command(3, issuer="op-alice", action=Action.RESUME), OP1)]
    for cmd, signer in sent:
        h.sub.handle(env_bytes(cmd, signer))
    assert [r.reason for r in h.rejected] == [
        "action_not_authorized", "wrong_audience", "two_person_required"]
    # each names what the message claims: its issuer, id and seq
    assert [(r.issuer, r.command_id, r.seq) for r in h.rejected] == [
        (c.issuer, c.command_id, c.seq) for c, _ in sent]
    assert h.executed == []


def test_state_survives_a_restart_and_is_checked_even_when_old(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    # a trust file that lets commands live ten days
    trust = TrustStore(replace(parse_trust(trust_text()), default_max_ttl_ns=10 * 86_400 * S))
    h = Harness(tmp_path, clock, trust)
    data = env_bytes(command(1, seq=5, ttl=10 * 24 * 3600 * S))
    h.sub.handle(data, partition=0, offset=0)
    h.sub.close()
    clock.advance(5 * 24 * 3600 * S)  # five days later, the command is still unexpired
    h2 = Harness(tmp_path, clock, trust)
    rej = h2.sub.handle(data, partition=0, offset=0)
    assert isinstance(rej, Rejection) and rej.reason == "replayed_seq"
    assert h2.executed == []


def test_trust_file_rollback_to_an_older_serial_is_refused(tmp_path: Path) -> None:
    from signing_fixtures import trust_text
    Harness(tmp_path, trust=TrustStore(parse_trust(trust_text(serial=5)))).sub.close()
    with pytest.raises(TrustError, match=r"rollback refused.*give it serial 6 or more"):
        Harness(tmp_path, trust=TrustStore(parse_trust(trust_text(serial=4))))


def test_callback_failure_leaves_the_command_unexecuted_in_state(tmp_path: Path) -> None:
    calls: list[str] = []

    def flaky(cmd: MitigationCommand) -> None:
        calls.append(cmd.command_id)
        if len(calls) == 1:
            raise RuntimeError("executor down")

    sub = CommandSubscriber(trust=trust_store(), audience=AUD, state_path=tmp_path / "s.db",
                            on_command=flaky, clock=ManualClock(T0))
    data = env_bytes(command(1))
    with pytest.raises(RuntimeError):
        sub.handle(data)
    assert isinstance(sub.handle(data), MitigationCommand)
    assert len(calls) == 2


# -- real broker --------------------------------------------------------------


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for v in values:
        p.produce(topic, value=v, key=b"engine-1")
    assert p.flush(30) == 0


@pytest.mark.kafka
def test_end_to_end_sign_topic_subscriber_with_restart_executes_each_once(
    tmp_path: Path, kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Signing operator -> topic -> subscriber; restart midway; none twice, none lost."""
    topic = new_topic(partitions=1)
    rej_topic = new_topic(partitions=1)
    aud = AUD.__class__(env=AUD.env, topic=topic)
    cmds = [command(i, audience=aud, issued_at=T0) for i in range(1, 13)]

    try:
        from riskguard.connectors.kafka import kafka_output
        from riskguard.operators.signing.ops import sign_commands

        flow = Dataflow("e2e_sign")
        signed = sign_commands("sign", op.input("in", flow, TestingSource(cmds)), ENGINE)
        keyed = op.map("key", signed.oks, lambda e: ("engine-1", e))
        kafka_output("out", keyed, brokers=kafka_bootstrap, topic=topic)
        run_main(flow)
    except ImportError:  # pragma: no cover - the connector lands separately
        logic = SignLogic(ENGINE, SignConfig())
        _produce(kafka_bootstrap, topic, [encode_envelope(logic.on_event(c)[0]) for c in cmds])
    # a duplicate delivery of the first three envelopes (e.g. a producer retry upstream)
    dup = SignLogic(ENGINE, SignConfig())
    _produce(kafka_bootstrap, topic, [encode_envelope(dup.on_event(c)[0]) for c in cmds[:3]])

    executed: list[str] = []
    state = tmp_path / "sub.sqlite"

    def make(brokers: str | KafkaSettings) -> CommandSubscriber:
        return CommandSubscriber(trust=trust_store(), audience=aud, state_path=state,
                                 on_command=lambda c: executed.append(c.command_id),
                                 brokers=brokers, topic=topic,
                                 rejections_topic=rej_topic, clock=ManualClock(T0),
                                 dedupe_in_force=False)

    first = make(kafka_bootstrap)
    assert first.poll(max_messages=5, idle_timeout_s=10) == 5
    first.close()
    # full settings (what carries TLS and SASL) connect as an address does
    second = make(KafkaSettings(bootstrap=kafka_bootstrap, client_id="subscriber-test"))
    second.poll(idle_timeout_s=3)
    summary = second.summary()
    second.close()
    assert executed == [c.command_id for c in cmds]
    assert summary == {"accepted": 7, "rejected": 3, "rejected.replayed_seq": 3}


def test_a_mitigation_already_in_force_on_the_same_scope_is_a_no_op_until_resumed(
    tmp_path: Path,
) -> None:
    """A re-derived halt on a scope already halted is not executed again (reason
    already_in_force); after a resume lifts it, a new halt executes."""
    from riskguard.schemas import Action

    h = Harness(tmp_path, dedupe_in_force=True)
    h.sub.handle(env_bytes(command(1, seq=1, scope=VENUE_X)), partition=0, offset=0)
    h.sub.handle(env_bytes(command(2, seq=2, scope=VENUE_X)), partition=0, offset=1)
    h.sub.handle(env_bytes(command(3, seq=3, scope=FIRM)), partition=0, offset=2)
    assert [c.seq for c in h.executed] == [1, 3]
    assert [r.reason for r in h.rejected] == ["already_in_force"]
    resume = command(1, issuer="engine-2", seq=1, scope=VENUE_X, action=Action.RESUME,
                     params={"actions": ["halt_trading"]})
    h.sub.handle(env_bytes(resume, ENGINE2), partition=0, offset=3)
    h.sub.handle(env_bytes(command(5, seq=4, scope=VENUE_X)), partition=0, offset=4)
    assert [r.reason for r in h.rejected] == ["already_in_force"], h.rejected
    assert [(c.issuer, c.seq) for c in h.executed] == [
        ("engine-1", 1), ("engine-1", 3), ("engine-2", 1), ("engine-1", 4)]


def test_in_force_state_survives_a_subscriber_restart(tmp_path: Path) -> None:
    """The in-force table is durable: a new subscriber on the same state file still
    refuses to act twice."""
    h = Harness(tmp_path, dedupe_in_force=True)
    h.sub.handle(env_bytes(command(1, seq=1, scope=VENUE_X)), partition=0, offset=0)
    h.sub.close()
    h2 = Harness(tmp_path, dedupe_in_force=True)
    h2.sub.handle(env_bytes(command(2, seq=2, scope=VENUE_X)), partition=0, offset=1)
    assert h2.executed == [] and [r.reason for r in h2.rejected] == ["already_in_force"]


def test_the_same_action_with_new_params_is_an_update_and_executes(tmp_path: Path) -> None:
    """Quotes widened further are not a repeat: the update executes; the same width
    again is in force already."""
    from riskguard.schemas import Action

    h = Harness(tmp_path, dedupe_in_force=True)
    first = command(1, issuer="engine-2", seq=1, scope=VENUE_X,
                    action=Action.WIDEN_QUOTES, params={"bps": 25.0})
    narrowed = command(2, issuer="engine-2", seq=2, scope=VENUE_X,
                       action=Action.WIDEN_QUOTES, params={"bps": 50.0})
    again = command(3, issuer="engine-2", seq=3, scope=VENUE_X,
                    action=Action.WIDEN_QUOTES, params={"bps": 50.0})
    for i, c in enumerate((first, narrowed, again)):
        h.sub.handle(env_bytes(c, ENGINE2), partition=0, offset=i)
    assert [c.seq for c in h.executed] == [1, 2]
    assert [r.reason for r in h.rejected] == ["already_in_force"]


def test_resuming_one_of_two_holds_of_an_action_leaves_the_other_in_force(
    tmp_path: Path,
) -> None:
    """Two cuts of one scope are held side by side (the executor applies the stricter):
    resuming the stricter leaves the looser in force in the subscriber's state too, so
    the same cut sent again is not executed twice, and resuming it lifts it."""
    from riskguard.schemas import Action

    h = Harness(tmp_path, dedupe_in_force=True)
    loose = command(1, issuer="engine-2", seq=1, scope=VENUE_X,
                    action=Action.REDUCE_LIMITS, params={"factor": 0.5})
    strict = command(2, issuer="engine-2", seq=2, scope=VENUE_X,
                     action=Action.REDUCE_LIMITS, params={"factor": 0.25})
    lift_strict = command(3, issuer="engine-2", seq=3, scope=VENUE_X, action=Action.RESUME,
                          params={"actions": ["reduce_limits"],
                                  "resumes": [strict.command_id]})
    for i, c in enumerate((loose, strict, lift_strict)):
        h.sub.handle(env_bytes(c, ENGINE2), partition=0, offset=i)
    assert h.sub.state.held() == [("reduce_limits", VENUE_X.label(), loose.command_id)]
    again = command(4, issuer="engine-2", seq=4, scope=VENUE_X,
                    action=Action.REDUCE_LIMITS, params={"factor": 0.5})
    h.sub.handle(env_bytes(again, ENGINE2), partition=0, offset=3)
    assert [r.reason for r in h.rejected] == ["already_in_force"]
    lift_loose = command(5, issuer="engine-2", seq=5, scope=VENUE_X, action=Action.RESUME,
                         params={"actions": ["reduce_limits"],
                                 "resumes": [loose.command_id]})
    h.sub.handle(env_bytes(lift_loose, ENGINE2), partition=0, offset=4)
    assert h.sub.state.held() == []


def _state_file_with(tmp_path: Path, *statements: str) -> Path:
    """A subscriber state file holding what ``statements`` write (an older layout)."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for sql in statements:
        db.execute(sql)
    db.commit()
    db.close()
    return path


_OLD_HOLDS = ("CREATE TABLE {table} (action TEXT NOT NULL, scope TEXT NOT NULL, "
              "command_id TEXT NOT NULL, params BLOB NOT NULL, {key})")


@pytest.mark.parametrize(("statements", "named"), [
    pytest.param([_OLD_HOLDS.format(table="in_force", key="PRIMARY KEY (action, scope)"),
                  "INSERT INTO in_force VALUES ('halt_trading', 'venue:x', 'c1', x'7b7d')"],
                 "in_force", id="one-hold-per-action-and-scope"),
    pytest.param([_OLD_HOLDS.format(table="holds",
                                    key="PRIMARY KEY (action, scope, command_id)"),
                  "INSERT INTO holds VALUES ('halt_trading', 'venue:x', 'c1', x'7b7d')"],
                 "issuer", id="holds-without-their-issuer"),
    pytest.param([_OLD_HOLDS.format(table="holds", key="issuer TEXT NOT NULL DEFAULT '', "
                                    "PRIMARY KEY (action, scope, command_id)"),
                  "INSERT INTO holds VALUES ('halt_trading', 'venue:x', 'c1', x'7b7d', '')"],
                 "issuer", id="holds-naming-no-issuer"),
    pytest.param([_OLD_HOLDS.format(table="holds", key="issuer TEXT NOT NULL, "
                                    "PRIMARY KEY (action, scope, command_id)"),
                  "INSERT INTO holds VALUES ('halt_trading', 'venue:x', 'c1', x'7b7d', "
                  "'op-alice')"],
                 "keyed without their issuer", id="holds-keyed-without-their-issuer"),
    pytest.param(["CREATE TABLE seen (command_id TEXT PRIMARY KEY, issuer TEXT NOT NULL, "
                  "seq INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
                  "INSERT INTO seen VALUES ('c1', 'engine-1', 1, 99)"],
                 "seen", id="ids-kept-across-issuers"),
])
def test_a_state_file_of_an_older_layout_is_refused_at_open(
    tmp_path: Path, statements: list[str], named: str,
) -> None:
    """0.1 state files do not carry over: a hold without its issuer would answer any
    signer's repeat, so an older layout stops the open (naming what is wrong and the
    file) instead of being read as something it is not; the file is left as it was."""
    from riskguard.errors import StateError

    path = _state_file_with(tmp_path, *statements)
    before = path.read_bytes()
    with pytest.raises(StateError, match=named) as err:
        SubscriberState(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_a_subscriber_on_a_state_file_of_an_older_layout_does_not_start(
    tmp_path: Path,
) -> None:
    """Through the subscriber: the refusal stops start-up, nothing is handed over."""
    from riskguard.errors import StateError

    _state_file_with(tmp_path, _OLD_HOLDS.format(
        table="holds", key="PRIMARY KEY (action, scope, command_id)"),
        "INSERT INTO holds VALUES ('halt_trading', 'venue:x', 'c1', x'7b7d')")
    (tmp_path / "old.sqlite").rename(tmp_path / "sub.sqlite")
    with pytest.raises(StateError, match="issuer"):
        Harness(tmp_path, dedupe_in_force=True)


@pytest.mark.kafka
def test_a_long_poll_forgets_expired_ids_as_it_goes(
    tmp_path: Path, kafka_bootstrap: str, new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`riskguard subscribe` polls once for its whole session: the expired handled ids are
    forgotten every PRUNE_EVERY_S inside it, not only at its end."""
    from riskguard.connectors import subscriber as subscriber_module
    from riskguard.connectors.subscriber_state import SubscriberState

    pruned: list[int] = []
    real = SubscriberState.prune

    def counted(self: SubscriberState, before_ns: int) -> int:
        pruned.append(before_ns)
        return real(self, before_ns)

    monkeypatch.setattr(SubscriberState, "prune", counted)
    monkeypatch.setattr(subscriber_module, "PRUNE_EVERY_S", 0.0)
    topic = new_topic(partitions=1)
    aud = AUD.__class__(env=AUD.env, topic=topic)
    logic = SignLogic(ENGINE, SignConfig())
    _produce(kafka_bootstrap, topic, [encode_envelope(logic.on_event(c)[0])
                                      for c in (command(1, audience=aud, issued_at=T0),)])
    sub = CommandSubscriber(trust=trust_store(), audience=aud, state_path=tmp_path / "s.sqlite",
                            on_command=lambda c: None, brokers=kafka_bootstrap, topic=topic,
                            clock=ManualClock(T0))
    sub.poll(idle_timeout_s=1.0)
    sub.close()
    assert len(pruned) >= 2  # during the poll, and at its end


def test_one_person_never_lifts_the_firm_wide_halt_whatever_the_trust_file(
        tmp_path: Path) -> None:
    """A trust file whose [two_person] does not list resume: one operator's resume of
    the firm-wide halt_trading is still refused (two_person_required), as the guard
    refuses it; two operators' is executed; one operator may lift the firm's other
    mitigations."""
    from riskguard.operators.signing.trust_toml import trust_doc_to_toml
    from riskguard.schemas.commands import Action

    lax = TrustStore(parse_trust(trust_doc_to_toml(key_entries(), serial=1,
                                                   two_person={"actions": []})))
    h = Harness(tmp_path, trust=lax)
    one = command(1, issuer="op-alice", action=Action.RESUME)
    rej = h.sub.handle(env_bytes(one, OP1))
    assert isinstance(rej, Rejection) and rej.reason == "two_person_required"
    only_reduce = command(2, issuer="op-alice", seq=2, action=Action.RESUME,
                          params={"actions": ["reduce_only"]})
    assert h.sub.handle(env_bytes(only_reduce, OP1)) == only_reduce
    two = command(3, issuer="op-alice", seq=3, action=Action.RESUME,
                  params={"actions": ["halt_trading"]})
    both = encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(two), [OP1, OP2]))
    assert h.sub.handle(both) == two


def test_past_max_holds_of_one_action_on_a_scope_a_command_is_refused_none_forgotten(
    tmp_path: Path,
) -> None:
    """64 widenings hold quotes on one venue: the 65th is refused before it executes
    (too_many_holds), and every one held stays recorded in force, the first included,
    so none is silently forgotten; a resume naming one makes room again."""
    from riskguard.connectors.subscriber_state import MAX_HOLDS
    from riskguard.schemas import Action

    h = Harness(tmp_path, dedupe_in_force=True)
    cmds = [command(i, issuer="engine-2", seq=i, scope=VENUE_X, action=Action.WIDEN_QUOTES,
                    params={"bps": float(i)}) for i in range(1, MAX_HOLDS + 2)]
    for i, c in enumerate(cmds):
        h.sub.handle(env_bytes(c, ENGINE2), partition=0, offset=i)
    assert len(h.executed) == MAX_HOLDS
    assert [r.reason for r in h.rejected] == ["too_many_holds"]
    held = [cid for _, _, cid in h.sub.state.held()]
    assert held == [c.command_id for c in cmds[:MAX_HOLDS]]
    lift = command(900, issuer="engine-2", seq=900, scope=VENUE_X, action=Action.RESUME,
                   params={"resumes": [cmds[0].command_id]})
    again = command(901, issuer="engine-2", seq=901, scope=VENUE_X,
                    action=Action.WIDEN_QUOTES, params={"bps": 500.0})
    h.sub.handle(env_bytes(lift, ENGINE2), partition=0, offset=100)
    h.sub.handle(env_bytes(again, ENGINE2), partition=0, offset=101)
    assert h.executed[-1] == again
    assert len(h.sub.state.held()) == MAX_HOLDS


def test_another_signer_s_hold_never_answers_a_command_so_lifting_it_keeps_that_one(
    tmp_path: Path,
) -> None:
    """An operator halts a venue; the guard's halt of it comes next. The operator's hold
    does not answer the guard's (it is executed and held beside it): resuming exactly
    the operator's halt leaves the guard's in force. The guard's own repeat, from the
    other replica, is still answered by it."""
    from riskguard.schemas import Action

    h = Harness(tmp_path, dedupe_in_force=True)
    manual = command(1, issuer="op-alice", seq=1, scope=VENUE_X)
    guard = command(2, issuer="engine-1", seq=1, scope=VENUE_X)
    again = command(3, issuer="engine-2", seq=1, scope=VENUE_X)
    lift_manual = command(4, issuer="op-alice", seq=2, scope=VENUE_X, action=Action.RESUME,
                          params={"resumes": [manual.command_id]})
    for i, (c, key) in enumerate(((manual, OP1), (guard, ENGINE), (again, ENGINE2),
                                  (lift_manual, OP1))):
        h.sub.handle(env_bytes(c, key), partition=0, offset=i)
    assert [c.command_id for c in h.executed] == [
        manual.command_id, guard.command_id, lift_manual.command_id]
    assert [r.reason for r in h.rejected] == ["already_in_force"]
    assert h.sub.state.held() == [("halt_trading", VENUE_X.label(), guard.command_id)]


def test_another_signer_filling_the_holds_of_a_scope_never_refuses_the_guard_s_cut(
    tmp_path: Path,
) -> None:
    """An operator allowed reduce_limits holds 64 weak cuts on one venue; the guard's
    stricter cut there still executes: the room on a scope is each signer's own (the
    guard's replicas share theirs), so no key can use up another's. Past 64 of its own,
    the operator's next is refused, and the guard's replica's copy is answered as ever."""
    from riskguard.connectors.subscriber_state import MAX_HOLDS
    from riskguard.schemas import Action

    entries = key_entries()
    entries[2] = {**entries[2], "actions": ["resume", "halt_trading", "reduce_limits"]}
    h = Harness(tmp_path, trust=TrustStore(parse_trust(trust_text(entries=entries))),
                dedupe_in_force=True)
    weak = [command(100 + i, issuer="op-alice", seq=1 + i, scope=VENUE_X,
                    action=Action.REDUCE_LIMITS, params={"factor": 0.99 - i / 1000})
            for i in range(MAX_HOLDS + 1)]
    for i, c in enumerate(weak):
        h.sub.handle(env_bytes(c, OP1), partition=0, offset=i)
    assert [r.reason for r in h.rejected] == ["too_many_holds"]
    cut = command(1, issuer="engine-1", seq=1, scope=VENUE_X, action=Action.REDUCE_LIMITS,
                  params={"factor": 0.1})
    h.sub.handle(env_bytes(cut, ENGINE), partition=0, offset=100)
    assert h.executed[-1] == cut
    assert ("reduce_limits", VENUE_X.label(), cut.command_id) in h.sub.state.held()


def test_another_signer_reusing_the_guard_s_command_id_holds_beside_it_never_over_it(
    tmp_path: Path,
) -> None:
    """Command ids are predictable: an operator allowed reduce_limits signs a mild cut on
    the scope of the guard's cut, under the guard's command id. It is held beside the
    guard's (ids are each signer's own), never in its place: the guard's cut stays in
    force, recorded as the guard's."""
    from riskguard.connectors.subscriber_state import params_key
    from riskguard.schemas import Action

    entries = key_entries()
    entries[2] = {**entries[2], "actions": ["resume", "halt_trading", "reduce_limits"]}
    h = Harness(tmp_path, trust=TrustStore(parse_trust(trust_text(entries=entries))),
                dedupe_in_force=True)
    cut = command(1, issuer="engine-1", seq=1, scope=VENUE_X, action=Action.REDUCE_LIMITS,
                  params={"factor": 0.1})
    mild = msgspec.structs.replace(cut, issuer="op-alice", params={"factor": 0.99})
    h.sub.handle(env_bytes(cut, ENGINE), partition=0, offset=0)
    h.sub.handle(env_bytes(mild, OP1), partition=0, offset=1)
    assert h.executed == [cut, mild]
    state = h.sub.state
    assert state.in_force("reduce_limits", VENUE_X.label(), params_key(cut),
                          {"engine-1"}) == cut.command_id
    assert state.in_force("reduce_limits", VENUE_X.label(), params_key(mild),
                          {"op-alice"}) == cut.command_id
    assert len(state.held()) == 2



@pytest.mark.kafka
def test_a_refused_rejection_raises_at_close_after_the_state_is_closed(tmp_path: Path) -> None:
    """A rejection Kafka never acknowledges (its broker gone) raises DeliveryError at
    close, and the state file is closed all the same."""
    import sqlite3

    from riskguard.connectors.broker import DevBroker
    from riskguard.connectors.topics import TopicSpec, create_topics

    from riskguard.errors import DeliveryError

    broker = DevBroker(tmp_path / "own-broker")
    bootstrap = broker.start().bootstrap
    try:
        create_topics({"bootstrap.servers": bootstrap},
                      [TopicSpec("commands", partitions=1), TopicSpec("rejected", partitions=1)])
        sub = CommandSubscriber(
            trust=trust_store(), audience=AUD, state_path=tmp_path / "s.sqlite",
            on_command=lambda c: None, brokers=bootstrap, topic="commands",
            rejections_topic="rejected", clock=ManualClock(T0))
        sub.connect()
        broker.stop()
        sub.handle(b"not an envelope", partition=0, offset=0)
        with pytest.raises(DeliveryError, match="subscriber rejections to rejected"):
            sub.close()
        with pytest.raises(sqlite3.ProgrammingError):
            sub.state.db.execute("SELECT 1")
    finally:
        broker.stop()
