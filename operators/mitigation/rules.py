"""The playbook's rules: what a rule matches, the ladder of actions it climbs, and the
playbook configuration, checked once when it loads.

A playbook is a list of :class:`Rule`. A rule matches a signal by kind
(``anomaly``, ``regime_change``, ``breach`` or a :class:`~riskguard.schemas.RiskAlert`
kind), minimum severity, an fnmatch pattern on :meth:`Scope.label` and optional
conditions, then climbs a ladder of :class:`Rung` actions; the logic that runs them
is :class:`~riskguard.operators.mitigation.playbook.PlaybookLogic`.
"""


from __future__ import annotations

import difflib
import math
import re
import uuid
from typing import TYPE_CHECKING, Literal

import msgspec
from riskguard.operators.mitigation.acks import ACKNOWLEDGED, UNACKNOWLEDGED, AckConfig
from riskguard.schemas import FIRM, Action, Scope, ScopeKind, Severity
from riskguard.schemas.action_params import check_rung_params
from riskguard.schemas.signals import SIGNAL_KINDS

from riskguard.errors import ConfigError

if TYPE_CHECKING:
    from riskguard.operators.mitigation.incidents import Incident

S = 1_000_000_000
"""Nanoseconds per second."""

_NS = uuid.UUID("6f1c2f0e-3a57-4f43-9a39-2b5d6f0c9e11")
_RANK = {Severity.INFO: 0, Severity.WARN: 1, Severity.CRITICAL: 2}
_NAME = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,64}$")
_MAX_EVIDENCE = 16
#: RiskAlert kinds that close an incident opened by another kind.
CLOSERS = {"heartbeat_restored": "heartbeat_loss", "feed_restored": "feed_failover",
           "withdrawals_resumed": "withdrawals_halted", "peg_restored": "depeg",
           "detect_restored": "detect_silent", ACKNOWLEDGED: UNACKNOWLEDGED}
#: Signal kinds whose incidents stay open until an explicit close arrives.
#: Every other kind is momentary: its incident counts as closed right after
#: each signal, so the quiet period starts at once and a repeat reopens it.
OPENERS = frozenset({"anomaly", "price_move", "dislocation", "breach", "heartbeat_loss",
                     "feed_failover", "withdrawals_halted", "depeg", "detect_silent",
                     UNACKNOWLEDGED})
TARGETS = ("same", "venue", "counterparty", "underlying", "firm")
_PROTECTIVE = frozenset({Action.REDUCE_ONLY, Action.HALT_TRADING})
_REQUIRED: dict[Action, tuple[str, ...]] = {
    Action.WIDEN_QUOTES: ("bps",),
    Action.REDUCE_LIMITS: ("factor",),
    Action.HEDGE_DELTA: ("target_delta", "hedge_instrument"),
    Action.FAILOVER_FEED: ("backup_feed",),
}

ParamValue = float | str | list[str]


