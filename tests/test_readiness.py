"""What a run says of its detectors' warm-up agrees with the detectors themselves: the
learned detector acts from the vector after the ones `vectors_to_warm` counts, not
before; a watch read at a moment is the watch of the run up to that moment; the summary
calls a part live for the whole run only if it was from each key's first event."""

from __future__ import annotations

import random

import msgspec
import pytest
from riskguard.dataflows.readiness import (
    PARTS,
    DetectorWatch,
    KeyProgress,
    Part,
    Readiness,
    key_parts,
    summary_lines,
    vectors_to_warm,
)
from riskguard.operators.detection.detector import DetectorLogic
from riskguard.operators.detection.models import DetectorConfig
from riskguard.schemas import FeatureVector, Scope, ScopeKind

NS = 1_000_000_000
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance")


def _vector(i: int, n_features: int, rng: random.Random, *, out: bool = False,
            price: float | None = None) -> FeatureVector:
    values = {f"f{j}": (60.0 if out else rng.gauss(0.0, 1.0)) for j in range(n_features)}
    return FeatureVector(key="binance/BTCUSDT", scope=SCOPE, ts=(i + 1) * NS, values=values,
                         evidence_ids=[f"r{i}"], price=price, low=price, high=price)


def _acting_signals(config: DetectorConfig, calm: int, n_features: int) -> list:
    """The signals that act (not warming up) of an outlier after ``calm`` calm vectors."""
    logic = DetectorLogic(config, clock=lambda: 0)
    rng = random.Random(7)
    for i in range(calm):
        logic.on_event(_vector(i, n_features, rng))
    return [s for s in logic.on_event(_vector(calm, n_features, rng, out=True))
            if not s.warming_up]


@pytest.mark.parametrize("n_features", [1, 14])
def test_the_learned_detector_acts_from_the_vector_after_the_ones_it_must_learn(
        n_features: int) -> None:
    """An outlier right after `vectors_to_warm` calm vectors opens an episode that acts;
    one a vector earlier does not (the model, the threshold or the count is not ready)."""
    config = DetectorConfig(warmup_ns=0)
    needed = vectors_to_warm(config, n_features)
    assert needed >= config.warmup_events - 1
    assert _acting_signals(config, needed, n_features)
    assert _acting_signals(config, needed - 1, n_features) == []


def test_the_time_a_key_needs_counts_too() -> None:
    """With the vectors learned but less event time than `warmup_ns`, the watch says the
    learned detector is not live, and why."""

    config = DetectorConfig(warmup_ns=3600 * NS)
    watch = DetectorWatch(config)
    rng = random.Random(1)
    for i in range(500):
        watch.vector(_vector(i, 14, rng, price=100.0))
    cfg = _guard_config(config)
    learned = key_parts(watch, "binance/BTCUSDT", cfg)[0]
    assert learned.live_from is None
    assert learned.why == "too little time: 500 vectors over 8 min 19 s"


def test_a_watch_read_at_a_moment_is_the_watch_of_the_run_up_to_it() -> None:
    """`DetectorWatch.at(ts)` (kept times) gives the parts a watch fed only up to `ts`
    gives."""
    config = DetectorConfig(warmup_ns=0)
    rng = random.Random(3)
    vectors = [_vector(i, 14, rng, price=100.0 + (i % 5)) for i in range(700)]
    whole = DetectorWatch(config, keep_times=True)
    cfg = _guard_config(config)
    for fv in vectors:
        whole.vector(fv)
    for cut in (20, 350, 450):
        part = DetectorWatch(config)
        for fv in vectors[:cut]:
            part.vector(fv)
        at = whole.at(vectors[cut - 1].ts)
        assert key_parts(at, "binance/BTCUSDT", cfg) == key_parts(part, "binance/BTCUSDT", cfg)


