"""More stateful logic classes meet the generic stateful-logic contract: feeds, the
market watch, venue health, admission, id windows, audit attestation and replicas,
partition admission, the firm's ticked progress, the live playbook and cross rates.

Each is built as the product builds it and fed as the bytewax adapter feeds it
(:func:`contract.engine_feed`: batches, deadlines, end of input), with processing time
set per event (:class:`contract.At`) where the logic reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from contract import CHECKS, At, Batch, Case, Deadline, Eof, engine_feed
from riskguard.connectors.feeds.health import ConnectionSeen, VenueHealth
from riskguard.connectors.kafka.admit import PartitionAdmission
from riskguard.dataflows.guard.market_watch import MarketWatchLogic
from riskguard.dataflows.guard.steps import bind_venue, monitor_builder
from riskguard.operators.audit import AuditConfig, ReplicaWatchConfig, ReplicaWatchLogic
from riskguard.operators.audit.attest import Attestor, replica_chains
from riskguard.operators.audit.chain import AuditLogic, AuditState
from riskguard.operators.audit.ops import ChainAudit
from riskguard.operators.audit.resume import ChainResume
from riskguard.operators.core.admission import AdmissionConfig, KeyAdmission, Known
from riskguard.operators.core.clock import ManualClock, Tick
from riskguard.operators.core.dedup import RecentIdsLogic
from riskguard.operators.core.end_of_input import FinalProgressLogic
from riskguard.operators.detection.cross_rates import CrossRateConfig, CrossRates
from riskguard.operators.detection.cross_shard import cross_shard_builder
from riskguard.operators.detection.market_sim import SimConfig, generate
from riskguard.operators.exposure import CounterpartyLogic, FirmLogic, Part, Router, ShardLogic
from riskguard.operators.exposure.mark_filter import MarkFilter
from riskguard.operators.mitigation.feeds import FeedConfig, VenueFeeds
from riskguard.operators.mitigation.playbook import PlaybookLogic, playbook_builder
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, sign_envelope
from riskguard.operators.signing.operator_commands import OperatorCommandLogic
from riskguard.schemas import (
    AnomalySignal,
    AuditCheckpoint,
    Bar,
    DetectProgress,
    Exposure,
    FeatureVector,
    Fill,
    IndexPrice,
    MitigationCommand,
    Quote,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Trade,
    VenueState,
    VenueStatus,
)
from riskguard.schemas.base import stamp_source
from riskguard.schemas.codec import Codec, encode
from riskguard.schemas.commands import Action
from riskguard.schemas.time_policy import EventTimePolicy
from riskguard.schemas.valuation import Progress
from signing_fixtures import AUD, FIRM, OP1, OP2, T0, command, signer, trust_store
from test_audit_input import KEYS, A, B, forged_record, replica_chain
from test_exposure import worked_config
from test_exposure_ticked import interleaved_ahead, worker_stream
from test_playbook_acks import ack, down
from test_playbook_acks import config as pb_config

S = 1_000_000_000
MS = 1_000_000
TRUST = trust_store()
SC = generate(SimConfig(duration_s=120, seed=3, incidents_per_kind=0, warmup_s=0))


def _clocked(logic: Any) -> Any:
    return logic.clock


def timed(logic: Any, event: Any) -> list[Any]:
    """The engine's feed, with :class:`At` setting the logic's own ``clock``."""
    return engine_feed(logic, event, _clocked)


# -- feed selection and the feed monitor (operators/mitigation/feeds.py), per venue as
# dataflows/guard/steps.py builds them

FEEDS = FeedConfig(venues={"okx": VenueFeeds(max_gap_ns=3 * S, restore_after_ns=5 * S,
                                             skew_ns=1 * S)})


def hb(t: float, feed: str = "primary", state: VenueState = VenueState.OK,
       withdrawals: bool = True) -> VenueStatus:
    return VenueStatus(id=f"hb-{feed}-{t}", venue="okx", ts=int(t * S), feed=feed,
                       state=state, withdrawals_enabled=withdrawals)


def quote(t: float, feed: str, inst: str = "BTC-USDT") -> Quote:
    mid = 60_000.0 + 10 * math.sin(t)
    return Quote(id=f"q-{feed}-{inst}-{t}", venue="okx", instrument=inst, ts=int(t * S),
                 feed=feed, bid=mid - 0.5, bid_size=1.0, ask=mid + 0.5, ask_size=1.0)


def _primary_up(t: float) -> bool:
    """The primary's heartbeat: lost from 4 s to 12 s, down at 30 s, back at 33 s."""
    return not (4 < t < 12 or 30 <= t < 33)


