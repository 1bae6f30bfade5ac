"""Believing audit records only once a signed checkpoint vouches for them.

An audit record carries no signature of its own: anyone who may write to the audit
topic can write one. A checkpoint is signed (by a key the trust file lets sign
checkpoints) and names its chain's size and Merkle root. :class:`Attestor` holds each
chain's records back until a checkpoint covers them, checks the signature and that
exactly those records hash to the signed root, and only then passes them on. Records
no good checkpoint covers are never passed on: garbage, forged records and records of
a key no longer trusted are counted, and a chain that cannot be verified is reported
once (:attr:`AttestState.broken`).

Records claiming one index (forged ones beside the real one) are all kept, whatever
their number, and the checkpoint decides between them: the choice of one record per
index that hashes to its signed root (searched depth first, :data:`MAX_SEARCH` leaves
at most). Memory is bounded by bytes (:data:`MAX_HELD_BYTES`) and by how far ahead of
the verified size a record may be (:data:`MAX_AHEAD`), not by a count of claimants a
forger could fill first.

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

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
from riskguard.operators.audit.chain import record_leaf, replica_of, verify_checkpoint
from riskguard.operators.audit.merkle import CompactRange
from riskguard.operators.audit.verify import AuditItem, KeyLookup, key_lookup
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord

from riskguard.errors import VerificationError

MAX_CHAINS = 1024
"""Chains followed at most (each guard process writes one per partition)."""
MAX_AHEAD = 100_000
"""A record is held only if its index is below the chain's verified size plus this: a
checkpoint comes every ``[audit] checkpoint_every`` records (1,000 by default), so a
record further ahead is none the writer could have written yet (counted unattested)."""
MAX_HELD_BYTES = 64 * 1024 * 1024
"""Bytes of records (as encoded) held back across all chains; past it a record is not
held (counted ``held_over_cap``) and its chain is reported."""
OVER_CAP = "*"
"""The :attr:`AttestState.broken` entry saying chains past :data:`MAX_CHAINS` were seen
and not followed (their records are not believed)."""
MAX_SEARCH = 100_000
"""Leaves a checkpoint may append while choosing among the records that claim each
index (forged ones beside the real one): every claimant is kept and tried, in the
order they came, until the choice hashes to the signed root or this bound is spent."""


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
        self._bytes = 0  # of the records held, across chains
        for tail in self.state.chains.values():  # counted again: a snapshot may predate it
            tail.held = sum(map(len, tail.pending.values()))
            self._bytes += sum(_size(r) for recs in tail.pending.values() for r in recs)

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
        if rec.index >= tail.size + MAX_AHEAD:
            self._count("unattested")  # no checkpoint can cover it soon
            return
        same = tail.pending.get(rec.index, [])
        if any(r.leaf_hash == rec.leaf_hash for r in same):
            return  # the same record again
        size = _size(rec)
        if self._bytes + size > MAX_HELD_BYTES:
            self._count("held_over_cap")
            self.state.broken.setdefault(chain, f"more than {MAX_HELD_BYTES >> 20} MiB of "
                                                "records waited for checkpoints; records "
                                                "past it are not believed")
            return
        tail.pending.setdefault(rec.index, same).append(rec)
        tail.held += 1
        self._bytes += size

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
        chosen, spent = self._match(tail, options, cp.root)
        self._drop(tail, start, cp.size)
        if chosen is None:
            self._count("unattested", sum(len(o) for o in options))
            contested = sum(len(o) > 1 for o in options)
            why = (f"no choice among the records claiming {contested} of its indices hashes "
                   f"to it within {MAX_SEARCH} leaves" if spent else
                   "they do not hash to its signed root")
            self.state.broken.setdefault(chain, f"the records before the checkpoint at size "
                                                f"{cp.size}: {why}")
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

    @staticmethod
    def _match(tail: ChainTail, options: list[list[AuditRecord]],
               root: str) -> tuple[list[AuditRecord] | None, bool]:
        """The records, one per index, that extend ``tail`` to ``root`` (moving ``tail``
        there), or None; and whether the search bound was spent."""
        leaves = [[bytes.fromhex(r.leaf_hash or "") for r in o] for o in options]
        picks = choose(CompactRange(tail.size, tail.peaks), leaves, bytes.fromhex(root),
                       MAX_SEARCH)
        if picks is None or picks is SPENT:
            return None, picks is SPENT
        rng = CompactRange(tail.size, tail.peaks)
        for leaf, k in zip(leaves, picks, strict=True):
            rng.append(leaf[k])
        tail.size, tail.peaks = rng.size, list(rng.peaks)
        return [o[k] for o, k in zip(options, picks, strict=True)], False

    def _drop(self, tail: ChainTail, start: int, below: int) -> None:
        """Forget the records held at ``start`` (the verified size before the checkpoint;
        none is held below it) up to ``below``: the checkpoint's range, not every index
        held."""
        pending = tail.pending
        for i in range(start, below):
            got = pending.pop(i, None)
            if got is not None:
                tail.held -= len(got)
                self._bytes -= sum(_size(r) for r in got)

    def snapshot(self) -> AttestState:
        st = self.state
        return AttestState(
            chains={k: ChainTail(t.size, list(t.peaks), {i: list(r) for i, r in
                                                        t.pending.items()}, t.held, t.cp_ts)
                    for k, t in st.chains.items()},
            counts=dict(st.counts), broken=dict(st.broken), signers=dict(st.signers),
            version=st.version)


def _size(rec: AuditRecord) -> int:
    """What a held record counts against :data:`MAX_HELD_BYTES`: its encoded length."""
    return len(_encoder.encode(rec))


_encoder = msgspec.json.Encoder()
SPENT: list[int] = []
"""What :func:`choose` returns when :data:`MAX_SEARCH` ran out."""


def choose(start: CompactRange, leaves: list[list[bytes]], root: bytes,
           budget: int = MAX_SEARCH) -> list[int] | None:
    """Which of ``leaves[i]`` (the leaf hashes claiming index ``start.size + i``) to
    take at each index so that ``start`` extended by them has ``root``: depth first,
    each index's claimants in order, a range copied per step (O(log n)). None if no
    choice does; :data:`SPENT` if ``budget`` appends ran out first. An index with one
    claimant costs one append, however many are contested.

    >>> from riskguard.operators.audit.merkle import leaf_hash
    >>> real, fake = [leaf_hash(bytes([i])) for i in range(3)], leaf_hash(b"x")
    >>> rng = CompactRange()
    >>> for leaf in real:
    ...     rng.append(leaf)
    >>> choose(CompactRange(), [[fake, real[0]], [real[1]], [fake, real[2]]], rng.root())
    [1, 0, 1]
    >>> choose(CompactRange(), [[fake]] * 3, rng.root()) is None
    True
    """
    n = len(leaves)
    if n == 0:
        return [] if start.root() == root else None
    picks = [0] * n
    ranges = [start]  # ranges[d]: start extended by the picks before index d
    depth = 0
    while True:
        if depth == n:
            if ranges[n].root() == root:
                return picks
            ranges.pop()
            depth -= 1
            picks[depth] += 1
        elif picks[depth] < len(leaves[depth]):
            budget -= 1
            if budget < 0:
                return SPENT
            rng = CompactRange(ranges[depth].size, ranges[depth].peaks)
            rng.append(leaves[depth][picks[depth]])
            ranges.append(rng)
            depth += 1
            if depth < n:
                picks[depth] = 0
        elif depth == 0:
            return None
        else:
            ranges.pop()
            depth -= 1
            picks[depth] += 1