def test_a_key_too_short_to_warm_is_not_warm_at_any_moment_of_it() -> None:
    """200 vectors, never near the 400 the learned detector needs: read at any moment, the
    watch says it is not live, as the whole run's does."""
    config = DetectorConfig(warmup_ns=0)
    rng = random.Random(5)
    vectors = [_vector(i, 14, rng, price=100.0) for i in range(200)]
    whole = DetectorWatch(config, keep_times=True)
    for fv in vectors:
        whole.vector(fv)
    cfg = _guard_config(config)
    assert key_parts(whole, "binance/BTCUSDT", cfg)[0].live_from is None
    for cut in (1, 150, 200):
        assert key_parts(whole.at(vectors[cut - 1].ts), "binance/BTCUSDT", cfg)[0].live_from \
            is None


def _guard_config(detector: DetectorConfig):
    from riskguard.dataflows.guard import GuardConfig
    from riskguard.dataflows.guard.config import KeysConfig

    cfg = GuardConfig(keys=KeysConfig(signing_key="k", trust_file="t", roots_file="r"))
    return msgspec.structs.replace(cfg, detector=detector)


def test_only_a_part_live_from_each_keys_first_event_is_live_for_the_whole_run() -> None:
    """Two keys from t0: confirmation live on both from t0 is live for the whole run; the
    static levels, live 60 s in on one key and 90 s on the other, and the learned bands,
    live from t0 on one key but 30 s in on the other, are live for part of it, each with
    from when, in the order they became live."""
    t0 = 1_704_067_200 * NS
    watch = DetectorWatch(DetectorConfig())
    parts = {}
    for key, static_s, bands_s in (("binance/BTCUSDT", 60, 0), ("okx/BTC-USDT", 90, 30)):
        watch.keys[key] = KeyProgress(key=key, first_ts=t0, last_ts=t0 + 600 * NS)
        parts[key] = [Part(PARTS[1], t0 + static_s * NS, "the price one horizon back"),
                      Part(PARTS[2], t0 + bands_s * NS, "31 prices"),
                      Part(PARTS[5], t0, "the asset on a second venue")]
    lines = summary_lines(Readiness(parts, watch))
    assert lines[1] == "  live for the whole run: cross-venue confirmation"
    assert lines[2] == ("  live for part of it: move bands, learned bands (every key, from 0 s "
                        "to 30 s in); move bands, static levels (every key, from 1 min to "
                        "1 min 30 s in)")


def _depth(t_s: int, bid_frozen_since_s: int | None) -> FeatureVector:
    """A depth feed's vector: the ask changes with every snapshot; the bid has not since
    ``bid_frozen_since_s`` (None: it changes too)."""
    bid = 0.0 if bid_frozen_since_s is None else float(t_s - bid_frozen_since_s)
    return FeatureVector(key="binance/BTCUSDT", scope=SCOPE, ts=t_s * NS,
                         values={"bid_stale_s": bid, "ask_stale_s": 0.0},
                         evidence_ids=[f"d{t_s}"])


@pytest.mark.parametrize("every_s", [30, 60])
def test_the_stale_side_check_is_live_when_the_detector_could_first_open_it(
        every_s: int) -> None:
    """A depth feed whose bid froze at its first snapshot: the watch says the stale
    book-side check is live from the moment the detector opens its episode (300 s at a
    snapshot every 30 s; ten snapshots, 600 s, at one a minute)."""
    config = DetectorConfig(warmup_ns=0)
    logic, watch = DetectorLogic(config, clock=lambda: 0), DetectorWatch(config)
    opened = None
    for t in range(0, 1200, every_s):
        fv = _depth(t, 0)
        watch.vector(fv)
        for s in logic.on_event(fv):
            if s.kind == "stale_feed" and s.phase == "open" and opened is None:
                opened = s.ts
    (stale,) = [p for p in key_parts(watch, "binance/BTCUSDT", _guard_config(config))
                if p.name == "stale book sides"]
    assert opened == stale.live_from == max(300, 10 * every_s) * NS
    off = msgspec.structs.replace(config, stale_book=msgspec.structs.replace(
        config.stale_book, enabled=False))
    (stale,) = [p for p in key_parts(watch, "binance/BTCUSDT", _guard_config(off))
                if p.name == "stale book sides"]
    assert (stale.live_from, stale.why) == (None, "turned off")


