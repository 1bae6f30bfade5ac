"""Examples of every config key, taken from the shipped example configs.

``dataflows/guard.example.toml`` (a production config with every key) and
``dataflows/playbook.toml`` (the bundled playbook) are decoded and walked along the
config structs: the first value each ``(struct, key)`` takes there is its example, a
key that holds tables has the first such table's header as its own, and a key left
commented out (``# idle_eof_s = 4.0``) gives the value written there. The comment beside
a key is kept too: the configuration reference (:mod:`riskguard.config_docs`) falls back
to it where a field has no comment in the code, and a config error that needs a value
(:func:`example_for`) shows where and how to write one.

>>> from riskguard.dataflows.guard import GuardConfig
>>> example_for(GuardConfig, "exposure.instruments.fx_index.USDT")
'[exposure.instruments] fx_index = { USDT = "USDT-USD", USDC = "USDC-USD", BTC = "BTC-USD" }'
>>> example_for(GuardConfig, "playbook.rules[2].ladder[0].action")
'[[playbook.rules]] ladder = [{ action = "alert" }]'
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgspec.inspect as mi

from riskguard.toml_text import toml_key, toml_value
from riskguard.validation import type_info, unwrap

EXAMPLES = ("guard.example.toml", "playbook.toml")
_KEY = re.compile(r"^\s*(?:#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def record(t: Any) -> Any:
    """The struct a table of this type decodes into (None: not a table of one struct)."""
    t = unwrap(t)
    if isinstance(t, mi.UnionType):
        structs = [unwrap(x) for x in t.types if isinstance(unwrap(x), mi.StructType)]
        return structs[0] if len(structs) == 1 else None
    return t if isinstance(t, mi.StructType) else None


@dataclass
class Examples:
    """What the example configs say of each ``(struct, key)``."""

    values: dict[tuple[type, str], str] = field(default_factory=dict)
    """``key = value`` as the example sets it (or a table header for a key of tables)."""
    tables: dict[tuple[type, str], str] = field(default_factory=dict)
    """The header of the table (``[exposure.instruments]``) that holds the key there."""
    comments: dict[tuple[type, str], str] = field(default_factory=dict)
    """The comment beside the key, with the comment lines below it that continue it."""


def _header(path: list[str], array: bool) -> str:
    text = ".".join(toml_key(p) for p in path)
    return f"[[{text}]]" if array else f"[{text}]"


@dataclass(frozen=True)
class _At:
    """Where a walk is: the table it is in, and how a key written there is wrapped when it
    sits inside inline tables (``delta = { vol_scaling = { ... } }``)."""

    path: tuple[str, ...]
    array: bool = False
    inline: tuple[tuple[str, str], ...] = ()

    def header(self) -> str:
        return _header(list(self.path), self.array)

    def wrap(self, text: str) -> str:
        for open_, close in reversed(self.inline):
            text = f"{open_}{text}{close}"
        return text

    def into(self, open_: str, close: str) -> _At:
        return _At(self.path, self.array, (*self.inline, (open_, close)))


def _walk(value: Any, t: Any, at: _At, headers: dict[tuple[str, ...], None], out: Examples) -> None:
    """Record an example for every key of ``value`` (a decoded table of type ``t``);
    ``headers`` are the tables the example file writes with a header of their own."""
    rec = record(t)
    if rec is None or not isinstance(value, dict):
        return
    types = {f.encode_name: unwrap(f.type) for f in rec.fields}
    for key, item in value.items():
        if key not in types:
            continue
        where = (rec.cls, key)
        out.tables.setdefault(where, at.header())
        inner = _tables_of(types[key])
        if inner is None or not isinstance(item, dict | list) or not item:
            out.values.setdefault(where, at.wrap(f"{key} = {toml_value(item)}"))
            continue
        kind, item_type = inner
        sub = (*at.path, key)
        if kind == "struct":
            first = _first_under(sub, headers) if not at.inline else None
            if first is not None:
                out.values.setdefault(where, _header(list(first), False))
                _walk(item, item_type, _At(sub), headers, out)
            else:
                out.values.setdefault(where, at.wrap(f"{key} = {toml_value(item)}"))
                _walk(item, item_type, at.into(f"{key} = {{ ", " }"), headers, out)
        elif kind == "list":
            if not at.inline and sub in headers:
                out.values.setdefault(where, _header(list(sub), True))
                for element in item:
                    _walk(element, item_type, _At(sub, True), headers, out)
            else:
                out.values.setdefault(where, at.wrap(f"{key} = [{toml_value(item[0])}]"))
                for element in item:
                    _walk(element, item_type, at.into(f"{key} = [{{ ", " }]"), headers, out)
        elif isinstance(item, dict):
            for name, element in item.items():
                _entry(where, sub, name, element, item_type, at, headers, out)


def _entry(where: tuple[type, str], sub: tuple[str, ...], name: str, element: Any,
           item_type: Any, at: _At, headers: dict[tuple[str, ...], None], out: Examples) -> None:
    """One named table of a key of named tables (``[feeds.venues.binance]``, or
    ``gross_notional = { limit = ... }`` under ``[limits.counterparties.okx.limits]``)."""
    own = (*sub, name)
    first = _first_under(own, headers) if not at.inline else None
    if first is not None:
        if record(item_type) is None and isinstance(element, dict) and element:
            # named tables of named tables (limits.firm_assets.<asset>.<kind>): one entry
            inner, value = next(iter(element.items()))
            out.values.setdefault(where, f"{_header(list(first), False)} "
                                         f"{toml_key(inner)} = {toml_value(value)}")
        else:
            out.values.setdefault(where, _header(list(first), False))
        _walk(element, item_type, _At(own), headers, out)
    elif not at.inline and sub in headers:
        out.values.setdefault(where, f"{_header(list(sub), False)} "
                                     f"{toml_key(name)} = {toml_value(element)}")
        _walk(element, item_type, _At(sub).into(f"{toml_key(name)} = {{ ", " }"), headers, out)
    else:
        key = where[1]
        out.values.setdefault(where, at.wrap(f"{key} = {{ {toml_key(name)} = "
                                             f"{toml_value(element)} }}"))
        _walk(element, item_type, at.into(f"{key} = {{ {toml_key(name)} = {{ ", " } }"),
              headers, out)


Headers = dict[tuple[str, ...], None]


def _first_under(path: tuple[str, ...], headers: Headers) -> tuple[str, ...] | None:
    """The table at ``path`` if the file writes it with a header, else the first one below
    it that it writes so (``[feeds.venues.binance]`` for ``feeds``); None: inline only."""
    if path in headers:
        return path
    return next((h for h in headers if h[:len(path)] == path), None)


def _tables_of(t: Any) -> tuple[str, Any] | None:
    """How a key holds tables: one (``struct``), a list (``list``) or named ones
    (``dict``), with the struct type; None: it holds values."""
    if record(t) is not None:
        return "struct", t
    if isinstance(t, mi.ListType | mi.VarTupleType) and record(t.item_type) is not None:
        return "list", t.item_type
    if isinstance(t, mi.DictType) and (record(t.value_type) is not None or (isinstance(
            unwrap(t.value_type), mi.DictType) and record(unwrap(t.value_type).value_type))):
        return "dict", unwrap(t.value_type)
    return None


def resolve(root: Any, parts: list[str]) -> Any:
    """The struct of the table at ``parts`` (None: not a table of one struct)."""
    t: Any = type_info(root)
    for part in parts:
        rec = record(t)
        t = unwrap(t)
        if rec is not None:
            t = next((f.type for f in rec.fields if f.encode_name == part), None)
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
        t = unwrap(t) if t is not None else None
        if isinstance(t, mi.ListType | mi.VarTupleType):
            t = t.item_type
    return record(t) if t is not None else None


def _text_pass(root: Any, text: str, out: Examples) -> None:
    """The comments beside keys, and the keys left commented out (``# key = value``)."""
    table: list[str] = []
    array = False
    last, col = None, -1
    for line in text.splitlines():
        stripped = line.strip()
        key = _KEY.match(line)
        if stripped.startswith("["):
            head = stripped.split("#")[0].strip()
            array = head.startswith("[[")
            table = [p.strip().strip('"') for p in head.strip("[]").split(".")]
            last = None
        elif key:
            rec = resolve(root, table)
            last = None
            if rec is None or key.group(1) not in {f.encode_name for f in rec.fields}:
                continue
            where = (rec.cls, key.group(1))
            value, comment = _split_comment(key.group(2))
            if stripped.startswith("#") and value and _parses(key.group(1), value):
                out.values.setdefault(where, f"{key.group(1)} = {value}")
                out.tables.setdefault(where, _header(table, array))
            if comment is not None:
                last = where
                col = line.index("#", key.end(1))
                out.comments.setdefault(where, comment)
        elif last is not None and stripped.startswith("#") and line.index("#") == col:
            out.comments[last] = f"{out.comments[last]} {stripped.lstrip('#').strip()}"
        else:
            last = None


def _split_comment(rest: str) -> tuple[str, str | None]:
    """A line's value and its comment (a ``#`` outside quotes starts it)."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), None


def _parses(key: str, value: str) -> bool:
    try:
        tomllib.loads(f"{key} = {value}")
    except tomllib.TOMLDecodeError:
        return False
    return True


@functools.cache
def examples(root: Any) -> Examples:
    """Every example the shipped configs give for the structs reached from ``root``."""
    out = Examples()
    pkg = resources.files("riskguard.dataflows")
    for name in EXAMPLES:
        text = pkg.joinpath(name).read_text()
        _walk(tomllib.loads(text), type_info(root), _At(()), _headers(text), out)
        _text_pass(root, text, out)
    return out


def _headers(text: str) -> dict[tuple[str, ...], None]:
    """The tables a TOML text writes with a header line, as key paths, in file order."""
    out: dict[tuple[str, ...], None] = {}
    for line in text.splitlines():
        head = line.split("#")[0].strip()
        if head.startswith("["):
            out.setdefault(tuple(p.strip().strip('"') for p in head.strip("[]").split(".")))
    return out


def field_at(root: Any, path: str) -> tuple[type, str] | None:
    """The ``(struct, key)`` a dotted error path (``playbook.rules[0].ladder[1].action``,
    ``limits.counterparties.okx.limits.gross_notional.limit``) ends in: the last part of it
    that names a field (a table's entry names, a list's indexes and what follows a value
    are passed over)."""
    t: Any = type_info(root)
    found = None
    for m in _PART.finditer(path):
        name, index = m.groups()
        t = unwrap(t)
        if isinstance(t, mi.UnionType):
            t = record(t) or t
        if index is not None or name is None:
            if isinstance(t, mi.ListType | mi.VarTupleType):
                t = t.item_type
            continue
        if isinstance(t, mi.StructType):
            ft = next((f.type for f in t.fields if f.encode_name == name), None)
            if ft is None:
                return found
            found, t = (t.cls, name), ft
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return found
    return found


def example_for(root: Any, path: str) -> str | None:
    """Where and how to set the key an error ``path`` names, from the example configs:
    ``[table] key = value`` (None: no example of it)."""
    at = field_at(root, path)
    if at is None:
        return None
    ex = examples(root)
    value = ex.values.get(at)
    if value is None:
        return None
    table = ex.tables.get(at, "")
    return f"{table} {value}".strip() if table not in ("", "[]") else value
