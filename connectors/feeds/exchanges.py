"""The exchanges ``riskguard feed`` bridges: one table, one entry per exchange.

A record's ``instrument`` is cryptofeed's normalized symbol (``BTC-USDT-PERP``), so the
same market on two venues has the same name. Each venue appears once in the table: two
exchanges feeding one venue would contradict each other's heartbeats.

>>> spec_for("binance-futures").venue, spec_for("binance-futures").channels["l1"]
('binance', 'ticker')
>>> spec_for("kraken")
Traceback (most recent call last):
riskguard.errors.ConfigError: feed --exchange: one of binance-futures, bybit, ...; got 'kraken'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from riskguard.errors import ConfigError

#: riskguard channel -> what it becomes on the wire (the record type's tag)
CHANNELS: Mapping[str, str] = {
    "trades": "trade",
    "l1": "quote",
    "funding": "funding_rate",
    "liquidations": "trade",  # with liquidation=true
    "open_interest": "open_interest",
    "index": "index_price",
    "candles": "bar",
}


@dataclass(frozen=True)
class ExchangeSpec:
    """One exchange the bridge can read.

    ``cryptofeed_id`` is the value of the cryptofeed constant (``cryptofeed.defines``)
    naming the exchange; ``channels`` maps each riskguard channel the exchange serves
    to the cryptofeed channel that carries it (``l1`` is the ``ticker`` where cryptofeed
    has no ``l1_book`` for the exchange). ``quote_size_keys`` names the fields of the
    raw ticker message that hold the best bid and ask sizes, where the exchange sends
    them (cryptofeed's ``Ticker`` has none); quotes from other tickers carry size 0.
    ``candle_flag``: whether cryptofeed's ``Candle.closed`` is the exchange's own word
    (its OKX class passes a volume there, which reads as true).
    """

    name: str
    cryptofeed_id: str
    venue: str
    symbol_example: str
    channels: Mapping[str, str]
    quote_size_keys: tuple[str, str] | None = None
    candle_flag: bool = True


EXCHANGES: Mapping[str, ExchangeSpec] = {spec.name: spec for spec in (
    ExchangeSpec(
        name="binance-futures", cryptofeed_id="BINANCE_FUTURES", venue="binance",
        symbol_example="BTC-USDT-PERP",
        channels={"trades": "trades", "l1": "ticker", "funding": "funding",
                  "liquidations": "liquidations", "open_interest": "open_interest",
                  "candles": "candles"},
        quote_size_keys=("B", "A"),  # bookTicker: best bid qty, best ask qty
    ),
    ExchangeSpec(
        name="bybit", cryptofeed_id="BYBIT", venue="bybit", symbol_example="BTC-USDT-PERP",
        channels={"trades": "trades", "l1": "ticker", "funding": "funding",
                  "liquidations": "liquidations", "open_interest": "open_interest",
                  "index": "index", "candles": "candles"},
    ),
    ExchangeSpec(
        name="okx", cryptofeed_id="OKX", venue="okx", symbol_example="BTC-USDT-PERP",
        channels={"trades": "trades", "l1": "ticker", "funding": "funding",
                  "liquidations": "liquidations", "open_interest": "open_interest",
                  "candles": "candles"},
        candle_flag=False,
    ),
    ExchangeSpec(
        name="deribit", cryptofeed_id="DERIBIT", venue="deribit",
        symbol_example="BTC-USD-PERP",
        channels={"trades": "trades", "l1": "l1_book", "funding": "funding",
                  "liquidations": "liquidations", "open_interest": "open_interest"},
    ),
)}


def spec_for(name: str) -> ExchangeSpec:
    """The table entry for ``name``; a ConfigError naming the choices otherwise."""
    spec = EXCHANGES.get(name)
    if spec is None:
        raise ConfigError("feed --exchange", f"one of {', '.join(sorted(EXCHANGES))}", name)
    return spec


def check_channels(spec: ExchangeSpec, channels: Sequence[str],
                   carried: Mapping[str, bool] | None = None) -> list[str]:
    """``channels`` if ``spec`` serves them all (and the market topic carries what they
    become, per ``carried``: channel -> bool); a ConfigError naming the first that fails.

    >>> check_channels(spec_for("okx"), ["trades", "l1"])
    ['trades', 'l1']
    >>> check_channels(spec_for("deribit"), ["candles"])
    Traceback (most recent call last):
    riskguard.errors.ConfigError: feed --channels: deribit serves funding, l1, ...; got 'candles'
    """
    if not channels:
        raise ConfigError("feed --channels", "at least one channel", "")
    for ch in channels:
        if ch not in CHANNELS:
            raise ConfigError("feed --channels", f"one of {', '.join(CHANNELS)}", ch)
        if ch not in spec.channels:
            raise ConfigError("feed --channels",
                              f"{spec.name} serves {', '.join(sorted(spec.channels))}", ch)
        if carried is not None and not carried.get(ch, True):
            raise ConfigError("feed --channels", f"a channel whose records the guard's "
                              f"market topic carries ({CHANNELS[ch]} is not one of them in "
                              "this version)", ch)
    return list(dict.fromkeys(channels))
