"""Continuing a chain after a restart.

:class:`ChainResume` rebuilds a chain's append state from its log as read back,
checking it on the way, so a restarted guard continues each chain where the audit
topic ends (:func:`continue_chain`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from riskguard.operators.audit.chain import AuditState
from riskguard.operators.audit.verify import AuditItem, ChainCheck, KeyLookup, key_lookup
from riskguard.operators.signing.crypto import VerifyKey
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord

from riskguard.errors import AuditError


@dataclass
class _Tail:
    check: ChainCheck = field(default_factory=ChainCheck)
    first_ts: int | None = None
    last_ts: int = 0


class ChainResume:
    """Rebuilds each chain's append state from its log as read back, checking it on the way.

    Feed it the audit topic's items in order with :meth:`add`; :meth:`states` then gives,
    per chain, the :class:`AuditState` an uninterrupted :class:`AuditLogic` would have, so
    a guard without a recovery snapshot continues each chain rather than restarting it.
    It checks what it reads as :func:`verify_log` does (the same
    :class:`~riskguard.operators.audit.verify.ChainCheck`), in one pass and O(log n)
    memory per chain, raising :class:`~riskguard.errors.AuditError`: a chain that does not
    verify must not be extended (its next checkpoint would sign the damage). Records
    after the last checkpoint are taken as read.

    Only chains named ``<origin>/...`` are followed (``origin`` None: all); with
    ``partitions``, only ``<origin>/p<k>`` for ``k`` below it, so names made up on the
    topic cannot grow what a start holds.

    >>> from riskguard.operators.audit.chain import AuditConfig, AuditLogic
    >>> from riskguard.operators.signing.crypto import Signer
    >>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
    >>> cfg = AuditConfig(checkpoint_every=2)
    >>> first = AuditLogic("riskguard/p0", signer, cfg)
    >>> log = [out for i in range(3) for out in first.on_event({"n": i})]
    >>> resume = ChainResume({signer.key_id: signer.public_key}, origin="riskguard")
    >>> for item in log:
    ...     resume.add(item)
    >>> state = resume.states()["riskguard/p0"]
    >>> (state.size, state.since_checkpoint)
    (3, 1)
    >>> second = AuditLogic("riskguard/p0", signer, cfg, state)
    >>> [r.index for r in second.on_event({"n": 3}) if isinstance(r, AuditRecord)]
    [3]
    """

    def __init__(self, keys: Mapping[str, VerifyKey] | KeyLookup, *,
                 origin: str | None = None, partitions: int | None = None) -> None:
        self._lookup = key_lookup(keys)
        self._prefix = None if origin is None else f"{origin}/"
        self._names = (None if origin is None or partitions is None
                       else frozenset(f"{origin}/p{k}" for k in range(partitions)))
        self._tails: dict[str, _Tail] = {}

    def add(self, item: AuditItem) -> None:
        """Check one record or checkpoint and extend its chain; raise ``AuditError``."""
        if isinstance(item, AuditRecord):
            if self._ours(item.chain):
                self._record(item, self._tails.setdefault(item.chain, _Tail()))
        elif self._ours(item.origin):
            self._checkpoint(item, self._tails.setdefault(item.origin, _Tail()))

    def _ours(self, chain: str) -> bool:
        if self._names is not None:
            return chain in self._names
        return self._prefix is None or chain.startswith(self._prefix)

    @staticmethod
    def _record(rec: AuditRecord, t: _Tail) -> None:
        expected = t.check.range.size
        if rec.index != expected:
            kind = "duplicate_or_reorder" if rec.index < expected else "gap"
            msg = f"{kind}: record {rec.index} where record {expected} belongs"
            raise AuditError(msg, chain=rec.chain, index=expected)
        t.check.append(rec)
        t.last_ts = max(t.last_ts, rec.ts)
        if t.first_ts is None:
            t.first_ts = rec.ts

    def _checkpoint(self, cp: AuditCheckpoint, t: _Tail) -> None:
        t.check.checkpoint(cp, self._lookup)  # a repeat of the last one changes nothing

    def states(self) -> dict[str, AuditState]:
        """Per chain read (that has records), the state to continue it from."""
        return {
            name: AuditState(
                chain=name, size=t.check.range.size, peaks=list(t.check.range.peaks),
                last_leaf=t.check.last_leaf,
                since_checkpoint=t.check.range.size - t.check.cp_size,
                # as AuditLogic keeps it: the first record's time until a checkpoint is made
                last_checkpoint_ts=t.check.cp_ts if t.check.cp_ts is not None else t.first_ts,
                last_ts=t.last_ts,
            )
            for name, t in self._tails.items() if t.check.range.size
        }


def continue_chain(chain: str, restored: AuditState | None,
                   found: Mapping[str, AuditState]) -> AuditState | None:
    """The state a chain's :class:`AuditLogic` starts from, given what a recovery snapshot
    restored (``restored``) and what the audit topic holds (``found``, from
    :class:`ChainResume`).

    - Nothing restored, or the topic holds more records than the restored state: the
      chain continues where the topic ends (continuing from the snapshot would reuse
      written indices; decisions replayed from it are appended again).
    - Otherwise the restored state wins (a shorter topic lost records, which
      verification reports); at equal sizes the two must be the same tree, else
      ``AuditError``.

    ``found`` is never changed (its state is copied).

    >>> top = {"c": AuditState(chain="c", size=5, peaks=[b"a" * 32, b"b" * 32])}
    >>> continue_chain("c", None, top).size
    5
    >>> continue_chain("c", AuditState(chain="c", size=3), top).size
    5
    >>> continue_chain("c", AuditState(chain="c", size=7), top).size
    7
    >>> continue_chain("d", None, top) is None
    True
    """
    seen = found.get(chain)
    if restored is not None and (seen is None or seen.size <= restored.size):
        if seen is not None and seen.size == restored.size and (
                seen.peaks != restored.peaks or seen.last_leaf != restored.last_leaf):
            msg = (f"restored_state_mismatch: the recovery snapshot and the audit topic both "
                   f"hold {seen.size} records, with different hashes")
            raise AuditError(msg, chain=chain, index=seen.size)
        return restored
    if seen is None:
        return None
    return AuditState(chain=seen.chain, size=seen.size, peaks=list(seen.peaks),
                      last_leaf=seen.last_leaf, since_checkpoint=seen.since_checkpoint,
                      last_checkpoint_ts=seen.last_checkpoint_ts, last_ts=seen.last_ts,
                      version=seen.version)
