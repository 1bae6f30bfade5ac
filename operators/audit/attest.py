"""Believing audit records only once a signed checkpoint vouches for them.

An audit record carries no signature of its own: anyone who may write to the audit
topic can write one. A checkpoint is signed (by a key the trust file lets sign
checkpoints) and names its chain's size, Merkle root and last record's leaf hash; each
record names the leaf hash of the record before it (``prev_leaf``). :class:`Attestor`
holds each chain's records back until a checkpoint covers them, checks the signature,
finds the records it covers from its last leaf back along the links, checks that they
hash to the signed root, and only then passes them on. Records no good checkpoint
covers are never passed on: garbage, forged records and records of a key no longer
trusted are counted, and a chain that cannot be verified is reported once
(:attr:`AttestState.broken`).

Records claiming one index (forged ones beside the real one) are held until a
checkpoint comes; it picks, at each index, the one record whose leaf hash the next
record (or the checkpoint) names: one pass over what is held, however many claim each
index. Memory is bounded by bytes (:data:`MAX_HELD_BYTES`) and by how far ahead of the
verified size a record may be (:data:`MAX_AHEAD`). A forger can still fill the bytes
with claimants before the real records come; a real record then not held leaves its
chain unverifiable (reported, never believed on a guess), and with the bytes full, a
chain within its share of them takes the room of the chain holding the most, so a
flood on one chain does not cost the others theirs.

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
from riskguard.schemas.audit import GENESIS_LEAF, AuditCheckpoint, AuditRecord

from riskguard.errors import VerificationError

MAX_CHAINS = 1024
"""Chains followed at most (each guard process writes one per partition)."""
MAX_AHEAD = 100_000
"""A record is held only if its index is below the chain's verified size plus this: a
checkpoint comes every ``[audit] checkpoint_every`` records (1,000 by default), so a
record further ahead is none the writer could have written yet (counted unattested)."""
MAX_HELD_BYTES = 64 * 1024 * 1024
"""Bytes of records (as encoded) held back across all chains. Past it a record is held
only if its chain holds less than its share (this over the chains followed), in the
room of the chain holding the most, which is given up (reported, nothing more of it
believed); otherwise it is not held (counted ``held_over_cap``) and its chain is
reported."""
OVER_CAP = "*"
"""The :attr:`AttestState.broken` entry saying chains past :data:`MAX_CHAINS` were seen
and not followed (their records are not believed)."""


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
    last_leaf: str = GENESIS_LEAF  # the leaf hash of record size - 1
    held_bytes: int = 0  # of the records in pending
    lost: bool = False  # a record a checkpoint covers is gone: nothing more verifies


@persisted("riskguard.attest")
@dataclass
class AttestState:
    """Per chain, what is verified and what waits; counts; chains that failed."""

    chains: dict[str, ChainTail] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    signers: dict[str, str] = field(default_factory=dict)  # chain -> who signs its checkpoints
    version: int = 3


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
    signer of its first good checkpoint. A checkpoint another key signed breaks it.

    A good checkpoint whose records cannot all be found along the links (one altered,
    left out or not held) gives its chain up: reported, its records let go, and nothing
    more of it believed (no later checkpoint can verify without them)."""

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
        # of the records held, across chains: not in the snapshot, its chains' sum
        self._bytes = sum(tail.held_bytes for tail in self.state.chains.values())

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
        if tail.lost:
            return []  # its records can no longer be verified (reported when lost)
        return self._checkpoint(chain, tail, item)

    def _hold(self, chain: str, tail: ChainTail, rec: AuditRecord) -> None:
        if tail.lost or not _plausible(tail, rec):
            self._count("unattested")
            return
        same = tail.pending.get(rec.index, [])
        if any(r.leaf_hash == rec.leaf_hash for r in same):
            return  # the same record again
        size = _size(rec)
        if not self._room(tail, size):
            self._count("held_over_cap")
            self.state.broken.setdefault(chain, f"more than {MAX_HELD_BYTES >> 20} MiB of "
                                                "records waited for checkpoints; records "
                                                "past it are not believed")
            return
        tail.pending.setdefault(rec.index, same).append(rec)
        tail.held += 1
        tail.held_bytes += size
        self._bytes += size

    def _room(self, tail: ChainTail, size: int) -> bool:
        """Whether ``size`` more bytes of ``tail``'s records may be held: within the cap,
        or, the cap full, ``tail`` within its share of it and the chain holding the most
        given up to make room."""
        if self._bytes + size <= MAX_HELD_BYTES:
            return True
        chains = self.state.chains
        if tail.held_bytes + size > MAX_HELD_BYTES // len(chains):
            return False
        name, most = max(chains.items(), key=lambda kv: kv[1].held_bytes)
        if most is tail or not most.held_bytes:
            return False
        self._give_up(name, most, f"more than {MAX_HELD_BYTES >> 20} MiB of records waited "
                                  "for checkpoints, this chain's the most: they were let go "
                                  "and none of its records is believed from there")
        return self._bytes + size <= MAX_HELD_BYTES

    def _give_up(self, chain: str, tail: ChainTail, why: str) -> None:
        """Drop every record ``tail`` holds and believe nothing more of it: a record a
        coming checkpoint covers is gone."""
        self._count("unattested", tail.held)
        self._bytes -= tail.held_bytes
        tail.pending, tail.held, tail.held_bytes, tail.lost = {}, 0, 0, True
        self.state.broken.setdefault(chain, why)

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
        chosen, peaks, why = _linked(tail, cp)
        if why:
            self._give_up(chain, tail, f"the records before the checkpoint at size "
                                       f"{cp.size}: {why}")
            return []
        start = tail.size
        tail.size, tail.peaks, tail.last_leaf = cp.size, peaks, cp.last_leaf or GENESIS_LEAF
        tail.cp_ts = max(tail.cp_ts, cp.ts)
        self._count("attested", len(chosen))
        self._count("unattested", self._drop(tail, start, cp.size) - len(chosen))
        self._unlinked_at_start(tail)
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

    def _drop(self, tail: ChainTail, start: int, below: int) -> int:
        """Forget the records held at ``start`` (the verified size before the checkpoint;
        none is held below it) up to ``below``: the checkpoint's range, not every index
        held. Returns how many there were."""
        pending, dropped = tail.pending, 0
        for i in range(start, below):
            got = pending.pop(i, None)
            if got is not None:
                self._forget(tail, got)
                dropped += len(got)
        return dropped

    def _forget(self, tail: ChainTail, records: list[AuditRecord]) -> None:
        size = sum(map(_size, records))
        tail.held -= len(records)
        tail.held_bytes -= size
        self._bytes -= size

    def _unlinked_at_start(self, tail: ChainTail) -> None:
        """Forget the records held at the newly verified size that do not link to its
        last leaf: none of them can be the chain's."""
        got = tail.pending.get(tail.size)
        if not got:
            return
        keep = [r for r in got if r.prev_leaf == tail.last_leaf]
        if len(keep) < len(got):
            self._forget(tail, [r for r in got if r.prev_leaf != tail.last_leaf])
            self._count("unattested", len(got) - len(keep))
            if keep:
                tail.pending[tail.size] = keep
            else:
                del tail.pending[tail.size]

    def snapshot(self) -> AttestState:
        st = self.state
        return AttestState(
            chains={k: ChainTail(t.size, list(t.peaks), {i: list(r) for i, r in
                                                        t.pending.items()}, t.held, t.cp_ts,
                                 t.last_leaf, t.held_bytes, t.lost)
                    for k, t in st.chains.items()},
            counts=dict(st.counts), broken=dict(st.broken), signers=dict(st.signers),
            version=st.version)


