"""TOML config, read with :mod:`tomllib` and decoded into typed structs.

A bad value stops start-up with an error that names the key path, what was
expected and what was found:

>>> decode_section({"partitions": {"market": -5}}, TopicsConfig, "topics")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: topics.partitions.market: must be >= 1; got -5

Operator sections (features, detector, exposure, limits, playbook, ...)
are typed by the config structs of their operator modules and decoded the
same way by :func:`decode_section`. A key no struct knows is refused, never
ignored, whether or not its struct forbids unknown fields, with the closest
known name:

>>> decode_section({"partitionz": {}}, TopicsConfig, "topics")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: topics.partitionz: is not a known setting
(did you mean `partitions`?); got {}
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from riskguard.connectors.settings import REDACTED, KafkaSettings, looks_secret
from riskguard.connectors.topics import TopicsConfig
from riskguard.errors import ConfigError
from riskguard.validation import config_error, did_you_mean, type_info, unwrap

T = TypeVar("T")


def decode_section(data: Any, cls: type[T], prefix: str = "") -> T:
    """Convert a TOML table into ``cls``, raising ConfigError that names the key path.

    Every table in ``data`` is first checked against the struct it decodes into
    (:func:`check_known_keys`): an unknown key is an error, never a default.
    """
    check_known_keys(data, cls, prefix)
    try:
        return msgspec.convert(data, cls, strict=True)
    except ConfigError as err:
        if prefix and not err.path.startswith(prefix):
            raise ConfigError(f"{prefix}.{err.path}", err.expected, err.found) from None
        raise
    except msgspec.ValidationError as err:
        bad = config_error(err, data, cls, prefix)
        if looks_secret(bad.path.rsplit(".", 1)[-1]):
            bad = ConfigError(bad.path, bad.expected, REDACTED)
        raise bad from None


# -- unknown keys ---------------------------------------------------------------------

_LISTS = (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)
_DICTS = (mi.DictType, mi.FrozenDictType)
_RECORDS = (mi.StructType, mi.DataclassType, mi.TypedDictType, mi.NamedTupleType)


def _fields(t: Any) -> dict[str, Any]:
    """The keys a record type accepts (its tag field included) and their types."""
    out = {f.encode_name: f.type for f in t.fields}
    tag_field = getattr(t, "tag_field", None)
    if tag_field is not None:
        out[tag_field] = mi.AnyType()
    return out


def _key_names(t: Any) -> list[str] | None:
    """The keys a table of this dict type may hold, when its key type lists them (a
    ``Literal`` of names); None: any key."""
    keys = unwrap(t.key_type)
    if isinstance(keys, mi.LiteralType):
        return [str(v) for v in keys.values]
    return None


def _member_for(t: Any, value: Any) -> Any:
    """The member of union ``t`` a value of this shape decodes into (None: no single one).

    A table goes to the union's dict type if it has one, else to its one record type (a
    tagged union: the one whose tag the table names); an array to its one array type.
    """
    members = [unwrap(x) for x in t.types]
    if isinstance(value, dict):
        records = [x for x in members if isinstance(x, _RECORDS)]
        if any(isinstance(x, _DICTS) for x in members):
            return next((x for x in members if isinstance(x, _DICTS)), None)
        if len(records) == 1:
            return records[0]
        tagged = [x for x in records if isinstance(x, mi.StructType)
                  and x.tag_field is not None and value.get(x.tag_field) == x.tag]
        return tagged[0] if len(tagged) == 1 else None
    if isinstance(value, list):
        arrays = [x for x in members if isinstance(x, (*_LISTS, mi.TupleType))]
        return arrays[0] if len(arrays) == 1 else None
    return None


def _check_known(value: Any, t: Any, path: str) -> None:
    t = unwrap(t)
    if isinstance(t, mi.UnionType):
        t = _member_for(t, value)
        if t is None:
            return
    if isinstance(value, dict):
        if isinstance(t, _RECORDS) and not isinstance(t, mi.NamedTupleType):
            known = _fields(t)
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key not in known:
                    found = REDACTED if looks_secret(str(key)) else item
                    raise ConfigError(where, "is not a known setting" + did_you_mean(key, known),
                                      found)
                _check_known(item, known[key], where)
        elif isinstance(t, _DICTS):
            names = _key_names(t)
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if names is not None and key not in names:
                    hint = did_you_mean(key, names) or f" (one of {', '.join(sorted(names))})"
                    raise ConfigError(where, "is not a known setting" + hint, item)
                _check_known(item, t.value_type, where)
    elif isinstance(value, list):
        if isinstance(t, _LISTS):
            for i, item in enumerate(value):
                _check_known(item, t.item_type, f"{path}[{i}]")
        elif isinstance(t, mi.TupleType):
            for i, (item, it) in enumerate(zip(value, t.item_types, strict=False)):
                _check_known(item, it, f"{path}[{i}]")


def check_known_keys(data: Any, cls: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``data`` that ``cls`` has no place for.

    Walks every table of ``data`` along the type tree of ``cls``: nested structs,
    tables of structs, arrays of structs, optional and tagged-union members. The
    error names the full key path and, when one is close, the known key meant.

    >>> check_known_keys({"kafka": {"boostrap": "b:9092"}}, CommonConfig)
    Traceback (most recent call last):
    ...
    riskguard.errors.ConfigError: kafka.boostrap: is not a known setting
    (did you mean `bootstrap`?); got 'b:9092'
    """
    _check_known(data, type_info(cls), prefix)


