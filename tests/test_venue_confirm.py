"""The cross-venue confirmation: a band warning confirmed by a trip on another venue of
the asset is critical (``operators/detection/venue_confirm.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from riskguard.operators.detection.venue_confirm import (
    MODEL,
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


def run(*signals: AnomalySignal) -> list[tuple[str, str, str, int]]:
    logic = VenueConfirmLogic(VenueConfirmConfig())
    return [(s.key, s.phase, s.severity.value, s.ts)
            for sig in signals for s in logic.on_event(sig)]


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
    logic = VenueConfirmLogic(VenueConfirmConfig())
    assert logic.on_event(band("okx/BTC-USDT", "open", "critical", -900)) == []
    raised = logic.on_event(band("binance/BTCUSDT", "open", "warn", -200, ts=2))
    assert [(s.key, s.model) for s in raised] == [("binance/BTCUSDT", MODEL)]
    for s in raised:  # the guard feeds its own output back among the signals
        assert logic.on_event(s) == []
    closed = logic.on_event(band("okx/BTC-USDT", "close", "critical", -50, ts=3))
    assert [(s.key, s.phase) for s in closed] == [("binance/BTCUSDT", "deescalate")]
    # the binance warning alone (no trip) confirms nothing for a newcomer
    assert logic.on_event(band("kraken/XBTUSD", "open", "warn", -300, ts=4)) == []


def test_an_own_trip_takes_over_and_a_new_episode_starts_afresh() -> None:
    logic = VenueConfirmLogic(VenueConfirmConfig())
    logic.on_event(band("gemini/BTCUSD", "open", "critical", -720))
    assert len(logic.on_event(band("kraken/XBTUSD", "open", "warn", -300, ts=2))) == 1
    # kraken trips itself, then closes: no easing of an episode that ended
    assert logic.on_event(band("kraken/XBTUSD", "escalate", "critical", -800, ts=3)) == []
    assert logic.on_event(band("kraken/XBTUSD", "close", "critical", -10, ts=4)) == []
    again = logic.on_event(band("kraken/XBTUSD", "open", "warn", -260, ts=5, episode=2))
    assert [(s.episode_id, s.phase) for s in again] == [("kraken/XBTUSD#move2", "escalate")]


def test_signals_name_the_trip_and_keep_the_episode() -> None:
    logic = VenueConfirmLogic(VenueConfirmConfig())
    logic.on_event(band("kraken/XBTUSD", "open", "warn", -240))
    [sig] = logic.on_event(band("gemini/BTCUSD", "open", "critical", -720, ts=2))
    assert sig.episode_id == "kraken/XBTUSD#move1" and sig.kind == "price_move"
    assert sig.top_features[0].feature == "tripped_on_gemini"
    assert sig.top_features[0].value == -720
    twin = VenueConfirmLogic(VenueConfirmConfig())
    twin.on_event(band("kraken/XBTUSD", "open", "warn", -240))
    assert twin.on_event(band("gemini/BTCUSD", "open", "critical", -720, ts=2))[0].id == sig.id


def test_other_signals_and_unknown_markets_pass_by() -> None:
    import msgspec

    logic = VenueConfirmLogic(VenueConfirmConfig())
    logic.on_event(band("kraken/XBTUSD", "open", "warn", -240))
    anomaly = msgspec.structs.replace(band("gemini/BTCUSD", "open", "critical", -720),
                                      kind="anomaly")
    assert logic.on_event(anomaly) == []
    assert logic.on_event(band("okx/SOMETHING", "open", "critical", -720)) == []


def test_a_snapshot_of_another_version_is_refused() -> None:
    from riskguard.operators.detection.venue_confirm import VenueConfirmState

    with pytest.raises(ConfigError, match=r"detector\.confirm\.state\.version"):
        VenueConfirmLogic(VenueConfirmConfig(), VenueConfirmState(version=99))


def test_black_thursday_btc_turns_critical_on_its_onset_bar_on_every_venue() -> None:
    """The real hourly bars of three venues through Black Thursday, through the whole
    guard with the confirmation on: binance's and kraken's BTC, a bar behind gemini's on
    their own bands, are critical (confirmed) and under reduce_only on the labelled
    onset bar; with the defaults (off), no signal is a confirmation."""
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
    with tempfile.TemporaryDirectory() as tmp:  # on, as a one-worker backtest may have it
        cfg, digest = dr.default_config(Path(tmp), {"detector": {"confirm": {"enabled": True}}})
        res = run_backtest(cfg, digest, files=[ReplayFile(path)])
    confirmed = {s.key for s in res.signals if isinstance(s, AnomalySignal)
                 and s.model == MODEL and s.ts == onset_bar_close
                 and s.severity is Severity.CRITICAL}
    assert confirmed == {"binance_spot/BTCUSDT", "kraken/XBTUSD"}
    reduced = {c.scope.label() for c in res.commands
               if c.action.value == "reduce_only" and c.issued_at <= onset_bar_close}
    assert {"instrument:binance_spot/BTCUSDT", "instrument:kraken/XBTUSD"} <= reduced
    with tempfile.TemporaryDirectory() as tmp:
        cfg, digest = dr.default_config(Path(tmp))
        off = run_backtest(cfg, digest, files=[ReplayFile(path)])
    assert not any(isinstance(s, AnomalySignal) and s.model == MODEL for s in off.signals)
