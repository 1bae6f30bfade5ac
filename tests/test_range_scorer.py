"""RangeScorer: new extremes measured in recent ranges, alone and behind the detector.

The series are deterministic: flat runs, or a 7-point sawtooth (``_wave``) whose
extremes recur every period, so a score above 0 always means a real departure
and never a fresh random record.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable

import pytest
from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
from riskguard.operators.detection.range_scorer import (
    FLAT_DEPARTURE,
    STATE_VERSION,
    RangeScorer,
    RangeState,
    envelope_growth,
    excess,
)
from riskguard.schemas import AnomalySignal, FeatureVector, Scope, ScopeKind

from riskguard.errors import SnapshotError
from tests.contract import (
    Case,
    check_input_not_mutated,
    check_resume_equals_uninterrupted,
    check_snapshot_independent,
    check_snapshot_is_versioned_data,
)

THRESHOLD = RangeScorer().threshold  # 0.01 of the recent range


def _wave(i: int) -> float:
    """A sawtooth in [0, 1] with period 7: every extreme recurs."""
    return (i % 7) / 6.0


def _shifted(level: float, scorer: RangeScorer, before: int, after: int) -> list[float]:
    """Feed ``before`` points of the wave, then ``after`` points of it raised by
    ``level``; return the scores of the raised points."""
    for i in range(before):
        scorer.update(_wave(i))
    scores = [scorer.update(level + _wave(before + j)) for j in range(after)]
    assert None not in scores
    return [s for s in scores if s is not None]


# -- the scorer alone ------------------------------------------------------

def test_two_spikes_after_a_flat_series_both_score_flat_departure_on_the_value_channel() -> None:
    """A flat history has no range; a departure from it is never missed, and the
    first spike, learned clipped, does not hide the second one."""
    scorer = RangeScorer()
    flat = [scorer.update(5.0) for _ in range(200)]
    assert flat[-1] == 0.0
    first = scorer.update(20.0)
    first_reason = scorer.reason
    second = scorer.update(20.0)
    second_reason = scorer.reason
    assert first is not None and first >= FLAT_DEPARTURE
    assert second is not None and second >= FLAT_DEPARTURE
    assert first_reason == ("value", 20.0, 5.0, 5.0, FLAT_DEPARTURE)
    assert second_reason == ("value", 20.0, 5.0, 5.0, FLAT_DEPARTURE)


def test_a_spike_some_points_after_another_is_flagged_too() -> None:
    """The envelope a spike was clipped into is still flat five points later."""
    scorer = RangeScorer()
    for _ in range(200):
        scorer.update(5.0)
    assert scorer.update(20.0) == FLAT_DEPARTURE
    for _ in range(5):
        scorer.update(5.0)
    assert scorer.update(20.0) == FLAT_DEPARTURE
    assert scorer.reason is not None and scorer.reason[0] == "value"


def test_update_returns_none_for_the_first_block_points_then_scores() -> None:
    """Warm-up is explicit: no score, not a 0 that looks normal."""
    scorer = RangeScorer(block=16, blocks=4)
    warm = [scorer.update(_wave(i)) for i in range(16)]
    assert warm == [None] * 16
    assert scorer.warming_up
    assert scorer.update(_wave(16)) == 0.0
    assert not scorer.warming_up


def test_a_value_inside_the_recent_range_scores_zero() -> None:
    """Nothing beyond the envelope, no score and no reason."""
    scorer = RangeScorer()
    for i in range(300):
        scorer.update(10.0 * _wave(i))
    assert scorer.update(5.0) == 0.0
    assert scorer.reason is None


@pytest.mark.parametrize(
    ("v", "lo", "hi", "expected"),
    [
        (12.0, 0.0, 10.0, 0.2),  # above: in ranges
        (-5.0, 0.0, 10.0, 0.5),  # below, symmetric
        (30.0, 0.0, 10.0, 2.0),
        (5.0, 0.0, 10.0, 0.0),  # inside
        (10.0, 0.0, 10.0, 0.0),  # on the edge
        (5.0, 5.0, 5.0, 0.0),  # equal to a flat envelope
        (5.0 + 1e-13, 5.0, 5.0, 0.0),  # float noise off a flat envelope is no departure
        (5.1, 5.0, 5.0, FLAT_DEPARTURE),
        (4.9, 5.0, 5.0, FLAT_DEPARTURE),
    ],
)
def test_excess_known_answers(v: float, lo: float, hi: float, expected: float) -> None:
    """``excess`` is the distance beyond ``[lo, hi]`` in ranges; off a flat one, the
    fixed ``FLAT_DEPARTURE``."""
    assert excess(v, lo, hi) == pytest.approx(expected)


def test_a_shift_of_two_ranges_stays_anomalous_for_over_a_block() -> None:
    """Anomalous values are learned clipped, so a lasting shift is not absorbed by its
    first point: with the defaults it stays over the threshold for more than one
    128-point block; learned unclipped (``accept=0``) it is gone within 15 points."""
    protected = _shifted(3.0, RangeScorer(), before=1000, after=300)
    assert protected[0] == pytest.approx(3.0)  # (3 - 1) / (1 - 0) ranges, plus the mean
    assert all(s >= THRESHOLD for s in protected[:150])
    unprotected = _shifted(3.0, RangeScorer(accept=0), before=1000, after=300)
    assert sum(s >= THRESHOLD for s in unprotected) < 15
    assert max(unprotected[15:]) < THRESHOLD


def test_after_accept_anomalous_points_the_new_level_is_learned() -> None:
    """Past ``accept`` consecutive anomalous points the value is learned as it is (a
    new regime): the scores drop below the threshold at once and stay there, while
    the default ``accept`` (half the history) keeps flagging the shift."""
    accept = 10
    quick = _shifted(21.0, RangeScorer(block=16, blocks=8, accept=accept), before=300,
                     after=200)
    assert all(s >= THRESHOLD for s in quick[: accept + 1])
    assert max(quick[accept + 2:]) < THRESHOLD
    slow = _shifted(21.0, RangeScorer(block=16, blocks=8), before=300, after=200)
    assert RangeScorer(block=16, blocks=8).accept == 64
    assert all(s >= THRESHOLD for s in slow[:64])


def _spike_pairs(i: int) -> float:
    """Two spikes six points apart every 100 points, the series' first value one of them."""
    return 20.0 if i % 100 in (0, 6) else 0.0


