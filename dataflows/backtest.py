"""Backtests: historical or generated records through the live flow's guard core
(:func:`riskguard.dataflows.guard.guard_core`), written to JSONL files instead of topics.

One worker, input replayed in event-time order, and an :class:`EventClock` as the
processing clock: command times and Ed25519 signatures are functions of the data (not
of the input batch size), so two runs over the same files give byte-identical outputs
(apart from the report's ``run`` section). See docs/backtests.md.

>>> clock = EventClock()
>>> rec = Trade(id="t", venue="v", instrument="i", ts=5, price=1.0, qty=1.0, side="buy")
>>> clock.observe(rec) is rec
True
>>> clock()
5
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, run_main
from riskguard.connectors.formats.ohlcv import file_symbols
from riskguard.connectors.replay import ReplayFile, replay_input
from riskguard.dataflows.guard import GuardConfig, guard_core, load_guard_config, load_keys
from riskguard.dataflows.readiness import DetectorWatch, Readiness, readiness
from riskguard.operators.core.clock import ManualClock, step_event_time
from riskguard.operators.signing import decode_command
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer
from riskguard.operators.signing.trust import TrustStore
from riskguard.schemas import (
    Audience,
    AuditRecord,
    Bar,
    BookDepth,
    DeadLetter,
    FundingRate,
    IndexPrice,
    MarketEvent,
    MitigationCommand,
    OptionQuote,
    Quote,
    Trade,
    Utilization,
    encode,
)
from riskguard.schemas.base import stamp_position

from riskguard.config import check_known_keys, read_toml
from riskguard.errors import ConfigError, VerificationError

NS = 1_000_000_000


class EventClock(ManualClock):
    """Processing clock of a backtest: the largest event time seen so far (or the reading
    step's own, where the engine sets :data:`~riskguard.operators.core.clock.step_event_time`)."""

    def __call__(self) -> int:
        local = step_event_time.get()
        return self.now_ns if local is None else local

    def observe(self, rec: Any) -> Any:
        """Map step: advance to ``rec.ts`` (never backwards) and pass the record on."""
        self.set(getattr(rec, "ts", 0))
        return rec


class InputPositions:
    """Map step: number each record with its place in the input
    (:func:`~riskguard.schemas.base.stamp_position`), so the keyed steps that merge
    streams meet records of one event time in input order, whatever the batching.

    >>> number = InputPositions()
    >>> recs = [Trade(id=str(i), venue="v", instrument="i", ts=5, price=1.0, qty=1.0,
    ...               side="buy") for i in range(2)]
    >>> [number(r).input_pos for r in recs]
    [0, 1]
    """

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, rec: Any) -> Any:
        stamp_position(rec, self.next)
        self.next += 1
        return rec


