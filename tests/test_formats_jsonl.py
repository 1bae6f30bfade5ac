"""JSONL files in the wire contract read through the same reader as the CSV formats: a
byte order mark costs no record, and a line the codec refuses is counted like any other
refused row."""

from __future__ import annotations

from pathlib import Path

from riskguard.connectors.formats import FileReader, open_reader
from riskguard.schemas import DeadLetter, Trade

JSON = (b'{"type":"trade","id":"t1","venue":"okx","instrument":"BTC-USDT",'
        b'"ts":1704067200000000000,"price":42000.5,"qty":0.01,"side":"buy"}\n')


def _items(reader: FileReader) -> list:
    out = []
    for _line, _off, item in reader.lines():
        out.extend(item if isinstance(item, list) else [item])
    reader.close()
    return out


def test_a_jsonl_file_saved_with_a_bom_keeps_its_first_record(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + JSON + JSON.replace(b"t1", b"t2"))
    for fmt in ("auto", "jsonl"):
        items = _items(open_reader(f, fmt))
        assert [x.id for x in items if isinstance(x, Trade)] == ["t1", "t2"], items


def test_a_refused_jsonl_row_is_counted_and_heard_of(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_bytes(JSON + b'{"type":"trade","id":"t2"}\n' + b"not json\n")
    reader = open_reader(f, "jsonl")
    heard: list[tuple[int, str]] = []
    reader.on_dead_letter = lambda line_no, message: heard.append((line_no, message))
    items = _items(reader)
    assert [type(x) for x in items] == [Trade, DeadLetter, DeadLetter]
    stats = reader.stats
    assert (stats.rows, stats.records, sum(stats.dead_letters.values())) == (3, 1, 2)
    assert [n for n, _ in heard] == [2, 3]
    assert heard[0][1].startswith(f"{items[1].reason} at {items[1].path}")
