"""Replay historical files in event-time order: JSONL (wire contract), Binance public
data dumps and Tardis.dev CSVs (docs/formats.md; the readers are in
:mod:`riskguard.connectors.formats`), plain, gzipped or zipped.

Several files are merged by timestamp into one stream, as fast as possible
(``speed=None``) or at real time times ``speed``. The source snapshots the offset of
every file's next unread row, so a resumed run emits every record once. Rows that cannot
be parsed become :class:`~riskguard.schemas.DeadLetter` records naming the file and
line.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "t.csv").write_text("1,100.5,0.2,20.1,1700000000000,true,true\\n")
>>> src = ReplaySource([ReplayFile(d / "t.csv", format="binance_trades",
...                                venue="binance", instrument="BTCUSDT")])
>>> rec = next(iter(read_all(src)))
>>> (rec.price, rec.qty, rec.side.value, rec.ts)
(100.5, 0.2, 'sell', 1700000000000000000)
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from riskguard.connectors.formats import FORMATS, Reader, detect, open_reader, resolve
from riskguard.connectors.formats.core import first_line
from riskguard.connectors.formats.ohlcv import scan as scan_bars
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.codec import Codec, encode

from riskguard.errors import ConfigError, SnapshotError

__all__ = ["FORMATS", "ReplayFile", "ReplaySource", "read_all", "replay_input"]


@dataclass(frozen=True)
class ReplayFile:
    """One file to replay, and how to read it.

    ``format`` is one of :data:`FORMATS` (``auto``: from the name and header).
    ``venue``/``instrument`` label CSV rows that do not name them (JSONL and Tardis rows
    carry their own; a ``venue`` given here replaces a Tardis row's exchange); left at
    ``file``/``unknown`` they are taken from a Binance file's name. ``market`` (``spot``,
    ``um``, ``cm`` or ``auto``) and ``contract_size`` (USD per COIN-M contract; default
    100 for BTC, 10 for others) matter to Binance files only; ``measure`` (``price`` or
    ``volatility``) to OHLCV files whose rows do not say. ``interval_ns`` is an OHLCV
    file's bars' interval once known, ``time_indexed`` whether it is read in time order
    through an index of its rows (:meth:`planned`).
    """

    path: Path | str
    format: str = "auto"
    venue: str = "file"
    instrument: str = "unknown"
    market: str = "auto"
    contract_size: float | None = None
    measure: str = "price"
    interval_ns: int = 0
    time_indexed: bool = False

    def planned(self) -> ReplayFile:
        """How the file is read, planned once: an OHLCV file's interval, and whether it
        must be read through an index of its rows (rows not in time order)."""
        if self.interval_ns:
            return self
        fmt = (self.format if self.format != "auto"
               else detect(self.path, first_line(self.path)).format)
        if fmt != "ohlcv_csv":
            return self
        scan = scan_bars(self.path)  # one pass: the interval, and the order
        _fmt, source = resolve(self.path, self.format, venue=self.venue,
                               instrument=self.instrument, market=self.market,
                               contract_size=self.contract_size, measure=self.measure,
                               interval_ns=scan.interval_ns or 0)
        return replace(self, interval_ns=source.interval_ns, time_indexed=not scan.ordered)

    def resolved_format(self) -> str:
        """The format this file is read as (raises ConfigError if none fits)."""
        return resolve(self.path, self.format, venue=self.venue, instrument=self.instrument,
                       market=self.market, contract_size=self.contract_size,
                       measure=self.measure, interval_ns=self.interval_ns)[0]

    def require_rows(self) -> None:
        """A :class:`~riskguard.errors.ConfigError` naming the file unless it holds at
        least one row (a record or a refused row): an empty file, or one of blank lines,
        is a mistake a run must not report as "read 0"."""
        reader = self.open(0, None)
        try:
            if next(iter(reader.lines()), None) is None:
                raise ConfigError(f"data file {Path(self.path).name}", "a file holding rows",
                                  "no rows (an empty file)")
        finally:
            reader.close()

    def open(self, offset: int, codec: Codec | None) -> Reader:
        return open_reader(self.path, self.format, venue=self.venue,
                           instrument=self.instrument, market=self.market,
                           contract_size=self.contract_size, measure=self.measure,
                           interval_ns=self.interval_ns, time_indexed=self.time_indexed,
                           offset=offset, codec=codec)


MAX_OPEN_FILES = 128
"""Files a replay keeps open at once: a file waiting behind the others is closed and
opened again at its next row when its turn comes."""

MAX_LEAD_NS = 3600 * 1_000_000_000
"""How far a record may run ahead of its file's time (the latest time of the file's
records so far) when the next record goes back more than as far behind it: past that, the
record is a lone bad timestamp, an ``ahead`` dead letter. It would otherwise become the
stream's time, every later record of the file late and a backtest's clock a jump ahead.
A gap the next records continue from is data, whatever its length."""
LOOKAHEAD_ROWS = 16
"""Emissions read past a record far ahead to find the next one with a time."""


def _time_of(item: Any) -> int | None:
    """An emission's event time (a row of several records: its first record's); None
    for a dead letter or a record without one."""
    if item.__class__ is list:
        return next((x.ts for x in item if x.__class__ is not DeadLetter), None)
    if item.__class__ is DeadLetter:
        return None
    return getattr(item, "ts", None)


class LeadGate:
    """One file's emissions, a lone record far ahead of the file's time made a dead
    letter (:data:`MAX_LEAD_NS`). ``file_ts[idx]`` is the file's time, kept up to date
    here and resumed from a snapshot."""

    def __init__(self, reader: Reader, lead_ns: int, file_ts: list[int], idx: int) -> None:
        self._reader, self._lead, self._file_ts, self._idx = reader, lead_ns, file_ts, idx
        self._rows = iter(reader.lines())
        self._ahead: deque[tuple[int, int, Any]] = deque()  # read, not yet judged

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        ahead, file_ts, idx, lead = self._ahead, self._file_ts, self._idx, self._lead
        while True:
            emission = ahead.popleft() if ahead else next(self._rows, None)
            if emission is None:
                return
            ts = _time_of(emission[2])
            if ts is not None:
                known = file_ts[idx]
                if known < 0 or ts > known + lead:
                    nxt = self._next_time()
                    if nxt is not None and nxt < ts - lead:
                        yield self._refused(emission, ts, known, nxt)
                        continue
                if ts > known:
                    file_ts[idx] = ts
            yield emission

    def _next_time(self) -> int | None:
        """The time of the next emission that has one (read ahead, kept for later)."""
        for emission in self._ahead:
            ts = _time_of(emission[2])
            if ts is not None:
                return ts
        while len(self._ahead) < LOOKAHEAD_ROWS:
            read = next(self._rows, None)
            if read is None:
                return None
            self._ahead.append(read)
            ts = _time_of(read[2])
            if ts is not None:
                return ts
        return None

    def _refused(self, emission: tuple[int, int, Any], ts: int, known: int,
                 nxt: int) -> tuple[int, int, DeadLetter]:
        line_no, offset, item = emission
        items = item if item.__class__ is list else [item]
        raw = b"\n".join(encode(x) for x in items if x.__class__ is not DeadLetter)
        reader, lead = self._reader, self._lead
        reader.stats.dead_letters["ahead"] += 1
        since = f"the file's time {known} and " if known >= 0 else ""
        return line_no, offset, DeadLetter.of(
            topic=reader.topic, offset=offset, ts=0, reason="ahead", path="$.ts",
            expected=(f"ts <= {known + lead}" if known >= 0 else f"ts <= {nxt + lead}")
            + f" (at most {lead} ns ahead of the records around it)", found=str(ts),
            step=reader.step, raw=raw,
            detail=f"{reader.path.name} line {line_no}: a lone time more than {lead} ns "
                   f"ahead of {since}the next record's {nxt}")


class _ReplayPartition(StatefulSourcePartition[Any, list[int]]):
    def __init__(
        self, files: list[ReplayFile], offsets: list[int], codec: Codec | None,
        batch_size: int, speed: float | None, clock: Clock, span_ns: int = 0,
        max_open: int = MAX_OPEN_FILES, lead_ns: int = MAX_LEAD_NS,
        file_ts: list[int] | None = None,
    ) -> None:
        self._files = files
        self._lead = lead_ns
        # per file, the latest time of its records so far (-1: none yet)
        self._file_ts = list(file_ts) if file_ts is not None else [-1] * len(files)
        self._codec = codec
        self._max_open = max(1, max_open)
        # an open file's reader and its emissions; None while the file is closed
        self._readers: list[Reader | None] = [None] * len(files)
        self._lines: list[Iterator[tuple[int, int, Any]] | None] = [None] * len(files)
        self._n_open = 0
        self._last_ts = [0] * len(files)  # a file's dead letters sort at its last record's ts
        self._offsets = list(offsets)
        # per file with rows left, its next emission ``(ts, file, offset, emission)``;
        # the emission is None while the file is closed (read again from ``offset``)
        self._heap: list[tuple[int, int, int, Any]] = []
        for i in range(len(files)):
            head = self._next(i)
            if head is not None:
                heapq.heappush(self._heap, head)
        self._batch_size = batch_size
        self._span = span_ns
        self._speed = speed
        self._clock = clock
        self._t0_wall: int | None = None
        self._t0_event: int | None = None
        self._awake: datetime | None = None

    def _open(self, idx: int) -> Iterator[tuple[int, int, Any]]:
        """File ``idx``'s emissions from its offset, opened now; if that makes more
        open files than the cap, the one whose next emission is latest is closed."""
        if self._n_open >= self._max_open:
            heap = self._heap
            at = max((i for i, e in enumerate(heap) if e[3] is not None),
                     key=lambda i: heap[i][:2], default=None)
            if at is not None:  # its offset re-reads this emission
                heap[at] = (*heap[at][:3], None)
                self._shut(heap[at][1])
        reader = self._readers[idx] = self._files[idx].open(self._offsets[idx], self._codec)
        self._n_open += 1
        lines = self._lines[idx] = iter(
            LeadGate(reader, self._lead, self._file_ts, idx) if self._lead else reader.lines())
        return lines

    def _shut(self, idx: int) -> None:
        reader = self._readers[idx]
        if reader is not None:
            reader.close()
            self._n_open -= 1
        self._readers[idx] = self._lines[idx] = None

    def _next(self, idx: int) -> tuple[int, int, int, Any] | None:
        """``(ts, file index, offset, emission)`` of file ``idx``'s next emission; at the
        file's end, None (its offset is then its end, and the file is closed)."""
        lines = self._lines[idx]
        if lines is None:
            lines = self._open(idx)
        for _line, offset, item in lines:
            cls = item.__class__
            if cls is DeadLetter:
                ts = self._last_ts[idx]
            elif cls is list:  # a row of several records (all of one ts) or dead letters
                ts = next((x.ts for x in item if x.__class__ is not DeadLetter),
                          self._last_ts[idx])
                self._last_ts[idx] = ts
            else:
                ts = self._last_ts[idx] = getattr(item, "ts", None) or 0
            return ts, idx, offset, item
        reader = self._readers[idx]
        if reader is not None:
            self._offsets[idx] = reader.position
        self._shut(idx)
        return None

    def next_batch(self) -> list[Any]:
        heap = self._heap
        if not heap:
            raise StopIteration
        if len(self._readers) == 1 and self._speed is None and not self._span:
            return self._one_file_batch()
        out: list[Any] = []
        due = None
        if self._speed is not None:
            now = self._clock()
            if self._t0_wall is None:
                self._t0_wall, self._t0_event = now, heap[0][0]
            due = self._t0_event + int((now - self._t0_wall) * self._speed)  # type: ignore[operator]
        span = self._span
        first = heap[0][0] // span if span else 0
        offsets, size = self._offsets, self._batch_size
        while heap and len(out) < size:
            ts, idx, _start, item = heap[0]
            if item is None:  # a file closed while it waited: open it, read that row again
                head = self._next(idx)
                if head is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, head)
                continue
            if span and out and ts // span != first:
                break  # a batch holds one span of event time (see ReplaySource)
            if due is not None and ts > due:
                wait_ns = int((ts - due) / self._speed)  # type: ignore[operator]
                self._awake = datetime.now(UTC) + timedelta(microseconds=wait_ns / 1000)
                break
            nxt = self._next(idx)  # its offset is the file's next unread row (or _next's end)
            if nxt is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, nxt)
                offsets[idx] = nxt[2]
            if item.__class__ is list:
                out.extend(item)
            else:
                out.append(item)
        else:
            self._awake = None
        return out

    def _one_file_batch(self) -> list[Any]:
        """:meth:`next_batch` of a single file read as fast as possible: nothing to merge,
        so no heap; the head emission is still read ahead (its offset is the snapshot)."""
        heap, size = self._heap, self._batch_size
        item = heap[0][3]
        out: list[Any] = []
        lines, reader = self._lines[0], self._readers[0]
        assert lines is not None and reader is not None  # one file: it stays open
        for _line, offset, nxt in lines:
            if item.__class__ is list:
                out.extend(item)
            else:
                out.append(item)
            item = nxt
            if len(out) >= size:
                heap[0] = (0, 0, offset, item)  # no merge: ts does not matter
                self._offsets[0] = offset
                return out
        if item.__class__ is list:
            out.extend(item)
        else:
            out.append(item)
        heap.clear()
        self._offsets[0] = reader.position
        self._shut(0)
        self._awake = None
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def bytes_read(self) -> int:
        """How far into its files the replay has read: the sum of every file's next
        offset (bytes)."""
        return sum(self._offsets)

    def snapshot(self) -> list[int]:
        """Every file's next offset, then every file's time (:class:`LeadGate`)."""
        return [*self._offsets, *self._file_ts]

    def close(self) -> None:
        for idx in range(len(self._readers)):
            self._shut(idx)


