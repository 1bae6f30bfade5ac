"""``riskguard status``'s command source: signed commands in, mitigations in force out."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
from riskguard.connectors.status import StatusPoller, commands_from_file, split_mitigations
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    encode_envelope,
    generate_key_file,
    sign_envelope,
)
from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind

from riskguard.cli import main

S = 1_000_000_000
T0 = 1_700_000_000 * S
OKX = Scope(kind=ScopeKind.VENUE, value="okx")


def _cmd(n: int, action: Action, at: int, **params: Any) -> MitigationCommand:
    return MitigationCommand(
        command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"riskguard-status/{n}")),
        issuer="engine-1", seq=n, issued_at=at, expires_at=at + 3600 * S,
        audience=Audience(env="dev", topic="riskguard.commands"), action=action, scope=OKX,
        params=params, reason=f"command {n}")


def _line(cmd: MitigationCommand, signer: Signer) -> bytes:
    return encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [signer]))


def test_command_file_source_counts_only_commands_verified_under_the_key(tmp_path: Path) -> None:
    """A halt and its resume signed by the issuer, then a forged resume of the widen
    (another key), a line that is not an envelope and a tampered copy: only the
    issuer's commands count, so the widen stays in force and the halt is lifted."""
    issuer = generate_key_file(tmp_path / "issuer.pem")
    other = generate_key_file(tmp_path / "other.pem")
    halt, widen = _cmd(1, Action.HALT_TRADING, T0), _cmd(2, Action.WIDEN_QUOTES, T0 + S)
    resume = _cmd(3, Action.RESUME, T0 + 2 * S, actions=["halt_trading"])
    forged = _cmd(4, Action.RESUME, T0 + 3 * S, actions=["widen_quotes"])
    signed = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(_cmd(5, Action.RESUME, T0)),
                           [issuer])  # its signature on another command's payload:
    tampered = encode_envelope(msgspec.structs.replace(signed, payload=msgspec.json.encode(
        _cmd(6, Action.RESUME, T0 + 4 * S))))
    f = tmp_path / "commands.jsonl"
    f.write_bytes(b"\n".join([_line(halt, issuer), _line(widen, issuer), _line(resume, issuer),
                              _line(forged, other), b"not json", tampered]) + b"\n")
    source = commands_from_file(str(f), issuer.public_key)
    assert [c.command_id for c in source()] == [halt.command_id, widen.command_id,
                                                resume.command_id]
    poller = StatusPoller([], now=lambda: (T0 + 10 * S) / S, commands=source)
    m = poller.poll()["mitigations"]
    assert [(x["action"], x["scope"]) for x in m["active"]] == [("widen_quotes", "venue:okx")]
    assert [x["state"] for x in m["history"]] == ["resume", "active", "lifted"]
    assert commands_from_file(str(tmp_path / "none.jsonl"), issuer.public_key)() == []


def test_a_held_mitigation_stays_in_force_past_its_expiry_until_a_resume() -> None:
    """A command's expires_at bounds when an executor may accept it; an executor holds a
    held action until a resume lifts it, and so does the page. A re-issued widen shows
    once (the latest); a one-off act (cancel_all) is never in force."""
    a, b = _cmd(1, Action.WIDEN_QUOTES, T0), _cmd(2, Action.WIDEN_QUOTES, T0 + 60 * S)
    cancel = _cmd(3, Action.CANCEL_ALL, T0 + 61 * S)
    m = split_mitigations([a, b, cancel], T0 + 120 * S)
    assert [x["command_id"] for x in m["active"]] == [b.command_id]
    m = split_mitigations([a, b, cancel], T0 + 10 * 3600 * S)  # long past both expiries
    assert [x["command_id"] for x in m["active"]] == [b.command_id]
    assert [x["state"] for x in m["history"]] == ["act", "active", "active"]
    resume = _cmd(4, Action.RESUME, T0 + 11 * 3600 * S, actions=["widen_quotes"])
    m = split_mitigations([a, b, cancel, resume], T0 + 12 * 3600 * S)
    assert m["active"] == [] and [x["state"] for x in m["history"]] == [
        "resume", "act", "lifted", "lifted"]


