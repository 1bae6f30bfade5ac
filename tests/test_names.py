"""One name grammar for venues, instruments and scope values, enforced at the wire
contract: what the market topic accepts, the command layer accepts; exchange spellings
(``BTC/USDT``, ``XBT``) are normalised where data comes in, and names that read as paths
are refused everywhere."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as Obj

import msgspec
import pytest
from riskguard.connectors.feeds.exchanges import EXCHANGES
from riskguard.connectors.feeds.mapping import FeedMapper
from riskguard.connectors.formats import open_reader, resolve
from riskguard.schemas import Codec, DeadLetter, Scope, ScopeKind, Trade
from riskguard.schemas.commands import command_scope_problem
from riskguard.schemas.names import is_market_name, normalise_name

from riskguard.errors import ConfigError

TRADE = {"type": "trade", "id": "t", "venue": "kraken", "instrument": "BTC-USD", "ts": 1,
         "price": 1.0, "qty": 1.0, "side": "buy"}
FILL = {"type": "fill", "id": "f", "venue": "okx", "counterparty": "okx",
        "instrument": "BTC-USDT", "side": "buy", "qty": 1, "price": 2, "ts": 1}


@pytest.mark.parametrize("bad", ["BTC/USDT", "..", "../../etc", ".hidden", "a..b", "-x", ""])
def test_the_market_topic_refuses_what_no_command_scope_could_carry(bad: str) -> None:
    codec = Codec()
    for field in ("venue", "instrument"):
        dl = codec.decode("market", msgspec.json.encode({**TRADE, field: bad}))
        assert isinstance(dl, DeadLetter) and dl.path == f"$.{field}", (field, bad)
    dl = codec.decode("fills", msgspec.json.encode({**FILL, "counterparty": bad}))
    assert isinstance(dl, DeadLetter)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"kind":"venue","value":"%s"}' % bad.encode(), type=Scope)


@pytest.mark.parametrize("good", ["BTC-USDT", "BTC-27DEC24-60000-C", "okx", "BTC-USDT:USDT",
                                  "1000PEPE-USDT", "ETH_USDT", "x.y"])
def test_every_market_name_the_market_topic_takes_a_command_scope_takes(good: str) -> None:
    assert isinstance(Codec().decode("market", msgspec.json.encode(
        {**TRADE, "instrument": good})), Trade)
    scope = Scope(kind=ScopeKind.INSTRUMENT, value=good, venue="okx")
    assert command_scope_problem(scope) is None and is_market_name(good)


def test_exchange_spellings_are_normalised_or_refused() -> None:
    assert normalise_name("BTC/USDT") == "BTC-USDT"
    assert normalise_name("BTC/USDT:USDT") == "BTC-USDT:USDT"
    assert normalise_name("XBT/USD", {"XBT": "BTC"}) == "BTC-USD"
    for bad in ("../../etc", "..", "a/b/c", "BTC/"):
        with pytest.raises(ValueError, match="market name"):
            normalise_name(bad)


def test_a_feed_normalises_the_exchanges_symbol_and_never_raises() -> None:
    spec = EXCHANGES["binance-futures"]
    mapper = FeedMapper(spec, clock=lambda: 5, aliases={"XBT": "BTC"})
    t = Obj(symbol="XBT/USDT", side="buy", id="1", price=1.0, amount=2.0, timestamp=1.5,
            raw={})
    rec = mapper.record("trades", t, 1.6)
    assert isinstance(rec, Trade) and rec.instrument == "BTC-USDT"
    bad = mapper.record("trades", Obj(**{**t.__dict__, "symbol": "../../etc"}), 1.6)
    assert isinstance(bad, DeadLetter) and bad.path == "$.instrument"
    for receipt in (float("nan"), float("inf")):
        assert isinstance(mapper.record("trades", t, receipt), DeadLetter)


def test_a_file_reader_normalises_a_symbol_column_and_refuses_a_path(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text("timestamp,symbol,open,high,low,close,volume\n"
                   "2024-01-01 00:00:00,BTC/USDT,1,2,1,2,3\n"
                   "2024-01-01 00:01:00,BTC/USDT,1,2,1,2,3\n"
                   "2024-01-01 00:02:00,../../etc,1,2,1,2,3\n")
    reader = open_reader(csv, fmt="ohlcv_csv", venue="kraken")
    out = [r for _, _, r in reader.lines()]
    assert [getattr(r, "instrument", None) for r in out[:2]] == ["BTC-USDT", "BTC-USDT"]
    assert isinstance(out[2], DeadLetter) and "market name" in out[2].found + out[2].detail \
        + out[2].expected


def test_an_instrument_flag_is_normalised_and_a_path_like_venue_refused(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text("timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,1,2,3\n"
                   "2024-01-01 00:01:00,1,2,1,2,3\n")
    assert resolve(csv, "ohlcv_csv", venue="kraken", instrument="XBT/USD")[1].instrument \
        == "XBT-USD"
    with pytest.raises(ConfigError, match=r"replay\.venue: a market name"):
        resolve(csv, "ohlcv_csv", venue="..", instrument="BTC-USD")


def test_the_name_memo_holds_no_over_long_value() -> None:
    from riskguard.schemas.names import name_problem

    name_problem.cache_clear()
    for i in range(50):  # a file's cells reach it whatever their length
        assert "1-64 characters" in name_problem("X" * 100_000 + str(i))
    assert name_problem.cache_info().currsize == 0
    assert name_problem("..") == name_problem("..") and name_problem.cache_info().hits == 1
