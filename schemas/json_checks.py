"""Checks on JSON bytes that a typed decoder does not make.

A JSON object may carry the same key twice; parsers disagree on which value
wins (msgspec keeps the last, others the first). Signed bytes must read the
same to every parser, so they are refused when any object in them repeats a
key.

>>> duplicate_key_problem(b'{"action":"halt_trading","action":"reduce_only"}')
"duplicate key 'action' in a JSON object"
>>> duplicate_key_problem(b'{"a":{"b":1},"c":[{"b":2}]}') is None
True
"""

from __future__ import annotations

import json
from typing import Any

_MAX_DEPTH = 64


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def duplicate_key_problem(data: bytes) -> str | None:
    """None if no JSON object in ``data`` repeats a key; else what is wrong.

    Bytes that are not JSON at all are left to the typed decoder (None), except
    nesting beyond what any record needs, and bytes that are not UTF-8 (a typed
    decoder skips an unknown field unread, so another parser may read it otherwise),
    which are refused here.

    >>> duplicate_key_problem(b'{"action":"halt_trading","note\\xff":1}')
    'not UTF-8: byte 0xff at 30'
    """
    depth = _depth(data)
    if depth > _MAX_DEPTH:
        return f"JSON nested {depth} deep; at most {_MAX_DEPTH}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8: byte 0x{data[err.start]:02x} at {err.start}"
    try:
        json.loads(text, object_pairs_hook=_pairs)
    except _Duplicate as dup:
        return f"duplicate key {dup.args[0]!r} in a JSON object"
    except (ValueError, RecursionError):
        return None
    return None


def _depth(data: bytes) -> int:
    """Deepest nesting of arrays and objects outside strings (cheap when shallow)."""
    if data.count(b"[") + data.count(b"{") <= _MAX_DEPTH:
        return 0
    deepest = depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
