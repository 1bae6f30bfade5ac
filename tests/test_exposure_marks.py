"""Exposure under batched marks: runs of marks applied whole-array equal marks applied
one by one, across restarts and across processes."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import msgspec
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from riskguard.operators.exposure import (
    ExposureConfig,
    InstrumentsConfig,
    InstrumentSpec,
    Part,
    Router,
    ShardLogic,
    arrays,
)
from riskguard.operators.exposure import marks as shard_marks
from riskguard.schemas import (
    Fill,
    Quote,
    Trade,
)
from test_exposure import S, fill

BATCH_CFG = ExposureConfig(
    instruments=InstrumentsConfig(instruments={
        f"P{k}": InstrumentSpec(kind="perp", base=f"A{k % 2}", quote="USD") for k in range(3)}),
    vol_min_samples=1,
)
COLUMNS = ("mark", "mark_ts", "mark_id", "last_ts", "ewma_price", "ewma_ts", "ewma_var",
           "ewma_n")


@st.composite
def mark_batches(draw: st.DrawFn) -> list[object]:
    """Trades, quotes and fills with repeated, equal and out-of-order times."""
    evs: list[object] = []
    for k in range(draw(st.integers(0, 60))):
        inst = f"P{draw(st.integers(0, 2))}"
        ts = draw(st.integers(1, 30)) * S
        px = draw(st.sampled_from([10.0, 10.5, 11.0, 9.0, 100.0]))
        kind = draw(st.sampled_from(["trade", "trade", "trade", "quote", "fill"]))
        if kind == "trade":
            evs.append(Trade(id=f"t{k}", venue="v", instrument=inst, ts=ts, price=px, qty=1.0,
                             side="buy"))
        elif kind == "quote":
            evs.append(Quote(id=f"q{k}", venue="v", instrument=inst, ts=ts, bid=px, bid_size=1.0,
                             ask=px + 1.0, ask_size=1.0))
        else:
            evs.append(fill(f"f{k}", "a", inst, "buy", 1.0, px, ts))
    return evs


def _dup_fill_later() -> tuple[list[object], list[object]]:
    """Found by Hypothesis: a replayed fill (same id, later ts) after marks in its batch."""
    def trades() -> list[object]:
        return [Trade(id=f"t{k}", venue="v", instrument="P0", ts=S, price=10.0, qty=1.0,
                      side="buy") for k in range(2)]
    return ([*trades(), fill("f2", "a", "P0", "buy", 1.0, 10.0, S)],
            [*trades(), fill("f2", "a", "P0", "buy", 1.0, 10.0, 2 * S)])


# the EWMA recursion over a run: step by step across columns, or column by column
_RECURSIONS = {"steps": {"_STEP_COST": 0, "_COLUMN_COST": 10**9},
               "columns": {"_STEP_COST": 10**9, "_COLUMN_COST": 0}}


@pytest.mark.parametrize("recursion", sorted(_RECURSIONS))
@settings(max_examples=80, deadline=None)
@given(first=mark_batches(), second=mark_batches())
@example(**dict(zip(("first", "second"), _dup_fill_later(), strict=True)))
def test_batched_plain_marks_equal_marks_applied_one_by_one(
    first: list[object], second: list[object], recursion: str
) -> None:
    """Runs of plain marks applied whole-array (two batches) leave every mark and EWMA
    column bit-identical to the same records applied one at a time, and the parts agree.
    The whole-array threshold is lowered to 1 here so that every run takes that path,
    and the EWMA recursion is forced down each of its two ways of computing."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    batched = ShardLogic(BATCH_CFG, reg)
    single = ShardLogic(BATCH_CFG, reg)
    last: dict[str, Part] = {}
    for evs in (first, second):
        with (patch.object(shard_marks, "_VECTOR_MIN", 1),
              patch.multiple(arrays, **_RECURSIONS[recursion])):
            parts = [p for _k, pack in router.route_batch(evs)
                     for p in batched.on_batch([pack])]
        for ev in evs:
            for _k, item in router.route(ev):
                last.update((p.counterparty, p) for p in single.on_event(item)
                            if isinstance(p, Part))
        # a part carries the vols of what its re-valuation moved (a batch moves more than
        # its last record): each the vol the records applied one by one give
        vols = single._und_vols(single._layout().held_cols) if single.state.key else {}
        for p in parts:
            if isinstance(p, Part):
                q = last[p.counterparty]
                assert (p.gross, p.net, p.upnl, p.ts) == pytest.approx((q.gross, q.net, q.upnl,
                                                                          q.ts))
                assert p.positions() == pytest.approx(q.positions())
                assert p.vols == {k: vols[k] for k in p.vols}
    if batched.state.key:
        for name in COLUMNS:
            np.testing.assert_array_equal(getattr(batched.state, name),
                                          getattr(single.state, name), err_msg=name)


