"""Exposure in ticked mode: revaluation at event-time boundaries, the slowest process's
watermark, held records across snapshots, and progress passed down to the limits keys."""

from __future__ import annotations

import math
import pickle
from typing import Any
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from riskguard.operators.core.clock import TICK_IDLE_NS, ManualClock, Tick
from riskguard.operators.exposure import (
    PROGRESS_KEY,
    ExposureConfig,
    FirmLogic,
    InstrumentsConfig,
    InstrumentSpec,
    Part,
    Progress,
    Router,
    ShardLogic,
    valuation,
)
from riskguard.schemas import (
    Balance,
    Exposure,
    OpenOrders,
    PositionSnapshot,
    Trade,
)
from test_exposure import S, fill, worked_config

from riskguard.errors import ConfigError


def ticked_parts(cfg: ExposureConfig, stream: list[object]) -> list[Part]:
    """Stage-1 parts of a ticked single-shard run over ``stream`` (records and ticks; an
    int moves the processing clock on by that many ns)."""
    reg = cfg.validate()
    router = Router(reg, cfg)
    clock = ManualClock(0)
    logic = ShardLogic(cfg, reg, ticked=True, clock=clock)
    out: list[object] = []
    for ev in stream:
        if isinstance(ev, int):
            clock.advance(ev)
            continue
        for _key, item in router.route(ev):
            out.extend(logic.on_event(item))
    return [p for p in out if isinstance(p, Part)]


def test_ticked_fill_revalues_its_counterparty_at_the_next_position_boundary() -> None:
    """In ticked mode a fill does not wait for the tick: its counterparty is re-valued at
    the next ``position_revalue_ns`` boundary (as soon as a record at or past it
    arrives), stamped with the boundary; price moves still wait for the tick."""
    t = 1_000 * S
    ms = 1_000_000
    stream: list[object] = [
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0, qty=1.0,
              side="buy"),
        Tick(ts=t, source="p"),
        fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 3 * ms),
        Trade(id="t2", venue="okx", instrument="BTC-PERP", ts=t + 5 * ms, price=61_000.0,
              qty=1.0, side="buy"),
        # crosses the 10 ms boundary: okx is re-valued (with t2's price) before t3 applies
        Trade(id="t3", venue="okx", instrument="BTC-PERP", ts=t + 12 * ms, price=62_000.0,
              qty=1.0, side="buy"),
        Tick(ts=t + S, source="p"),
    ]
    fast = ticked_parts(worked_config(), stream)
    assert [(p.counterparty, p.ts, p.net, p.evidence) for p in fast] == [
        ("okx", t + 10 * ms, 2 * 61_000.0, ["f1"]),  # the fill's boundary, mark t2
        ("okx", t + S, 2 * 62_000.0, ["t3"]),  # the tick re-values the price move
    ]
    # 0 turns it off: the fill waits for the tick
    slow = ticked_parts(worked_config(position_revalue_ns=0), stream)
    assert [(p.ts, p.net, p.evidence) for p in slow] == [(t + S, 2 * 62_000.0, ["t3", "f1"])]


def test_in_a_live_run_a_fills_boundary_also_passes_by_wall_time() -> None:
    """With a wall clock (live runs), a fill on a shard no later record reaches is still
    re-valued once its boundary's wall time has gone by (the dataflow calls
    ``on_deadline``), stamped with the boundary as a crossing record would be. Without
    one (replays) nothing is due by wall time."""
    t = 1_000 * S
    ms = 1_000_000
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    wall = ManualClock(5 * S)
    live = ShardLogic(cfg, reg, ticked=True, wall_clock=wall)
    replay = ShardLogic(cfg, reg, ticked=True)
    stream = [Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0,
                    qty=1.0, side="buy"),
              Tick(ts=t, source="p"),
              fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 3 * ms)]
    for logic in (live, replay):
        for ev in stream:
            for _key, item in router.route(ev):
                assert logic.on_event(item) == []
    assert replay.next_deadline_ns() is None
    assert live.next_deadline_ns() == 5 * S + 7 * ms  # 7 ms of event time to the boundary
    wall.advance(7 * ms)
    parts = [p for p in live.on_deadline() if isinstance(p, Part)]
    assert [(p.counterparty, p.ts, p.net, p.evidence) for p in parts] == [
        ("okx", t + 10 * ms, 2 * 60_000.0, ["f1"])]
    assert live.next_deadline_ns() is None and live.on_deadline() == []


