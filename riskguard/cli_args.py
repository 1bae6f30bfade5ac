"""Argparse types for the numeric flags: a bad value is the flag's one-line error.

>>> positive_float("2.5"), positive_int("3"), port("0")
(2.5, 3, 0)
>>> positive_float("nan")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be a number above 0 (finite); got 'nan'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_SECONDS = 366 * 86_400.0
"""The longest span a seconds flag takes (a year and a day)."""


def _number(text: str, kind: type, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    what = "a number above 0 (finite)"
    value = _number(text, float, what)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def seconds(most: float = MAX_SECONDS, *, zero: bool = False) -> Callable[[str], float]:
    """A finite number of seconds above 0 (or 0 too, with ``zero``), at most ``most``.

    >>> seconds(zero=True)("0"), seconds(10)("2")
    (0.0, 2.0)
    """
    def parse(text: str) -> float:
        if zero and _number(text, float, "seconds, 0 or more") == 0:
            return 0.0
        value = positive_float(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g} seconds; got {text!r}")
        return value
    return parse


def _whole(least: int, most: int | None, what: str) -> Callable[[str], int]:
    """A parser of whole numbers from ``least`` to ``most`` (None: no top)."""
    def parse(text: str) -> int:
        value = int(_number(text, int, what))
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
        return value
    return parse


positive_int = _whole(1, None, "a whole number, 1 or more")
non_negative_int = _whole(0, None, "a whole number, 0 or more")
port = _whole(0, 65_535, "a port, 0 to 65535")  # 0: any free port
