"""The market tier's parts: ownership by underlying, split valuation, the wire record."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from exposure_pipeline import LocalPipeline
from hypothesis import given, settings
from hypothesis import strategies as st
from risk_flow_app import make_events
from riskguard.connectors.kafka import KeySplit, key_split
from riskguard.dataflows.guard import GuardConfig
from riskguard.dataflows.guard.config import check_tier
from riskguard.dataflows.guard.market import (
    MarketOwners,
    owned_records,
    valuation_records,
)
from riskguard.operators.exposure import (
    CounterpartyLogic,
    ExposureConfig,
    FirmLogic,
    Part,
    Progress,
    Router,
    ShardLogic,
    ShardPlace,
)
from riskguard.operators.exposure.limit_specs import LimitsConfig, LimitSpec, VolScaling
from riskguard.operators.exposure.limits import LimitsLogic
from riskguard.schemas import (
    Balance,
    Bar,
    BookDepth,
    Codec,
    DeadLetter,
    Exposure,
    FeatureVector,
    Fill,
    FundingRate,
    IndexPrice,
    OpenInterest,
    OptionQuote,
    PositionSnapshot,
    PremiumIndexBar,
    Quote,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
    Utilization,
    Valuation,
    VenueStatus,
    decode,
)
from riskguard.schemas.names import MEMO_KEY_LIMIT
from riskguard.schemas.types import MAX_FLOAT
from riskguard.schemas.valuation import VALUATION_CHUNK_BYTES
from test_exposure import worked_config

from riskguard.errors import ConfigError

OWNERS = {"BTC": 0, "ETH": 1}
PRICED = (Trade, Quote, OptionQuote, FundingRate)  # market data keyed venue/instrument


def _owners(cfg: ExposureConfig, index: int, processes: int = 2) -> MarketOwners:
    reg = cfg.validate()

    def underlying_of(name: str) -> str | None:
        spec = reg.get(name)
        return None if spec is None else spec.underlying_asset

    return MarketOwners(index, processes, OWNERS, underlying_of)


def test_owners_follow_the_underlying_on_every_venue_and_hash_the_rest() -> None:
    """An option goes with its underlying, every venue's listing of an instrument with
    it, an undeclared instrument by its name's first part, and a collateral asset or a
    venue's own key by its name (crc32, the same in every process and run)."""
    owners = _owners(worked_config(), 1)
    assert [owners.of_key(k) for k in ("okx/BTC-PERP", "binance/BTC-PERP",
                                       "deribit/BTC-27JUN-60000-C", "okx/ETH-PERP")] == [0, 0, 0, 1]
    assert owners.of_key("okx/XRP-USDT") == owners.of_underlying("XRP")
    assert owners.of_key(b"okx") == owners.of_underlying("okx")
    assert owners.of_key(None) == 0
    assert [owners.owns(n) for n in ("i:ETH-27JUN-3000-P", "i:BTC-USDC", "a:ETH")] == [
        True, False, True]
    again = _owners(worked_config(), 1)
    assert [again.of_underlying(a) for a in ("USDC", "SOL", "XRP")] == [
        owners.of_underlying(a) for a in ("USDC", "SOL", "XRP")]


def test_each_shared_record_is_kept_by_exactly_one_market_process() -> None:
    """Fills, snapshots and balances that every market process reads whole are kept by
    the owner of their instrument (a balance: of its asset), a heartbeat and an index
    price by every process, a dead letter of a whole-read topic by one process."""
    procs = [_owners(worked_config(), i) for i in (0, 1)]
    fill = Fill(id="f", venue="okx", counterparty="okx", instrument="ETH-PERP", side="buy",
                qty=1.0, price=1.0, ts=1)
    bal = Balance(id="b", venue="okx", counterparty="okx", asset="BTC", total=1.0, ts=1)
    hb = VenueStatus(id="h", venue="okx", ts=1)
    ix = IndexPrice(id="i", venue="index", instrument="BTC-USD-INDEX", ts=1, price=1.0)
    dead = [DeadLetter(topic="fills", partition=p, ts=1, reason="malformed") for p in range(4)]
    assert [[o.keeps(r) for o in procs] for r in (fill, bal, hb, ix)] == [
        [False, True], [True, False], [True, True], [True, True]]
    assert [sum(o.keeps(d) for o in procs) for d in dead] == [1, 1, 1, 1]


