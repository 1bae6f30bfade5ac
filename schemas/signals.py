"""What the detection and limit operators emit: features, signals, exposures, breaches."""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Literal

import msgspec
from riskguard.schemas.base import Record
from riskguard.schemas.market import Measure
from riskguard.schemas.types import (
    DurationNs,
    Finite,
    Label,
    MarketName,
    Name,
    Nanos,
    NonNegative,
    Positive,
    RecordId,
    ScopeValue,
    Seq,
    Text,
)


class Severity(StrEnum):
    INFO = "info"
    WARN = "warn"
    CRITICAL = "critical"


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARN: 1, Severity.CRITICAL: 2}
"""Severities in order: ``SEVERITY_RANK[a] > SEVERITY_RANK[b]`` when ``a`` is worse."""


class ScopeKind(StrEnum):
    VENUE = "venue"
    COUNTERPARTY = "counterparty"
    INSTRUMENT = "instrument"
    UNDERLYING = "underlying"
    FIRM = "firm"


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """What a signal or a command is about.

    ``value`` is the venue, counterparty, instrument or underlying name;
    ``venue`` narrows an instrument or underlying scope to one venue.
    A firm scope has ``value == "*"``.
    """

    kind: ScopeKind
    value: ScopeValue
    venue: MarketName | None = None

    def label(self) -> str:
        """A stable text form, e.g. ``instrument:binance/BTC-USDT``."""
        where = f"{self.venue}/" if self.venue else ""
        return f"{self.kind.value}:{where}{self.value}"


FIRM = Scope(kind=ScopeKind.FIRM, value="*")


class FeatureVector(Record, frozen=True, kw_only=True, tag="features"):
    """Per-key features at an event time. ``key`` is ``venue/instrument`` or ``venue``.

    Market keys also carry their price at ``ts`` and the ``low`` and ``high`` seen
    since the previous vector (a bar's own low and high), for the move bands;
    ``interval_ns`` is the bar interval when the key is fed bars, and ``measure``
    what its bars' values are (prices, or a volatility index).
    """

    key: Name
    scope: Scope
    ts: Nanos
    recv_ts: Nanos | None = None
    values: dict[str, Finite]
    evidence_ids: list[RecordId] = []
    price: Positive | None = None
    low: Positive | None = None
    high: Positive | None = None
    interval_ns: DurationNs = 0
    measure: Measure = Measure.PRICE


class Contribution(msgspec.Struct, frozen=True, kw_only=True):
    """A feature's standardized deviation from the key's running statistics."""

    feature: Name
    value: Finite
    zscore: Finite


class AnomalySignal(Record, frozen=True, kw_only=True, tag="anomaly"):
    """An anomaly episode event, or a regime change, for one key.

    ``phase`` is ``open`` when an episode starts, ``escalate`` when its
    severity rises, ``deescalate`` when it falls while the episode goes on (a
    price move that tripped and has found its level), ``close`` when it ends. A
    regime change has
    ``kind == "regime_change"`` and ``phase == "open"``. ``kind == "price_move"``
    comes from the move bands (:mod:`riskguard.operators.detection.move_bands`),
    ``kind == "dislocation"`` from the cross-market check
    (:mod:`riskguard.operators.detection.cross_rates`), ``kind == "stale_feed"`` from
    the stale book-side check (:mod:`riskguard.operators.detection.stale_book`).
    ``rule`` names what made a price move critical, on the ``open`` or ``escalate``
    that made it so: one of the move bands' critical rules (``detector.bands.
    critical_rules``: ``fast_fall``, ``slide``, ``limit``, ``static``, ``ratio``,
    ``horizons``; docs/detectors.md) or ``confirmation`` (another venue's trip); None on
    every other signal.
    """

    id: RecordId
    kind: Literal["anomaly", "regime_change", "price_move", "dislocation",
                  "stale_feed"] = "anomaly"
    phase: Literal["open", "escalate", "deescalate", "close"] = "open"
    key: Name
    scope: Scope
    ts: Nanos
    recv_ts: Nanos | None = None
    episode_id: RecordId | None = None
    score: Finite
    threshold: Finite
    severity: Severity
    warming_up: bool = False
    top_features: list[Contribution] = []
    model: Label
    model_version: Label
    evidence_ids: list[RecordId] = []
    rule: Label | None = None

    @property
    def episode(self) -> str:
        """The episode it belongs to: its ``episode_id``, or its own id (a signal of no
        episode, such as a regime change, is one of its own)."""
        return self.episode_id or self.id