def check_key_path(cls: Any, dotted: str, *, extra: Iterable[str] = (),
                   found: Any = None) -> None:
    """Raise ConfigError unless ``dotted`` (``detector.warmup_events``) names a setting
    of ``cls``: each part a field of its struct, or any key of a table of named
    entries (``feeds.venues.okx.max_gap_ns``). ``extra`` lists more accepted paths;
    ``found`` is what the error reports as given for the path.

    >>> check_key_path(CommonConfig, "topics.default_partitionz", found=[3])
    Traceback (most recent call last):
    ...
    riskguard.errors.ConfigError: topics.default_partitionz: is not a known setting
    (did you mean `topics.default_partitions`?); got [3]
    """
    extra = tuple(extra)
    if dotted in extra:
        return
    t: Any = type_info(cls)
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        t = unwrap(t)
        if isinstance(t, mi.UnionType):
            t = _member_for(t, {})
        done = ".".join(parts[:i])
        if isinstance(t, _RECORDS):
            known = _fields(t)
            if part not in known:
                here = f"{done}." if done else ""
                names = [*known, *(e[len(here):] for e in extra
                                   if e.startswith(here) and "." not in e[len(here):])]
                hint = did_you_mean(part, names).replace("`", f"`{here}", 1)
                raise ConfigError(f"{here}{part}", "is not a known setting" + hint, found)
            t = known[part]
        elif isinstance(t, _DICTS):
            t = t.value_type
        elif isinstance(t, mi.AnyType):
            return
        else:
            raise ConfigError(dotted, f"a path into config tables ({done} holds a value, "
                              "not a table)", found)


def read_playbook_file(path: Path | str) -> dict[str, Any]:
    """The ``[playbook]`` table of a playbook file (``playbook_file = ...``).

    The file holds that one table: anything else beside it (a misspelt
    ``[playbok]``) is refused, so a typo never runs the guard without a playbook.
    """
    doc = read_toml(path)
    for key in doc:
        if key != "playbook":
            raise ConfigError(f"{path}: {key}", "is not a known setting of a playbook file "
                              "(it holds one [playbook] table)" + did_you_mean(key, ["playbook"]),
                              doc[key])
    table = doc.get("playbook")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: playbook", "a [playbook] table", table)
    return table


def no_rules_note() -> str:
    """What a run whose playbook has no rules says: it reports signals and issues no
    command, and where the bundled playbook is."""
    from importlib import resources  # noqa: PLC0415

    bundled = resources.files("riskguard.dataflows").joinpath("playbook.toml")
    return ("note: the playbook has no rules, so no mitigation command will be issued "
            f"(signals only); the bundled playbook is {bundled}: copy it beside the config "
            "and set playbook_file = \"playbook.toml\" above the first [table] "
            "(docs/playbooks.md)")


def inline_playbook_file(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config table with its ``playbook_file`` (relative to ``base``) read into
    ``[playbook]``; a config that has both is refused (one of them would be ignored)."""
    if "playbook_file" not in data:
        return data
    if "playbook" in data:
        raise ConfigError("playbook_file", "either playbook_file or a [playbook] table, not "
                          "both (the file would be ignored)", data["playbook_file"])
    name = data["playbook_file"]
    if not isinstance(name, str):
        raise ConfigError("playbook_file", "must be str", name)
    return {**data, "playbook": read_playbook_file(base / name)}


def read_toml(path: Path | str) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(p), "an existing TOML file", "no such file") from None
    except OSError as err:  # a folder, no permission, ...
        raise ConfigError(str(p), "a readable TOML file", err.strerror or str(err)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # TOML is UTF-8 text
        raise ConfigError(str(p), "valid TOML", str(err)) from None
    except ValueError as err:  # a path holding a NUL character
        raise ConfigError(str(p), "a readable TOML file", str(err)) from None


def config_hash(data: Any) -> str:
    """Stable sha256 of a config table (audit records carry it)."""
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()


class CommonConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The sections every riskguard job shares: env, kafka, topics."""

    env: str = "dev"
    kafka: KafkaSettings = KafkaSettings(bootstrap="127.0.0.1:9092")
    topics: TopicsConfig = TopicsConfig()


GUARD_KEYS = (
    "env", "kafka", "topics", "keys", "input", "feeds", "features", "detector", "exposure",
    "limits", "playbook", "sign", "audit", "tier", "replica", "admission", "tick_ns",
    "mark_interval_ns", "mark_move_bps", "playbook_file", "sink_delivery_timeout_s",
    "gc_gen0_threshold",
)
"""The top-level keys of a guard config (``riskguard.dataflows.guard.GuardConfig``)."""


def load_common(path: Path | str) -> CommonConfig:
    """Load only the shared sections of a guard config file; its other sections are
    the guard's, but a top-level key no guard config has (``[topic]``) is refused."""
    data = read_toml(path)
    for key in data:
        if key not in GUARD_KEYS:
            found = REDACTED if looks_secret(key) else data[key]
            raise ConfigError(key, "is not a known setting" + did_you_mean(key, GUARD_KEYS),
                              found)
    shared = {k: data[k] for k in ("env", "kafka", "topics") if k in data}
    return decode_section(shared, CommonConfig)


def common_config(path: Path | str | None, *, brokers: str | None = None,
                  env: str | None = None) -> CommonConfig:
    """The shared sections of a command line's ``--config`` (defaults without one), with
    ``--brokers`` and ``--env`` winning. Only the address changes with ``--brokers``:
    the TLS and SASL settings of ``--config`` still apply.

    >>> common_config(None, brokers="k:9093", env="prod").kafka.bootstrap
    'k:9093'
    """
    cfg = load_common(path) if path else CommonConfig()
    kafka = msgspec.structs.replace(cfg.kafka, bootstrap=brokers) if brokers else cfg.kafka
    return CommonConfig(env=env or cfg.env, kafka=kafka, topics=cfg.topics)