def test_a_market_record_its_key_misplaced_is_a_dead_letter_not_lost() -> None:
    """The market topic is split by Kafka key: a record keyed for this process whose
    instrument another process owns reaches no one else, so it is dead-lettered, naming
    where it was read."""
    from riskguard.schemas.base import stamp_source

    own = owned_records(_owners(worked_config(), 0), "market")
    eth = Trade(id="t", venue="okx", instrument="ETH-PERP", ts=5, price=1.0, qty=1.0,
                side="buy")
    btc = msgspec.structs.replace(eth, id="u", instrument="BTC-PERP")
    stamp_source(eth, "market", 3, 42)  # as the Kafka source does
    out = own([eth, btc])
    assert out[1] is btc
    dl = out[0]
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.topic, dl.partition, dl.offset, dl.found, decode("t", dl.raw)) == (
        "misplaced", "market", 3, 42, "okx/ETH-PERP", eth)


MARKET_PROCESS_0 = msgspec.convert(
    {"keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
     "tier": {"role": "market", "market_processes": 2, "index": 0,
              "owners": {"BTC": 0, "ETH": 1}}}, GuardConfig)
"""Market process 0 of two: BTC its own, ETH process 1's."""


def _market_process_dead_letters(monkeypatch: pytest.MonkeyPatch, rec: Any,
                                 offset: int) -> list[DeadLetter]:
    """Run :data:`MARKET_PROCESS_0`'s flow on ``rec``, read from the market topic's
    partition 0 at ``offset``, its Kafka input and outputs swapped for testing ones: the
    dead letters it wrote."""
    import bytewax.operators as op
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.dataflows.guard import market
    from riskguard.operators.core.base import split_dead_letters
    from riskguard.schemas.base import stamp_source

    cfg = MARKET_PROCESS_0
    stamp_source(rec, cfg.topic("market"), 0, offset)
    outs: dict[str, list[Any]] = {}

    def one_record(flow: Any, _cfg: Any, _streams: Any, _clock: Any, split: Any = None) -> Any:
        return split_dead_letters("in_split", op.input("in", flow, TestingSource([rec])))

    def kept(step_id: str, up: Any, **_kw: Any) -> None:
        op.output(step_id, up, TestingSink(outs.setdefault(step_id, [])))

    monkeypatch.setattr(market, "guard_input", one_record)
    monkeypatch.setattr(market, "kafka_output", kept)
    run_main(market.market_flow(cfg, lambda: 10**18))
    return [d for d in outs["dead_letters"] if isinstance(d, DeadLetter)]


