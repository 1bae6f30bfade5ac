"""The cross-venue confirmation: a band warning confirmed by a trip on another venue of
the asset is critical (``operators/detection/venue_confirm.py``)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from riskguard.operators.detection.venue_confirm import (
    MODEL,
    MarketProgress,
    VenueConfirmConfig,
    VenueConfirmLogic,
)
from riskguard.schemas import AnomalySignal, Contribution, Scope, ScopeKind, Severity

from riskguard.errors import ConfigError


def band(key: str, phase: str, sev: str, move_bps: float, ts: int = 1,
         episode: int = 1) -> AnomalySignal:
    venue, _, inst = key.partition("/")
    return AnomalySignal(
        id=f"{key}:{ts}:{phase}", kind="price_move", phase=phase, key=key,
        scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue), ts=ts,
        episode_id=f"{key}#move{episode}", score=1.0, threshold=1.0,
        severity=Severity(sev), model="MoveBands", model_version="1",
        top_features=[Contribution(feature="move_1h", value=move_bps, zscore=move_bps / 100)])


def in_time(signals: list[AnomalySignal]) -> list[AnomalySignal | MarketProgress]:
    """The signals as a detector sends them: each time's signals, then every market's
    progress to that time."""
    markets = sorted({s.key for s in signals})
    out: list[AnomalySignal | MarketProgress] = []
    for i, sig in enumerate(signals):
        out.append(sig)
        if i + 1 == len(signals) or signals[i + 1].ts != sig.ts:
            out += [MarketProgress(ts=sig.ts, market=m) for m in markets]
    return out


def confirm(*items: AnomalySignal | MarketProgress,
            logic: VenueConfirmLogic | None = None) -> list[AnomalySignal]:
    logic = logic or VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0)
    return [s for item in items for s in logic.on_event(item)]


def run(*signals: AnomalySignal) -> list[tuple[str, str, str, int]]:
    return [(s.key, s.phase, s.severity.value, s.ts) for s in confirm(*in_time(list(signals)))]


def test_a_warning_in_the_same_fall_as_a_trip_elsewhere_turns_critical_until_it_ends() -> None:
    out = run(band("binance/BTCUSDT", "open", "warn", -250),
              band("kraken/XBTUSD", "open", "warn", -240),
              band("gemini/BTCUSD", "open", "critical", -720, ts=2),
              band("gemini/BTCUSD", "deescalate", "warn", -90, ts=5))
    assert out == [("binance/BTCUSDT", "escalate", "critical", 2),
                   ("kraken/XBTUSD", "escalate", "critical", 2),
                   ("binance/BTCUSDT", "deescalate", "warn", 5),
                   ("kraken/XBTUSD", "deescalate", "warn", 5)]


def test_a_warning_opening_after_the_trip_is_confirmed_at_once() -> None:
    assert run(band("gemini/BTCUSD", "open", "critical", -720),
               band("kraken/XBTUSD", "open", "warn", -300, ts=2)) == [
        ("kraken/XBTUSD", "escalate", "critical", 2)]


@pytest.mark.parametrize("other", [
    band("okx/BTC-USDT", "open", "warn", 180),  # a rise: not the same move
    band("okx/ETH-USDT", "open", "warn", -400),  # another asset
    band("okx/BTC-EUR", "open", "warn", -400),  # another quote unit
])
def test_only_the_same_asset_in_the_same_direction_is_confirmed(other: AnomalySignal) -> None:
    assert run(other, band("gemini/BTCUSD", "open", "critical", -720, ts=2)) == []


def test_a_confirmation_is_no_trip_and_ends_with_the_trip() -> None:
    """An escalation this rule made confirms no third market (only a market's own bands
    trip), and it eases when the trip ends."""
    logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0)

    def step(*sigs: AnomalySignal) -> list[AnomalySignal]:
        return confirm(*sigs, *(MarketProgress(ts=sigs[0].ts, market=m) for m in (
            "okx/BTC-USDT", "binance/BTCUSDT", "kraken/XBTUSD")), logic=logic)

    assert step(band("okx/BTC-USDT", "open", "critical", -900)) == []
    raised = step(band("binance/BTCUSDT", "open", "warn", -200, ts=2))
    assert [(s.key, s.model) for s in raised] == [("binance/BTCUSDT", MODEL)]
    # the guard feeds its own output back among the signals
    assert confirm(*raised, logic=logic) == []
    closed = step(band("okx/BTC-USDT", "close", "critical", -50, ts=3))
    assert [(s.key, s.phase) for s in closed] == [("binance/BTCUSDT", "deescalate")]
    # the binance warning alone (no trip) confirms nothing for a newcomer
    assert step(band("kraken/XBTUSD", "open", "warn", -300, ts=4)) == []


def test_an_own_trip_takes_over_and_a_new_episode_starts_afresh() -> None:
    logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0)

    def step(sig: AnomalySignal) -> list[AnomalySignal]:
        return confirm(sig, MarketProgress(ts=sig.ts, market="gemini/BTCUSD"),
                       MarketProgress(ts=sig.ts, market="kraken/XBTUSD"), logic=logic)

    step(band("gemini/BTCUSD", "open", "critical", -720))
    assert len(step(band("kraken/XBTUSD", "open", "warn", -300, ts=2))) == 1
    # kraken trips itself, then closes: no easing of an episode that ended
    assert step(band("kraken/XBTUSD", "escalate", "critical", -800, ts=3)) == []
    assert step(band("kraken/XBTUSD", "close", "critical", -10, ts=4)) == []
    again = step(band("kraken/XBTUSD", "open", "warn", -260, ts=5, episode=2))
    assert [(s.episode_id, s.phase) for s in again] == [("kraken/XBTUSD#move2", "escalate")]


def test_signals_name_the_trip_and_keep_the_episode() -> None:
    sigs = [band("kraken/XBTUSD", "open", "warn", -240),
            band("gemini/BTCUSD", "open", "critical", -720, ts=2)]
    [sig] = confirm(*in_time(sigs))
    assert sig.episode_id == "kraken/XBTUSD#move1" and sig.kind == "price_move"
    assert sig.top_features[0].feature == "tripped_on_gemini"
    assert sig.top_features[0].value == -720
    assert confirm(*in_time(sigs))[0].id == sig.id


def test_other_signals_and_unknown_markets_pass_by() -> None:
    import msgspec

    anomaly = msgspec.structs.replace(band("gemini/BTCUSD", "open", "critical", -720),
                                      kind="anomaly")
    assert run(band("kraken/XBTUSD", "open", "warn", -240), anomaly) == []


def test_a_snapshot_of_another_version_is_refused() -> None:
    from riskguard.operators.detection.venue_confirm import VenueConfirmState

    with pytest.raises(ConfigError, match=r"detector\.confirm\.state\.version"):
        VenueConfirmLogic(VenueConfirmConfig(), lambda: 0, VenueConfirmState(version=99))


def test_black_thursday_btc_turns_critical_on_its_onset_bar_on_every_venue() -> None:
    """The real hourly bars of three venues through Black Thursday, through the whole
    guard with the defaults: BTC on binance, gemini and kraken is critical and under
    reduce_only on the labelled onset bar, each on its own bands (a fast fall, deep
    into the day), so turned off the confirmation changes none of it."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import detection_real as dr
    from shared_data import incidents_dir, missing_reason

    reason = missing_reason(incidents_dir())
    if reason:
        pytest.skip(reason)
    import tempfile

    from riskguard.connectors.replay import ReplayFile
    from riskguard.dataflows.backtest import run_backtest

    path = incidents_dir() / "crossvenue_BTC_ETH_1h_binance-gemini-kraken_2020-03-01_2020-03-20.csv"
    onset_bar_close = 1_583_996_400 * 10**9  # 2020-03-12 07:00 UTC: the 06:00 bar closes
    btc = {"binance_spot/BTCUSDT", "gemini/BTCUSD", "kraken/XBTUSD"}
    for confirm in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            cfg, digest = dr.default_config(
                Path(tmp), {"detector": {"confirm": {"enabled": confirm}}})
            res = run_backtest(cfg, digest, files=[ReplayFile(path)])
        critical = {s.key for s in res.signals if isinstance(s, AnomalySignal)
                    and s.kind == "price_move" and s.ts == onset_bar_close
                    and s.severity is Severity.CRITICAL}
        assert critical >= btc, confirm
        reduced = {c.scope.label() for c in res.commands
                   if c.action.value == "reduce_only" and c.issued_at <= onset_bar_close}
        assert {f"instrument:{k}" for k in btc} <= reduced
        if not confirm:
            assert not any(isinstance(s, AnomalySignal) and s.model == MODEL
                           for s in res.signals)


