"""The feed bridge's pieces without a network: cryptofeed's normalized objects (built with
`cryptofeed.types`, with the arguments its exchange classes pass) mapped to wire records
or dead letters; the exchange table checked against cryptofeed's own channel tables; the
heartbeat logic driven with a fixed clock; the command's one-line errors."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal

import pytest

cryptofeed = pytest.importorskip("cryptofeed", reason="needs the feed extra: "
                                 "pip install 'riskguard[feed]'")

from cryptofeed import defines as cf  # noqa: E402
from cryptofeed.types import (  # noqa: E402
    Candle,
    Funding,
    Index,
    L1Book,
    Liquidation,
    OpenInterest,
    Ticker,
    Trade,
)
from riskguard.connectors.feeds import (  # noqa: E402
    CHANNELS,
    EXCHANGES,
    ConnectionSeen,
    FeedMapper,
    VenueHealth,
    spec_for,
)
from riskguard.connectors.feeds.bridge import BridgeConfig, carried_channels  # noqa: E402
from riskguard.schemas import (  # noqa: E402
    Bar,
    DeadLetter,
    FundingRate,
    IndexPrice,
    Quote,
    Side,
    VenueState,
    decode,
    encode,
)
from riskguard.schemas import OpenInterest as WireOpenInterest  # noqa: E402
from riskguard.schemas import Trade as WireTrade  # noqa: E402

from riskguard.cli import main  # noqa: E402
from riskguard.errors import ConfigError  # noqa: E402

NS = 1_000_000_000
T = 1767225600.123  # 2026-01-01 00:00:00.123 UTC, as cryptofeed gives it (float seconds)
RECV = 1767225600.125
T_NS, RECV_NS = 1767225600_123_000_000, 1767225600_125_000_000
BF = cf.BINANCE_FUTURES
PERP = "BTC-USDT-PERP"


def _map(channel: str, obj: object, exchange: str = "binance-futures",
         feed: str = "primary") -> object:
    return FeedMapper(spec_for(exchange), feed=feed, clock=lambda: 42).record(channel, obj, RECV)


def test_a_binance_agg_trade_becomes_a_trade_with_exchange_and_receipt_times_in_ns():
    # as cryptofeed's Binance._trade builds it: side from "m", Decimal qty and price,
    # timestamp_normalize(T) = ms / 1000, id = the aggregate trade id
    t = Trade(BF, PERP, cf.SELL, Decimal("0.005"), Decimal("60000.1"), 1767225600123 / 1000,
              id="1000", raw={"e": "aggTrade", "a": 1000})
    rec = _map("trades", t, feed="backup")
    assert rec == WireTrade(id="binance:BTC-USDT-PERP:1000", venue="binance",
                            instrument=PERP, ts=T_NS, recv_ts=RECV_NS, feed="backup",
                            price=60000.1, qty=0.005, side=Side.SELL)
    assert decode("market", encode(rec)) == rec


def test_a_trade_without_an_exchange_id_gets_one_from_venue_instrument_and_time():
    t = Trade(cf.OKX, PERP, cf.BUY, Decimal("1"), Decimal("2"), T)
    assert _map("trades", t, exchange="okx").id == f"okx:{PERP}:t:{T_NS}"


def test_trades_without_exchange_ids_in_one_microsecond_get_ids_of_their_own():
    mapper = FeedMapper(spec_for("okx"), clock=lambda: 42)
    ids = [mapper.record("trades", Trade(cf.OKX, PERP, cf.BUY, Decimal("1"), Decimal(px), T),
                         RECV).id for px in ("2", "3", "4")]
    later = Trade(cf.OKX, PERP, cf.BUY, Decimal("1"), Decimal("2"), T + 1)
    assert ids == [f"okx:{PERP}:t:{T_NS}", f"okx:{PERP}:t:{T_NS}:1", f"okx:{PERP}:t:{T_NS}:2"]
    assert mapper.record("trades", later, RECV).id == f"okx:{PERP}:t:{T_NS + 1_000_000_000}"


def test_a_book_ticker_becomes_a_quote_with_the_sizes_of_its_raw_message():
    raw = {"e": "bookTicker", "u": 400, "s": "BTCUSDT", "b": "60000.1", "B": "3.25",
           "a": "60000.2", "A": "1.5", "T": 1767225600122, "E": 1767225600123}
    t = Ticker(BF, PERP, Decimal("60000.1"), Decimal("60000.2"), raw["E"] / 1000, raw=raw)
    rec = _map("l1", t)
    assert isinstance(rec, Quote)
    assert (rec.bid, rec.bid_size, rec.ask, rec.ask_size) == (60000.1, 3.25, 60000.2, 1.5)
    assert (rec.ts, rec.recv_ts, rec.id) == (T_NS, RECV_NS, f"binance:{PERP}:q:{T_NS}")


def test_a_ticker_without_sizes_gives_size_zero_and_one_without_time_the_receipt_time():
    # Kraken Futures-style: no timestamp in the ticker (cryptofeed passes None)
    t = Ticker(cf.OKX, PERP, Decimal("10"), Decimal("11"), None, raw={"data": []})
    rec = _map("l1", t, exchange="okx")
    assert isinstance(rec, Quote)
    assert (rec.bid_size, rec.ask_size, rec.ts, rec.recv_ts) == (0.0, 0.0, RECV_NS, RECV_NS)


def test_an_l1_book_becomes_a_quote_with_its_own_sizes():
    book = L1Book(cf.DERIBIT, "BTC-USD-PERP", Decimal("100"), Decimal("5"), Decimal("101"),
                  Decimal("7"), T, raw={"instrument_name": "BTC-PERPETUAL"})
    rec = _map("l1", book, exchange="deribit")
    assert isinstance(rec, Quote) and rec.venue == "deribit"
    assert (rec.bid, rec.bid_size, rec.ask, rec.ask_size) == (100.0, 5.0, 101.0, 7.0)


def test_funding_carries_rate_mark_next_funding_time_and_the_predicted_rate():
    f = Funding(BF, PERP, Decimal("60000.5"), Decimal("0.0001"), 1767229200.0, T,
                predicted_rate=Decimal("0.00012"), raw={"e": "markPriceUpdate"})
    rec = _map("funding", f)
    assert isinstance(rec, FundingRate)
    assert (rec.rate, rec.mark_price, rec.next_funding_ts) == (
        0.0001, 60000.5, 1767229200 * NS)
    if "predicted_rate" in FundingRate.__struct_fields__:
        assert rec.predicted_rate == 0.00012


def test_funding_without_a_mark_price_has_none_and_without_a_rate_is_a_dead_letter():
    okx = Funding(cf.OKX, PERP, None, Decimal("0.0002"), None, T)  # as OKX's _funding
    assert _map("funding", okx, exchange="okx").mark_price is None
    # Binance sends no rate for a dated future (cryptofeed passes rate=None)
    dl = _map("funding", Funding(BF, PERP, Decimal("1"), None, None, T, raw={"r": ""}))
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path, dl.expected, dl.found, dl.step, dl.topic, dl.ts) == (
        "validation", "$.rate", "a number", "None", "feed", "feed.binance-futures", 42)
    assert dl.raw == b'{"r":""}'


def test_a_liquidation_becomes_a_trade_marked_liquidation_with_the_order_side():
    liq = Liquidation(BF, PERP, cf.SELL, Decimal("0.010"), Decimal("59000"), None, cf.FILLED,
                      T, raw={"e": "forceOrder"})
    rec = _map("liquidations", liq)
    assert isinstance(rec, WireTrade) and rec.liquidation is True
    assert (rec.side, rec.qty, rec.price, rec.id) == (
        Side.SELL, 0.01, 59000.0, f"binance:{PERP}:liq:{T_NS}")


def test_open_interest_and_index_become_their_records():
    oi = _map("open_interest", OpenInterest(BF, PERP, Decimal("81234.5"), T))
    assert isinstance(oi, WireOpenInterest) and oi.open_interest == 81234.5
    ix = _map("index", Index(cf.BYBIT, PERP, Decimal("60001"), T), exchange="bybit")
    assert isinstance(ix, IndexPrice) and (ix.venue, ix.price) == ("bybit", 60001.0)


def test_a_closed_binance_kline_becomes_a_bar_closing_at_the_interval_end():
    # Binance: start t/1000, stop T/1000 where T is the bar's last millisecond
    c = Candle(BF, PERP, 1767225540000 / 1000, 1767225599999 / 1000, "1m", 505,
               Decimal("60000"), Decimal("60010"), Decimal("60020"), Decimal("59990"),
               Decimal("13.8"), True, 1767225600123 / 1000, raw={"e": "kline"})
    rec = _map("candles", c)
    assert isinstance(rec, Bar)
    assert (rec.start, rec.ts, rec.interval_ns) == (1767225540 * NS, 1767225600 * NS, 60 * NS)
    assert (rec.open, rec.high, rec.low, rec.close, rec.volume, rec.trades) == (
        60000.0, 60020.0, 59990.0, 60010.0, 13.8, 505)
    month = Candle(BF, PERP, 1767225600.0, 1769903999.999, "1M", None, Decimal("1"),
                   Decimal("1"), Decimal("1"), Decimal("1"), Decimal("0"), True, None)
    bar = _map("candles", month)
    assert isinstance(bar, Bar) and (bar.ts, bar.trades) == (1769904000 * NS, None)


def _okx_candle(confirm: str, received: float) -> object:
    """A candle as cryptofeed's own OKX._candle builds it from a push (its ``closed`` is a
    volume, always truthy; the push's 9th field ``confirm`` says "0" while in progress)."""
    import asyncio

    from cryptofeed.exchanges import OKX
    from cryptofeed.symbols import Symbols
    Symbols.set("OKX", {PERP: "BTC-USDT-SWAP"},
                {"tick_size": {PERP: "0.1"}, "instrument_type": {PERP: "perpetual"}})
    got: list[object] = []

    async def cb(obj: object, _ts: float) -> None:
        got.append(obj)
    feed = OKX(symbols=[PERP], channels=[cf.CANDLES], callbacks={cf.CANDLES: cb},
               config={"uvloop": False})
    msg = {"arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"},
           "data": [["1767225600000", "60000", "60010", "59990", "60005", "12", "0.012",
                     "720", confirm]]}
    asyncio.run(feed._candle(msg, received))
    return got[0]


