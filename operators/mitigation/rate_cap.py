"""The playbook's command-rate cap: at most ``max_commands`` commands per
``rate_window_s`` of event time on each venue, or on each other scope.

A command counts against its :func:`rate_key`. One past the cap is held back and
remembered; when the window rolls, the commands held back in it are reported once,
with the keys that held them.

>>> from riskguard.operators.mitigation.incidents import PlaybookState
>>> from riskguard.schemas import FIRM
>>> state = PlaybookState()
>>> cap = RateCap(max_commands=1, window_ns=10, state=state)
>>> venue = Scope(kind=ScopeKind.VENUE, value="okx")
>>> cap.admit("c1", venue), cap.admit("c2", venue), cap.admit("c3", FIRM)
(True, False, True)
>>> state.now = 12
>>> cap.roll(force=False)
(True, HeldBack(commands=1, keys='venue:okx 1', window_start=0))
"""

from __future__ import annotations

from typing import NamedTuple

from riskguard.operators.mitigation.incidents import PlaybookState
from riskguard.schemas import Scope, ScopeKind


def rate_key(scope: Scope) -> str:
    """What a command counts against in the rate cap: its scope's venue (a venue, or an
    instrument or underlying narrowed to one), else its scope (a counterparty, an
    instrument on every venue, the firm).

    >>> from riskguard.schemas import FIRM
    >>> rate_key(Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")), rate_key(FIRM)
    ('venue:okx', 'firm:*')
    """
    if scope.kind is ScopeKind.VENUE:
        return scope.label()
    return f"venue:{scope.venue}" if scope.venue else scope.label()


class HeldBack(NamedTuple):
    """The commands a window held back: how many, the keys that held most (``key n``),
    and the window's start."""

    commands: int
    keys: str
    window_start: int


class RateCap:
    """Counts commands per :func:`rate_key` in the window that holds ``state.now``; the
    counts live in ``state`` (the playbook's snapshot)."""

    def __init__(self, *, max_commands: int, window_ns: int, state: PlaybookState) -> None:
        self.max_commands = max_commands
        self.window_ns = window_ns
        self.state = state
        self._suppressed = set(state.suppressed)  # the held-back ids, looked up in O(1)

    def admit(self, command_id: str, scope: Scope) -> bool:
        """Count the command if its key has room in this window; else hold it back."""
        st = self.state
        key = rate_key(scope)
        if st.window_counts.get(key, 0) >= self.max_commands:
            if command_id not in self._suppressed:
                self._suppressed.add(command_id)
                st.suppressed.append(command_id)
                st.suppressed_by[key] = st.suppressed_by.get(key, 0) + 1
            return False
        st.window_counts[key] = st.window_counts.get(key, 0) + 1
        return True

    def window_end(self) -> int:
        """When the current window ends (event time)."""
        return self.state.window_start + self.window_ns

    def next_roll(self) -> int:
        """When the window that holds ``state.now`` ends."""
        now = self.state.now
        return now - now % self.window_ns + self.window_ns

    def roll(self, *, force: bool) -> tuple[bool, HeldBack | None]:
        """Move to the window that holds ``state.now``: whether it is a new one, and the
        commands held back since the last report (reported now if ``force``)."""
        st = self.state
        start = st.now - st.now % self.window_ns
        if start == st.window_start and not force:
            return False, None
        held = None
        if st.suppressed:
            where = ", ".join(f"{k} {v}" for k, v in sorted(
                st.suppressed_by.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
            held = HeldBack(len(st.suppressed), where, st.window_start)
        st.suppressed = []
        self._suppressed.clear()
        st.suppressed_by = {}
        if start == st.window_start:
            return False, held
        st.window_start = start
        st.window_counts = {}
        return True, held