def _select_events() -> list[Any]:
    """One instrument's market data from both feeds and the venue's heartbeats, handed
    over a second at a time in event-time order (the step sorts each batch by it)."""
    out: list[Any] = []
    for sec in range(45):
        recs: list[Any] = []
        if _primary_up(sec):
            recs.append(hb(sec))
        elif sec == 30:
            recs.append(hb(sec, state=VenueState.DOWN))
        recs.append(hb(sec + 0.25, "backup"))
        for half in (0.1, 0.6):
            t = sec + half
            recs += [quote(t, "backup")] + ([quote(t, "primary")] if _primary_up(t) else [])
        recs.sort(key=lambda r: r.ts)
        out.append(Batch(tuple(recs)) if sec % 3 else recs[0])
        if not sec % 3:
            out.extend(recs[1:])
    return out


def _monitor_events() -> list[Any]:
    """The venue's heartbeats and two guard workers' ticks (two tick sources announced):
    w0 ticks first, and runs 9 s ahead before w1 ticks for the first time; a primary
    heartbeat halts withdrawals for a while."""
    out: list[Any] = [Tick(ts=0, source="w0", of=2)]  # before the first heartbeat: dropped
    for sec in range(45):
        if _primary_up(sec):
            out.append(hb(sec, withdrawals=not 20 <= sec < 25))
        elif sec == 30:
            out.append(hb(sec, state=VenueState.DOWN))
        out.append(hb(sec + 0.25, "backup", withdrawals=not 20 <= sec < 25))
        out.append(Tick(ts=(sec + 9) * S, source="w0", of=2) if sec < 4 else
                   Tick(ts=sec * S, source="w0", of=2))
        if sec >= 3:
            out.append(Tick(ts=(sec - 2) * S, source="w1", of=2))
    return out


SELECT = _select_events()
MONITOR = _monitor_events()


# -- the firm's watch over the market processes (dataflows/guard/market_watch.py)

WAIT_S = 30


def _watch_builder(state: Any) -> MarketWatchLogic:
    # a (re)started firm: processing time at least the newest event time it had seen
    start = state.newest_ts if state is not None else 0
    return MarketWatchLogic(3, WAIT_S * S, ManualClock(start), state)


def _watch_events() -> list[Any]:
    """Three market processes' progress and the firm's own ticks, a second apart in
    event and processing time: market/2 is first heard at 8 s; market/1 stops at 175 s
    (silent at 209.5 s, by a deadline), is back at 215 s; market/0's input ends at 240 s.
    A restart in a silence wait gives the process the whole wait again (by design), so
    the silence avoids the split points."""
    out: list[Any] = []
    for sec in range(260):
        recs: list[Any] = []
        if sec < 240:
            recs.append(DetectProgress(ts=sec * S, source="market/0"))
        elif sec == 240:
            recs.append(DetectProgress(ts=sec * S, source="market/0", final=True))
        if not 175 <= sec < 215:
            recs.append(DetectProgress(ts=sec * S, source="market/1"))
        if sec >= 8:
            recs.append(DetectProgress(ts=sec * S, source="market/2"))
        recs.append(Tick(ts=sec * S, source="firm"))
        out.append(At(sec * S, Batch(tuple(recs))))
        if sec % 15 == 14:
            out.append(At(sec * S + 500 * MS, Deadline()))
    return out


WATCH = _watch_events()


# -- a venue's heartbeat from its websocket connections (connectors/feeds/health.py)

