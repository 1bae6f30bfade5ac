"""TOML written from Python: configs, trust files and the config reference's examples.

One writer, so that every file riskguard writes reads back with :mod:`tomllib` as
the value it was written from:

>>> import tomllib
>>> doc = {"env": "x", "limits": {"gross": 10_000_000, "venues": ["okx"]},
...        "rules": [{"name": "r", "ladder": [{"action": "alert"}]}]}
>>> print(dump_toml(doc))
env = "x"
rules = [{ name = "r", ladder = [{ action = "alert" }] }]
<BLANKLINE>
[limits]
gross = 10_000_000
venues = ["okx"]
<BLANKLINE>
>>> tomllib.loads(dump_toml(doc)) == doc
True
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from riskguard.errors import ConfigError

__all__ = ["dump_toml", "toml_key", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(v: Any) -> str:
    """A value as TOML writes it inline; numbers from 10,000 up are grouped by ``_``.

    >>> toml_value({"USDT": "USDT-USD"}), toml_value([1.0, 2]), toml_value(10_000_000)
    ('{ USDT = "USDT-USD" }', '[1.0, 2]', '10_000_000')
    >>> toml_value(None)
    Traceback (most recent call last):
    ...
    riskguard.errors.ConfigError: toml: a value (TOML has no null); got nothing
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return toml_value(v.value)
    if isinstance(v, int):
        return f"{v:_}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, set | frozenset):
        return toml_value(sorted(v, key=str))
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        raise ConfigError("toml", "a value (TOML has no null)", None)
    raise ConfigError("toml", "a TOML value", v)


def _float(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    if v.is_integer() and abs(v) >= 10_000:
        return f"{v:_.1f}"
    return repr(v)


def toml_key(key: str) -> str:
    """A key bare where TOML allows it, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def dump_toml(data: Mapping[str, Any]) -> str:
    """A document: top-level values first, then one ``[table]`` per nested mapping.

    Deeper tables and arrays of tables are written inline. ``None`` values are left
    out, at the top level and in its tables.
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{toml_key(name)}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()
                     if v is not None)
    return "\n".join(lines) + "\n"
