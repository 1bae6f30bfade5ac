"""Backtests on bars with the default config: commands and dead letters do not depend on
the input batch size, and a crash in 1-minute bars is acted on within its first bars."""

from __future__ import annotations

import math
import random
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from riskguard.dataflows.backtest import run_backtest, span_batches
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.guard import load_guard_config
from riskguard.schemas import Bar, Measure

from riskguard.toml_text import dump_toml

NS = 1_000_000_000
MIN = 60 * NS


def bars(n_calm: int = 900, crash_at: int | None = 800, seed: int = 7) -> list[Bar]:
    """1-minute price-only bars: a calm random walk, then a fall of about 1.6 % a bar for
    6 bars from ``crash_at``."""
    rng = random.Random(seed)
    out, px = [], 100.0
    for i in range(n_calm):
        step = -0.016 if crash_at is not None and crash_at <= i < crash_at + 6 else \
            rng.gauss(0.0, 0.0005)
        o, px = px, px * math.exp(step)
        lo, hi = min(o, px) * (1 - 0.0002), max(o, px) * (1 + 0.0002)
        out.append(Bar(id=f"b{i}", venue="binance", instrument="BTCUSDT", ts=(i + 1) * MIN,
                       start=i * MIN, interval_ns=MIN, open=o, high=hi, low=lo, close=px,
                       price_only=True))
    return out


def _commands(res) -> list[tuple[str, str, int, str]]:
    return [(c.action.value, c.scope.label(), c.issued_at, c.command_id) for c in res.commands]


def test_commands_do_not_depend_on_the_batch_size(default_config) -> None:
    """Batch 1 and batch 100 give the same commands, ids and issued_at (a batch never
    spans two ticks of event time, so the event clock never runs ahead of a record by
    more than a tick). They used to differ: issued_at lagged by up to a whole batch."""
    cfg, digest = default_config
    recs = bars()
    one = run_backtest(cfg, digest, records=recs, batch_size=1)
    hundred = run_backtest(cfg, digest, records=recs, batch_size=100)
    assert _commands(one) == _commands(hundred)
    assert [s.id for s in one.signals] == [s.id for s in hundred.signals]


def test_a_crash_in_minute_bars_is_critical_and_reduce_only_within_four_bars(
        default_config) -> None:
    """The move bands warn on the fall's first bar and go critical once it is deep for
    this market (6.4 % on the fourth bar: in the key's first day, past 600 bps); the
    playbook goes reduce-only on the instrument, issued at the event time of that bar."""
    cfg, digest = default_config
    res = run_backtest(cfg, digest, records=bars(), batch_size=100)
    onset = 801 * MIN  # the close of the first falling bar
    moves = [s for s in res.signals if getattr(s, "kind", "") == "price_move"
             and s.ts >= onset]
    assert [(s.ts, s.severity.value) for s in moves[:2]] == [
        (onset, "warn"), (onset + 3 * MIN, "critical")]
    reduce = [c for c in res.commands if c.action.value == "reduce_only"]
    assert reduce and reduce[0].scope.label() == "instrument:binance/BTCUSDT"
    assert reduce[0].issued_at == onset + 3 * MIN


def test_calm_bars_give_no_mitigation_beyond_alerts(default_config) -> None:
    """Fifteen hours of a calm market: nothing stronger than an alert."""
    cfg, digest = default_config
    res = run_backtest(cfg, digest, records=bars(crash_at=None), batch_size=100)
    assert {c.action.value for c in res.commands} <= {"alert", "resume"}


def test_late_rows_are_judged_in_arrival_order_whatever_the_batch_size(default_config
                                                                       ) -> None:
    """A series that jumps 55 minutes back dead-letters the same rows as late at batch 1
    and at batch 100 (a batch used to be sorted by event time first, hiding them)."""
    cfg, digest = default_config
    recs = bars(n_calm=200, crash_at=None)
    back = [Bar(id=f"late{i}", venue=r.venue, instrument=r.instrument, ts=r.ts - 55 * MIN,
                start=r.start - 55 * MIN, interval_ns=MIN, open=r.open, high=r.high,
                low=r.low, close=r.close, price_only=True) for i, r in enumerate(recs[150:161])]
    stream = recs[:150] + back + recs[150:]
    got = []
    for size in (1, 100):
        res = run_backtest(cfg, digest, records=stream, batch_size=size)
        got.append(sorted(d.found for d in res.dead_letters if d.reason == "late"))
    assert len(got[0]) == 11
    assert got[0] == got[1]


