"""The wire contract: schema files, round trips, and the decode boundary's reasons."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.schemas import ALL_TYPES, Codec, DeadLetter, Trade, decode, encode, tag_of
from riskguard.schemas.jsonschema import JSON_DIR, drift
from riskguard.schemas.names import MARKET_NAME_RULE

from tests.strategies import records


def test_checked_in_json_schemas_match_the_structs() -> None:
    """Regenerating the JSON Schemas from the structs changes nothing on disk."""
    stale = drift()
    assert stale == [], (
        f"schema files out of date: {stale}; run python -m riskguard.schemas.jsonschema"
    )


def test_every_record_type_has_a_schema_file() -> None:
    """Non-Python subscribers find one schema per record type."""
    names = {p.name for p in JSON_DIR.glob("*.json")}
    assert {f"{tag_of(t)}.v1.json" for t in ALL_TYPES} <= names


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_any_struct_that_encodes_decodes_to_an_equal_struct(cls: type, data: st.DataObject) -> None:
    """Property: decode(encode(x)) == x for every record type."""
    rec = data.draw(records(cls))
    out = decode("t", encode(rec))
    assert not isinstance(out, DeadLetter) or cls is DeadLetter, out
    assert out == rec


def test_decode_caps_size_before_parsing() -> None:
    """An oversize message is refused by length without being parsed."""
    codec = Codec(max_bytes=100, clock=lambda: 5)
    dl = codec.decode("t", b"{" + b" " * 200 + b"}", partition=2, offset=9)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.expected, dl.found, dl.partition, dl.offset, dl.ts) == (
        "oversize", "at most 100 bytes", "202 bytes", 2, 9, 5,
    )


def test_records_are_frozen() -> None:
    """Wire records cannot be changed after construction."""
    t = Trade(id="a", venue="v", instrument="i", ts=1, price=1.0, qty=1.0, side="buy")
    with pytest.raises(AttributeError):
        t.price = 2.0  # type: ignore[misc]


def test_decoding_validates_in_one_pass_to_the_typed_record() -> None:
    """A valid trade decodes straight into a Trade with enum and float fields typed."""
    raw = msgspec.json.encode({
        "type": "trade", "id": "x", "venue": "okx", "instrument": "BTC-USDT",
        "ts": 10, "price": 1.5, "qty": 2, "side": "sell",
    })
    rec = decode("t", raw)
    assert isinstance(rec, Trade)
    assert rec.qty == 2.0 and rec.side.value == "sell"


def test_an_exposure_whose_instrument_lists_disagree_is_a_dead_letter() -> None:
    """The per-instrument notionals are two aligned lists; a misaligned pair is refused."""
    raw = (b'{"type":"exposure","counterparty":"okx","ts":1,"gross_notional":1.0,'
           b'"net_notional":1.0,"instruments":["BTC-PERP","ETH-PERP"],'
           b'"instrument_notionals":[1.0]}')
    dl = Codec(clock=lambda: 3).decode("exposures", raw, offset=4)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.offset, dl.raw) == ("validation", 4, raw)
    assert "instruments (2) and instrument_notionals (1)" in dl.found


def _trade_with(**names: str) -> bytes:
    doc = {"type": "trade", "id": "x", "venue": "okx", "instrument": "BTC-USDT", "ts": 10,
           "price": 1.5, "qty": 2, "side": "sell", **names}
    return msgspec.json.encode(doc)


@pytest.mark.parametrize(("field", "value"), [
    ("venue", "ok x"), ("instrument", "BTC/USDT\n"), ("feed", "prim*ary"), ("venue", "é"),
    ("instrument", "BTC/USDT"), ("venue", ".."), ("venue", "../../etc"), ("instrument", ".x"),
])
def test_a_market_name_outside_the_name_pattern_is_a_dead_letter(field: str, value: str) -> None:
    """Market data's names (checked after decoding, cached) refuse what ``Name`` refuses,
    a trailing newline included, with the field, the pattern and the value."""
    codec = Codec(clock=lambda: 3)
    raw = _trade_with(**{field: value})
    dl = codec.decode("market", raw, partition=1, offset=8)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.path, dl.found, dl.raw, dl.offset) == (
        "validation", f"$.{field}", value, raw, 8)
    assert dl.expected == f"a market name ({MARKET_NAME_RULE})" and dl.detail
    # a bad name is never remembered: the same record is refused again
    assert isinstance(codec.decode("market", raw), DeadLetter)


def test_market_names_are_checked_once_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Valid names are remembered per codec; a full cache is emptied, never grown past
    its bound, and names are checked again after that."""
    import riskguard.schemas.codec as codec_mod

    monkeypatch.setattr(codec_mod, "NAMES_CACHED", 4)
    codec = Codec()
    assert isinstance(codec.decode("market", _trade_with()), Trade)
    assert codec._names_ok == {"okx", "BTC-USDT", "primary"}
    for k in range(5):
        rec = codec.decode("market", _trade_with(instrument=f"I{k}"))
        assert isinstance(rec, Trade) and rec.instrument == f"I{k}"
        assert len(codec._names_ok) <= 4
    assert isinstance(codec.decode("market", _trade_with(venue="bad venue")), DeadLetter)


