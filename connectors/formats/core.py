"""Reading historical files row by row: plain, gzip or zip, always as a stream
(docs/formats.md).

A :class:`FileReader` hands every line of one file to the format's :class:`RowParser`,
whose *emission* is a record, a list of records, or None while it gathers rows (a
Binance ``bookDepth`` snapshot spans several). Whatever a parser raises for a row
becomes a :class:`~riskguard.schemas.DeadLetter` naming the file, the line and the
reason: a bad row never stops a file, and never vanishes. Offsets are byte offsets in
the *decompressed* stream: a resumed replay re-reads a compressed file from its start
and skips to the offset, counting lines so line numbers stay exact.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "p.csv").write_bytes(b"a,b\\n1,2\\nx\\n")
>>> from riskguard.connectors.formats.cells import split_row
>>> class Sum(RowParser):
...     def row(self, line, line_no, offset):
...         a, b = split_row(line, 2)
...         return int(a) + int(b)
>>> reader = FileReader(d / "p.csv", lambda header, source: Sum(), header=True)
>>> [(line, item if isinstance(item, int) else item.reason) for line, _, item in reader.lines()]
[(2, 3), (3, 'malformed')]
>>> reader.close()
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import numpy as np
from riskguard.connectors.formats.cells import RowError, check_plausible
from riskguard.schemas.audit import DeadLetter
from riskguard.schemas.types import NAME_PATTERN

from riskguard.errors import ConfigError

CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20
"""A row longer than this is a ``line_too_long`` dead letter, skipped without being held
in memory."""
MAX_DECOMPRESSED_BYTES = 64 << 30
"""A compressed file that decompresses to more than this ends there with one
``too_large`` dead letter (a zip bomb fills neither memory nor disk)."""
MAX_TEMP_BYTES = 8 << 30
"""The most temporary disk a compressed file read out of order may take (its
decompressed copy); more, or more than the temporary directory has free, is refused."""
MAX_REFUSED_IN_GROUP = 64
"""Refused rows a grouped format's open group may meet before it is refused whole: they
wait for the group (its start is the resume point), so their count is bounded."""
_NAME = re.compile(NAME_PATTERN)
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Source:
    """What a parser knows about its file: names for its records and unit settings.

    ``market`` is ``spot``, ``um`` (USDT-M futures) or ``cm`` (COIN-M futures);
    ``contract_size`` is a COIN-M contract's value in USD. ``interval_ns`` is the
    bars' interval of a file whose rows give only their start (0: none), and
    ``measure`` what its bars measure (``price`` or ``volatility``). ``time_unit`` is the
    unit (``ms`` or ``us``) of a Binance file's epoch times, as its name states it.
    """

    name: str
    venue: str
    instrument: str
    market: str = "spot"
    contract_size: float = 100.0
    venue_given: bool = False
    interval_ns: int = 0
    measure: str = "price"
    time_unit: str = "ms"

    @property
    def stem(self) -> str:
        """The file name without ``.csv``, ``.gz``, ``.zip``: the prefix of record ids."""
        stem = self.name
        for ext in (".gz", ".zip", ".csv", ".jsonl"):
            stem = stem.removesuffix(ext)
        return stem[:100]


class RowFailure:
    """A row a grouped parser refuses only when its group closes (the reader makes it a
    dead letter with the row's own line and offset)."""

    __slots__ = ("error", "line", "line_no", "offset")

    def __init__(self, line: bytes, line_no: int, offset: int, error: RowError) -> None:
        self.line, self.line_no, self.offset, self.error = line, line_no, offset, error


def _wait(parser: RowParser, deferred: list[Any], dead: DeadLetter) -> list[Any] | None:
    """A refused row inside a group still gathering waits for it in ``deferred`` (the
    group's start stays the resume point); the :data:`MAX_REFUSED_IN_GROUP`-th refuses
    the group whole."""
    deferred.append(dead)
    if len(deferred) < MAX_REFUSED_IN_GROUP:
        return None
    return parser.abandon(f"{len(deferred)} refused rows among its own")


class RowParser:
    """Turns lines of one file into emissions; one instance per file read.

    A ``grouped`` parser gathers several rows into one emission: :meth:`pending` says
    where the rows it holds begin, which is where a resumed read must start again.
    """

    grouped = False

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        """The emission of one line (a record, a list of them, or None)."""
        raise NotImplementedError

    def pending(self) -> int | None:
        """The offset where rows gathered but not emitted yet begin (grouped formats)."""
        return None

    def end(self) -> Any:
        """The last emission at the end of the file (grouped formats)."""
        return None

    def abandon(self, why: str) -> list[RowFailure]:
        """Refuse the group gathering now, each of its rows (grouped formats)."""
        return []


ParserFactory = Callable[[list[str] | None, Source], RowParser]
"""Makes a file's parser from its header cells (None: no header) and its :class:`Source`;
raises :class:`RowError` if the header lacks a needed column."""


def factory(cls: type, **settings: Any) -> ParserFactory:
    """A :data:`ParserFactory` making ``cls(header, source, **settings)``."""
    def make(header: list[str] | None, source: Source) -> RowParser:
        return cls(header, source, **settings)
    make.__name__ = cls.__name__
    return make


@dataclass
class FileStats:
    """Rows read, records made and dead letters (by reason) of one file."""

    rows: int = 0
    records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)