def test_span_batches_cut_on_each_new_span_and_at_the_size() -> None:
    """Batches hold at most ``batch_size`` records of one span, in input order."""
    class R:
        def __init__(self, ts: int) -> None:
            self.ts = ts

    cut = span_batches([R(t) for t in (0, 1, 2, 3, 10, 5, 11)], 3, 10)
    assert [[r.ts for r in b] for b in cut] == [[0, 1, 2], [3], [10], [5], [11]]


def test_a_products_own_levels_reach_the_guard_from_its_toml(tmp_path: Path) -> None:
    """``[[detector.bands.products]]`` in a guard TOML runs the product's levels: the same
    crash trips nothing on a key whose product turns the bands off, and trips as ever on
    one whose product only renames the model version."""
    keys = init_keys(tmp_path)
    playbook = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]
    products = [{"match": "binance/BTC*", "enabled": False},
                {"match": "*", "model_version": "desk-1"}]
    doc = {"env": "bt", "playbook": playbook,
           "detector": {"bands": {"products": products}},
           "keys": {"issuer": "riskguard-guard", "signing_key": keys.signing_key.name,
                    "trust_file": keys.trust_file.name, "roots_file": keys.roots_file.name}}
    path = tmp_path / "guard.toml"
    path.write_text(dump_toml(doc))
    cfg, digest = load_guard_config(path)
    btc = bars()
    eth = [Bar(**{**{f: getattr(b, f) for f in b.__struct_fields__}, "id": f"e{i}",
                  "instrument": "ETHUSDT"}) for i, b in enumerate(btc)]
    res = run_backtest(cfg, digest, records=sorted(btc + eth, key=lambda b: (b.ts, b.id)))
    moves = [s for s in res.signals if getattr(s, "kind", "") == "price_move"]
    assert moves
    assert {s.key for s in moves} == {"binance/ETHUSDT"}
    assert {s.model_version for s in moves} == {"desk-1"}


def _daily(instrument: str, closes: list[float], measure: Measure) -> list[Bar]:
    day = 86_400 * NS
    return [Bar(id=f"{instrument}{i}", venue="deribit", instrument=instrument,
                ts=(i + 1) * day, start=i * day, interval_ns=day, open=o, close=c,
                high=max(o, c), low=min(o, c), price_only=True, measure=measure)
            for i, (o, c) in enumerate(zip([closes[0], *closes], closes, strict=False))]


def test_a_volatility_index_runs_with_its_own_levels_through_the_backtest(default_config
                                                                          ) -> None:
    """Daily bars moving 6.5 % a day, one series a price and one a volatility index,
    then each takes its adverse move of about 12 %: the price's fall is past the daily
    limits and unusual for it (critical, reduce-only); the index's rise is an ordinary
    day's move twice over, inside its own levels (not critical)."""
    cfg, digest = default_config
    records = sorted(_daily("BTC-PERPETUAL", [63.9, 60.0] * 20 + [53.0, 53.0], Measure.PRICE)
                     + _daily("DVOL-BTC", [60.0, 63.9] * 20 + [72.0, 72.0],
                              Measure.VOLATILITY),
                     key=lambda b: (b.ts, b.id))
    res = run_backtest(cfg, digest, records=records)
    critical = {s.key for s in res.signals if getattr(s, "kind", "") == "price_move"
                and s.severity.value == "critical"}
    assert critical == {"deribit/BTC-PERPETUAL"}
    reduce = {c.scope.label() for c in res.commands if c.action.value == "reduce_only"}
    assert reduce == {"instrument:deribit/BTC-PERPETUAL"}


def test_the_reports_price_series_stay_bounded_however_long_the_input(
        default_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A market's sampled prices thin out (every other point, the interval doubled) once
    they reach the cap, still spanning the whole input; markets past the markets' cap
    are counted but not sampled."""
    from riskguard.dataflows import backtest

    monkeypatch.setattr(backtest, "MAX_PRICE_POINTS", 64)
    monkeypatch.setattr(backtest, "MAX_PRICED_MARKETS", 1)
    cfg, digest = default_config
    recs = bars(n_calm=900, crash_at=None)
    other = [Bar(id=f"o{b.id}", venue="okx", instrument="BTC-USDT", ts=b.ts, start=b.start,
                 interval_ns=MIN, open=b.open, high=b.high, low=b.low, close=b.close,
                 price_only=True) for b in recs[:10]]
    res = run_backtest(cfg, digest, records=sorted(recs + other, key=lambda r: r.ts))
    (key,) = res.prices
    series = res.prices[key]
    assert key == "binance/BTCUSDT" and res.keys == {"binance/BTCUSDT", "okx/BTC-USDT"}
    assert 32 <= len(series) < 64 and len(res.ranges[key]) < 64
    assert series[0][0] == recs[0].ts and series[-1][0] >= recs[-1].ts - 32 * MIN
    assert [t for t, _p in series] == sorted({t for t, _p in series})
