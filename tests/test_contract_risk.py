"""Exposure and limits logic classes meet the generic stateful-logic contract."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from contract import CHECKS, Case
from exposure_pipeline import LocalPipeline
from risk_flow_app import limits_config, make_events
from riskguard.operators.core.clock import Tick
from riskguard.operators.exposure import (
    CounterpartyLogic,
    FirmLogic,
    Part,
    Progress,
    Router,
    ShardLogic,
)
from riskguard.operators.exposure.limit_updates import UpdateGate
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.operators.exposure.mark_filter import MarkFilterSpec
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE
from riskguard.schemas import (
    DeadLetter,
    Exposure,
    LimitUpdate,
    RiskAlert,
    SignedEnvelope,
    encode,
)
from signing_fixtures import AUD
from test_exposure import S, worked_config
from test_exposure_ticked import worker_stream

CFG = worked_config()
REG = CFG.validate()
EVENTS = make_events(300, seed=3)


def _stage_inputs() -> tuple[list[Any], list[Part], list[Exposure], list[Exposure]]:
    """Inputs of one stage-1 shard, one counterparty, the firm and one limits key."""
    val: list[Any] = []
    pipe = LocalPipeline(CFG)
    router = Router(REG, CFG)
    btc_shard = router.route(EVENTS[5])[0][0]  # the shard of BTC-PERP
    contribs: list[Part] = []
    for ev in EVENTS:
        r = router.route(ev)
        if isinstance(r, DeadLetter):
            continue
        for key, item in r:
            if key == btc_shard:
                val.append(item)
            logic = pipe.val.setdefault(key, ShardLogic(CFG, REG))
            contribs.extend(c for c in logic.on_event(item)
                            if isinstance(c, Part) and c.counterparty == "okx")
    firm_in = LocalPipeline(CFG).feed_all(EVENTS).exposures
    cp_out = [e for e in firm_in if e.counterparty != "*"]
    return val, contribs, cp_out, [e for e in firm_in if e.counterparty == "okx"]


VAL, CONTRIBS, CP_EXPOSURES, OKX = _stage_inputs()


def _with_ticks(items: list[Any], every: int = 15) -> list[Any]:
    """Stage-1 items with a tick (at the next item's time) before every ``every``-th."""
    out: list[Any] = []
    for k, it in enumerate(items):
        if k and k % every == 0:
            out.append(it._replace(role="tick", target="", record=Tick(ts=it.record.ts,
                                                                       source="p")))
        out.append(it)
    return out


def _by_tick(parts: list[Any], every: int = 4) -> list[Any]:
    """Parts or exposures re-stamped so that runs of ``every`` share a tick time."""
    return [msgspec.structs.replace(p, ts=parts[k - k % every].ts) for k, p in enumerate(parts)]


def _parts_and_progress() -> list[Any]:
    """Stage-2 parts with two sources' progress every 3 s between them, and a gap of
    80 s with progress only (the held marks grow stale by time)."""
    out: list[Any] = []
    shift = 0
    parts = _by_tick(CONTRIBS)[::5]
    for k, p in enumerate(parts):
        out.append(msgspec.structs.replace(p, ts=p.ts + shift))
        end = (parts[k + 1].ts if k + 1 < len(parts) else p.ts + S) + shift
        if k == len(parts) // 2:
            end, shift = end + 80 * S, shift + 80 * S
        for ts in range(p.ts + shift + 1, end, 3 * S):
            out += [Progress(counterparty="okx", ts=ts, source=src) for src in ("a", "b")]
    return out


def _two_processes() -> list[Any]:
    """Stage-1 items from two guard workers: b ticks once, then a runs 40 s ahead (its
    records wait in the shard for b), then b follows."""
    a = worker_stream("a", "okx", "BTC-PERP", 60_000.0, 20, 40, of=0)
    b = worker_stream("b", "binance", "ETH-PERP", 3_000.0, 7, 40, of=0)
    router = Router(REG, CFG)
    return [item for ev in [b[0], *a, *b[1:]] for _k, item in router.route(ev)]


def _limits_two_sources() -> list[Any]:
    """One limits key's exposures, some unvalued (breached at once once time reaches
    them), each behind the progress of two tick sources, b 2 s behind a. b's ticks start
    late: until then time holds for the second source the ticks announce, and an
    unvalued exposure waits for it."""
    out: list[Any] = []
    for k, e in enumerate(OKX[:60]):
        out.append(Progress(counterparty="okx", ts=e.ts - 1, source="a", of=2, key_of=2))
        if k >= 8:
            out.append(Progress(counterparty="okx", ts=e.ts - 2 * S, source="b", of=2,
                                key_of=2))
        unvalued = k in (3, 4) or k % 7 == 5
        out.append(msgspec.structs.replace(e, unvalued_instruments=["BTC-PERP"]) if unvalued
                   else e)
    return out


LIMITS_TWO_SOURCES = _limits_two_sources()


def _limits_config_at_once() -> Any:
    """The risk flow's limits, unvalued exposure breaching them at once."""
    cfg = limits_config()
    grace = {cp: msgspec.structs.replace(cl, limits={
        k: msgspec.structs.replace(s, unvalued_grace_ns=0)
        for k, s in cl.limits.items()})
        for cp, cl in cfg.counterparties.items()}
    return msgspec.structs.replace(cfg, counterparties=grace)


def _update_envelopes() -> list[SignedEnvelope]:
    """Updates on configured, new and repeated counterparties, past a cap of 4."""
    cps = ["okx", "n1", "n2", "okx", "n3", "n1", "n4", "n5", "n6", "n2", "n7", "n3"]
    return [SignedEnvelope(payload_type=PAYLOAD_LIMIT_UPDATE, signatures=[], payload=encode(
        LimitUpdate(update_id=f"u{k}", issuer="limits-admin", issued_at=k, expires_at=10**18,
                    audience=AUD, limit_path=f"counterparty.{cp}", kind="gross_notional",
                    limit=float(k)))) for k, cp in enumerate(cps)]


def _decoded(env: SignedEnvelope, now: int) -> LimitUpdate:
    """An accepting verifier: the contract is about the gate's state (the trust file's
    verifier has its own tests in test_limits)."""
    return msgspec.json.decode(env.payload, type=LimitUpdate)


CASES = [
    Case("limit_updates.gate", lambda s: UpdateGate(
        limits_config(), _decoded, clock=lambda: 0, state=s, cap=4), _update_envelopes()),
    Case("exposure.valuation", lambda s: ShardLogic(CFG, REG, s), VAL),
    Case("exposure.counterparty", lambda s: CounterpartyLogic(CFG, s), CONTRIBS),
    Case("exposure.firm", lambda s: FirmLogic(CFG, s), CP_EXPOSURES),
    Case("limits", lambda s: LimitsLogic(limits_config(), s), list(OKX)),
    Case("limits.two_tick_sources",
         lambda s: LimitsLogic(_limits_config_at_once(), s, clock=lambda: 0),
         LIMITS_TWO_SOURCES, splits=range(len(LIMITS_TWO_SOURCES))),
    Case("exposure.valuation.ticked", lambda s: ShardLogic(CFG, REG, s, ticked=True),
         _with_ticks(VAL)),
    Case("exposure.valuation.ticked.mark_filter",
         lambda s: ShardLogic(CFG, REG, s, ticked=True, marks=MarkFilterSpec(5 * S, 20.0)),
         _with_ticks(VAL)),
    Case("exposure.valuation.two_processes",
         lambda s: ShardLogic(CFG, REG, s, ticked=True, clock=lambda: 0), _two_processes(),
         splits=(100, 300, 400)),
    Case("exposure.counterparty.ticked", lambda s: CounterpartyLogic(CFG, s, ticked=True),
         _by_tick(CONTRIBS)),
    Case("exposure.counterparty.stale_by_ticks",
         lambda s: CounterpartyLogic(CFG, s, ticked=True, clock=lambda: 0),
         _parts_and_progress()),
    Case("exposure.firm.ticked", lambda s: FirmLogic(CFG, s, ticked=True),
         _by_tick(CP_EXPOSURES)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(case: Case, check: Any) -> None:
    """Snapshot pickles, is independent, resume equals uninterrupted, input unmutated."""
    assert len(case.events) > 10
    check(case)


def test_cases_produce_output() -> None:
    """Each case's events actually drive outputs (the contract is not vacuous)."""
    for case in CASES:
        logic = case.builder(None)
        outs = [o for e in case.events for o in logic.on_event(e)]
        assert outs, case.name
        # the update gate's: (limits key, update) pairs, rejections and dead letters
        made = Part | Progress | Exposure | RiskAlert | DeadLetter | tuple | Tick
        assert all(isinstance(o, made) or hasattr(o, "level") for o in outs)


def test_ticked_valuation_does_not_depend_on_how_the_input_is_batched() -> None:
    """Ticked stage 1 fed the same records and ticks through Router.route_batch in
    batches of 1, 9 or 100 (so runs of plain marks straddle ticks and position
    re-valuation boundaries) gives the same parts."""
    router = Router(REG, CFG)
    shard = router.route(EVENTS[5])[0][0]
    stream: list[Any] = []
    for k, ev in enumerate(EVENTS):
        if k and k % 25 == 0:
            stream.append(Tick(ts=ev.ts, source="p"))
        stream.append(ev)

    def run(size: int) -> list[Any]:
        logic = ShardLogic(CFG, REG, ticked=True)
        out: list[Any] = []
        for lo in range(0, len(stream), size):
            for item in router.route_batch(stream[lo:lo + size]):
                if isinstance(item, tuple) and item[0] == shard:
                    out.extend(logic.on_batch([item[1]]))
        return out + logic.on_eof()

    one = run(1)
    assert [p for p in one if isinstance(p, Part)]
    # fills re-value their counterparty between ticks (position_revalue_ns), in every run
    ticks = {ev.ts for ev in stream if isinstance(ev, Tick)}
    assert sum(isinstance(p, Part) and p.ts not in ticks for p in one) > 5
    assert run(9) == one
    assert run(100) == one
