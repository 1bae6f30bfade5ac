"""The parameters each mitigation action takes: names, types, bounds, which are required.

A :class:`~riskguard.schemas.commands.MitigationCommand` carries its action's
parameters in ``params``, a free-form map on the wire. This table is their
contract: :func:`check_params` refuses a command whose params an executor
could misread (a ``widen_quotes`` without ``bps``, ``bps = "abc"``, a param
no action takes). ``riskguard command new`` checks it before signing and the
verifier checks it before anything acts; every command the guard's playbook
makes passes it. ``docs/commands.md`` shows the table
(:func:`markdown_table`) and :func:`params_json_schema` gives it as JSON Schema.

>>> check_params("widen_quotes", {"bps": 25.0}) is None
True
>>> check_params("widen_quotes", {"bps": "abc"})
"widen_quotes: param 'bps' must be a number > 0 and <= 10000; got 'abc'"
>>> check_params("widen_quotes", {})
"widen_quotes: param 'bps' is required (a number > 0 and <= 10000)"
>>> check_params("widen_quotes", {"bps": 25.0, "bsp": 5.0})
"widen_quotes: unknown param 'bsp' (did you mean `bps`?); it takes bps"
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from riskguard.schemas.commands import Action
from riskguard.schemas.names import (
    MARKET_KEY_PATTERN,
    MARKET_NAME_PATTERN,
    MARKET_NAME_RULE,
    is_market_key,
    is_market_name,
)

from riskguard.validation import did_you_mean

Kind = Literal["number", "name", "instrument", "id", "action", "names", "ids", "actions"]
"""What a param holds: a number; one venue, instrument or feed name (``Name``); a
instrument, bare or on one venue (``BTC-PERP``, ``binance/BTC-USDT``); a
record id (a ``command_id``); an action name; or a list of one of those."""

_ACTIONS = frozenset(a.value for a in Action)
_LIFTABLE = _ACTIONS - {Action.RESUME.value}
MAX_ITEMS = 64
"""The most entries a list param holds."""


@dataclass(frozen=True)
class Param:
    """One parameter of an action."""

    name: str
    kind: Kind
    doc: str
    required: bool = False
    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def describe(self) -> str:
        """The expected value, in words (``a number > 0 and <= 10000``)."""
        if self.kind == "number":
            bounds = [f"{op} {_num(v)}" for op, v in ((">", self.gt), (">=", self.ge),
                                                       ("<=", self.le)) if v is not None]
            return "a number" + (" " + " and ".join(bounds) if bounds else "")
        return {
            "name": f"a market name ({MARKET_NAME_RULE})",
            "instrument": "an instrument's market name, or venue/instrument for one venue's",
            "id": "a command id (1-128 characters)",
            "action": "an action name",
            "names": f"a list of 1-{MAX_ITEMS} names",
            "ids": f"a list of 1-{MAX_ITEMS} command ids",
            "actions": f"a list of 1-{MAX_ITEMS} action names (not resume)",
        }[self.kind]

    def problem(self, value: Any) -> str | None:
        """None if ``value`` fits, else what was expected."""
        if self.kind == "number":
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value)
                  and (self.gt is None or value > self.gt)
                  and (self.ge is None or value >= self.ge)
                  and (self.le is None or value <= self.le))
            return None if ok else self.describe()
        if self.kind in ("names", "ids", "actions"):
            one = {"names": "name", "ids": "id", "actions": "action"}[self.kind]
            ok = (isinstance(value, list) and 1 <= len(value) <= MAX_ITEMS
                  and all(_scalar_ok(one, v, liftable=True) for v in value))
            return None if ok else self.describe()
        return None if _scalar_ok(self.kind, value) else self.describe()


def _scalar_ok(kind: str, value: Any, *, liftable: bool = False) -> bool:
    if not isinstance(value, str):
        return False
    if kind == "name":
        return is_market_name(value)
    if kind == "instrument":
        return is_market_name(value) or is_market_key(value)
    if kind == "id":
        return 1 <= len(value) <= 128
    return value in (_LIFTABLE if liftable else _ACTIONS)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass(frozen=True)
class ActionSpec:
    """What an action asks of an executor, and the params it takes."""

    action: Action
    effect: str
    scopes: str
    params: tuple[Param, ...] = ()
    held: bool = False
    """Held on its exact scope until a ``resume`` lifts it (a state); otherwise a one-off
    act, which a later command of the same action on the same scope repeats."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_SPECS = (
    ActionSpec(
        Action.ALERT, "Tell people; change nothing. The guard's own alerts say why in "
        "their params.", "any",
        (Param("failed_action", "action", "the action that could not be issued (a "
               "reroute_order_flow with no healthy venue)"),
         Param("resume_id", "id", "a refused manual resume (firm halt without two "
               "approvals)"),
         Param("held_command", "id", "a firm-wide halt that stays in force though its "
               "incident is quiet"),
         Param("suppressed", "number", "commands held back by the command-rate cap in "
               "the window", ge=0),
         Param("window_start", "number", "the rate-cap window's start, ns since epoch",
               ge=0))),
    ActionSpec(
        Action.WIDEN_QUOTES, "Quote wider on the scope by `bps` basis points.",
        "any (the bundled playbook: a venue, the firm)",
        (Param("bps", "number", "how much wider, in basis points (10000 = 100%)",
               required=True, gt=0, le=10_000),), held=True),
    ActionSpec(
        Action.REDUCE_LIMITS, "Scale the scope's trading limits by `factor`.",
        "any",
        (Param("factor", "number", "the new limit as a fraction of the current one",
               required=True, gt=0, le=1),), held=True),
    ActionSpec(
        Action.REDUCE_ONLY, "Accept only orders that reduce positions on the scope.",
        "any", held=True),
    ActionSpec(
        Action.CANCEL_ALL, "Cancel every open order on the scope.", "any"),
    ActionSpec(
        Action.HALT_TRADING, "Stop trading on the scope (protective orders stay allowed).",
        "any; firm:* needs a two-person manual resume", held=True),
    ActionSpec(
        Action.REROUTE_ORDER_FLOW, "Send new orders for the scope to `targets` instead of "
        "`from`.", "a venue, or an instrument or counterparty on one venue (`from`)",
        (Param("targets", "names", "the venues to send order flow to, best first",
               required=True),
         Param("from", "name", "the venue the flow is moved away from"))),
    ActionSpec(
        Action.HEDGE_DELTA, "Trade `hedge_instrument` until the scope's delta is "
        "`target_delta`.", "any (typically an underlying or the firm)",
        (Param("target_delta", "number", "the delta to reach, in the hedge instrument's "
               "units", required=True),
         Param("hedge_instrument", "instrument", "the instrument to hedge with", required=True))),
    ActionSpec(
        Action.PAUSE_WITHDRAWALS, "Stop moving funds off the scope.",
        "a venue or counterparty (the bundled playbook: a counterparty)"),
    ActionSpec(
        Action.FAILOVER_FEED, "Read the scope's market data from `backup_feed`.",
        "a venue",
        (Param("backup_feed", "name", "the feed to switch to", required=True),)),
    ActionSpec(
        Action.RESUME, "Lift mitigations in force on exactly this scope.",
        "exactly the scope it lifts; firm:* needs two approvals",
        (Param("actions", "actions", "the actions it lifts (absent: all on the scope)"),
         Param("resumes", "ids", "the command ids it lifts"),
         Param("approvals", "number", "distinct authorized signers, set by the guard "
               "once verified (whatever the payload says)", ge=0))),
)