@settings(max_examples=80, deadline=None)
@given(evs=mark_batches(), cut=st.integers(0, 60), data=st.data())
def test_marks_sent_again_after_a_restart_change_no_column(
    evs: list[object], cut: int, data: st.DataObject
) -> None:
    """A resumed upstream (a tier that ships marks, a replayed topic) sends marks after
    its snapshot again: the same records, in the same order. A mark older than its
    column's is ignored, an equal one sets what it set before, and the EWMA needs a
    strictly newer time, so the marks, their times and the EWMA end exactly where they
    were: replayed marks need no id filter."""
    marks = [e for e in evs if not isinstance(e, Fill)]
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    shard = ShardLogic(BATCH_CFG, reg)

    def apply(batch: list[object]) -> None:
        for _k, pack in router.route_batch(batch):
            shard.on_batch([pack])

    size = data.draw(st.integers(1, 20))
    for lo in range(0, len(marks), size):
        apply(marks[lo:lo + size])
    if not shard.state.key:
        return
    before = {name: getattr(shard.state, name).copy() for name in COLUMNS}
    again = marks[min(cut, len(marks)):]
    for lo in range(0, len(again), size + 1):  # cut into other batches this time
        apply(again[lo:lo + size + 1])
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(shard.state, name), before[name], err_msg=name)


VOL_CFG = ExposureConfig(
    instruments=InstrumentsConfig(instruments={
        f"P{k}": InstrumentSpec(kind="perp", base=f"A{k % 3}", quote="USD") for k in range(8)}),
    vol_min_samples=2,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_realized_vols_ranked_in_a_loop_equal_the_whole_array_ranking(data: st.DataObject) -> None:
    """Few held instruments take the loop (:meth:`ShardLogic._und_vols_small`); its vols,
    times, tie-breaks and order are those of the whole-array path, bit for bit."""
    reg = VOL_CFG.validate()
    logic = ShardLogic(VOL_CFG, reg)
    router = Router(reg, VOL_CFG)
    for _k, pack in router.route_batch([Trade(id=f"t{k}", venue="v", instrument=f"P{k}", ts=S,
                                              price=10.0, qty=1.0, side="buy")
                                        for k in range(8)]):
        logic.on_batch([pack])
    state = logic.state
    n = len(state.insts)
    times = st.sampled_from([-1, 0, 5, 7, 7 * S])
    state.feature_vol = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.3, 0.8]),
                                                    min_size=n, max_size=n)))
    state.feature_vol_ts = np.array(data.draw(st.lists(times, min_size=n, max_size=n)))
    state.ewma_n = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    state.ewma_var = np.array(data.draw(st.lists(
        st.floats(0.0, 1e-3, allow_nan=False), min_size=n, max_size=n)))
    state.ewma_ts = np.array(data.draw(st.lists(times, min_size=n, max_size=n)))
    held = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    whole = logic._und_vols_whole(np.array(held, dtype=np.int64))
    small = logic._und_vols_small(held)
    assert small == whole
    assert list(small) == list(whole)