def test_ticked_shard_revalues_once_per_tick_of_the_slowest_process() -> None:
    """With two guard processes ticking, a price move is re-valued once per tick
    bucket, when the slower process's tick arrives (the processes' watermark), and
    gives the same parts as one process ticking. A process far behind in event time
    still holds it back (in a replay event time runs faster than processing time); one
    silent for ``TICK_IDLE_NS`` of processing time no longer does."""
    t = 1_000 * S

    def trade(i: int, ts: int, px: float) -> Trade:
        return Trade(id=f"t{i}", venue="okx", instrument="BTC-PERP", ts=ts, price=px,
                     qty=1.0, side="buy")

    head: list[object] = [fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, t - S)]
    one = [*head, trade(1, t, 60_000.0), Tick(ts=t, source="a"),
           trade(2, t + 1, 61_000.0), Tick(ts=t + S, source="a")]
    two = [*head, trade(1, t, 60_000.0), Tick(ts=t, source="a"), Tick(ts=t, source="b"),
           trade(2, t + 1, 61_000.0), Tick(ts=t + S, source="a"),
           Tick(ts=t + S, source="b")]
    cfg = worked_config(position_revalue_ns=0)
    single = [(p.ts, p.net, p.evidence) for p in ticked_parts(cfg, one)]
    assert [(p.ts, p.net, p.evidence) for p in ticked_parts(cfg, two)] == single
    assert len(single) == 2
    # a runs 31 s ahead of b in event time: b still holds re-valuation back
    behind = [*two, trade(3, t + 2 * S, 62_000.0), Tick(ts=t + 32 * S, source="a")]
    assert ticked_parts(cfg, behind)[2:] == []
    # b falls silent for TICK_IDLE_NS of processing time: a's ticks alone re-value
    stale = [*two, trade(3, t + 2 * S, 62_000.0), TICK_IDLE_NS,
             Tick(ts=t + 32 * S, source="a")]
    parts = ticked_parts(cfg, stale)
    assert [(p.ts, p.net) for p in parts[2:]] == [(t + 32 * S, 62_000.0)]


def worker_stream(source: str, venue: str, inst: str, px: float, fill_s: int,
                   until_s: int, of: int = 2) -> list[object]:
    """One guard worker's share of the shard's input: a tick at each second, then that
    second's marks of its venue's instrument, and one fill on it."""
    t, ms = 1_000 * S, 1_000_000
    out: list[object] = [Tick(ts=t - S, source=source, of=of),
                         Balance(id=f"b-{venue}", venue=venue, counterparty=venue,
                                 asset="USDC", total=1e6, ts=t - S)]
    for k in range(until_s + 1):
        out.append(Tick(ts=t + k * S, source=source, of=of))
        second: list[Any] = [
            Trade(id=f"t-{venue}-{k}-{j}", venue=venue, instrument=inst,
                  ts=t + k * S + j * 250 * ms, price=px * (1 + 0.001 * k + j * 1e-4),
                  qty=1.0, side="buy") for j in range(4)]
        if k == fill_s:
            second.append(fill(f"f-{venue}", venue, inst, "buy", 3.0, px, t + k * S + 3 * ms))
        out.extend(sorted(second, key=lambda e: e.ts))
    return out


def interleaved_ahead(lead_s: float, a: list[object], b: list[object]) -> list[object]:
    """a's and b's inputs (each in event-time order) interleaved as they arrive when a
    runs ``lead_s`` ahead of b in event time."""
    keyed = [(e.ts - int(lead_s * S), n, e) for n, e in enumerate(a)]
    keyed += [(e.ts, len(a) + n, e) for n, e in enumerate(b)]
    return [e for _, _, e in sorted(keyed, key=lambda x: (x[0], x[1]))]


