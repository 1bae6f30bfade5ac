"""Believing audit records only once a signed checkpoint vouches for them.

An audit record carries no signature of its own: anyone who may write to the audit
topic can write one. A checkpoint is signed (by a key the trust file lets sign
checkpoints) and names its chain's size and Merkle root. :class:`Attestor` holds each
chain's records back until a checkpoint covers them, checks the signature and that
exactly those records hash to the signed root, and only then passes them on. Records
no good checkpoint covers are never passed on: garbage, forged records and records of
a key no longer trusted are counted, and a chain that cannot be verified is reported
once (:attr:`AttestState.broken`).

Two records claiming one index (a forged one beside the real one) are both kept, and
the checkpoint decides between them (up to :data:`MAX_CHOICES` combinations).

>>> from riskguard.operators.audit.chain import AuditConfig, AuditLogic
>>> from riskguard.operators.signing.crypto import Signer
>>> key = Signer.from_private_bytes(bytes(32), issuer="engine-a")
>>> log = AuditLogic("riskguard@a/p0", key, AuditConfig(checkpoint_every=2))
>>> items = [out for i in range(3) for out in log.on_event({"n": i})]
>>> att = Attestor({key.key_id: key.public_key})
>>> [[type(x).__name__ for x in att.on_item(it)] for it in items]
[[], [], ['AuditRecord', 'AuditRecord', 'AuditCheckpoint'], []]
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from riskguard.operators.audit.chain import record_leaf, replica_of, verify_checkpoint
from riskguard.operators.audit.merkle import CompactRange
from riskguard.operators.audit.verify import AuditItem, KeyLookup, key_lookup
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord

from riskguard.errors import VerificationError

MAX_CHAINS = 1024
"""Chains followed at most (each guard process writes one per partition)."""
MAX_PENDING = 100_000
"""Records held back per chain waiting for their checkpoint, forged ones claiming a
place included; past it, a record is not held (counted unattested, and the chain
reported): the oldest stay, as a checkpoint attests the records from the chain's tail
on."""
OVER_CAP = "*"
"""The :attr:`AttestState.broken` entry saying chains past :data:`MAX_CHAINS` were seen
and not followed (their records are not believed)."""
MAX_CANDIDATES = 3
"""Records kept per index (the real one and forged ones claiming its place)."""
MAX_CHOICES = 64
"""Combinations of candidates a checkpoint is tried against."""


def replica_chains(origin: str | None = None, replicas: Iterable[str] = (),
                   partitions: int | None = None) -> Callable[[str], bool]:
    """Which chains to follow: the replicas' own, ``<origin>@<replica>/p<k>``, of
    ``replicas`` (any if none), ``k`` below ``partitions`` (any if None) and the base
    ``origin`` (any if None). The narrower, the fewer names junk on the topic can take
    the chain slots with.

    >>> ours = replica_chains("riskguard", ("a", "b"), partitions=2)
    >>> [ours(c) for c in ("riskguard@a/p1", "riskguard@b/p2", "riskguard@c/p0",
    ...                    "riskguard@a/junk", "junk@a/p0", "riskguard@a/p01")]
    [True, False, False, False, False, False]
    """
    base = re.escape(origin) if origin is not None else r"[^@/]+"
    names = "|".join(map(re.escape, replicas)) or r"[^/]+"
    shape = re.compile(rf"^{base}@(?:{names})/p(0|[1-9]\d{{0,8}})$")
    limit = partitions

    def follows(chain: str) -> bool:
        m = shape.match(chain)
        return m is not None and (limit is None or int(m.group(1)) < limit)

    return follows


@dataclass
class ChainTail:
    """One chain: its verified Merkle state and the records waiting for a checkpoint."""

    size: int = 0
    peaks: list[bytes] = field(default_factory=list)
    pending: dict[int, list[AuditRecord]] = field(default_factory=dict)
    held: int = 0  # the records in pending
    cp_ts: int = -1  # the time of the newest checkpoint believed


@persisted("riskguard.attest")
@dataclass
class AttestState:
    """Per chain, what is verified and what waits; counts; chains that failed."""

    chains: dict[str, ChainTail] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    signers: dict[str, str] = field(default_factory=dict)  # chain -> who signs its checkpoints
    version: int = 2


class Attestor:
    """``on_item(item) -> [attested records..., checkpoint]``: what a signed checkpoint
    vouches for, in order; everything else is held back or counted. A checkpoint is
    passed on only if it is newer than the last one believed (more records, or the same
    size signed later): a copy of an old one (``replayed_checkpoints``) is not.

    ``keys``: the keys that may sign checkpoints (a trust file's ``checkpoint_key``).
    ``follow``: which chains to follow: a name prefix, or a test such as
    :func:`replica_chains` (default all). Past :data:`MAX_CHAINS` a new chain is not
    followed, and :attr:`AttestState.broken` says so once (:data:`OVER_CAP`).

    ``signer_of`` (a key id -> the name its trust entry gives it) ties each chain to
    one signer, so that no trusted key can vouch for another's chain: a replica's chain
    (``...@<replica>/...``) to ``issuers[replica]`` where given, any chain to the
    signer of its first good checkpoint. A checkpoint another key signed breaks it."""

    def __init__(self, keys: Mapping[str, VerifyKey] | KeyLookup, *,
                 state: AttestState | None = None,
                 follow: str | Callable[[str], bool] | None = None,
                 signer_of: Callable[[str], str | None] | None = None,
                 issuers: Mapping[str, str] | None = None) -> None:
        self._lookup = key_lookup(keys)
        self._signer_of = signer_of
        self._issuers = dict(issuers or {})
        if isinstance(follow, str):
            prefix = follow
            self._follow: Callable[[str], bool] | None = lambda c: c.startswith(prefix)
        else:
            self._follow = follow
        self.state = state if state is not None else AttestState()
        for tail in self.state.chains.values():  # counted again: a snapshot may predate it
            tail.held = sum(map(len, tail.pending.values()))

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            self.state.counts[what] = self.state.counts.get(what, 0) + n

    def _tail(self, chain: str) -> ChainTail | None:
        st = self.state
        tail = st.chains.get(chain)
        if tail is None:
            if len(st.chains) >= MAX_CHAINS:
                self._count("chains_over_cap")
                st.broken.setdefault(OVER_CAP, f"more than {MAX_CHAINS} chains on the topic: "
                                               f"{chain} and later ones are not followed")
                return None
            tail = st.chains[chain] = ChainTail()
        return tail

    def on_item(self, item: AuditItem) -> list[AuditItem]:
        chain = item.chain if isinstance(item, AuditRecord) else item.origin
        if self._follow is not None and not self._follow(chain):
            return []
        tail = self._tail(chain)
        if tail is None:
            return []
        if isinstance(item, AuditRecord):
            self._hold(chain, tail, item)
            return []
        return self._checkpoint(chain, tail, item)

    def _hold(self, chain: str, tail: ChainTail, rec: AuditRecord) -> None:
        if rec.index < tail.size or rec.leaf_hash != record_leaf(rec).hex():
            self._count("unattested")  # behind what is verified, or not its own hash
            return
        same = tail.pending.get(rec.index, [])
        if rec in same:
            return
        if len(same) >= MAX_CANDIDATES:
            self._count("unattested")
            return
        if tail.held >= MAX_PENDING:
            # the oldest stay: a checkpoint attests the records from the tail on
            self._count("unattested")
            self.state.broken.setdefault(chain, f"more than {MAX_PENDING} records waited "
                                                "for a checkpoint")
            return
        tail.pending.setdefault(rec.index, same).append(rec)
        tail.held += 1

    def _checkpoint(self, chain: str, tail: ChainTail, cp: AuditCheckpoint) -> list[AuditItem]:
        try:
            verify_checkpoint(cp, self._lookup(cp.key_id or "", cp.ts))
        except VerificationError as err:
            self._count("unverified_checkpoints")
            self.state.broken.setdefault(chain, f"checkpoint at size {cp.size}: {err}")
            return []
        if self._signer_of is not None and not self._owned(chain, cp):
            return []
        if cp.size < tail.size:
            self._count("stale_checkpoints")
            return []
        if cp.size == tail.size and cp.ts <= tail.cp_ts:
            # a copy of one already believed says nothing new: not that its writer lives
            self._count("replayed_checkpoints")
            return []
        start = tail.size
        options = [tail.pending.get(i, []) for i in range(start, cp.size)]
        if any(not o for o in options):
            self._count("unattested", sum(len(o) for o in options))
            self.state.broken.setdefault(chain, f"records missing before the checkpoint at "
                                                f"size {cp.size}")
            self._drop(tail, start, cp.size)
            return []
        chosen = self._match(tail, options, cp.root)
        self._drop(tail, start, cp.size)
        if chosen is None:
            self._count("unattested", sum(len(o) for o in options))
            self.state.broken.setdefault(chain, f"the records before the checkpoint at size "
                                                f"{cp.size} do not hash to its signed root")
            return []
        tail.cp_ts = max(tail.cp_ts, cp.ts)
        self._count("attested", len(chosen))
        self._count("unattested", sum(len(o) for o in options) - len(chosen))
        return [*chosen, cp]

    def _owned(self, chain: str, cp: AuditCheckpoint) -> bool:
        """Whether ``cp`` was signed by its chain's signer (pinned on the first)."""
        assert self._signer_of is not None
        name = self._signer_of(cp.key_id or "") or ""
        owner = self._issuers.get(replica_of(chain) or "") or self.state.signers.get(chain)
        if owner is None:
            self.state.signers[chain] = name
            return True
        if name == owner:
            return True
        self._count("unverified_checkpoints")
        self.state.broken.setdefault(chain, f"checkpoint at size {cp.size} signed by {name!r}, "
                                            f"not by the chain's signer {owner!r}")
        return False

    def _match(self, tail: ChainTail, options: list[list[AuditRecord]],
               root: str) -> list[AuditRecord] | None:
        """The records, one per index, that extend ``tail`` to ``root`` (moving ``tail``
        there), or None."""
        for n, pick in enumerate(itertools.product(*options)):
            if n >= MAX_CHOICES:
                return None
            rng = CompactRange(tail.size, tail.peaks)
            for rec in pick:
                rng.append(bytes.fromhex(rec.leaf_hash or ""))
            if rng.root().hex() == root:
                tail.size, tail.peaks = rng.size, list(rng.peaks)
                return list(pick)
        return None

    @staticmethod
    def _drop(tail: ChainTail, start: int, below: int) -> None:
        """Forget the records held at ``start`` (the verified size before the checkpoint;
        none is held below it) up to ``below``: the checkpoint's range, not every index
        held."""
        pending = tail.pending
        for i in range(start, below):
            got = pending.pop(i, None)
            if got is not None:
                tail.held -= len(got)

    def snapshot(self) -> AttestState:
        st = self.state
        return AttestState(
            chains={k: ChainTail(t.size, list(t.peaks), {i: list(r) for i, r in
                                                        t.pending.items()}, t.held, t.cp_ts)
                    for k, t in st.chains.items()},
            counts=dict(st.counts), broken=dict(st.broken), signers=dict(st.signers),
            version=st.version)
