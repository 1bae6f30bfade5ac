"""One grammar for the names of markets: venues, instruments, underlyings, counterparties,
assets and feeds, and every scope value.

A market name is 1 to 64 characters of ``A-Z a-z 0-9 _ . : @ + -``, starting with a
letter or a digit, with no ``..``: no ``/`` (a scope label and a market key use it to
join a venue to an instrument, ``instrument:okx/BTC-USDT``), nothing that reads as a
path (``..``, ``../../etc``, ``.hidden``). The wire contract enforces it (the schemas'
:data:`~riskguard.schemas.types.MarketName`), so what the market topic accepts the
command layer accepts too.

Sources spell symbols their own way. :func:`normalise_name` turns the spellings of
Kraken, ccxt and CryptoDataDownload (``BTC/USDT``, ``BTC/USDT:USDT``) into the
grammar (``BTC-USDT``, ``BTC-USDT:USDT``), applies configured aliases
(``{"XBT": "BTC"}``) to each part, and refuses the rest with the reason.

>>> normalise_name("BTC/USDT"), normalise_name("XBT/USD", {"XBT": "BTC"})
('BTC-USDT', 'BTC-USD')
>>> name_problem("../../etc")
"a market name has no '/' (a venue/instrument pair is two names); got '../../etc'"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache, wraps
from typing import Any, TypeVar

T = TypeVar("T")

_END = r"$(?!\n)"
MARKET_NAME_CHARS = r"A-Za-z0-9_.:@+-"
_NAME = rf"[A-Za-z0-9][{MARKET_NAME_CHARS}]{{0,63}}"
MARKET_NAME_PATTERN = rf"^(?!.*\.\.){_NAME}{_END}"
"""The pattern (Python and ECMA regex alike) of a market name."""
MARKET_KEY_PATTERN = rf"^(?!.*\.\.){_NAME}/{_NAME}{_END}"
"""The pattern of a market key: ``venue/instrument``, each a market name."""
MARKET_NAME_RULE = ("1-64 characters of A-Z a-z 0-9 _ . : @ + -, starting with a letter or "
                    "a digit, no '..'")
_MARKET = re.compile(MARKET_NAME_PATTERN)
_KEY = re.compile(MARKET_KEY_PATTERN)
_PAIR = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.+-]*)/([A-Za-z0-9][A-Za-z0-9_.+-]*)"
                   r"(:[A-Za-z0-9][A-Za-z0-9_.+-]*)?$")


MEMO_KEY_LIMIT = 256
"""Memos keyed by input keep only keys of at most this length (bytes or characters), so
their size in bytes is bounded by their entry count."""


def short_memo(maxsize: int, limit: int = MEMO_KEY_LIMIT
               ) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """An lru memo of ``maxsize`` entries for a function whose first argument is None or
    at most ``limit`` long; a longer one is computed each time, never held.

    >>> calls = []
    >>> f = short_memo(8, limit=3)(lambda k: calls.append(k) or len(k))
    >>> [f("ab"), f("ab"), f("abcd"), f("abcd")], calls
    ([2, 2, 4, 4], ['ab', 'abcd', 'abcd'])
    """
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        memo = lru_cache(maxsize=maxsize)(fn)

        @wraps(fn)
        def of(key: Any, *rest: Any) -> T:
            return memo(key, *rest) if key is None or len(key) <= limit else fn(key, *rest)
        of.cache_clear = memo.cache_clear  # type: ignore[attr-defined]
        of.cache_info = memo.cache_info  # type: ignore[attr-defined]
        return of
    return wrap


def is_market_name(value: str) -> bool:
    """Whether ``value`` follows the market-name grammar."""
    return _MARKET.search(value) is not None


def is_market_key(value: str) -> bool:
    """Whether ``value`` is a market key: a venue and an instrument, each a market name,
    joined by ``/`` (``binance/BTC-USDT``).

    >>> is_market_key("binance/BTC-USDT"), is_market_key("BTC-USDT"), is_market_key("a/b/c")
    (True, False, False)
    """
    return _KEY.search(value) is not None


@short_memo(8192, limit=64)  # a longer value is refused by its length alone
def name_problem(value: str) -> str | None:
    """None if ``value`` is a market name; else why not, in one line.

    >>> name_problem("BTC-USDT") is None, name_problem("..")
    (True, "a market name starts with a letter or a digit and holds no '..'; got '..'")
    """
    if _MARKET.search(value) is not None:
        return None
    if not value or len(value) > 64:
        return f"a market name is 1-64 characters; got {len(value)}"
    if "/" in value:
        return ("a market name has no '/' (a venue/instrument pair is two names); got "
                f"{value!r}")
    if ".." in value or not value[0].isascii() or not value[0].isalnum():
        return f"a market name starts with a letter or a digit and holds no '..'; got {value!r}"
    return f"a market name is {MARKET_NAME_RULE}; got {value!r}"


def normalise_name(raw: str, aliases: Mapping[str, str] | None = None) -> str:
    """``raw`` in the market-name grammar: surrounding blanks gone, ``BASE/QUOTE`` (and
    ccxt's ``BASE/QUOTE:SETTLE``) joined with ``-``, each part of a ``-``-joined name
    mapped through ``aliases``; ``ValueError`` naming the problem if that is no market
    name either.

    >>> normalise_name(" BTC/USDT:USDT "), normalise_name("XBT-PERP", {"XBT": "BTC"})
    ('BTC-USDT:USDT', 'BTC-PERP')
    >>> normalise_name("a/b/c")
    Traceback (most recent call last):
    ...
    ValueError: a market name has no '/' (a venue/instrument pair is two names); got 'a/b/c'
    """
    text = raw.strip()
    m = _PAIR.match(text)
    if m is not None:
        text = f"{m.group(1)}-{m.group(2)}{m.group(3) or ''}"
    if aliases:
        head, colon, tail = text.partition(":")
        text = "-".join(aliases.get(p, p) for p in head.split("-")) + colon + tail
    problem = name_problem(text)
    if problem is not None:
        raise ValueError(problem if text == raw else f"{problem} (from {raw!r})")
    return text
