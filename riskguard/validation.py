"""Config checks declared on the structs, and how their errors read.

A config struct declares each value's bounds on its field (``Annotated[int, Meta(ge=1)]``
or one of the types below); msgspec checks them as it decodes a table, and
:func:`check_declared` applies them to a struct built in Python. Either way the error is
read here, once (:func:`read_error`), into a :class:`~riskguard.errors.ConfigError` that
names the key path, what was expected and what arrived (:func:`config_error`); a
``validate()`` method keeps only the checks that span fields. :func:`did_you_mean` is
the one hint for a misspelt name.

>>> class Window(msgspec.Struct, frozen=True, kw_only=True):
...     size: PositiveInt = 10
...     side: Literal["up", "down"] = "up"
>>> check_declared(Window(size=0), "step 'w'")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: step 'w'.size: must be >= 1; got 0
>>> check_declared(Window(side="sideways"), "w")
Traceback (most recent call last):
...
riskguard.errors.ConfigError: w.side: must be one of down, up; got 'sideways'
>>> did_you_mean("sise", ["size", "side"])
' (did you mean `size`?)'
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
import sys
from collections.abc import Iterable
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import msgspec.inspect as mi

from riskguard.errors import ConfigError

MAX_FLOAT = sys.float_info.max
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]
"""A number above 0; ``inf`` passes (a setting that ``inf`` turns off)."""
PositiveFinite = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_FLOAT)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_FLOAT)]
MAX_SECONDS = 366 * 86_400.0
"""The longest span a setting in seconds takes (a year and a day): its nanoseconds fit
the 64-bit counts of the wire contract, and no trust file lets a command live longer."""
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SECONDS)]
"""A span of seconds, 0 up to :data:`MAX_SECONDS`."""
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_SECONDS)]
"""A span of seconds above 0, up to :data:`MAX_SECONDS`."""
MAX_NANOSECONDS = 366 * 86_400 * 1_000_000_000
"""The longest span an integer setting in nanoseconds (``_ns``) takes: a year and a day, as
:data:`MAX_SECONDS`, so an event time plus it stays a 64-bit count."""
Nanoseconds = Annotated[int, msgspec.Meta(ge=0, le=MAX_NANOSECONDS)]
"""A span of nanoseconds, 0 up to :data:`MAX_NANOSECONDS`."""
PositiveNanoseconds = Annotated[int, msgspec.Meta(ge=1, le=MAX_NANOSECONDS)]
"""A span of nanoseconds above 0, up to :data:`MAX_NANOSECONDS`."""
Share = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
"""A share in (0, 1]."""
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
"""A share in [0, 1]."""

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<key>key` in `)?(?P<path>[^`]*)`)?$", re.S)
_EXPECTED_GOT = re.compile(r"^Expected `(?P<type>[^`]*)`, got `(?P<got>[^`]*)`")
_EXPECTED_CMP = re.compile(r"^Expected `(?P<type>[^`]*)` (?P<op>[<>]=?) (?P<bound>\S+)")
_LENGTH = re.compile(r"^Expected `(?P<type>[^`]*)` of length (?P<op>[<>]=?) (?P<bound>\S+)")
_PATTERN = re.compile(r"^Expected `(?P<type>[^`]*)` matching regex '(?P<bound>.*)'$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`")
_INVALID_VALUE = re.compile(r"^Invalid (?:enum )?value (?P<got>.*)$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


class Invalid(NamedTuple):
    """What one of msgspec's validation errors says: the JSON path it names (``$`` when
    none), its ``kind`` (``type``, ``bound``, ``length``, ``pattern``, ``missing``,
    ``unknown``, ``value`` or ``other``) and its parts.

    >>> read_error("Expected `int` >= 1 - at `$.partitions[...]`")
    Invalid(kind='bound', path='$.partitions[...]', message='Expected `int` >= 1', \
type='int', op='>=', bound='1', got='', field='', in_key=False)
    """

    kind: str
    path: str
    message: str
    type: str = ""
    op: str = ""
    bound: str = ""
    got: str = ""
    field: str = ""
    in_key: bool = False  # the error is in a key of the table at ``path``

    def words(self) -> str:
        """What was expected, as a config error says it: ``must be >= 1``."""
        if self.kind == "bound":
            if self.op == "<=" and float(self.bound) >= MAX_FLOAT:
                return "must be a finite number"
            return f"must be {self.op} {_bound(self.bound)}"
        if self.kind == "type":
            return f"must be {self.type}"
        if self.kind == "length":
            if (self.op, self.bound) == (">=", "1"):
                return "must not be empty"
            return f"must be of length {self.op} {self.bound}"
        if self.kind == "pattern":
            return f"must match {self.bound}"
        if self.kind == "missing":
            return "is required"
        if self.kind == "unknown":
            return "is not a known setting"
        return self.message


def read_error(text: str) -> Invalid:
    """Read the text of a ``msgspec.ValidationError``."""
    m = _AT.match(text)
    msg = m.group("msg") if m else text
    path = (m.group("path") if m else None) or "$"
    key = bool(m and m.group("key"))
    if mm := _EXPECTED_GOT.match(msg):
        return Invalid("type", path, msg, type=mm["type"], got=mm["got"], in_key=key)
    if mm := _EXPECTED_CMP.match(msg):
        return Invalid("bound", path, msg, type=mm["type"], op=mm["op"], bound=mm["bound"],
                       in_key=key)
    if mm := _LENGTH.match(msg):
        return Invalid("length", path, msg, type=mm["type"], op=mm["op"], bound=mm["bound"],
                       in_key=key)
    if mm := _PATTERN.match(msg):
        return Invalid("pattern", path, msg, type=mm["type"], bound=mm["bound"], in_key=key)
    if mm := _MISSING.match(msg):
        return Invalid("missing", path, msg, field=mm["field"])
    if mm := _UNKNOWN.match(msg):
        return Invalid("unknown", path, msg, field=mm["field"])
    if mm := _INVALID_VALUE.match(msg):
        return Invalid("value", path, msg, got=mm["got"], in_key=key)
    return Invalid("other", path, msg, in_key=key)


def _bound(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and "." in text else text


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` likely meant, or None: the one that starts with it, if one
    does (``halt`` -> ``halt_trading``), else the most alike.

    >>> closest("halt", ["alert", "halt_trading"]), closest("playbok", ["playbook"])
    ('halt_trading', 'playbook')
    """
    key, names = str(name), [str(k) for k in known]
    start = [n for n in names if key and n.startswith(key)]
    close = start[:1] if len(start) == 1 else difflib.get_close_matches(key, names, n=1)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str], *, shown: str = "{}") -> str:
    """`` (did you mean `x`?)`` for the known name closest to ``name``, or nothing;
    ``shown`` formats the name offered (``"{}:..."``: `` (did you mean `venue:...`?)``)."""
    close = closest(name, known)
    return f" (did you mean `{shown.format(close)}`?)" if close is not None else ""