class Rung(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step of a ladder.

    It is reached when the incident has been open ``after_s`` seconds of event
    time, or (if ``min_severity`` is set) as soon as the incident's severity
    reaches it. A rung with ``requires`` is never reached, nor any rung after it,
    while the incident's severity is below that: a warning that lasts does not
    climb to a halt.
    """

    action: Action
    after_s: float = 0.0
    min_severity: Severity | None = None
    requires: Severity | None = None
    params: dict[str, ParamValue] = {}


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Signal match plus the action ladder it climbs.

    ``target`` maps the signal's scope to the commands' scope: ``same``,
    ``venue`` (the venue scope itself, an instrument's ``scope.venue``, or a
    counterparty named in ``PlaybookConfig.venues``), ``counterparty``,
    ``underlying`` (an instrument's prefix before ``-``, venue kept) or
    ``firm``. A signal whose scope cannot be mapped does not match the rule.
    """

    name: str
    signal: str
    ladder: tuple[Rung, ...]
    min_severity: Severity = Severity.INFO
    scope: str = "*"
    target: Literal["same", "venue", "counterparty", "underlying", "firm"] = "same"
    min_score_ratio: float | None = None
    min_utilization: float | None = None
    recovery: Literal["auto", "manual"] = "auto"
    quiet_s: float = 60.0
    repeat_window_s: float = 900.0
    alternatives: tuple[str, ...] = ()


class PlaybookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of ``plan_mitigation`` (TOML section ``[playbook]``).

    ``venues`` are the known venues (reroute candidates when a rule names no
    ``alternatives``). ``replica`` names this guard among redundant replicas (set from
    ``[replica] id``); commands carry it. At most ``max_commands`` commands are issued per
    ``rate_window_s`` of event time on each venue (a venue, or an instrument or
    underlying on it) and on each other scope (a counterparty, the firm), so a flood on
    one cannot starve another; ``ttl_s`` sets ``expires_at``.

    ``reorder_slack_s``: with named tick sources (several guard workers), a
    signal more than this ahead of their watermark waits until the watermark
    comes that close, and waiting signals are applied in event-time order. A
    backlog replayed through several processes then meets its signals in the
    order one worker would; live, the workers are within a tick of each other
    and no signal waits. Keep it at least two tick intervals. ``max_hold_s``
    (processing time) bounds that wait: live, a cluster whose exposure path
    falls behind must still act within seconds, so a signal held that long is
    applied without waiting further (counted in ``PlaybookState.forced``).
    """

    issuer: str = "riskguard"
    env: str = "dev"
    topic: str = "commands"
    replica: str = ""
    ttl_s: float = 300.0
    max_commands: int = 20
    rate_window_s: float = 10.0
    reorder_slack_s: float = 2.0
    max_hold_s: float = 5.0
    venues: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    acks: AckConfig = AckConfig()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str = "playbook") -> None:
        """Raise :class:`ConfigError` naming the key path of the first bad value."""
        for key in ("issuer", "env", "topic"):
            value = getattr(self, key)
            if not _NAME.match(value):
                where = f"{path}.{key}"
                raise ConfigError(where, "must be a name of 1-64 [A-Za-z0-9_.:/@+-]",
                                  value)
        if self.replica and not _NAME.match(self.replica):
            raise ConfigError(f"{path}.replica", "a name of 1-64 [A-Za-z0-9_.:/@+-] or empty",
                              self.replica)
        _positive(f"{path}.ttl_s", self.ttl_s)
        _positive(f"{path}.rate_window_s", self.rate_window_s)
        _positive(f"{path}.reorder_slack_s", self.reorder_slack_s)
        _positive(f"{path}.max_hold_s", self.max_hold_s)
        if self.max_commands < 1:
            where = f"{path}.max_commands"
            raise ConfigError(where, "must be >= 1", self.max_commands)
        for v in self.venues:
            if not _NAME.match(v):
                where = f"{path}.venues"
                raise ConfigError(where, "must hold venue names", v)
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            _check_rule(f"{path}.rules[{i}]", rule, seen)
        self.acks.validate(f"{path}.acks")


def _positive(path: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(path, "must be a positive number", value)


def _check_rule(p: str, rule: Rule, seen: set[str]) -> None:
    if not rule.name or rule.name in seen:
        where = f"{p}.name"
        raise ConfigError(where, "must be a unique, non-empty rule name", rule.name)
    seen.add(rule.name)
    if rule.signal in CLOSERS:
        where = f"{p}.signal"
        raise ConfigError(where, "must be a signal that opens an incident (closers "
                          f"{sorted(CLOSERS)} only close one)", rule.signal)
    if rule.signal not in SIGNAL_KINDS:  # a typo would never match: the rule never acts
        close = difflib.get_close_matches(rule.signal, sorted(SIGNAL_KINDS), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        listed = ", ".join(sorted(SIGNAL_KINDS - CLOSERS.keys()))
        raise ConfigError(f"{p}.signal", f"must be a signal kind{hint}" if hint else
                          f"must be a signal kind, one of {listed}", rule.signal)
    scope_kinds = [k.value for k in ScopeKind]
    head = rule.scope.split(":", 1)[0]
    literal = not any(c in head for c in "*?[")
    if literal and (head not in scope_kinds or ":" not in rule.scope):  # no label matches
        close = difflib.get_close_matches(head, scope_kinds, n=1)
        hint = f" (did you mean `{close[0]}:...`?)" if close else ""
        raise ConfigError(f"{p}.scope", "must be a pattern on a scope label, <kind>:<value> "
                          f"with kind one of {', '.join(scope_kinds)} or a glob such as * "
                          f"(this one matches no scope){hint}", rule.scope)
    if not rule.ladder:
        where = f"{p}.ladder"
        raise ConfigError(where, "must have at least one rung", [])
    for x in ("quiet_s", "repeat_window_s"):
        if not (math.isfinite(getattr(rule, x)) and getattr(rule, x) >= 0):
            where = f"{p}.{x}"
            raise ConfigError(where, "must be a non-negative number", getattr(rule, x))
    for x in ("min_score_ratio", "min_utilization"):
        v = getattr(rule, x)
        if v is not None and not (math.isfinite(v) and v >= 0):
            where = f"{p}.{x}"
            raise ConfigError(where, "must be a non-negative number", v)
    for v in rule.alternatives:
        if not _NAME.match(v):
            where = f"{p}.alternatives"
            raise ConfigError(where, "must hold venue names", v)
    last = -1.0
    for j, rung in enumerate(rule.ladder):
        rp = f"{p}.ladder[{j}]"
        if rung.action is Action.RESUME:
            where = f"{rp}.action"
            raise ConfigError(where, "must not be resume (recovery resumes)", "resume")
        if not (math.isfinite(rung.after_s) and rung.after_s >= 0):
            where = f"{rp}.after_s"
            raise ConfigError(where, "must be a non-negative number", rung.after_s)
        if rung.after_s < last:
            where = f"{rp}.after_s"
            raise ConfigError(where, f"must not be below the previous rung's {last}",
                              rung.after_s)
        last = rung.after_s
        for key in _REQUIRED.get(rung.action, ()):
            if key not in rung.params:
                where = f"{rp}.params.{key}"
                raise ConfigError(where, f"is required for {rung.action.value}")
        for key, v in rung.params.items():
            if isinstance(v, float | int) and not math.isfinite(v):
                where = f"{rp}.params.{key}"
                raise ConfigError(where, "must be a finite number", v)
        if rung.action is Action.WIDEN_QUOTES:
            bps = rung.params["bps"]
            if not isinstance(bps, float | int) or bps <= 0:
                where = f"{rp}.params.bps"
                raise ConfigError(where, "must be a positive number", bps)
        if rung.action is Action.REDUCE_LIMITS:
            f = rung.params["factor"]
            if not isinstance(f, float | int) or not 0 < f <= 1:
                where = f"{rp}.params.factor"
                raise ConfigError(where, "must be a number in (0, 1]", f)
        problem = check_rung_params(rung.action.value, rung.params)
        if problem is not None:  # every command the playbook makes passes the verifier
            raise ConfigError(f"{rp}.params", problem, dict(rung.params))


# -- targets -------------------------------------------------------------------


def _venue_of(scope: Scope, venues: tuple[str, ...]) -> str | None:
    if scope.kind is ScopeKind.VENUE:
        return scope.value
    if scope.venue:
        return scope.venue
    if scope.kind is ScopeKind.COUNTERPARTY and scope.value in venues:
        return scope.value
    return None


def map_scope(scope: Scope, target: str, venues: tuple[str, ...] = ()) -> Scope | None:
    """The command scope for a signal scope under a rule's ``target``.

    >>> map_scope(Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"),
    ...           "underlying").label()
    'underlying:okx/BTC'
    """
    if target == "same":
        return scope
    if target == "firm":
        return FIRM
    if target == "venue":
        v = _venue_of(scope, venues)
        return None if v is None else Scope(kind=ScopeKind.VENUE, value=v)
    if target == "counterparty":
        if scope.kind is ScopeKind.COUNTERPARTY:
            return scope
        v = scope.value if scope.kind is ScopeKind.VENUE else scope.venue
        return None if v is None else Scope(kind=ScopeKind.COUNTERPARTY, value=v)
    if target == "underlying":
        if scope.kind is ScopeKind.UNDERLYING:
            return scope
        if scope.kind is ScopeKind.INSTRUMENT:
            base = re.split(r"[-/_]", scope.value, maxsplit=1)[0] or scope.value
            return Scope(kind=ScopeKind.UNDERLYING, value=base, venue=scope.venue)
    return None


def reached_rung(rule: Rule, inc: Incident, elapsed_ns: int) -> int:
    """The highest rung of ``rule`` an incident open ``elapsed_ns`` has reached: by
    ``after_s``, by ``min_severity`` or at once, never past a rung whose ``requires``
    its severity does not meet; a repeat trip starts higher."""
    gate = next((i for i, rung in enumerate(rule.ladder) if rung.requires is not None
                 and _RANK[inc.severity] < _RANK[rung.requires]), len(rule.ladder))
    top = min(inc.start_rung, gate - 1)
    for i, rung in enumerate(rule.ladder[:gate]):
        if rung.after_s <= 0 or elapsed_ns >= rung.after_s * S or (
                rung.min_severity is not None
                and _RANK[inc.severity] >= _RANK[rung.min_severity]):
            top = max(top, i)
    return top


def rung_reason(rule: Rule, inc: Incident, index: int, elapsed_ns: int) -> str:
    """Why rung ``index`` is issued, as a command's reason says it."""
    rung = rule.ladder[index]
    if index == 0:
        return "opened"
    if index <= inc.start_rung:
        return f"repeat trip {inc.start_rung + 1} within {rule.repeat_window_s:g}s"
    reached = reached_rung(rule, inc, elapsed_ns)
    if index > reached:
        return "escalated: previous rung had no healthy reroute target"
    if rung.after_s <= 0:  # reached at once: on opening, or once a gate lets it
        gated = any(r.requires is not None for r in rule.ladder[:index + 1])
        return f"severity {inc.severity.value}" if gated else "opened"
    if elapsed_ns >= rung.after_s * S:
        return f"persisted {rung.after_s:g}s"
    if rung.min_severity is not None and _RANK[inc.severity] >= _RANK[rung.min_severity]:
        return f"worsened to {inc.severity.value}"
    return f"on the way to rung {reached + 1}"
