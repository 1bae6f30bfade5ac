"""File replay: event-time merge, Binance CSVs, bad rows, pacing and exact resume."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, run_main
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all, replay_input
from riskguard.operators.core.clock import ManualClock
from riskguard.schemas import Bar, DeadLetter, FundingRate, Trade, encode

from riskguard.errors import ConfigError, SnapshotError
from tests.errors_util import chain_text


def _jsonl(path: Path, ts_list: list[int], prefix: str) -> Path:
    lines = [
        encode(Trade(id=f"{prefix}{i}", venue="okx", instrument="BTC-USDT", ts=ts,
                     price=100.0 + i, qty=1.0, side="buy"))
        for i, ts in enumerate(ts_list)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


BASE_MS = 1_700_000_000_000
MS = 1_000_000


@pytest.fixture
def files(tmp_path: Path) -> list[ReplayFile]:
    a = _jsonl(tmp_path / "a.jsonl", [(BASE_MS + k) * MS for k in (10, 30, 50, 70)], "a")
    b = _jsonl(tmp_path / "b.jsonl", [(BASE_MS + k) * MS for k in (20, 40, 60)], "b")
    k = tmp_path / "BTCUSDT-1m-klines.csv"
    k.write_text(
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore\n"
        f"{BASE_MS - 59_955},100,102,99.5,101.5,3.0,{BASE_MS + 44},303.1,7,2.0,0,0\n"
    )
    f = tmp_path / "BTCUSDT-fundingRate.csv"
    f.write_text(f"calc_time,funding_interval_hours,last_funding_rate\n{BASE_MS + 55},8,0.0001\n")
    return [ReplayFile(a), ReplayFile(b),
            ReplayFile(k, venue="binance", instrument="BTCUSDT"),
            ReplayFile(f, venue="binance", instrument="BTCUSDT")]


def test_files_are_merged_in_event_time_order(files: list[ReplayFile]) -> None:
    """Records from every file come out sorted by ts, CSV rows typed by their format."""
    recs = list(read_all(ReplaySource(files)))
    assert [r.ts for r in recs] == sorted(r.ts for r in recs)
    kinds = [(type(r).__name__, r.ts) for r in recs]
    assert ("Bar", (BASE_MS + 45) * MS) in kinds
    assert ("FundingRate", (BASE_MS + 55) * MS) in kinds
    kline = next(r for r in recs if r.ts == (BASE_MS + 45) * MS)
    assert isinstance(kline, Bar)
    assert (kline.open, kline.high, kline.low, kline.close) == (100.0, 102.0, 99.5, 101.5)
    assert (kline.start, kline.interval_ns, kline.volume, kline.trades) == (
        (BASE_MS - 59_955) * MS, 60_000 * MS, 3.0, 7)
    assert (kline.taker_buy_volume, kline.price_only) == (2.0, False)
    funding = next(r for r in recs if isinstance(r, FundingRate))
    assert funding.rate == 0.0001


def test_bad_rows_become_dead_letters_with_their_byte_offset(tmp_path: Path) -> None:
    """A malformed CSV row and a bad JSONL line are dead letters, not crashes; rows after them
    still come."""
    p = tmp_path / "x-trades.csv"
    good = "1,100.0,0.5,50,1700000000000,false,true\n"
    p.write_text(good + "2,NaN,0.5,50,1700000000001,false,true\n" + good.replace("1,", "3,", 1))
    j = tmp_path / "y.jsonl"
    j.write_bytes(b'{"type":"trade","oops"\n')
    recs = list(read_all(ReplaySource(
        [ReplayFile(p, venue="binance", instrument="X"), ReplayFile(j)]
    )))
    dead = [r for r in recs if isinstance(r, DeadLetter)]
    assert sorted((d.reason, d.offset) for d in dead) == [
        ("malformed", 0), ("validation", len(good)),
    ]
    assert sum(isinstance(r, Trade) for r in recs) == 2


def test_partition_resume_from_snapshot_yields_every_record_exactly_once(files) -> None:
    """Stop halfway, rebuild from the byte-offset snapshot, and nothing repeats or goes missing."""
    src = ReplaySource(files, batch_size=2)
    whole = [encode(r) for r in read_all(ReplaySource(files))]
    part = src.build_part("s", "replay", None)
    first = [encode(r) for r in part.next_batch()] + [encode(r) for r in part.next_batch()]
    snap = part.snapshot()
    part.close()
    rest = [encode(r) for r in read_all_from(src, snap)]
    assert first + rest == whole


@pytest.mark.parametrize("shape", ["offsets only", "one file more", "one number more"])
def test_a_snapshot_of_another_shape_is_refused(files, shape: str) -> None:
    """A snapshot is every file's offset, then every file's time: one of another shape
    (offsets without the times, or taken over other files) is refused, naming the
    shape it should have, never read as a start without the files' times."""
    src = ReplaySource(files)
    n = len(files)
    snap = {"offsets only": [0] * n, "one file more": [0] * (2 * n + 2),
            "one number more": [0] * (2 * n + 1)}[shape]
    with pytest.raises(SnapshotError, match=f"{2 * n} numbers"):
        src.build_part("s", "replay", snap)