def test_a_key_with_no_depth_feed_has_no_stale_side_part_and_a_short_one_is_not_live() -> None:
    """The check is a depth feed's part only; one shorter than its level is not live, and
    says how long it ran."""
    config = DetectorConfig(warmup_ns=0)
    rng = random.Random(5)
    quotes, short = DetectorWatch(config), DetectorWatch(config)
    for i in range(50):
        quotes.vector(_vector(i, 3, rng, price=100.0))
    for t in range(0, 240, 30):
        short.vector(_depth(t, None))
    cfg = _guard_config(config)
    assert "stale book sides" not in [p.name for p in key_parts(quotes, "binance/BTCUSDT", cfg)]
    (stale,) = [p for p in key_parts(short, "binance/BTCUSDT", cfg)
                if p.name == "stale book sides"]
    assert (stale.live_from, stale.why) == (None, "the depth feed spans 3 min 30 s")


def test_every_kind_of_signal_that_can_open_an_episode_has_a_readiness_part() -> None:
    """A run that says why nothing fired names every part that could have: each anomaly
    kind but the learned path's regime change (information, no episode) is some part's."""
    from riskguard.dataflows.readiness import SIGNALS
    from riskguard.schemas.signals import ANOMALY_KINDS

    assert set(ANOMALY_KINDS) - {"regime_change"} == set(SIGNALS.values())
    assert set(SIGNALS) == set(PARTS)


def test_a_calm_books_longest_resting_side_is_said_at_the_runs_end() -> None:
    """A book whose bid side changes every two minutes (a snapshot every 30 s) and whose
    ask changes with every snapshot: the run says its bid rested 1 min 30 s at most, the
    figure a thin book's ``stale_s`` must be above, and the part says it too."""
    config = DetectorConfig(warmup_ns=0)
    watch = DetectorWatch(config)
    for t in range(0, 3600, 30):
        watch.vector(_depth(t, t - t % 120))
    r = Readiness({"binance/BTCUSDT": key_parts(watch, "binance/BTCUSDT",
                                                _guard_config(config))}, watch)
    lines = summary_lines(r)
    assert ("  book sides at rest, the longest one side rested while the other changed: "
            "binance/BTCUSDT 1 min 30 s (bid)") in lines
    (stale,) = [p for p in r.keys["binance/BTCUSDT"] if p.name == "stale book sides"]
    assert stale.fires.endswith("the longest a side rested while the other changed: "
                                "1 min 30 s (bid)")
    assert "(5 min on this feed)" in stale.fires


def test_at_a_moment_the_stale_part_says_the_sides_there_and_the_rest_up_to_it() -> None:
    """``explain`` reads the watch at a moment: a bid frozen from 600 s, read at 1,500 s,
    has rested 15 min there (the longest so far), not the run's 50 min."""
    config = DetectorConfig(warmup_ns=0)
    watch = DetectorWatch(config, keep_times=True)
    for t in range(0, 3600, 30):
        watch.vector(_depth(t, 600 if t >= 600 else t))
    cfg = _guard_config(config)
    (run,) = [p for p in key_parts(watch, "binance/BTCUSDT", cfg)
              if p.name == "stale book sides"]
    assert "rested while the other changed: 49 min 30 s (bid)" in run.fires
    assert "here the bid" not in run.fires
    (then,) = [p for p in key_parts(watch.at(1500 * NS), "binance/BTCUSDT", cfg)
               if p.name == "stale book sides"]
    assert then.fires.endswith("the longest a side rested while the other changed: "
                               "15 min (bid); here the bid side unchanged 15 min, the ask 0 s")