def test_a_long_run_of_marks_is_applied_whole_array_like_one_by_one() -> None:
    """A batch of 200 trades (above the whole-array threshold) with an out-of-order and a
    repeated time re-marks and updates the EWMA exactly as record-at-a-time does, without
    falling back to one-by-one for the column whose marks go back in time."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    evs: list[object] = [fill("f", "a", "P0", "buy", 1.0, 10.0, 1)]
    evs += [Trade(id=f"t{k}", venue="v", instrument=f"P{k % 3}", ts=(k + 2) * S,
                  price=10.0 + (k % 7) * 0.1, qty=1.0, side="buy") for k in range(200)]
    evs.insert(50, Trade(id="late", venue="v", instrument="P1", ts=3 * S, price=50.0,
                         qty=1.0, side="buy"))
    evs.insert(80, Trade(id="same", venue="v", instrument="P0", ts=79 * S, price=12.0,
                         qty=1.0, side="buy"))
    packs = router.route_batch(evs)
    assert [it[0] for it in packs[0][1]] == ["fill", "marks"]
    one_by_one: list[str] = []

    class Counted(ShardLogic):
        def _mark_one(self, j: int, ev: Any, changed: dict[int, str]) -> None:
            one_by_one.append(ev.instrument)
            super()._mark_one(j, ev, changed)

    batched = Counted(BATCH_CFG, reg)
    batched.on_batch([packs[0][1]])
    assert one_by_one == []  # the column whose marks go back in time too
    single = ShardLogic(BATCH_CFG, reg)
    for ev in evs:
        for _k, item in router.route(ev):
            single.on_event(item)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(batched.state, name),
                                      getattr(single.state, name), err_msg=name)
    assert int(batched.state.ewma_n[0]) > 50




@pytest.mark.parametrize("whole_array", [False, True])
def test_marks_from_the_largest_float_to_the_smallest_give_a_finite_vol(
    whole_array: bool,
) -> None:
    """Trades at 1e308, then 5e-324, then 1e308 again (each a valid price): their ratios
    pass the float range (0 and inf). The EWMA takes the log of each ratio as the
    difference of the logs, so nothing raises and the realized vol is a finite number
    (huge: a volatility-scaled limit at its tightest), the same one by one and whole-array,
    and the part still encodes."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    logic = ShardLogic(BATCH_CFG, reg)
    evs: list[object] = [fill("f", "a", "P0", "buy", 1.0, 10.0, 1)]
    evs += [Trade(id=f"t{k}", venue="v", instrument="P0", ts=(k + 2) * S, price=px, qty=1.0,
                  side="buy") for k, px in enumerate([1e308, 5e-324, 1e308])]
    with patch.object(shard_marks, "_VECTOR_MIN", 1 if whole_array else 10**9):
        parts = [p for _k, pack in router.route_batch(evs) for p in logic.on_batch([pack])
                 if isinstance(p, Part)]
    vol = logic._und_vols_small([0])["A0"][0]
    assert np.isfinite(vol) and vol > 1e6
    assert parts[-1].vol_values == {"A0": vol}
    assert msgspec.json.decode(msgspec.json.encode(parts[-1]), type=Part) == parts[-1]


@pytest.mark.parametrize("whole_array", [False, True])
def test_a_quote_at_the_largest_float_marks_its_mid_not_infinity(whole_array: bool) -> None:
    """A quote of bid and ask 1.7e308 (each a valid price): bid + ask passes the float
    range, but their mid does not. The mark is the mid, and the EWMA's variance stays a
    number, one by one and whole-array."""
    reg = BATCH_CFG.validate()
    router = Router(reg, BATCH_CFG)
    logic = ShardLogic(BATCH_CFG, reg)
    evs: list[object] = [fill("f", "a", "P0", "buy", 1.0, 10.0, 1)]
    evs += [Quote(id=f"q{k}", venue="v", instrument="P0", ts=(k + 2) * S, bid=px,
                  bid_size=1.0, ask=px, ask_size=1.0) for k, px in enumerate([10.0, 1.7e308])]
    with patch.object(shard_marks, "_VECTOR_MIN", 1 if whole_array else 10**9):
        for _k, pack in router.route_batch(evs):
            logic.on_batch([pack])
    assert logic.state.mark[0] == 1.7e308
    assert np.isfinite(logic.state.ewma_var[0])
