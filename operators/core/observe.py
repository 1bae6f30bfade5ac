"""Update the Prometheus metrics from records flowing through the guard.

:func:`observe` takes any record (or a ``(key, record)`` pair), updates the
metrics in :mod:`riskguard.operators.core.metrics` and returns its input
unchanged, so the guard inserts it as a pass-through step::

    signals = op.map("observe_signals", signals, observe)

It ignores records it does not know and never mutates one. Labels are bounded: anomaly
keys are reduced to a key *class* (``market``, ``option``, ``venue`` ...) by
:func:`key_class`; the metrics are listed in docs/operations.md.

Signed commands are counted where they are signed, with
:func:`riskguard.operators.core.metrics.record_command`; subscribers report with
:func:`observe_rejection` and :func:`observe_gap`.

>>> from riskguard.schemas import AnomalySignal, Scope, ScopeKind, Severity
>>> from riskguard.operators.core.metrics import EPISODES_OPEN
>>> obs = Observer()
>>> sig = AnomalySignal(id="a1", key="okx/BTC-27DEC26-70000-C", phase="open", ts=1,
...     scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-27DEC26-70000-C", venue="okx"),
...     episode_id="e1", score=9.0, threshold=4.0, severity=Severity.WARN,
...     model="gaussian", model_version="1")
>>> obs.observe(sig) is sig
True
>>> obs.open_episodes()
{'option': 1}
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec
from riskguard.operators.core.metrics import (
    ANOMALY_SCORE,
    ANOMALY_SIGNALS,
    ANOMALY_THRESHOLD,
    BREACHES,
    COMMAND_ACKS,
    DEAD_LETTERS,
    EPISODES_OPEN,
    FEED_ON_BACKUP,
    FEED_STALE,
    RISK_ALERTS,
    SUBSCRIBER_CONFLICTS,
    SUBSCRIBER_DUPLICATES,
    SUBSCRIBER_GAPS,
    SUBSCRIBER_REJECTIONS,
    UTILIZATION,
    record_checkpoint,
)
from riskguard.schemas.audit import AuditCheckpoint, DeadLetter
from riskguard.schemas.commands import ExecutionAck
from riskguard.schemas.signals import (
    AnomalySignal,
    LimitBreach,
    RiskAlert,
    Scope,
    ScopeKind,
    Utilization,
    parse_limit_path,
)

# Deribit-style option names: BTC-27DEC26-70000-C, ETH-27JUN-3000-P
_OPTION = re.compile(r"^[A-Z0-9]+-[0-9]{1,2}[A-Z]{3}[0-9]{0,2}-[0-9]+(?:\.[0-9]+)?-[CP]$")


class ObserveConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How records are reduced to bounded labels.

    ``option_instruments`` names instruments whose keys count as ``option``
    (besides names shaped like ``BTC-27DEC26-70000-C``); the guard can pass
    the instruments of ``kind = "option"`` from ``[exposure.instruments]``.
    """

    option_instruments: frozenset[str] = frozenset()


def key_class(scope: Scope, option_instruments: Iterable[str] = ()) -> str:
    """The bounded label for an anomaly key.

    >>> key_class(Scope(kind=ScopeKind.VENUE, value="okx"))
    'venue'
    >>> key_class(Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"))
    'market'
    >>> key_class(Scope(kind=ScopeKind.INSTRUMENT, value="ETH-27JUN-3000-P", venue="deribit"))
    'option'
    >>> key_class(Scope(kind=ScopeKind.FIRM, value="*"))
    'firm'
    """
    if scope.kind is ScopeKind.INSTRUMENT:
        if scope.value in option_instruments or _OPTION.match(scope.value):
            return "option"
        return "market"
    return scope.kind.value


def _counterparty(u: Utilization | LimitBreach) -> str:
    """Counterparty of a limit path (``*`` for firm-wide limits).

    >>> from riskguard.schemas.signals import LimitLevel
    >>> u = Utilization(limit_path="counterparty.okx.asset.BTC", kind="delta", ts=0,
    ...     scope=Scope(kind=ScopeKind.UNDERLYING, value="BTC", venue="okx"), exposure=1.0,
    ...     base_limit=2.0, effective_limit=2.0, utilization=0.5, level=LimitLevel.OK)
    >>> _counterparty(u)
    'okx'
    """
    try:
        return parse_limit_path(u.limit_path)[0]
    except ValueError:
        return u.scope.value if u.scope.kind is ScopeKind.COUNTERPARTY else "*"


