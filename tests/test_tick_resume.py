"""Event-time ticks across a kill and resume: a resumed run's first tick never moves
time ahead of where an unbroken run's time stood."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from one_market import ONE_PERP_MARKET, S, four_btc_markets, okx_trade
from riskguard.dataflows.guard import GuardConfig
from riskguard.dataflows.guard.admit import TickSpec
from riskguard.dataflows.guard.core import guard_core
from riskguard.dataflows.guard.market import market_core, market_owners
from riskguard.dataflows.guard.steps import FirmClock
from riskguard.operators.core.admission import AdmissionConfig, KeyAdmission, Known
from riskguard.operators.core.clock import Tick
from riskguard.schemas import Codec, DetectProgress, Fill
from signing_fixtures import ENGINE, trust_store


def _run_market(items: list[Any], rc: RecoveryConfig | None = None) -> list[bytes]:
    flow = Dataflow("ticks_resume")
    out = market_core("m", op.input("in", flow, TestingSource(items, batch_size=1)),
                      cfg=ONE_PERP_MARKET, clock=lambda: 0, owners=market_owners(ONE_PERP_MARKET))
    got: list[Any] = []
    op.output("detections", out.detections, TestingSink(got))
    run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=rc)
    return [v for v in got if isinstance(v, bytes)]


def _mid_bucket() -> tuple[list[Any], list[Any]]:
    """The snapshot falls inside the second 1 s bucket, after the record that ticked it; a
    new mark follows in the same bucket, then time passes on another instrument."""
    before = [Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-PERP",
                   side="buy", qty=1.0, price=100.0, ts=S // 2),
              okx_trade(1, "BTC-PERP", S + S // 10, 100.0)]
    after = [okx_trade(2, "BTC-PERP", S + S // 2, 101.0),
             *(okx_trade(3 + n, "ETH-PERP", (3 + n) * S, 10.0) for n in range(3))]
    return before, after


def _at_bucket_start() -> tuple[list[Any], list[Any]]:
    """The snapshot falls just before the record that ticks the second bucket."""
    before = [Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-PERP",
                   side="buy", qty=1.0, price=100.0, ts=S // 2),
              okx_trade(1, "BTC-PERP", S - S // 10, 100.0)]
    after = [okx_trade(2, "BTC-PERP", S + S // 10, 101.0),
             *(okx_trade(3 + n, "ETH-PERP", (3 + n) * S, 10.0) for n in range(3))]
    return before, after


SPLITS = {"mid_bucket": _mid_bucket, "at_bucket_start": _at_bucket_start}


def _parts(valuations: list[bytes]) -> set[tuple[int, float]]:
    """Each valued part's time and gross value."""
    codec = Codec(clock=lambda: 0)
    return {(p.ts, round(p.gross, 6)) for v in valuations
            for p in codec.decode("detections", v).parts}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_a_market_process_resumed_values_positions_when_an_unbroken_one_does(
        tmp_path: Path, split: str) -> None:
    """Resumed inside a bucket the stopped run ticked, the resumed run does not tick it
    again (which would value the new mark before the next bucket's tick); resumed at a
    bucket's first record, it ticks it at that record's time, as the unbroken run does."""
    before, after = SPLITS[split]()
    want = _parts(_run_market([*before, *after]))
    assert (3 * S, 101.0) in want
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    items = [*before, TestingSource.ABORT(), *after]
    got = _parts(_run_market(items, rc) + _run_market(items, rc))
    assert got == want


GUARD_CFG = msgspec.convert({
    "keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
    "exposure": {"instruments": {"instruments": {
        "BTC-PERP": {"kind": "perp", "base": "BTC", "quote": "USD"}}}}}, GuardConfig)


def _run_guard(items: list[Any], rc: RecoveryConfig | None = None, *,
               output: str = "exposures", batch_size: int = 1, watch: Any = None
               ) -> list[Any]:
    """The guard's ``output`` stream (a :class:`GuardOut` field) over ``items``."""
    flow = Dataflow("guard_ticks_resume")
    out = guard_core("guard", op.input("in", flow, TestingSource(items, batch_size=batch_size)),
                     cfg=GUARD_CFG, cfg_hash="0" * 64, clock=lambda: 0, signer=ENGINE,
                     trust=trust_store(), tick_sources=1, watch=watch)
    got: list[Any] = []
    op.output(output, getattr(out, output), TestingSink(got))
    run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=rc)
    return got