def test_how_far_a_process_runs_ahead_does_not_change_the_valuation() -> None:
    """Replaying a backlog, one process can run seconds or minutes ahead of the other in
    event time. Its records wait in the shard until the watermark is within
    ``reorder_slack_ns`` of them, so the parts are the same however far ahead it runs
    (beyond the slack), up to its whole input arriving first; without the wait, marks
    from the future would be valued at the slower process's ticks."""
    a = worker_stream("a", "okx", "BTC-PERP", 60_000.0, 20, 40)
    b = worker_stream("b", "binance", "ETH-PERP", 3_000.0, 7, 40)

    def parts(cfg: ExposureConfig, events: list[object]) -> list[tuple[object, ...]]:
        return [(p.counterparty, p.ts, p.net, p.gross, p.evidence)
                for p in ticked_parts(cfg, events)]

    cfg, loose = worked_config(), worked_config(reorder_slack_ns=0)
    reference = parts(cfg, a + b)  # a's whole input first
    assert len(reference) > 50
    assert {p[0] for p in reference} == {"okx", "binance"}
    for lead_s in (2.5, 5, 20, 60):
        assert parts(cfg, interleaved_ahead(lead_s, a, b)) == reference, lead_s
    assert parts(loose, interleaved_ahead(5, a, b)) != parts(loose, a + b)


def test_records_waiting_for_the_watermark_survive_a_snapshot_and_end_of_input() -> None:
    """Records held for the watermark are shard state: a resumed shard applies them when
    the watermark comes, and end of input applies whatever still waits. (No expected
    source count: the resumed shard meets the same source names here, not new ones.)"""
    a = worker_stream("a", "okx", "BTC-PERP", 60_000.0, 20, 40, of=0)
    b = worker_stream("b", "binance", "ETH-PERP", 3_000.0, 7, 40, of=0)
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    events = [b[0], b[1], *a, *b[2:]]  # b ticks once, then a runs 40 s ahead

    def run(logic: ShardLogic, evs: list[object]) -> list[object]:
        out: list[object] = []
        for ev in evs:
            for _key, item in router.route(ev):
                out.extend(logic.on_event(item))
        return out

    whole = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    straight = [*run(whole, events), *whole.on_eof()]
    first = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    cut = len(a) + 2
    head = run(first, events[:cut])
    assert first.snapshot().held  # a's records wait for b
    second = ShardLogic(cfg, reg, pickle.loads(pickle.dumps(first.snapshot())), ticked=True,
                        clock=ManualClock(0))
    resumed = [*head, *run(second, events[cut:]), *second.on_eof()]
    assert [(p.counterparty, p.ts, p.net) for p in resumed if isinstance(p, Part)] == [
        (p.counterparty, p.ts, p.net) for p in straight if isinstance(p, Part)]
    stopped = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0))
    run(stopped, events[:cut])
    tail = [p for p in stopped.on_eof() if isinstance(p, Part)]
    assert {p.counterparty for p in tail} == {"okx"} and not stopped.snapshot().held


