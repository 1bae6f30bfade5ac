"""The move bands' critical rules: which readings are strong enough evidence to go critical.

A move out of its band is a warning. Critical opens a reduce-only in the bundled playbook,
so each rule here names one kind of evidence that a market is crashing, not having an
ordinary volatile day; ``detector.bands.critical_rules`` lists those a key runs with (any
one makes a reading critical). Each is a plain function of the :class:`Reading` items of
one vector, and only moves in the adverse direction (``critical_moves``) count. The
rules: docs/detectors.md ("Move bands").

>>> fall = Reading(ratio=1.4, move=-0.02, name="move_5m", cap=0.05, scale=0.002,
...                horizon_ns=300 * 10**9)
>>> day = Reading(ratio=0.9, move=-0.07, name="drawdown_1d", cap=0.07, scale=0.02,
...               horizon_ns=86_400 * 10**9, kind=RANGE)
>>> rules = CriticalRules(MoveBandConfig(), adverse=-1)
>>> rules.first([fall, day]), rules.first([fall])
('fast_fall', None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from riskguard.operators.detection.band_levels import CRITICAL_RULES, MoveBandConfig

NS = 1_000_000_000


MOVE, RANGE, SETTLEMENT, LIMIT = 0, 1, 2, 3
"""What a :class:`Reading` measures: a move over a horizon, the day's range from its
extreme, the move from the settlement price, and that move on the reading that first
reaches a daily limit tier that day."""


class Reading(NamedTuple):
    """One measure of one vector.

    ``kind`` says which (:data:`MOVE`, :data:`RANGE`, :data:`SETTLEMENT`, :data:`LIMIT`)
    and ``horizon_ns`` over what time (0 for the settlement). ``ratio`` is ``|move|`` over
    its band (for the settlement, over the first daily limit; for a limit, over that
    tier), ``cap`` its static level, ``scale`` the key's typical move of that kind (-1
    while none is known).
    """

    ratio: float
    move: float
    name: str
    cap: float
    scale: float
    horizon_ns: int
    kind: int = MOVE
    learned: float = -1.0
    """``|move|`` over the band the key's typical move sets, without the static level
    (a small coin's ordinary move passes a level set for bitcoin); -1: the same as
    ``ratio`` (nothing learned, or no band of its own)."""
    close: float = 0.0
    """For a :data:`RANGE` reading, the same range measured to the vector's close, not
    to its low or high, in the direction of ``move``; 0 for the other kinds. A slide is
    critical only when the market closes that deep, not on a wick."""

    @property
    def out_of_band(self) -> float:
        """``learned``, else ``ratio``: how far out of the key's own band."""
        return self.learned if self.learned >= 0.0 else self.ratio


Rule = Callable[["CriticalRules", Sequence[Reading]], bool]


class CriticalRules:
    """The critical rules a key runs with, in the order ``critical_rules`` lists them.

    ``adverse`` is the sign of the moves that may be critical (-1 falls, 1 rises, 0 both).
    """

    def __init__(self, config: MoveBandConfig, adverse: int) -> None:
        self.adverse = adverse
        self.fast_ns = self._fast_s_ns = int(config.fast_s * NS)
        self.deep = config.deep_bps * 1e-4
        self.warmup_deep = config.warmup_deep_bps * 1e-4
        self.young = False  # the key has less than a drawdown window of its own history
        self.deep_z = config.deep_z
        self.slide_z = config.slide_z
        self.static_z = config.static_z
        self.critical_ratio = config.critical_ratio
        self.confirm_horizons = config.confirm_horizons
        self.rules: list[tuple[str, Rule]] = [(name, _RULES[name])
                                              for name in config.critical_rules]

    def for_interval(self, interval_ns: int) -> None:
        """Data of this bar interval: its one-bar moves count as fast however long the
        bar (on daily bars a day's move is the fastest there is)."""
        self.fast_ns = max(self._fast_s_ns, interval_ns)

    def first(self, readings: Sequence[Reading]) -> str | None:
        """The name of the first rule that makes these readings critical, or None."""
        for name, rule in self.rules:
            if rule(self, readings):
                return name
        return None

    def _directions(self) -> tuple[int, ...]:
        return (-1, 1) if not self.adverse else (self.adverse,)

    def _adverse(self, move: float) -> bool:
        return not self.adverse or move * self.adverse > 0.0

    def fast_fall(self, readings: Sequence[Reading]) -> bool:
        for sign in self._directions():
            fast = any(r.kind == MOVE and r.horizon_ns <= self.fast_ns
                       and r.out_of_band >= 1.0 and r.move * sign > 0.0 for r in readings)
            if fast and any(r.kind == RANGE and self._deep(r.move * sign, r.scale)
                            for r in readings):
                return True
        return False

    def _deep(self, fall: float, scale: float) -> bool:
        """A day's adverse range past ``deep_z`` of the key's typical day ranges (a
        stablecoin pair's 1 % is as deep as bitcoin's 6 %, and a thin coin's ordinary 6 %
        is not deep), or past ``deep_bps`` (by default only a volatility index's); while
        the key has less than a day of history (its typical day range still a guess from
        shorter moves), also past ``warmup_deep_bps``."""
        return (fall >= self.deep or (self.young and fall >= self.warmup_deep)
                or (scale >= 0.0 and fall >= self.deep_z * scale))

    def slide(self, readings: Sequence[Reading]) -> bool:
        for sign in self._directions():
            past_limit = any(r.kind >= SETTLEMENT and r.ratio >= 1.0 and r.move * sign > 0.0
                             for r in readings)
            if past_limit and any(r.kind == RANGE and r.scale >= 0.0 and r.move * sign > 0.0
                                  and abs(r.move) >= self.slide_z * r.scale
                                  and r.close * sign >= self.slide_z * r.scale
                                  for r in readings):
                return True
        return False

    def limit(self, readings: Sequence[Reading]) -> bool:
        return any(r.kind == LIMIT and self._adverse(r.move) for r in readings)

    def static(self, readings: Sequence[Reading]) -> bool:
        return any(r.kind <= RANGE and abs(r.move) >= r.cap and self._adverse(r.move)
                   and (r.scale < 0.0 or abs(r.move) >= self.static_z * r.scale)
                   for r in readings)

    def ratio(self, readings: Sequence[Reading]) -> bool:
        return any(r.kind <= RANGE and r.out_of_band >= self.critical_ratio
                   and self._adverse(r.move) for r in readings)

    def horizons(self, readings: Sequence[Reading]) -> bool:
        n = sum(1 for r in readings
                if r.kind <= RANGE and r.out_of_band >= 1.0 and self._adverse(r.move))
        return n >= self.confirm_horizons


_RULES: dict[str, Rule] = {name: getattr(CriticalRules, name) for name in CRITICAL_RULES}
