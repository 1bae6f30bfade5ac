"""The base class of every wire record."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec


class Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A frozen, tagged, versioned wire record.

    ``type`` (the tag) names the record kind; ``v`` is its major version.
    Minor versions only add optional fields, which older readers ignore.
    A record with an unknown major version is rejected at the boundary.
    """

    v: Literal[1] = 1


SUPPORTED_MAJOR = 1


class Sourced(Record, frozen=True, kw_only=True, dict=True):
    """A record that remembers where it was read (topic, partition, offset).

    The reader stamps it with :func:`stamp_source`; it is not part of the wire form
    (not encoded, not compared), but it survives pickling between workers, so a step
    that refuses the record later names the exact input in its dead letter. Inputs a
    later step may refuse are ``Sourced``: signed envelopes, our own trading records, and
    market events (the admission gate refuses names past its caps).

    ``input_pos`` is where the record came in a replay's input, counted from 0
    (:func:`stamp_position`); -1 where nothing numbered it (a live run). Keyed steps
    that merge streams order records of one event time by it.
    """

    input_pos: ClassVar[int] = -1

    def __reduce__(self) -> tuple[Any, ...]:
        d = self.__dict__
        pos = d.get("input_pos")
        return (_rebuild, (type(self), msgspec.structs.asdict(self), d.get("source"))
                + (() if pos is None else (pos,)))


def _rebuild(cls: type[Sourced], fields: dict[str, Any],
             source: tuple[str, int, int] | None, pos: int | None = None) -> Sourced:
    rec = cls(**fields)
    if source is not None:
        rec.__dict__["source"] = source
    if pos is not None:
        rec.__dict__["input_pos"] = pos
    return rec


def stamp_source(rec: Any, topic: str, partition: int, offset: int) -> None:
    """Remember on a just-read :class:`Sourced` record where it came from.

    >>> from riskguard.schemas.trading import Balance
    >>> b = Balance(id="b1", venue="okx", counterparty="okx", asset="USDT", total=1.0, ts=1)
    >>> stamp_source(b, "prod.riskguard.balances.v1", 3, 42)
    >>> source_of(b)
    ('prod.riskguard.balances.v1', 3, 42)
    """
    rec.__dict__["source"] = (topic, partition, offset)


def source_of(rec: Any) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` a record was read from, if its reader stamped it."""
    d = getattr(rec, "__dict__", None)
    return d.get("source") if d else None


def stamp_position(rec: Any, pos: int) -> None:
    """Number a just-read record with its place in the input (a :class:`Sourced`
    record's ``input_pos``; others have none and are left alone).

    >>> import pickle
    >>> from riskguard.schemas.trading import Balance
    >>> b = Balance(id="b1", venue="okx", counterparty="okx", asset="USDT", total=1.0, ts=1)
    >>> b.input_pos
    -1
    >>> stamp_position(b, 7)
    >>> b.input_pos, pickle.loads(pickle.dumps(b)).input_pos
    (7, 7)
    """
    d = getattr(rec, "__dict__", None)
    if d is not None:
        d["input_pos"] = pos
