"""The guard's mark filter: which prices reach exposure valuation, also across a kill and
resume."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from one_market import ONE_PERP_MARKET, S, okx_trade
from risk_flow_app import make_events
from riskguard.dataflows.guard.market import market_core, market_owners
from riskguard.operators.exposure import Router, ShardLogic
from riskguard.operators.exposure.mark_filter import MarkFilter, MarkFilterSpec
from riskguard.operators.exposure.routing import Item
from riskguard.schemas import Bar, Codec, DeadLetter, Fill
from test_exposure import worked_config


def _run(items: list[Any], rc: RecoveryConfig | None = None, workers: int = 1) -> list[bytes]:
    flow = Dataflow("marks_resume")
    out = market_core("m", op.input("in", flow, TestingSource(items, batch_size=1)),
                      cfg=ONE_PERP_MARKET, clock=lambda: 0, owners=market_owners(ONE_PERP_MARKET))
    got: list[Any] = []
    op.output("detections", out.detections, TestingSink(got))
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=rc)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return [v for v in got if isinstance(v, bytes)]


def _before_after() -> tuple[list[Any], list[Any]]:
    before = [Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-PERP",
                   side="buy", qty=1.0, price=100.0, ts=S // 2),
              okx_trade(1, "BTC-PERP", 2 * S - S // 10, 100.0)]
    # 4 bps and 100 ms after the last forwarded mark: not forwarded; then time passes
    # on another instrument, and the position is valued
    after = [okx_trade(2, "BTC-PERP", 2 * S, 100.04),
             *(okx_trade(3 + n, "ETH-PERP", (3 + n) * S, 10.0) for n in range(3))]
    return before, after


def _marks(valuations: list[bytes]) -> set[tuple[int, float]]:
    """Each part's time and gross value: the mark its position was valued at."""
    codec = Codec(clock=lambda: 0)
    return {(p.ts, round(p.gross, 6)) for v in valuations
            for p in codec.decode("detections", v).parts}


def test_a_market_process_killed_and_resumed_values_positions_as_an_unbroken_one(
        tmp_path: Path) -> None:
    """A price within ``mark_interval_ns`` and ``mark_move_bps`` of the last one forwarded
    is not forwarded after a resume either: the positions are valued at the marks an
    unbroken run values them at."""
    before, after = _before_after()
    want = _marks(_run([*before, *after]))
    assert (2 * S, 100.0) in want
    assert {gross for _ts, gross in want if gross} == {100.0}  # 0: not marked yet
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    items = [*before, TestingSource.ABORT(), *after]
    got = _marks(_run(items, rc) + _run(items, rc))
    assert got == want


def test_two_workers_forward_the_marks_one_worker_does() -> None:
    """The filter's state is per shard of the valuation step, whichever worker holds it."""
    before, after = _before_after()
    items = [*before, *after]
    assert _marks(_run(items, workers=2)) == _marks(_run(items))


def _shard_outputs(batches: list[list[Any]], spec: MarkFilterSpec | None,
                   before: MarkFilter | None) -> dict[str, list[Any]]:
    """Each shard's outputs over ``batches``: the filter in the shards (``spec``), or
    ahead of routing (``before``), as a step of its own would run it."""
    cfg = worked_config(valuation_shards=3)
    reg = cfg.validate()
    router = Router(reg, cfg)
    shards: dict[str, ShardLogic] = {}
    out: dict[str, list[Any]] = {}
    for batch in batches:
        recs = before.on_batch(batch) if before is not None else batch
        for kv in router.route_batch(recs):
            if isinstance(kv, DeadLetter):
                continue
            key, items = kv
            shard = shards.setdefault(key, ShardLogic(cfg, reg, marks=spec))
            out.setdefault(key, []).extend(shard.on_batch([items]))
    return out


def test_the_shards_take_the_prices_a_filter_ahead_of_routing_forwards() -> None:
    """Filtering the prices as they reach each shard values every position as filtering
    them before routing did: every shard a market's prices reach sees them in the same
    order, a price routed to several shards is taken by all or by none."""
    events = make_events(600, seed=5)
    batches = [events[k:k + 7] for k in range(0, len(events), 7)]
    spec = MarkFilterSpec(S // 2, 5.0)
    want = _shard_outputs(batches, None, MarkFilter(spec.interval_ns, spec.move_bps))
    got = _shard_outputs(batches, spec, None)
    assert got == want
    assert got != _shard_outputs(batches, None, None)  # some prices were left out


def test_a_price_routed_to_a_shard_as_its_mark_and_as_an_fx_rate_is_taken_both_times(
        ) -> None:
    """One record, two items at one shard: the second is not a repeat of the first."""
    f = MarkFilter(S, 5.0)
    t = okx_trade(1, "BTC-PERP", S, 100.0)
    items = [Item("mark", "s0", "BTC-PERP", t), Item("fx", "s0", "BTC", t)]
    assert f.on_items(items) == items
    again = okx_trade(2, "BTC-PERP", S, 100.0)  # another record, the same price: left out
    assert f.on_items([Item("mark", "s0", "BTC-PERP", again)]) == []


def test_past_its_cap_the_filter_passes_new_prices_unfiltered() -> None:
    """A filter holding ``max_keys`` entries remembers no more: a new market's prices all
    pass (as with no filter), none is lost."""
    f = MarkFilter(S, 5.0, max_keys=1)
    firsts = [okx_trade(1, "BTC-PERP", S, 100.0), okx_trade(2, "ETH-PERP", S, 10.0)]
    assert f.on_batch(firsts) == firsts
    repeats = [okx_trade(3, "BTC-PERP", S + 1, 100.0), okx_trade(4, "ETH-PERP", S + 1, 10.0)]
    assert f.on_batch(repeats) == repeats[1:]


def test_bars_route_nowhere_in_exposure_valuation_filter_or_not() -> None:
    """Bars and depth feed detection only: with the filter off (``mark_interval_ns = 0``)
    too, they reach no shard and are no dead letter."""
    cfg = worked_config()
    bar = Bar(id="b1", venue="okx", instrument="BTC-PERP", ts=S, open=1.0, high=1.0,
              low=1.0, close=1.0, volume=1.0, start=0, interval_ns=S)
    assert Router(cfg.validate(), cfg).route_batch([bar]) == []
