"""Mitigation commands, limit updates, and the signed envelope that carries them."""

from __future__ import annotations

import hashlib
from enum import StrEnum

import msgspec
from riskguard.schemas.base import Record, Sourced
from riskguard.schemas.market import MARKET_TYPES
from riskguard.schemas.signals import Scope, ScopeKind
from riskguard.schemas.trading import TRADING_TYPES
from riskguard.schemas.types import Finite, HexDigest, Name, Nanos, NonNegative, RecordId, Seq, Text


class Action(StrEnum):
    """The closed set of mitigation actions."""

    ALERT = "alert"
    WIDEN_QUOTES = "widen_quotes"
    REDUCE_LIMITS = "reduce_limits"
    REDUCE_ONLY = "reduce_only"
    CANCEL_ALL = "cancel_all"
    HALT_TRADING = "halt_trading"
    REROUTE_ORDER_FLOW = "reroute_order_flow"
    HEDGE_DELTA = "hedge_delta"
    PAUSE_WITHDRAWALS = "pause_withdrawals"
    FAILOVER_FEED = "failover_feed"
    RESUME = "resume"


PROTECTIVE = frozenset({Action.REDUCE_ONLY, Action.HALT_TRADING})
"""The actions whose commands carry ``protective_orders_allowed = true``: risk-reducing
orders stay allowed under them."""


class Audience(msgspec.Struct, frozen=True, kw_only=True):
    """Who a signed message is for: an environment and a topic."""

    env: Name
    topic: Name


def command_scope_problem(scope: Scope) -> str | None:
    """None if a command may carry ``scope``; else why not.

    A command names exactly what it acts on: ``firm:*`` (value ``*``, no venue)
    for the whole firm, otherwise one venue, counterparty, underlying or
    instrument by name, optionally narrowed to one venue (instrument and
    underlying only). ``*`` is never a wildcard outside ``firm``, and no name
    holds ``/``, so every label reads back to one scope.

    >>> command_scope_problem(Scope(kind=ScopeKind.VENUE, value="okx")) is None
    True
    >>> command_scope_problem(Scope(kind=ScopeKind.VENUE, value="*"))
    "'*' (all) is only allowed in the firm scope; venue:* names no single venue"
    """
    if scope.kind is ScopeKind.FIRM:
        if scope.value != "*" or scope.venue is not None:
            return f"a firm scope is exactly firm:*; got {scope.label()}"
        return None
    if scope.value == "*":
        return (f"'*' (all) is only allowed in the firm scope; {scope.label()} names no "
                f"single {scope.kind.value}")
    if "/" in scope.value:
        return f"a {scope.kind.value} name holds no '/'; got {scope.value!r}"
    if scope.venue is not None:
        if scope.kind not in (ScopeKind.INSTRUMENT, ScopeKind.UNDERLYING):
            return f"only instrument and underlying scopes take a venue; got {scope.label()}"
        if "/" in scope.venue or scope.venue == "*":
            return f"a venue is one venue's name; got {scope.venue!r}"
    return None


def scope_is_wide(scope: Scope) -> bool:
    """True for a scope wider than one venue or one counterparty: the firm, or an
    instrument or underlying on every venue. The two-person rule always covers these.

    >>> scope_is_wide(Scope(kind=ScopeKind.UNDERLYING, value="BTC"))
    True
    >>> scope_is_wide(Scope(kind=ScopeKind.UNDERLYING, value="BTC", venue="okx"))
    False
    """
    if scope.kind is ScopeKind.FIRM:
        return True
    return scope.kind in (ScopeKind.INSTRUMENT, ScopeKind.UNDERLYING) and scope.venue is None


def decision_digest(basis: str, action: Action | str, scope: Scope,
                    params: dict[str, object], evidence: list[str]) -> str:
    """A command's ``decision_id``: SHA-256 (hex) of the sorted-key JSON array
    ``[basis, action, scope label, params, sorted evidence ids]``. ``basis`` names what
    decided it (rule, rung, incident); who signed, ``issued_at`` and ``seq`` are left
    out, so replicas that see the same input make the same decision ids.

    >>> scope = Scope(kind=ScopeKind.VENUE, value="okx")
    >>> a = decision_digest("flash_crash|1", Action.REDUCE_ONLY, scope, {}, ["e2", "e1"])
    >>> a == decision_digest("flash_crash|1", "reduce_only", scope, {}, ["e1", "e2"])
    True
    >>> len(a), a == decision_digest("flash_crash|2", Action.REDUCE_ONLY, scope, {}, ["e1"])
    (64, False)
    """
    body = [basis, str(action), scope.label(), params, sorted(evidence)]
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