def test_a_market_whose_first_batch_comes_within_the_join_time_is_not_late() -> None:
    """A group waits ``join_s`` after it first hears from a market: kraken's first batch,
    a worker behind gemini's, still joins in time and is judged in order."""
    now = [0]
    logic = VenueConfirmLogic(VenueConfirmConfig(join_s=10), clock=lambda: now[0])
    assert confirm(band("gemini/BTCUSD", "open", "critical", -720, ts=5),
                   MarketProgress(ts=9, market="gemini/BTCUSD"), logic=logic) == []
    now[0] = 3 * 10**9
    assert confirm(band("kraken/XBTUSD", "open", "warn", -300, ts=7),
                   MarketProgress(ts=9, market="kraken/XBTUSD"), logic=logic) == []
    now[0] = 10 * 10**9
    got = confirm(MarketProgress(ts=10, market="gemini/BTCUSD"),
                  MarketProgress(ts=10, market="kraken/XBTUSD"), logic=logic)
    assert [(s.key, s.phase, s.ts) for s in got] == [("kraken/XBTUSD", "escalate", 7)]
    assert logic.state.late == 0


def test_a_join_time_that_is_not_a_duration_is_refused() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"detector\.confirm\.join_s"):
            VenueConfirmConfig(join_s=bad).validate()