# -- labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    """One labelled incident window: ``[start_ns, end_ns)`` of ``kind`` on ``scope``.

    ``scope`` is a scope label (``venue:okx``, ``instrument:okx/BTC-USDT``,
    ``counterparty:deribit``, ``firm:*``) and may use fnmatch wildcards.
    """

    kind: str
    scope: str
    start_ns: int
    end_ns: int


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_ns_of(value: Any, where: str) -> int:
    """A label's time in ns: int ns since the epoch, an ISO-8601 string, or a TOML date
    or date-time (UTC where it names no offset)."""
    if isinstance(value, bool):
        raise ConfigError(where, "a time: int ns since the epoch or an ISO-8601 string", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError(where, "an ISO-8601 time", value) from err
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (dt - _EPOCH) // timedelta(microseconds=1) * 1000
    raise ConfigError(where, "a time: int ns since the epoch or an ISO-8601 string", value)


class LabelKeys(TypedDict, total=False):
    """The keys of an incident in a labels JSON file (a note is kept for people only)."""

    kind: str
    scope: str
    start: Any
    end: Any
    note: str


def parse_labels(doc: Any, where: str = "labels") -> list[Label]:
    """Labels from a decoded JSON document: ``{"incidents": [...]}`` or a bare list.

    >>> parse_labels({"incidents": [{"kind": "flash_crash", "scope": "venue:okx",
    ...                              "start": 10, "end": "1970-01-01T00:00:01Z"}]})
    [Label(kind='flash_crash', scope='venue:okx', start_ns=10, end_ns=1000000000)]
    """
    items = doc.get("incidents") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ConfigError(where, 'a list of incidents or {"incidents": [...]}', type(doc).__name__)
    out = []
    for i, item in enumerate(items):
        p = f"{where}.incidents[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(p, "an object with kind, scope, start, end", item)
        check_known_keys(item, LabelKeys, p)
        for key in ("kind", "scope", "start", "end"):
            if key not in item:
                raise ConfigError(f"{p}.{key}", "a value (required)", None)
        start = time_ns_of(item["start"], f"{p}.start")
        end = time_ns_of(item["end"], f"{p}.end")
        if end < start:
            raise ConfigError(f"{p}.end", f"a time >= start ({start})", end)
        out.append(Label(str(item["kind"]), str(item["scope"]), start, end))
    return sorted(out, key=lambda lab: (lab.start_ns, lab.kind, lab.scope))


class IncidentKeys(TypedDict, total=False):
    """The keys of an ``[[incident]]`` table (a run reads only the first five)."""

    file: str
    name: str
    series: str
    onset: Any
    end: Any
    resolution: str
    rule: str
    note: str


def incident_labels(doc: Any, data: Sequence[str | Path], where: str = "labels",
                    ) -> tuple[list[Label], dict[str, str]]:
    """Labels from an incidents document (``[[incident]]`` tables: ``file``, ``name``,
    ``series``, ``onset``, ``end``) for the ``data`` files given, and the instrument of
    each file labelled with a single series.

    An incident counts only when its ``file`` is among ``data`` (by file name). Its series
    is the word of ``series`` naming one of the file's row symbols
    (:func:`~riskguard.connectors.formats.ohlcv.file_symbols`), else the first word; its
    scope is ``instrument:*/<symbol>``, or ``instrument:<venue>/<symbol>`` for
    ``venue:symbol``.

    >>> doc = {"incident": [{"file": "a.csv", "name": "crash", "series": "BTCUSD_PERP",
    ...     "onset": "2025-10-10T20:53:00Z", "end": "2025-10-11T00:00:00Z"},
    ...     {"file": "other.csv", "name": "x", "series": "ETH", "onset": 0, "end": 1},
    ...     {"file": "bars.csv", "name": "y", "series": "kraken:XBTUSD", "onset": 0, "end": 1},
    ...     {"file": "bars.csv", "name": "y", "series": "kraken:ETHUSD", "onset": 0, "end": 1}]}
    >>> labels, instruments = incident_labels(doc, ["/data/a.csv", "/data/bars.csv"])
    >>> [(lab.kind, lab.scope) for lab in labels], instruments
    ([('y', 'instrument:kraken/ETHUSD'), ('y', 'instrument:kraken/XBTUSD'), \
('crash', 'instrument:*/BTCUSD_PERP')], {'/data/a.csv': 'BTCUSD_PERP'})
    """
    items = doc.get("incident") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ConfigError(where, "[[incident]] tables (file, name, series, onset, end)",
                          type(doc).__name__)
    by_name = {Path(p).name: str(p) for p in data}
    out: list[Label] = []
    series_of: dict[str, set[str]] = {}
    symbols_of: dict[str, frozenset[str]] = {}
    for i, item in enumerate(items):
        p = f"{where}.incident[{i}]"
        onset, end = _incident_span(item, p)
        path = by_name.get(str(item["file"]))
        if path is None:
            continue
        words = str(item["series"]).split()
        if not words:
            raise ConfigError(f"{p}.series", "a series name", item["series"])
        if path not in symbols_of:
            symbols_of[path] = file_symbols(path)
        named = symbols_of[path]  # "DVOL BTC" in a file of BTC and ETH rows is BTC
        word = next((w for w in words if w.rpartition(":")[2] in named), words[0])
        venue, _, symbol = word.rpartition(":")
        if not symbol:
            raise ConfigError(f"{p}.series", "a series name (symbol or venue:symbol)",
                              item["series"])
        series_of.setdefault(path, set()).add(symbol)
        out.append(Label(str(item["name"]), f"instrument:{venue or '*'}/{symbol}", onset, end))
    instruments = {path: next(iter(names)) for path, names in series_of.items()
                   if len(names) == 1}
    return sorted(out, key=lambda lab: (lab.start_ns, lab.kind, lab.scope)), instruments


def _incident_span(item: Any, p: str) -> tuple[int, int]:
    """A checked ``[[incident]]`` table's onset and end, in ns."""
    if not isinstance(item, dict):
        raise ConfigError(p, "a table with file, name, series, onset, end", item)
    check_known_keys(item, IncidentKeys, p)
    for key in ("file", "name", "series", "onset", "end"):
        if key not in item:
            raise ConfigError(f"{p}.{key}", "a value (required)", None)
    onset = time_ns_of(item["onset"], f"{p}.onset")
    end = time_ns_of(item["end"], f"{p}.end")
    if end < onset:
        raise ConfigError(f"{p}.end", f"a time >= onset ({onset})", end)
    return onset, end