def test_spikes_closer_than_ever_are_flagged_when_the_series_starts_on_one() -> None:
    """The means are defined once their windows are full: a mean of the first value
    alone (a spike) must not teach the 3-point mean that a spike's full height is
    usual, or two spikes side by side, twice as dense as ever, go unseen."""
    scorer = RangeScorer()
    calm = [scorer.update(_spike_pairs(i)) for i in range(2_000)]
    assert max(s or 0.0 for s in calm) < THRESHOLD
    burst = [scorer.update(v) for v in (20.0, 0.0, 0.0, 0.0, 0.0, 20.0, 20.0)]
    assert max(s or 0.0 for s in burst[:-1]) < THRESHOLD  # as usual, until the second
    # (0 + 20 + 20) / 3 against the usual highest 20 / 3: one range beyond
    assert burst[-1] == pytest.approx(1.0)
    assert scorer.reason is not None and scorer.reason[0] == "mean3"


def test_a_spike_once_over_is_part_of_the_range_and_only_a_higher_one_scores() -> None:
    """A short excursion, once over, is learned as it was: on a flat series, whose
    envelope clipped learning can never widen, the same spike 300 points later is
    within the range (it was flagged every time before), and a spike twice as high
    is one range beyond it (divided by the growth an envelope of spikes in a few
    blocks out of eight is expected to have ahead of it)."""
    scorer = RangeScorer()
    for _ in range(500):
        scorer.update(0.0)
    assert scorer.update(100.0) == FLAT_DEPARTURE
    for _ in range(300):
        scorer.update(0.0)
    assert scorer.update(100.0) == 0.0
    for _ in range(300):
        scorer.update(0.0)
    growth = envelope_growth(scorer.s.blocks[0], 48)
    assert growth > 2.0
    assert scorer.update(200.0) == pytest.approx(1.0 / growth)
    assert scorer.reason is not None and scorer.reason[0] == "value"


