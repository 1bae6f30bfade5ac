"""Hypothesis strategies derived from the wire structs' own type info.

Built from :func:`msgspec.inspect.type_info`, so new fields and constraints
are covered without editing this file.
"""

from __future__ import annotations

import enum
import re
from functools import partial
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st
from riskguard.schemas.types import HEX_DIGEST_PATTERN

_NAME_ALPHABET = st.sampled_from("abcxyzABC019_.:/@+-")


def _float(t: mi.FloatType) -> st.SearchStrategy[float]:
    lo = t.ge if t.ge is not None else (t.gt if t.gt is not None else -1e12)
    hi = t.le if t.le is not None else (t.lt if t.lt is not None else 1e12)
    lo, hi = max(lo, -1e12), min(hi, 1e12)
    return st.floats(
        min_value=lo, max_value=hi, exclude_min=t.gt is not None and t.ge is None,
        exclude_max=t.lt is not None and t.le is None, allow_nan=False, allow_infinity=False,
    )


def _str(t: mi.StrType) -> st.SearchStrategy[str]:
    lo, hi = t.min_length or 0, min(t.max_length or 20, 20)
    if t.pattern == HEX_DIGEST_PATTERN:
        return st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
    if t.pattern:
        rx = re.compile(t.pattern)
        return st.text(alphabet=_NAME_ALPHABET, min_size=max(lo, 1),
                       max_size=max(hi, 1)).filter(lambda s: rx.search(s) is not None)
    return st.text(min_size=lo, max_size=hi)


def _valid_or_none(cls: type, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except ValueError:
        return None


def _is_not_none(x: Any) -> bool:
    return x is not None


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy producing valid Python values for msgspec type ``t``."""
    if isinstance(t, mi.Metadata):
        pattern = (t.extra_json_schema or {}).get("pattern")
        if isinstance(t.type, mi.StrType) and pattern and not t.type.pattern:
            # a CachedName: the pattern lives in the JSON Schema, the Codec checks it
            return _str(msgspec.structs.replace(t.type, pattern=pattern))
        return strategy_for(t.type)
    if isinstance(t, mi.StructType):
        fields = {f.name: strategy_for(f.type) for f in t.fields}
        # a struct's own cross-field checks (``__post_init__``) reject some draws
        return st.builds(partial(_valid_or_none, t.cls), **fields).filter(_is_not_none)
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        hi = t.le if t.le is not None else 2**63 - 1
        return st.integers(min_value=lo, max_value=hi)
    if isinstance(t, mi.FloatType):
        return _float(t)
    if isinstance(t, mi.StrType):
        return _str(t)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=64)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.UnionType):
        return st.one_of(*[strategy_for(x) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), max_size=3)
    if isinstance(t, mi.TupleType):
        return st.tuples(*[strategy_for(x) for x in t.item_types])
    if isinstance(t, mi.VarTupleType):
        return st.lists(strategy_for(t.item_type), max_size=3).map(tuple)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=3)
    if isinstance(t, mi.AnyType):
        return st.one_of(st.integers(-1000, 1000), st.text(max_size=5), st.booleans())
    msg = f"no strategy for {t!r}"
    raise NotImplementedError(msg)


def records(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of wire record ``cls``."""
    return strategy_for(mi.type_info(cls))


__all__ = ["enum", "records", "strategy_for"]