def test_a_candle_still_in_progress_is_no_bar_and_is_counted():
    mapper = FeedMapper(spec_for("okx"), clock=lambda: 42)
    # OKX pushes the candle in progress at every update: 5 s into the minute, confirm 0
    assert mapper.record("candles", _okx_candle("0", 1767225605.0), 1767225605.0) is None
    # the push that closes it (confirm 1) is the bar, whatever the local clock says
    bar = mapper.record("candles", _okx_candle("1", 1767225659.9), 1767225659.9)
    assert isinstance(bar, Bar) and (bar.start, bar.ts) == (1767225600 * NS, 1767225660 * NS)
    # Binance and Bybit say so with a bool, trusted whatever the receipt time
    binance = FeedMapper(spec_for("binance-futures"), clock=lambda: 42)
    c = Candle(BF, PERP, 1767225540.0, 1767225599.999, "1m", 5, Decimal(1), Decimal(1),
               Decimal(1), Decimal(1), Decimal(1), False, T)
    assert binance.record("candles", c, RECV) is None and binance.unfinished == 1
    # an OKX candle without its push: closed only if received at or after its end
    no_flag = Candle(cf.OKX, PERP, 1767225540.0, 1767225600.0, "1m", None, Decimal(1),
                     Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(1), T)
    assert mapper.record("candles", no_flag, 1767225599.0) is None
    assert isinstance(mapper.record("candles", no_flag, 1767225600.0), Bar)
    assert mapper.unfinished == 2


