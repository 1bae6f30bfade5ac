"""The playbook's rules: what a rule matches, the ladder of actions it climbs, and the
playbook configuration, checked once when it loads.

A :class:`Rule` matches a signal by kind, minimum severity, an fnmatch pattern on
:meth:`Scope.label` and optional conditions, then climbs a ladder of :class:`Rung`
actions, run by :class:`~riskguard.operators.mitigation.playbook.PlaybookLogic`.
"""


from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from riskguard.operators.mitigation.acks import ACKNOWLEDGED, UNACKNOWLEDGED, AckConfig
from riskguard.schemas import FIRM, Action, Scope, ScopeKind, Severity
from riskguard.schemas.action_params import check_rung_params
from riskguard.schemas.signals import SEVERITY_RANK, SIGNAL_KINDS

from riskguard.errors import ConfigError
from riskguard.validation import (
    NonNegative,
    PositiveInt,
    PositiveSeconds,
    Seconds,
    check_declared,
    did_you_mean,
)

if TYPE_CHECKING:
    from riskguard.operators.mitigation.incidents import Incident

S = 1_000_000_000
"""Nanoseconds per second."""

COMMAND_NAMESPACE = uuid.UUID("6f1c2f0e-3a57-4f43-9a39-2b5d6f0c9e11")
MAX_EVIDENCE = 16
#: RiskAlert kinds that close an incident opened by another kind.
CLOSERS = {"heartbeat_restored": "heartbeat_loss", "feed_restored": "feed_failover",
           "withdrawals_resumed": "withdrawals_halted", "peg_restored": "depeg",
           "market_process_restored": "market_process_silent", "mark_restored": "stale_mark",
           ACKNOWLEDGED: UNACKNOWLEDGED}
#: Signal kinds whose incidents stay open until an explicit close arrives.
#: Every other kind is momentary: its incident counts as closed right after
#: each signal, so the quiet period starts at once and a repeat reopens it.
OPENERS = frozenset({"anomaly", "price_move", "dislocation", "stale_feed", "breach",
                     "heartbeat_loss",
                     "feed_failover", "withdrawals_halted", "depeg", "market_process_silent",
                     "stale_mark",
                     UNACKNOWLEDGED})
TARGETS = ("same", "venue", "counterparty", "underlying", "firm")
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:/@+-]{1,64}$")]

ParamValue = float | str | list[str]