def read_labels(labels: str | Path | None, data: Sequence[str | Path],
                ) -> tuple[list[Label], dict[str, str]]:
    """The labels of a run over ``data``: none, a labels JSON file, or an incidents TOML
    file, which also names each file's instrument (:func:`incident_labels`)."""
    if labels is None:
        return [], {}
    if str(labels).endswith(".toml"):  # incidents, as the real-data labels are kept
        return incident_labels(read_toml(labels), data, str(labels))
    return load_labels(labels), {}


def load_labels(path: str | Path) -> list[Label]:
    """Read a labels JSON file (see :func:`parse_labels`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(str(path), "a readable labels JSON file", str(err)) from err
    return parse_labels(doc, str(path))


def labels_to_json(labels: Iterable[Label]) -> dict[str, Any]:
    return {"incidents": [{"kind": lab.kind, "scope": lab.scope, "start": lab.start_ns,
                           "end": lab.end_ns} for lab in labels]}


# -- sinks -----------------------------------------------------------------------


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, path: Path) -> None:
        self._fh = path.open("wb")

    def write_batch(self, items: list[Any]) -> None:
        self._fh.write(b"".join(encode(it) + b"\n" for it in items))

    def close(self) -> None:
        self._fh.close()


class JsonlSink(DynamicSink[Any]):
    """Write wire-contract records, one JSON object per line (single worker)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        if worker_count != 1:
            raise ConfigError("backtest.workers", "1 (backtests are single-worker)", worker_count)
        return _JsonlPartition(self.path)


# -- running -----------------------------------------------------------------------


@dataclass
class BacktestResult:
    """What one guard run over a finite input produced.

    ``prices``: each market's price (:func:`price_of`) sampled at most once per
    ``price_every_ns``; ``ranges``: bars' low and high. A series keeps at most
    :data:`MAX_PRICE_POINTS` (past that, every other point goes and its interval
    doubles), for the first :data:`MAX_PRICED_MARKETS` markets. ``keys``: the input's
    markets (``venue/instrument``, index prices aside). ``startup_s``: wall time before
    the first record entered, ``process_s`` the rest. ``verified``: each command's check
    against the trust file (``verified`` or the rejection). ``dead_letter_counts``: every
    dead letter by reason; ``dead_letters`` keeps the first :data:`MAX_KEPT_DEAD_LETTERS`
    (all are in ``dead_letters.jsonl`` when the run writes its outputs).
    """

    commands: list[MitigationCommand] = field(default_factory=list)
    signals: list[Any] = field(default_factory=list)
    utilizations: list[Utilization] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dead_letter_counts: Counter[str] = field(default_factory=Counter)
    prices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    ranges: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    measures: dict[str, str] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    n_events: int = 0
    n_audit: int = 0
    start_ns: int = 0
    end_ns: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    process_s: float = 0.0
    verified: dict[str, str] = field(default_factory=dict)
    acks: list[dict[str, Any]] = field(default_factory=list)
    ack_executors: tuple[str, ...] = ()  # [playbook.acks] executors: who must confirm ...
    ack_required: tuple[str, ...] = ()  # ... which actions
    watch: DetectorWatch | None = None  # what the detectors were fed
    guard: GuardConfig | None = None
    _readiness: Readiness | None = None

    @property
    def n_dead_letters(self) -> int:
        """How many dead letters the run made (kept or not)."""
        return sum(self.dead_letter_counts.values())

    def readiness(self) -> Readiness | None:
        """Which detectors could fire, on which keys and from when (read once asked)."""
        if self._readiness is None and self.watch is not None and self.guard is not None:
            self._readiness = readiness(self.watch, self.guard)
        return self._readiness


