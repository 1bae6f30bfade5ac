"""RFC 6962 Merkle trees: leaf and node hashes, roots and inclusion proofs.

The leaf hash of a record is ``SHA-256(0x00 || canonical body)`` and inner nodes are
``SHA-256(0x01 || left || right)``, as in RFC 6962, so a leaf can never be passed off
as a node.

>>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
>>> root = root_of(leaves)
>>> verify_inclusion(leaves[3], 3, 5, inclusion_proof(3, leaves), root)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from riskguard.errors import AuditError

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``.

    >>> leaf_hash(b"").hex()[:16]
    '6e340b9cffb37a98'
    """
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes (RFC 6962 MTH)."""
    return tree_levels(leaves)[-1][0] if leaves else EMPTY_ROOT


def tree_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first; an unpaired last node is promoted."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def proof_from_levels(index: int, levels: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Inclusion proof of leaf ``index`` from :func:`tree_levels` output."""
    proof = []
    i = index
    for level in levels[:-1]:
        sib = i ^ 1
        if sib < len(level):
            proof.append(level[sib])
        i >>= 1
    return proof


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``leaves``."""
    if not 0 <= index < len(leaves):
        msg = f"inclusion proof: index {index} outside a tree of size {len(leaves)}"
        raise AuditError(msg, index=index)
    return proof_from_levels(index, tree_levels(leaves))


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 2.1.3.2); raises if malformed."""
    if not 0 <= index < size:
        msg = f"inclusion proof: index {index} outside a tree of size {size}"
        raise AuditError(msg, index=index)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32:
            raise AuditError("inclusion proof: element is not 32 bytes", index=index)
        if sn == 0:
            raise AuditError("inclusion proof: too long", index=index)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("inclusion proof: too short", index=index)
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Return nothing if ``leaf`` is at ``index`` of the tree with ``root``; else raise."""
    if len(leaf) != 32 or len(root) != 32:
        raise AuditError("inclusion proof: leaf and root must be 32 bytes", index=index)
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise AuditError("inclusion proof does not lead to the root", index=index)


class CompactRange:
    """Append-only Merkle state in O(log n): the roots of the perfect subtrees."""

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        self.size = size
        self.peaks = list(peaks)

    def append(self, leaf: bytes) -> None:
        self.peaks.append(leaf)
        n = self.size
        while n & 1:
            right = self.peaks.pop()
            left = self.peaks.pop()
            self.peaks.append(node_hash(left, right))
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        r = self.peaks[-1]
        for p in reversed(self.peaks[:-1]):
            r = node_hash(p, r)
        return r