class Observer:
    """Per-process metric updater; thread-safe (bytewax workers are threads)."""

    def __init__(self, config: ObserveConfig | None = None) -> None:
        self.config = config or ObserveConfig()
        self._lock = threading.Lock()
        self._open: dict[str, str] = {}  # anomaly key -> its key class, while an episode is open
        # (limit path, kind) -> gauge child: labels() locks and hashes on every call
        self._util_gauges: dict[tuple[str, str], Any] = {}

    def observe(self, item: Any) -> Any:
        """Update the metrics from ``item`` (a record or ``(key, record)``); return ``item``."""
        rec = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        handler = self._handlers.get(type(rec))
        if handler is not None:
            handler(self, rec)
        return item

    def open_episodes(self) -> dict[str, int]:
        """Open episodes per key class, as this observer counts them."""
        with self._lock:
            out: dict[str, int] = {}
            for cls in self._open.values():
                out[cls] = out.get(cls, 0) + 1
            return dict(sorted(out.items()))

    def _anomaly(self, s: AnomalySignal) -> None:
        cls = key_class(s.scope, self.config.option_instruments)
        ANOMALY_SIGNALS.labels(cls, s.kind, s.phase).inc()
        if not s.warming_up:
            ANOMALY_SCORE.labels(cls).observe(s.score)
            ANOMALY_THRESHOLD.labels(cls).observe(s.threshold)
        if s.kind != "anomaly":
            return
        with self._lock:
            # idempotent per key: a replayed open or close after a resume counts once
            if s.phase == "open" and s.key not in self._open:
                self._open[s.key] = cls
                EPISODES_OPEN.labels(cls).inc()
            elif s.phase == "close" and s.key in self._open:
                EPISODES_OPEN.labels(self._open.pop(s.key)).dec()

    def _util_gauge(self, u: Utilization | LimitBreach) -> Any:
        g = self._util_gauges.get((u.limit_path, u.kind))
        if g is None:
            try:
                cp = parse_limit_path(u.limit_path)[0]
            except ValueError:  # labelled by its scope instead, which may vary: not kept
                return UTILIZATION.labels(_counterparty(u), u.limit_path, u.kind)
            g = self._util_gauges[(u.limit_path, u.kind)] = UTILIZATION.labels(
                cp, u.limit_path, u.kind)
        return g

    def _utilization(self, u: Utilization) -> None:
        self._util_gauge(u).set(u.utilization)

    def _breach(self, b: LimitBreach) -> None:
        BREACHES.labels(b.kind, b.level.value).inc()
        self._util_gauge(b).set(b.utilization)

    def _alert(self, a: RiskAlert) -> None:
        RISK_ALERTS.labels(a.kind, a.severity.value).inc()
        venue = a.scope.venue or a.scope.value
        if a.kind == "feed_failover":
            FEED_ON_BACKUP.labels(venue).set(1)
        elif a.kind == "feed_restored":
            FEED_ON_BACKUP.labels(venue).set(0)
        elif a.kind == "heartbeat_loss":
            FEED_STALE.labels(venue).set(1)
        elif a.kind == "heartbeat_restored":
            FEED_STALE.labels(venue).set(0)

    def _checkpoint(self, c: AuditCheckpoint) -> None:
        record_checkpoint(c.ts)

    def _ack(self, a: ExecutionAck) -> None:
        COMMAND_ACKS.labels(a.action.value, a.outcome.value).inc()

    def _dead(self, d: DeadLetter) -> None:
        if d.step == "decode" and d.partition >= 0:
            return  # a Kafka source decode failure: kafka_input counted it
        DEAD_LETTERS.labels(d.topic, d.reason).inc()

    _handlers: dict[type, Any] = {
        AnomalySignal: _anomaly,
        Utilization: _utilization,
        LimitBreach: _breach,
        RiskAlert: _alert,
        AuditCheckpoint: _checkpoint,
        DeadLetter: _dead,
        ExecutionAck: _ack,
    }


_DEFAULT = Observer()


def configure(config: ObserveConfig) -> Observer:
    """Replace the process-wide observer's config (call once, before the flow runs)."""
    _DEFAULT.config = config
    return _DEFAULT


def observe(item: Any) -> Any:
    """Pass-through step: update the metrics from one record, return it unchanged.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from riskguard.schemas import RiskAlert, Scope, ScopeKind
    >>> from riskguard.operators.core.metrics import FEED_ON_BACKUP
    >>> alert = RiskAlert(id="f1", kind="feed_failover", ts=5, reason="primary silent",
    ...                   scope=Scope(kind=ScopeKind.VENUE, value="doctest-venue"))
    >>> flow = Dataflow("observe_doc")
    >>> out = []
    >>> s = op.input("in", flow, TestingSource([alert]))
    >>> op.output("out", op.map("observe", s, observe), TestingSink(out))
    >>> run_main(flow)
    >>> out == [alert], FEED_ON_BACKUP.labels("doctest-venue")._value.get()
    (True, 1.0)
    """
    return _DEFAULT.observe(item)


T = TypeVar("T")


def observe_all(items: list[T]) -> list[T]:
    """:func:`observe` a whole batch (for ``op.flat_map_batch``: one Python call per batch,
    not bytewax's per-item map).

    >>> from riskguard.schemas import DeadLetter
    >>> dl = DeadLetter(topic="doctest", ts=1, reason="malformed")
    >>> observe_all([dl]) == [dl]
    True
    """
    see = _DEFAULT.observe
    for item in items:
        see(item)
    return items


def observe_rejection(rejection: Any, n: int = 1) -> None:
    """Subscriber hook: count ``n`` refused command messages by their reason (a
    :class:`~riskguard.connectors.subscriber.Rejection`, or the reason itself)."""
    reason = rejection if isinstance(rejection, str) else rejection.reason
    SUBSCRIBER_REJECTIONS.labels(str(reason)).inc(n)


def observe_gap(alert: Any) -> None:
    """Subscriber ``on_alert`` hook: count a command sequence gap by issuer."""
    SUBSCRIBER_GAPS.labels(str(alert.issuer)).inc()


def observe_duplicate(duplicate: Any) -> None:
    """Subscriber hook: count a dropped copy of an executed decision by its issuer."""
    SUBSCRIBER_DUPLICATES.labels(str(duplicate.issuer)).inc()


def observe_conflict(conflict: Any) -> None:
    """Subscriber hook: count a command whose decision id an executed copy with other
    content holds, by its issuer."""
    SUBSCRIBER_CONFLICTS.labels(str(conflict.issuer)).inc()