class RiskAlert(Record, frozen=True, kw_only=True, tag="risk_alert"):
    """A discrete risk condition that is not a score.

    ``kind`` is one of ``stale_mark`` or ``mark_restored`` (a held instrument's mark
    grew too old, or is fresh again), ``reconciliation_break``,
    ``heartbeat_loss``, ``heartbeat_restored``, ``subscriber_gap``,
    ``unknown_counterparty``, ``missing_mark``, ``missing_fx``,
    ``feed_failover``, ``feed_restored``, ``withdrawals_halted``,
    ``withdrawals_resumed``, ``depeg``, ``peg_restored``,
    ``limit_update_accepted``, ``limit_update_rejected``, ``unvalued_exposure`` (a
    limit measures an exposure that cannot be valued),
    ``command_unacknowledged``, ``command_acknowledged`` or ``command_refused`` (what
    executors said about the guard's commands, or did not say in time), ``admission_cap``
    (more venues, instruments or counterparties than ``[admission]`` admits),
    ``market_process_silent`` or ``market_process_restored`` (the market tier's firm
    process stopped hearing from a market process, or hears from it again).
    """

    id: RecordId
    kind: Name
    scope: Scope
    ts: Nanos
    recv_ts: Nanos | None = None
    severity: Severity = Severity.WARN
    reason: Text
    details: dict[str, Finite | str] = {}
    evidence_ids: list[RecordId] = []


class Exposure(Record, frozen=True, kw_only=True, tag="exposure", dict=True):
    """One counterparty's exposure (or the firm rollup when ``counterparty == "*"``).

    Amounts are in the reporting currency. The notional per open position is carried
    as two aligned lists, ``instruments`` and ``instrument_notionals`` (columnar: a
    counterparty holds hundreds of positions and every price move re-values them all);
    :attr:`notional_by_instrument` is the same as a dict, and
    :meth:`instrument_notional` looks one up.

    >>> e = Exposure(counterparty="okx", ts=1, gross_notional=3.0, net_notional=-1.0,
    ...              instruments=["BTC-PERP", "ETH-PERP"], instrument_notionals=[-2.0, 1.0])
    >>> e.notional_by_instrument, e.instrument_notional("ETH-PERP"), e.instrument_notional("X")
    ({'BTC-PERP': -2.0, 'ETH-PERP': 1.0}, 1.0, 0.0)
    """

    counterparty: ScopeValue
    ts: Nanos
    recv_ts: Nanos | None = None
    gross_notional: NonNegative
    net_notional: Finite
    delta_by_underlying: dict[str, Finite] = {}
    notional_by_asset: dict[str, Finite] = {}
    instruments: list[Name] = []
    instrument_notionals: list[Finite] = []
    collateral: Finite = 0.0
    unrealized_pnl: Finite = 0.0
    open_order_notional: NonNegative = 0.0
    concentration: Finite = 0.0
    stale: bool = False
    stale_instruments: list[Name] = []
    evidence_ids: list[RecordId] = []
    seq: Seq = 0
    vol_by_underlying: dict[str, Finite] = {}
    # the event time of each vol in vol_by_underlying: the newest one of an underlying wins
    vol_ts_by_underlying: dict[str, Nanos] = {}
    # positions (and open orders) and collateral assets with no mark or no FX rate: their
    # value is left out of the sums above, so a limit counts them as unvalued, never as 0
    unvalued_instruments: list[Name] = []
    unvalued_collateral: list[Name] = []

    def __post_init__(self) -> None:
        if len(self.instruments) != len(self.instrument_notionals):
            raise ValueError(f"instruments ({len(self.instruments)}) and "
                             f"instrument_notionals ({len(self.instrument_notionals)}) "
                             "must have the same length")

    @property
    def notional_by_instrument(self) -> dict[str, float]:
        """Notional per open position, by instrument name."""
        return dict(zip(self.instruments, self.instrument_notionals, strict=True))

    def instrument_notional(self, name: str) -> float:
        """The notional held in ``name`` (0.0 when no position is open in it): a look-up
        in an index built once per exposure, as a limits plan reads one per limit."""
        return self._by_instrument.get(name, 0.0)

    @functools.cached_property
    def _by_instrument(self) -> dict[str, float]:
        """:attr:`notional_by_instrument`, built once (not encoded, not compared: the
        struct's ``__dict__``)."""
        return self.notional_by_instrument