def test_a_resume_naming_command_ids_lifts_only_those() -> None:
    """As an executor lifts: a resume listing halt_trading and the first halt's id lifts
    that one; the second halt on the scope stays in force."""
    a, b = _cmd(1, Action.HALT_TRADING, T0), _cmd(2, Action.HALT_TRADING, T0 + S)
    resume = _cmd(3, Action.RESUME, T0 + 2 * S, actions=["halt_trading"],
                  resumes=[a.command_id])
    m = split_mitigations([a, b, resume], T0 + 3 * S)
    assert [x["command_id"] for x in m["active"]] == [b.command_id]


def test_cli_status_commands_needs_a_verify_key(tmp_path: Path, capsys) -> None:
    """Serving with --commands but no --verify-key is refused before anything is served."""
    rc = main(["status", "--serve", "--port", "0", "--commands", str(tmp_path / "c.jsonl")])
    assert rc != 0
    assert "--verify-key" in capsys.readouterr().err


def test_the_command_file_is_read_as_it_grows(tmp_path: Path, monkeypatch: Any) -> None:
    """Each poll takes only the lines added since the last: a line still being written
    waits for its end, a file replaced by a shorter one is read again from its start,
    and past MAX_COMMANDS only the newest (and those still in force) are kept."""
    from riskguard.connectors import status

    issuer = generate_key_file(tmp_path / "issuer.pem")
    f = tmp_path / "commands.jsonl"
    source = commands_from_file(str(f), issuer.public_key)
    lines = [_line(_cmd(n, Action.WIDEN_QUOTES, T0 + n * S, bps=5.0), issuer)
             for n in range(1, 7)]
    f.write_bytes(lines[0] + b"\n" + lines[1][:40])  # the second line half written
    assert [c.seq for c in source()] == [1]
    with f.open("ab") as out:
        out.write(lines[1][40:] + b"\n" + lines[2] + b"\n")
    assert [c.seq for c in source()] == [1, 2, 3]
    f.write_bytes(lines[3] + b"\n")  # a new, shorter file in its place
    assert [c.seq for c in source()] == [4]
    monkeypatch.setattr(status, "MAX_COMMANDS", 1)
    expired = _cmd(7, Action.WIDEN_QUOTES, T0 - 7200 * S, bps=5.0)  # long expired
    with f.open("ab") as out:
        out.write(b"\n".join([_line(expired, issuer), lines[4], lines[5]]) + b"\n")
    assert [c.seq for c in source()] == [6]


def test_pruning_drops_a_mitigation_lifted_with_its_resume(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A halt lifted by a resume, then many newer commands: pruned past MAX_COMMANDS, both
    go, and the halt does not show in force again."""
    import time

    from riskguard.connectors import status

    monkeypatch.setattr(status, "MAX_COMMANDS", 5)
    issuer = generate_key_file(tmp_path / "issuer.pem")
    now = time.time_ns()
    halt = msgspec.structs.replace(_cmd(1, Action.HALT_TRADING, now - 30 * S))
    resume = msgspec.structs.replace(_cmd(2, Action.RESUME, now - 20 * S,
                                          actions=["halt_trading"]), expires_at=now - 10 * S)
    alerts = [msgspec.structs.replace(_cmd(n, Action.ALERT, now - 60 * S),
                                      expires_at=now - S) for n in range(3, 14)]
    f = tmp_path / "commands.jsonl"
    f.write_bytes(b"\n".join(_line(c, issuer) for c in [halt, resume, *alerts]) + b"\n")
    kept = commands_from_file(str(f), issuer.public_key)()
    assert len(kept) < 13 and halt not in kept  # lifted: neither it nor its resume is kept
    assert split_mitigations(kept, now)["active"] == []


def test_pruning_keeps_a_mitigation_still_in_force_however_old(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A reduce_only long past its expiry, never lifted, and many newer commands: pruned
    past MAX_COMMANDS, it stays, and the page still shows it in force."""
    import time

    from riskguard.connectors import status

    monkeypatch.setattr(status, "MAX_COMMANDS", 5)
    issuer = generate_key_file(tmp_path / "issuer.pem")
    now = time.time_ns()
    held = _cmd(1, Action.REDUCE_ONLY, now - 7200 * S)
    alerts = [_cmd(n, Action.ALERT, now - 60 * S) for n in range(2, 14)]
    f = tmp_path / "commands.jsonl"
    f.write_bytes(b"\n".join(_line(c, issuer) for c in [held, *alerts]) + b"\n")
    kept = commands_from_file(str(f), issuer.public_key)()
    assert len(kept) < 13 and held in kept
    assert [x["command_id"] for x in split_mitigations(kept, now)["active"]] == [held.command_id]
