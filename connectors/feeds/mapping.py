"""cryptofeed's normalized records, as riskguard's wire records.

:class:`FeedMapper` turns one cryptofeed object (``cryptofeed.types``: ``Trade``,
``Ticker``, ``L1Book``, ``Funding``, ``Liquidation``, ``OpenInterest``, ``Index``,
``Candle``) into the record its channel becomes, validated by the wire contract's own
decoder; whatever does not fit becomes a :class:`~riskguard.schemas.DeadLetter`
carrying the exchange's raw message, never an exception. It reads the objects'
attributes only, so it imports nothing of cryptofeed.

- ``ts`` is the exchange's ``timestamp`` and ``recv_ts`` cryptofeed's
  ``receipt_timestamp``, both float seconds turned into ns to the microsecond (a
  float of seconds since 1970 holds nothing finer). Where the exchange gives no
  timestamp, ``ts`` is the receipt time.
- ``venue`` is the table's venue, ``instrument`` the cryptofeed symbol, ``feed`` the
  bridge's feed name (``primary`` or ``backup``).
- ``id`` is ``venue:instrument:<exchange trade id>`` for trades that have one, else
  ``venue:instrument:<kind>:<ts>``.
- a candle still in progress is no record (:meth:`FeedMapper.record` gives None and
  counts it): cryptofeed passes OKX's unfinished candles on.

>>> from types import SimpleNamespace as Obj
>>> from decimal import Decimal
>>> from riskguard.connectors.feeds.exchanges import spec_for
>>> mapper = FeedMapper(spec_for("binance-futures"), feed="backup", clock=lambda: 0)
>>> t = Obj(exchange="BINANCE_FUTURES", symbol="BTC-USDT-PERP", side="sell", id="7",
...         amount=Decimal("0.5"), price=Decimal("60000.1"), timestamp=1767225600.123,
...         raw=None)
>>> rec = mapper.record("trades", t, 1767225600.125)
>>> rec.id, rec.venue, rec.instrument, rec.side, rec.qty, rec.ts, rec.recv_ts, rec.feed
('binance:BTC-USDT-PERP:7', 'binance', 'BTC-USDT-PERP', <Side.SELL: 'sell'>, 0.5,
 1767225600123000000, 1767225600125000000, 'backup')
>>> bad = Obj(exchange="BINANCE_FUTURES", symbol="BTC-USDT-PERP", side="sell", id="8",
...           amount=Decimal("0"), price=Decimal("1"), timestamp=1.0, raw={"q": "0"})
>>> dl = mapper.record("trades", bad, 1.0)
>>> dl.reason, dl.path, dl.step, dl.topic, dl.raw
('validation', '$.qty', 'feed', 'feed.binance-futures', b'{"q":"0"}')
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
import orjson
from riskguard.connectors.feeds.exchanges import ExchangeSpec
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import Record
from riskguard.schemas.codec import Codec, encode
from riskguard.schemas.market import (
    MARKET_TYPES,
    Bar,
    FundingRate,
    IndexPrice,
    OpenInterest,
    Quote,
    Side,
    Trade,
)
from riskguard.schemas.names import normalise_name

_INTERVAL = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
NS = 1_000_000_000
_MAX_ID_KEYS = 65_536


def seconds_to_ns(seconds: float | Decimal | None) -> int | None:
    """Float seconds since 1970 as ns, to the microsecond; None stays None.

    >>> seconds_to_ns(1767225600.123), seconds_to_ns(None)
    (1767225600123000000, None)
    """
    if seconds is None:
        return None
    return round(float(seconds) * 1_000_000) * 1_000  # NaN and infinity raise here


def interval_ns(interval: str) -> int | None:
    """A candle interval (``1m``, ``4h``, ``1d``, ``1w``) in ns; None for months (``1M``),
    whose length varies.

    >>> interval_ns("1m"), interval_ns("4h"), interval_ns("1M")
    (60000000000, 14400000000000, None)
    """
    m = _INTERVAL.match(interval)
    return int(m.group(1)) * _UNIT_S[m.group(2)] * NS if m else None


class _Unfit(Exception):
    """A field the source message cannot fill: becomes a dead letter naming it."""

    def __init__(self, path: str, expected: str, found: Any) -> None:
        super().__init__(path)
        self.path, self.expected, self.found = path, expected, repr(found)


def _num(value: Any, path: str) -> float:
    if value is None:
        raise _Unfit(path, "a number", value)
    return float(value)


def _opt(value: Any, path: str) -> float | None:
    """An optional number: None stays None; NaN or infinity is unfit, never "none"."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:  # a signalling NaN
        number = math.nan
    if not math.isfinite(number):
        raise _Unfit(path, "a finite number or none", value)
    return number