def test_a_market_process_counts_the_misplaced_records_it_dead_letters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The market process's flow, its Kafka input and outputs swapped for testing ones:
    a misplaced trade reaches the dead-letter output and is counted."""
    from riskguard.operators.core.metrics import DEAD_LETTERS

    eth = Trade(id="t1", venue="okx", instrument="ETH-PERP", ts=10**18, price=1.0, qty=1.0,
                side="buy")
    topic = MARKET_PROCESS_0.topic("market")
    before = DEAD_LETTERS.labels(topic, "misplaced")._value.get()
    dead = _market_process_dead_letters(monkeypatch, eth, 7)
    assert [(d.reason, d.partition, d.offset) for d in dead] == [("misplaced", 0, 7)]
    assert DEAD_LETTERS.labels(topic, "misplaced")._value.get() == before + 1


def _detection_only_records(instrument: str) -> list[Any]:
    """One record of each market type that feeds detection only (not valuation)."""
    base = {"venue": "okx", "instrument": instrument, "ts": 10**18}
    return [
        Bar(id="b1", start=10**18 - 60, interval_ns=60, open=1.0, high=1.0, low=1.0,
            close=1.0, **base),
        PremiumIndexBar(id="p1", start=10**18 - 60, interval_ns=60, open=0.0, high=0.0,
                        low=0.0, close=0.0, **base),
        OpenInterest(id="o1", open_interest=5.0, **base),
        BookDepth(id="d1", bands_pct=[1.0], bid_depth=[2.0], ask_depth=[2.0], **base),
    ]


@pytest.mark.parametrize("rec", _detection_only_records("ETH-PERP"),
                         ids=lambda r: type(r).__name__)
def test_a_misplaced_detection_only_record_is_a_dead_letter_in_a_market_process(
        monkeypatch: pytest.MonkeyPatch, rec: Any) -> None:
    """A bar, premium-index bar, open interest or book depth keyed for process 0 but of
    an underlying process 1 owns reaches no other process: like a trade, it is a
    ``misplaced`` dead letter (the market process's flow, its Kafka input and outputs
    swapped for testing ones), never detected on a key this process does not own."""
    dead = _market_process_dead_letters(monkeypatch, rec, 9)
    assert [(d.reason, d.partition, d.offset, d.found) for d in dead] == [
        ("misplaced", 0, 9, "okx/ETH-PERP")]
    assert decode("t", dead[0].raw) == rec


def test_a_router_of_a_market_process_routes_to_its_own_shards_only() -> None:
    """Its shard keys carry its prefix; an FX rate goes to its shards that need it;
    market data of another process's instrument goes nowhere; a fill or balance of
    another process's is a ``not_owned`` dead letter, never a silent drop."""
    cfg = worked_config()
    reg = cfg.validate()
    owners = _owners(cfg, 1)
    router = Router(reg, cfg, place=ShardPlace("m1.", owners.owns, 2))
    eth = Trade(id="t", venue="okx", instrument="ETH-PERP", ts=1, price=1.0, qty=1.0,
                side="buy")
    assert [k for k, _ in router.route(eth)] == ["m1.s0"]
    assert router.route(msgspec.structs.replace(eth, instrument="BTC-PERP")) == []
    fx = IndexPrice(id="x", venue="index", instrument="ETH-USD-INDEX", ts=1, price=1.0)
    assert {k for k, _ in router.route(fx)} == {"m1.s0"}
    fill = Fill(id="f", venue="okx", counterparty="okx", instrument="BTC-PERP", side="buy",
                qty=1.0, price=1.0, ts=1)
    bal = Balance(id="b", venue="okx", counterparty="okx", asset="BTC", total=1.0, ts=1)
    assert [getattr(router.route(r), "reason", None) for r in (fill, bal)] == [
        "not_owned", "not_owned"]
    unknown = msgspec.structs.replace(fill, instrument="NOPE")
    assert router.route(unknown).reason == "unknown_instrument"


def _two_market_processes(cfg: ExposureConfig) -> list[tuple[Any, ...]]:
    """Per market process: its index, owners, owned records, router, place and shards."""
    reg = cfg.validate()
    procs = []
    for i in (0, 1):
        owners = _owners(cfg, i)
        place = ShardPlace(f"m{i}.", owners.owns, 2)
        procs.append((i, owners, owned_records(owners, "market"),
                      Router(reg, cfg, place=place), place, {}))
    return procs


def _stage2_exposures(events: list[Any], cfg: ExposureConfig, *,
                      strict: bool = True, wire: bool = False) -> Iterator[Exposure]:
    """Each exposure stage 2 sums from two market processes' valuations, one event at a
    time (``strict``: no record a process owns is a dead letter; ``wire``: each part
    travels as the Valuation record the firm process reads)."""
    reg = cfg.validate()
    procs = _two_market_processes(cfg)
    cps: dict[str, CounterpartyLogic] = {}
    for ev in events:
        for i, owners, own, router, place, shards in procs:
            # the market topic is split by its Kafka key; the others are read whole
            if isinstance(ev, PRICED) and owners.of_key(f"{ev.venue}/{ev.instrument}") != i:
                continue
            for rec in own([ev]):
                assert not (strict and isinstance(rec, DeadLetter)), rec
                routed = router.route(rec)
                if isinstance(routed, DeadLetter):
                    continue
                for key, item in routed:
                    logic = shards.setdefault(key, ShardLogic(cfg, reg, place=place))
                    for p in _over_the_wire(logic.on_event(item), i) if wire else (
                            logic.on_event(item)):
                        if isinstance(p, Part):
                            cp = cps.setdefault(p.counterparty, CounterpartyLogic(cfg))
                            yield from (e for e in cp.on_event(p) if isinstance(e, Exposure))