def _three_venues(hours: int = 330, seed: int = 5) -> list:
    """Hourly BTC bars of three venues moving together (0.4 % an hour); on the bar of hour
    300 gemini falls 12 % and the others 3 %: gemini trips, the others are only at
    warning (a fast fall, but not a deep one)."""
    import math
    import random

    from riskguard.schemas import Bar

    rng = random.Random(seed)
    markets = {"gemini": "BTCUSD", "kraken": "XBTUSD", "binance": "BTCUSDT"}
    crash = {"gemini": -0.12, "kraken": -0.03, "binance": -0.03}
    price = dict.fromkeys(markets, 100.0)
    out = []
    for h in range(hours):
        common = rng.gauss(0, 0.004)
        for venue, inst in markets.items():
            o = price[venue]
            c = price[venue] = o * math.exp(common + rng.gauss(0, 0.001)
                                            + (crash[venue] if h == 300 else 0.0))
            out.append(Bar(id=f"{venue}{h}", venue=venue, instrument=inst, ts=(h + 1) * HOUR,
                           start=h * HOUR, interval_ns=HOUR, open=o, high=max(o, c) * 1.001,
                           low=min(o, c) * 0.999, close=c, volume=10.0))
    return out


HOUR = 3600 * 10**9


def _signals(records: list, workers: int, batch: int, join_s: float = 0.0
             ) -> list[AnomalySignal]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, cluster_main
    from riskguard.operators.detection.ops import (
        DetectorConfig,
        FeatureConfig,
        detect_anomalies,
        extract_features,
    )

    out: list[AnomalySignal] = []
    flow = Dataflow("confirm_engine")
    inp = op.input("in", flow, TestingSource(records, batch_size=batch))
    feats = extract_features("features", inp, config=FeatureConfig(), clock=lambda: 2**62)
    det = detect_anomalies("detect", feats.oks, clock=time.time_ns, config=DetectorConfig(
        confirm=VenueConfirmConfig(join_s=join_s)))
    op.output("out", op.key_rm("unkey", det.oks), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def test_detect_anomalies_confirms_the_same_episodes_on_any_number_of_workers() -> None:
    """The real bytewax engine: kraken's warning on gemini's trip bar is confirmed there,
    and one, two and three workers at several batch sizes give the same signals, judged
    as they stream (no wait for markets to join: the first batches are warm-up bars) or
    after the default wait (a batch of 1,000 bars holds a market's first signals)."""
    records = _three_venues()
    one = _signals(records, 1, 30)
    confirmed = [(s.key, s.ts // HOUR, s.phase) for s in one if s.model == MODEL]
    assert ("kraken/XBTUSD", 301, "escalate") in confirmed
    want = sorted(s.id for s in one)
    for workers, batch in ((1, 1), (2, 1), (2, 30), (3, 7), (3, 90)):
        assert sorted(s.id for s in _signals(records, workers, batch)) == want, (workers, batch)
    joining = VenueConfirmConfig().join_s
    for workers in (2, 3):
        got = _signals(records, workers, 1000, join_s=joining)
        assert sorted(s.id for s in got) == want, workers


def test_signals_out_of_step_across_markets_are_judged_as_in_time() -> None:
    """Once every market has joined (its first progress, from its warm-up bars), each
    market's signals and progress in its own order, the markets interleaved at random
    (as workers deliver them), in two batches cut anywhere: the same output as the
    markets in step."""
    import random

    sigs = [band("binance/BTCUSDT", "open", "warn", -250, ts=2),
            band("kraken/XBTUSD", "open", "warn", -240, ts=2),
            band("gemini/BTCUSD", "open", "critical", -720, ts=3),
            band("binance/BTCUSDT", "escalate", "critical", -800, ts=4),
            band("gemini/BTCUSD", "deescalate", "warn", -90, ts=5),
            band("kraken/XBTUSD", "close", "warn", -10, ts=6),
            band("binance/BTCUSDT", "close", "critical", -10, ts=6),
            band("gemini/BTCUSD", "close", "warn", -10, ts=7)]
    in_step = confirm(*in_time(sigs))
    assert [(s.key, s.phase, s.ts) for s in in_step] == [
        ("binance/BTCUSDT", "escalate", 3), ("kraken/XBTUSD", "escalate", 3),
        ("gemini/BTCUSD", "escalate", 5), ("gemini/BTCUSD", "deescalate", 6)]
    want = [s.id for s in in_step]
    per_market: dict[str, list] = {}
    for item in in_time(sigs):
        key = item.key if isinstance(item, AnomalySignal) else item.market
        per_market.setdefault(key, []).append(item)
    rng = random.Random(7)
    for _ in range(200):
        queues = [list(q) for q in per_market.values()]
        mixed = []
        while queues:
            q = rng.choice(queues)
            mixed.append(q.pop(0))
            queues = [q for q in queues if q]
        logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0)
        logic.on_batch([MarketProgress(ts=1, market=m) for m in per_market])
        cut = rng.randrange(1, len(mixed))
        got = logic.on_batch(mixed[:cut]) + logic.on_batch(mixed[cut:]) + logic.on_eof()
        assert [s.id for s in got] == want


def test_a_market_silent_past_the_idle_time_stops_holding_its_group() -> None:
    from riskguard.operators.core.clock import TICK_IDLE_NS

    now = [0]
    logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: now[0])
    assert confirm(MarketProgress(ts=1, market="binance/BTCUSDT"),
                   MarketProgress(ts=1, market="kraken/XBTUSD"), logic=logic) == []
    # kraken goes quiet; gemini trips while binance warns
    confirm(band("binance/BTCUSDT", "open", "warn", -250, ts=5),
            band("gemini/BTCUSD", "open", "critical", -720, ts=5), logic=logic)
    assert confirm(MarketProgress(ts=5, market="binance/BTCUSDT"),
                   MarketProgress(ts=5, market="gemini/BTCUSD"), logic=logic) == []
    now[0] = TICK_IDLE_NS  # kraken has been silent for the idle time
    got = confirm(MarketProgress(ts=6, market="binance/BTCUSDT"), logic=logic)
    assert [(s.key, s.phase) for s in got] == [("binance/BTCUSDT", "escalate")]


def test_a_signal_its_group_has_judged_past_is_taken_in_and_counted() -> None:
    told: list[tuple[str, int]] = []
    logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0,
                              on_reorder=lambda kind, n: told.append((kind, n)))
    confirm(band("gemini/BTCUSD", "open", "critical", -720, ts=5),
            MarketProgress(ts=9, market="gemini/BTCUSD"), logic=logic)
    # kraken joins late: its warning at 7 is behind the judged time 9
    got = confirm(band("kraken/XBTUSD", "open", "warn", -300, ts=7), logic=logic)
    assert [(s.key, s.phase) for s in got] == [("kraken/XBTUSD", "escalate")]
    assert told == [("late", 1)] and logic.state.late == 1