def config_error(err: msgspec.ValidationError, data: Any, cls: Any,
                 prefix: str = "") -> ConfigError:
    """The :class:`ConfigError` for msgspec's error converting ``data`` into ``cls``: the
    key path under ``prefix``, what was expected and the value found there."""
    inner = err.__cause__ or err.__context__
    if isinstance(inner, ConfigError):  # raised by a struct's __post_init__
        path = inner.path
        if prefix and not path.startswith(prefix):
            path = f"{prefix}.{path}"
        return ConfigError(path, inner.expected, inner.found)
    invalid = read_error(str(err))
    rel, t = _resolve(data, cls, invalid.path[1:])
    found = _lookup(data, rel)
    path = _join(prefix, rel) or "(root)"
    expected = invalid.words()
    if invalid.kind in ("missing", "unknown"):
        path = _join(prefix, f"{rel}.{invalid.field}")
        found = None if invalid.kind == "missing" else _lookup(data, f"{rel}.{invalid.field}")
        if invalid.kind == "unknown" and isinstance(_value_type(t), mi.StructType):
            expected += did_you_mean(invalid.field, [f.encode_name for f in _value_type(t).fields])
    elif invalid.in_key:
        keys = _value_type(t).key_type if isinstance(_value_type(t), mi.DictType) else None
        choices = _choices(keys)
        expected = "keys must be one of " + ", ".join(choices) if choices else \
            f"keys {expected}"
        found = _literal(invalid.got) if invalid.got else invalid.message
    elif invalid.kind == "type" and found is None:
        found = invalid.got
    elif invalid.kind == "value" and (choices := _choices(t)):
        expected = _one_of(choices, found)
    return ConfigError(path, expected, found)