def _health_checks() -> list[tuple[int, tuple[ConnectionSeen, ...]]]:
    """Two connections checked every second: both quiet for a while, one reconnecting,
    one closed, a third one opened, and back to two."""
    out = []
    for sec in range(40):
        now = sec * S
        first = ConnectionSeen(open=True, session=1 + (sec >= 12) + (sec >= 25),
                               last_message_ns=now - (7 * S if 5 <= sec < 9 else 200 * MS),
                               opened_ns=0)
        second = ConnectionSeen(open=not 17 <= sec < 19, session=1 + (sec >= 19),
                                last_message_ns=None if sec < 2 else now - 300 * MS,
                                opened_ns=0 if sec < 19 else 19 * S)
        conns = (first, second)
        if 30 <= sec < 34:
            conns += (ConnectionSeen(open=True, session=1, opened_ns=30 * S),)
        out.append((now, conns))
    return out


def _check(logic: VenueHealth, event: tuple[int, tuple[ConnectionSeen, ...]]) -> list[Any]:
    return [logic.on_check(event[0], event[1])]


# -- bounded keys (operators/core/admission.py)

KNOWN = Known(venues=frozenset({"okx", "binance"}),
              instruments=frozenset({"BTC-USDT", "ETH-USDT"}),
              counterparties=frozenset({"okx", "binance"}))
ADMISSION = AdmissionConfig(max_venues=2, max_instruments_per_venue=3, max_market_keys=5,
                            max_counterparties=2)


def _admission_events() -> list[Any]:
    """Batches of market data, heartbeats and fills naming known and new venues,
    instruments and counterparties, past every cap, and names admitted before coming
    back."""
    out: list[Any] = []
    n = 0
    venues = ["okx", "kraken", "binance", "bybit", "okx", "gate", "kraken", "zz"]
    for k, v in enumerate(venues):
        recs: list[Any] = []
        for i in range(k % 3, k % 3 + 4):
            n += 1
            t = Trade(id=f"t{n}", venue=v, instrument=f"I{i}" if i else "BTC-USDT", ts=n * S,
                      price=1.0, qty=1.0, side="buy")
            stamp_source(t, "prod.riskguard.market.v1", k % 2, n)
            recs.append(t)
        recs.append(VenueStatus(id=f"h{k}", venue=v, ts=n * S))
        for cpn in (f"cp{k % 4}", "okx", f"cp{(k + 1) % 5}"):
            n += 1
            f = Fill(id=f"f{n}", venue="okx", counterparty=cpn, instrument="BTC-USDT",
                     side="buy", qty=1.0, price=1.0, ts=n * S)
            stamp_source(f, "prod.riskguard.fills.v1", 0, n)
            recs.append(f)
        recs.append(Tick(ts=n * S, source="w0"))
        out.append(Batch(tuple(recs[:3])))
        out.extend(recs[3:])
    return out


# -- the firm's anomaly-id filter (operators/core/dedup.py, steps.first_of_each_id)

def _signal(n: int, key: str = "okx/BTC-USDT") -> AnomalySignal:
    v, inst = key.split("/")
    return AnomalySignal(id=f"s{n}", kind="anomaly", phase="open", key=key,
                         scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=v),
                         ts=n * S, score=4.0, threshold=3.0, severity=Severity.WARN, model="hst",
                         model_version="1")


def _stage1_alert(n: int) -> RiskAlert:
    return RiskAlert(id=f"r{n}", kind="missing_mark", scope=Scope(kind=ScopeKind.COUNTERPARTY,
                                                                  value="okx"),
                     ts=n * S, severity=Severity.WARN, reason="no mark")