def test_resumed_before_a_market_first_progressed_it_confirms_as_unbroken() -> None:
    """Markets keep their names across a restart: one that had not progressed before the
    snapshot is no replacement for one that had, so the resumed group's time waits for
    both as the unbroken one's does (its escalation at 5, not early at 3)."""
    a, b = "binance/BTCUSDT", "kraken/XBTUSD"
    events = [MarketProgress(ts=1, market=a), band(b, "open", "critical", -720, ts=5),
              MarketProgress(ts=5, market=b), band(a, "open", "warn", -250, ts=3),
              MarketProgress(ts=5, market=a)]

    def run(evs: list[Any], state: Any = None) -> tuple[list[Any], Any]:
        logic = VenueConfirmLogic(VenueConfirmConfig(join_s=0), clock=lambda: 0, state=state)
        return [o for e in evs for o in logic.on_event(e)], logic.snapshot()

    whole, _ = run(events)
    assert [(s.key, s.phase, s.ts) for s in whole] == [(a, "escalate", 5)]
    for k in range(len(events) + 1):
        first, snap = run(events[:k])
        rest, _ = run(events[k:], pickle.loads(pickle.dumps(snap)))
        assert [(s.id, s.ts) for s in first + rest] == [(s.id, s.ts) for s in whole], k