def _valued(outputs: list[Any]) -> set[tuple[str, int, str | None]]:
    """Each exposure and utilization's kind, time and counterparty."""
    return {(type(x).__name__, x.ts, getattr(x, "counterparty", None)) for x in outputs}


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("new_host", [False, True], ids=["same_name", "new_process_name"])
def test_a_guard_resumed_values_exposures_when_an_unbroken_one_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_host: bool, split: str) -> None:
    """The guard's ticks are named per process: whether the resumed process ticks under
    the stopped one's name or a new one, exposures come at the times an unbroken run's
    do, wherever in a bucket the snapshot fell."""
    before, after = SPLITS[split]()
    want = _valued(_run_guard([*before, *after]))
    assert ("Exposure", 3 * S, "okx") in want
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    items = [*before, TestingSource.ABORT(), *after]
    stopped = _run_guard(items, rc)
    if new_host:  # a restart names its tick sources afresh
        monkeypatch.setattr(socket, "gethostname", lambda: "restarted-host")
    assert _valued(stopped + _run_guard(items, rc)) == want


def test_the_admission_gate_keeps_the_last_tick_in_its_snapshot() -> None:
    """A gate restored from a snapshot taken inside a bucket makes no new tick for that
    bucket: its first record announces the last tick again, at that tick's time (time
    does not move); the next bucket ticks at its first record."""
    spec = TickSpec(S, source="guard", of=1)
    gate = KeyAdmission(AdmissionConfig(), Known(), ticks=spec.maker())
    before, after = _mid_bucket()
    first = [r for r in gate.on_batch(before) if type(r) is Tick]
    assert [t.ts for t in first] == [S // 2, S + S // 10]
    restored = KeyAdmission(AdmissionConfig(), Known(), state=gate.snapshot(),
                            ticks=spec.maker())
    again = [r for r in restored.on_batch(after) if type(r) is Tick]
    assert [t.ts for t in again] == [S + S // 10, 3 * S, 4 * S, 5 * S]


def test_a_gate_restored_with_a_longer_tick_ticks_at_the_next_bucket_of_that_length() -> None:
    """The snapshot keeps the last tick's time, not a bucket number: resumed with a
    longer ``tick_ns``, time goes on at the next bucket of the new length (a bucket
    number of the old length would hold every tick back for as long again)."""
    gate = KeyAdmission(AdmissionConfig(), Known(), ticks=TickSpec(S, source="g").maker())
    gate.on_batch([okx_trade(1, "BTC-PERP", 1000 * S + S // 2, 100.0)])
    restored = KeyAdmission(AdmissionConfig(), Known(), state=gate.snapshot(),
                            ticks=TickSpec(2 * S, source="g").maker())
    made = restored.on_batch([okx_trade(2, "BTC-PERP", 1001 * S, 100.0),
                              okx_trade(3, "BTC-PERP", 1002 * S + 1, 100.0)])
    assert [t.ts for t in made if type(t) is Tick] == [1000 * S + S // 2, 1002 * S + 1]


def test_a_resumed_firm_sends_its_held_ticks_at_the_market_processes_progress() -> None:
    """The firm holds its own ticks at the slowest market process's progress, and its
    :class:`FirmClock` is not in a snapshot. Resumed inside a bucket it had ticked, the
    gate announces the last tick again, so the firm's clock hears of its own source and
    sends it at the progress that follows, as the unbroken run does (without it, no own
    tick until the next bucket: the firm's time would stand still)."""
    now = [0]

    def firm_run(gate: KeyAdmission, batches: list[list[Any]]) -> list[int]:
        clock = FirmClock({"m0", "m1"}, wait_ns=60 * S, clock=lambda: now[0])
        sent: list[int] = []
        for batch in batches:
            made = gate.on_batch(batch)
            sent += [t.ts for t in clock([r for r in batch if type(r) is DetectProgress]
                                         + [r for r in made if type(r) is Tick])]
        return sent

    spec = TickSpec(100 * S, source=None, of=3)
    own = [okx_trade(n, "BTC-PERP", (100 + 10 * n) * S, 100.0) for n in range(6)]
    progress = [[DetectProgress(ts=60 * S, source="m0"), DetectProgress(ts=70 * S, source="m1")],
                [DetectProgress(ts=80 * S, source="m0"), DetectProgress(ts=90 * S, source="m1")]]
    gate = KeyAdmission(AdmissionConfig(), Known(), ticks=spec.maker())
    unbroken = firm_run(gate, [own[:3], progress[0], own[3:], progress[1]])
    assert unbroken == [60 * S, 80 * S]
    stopped = KeyAdmission(AdmissionConfig(), Known(), ticks=spec.maker())
    assert firm_run(stopped, [own[:3], progress[0]]) == [60 * S]
    resumed = KeyAdmission(AdmissionConfig(), Known(), state=stopped.snapshot(),
                           ticks=spec.maker())
    assert firm_run(resumed, [own[3:], progress[1]]) == [80 * S]


def _dislocations(outputs: list[Any]) -> list[tuple[str, str, int]]:
    return sorted((x.key, x.phase, x.ts) for x in outputs
                  if getattr(x, "kind", None) == "dislocation")


def _run_guard_signals(items: list[Any], rc: RecoveryConfig | None = None) -> list[Any]:
    return _run_guard(items, rc, output="signals", batch_size=3)


@pytest.mark.parametrize("new_host", [False, True], ids=["same_name", "new_process_name"])
def test_a_guard_resumed_inside_a_bucket_raises_the_dislocations_of_an_unbroken_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_host: bool) -> None:
    """The cross-market check takes its time from the admission gate's ticks, whose
    memory is in the gate's snapshot: resumed inside a bucket the stopped run ticked,
    under its name or a new one, it raises the dislocations an unbroken run does."""
    quotes = four_btc_markets(range(1, 340))
    want = _dislocations(_run_guard_signals(quotes))
    assert ("bitstamp/BTCUSD", "open", 300 * S + 28_000_000) in want
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    cut = 4 * 150 + 2  # inside the 150th second's bucket, after the record that ticked it
    items = [*quotes[:cut], TestingSource.ABORT(), *quotes[cut:]]
    stopped = _run_guard_signals(items, rc)
    if new_host:
        monkeypatch.setattr(socket, "gethostname", lambda: "restarted-host")
    assert _dislocations(stopped + _run_guard_signals(items, rc)) == want


class _CheckTicks:
    """A readiness watch that keeps the time of every tick the cross-market check reads."""

    def __init__(self) -> None:
        self.ticks: list[int] = []

    def vector(self, _fv: Any) -> None:
        pass

    def market(self, rec: Any) -> None:
        if type(rec) is Tick:
            self.ticks.append(rec.ts)


def _check_ticks(items: list[Any], rc: RecoveryConfig | None = None) -> list[int]:
    seen = _CheckTicks()
    _run_guard(items, rc, output="signals", batch_size=3, watch=seen)
    return seen.ticks


def test_the_cross_market_check_hears_after_a_resume_only_ticks_an_unbroken_run_made(
        tmp_path: Path) -> None:
    """Resumed inside a bucket the stopped run ticked, under the same process name, the
    check is told that bucket's tick again at its own time (the gate's snapshot holds
    it), never at a later record's time, and every later tick where the unbroken run's
    was (a check making its own ticks from what it reads would tick the bucket again)."""
    quotes = four_btc_markets(range(1, 40))
    unbroken = _check_ticks(quotes)
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    cut = 4 * 15 + 2  # inside the 15th second's bucket, after the record that ticked it
    items = [*quotes[:cut], TestingSource.ABORT(), *quotes[cut:]]
    stopped = _check_ticks(items, rc)
    resumed = _check_ticks(items, rc)
    assert stopped == unbroken[: len(stopped)]
    assert resumed[0] == stopped[-1] == 16 * S + 7_000_000
    assert set(resumed) <= set(unbroken)
    assert resumed[-1] == unbroken[-1]
    assert sorted(set(stopped) | set(resumed)) == sorted(set(unbroken))
