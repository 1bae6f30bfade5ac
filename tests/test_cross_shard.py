"""Cross-market dislocations judged on shard keys in event-time order: the same signals
however the markets are spread over workers and their batches interleaved, points
behind the judged time left out and counted, and one point per market per bar."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from riskguard.operators.core.clock import Tick
from riskguard.operators.detection.cross_rates import CrossRateConfig
from riskguard.operators.detection.cross_shard import (
    CrossShard,
    cross_points,
    cross_shard_builder,
    shard_of,
)
from riskguard.schemas import AnomalySignal, DeadLetter, Quote, Trade, decode, encode
from riskguard.schemas.market import Bar

from riskguard.errors import ConfigError

NS = 1_000_000_000
MARKETS = (("kraken", "XBTUSD", 1.0), ("binance", "BTCUSDT", 1.0005),
           ("coinbase", "BTC-USDC", 0.9998), ("bitstamp", "BTCUSD", 1.0),
           ("okx", "ETH-USDT", 0.03), ("deribit", "ETH-PERP", 0.03),
           ("kraken", "ETHUSD", 0.03))
CFG = CrossRateConfig(warmup_points=30)


def _levels(n: int, seed: int = 5) -> list[float]:
    rng = random.Random(seed)
    out, level = [], 100.0
    for _ in range(n):
        level *= 1.0 + rng.gauss(0.0, 0.0005)
        out.append(level)
    return out


LEVELS = _levels(400)


def _quote(venue: str, inst: str, s: int, mid: float) -> Quote:
    return Quote(id=f"{venue}-{inst}-{s}", venue=venue, instrument=inst,
                 ts=s * NS + 7_000_000 * (1 + len(venue) % 3), bid=mid * 0.9999, bid_size=1.0,
                 ask=mid * 1.0001, ask_size=1.0)


def _price(venue: str, offset: float, s: int) -> float:
    fall = 0.96 if venue == "bitstamp" and 300 <= s < 330 else 1.0
    return LEVELS[s] * offset * fall * (1.0 + 0.00003 * ((s * len(venue)) % 7))


def _batches(workers: int) -> list[list[list[tuple[str, Any]]]]:
    """Per worker, its batches (one a second) through ``cross_points``: each worker reads
    every ``workers``-th market, with ticks named after it."""
    out = []
    for w in range(workers):
        def ticks(recs: list[Any], w: int = w) -> list[Tick]:
            return [Tick(ts=recs[-1].ts, source=f"w{w}", of=workers)] if recs else []

        points = cross_points(ticks, bar_ns=NS, shards=3)
        mine = [m for i, m in enumerate(MARKETS) if i % workers == w]
        out.append([points(sorted((_quote(v, inst, s, _price(v, off, s))
                                   for v, inst, off in mine), key=lambda q: q.ts))
                    for s in range(len(LEVELS))])
    return out


def _judge(batches: list[list[list[tuple[str, Any]]]], seed: int) -> list[tuple]:
    """Interleave the workers' batches at random (each worker's in order), run one
    :class:`CrossShard` per shard key, end the input; the signals, by id."""
    rng = random.Random(seed)
    queues = [list(b) for b in batches]
    shards: dict[str, CrossShard] = {}
    out = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        for key, item in q.pop(0):
            shard = shards.setdefault(key, CrossShard(CFG, clock=lambda: 0))
            out.extend(shard.on_event(item))
    for shard in shards.values():
        out.extend(shard.on_eof())
    return sorted((s.id, s.key, s.phase, s.severity.value, s.ts, round(s.score, 9))
                  for s in out)


def test_one_worker_sees_the_lone_fall_as_a_critical_dislocation_of_that_market() -> None:
    got = _judge(_batches(1), seed=0)
    opens = [g for g in got if g[2] == "open"]
    assert [(g[1], g[3], g[4] // NS) for g in opens] == [("bitstamp/BTCUSD", "critical", 300)]
    assert any(g[1] == "bitstamp/BTCUSD" and g[2] == "close" for g in got)


@pytest.mark.parametrize("workers", [2, 3])
def test_any_spread_over_workers_and_any_interleaving_gives_one_workers_signals(
        workers: int) -> None:
    want = _judge(_batches(1), seed=0)
    batches = _batches(workers)
    for seed in range(4):
        assert _judge(batches, seed) == want


def test_a_point_behind_what_was_judged_is_left_out_and_counted() -> None:
    told: list[tuple[str, int]] = []
    shard = CrossShard(CFG, clock=lambda: 0, on_reorder=lambda what, n: told.append((what, n)))
    points = cross_points(lambda recs: [Tick(ts=recs[-1].ts, source="w", of=1)], bar_ns=NS,
                          shards=1)
    for s in range(5):
        for _key, item in points([_quote(v, i, s, 100.0) for v, i, _o in MARKETS[:4]]):
            shard.on_event(item)
    judged = shard.state.judged_ts
    other_reader = cross_points(lambda recs: [], bar_ns=NS, shards=1)
    late = other_reader([_quote("kraken", "XBTUSD", 1, 100.0)])[0][1]
    assert late[0] < judged
    assert shard.on_event(late) == []  # its record reaches the features all the same
    assert shard.state.late == 1
    assert told == [("late", 1)]
    assert all(p[0] >= judged for p in shard.state.held)


def test_a_market_gives_one_point_per_bar_and_other_records_none() -> None:
    """The bar's first record makes its point; a later one of the bar none; an earlier
    one arriving after it (input out of order) another, which the shard judges first."""
    points = cross_points(lambda recs: [], bar_ns=NS, shards=4)
    first = _quote("kraken", "XBTUSD", 1, 100.0)

    def trade(ts: int, price: float) -> Trade:
        return Trade(id=f"t{ts}", venue="kraken", instrument="XBTUSD", ts=ts, price=price,
                     qty=1.0, side="buy")

    assert first.ts > NS  # so a trade at NS is earlier in the same bar
    got = points([first, trade(first.ts + 5, 100.5), _quote("kraken", "XBTUSD", 2, 101.0),
                  _quote("okx", "ETH-27DEC26-3500-C", 2, 5.0), trade(NS, 99.0)])
    assert [(k, key, ts, round(price, 6)) for k, (ts, key, price, *_rest) in got] == [
        (shard_of("BTC/USD", 4), "kraken/XBTUSD", first.ts, 100.0),
        (shard_of("BTC/USD", 4), "kraken/XBTUSD", 2 * NS + first.ts - NS, 101.0),
        (shard_of("BTC/USD", 4), "kraken/XBTUSD", NS, 99.0)]


def test_the_shard_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"detector\.cross\.shards"):
        cross_shard_builder(CrossRateConfig(shards=0), lambda: 0, bar_ns=NS)
    with pytest.raises(ConfigError, match=r"detector\.cross\.min_markets"):
        cross_shard_builder(CrossRateConfig(min_markets=1), lambda: 0, bar_ns=NS)


def test_a_quote_whose_bid_plus_ask_overflows_is_a_dislocation_the_schema_takes() -> None:
    """bid = ask = 1e308 priced the market at infinity: a dislocation of infinite bps
    (refused by the schema) and a learned offset turned NaN."""
    points = cross_points(lambda recs: [Tick(ts=recs[-1].ts, source="w", of=1)], bar_ns=NS,
                          shards=1)
    shard = CrossShard(CrossRateConfig(warmup_points=5), clock=lambda: 0)
    out = []
    for s in range(1, 30):
        batch = [_quote(v, i, s, 100.0) for v, i, _o in MARKETS[:4]]
        if s == 25:
            batch[1] = Quote(id="huge", venue="binance", instrument="BTCUSDT", ts=s * NS,
                             bid=1e308, bid_size=1.0, ask=1e308, ask_size=1.0)
        for _key, item in points(batch):
            out += shard.on_event(item)
    out += shard.on_eof()
    assert ("binance/BTCUSDT", "open") in [(sig.key, sig.phase) for sig in out]
    for sig in out:
        assert isinstance(decode("signals", encode(sig)), AnomalySignal)
    market = shard._rates["BTC/USD"].s.markets["binance/BTCUSDT"]
    assert all(math.isfinite(x) for x in (market.mean, market.var, market.logp))


def _bar(venue: str, inst: str, i: int, px: float) -> Bar:
    m = 60 * NS
    return Bar(id=f"{venue}{i}", venue=venue, instrument=inst, ts=(i + 1) * m, start=i * m,
               interval_ns=m, open=px, high=px, low=px, close=px)


@pytest.mark.parametrize("order", [1, -1])
def test_bars_closing_together_are_compared_bar_with_bar(order: int) -> None:
    """Every venue's bar closes at the same time and all fall 5 % on one bar: no market
    is judged against the others' previous bar, so nothing is dislocated, whatever order
    the markets of that time arrive in."""
    points = cross_points(lambda recs: [Tick(ts=recs[-1].ts, source="w", of=1)],
                          bar_ns=60 * NS, shards=1)
    shard = CrossShard(CrossRateConfig(warmup_points=20), clock=lambda: 0, bar_ns=60 * NS)
    markets = [("binance", "BTCUSDT", 100.02), ("coinbase", "BTC-USD", 100.0),
               ("kraken", "XBTUSD", 99.99), ("okx", "BTC-USDT", 100.01)][::order]
    out = []
    for i in range(100):
        fall = 0.95 if i >= 80 else 1.0
        for _key, item in points([_bar(v, s, i, p * fall * (1 + 0.0001 * (i % 3)))
                                  for v, s, p in markets]):
            out += shard.on_event(item)
    out += shard.on_eof()
    assert out == []


@pytest.mark.parametrize("lag_s", [0, 3, 8])
def test_a_venue_whose_prices_come_behind_the_others_is_still_judged(lag_s: int) -> None:
    """One reader; venue d's records carry times ``lag_s`` behind the others' as they
    arrive (its feed or its exchange's clock lagging): the shard waits for d (within
    allowed_lateness_ns), so d falling alone is a dislocation, and no point is late."""
    points = cross_points(lambda recs: [Tick(ts=max(r.ts for r in recs), source="w", of=1)],
                          bar_ns=NS, shards=1)
    shard = CrossShard(CrossRateConfig(warmup_points=20), clock=lambda: 0)
    out = []
    for s in range(10, 200):
        d_px = 92.0 if s - lag_s >= 150 else 100.0
        batch = [_quote("a", "BTCUSD", s, 100.0), _quote("b", "BTCUSDT", s, 100.05),
                 _quote("c", "BTC-USDC", s, 100.02), _quote("d", "XBTUSD", s - lag_s, d_px)]
        for _key, item in points(batch):
            out += shard.on_event(item)
    out += shard.on_eof()
    assert not [x for x in out if isinstance(x, DeadLetter)]
    assert shard.state.late == 0
    assert [(x.key, x.phase, x.severity.value) for x in out if x.phase == "open"] == [
        ("d/XBTUSD", "open", "critical")]


def test_a_venue_further_behind_than_allowed_is_left_out_and_counted() -> None:
    """Past allowed_lateness_ns the others are judged without the lagging venue, and
    each of its prices that then comes is counted late (its record still reaches the
    features, which dead-letter it if it is late there: never two dead letters)."""
    points = cross_points(lambda recs: [Tick(ts=max(r.ts for r in recs), source="w", of=1)],
                          bar_ns=NS, shards=1)
    told: list[tuple[str, int]] = []
    shard = CrossShard(CrossRateConfig(warmup_points=20, allowed_lateness_ns=2 * NS),
                       clock=lambda: 0, on_reorder=lambda what, n: told.append((what, n)))
    out = []
    for s in range(10, 60):
        batch = [_quote("a", "BTCUSD", s, 100.0), _quote("b", "BTCUSDT", s, 100.05),
                 _quote("c", "BTC-USDC", s, 100.02), _quote("d", "XBTUSD", s - 5, 100.0)]
        for _key, item in points(batch):
            out += shard.on_event(item)
    assert not [x for x in out if isinstance(x, DeadLetter)]
    assert shard.state.late > 0 and told == [("late", 1)] * shard.state.late


def _rotating_batches(seconds: int, stays_s: int) -> list[list[Any]]:
    """A second a batch: markets a and b throughout, and one venue at a time (c0, c1,
    ...) each for ``stays_s`` seconds and then gone for good."""
    return [[_quote("a", "BTCUSD", s, 100.0), _quote("b", "BTCUSDT", s, 100.05),
             _quote(f"c{s // stays_s}", "BTC-USDC", s, 100.02)] for s in range(seconds)]


def test_a_market_gone_for_good_holds_no_judging_back_and_is_forgotten() -> None:
    """A market whose newest price has fallen more than allowed_lateness_ns behind the
    watermark no longer holds the shard back: the others are judged up to their own
    newest prices each tick, not allowed_lateness_ns behind; and it is forgotten, so
    the shard's per-market maps hold the markets still sending, however many came and
    went."""
    points = cross_points(lambda recs: [Tick(ts=max(r.ts for r in recs), source="w", of=1)],
                          bar_ns=NS, shards=1)
    shard = CrossShard(CrossRateConfig(warmup_points=20, allowed_lateness_ns=5 * NS),
                       clock=lambda: 0)
    most = 0
    for s, batch in enumerate(_rotating_batches(300, stays_s=10)):
        for _key, item in points(batch):
            shard.on_event(item)
        if s > 10 and s % 10 > 5:  # the last to go left more than 5 s ago: only the
            # markets still sending are waited for (each second's points are judged)
            assert shard.state.judged_ts > (s - 1) * NS + 100_000_000, s
        # else waited for up to allowed_lateness_ns, never longer
        assert shard.state.judged_ts > (s - 6) * NS, s
        most = max(most, len(shard.state.progress), len(shard.state.last_bar))
    assert most <= 4
    assert set(shard.state.progress) == {"a/BTCUSD", "b/BTCUSDT", "c29/BTC-USDC"}
    assert shard.state.late == 0