def test_a_message_without_a_symbol_is_a_dead_letter_not_instrument_none():
    from types import SimpleNamespace as Obj
    for symbol in (None, "", 5):  # cryptofeed's types would take None and ""
        t = Obj(symbol=symbol, side="buy", id="1", amount=Decimal(1), price=Decimal(1),
                timestamp=T, raw={"s": None})
        dl = _map("trades", t)
        assert isinstance(dl, DeadLetter), dl
        assert (dl.path, dl.expected, dl.found) == ("$.instrument", "a market name",
                                                    repr(symbol))


@pytest.mark.parametrize("bad", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_a_non_finite_mark_or_predicted_rate_is_a_dead_letter_not_none(bad):
    mark = Funding(BF, PERP, Decimal(bad), Decimal("0.0001"), T + 3600, T, raw={"p": bad})
    dl = _map("funding", mark)
    assert isinstance(dl, DeadLetter) and dl.path == "$.mark_price", dl
    if "predicted_rate" in FundingRate.__struct_fields__:
        predicted = Funding(BF, PERP, Decimal(1), Decimal("0.0001"), T + 3600, T,
                            predicted_rate=Decimal(bad))
        dl = _map("funding", predicted)
        assert isinstance(dl, DeadLetter) and dl.path == "$.predicted_rate", dl


def test_an_empty_okx_bid_is_a_dead_letter_with_the_exchange_message_not_an_exception():
    # OKX's _ticker turns an empty bidPx into Decimal(0): not a price
    t = Ticker(cf.OKX, PERP, Decimal(0), Decimal("11"), T, raw={"bidPx": ""})
    dl = _map("l1", t, exchange="okx")
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path, dl.topic) == ("validation", "$.bid", "feed.okx")
    assert dl.raw == b'{"bidPx":""}'
    odd = Trade(BF, PERP, "short", Decimal("1"), Decimal("1"), T)  # a side riskguard lacks
    dl = _map("trades", odd)
    assert isinstance(dl, DeadLetter) and "ValueError" in dl.found