def _over_the_wire(made: list[Any], index: int) -> list[Any]:
    """A market process's stage-1 output as the firm process decodes it."""
    records = valuation_records(f"market/{index}")(made)
    decoded = [Codec().decode("detections", r) for r in records]
    assert all(isinstance(v, Valuation) for v in decoded), decoded
    return [x for v in decoded for x in (*v.alerts, *v.parts, *v.progress)]


def _split_latest(events: list[Any], cfg: ExposureConfig) -> dict[str, Exposure]:
    """Exposures of two market processes' valuations summed by stage 2."""
    return {e.counterparty: e for e in _stage2_exposures(events, cfg)}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_two_market_processes_value_the_same_exposures_as_one_pipeline(seed: int) -> None:
    """Property: fills, snapshots, balances, marks, option quotes and FX rates split by
    underlying over two market processes, their parts summed by stage 2, give every
    counterparty the exposure one whole pipeline gives (to float tolerance: the sums
    associate differently)."""
    cfg = worked_config()
    events = make_events(150, seed=seed)
    pipe = LocalPipeline(cfg)
    pipe.feed_all(events)
    whole = {cp: e for cp, e in pipe.latest().items() if cp != "*"}
    split = _split_latest(events, cfg)
    assert set(split) == set(whole)
    for cp, e in whole.items():
        s = split[cp]
        for name in ("gross_notional", "net_notional", "unrealized_pnl", "collateral",
                     "open_order_notional"):
            assert _close(getattr(s, name), getattr(e, name)), (cp, name)
        for name in ("delta_by_underlying", "notional_by_asset", "notional_by_instrument"):
            got, want = getattr(s, name), getattr(e, name)
            assert set(got) == set(want), (cp, name)
            assert all(_close(got[k], want[k]) for k in want), (cp, name)
        assert (s.stale, sorted(s.stale_instruments)) == (e.stale, sorted(e.stale_instruments))


def _part(cp: str, positions: int) -> Part:
    names = [f"BTC-{k}" for k in range(positions)]
    return Part(cp, "m0.s0", 1, 5, 1.0, 1.0, 0.0, 0.0, 0.0, {"BTC": 1.0}, {"BTC": 1.0}, names,
                [1.0] * positions, (5).to_bytes(8, "little") * positions, 5, [], {}, {}, ["f"])


def test_valuation_records_are_cut_to_size_and_keep_the_order() -> None:
    """A market process's stage-1 output goes out as Valuation records of about
    VALUATION_CHUNK_BYTES: every alert, then every part, then every progress, in order
    across the records; one part larger than a record travels alone."""
    alert = RiskAlert(id="a1", kind="missing_mark", scope=Scope(kind=ScopeKind.FIRM, value="*"),
                      ts=5, severity=Severity.WARN, reason="r")
    parts = [_part(f"cp{k}", 20) for k in range(400)]
    progress = [Progress(counterparty=f"cp{k}", ts=5, source="market/0@m0.s0")
                for k in range(400)]
    made = [progress[0], parts[0], alert, *parts[1:], *progress[1:]]
    records = valuation_records("market/0")(made)
    assert len(records) > 2
    assert all(len(r) <= VALUATION_CHUNK_BYTES for r in records)
    decoded = [Codec().decode("detections", r) for r in records]
    assert all(isinstance(v, Valuation) and v.source == "market/0" and v.ts == 5
               for v in decoded)
    flat = [x for v in decoded for x in (*v.alerts, *v.parts, *v.progress)]
    assert flat == [alert, *parts, *progress]
    big = _part("big", 3000)
    (alone,) = valuation_records("market/0")([big])
    assert len(alone) > VALUATION_CHUNK_BYTES
    assert Codec(topic_max_bytes={"detections": 1 << 20}).decode("detections", alone).parts == [
        big]
    assert valuation_records("market/0")([]) == []
    with pytest.raises(KeyError):  # stage 1 makes nothing else: a bug, never dropped
        valuation_records("market/0")([alert, "stray"])