def test_progress_passes_the_firm_at_the_slowest_counterparty_to_every_limits_key() -> None:
    """Ticked mode: a shard passes each tick on to every counterparty it holds and to
    PROGRESS_KEY; the firm passes a source's progress on only once every stage-2 key
    that carries it has passed it (behind that key's exposures), to the firm's limits
    key and each counterparty's, and a new counterparty's key hears it at once; the
    state survives a snapshot."""
    cfg = worked_config()
    firm = FirmLogic(cfg, ticked=True)

    def prog(cp: str, ts: int) -> Progress:
        return Progress(counterparty=cp, ts=ts * S, source="w0@s0", of=1)

    exp = Exposure(counterparty="okx", ts=5 * S, gross_notional=1.0, net_notional=1.0, seq=1)
    out = firm.on_batch([exp, prog(PROGRESS_KEY, 5), prog("okx", 5)])
    assert [type(x).__name__ for x in out] == ["Exposure", "Exposure", "Progress", "Progress"]
    assert [(p.counterparty, p.ts, p.of) for p in out[2:]] == [("*", 5 * S, 2), ("okx", 5 * S, 2)]
    assert firm.on_batch([prog(PROGRESS_KEY, 7)]) == []  # okx's key is still at 5
    resumed = FirmLogic(cfg, pickle.loads(pickle.dumps(firm.snapshot())), ticked=True)
    out = resumed.on_batch([prog("okx", 6)])
    assert [(p.counterparty, p.ts) for p in out] == [("*", 6 * S), ("okx", 6 * S)]
    # a new counterparty's key hears the progress so far at once, behind its exposure
    new = Exposure(counterparty="deribit", ts=6 * S, gross_notional=1.0, net_notional=1.0,
                   seq=1)
    out = resumed.on_batch([new])
    assert [(type(x).__name__, x.counterparty) for x in out][-1] == ("Progress", "deribit")
    assert (out[-1].ts, out[-1].of) == (6 * S, 3)
    # a key that joins in the batch another source moves in hears every source so far,
    # the one that moved and one that has finished (it will never move again)
    two = FirmLogic(cfg, ticked=True)
    done = Progress(counterparty=PROGRESS_KEY, ts=9 * S, source="w1@s0", of=2)
    assert [(p.counterparty, p.source) for p in two.on_batch([done])] == [("*", "w1@s0")]
    out = two.on_batch([exp, Progress(counterparty=PROGRESS_KEY, ts=5 * S, source="w0@s0",
                                      of=2)])
    heard = {(p.counterparty, p.source, p.ts) for p in out if isinstance(p, Progress)}
    assert heard == {("*", "w0@s0", 5 * S), ("okx", "w0@s0", 5 * S),
                     ("okx", "w1@s0", 9 * S)}
    # a counterparty that just joined a shard holds the source until its own copy comes
    # (its first part is on its way on that key, behind which its copy travels)
    joined = FirmLogic(cfg, ticked=True)
    assert joined.on_batch([Progress(counterparty=PROGRESS_KEY, ts=5 * S, source="w0@s0",
                                     of=1, via=("okx",))]) == []
    assert [p.ts for p in joined.on_batch([prog("okx", 5)])] == [5 * S]
    # a shard names its progress per shard and reaches every counterparty it holds
    reg = cfg.validate()
    router = Router(reg, cfg)
    shard = ShardLogic(cfg, reg, ticked=True, clock=ManualClock(0), forward_ticks=True)
    evs = [fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, S), Tick(ts=2 * S, source="w0",
                                                                      of=1)]
    outs = [o for ev in evs for _k, it in router.route(ev) for o in shard.on_event(it)]
    assert [(p.counterparty, p.source) for p in outs if isinstance(p, Progress)] == [
        (PROGRESS_KEY, "w0@s0"), ("okx", "w0@s0")]


def test_the_firm_passes_a_tick_only_once_every_key_its_shard_named_has_passed_it() -> None:
    """On several workers the copies of one source's progress reach the firm in any
    order, one stage-2 key's ahead of another's: the firm passes a tick on only once the
    source's PROGRESS_KEY copy has named its counterparties (``via``) and each of them
    has passed it, so no limits key moves past an exposure still on its way."""
    cfg = worked_config()
    firm = FirmLogic(cfg, ticked=True)

    def passed_after(*items: Any) -> int:
        firm.on_batch(list(items))
        return firm.state.passed.get("w0@s0", -1) // S

    def prog(cp: str, ts: int, via: tuple[str, ...] = ()) -> Progress:
        return Progress(counterparty=cp, ts=ts * S, source="w0@s0", of=1, via=via)

    def exp(cp: str, ts: int) -> Exposure:
        return Exposure(counterparty=cp, ts=ts * S, gross_notional=1.0, net_notional=1.0,
                        seq=1)

    # okx's key is ahead of the PROGRESS_KEY copy, which names deribit too
    assert passed_after(exp("okx", 5), prog("okx", 5)) == -1
    assert passed_after(prog(PROGRESS_KEY, 5, via=("deribit", "okx"))) == -1
    assert passed_after(exp("deribit", 5), prog("deribit", 5)) == 5
    # kraken joins at 7 and its key runs ahead of the copy of 6, whose via names bybit:
    # as many names as the firm holds, but not the same ones
    assert passed_after(prog("okx", 6), prog("deribit", 6), exp("kraken", 7),
                        prog("kraken", 7)) == 5
    assert passed_after(prog(PROGRESS_KEY, 6, via=("bybit", "deribit", "okx"))) == 5
    assert passed_after(exp("bybit", 6), prog("bybit", 6)) == 6


