"""The stale book-side check: a depth feed one side of which stops updating while the
other moves is critical (``stale_feed``) until the side updates again; a live book, a
whole frozen feed and a slow feed are not."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec
import pytest
from riskguard.dataflows.backtest import run_backtest
from riskguard.operators.core.snapshot import decode_snapshot, encode_snapshot
from riskguard.operators.detection import (
    DetectorConfig,
    DetectorLogic,
    FeatureConfig,
    FeatureLogic,
    StaleBook,
    StaleBookConfig,
    StaleBookProduct,
)
from riskguard.schemas import AnomalySignal, BookDepth, FeatureVector, Scope, ScopeKind

NS = 1_000_000_000
KEY = "binance_um/BTCUSDT"
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="BTCUSDT", venue="binance_um")


def sides(ts_s: float, bid_stale_s: float, ask_stale_s: float = 0.0) -> FeatureVector:
    return FeatureVector(key=KEY, scope=SCOPE, ts=int(ts_s * NS),
                         values={"bid_stale_s": bid_stale_s, "ask_stale_s": ask_stale_s})


def phases(check: StaleBook, vectors: list[FeatureVector], gap_s: float = 30.0
           ) -> list[tuple[float, str]]:
    return [(s.ts / NS, s.phase) for fv in vectors for s in check.on_vector(fv, gap_s)]


def test_a_side_frozen_while_the_other_moves_is_critical_until_it_updates() -> None:
    """30-second snapshots: the bid side frozen from 0 s is stale at 300 s (ten of the
    key's snapshots), stays so however long it stays frozen, and closes on its update."""
    check = StaleBook(StaleBookConfig(), key=KEY)
    frozen = [sides(t, t) for t in range(0, 3600, 30)]
    got = [s for fv in frozen for s in check.on_vector(fv, 30.0)]
    assert [(s.ts / NS, s.phase, s.severity.value, s.kind) for s in got] == [
        (300.0, "open", "critical", "stale_feed")]
    assert got[0].top_features[0].feature == "bid_stale_s"
    assert got[0].episode_id == f"{KEY}#stale1"
    assert phases(check, [sides(3600, 0.0)]) == [(3600.0, "close")]
    # frozen again from 3600 s: a new episode once it has been for 300 s
    assert phases(check, [sides(t, t - 3600) for t in range(3630, 3930, 30)]) == [
        (3900.0, "open")]
    assert check.s.episodes == 2


def test_a_live_book_a_whole_frozen_feed_and_a_slow_feed_are_not_stale() -> None:
    """Both sides changing: nothing. Both frozen (a halted or silent feed, which the
    heartbeats judge): nothing. Snapshots every five minutes: ten of them, not one."""
    live = StaleBook(StaleBookConfig(), key=KEY)
    assert phases(live, [sides(t, 30.0, 60.0) for t in range(0, 7200, 30)]) == []
    halted = StaleBook(StaleBookConfig(), key=KEY)
    assert phases(halted, [sides(t, t, t) for t in range(0, 7200, 30)]) == []
    slow = StaleBook(StaleBookConfig(), key=KEY)
    assert phases(slow, [sides(t, t) for t in range(0, 3000, 300)], gap_s=300.0) == []
    assert phases(slow, [sides(3000, 3000)], gap_s=300.0) == [(3000.0, "open")]


def test_a_side_that_stays_frozen_while_the_other_freezes_too_closes_the_episode() -> None:
    """Once both sides are frozen the feed as a whole is silent: the episode closes."""
    check = StaleBook(StaleBookConfig(), key=KEY)
    assert phases(check, [sides(t, t) for t in range(0, 330, 30)]) == [(300.0, "open")]
    assert phases(check, [sides(630, 630, 330)]) == [(630.0, "close")]


def depth(i: int, bid: float, ask: float, every_s: int = 30) -> BookDepth:
    return BookDepth(id=f"d{i}", venue="binance_um", instrument="BTCUSDT", ts=i * every_s * NS,
                     bands_pct=[1.0, 5.0], bid_depth=[bid, 5 * bid],
                     ask_depth=[ask, 5 * ask], mid=100_000.0 + (i % 7))


def frozen_bid_book(n: int, freeze_from: int, thaw_at: int, every_s: int = 30
                    ) -> list[BookDepth]:
    """Snapshots every ``every_s`` whose bid side repeats one value from ``freeze_from``
    until ``thaw_at`` while the ask side keeps changing."""
    return [depth(i, 17.654 if freeze_from <= i < thaw_at else 2000.0 + 40 * (i % 5),
                  1900.0 + 37 * (i % 6), every_s) for i in range(n)]


def stale_signals(records: list[BookDepth], detector: DetectorLogic | None = None,
                  features: FeatureLogic | None = None) -> list[tuple[float, str]]:
    features = features or FeatureLogic(FeatureConfig(), lambda: 10**19)
    detector = detector or DetectorLogic(DetectorConfig(), lambda: 0)
    out = []
    for rec in records:
        for fv in features.on_event(rec):
            out += [(s.ts / NS, s.phase) for s in detector.on_event(fv)
                    if isinstance(s, AnomalySignal) and s.kind == "stale_feed"]
    return out


def test_the_detector_holds_a_frozen_bid_side_critical_and_resumes_where_it_stood() -> None:
    """Through the features and the detector: the bid side frozen from the 100th snapshot
    opens at its 110th (300 s) and closes when it thaws at the 400th; a detector
    restored from a snapshot taken mid-episode closes the same episode at the same time
    and opens no other."""
    book = frozen_bid_book(500, 100, 400)
    want = stale_signals(book)
    assert want == [(110 * 30.0, "open"), (400 * 30.0, "close")]
    features = FeatureLogic(FeatureConfig(), lambda: 10**19)
    detector = DetectorLogic(DetectorConfig(), lambda: 0)
    first = stale_signals(book[:200], detector, features)
    restored = DetectorLogic(DetectorConfig(), lambda: 0,
                             decode_snapshot(encode_snapshot(detector.snapshot())))
    assert first + stale_signals(book[200:], restored, features) == want


def test_without_the_learned_path_a_slow_feed_is_stale_after_ten_snapshots_too() -> None:
    """With the move bands alone (``model = "none"``) the check still learns the key's
    typical time between snapshots: a five-minute feed whose bid side freezes from its
    20th snapshot is stale at its 30th, not its 21st."""
    bands_only = DetectorLogic(DetectorConfig(model="none"), lambda: 0)
    got = stale_signals(frozen_bid_book(60, 20, 60, every_s=300), bands_only)
    assert got == [(30 * 300.0, "open")]


def test_switched_off_there_is_no_stale_feed_signal() -> None:
    off = DetectorLogic(DetectorConfig(stale_book=StaleBookConfig(enabled=False)), lambda: 0)
    assert stale_signals(frozen_bid_book(500, 100, 400), off) == []


def test_a_books_own_settings_take_the_first_product_it_matches() -> None:
    """A thin book given ``stale_s = 1800`` (its innermost band rests for minutes) is not
    stale after 300 s of a frozen bid side but after 1,800; a book the products switch
    off raises nothing; another book keeps the defaults."""
    thin = StaleBookProduct(match="*/THINUSDT", stale_s=1800.0)
    cfg = DetectorConfig(stale_book=StaleBookConfig(products=(
        thin, StaleBookProduct(match="binance_um/*", enabled=False),
        StaleBookProduct(match="*/THINUSDT", stale_s=60.0))))  # not the first match
    book = frozen_bid_book(500, 100, 400)
    assert stale_signals(book, DetectorLogic(cfg, lambda: 0)) == []  # binance_um/BTCUSDT
    thin_book = [msgspec.structs.replace(r, venue="okx", instrument="THINUSDT") for r in book]
    assert stale_signals(thin_book, DetectorLogic(cfg, lambda: 0)) == [
        (160 * 30.0, "open"), (400 * 30.0, "close")]
    other = [msgspec.structs.replace(r, venue="okx") for r in book]
    assert stale_signals(other, DetectorLogic(cfg, lambda: 0)) == [
        (110 * 30.0, "open"), (400 * 30.0, "close")]


def test_products_come_from_the_config_file_and_an_unknown_setting_stops_it(
        tmp_path: Path) -> None:
    """``[[detector.stale_book.products]]`` in a guard config; a misspelt setting in one
    stops start-up and names it."""
    from riskguard.dataflows.guard import load_guard_config

    from riskguard.config import read_toml
    from riskguard.errors import ConfigError
    from riskguard.toml_text import dump_toml

    example = resources.files("riskguard.dataflows").joinpath("guard.example.toml")
    products = read_toml(Path(str(example)))["detector"]["stale_book"]["products"]
    assert products == [{"match": "*/PEPEUSDT", "stale_s": 1800.0}]
    doc = {"keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
           "detector": {"stale_book": {"products": products}}}
    path = tmp_path / "guard.toml"
    path.write_text(dump_toml(doc))
    cfg, _ = load_guard_config(path)
    assert cfg.detector.stale_book.for_key("binance/PEPEUSDT").stale_s == 1800.0
    assert cfg.detector.stale_book.for_key("binance/BTCUSDT").stale_s == 300.0
    doc["detector"]["stale_book"]["products"][0]["stale_ss"] = 60.0
    path.write_text(dump_toml(doc))
    with pytest.raises(ConfigError, match="stale_ss"):
        load_guard_config(path)


def test_the_guard_goes_reduce_only_on_a_frozen_bid_side_and_resumes_after_it_thaws(
        default_config) -> None:
    """The bundled playbook: reduce-only on the instrument when the stale side is found
    (its 110th snapshot), a resume once it has updated and stayed quiet for five minutes."""
    cfg, digest = default_config
    res = run_backtest(cfg, digest, records=frozen_bid_book(500, 100, 400), batch_size=100)
    acts = [(c.issued_at / NS, c.action.value) for c in res.commands
            if c.scope.label() == "instrument:binance_um/BTCUSDT"]
    assert (110 * 30.0, "reduce_only") in acts
    resumed = [t for t, action in acts if action == "resume"]
    assert resumed and resumed[0] >= 400 * 30.0 + 300.0
