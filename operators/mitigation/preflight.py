"""Preflight: before a guard reads a record, the trust file must allow what its playbook
will sign.

Otherwise a guard whose key the trust file does not grant what its rungs sign would run
and have subscribers refuse its commands. :func:`preflight` names, in one line, the rule
and the missing grant: every rung's action on the rule's scope class (:func:`scope_class`),
not covered by the two-person rule. A missing automatic ``resume``, or ``alert`` on
``firm:*`` (the playbook's own alerts), is only a warning (:func:`warnings`).

>>> from riskguard.operators.mitigation.rules import PlaybookConfig, Rule, Rung
>>> from riskguard.operators.signing.crypto import Signer
>>> from riskguard.operators.signing.trust import TrustStore, parse_trust
>>> from riskguard.operators.signing.trust_toml import trust_doc_to_toml
>>> from riskguard.schemas import Action
>>> key = Signer.from_private_bytes(bytes(32), issuer="guard")
>>> trust = TrustStore(parse_trust(trust_doc_to_toml([{"name": "guard",
...     "public_key": key.public_key.hex(), "role": "risk-engine",
...     "actions": ["alert", "reduce_only", "resume"], "scopes": ["venue:*", "firm:*"]}])))
>>> rule = Rule(name="flash", signal="anomaly", target="venue", ladder=(
...     Rung(action=Action.ALERT), Rung(action=Action.HALT_TRADING, after_s=30)))
>>> import textwrap
>>> msg = preflight(trust, key.key_id, PlaybookConfig(issuer="guard", rules=(rule,)), now_ns=0)
>>> print(textwrap.fill(msg, 80))
rule 'flash' rung 2 halt_trading on venue:*: the signing key's grant in the
trust file does not include action halt_trading (its actions: alert,
reduce_only, resume)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from riskguard.operators.mitigation.rules import PlaybookConfig, Rule
from riskguard.operators.signing.crypto import PAYLOAD_AUDIT_CHECKPOINT, PAYLOAD_COMMAND
from riskguard.operators.signing.trust import ROLE_PAYLOADS, TrustedKey, TrustStore
from riskguard.schemas.commands import Action
from riskguard.schemas.signals import ScopeKind

from riskguard.errors import VerificationError

_CLASS = {"venue": "venue:*", "counterparty": "counterparty:*",
          "underlying": "underlying:*", "firm": "firm:*"}
_WIDE = ("firm:*", "*")  # wider than one venue whatever the signal


@dataclass(frozen=True)
class Need:
    """One grant a playbook needs: ``action`` on the scopes ``scope_class`` stands for;
    ``protects``: a rung (else a resume or the playbook's own alert)."""

    action: str
    scope_class: str
    why: str
    protects: bool = True


def scope_class(rule: Rule) -> str:
    """The scopes a rule's commands go to, as a pattern (``venue:*``, the rule's own
    ``scope`` for ``target = "same"``).

    >>> scope_class(Rule(name="r", signal="anomaly", scope="instrument:*", ladder=()))
    'instrument:*'
    """
    return _CLASS.get(rule.target, rule.scope)


def needs(playbook: PlaybookConfig) -> list[Need]:
    """Every grant the playbook's commands need, rule by rule, rung by rung."""
    out: list[Need] = []
    for rule in playbook.rules:
        where = scope_class(rule)
        for i, rung in enumerate(rule.ladder):
            what = f"rule {rule.name!r} rung {i + 1} {rung.action.value}"
            out.append(Need(rung.action.value, where, f"{what} on {where}"))
            # what its params act on: a reroute's venues (any healthy one), a hedge's
            # instrument
            if rung.action is Action.REROUTE_ORDER_FLOW:
                out.append(Need(rung.action.value, "venue:*", f"{what} to other venues"))
            elif rung.action is Action.HEDGE_DELTA and "hedge_instrument" in rung.params:
                on = f"instrument:{rung.params['hedge_instrument']}"
                out.append(Need(rung.action.value, on, f"{what} with {on}"))
        holds = any(r.action is not Action.ALERT for r in rule.ladder)
        if rule.recovery == "auto" and holds:
            out.append(Need("resume", where,
                            f"rule {rule.name!r} resumes automatically on {where}", False))
    if playbook.rules:
        out.append(Need("alert", "firm:*", "the playbook's own alerts (command-rate cap, a "
                        "firm halt held) on firm:*", False))
    return out


def covers(key: TrustedKey, pattern: str) -> bool:
    """Does one of the key's scope patterns cover every scope ``pattern`` stands for?

    >>> from riskguard.operators.signing.crypto import Signer
    >>> from riskguard.operators.signing.trust import Role
    >>> k = TrustedKey(name="g", key=Signer.from_private_bytes(bytes(32)).public_key,
    ...                role=Role.RISK_ENGINE, actions=frozenset({"*"}), scopes=("venue:*",))
    >>> covers(k, "venue:*"), covers(k, "venue:okx"), covers(k, "counterparty:*")
    (True, True, False)
    """
    if any(p == "*" or fnmatch.fnmatchcase(pattern, p) for p in key.scopes):
        return True
    # any scope at all: every kind of scope, one pattern each
    return pattern == "*" and all(covers(key, f"{kind.value}:*") for kind in ScopeKind)


def _key_problem(trust: TrustStore, key_id: str, issuer: str, now_ns: int,
                 ) -> tuple[str, TrustedKey | None]:
    """What is wrong with the signing key itself ("" if nothing), and its entry."""
    key = trust.key(key_id)
    if key is None:
        return (f"the signing key {key_id} is not in the trust file: add it under "
                "[[keys]] with role \"risk-engine\" (and raise serial)"), None
    try:
        trust.check_key_status(key, now_ns)
    except VerificationError as err:
        return f"the signing key {key_id} ({key.name}): {err.detail or err.reason}", key
    if key.name != issuer:
        return (f"[keys] issuer {issuer!r} is not bound to the signing key: the trust file "
                f"names it {key.name!r}; set issuer = {key.name!r} or rename the key"), key
    for payload in (PAYLOAD_COMMAND, PAYLOAD_AUDIT_CHECKPOINT):
        if payload not in ROLE_PAYLOADS[key.role]:
            return (f"the signing key {key_id} ({key.name}) has role {key.role.value!r}, "
                    f"which may not sign {payload.rsplit('.', 1)[-1].split('+')[0]}s: a "
                    "guard's key needs role \"risk-engine\""), key
    return "", key


def _too_long(trust: TrustStore, need: Need, ttl_s: float) -> str | None:
    """Why commands living ``ttl_s`` (``[playbook] ttl_s``) are refused for ``need``'s
    action: longer than the trust file's ``[max_ttl_s]`` lets it live (None: they are
    not)."""
    longest = trust.doc.max_ttl_for(need.action)
    if int(ttl_s * 1_000_000_000) <= longest:
        return None
    return (f"{need.why}: [playbook] ttl_s {ttl_s:g} is longer than the trust file lets "
            f"{need.action} live ({longest / 1e9:g} s, [max_ttl_s]): subscribers refuse "
            "such commands (ttl_too_long)")


def _missing(trust: TrustStore, key: TrustedKey, need: Need) -> str | None:
    """Why ``key`` cannot sign what ``need`` asks (None: it can)."""
    if not key.may_act(need.action):
        return (f"{need.why}: the signing key's grant in the trust file does not include "
                f"action {need.action} (its actions: {', '.join(sorted(key.actions)) or 'none'})")
    if not covers(key, need.scope_class):
        return (f"{need.why}: the signing key's grant in the trust file does not cover scope "
                f"{need.scope_class} (its scopes: {', '.join(key.scopes) or 'none'})")
    two = trust.doc.two_person
    if need.action in two.actions and (
            need.scope_class in _WIDE
            or any(fnmatch.fnmatchcase(need.scope_class, p) for p in two.scopes)):
        return (f"{need.why}: the trust file's [two_person] rule needs two people for "
                f"{need.action} there, and the guard signs alone")
    return None


def preflight(trust: TrustStore, key_id: str, playbook: PlaybookConfig, *,
              now_ns: int) -> str | None:
    """None if the trust file lets the key ``key_id`` sign, as ``playbook.issuer``, every
    rung of ``playbook``; else one line saying what is missing first (and how many more)."""
    problem, key = _key_problem(trust, key_id, playbook.issuer, now_ns)
    if problem or key is None:
        return problem
    found = [m for n in needs(playbook) if n.protects
             if (m := _missing(trust, key, n) or _too_long(trust, n, playbook.ttl_s))]
    if not found:
        return None
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return found[0] + more


def warnings(trust: TrustStore, key_id: str, playbook: PlaybookConfig) -> list[str]:
    """What the key cannot sign that fails closed: automatic resumes (the mitigation
    stays held until an operator lifts it) and the playbook's own alerts."""
    key = trust.key(key_id)
    if key is None:
        return []
    return [m for n in needs(playbook) if not n.protects
            if (m := _missing(trust, key, n) or _too_long(trust, n, playbook.ttl_s))]