def test_in_a_live_run_a_held_fill_waits_at_most_max_hold_ns_of_wall_time() -> None:
    """Live, a fill held for a slower process's watermark is applied once it has waited
    ``max_hold_ns`` of wall time (the dataflow calls ``on_deadline``), and its position
    boundary then passes by wall time as usual: a breach still comes within seconds."""
    t, ms = 1_000 * S, 1_000_000
    cfg = worked_config(max_hold_ns=5 * S)
    reg = cfg.validate()
    router = Router(reg, cfg)
    wall = ManualClock(0)
    told: list[tuple[str, int]] = []
    shard = ShardLogic(cfg, reg, ticked=True, clock=wall, wall_clock=wall,
                       on_reorder=lambda outcome, n: told.append((outcome, n)))
    evs = [Tick(ts=t, source="a", of=2), Tick(ts=t, source="b", of=2),
           Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0, qty=1.0,
                 side="buy"),
           fill("f1", "okx", "BTC-PERP", "buy", 2.0, 60_000.0, t + 30 * S)]  # a runs ahead
    for ev in evs:
        for _key, item in router.route(ev):
            assert not [p for p in shard.on_event(item) if isinstance(p, Part)]
    assert len(shard.snapshot().held) == 1 and shard.next_deadline_ns() == 5 * S
    wall.advance(5 * S)
    assert shard.on_deadline() == []  # applied; its boundary is 10 ms of wall time away
    assert shard.snapshot().forced == 1 and shard.snapshot().held == []
    assert told == [("held", 1), ("forced", 1)]  # riskguard_reorder_total in the guard
    wall.advance(10 * ms)
    parts = [p for p in shard.on_deadline() if isinstance(p, Part)]
    assert [(p.counterparty, p.ts, p.net) for p in parts] == [
        ("okx", t + 30 * S + 10 * ms, 2 * 60_000.0)]


def test_reorder_slack_ns_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="reorder_slack_ns"):
        worked_config(reorder_slack_ns=-1).validate()


def test_position_revalue_ns_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="position_revalue_ns"):
        worked_config(position_revalue_ns=-1).validate()


def _book_events(seed: int) -> list[Any]:
    """The random worked-example stream, with open orders, position snapshots (some
    breaking reconciliation) and marks of a never-declared FX rate mixed in."""
    from risk_flow_app import make_events

    rng = __import__("random").Random(seed)
    out: list[Any] = []
    for k, ev in enumerate(make_events(120, seed=seed)):
        out.append(ev)
        ts = getattr(ev, "ts", 0)
        r = rng.random()
        if r < 0.06:
            out.append(OpenOrders(id=f"oo{k}", venue="okx", counterparty="okx",
                                  instrument=rng.choice(["BTC-PERP", "ETH-PERP", "BTC-USDC"]),
                                  notional=rng.choice([0.0, 1_000.0, 25_000.0]), ts=ts))
        elif r < 0.1:
            out.append(PositionSnapshot(id=f"ps{k}", venue="binance", counterparty="binance",
                                        instrument=rng.choice(["BTC-PERP", "ETH-PERP"]),
                                        qty=rng.choice([0.0, -1.5, 2.0]), ts=ts))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), ticked=st.booleans())