def _okx_confirmed(raw: Any) -> bool | None:
    """OKX's own word on a candle push: its rows' 9th field ``confirm`` is "1" once the
    candle is closed, "0" while it is in progress; None if ``raw`` gives no such rows."""
    rows = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(rows, list) or not rows:
        return None
    flags = [row[8] if isinstance(row, list) and len(row) > 8 else None for row in rows]
    if any(f not in ("0", "1") for f in flags):
        return None
    return all(f == "1" for f in flags)  # cryptofeed gives every row the first's start


class FeedMapper:
    """cryptofeed objects of one exchange -> validated riskguard records (or dead letters).

    ``clock`` (ns) stamps dead letters only.
    """

    def __init__(self, spec: ExchangeSpec, *, feed: str = "primary",
                 clock: Callable[[], int] = time.time_ns,
                 aliases: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.venue = spec.venue
        self.feed = feed
        self.aliases = dict(aliases or {})
        self.source = f"feed.{spec.name}"
        self._codec = Codec(MARKET_TYPES, clock=clock)
        self.unfinished = 0  # candles still in progress, passed over
        self._last_ts: dict[tuple[Any, str], tuple[int, int]] = {}  # id counters
        self._build: dict[str, Callable[[Any, int, int | None], Record | None]] = {
            "trades": self._trade, "liquidations": self._liquidation, "l1": self._quote,
            "funding": self._funding, "open_interest": self._open_interest,
            "index": self._index, "candles": self._bar,
        }

    def record(self, channel: str, obj: Any, receipt_ts: float | None
               ) -> Record | DeadLetter | None:
        """The record ``obj`` of riskguard channel ``channel`` becomes; never raises (a
        receipt time that is no time, NaN say, is a dead letter too). None for a candle
        still in progress (counted in ``unfinished``): no record, and no fault."""
        try:
            recv = seconds_to_ns(receipt_ts)
            ts = seconds_to_ns(getattr(obj, "timestamp", None))
            if ts is None:
                ts = recv
            if ts is None:
                raise _Unfit("$.ts", "an exchange or a receipt timestamp", None)
            rec = self._build[channel](obj, ts, recv)
            if rec is None:
                self.unfinished += 1
                return None
            wire = encode(rec)  # a text that is not UTF-8 (a lone surrogate) raises here
        except _Unfit as bad:
            return self._dead(obj, "validation", bad.path, bad.expected, bad.found)
        except Exception as err:  # any attribute a message lacks is a dead letter
            return self._dead(obj, "validation", "$", f"a {channel} message",
                              f"{type(err).__name__}: {err}")
        out = self._codec.decode(self.source, wire)
        if isinstance(out, DeadLetter):
            return self._dead(obj, out.reason, out.path, out.expected, out.found)
        return out

    def _id(self, obj: Any, kind: str, ts: int) -> str:
        """``venue:symbol:kind:ts``, then ``:1``, ``:2``... for more of one symbol and kind
        in the same microsecond (a message without an exchange id)."""
        key = (obj.symbol, kind)
        last = self._last_ts.get(key)
        n = last[1] + 1 if last is not None and last[0] == ts else 0
        if len(self._last_ts) >= _MAX_ID_KEYS and last is None:
            self._last_ts.clear()  # the symbols are the subscription's: never in practice
        self._last_ts[key] = (ts, n)
        base = f"{self.venue}:{obj.symbol}:{kind}:{ts}"
        return f"{base}:{n}" if n else base

    def _instrument(self, symbol: Any) -> str:
        """The exchange's symbol as a market name (``BTC/USDT`` -> ``BTC-USDT``, aliases
        applied), or a dead letter saying why it is none."""
        if not isinstance(symbol, str) or not symbol:  # str(None) is no market
            raise _Unfit("$.instrument", "a market name", symbol)
        try:
            return normalise_name(symbol, self.aliases)
        except ValueError as err:
            raise _Unfit("$.instrument", "a market name", str(err)) from None

    def _common(self, obj: Any, kind: str, ts: int, recv: int | None) -> dict[str, Any]:
        return {"id": self._id(obj, kind, ts), "venue": self.venue,
                "instrument": self._instrument(obj.symbol), "ts": ts, "recv_ts": recv,
                "feed": self.feed}

    def _trade(self, obj: Any, ts: int, recv: int | None) -> Record:
        common = self._common(obj, "t", ts, recv)
        if obj.id:
            common["id"] = f"{self.venue}:{obj.symbol}:{obj.id}"
        return Trade(**common, price=_num(obj.price, "$.price"),
                     qty=_num(obj.amount, "$.qty"), side=Side(obj.side))

    def _liquidation(self, obj: Any, ts: int, recv: int | None) -> Record:
        common = self._common(obj, "liq", ts, recv)
        if obj.id:
            common["id"] = f"{self.venue}:{obj.symbol}:liq:{obj.id}"
        return Trade(**common, price=_num(obj.price, "$.price"),
                     qty=_num(obj.quantity, "$.qty"), side=Side(obj.side), liquidation=True)

    def _quote(self, obj: Any, ts: int, recv: int | None) -> Record:
        common = self._common(obj, "q", ts, recv)
        if hasattr(obj, "bid_price"):  # an L1Book: the sizes are there
            return Quote(**common, bid=_num(obj.bid_price, "$.bid"),
                         bid_size=_num(obj.bid_size, "$.bid_size"),
                         ask=_num(obj.ask_price, "$.ask"),
                         ask_size=_num(obj.ask_size, "$.ask_size"))
        bid_size = ask_size = 0.0  # a ticker without sizes: 0, "not given"
        keys, raw = self.spec.quote_size_keys, obj.raw
        if keys is not None and isinstance(raw, dict) and keys[0] in raw and keys[1] in raw:
            bid_size = _num(raw[keys[0]], "$.bid_size")
            ask_size = _num(raw[keys[1]], "$.ask_size")
        return Quote(**common, bid=_num(obj.bid, "$.bid"), bid_size=bid_size,
                     ask=_num(obj.ask, "$.ask"), ask_size=ask_size)

    def _funding(self, obj: Any, ts: int, recv: int | None) -> Record:
        extra: dict[str, Any] = {}
        predicted = getattr(obj, "predicted_rate", None)
        if predicted is not None and "predicted_rate" in FundingRate.__struct_fields__:
            extra["predicted_rate"] = _opt(predicted, "$.predicted_rate")
        mark = _opt(obj.mark_price, "$.mark_price")
        return FundingRate(**self._common(obj, "f", ts, recv), rate=_num(obj.rate, "$.rate"),
                           mark_price=mark or None,  # some venues send 0 for "none"
                           next_funding_ts=seconds_to_ns(obj.next_funding_time), **extra)

    def _open_interest(self, obj: Any, ts: int, recv: int | None) -> Record:
        return OpenInterest(**self._common(obj, "oi", ts, recv),
                            open_interest=_num(obj.open_interest, "$.open_interest"))

    def _index(self, obj: Any, ts: int, recv: int | None) -> Record:
        return IndexPrice(**self._common(obj, "ix", ts, recv), price=_num(obj.price, "$.price"))

    def _bar(self, obj: Any, _ts: int, recv: int | None) -> Record | None:
        start = seconds_to_ns(obj.start)
        if start is None:
            raise _Unfit("$.start", "a start time", None)
        step = interval_ns(obj.interval)
        # [start, end): the interval's length where it is fixed, else the stop time
        # rounded up to the second (venues give the last ms of the bar, or its end)
        end = start + step if step else math.ceil(float(obj.stop)) * NS
        if not _closed(obj, end, recv, self.spec.candle_flag):
            return None
        return Bar(**self._common(obj, "bar", end, recv), start=start,
                   interval_ns=end - start, open=_num(obj.open, "$.open"),
                   high=_num(obj.high, "$.high"), low=_num(obj.low, "$.low"),
                   close=_num(obj.close, "$.close"), volume=_num(obj.volume, "$.volume"),
                   trades=obj.trades if isinstance(obj.trades, int) else None)

    def _dead(self, obj: Any, reason: str, path: str, expected: str, found: str) -> DeadLetter:
        return DeadLetter.of(topic=self.source, ts=self._codec.clock(), reason=reason,
                             path=path, expected=expected, found=found, step="feed",
                             raw=raw_bytes(obj))


def _closed(candle: Any, end: int, recv: int | None, flag: bool) -> bool:
    """Whether a candle is closed: ``flag`` says whether its ``closed`` is the exchange's
    word (Binance, Bybit); else OKX's ``confirm`` in the raw push says, and without one it
    is closed only if received at or after its end (an exchange's clock may be ahead)."""
    if flag:
        return bool(candle.closed)
    confirmed = _okx_confirmed(getattr(candle, "raw", None))
    if confirmed is not None:
        return confirmed
    return recv is not None and recv >= end


def raw_bytes(obj: Any) -> bytes:
    """The exchange's message behind ``obj`` as JSON (cryptofeed keeps it as ``raw``), else
    the normalized object's fields.

    >>> from types import SimpleNamespace as Obj
    >>> raw_bytes(Obj(raw={"p": Decimal("1.5")}))
    b'{"p":"1.5"}'
    """
    raw = getattr(obj, "raw", None)
    try:
        if raw is None:
            to_dict = getattr(obj, "to_dict", None)
            raw = to_dict() if to_dict is not None else {}
        return orjson.dumps(raw, default=str)
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate is no UTF-8: escaped
        return msgspec.json.encode(repr(obj).encode("utf-8", "backslashreplace").decode())