class _ZipMember(io.RawIOBase):
    """A zip member opened for reading that also closes its archive."""

    def __init__(self, archive: zipfile.ZipFile, member: IO[bytes]) -> None:
        self._archive, self._member = archive, member

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._member.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def read1(self, size: int = -1) -> bytes:
        return self._member.read1(size)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._member.close()
        self._archive.close()
        super().close()


def open_stream(path: Path | str) -> BinaryIO:
    """``path`` as a binary stream of its (decompressed) bytes: gzip and zip are told by
    their magic bytes, not their names. A zip must hold one file (a ``.csv`` among others
    is taken when there is exactly one)."""
    p = Path(path)
    fh = p.open("rb")
    magic = fh.read(4)
    fh.seek(0)
    for suffix, kind, is_it in ((".zip", "zip archive", magic == _ZIP_MAGIC),
                                (".gz", "gzip stream", magic[:2] == _GZIP_MAGIC)):
        if p.name.lower().endswith(suffix) and not is_it:
            fh.close()
            raise ConfigError(f"replay file {p.name}", f"a {kind} (the name ends {suffix})",
                              "an empty file" if not magic else "an empty zip archive"
                              if magic == b"PK\x05\x06" else f"bytes {magic!r}")
    if magic[:2] == _GZIP_MAGIC:
        fh.close()  # opened by path, the gzip stream closes its own file
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if magic == _ZIP_MAGIC:
        fh.close()
        try:
            archive = zipfile.ZipFile(p)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
            raise ConfigError(f"replay file {p.name}", "a readable zip archive",
                              f"{type(err).__name__}: {err}") from err
        files = [n for n in archive.namelist() if not n.endswith("/")]
        csvs = [n for n in files if n.lower().endswith(".csv")]
        pick = files if len(files) == 1 else csvs
        if len(pick) != 1:
            archive.close()
            raise ConfigError(f"replay file {p.name}", "a zip holding one CSV file", files)
        try:
            member = archive.open(pick[0])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError) as err:  # RuntimeError: an encrypted member
            archive.close()
            raise ConfigError(f"replay file {p.name}", "a readable zip member",
                              f"{type(err).__name__}: {err}") from err
        return cast(BinaryIO, _ZipMember(archive, member))
    return fh