def price_of(rec: Any) -> tuple[float, float, float] | None:
    """A market record's price as ``(close, low, high)`` (a bar's own range, else the
    price three times), or None for a record without a positive price.

    >>> price_of(Quote(id="q", venue="v", instrument="i", ts=1, bid=99.0, bid_size=1.0,
    ...                ask=101.0, ask_size=1.0))
    (100.0, 100.0, 100.0)
    """
    t = type(rec)
    px: float | None = None
    if t is Trade or t is IndexPrice:
        px = rec.price
    elif t is Quote:
        px = rec.mid
    elif t is Bar:
        return rec.close, rec.low, rec.high
    elif t is BookDepth or t is FundingRate or t is OptionQuote:
        px = rec.mid if t is BookDepth else rec.mark_price
    if px is None or not px > 0:
        return None
    return px, px, px


MAX_KEPT_DEAD_LETTERS = 100
"""The dead letters a backtest keeps in memory (the first; every one is counted): a file
of bad rows must not cost memory per row."""


class _DeadTallyPartition(StatelessSinkPartition[Any]):
    def __init__(self, res: BacktestResult) -> None:
        self.res = res

    def write_batch(self, items: list[Any]) -> None:
        res = self.res
        for d in items:
            res.dead_letter_counts[d.reason] += 1
            if len(res.dead_letters) < MAX_KEPT_DEAD_LETTERS:
                res.dead_letters.append(d)


class DeadLetterTally(DynamicSink[Any]):
    """Counts a run's dead letters by reason, keeping the first few (single worker)."""

    def __init__(self, res: BacktestResult) -> None:
        self.res = res

    def build(self, step_id: str, worker_index: int, worker_count: int,
              ) -> _DeadTallyPartition:
        return _DeadTallyPartition(self.res)


MAX_PRICE_POINTS = 50_000
"""The most sampled prices a backtest keeps of one market (a month of trades at one a
second would be 2.6 million)."""
MAX_PRICED_MARKETS = 1_000
"""The most markets whose prices a backtest samples (a report plots a few of them)."""


class _Tap:
    """Input-side bookkeeping for the report: event count, span, markets, sampled prices,
    and when the first record came in (the end of start-up)."""

    def __init__(self, res: BacktestResult, every_ns: int) -> None:
        self.res = res
        self.every = every_ns
        self.last: dict[str, int] = {}
        self.every_of: dict[str, int] = {}  # a market's interval, once its series thinned
        self.first_in: float | None = None

    def __call__(self, rec: Any) -> Any:
        res = self.res
        ts = getattr(rec, "ts", None)
        if ts is None:
            return rec
        if res.n_events == 0:
            res.start_ns = ts
            self.first_in = time.perf_counter()
        elif ts < res.start_ns:  # a late row: the span starts at the earliest event time
            res.start_ns = ts
        res.n_events += 1
        res.end_ns = max(res.end_ns, ts)
        if not isinstance(rec, MarketEvent):
            return rec
        key = f"{rec.venue}/{rec.instrument}"
        if not isinstance(rec, IndexPrice):
            res.keys.add(key)
        px = price_of(rec)
        if px is None:
            return rec
        last = self.last.get(key)
        if last is None:
            if len(self.last) >= MAX_PRICED_MARKETS:
                return rec
        elif ts - last < self.every_of.get(key, self.every):
            return rec
        self.last[key] = ts
        series = res.prices.setdefault(key, [])
        series.append((ts, px[0]))
        if type(rec) is Bar:
            ranges = res.ranges.setdefault(key, [])
            ranges.append((ts, px[1], px[2]))
            res.measures.setdefault(key, str(rec.measure))
            if len(ranges) >= MAX_PRICE_POINTS:
                ranges[:] = ranges[::2]
        if len(series) >= MAX_PRICE_POINTS:
            series[:] = series[::2]
            self.every_of[key] = 2 * self.every_of.get(key, self.every)
        return rec