class ReplaySource(FixedPartitionedSource[Any, list[int]]):
    """Merge ``files`` by event time into one stream of typed records.

    ``speed=None`` replays as fast as possible; ``speed=10.0`` plays ten
    times faster than real time (``clock`` paces it). With ``batch_span_ns``, a
    batch never holds records of two spans of event time (``ts // span``): a
    backtest's event clock, which moves once per batch step, is then never more
    than one span ahead of the record being processed, whatever ``batch_size``.
    ``max_lead_ns``: a lone record further ahead of its file's time than this (and than
    the next record) is an ``ahead`` dead letter (:data:`MAX_LEAD_NS`; 0: none is).
    """

    def __init__(
        self,
        files: list[ReplayFile],
        *,
        codec: Codec | None = None,
        batch_size: int = 1000,
        speed: float | None = None,
        clock: Clock = system_clock,
        batch_span_ns: int = 0,
        max_lead_ns: int = MAX_LEAD_NS,
    ) -> None:
        if not files:
            raise ConfigError("replay.files", "at least one file", [])
        for f in files:
            if not Path(f.path).is_file():
                raise ConfigError("replay.files", "an existing file", str(f.path))
        self.files = [f.planned() for f in files]
        formats = [f.resolved_format() for f in self.files]
        if speed is not None and speed <= 0:
            raise ConfigError("replay.speed", "a positive factor or none", speed)
        if max_lead_ns < 0:
            raise ConfigError("replay.max_lead_ns", "ns >= 0 (0: no limit)", max_lead_ns)
        self.max_lead_ns = max_lead_ns
        # only JSONL needs a codec, slow to make beside a CSV's reading: CSVs alone skip it
        self.codec = codec or (Codec(clock=lambda: 0) if "jsonl" in formats else None)
        self.batch_size = batch_size
        self.speed = speed
        self.clock = clock
        self.batch_span_ns = batch_span_ns

    def list_parts(self) -> list[str]:
        return ["replay"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[int] | None
    ) -> _ReplayPartition:
        n = len(self.files)
        if resume_state is None:  # a fresh start: every file from its beginning
            offsets, file_ts = [0] * n, None
        elif len(resume_state) == 2 * n:
            offsets, file_ts = resume_state[:n], resume_state[n:]
        else:
            raise SnapshotError("replay", f"{2 * n} numbers for these {n} files (each "
                                "file's offset, then each file's time; did the files "
                                "change? re-initialise recovery)",
                                f"{len(resume_state)} numbers")
        return _ReplayPartition(
            self.files, offsets, self.codec, self.batch_size, self.speed, self.clock,
            self.batch_span_ns, max_open=MAX_OPEN_FILES, lead_ns=self.max_lead_ns,
            file_ts=file_ts,
        )


def read_all(source: ReplaySource, resume_state: list[int] | None = None) -> Iterator[Any]:
    """Iterate a replay source outside bytewax (tools, tests), from its start or from a
    partition's snapshot."""
    part = source.build_part("read_all", "replay", resume_state)
    try:
        while True:
            try:
                yield from part.next_batch()
            except StopIteration:
                return
    finally:
        part.close()


@operator
def replay_input(
    step_id: str, flow: Dataflow, *, files: list[ReplayFile], **kwargs: Any
) -> SplitOut[Any]:
    """Replay files into the flow; ``errs`` carries rows that did not parse."""
    items = op.input("replay", flow, ReplaySource(files, **kwargs))
    return split_dead_letters("split", items)