def test_a_small_book_revalued_in_python_gives_the_whole_array_bits(seed: int,
                                                                   ticked: bool) -> None:
    """Property: re-valuing a small book in Python (``_revalue_small``, what the demo
    book takes) and whole-array (``_revalue_whole``, forced by a zero small-book size)
    gives every part and alert the same bytes, the sign of a zero included: the same
    IEEE operations in the same order, numpy's short segmented sums included."""
    cfg = worked_config()
    reg = cfg.validate()
    router = Router(reg, cfg)
    stream: list[Any] = []
    for k, ev in enumerate(_book_events(seed)):
        if ticked and k and k % 7 == 0:
            stream.append(Tick(ts=ev.ts, source="w", of=1))
        stream.append(ev)

    def run() -> list[bytes]:
        shards: dict[str, ShardLogic] = {}
        out: list[bytes] = []
        for lo in range(0, len(stream), 10):
            for kv in router.route_batch(stream[lo:lo + 10]):
                if isinstance(kv, tuple):
                    logic = shards.setdefault(kv[0], ShardLogic(cfg, reg, ticked=ticked,
                                                                clock=lambda: 0))
                    out.extend(msgspec.json.encode(p) for p in logic.on_batch([kv[1]]))
        for logic in shards.values():
            out.extend(msgspec.json.encode(p) for p in logic.on_eof())
        return out

    small = run()
    with patch.object(valuation, "_SMALL_CELLS", -1):
        whole = run()
    assert len(small) > 20
    assert small == whole


@pytest.mark.parametrize("small_cells", [-1, 64], ids=["whole_array", "small_book"])
def test_a_row_revalued_beside_a_later_row_without_positions_sums_all_its_positions(
    small_cells: int,
) -> None:
    """Regression: a counterparty re-valued in the same batch as a later one that holds no
    position (only a balance) summed all but its last position: the segmented sum's
    trailing empty rows were clamped onto its segment (gross read 10 for 10 + 21)."""
    cfg = ExposureConfig(instruments=InstrumentsConfig(instruments={
        "P0": InstrumentSpec(kind="perp", base="BTC", quote="USD"),
        "P1": InstrumentSpec(kind="perp", base="ETH", quote="USD")}))
    reg = cfg.validate()
    router = Router(reg, cfg)
    batches = [
        [Trade(id="t0", venue="v", instrument="P0", ts=1, price=10.0, qty=1.0, side="buy"),
         Trade(id="t1", venue="v", instrument="P1", ts=1, price=20.0, qty=1.0, side="buy"),
         fill("f0", "a", "P0", "buy", 1.0, 10.0, 2), fill("f1", "a", "P1", "buy", 1.0, 20.0, 3),
         Balance(id="b1", venue="b", counterparty="b", asset="USD", total=5.0, ts=4)],
        [Trade(id="t2", venue="v", instrument="P1", ts=5, price=21.0, qty=-1.0, side="sell"),
         Balance(id="b2", venue="b", counterparty="b", asset="USD", total=6.0, ts=6)],
    ]
    logic = ShardLogic(cfg, reg)
    last: dict[str, Part] = {}
    with patch.object(valuation, "_SMALL_CELLS", small_cells):
        for batch in batches:
            for _key, pack in router.route_batch(batch):
                last.update((p.counterparty, p) for p in logic.on_batch([pack])
                            if isinstance(p, Part))
    a, b = last["a"], last["b"]
    assert (a.gross, a.net, a.upnl, a.ts) == (31.0, 31.0, 1.0, 5)
    assert (b.gross, b.collateral, b.names) == (0.0, 6.0, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["BTC", "ETH", "SOL", "USDT"]),
                                st.floats(-1e12, 1e12, allow_nan=False),
                                min_size=0, max_size=4), min_size=1, max_size=30),
       st.booleans())
def test_the_firms_dict_sums_equal_a_plain_loop_bit_for_bit(
        ds: list[dict[str, float]], same_keys: bool) -> None:
    """sum_dicts (the firm's delta and by-asset rollups, with a fast path when every dict
    holds every key, in any order) equals a plain loop: keys in first-seen order, each
    summed from 0 in list order, a missing key adding nothing."""
    from riskguard.operators.exposure.rollup import sum_dicts

    if same_keys:  # every dict holding every key, in its own order
        keys = sorted(set().union(*ds))
        ds = [{k: d.get(k, 1.5) for k in (keys if n % 2 else keys[::-1])}
              for n, d in enumerate(ds)]
    want: dict[str, float] = {}
    for d in ds:
        for k in d:
            want.setdefault(k, 0)
    for k in want:
        total: float = 0
        for d in ds:
            if k in d:
                total += d[k]
        want[k] = total
    got = sum_dicts(ds)
    assert list(got) == list(want)
    assert [math.copysign(1, v) for v in got.values()] == [math.copysign(1, v)
                                                            for v in want.values()]
    assert got == want


