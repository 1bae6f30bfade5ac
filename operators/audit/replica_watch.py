"""Watching redundant guard replicas through their audit chains.

Replicas of one guard read the same input and make the same decisions, each on its
own audit chain (``<origin>@<replica>/p<n>``). :class:`ReplicaWatchLogic` reads those
chains' records and checkpoints and raises a :class:`~riskguard.schemas.RiskAlert`
when they part: ``replica_divergence`` (a decision one replica made and another did not
within ``tolerance_s``), ``replica_silent`` / ``replica_restored``,
``replica_config_mismatch`` and ``replica_unverified`` (docs/replicas.md).

Given the checkpoint keys (``keys``: a trust file's ``checkpoint_key``), it believes a
record only once a signed checkpoint covers it
(:class:`~riskguard.operators.audit.attest.Attestor`); without keys, what it reads
(tests and tools only). Time is processing time (an injected clock): what matters is
whether the other copy arrived in time. Any other event (a
:class:`~riskguard.operators.core.clock.Tick`) lets time pass while no record arrives.

>>> from riskguard.operators.core.clock import ManualClock
>>> clock = ManualClock(0)
>>> logic = ReplicaWatchLogic(ReplicaWatchConfig(peers=("a", "b"), tolerance_s=5), clock)
>>> from riskguard.schemas.audit import AuditRecord
>>> made = AuditRecord(
...     record_id="riskguard@a/p0:0", chain="riskguard@a/p0", index=0, ts=0,
...     kind="command", operator="mitigation", operator_version="1", config_hash="0" * 64,
...     input_digest="0" * 64, body={"decision_id": "d1", "action": "reduce_only"})
>>> logic.on_event(made)
[]
>>> clock.advance(6 * 10**9)
>>> [(a.kind, a.details["made_by"], a.details["missing_from"]) for a in logic.on_event(None)]
[('replica_divergence', 'a', 'b')]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.audit.attest import Attestor, AttestState, replica_chains, replica_of
from riskguard.operators.audit.verify import KeyLookup
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord
from riskguard.schemas.signals import FIRM, RiskAlert, Severity

from riskguard.errors import ConfigError

_NS = 1_000_000_000
_ALERT_NS = uuid.UUID("0d7c6b1e-4f0a-5c43-9a51-2f9d1f0c7e21")


class ReplicaWatchConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What :class:`ReplicaWatchLogic` watches: ``peers`` (every replica's id; empty:
    every replica it sees), how long another replica may take to make the same
    decision (``tolerance_s``), and how long a replica may write nothing while another
    writes (``silent_s``)."""

    peers: tuple[str, ...] = ()
    tolerance_s: float = 10.0
    silent_s: float = 60.0
    # the guard's audit origin and chain count ([audit] origin, partitions), when known:
    # the watch then follows only the chains the peers write, <origin>@<peer>/p<k>
    origin: str | None = None
    partitions: int | None = None
    # replica id -> the trust-file name that signs its checkpoints ([replica] issuers);
    # a replica not named here is tied to the signer of its chain's first checkpoint
    issuers: dict[str, str] = {}

    def __post_init__(self) -> None:
        for name in ("tolerance_s", "silent_s"):
            v = getattr(self, name)
            if not v > 0:
                raise ConfigError(f"replicas.{name}", "seconds > 0", v)


@dataclass
class _Decision:
    first: str
    at: int
    seen: list[str]
    action: str
    scope: str
    evidence: list[str]


@persisted("riskguard.replica_watch")
@dataclass
class ReplicaWatchState:
    """Per replica: when it last wrote (processing time) and its last config hash; the
    decisions not yet made by every replica; the alerts already raised."""

    started: int = -1
    last_seen: dict[str, int] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    pending: dict[str, _Decision] = field(default_factory=dict)
    # decisions settled (made by all, or alerted), with when: a late copy is no new one
    settled: dict[str, int] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # what signed checkpoints vouch for (a watch given the checkpoint keys)
    attest: AttestState | None = None
    unverified: list[str] = field(default_factory=list)  # chains alerted as unverified
    version: int = 3


