"""The acknowledgement loop on the real broker: guard -> subscriber -> executor -> acks -> guard."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import msgspec
import pytest
from riskguard.connectors.acks import AckingExecutor, AckSigner, Applied, KafkaAckSender
from riskguard.connectors.settings import KafkaSettings
from riskguard.dataflows.demo import add_executor_key, prepare_run, start_guard, subscriber_for
from riskguard.schemas import AckOutcome, Action, MitigationCommand
from riskguard.schemas.codec import decode

from tests.kafka_helpers import consume_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_the_guard_learns_what_the_executor_confirmed_and_escalates_what_it_did_not(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The executor confirms every command but reduce-only, which it silently drops (a
    trading system that lost the message): the guard reads the acks from Kafka, audits
    them, raises nothing for what was confirmed, and pages firm-wide about the
    reduce-only it never heard back on."""
    run = prepare_run(kafka_bootstrap, tmp_path / "run", env=f"a{uuid.uuid4().hex[:8]}")
    playbook = run.workdir / "playbook.toml"
    text = playbook.read_text()
    for old, new in (('executors = []', 'executors = ["oms"]'),
                     ('require = ["halt_trading", "cancel_all"]',
                      'require = ["reduce_only", "widen_quotes"]'),
                     ('timeout_s = 30.0', 'timeout_s = 3.0')):
        assert old in text
        text = text.replace(old, new, 1)
    playbook.write_text(text)
    # the guard goes on ticking, idle, long enough for the reduce-only to fall overdue
    run.config.write_text(run.config.read_text().replace("idle_eof_s = 4.0", "idle_eof_s = 12.0"))
    executor = add_executor_key(run.keys, "oms")
    sender = KafkaAckSender(KafkaSettings(bootstrap=kafka_bootstrap), run.env)
    seen: list[MitigationCommand] = []

    def apply(cmd: MitigationCommand) -> Applied:
        return Applied(AckOutcome.APPLIED, detail={"scope": cmd.scope.label()})

    acking = AckingExecutor(apply, AckSigner(executor, env=run.env), sender)

    def on_command(cmd: MitigationCommand) -> None:
        seen.append(cmd)
        if cmd.action is not Action.REDUCE_ONLY:  # a reduce-only is lost without an answer
            acking.on_command(cmd)

    guard = start_guard(run)
    stop = threading.Event()

    def execute() -> None:
        with subscriber_for(run, tmp_path / "sub.sqlite", on_command=on_command,
                            on_settled=acking.on_settled) as sub:
            while not stop.is_set():
                sub.poll(idle_timeout_s=0.5)

    worker = threading.Thread(target=execute, daemon=True)
    worker.start()
    try:
        out, _ = guard.communicate(timeout=180)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert guard.returncode == 0, out.decode(errors="replace")[-3000:]
    assert {c.action for c in seen} >= {Action.WIDEN_QUOTES, Action.REDUCE_ONLY}
    assert sender.delivered >= 2

    commands = [msgspec.json.decode(decode("commands", v).payload)  # type: ignore[union-attr]
                for _p, _o, v in consume_all(kafka_bootstrap, run.topic("commands"))]
    escalated = [c for c in commands if "command_unacknowledged" in c["reason"]]
    assert escalated, [c["reason"][:80] for c in commands]
    assert {(c["action"], c["scope"]["kind"]) for c in escalated} == {("alert", "firm")}
    # exactly the reduce-only commands it dropped escalated; what it confirmed did not
    dropped = {c.scope.label() for c in seen if c.action is Action.REDUCE_ONLY}
    named = {c["reason"].split(": reduce_only on ")[1].split(" not confirmed")[0]
             for c in escalated}
    assert named == dropped, [c["reason"] for c in escalated]
    # the audit log holds the acks beside the commands
    audited = [decode("audit", v)
               for _p, _o, v in consume_all(kafka_bootstrap, run.topic("audit"))]
    kinds = {getattr(r, "kind", None) for r in audited}
    assert "execution_ack" in kinds, kinds