def _ids_events() -> list[Any]:
    """Two market processes' signals and stage-1 alerts; each restarts once and resends
    what it made since its snapshot, and an old id comes back once it has left the
    window."""
    a = [_signal(n) for n in range(0, 40, 2)]
    b = [_signal(n, "binance/ETH-USDT") for n in range(1, 40, 2)]
    alerts = [_stage1_alert(n) for n in range(0, 40, 5)]
    stream: list[Any] = []
    for k in range(20):
        stream.append(a[k])
        stream.append(b[k])
        if k % 3 == 0:
            stream.append(alerts[k // 3])
        if k == 9:
            stream += a[6:10]  # a restarted: resends since its snapshot
        if k == 15:
            stream += b[12:16] + alerts[3:5]
    stream.append(_signal(0))  # long gone from the window: passes again
    return [Batch(tuple(stream[i:i + 5])) if i % 2 else stream[i]
            for i in range(0, len(stream), 5)] + stream[-3:]


# -- a market process's final progress (operators/core/end_of_input.py)

def _final_events() -> list[Any]:
    out: list[Any] = [None]  # the step's start item
    for sec in range(1, 30):
        out.append(Batch((_signal(sec), DetectProgress(ts=sec * S, source="detect/w0"))))
        if sec % 7 == 0:
            out.append(DetectProgress(ts=(sec - 3) * S, source="detect/w0"))  # a late one
    return [*out, Eof()]


# -- audit attestation and the replica watch (operators/audit/attest.py, replica_watch.py)

NAMES = {A.key_id: "engine-a", B.key_id: "engine-b"}
REPLICAS = ReplicaWatchConfig(peers=("a", "b"), tolerance_s=10, silent_s=60,
                              origin="riskguard", partitions=2, issuers={"a": "engine-a"})


def _attest_items() -> list[Any]:
    """Replicas a and b write their chains (two partitions of a), checkpoints every 3
    records; forged records sit beside real ones, b's key signs under a's name, a
    checkpoint repeats, and a chain of no peer is on the topic."""
    a0 = replica_chain("riskguard@a/p0", A, [f"d{i}" for i in range(1, 11)], every=3)
    a1 = replica_chain("riskguard@a/p1", A, [f"e{i}" for i in range(1, 5)], every=3)
    b0 = replica_chain("riskguard@b/p0", B, [f"d{i}" for i in range(1, 9)], every=3)
    stolen = replica_chain("riskguard@a/p1", B, ["x1", "x2", "x3"], every=3)
    other = replica_chain("riskguard@c/p0", A, ["d1", "d2", "d3"], every=3)
    out: list[Any] = []
    for k in range(max(len(a0), len(b0))):
        out += a0[k:k + 1] + b0[k:k + 1]
        if k == 2:
            out.append(forged_record("riskguard@a/p0", 4, "forged"))
        if k == 5:
            out += a1[:4]
        if k == 7:
            out += [*other, a0[3]]  # a checkpoint seen again
        if k == 9:
            out += stolen + a1[4:]
    return out


ATTEST = _attest_items()


def _attestor(state: Any) -> Attestor:
    return Attestor(KEYS, state=state, follow=replica_chains("riskguard", ("a", "b"), 2),
                    signer_of=NAMES.get, issuers={"a": "engine-a"})


def _attest_feed(logic: Attestor, item: Any) -> list[Any]:
    return logic.on_item(item)


def _replica_events() -> list[Any]:
    """The same audit items as the replicas write them, a second or so apart in
    processing time, and b going quiet for 80 s (ticks only) before its last records."""
    out: list[Any] = []
    t = 0
    for k, item in enumerate(ATTEST):
        t += 1 * S if k % 3 else 1_500 * MS
        out.append(At(t, item))
        if k == 20:
            for _ in range(8):
                t += 10 * S
                out.append(At(t, Tick(ts=t, source="firm")))
    out.append(At(t + 30 * S, None))
    return out


def _replica_watch(state: Any) -> ReplicaWatchLogic:
    return ReplicaWatchLogic(REPLICAS, ManualClock(0), state, keys=KEYS, signer_of=NAMES.get)


# -- the audit step's chains (operators/audit/ops.py), continuing a chain the topic holds

_SIGNER = signer("engine-1")
_AUDIT = AuditConfig(checkpoint_every=4, checkpoint_interval_ns=20 * S, partitions=2)


def _audit_found() -> dict[str, AuditState]:
    """What the audit topic held for p1 at start-up: 5 records of an earlier run."""
    earlier = AuditLogic("riskguard/p1", _SIGNER, _AUDIT)
    items = [o for n in range(5) for o in earlier.on_event(_signal(100 + n))]
    resume = ChainResume({_SIGNER.key_id: _SIGNER.public_key}, origin="riskguard")
    for item in items:
        resume.add(item)
    return resume.states()


def _audit_events(chain: str) -> list[Any]:
    out: list[Any] = []
    for n in range(1, 40):
        out.append((chain, _signal(n) if n % 4 else _stage1_alert(n)))
    return [*out, Eof()]


# -- one Kafka partition's admission for Flink (connectors/kafka/admit.py)

def _messages() -> list[Any]:
    """Market records of one partition, some late, some malformed, a tombstone, and
    acks on an untimed topic."""
    out: list[Any] = []
    for n in range(60):
        ts = (1_000 + n) * S - (8 * S if n % 11 == 5 else 0)  # late past the 5 s bound
        t = Trade(id=f"t{n}", venue="okx", instrument="BTC-USDT", ts=ts, price=60_000.0 + n,
                  qty=1.0, side="buy")
        value: bytes | None = encode(t)
        if n % 17 == 3:
            value = b'{"type":"trade","id":"x"}'
        if n == 40:
            value = None
        out.append(("m", 2, 100 + n, value))
        if n % 10 == 9:
            out.append(("acks", 0, n, encode(Trade(id=f"old{n}", venue="okx",
                                                   instrument="BTC-USDT", ts=S,
                                                   price=1.0, qty=1.0, side="buy"))))
    return out


def _partition_admission(state: Any) -> PartitionAdmission:
    return PartitionAdmission(Codec(clock=lambda: 5 * S), EventTimePolicy(
        max_lateness_ns=5 * S), clock=lambda: 2_000 * S, stamp_recv_ts=True,
        untimed=frozenset({"acks"}), resume=state)


# -- operators' signed commands, with replays forgotten as they expire (core/dedup.py
# SignedReplays, in operators/signing/operator_commands.py)

def _op_command(n: int, seq: int, at: int, *signers: Any) -> Any:
    cmd = command(n, issuer="op-alice", seq=seq, action=Action.RESUME, scope=FIRM,
                  params={"actions": ["halt_trading"]}, issued_at=at, ttl=20 * S)
    return sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), list(signers))


