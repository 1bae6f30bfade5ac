"""A market process's last word: its final progress when its bounded input ends.

The firm process reads the market processes' ``detections`` partitions in step
(``Alignment(progress_topics=...)``), so it cannot take a quiet partition for an
ended one: the writer may still be starting up, or just slower. In a bounded run (a
replay, a test, the demo: ``input.idle_eof_s``) each market process therefore ends its
partition with a ``final`` :class:`~riskguard.schemas.DetectProgress`, written after
everything else it wrote, and the firm ends that partition once it has read it.

:class:`FinalProgressLogic` passes a process's detections through unchanged, keeps the
newest progress time, and at end of input adds the final progress at that time.

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
    """Pass every record through; at end of input, one final progress from ``source``.

    A ``None`` event (one per process at start) only makes the logic exist, so an
    empty run still ends with its final progress.
    """

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
