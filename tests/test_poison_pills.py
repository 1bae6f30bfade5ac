"""Poison pills at every decode boundary: refused with a reason, never a crash, never lost.

Deeply nested JSON, inputs of any size, invalid UTF-8 and decoder failures nobody
foresaw, through the codec, the envelope parser, the subscriber and the command-log
scan (the last two against the real dev broker).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from riskguard.connectors.command_log import last_signed_seq, signed_of
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.subscriber import CommandSubscriber, Rejection
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.signing import SignConfig, SignLogic, SignState, crypto
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas import Codec, DeadLetter, Trade, decode, encode
from riskguard.schemas.codec import DEFAULT_MAX_BYTES
from signing_fixtures import AUD, ENGINE, T0, command, trust_store

from riskguard.errors import VerificationError
from tests.kafka_helpers import produce

ROOT = Path(__file__).resolve().parents[1]
GOOD_TRADE = encode(Trade(id="t1", venue="okx", instrument="BTC-USDT", ts=1, price=1.0,
                          qty=1.0, side="buy"))
# The shapes an outside probe sent: ~4 KB that used to end the process reading them.
DEEP = {
    "arrays": b"[" * 2000 + b"]" * 2000,
    "objects": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "unclosed": b"[" * 2000,
    "inside a trade": GOOD_TRADE[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}",
    "inside an envelope": b'{"payload_type":"x","payload":"","signatures":[],"x":'
                          + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
}


def _max_depth(data: bytes) -> int:
    """Reference: the deepest nesting of brackets outside JSON strings, one byte at a time."""
    depth = deepest = 0
    in_str = escaped = False
    for b in data:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif b in b"]}":
            depth -= 1
    return deepest


# -- the shared depth check ------------------------------------------------------------

def test_the_depth_check_passes_nesting_up_to_the_limit_and_refuses_beyond_it() -> None:
    from riskguard.schemas.json_limits import MAX_JSON_DEPTH, check_json_depth

    assert MAX_JSON_DEPTH == 32
    for opener, closer in ((b"[", b"]"), (b'{"k":', b"}")):
        ok = opener * 32 + b"1" + closer * 32
        assert check_json_depth(ok) is None
        assert check_json_depth(opener + ok + closer) == "JSON nested more than 32 levels deep"
    assert check_json_depth(b"[" * 10, max_depth=9) is not None
    assert check_json_depth(bytearray(b"[" * 40)) is not None
    assert check_json_depth(memoryview(b"[" * 40)) is not None


def test_brackets_inside_strings_and_escaped_quotes_do_not_count() -> None:
    from riskguard.schemas.json_limits import check_json_depth

    text = b'{"note":"' + b"[{" * 500 + b'\\"' + b"[" * 50 + b'\\\\","n":[[1]]}'
    assert _max_depth(text) == 3
    assert check_json_depth(text) is None
    assert decode("t", text).reason == "unknown_type"  # parsed, refused for what it is
    # a quote after an escaped backslash does end the string: what follows counts
    assert check_json_depth(b'["\\\\",' + b"[" * 40 + b"]" * 41) is not None


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab'),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(
                        alphabet='[]{}"\\a', max_size=3), c, max_size=3), max_leaves=60),
       st.integers(min_value=0, max_value=8))
def test_on_valid_json_the_check_refuses_exactly_what_nests_too_deep(doc: Any, limit: int
                                                                      ) -> None:
    """Property: on any JSON document the check agrees with a byte-by-byte scan."""
    from riskguard.schemas.json_limits import check_json_depth

    data = json.dumps(doc).encode()
    assert (check_json_depth(data, limit) is None) == (_max_depth(data) <= limit)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b":", b","]),
                max_size=120).map(b"".join),
       st.integers(min_value=0, max_value=12))
def test_on_any_bytes_the_check_never_lets_too_deep_nesting_through(data: bytes, limit: int
                                                                     ) -> None:
    """Property: on arbitrary (mostly malformed) bytes, passing means not too deep."""
    from riskguard.schemas.json_limits import check_json_depth

    if check_json_depth(data, limit) is None:
        assert _max_depth(data) <= limit


# -- the codec ---------------------------------------------------------------------------

@pytest.mark.parametrize("label", sorted(DEEP))
def test_deeply_nested_json_is_a_dead_letter_never_a_crash(label: str) -> None:
    """Nesting that exhausts the parser's recursion is a too_deep dead letter; a top-level
    array is refused at its first byte (not an object) before nesting matters."""
    codec = Codec(clock=lambda: 5)
    dl = codec.decode("market", DEEP[label], partition=1, offset=7)
    assert isinstance(dl, DeadLetter)
    assert (dl.offset, dl.partition, dl.raw) == (7, 1, DEEP[label])
    if label in ("arrays", "unclosed"):
        assert (dl.reason, dl.expected, dl.found) == ("validation", "object", "array")
    else:
        assert (dl.reason, dl.expected) == ("too_deep", "at most 32 levels of nesting")


def _audit(body: bytes) -> bytes:
    return (b'{"type":"audit","record_id":"r","chain":"c","index":0,"ts":1,"kind":"k",'
            b'"operator":"o","operator_version":"1","config_hash":"' + b"0" * 64
            + b'","input_digest":"' + b"0" * 64 + b'","body":' + body + b"}")


def test_free_form_values_nest_at_most_32_deep() -> None:
    """An audit record's body holds any JSON: 32 levels in all decode, one more (which
    the parser itself would take) is too_deep."""
    ok = _audit(b'{"a":' * 31 + b"1" + b"}" * 31)  # the record's own level and 31 in the body
    rec = decode("audit", ok)
    assert type(rec).__name__ == "AuditRecord", rec
    deep = _audit(b'{"a":' * 32 + b"1" + b"}" * 32)
    dl = decode("audit", deep)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.found) == ("too_deep", "JSON nested more than 32 levels deep")


def test_typed_fields_keep_nothing_deeper_than_their_type() -> None:
    """Nesting under a typed field is refused at its first level; under an unknown field
    (within the parser's reach) it is skipped and the record is the same without it."""
    dl = decode("market", GOOD_TRADE.replace(b'"price":1.0', b'"price":' + b"[" * 100
                                             + b"]" * 100))
    assert isinstance(dl, DeadLetter) and (dl.reason, dl.path) == ("validation", "$.price")
    extra = GOOD_TRADE[:-1] + b',"x":' + b"[" * 100 + b"]" * 100 + b"}"
    assert decode("market", extra) == decode("market", GOOD_TRADE)


class _Raising:
    def __init__(self, err: BaseException) -> None:
        self.err = err

    def decode(self, data: bytes) -> Any:
        raise self.err


@pytest.mark.parametrize(("err", "reason", "found"), [
    (RecursionError("maximum recursion depth exceeded while deserializing an object"),
     "too_deep", "RecursionError"),
    (MemoryError(), "decode_error", "MemoryError"),
    (OverflowError("int too large"), "decode_error", "OverflowError"),
    (KeyError("surprise"), "decode_error", "KeyError"),
])
def test_any_exception_the_decoder_raises_is_a_dead_letter(
        err: BaseException, reason: str, found: str) -> None:
    """The last resort: whatever decoding raises becomes a dead letter naming its type."""
    codec = Codec(clock=lambda: 5)
    codec._decoder = _Raising(err)  # type: ignore[assignment]
    dl = codec.decode("market", GOOD_TRADE, offset=3)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.found, dl.offset, dl.raw) == (reason, found, 3, GOOD_TRADE)
    assert found in dl.detail