_PROGRESS_ITEMS = st.lists(st.tuples(
    st.sampled_from(["w0@s0", "w0@s1"]),                 # source
    st.sampled_from(["*", "a", "b", "c", "d"]),          # stage-2 key ("*": PROGRESS_KEY)
    st.integers(-2, 12),                                 # ts, repeats and steps back too
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=3)),  # via
    max_size=60)


@settings(max_examples=200, deadline=None)
@given(_PROGRESS_ITEMS, st.integers(1, 7))
def test_the_firm_passes_each_source_at_the_lowest_of_its_keys(items: list[Any],
                                                                batch: int) -> None:
    """What the firm passes on for a source is the lowest newest ts over every stage-2
    key it waits for (the keys' own copies and those named in ``via``), counted as keys
    move, whatever the order, the repeats and the batches."""
    from riskguard.operators.exposure import PROGRESS_KEY
    from riskguard.operators.exposure.rollup import FirmLogic
    from riskguard.schemas.valuation import Progress

    logic = FirmLogic(ExposureConfig(), ticked=True)
    seen: dict[str, dict[str, int]] = {}
    passed: dict[str, int] = {}
    progress = [Progress(counterparty=PROGRESS_KEY if cp == "*" else cp, ts=ts, source=src,
                         of=2, via=tuple(via) if cp == "*" else ())
                for src, cp, ts, via in items]
    for i in range(0, len(progress), batch):
        chunk = progress[i:i + batch]
        logic.on_batch(chunk)
        for p in chunk:  # the definition, recomputed from scratch
            keys = seen.setdefault(p.source, {PROGRESS_KEY: -1})
            for cp in p.via:
                keys.setdefault(cp, -1)
            if p.ts > keys.get(p.counterparty, -1):
                keys[p.counterparty] = p.ts
                passed[p.source] = max(passed.get(p.source, -1), min(keys.values()))
        assert logic.state.passed == {
            s: ts for s, ts in passed.items() if ts > -1}


def test_a_restarts_old_progress_sources_are_forgotten_once_they_outnumber_the_count() -> None:
    """A restart names its progress sources afresh: the sources a restored firm state
    names are forgotten once the sources outnumber the count the progress announces, so
    restarts do not pile up sources (each with a map over every counterparty); one that
    speaks again stays, and a source speaking for the first time within the count (it had
    not spoken before the snapshot) forgets nothing."""
    cfg = worked_config()
    firm = FirmLogic(cfg, ticked=True)

    def prog(src: str, ts: int) -> Progress:
        return Progress(counterparty=PROGRESS_KEY, ts=ts * S, source=src, of=3)

    firm.on_batch([prog("a/1@s0", 5), prog("a/1@s1", 5)])
    resumed = FirmLogic(cfg, pickle.loads(pickle.dumps(firm.snapshot())), ticked=True)
    resumed.on_batch([prog("a/1@s2", 6), prog("a/1@s1", 6)])  # s2 had not spoken yet
    assert sorted(resumed.state.progress) == ["a/1@s0", "a/1@s1", "a/1@s2"]
    again = FirmLogic(cfg, pickle.loads(pickle.dumps(resumed.snapshot())), ticked=True)
    again.on_batch([prog("a/1@s2", 7), prog("b/2@s0", 7)])  # s2 kept its name
    assert sorted(again.state.progress) == ["a/1@s2", "b/2@s0"]
    again.on_batch([prog("b/2@s1", 7)])
    assert sorted(again.state.progress) == ["a/1@s2", "b/2@s0", "b/2@s1"]
    assert sorted(again.state.passed) == ["a/1@s2", "b/2@s0", "b/2@s1"]