def _operator_events() -> list[Any]:
    """Commands accepted, replayed by id and by seq, one refused (one person), and a
    replay presented again after its command expired (forgotten; refused as expired)."""
    two = (OP1, OP2)
    out: list[Any] = []
    for k in range(12):
        at = T0 + k * 10 * S
        seq = k + 1
        env = _op_command(k, seq, at, *two)
        out += [At(at + S, env), At(at + 2 * S, env)]
        if k % 4 == 1:
            out.append(At(at + 3 * S, _op_command(100 + k, seq - 1, at, *two)))
        if k % 4 == 2:
            out.append(At(at + 3 * S, _op_command(200 + k, seq + 5, at, OP1)))
        if k == 6:  # command 2 again, forgotten once expired: refused as expired
            out.append(At(at + 4 * S, _op_command(2, 3, T0 + 20 * S, *two)))
    last = T0 + 11 * 10 * S
    return [*out, At(last + 5 * S, _op_command(11, 12, last, *two)),
            At(last + 9 * S, _op_command(12, 13, last + 8 * S, OP2, OP1))]


def _operator_logic(state: Any) -> OperatorCommandLogic:
    return OperatorCommandLogic(TRUST, env=AUD.env, topic=AUD.topic, clock=ManualClock(T0),
                                state=state, leeway_ns=5 * S)


# -- the firm's rollup in ticked mode, fed the exposures and progress its counterparty
# keys pass on (operators/exposure/rollup.py)