def test_a_move_longer_than_a_block_is_not_learned_as_its_overshoot() -> None:
    """A run longer than a block is a move, which the clipped envelope follows: the
    overshoot at its step is not learned as the new level's range, so a later spike
    on the new level, below the overshoot, still scores."""
    scorer = RangeScorer(block=16, blocks=48)  # the overshoot stays in the history
    for i in range(300):
        scorer.update(_wave(i))
    scorer.update(10.0)  # the overshoot, then a level three ranges up
    moved = [scorer.update(3.0 + _wave(i)) for i in range(200)]
    assert sum((s or 0.0) >= THRESHOLD for s in moved) > 16  # a run longer than a block
    assert max(s or 0.0 for s in moved[-50:]) < THRESHOLD  # followed by now
    spike = scorer.update(6.0)
    assert spike is not None and spike >= 0.2
    assert scorer.reason is not None and scorer.reason[0] == "value"
    assert scorer.reason[3] == pytest.approx(4.0)  # the level's top (3 + 1), not the 10


def test_a_move_off_a_flat_envelope_is_learned_after_a_block() -> None:
    """A flat envelope has no range to widen by, so clipped learning alone would hold
    it flat and flag a square wave's every high phase until ``accept`` (half the
    history): the first high phase is flagged for a block, then learned as it is,
    and the next high phases are within the range."""
    scorer = RangeScorer()
    for _ in range(300):
        scorer.update(20.0)

    def phase(level: float) -> list[float]:
        return [s or 0.0 for s in (scorer.update(level) for _ in range(144))]

    first = phase(80.0)
    assert first[:128] == [FLAT_DEPARTURE] * 128
    assert max(first[129:]) < THRESHOLD
    for _ in range(5):
        assert max(phase(20.0)) < THRESHOLD
        assert max(phase(80.0)) < THRESHOLD


def _sine(i: int) -> float:
    """A wave of amplitude 5 and period 160 points: ten 16-point blocks."""
    return 5.0 * math.sin(2.0 * math.pi * i / 160.0)


def test_a_young_envelope_that_grew_block_by_block_discounts_a_new_extreme() -> None:
    """Until the envelope spans its full history, a series whose range grew from one
    block to all of them (a wave slower than a block) is expected to widen it further:
    a new extreme's excess is divided by that growth. A series that keeps to one band
    in every block (the sawtooth) is measured in its range as it is, and once the
    history is full neither is discounted."""
    band = RangeScorer(block=16, blocks=48)
    for i in range(160):
        band.update(_wave(i))
    assert band.update(1.1) == pytest.approx(0.1)  # a tenth of [0, 1] above it
    young = RangeScorer(block=16, blocks=48)
    for i in range(160):  # one period: ten blocks, each a part of the wave
        young.update(_sine(i))
    growth = envelope_growth(young.s.blocks[0], 48)
    assert growth == pytest.approx(3.17, abs=0.01)
    assert young.update(6.0) == pytest.approx(0.1 / growth)  # a tenth of [-5, 5] above
    assert young.reason is not None and young.reason[:4] == ("value", 6.0, -5.0, 5.0)
    full = RangeScorer(block=16, blocks=48)
    for i in range(800):  # the full 48 blocks of history
        full.update(_sine(i))
    assert envelope_growth(full.s.blocks[0], 48) == 1.0
    assert full.update(6.0) == pytest.approx(0.1)


# -- the stateful contract -------------------------------------------------

class _Logic:
    """``on_event`` adapter: the contract suite drives logic classes by events."""

    def __init__(self, state: RangeState | None) -> None:
        self.scorer = RangeScorer(block=16, blocks=4, accept=20, state=state)

    def on_event(self, x: float) -> list[float | None]:
        return [self.scorer.update(x)]

    def snapshot(self) -> RangeState:
        return self.scorer.snapshot()


