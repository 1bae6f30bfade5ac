"""Generate the JSON Schema files in ``schemas/json/`` from the structs.

Run ``python -m riskguard.schemas.jsonschema`` to regenerate them; the test
suite fails when the checked-in files drift from the structs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
from riskguard.schemas.codec import ALL_TYPES, tag_of

JSON_DIR = Path(__file__).parent / "json"


def generate() -> dict[str, str]:
    """File name to JSON text, one schema per record type."""
    out: dict[str, str] = {}
    for cls in ALL_TYPES:
        schema = msgspec.json.schema(cls)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = cls.__name__
        out[f"{tag_of(cls)}.v1.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path = JSON_DIR) -> list[str]:
    """Names of schema files that are missing, stale or extra."""
    want = generate()
    have = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.json")}
    return sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))


if __name__ == "__main__":
    for p in write():
        sys.stdout.write(f"{p}\n")