def test_a_counterparty_whose_marks_all_stop_turns_stale_as_the_ticks_pass() -> None:
    """Ticked, time passes for a counterparty with the ticks, not only with its own
    parts: once its only mark is older than ``max_mark_age_ns`` by the ticks' watermark,
    its exposure is sent again, stale, with one ``stale_mark`` alert, both stamped with
    the moment the mark grew too old (so batching and tick spacing do not move them).
    A mark coming back clears it, with a ``mark_restored`` alert; another counterparty's
    fresh marks are not touched."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators.exposure import aggregate_exposure

    t = 1_000 * S
    age = 30 * S

    def trade(i: int, inst: str, ts: int) -> Trade:
        return Trade(id=f"t{i}", venue="okx", instrument=inst, ts=ts, price=60_000.0,
                     qty=1.0, side="buy")

    def run(step_s: int) -> tuple[list[Exposure], list[Any]]:
        events: list[object] = [
            trade(0, "BTC-PERP", t), trade(1, "ETH-PERP", t),
            fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, t + 1),
            fill("f2", "bybit", "ETH-PERP", "buy", 1.0, 3_000.0, t + 2)]
        for s in range(step_s, 90, step_s):  # ETH keeps trading, BTC stops
            events += [trade(10 + s, "ETH-PERP", t + s * S), Tick(ts=t + s * S, source="w")]
        events += [trade(999, "BTC-PERP", t + 95 * S), Tick(ts=t + 96 * S, source="w")]
        flow = Dataflow("stale")
        inp = op.input("in", flow, TestingSource(events, batch_size=3))
        out = aggregate_exposure(
            "exp", op.filter("recs", inp, lambda r: not isinstance(r, Tick)),
            config=worked_config(max_mark_age_ns=age), clock=lambda: 0,
            ticks=op.filter("ticks", inp, Tick.__instancecheck__))
        exps: list[Exposure] = []
        alerts: list[Any] = []
        op.output("e", out.exposures, TestingSink(exps))
        op.output("a", out.alerts, TestingSink(alerts))
        run_main(flow)
        return exps, alerts

    exps, alerts = run(1)
    stale_at = t + age + 1
    assert [(a.kind, a.scope.value, a.ts) for a in alerts] == [
        ("stale_mark", "BTC-PERP", stale_at), ("mark_restored", "BTC-PERP", t + 96 * S)]
    okx = [(e.ts, e.stale) for e in exps if e.counterparty == "okx"]
    assert (stale_at, True) in okx
    assert okx[-1] == (t + 96 * S, False)  # its mark is back
    assert not any(e.stale for e in exps if e.counterparty == "bybit")
    # ticks every 7 s instead of every second: the same alert, at the same moment
    assert [(a.kind, a.ts, a.id) for a in run(7)[1]] == [
        (a.kind, a.ts, a.id) for a in alerts]


def test_a_silent_progress_source_stops_holding_a_counterpartys_time_back() -> None:
    """Stage 2 judges marks by the oldest of its progress sources' ticks, so no shard's
    part still on its way is overtaken; a source silent for TICK_IDLE_NS of processing
    time (a market process gone) no longer holds that time back."""
    from riskguard.operators.exposure import CounterpartyLogic

    t = 1_000 * S
    cfg = worked_config(max_mark_age_ns=30 * S)
    parts = ticked_parts(cfg, [
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=t, price=60_000.0, qty=1.0,
              side="buy"),
        fill("f1", "okx", "BTC-PERP", "buy", 1.0, 60_000.0, t + 1),
        Tick(ts=t + S, source="p")])
    clock = ManualClock(0)
    logic = CounterpartyLogic(cfg, ticked=True, clock=clock)
    assert {type(o).__name__ for o in logic.on_batch(parts)} == {"Exposure"}

    def tick(ts: int, *sources: str) -> list[Any]:
        clock.advance(S)
        return [o for o in logic.on_batch([Progress(counterparty="okx", ts=ts, source=s)
                                           for s in sources])
                if not isinstance(o, Progress)]

    tick(t + 2 * S, "a", "b")
    # b falls silent at t + 2 s: a's ticks alone do not move the counterparty's time
    assert all(tick(t + k * S, "a") == [] for k in range(3, 12))
    # ten seconds of processing time later b is forgotten: the mark is judged at once
    later = tick(t + 40 * S, "a")
    assert [(type(o).__name__, o.ts) for o in later] == [
        ("RiskAlert", t + 30 * S + 1), ("Exposure", t + 30 * S + 1)]