# warm-up, the wave, a spike, a shift through acceptance, and a flat (frozen) stretch
EVENTS = ([_wave(i) for i in range(60)] + [3.0] + [_wave(i) for i in range(30)]
          + [5.0 + _wave(i) for i in range(60)] + [5.0] * 80)
CASE = Case("range-scorer", _Logic, EVENTS, splits=(10, 16, 17, 61, 62, 100, 200))


def test_the_contract_events_exercise_warm_up_anomalies_and_acceptance() -> None:
    """The case is worth running: it warms up, flags a spike, a shift and a frozen
    stretch, and accepts the last two as new levels."""
    outs, _ = _run(EVENTS)
    assert outs[:16] == [None] * 16
    assert outs[60] is not None and outs[60] >= THRESHOLD  # the spike
    shift = [o for o in outs[91:151] if o is not None]
    assert all(o >= THRESHOLD for o in shift[:21])  # the shift, until accepted
    assert max(shift[21:45]) < THRESHOLD  # accepted (later the jump leaves the window)
    frozen = [o for o in outs[151:] if o is not None]
    assert max(frozen) >= THRESHOLD  # a series gone still is flagged (stillness)...
    assert frozen[-1] < THRESHOLD  # ...until it has lasted past ``accept``


def _run(events: list[float]) -> tuple[list[float | None], RangeState]:
    logic = _Logic(None)
    outs = [o for e in events for o in logic.on_event(e)]
    return outs, logic.snapshot()


@pytest.mark.parametrize("check", [check_snapshot_is_versioned_data, check_snapshot_independent,
                                   check_resume_equals_uninterrupted,
                                   check_input_not_mutated],
                         ids=lambda c: c.__name__)
def test_range_scorer_meets_the_stateful_contract(check: Callable[[Case], None]) -> None:
    """Snapshot pickles, is independent of later updates, and resuming from it at any
    split point gives the uninterrupted run's scores."""
    check(CASE)


def test_a_restored_snapshot_round_trips_through_pickle_with_equal_state() -> None:
    """A pickled snapshot restores the same state, and later updates agree."""
    outs, snap = _run(EVENTS[:120])
    again = pickle.loads(pickle.dumps(snap))
    assert again == snap
    a = RangeScorer(block=16, blocks=4, accept=20, state=again)
    b = RangeScorer(block=16, blocks=4, accept=20, state=pickle.loads(pickle.dumps(snap)))
    rest = EVENTS[120:]
    assert [a.update(x) for x in rest] == [b.update(x) for x in rest]
    assert outs  # the first part did run


# -- through the detector --------------------------------------------------

SCOPE = Scope(kind=ScopeKind.VENUE, value="okx", venue="okx")


def _latency(i: int, x: float) -> FeatureVector:
    return FeatureVector(key="okx", scope=SCOPE, ts=i * 10**9, values={"latency_ms": x},
                         evidence_ids=[f"l{i}"])


def _flat(_i: int) -> float:
    return 20.0


def _sawtooth(i: int) -> float:
    """Seven levels 0.5 apart around 20: standard deviation exactly 1."""
    return 20.0 + 0.5 * (i % 7 - 3)


@pytest.mark.parametrize(
    ("config", "n"),
    [
        (DetectorConfig(warmup_events=150, warmup_ns=0), 200),
        (DetectorConfig(), 400),  # the real defaults: 300 events and 300 s of warm-up
    ],
    ids=["short-warmup", "defaults"],
)
@pytest.mark.parametrize("series", [_flat, _sawtooth], ids=["flat", "sd1"])
def test_one_feature_detector_flags_spikes_after_a_flat_series(
        config: DetectorConfig, n: int, series: Callable[[int], float]) -> None:
    """Regression: the single-feature path went blind on a flat series (a Gaussian at
    zero variance saturates). With ``model="auto"`` one feature gets RangeScorer,
    and two spikes 15 standard deviations up open one critical, non-warming episode."""
    logic = DetectorLogic(config, clock=lambda: 0)
    calm = [s for i in range(n) for s in logic.on_event(_latency(i, series(i)))]
    assert calm == []
    assert logic.kind == "range"
    spikes = [s for j in range(2) for s in logic.on_event(_latency(n + j, 35.0))]
    assert len(spikes) == 1
    sig = spikes[0]
    assert isinstance(sig, AnomalySignal)
    assert (sig.kind, sig.phase, sig.warming_up) == ("anomaly", "open", False)
    assert sig.model == "RangeScorer"
    assert sig.severity.value == "critical"
    assert sig.threshold == config.range_threshold
    assert sig.score >= config.range_threshold
    assert sig.episode_id == "okx#1"
    assert sig.evidence_ids == [f"l{n}"]
    assert [(c.feature, c.value) for c in sig.top_features] == [("latency_ms", 35.0)]


