"""The guard's mark filter: which prices reach exposure valuation, also across a kill and
resume."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from riskguard.dataflows.guard import GuardConfig
from riskguard.dataflows.guard.market import market_core, market_owners
from riskguard.schemas import Codec, Fill, Trade

S = 10**9
CFG = msgspec.convert({
    "keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
    "tier": {"role": "market", "market_processes": 1},
    "exposure": {"instruments": {"instruments": {
        "BTC-PERP": {"kind": "perp", "base": "BTC", "quote": "USD"}}}}}, GuardConfig)


def _trade(n: int, inst: str, ts: int, price: float) -> Trade:
    return Trade(id=f"t{n}", venue="okx", instrument=inst, ts=ts, price=price, qty=1.0,
                 side="buy")


def _run(items: list[Any], rc: RecoveryConfig | None = None, workers: int = 1) -> list[bytes]:
    flow = Dataflow("marks_resume")
    out = market_core("m", op.input("in", flow, TestingSource(items, batch_size=1)),
                      cfg=CFG, clock=lambda: 0, owners=market_owners(CFG))
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
              _trade(1, "BTC-PERP", 2 * S - S // 10, 100.0)]
    # 4 bps and 100 ms after the last forwarded mark: not forwarded; then time passes
    # on another instrument, and the position is valued
    after = [_trade(2, "BTC-PERP", 2 * S, 100.04),
             *(_trade(3 + n, "ETH-PERP", (3 + n) * S, 10.0) for n in range(3))]
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
    """The filter's state is per market, whichever worker holds it."""
    before, after = _before_after()
    items = [*before, *after]
    assert _marks(_run(items, workers=2)) == _marks(_run(items))