def test_the_encode_side_valuation_form_mirrors_the_schema() -> None:
    """``encode_valuations`` wraps items encoded once in a twin of Valuation: the same tag
    and fields in the same order, so what it writes is what Valuation decodes."""
    from riskguard.schemas.valuation import PackedValuation

    def shape(t: type) -> tuple[Any, ...]:
        return (t.__struct_config__.tag, t.__struct_config__.tag_field,
                [f.encode_name for f in msgspec.structs.fields(t)])

    assert shape(PackedValuation) == shape(Valuation)


def test_a_key_split_answers_the_same_from_its_memo_and_past_the_memo_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A market process's key split places each key by its owner, memoized per key: the
    answers match the direct rule, also past the memo's cap and for keys too long to
    keep (which never enter the memo: its size is bounded in bytes too)."""
    monkeypatch.setattr(key_split, "MEMO_MAX", 5)
    owners = _owners(worked_config(), 1)
    split = KeySplit(frozenset({"m"}), owners.owns_key, shared_prefixes=(b"index/",))
    keys = [None, b"index/BTC-USD", *(f"v{k % 4}/{('BTC', 'ETH')[k % 2]}-I{k}".encode()
                                      for k in range(12)),
            b"okx/BTC-" + b"x" * MEMO_KEY_LIMIT]
    want = [(owners.of_key(k) == 1, k is not None and k.startswith(b"index/")) for k in keys]
    assert {w[0] for w in want} == {True, False}
    for _ in range(3):  # first answers, then memo hits and answers recomputed after eviction
        assert [split.place(k) for k in keys] == want
    assert split.place.cache_info().currsize <= 5  # type: ignore[attr-defined]


def _guard_config(**tier: Any) -> GuardConfig:
    return msgspec.convert({"keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
                            "tier": tier}, GuardConfig)


@pytest.mark.parametrize(("tier", "where"), [
    ({"role": "market", "index": 2, "market_processes": 2}, "tier.index"),
    ({"role": "market", "market_processes": 2, "owners": {"BTC": 3}}, "tier.owners"),
])
def test_a_market_process_that_names_no_real_process_stops_start_up(
    tier: dict[str, Any], where: str
) -> None:
    """An index or an owner outside the market processes is a config error naming it."""
    with pytest.raises(ConfigError) as err:
        check_tier(_guard_config(**tier))
    assert err.value.path == where


def test_the_firm_process_needs_input_alignment() -> None:
    """It reads the market processes' valuations in step (event-time alignment): without
    it, one process's parts could be summed with another's from minutes before."""
    cfg = _guard_config(role="firm", market_processes=2)
    check_tier(cfg)
    off = msgspec.structs.replace(cfg, input=msgspec.structs.replace(cfg.input,
                                                                     align_skew_s=None))
    with pytest.raises(ConfigError) as err:
        check_tier(off)
    assert err.value.path == "input.align_skew_s"


def _final_inputs() -> list[Any]:
    """A market process's detections: its start signal, progress, and encoded
    valuations."""
    from riskguard.schemas import DetectProgress

    out: list[Any] = [None]
    for k in range(30):
        out.append(DetectProgress(ts=10 * k, source="market/1"))
        if k % 4 == 0:
            out.append(valuation_records("market/1")([_part(f"cp{k}", 2)])[0])
    return out


def test_final_progress_logic_meets_the_contract() -> None:
    """Snapshot pickles, is independent, resume equals uninterrupted, input unmutated;
    and a resumed run ends with the same final progress as an uninterrupted one."""
    from contract import CHECKS, Case
    from riskguard.operators.core.end_of_input import FinalProgressLogic

    def build(state: Any) -> FinalProgressLogic:
        return FinalProgressLogic("market/1", state)

    events = _final_inputs()
    for check in CHECKS:
        check(Case("market.final_progress", build, events))
    whole = build(None)
    whole.on_batch(list(events))
    first = build(None)
    first.on_batch(events[:17])
    resumed = build(first.snapshot())
    resumed.on_batch(events[17:])
    assert resumed.on_eof() == whole.on_eof()


def test_a_market_process_passes_its_detections_through_then_ends_with_a_final_progress(
) -> None:
    """Every record goes through unchanged and in order; at end of input one final
    progress at the newest progress time; an empty run (only the start signal) ends
    with one too, at 0."""
    from riskguard.operators.core.end_of_input import FinalProgressLogic

    recs = _final_inputs()
    logic = FinalProgressLogic("market/1")
    assert logic.on_batch(list(recs)) == recs[1:]
    (final,) = logic.on_eof()
    assert (final.source, final.ts, final.final) == ("market/1", 290, True)
    empty = FinalProgressLogic("market/0")
    assert empty.on_event(None) == []
    assert [(p.ts, p.final) for p in empty.on_eof()] == [(0, True)]


def test_a_market_process_turns_names_past_its_admission_caps_into_dead_letters() -> None:
    """Each market process has its own door: instruments past ``[admission]``'s caps on a
    venue are dead letters there, before any keyed step holds state for them, and the
    cap's first refusal reaches the firm as a stage-1 alert inside a valuation."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.dataflows.guard.market import market_core, market_owners

    cfg = msgspec.convert({
        "keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"},
        "tier": {"role": "market", "market_processes": 1},
        "admission": {"max_instruments_per_venue": 3, "max_market_keys": 3}}, GuardConfig)
    recs = [Trade(id=f"t{i}", venue="okx", instrument=f"JUNK-{i}", ts=(i + 1) * 10**9,
                  price=100.0, qty=1.0, side="buy") for i in range(10)]
    flow = Dataflow("market_admission")
    out = market_core("m", op.input("in", flow, TestingSource(recs)), cfg=cfg,
                      clock=lambda: 0, owners=market_owners(cfg))
    dead: list[DeadLetter] = []
    detections: list[Any] = []
    op.output("dead", out.dead_letters, TestingSink(dead))
    op.output("detections", out.detections, TestingSink(detections))
    run_main(flow)
    assert [(d.reason, d.found) for d in dead] == [
        ("too_many_instruments", f"JUNK-{i}") for i in range(3, 10)]
    codec = Codec(clock=lambda: 0)
    alerts = [a for v in detections if isinstance(v, bytes)
              for a in codec.decode("detections", v).alerts]
    assert [(a.kind, a.scope.label(), a.details["first_refused"]) for a in alerts] == [
        ("admission_cap", "venue:okx", "JUNK-3")]