@pytest.mark.parametrize("abort_at", [450, 901, 903])
def test_a_run_killed_and_resumed_confirms_what_one_unbroken_run_does(
        tmp_path: Path, abort_at: int) -> None:
    """Killed in the calm, inside the crash bar (one venue's bar of it read) or just after
    it, and resumed from bytewax recovery: the same signals as an unbroken run (the
    aborted epoch's output may come twice, so distinct ones are compared)."""
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators.detection.ops import (
        DetectorConfig,
        FeatureConfig,
        detect_anomalies,
        extract_features,
    )

    records = _three_venues()
    unbroken = _signals(records, 1, 1)
    assert any(s.model == MODEL for s in unbroken)
    want = {s.id for s in unbroken}
    items = [*records[:abort_at], TestingSource.ABORT(), *records[abort_at:]]
    got: list[AnomalySignal] = []

    def flow() -> Dataflow:
        f = Dataflow("confirm_resume")
        inp = op.input("in", f, TestingSource(items, batch_size=1))
        feats = extract_features("features", inp, config=FeatureConfig(), clock=lambda: 2**62)
        det = detect_anomalies("detect", feats.oks, clock=time.time_ns, config=DetectorConfig(
            confirm=VenueConfirmConfig(join_s=0)))
        op.output("out", op.key_rm("unkey", det.oks), TestingSink(got))
        return f

    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    run_main(flow(), epoch_interval=timedelta(seconds=0), recovery_config=recovery)
    assert len({s.id for s in got}) < len(want)
    run_main(flow(), epoch_interval=timedelta(seconds=0), recovery_config=recovery)
    assert {s.id for s in got} == want


def test_a_trip_on_the_same_venue_confirms_nothing() -> None:
    """Another quote of the same venue tripping is no other venue: the warning stays a
    warning until a trip on another venue confirms it."""
    assert run(band("binance/BTCUSDC", "open", "warn", -250),
               band("binance/BTCUSDT", "open", "critical", -720, ts=2)) == []
    out = run(band("binance/BTCUSDC", "open", "warn", -250),
              band("binance/BTCUSDT", "open", "critical", -720, ts=2),
              band("okx/BTC-USDT", "open", "critical", -700, ts=3))
    assert out == [("binance/BTCUSDC", "escalate", "critical", 3)]