# -- non-UTF-8 -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"type":"trade","id":"\xff"}',
    GOOD_TRADE.replace(b'"okx"', b'"ok\xff"'),
    GOOD_TRADE.replace(b'"t1"', b'"t\xc3"'),  # a truncated two-byte sequence
    b'{"type":"trade","id":"ok\xe2\x82"}',
])
def test_a_non_utf8_dead_letter_names_the_first_invalid_byte_and_its_offset(raw: bytes) -> None:
    bad = _first_invalid(raw)
    dl = decode("market", raw)
    assert isinstance(dl, DeadLetter)
    assert dl.reason == "non_utf8"
    assert dl.found == f"byte 0x{raw[bad]:02x} at {bad}"


def _first_invalid(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    raise AssertionError("valid UTF-8")


def test_the_probe_case_reports_offset_22_not_0() -> None:
    dl = decode("market", b'{"type":"trade","id":"\xff"}')
    assert isinstance(dl, DeadLetter)
    assert dl.found == "byte 0xff at 22"


# -- dead letters always fit ------------------------------------------------------------

def test_a_1_mb_input_gives_a_dead_letter_the_default_codec_reads() -> None:
    """The probe case: 1 MB in, a dead letter of at most 64 KiB out, with the original's
    length and SHA-256, and as much of its start as fits."""
    raw = bytes(range(256)) * 4096
    dl = decode("market", raw, offset=4)
    assert isinstance(dl, DeadLetter) and dl.reason == "oversize"
    wire = encode(dl)
    assert len(wire) <= DEFAULT_MAX_BYTES
    back = decode("dead", wire)
    assert back == dl
    assert (dl.raw_len, dl.raw_sha256, dl.raw_truncated) == (
        len(raw), hashlib.sha256(raw).hexdigest(), True)
    assert raw.startswith(dl.raw) and len(dl.raw) > 40_000


def test_a_small_input_is_kept_whole_and_says_so() -> None:
    dl = decode("market", b"junk")
    assert isinstance(dl, DeadLetter)
    assert (dl.raw, dl.raw_len, dl.raw_truncated) == (b"junk", 4, False)
    assert dl.raw_sha256 == hashlib.sha256(b"junk").hexdigest()


def test_a_dead_letter_written_before_the_new_fields_still_decodes() -> None:
    old = (b'{"type":"dead_letter","v":1,"topic":"t","ts":1,"reason":"malformed",'
           b'"raw":"' + base64.b64encode(b"x") + b'"}')
    dl = decode("dead", old)
    assert isinstance(dl, DeadLetter) and dl.reason == "malformed"
    assert (dl.raw, dl.raw_len, dl.raw_sha256, dl.raw_truncated) == (b"x", None, None, False)


_TEXT = st.text(alphabet=st.sampled_from("a\x00\x1f\"\\é€😀\ud800"), max_size=6000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(min_value=0, max_value=3_000_000), seed=st.binary(min_size=1, max_size=16),
       path=_TEXT, expected=_TEXT, found=_TEXT, detail=_TEXT,
       topic=st.text(max_size=300), offset=st.integers(min_value=-10, max_value=2**63 - 1))
def test_any_dead_letter_encodes_within_64_kib_and_decodes_with_the_default_codec(
        size: int, seed: bytes, path: str, expected: str, found: str, detail: str,
        topic: str, offset: int) -> None:
    """Property: whatever the input and the texts, ``DeadLetter.of`` fits the default cap."""
    raw = (seed * (size // len(seed) + 1))[:size]
    dl = DeadLetter.of(topic=topic, offset=offset, ts=5, reason="malformed", path=path,
                       expected=expected, found=found, detail=detail, raw=raw)
    wire = encode(dl)
    assert len(wire) <= DEFAULT_MAX_BYTES
    back = decode("dead", wire)
    assert isinstance(back, DeadLetter), back
    assert back.reason == "malformed" and raw.startswith(back.raw)
    assert (back.raw_len, back.raw_sha256) == (size, hashlib.sha256(raw).hexdigest())
    assert back.raw_truncated == (len(back.raw) < size)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(min_value=0, max_value=3_000_000), seed=st.binary(min_size=1, max_size=16))
def test_any_input_the_codec_refuses_gives_a_dead_letter_the_default_codec_reads(
        size: int, seed: bytes) -> None:
    """Property: through a codec whose topic allows 4 MB, any input up to 3 MB that is
    refused gives a dead letter of at most 64 KiB."""
    raw = (seed * (size // len(seed) + 1))[:size]
    codec = Codec(topic_max_bytes={"big": 4 << 20})
    for topic in ("big", "market"):
        dl = codec.decode(topic, raw)
        if not isinstance(dl, DeadLetter):
            continue
        wire = encode(dl)
        assert len(wire) <= DEFAULT_MAX_BYTES
        assert decode("dead", wire) == dl


def test_every_maker_of_a_dead_letter_with_raw_bytes_goes_through_the_helper() -> None:
    """A ``DeadLetter(...)`` built directly with ``raw=`` can exceed the cap; makers use
    ``DeadLetter.of(...)``, which truncates and hashes."""
    offenders = []
    for pkg in ("operators", "connectors", "dataflows", "schemas", "riskguard"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            text = f.read_text(encoding="utf-8")
            for m in re.finditer(r"DeadLetter\(", text):
                call = text[m.end(): m.end() + 600]
                depth, end = 1, 0
                for end, ch in enumerate(call):  # noqa: B007 - the end is used below
                    depth += {"(": 1, ")": -1}.get(ch, 0)
                    if depth == 0:
                        break
                rel = f.relative_to(ROOT).as_posix()
                if "raw=" in call[:end]:
                    offenders.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}")
    assert offenders == []


# -- envelopes -----------------------------------------------------------------------------

@pytest.mark.parametrize("label", sorted(DEEP))
def test_a_deeply_nested_envelope_is_a_malformed_envelope_rejection(label: str) -> None:
    with pytest.raises(VerificationError) as info:
        decode_envelope(DEEP[label])
    assert info.value.reason == "malformed_envelope"
    if label != "arrays":  # a top-level array is refused as "not an object" first
        assert info.value.detail.startswith("too_deep")


@pytest.mark.parametrize("err", [RecursionError("deep"), MemoryError(), OverflowError("big"),
                                 KeyError("surprise")])
def test_any_exception_the_envelope_decoder_raises_is_a_malformed_envelope_rejection(
        err: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_env_decoder", _Raising(err))
    with pytest.raises(VerificationError) as info:
        decode_envelope(b"{}")
    assert info.value.reason == "malformed_envelope"
    assert info.value.detail.startswith(f"decode_error: {type(err).__name__}")


def _envelopes(first_seq: int, n: int) -> list[bytes]:
    logic = SignLogic(ENGINE, SignConfig(), SignState(issuer=ENGINE.issuer,
                                                      last_seq=first_seq - 1))
    return [encode_envelope(logic.on_event(command(i))[0])
            for i in range(first_seq, first_seq + n)]


@pytest.mark.parametrize("label", sorted(DEEP))
def test_the_seq_scan_ignores_a_deeply_nested_message(label: str) -> None:
    assert signed_of(DEEP[label], ENGINE.public_key, ENGINE.issuer).seq == 0


def test_the_seq_scan_ignores_a_signed_command_whose_payload_nests_too_deep() -> None:
    """Even under our own key, a payload the scan cannot read counts as nothing."""
    payload = b'{"issuer":"engine-1","seq":9,"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    env = encode_envelope(sign_envelope(PAYLOAD_COMMAND, payload, [ENGINE]))
    assert signed_of(env, ENGINE.public_key, ENGINE.issuer).seq == 0


@pytest.mark.kafka
@pytest.mark.parametrize("poison_first", [True, False])
def test_the_guard_start_scan_reads_past_a_poison_message(
        kafka_bootstrap: str, new_topic: Callable[..., str], poison_first: bool) -> None:
    """A commands topic holding nested-JSON junk beside a signed command still gives that
    command's seq: the poison neither stops start-up nor hides the sequence."""
    topic = new_topic()
    good = _envelopes(5, 1)
    poison = [DEEP["arrays"], DEEP["objects"]]
    produce(kafka_bootstrap, topic, poison + good if poison_first else good + poison)
    got = last_signed_seq(KafkaSettings(bootstrap=kafka_bootstrap), topic, ENGINE.public_key,
                          ENGINE.issuer, idle_s=0.2)
    assert got.seq == 5


# -- the subscriber ---------------------------------------------------------------------

def test_the_subscriber_rejects_a_deeply_nested_message_with_a_reason(tmp_path: Path) -> None:
    rejected: list[Rejection] = []
    sub = CommandSubscriber(trust=trust_store(), audience=AUD, state_path=tmp_path / "s.db",
                            on_command=lambda c: None, on_reject=rejected.append,
                            clock=ManualClock(T0))
    out = sub.handle(DEEP["objects"], partition=0, offset=3)
    assert isinstance(out, Rejection) and out.reason == "malformed_envelope"
    assert sub.state.next_offsets(sub.topic) == {0: 4}  # consumed: a rerun starts past it
    sub.close()


@pytest.mark.parametrize("err", [RecursionError("deep"), MemoryError(), KeyError("surprise")])
def test_an_unforeseen_failure_of_a_check_is_a_rejection_that_consumes_the_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    """The subscriber's last resort: a check raising something other than a refusal
    still refuses the message (reason verify_error, naming the type) and moves on."""
    trust = trust_store()

    def verify(*_a: Any, **_k: Any) -> Any:
        raise err

    monkeypatch.setattr(trust, "verify", verify)
    executed: list[Any] = []
    sub = CommandSubscriber(trust=trust, audience=AUD, state_path=tmp_path / "s.db",
                            on_command=executed.append, clock=ManualClock(T0))
    good = encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(command(1)),
                                         [ENGINE]))
    out = sub.handle(good, partition=0, offset=8)
    assert isinstance(out, Rejection) and out.reason == "verify_error"
    assert out.detail.startswith(type(err).__name__) and executed == []
    assert sub.state.next_offsets(sub.topic) == {0: 9}
    sub.close()


@pytest.mark.kafka
def test_a_poison_message_on_the_commands_topic_is_rejected_once_and_never_blocks(
        tmp_path: Path, kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """Real broker: the poison is rejected (offset committed), the signed command after
    it executes, and a rerun over the same state sees neither again."""
    topic = new_topic()
    aud = AUD.__class__(env=AUD.env, topic=topic)
    cmd = command(1, audience=aud, seq=1)
    good = encode_envelope(sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [ENGINE]))
    produce(kafka_bootstrap, topic, [DEEP["arrays"], DEEP["objects"], good])
    executed: list[str] = []
    rejected: list[Rejection] = []

    def run() -> int:
        with CommandSubscriber(trust=trust_store(), audience=aud, state_path=tmp_path / "s.db",
                               on_command=lambda c: executed.append(c.command_id),
                               on_reject=rejected.append, brokers=kafka_bootstrap, topic=topic,
                               clock=ManualClock(T0)) as sub:
            return sub.poll(idle_timeout_s=2)

    assert run() == 3
    assert executed == [cmd.command_id]
    assert [(r.reason, r.offset) for r in rejected] == [
        ("malformed_envelope", 0), ("malformed_envelope", 1)]
    assert run() == 0  # the rerun starts after everything handled
    assert executed == [cmd.command_id] and len(rejected) == 2