_SPELLINGS = ("binance/BTCUSDT", "okx/BTC-USDT", "okx/BTC-USDT-SWAP", "kraken/XBTUSD",
              "coinbase/BTC-USD", "binance/BTCUSD_PERP", "deribit/BTC-PERPETUAL",
              "bybit/BTCUSDC", "binance/ETHUSDT", "okx/ETH-USDT", "kraken/ETHUSD",
              "okx/SOL-USDT", "binance/SOLUSDT", "kraken/SOLUSD")


@pytest.mark.parametrize("processes", [2, 3, 5])
def test_the_markets_of_a_confirmation_group_share_one_market_process(processes: int) -> None:
    """However a venue spells its instrument, the markets the cross-venue confirmation
    judges together are owned by one process (a group split over processes is never
    confirmed)."""
    from riskguard.operators.detection.venue_confirm import confirm_key

    owners = MarketOwners(0, processes, {}, lambda name: None)
    by_group: dict[str, set[int]] = {}
    for key in _SPELLINGS:
        by_group.setdefault(confirm_key(key) or "", set()).add(owners.of_key(key))
    assert set(by_group) == {"confirm/BTC/USD", "confirm/ETH/USD", "confirm/SOL/USD"}
    assert all(len(procs) == 1 for procs in by_group.values())