def _one_of(choices: list[str], found: Any) -> str:
    """``must be one of ...`` with the value ``found`` likely meant; a long list goes after
    the hint, so a message cut to one line keeps the hint."""
    hint, listed = did_you_mean(str(found), choices), ", ".join(choices)
    if len(listed) < 160:
        return f"must be one of {listed}{hint}"
    return f"must be one of the {len(choices)} values{hint}: {listed}"


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _join(prefix: str, rel: str) -> str:
    """``prefix`` and a path relative to it (``.a.b[0]``) as one key path."""
    if not prefix:
        return rel.lstrip(".")
    return prefix + rel if rel.startswith((".", "[")) or not rel else f"{prefix}.{rel}"


_CHECKING: set[type] = set()


def check_declared(obj: msgspec.Struct, path: str) -> None:
    """Apply the constraints ``obj``'s struct declares (it was built in Python, not
    decoded, so msgspec has not checked them); raise :class:`ConfigError` naming the key
    under ``path`` for the first it breaks. A struct may call it from its
    ``__post_init__``."""
    cls = type(obj)
    if cls in _CHECKING:  # called again from the __post_init__ of the copy being checked
        return
    data = msgspec.to_builtins(obj)
    _CHECKING.add(cls)
    try:
        msgspec.convert(data, cls)
    except msgspec.ValidationError as err:
        raise config_error(err, data, cls, path) from None
    finally:
        _CHECKING.discard(cls)


def _lookup(data: Any, path: str) -> Any:
    cur = data
    for m in _SEGMENT.finditer(path):
        key, idx = m.groups()
        try:
            cur = cur[int(idx)] if idx is not None else cur[key]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return cur


@functools.lru_cache(maxsize=64)
def type_info(cls: Any) -> Any:
    """msgspec's type info of a config struct (cached: each config check walks it)."""
    return mi.type_info(cls)


def unwrap(t: Any) -> Any:
    """A type without its constraints (``Annotated[int, Meta(ge=1)]`` is ``int``)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _value_type(t: Any) -> Any:
    """A type without its constraints, and an optional value's type without ``None``."""
    t = unwrap(t)
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return _value_type(rest[0]) if len(rest) == 1 else t
    return t


def _resolve(data: Any, cls: Any, rel: str) -> tuple[str, Any]:
    """msgspec's path with its ``[...]`` dict placeholders resolved to the offending keys,
    and the type found there (None when the path leaves the types it can follow)."""
    t: Any = type_info(cls)
    cur, out = data, ""
    for m in _SEGMENT.finditer(rel):
        field, idx = m.groups()
        t = _value_type(t)
        if field is not None and isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == field), None)
            cur = cur.get(field) if isinstance(cur, dict) else None
            out += f".{field}"
        elif idx == "..." and isinstance(t, mi.DictType) and isinstance(cur, dict):
            value_type = t.value_type
            bad = next((k for k, v in cur.items() if not _converts(v, value_type)),
                       next(iter(cur), "?"))
            cur, t = cur.get(bad), value_type
            out += f".{bad}"
        elif idx is not None and idx != "..." and isinstance(
                t, mi.ListType | mi.VarTupleType | mi.DictType):
            cur = cur[int(idx)] if isinstance(cur, list) and int(idx) < len(cur) else None
            t = t.value_type if isinstance(t, mi.DictType) else t.item_type
            out += f"[{idx}]"
        else:
            return rel, None
    return out, t


def _choices(t: Any) -> list[str]:
    t = _value_type(t)
    if isinstance(t, mi.LiteralType):
        return sorted(str(v) for v in t.values)
    if isinstance(t, mi.EnumType):  # in the order the enum declares them
        return [str(m.value) for m in t.cls]
    return []


def _converts(value: Any, t: Any) -> bool:
    try:
        msgspec.convert(value, _python_type(t), strict=True)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _python_type(t: Any) -> Any:
    """A Python annotation from msgspec's type info (enough to validate with)."""
    if isinstance(t, mi.Metadata):
        return _python_type(t.type)
    if isinstance(t, mi.StructType):
        return t.cls
    if isinstance(t, mi.DictType):
        return dict[_python_type(t.key_type), _python_type(t.value_type)]  # type: ignore[misc]
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return list[_python_type(t.item_type)]  # type: ignore[misc]
    if isinstance(t, mi.LiteralType):
        return Literal[tuple(t.values)]
    simple: dict[type, Any] = {mi.IntType: int, mi.FloatType: float, mi.StrType: str,
                               mi.BoolType: bool}
    names = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")
    limits = {n: getattr(t, n) for n in names if getattr(t, n, None) is not None}
    base = simple.get(type(t), Any)
    return Annotated[base, msgspec.Meta(**limits)] if limits else base