def test_a_series_gone_still_inside_its_usual_range_is_flagged() -> None:
    """The first value has no step: it must not pass for the stillest stretch ever
    seen (it did once, as a step of 0, and then no freeze was flagged for 48 blocks)."""
    rng = random.Random(7)
    scorer = RangeScorer()
    for i in range(2_000):
        scorer.update(40.0 + 10.0 * math.sin(i / 20.0) + rng.gauss(0.0, 1.0))
    frozen = [scorer.update(40.0) for _ in range(100)]
    assert max(s or 0.0 for s in frozen) >= 0.01
    hits = [i for i, s in enumerate(frozen) if s]
    assert hits and hits[0] < 60  # within about one stillness window (48 steps)


def test_a_state_of_another_version_is_refused() -> None:
    """A scorer resumes only a state of its own version: an older one is refused and
    never read as this one."""
    first = RangeScorer()
    for i in range(300):
        first.update(40.0 + math.sin(i / 20.0))
    old = first.snapshot()
    old.version = STATE_VERSION - 1
    with pytest.raises(SnapshotError, match="version 2"):
        RangeScorer(state=old)


# -- values too large to learn -----------------------------------------------

def test_values_too_large_to_sum_are_scored_as_far_out_and_never_learned() -> None:
    """Runs of +-1.5e308 (a funding rate of 1.5e304 in bps, valid on the wire) overflowed
    the running sums and then raised in their exact re-sum; such a value is scored on
    the value channel, far past the envelope, and leaves the scorer as it was."""
    scorer, twin = RangeScorer(), RangeScorer()
    for i in range(300):
        scorer.update(_wave(i))
        twin.update(_wave(i))
    before = scorer.snapshot()
    scores = [scorer.update(-1.5e308 if k % 3 == 0 else 1.5e308) for k in range(300)]
    assert all(s is not None and math.isfinite(s) and s > 1e307 for s in scores)
    assert scorer.reason is not None and scorer.reason[0] == "value"
    assert scorer.snapshot() == before
    assert [scorer.update(_wave(i)) for i in range(300, 700)] == \
        [twin.update(_wave(i)) for i in range(300, 700)]


def test_a_value_too_large_to_learn_is_warming_up_before_the_first_block() -> None:
    scorer = RangeScorer()
    assert scorer.update(1e200) is None
    assert scorer.snapshot() == RangeState()


def test_one_feature_detector_flags_a_value_too_large_to_learn_and_resumes_alike() -> None:
    """Behind the detector (one feature: the range model), the extremes open a critical
    episode with a finite score; a key snapshotted half-way says the same."""
    config = DetectorConfig()
    points = [(i, _sawtooth(i)) for i in range(400)]
    points += [(400 + k, -1.5e308 if k % 3 == 0 else 1.5e308) for k in range(200)]
    points += [(600 + i, _sawtooth(i)) for i in range(300)]

    def run(cut: int | None) -> list[AnomalySignal]:
        logic = DetectorLogic(config, clock=lambda: 0)
        out = []
        for i, x in points:
            if i == cut:
                logic = DetectorLogic(config, clock=lambda: 0,
                                      state=pickle.loads(pickle.dumps(logic.snapshot())))
            out += logic.on_event(_latency(i, x))
        return out

    sigs = run(None)
    assert [(s.phase, s.severity.value) for s in sigs] == [("open", "critical"),
                                                           ("close", "critical")]
    assert math.isfinite(sigs[0].score) and sigs[0].ts == 400 * 10**9
    assert run(450) == sigs