@pytest.mark.parametrize("processes", [2, 3, 5])
def test_the_markets_of_a_cross_market_group_share_one_market_process(processes: int) -> None:
    """The cross-market check compares the markets of one base asset and quote unit: each
    such group is owned by one process, which can judge it alone."""
    from riskguard.operators.detection.cross_rates import market_group

    owners = MarketOwners(0, processes, {}, lambda name: None)
    by_group: dict[str, set[int]] = {}
    for key in (*_SPELLINGS, "binance/USDCUSDT", "kraken/USDCUSD", "okx/ETH-BTC"):
        by_group.setdefault(market_group(key) or "", set()).add(owners.of_key(key))
    assert set(by_group) == {"BTC/USD", "ETH/USD", "SOL/USD", "USDC/USD", "ETH/BTC"}
    assert all(len(procs) == 1 for procs in by_group.values())


def test_a_market_process_raises_the_dislocation_of_its_own_markets() -> None:
    """Four bitcoin markets in one market process, one falling alone: a critical
    dislocation of that market among its detections."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from one_market import ONE_PERP_MARKET, four_btc_markets
    from riskguard.dataflows.guard.market import market_core, market_owners

    flow = Dataflow("tier_cross")
    out = market_core("m", op.input("in", flow, TestingSource(four_btc_markets(range(1, 340)))),
                      cfg=ONE_PERP_MARKET, clock=lambda: 0,
                      owners=market_owners(ONE_PERP_MARKET))
    got: list[Any] = []
    op.output("detections", out.detections, TestingSink(got))
    run_main(flow)
    opens = [(d.key, d.severity.value) for d in got if getattr(d, "kind", None) == "dislocation"
             and d.phase == "open"]
    assert opens == [("bitstamp/BTCUSD", "critical")]


def test_the_tier_confirms_across_venues_as_one_worker_does() -> None:
    """The confirmation step in a bytewax flow over every market, and over each market
    process's own markets: the same escalations."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from riskguard.operators.detection.ops import confirm_across_venues
    from riskguard.operators.detection.venue_confirm import MarketProgress, VenueConfirmConfig
    from test_venue_confirm import band, in_time

    items = in_time([band("okx/BTC-USDT", "open", "critical", -900.0, ts=2),
                     band("binance/BTCUSDT", "open", "warn", -300.0, ts=2),
                     band("kraken/XBTUSD", "open", "warn", -280.0, ts=3),
                     band("okx/ETH-USDT", "open", "critical", -800.0, ts=3),
                     band("binance/ETHUSDT", "open", "warn", -250.0, ts=4)])

    def key_of(item: Any) -> str:
        return item.market if type(item) is MarketProgress else item.key

    def confirmed(share: list[Any]) -> list[tuple[str, str, str, int]]:
        flow = Dataflow("confirm")
        up = op.input("in", flow, TestingSource([(key_of(i), i) for i in share]))
        got: list[Any] = []
        op.output("out", confirm_across_venues(
            "confirm", up, config=VenueConfirmConfig(join_s=0), clock=lambda: 0),
            TestingSink(got))
        run_main(flow)
        return sorted((s.key, s.phase, s.severity.value, s.ts) for s in got)

    one = confirmed(items)
    assert {k for k, *_ in one} == {"binance/BTCUSDT", "kraken/XBTUSD", "binance/ETHUSDT"}
    procs = [MarketOwners(i, 2, {}, lambda name: None) for i in (0, 1)]
    tier = sorted(s for p in procs
                  for s in confirmed([i for i in items if p.of_key(key_of(i)) == p.index]))
    assert tier == one


def _split_firm(events: list[Any], cfg: ExposureConfig) -> list[Exposure]:
    """Every firm exposure (``"*"``) of two market processes' valuations, their parts
    summed by stage 2 and rolled up by one firm stage, one event at a time."""
    firm = FirmLogic(cfg)
    return [x for e in _stage2_exposures(events, cfg, strict=False)
            for x in firm.on_event(e) if x.counterparty == "*"]