ACTION_PARAMS: Mapping[str, ActionSpec] = {s.action.value: s for s in _SPECS}
"""Each action's spec, by action name."""

HELD_ACTIONS: frozenset[str] = frozenset(s.action.value for s in _SPECS if s.held)
"""The actions an executor holds on their exact scope until a ``resume`` lifts them; every
other action is a one-off act (the table's "held" column, the one place that says so).

>>> sorted(HELD_ACTIONS)
['halt_trading', 'reduce_limits', 'reduce_only', 'widen_quotes']
"""


def resume_lifts(actions: Collection[str], command_ids: Collection[str], action: str,
                 command_id: str) -> bool:
    """Whether a ``resume`` listing ``actions`` and ``command_ids`` (each empty: any)
    lifts the hold of ``action`` by ``command_id`` on its scope: the one rule executors
    and the status page follow.

    >>> resume_lifts(["halt_trading"], ["c1"], "halt_trading", "c2")
    False
    >>> resume_lifts([], [], "reduce_only", "c2")
    True
    """
    return (not actions or action in actions) and (not command_ids or command_id in command_ids)


def check_params(action: str, params: Mapping[str, Any], *,
                 optional: Collection[str] = ()) -> str | None:
    """None if ``params`` fit ``action``; else a one-line reason naming the param.

    ``optional`` names required params that may be absent here (a playbook rung's
    params, which the playbook completes when it issues the command).

    >>> check_params("reroute_order_flow", {"targets": ["okx"], "from": "binance"}) is None
    True
    >>> check_params("halt_trading", {"actions": ["halt_trading"]})
    "halt_trading: takes no params; got 'actions'"
    """
    spec = ACTION_PARAMS.get(action)
    if spec is None:
        return f"{action!r} is not an action (one of {', '.join(ACTION_PARAMS)})"
    names = [p.name for p in spec.params]
    for key in params:
        if spec.param(key) is None:
            if not names:
                return f"{action}: takes no params; got {key!r}"
            hint = did_you_mean(key, names)
            return f"{action}: unknown param {key!r}{hint}; it takes {', '.join(names)}"
    for p in spec.params:
        if p.name not in params:
            if p.required and p.name not in optional:
                return f"{action}: param {p.name!r} is required ({p.describe()})"
            continue
        expected = p.problem(params[p.name])
        if expected is not None:
            got = repr(params[p.name])
            got = got if len(got) <= 80 else got[:77] + "..."
            return f"{action}: param {p.name!r} must be {expected}; got {got}"
    return None


