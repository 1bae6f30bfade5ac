"""The cross-market dislocation check: markets of one asset compared with each other,
with no peg configured (logic with a fixed clock, and one backtest through the guard)."""

from __future__ import annotations

import pickle
import random

from riskguard.operators.detection.cross_rates import (
    CrossRateConfig,
    CrossRates,
    market_group,
    split_instrument,
)
from riskguard.schemas import FeatureVector, Scope, ScopeKind

NS = 1_000_000_000
MARKETS = (("kraken", "XBTUSD", 1.0), ("binance", "BTCUSDT", 1.0005),
           ("coinbase", "BTC-USDC", 0.9998), ("bitstamp", "BTCUSD", 1.0))


def vec(venue: str, inst: str, i: int, price: float) -> FeatureVector:
    scope = Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue)
    return FeatureVector(key=f"{venue}/{inst}", scope=scope, ts=i * 60 * NS, values={},
                         price=price)


def _levels(n: int = 1000, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    out, level = [], 100.0
    for _ in range(n):
        level *= 1.0 + rng.gauss(0.0, 0.001)
        out.append(level)
    return out


LEVELS = _levels()


def run(logic: CrossRates, n: int, start: int = 0, shock=None) -> list:
    """Minutes ``start`` to ``start + n`` of the four BTC markets moving together (one
    random walk, tiny noise each), ``shock(venue, i)`` multiplying a market's price."""
    rng = random.Random(start)
    out = []
    for i in range(start, start + n):
        for venue, inst, offset in MARKETS:
            k = shock(venue, i) if shock else 1.0
            out += logic.on_event(vec(venue, inst, i, LEVELS[i] * offset * k
                                      * (1.0 + rng.gauss(0.0, 0.00005))))
    return out


def test_instrument_names_are_split_into_base_and_quote_and_grouped_by_quote_unit() -> None:
    """Every dollar stablecoin groups as USD, so their cross rate is what is watched."""
    assert split_instrument("XBTUSD") == ("BTC", "USD")
    assert {market_group(f"{v}/{i}") for v, i, _ in MARKETS} == {"BTC/USD"}
    assert market_group("deribit/ETH-27DEC26-3500-C") is None
    assert market_group("okx") is None


def test_markets_moving_together_with_steady_offsets_raise_nothing() -> None:
    """A steady USDT premium and USDC discount are learned as each market's usual offset."""
    assert run(CrossRates(CrossRateConfig()), 600) == []


def test_one_venue_crashing_alone_is_a_critical_dislocation_of_that_market_only() -> None:
    """A 3 % fall on one venue while the others hold: that market, critical, at once."""
    logic = CrossRates(CrossRateConfig())
    run(logic, 600)
    out = run(logic, 5, start=600, shock=lambda v, i: 0.97 if v == "bitstamp" else 1.0)
    opens = [s for s in out if s.phase == "open"]
    assert [(s.key, s.kind, s.severity.value) for s in opens] == [
        ("bitstamp/BTCUSD", "dislocation", "critical")]
    assert opens[0].top_features[0].feature == "dev_bps"
    assert opens[0].top_features[0].value < -250.0
    assert opens[0].ts == 600 * 60 * NS


def test_a_stablecoin_slipping_shows_in_its_market_without_a_configured_peg() -> None:
    """USDT losing 1 % against USD makes the USDT market part from the USD ones."""
    logic = CrossRates(CrossRateConfig())
    run(logic, 600)
    out = run(logic, 10, start=600, shock=lambda v, i: 1.01 if v == "binance" else 1.0)
    assert {s.key for s in out if s.phase == "open"} == {"binance/BTCUSDT"}


def test_a_market_that_stopped_quoting_is_no_reference() -> None:
    """A price older than max_age_ns is left out of the others' median."""
    logic = CrossRates(CrossRateConfig(max_age_ns=90 * NS, min_markets=2))
    logic.on_event(vec("kraken", "XBTUSD", 0, 100.0))
    assert logic.on_event(vec("binance", "BTCUSDT", 5, 50.0)) == []
    assert "kraken/XBTUSD" in logic.s.markets


def test_resuming_from_a_snapshot_gives_the_same_signals_as_never_stopping() -> None:
    """Snapshot mid-stream (it pickles and is independent of later events), resume, and
    the later signals equal the uninterrupted run's."""
    def shock(v: str, i: int) -> float:
        return 0.96 if v == "kraken" and i >= 650 else 1.0

    whole = CrossRates(CrossRateConfig())
    run(whole, 600, shock=shock)
    snap = whole.snapshot()
    frozen = pickle.dumps(snap)
    later = run(whole, 100, start=600, shock=shock)
    assert pickle.dumps(snap) == frozen
    resumed = CrossRates(CrossRateConfig(), pickle.loads(frozen))
    again = run(resumed, 100, start=600, shock=shock)
    assert [s.id for s in again] == [s.id for s in later]
    assert any(s.phase == "open" for s in later)


def _flagged(markets: tuple[tuple[str, str], ...], move, n: int = 200) -> set[str]:
    """The markets with a dislocation open at some point: ``markets`` at 100 with tiny
    noise for ``n`` minutes, ``move(venue, inst, i)`` multiplying each price."""
    logic = CrossRates(CrossRateConfig())
    out = []
    for i in range(n):
        out += logic.on_time([vec(v, s, i, 100.0 * move(v, s, i) * (1 + 0.0001 * (i % 3)))
                              for v, s in markets])
    return {s.key for s in out if s.phase == "open"}


def test_a_venue_listing_most_markets_of_a_group_is_one_voice() -> None:
    """A bad print on a venue listing four of the six markets: its markets are the
    dislocated ones, not the two healthy venues'."""
    markets = (("binance", "BTCUSDT"), ("binance", "BTCUSDC"), ("binance", "BTCFDUSD"),
               ("binance", "BTCTUSD"), ("coinbase", "BTC-USD"), ("kraken", "XBTUSD"))
    got = _flagged(markets, lambda v, s, i: 0.95 if v == "binance" and 150 <= i < 160
                   else 1.0)
    assert got == {f"binance/{s}" for v, s in markets if v == "binance"}


def test_a_depeg_of_the_stablecoin_most_markets_quote_is_seen_on_its_markets() -> None:
    """USDT 3 % off the dollar on four venues while two venues quote in dollars: the
    USDT markets are dislocated, the dollar ones are not."""
    markets = (("binance", "BTCUSDT"), ("okx", "BTC-USDT"), ("bybit", "BTCUSDT"),
               ("gate", "BTCUSDT"), ("coinbase", "BTC-USD"), ("kraken", "XBTUSD"))
    got = _flagged(markets, lambda v, s, i: 1 / 0.97 if "USDT" in s and i >= 150 else 1.0)
    assert got == {f"{v}/{s}" for v, s in markets if "USDT" in s}


def test_one_dollar_venue_parting_is_no_depeg_of_the_others() -> None:
    """One of two dollar venues falls 5 % alone: that market only, not the four USDT
    markets a rate measured against it would move."""
    markets = (("binance", "BTCUSDT"), ("okx", "BTC-USDT"), ("bybit", "BTCUSDT"),
               ("gate", "BTCUSDT"), ("coinbase", "BTC-USD"), ("kraken", "XBTUSD"))
    got = _flagged(markets, lambda v, s, i: 0.95 if v == "coinbase" and i >= 150 else 1.0)
    assert got == {"coinbase/BTC-USD"}


def test_with_three_venues_the_two_healthy_ones_are_not_dislocated() -> None:
    """With two others, the reference is the one nearer the judged market (not their
    mean): a venue falling alone leaves the other two in place."""
    markets = (("kraken", "XBTUSD"), ("binance", "BTCUSDT"), ("coinbase", "BTC-USDC"))
    got = _flagged(markets, lambda v, s, i: 0.96 if v == "kraken" and i >= 150 else 1.0)
    assert got == {"kraken/XBTUSD"}


def test_an_offset_learned_without_spread_still_follows_a_slow_drift() -> None:
    """Identical prices through warm-up leave a spread of 0; a basis then drifting to
    1.2 % over three days (slower than the 1-day half-life) is learned, not a
    dislocation: the learning step's cap is never 0."""
    logic = CrossRates(CrossRateConfig())
    n = 3 * 1440
    out = []
    for i in range(n + 120):
        drift = 0.0 if i < 120 else 0.012 * (i - 120) / n
        out += logic.on_time([vec("a", "BTC-USD", i, 100.0),
                              vec("b", "BTC-PERP", i, 100.0 * (1 + drift)),
                              vec("c", "BTCUSDT", i, 100.0)])
    assert out == []
    assert logic.s.markets["b/BTC-PERP"].mean > 60.0


def test_names_spelled_with_underscores_or_a_settlement_currency_are_grouped() -> None:
    """Gate's BTC_USDT, the ccxt name as the feeds normalise it (BTC-USDT:USDT) and
    Deribit's linear perpetual are BTC/USD markets like the others."""
    from riskguard.schemas.names import normalise_name

    names = ("BTC_USDT", normalise_name("BTC/USDT:USDT"), "BTC_USDC-PERPETUAL", "ETH_BTC")
    assert [split_instrument(n) for n in names] == [
        ("BTC", "USDT"), ("BTC", "USDT"), ("BTC", "USDC"), ("ETH", "BTC")]
    assert [market_group(f"v/{n}") for n in names] == ["BTC/USD"] * 3 + ["ETH/BTC"]
    assert split_instrument("BTCUSD_250627") == ("BTC", "USD")  # a delivery date goes