def lines_of(fh: BinaryIO, max_line: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """``(line, size, length)`` of each line of ``fh``: the line with its newline, cut to
    its first ``max_line`` bytes when longer (the rest is read and dropped, never held);
    its size without the newline; its whole length in the stream.

    >>> list(lines_of(io.BytesIO(b"ab\\n" + b"x" * 10 + b"\\nc"), max_line=4))
    [(b'ab\\n', 2, 3), (b'xxxx', 10, 11), (b'c', 1, 1)]
    """
    limit = MAX_LINE_BYTES if max_line is None else max_line
    while raw := fh.readline(limit + 1):
        n = len(raw)
        if n > limit and raw[-1:] != b"\n":
            raw, more = raw[:limit], b""
            while (more := fh.readline(CHUNK)) and more[-1:] != b"\n":
                n += len(more)
            n += len(more)
            yield raw, n - (more[-1:] == b"\n"), n
        else:
            yield raw, n - (raw[-1:] == b"\n"), n


def is_compressed(path: Path | str) -> bool:
    """Whether ``path`` is gzip or zip (by its magic bytes)."""
    with Path(path).open("rb") as fh:
        magic = fh.read(4)
    return magic[:2] == _GZIP_MAGIC or magic == _ZIP_MAGIC


def first_line(path: Path | str, limit: int = 65536) -> bytes:
    """The first line of ``path`` (decompressed) that is neither blank nor a title
    (:func:`is_title`), without its newline; b"" if none."""
    with open_stream(path) as fh:
        try:
            head = fh.read(limit)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError):
            return b""  # the reader reports the stream itself
    for line in head.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        if not is_preamble(line):
            return line.rstrip(b"\r")
    return b""


def is_title(line: bytes) -> bool:
    """Whether a line above a CSV header is a title, no part of the table: one cell that
    is no JSON, such as the source's address some exports put first
    (``https://www.CryptoDataDownload.com``).

    >>> is_title(b"https://www.CryptoDataDownload.com"), is_title(b"unix,open,high")
    (True, False)
    """
    text = line.strip().removeprefix(b"\xef\xbb\xbf")
    return bool(text) and b"," not in text and text[:1] not in (b"{", b"[")


def is_preamble(line: bytes) -> bool:
    """Whether a line before a CSV header is passed over: blank, or a title.

    >>> is_preamble(b"   "), is_preamble(b"https://x.example"), is_preamble(b"a,b")
    (True, True, False)
    """
    return not line.strip() or is_title(line)


def is_header(line: bytes) -> bool:
    """A CSV header starts with a letter; data rows start with a digit or a sign."""
    text = line.lstrip().removeprefix(b"\xef\xbb\xbf")
    return bool(text[:1].isalpha())


def header_cells(line: bytes) -> list[str]:
    """A header line's column names, stripped and lower-cased."""
    text = line.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    return [c.strip().lower() for c in text.rstrip("\r").split(",")]


def is_other_header(line: bytes, first: list[str]) -> bool:
    """Whether a line is a header that is not the file's ``first``: shaped like one, with
    at least half of its column names, but not the same.

    >>> is_other_header(b"ts,close,open", ["ts", "open", "close"])
    True
    """
    if not is_header(line):
        return False
    cells = header_cells(line.rstrip(b"\r\n"))
    return cells != first and 2 * len(set(cells) & set(first)) >= len(first)


