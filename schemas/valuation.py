"""What exposure valuation (stage 1) hands the counterparty stage: parts and progress.

Inside one dataflow a :class:`Part` and a :class:`Progress` travel between keyed steps
as they are. Between a market process and the firm process (docs/scaling.md, "The market
tier") they cross the ``detections`` topic, packed in order in a :class:`Valuation` record.

>>> from riskguard.schemas import decode, encode
>>> p = Part("okx", "m0.s0", 1, 5, 10.0, 10.0, 0.0, 0.0, 0.0, {"BTC": 10.0}, {"BTC": 10.0},
...          ["BTC-PERP"], [10.0], (4).to_bytes(8, "little"), 4, [], {}, {}, ["f1"])
>>> v = Valuation(source="detect/w0", ts=5, parts=[p],
...               progress=[Progress(counterparty="okx", ts=5, source="detect/w0@m0.s0")])
>>> decode("detections", encode(v)) == v
True
>>> bad = (b'{"type":"valuation","source":"x","ts":5,"parts":[["okx","s0",1,5,1.0,1.0,0.0,0.0,0.0,'
...        b'{},{},["BTC-PERP"],[],"",0,[],{},{},[]]]}')  # a position without its notional
>>> decode("detections", bad).reason
'validation'
"""

from __future__ import annotations

from typing import Any

import msgspec
from riskguard.schemas.base import Record
from riskguard.schemas.signals import RiskAlert
from riskguard.schemas.types import Label, Nanos

MARK_TS_BYTES = 8
"""Each open position's mark time in :attr:`Part.mark_ts`: a little-endian int64."""
VALUATION_CHUNK_BYTES = 48 * 1024
"""A market process splits its valuation output into records of about this size."""
VALUATION_MAX_BYTES = 1024 * 1024
"""The firm process's size cap on the ``detections`` topic (one part may exceed a chunk)."""


class Part(msgspec.Struct, frozen=True, array_like=True):
    """One counterparty's complete partial exposure in one shard, stage 1 -> stage 2.

    Amounts are in the reporting currency. ``names`` / ``notionals`` and ``mark_ts``
    list its open positions (``mark_ts`` is ``NEVER_STALE`` for an unvalued one; it is
    packed little-endian int64s, so a part holds no per-position int objects);
    ``unvalued`` names positions and collateral assets whose mark or FX rate is
    missing: they are never summed as zero silently, they make the exposure
    ``stale``. ``oldest`` is the oldest mark among the valued positions.
    """

    counterparty: str
    shard: str
    seq: int
    ts: int
    gross: float
    net: float
    upnl: float
    orders: float
    collateral: float
    delta: dict[str, float]
    by_asset: dict[str, float]
    names: list[str]
    notionals: list[float]
    mark_ts: bytes  # packed little-endian int64s aligned with ``names``
    oldest: int
    unvalued: list[str]
    vols: dict[str, tuple[float, int]]
    vol_values: dict[str, float]
    evidence: list[str]
    recv_ts: int | None = None  # newest receive time of the batch that moved it (latency)

    def positions(self) -> dict[str, float]:
        """Notional per open position."""
        return dict(zip(self.names, self.notionals, strict=True))


class Progress(msgspec.Struct, frozen=True, omit_defaults=True):
    """Ticked mode: a tick passed down the exposure path, behind everything its stage
    sent before it on the same key (it relies on in-order delivery between steps, and on
    one Kafka partition per market process between the market and firm processes).

    ``source`` (``<worker>@<shard>``) reached ``ts`` at every stage before, for the
    stage-2 or limits key ``counterparty``. A consumer that takes its clock from the
    limits stage's ticks (the playbook) never runs ahead of a breach still on its way:
    in a backlog the exposure path's queues are the longest. ``of``: how many
    sources the receiving stage should expect. ``key_of``: on progress to a limits key,
    how many sources that one key hears (each source reaches every limits key), so its
    own clock (grace deadlines) holds until all of them have spoken.
    """

    counterparty: str
    ts: int
    source: str
    of: int = 0
    # on the PROGRESS_KEY copy: every counterparty the shard sends ``source`` to, so the
    # firm waits for one that just joined (its first part is still on its way)
    via: tuple[str, ...] = ()
    key_of: int = 0


