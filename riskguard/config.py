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
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi

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


_SEG = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _concrete_path(data: Any, cls: Any, rel: str) -> str:
    """Resolve msgspec's ``[...]`` dict placeholders to the offending keys."""
    if "[...]" not in rel:
        return rel
    t: Any = mi.type_info(cls)
    cur, out = data, ""
    for m in _SEG.finditer(rel):
        field, idx = m.groups()
        while isinstance(t, mi.Metadata):
            t = t.type
        if isinstance(t, mi.UnionType):
            t = next((x for x in t.types if not isinstance(x, mi.NoneType)), t)
        if field is not None and isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == field), mi.AnyType())
            cur = cur.get(field) if isinstance(cur, dict) else None
            out += f".{field}"
        elif idx == "..." and isinstance(t, mi.DictType) and isinstance(cur, dict):
            value_type = t.value_type
            bad = next(
                (k for k, v in cur.items() if not _converts(v, value_type)), next(iter(cur), "?")
            )
            cur, t = cur.get(bad), value_type
            out += f".{bad}"
        elif idx is not None and idx != "..." and isinstance(t, mi.ListType | mi.DictType):
            cur = cur[int(idx)] if isinstance(cur, list) and int(idx) < len(cur) else None
            t = t.item_type if isinstance(t, mi.ListType) else t.value_type
            out += f"[{idx}]"
        else:
            return rel
    return out


def _converts(value: Any, t: Any) -> bool:
    try:
        msgspec.convert(value, _python_type(t), strict=True)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _python_type(t: Any) -> Any:
    """Rebuild a Python annotation from msgspec type info (enough for validation)."""
    if isinstance(t, mi.Metadata):
        inner = _python_type(t.type)
        limits = _constraints(t.type)
        return Annotated[inner, msgspec.Meta(**limits)] if limits else inner
    if isinstance(t, mi.StructType):
        return t.cls
    if isinstance(t, mi.DictType):
        return dict[_python_type(t.key_type), _python_type(t.value_type)]  # type: ignore[misc]
    if isinstance(t, mi.ListType):
        return list[_python_type(t.item_type)]  # type: ignore[misc]
    simple: dict[type, Any] = {mi.IntType: int, mi.FloatType: float, mi.StrType: str,
                               mi.BoolType: bool}
    return simple.get(type(t), Any)


def _constraints(t: Any) -> dict[str, Any]:
    names = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")
    return {n: getattr(t, n) for n in names if getattr(t, n, None) is not None}


def _bound(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and "." in text else text


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
            path = inner.path
            if prefix and not path.startswith(prefix):
                path = f"{prefix}.{path}"
            raise ConfigError(path, inner.expected, inner.found) from None
        m = _MSG.match(str(err))
        msg = m.group("msg") if m else str(err)
        rel = _concrete_path(data, cls, (m.group("path") if m else "") or "")
        found = _lookup(data, rel)
        dotted = rel.lstrip(".").replace("[", ".").replace("]", "")
        path = ".".join(p for p in (prefix, dotted) if p) or "(root)"
        if mm := _CMP.match(msg):
            expected = f"must be {mm['op']} {_bound(mm['bound'])}"
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
