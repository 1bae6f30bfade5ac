"""Mitigation: signals and alerts in, graduated mitigation commands out.

- :mod:`~riskguard.operators.mitigation.ops`: the bytewax operator
  :func:`plan_mitigation`;
- :mod:`~riskguard.operators.mitigation.rules`: :class:`PlaybookConfig`, its
  :class:`Rule` and :class:`Rung` ladders, and the scope a rule's target acts on;
- :mod:`~riskguard.operators.mitigation.playbook`: :class:`PlaybookLogic`, incidents
  and their ladders, mitigations in force, the command-rate window;
- :mod:`~riskguard.operators.mitigation.outbox`: how the playbook builds a command
  (ids, decision id, expiry), rate-caps it, and lets it out;
- :mod:`~riskguard.operators.mitigation.incidents`: the playbook's state (incidents,
  mitigations in force) and how it reads a signal;
- :mod:`~riskguard.operators.mitigation.feeds`: primary/backup feed selection per
  venue, with heartbeat-gap failover and its alerts.
"""

from riskguard.operators.mitigation.feeds import (
    FeedConfig,
    FeedMonitorLogic,
    FeedSelectLogic,
    FeedState,
    VenueFeeds,
)
from riskguard.operators.mitigation.ops import plan_mitigation
from riskguard.operators.mitigation.playbook import (
    Incident,
    Mitigation,
    PlaybookInput,
    PlaybookLogic,
    PlaybookState,
    evidence_digest,
    playbook_builder,
)
from riskguard.operators.mitigation.rules import PlaybookConfig, Rule, Rung, map_scope

__all__ = [
    "FeedConfig",
    "FeedMonitorLogic",
    "FeedSelectLogic",
    "FeedState",
    "Incident",
    "Mitigation",
    "PlaybookConfig",
    "PlaybookInput",
    "PlaybookLogic",
    "PlaybookState",
    "Rule",
    "Rung",
    "VenueFeeds",
    "evidence_digest",
    "map_scope",
    "plan_mitigation",
    "playbook_builder",
]