def _firm_input() -> list[Any]:
    """Two guard workers' records through stage 1 and 2 as the dataflow chains them (a
    runs 2 s ahead of b); the firm's share, in order: exposures and progress."""
    a = worker_stream("a", "okx", "BTC-PERP", 60_000.0, 3, 20, of=2)
    b = worker_stream("b", "binance", "ETH-PERP", 3_000.0, 9, 20, of=2)
    router = Router(REG, XCFG)
    shards: dict[str, ShardLogic] = {}
    cps: dict[str, CounterpartyLogic] = {}
    out: list[Any] = []
    for ev in interleaved_ahead(2.0, a, b):
        for key, item in router.route(ev):
            shard = shards.get(key) or shards.setdefault(key, ShardLogic(
                XCFG, REG, ticked=True, clock=lambda: 0, forward_ticks=True))
            for part in shard.on_event(item):
                if not isinstance(part, Part | Progress):
                    continue
                cp = cps.get(part.counterparty) or cps.setdefault(
                    part.counterparty, CounterpartyLogic(XCFG, ticked=True))
                out += [x for x in cp.on_event(part) if isinstance(x, Exposure | Progress)]
    return [Batch(tuple(out[k:k + 3])) if k % 2 else out[k] for k in range(0, len(out), 3)]


XCFG = worked_config()
REG = XCFG.validate()
FIRM_IN = _firm_input()


# -- the playbook live: acks awaited, overdue by processing time with no event
# (on_deadline), two guard processes' ticks, end of input (operators/mitigation/playbook.py)

PB = pb_config(timeout_s=30)


def _playbook(state: Any) -> PlaybookLogic:
    clock = ManualClock(0)
    return playbook_builder(PB, clock, wall_clock=clock)(state)


def _pb_ticks(t: float, *, late: bool = True) -> list[Any]:
    out = [At(int((t + 0.2) * S), Tick(ts=int(t * S), source="g0", of=2))]
    if late:  # g1 starts 3 s after g0 and stays 1 s behind
        out.append(At(int((t + 0.3) * S), Tick(ts=int((t - 1) * S), source="g1", of=2)))
    return out


def _playbook_events() -> list[Any]:
    """Two venues lost; the executor confirms okx's halt only. Processing time goes on
    with no input from 12 s to 50 s: binance's halt falls overdue at a deadline. The
    ack comes at 100 s; the input ends at 130 s."""
    head: list[Any] = []
    for t in range(12):
        head += _pb_ticks(t, late=t >= 3)
        if t == 1:
            head.append(At(int(1.5 * S), down("okx", 1.5)))
        if t == 4:
            head.append(At(int(4.5 * S), down("binance", 4.2)))
    logic = _playbook(None)
    made = [c for e in head for c in timed(logic, e) if isinstance(c, MitigationCommand)]
    halts = {c.scope.value: c for c in made if c.action is Action.HALT_TRADING}
    out = [*head[:30], At(10 * S, ack(halts["okx"])), *head[30:]]
    out += [At(t * S, Deadline()) for t in (20, 34, 35, 36, 45)]
    for t in range(50, 130):
        out += _pb_ticks(t)
        if t == 100:
            out.append(At(int(100.5 * S), ack(halts["binance"])))
    return [*out, At(131 * S, Eof())]


# -- cross-market dislocations (operators/detection/cross_rates.py), per base asset

_CROSS = CrossRateConfig(warmup_points=20, close_quiet_points=3)


def _vector(venue: str, inst: str, i: int, price: float) -> FeatureVector:
    scope = Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=venue)
    return FeatureVector(key=f"{venue}/{inst}", scope=scope, ts=i * 60 * S, values={},
                         price=price, interval_ns=60 * S)


def _cross_vectors() -> list[FeatureVector]:
    """Four BTC markets a minute apart with steady offsets; okx's crashes for 6 minutes
    (then worse), deribit's stops quoting for a while, bybit joins late."""
    out = []
    for i in range(120):
        wave = 1 + 0.0003 * math.sin(i / 5)
        for venue, inst, p in (("binance", "BTCUSDT", 60_000.0), ("okx", "BTC-USDT", 60_020.0),
                               ("deribit", "BTC-USDC", 59_990.0), ("bybit", "BTCUSDT", 60_005.0)):
            if (venue == "deribit" and 70 <= i < 80) or (venue == "bybit" and i < 30):
                continue
            crash = (0.992 if i < 63 else 0.95) if venue == "okx" and 60 <= i < 66 else 1.0
            out.append(_vector(venue, inst, i, p * wave * crash))
    return out