class Rung(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step of a ladder.

    It is reached when the incident has been open ``after_s`` seconds of event
    time, or (if ``min_severity`` is set) as soon as the incident's severity
    reaches it. A rung with ``requires`` is never reached, nor any rung after it,
    while the incident's severity is below that: a warning that lasts does not
    climb to a halt.
    """

    # the command this rung issues (alert, widen_quotes, reduce_only, cancel_all, halt_trading, ...;
    # docs/commands.md)
    action: Action
    after_s: Seconds = 0.0  # reached once the incident has been open this long (event time)
    min_severity: Severity | None = None  # ... or as soon as the incident's severity reaches this
    # never reached, nor any rung after it, while the incident's severity is below this
    requires: Severity | None = None
    # the action's parameters (widen_quotes: bps; reduce_limits: factor; failover_feed: backup_feed;
    # hedge_delta: target_delta, hedge_instrument)
    params: dict[str, ParamValue] = {}


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Signal match plus the action ladder it climbs.

    ``target`` maps the signal's scope to the commands' scope: ``same``,
    ``venue`` (the venue scope itself, an instrument's ``scope.venue``, or a
    counterparty named in ``PlaybookConfig.venues``), ``counterparty``,
    ``underlying`` (an instrument's prefix before ``-``, venue kept) or
    ``firm``. A signal whose scope cannot be mapped does not match the rule.
    """

    name: Annotated[str, msgspec.Meta(min_length=1)]  # the rule's name, in every command's reason
    # the signals it answers: anomaly, price_move, dislocation, regime_change, breach, or a
    # RiskAlert kind (heartbeat_loss, depeg, feed_failover, command_unacknowledged, ...)
    signal: str
    # the rungs it climbs, in order, while the incident lasts
    ladder: Annotated[tuple[Rung, ...], msgspec.Meta(min_length=1)]
    # signals below this severity (info, warn, critical) do not match
    min_severity: Severity = Severity.INFO
    # fnmatch pattern on the signal's scope label (instrument:*, venue:okx, counterparty:*, firm:*)
    scope: str = "*"
    # where its commands go: same (the signal's scope), venue, counterparty, underlying or firm
    target: Literal["same", "venue", "counterparty", "underlying", "firm"] = "same"
    # anomaly signals only: score / threshold must reach this
    min_score_ratio: NonNegative | None = None
    # breach signals only: the utilization must reach this (1.0: the limit)
    min_utilization: NonNegative | None = None
    # auto: once the incident has been quiet for quiet_s, one resume lifts what it did; manual: its
    # mitigations stay until an operator's signed resume
    recovery: Literal["auto", "manual"] = "auto"
    # how long a closed incident stays quiet before the automatic resume (a reopen restarts the
    # count)
    quiet_s: Seconds = 60.0
    # a repeat trip of the same rule and scope within this starts one rung higher per earlier trip
    repeat_window_s: Seconds = 900.0
    # reroute_order_flow candidates (default: playbook.venues); failing, unhealthy or breached
    # venues never qualify
    alternatives: tuple[Name, ...] = ()


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
    and no signal waits. Keep it at least two tick intervals. Time-driven rungs and quiet
    periods follow the watermark; rungs a signal reaches at once (``after_s = 0``, or by
    severity) act as soon as the signal is applied. ``max_hold_s``
    (processing time) bounds that wait: live, a guard whose exposure path
    falls behind must still act within seconds, so a signal held that long is
    applied without waiting further (counted in ``PlaybookState.forced``).
    """

    # the issuer every command names; a guard config's [keys] issuer (or its replica's)
    # replaces it
    issuer: Name = "riskguard"
    # the env every command is addressed to (its audience.env, which executors check); a
    # guard config's top-level env replaces it
    env: Name = "dev"
    # the topic every command is addressed to (its audience.topic); a guard config replaces
    # it with <env>.riskguard.commands.v1
    topic: Name = "commands"
    replica: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:/@+-]{0,64}$")] = ""
    # how long a command is valid: expires_at = issued_at + ttl_s; executors refuse it later
    ttl_s: PositiveSeconds = 300.0
    max_commands: PositiveInt = 20
    rate_window_s: PositiveSeconds = 10.0
    reorder_slack_s: PositiveSeconds = 2.0
    max_hold_s: PositiveSeconds = 5.0
    # the known venues: reroute candidates where a rule names no alternatives, and the
    # counterparties a venue target can name
    venues: tuple[Name, ...] = ()
    rules: tuple[Rule, ...] = ()
    acks: AckConfig = AckConfig()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, path: str = "playbook") -> None:
        """Raise :class:`ConfigError` naming the key path of the first bad value."""
        check_declared(self, path)
        self._check_rules(path)

    def _check_rules(self, path: str) -> None:
        """The checks across values (each value's own are declared on its field)."""
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            _check_rule(f"{path}.rules[{i}]", rule, seen)
        self.acks.validate(f"{path}.acks")


def _check_rule(p: str, rule: Rule, seen: set[str]) -> None:
    if rule.name in seen:
        raise ConfigError(f"{p}.name", "must be a unique rule name", rule.name)
    seen.add(rule.name)
    if rule.signal in CLOSERS:
        raise ConfigError(f"{p}.signal", "must be a signal that opens an incident (closers "
                          f"{sorted(CLOSERS)} only close one)", rule.signal)
    _check_signal(p, rule)
    _check_scope_pattern(p, rule)
    last = 0.0
    for j, rung in enumerate(rule.ladder):
        rp = f"{p}.ladder[{j}]"
        if rung.action is Action.RESUME:
            raise ConfigError(f"{rp}.action", "must not be resume (recovery resumes)",
                              "resume")
        if rung.after_s < last:
            raise ConfigError(f"{rp}.after_s", f"must not be below the previous rung's {last}",
                              rung.after_s)
        last = rung.after_s
        problem = check_rung_params(rung.action.value, rung.params)
        if problem is not None:  # every command the playbook makes passes the verifier
            raise ConfigError(f"{rp}.params", problem, dict(rung.params))


def _check_signal(p: str, rule: Rule) -> None:
    """A rule's signal is a kind the guard raises: a typo would never match, so the rule
    would never act."""
    if rule.signal not in SIGNAL_KINDS:
        hint = did_you_mean(rule.signal, sorted(SIGNAL_KINDS))
        kinds = ", ".join(sorted(SIGNAL_KINDS - CLOSERS.keys()))
        raise ConfigError(f"{p}.signal", f"must be a signal kind{hint}" if hint else
                          f"must be a signal kind, one of {kinds}", rule.signal)


def _check_scope_pattern(p: str, rule: Rule) -> None:
    """A rule's scope pattern can match some scope label (``venu:*`` or a bare ``okx``
    never would)."""
    kinds = [k.value for k in ScopeKind]
    head = rule.scope.split(":", 1)[0]
    literal = not any(c in head for c in "*?[")
    if literal and (head not in kinds or ":" not in rule.scope):
        hint = did_you_mean(head, kinds, shown="{}:...")
        raise ConfigError(f"{p}.scope", "must be a pattern on a scope label, <kind>:<value> "
                          f"with kind one of {', '.join(kinds)} or a glob such as * "
                          f"(this one matches no scope){hint}", rule.scope)


# -- targets -------------------------------------------------------------------


def venue_of(scope: Scope, venues: tuple[str, ...]) -> str | None:
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
        v = venue_of(scope, venues)
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
                 and SEVERITY_RANK[inc.severity] < SEVERITY_RANK[rung.requires]), len(rule.ladder))
    top = min(inc.start_rung, gate - 1)
    for i, rung in enumerate(rule.ladder[:gate]):
        if rung.after_s <= 0 or elapsed_ns >= rung.after_s * S or _worsened(inc, rung):
            top = max(top, i)
    return top


def _worsened(inc: Incident, rung: Rung) -> bool:
    """Has the incident reached the rung's ``min_severity``?"""
    return (rung.min_severity is not None
            and SEVERITY_RANK[inc.severity] >= SEVERITY_RANK[rung.min_severity])


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
    if rung.min_severity is not None and _worsened(inc, rung):  # at open, or escalated
        return f"min_severity {rung.min_severity.value} reached"
    return f"on the way to rung {reached + 1}"
