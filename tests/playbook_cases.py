"""Inputs and helpers the playbook tests share: signals, resumes, a playbook to feed,
its commands in short, and the rules most tests run."""

from __future__ import annotations

from typing import Any

from riskguard.operators.core.clock import ManualClock
from riskguard.operators.mitigation.playbook import (
    PlaybookConfig,
    PlaybookLogic,
    Rule,
    Rung,
    S,
    Tick,
)
from riskguard.schemas import (
    Action,
    AnomalySignal,
    Audience,
    LimitBreach,
    LimitLevel,
    MitigationCommand,
    RiskAlert,
    Scope,
    ScopeKind,
    Severity,
)

A, RO, HALT = Action.ALERT, Action.REDUCE_ONLY, Action.HALT_TRADING
LADDER = (Rung(action=A), Rung(action=RO, after_s=10, min_severity=Severity.CRITICAL),
          Rung(action=HALT, after_s=30))
VENUES = ("okx", "binance", "deribit")


def venue(v: str) -> Scope:
    return Scope(kind=ScopeKind.VENUE, value=v)


def cp(v: str) -> Scope:
    return Scope(kind=ScopeKind.COUNTERPARTY, value=v)


def anomaly(t: float, *, phase: str = "open", sev: Severity = Severity.WARN,
            inst: str = "BTC-USDT", v: str = "okx", warming: bool = False,
            score: float = 9.0, kind: str = "anomaly") -> AnomalySignal:
    return AnomalySignal(
        id=f"a-{inst}-{v}-{t}-{phase}", kind=kind, phase=phase, key=f"{v}/{inst}",
        scope=Scope(kind=ScopeKind.INSTRUMENT, value=inst, venue=v), ts=int(t * S),
        score=score, threshold=3.0, severity=sev, warming_up=warming, model="hst",
        model_version="1")


def alert(kind: str, scope: Scope, t: float, sev: Severity = Severity.WARN) -> RiskAlert:
    return RiskAlert(id=f"r-{kind}-{scope.label()}-{t}", kind=kind, scope=scope, ts=int(t * S),
                     severity=sev, reason=f"{kind} seen")


def breach(name: str, t: float, level: LimitLevel = LimitLevel.BREACH,
           sev: Severity = Severity.WARN, util: float = 1.2) -> LimitBreach:
    return LimitBreach(id=f"b-{name}-{t}-{level}", limit_path=f"counterparty.{name}",
                       kind="gross_notional", scope=cp(name), ts=int(t * S), exposure=util * 100,
                       base_limit=100.0, effective_limit=100.0, utilization=util, level=level,
                       severity=sev)


def resume(scope: Scope, t: float, approvals: int = 0, **params: Any) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"manual-{scope.label()}-{t}", issuer="ops", issued_at=int(t * S),
        expires_at=int(t * S) + 60 * S, audience=Audience(env="dev", topic="commands"),
        action=Action.RESUME, scope=scope,
        params={"approvals": float(approvals), **params}, reason="operator resume")


def make(*rules: Rule, clock: Any = None, **kw: Any) -> PlaybookLogic:
    cfg = PlaybookConfig(issuer="guard", venues=kw.pop("venues", VENUES), rules=rules, **kw)
    return PlaybookLogic(cfg, clock or ManualClock(1_000))


def feed(logic: PlaybookLogic, events: list[Any]) -> list[MitigationCommand]:
    out: list[Any] = []
    for e in events:
        out.extend(logic.on_event(e))
    return out


def acts(cmds: list[MitigationCommand]) -> list[tuple[str, str]]:
    return [(c.action.value, c.scope.label()) for c in cmds]


FLASH = Rule(name="flash", signal="anomaly", scope="instrument:*", target="venue", ladder=LADDER,
             quiet_s=20, repeat_window_s=600)


HB = Rule(name="hb", signal="heartbeat_loss", scope="venue:*", target="venue", quiet_s=10,
          ladder=(Rung(action=Action.REROUTE_ORDER_FLOW), Rung(action=Action.CANCEL_ALL,
                                                               after_s=60)))


def worker_input(source: str, signals: list[Any], until_s: int, of: int = 2) -> list[Any]:
    """One guard worker's playbook input: a tick at each second it reaches, then its
    signals of that second."""
    out: list[Any] = []
    for t in range(until_s + 1):
        out.append(Tick(ts=t * S, source=source, of=of))
        out.extend(sig for sig in signals if t * S <= sig.ts < (t + 1) * S)
    return out


def two_incidents(of: int = 2) -> tuple[list[Any], list[Any]]:
    """binance's heartbeats (worker 1) fail twice; okx flash-crashes in between (worker 2)."""
    hb = [alert("heartbeat_loss", venue("binance"), 10, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 25),
          alert("heartbeat_loss", venue("binance"), 110, Severity.CRITICAL),
          alert("heartbeat_restored", venue("binance"), 200)]
    crash = [anomaly(40), anomaly(41, phase="escalate", sev=Severity.CRITICAL),
             anomaly(45, phase="close"), anomaly(150, v="binance"),
             anomaly(152, v="binance", phase="close")]
    return worker_input("p1", hb, 260, of), worker_input("p2", crash, 260, of)