class FileReader:
    """Reads one file from byte ``offset`` (of its decompressed stream) to its end.

    ``header``: True if the file has a header line, False if not, None to tell from its
    first line (:func:`is_header`). ``on_dead_letter(line_no, message)`` hears of every
    row refused, in order. A row longer than ``max_line`` bytes is a ``line_too_long``
    dead letter; a compressed file decompressing to more than ``max_bytes`` ends there
    with a ``too_large`` one.
    """

    def __init__(self, path: Path | str, factory: ParserFactory, *,
                 source: Source | None = None, header: bool | None = None,
                 offset: int = 0, step: str = "replay",
                 on_dead_letter: Callable[[int, str], Any] | None = None,
                 max_line: int | None = None, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_line = MAX_LINE_BYTES if max_line is None else max_line
        self.max_bytes = MAX_DECOMPRESSED_BYTES if max_bytes is None else max_bytes
        self.on_dead_letter = on_dead_letter
        name = self.path.name
        self.source = source or Source(name=name, venue="file", instrument="unknown")
        self.topic = f"file:{name}" if _NAME.search(f"file:{name}") else "file"
        self.step = step
        self.stats = FileStats()
        self.position = 0  # bytes of the decompressed stream consumed so far
        self._factory = factory
        self._header = header
        self._start = offset
        self._fh = open_stream(self.path)

    def close(self) -> None:
        self._fh.close()

    def _count(self, dead: DeadLetter, line_no: int) -> None:
        """Count a dead letter a parser returned, as :meth:`dead_letter` counts its own."""
        self.stats.dead_letters[dead.reason] += 1
        if self.on_dead_letter is not None:
            self.on_dead_letter(line_no, f"{dead.reason} at {dead.path}: expected "
                                         f"{dead.expected}, found {dead.found}"[:300])

    def dead_letter(self, line: bytes, line_no: int, offset: int, err: Exception) -> DeadLetter:
        """The dead letter of a line a parser refused (``err``)."""
        if isinstance(err, RowError):
            path, expected, found, reason = err.path, err.expected, err.found, err.reason
            message = str(err)
        else:  # anything else a parser raised: still the row's fault, never a crash
            path, expected, found, reason = "$", "a valid row", "", "validation"
            message = f"{type(err).__name__}: {err}"[:300]
        self.stats.dead_letters[reason] += 1
        if self.on_dead_letter is not None:
            self.on_dead_letter(line_no, message)
        return DeadLetter.of(
            topic=self.topic, offset=offset, ts=0, reason=reason, path=path,
            expected=expected, found=found[:200], step=self.step,
            detail=f"{self.path.name} line {line_no}: {message}", raw=line[:4096],
        )

    def lines(self) -> Iterator[tuple[int, int, Any]]:
        """``(line_no, offset, emission)`` of every emission from ``offset`` on."""
        fh = self._fh
        # a compressed stream is read a decompression step at a time (read1), so a
        # corrupt tail loses only itself
        read = fh.read if isinstance(fh, io.BufferedReader) else getattr(fh, "read1", fh.read)
        compressed = not isinstance(fh, io.BufferedReader)
        buf = b""
        pos = 0  # offset in the stream of the next line
        line_no = 0
        parser: RowParser | None = None
        deferred: list[Any] = []  # dead letters met inside a group still gathering
        inflated = 0  # decompressed bytes read so far
        skipping = -1  # bytes of an over-long line seen so far (-1: none being skipped)
        while not self._refused:
            chunk, broke = self._read(read, line_no, pos, buf)
            if broke is not None:  # what was read stands, the rest is one dead letter
                yield line_no + 1, pos, broke
                buf = b""
            inflated += len(chunk)
            if compressed and inflated > self.max_bytes:
                yield line_no + 1, pos, self._too_large(line_no + 1, pos)
                break
            if skipping >= 0:  # an over-long line: pass over it up to its newline
                if not chunk:
                    break  # the file ends inside it (reported below)
                chunk, skipping, line_no, at, dead = self._skip_long(
                    chunk, buf, skipping, line_no, pos)
                if dead is not None:
                    yield line_no, pos, dead
                if skipping < 0:  # it ended
                    buf = b""
                pos = at
                if not chunk:
                    continue
            if not chunk and not buf:
                break
            lines, buf, pos, line_no = self._split(chunk, buf, pos, line_no, parser is not None)
            if not lines and chunk:  # wholly before a resume's start: counted only
                buf, skipping = self._cut_long(buf, skipping)
                continue
            if parser is None or pos < self._start:  # the header, or a resume's skip
                i, pos, line_no, parser, early = self._prologue(lines, pos, line_no, parser)
                yield from early
                lines = lines[i:]
            if parser is not None and not self._refused:
                pos, line_no = yield from self._rows(lines, pos, line_no, parser, deferred)
            buf, skipping = self._cut_long(buf, skipping)
        yield from self._finish(parser, deferred, buf, skipping, line_no, pos)

    # a hot loop, once per row of a data file (docs/performance.md)
    def _rows(self, lines: list[bytes], pos: int, line_no: int, parser: RowParser,
              deferred: list[Any]) -> Generator[tuple[int, int, Any], None, tuple[int, int]]:
        """The emissions of one chunk's whole lines; returns ``(pos, line_no)`` after
        them. A dead letter met inside a group still gathering waits in ``deferred``."""
        stats, max_line, row, grouped = self.stats, self.max_line, parser.row, parser.grouped
        stats.rows += len(lines)
        for line in lines:
            off = pos
            pos += len(line) + 1
            line_no += 1
            if len(line) < 2 and not line.strip():
                stats.rows -= 1
                continue
            if grouped:
                group = parser.pending()
                if group is not None:
                    off = group
            try:
                if len(line) > max_line:
                    raise self._too_long_error(len(line))
                item = row(line, line_no, pos - len(line) - 1)
                if item is not None:
                    check_plausible(item)
            except Exception as err:  # a bad row is a dead letter, whatever it raised
                dead = self._row_refused(line, line_no, pos - len(line) - 1, err)
                if self._refused:  # a second header: the rows below it are not read
                    stats.rows -= _rows_after(lines, line)
                    yield line_no, off, self._resolve([*deferred, dead]) if deferred else dead
                    deferred.clear()
                    break
                item = dead if parser.pending() is None else _wait(parser, deferred, dead)
            else:
                if item.__class__ is DeadLetter:  # refused by the parser's own decoder
                    self._count(item, line_no)
            if item is None:
                continue
            if deferred or item.__class__ is list:
                item = self._resolve([*deferred, *(item if item.__class__ is list
                                                   else [item])])
                deferred.clear()
                stats.records += _records_in(item)
            elif item.__class__ is not DeadLetter:
                stats.records += 1
            yield line_no, off, item
        return pos, line_no

    def _split(self, chunk: bytes, buf: bytes, pos: int, line_no: int, started: bool
               ) -> tuple[list[bytes], bytes, int, int]:
        """``(whole lines, the unfinished one, pos, line_no)`` of the text so far; at the
        end (no chunk) the unfinished one is whole. A chunk wholly before a resume's
        start (``started``: past the header) gives no line, its lines only counted."""
        if not chunk:
            return [buf], b"", pos, line_no
        data = buf + chunk
        if started and pos + len(data) <= self._start:
            cut = data.rfind(b"\n") + 1
            return [], data[cut:], pos + cut, line_no + data.count(b"\n", 0, cut)
        lines = data.split(b"\n")
        return lines, lines.pop(), pos, line_no

    def _read(self, read: Callable[[int], bytes], line_no: int, pos: int, cut: bytes
              ) -> tuple[bytes, DeadLetter | None]:
        """The next chunk, or nothing and the dead letter of a stream that broke (``cut``:
        the row it broke in, as far as it was read)."""
        try:
            return read(CHUNK), None
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError) as err:
            return b"", self.dead_letter(cut, line_no + 1, pos, RowError(
                f"the file cannot be read past here: {type(err).__name__}: {err}",
                expected="a readable stream", found=type(err).__name__, reason="decode_error"))

    def _too_large(self, line_no: int, pos: int) -> DeadLetter:
        return self.dead_letter(b"", line_no, pos, RowError(
            f"the file decompresses to more than {self.max_bytes} bytes; it is not read "
            f"past here", expected=f"at most {self.max_bytes} bytes decompressed",
            found=f"more than {self.max_bytes}", reason="too_large"))

    def _cut_long(self, buf: bytes, skipping: int) -> tuple[bytes, int]:
        """An unfinished line already too long: keep its first bytes and skip the rest."""
        if len(buf) > self.max_line:
            return buf[:256], len(buf)
        return buf, skipping

    def _skip_long(self, chunk: bytes, buf: bytes, skipping: int, line_no: int, pos: int
                   ) -> tuple[bytes, int, int, int, DeadLetter | None]:
        """Pass over an over-long line up to its newline: ``(chunk left, skipping,
        line_no, pos, its dead letter once it ended)``."""
        nl = chunk.find(b"\n")
        if nl < 0:
            return b"", skipping + len(chunk), line_no, pos, None
        skipping += nl
        line_no += 1
        dead = None
        if pos >= self._start:
            self.stats.rows += 1
            dead = self._too_long(buf, line_no, pos, skipping)
        return chunk[nl + 1:], -1, line_no, pos + skipping + 1, dead

    def _finish(self, parser: RowParser | None, deferred: list[Any], buf: bytes,
                skipping: int, line_no: int, pos: int) -> Iterator[tuple[int, int, Any]]:
        """The end of the file: a line it ends inside, and the last group."""
        if skipping >= 0:  # the file ended inside an over-long line
            line_no += 1
            if pos >= self._start:
                self.stats.rows += 1
                yield line_no, pos, self._too_long(buf, line_no, pos, skipping)
            pos += skipping
        self.position = pos if self._refused_at is None else self._refused_at
        if parser is None:
            return
        group = parser.pending()
        try:
            last = parser.end()
        except Exception as err:  # the last group is still the rows' fault
            last = self.dead_letter(b"", line_no, pos, err)
        items = self._resolve([*deferred, *([] if last is None else
                                            last if last.__class__ is list else [last])])
        if items:
            self.stats.records += _records_in(items)
            yield line_no, pos if group is None else group, \
                items if len(items) > 1 else items[0]

    def _too_long_error(self, size: int) -> RowError:
        return RowError(f"the row is {size} bytes long, more than the {self.max_line} a "
                        "row may be", expected=f"a row of at most {self.max_line} bytes",
                        found=f"{size} bytes", reason="line_too_long")

    def _too_long(self, line: bytes, line_no: int, offset: int, size: int) -> DeadLetter:
        """The dead letter of a row longer than ``max_line`` (its first bytes kept)."""
        return self.dead_letter(line[:256], line_no, offset, self._too_long_error(size))

    def _resolve(self, items: list[Any]) -> list[Any]:
        """An emission's items with every :class:`RowFailure` made a dead letter."""
        return [self.dead_letter(x.line, x.line_no, x.offset, x.error)
                if x.__class__ is RowFailure else x for x in items]

    _refused = False
    _refused_at: int | None = None  # where a second header refused the rest of the file
    _columns: list[str] | None = None  # the header's

    def _row_refused(self, line: bytes, line_no: int, offset: int, err: Exception
                     ) -> DeadLetter:
        """The dead letter of a refused row. A second header with other columns (two files
        joined, say) refuses the rest of the file: read by the first header its rows would
        be misread, and read by the second a resume past it would misread them."""
        if self._columns is not None and is_other_header(line, self._columns):
            self._refused, self._refused_at = True, offset
            first = ",".join(self._columns)
            err = RowError("a second header with other columns; the rest of the file is not "
                           "read (split it where the header changes)",
                           expected=f"the first header's columns: {first}"[:200],
                           found="another header", reason="malformed")
        return self.dead_letter(line, line_no, offset, err)

    @property
    def refused(self) -> bool:
        """Whether the file's header was refused (then nothing else of it is read)."""
        return self._refused

    def _prologue(self, lines: list[bytes], pos: int, line_no: int, parser: RowParser | None,
                  ) -> tuple[int, int, int, RowParser | None, list[Any]]:
        """Read the header (which makes the parser) and skip the lines before the resume
        offset: ``(index of the first line left, pos, line_no, parser, emissions)``."""
        early: list[Any] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if parser is None:
                if not line.strip() or (self._header is not False and is_title(line)):
                    # blank lines and a title before the first row
                    pos, line_no, i = pos + len(line) + 1, line_no + 1, i + 1
                    continue
                header = self._header if self._header is not None else is_header(line)
                self._columns = header_cells(line) if header else None
                try:
                    parser = self._factory(self._columns, self.source)
                except RowError as err:  # the file cannot be read: one dead letter, done
                    early.append((line_no + 1, pos,
                                  self.dead_letter(line, line_no + 1, pos, err)))
                    self._refused = True
                    return i, pos, line_no, _Nothing(), early
                if header:
                    pos, line_no, i = pos + len(line) + 1, line_no + 1, i + 1
                    continue
            if pos >= self._start:
                break
            pos, line_no, i = pos + len(line) + 1, line_no + 1, i + 1
        return i, pos, line_no, parser, early


