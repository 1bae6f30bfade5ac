"""The market tier's firm process judges time as one pipeline does while a market process
lags or restarts: a mark's age counts in the time of the process that values it, and the
firm's clock (its own ticks, its playbook's) holds at a market process's progress while
that process is gone for less than ``tier.market_wait_s``."""

from __future__ import annotations

from typing import Any

import msgspec
from playbook_cases import alert
from riskguard.dataflows.guard import GuardConfig
from riskguard.dataflows.guard.core import source_wait_ns
from riskguard.dataflows.guard.steps import FirmClock
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick, Watermark
from riskguard.operators.exposure import CounterpartyLogic, Part, Progress
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.mitigation import PlaybookConfig, PlaybookLogic
from riskguard.schemas import (
    DetectProgress,
    Exposure,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
)
from test_exposure import S, fill, worked_config
from test_exposure_ticked import ticked_parts
from test_exposure_unvalued import UNVALUED, drive, exposure, gross_levels, gross_limit, tick
from test_stale_marks import bundled_rule

T = 1_000 * S
AGE = 30 * S


def _part_of(process: int, inst: str, ts: int) -> Part:
    """okx's part of ``inst`` (one fill, marked at ``ts``) from market process
    ``process``'s shard."""
    cfg = worked_config(max_mark_age_ns=AGE)
    *_, part = [p for p in ticked_parts(cfg, [
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


def _guard_config(role: str) -> GuardConfig:
    return msgspec.convert({"keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
                            "tier": {"role": role, "market_processes": 2}}, GuardConfig)


def _playbook_holding(idle_ns: int) -> list[tuple[str, str]]:
    """A heartbeat-loss incident on okx (the bundled rule: halt_trading after 180 s) is
    open when the process whose progress makes ``a/okx`` stops; ``b/okx`` runs 300 s
    ahead in 40 s of processing time. The commands that gives."""
    now = ManualClock(0)
    cfg = PlaybookConfig(issuer="guard", venues=("okx",),
                         rules=(bundled_rule("venue_heartbeat"),))
    logic = PlaybookLogic(cfg, now, idle_ns=idle_ns)
    okx = Scope(kind=ScopeKind.VENUE, value="okx")
    out = []
    for s in ("a/okx", "b/okx"):
        out += logic.on_event(Tick(ts=T, source=s, of=2))
    out += logic.on_event(alert("heartbeat_loss", okx, T / S, sev=Severity.CRITICAL))
    for k in range(1, 41):
        now.advance(S)
        out += logic.on_event(Tick(ts=T + k * 15 * S // 2, source="b/okx", of=2))
    return [(c.action.value, c.scope.label()) for c in out]


def test_the_firms_playbook_waits_the_market_wait_for_a_silent_source() -> None:
    """The firm's playbook holds its clock at a silent source's progress for
    ``tier.market_wait_s``: a market process restarted within it does not let the
    others' progress climb an incident of its markets to a halt before it can close it.
    With the whole guard's 10 s, the same silence lets the clock run on (as before)."""
    firm, whole = (_guard_config(role=role) for role in ("firm", "whole"))
    assert source_wait_ns(firm) == 60 * S
    assert source_wait_ns(whole) == TICK_IDLE_NS
    assert ("halt_trading", "venue:okx") not in _playbook_holding(source_wait_ns(firm))
    assert ("halt_trading", "venue:okx") in _playbook_holding(TICK_IDLE_NS)


def _limits_breaches(idle_ns: int) -> list[tuple[int, str]]:
    """Unvalued exposure on okx (grace 30 s) while the source ``a`` whose valuation would
    value it goes silent; ``b`` runs 300 s ahead in 40 s of processing time. The
    breaches of okx's gross limit that gives."""
    now = ManualClock(0)
    logic = LimitsLogic(gross_limit(unvalued_grace_ns=30 * S), clock=now, idle_ns=idle_ns)
    out = drive(logic, [exposure(T, **UNVALUED), tick(T, "a"), tick(T, "b")])
    for k in range(1, 41):
        now.advance(S)
        out += drive(logic, [tick(T + k * 15 * S // 2, "b")])
    return gross_levels(out)


def test_the_firms_limits_wait_the_market_wait_for_a_silent_source() -> None:
    """The firm's limits hold a key's time at a silent source's progress for
    ``tier.market_wait_s`` too: a market process restarted within it does not let the
    others' progress pass an unvalued exposure's grace deadline before it can value it.
    With the whole guard's 10 s, the same silence lets time run on (as before)."""
    assert _limits_breaches(source_wait_ns(_guard_config(role="firm"))) == []
    assert _limits_breaches(TICK_IDLE_NS)[0] == (T + 30 * S, "breach")
