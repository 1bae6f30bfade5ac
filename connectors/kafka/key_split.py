"""Which messages of a topic several processes share are this process's, by Kafka key
(:class:`KeySplit`), and the size of the per-key memos (:data:`MEMO_MAX`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.names import short_memo


class KeySplit:
    """Which messages of its ``topics`` this process keeps, by Kafka key, before decoding:
    one of several independent one-worker dataflows that share a topic between them
    (docs/scaling.md, "The market tier").

    ``owned(key)`` says whether a key is this process's; a message under one of
    ``shared_prefixes`` (index and oracle prices) is read by every process. Before
    decoding, :meth:`place` says whether a key is ``owned`` and whether it is
    ``shared``: a message that is neither is skipped undecoded. After decoding,
    :meth:`admit` settles it: a record ``must_share`` says every process needs is kept
    under a shared key, and is a ``not_broadcast`` dead letter under a key of its own
    (it would reach one process only); anything else (dead letters included) is kept by
    its key's owner alone, so each is emitted once among the processes.

    >>> split = KeySplit(frozenset({"m"}), lambda key: key == b"okx/BTC-PERP",
    ...                  shared_prefixes=(b"index/",), must_share=lambda r: r == "index price")
    >>> [split.place(k) for k in (b"okx/BTC-PERP", b"okx/ETH-PERP", b"index/BTC-USD")]
    [(True, False), (False, False), (False, True)]
    >>> split.admit("index price", False, True), split.admit("trade", False, True)
    ('keep', 'skip')
    >>> split.admit("index price", True, False)
    'not_broadcast'
    """

    def __init__(self, topics: frozenset[str], owned: Callable[[bytes | None], bool], *,
                 shared_prefixes: tuple[bytes, ...] = (),
                 must_share: Callable[[Any], bool] | None = None,
                 counts_dead: Callable[[DeadLetter], bool] | None = None) -> None:
        self.topics = topics
        self.owned = owned
        self.shared_prefixes = shared_prefixes
        self.must_share = must_share
        # of the source's dead letters on every topic, those this process counts: the
        # ones it writes (others read the same topics whole); None: all
        self.counts_dead = counts_dead
        # asked for every message of a split topic, most of them skipped: the answer
        # depends on the key only, so it is memoized per key
        self.place: Callable[[bytes | None], tuple[bool, bool]] = short_memo(MEMO_MAX)(
            self._place)

    def _place(self, key: bytes | None) -> tuple[bool, bool]:
        shared = bool(self.shared_prefixes) and key is not None and key.startswith(
            self.shared_prefixes)
        return self.owned(key), shared

    def admit(self, rec: Any, owned: bool, shared: bool, *, dead: bool = False) -> str:
        """``keep``, ``skip`` (another process emits it) or ``not_broadcast``."""
        if not dead and self.must_share is not None and self.must_share(rec):
            return "keep" if shared else "not_broadcast" if owned else "skip"
        return "keep" if owned else "skip"


MEMO_MAX = 100_000
"""Keys a per-key memo keeps (least recently used first out; keys longer than
``schemas.names.MEMO_KEY_LIMIT`` are never held)."""