@dataclass(frozen=True, eq=False)
class RowIndex:
    """A file's rows in the order to read them: each row's byte offset in the
    (decompressed) stream, its length without the newline, and its line number."""

    offsets: np.ndarray
    lengths: np.ndarray
    line_nos: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


class IndexedReader(FileReader):
    """Reads a file's rows in the order of a :class:`RowIndex` (a bar file not in time
    order, read in time order), each row once.

    Its offsets are positions in that order: ``offset`` k starts at the index's k-th row.
    A compressed file is decompressed to a temporary file first, of at most ``max_temp``
    bytes and never more than the temporary directory has free (else one ``too_large``
    dead letter and no row); a stream that cannot be read to its end gives what it holds,
    then one dead letter.
    """

    WINDOW = 256  # rows looked up at once
    SPAN = 1 << 14  # rows of a window this close together are read in one go

    def __init__(self, path: Path | str, factory: ParserFactory, *, index: RowIndex,
                 source: Source | None = None, offset: int = 0, step: str = "replay",
                 on_dead_letter: Callable[[int, str], Any] | None = None,
                 max_line: int | None = None, max_bytes: int | None = None,
                 max_temp: int | None = None) -> None:
        super().__init__(path, factory, source=source, header=True, offset=offset,
                         step=step, on_dead_letter=on_dead_letter, max_line=max_line,
                         max_bytes=max_bytes)
        self.max_temp = MAX_TEMP_BYTES if max_temp is None else max_temp
        self.index = index
        self._copy: IO[bytes] | None = None
        self._cut = b""  # the row a broken stream cut off, as far as it was read

    def close(self) -> None:
        super().close()
        if self._copy is not None:
            self._copy.close()

    # a hot loop, as FileReader.lines: the per-row work stays in this frame
    def lines(self) -> Iterator[tuple[int, int, Any]]:
        stats = self.stats
        line_no, header, parser, refused = self._header_parser()
        if refused is not None:
            yield line_no, 0, refused
            return
        fd, readable, broken, refused = self._readable(line_no, header)
        if refused is not None:
            yield line_no, 0, refused
            return
        row, index = parser.row, self.index
        n, k = len(index), self._start
        while k < n:
            end = min(n, k + self.WINDOW)
            whole_lengths = index.lengths[k:end]
            offsets = index.offsets[k:end]
            texts = self._window(fd, offsets, whole_lengths)
            for j, (line, at, no) in enumerate(zip(texts, offsets.tolist(),
                                                   index.line_nos[k:end].tolist(),
                                                   strict=True)):
                if at + len(line) >= readable:
                    continue  # past where a broken stream could be read (reported below)
                stats.rows += 1
                try:
                    size = int(whole_lengths[j])
                    if size > self.max_line:
                        raise self._too_long_error(size)
                    item = row(line, no, at)
                    if item is not None:
                        check_plausible(item)
                except Exception as err:  # a bad row is a dead letter, whatever it raised
                    item = self._row_refused(line, no, at, err)
                if item is not None:
                    if item.__class__ is not DeadLetter:
                        stats.records += 1
                    yield no, k + j, item
            k = end
        self.position = n
        if broken is not None:  # after the last line it held
            line_no = max(line_no, int(index.line_nos.max())) if n else line_no
            at = readable - len(self._cut)  # where the row cut off begins
            yield line_no + 1, n, self.dead_letter(self._cut, line_no + 1, at, RowError(
                f"the file cannot be read past here: {type(broken).__name__}: {broken}",
                expected="a readable stream", found=type(broken).__name__,
                reason="decode_error"))

    def _header_parser(self) -> tuple[int, bytes, RowParser, DeadLetter | None]:
        """``(line_no, header, parser, dead letter if the header is refused)``: the first
        line neither blank nor a title is the header."""
        line_no, header = 0, b""
        for raw, _size, _n in lines_of(self._fh, self.max_line):
            line_no += 1
            if not is_preamble(raw):
                header = raw.rstrip(b"\r\n")
                break
        self._columns = header_cells(header)
        try:
            return line_no, header, self._factory(self._columns, self.source), None
        except RowError as err:  # the file cannot be read: one dead letter, done
            self._refused = True
            return line_no, header, _Nothing(), self.dead_letter(header, line_no, 0, err)

    def _readable(self, line_no: int, header: bytes
                  ) -> tuple[int, int, BaseException | None, DeadLetter | None]:
        """``(fd, bytes readable, what broke the stream, dead letter if it is refused)``: a
        plain file as it is; a compressed one decompressed once into a temporary file
        that can be read anywhere, within the room it may take."""
        fh = self._fh
        if isinstance(fh, io.BufferedReader):
            return fh.fileno(), 1 << 62, None, None
        self._copy = copy = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        room = min(self.max_temp, self.max_bytes,
                   shutil.disk_usage(tempfile.gettempdir()).free - (256 << 20))
        written, broken = 0, None
        try:
            with open_stream(self.path) as whole:
                step = getattr(whole, "read1", whole.read)
                while chunk := step(CHUNK):  # a decompression step at a time
                    written += len(chunk)
                    if written > room:
                        self._refused = True
                        return -1, 0, None, self.dead_letter(header, line_no, 0, RowError(
                            f"reading it in time order needs a decompressed copy of "
                            f"more than {room} bytes (the most temporary space it may "
                            f"take: max_temp {self.max_temp}, or what "
                            f"{tempfile.gettempdir()} has free); sort the file, or "
                            "decompress it first", expected=f"at most {room} bytes "
                            "decompressed", found=f"more than {room}", reason="too_large"))
                    copy.write(chunk)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile,
                NotImplementedError) as err:
            broken = err
        copy.flush()
        if broken is None:
            return copy.fileno(), 1 << 62, broken, None
        # a row cut off where the stream broke is no row: its bytes go in the dead letter
        end = copy.tell()
        tail = os.pread(copy.fileno(), min(end, 4096), end - min(end, 4096))
        self._cut = tail[tail.rfind(b"\n") + 1:]
        return copy.fileno(), end, broken, None

    def _window(self, fd: int, offsets: np.ndarray, whole_lengths: np.ndarray) -> list[bytes]:
        """A window's rows, read by place in the file a run of nearby rows at a time (an
        over-long row as empty: its length alone makes it a dead letter)."""
        lengths = np.where(whole_lengths > self.max_line, 0, whole_lengths)
        texts = [b""] * len(offsets)
        by_place = np.argsort(offsets, kind="stable")
        placed = offsets[by_place]
        ends = placed + lengths[by_place]
        breaks = np.flatnonzero(placed[1:] - np.maximum.accumulate(ends)[:-1] > self.SPAN) + 1
        for run in np.split(by_place, breaks):
            starts, sizes = offsets[run].tolist(), lengths[run].tolist()
            lo = starts[0]
            data = os.pread(fd, max(a + b for a, b in zip(starts, sizes, strict=True)) - lo, lo)
            for r, at, size in zip(run.tolist(), starts, sizes, strict=True):
                texts[r] = data[at - lo:at - lo + size]
        return texts


def _rows_after(lines: list[bytes], line: bytes) -> int:
    """The rows (not blank) of ``lines`` after ``line``, its first occurrence."""
    return sum(1 for x in lines[lines.index(line) + 1:] if x.strip())


def _records_in(items: list[Any]) -> int:
    return sum(1 for x in items if x.__class__ is not DeadLetter)


class _Nothing(RowParser):
    """The parser of a file whose header was refused: every line is skipped."""

    def row(self, line: bytes, line_no: int, offset: int) -> Any:
        return None
