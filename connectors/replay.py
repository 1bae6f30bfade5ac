"""Replay historical files in event-time order: JSONL (wire contract) and
Binance-style CSVs (klines as bars, trades, funding).

Several files are merged by timestamp into one stream. Pacing is as fast as
possible (``speed=None``) or real time times ``speed``. The source snapshots
the byte offset of every file, so a resumed run continues exactly where it
stopped: every record comes out once.

Rows that cannot be parsed become :class:`~riskguard.schemas.DeadLetter`
records whose ``offset`` is the row's byte offset in its file.

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
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock, system_clock
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.base import stamp_source
from riskguard.schemas.codec import Codec
from riskguard.schemas.commands import SOURCED_TYPES
from riskguard.schemas.market import Bar, FundingRate, Side, Trade

from riskguard.errors import ConfigError

FORMATS = ("jsonl", "binance_klines", "binance_trades", "binance_funding", "auto")


def _to_ns(value: str) -> int:
    """Epoch seconds, ms, µs or ns (by magnitude) to ns."""
    t = int(float(value))
    if t < 10**11:
        return t * 1_000_000_000
    if t < 10**14:
        return t * 1_000_000
    if t < 10**17:
        return t * 1_000
    return t


@dataclass(frozen=True)
class ReplayFile:
    """One file to replay. ``venue``/``instrument`` label CSV rows (JSONL carries its own)."""

    path: Path | str
    format: str = "auto"
    venue: str = "file"
    instrument: str = "unknown"

    def resolved_format(self) -> str:
        if self.format not in FORMATS:
            raise ConfigError("replay.format", f"one of {', '.join(FORMATS)}", self.format)
        if self.format != "auto":
            return self.format
        name = Path(self.path).name.lower()
        if name.endswith((".jsonl", ".ndjson", ".json")):
            return "jsonl"
        for hint, fmt in (("kline", "binance_klines"), ("funding", "binance_funding"),
                          ("trade", "binance_trades")):
            if hint in name:
                return fmt
        raise ConfigError(
            f"replay.files[{self.path}].format", "a format, or a name that implies one", "auto"
        )


class _Reader:
    """Reads one file row by row, remembering the byte offset of each row."""

    def __init__(self, spec: ReplayFile, index: int, offset: int, codec: Codec) -> None:
        self.spec = spec
        self.index = index
        self.fmt = spec.resolved_format()
        self.name = f"file:{Path(spec.path).name}"
        self.fh: BinaryIO = Path(spec.path).open("rb")  # noqa: SIM115  (closed in close())
        self.fh.seek(offset)
        self.codec = codec
        self.row_start = offset

    def next_row(self) -> tuple[int, int, Any] | None:
        """``(ts, row_offset, record_or_dead_letter)``, or None at the end."""
        while True:
            start = self.fh.tell()
            line = self.fh.readline()
            if not line:
                return None
            stripped = line.strip()
            if not stripped or (self.fmt != "jsonl" and not stripped[:1].isdigit()):
                continue  # blank line or CSV header
            rec = self._parse(stripped, start)
            ts = getattr(rec, "ts", 0)
            return ts, start, rec

    def _parse(self, line: bytes, offset: int) -> Any:
        if self.fmt == "jsonl":
            rec = self.codec.decode(self.name, line, offset=offset)
            if type(rec) in SOURCED_TYPES:  # a later step may refuse it: name the row
                stamp_source(rec, self.name, 0, offset)
            return rec
        try:
            cols = line.decode("utf-8").split(",")
            return self._parse_csv(cols, offset)
        except Exception as err:  # anything a row can make a parser raise is a dead letter
            return DeadLetter.of(
                topic=self.name, offset=offset, ts=0, reason="validation", path="$",
                expected=f"a {self.fmt} CSV row", found=f"{type(err).__name__}: {err}"[:200],
                step="replay", raw=bytes(line[:4096]),
            )

    def _parse_csv(self, cols: list[str], offset: int) -> Any:
        s = self.spec
        rid = f"{Path(s.path).name}@{offset}"
        if self.fmt == "binance_trades":
            # id, price, qty, quote_qty, time, is_buyer_maker[, is_best_match]
            maker = cols[5].strip().lower() == "true"
            return Trade(
                id=rid, venue=s.venue, instrument=s.instrument, ts=_to_ns(cols[4]),
                price=_positive(cols[1]), qty=_positive(cols[2]),
                side=Side.SELL if maker else Side.BUY,
            )
        if self.fmt == "binance_klines":
            # open_time, o, h, l, c, volume, close_time, quote_vol, n, taker_buy_vol, ...
            # (ms, or µs in newer spot files); close_time is the bar's last ms or µs
            start, last = _to_ns(cols[0]), _to_ns(cols[6])
            unit = 1_000 if int(float(cols[0])) >= 10**14 else 1_000_000
            end = last + unit
            if end <= start:
                msg = f"close_time {cols[6]} is not after open_time {cols[0]}"
                raise ValueError(msg)
            volume = _finite(cols[5])
            quote_volume = _finite(cols[7]) if len(cols) > 7 else None
            trades = int(cols[8]) if len(cols) > 8 else None
            return Bar(
                id=rid, venue=s.venue, instrument=s.instrument, ts=end, start=start,
                interval_ns=end - start, open=_positive(cols[1]), high=_positive(cols[2]),
                low=_positive(cols[3]), close=_positive(cols[4]), volume=volume,
                quote_volume=quote_volume, trades=trades,
                taker_buy_volume=_finite(cols[9]) if len(cols) > 9 else None,
                # mark, index and premium klines carry prices only: no volume at all
                price_only=volume == 0.0 and not quote_volume,
            )
        # binance_funding: calc_time, funding_interval_hours, last_funding_rate
        return FundingRate(
            id=rid, venue=s.venue, instrument=s.instrument, ts=_to_ns(cols[0]),
            rate=_finite(cols[2]),
        )

    def close(self) -> None:
        self.fh.close()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        msg = f"non-finite number {text!r}"
        raise ValueError(msg)
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        msg = f"expected a positive number; got {text!r}"
        raise ValueError(msg)
    return value


class _ReplayPartition(StatefulSourcePartition[Any, list[int]]):
    def __init__(
        self, files: list[ReplayFile], offsets: list[int], codec: Codec,
        batch_size: int, speed: float | None, clock: Clock, span_ns: int = 0,
    ) -> None:
        self._readers = [
            _Reader(f, i, off, codec)
            for i, (f, off) in enumerate(zip(files, offsets, strict=True))
        ]
        self._offsets = list(offsets)
        self._heap: list[tuple[int, int, int, Any]] = []
        for r in self._readers:
            self._push(r)
        self._batch_size = batch_size
        self._span = span_ns
        self._speed = speed
        self._clock = clock
        self._t0_wall: int | None = None
        self._t0_event: int | None = None
        self._awake: datetime | None = None

    def _push(self, reader: _Reader) -> None:
        row = reader.next_row()
        if row is not None:
            ts, start, rec = row
            heapq.heappush(self._heap, (ts, reader.index, start, rec))

    def next_batch(self) -> list[Any]:
        if not self._heap:
            raise StopIteration
        out: list[Any] = []
        due = None
        if self._speed is not None:
            now = self._clock()
            if self._t0_wall is None:
                self._t0_wall, self._t0_event = now, self._heap[0][0]
            due = self._t0_event + int((now - self._t0_wall) * self._speed)  # type: ignore[operator]
        span = self._span
        first = self._heap[0][0] // span if span else 0
        while self._heap and len(out) < self._batch_size:
            ts, idx, _start, rec = self._heap[0]
            if span and out and ts // span != first:
                break  # a batch holds one span of event time (see ReplaySource)
            if due is not None and ts > due:
                wait_ns = int((ts - due) / self._speed)  # type: ignore[operator]
                self._awake = datetime.now(UTC) + timedelta(microseconds=wait_ns / 1000)
                break
            heapq.heappop(self._heap)
            out.append(rec)
            reader = self._readers[idx]
            self._push(reader)
            # The next unread row of this file starts at its head's offset, or EOF.
            self._offsets[idx] = self._head_offset(idx)
        else:
            self._awake = None
        return out

    def _head_offset(self, idx: int) -> int:
        for _ts, i, start, _rec in self._heap:
            if i == idx:
                return start
        return self._readers[idx].fh.tell()

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> list[int]:
        return list(self._offsets)

    def close(self) -> None:
        for r in self._readers:
            r.close()


class ReplaySource(FixedPartitionedSource[Any, list[int]]):
    """Merge ``files`` by event time into one stream of typed records.

    ``speed=None`` replays as fast as possible; ``speed=10.0`` plays ten
    times faster than real time (``clock`` paces it). With ``batch_span_ns``, a
    batch never holds records of two spans of event time (``ts // span``): a
    backtest's event clock, which moves once per batch step, is then never more
    than one span ahead of the record being processed, whatever ``batch_size``.
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
    ) -> None:
        if not files:
            raise ConfigError("replay.files", "at least one file", [])
        for f in files:
            if not Path(f.path).is_file():
                raise ConfigError("replay.files", "an existing file", str(f.path))
            f.resolved_format()
        if speed is not None and speed <= 0:
            raise ConfigError("replay.speed", "a positive factor or none", speed)
        self.files = list(files)
        self.codec = codec or Codec(clock=lambda: 0)
        self.batch_size = batch_size
        self.speed = speed
        self.clock = clock
        self.batch_span_ns = batch_span_ns

    def list_parts(self) -> list[str]:
        return ["replay"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[int] | None
    ) -> _ReplayPartition:
        offsets = resume_state if resume_state is not None else [0] * len(self.files)
        return _ReplayPartition(
            self.files, offsets, self.codec, self.batch_size, self.speed, self.clock,
            self.batch_span_ns,
        )


def read_all(source: ReplaySource) -> Iterator[Any]:
    """Iterate a replay source outside bytewax (tools, tests)."""
    part = source.build_part("read_all", "replay", None)
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