def test_a_fresh_start_needs_no_snapshot(files) -> None:
    """No snapshot is a start from every file's beginning, as a snapshot taken there."""
    src = ReplaySource(files)
    fresh = [encode(r) for r in read_all(src, None)]
    assert fresh and fresh == [encode(r) for r in read_all_from(
        src, [0] * len(files) + [-1] * len(files))]


def read_all_from(src: ReplaySource, snap: list[int]) -> list[object]:
    part = src.build_part("s", "replay", snap)
    out: list[object] = []
    try:
        while True:
            out.extend(part.next_batch())
    except StopIteration:
        return out
    finally:
        part.close()


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_more_files_than_may_be_open_replay_the_same(tmp_path: Path, monkeypatch,
                                                      cap: int) -> None:
    """With more files than the open-file cap, files overlapping in time take turns: a
    waiting file is closed and read again from its next row when its turn comes. The
    records, their order and a resume from any snapshot are as with every file open,
    and no more than ``cap`` files are ever open (a dead letter sorts as before)."""
    from riskguard.connectors import replay

    paths = [_jsonl(tmp_path / f"f{n}.jsonl", [(BASE_MS + k * 7 + n) * MS for k in range(9)],
                    f"f{n}-") for n in range(5)]
    with paths[2].open("ab") as fh:
        fh.write(b"not json\n")
    files = [ReplayFile(p) for p in paths]
    whole = [encode(r) for r in read_all(ReplaySource(files))]
    monkeypatch.setattr(replay, "MAX_OPEN_FILES", cap)
    src = ReplaySource(files, batch_size=4)
    part = src.build_part("s", "replay", None)
    got: list[bytes] = []
    snaps = [part.snapshot()]
    try:
        while True:
            got += [encode(r) for r in part.next_batch()]
            snaps.append(part.snapshot())
            assert sum(r is not None for r in part._readers) <= cap
    except StopIteration:
        pass
    part.close()
    assert got == whole
    for i, snap in enumerate(snaps):
        assert [encode(r) for r in read_all_from(src, snap)] == whole[4 * i:]


def test_flow_killed_halfway_resumes_and_every_record_comes_out_once(files, recovery_dir) -> None:
    """With recovery on, a crash mid-replay followed by a resume loses nothing; duplicates are
    only replays of the last unfinished epoch and are removed by id."""
    rec = recovery_dir(1)
    want = sorted(r.id for r in read_all(ReplaySource(files)))
    seen: list[str] = []
    crashed = {"armed": True}

    def maybe_crash(r):
        if crashed["armed"] and len(seen) >= 4:
            crashed["armed"] = False
            raise RuntimeError("simulated worker death")
        return r

    def build() -> Dataflow:
        flow = Dataflow("replay_resume")
        s = replay_input("in", flow, files=files, batch_size=1)
        out = op.map("crash", s.oks, maybe_crash)
        op.output("out", op.map("id", out, lambda r: r.id), TestingSink(seen))
        return flow

    with pytest.raises(Exception) as caught:
        run_main(build(), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(rec)))
    assert "simulated worker death" in chain_text(caught.value)
    run_main(build(), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(rec)))
    assert sorted(set(seen)) == want
    assert len(seen) - len(set(seen)) <= 1


def test_real_time_pacing_waits_for_event_time(tmp_path: Path) -> None:
    """At speed 1 the source releases a record only once the clock reaches its event time."""
    t0 = 1_704_067_200_000_000_000  # 2024-01-01: a file's times must be plausible
    p = _jsonl(tmp_path / "p.jsonl", [t0, t0 + 1_000_000_000, t0 + 2_000_000_000], "p")
    clock = ManualClock(5_000)
    part = ReplaySource([ReplayFile(p)], speed=1.0, clock=clock).build_part("s", "replay", None)
    assert [r.id for r in part.next_batch()] == ["p0"]
    assert part.next_awake() is not None
    clock.advance(1_000_000_000)
    assert [r.id for r in part.next_batch()] == ["p1"]
    clock.advance(10_000_000_000)
    assert [r.id for r in part.next_batch()] == ["p2"]


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """A replay file that does not exist stops start-up with its path in the message."""
    with pytest.raises(ConfigError, match=r"nope\.jsonl"):
        ReplaySource([ReplayFile(tmp_path / "nope.jsonl")])