def _two_reader_points() -> list[Any]:
    """The same markets' points as two readers send them to the shard (two tick sources
    announced), each reading two venues and ticking after each minute's points; r1
    starts 5 minutes behind r0 and catches up at minute 60."""
    minutes: list[dict[int, list[Any]]] = [{}, {}]
    for fv in _cross_vectors():
        k = 0 if fv.key.startswith(("binance", "okx")) else 1
        minutes[k].setdefault(fv.ts, []).append(
            (fv.ts, fv.key, fv.price, fv.interval_ns, f"x-{fv.key}-{fv.ts}", None))
    sent = [[[*pts, Tick(ts=ts, source=f"r{k}", of=2)] for ts, pts in sorted(m.items())]
            for k, m in enumerate(minutes)]
    out: list[Any] = []
    behind = 0
    for n, items in enumerate(sent[0]):
        out += items
        upto = n - 5 if n < 60 else n
        while behind <= upto and behind < len(sent[1]):
            out += sent[1][behind]
            behind += 1
    return out


def _mark_events() -> list[Any]:
    """Two venues' trades and quotes and an index price on one instrument, in batches:
    small moves within the interval, larger ones, a bar (never forwarded)."""
    out: list[Any] = []
    for n in range(40):
        ts = n * 100 * MS
        px = 100.0 + (0.3 if n % 7 == 0 else 0.01 * (n % 3))
        out.append(Batch((
            Trade(id=f"t{n}", venue="okx", instrument="BTC-PERP", ts=ts, price=px, qty=1.0,
                  side="buy"),
            Quote(id=f"q{n}", venue="binance", instrument="BTC-PERP", ts=ts, bid=px - 0.01,
                  ask=px + 0.01, bid_size=1.0, ask_size=1.0),
            IndexPrice(id=f"i{n}", venue="index", instrument="BTC-PERP", ts=ts, price=px),
            Bar(id=f"b{n}", venue="okx", instrument="BTC-PERP", ts=ts, open=px, high=px,
                low=px, close=px, volume=1.0, start=ts - S, interval_ns=S))))
    return out


CASES: list[Any] = [
    Case("mark_filter.instrument", lambda s: MarkFilter(250 * MS, 5.0, s), _mark_events(),
         feed=engine_feed),
    Case("feed_select.per_venue", bind_venue(FEEDS), SELECT, feed=engine_feed),
    Case("feed_monitor.per_venue.two_workers", monitor_builder(FEEDS, lambda: 0), MONITOR,
         splits=(5, 8, 12), feed=engine_feed),
    Case("market_watch.deadlines", _watch_builder, WATCH, splits=(5, 9, 10, 100, 250),
         feed=timed),
    Case("venue_health", lambda s: VenueHealth("okx", "primary", silence_ns=5 * S, state=s),
         _health_checks(), feed=_check),
    Case("admission.batches", lambda s: KeyAdmission(ADMISSION, KNOWN, state=s,
                                                     clock=lambda: 7 * S),
         _admission_events(), feed=engine_feed),
    Case("recent_ids.batches", lambda s: RecentIdsLogic(16, s), _ids_events(),
         feed=engine_feed),
    Case("final_progress", lambda s: FinalProgressLogic("detect/w0", s), _final_events(),
         feed=engine_feed),
    Case("attestor", _attestor, ATTEST, feed=_attest_feed),
    Case("replica_watch.attested", _replica_watch, _replica_events(), feed=timed),
    Case("audit.chain.continued", lambda s: ChainAudit(_SIGNER, _AUDIT, s, _audit_found()),
         _audit_events("riskguard/p1"), feed=engine_feed),
    Case("audit.chain.new", lambda s: ChainAudit(_SIGNER, _AUDIT, s, _audit_found()),
         _audit_events("riskguard/p0"), feed=engine_feed),
    Case("partition_admission", _partition_admission, _messages()),
    Case("operator_commands.expiring", _operator_logic, _operator_events(), feed=timed),
    Case("exposure.firm.ticked.progress", lambda s: FirmLogic(XCFG, s, ticked=True), FIRM_IN,
         feed=engine_feed),
    Case("playbook.live_acks", _playbook, _playbook_events(), splits=(3, 4, 40, 50, 60, 70),
         feed=timed),
    Case("cross_rates", lambda s: CrossRates(_CROSS, s), _cross_vectors(),
         splits=(240, 245, 250, 262)),
    Case("cross_shard.two_readers", cross_shard_builder(_CROSS, lambda: 0, bar_ns=60 * S),
         _two_reader_points(), splits=(12, 30, 60), feed=engine_feed),
]