# -- the exchange table -------------------------------------------------------------------


def test_every_table_entry_names_a_cryptofeed_exchange_and_channels_it_has():
    """Adding an exchange is an entry: each entry's id and channels exist in cryptofeed."""
    from cryptofeed.exchanges import EXCHANGE_MAP

    cf_channels = {cf.TRADES, cf.TICKER, cf.L1_BOOK, cf.FUNDING, cf.LIQUIDATIONS,
                   cf.OPEN_INTEREST, cf.INDEX, cf.CANDLES}
    for spec in EXCHANGES.values():
        assert getattr(cf, spec.cryptofeed_id) == spec.cryptofeed_id
        cls = EXCHANGE_MAP[spec.cryptofeed_id]
        for ours, theirs in spec.channels.items():
            assert ours in CHANNELS and theirs in cf_channels, (spec.name, ours)
            assert theirs in cls.websocket_channels, (spec.name, theirs)
    venues = [spec.venue for spec in EXCHANGES.values()]
    assert len(venues) == len(set(venues))  # one heartbeat source per venue and feed


def test_a_channel_is_refused_when_the_guard_market_topic_does_not_carry_its_record():
    carried = carried_channels()
    assert carried["trades"] and carried["l1"] and carried["funding"] and carried["candles"]
    spec = spec_for("binance-futures")
    for channel, ok in carried.items():
        if channel not in spec.channels:
            continue
        config = BridgeConfig(spec=spec, symbols=(PERP,), channels=(channel,))
        if ok:
            assert config.validate() is config
        else:
            with pytest.raises(ConfigError, match="market topic carries"):
                config.validate()


# -- the heartbeat ------------------------------------------------------------------------


def _up(session: int, last: int | None, opened: int = 0) -> ConnectionSeen:
    return ConnectionSeen(open=True, session=session, last_message_ns=last, opened_ns=opened)


