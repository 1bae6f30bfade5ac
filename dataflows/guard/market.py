"""The market tier: market processes, each owning whole underlyings, feeding a firm
process (docs/scaling.md, "The market tier").

- ``tier.role = "market"``: :func:`market_core`, a market process detecting anomalies on
  and valuing the positions in the underlyings it owns (:class:`MarketOwners`), its
  signals, parts and progress to the ``detections`` topic (:func:`market_flow`);
- ``tier.role = "firm"``: :func:`~riskguard.dataflows.guard.core.guard_core` over that
  topic (:func:`~riskguard.dataflows.guard.live.build_flow`)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from riskguard.connectors.kafka import KeySplit, StartSignal, kafka_output
from riskguard.connectors.kafka.key_split import MEMO_MAX
from riskguard.connectors.topics import DETECTIONS, MARKET, MARKET_STREAMS
from riskguard.dataflows.guard.admit import TickSpec
from riskguard.dataflows.guard.config import GuardConfig, known_names, price_key_prefixes
from riskguard.dataflows.guard.kafka_io import guard_input
from riskguard.dataflows.guard.steps import (
    detect_on,
    is_broadcast,
    mark_filter,
    progress_records,
    select_feeds,
    split_inputs,
    with_own_index,
)
from riskguard.operators.core.base import (
    admit_keys,
    split_dead_letters,
    stateful_logic,
    values_of,
)
from riskguard.operators.core.clock import Clock
from riskguard.operators.core.end_of_input import FinalProgressLogic
from riskguard.operators.core.observe import observe_all
from riskguard.operators.detection.cross_rates import instrument_base
from riskguard.operators.exposure import ShardPlace
from riskguard.operators.exposure.ops import (
    value_positions,
)
from riskguard.schemas import (
    AnomalySignal,
    Balance,
    DeadLetter,
    DetectProgress,
    Fill,
    IndexPrice,
    OpenOrders,
    PositionSnapshot,
    RiskAlert,
    encode,
)
from riskguard.schemas.base import Record, source_of
from riskguard.schemas.names import short_memo
from riskguard.schemas.valuation import Part, Progress, encode_valuations


def market_source(index: int) -> str:
    """Market process ``index``'s source name and detections-topic key (kept across
    restarts).

    >>> market_source(1)
    'market/1'
    """
    return f"market/{index}"


class MarketOwners:
    """Which of ``processes`` market processes owns what.

    A market process owns whole *underlyings* (every instrument on one, on every venue,
    with its market data, positions, fills and snapshots), so nothing is exchanged between
    market processes. ``owners`` names an underlying's process; any other goes to
    ``crc32(name) % processes``. An instrument the registry does not declare counts as
    its base asset, parsed as the cross-venue confirmation groups markets
    (:func:`~riskguard.operators.detection.cross_rates.instrument_base`: ``BTCUSDT``,
    ``XBTUSD`` and ``BTC-USD`` -> ``BTC``), else as the part before its first ``-``, so
    the markets of one group are never split; a collateral asset and a venue's own
    features (key ``<venue>``) count as their own names.

    >>> owners = MarketOwners(0, 2, {"BTC": 0, "ETH": 1}, {"BTC-27DEC26-70000-C": "BTC"}.get)
    >>> [owners.of_key(k) for k in ("okx/BTC-PERP", b"deribit/BTC-27DEC26-70000-C",
    ...                             "okx/ETH-USDT")]
    [0, 0, 1]
    >>> owners.local("okx/ETH-PERP"), owners.owns("i:BTC-PERP"), owners.owns("a:ETH")
    (False, True, False)
    """

    def __init__(self, index: int, processes: int, owners: Mapping[str, int],
                 underlying_of: Callable[[str], str | None]) -> None:
        self.index = index
        self.processes = processes
        self.owners = dict(owners)
        self.underlying_of = underlying_of
        # asked per market message (before decoding) and per record: memoized
        self.of_key: Callable[[str | bytes | None], int] = short_memo(MEMO_MAX)(self._of_key)
        self.of_instrument: Callable[[str], int] = short_memo(MEMO_MAX)(
            self._of_instrument)

    def of_underlying(self, name: str) -> int:
        """The process owning underlying (or collateral asset) ``name``."""
        hit = self.owners.get(name)
        return hit if hit is not None else zlib.crc32(name.encode()) % self.processes

    def _of_instrument(self, name: str) -> int:
        """The process owning instrument ``name`` (memoized as ``of_instrument``)."""
        return self.of_underlying(self.underlying_of(name) or instrument_base(name))

    def _of_key(self, key: str | bytes | None) -> int:
        """The process owning a Kafka or state key (``<venue>/<instrument>`` or
        ``<venue>``); no key belongs to process 0."""
        if key is None:
            return 0
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        venue, slash, instrument = text.partition("/")
        return self.of_instrument(instrument) if slash else self.of_underlying(venue)

    def local(self, key: str) -> bool:
        """Does state key ``key`` live in this process? (a guard step's ``local_keys``)"""
        return self.of_key(key) == self.index

    def owns_key(self, key: bytes | None) -> bool:
        """Is the Kafka key ``key`` of a market message this process's?"""
        return self.of_key(key) == self.index

    def owns(self, name: str) -> bool:
        """Does this process hold ``i:<instrument>`` or ``a:<asset>`` in exposure valuation
        (:class:`~riskguard.operators.exposure.ShardPlace`)?"""
        kind, _, rest = name.partition(":")
        where = self.of_instrument(rest) if kind == "i" else self.of_underlying(rest)
        return where == self.index

    def keeps(self, rec: Any) -> bool:
        """Of what every market process reads whole: does this one keep ``rec``? A
        trading record: its instrument's (a balance: its asset's) owner; a dead letter:
        the process its partition falls to (written once); anything else: every process.

        >>> owners = MarketOwners(1, 2, {"BTC": 0, "ETH": 1}, lambda name: None)
        >>> fill = Fill(id="f", venue="okx", counterparty="okx", instrument="ETH-PERP",
        ...             side="buy", qty=1.0, price=1.0, ts=1)
        >>> dead = DeadLetter(topic="t", partition=2, ts=1, reason="malformed")
        >>> owners.keeps(fill), owners.keeps(dead)
        (True, False)
        """
        t = type(rec)
        if t is Fill or t is PositionSnapshot or t is OpenOrders:
            return self.of_instrument(rec.instrument) == self.index
        if t is Balance:
            return self.of_underlying(rec.asset) == self.index
        if t is DeadLetter:
            return max(rec.partition, 0) % self.processes == self.index
        return True


def market_owners(cfg: GuardConfig) -> MarketOwners:
    """What this market process owns (``[tier]``: ``index`` of ``market_processes``,
    ``owners``), underlyings taken from the instruments ``[exposure]`` declares."""
    reg = cfg.exposure.validate()

    def underlying_of(name: str) -> str | None:
        spec = reg.get(name)
        return None if spec is None else spec.underlying_asset

    tier = cfg.tier
    return MarketOwners(tier.index, tier.market_processes, tier.owners, underlying_of)


# market data keyed venue/instrument, read by its key's owner only (index prices are
# every process's)
_KEYED = tuple(t for t in MARKET if t is not IndexPrice)


def owned_records(owners: MarketOwners, market_topic: str) -> Callable[[list[Any]], list[Any]]:
    """A market process's share of what it read: its own underlyings' records, every
    index price and heartbeat. A market record whose key brought it here but whose
    instrument another process owns was mis-keyed: no other process has it, so it becomes
    a ``misplaced`` dead letter rather than lost."""
    index = owners.index
    of_instrument = owners.of_instrument
    keeps = owners.keeps

    def misplaced(rec: Any) -> DeadLetter:
        topic, partition, offset = source_of(rec) or (market_topic, -1, -1)
        return DeadLetter.of(
            topic=topic, partition=partition, offset=offset, ts=rec.ts, reason="misplaced",
            path="$.instrument",
            expected=(f"a record of an underlying market process {index} owns, keyed "
                      "<venue>/<instrument>"),
            found=f"{rec.venue}/{rec.instrument}", step="market_owners", raw=encode(rec))

    def own(recs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for r in recs:
            if isinstance(r, _KEYED):
                out.append(r if of_instrument(r.instrument) == index else misplaced(r))
            elif keeps(r):
                out.append(r)
        return out

    return own


def valuation_records(source: str) -> Callable[[list[Any]], list[bytes]]:
    """A market process's stage-1 output as encoded :class:`~riskguard.schemas.Valuation`
    records from ``source`` (:func:`~riskguard.schemas.valuation.encode_valuations`)."""

    def pack(made: list[Any]) -> list[bytes]:
        alerts: list[RiskAlert] = []
        parts: list[Part] = []
        progress: list[Progress] = []
        # stage 1 makes nothing else: another type is a bug, and raises
        to: dict[type, Callable[[Any], None]] = {
            RiskAlert: alerts.append, Part: parts.append, Progress: progress.append}
        for x in made:
            to[type(x)](x)
        return encode_valuations(source, alerts, parts, progress)

    return pack


@dataclass(frozen=True)
class MarketOut:
    """A market process's outputs."""

    # AnomalySignal and DetectProgress records, and encoded Valuation records (bytes)
    detections: Stream[AnomalySignal | DetectProgress | bytes]
    dead_letters: Stream[DeadLetter]


@operator
def market_core(
    step_id: str,
    records: Stream[Record],
    *,
    cfg: GuardConfig,
    clock: Clock,
    owners: MarketOwners,
    wall_clock: Clock | None = None,
) -> MarketOut:
    """One market process (``tier.role = "market"``) over its decoded records, past its
    own admission gate (``[admission]``'s caps count per process): feed selection,
    detection on its own keys, and stage-1 valuation of its own underlyings' positions;
    its progress goes out behind the signals and valuations made before it."""
    name = market_source(owners.index)
    admitted = admit_keys("admit", records, config=cfg.admission, known=known_names(cfg),
                          clock=clock, make_ticks=TickSpec(cfg.tick_ns, source=name, of=1).maker)
    records, ticks = admitted.oks, admitted.ticks
    market, _rest, status, trading = split_inputs(records)
    market_ok = select_feeds(market, status, cfg, owners.local)
    feat_market = with_own_index(market, market_ok)
    # its own underlyings hold every market of their cross-market groups
    anomalies, errs = detect_on(feat_market, status, cfg, clock, owners.local,
                                timed=admitted.timed)
    place = ShardPlace(f"m{owners.index}.", owners.owns, owners.processes)
    valued = value_positions("exposure", feat_market, trading, config=cfg.exposure,
                             place=place, ticks=ticks, clock=clock, wall_clock=wall_clock,
                             marks=mark_filter(cfg))
    # the gate's alerts travel as stage-1 alerts do, inside valuations
    valuations = op.flat_map_batch("valuations", op.merge(
        "made", valued.made, admitted.alerts), valuation_records(name))
    # the signals first: a batch's progress goes out behind its signals
    progress = op.flat_map_batch("progress", ticks, lambda ts: progress_records(ts, name))
    detections = op.merge("detections", anomalies, valuations, progress)
    dead = op.flat_map_batch("observe_errs", op.merge(
        "errs", admitted.errs, *errs, valued.errs), observe_all)
    return MarketOut(detections=detections, dead_letters=dead)


def market_flow(cfg: GuardConfig, clock: Clock) -> Dataflow:
    """A market process (``tier.role = "market"``): the market topic split by underlying
    and the venue-status, fill, position and balance topics whole in; its signals,
    valuations and progress out to its partition of the ``detections`` topic.

    Each source dead letter is written by one process only: the market topic's by its
    key's owner, the venue-status topic's by the firm process, the rest by the process
    their partition falls to."""
    flow = Dataflow("riskguard_market")
    owners = market_owners(cfg)
    market_topic, status_topic = cfg.topic("market"), cfg.topic("venue_status")

    def writes(d: DeadLetter) -> bool:
        """Of the source's dead letters, those this process writes (above), and counts."""
        return d.topic != status_topic and (d.topic == market_topic or owners.keeps(d))

    # the market messages whose key's underlying it owns, and every index and oracle price
    split = KeySplit(frozenset({cfg.topic("market")}), owners.owns_key,
                     shared_prefixes=price_key_prefixes(cfg), must_share=is_broadcast,
                     counts_dead=writes)
    src = guard_input(flow, cfg, MARKET_STREAMS, clock, split=split)
    mine = split_dead_letters("owned", op.flat_map_batch(
        "own", src.oks, owned_records(owners, cfg.topic("market"))))
    out = market_core("market_tier", mine.oks, cfg=cfg, clock=clock, owners=owners,
                      wall_clock=clock)
    timeout = cfg.sink_delivery_timeout_s
    name = market_source(owners.index)
    # then (a bounded run) its final progress, which ends its partition for the firm
    started = op.input("start", flow, StartSignal())
    detections = op.flat_map_batch("final_unkey", stateful_logic(
        "final", op.flat_map_batch("final_key", op.merge("final_in", started, out.detections),
                                   lambda rs: [(name, r) for r in rs]),
        lambda state: FinalProgressLogic(name, state)), values_of)
    # its own partition (index modulo the count): the firm process aligns on exactly those
    kafka_output("detections", detections, brokers=cfg.kafka,
                 topic=cfg.topic(DETECTIONS), delivery_timeout_s=timeout,
                 key=lambda _rec: name, partition=owners.index)
    src_dead = op.flat_map_batch("own_dead", src.errs, lambda ds: list(filter(writes, ds)))
    # the source counted what it could not decode; a misplaced record is counted here
    misplaced = op.flat_map_batch("observe_misplaced", mine.errs, observe_all)
    kafka_output("dead_letters", op.merge("dead", src_dead, misplaced, out.dead_letters),
                 brokers=cfg.kafka, topic=cfg.topic("dead_letters"),
                 delivery_timeout_s=timeout)
    return flow
