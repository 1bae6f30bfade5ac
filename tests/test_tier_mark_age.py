"""The market tier's firm process judges time as one pipeline does while a market process
lags or restarts: a mark's age counts in the time of the process that values it, and the
firm's own ticks keep holding its clock while a market process is briefly gone."""

from __future__ import annotations

from typing import Any

from riskguard.dataflows.guard.steps import FirmClock
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick, Watermark
from riskguard.schemas import DetectProgress
from test_exposure import S

T = 1_000 * S


def test_a_market_process_restarting_within_the_wait_holds_the_firms_ticks() -> None:
    """The firm's own input went quiet before the market processes' (it reads it in
    seconds); market/0 is killed and restarts within the wait while market/1 runs on.
    The firm's ticks, held at market/0's progress, keep coming with market/1's
    progress, so the ticks' watermark (the firm's clock) stays at market/0's time past
    TICK_IDLE_NS of processing time, until the wait is over."""
    wait = 60 * S
    now = ManualClock(0)
    firm_clock = FirmClock(("market/0", "market/1"), wait_ns=wait, clock=now)
    watermark = Watermark(TICK_IDLE_NS)

    def feed(recs: list[Any]) -> int:
        ticks = firm_clock(recs) + [Tick(ts=r.ts, source=r.source, of=3) for r in recs
                                    if isinstance(r, DetectProgress)]
        for t in ticks:
            watermark.update(t.source, t.ts, now(), t.of)
        return watermark.last

    feed([DetectProgress(ts=T, source="market/0"), DetectProgress(ts=T, source="market/1"),
          Tick(ts=T + 100 * S, source="firm", of=3)])  # the firm's last own tick
    seen = []
    for k in range(1, 55):  # market/0 is gone; market/1 reaches the end
        now.advance(S)
        seen.append(feed([DetectProgress(ts=T + k * 5 * S, source="market/1")]))
    assert max(seen) == T
