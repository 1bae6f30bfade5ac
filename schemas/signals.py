"""What the detection and limit operators emit: features, signals, exposures, breaches."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec
from riskguard.schemas.base import Record
from riskguard.schemas.types import (
    Finite,
    Label,
    Name,
    Nanos,
    NonNegative,
    RecordId,
    ScopeValue,
    Seq,
    Text,
)


class Severity(StrEnum):
    INFO = "info"
    WARN = "warn"
    CRITICAL = "critical"


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
    venue: Name | None = None

    def label(self) -> str:
        """A stable text form, e.g. ``instrument:binance/BTC-USDT``."""
        where = f"{self.venue}/" if self.venue else ""
        return f"{self.kind.value}:{where}{self.value}"


FIRM = Scope(kind=ScopeKind.FIRM, value="*")


class FeatureVector(Record, frozen=True, kw_only=True, tag="features"):
    """Per-key features at an event time. ``key`` is ``venue/instrument`` or ``venue``."""

    key: Name
    scope: Scope
    ts: Nanos
    recv_ts: Nanos | None = None
    values: dict[str, Finite]
    evidence_ids: list[RecordId] = []


class Contribution(msgspec.Struct, frozen=True, kw_only=True):
    """A feature's standardized deviation from the key's running statistics."""

    feature: Name
    value: Finite
    zscore: Finite


class AnomalySignal(Record, frozen=True, kw_only=True, tag="anomaly"):
    """An anomaly episode event, or a regime change, for one key.

    ``phase`` is ``open`` when an episode starts, ``escalate`` when its
    severity rises, ``close`` when it ends. A regime change has
    ``kind == "regime_change"`` and ``phase == "open"``.
    """

    id: RecordId
    kind: Literal["anomaly", "regime_change"] = "anomaly"
    phase: Literal["open", "escalate", "close"] = "open"
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


class RiskAlert(Record, frozen=True, kw_only=True, tag="risk_alert"):
    """A discrete risk condition that is not a score.

    ``kind`` is one of ``stale_mark``, ``reconciliation_break``,
    ``heartbeat_loss``, ``heartbeat_restored``, ``subscriber_gap``,
    ``unknown_counterparty``, ``missing_mark``, ``missing_fx``,
    ``feed_failover`` or ``feed_restored``.
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


class Exposure(Record, frozen=True, kw_only=True, tag="exposure"):
    """One counterparty's exposure (or the firm rollup when ``counterparty == "*"``).

    Amounts are in the reporting currency.
    """

    counterparty: ScopeValue
    ts: Nanos
    recv_ts: Nanos | None = None
    gross_notional: NonNegative
    net_notional: Finite
    delta_by_underlying: dict[str, Finite] = {}
    notional_by_asset: dict[str, Finite] = {}
    notional_by_instrument: dict[str, Finite] = {}
    collateral: Finite = 0.0
    unrealized_pnl: Finite = 0.0
    open_order_notional: NonNegative = 0.0
    concentration: Finite = 0.0
    stale: bool = False
    stale_instruments: list[Name] = []
    evidence_ids: list[RecordId] = []
    seq: Seq = 0
    vol_by_underlying: dict[str, Finite] = {}


class LimitLevel(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    HARD = "hard"


class Utilization(Record, frozen=True, kw_only=True, tag="utilization"):
    """A limit's current utilization and how its effective limit was derived."""

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
    latched: bool = False
    inputs: dict[str, Finite] = {}


class LimitBreach(Record, frozen=True, kw_only=True, tag="limit_breach"):
    """A limit crossed its breach or hard level (or cleared it: ``level == ok``)."""

    id: RecordId
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
    severity: Severity
    inputs: dict[str, Finite] = {}
    evidence_ids: list[RecordId] = []


SIGNAL_TYPES = (FeatureVector, AnomalySignal, RiskAlert, Exposure, Utilization, LimitBreach)