class MitigationCommand(Record, frozen=True, kw_only=True, tag="command"):
    """A mitigation command. ``command_id`` is the idempotency key of one signed
    copy; ``decision_id`` (:func:`decision_digest`) is the same on every replica's copy
    of one decision, so an executor acts on the first and drops the rest.

    ``protective_orders_allowed`` states that risk-reducing orders stay allowed
    (true for ``reduce_only`` and ``halt_trading``). ``replica`` names the guard
    replica that made it (none: a single guard). ``trust_serial`` is the serial of the
    trust file its signer ran on (0: not stated): a guard restarted on an older trust
    file, which may still trust keys since revoked, finds the newer serial on its own
    last commands and refuses to start.
    """

    command_id: RecordId
    issuer: Name
    seq: Seq = 0
    issued_at: Nanos
    expires_at: Nanos
    audience: Audience
    action: Action
    scope: Scope
    params: dict[str, Finite | str | list[str]] = {}
    reason: Text
    evidence_hash: HexDigest | None = None
    evidence_hashes: list[HexDigest] = []
    protective_orders_allowed: bool = False
    recv_ts: Nanos | None = None
    decision_id: HexDigest | None = None
    replica: Name | None = None
    trust_serial: Seq = 0


class LimitUpdate(Record, frozen=True, kw_only=True, tag="limit_update"):
    """A runtime change to one limit, its scaling rule or its latch.

    ``limit_path`` is ``firm``, ``counterparty.<cp>``, ``counterparty.<cp>.asset.<a>``
    or ``counterparty.<cp>.instrument.<i>``; ``kind`` is the limit kind.
    ``reset_latch`` clears a manual-reset latch.
    """

    update_id: RecordId
    issuer: Name
    seq: Seq = 0
    issued_at: Nanos
    expires_at: Nanos
    audience: Audience
    limit_path: Name
    kind: Name
    limit: NonNegative | None = None
    warn: NonNegative | None = None
    hard: NonNegative | None = None
    vol_scaling: dict[str, Finite] | None = None
    manual_reset: bool | None = None
    reset_latch: bool = False
    reason: Text = ""


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """One Ed25519 signature. ``key_id`` is a hint only, never authority."""

    key_id: Name
    sig: bytes


class SignedEnvelope(Sourced, frozen=True, kw_only=True, tag="envelope"):
    """A DSSE-style envelope: the signatures cover
    ``riskguard-v1 0x00 payload_type 0x00 payload`` over the exact payload bytes.
    """

    payload_type: Name
    payload: bytes
    signatures: list[Signature]


class AckOutcome(StrEnum):
    """What an executor did with a verified command."""

    APPLIED = "applied"
    """The trading system now holds the command's state (or has done its one-off act)."""
    ALREADY_APPLIED = "already_applied"
    """A repeat: the state was already as commanded, nothing changed."""
    REFUSED = "refused"
    """The executor would not apply it (its scope names nothing it trades, say)."""
    FAILED = "failed"
    """It tried and the trading system did not take it."""


class ExecutionAck(Record, frozen=True, kw_only=True, tag="execution_ack"):
    """An executor's signed report that it applied or refused one command.

    ``issuer`` is the executor (a trust-file key of role ``executor``), ``seq`` its
    own counter; ``command_id``, ``command_issuer`` and ``decision_id`` name the
    command, ``action`` and ``scope`` repeat it so an ack is read alone. ``ack_id``
    is ``<issuer>:<command_id>``: one command has one ack per executor, and a later
    ack of the same id (a retry that now applied) supersedes the earlier one.
    ``detail`` says what changed (instruments halted, orders cancelled, ...).
    ``settles`` (``already_applied`` only) names the executed command whose state this
    one found in force: another replica's copy of the same decision, or the command
    holding the same mitigation on the scope. An ack settles exactly that copy.
    """

    ack_id: RecordId
    issuer: Name
    seq: Seq = 0
    issued_at: Nanos
    expires_at: Nanos
    audience: Audience
    command_id: RecordId
    command_issuer: Name
    decision_id: HexDigest | None = None
    action: Action
    scope: Scope
    outcome: AckOutcome
    reason: Text = ""
    detail: dict[str, Finite | str | list[str]] = {}
    settles: RecordId | None = None


COMMAND_TYPES = (MitigationCommand, LimitUpdate, SignedEnvelope, ExecutionAck)
SOURCED_TYPES = frozenset({SignedEnvelope, *TRADING_TYPES, *MARKET_TYPES})
"""Inputs a reader stamps with where it read them (:func:`~riskguard.schemas.base.stamp_source`)."""
