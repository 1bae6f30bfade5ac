"""What the Flink tests share: the demo scenario's start, what a signal and a command
say happened, and a records file with lines no record can be made of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.schemas import encode

START_NS = 1_795_500_000 * 10**9


def signal_identity(sig: Any) -> tuple[Any, ...]:
    """What a signal says happened: its id (from its evidence), type, kind, scope, time
    and severity; not the detail of which of two same-time records it quotes."""
    return (sig.id, type(sig).__name__, sig.kind, getattr(sig, "scope", None),
            getattr(sig, "key", None), sig.ts, sig.severity)


def command_identity(cmd: Any) -> tuple[Any, ...]:
    return (cmd.decision_id, cmd.action.value, cmd.scope, sorted(cmd.params.items()))


def records_with_bad_lines(path: Path, n: int = 300, records: list[Any] | None = None) -> Path:
    """``n`` records of the demo scenario (or ``records``) as JSONL, with a blank line, a
    line that is no JSON, a record no schema takes and a line ending in CRLF among them:
    the two bad lines are lines 41 and 42."""
    lines = [encode(r) for r in
             (build_scenario(START_NS).events[:n] if records is None else records)]
    lines[40:40] = [b"", b"not json at all", b'{"type":"trade","id":"t","ts":"soon"}']
    lines[120] += b"\r"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def letter_identity(d: Any) -> tuple[Any, ...]:
    return (d.topic, d.partition, d.offset, d.reason, d.path, d.raw)
