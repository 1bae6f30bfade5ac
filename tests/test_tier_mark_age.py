"""The market tier's firm process judges time as one pipeline does while a market process
lags or restarts: a mark's age counts in the time of the process that values it, and the
firm's own ticks keep holding its clock while a market process is briefly gone."""

from __future__ import annotations

from typing import Any

import msgspec
from riskguard.dataflows.guard.steps import FirmClock
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick, Watermark
from riskguard.operators.exposure import CounterpartyLogic, Part, Progress
from riskguard.schemas import DetectProgress, Exposure, RiskAlert, Trade
from test_exposure import S, fill, worked_config
from test_exposure_ticked import _ticked_parts

T = 1_000 * S
AGE = 30 * S


def _part_of(process: int, inst: str, ts: int) -> Part:
    """okx's part of ``inst`` (one fill, marked at ``ts``) from market process
    ``process``'s shard."""
    cfg = worked_config(max_mark_age_ns=AGE)
    *_, part = [p for p in _ticked_parts(cfg, [
        Trade(id=f"t{process}", venue="okx", instrument=inst, ts=ts, price=100.0, qty=1.0,
              side="buy"),
        fill(f"f{process}", "okx", inst, "buy", 1.0, 100.0, ts + 1),
        Tick(ts=ts + S, source="p")]) if p.counterparty == "okx"]
    return msgspec.structs.replace(part, shard=f"m{process}.s0")


def _kinds(out: list[Any]) -> list[tuple[str, str, int]]:
    return [(o.kind, o.scope.value, o.ts) for o in out if isinstance(o, RiskAlert)]


def test_a_lagging_market_process_s_marks_age_in_its_own_time_not_the_others() -> None:
    """The ETH process runs 40 s ahead of the BTC one (it was restarted, or is slower):
    the BTC mark is as old as the BTC process's time says, so no ``stale_mark`` (one
    pipeline, valuing both at once, sees a fresh BTC mark). Once the BTC process's own
    time passes the mark's age (its venue's feed stopped while it runs on), the mark is
    stale as ever, at the counterparty's time (the ETH part's: it never goes back)."""
    clock = ManualClock(0)
    logic = CounterpartyLogic(worked_config(max_mark_age_ns=AGE), ticked=True, clock=clock)
    out = logic.on_batch([_part_of(0, "BTC-PERP", T)])
    out += logic.on_batch([_part_of(1, "ETH-PERP", T + 40 * S)])

    def tick(btc_s: int, eth_s: int) -> list[Any]:
        clock.advance(S)
        return logic.on_batch([
            Progress(counterparty="okx", ts=T + btc_s * S, source="market/0@m0.s0"),
            Progress(counterparty="okx", ts=T + eth_s * S, source="market/1@m1.s0")])

    for k in range(2, 30):
        out += tick(k, 41 + k)
    assert _kinds(out) == []
    assert not any(o.stale for o in out if isinstance(o, Exposure))
    later = tick(31, 72)
    assert _kinds(later) == [("stale_mark", "BTC-PERP", T + 41 * S)]
    assert [(o.ts, o.stale) for o in later if isinstance(o, Exposure)] == [
        (T + 41 * S, True)]


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