def _vol_events() -> list[Any]:
    """okx holds BTC only, deribit ETH only; BTC's realized vol doubles while no BTC
    mark moves, then an ETH mark re-values deribit alone."""
    s = 1_000_000_000

    def trade(i: str, inst: str, ts: int, price: float) -> Trade:
        return Trade(id=i, venue="okx", instrument=inst, ts=ts, price=price, qty=1.0,
                     side="buy")

    def vol(i: str, ts: int, v: float) -> FeatureVector:
        return FeatureVector(key="okx/BTC-PERP", scope=Scope(kind=ScopeKind.INSTRUMENT,
                             value="BTC-PERP"), ts=ts, values={"realized_vol": v},
                             evidence_ids=[i])

    return [
        vol("v1", 1 * s, 0.5),
        trade("t1", "BTC-PERP", 2 * s, 60_000.0),
        trade("t2", "ETH-PERP", 2 * s, 3_000.0),
        Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-PERP", side="buy",
             qty=1.0, price=60_000.0, ts=3 * s),
        Fill(id="f2", venue="deribit", counterparty="deribit", instrument="ETH-PERP",
             side="buy", qty=10.0, price=3_000.0, ts=4 * s),
        vol("v2", 5 * s, 1.0),
        trade("t3", "ETH-PERP", 6 * s, 3_100.0),
    ]


def test_the_tier_scales_a_firm_limit_by_the_vol_one_worker_does() -> None:
    """A vol feature re-values no row, and a part moved by ETH's mark carries no BTC
    vol: the firm's BTC vol (and a firm limit scaled by it) is the same whether ETH and
    BTC are valued by one worker or by two market processes."""
    cfg = worked_config()
    events = _vol_events()
    pipe = LocalPipeline(cfg)
    whole = [e for e in pipe.feed_all(events).exposures if e.counterparty == "*"]
    split = _split_firm(events, cfg)
    assert whole[-1].ts == split[-1].ts
    assert whole[-1].vol_by_underlying == split[-1].vol_by_underlying
    assert whole[-1].vol_by_underlying["BTC"] == 0.5  # the vol the BTC position moved with
    limits = LimitsConfig(firm={"gross_notional": LimitSpec(
        limit=200_000.0, vol_scaling=VolScaling(underlying="BTC", ref_vol=0.5, lo=0.25,
                                                hi=1.0))}, utilization_interval_ns=0)

    def effective(firm: list[Exposure]) -> list[float]:
        logic = LimitsLogic(limits)
        return [o.effective_limit for e in firm for o in logic.on_event(e)
                if isinstance(o, Utilization)]

    assert effective(whole)[-1] == effective(split)[-1] == 200_000.0


def test_a_part_whose_amounts_overflow_crosses_the_wire_and_values_as_one_worker() -> None:
    """A position whose notional passes the largest float (1e308 BTC at 60,000), and one
    opposite in another market process's underlying: each part still encodes (the wire
    holds no infinity) and the counterparty's exposure is the one worker's, gross and net
    the largest float (inf - inf is no number: the largest, never 0)."""
    cfg = worked_config()
    s = 1_000_000_000

    def snap(i: str, inst: str, qty: float) -> PositionSnapshot:
        return PositionSnapshot(id=i, venue="okx", counterparty="okx", instrument=inst,
                                qty=qty, ts=3 * s)

    events = [
        Trade(id="t1", venue="okx", instrument="BTC-PERP", ts=s, price=60_000.0, qty=1.0,
              side="buy"),
        Trade(id="t2", venue="okx", instrument="ETH-PERP", ts=s, price=3_000.0, qty=1.0,
              side="buy"),
        snap("p1", "BTC-PERP", 1e308),
        snap("p2", "ETH-PERP", -1e308),
    ]
    pipe = LocalPipeline(cfg)
    pipe.feed_all(events)
    whole = pipe.latest()["okx"]
    split = {e.counterparty: e for e in _stage2_exposures(events, cfg, wire=True)}["okx"]
    assert whole.gross_notional == whole.net_notional == MAX_FLOAT
    for name in ("gross_notional", "net_notional", "delta_by_underlying",
                 "notional_by_instrument"):
        assert getattr(split, name) == getattr(whole, name), name
