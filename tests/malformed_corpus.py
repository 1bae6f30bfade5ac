"""A corpus of malformed and hostile inputs, one per kind, for the guard's input topics.

Each entry is ``(label, stream, value, reason)``: the bytes produced to the stream's
topic (``None``: a tombstone) and the reason of the dead letter the guard must make of
them. Signed entries are made with a real engine key, so that they pass the signature
check and fail on what they carry.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    Signer,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas import Fill, MitigationCommand, Scope, ScopeKind, Trade, encode
from riskguard.schemas.commands import Action, Audience, LimitUpdate

NS = 1_000_000_000
Entry = tuple[str, str, bytes | None, str]


def _trade(**over: Any) -> bytes:
    base: dict[str, Any] = {"type": "trade", "id": "m", "venue": "okx",
                            "instrument": "BTC-USDT", "ts": 1, "price": 1.0, "qty": 1.0,
                            "side": "buy"}
    base.update(over)
    return json.dumps(base).encode()


GOOD = _trade()


def market_entries() -> list[Entry]:
    """Bytes that are not a valid market record, each for its own reason."""
    nested = b"[" * 2000 + b"]" * 2000
    objects = b'{"a":' * 2000 + b"1" + b"}" * 2000
    return [(label, "market", value, reason) for label, value, reason in [
        ("empty value", b"", "malformed"),
        ("truncated json", GOOD[:-5], "malformed"),
        ("invalid json", b"{type: trade}", "malformed"),
        ("byte-order mark", b"\xef\xbb\xbf" + GOOD, "malformed"),
        ("trailing junk", GOOD + b"xyz", "malformed"),
        ("two objects", GOOD + GOOD, "malformed"),
        ("json array", b"[1,2,3]", "validation"),
        ("json scalar", b"42", "validation"),
        ("string for float", _trade(price="1.0"), "validation"),
        ("string for int", _trade(ts="1"), "validation"),
        ("float for int", _trade(ts=1.5), "validation"),
        ("int for string", _trade(venue=7), "validation"),
        ("object for string", _trade(id={"a": 1}), "validation"),
        ("bad enum", _trade(side="up"), "validation"),
        ("null for required", _trade(qty=None), "validation"),
        ("missing field", b'{"type":"trade","id":"b","venue":"okx"}', "validation"),
        ("nan literal", GOOD.replace(b'"price": 1.0', b'"price": NaN'), "malformed"),
        ("inf literal", GOOD.replace(b'"price": 1.0', b'"price": Infinity'), "malformed"),
        ("overflowing float", GOOD.replace(b'"price": 1.0', b'"price": 1e999'), "non_finite"),
        ("int over 64 bits", _trade(ts=2**70), "validation"),
        ("ten-thousand-digit int", _trade(ts=0).replace(b'"ts": 0', b'"ts": ' + b"9" * 10_000),
         "validation"),
        ("negative time", _trade(ts=-5), "validation"),
        ("negative size", _trade(qty=-3.0), "validation"),
        ("zero price", _trade(price=0.0), "validation"),
        ("unknown tag", _trade(type="teleport"), "unknown_type"),
        ("missing tag", b'{"id":"b"}', "unknown_type"),
        ("unknown major version", _trade(v=2), "unknown_version"),
        ("oversize 70 KB", b'{"type":"trade","id":"' + b"a" * 70_000 + b'"}', "oversize"),
        ("oversize 1 MB", b'{"type":"trade","id":"' + b"a" * 1_000_000 + b'"}', "oversize"),
        ("invalid utf-8 in a string", GOOD.replace(b'"okx"', b'"ok\xff"'), "non_utf8"),
        ("invalid utf-8 in a key", GOOD.replace(b'"venue"', b'"ven\xc3ue"'), "validation"),
        ("name with spaces", _trade(venue="o k x"), "validation"),
        ("too long id", _trade(id="x" * 200), "validation"),
        ("2,000 nested arrays", nested, "validation"),  # an array where a record goes
        ("2,000 nested objects", objects, "too_deep"),
        ("nesting inside a field", _trade(extra=0).replace(b"0}", nested + b"}"), "too_deep"),
        ("random binary", bytes(range(256)) * 4, "malformed"),
        ("tombstone", None, "empty"),
    ]]


def wrong_topic_entries(now_ns: int) -> list[Entry]:
    """Valid records on a topic that does not carry their type."""
    fill = Fill(id="f-wrong", venue="okx", counterparty="okx", instrument="BTC-USDT",
                side="buy", qty=1.0, price=1.0, ts=now_ns)
    trade = Trade(id="t-wrong", venue="okx", instrument="BTC-USDT", price=1.0, qty=1.0,
                  side="buy", ts=now_ns)
    cmd = MitigationCommand(
        command_id="bare", issuer="x", issued_at=now_ns, expires_at=now_ns + NS,
        audience=Audience(env="x", topic="y"), action=Action.RESUME,
        scope=Scope(kind=ScopeKind.FIRM, value="*"), reason="unsigned")
    return [
        ("a fill on the market topic", "market", encode(fill), "wrong_topic"),
        ("a trade on the fills topic", "fills", encode(trade), "wrong_topic"),
        ("a trade on the positions topic", "positions", encode(trade), "wrong_topic"),
        ("a fill on the venue-status topic", "venue_status", encode(fill), "wrong_topic"),
        ("a bare command on the limit-updates topic", "limit_updates", encode(cmd),
         "wrong_topic"),
    ]


def signed_entries(signer: Signer, env: str, commands_topic: str,
                   limit_topic: str, now_ns: int | None = None) -> list[Entry]:
    """Signed by an authorized engine key; refused for what they carry."""
    now = now_ns if now_ns is not None else time.time_ns()
    aud = Audience(env=env, topic=commands_topic)

    def cmd(**over: Any) -> MitigationCommand:
        base: dict[str, Any] = {
            "command_id": str(uuid.uuid4()), "issuer": signer.issuer, "seq": 0,
            "issued_at": now, "expires_at": now + 60 * NS, "audience": aud,
            "action": Action.HALT_TRADING, "scope": Scope(kind=ScopeKind.VENUE, value="okx"),
            "reason": "corpus"}
        base.update(over)
        return MitigationCommand(**base)

    def signed(payload: bytes, pt: str = PAYLOAD_COMMAND) -> bytes:
        return encode_envelope(sign_envelope(pt, payload, [signer]))

    honest = msgspec.json.encode(cmd(action=Action.REDUCE_ONLY))
    duplicated = honest.replace(b'"action":"reduce_only"',
                                b'"action":"halt_trading","action":"reduce_only"')
    forged = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd()), [signer])
    forged_bytes = encode_envelope(msgspec.structs.replace(
        forged, payload=forged.payload.replace(b'"okx"', b'"bnc"')))
    limit = LimitUpdate(update_id=str(uuid.uuid4()), issuer=signer.issuer, issued_at=now,
                        expires_at=now + 60 * NS,
                        audience=Audience(env=env, topic=limit_topic),
                        limit_path="counterparty.okx", kind="gross_notional", limit=1.0)
    resume = cmd(action=Action.RESUME, scope=Scope(kind=ScopeKind.FIRM, value="*"),
                 params={"actions": ["halt_trading"]})
    make: list[tuple[str, Callable[[], bytes], str]] = [
        ("a forged signature", lambda: forged_bytes, "command_bad_signature"),
        ("duplicate keys in a signed payload", lambda: signed(duplicated),
         "command_malformed_payload"),
        ("a deeply nested signed payload", lambda: signed(b"[" * 3000 + b"]" * 3000),
         "command_malformed_payload"),
        ("a wildcard venue scope", lambda: signed(msgspec.json.encode(
            cmd(scope=Scope(kind=ScopeKind.VENUE, value="*")))), "command_bad_scope"),
        ("a command that never expires", lambda: signed(msgspec.json.encode(
            cmd(expires_at=2**63 - 1))), "command_ttl_too_long"),
        ("a firm resume signed by one person", lambda: signed(msgspec.json.encode(resume)),
         "command_two_person_required"),
        ("a command for another audience", lambda: signed(msgspec.json.encode(
            cmd(audience=Audience(env="other", topic=commands_topic)))),
         "command_wrong_audience"),
        ("an expired command", lambda: signed(msgspec.json.encode(
            cmd(issued_at=now - 3600 * NS, expires_at=now - 3000 * NS))), "command_expired"),
        ("a limit update signed by an engine key", lambda: signed(
            msgspec.json.encode(limit), PAYLOAD_LIMIT_UPDATE), "limit_update_role_not_permitted"),
    ]
    return [(label, "limit_updates", build(), reason) for label, build, reason in make]