def span_batches(records: Iterable[Any], batch_size: int, span_ns: int) -> list[list[Any]]:
    """``records`` in order, cut into batches of at most ``batch_size`` that never
    hold two spans (``ts // span_ns``) of event time.

    >>> class R:
    ...     def __init__(self, ts): self.ts = ts
    >>> [[r.ts for r in b] for b in span_batches([R(1), R(2), R(12), R(3), R(14)], 2, 10)]
    [[1, 2], [12], [3], [14]]
    """
    out: list[list[Any]] = []
    batch: list[Any] = []
    span = -1
    for rec in records:
        s = getattr(rec, "ts", 0) // span_ns
        if batch and (len(batch) >= batch_size or s != span):
            out.append(batch)
            batch = []
        if not batch:
            span = s
        batch.append(rec)
    if batch:
        out.append(batch)
    return out


def _one_input(files: Sequence[ReplayFile], records: Sequence[Any] | None) -> None:
    if (records is None) == (not files):
        raise ConfigError("backtest.input", "either files or records (exactly one)",
                          "both" if files else "neither")


class _DiscardPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class DiscardSink(DynamicSink[Any]):
    """An output step's sink that keeps nothing (an output nobody asked for, or one an
    engine adapter replaces)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DiscardPartition:
        return _DiscardPartition()


OUTPUTS = ("commands", "signals", "utilization", "audit", "dead_letters")
"""A backtest flow's outputs: each an output step of that name (its JSONL file is
``<name>.jsonl``)."""


def backtest_flow(
    cfg: GuardConfig,
    cfg_hash: str,
    *,
    signer: Signer,
    trust: TrustStore,
    files: Sequence[ReplayFile] = (),
    records: Sequence[Any] | None = None,
    batch_size: int = 100,
    sinks: dict[str, DynamicSink[Any]] | None = None,
    progress: Callable[[Any], Any] | None = None,
    tap: Callable[[Any], Any] | None = None,
    on_audit: Callable[[Any], Any] | None = None,
    out_dir: str | Path | None = None,
    watch: Any = None,
    until_ns: int | None = None,
) -> Dataflow:
    """The backtest's dataflow, for either engine: input step ``in`` (``records`` in
    batches that never span two ticks, or ``files`` replayed), the event clock, the guard
    core, and an output step per name in :data:`OUTPUTS` (sink from ``sinks``, else
    discarded). :mod:`riskguard.flink` replaces the input step. ``watch`` sees what the
    detectors are fed; with ``until_ns`` the input ends at that event time."""
    _one_input(files, records)
    clock = EventClock()
    flow = Dataflow("riskguard_backtest")
    if records is not None:
        src = op.flat_map("unbatch", op.input("in", flow, TestingSource(
            span_batches(records, batch_size, cfg.tick_ns))), lambda batch: batch)
        inputs = src
        errs_in: Any = None
    else:
        split = replay_input("in", flow, files=list(files), batch_size=batch_size,
                             batch_span_ns=cfg.tick_ns)
        inputs, errs_in = split.oks, split.errs
    if until_ns is not None:
        inputs = op.filter("until", inputs, lambda rec: getattr(rec, "ts", 0) <= until_ns)
    if progress is not None:
        op.inspect("progress", inputs, lambda _s, rec: progress(rec))
    number = InputPositions()
    clocked = op.map("clock", inputs, lambda rec: clock.observe(number(rec)))
    if tap is not None:
        clocked = op.map("tap", clocked, tap)
    out = guard_core("guard", clocked, cfg=cfg, cfg_hash=cfg_hash, clock=clock,
                     signer=signer, trust=trust, input_errs=errs_in, watch=watch)
    utils = op.filter("utils", out.exposures, lambda r: isinstance(r, Utilization))
    streams = {"commands": out.commands, "signals": out.signals, "utilization": utils,
               "audit": out.audit, "dead_letters": out.dead_letters}
    given = sinks or {}
    for name in OUTPUTS:
        op.output(name, streams[name], given.get(name) or DiscardSink())
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            op.output(f"{name}_jsonl", streams[name], JsonlSink(d / f"{name}.jsonl"))
    if on_audit is not None:
        op.inspect("audit_count", out.audit, lambda _s, x: on_audit(x))
    return flow


def run_backtest(
    cfg: GuardConfig,
    cfg_hash: str,
    *,
    files: Sequence[ReplayFile] = (),
    records: Sequence[Any] | None = None,
    out_dir: str | Path | None = None,
    signer: Signer | None = None,
    trust: TrustStore | None = None,
    batch_size: int = 100,
    price_every_ns: int = NS,
    progress: Callable[[Any], Any] | None = None,
    until_ns: int | None = None,
    watch: DetectorWatch | None = None,
) -> BacktestResult:
    """Run the guard core over ``files`` (replayed in event time) or ``records``.

    With ``out_dir``, each of :data:`OUTPUTS` is written there as ``<name>.jsonl``.
    A batch (at most ``batch_size``) never spans two ticks of event time, so the event
    clock is less than one tick ahead of any record, and each record is numbered with its
    place in the input: signals and commands (issue times included) do not depend on the
    batch size (docs/backtests.md, "Same commands as live").
    ``progress`` is called with each input record. Every command is verified as an
    executor verifies it; ``watch`` is the detector watch to fill (readiness,
    :mod:`~riskguard.dataflows.readiness`). ``until_ns``: the input ends there.
    """
    _one_input(files, records)
    if signer is None or trust is None:
        signer, trust = load_keys(cfg)
    res = BacktestResult()
    envs: list[Any] = []
    sigs: list[Any] = []
    exps: list[Any] = []

    def audited(item: Any) -> None:
        res.n_audit += 1
        if isinstance(item, AuditRecord) and item.kind == "execution_ack":
            res.acks.append(item.body)

    tap = _Tap(res, price_every_ns)
    watch = watch if watch is not None else DetectorWatch(cfg.detector)
    flow = backtest_flow(
        cfg, cfg_hash, signer=signer, trust=trust, files=files, records=records,
        batch_size=batch_size, progress=progress, tap=tap,
        sinks={"commands": TestingSink(envs), "signals": TestingSink(sigs),
               "utilization": TestingSink(exps), "dead_letters": DeadLetterTally(res)},
        on_audit=audited, out_dir=out_dir, watch=watch, until_ns=until_ns)
    t0 = time.perf_counter()
    run_main(flow)
    _timed(res, t0, time.perf_counter(), tap.first_in)
    res.commands = [decode_command(e) for e in envs]
    res.signals, res.utilizations = sigs, exps
    _checked(res, envs, trust, cfg, watch)
    return res


def _timed(res: BacktestResult, t0: float, t1: float, first_in: float | None) -> None:
    """The run's wall time, split at the first record's entry."""
    first = first_in if first_in is not None else t1
    res.wall_s, res.startup_s, res.process_s = t1 - t0, first - t0, t1 - first


def _checked(res: BacktestResult, envelopes: list[Any], trust: TrustStore, cfg: GuardConfig,
             watch: DetectorWatch) -> None:
    """What a run adds once over: command checks, ack duties, readiness."""
    res.verified = verify_commands(envelopes, trust, cfg)
    res.ack_executors = tuple(cfg.playbook.acks.executors)
    res.ack_required = tuple(a.value for a in cfg.playbook.acks.require)
    res.watch, res.guard = watch, cfg


def verify_commands(envelopes: Sequence[Any], trust: TrustStore, cfg: GuardConfig,
                    ) -> dict[str, str]:
    """Each signed command checked as an executor checks it (:meth:`TrustStore.verify`)
    at its own issue time: command id -> ``verified`` or ``REJECTED <reason>``."""
    audience = Audience(env=cfg.env, topic=cfg.topic("commands"))
    out: dict[str, str] = {}
    for env in envelopes:
        cmd = decode_command(env)
        try:
            trust.verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=audience,
                         now_ns=cmd.issued_at)
        except VerificationError as err:
            out[cmd.command_id] = f"REJECTED {err.reason}"
        else:
            out[cmd.command_id] = "verified"
    return out


def backtest_files(
    config: str | Path | tuple[GuardConfig, str],
    data: Sequence[str | Path],
    *,
    labels: str | Path | None = None,
    out_dir: str | Path,
    venue: str = "file",
    instrument: str = "unknown",
    batch_size: int = 100,
    progress: Callable[[Any], Any] | None = None,
    fmt: str = "auto",
    market: str = "auto",
    contract_size: float | None = None,
    measure: str = "price",
) -> dict[str, Any]:
    """``riskguard backtest``: replay ``data`` through the guard, write the report.

    ``config``: a guard TOML path, or ``(config, digest)`` from :func:`load_guard_config`.
    ``fmt``, ``market``, ``contract_size`` and ``measure`` say how to read the files
    (docs/formats.md). Returns the report dict (also written as ``report.json`` and
    ``report.html``).
    """
    from riskguard.dataflows.report import build_report, write_report  # noqa: PLC0415 (cycle)

    cfg, digest = config if isinstance(config, tuple) else load_guard_config(config)
    labs, named = read_labels(labels, data)
    files = [ReplayFile(p, format=fmt, venue=venue, market=market, measure=measure,
                        instrument=named.get(str(p), instrument),
                        contract_size=contract_size) for p in data]
    for f in files:
        f.require_rows()  # an empty file is a mistake, not a run that read nothing
    res = run_backtest(cfg, digest, files=files, out_dir=out_dir, batch_size=batch_size,
                       progress=progress)
    refuse_all_dead(res)
    names = [Path(p).name for p in data]
    title = "riskguard backtest: " + ", ".join(names[:3]) + (
        f" and {len(names) - 3} more" if len(names) > 3 else "")
    report = build_report(res, labs, title=title, config_hash=digest, inputs=names)
    write_report(report, out_dir)
    return report


def refuse_all_dead(res: BacktestResult, what: str = "data") -> None:
    """A ConfigError when the run accepted no record and refused some (dead letters, by
    reason): a report of nothing would read as a quiet market.

    >>> res = BacktestResult(dead_letter_counts=Counter(validation=3, malformed=1))
    >>> refuse_all_dead(res)
    Traceback (most recent call last):
    ...
    riskguard.errors.ConfigError: data: at least one record accepted; got '0 accepted, 4
    refused as dead letters (malformed 1, validation 3)'
    """
    if res.n_events or not res.n_dead_letters:
        return
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(res.dead_letter_counts.items()))
    raise ConfigError(what, "at least one record accepted",
                      f"0 accepted, {res.n_dead_letters:,} refused as dead letters ({reasons})")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (nested dicts merge; others replace)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def run_info(wall_s: float, n_events: int, startup_s: float = 0.0) -> dict[str, Any]:
    """The only wall-clock facts in a report (excluded from determinism checks); events
    per second count processing time only."""
    process_s = max(wall_s - startup_s, 0.0)
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 3), "startup_s": round(startup_s, 3),
            "process_s": round(process_s, 3),
            "events_per_s": round(n_events / process_s, 1) if process_s > 0 else None}


__all__ = [
    "BacktestResult", "DeadLetterTally", "EventClock", "JsonlSink", "Label", "backtest_files",
    "deep_merge", "labels_to_json", "load_labels", "parse_labels", "refuse_all_dead",
    "run_backtest", "run_info",
]

