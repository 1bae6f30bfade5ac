"""The audit topic read back: its items for verification, and where each chain stands.

A guard that starts without a recovery snapshot must continue each audit chain at its
next index, not at 0. At start-up :func:`read_audit_tail` reads the topic from the
beginning, checks every chain of the guard's origin as read
(:class:`~riskguard.operators.audit.ChainResume`) and returns each chain's append
state. A topic that cannot be read, or an own chain that does not verify, raises: the
guard refuses to extend a chain it cannot vouch for. A message that is no audit item is
skipped and counted, so one message of garbage cannot stop every restart. Other
replicas' chains are believed only where a signed checkpoint vouches for them
(:class:`~riskguard.operators.audit.attest.Attestor`); one that cannot be verified is
reported, never a reason to refuse the start.

Reading goes on until every partition reached its end and the topic has been quiet for
``idle_s`` (the dev broker under-reports the high watermark). The topic's existence is
checked from the cluster's topic list, so reading never creates it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from riskguard.connectors.kafka.consumer import scan_topic
from riskguard.connectors.settings import KafkaSettings
from riskguard.operators.audit import (
    AuditItem,
    AuditState,
    ChainResume,
    KeyLookup,
    decode_item,
    replica_of,
)
from riskguard.operators.audit.attest import Attestor, replica_chains
from riskguard.operators.audit.verify import key_lookup
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import AuditRecord

from riskguard.errors import AuditError, VerificationError


def read_items(settings: KafkaSettings, topic: str, *, idle_s: float = 0.5,
               stall_s: float = 30.0, strict: bool = False) -> list[AuditItem]:
    """Every audit record and checkpoint on ``topic``; ``AuditError`` names the first
    message that is neither (``topic[partition]@offset``; ``strict``: exactly, as
    verification reads them, :func:`~riskguard.operators.audit.decode_item`)."""
    return [decode_item(raw, f"{topic}[{p}]@{off}", strict=strict)
            for p, off, raw in scan_topic(settings, topic, idle_s=idle_s, stall_s=stall_s)]


@dataclass
class AuditTail:
    """What the audit topic says at start-up: this guard's chains (``chains``), the config
    hash of each other replica's last attested record (``peers``), the peer chains no
    signed checkpoint vouches for (``unverified``: chain -> why), and how many messages
    were garbage (``garbage``, with the first one's place)."""

    chains: dict[str, AuditState] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    unverified: dict[str, str] = field(default_factory=dict)
    garbage: int = 0
    first_garbage: str = ""


def read_audit_tail(settings: KafkaSettings, topic: str,
                    keys: Mapping[str, VerifyKey] | KeyLookup, *, origin: str,
                    idle_s: float = 0.5, stall_s: float = 30.0,
                    partitions: int | None = None, replicas: Sequence[str] = (),
                    signer_of: Callable[[str], str | None] | None = None,
                    issuer: str | None = None, issuers: Mapping[str, str] | None = None,
                    ) -> AuditTail:
    """One read of the audit topic: this guard's chains checked as read (``AuditError``
    if one does not verify), its replicas' chains attested, garbage skipped and counted.

    With ``partitions`` (``[audit] partitions``) and ``replicas`` (``[replica] peers``)
    only the chains they name are read, ``<origin>/p<k>`` and each peer's: chain names
    made up on the topic then cannot take the places of real ones. Without them, chains
    past the attestor's cap are reported in ``unverified``.

    With ``signer_of`` (a trust file's ``name_of``), no key vouches for a chain that is
    not its own: this guard's chains take checkpoints of ``issuer`` only (another's
    stops the start), and each peer's those of its issuer (``issuers``, the replica ids'
    issuers), else of the first that signed it."""
    own_keys = keys
    if signer_of is not None and issuer is not None:
        own_keys = _signed_by(keys, signer_of, issuer)
    resume = ChainResume(own_keys, origin=origin, partitions=partitions)
    base = origin.split("@", 1)[0]
    own = replica_of(origin + "/")
    peers = Attestor(keys, follow=replica_chains(
        base, [r for r in replicas if r != own], partitions), signer_of=signer_of,
        issuers=issuers)
    out = AuditTail()
    for p, off, raw in scan_topic(settings, topic, idle_s=idle_s, stall_s=stall_s):
        try:
            item = decode_item(raw, f"{topic}[{p}]@{off}")
        except AuditError as err:  # not an audit item: skipped, counted
            out.garbage += 1
            out.first_garbage = out.first_garbage or str(err)
            continue
        resume.add(item)
        chain = item.chain if isinstance(item, AuditRecord) else item.origin
        if replica_of(chain) in (None, own):
            continue
        for believed in peers.on_item(item):
            peer = replica_of(believed.chain) if isinstance(believed, AuditRecord) else None
            if peer is not None and isinstance(believed, AuditRecord):
                out.peers[peer] = believed.config_hash
    out.chains = resume.states()
    out.unverified = dict(peers.state.broken)
    return out


def _signed_by(keys: Mapping[str, VerifyKey] | KeyLookup,
               signer_of: Callable[[str], str | None], issuer: str) -> KeyLookup:
    """``keys``, of those the trust file names ``issuer`` only."""
    lookup = key_lookup(keys)

    def own(key_id: str, ts: int) -> VerifyKey:
        name = signer_of(key_id)
        if name != issuer:
            raise VerificationError("not_the_chain_signer",
                                    f"key {key_id!r} ({name}) does not sign for {issuer!r}")
        return lookup(key_id, ts)

    return own
