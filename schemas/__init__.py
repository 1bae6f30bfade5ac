"""The typed wire contract: every record that crosses a topic.

Records are frozen, tagged, versioned ``msgspec.Struct`` types. Decode bytes
with :func:`decode` (or a :class:`Codec`), encode with :func:`encode`.
"""

from riskguard.schemas.audit import AuditCheckpoint, AuditRecord, DeadLetter
from riskguard.schemas.base import Record
from riskguard.schemas.codec import ALL_TYPES, Codec, decode, encode, tag_of
from riskguard.schemas.commands import (
    AckOutcome,
    Action,
    Audience,
    ExecutionAck,
    LimitUpdate,
    MitigationCommand,
    Signature,
    SignedEnvelope,
    decision_digest,
)
from riskguard.schemas.market import (
    Bar,
    BookDepth,
    FundingRate,
    IndexPrice,
    MarketEvent,
    OptionQuote,
    OptionType,
    Quote,
    Side,
    Trade,
    VenueState,
    VenueStatus,
)
from riskguard.schemas.signals import (
    FIRM,
    AnomalySignal,
    Contribution,
    DetectProgress,
    Exposure,
    FeatureVector,
    LimitBreach,
    LimitLevel,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
    Utilization,
)
from riskguard.schemas.trading import Balance, Fill, OpenOrders, PositionSnapshot
from riskguard.schemas.valuation import Part, Progress, Valuation

__all__ = [
    "ALL_TYPES",
    "FIRM",
    "AckOutcome",
    "Action",
    "AnomalySignal",
    "Audience",
    "AuditCheckpoint",
    "AuditRecord",
    "Balance",
    "Bar",
    "BookDepth",
    "Codec",
    "Contribution",
    "DeadLetter",
    "DetectProgress",
    "ExecutionAck",
    "Exposure",
    "FeatureVector",
    "Fill",
    "FundingRate",
    "IndexPrice",
    "LimitBreach",
    "LimitLevel",
    "LimitUpdate",
    "MarketEvent",
    "MitigationCommand",
    "OpenOrders",
    "OptionQuote",
    "OptionType",
    "Part",
    "PositionSnapshot",
    "Progress",
    "Quote",
    "Record",
    "RiskAlert",
    "Scope",
    "ScopeKind",
    "Severity",
    "Side",
    "Signature",
    "SignedEnvelope",
    "Trade",
    "Utilization",
    "Valuation",
    "VenueState",
    "VenueStatus",
    "decision_digest",
    "decode",
    "encode",
    "tag_of",
]