class Valuation(Record, frozen=True, kw_only=True, tag="valuation"):
    """A market process's exposure valuation output, in order, for the firm process.

    ``source`` is the market process (``market/<i>``). The firm process applies
    ``alerts`` (stage-1 signals: missing marks and FX, reconciliation breaks, depegs),
    then ``parts``, then ``progress``: a progress item never overtakes the parts it
    follows. Written to the ``detections`` topic, one Kafka partition per market
    process; a record is at most about ``VALUATION_CHUNK_BYTES`` unless a single part
    is larger (the firm reads that topic with a 1 MiB cap).
    """

    source: Label
    ts: Nanos  # the newest event time in it (the firm process's input alignment reads it)
    alerts: list[RiskAlert] = []
    parts: list[Part] = []
    progress: list[Progress] = []

    def __post_init__(self) -> None:
        for p in self.parts:
            if not (len(p.names) == len(p.notionals)
                    and len(p.mark_ts) == MARK_TS_BYTES * len(p.names)):
                raise ValueError(f"part of {p.counterparty!r} in shard {p.shard!r}: names "
                                 f"({len(p.names)}), notionals ({len(p.notionals)}) and "
                                 f"mark_ts ({len(p.mark_ts)} bytes) must be aligned")


class PackedValuation(Record, frozen=True, kw_only=True, tag="valuation"):
    """:class:`Valuation`'s wire form around items already encoded (the encode side of
    :func:`encode_valuations`): the same tag and fields, in the same order."""

    source: str
    ts: int
    alerts: list[msgspec.Raw]
    parts: list[msgspec.Raw]
    progress: list[msgspec.Raw]


_json = msgspec.json.Encoder()
# what a record's envelope (tag, version, source, time, list brackets) may take of a chunk
_ENVELOPE_BYTES = 512


def encode_valuations(source: str, alerts: list[RiskAlert], parts: list[Part],
                      progress: list[Progress],
                      chunk_bytes: int = VALUATION_CHUNK_BYTES) -> list[bytes]:
    """Encoded :class:`Valuation` records from ``source`` holding ``alerts``, then
    ``parts``, then ``progress``, in order across the records, each of at most about
    ``chunk_bytes`` (an item larger than that goes alone). Each item is encoded once;
    a record is stamped with the newest ``ts`` among its items.

    >>> from riskguard.schemas import decode
    >>> prog = [Progress(counterparty=f"cp{k}", ts=k, source="detect/w0@m0.s0")
    ...         for k in range(40)]
    >>> records = encode_valuations("detect/w0", [], [], prog, chunk_bytes=2048)
    >>> vals = [decode("detections", r) for r in records]
    >>> [len(r) <= 2048 for r in records], [v.ts for v in vals]
    ([True, True], [25, 39])
    >>> [p for v in vals for p in v.progress] == prog
    True
    """
    budget = chunk_bytes - _ENVELOPE_BYTES
    out: list[bytes] = []
    lists: tuple[list[msgspec.Raw], ...] = ([], [], [])
    ts = size = 0
    groups: tuple[list[Any], ...] = (alerts, parts, progress)
    for kind, items in enumerate(groups):
        for x in items:
            raw = _json.encode(x)
            n = len(raw) + 1  # and its comma
            if size and size + n > budget:
                out.append(_pack(source, ts, lists))
                lists = ([], [], [])
                ts = size = 0
            lists[kind].append(msgspec.Raw(raw))
            ts = max(ts, x.ts)
            size += n
    if size:
        out.append(_pack(source, ts, lists))
    return out


def _pack(source: str, ts: int, lists: tuple[list[msgspec.Raw], ...]) -> bytes:
    return _json.encode(PackedValuation(source=source, ts=ts, alerts=lists[0],
                                        parts=lists[1], progress=lists[2]))


VALUATION_TYPES = (Valuation,)

__all__ = ["MARK_TS_BYTES", "VALUATION_CHUNK_BYTES", "VALUATION_MAX_BYTES", "VALUATION_TYPES",
           "Part", "Progress", "Valuation", "encode_valuations"]
