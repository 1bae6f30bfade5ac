"""Limits checked on untrusted JSON bytes before they are parsed.

msgspec parses nesting recursively, so a few kilobytes of ``[[[[...]]]]`` end in
``RecursionError``: :func:`check_json_depth` refuses such input without parsing (reason
:data:`TOO_DEEP`). Parsers disagree on which value of a repeated key wins, and signed
bytes must read the same to every parser: :func:`duplicate_key_problem` finds one.

>>> check_json_depth(b'{"a":[1,[2]]}') is None
True
>>> check_json_depth(b"[" * 40 + b"]" * 40)
'JSON nested more than 32 levels deep'
>>> check_json_depth(b'{"text":"' + b"[" * 40 + b'"}') is None  # inside a string: text
True
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 32
"""How deep arrays and objects may nest in a wire record (``{"a":[1]}`` is 2 deep).
The deepest record the project writes (an audit record's body) nests well under 10."""

TOO_DEEP = "too_deep"
"""The reason code for input refused by :func:`check_json_depth`."""

# A JSON string, escapes included; an unterminated one runs to the end of the input
# (a backslash escapes any byte, as a JSON parser skips it). The unrolled form
# "[^"\\]*(?:\\.[^"\\]*)*" does not backtrack.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
# Keep only brackets, and fold objects into arrays: depth counts both alike.
_FOLD = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def check_json_depth(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """None if arrays and objects in ``data`` nest at most ``max_depth`` deep; otherwise
    a short detail for the refusal (reason :data:`TOO_DEEP`).

    Counts brackets outside strings, without parsing. Input with no more than
    ``max_depth`` brackets in all is passed by two ``bytes.count`` calls; only
    the rest is scanned (C-speed regex and ``bytes`` calls, no Python loop per
    byte). Unbalanced input (truncated, so malformed anyway) is judged by its
    unclosed brackets plus the nesting of the rest, which never under-counts.

    >>> check_json_depth(b"[" * 32 + b"]" * 32) is None, check_json_depth(b"[" * 33)
    (True, 'JSON nested more than 32 levels deep')
    >>> check_json_depth(b'["\\\\"' + b"[" * 40 + b'"]') is None  # an escaped quote ends no string
    True
    """
    if type(data) is memoryview:
        data = data.tobytes()
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return None
    brackets = _STRING.sub(b"", data).translate(_FOLD, _NOT_BRACKET)
    # Each pass removes every innermost pair, so the passes count the nesting height.
    height = 0
    while b"[]" in brackets:
        if height == max_depth:
            return _too_deep(max_depth)
        brackets = brackets.replace(b"[]", b"")
        height += 1
    if height + brackets.count(b"[") > max_depth:  # unclosed brackets are open around the rest
        return _too_deep(max_depth)
    return None


def _too_deep(max_depth: int) -> str:
    return f"JSON nested more than {max_depth} levels deep"


class _Duplicate(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def duplicate_key_problem(data: bytes) -> str | None:
    """None if no JSON object in ``data`` repeats a key; else what is wrong.

    Nesting past :data:`MAX_JSON_DEPTH` is refused here too, and so are bytes that are
    not UTF-8 (a typed decoder skips an unknown field unread, so another parser may
    read it otherwise); bytes that are not JSON at all are left to the typed decoder
    (None).

    >>> duplicate_key_problem(b'{"action":"halt_trading","action":"reduce_only"}')
    "duplicate key 'action' in a JSON object"
    >>> duplicate_key_problem(b'{"a":{"b":1},"c":[{"b":2}]}') is None
    True
    >>> duplicate_key_problem(b'{"action":"halt_trading","note\\xff":1}')
    'not UTF-8: byte 0xff at 30'
    """
    deep = check_json_depth(data)
    if deep is not None:
        return deep
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8: byte 0x{data[err.start]:02x} at {err.start}"
    try:
        json.loads(text, object_pairs_hook=_unique_pairs)
    except _Duplicate as dup:
        return f"duplicate key {dup.args[0]!r} in a JSON object"
    except (ValueError, RecursionError):
        return None
    return None