class LimitLevel(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    HARD = "hard"


class LimitReading(Record, frozen=True, kw_only=True):
    """What one limit reads at ``ts``: the exposure it measures, its base and effective
    limits, the utilization and its level (the fields :class:`Utilization` and
    :class:`LimitBreach` share)."""

    limit_path: Name
    kind: Name
    scope: Scope
    ts: Nanos
    recv_ts: Nanos | None = None
    exposure: Finite
    base_limit: NonNegative
    effective_limit: NonNegative
    utilization: NonNegative
    level: LimitLevel


class Utilization(LimitReading, frozen=True, kw_only=True, tag="utilization"):
    """A limit's current utilization and how its effective limit was derived."""

    latched: bool = False
    inputs: dict[str, Finite] = {}


class LimitBreach(LimitReading, frozen=True, kw_only=True, tag="limit_breach"):
    """A limit crossed its breach or hard level (or cleared it: ``level == ok``)."""

    id: RecordId
    severity: Severity
    inputs: dict[str, Finite] = {}
    evidence_ids: list[RecordId] = []


class DetectProgress(Record, frozen=True, kw_only=True, tag="detect_progress"):
    """Event-time progress of one market process, on the ``detections`` topic.

    A market process (``tier.role = "market"``) writes it behind the anomaly
    signals and valuations it made from the records read before it. A signal of a
    feature bar still open comes later, with an older time. The firm process holds
    its clock at the slowest live source's ``ts`` (see docs/scaling.md, "The market
    tier"). A ``final`` one is the last a market process writes when its input ends (a
    bounded run: a replay, a test, the demo): the firm process reading it ends that
    source's partition.
    """

    ts: Nanos
    source: Label
    # the worker's input ended (a bounded run): nothing more comes from ``source``
    final: bool = False


SIGNAL_TYPES = (FeatureVector, AnomalySignal, RiskAlert, Exposure, Utilization, LimitBreach,
                DetectProgress)


_LEVEL_SEPARATOR = re.compile(r"(?=\.(?:asset|instrument)\.)")


def parse_limit_path(path: str) -> tuple[str, str, str]:
    """``(key, level, name)`` of a limit path; raises ``ValueError`` if malformed or if it
    could be read more than one way (names may hold dots: a counterparty, asset or
    instrument name in a path must not hold ``.asset.`` or ``.instrument.``). Every reader
    of a path, the signature check's scope included, reads it here.

    >>> parse_limit_path("counterparty.okx.asset.BTC")
    ('okx', 'asset', 'BTC')
    >>> parse_limit_path("counterparty.okx.eu"), parse_limit_path("firm")
    (('okx.eu', 'cp', 'okx.eu'), ('*', 'firm', '*'))
    >>> parse_limit_path("counterparty.okx.asset.BTC.instrument.X")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: limit path 'counterparty.okx.asset.BTC.instrument.X' can be read more ...
    """
    if path == "firm":
        return "*", "firm", "*"
    if path.startswith("firm.asset."):
        name = path[len("firm.asset."):]
        if name and not _LEVEL_SEPARATOR.search(name):
            return "*", "asset", name
    elif path.startswith("counterparty.") and len(path) > len("counterparty."):
        rest = path[len("counterparty."):]
        seps = [m.start() for m in _LEVEL_SEPARATOR.finditer(rest)]
        if not seps:
            return rest, "cp", rest
        if len(seps) == 1:
            cp, level, name = rest[:seps[0]], *rest[seps[0] + 1:].split(".", 1)
            if cp and name:
                return cp, level, name
        else:
            msg = (f"limit path {path!r} can be read more than one way: a name in it holds "
                   ".asset. or .instrument.")
            raise ValueError(msg)
    msg = ("limit path must be firm[.asset.<a>] or counterparty.<cp>[.asset.<a> | "
           f".instrument.<i>]; got {path!r}")
    raise ValueError(msg)


ANOMALY_KINDS = ("anomaly", "regime_change", "price_move", "dislocation", "stale_feed")
"""``AnomalySignal.kind`` values."""
ALERT_KINDS = (
    "stale_mark", "mark_restored", "reconciliation_break", "heartbeat_loss", "heartbeat_restored",
    "subscriber_gap", "unknown_counterparty", "missing_mark", "missing_fx",
    "feed_failover", "feed_restored", "withdrawals_halted", "withdrawals_resumed", "depeg",
    "peg_restored", "limit_update_accepted", "limit_update_rejected", "unvalued_exposure",
    "command_unacknowledged", "command_acknowledged", "command_refused", "replica_silent",
    "replica_restored", "replica_divergence", "replica_config_mismatch", "replica_unverified",
    "admission_cap", "market_process_silent", "market_process_restored",
)
"""``RiskAlert.kind`` values the guard and its executors raise."""
SIGNAL_KINDS = frozenset({*ANOMALY_KINDS, "breach", *ALERT_KINDS})
"""Every signal kind a playbook rule can match (``Rule.signal``): anomaly kinds, a limit
``breach``, and alert kinds."""
