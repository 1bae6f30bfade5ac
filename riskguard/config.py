"""TOML config, read with :mod:`tomllib` and decoded into typed structs.

A bad value stops start-up with an error that names the key path, what was
expected and what was found:

>>> decode_section({"partitions": {"market": -5}}, TopicsConfig, "topics")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: topics.partitions.market: must be >= 1; got -5

Operator sections (features, detector, exposure, limits, playbook, ...)
are typed by the config structs of their operator modules and decoded the
same way by :func:`decode_section`.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from riskguard.connectors.settings import KafkaSettings
from riskguard.errors import ConfigError

T = TypeVar("T")

_MSG = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_CMP = re.compile(r"^Expected `(?P<type>[^`]*)` (?P<op>[<>]=?) (?P<bound>\S+)$")
_TYPE = re.compile(r"^Expected `(?P<exp>[^`]*)`, got `(?P<got>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


class TopicsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Partition counts and settings per stream (``topics.partitions.<stream>``)."""

    partitions: dict[str, int] = {}
    default_partitions: int = 2
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    retention_ms: dict[str, int] = {}

    def __post_init__(self) -> None:
        for stream, n in self.partitions.items():
            if n < 1:
                raise ConfigError(f"topics.partitions.{stream}", "must be >= 1", n)


def _lookup(data: Any, path: str) -> Any:
    cur = data
    for m in _PART.finditer(path):
        key, idx = m.groups()
        try:
            cur = cur[int(idx)] if idx is not None else cur[key]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


def decode_section(data: Any, cls: type[T], prefix: str = "") -> T:
    """Convert a TOML table into ``cls``, raising ConfigError that names the key path."""
    try:
        return msgspec.convert(data, cls, strict=True)
    except ConfigError as err:
        if prefix and not err.path.startswith(prefix):
            raise ConfigError(f"{prefix}.{err.path}", err.expected, err.found) from None
        raise
    except msgspec.ValidationError as err:
        inner = err.__cause__ or err.__context__
        if isinstance(inner, ConfigError):
            path = inner.path if not prefix or inner.path.startswith(prefix) else f"{prefix}.{inner.path}"
            raise ConfigError(path, inner.expected, inner.found) from None
        m = _MSG.match(str(err))
        msg = m.group("msg") if m else str(err)
        rel = (m.group("path") if m else "") or ""
        found = _lookup(data, rel)
        dotted = rel.lstrip(".").replace("[", ".").replace("]", "")
        path = ".".join(p for p in (prefix, dotted) if p) or "(root)"
        if mm := _CMP.match(msg):
            expected = f"must be {mm['op']} {mm['bound']}"
        elif mm := _TYPE.match(msg):
            expected, found = f"must be {mm['exp']}", found if found is not None else mm["got"]
        elif mm := _MISSING.match(msg):
            path, expected = f"{path}.{mm['field']}".lstrip("."), "is required"
        elif mm := _UNKNOWN.match(msg):
            path, expected = f"{path}.{mm['field']}".lstrip("."), "is not a known setting"
            found = _lookup(data, f"{rel}.{mm['field']}")
        else:
            expected = msg
        raise ConfigError(path, expected, found) from None


def read_toml(path: Path | str) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(p), "an existing TOML file", "no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(p), "valid TOML", str(err)) from None


def config_hash(data: Any) -> str:
    """Stable sha256 of a config table (audit records carry it)."""
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()


class CommonConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The sections every riskguard job shares: env, kafka, topics."""

    env: str = "dev"
    kafka: KafkaSettings = KafkaSettings(bootstrap="127.0.0.1:9092")
    topics: TopicsConfig = TopicsConfig()


def load_common(path: Path | str) -> CommonConfig:
    """Load only the shared sections of a config file (other sections ignored)."""
    data = read_toml(path)
    shared = {k: data[k] for k in ("env", "kafka", "topics") if k in data}
    return decode_section(shared, CommonConfig)