def _plausible(tail: ChainTail, rec: AuditRecord) -> bool:
    """Whether ``rec`` could be a record of ``tail``'s chain a checkpoint will cover: not
    behind what is verified nor far ahead of it, linked (at the next index, to the last
    verified leaf) and its leaf hash its own."""
    if not tail.size <= rec.index < tail.size + MAX_AHEAD or rec.prev_leaf is None:
        return False
    if rec.index == tail.size and rec.prev_leaf != tail.last_leaf:
        return False
    return rec.leaf_hash == record_leaf(rec).hex()


def _linked(tail: ChainTail,
            cp: AuditCheckpoint) -> tuple[list[AuditRecord], list[bytes], str]:
    """The records ``cp`` covers past ``tail``'s verified size, in order, found from its
    last leaf back: at each index the record held whose leaf hash the next one (or
    ``cp``) names; they must reach ``tail``'s last leaf and hash to ``cp``'s root. With
    the peaks of the tree they extend ``tail`` to; else why not. One pass over the
    records held in the range, one leaf appended per record covered."""
    need, chosen = cp.last_leaf, []
    for i in range(cp.size - 1, tail.size - 1, -1):
        rec = next((r for r in tail.pending.get(i, ()) if r.leaf_hash == need), None)
        if rec is None:
            return [], [], (f"none held at index {i} is the record the chain links to "
                            f"(record {i} was altered, left out or not held)")
        chosen.append(rec)
        need = rec.prev_leaf
    if need != tail.last_leaf:
        return [], [], f"record {tail.size} does not link to the records verified before it"
    chosen.reverse()
    rng = CompactRange(tail.size, tail.peaks)
    for rec in chosen:
        rng.append(bytes.fromhex(rec.leaf_hash or ""))
    if rng.root().hex() != cp.root:
        return [], [], "they do not hash to its signed root"
    return chosen, list(rng.peaks), ""


def _size(rec: AuditRecord) -> int:
    """What a held record counts against :data:`MAX_HELD_BYTES`: its encoded length."""
    return len(_encoder.encode(rec))


_encoder = msgspec.json.Encoder()