def param_scopes(action: str, params: Mapping[str, Any]) -> list[str]:
    """The scope labels a command's params also act on, beyond its own scope: the
    venues of a reroute (``targets``, ``from``) and a hedge's instrument. A signer's
    scopes must cover them too. Run after :func:`check_params`.

    >>> param_scopes("reroute_order_flow", {"targets": ["okx"], "from": "binance"})
    ['venue:okx', 'venue:binance']
    >>> param_scopes("hedge_delta", {"target_delta": 0.0, "hedge_instrument": "okx/BTC-PERP"})
    ['instrument:okx/BTC-PERP']
    """
    if action == Action.REROUTE_ORDER_FLOW.value:
        venues = [*params.get("targets", ()), *([params["from"]] if "from" in params else [])]
        return [f"venue:{v}" for v in venues]
    if action == Action.HEDGE_DELTA.value:
        return [f"instrument:{params['hedge_instrument']}"]
    return []


FILLED_BY_PLAYBOOK: Mapping[str, tuple[str, ...]] = {
    Action.REROUTE_ORDER_FLOW.value: ("targets", "from")}
"""Params the playbook sets itself when it issues a rung of that action (the healthy
venues to reroute to, and the failing one)."""


def check_rung_params(action: str, params: Mapping[str, Any]) -> str | None:
    """:func:`check_params` for a playbook rung's fixed params: those the playbook fills
    in (:data:`FILLED_BY_PLAYBOOK`) may be absent.

    >>> check_rung_params("reroute_order_flow", {}) is None
    True
    >>> print(check_rung_params("alert", {"note": "x"}))
    alert: unknown param 'note'; it takes failed_action, resume_id, held_command,
    suppressed, window_start
    """
    return check_params(action, params, optional=FILLED_BY_PLAYBOOK.get(action, ()))


def param_kind(action: str, name: str) -> Kind | None:
    """The kind of ``action``'s param ``name`` (None if it takes no such param)."""
    spec = ACTION_PARAMS.get(action)
    p = spec.param(name) if spec else None
    return p.kind if p else None


def _param_schema(p: Param) -> dict[str, Any]:
    name = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": MARKET_NAME_PATTERN}
    one: dict[str, dict[str, Any]] = {
        "name": name, "instrument": {"anyOf": [name, {
            "type": "string", "maxLength": 129, "pattern": MARKET_KEY_PATTERN}]},
        "id": {"type": "string", "minLength": 1, "maxLength": 128},
        "action": {"enum": sorted(_ACTIONS)}}
    items = {"names": one["name"], "ids": one["id"], "actions": {"enum": sorted(_LIFTABLE)}}
    if p.kind == "number":
        out: dict[str, Any] = {"type": "number"}
        for key, v in (("exclusiveMinimum", p.gt), ("minimum", p.ge), ("maximum", p.le)):
            if v is not None:
                out[key] = v
    elif p.kind in items:
        out = {"type": "array", "items": items[p.kind], "minItems": 1, "maxItems": MAX_ITEMS}
    else:
        out = dict(one[p.kind])
    return {**out, "description": p.doc}


def params_json_schema(action: str) -> dict[str, Any]:
    """The JSON Schema of ``params`` for ``action``."""
    spec = ACTION_PARAMS[action]
    return {"type": "object", "additionalProperties": False,
            "properties": {p.name: _param_schema(p) for p in spec.params},
            "required": [p.name for p in spec.params if p.required]}


def command_params_schema() -> dict[str, Any]:
    """``allOf`` clauses for a command's JSON Schema: each action's params schema,
    applied when ``action`` has that value."""
    return {"allOf": [
        {"if": {"properties": {"action": {"const": a}}, "required": ["action"]},
         "then": {"properties": {"params": params_json_schema(a)}}}
        for a in ACTION_PARAMS]}


def markdown_table() -> str:
    """The params table of ``docs/commands.md`` (a test keeps the page in step)."""
    rows = ["| action | params | what an executor does | held | scopes |",
            "| --- | --- | --- | --- | --- |"]
    for spec in _SPECS:
        params = "<br>".join(
            f"`{p.name}`{' (required)' if p.required else ''}: {p.describe()}; {p.doc}"
            for p in spec.params) or "none"
        held = ("until resumed" if spec.held else "lifts what is held"
                if spec.action is Action.RESUME else "no: an act")
        rows.append(f"| `{spec.action.value}` | {params} | {spec.effect} | {held} | "
                    f"{spec.scopes} |")
    return "\n".join(rows) + "\n"


__all__ = ["ACTION_PARAMS", "FILLED_BY_PLAYBOOK", "HELD_ACTIONS", "MAX_ITEMS", "ActionSpec",
           "Kind", "Param", "check_params", "check_rung_params", "command_params_schema",
           "markdown_table", "param_kind", "params_json_schema"]
