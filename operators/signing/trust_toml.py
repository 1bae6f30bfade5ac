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
from typing import Any

from riskguard.toml_text import toml_value


def trust_doc_to_toml(doc_keys: Iterable[Mapping[str, Any]], *, serial: int = 1,
                      two_person: Mapping[str, Any] | None = None,
                      replicas: Sequence[str] | None = None) -> str:
    """Render a simple trust file (tests and benches write theirs with it)."""
    lines = ["version = 1", f"serial = {serial}"]
    if replicas is not None:
        lines.append(f"replicas = {toml_value(list(replicas))}")
    lines.append("")
    if two_person:
        lines.append("[two_person]")
        for name, value in two_person.items():
            lines.append(f"{name} = {toml_value(value)}")
        lines.append("")
    for k in doc_keys:
        lines.append("[[keys]]")
        for name, value in k.items():
            lines.append(f"{name} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