def test_the_future_check_can_take_one_clock_reading_for_a_whole_fetch() -> None:
    """``check(..., now)`` uses the caller's reading (the Kafka source reads the clock once
    per fetch) and judges late and future records as a per-record reading would."""
    from riskguard.schemas.time_policy import EventTimePolicy

    def no_clock() -> int:
        raise AssertionError("the clock is read once per fetch by the caller")

    wm = EventTimePolicy(max_lateness_ns=10, max_future_skew_ns=5, clock=no_clock,
                         max_lead_ns=0).start()
    t = lambda ts: Trade(id="a", venue="v", instrument="i", ts=ts, price=1.0, qty=1.0,  # noqa: E731
                         side="buy")
    assert wm.check(t(100), b"r", "m", 0, 1, now=100) == t(100)
    future = wm.check(t(106), b"r", "m", 0, 2, now=100)
    late = wm.check(t(89), b"r", "m", 0, 3, now=100)
    assert (future.reason, future.offset, late.reason, late.offset) == ("future", 2, "late", 3)
    assert wm.check(t(105), b"r", "m", 0, 4, now=100) == t(105) and wm.max_ts == 105


@pytest.mark.parametrize(("tag", "field", "doc"), [
    ("fill", "venue", {"id": "f", "counterparty": "c", "instrument": "I", "side": "buy",
                       "qty": 1.0, "price": 1.0, "ts": 1}),
    ("fill", "counterparty", {"id": "f", "venue": "v", "instrument": "I", "side": "buy",
                              "qty": 1.0, "price": 1.0, "ts": 1}),
])
def test_no_name_takes_a_trailing_newline(tag: str, field: str, doc: dict) -> None:
    """Every name pattern ends at the end of the string: Python's "$" alone also matched
    before a final newline, so "okx\n" passed as a name outside market data."""
    raw = msgspec.json.encode({"type": tag, field: "okx\n", **doc})
    dl = decode("t", raw)
    assert isinstance(dl, DeadLetter) and dl.path == f"$.{field}", dl
    assert not isinstance(decode("t", msgspec.json.encode({"type": tag, field: "okx", **doc})),
                          DeadLetter)


def test_an_exposure_looks_an_instrument_up_as_its_dict_reads_it() -> None:
    from riskguard.schemas import Exposure

    e = Exposure(counterparty="okx", ts=1, gross_notional=3.0, net_notional=0.0,
                 instruments=["BTC-PERP", "ETH-PERP", "BTC-PERP"],
                 instrument_notionals=[-2.0, 1.0, 5.0])
    by_name = e.notional_by_instrument
    assert [e.instrument_notional(n) for n in by_name] == list(by_name.values())
    assert e.instrument_notional("SOL-PERP") == 0.0