class ReplicaWatchLogic:
    """``on_event(AuditRecord | AuditCheckpoint | anything) -> [RiskAlert]``."""

    def __init__(self, config: ReplicaWatchConfig, clock: Clock = system_clock,
                 state: ReplicaWatchState | None = None, *,
                 keys: Mapping[str, VerifyKey] | KeyLookup | None = None,
                 signer_of: Callable[[str], str | None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.state = state if state is not None else ReplicaWatchState()
        self._tolerance = int(config.tolerance_s * _NS)
        self._silent = int(config.silent_s * _NS)
        self.attestor: Attestor | None = None
        if keys is not None:
            follow = replica_chains(config.origin, config.peers, config.partitions)
            self.attestor = Attestor(keys, state=self.state.attest, follow=follow,
                                     signer_of=signer_of, issuers=config.issuers)
            self.state.attest = self.attestor.state

    def snapshot(self) -> ReplicaWatchState:
        st = self.state
        return ReplicaWatchState(
            started=st.started, last_seen=dict(st.last_seen), config=dict(st.config),
            pending={k: _Decision(d.first, d.at, list(d.seen), d.action, d.scope,
                                  list(d.evidence)) for k, d in st.pending.items()},
            settled=dict(st.settled), silent=list(st.silent), mismatched=list(st.mismatched),
            counts=dict(st.counts),
            attest=None if self.attestor is None else self.attestor.snapshot(),
            unverified=list(st.unverified))

    def on_event(self, item: Any) -> list[RiskAlert]:
        st = self.state
        now = self.clock()
        if st.started < 0:
            st.started = now
        out: list[RiskAlert] = []
        if isinstance(item, AuditRecord | AuditCheckpoint):
            if self.attestor is None:
                out.extend(self._believed(item, now))
            else:
                for believed in self.attestor.on_item(item):
                    out.extend(self._believed(believed, now))
                out.extend(self._unverified(now))
        out.extend(self._sweep(now))
        return out

    def _believed(self, item: AuditRecord | AuditCheckpoint, now: int) -> list[RiskAlert]:
        """A record or checkpoint believed: its replica writes (with keys, the attestor
        passes on only records new to a chain and checkpoints newer than its last)."""
        replica = replica_of(item.chain if isinstance(item, AuditRecord) else item.origin)
        if replica is None or (self.config.peers and replica not in self.config.peers):
            return []
        out = self._heard(replica, now)
        if isinstance(item, AuditRecord):
            out.extend(self._config(replica, item.config_hash, now))
            if item.kind == "command":
                self._decision(replica, item, now)
        return out

    def _unverified(self, now: int) -> list[RiskAlert]:
        """One alert per chain the attestor could not verify."""
        st = self.state
        assert st.attest is not None  # a watch with keys
        broken = st.attest.broken
        if len(broken) <= len(st.unverified):  # none new: a broken chain stays broken
            return []
        out = []
        alerted = set(st.unverified)
        for chain, why in sorted(broken.items()):
            if chain in alerted:
                continue
            st.unverified.append(chain)
            out.append(self._alert(
                "replica_unverified", Severity.CRITICAL, now,
                f"audit chain {chain}: {why}; its records are not believed",
                {"chain": chain, "replica": replica_of(chain) or "", "why": why[:500]}))
        return out

    # -- what a record says

    def _heard(self, replica: str, now: int) -> list[RiskAlert]:
        st = self.state
        st.last_seen[replica] = now
        if replica in st.silent:
            st.silent.remove(replica)
            return [self._alert("replica_restored", Severity.INFO, now,
                                f"replica {replica} writes again", {"replica": replica})]
        return []

    def _config(self, replica: str, digest: str, now: int) -> list[RiskAlert]:
        st = self.state
        before = st.config.get(replica)
        if before == digest:  # each pair was judged when its newer side came
            return []
        st.config[replica] = digest
        if before is not None:  # its old config's mismatches are over: forget them
            gone = f"{replica}:{before}"
            st.mismatched = [p for p in st.mismatched if gone not in p.split("|")]
        out = []
        for other, theirs in sorted(st.config.items()):
            if other == replica or theirs == digest:
                continue
            pair = "|".join(sorted((f"{replica}:{digest}", f"{other}:{theirs}")))
            if pair in st.mismatched:
                continue
            st.mismatched.append(pair)
            out.append(self._alert(
                "replica_config_mismatch", Severity.CRITICAL, now,
                f"replicas {other} and {replica} run different configs (sha256 "
                f"{theirs[:12]} and {digest[:12]}): they may decide differently",
                {"replica": replica, "config_hash": digest, "other": other,
                 "other_config_hash": theirs}))
        return out

    def _decision(self, replica: str, rec: AuditRecord, now: int) -> None:
        st = self.state
        body = rec.body
        did = body.get("decision_id")
        if not isinstance(did, str) or not did:
            return
        if did in st.settled:
            self._count("late_copies")
            return
        d = st.pending.get(did)
        if d is None:
            scope = body.get("scope") or {}
            label = f"{scope.get('kind', '?')}:{scope.get('value', '?')}"
            st.pending[did] = d = _Decision(
                first=replica, at=now, seen=[replica], action=str(body.get("action", "?")),
                scope=label, evidence=[str(e) for e in body.get("evidence_hashes", [])][-8:])
        elif replica not in d.seen:
            d.seen.append(replica)
        if self._everyone() <= set(d.seen):
            del st.pending[did]
            st.settled[did] = now
            self._count("matched")

    # -- what time says

    def _everyone(self) -> set[str]:
        return set(self.config.peers) or set(self.state.last_seen)

    def _sweep(self, now: int) -> list[RiskAlert]:
        st = self.state
        out: list[RiskAlert] = []
        for did in _oldest_until(st.pending, lambda d: now - d.at >= self._tolerance):
            d = st.pending.pop(did)
            st.settled[did] = now
            missing = sorted(self._everyone() - set(d.seen))
            if not missing:
                continue
            self._count("diverged")
            quiet = {m: (now - st.last_seen[m]) / _NS for m in missing if m in st.last_seen}
            out.append(self._alert(
                "replica_divergence", Severity.CRITICAL, now,
                f"replica {','.join(sorted(d.seen))} decided {d.action} on {d.scope} "
                f"(decision {did[:12]}); replica {','.join(missing)} did not within "
                f"{self.config.tolerance_s:g} s",
                {"decision_id": did, "made_by": ",".join(sorted(d.seen)),
                 "missing_from": ",".join(missing), "action": d.action, "scope": d.scope,
                 "evidence": ",".join(d.evidence),
                 **{f"last_write_s_ago.{m}": s for m, s in quiet.items()}}))
        horizon = now - 100 * self._tolerance
        for did in _oldest_until(st.settled, lambda t: t < horizon):
            del st.settled[did]
        heard = [t for t in st.last_seen.values() if now - t < self._silent]
        if heard:
            for r in sorted(self._everyone()):
                last = st.last_seen.get(r, st.started)
                if now - last >= self._silent and r not in st.silent:
                    st.silent.append(r)
                    out.append(self._alert(
                        "replica_silent", Severity.CRITICAL, now,
                        f"replica {r} has written nothing for {(now - last) / _NS:.0f} s "
                        "while another replica has: it may be down or cut off",
                        {"replica": r, "silent_s": (now - last) / _NS}))
        return out

    def _count(self, what: str) -> None:
        self.state.counts[what] = self.state.counts.get(what, 0) + 1

    def _alert(self, kind: str, severity: Severity, now: int, reason: str,
               details: dict[str, float | str]) -> RiskAlert:
        key = f"{kind}|{now}|{msgspec.json.encode(details, order='sorted').decode()}"
        return RiskAlert(id=str(uuid.uuid5(_ALERT_NS, key)), kind=kind, scope=FIRM, ts=now,
                         severity=severity, reason=reason, details=details)


def _oldest_until(items: dict[str, Any], due: Callable[[Any], bool]) -> list[str]:
    """The keys of ``items`` (in the order their times were set, oldest first) from the
    front while ``due``: a sweep reads what has come due, not every decision it holds.

    >>> _oldest_until({"a": 1, "b": 2, "c": 9}, lambda t: t < 5)
    ['a', 'b']
    """
    out = []
    for key, value in items.items():
        if not due(value):
            break
        out.append(key)
    return out
