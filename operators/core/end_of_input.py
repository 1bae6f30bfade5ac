"""A market process's last word: its final progress when its bounded input ends.

The firm process reads the ``detections`` partitions in step and cannot take a quiet
partition for an ended one, so in a bounded run (``input.idle_eof_s``) each market
process ends its partition with a ``final`` :class:`~riskguard.schemas.DetectProgress`
at its newest progress time, after everything else it wrote.

>>> from riskguard.schemas import DetectProgress
>>> logic = FinalProgressLogic("detect/w0")
>>> logic.on_event(DetectProgress(ts=7, source="detect/w0")) == [
...     DetectProgress(ts=7, source="detect/w0")]
True
>>> logic.on_event(None), logic.on_eof()
([], [DetectProgress(v=1, ts=7, source='detect/w0', final=True)])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from riskguard.operators.core.snapshot import persisted
from riskguard.schemas import DetectProgress


@persisted("riskguard.final_progress")
@dataclass
class FinalProgressState:
    """The newest progress time the process wrote (0: none yet)."""

    newest: int = 0
    version: int = 1


class FinalProgressLogic:
    """Pass every record through; at end of input, one final progress from ``source``
    (a ``None`` event at start makes the logic exist, so an empty run ends too)."""

    def __init__(self, source: str, state: FinalProgressState | None = None) -> None:
        self.source = source
        self.state = state if state is not None else FinalProgressState()

    def snapshot(self) -> FinalProgressState:
        return FinalProgressState(self.state.newest)

    def on_event(self, rec: Any) -> list[Any]:
        return self.on_batch([rec])

    def on_batch(self, recs: list[Any]) -> list[Any]:
        out = [r for r in recs if r is not None]
        for r in out:
            if type(r) is DetectProgress and r.ts > self.state.newest:
                self.state.newest = r.ts
        return out

    def on_eof(self) -> list[DetectProgress]:
        return [DetectProgress(ts=self.state.newest, source=self.source, final=True)]