def test_heartbeats_are_ok_while_messages_flow_degraded_on_silence_down_on_loss():
    h = VenueHealth("binance", "backup", silence_ns=5 * NS)
    seq = [
        (1 * NS, [_up(1, None)], VenueState.OK),            # just connected, no message yet
        (2 * NS, [_up(1, 2 * NS)], VenueState.OK),
        (8 * NS, [_up(1, 2 * NS)], VenueState.DEGRADED),    # silent for 6 s > 5 s
        (9 * NS, [ConnectionSeen(open=False, session=1)], VenueState.DOWN),
        (10 * NS, [_up(2, None, 10 * NS)], VenueState.OK),  # reconnected: we saw it down
        (11 * NS, [_up(3, 11 * NS, 11 * NS)], VenueState.DOWN),  # lost and re-made between
        (12 * NS, [_up(3, 12 * NS, 11 * NS)], VenueState.OK),
        (13 * NS, [_up(3, 13 * NS), _up(1, 13 * NS)], VenueState.OK),  # two connections
        (14 * NS, [_up(3, 14 * NS), ConnectionSeen(open=False)], VenueState.DOWN),
        (15 * NS, [], VenueState.DOWN),                     # no connection at all
    ]
    out = [h.on_check(now, conns) for now, conns, _ in seq]
    assert [s.state for s in out] == [want for _, _, want in seq]
    assert [s.seq for s in out] == list(range(1, len(seq) + 1))
    assert {(s.venue, s.feed) for s in out} == {("binance", "backup")}
    assert [s.ts for s in out] == [now for now, _, _ in seq]
    assert len({s.id for s in out}) == len(out)


def test_heartbeat_state_snapshots_are_independent_and_resuming_equals_not_stopping():
    feed = [(i * NS, [_up(1 + i // 4, i * NS, (i // 4) * 4 * NS)]) for i in range(12)]
    whole = VenueHealth("okx", "primary", silence_ns=NS)
    expected = [whole.on_check(now, c) for now, c in feed]
    first = VenueHealth("okx", "primary", silence_ns=NS)
    for now, c in feed[:6]:
        first.on_check(now, c)
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    kept = copy.deepcopy(snap)
    first.on_check(99 * NS, [])  # later changes do not reach the snapshot
    assert snap == kept
    resumed = VenueHealth("okx", "primary", silence_ns=NS, state=snap)
    assert [resumed.on_check(now, c) for now, c in feed[6:]] == expected[6:]


# -- the command ----------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--exchange", "kraken", "--symbols", PERP, "--channels", "trades"],
     "riskguard feed: feed --exchange: one of binance-futures, bybit, deribit, okx; "
     "got 'kraken'"),
    (["--exchange", "okx", "--symbols", PERP, "--channels", "index"],
     "riskguard feed: feed --channels: okx serves candles, funding, l1, liquidations, "
     "open_interest, trades; got 'index'"),
    (["--exchange", "okx", "--symbols", PERP],
     "riskguard feed: feed --channels: a value (riskguard feed --list shows the exchanges, "
     "their channels and symbols); got nothing"),
    (["--exchange", "okx", "--symbols", PERP, "--channels", "trades", "--heartbeat", "0"],
     "riskguard feed: feed --heartbeat: a number of seconds > 0; got 0.0"),
    (["--exchange", "okx", "--symbols", PERP, "--channels", "trades", "--brokers",
      "127.0.0.1:1"],
     "riskguard feed: cannot reach Kafka at 127.0.0.1:1: connection refused; is Kafka "
     "running there? Set --brokers HOST:PORT (or [kafka] bootstrap in --config), or start "
     "a dev broker with: riskguard broker start"),
])
def test_a_bad_invocation_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["feed", *argv]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_list_shows_each_exchange_its_venue_symbols_and_channels(capsys):
    assert main(["feed", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["exchange", "venue", "symbols", "like", "channels"]
    assert lines[1].split() == ["binance-futures", "binance", "BTC-USDT-PERP",
                                "trades,l1,funding,liquidations,open_interest,candles"]
    assert len(lines) == 1 + len(EXCHANGES)


def test_an_exchange_id_that_is_not_utf8_is_a_dead_letter_not_a_stopped_bridge():
    """A lone surrogate (JSON's "\\ud800", which some parsers let through) in a trade id
    used to raise out of the mapper, which the bridge takes for a failed delivery."""
    t = Trade(cf.OKX, PERP, cf.BUY, Decimal("1"), Decimal("2"), T, id="a\ud800",
              raw={"tradeId": "a\ud800"})
    dl = _map("trades", t, exchange="okx")
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.step, dl.topic) == ("validation", "feed", "feed.okx")
    assert "UnicodeEncodeError" in dl.found and dl.raw
