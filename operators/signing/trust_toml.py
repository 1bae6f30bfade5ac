"""Trust files written from Python: the demo, the backtest and tests write theirs here.

>>> print(trust_doc_to_toml([{"name": "guard", "actions": ["alert"]}]))
version = 1
serial = 1
<BLANKLINE>
[[keys]]
name = "guard"
actions = ["alert"]
<BLANKLINE>
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from riskguard.errors import ConfigError


def trust_doc_to_toml(doc_keys: Iterable[Mapping[str, Any]], *, serial: int = 1,
                      two_person: Mapping[str, Any] | None = None,
                      replicas: Sequence[str] | None = None) -> str:
    """Render a simple trust file (tests and benches write theirs with it)."""
    lines = ["version = 1", f"serial = {serial}"]
    if replicas is not None:
        lines.append(f"replicas = {_toml_value(list(replicas))}")
    lines.append("")
    if two_person:
        lines.append("[two_person]")
        for name, value in two_person.items():
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    for k in doc_keys:
        lines.append("[[keys]]")
        for name, value in k.items():
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list | tuple | frozenset | set):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError("trust", "a TOML scalar or array", value)
