"""A lone record far ahead of its file's time is a dead letter, not the stream's new time:
one bad timestamp must not make every later record of a replay late (or jump a backtest's
clock), while a genuine gap in the data, which later rows continue from, passes."""

from __future__ import annotations

from pathlib import Path

from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.schemas import DeadLetter, Trade, encode

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01
YEAR = 365 * 86_400 * NS


def _trades(path: Path, times: list[int], prefix: str) -> Path:
    rows = [encode(Trade(id=f"{prefix}{i}", venue="okx", instrument="BTC-USDT", ts=ts,
                         price=100.0 + i, qty=1.0, side="buy")) for i, ts in enumerate(times)]
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def _ids(items: list) -> list[str]:
    return [x.id if isinstance(x, Trade) else f"DL:{x.reason}" for x in items]


def test_a_lone_far_future_row_is_a_dead_letter_and_the_rest_flows_on(tmp_path: Path) -> None:
    times = [T0 + k * NS for k in range(5)]
    times[2] = T0 + YEAR  # a wrong year
    path = _trades(tmp_path / "t.jsonl", times, "t")
    out = list(read_all(ReplaySource([ReplayFile(path)])))
    assert _ids(out) == ["t0", "t1", "DL:ahead", "t3", "t4"]
    dl = out[2]
    row = path.read_bytes().splitlines()[2]
    assert dl.topic == "file:t.jsonl" and dl.path == "$.ts" and dl.found == str(T0 + YEAR)
    assert dl.offset == path.read_bytes().index(row)
    assert dl.raw == row and dl.step == "replay" and "line 3" in dl.detail


def test_a_far_future_row_does_not_hold_back_its_file_behind_the_others(
        tmp_path: Path) -> None:
    a = _trades(tmp_path / "a.jsonl", [T0, T0 + YEAR, T0 + 2 * NS, T0 + 4 * NS], "a")
    b = _trades(tmp_path / "b.jsonl", [T0 + NS, T0 + 3 * NS, T0 + 5 * NS], "b")
    out = list(read_all(ReplaySource([ReplayFile(a), ReplayFile(b)])))
    assert [x for x in _ids(out) if not x.startswith("DL")] == ["a0", "b0", "a2", "b1", "a3",
                                                                  "b2"]
    assert [x.reason for x in out if isinstance(x, DeadLetter)] == ["ahead"]


def test_a_gap_that_later_rows_continue_from_is_data_not_an_outlier(tmp_path: Path) -> None:
    gap = 3 * 86_400 * NS  # a venue quiet for three days, then trading again
    path = _trades(tmp_path / "t.jsonl", [T0, T0 + NS, T0 + gap, T0 + gap + NS], "t")
    assert _ids(list(read_all(ReplaySource([ReplayFile(path)])))) == ["t0", "t1", "t2", "t3"]


def test_a_far_future_first_row_is_an_outlier_too(tmp_path: Path) -> None:
    path = _trades(tmp_path / "t.jsonl", [T0 + YEAR, T0, T0 + NS], "t")
    assert _ids(list(read_all(ReplaySource([ReplayFile(path)])))) == ["DL:ahead", "t1", "t2"]


def test_the_lead_is_a_setting_and_zero_turns_it_off(tmp_path: Path) -> None:
    path = _trades(tmp_path / "t.jsonl", [T0, T0 + 10 * NS, T0 + NS], "t")
    assert _ids(list(read_all(ReplaySource([ReplayFile(path)], max_lead_ns=5 * NS)))) == [
        "t0", "DL:ahead", "t2"]
    path = _trades(tmp_path / "u.jsonl", [T0, T0 + YEAR, T0 + NS], "u")
    assert _ids(list(read_all(ReplaySource([ReplayFile(path)], max_lead_ns=0)))) == [
        "u0", "u1", "u2"]


def test_a_resume_from_any_snapshot_judges_every_row_as_an_unbroken_run(
        tmp_path: Path) -> None:
    a = _trades(tmp_path / "a.jsonl", [T0, T0 + YEAR, T0 + 2 * NS, T0 + 4 * NS], "a")
    b = _trades(tmp_path / "b.jsonl", [T0 + YEAR, T0 + NS, T0 + 3 * NS], "b")
    src = ReplaySource([ReplayFile(a), ReplayFile(b)], batch_size=1)
    whole = _ids(list(read_all(src)))
    part = src.build_part("s", "replay", None)
    seen: list[str] = []
    while True:
        snap = part.snapshot()
        rest = _ids(list(read_all(src, snap)))
        assert seen + rest == whole
        try:
            seen += _ids(part.next_batch())
        except StopIteration:
            break
    part.close()
    assert seen == whole and whole.count("DL:ahead") == 2