def _outputs(case: Case) -> list[Any]:
    logic = case.builder(None)
    return [o for e in case.events for o in case.feed(logic, e)]


def test_the_cases_exercise_their_state() -> None:
    """Each case's input drives the transitions its state is for."""
    outs = {c.name: _outputs(c) for c in CASES}
    marks = outs["mark_filter.instrument"]
    assert not any(type(m) is Bar for m in marks)
    assert 40 < len(marks) < 120  # some of each venue's prices are held back
    assert {q.feed for q in outs["feed_select.per_venue"]} == {"primary", "backup"}
    kinds = [a.kind for a in outs["feed_monitor.per_venue.two_workers"]]
    assert kinds.count("feed_failover") == 2 and kinds.count("feed_restored") == 2
    assert {"withdrawals_halted", "withdrawals_resumed"} <= set(kinds)
    watch = [(a.kind, a.details["process"]) for a in outs["market_watch.deadlines"]]
    assert watch == [("market_process_silent", "market/1"),
                     ("market_process_restored", "market/1")]
    states = [s.state.value for s in outs["venue_health"]]
    assert {"ok", "degraded", "down"} <= set(states)
    reasons = {getattr(o, "reason", "") for o in outs["admission.batches"]}
    assert {"too_many_venues", "too_many_instruments", "too_many_counterparties"} <= reasons
    ids = [o.id for o in outs["recent_ids.batches"]]
    assert len(ids) > len(set(ids))  # s0 passes again
    assert outs["final_progress"][-1] == DetectProgress(ts=29 * S, source="detect/w0",
                                                        final=True)
    assert len([x for x in outs["attestor"] if isinstance(x, AuditCheckpoint)]) > 3
    replicas = {a.kind for a in outs["replica_watch.attested"]}
    assert {"replica_divergence", "replica_silent", "replica_unverified"} <= replicas
    for chain in ("audit.chain.continued", "audit.chain.new"):
        assert isinstance(outs[chain][-1], AuditCheckpoint)
    assert outs["audit.chain.continued"][0].index == 5  # after the topic's 5 records
    admitted = {getattr(r, "reason", "ok") for r in outs["partition_admission"]}
    assert {"ok", "late", "empty", "validation"} <= admitted
    refused = {getattr(r, "reason", "ok") for r in outs["operator_commands.expiring"]}
    assert {"command_replayed_command_id", "command_replayed_seq",
            "command_expired"} <= refused
    firm = outs["exposure.firm.ticked.progress"]
    assert {type(x) for x in firm} == {Exposure, Progress}
    cmds = [(c.action.value, c.scope.label()) for c in outs["playbook.live_acks"]]
    assert ("alert", "firm:*") in cmds and ("resume", "firm:*") in cmds
    for name in ("cross_rates", "cross_shard.two_readers"):
        assert [x.phase for x in outs[name]] == ["open", "escalate", "close"]


@pytest.mark.parametrize(("case", "check"), [
    pytest.param(case, check, id=f"{case.name}-{check.__name__}")
    for case in CASES for check in CHECKS])
def test_contract(case: Case, check: Callable[[Case], None]) -> None:
    """Snapshot is versioned data and independent, resume equals uninterrupted, input
    unmutated."""
    check(case)
