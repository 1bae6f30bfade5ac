"""A one-line progress bar on stderr for long CLI work, shown only in a terminal.

The line is redrawn at most every ``every_s`` seconds and erased by
:meth:`Progress.close`; when stderr is not a terminal it writes nothing, unless
``force=True``.

>>> import io
>>> buf = io.StringIO()
>>> with Progress("publish", total=200, stream=buf, force=True, every_s=0) as bar:
...     bar.advance(50)
>>> buf.getvalue().split("\\r")[1].rstrip()
'publish [#####...............]  25% 50/200'
>>> quiet = io.StringIO()
>>> with Progress("publish", total=200, stream=quiet) as bar:
...     bar.advance(50)
>>> quiet.getvalue()
''
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

WIDTH = 20  # characters of the bar itself


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class Progress:
    """``label [####....] 42% done/total unit``; ``total=None`` shows a count only.

    ``advance(n)`` adds to the count, ``update(done)`` sets it, ``note(text)``
    sets a short text shown after the figures (a scenario's name, say).
    """

    def __init__(
        self, label: str, total: float | None = None, *, unit: str = "",
        stream: TextIO | None = None, force: bool | None = None, every_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.text = ""
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self._stream) if force is None else force
        self._every = every_s
        self._clock = clock
        self._last: float | None = None
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: float = 1) -> None:
        self.update(self.done + n)

    def update(self, done: float) -> None:
        self.done = done
        self._draw()

    def note(self, text: str) -> None:
        self.text = text
        self._draw(now=True)

    def line(self) -> str:
        """The text of the bar as it stands."""
        count = f"{self.done:,.0f}"
        if self.total:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(frac * WIDTH)
            bar = "#" * filled + "." * (WIDTH - filled)
            head = f"{self.label} [{bar}] {frac:4.0%} {count}/{self.total:,.0f}"
        else:
            head = f"{self.label} {count}"
        tail = " ".join(t for t in (self.unit, self.text) if t)
        return f"{head} {tail}" if tail else head

    def _draw(self, *, now: bool = False) -> None:
        if not self.enabled:
            return
        t = self._clock()
        if not now and self._last is not None and t - self._last < self._every:
            return
        self._last = t
        text = self.line()
        pad = " " * max(0, self._width - len(text))  # wipe a longer previous line
        self._width = len(text)
        self._stream.write(f"\r{text}{pad}")
        self._stream.flush()

    def clear(self) -> None:
        """Erase the line, to print something else; the next update redraws it."""
        if self.enabled and self._last is not None:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._last = None
            self._width = 0

    def close(self) -> None:
        """Erase the line (the command's own output follows on a clean line)."""
        self.clear()
