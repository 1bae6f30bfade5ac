"""The incident loaders, labels, calm time, metrics and baselines of ``bench/incidents.py``."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from riskguard.schemas import Bar, BookDepth, Measure

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str) -> ModuleType:
    """A ``bench/`` script, imported by its file name (the folder is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


inc = _bench_module("incidents")
shared_data = _bench_module("shared_data")

NS = inc.NS
H = inc.HOUR_NS
D = inc.DAY_NS
T0 = 1_700_000_000 * NS  # 2023-11-14 22:13:20 UTC
DAY0 = T0 - T0 % D  # 2023-11-14 00:00 UTC

KLINE_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
                "taker_buy_volume,taker_buy_quote_volume,ignore\n")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _bars(n: int, *, start: int = DAY0, step: int = H, closes: list[float] | None = None,
          venue: str = "v", instrument: str = "X") -> list[Bar]:
    closes = closes or [100.0] * n
    out, prev = [], closes[0]
    for i in range(n):
        c = closes[i]
        out.append(Bar(id=f"t@{i}", venue=venue, instrument=instrument, ts=start + (i + 1) * step,
                       start=start + i * step, interval_ns=step, open=prev,
                       high=max(prev, c) * 1.001, low=min(prev, c) * 0.999, close=c))
        prev = c
    return out


def _series(records: list, *, label: str = "X", file: str = "f.csv", step: int = H,
            venue: str = "v", instrument: str = "X") -> inc.Series:
    return inc.Series(label=label, venue=venue, instrument=instrument, interval_ns=step,
                      records=records, file=file)


def _label(onset: int, end: int, *, series: str = "X", file: str = "f.csv",
           resolution: int = H, name: str = "inc") -> inc.Label:
    return inc.Label(file=file, name=name, series=series, onset="", end="", resolution="1h",
                     onset_ns=onset, end_ns=end, resolution_ns=resolution)


# ---------------------------------------------------------------------------- labels


def test_labels_parse_into_frozen_records_with_ns_times(tmp_path: Path) -> None:
    """``load_labels`` reads each ``[[incident]]`` with its times in ns (UTC) and its
    resolution as a duration; the records are frozen and the optional rule is kept."""
    path = _write(tmp_path, "labels.toml", """
[[incident]]
file = "a.csv"
name = "crash"
series = "BTCUSDT"
onset = "2025-10-10T20:50:00Z"
end = "2025-10-12T00:00:00Z"
resolution = "5m"

[[incident]]
file = "b.csv"
name = "stale"
series = "BTCUSDT bid side"
onset = "2025-10-10T15:30:42Z"
end = "2025-10-11T00:00:00Z"
resolution = "30s"
rule = "first repeat"
""")
    labels = inc.load_labels(path)
    assert [lb.name for lb in labels] == ["crash", "stale"]
    a, b = labels
    assert a.onset_ns == 1_760_129_400 * NS
    assert a.end_ns == 1_760_227_200 * NS
    assert a.resolution_ns == 300 * NS
    assert b.resolution_ns == 30 * NS and b.rule == "first repeat" and a.rule is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "x"  # type: ignore[misc]


def test_label_keys_follow_each_files_venue_rule() -> None:
    """Each label maps to the ``venue/instrument`` key its file's loader gives the series."""
    def key(file: str, series: str) -> str:
        return inc.label_key(_label(0, 1, file=file, series=series))

    assert key("binance_cm_BTCUSD_PERP_1m_priceklines_x.csv", "BTCUSD_PERP") == \
        "binance/BTCUSD_PERP"
    assert key("binance_usdm_perp_1h_windows_x.csv", "FTTUSDT") == "binance_usdm/FTTUSDT"
    assert key("crossvenue_x.csv", "binance_spot:BTCUSDT") == "binance_spot/BTCUSDT"
    assert key("deribit_DVOL_x.csv", "DVOL ETH") == "deribit/DVOL-ETH"
    assert key("binance_um_BTCUSDT_bookDepth_x.csv", "BTCUSDT bid side") == \
        key("binance_um_BTCUSDT_bookDepth_x.csv", "BTCUSDT ask side") == "binance_um/BTCUSDT"


# ---------------------------------------------------------------------------- loaders


def test_price_klines_become_price_only_bars_and_bad_rows_are_reported(tmp_path: Path) -> None:
    """A 12-column kline CSV with header: one ``Bar`` per row closing at ``close_time + 1 ms``,
    price-only; a row with high below low, a short row and a duplicate start are reported
    with their line numbers, not raised."""
    path = _write(tmp_path, "binance_cm_BTCUSD_PERP_1m_priceklines_t.csv", KLINE_HEADER
                  + "1759968060000,101,102,100,101.5,0,1759968119999,0,60,0,0,0\n"
                  + "1759968000000,100,101,99,101,0,1759968059999,0,60,0,0,0\n"
                  + "1759968120000,101,99,100,101,0,1759968179999,0,60,0,0,0\n"
                  + "1759968180000,101,102\n"
                  + "1759968060000,101,102,100,101.5,0,1759968119999,0,60,0,0,0\n")
    res = inc.load_file(path)
    (s,) = res.series
    assert (s.label, s.venue, s.instrument, s.key) == \
        ("BTCUSD_PERP", "binance", "BTCUSD_PERP", "binance/BTCUSD_PERP")
    assert s.interval_ns == 60 * NS
    assert [b.start for b in s.records] == [1759968000000 * 10**6, 1759968060000 * 10**6]
    first = s.records[0]
    assert first.ts == first.start + 60 * NS and first.price_only and first.volume == 0.0
    assert first.id == "binance_cm_BTCUSD_PERP_1m_priceklines_t@3"
    assert first.trades is None
    assert [(b.line, b.file) for b in res.bad_rows] == [(4, path.name), (5, path.name),
                                                          (6, path.name)]
    assert "high" in res.bad_rows[0].reason and "duplicate" in res.bad_rows[2].reason


def test_headerless_klines_with_volume_keep_the_trade_fields(tmp_path: Path) -> None:
    """The header-less kline variant loads too; with ``price_only=False`` the volume,
    quote volume, count and taker volume are kept; a non-number is a bad row."""
    path = _write(tmp_path, "k.csv",
                  "1759276800000,10,11,9,10.5,3.5,1759277099999,36.0,7,1.5,15,0\n"
                  "1759277100000,10.5,x,9,10.5,3.5,1759277399999,36.0,7,1.5,15,0\n")
    res = inc.load_price_klines(path, venue="binance_spot", instrument="BTCUSDT",
                                price_only=False)
    (bar,) = res.series[0].records
    assert not bar.price_only and bar.interval_ns == 300 * NS
    assert (bar.volume, bar.quote_volume, bar.trades, bar.taker_buy_volume) == (3.5, 36.0, 7, 1.5)
    assert [(b.line, "high" in b.reason) for b in res.bad_rows] == [(2, True)]


def test_usdm_windows_give_one_series_per_symbol_across_windows(tmp_path: Path) -> None:
    """The USDT-M file: one series per symbol labelled by the plain symbol, hourly bars
    with volume, windows left as gaps; a row whose datetime_utc disagrees with its
    timestamp is a bad row."""
    head = "window,symbol,timestamp_ms,open,high,low,close,volume,datetime_utc\n"
    path = _write(tmp_path, "binance_usdm_perp_1h_windows_t.csv", head
                  + "w1,BTCUSDT,1654041600000,10,11,9,10,5,2022-06-01 00:00:00\n"
                  + "w1,BTCUSDT,1654045200000,10,11,9,10,5,2022-06-01 01:00:00\n"
                  + "w1,ETHUSDT,1654041600000,1,1.1,0.9,1,50,2022-06-01 00:00:00\n"
                  + "w1,ETHUSDT,1654045200000,1,1.1,0.9,1,50,2022-06-01 05:00:00\n"
                  + "w2,BTCUSDT,1666656000000,20,21,19,20,6,2022-10-25 00:00:00\n")
    res = inc.load_file(path)
    by = {s.label: s for s in res.series}
    assert set(by) == {"BTCUSDT", "ETHUSDT"}
    btc = by["BTCUSDT"]
    assert btc.key == "binance_usdm/BTCUSDT" and btc.interval_ns == H
    assert [b.volume for b in btc.records] == [5, 5, 6]
    assert not btc.records[0].price_only
    assert btc.records[2].start == 1666656000000 * 10**6
    assert len(by["ETHUSDT"].records) == 1
    assert [(b.line, "disagrees" in b.reason) for b in res.bad_rows] == [(5, True)]


def test_crossvenue_series_are_keyed_by_the_venue_column(tmp_path: Path) -> None:
    """The cross-venue file: one series per venue and symbol, labelled ``venue:symbol``,
    keyed ``venue/symbol``; a venue name outside the name pattern is a bad row."""
    head = "venue,symbol,timestamp_s,datetime_utc,open,high,low,close,volume_base\n"
    path = _write(tmp_path, "crossvenue_t.csv", head
                  + "binance_spot,BTCUSDT,1583020800,2020-03-01 00:00:00,8,9,7,8.5,1.5\n"
                  + "kraken,XBTUSD,1583020800,2020-03-01 00:00:00,8,9,7,8.5,2.5\n"
                  + "kra ken,XBTUSD,1583024400,2020-03-01 01:00:00,8,9,7,8.5,2.5\n")
    res = inc.load_file(path)
    assert [(s.label, s.key) for s in res.series] == [
        ("binance_spot:BTCUSDT", "binance_spot/BTCUSDT"), ("kraken:XBTUSD", "kraken/XBTUSD")]
    assert res.series[1].records[0].volume == 2.5
    assert res.series[1].records[0].ts == (1583020800 + 3600) * NS
    assert [b.line for b in res.bad_rows] == [4]


def test_dvol_rows_become_daily_price_only_bars(tmp_path: Path) -> None:
    """DVOL: one daily price-only bar per date and symbol, ``deribit/DVOL-BTC`` labelled
    ``"DVOL BTC"``, closing at the next midnight; a malformed date is a bad row."""
    path = _write(tmp_path, "deribit_DVOL_t.csv", "date,symbol,open,high,low,close\n"
                  "2021-03-24,BTC,84.8,95.94,80.52,95.04\n"
                  "2021-03-24,ETH,94.18,106.94,92.67,106.73\n"
                  "2021/03/25,BTC,95.03,97.43,87.25,89.74\n")
    res = inc.load_file(path)
    btc, eth = res.series
    assert (btc.label, btc.key, eth.label) == ("DVOL BTC", "deribit/DVOL-BTC", "DVOL ETH")
    (bar,) = btc.records
    assert bar.price_only and bar.interval_ns == D
    assert bar.measure is Measure.VOLATILITY  # an implied-volatility index, not a price
    assert bar.start == inc.parse_utc("2021-03-24T00:00:00Z") and bar.ts == bar.start + D
    assert [b.line for b in res.bad_rows] == [4]


def test_book_depth_groups_snapshots_and_skips_incomplete_ones(tmp_path: Path) -> None:
    """bookDepth: the rows of one timestamp (a leading space ignored) make one
    ``BookDepth`` with bands 1..5, bid depths from -1..-5, ask depths from 1..5 and mid the
    mean of the ±1 % weighted prices; a snapshot missing a row is skipped with its rows
    reported, and so is one whose row has a bad number."""
    lines = ["timestamp,percentage,depth,notional,weighted_avg_price"]
    for t, factor in (("2025-10-10 00:00:07", 1.0), ("2025-10-10 00:00:37", 2.0),
                      ("2025-10-10 00:01:07", 3.0), ("2025-10-10 00:01:37", 4.0)):
        for p in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5):
            ts = f" {t}" if (factor == 2.0 and p == -4) else t
            lines.append(f"{ts},{p},{abs(p) * 10 * factor},0,{100 + p}")
    lines.pop(len(lines) - 10)  # the last snapshot loses its -5 row ...
    bad_idx = 1 + 2 * 10 + 9  # ... and the third's +5 depth is not a number
    lines[bad_idx] = lines[bad_idx].replace(",150.0,", ",n/a,")
    res = inc.load_file(_write(tmp_path, "binance_um_BTCUSDT_bookDepth_t.csv",
                               "\n".join(lines) + "\n"))
    (s,) = res.series
    assert (s.label, s.aliases, s.key) == ("BTCUSDT bid side", ("BTCUSDT ask side",),
                                           "binance_um/BTCUSDT")
    assert len(s.records) == 2
    first, second = s.records
    assert isinstance(first, BookDepth)
    assert first.bands_pct == [1, 2, 3, 4, 5]
    assert first.bid_depth == [10, 20, 30, 40, 50] and first.ask_depth == [10, 20, 30, 40, 50]
    assert first.mid == pytest.approx(100.0)
    assert first.ts == inc.parse_utc("2025-10-10T00:00:07Z")
    assert second.bid_depth[3] == 80.0  # the leading-space row landed in its snapshot
    assert second.id == "binance_um_BTCUSDT_bookDepth_t@12"
    assert s.interval_ns == 30 * NS
    (number,) = [b for b in res.bad_rows if "not a number" in b.reason]
    assert number.line == bad_idx + 1
    skipped = sorted(b.line for b in res.bad_rows if "skipped" in b.reason)
    # the other 9 rows of the third snapshot, and the 9 rows of the last
    assert skipped == [*range(22, 31), *range(32, 41)]
    assert len(res.bad_rows) == 19


def test_a_file_without_the_needed_columns_is_reported_not_raised(tmp_path: Path) -> None:
    """A header without the required columns gives no series and one bad row at line 1."""
    res = inc.load_crossvenue(_write(tmp_path, "crossvenue_t.csv", "a,b\n1,2\n"))
    assert res.series == []
    assert [(b.line, "lacks" in b.reason) for b in res.bad_rows] == [(1, True)]


# ---------------------------------------------------------------------------- calm time


def test_calm_days_exclude_the_day_before_onset_to_end_and_gaps() -> None:
    """Ten days of hourly bars with a one-day gap and one incident on day 5 to 6: calm is
    the nine covered days minus [onset - 1 day, end), 7 days; ``is_calm`` agrees, and a
    time outside the data is not calm."""
    bars = [b for b in _bars(240) if not DAY0 + 8 * D <= b.start < DAY0 + 9 * D]
    s = _series(bars)
    lb = _label(DAY0 + 5 * D, DAY0 + 6 * D)
    other = _label(DAY0 + 2 * D, DAY0 + 3 * D, series="Y")  # another series' incident
    assert inc.calm_days(s, [lb, other]) == pytest.approx(7.0)
    assert inc.calm_days(s, []) == pytest.approx(9.0)
    assert inc.is_calm(s, DAY0 + 2 * D, [lb, other])
    assert not inc.is_calm(s, DAY0 + 4 * D, [lb])  # the day before onset
    assert not inc.is_calm(s, DAY0 + 5 * D + H, [lb])
    assert inc.is_calm(s, DAY0 + 6 * D, [lb])  # the window's end is calm again
    assert not inc.is_calm(s, DAY0 + 8 * D + H, [lb])  # the gap
    assert not inc.is_calm(s, DAY0 - H, [lb])  # before the data


def test_overlapping_incident_windows_are_not_subtracted_twice() -> None:
    """Two overlapping incidents of one series exclude their union only."""
    s = _series(_bars(240))
    labels = [_label(DAY0 + 5 * D, DAY0 + 6 * D), _label(DAY0 + 5 * D + 12 * H, DAY0 + 7 * D)]
    assert inc.calm_days(s, labels) == pytest.approx(7.0)


# ---------------------------------------------------------------------------- metrics


def test_detection_delay_takes_the_first_critical_from_one_bar_before_onset() -> None:
    """Delay to the first critical episode of the incident's key opened in
    [onset - one bar, end): earlier ones, warnings, other keys and later ones do not count."""
    onset, end = DAY0 + 5 * D, DAY0 + 6 * D
    lb = _label(onset, end, file="crossvenue_t.csv", series="kraken:XBTUSD")
    key = "kraken/XBTUSD"
    eps = [(key, onset - 2 * H, "critical"), (key, onset + H, "warn"),
           ("gemini/BTCUSD", onset, "critical"), (key, onset + 3 * H, "critical"),
           (key, end + H, "critical")]
    assert inc.incident_delays(lb, eps).detect_ns == 3 * H
    assert inc.incident_delays(lb, [*eps, (key, onset - H, "critical")]).detect_min == -60.0
    assert inc.incident_delays(lb, eps[:3]).detect_ns is None


def test_mitigation_delay_is_the_first_protective_command_covering_the_key() -> None:
    """The first command at or after onset whose action mitigates (not alert or resume) and
    whose target covers the key (the key, its venue, a scope label or firm-wide)."""
    onset, end = DAY0 + 5 * D, DAY0 + 6 * D
    lb = _label(onset, end, file="crossvenue_t.csv", series="kraken:XBTUSD")
    cmds = [("kraken/XBTUSD", onset - 1, "halt_trading"), ("kraken", onset + 1, "alert"),
            ("gemini", onset + 2, "reduce_only"), ("instrument:kraken/XBTUSD", onset + 9,
                                                   "cancel_all"),
            ("venue:kraken", onset + 5, "reduce_only")]
    assert inc.incident_delays(lb, [], cmds).mitigate_ns == 5
    assert inc.incident_delays(lb, [], [*cmds, ("*", onset + 4, "halt_trading")]
                               ).mitigate_ns == 4
    assert inc.incident_delays(lb, [], cmds[:3]).mitigate_ns is None
    assert inc.command_applies("firm:*", "kraken/XBTUSD")
    assert inc.command_applies("instrument:XBTUSD", "kraken/XBTUSD")
    assert not inc.command_applies("venue:gemini", "kraken/XBTUSD")


def test_false_alarms_count_calm_critical_episodes_per_calm_day() -> None:
    """False episodes are critical episodes opened in calm time; the figure per series is
    episodes over calm days and over all series the sum over the sum."""
    a = _series(_bars(240, venue="v", instrument="A"), label="A", instrument="A")
    b = _series(_bars(48, venue="v", instrument="B"), label="B", instrument="B")
    labels = [_label(DAY0 + 5 * D, DAY0 + 6 * D, series="A")]
    eps = [("v/A", DAY0 + D, "critical"), ("v/A", DAY0 + D + H, "warn"),
           ("v/A", DAY0 + 4 * D + H, "critical"),  # the excluded day before onset
           ("v/A", DAY0 + 5 * D + H, "critical"),  # the incident
           ("v/A", DAY0 + 7 * D, "critical"),
           ("v/B", DAY0 + H, "critical"), ("v/B", DAY0 + 9 * D, "critical")]  # after B's data
    fa = inc.false_alarms([a, b], labels, eps)
    assert fa.per_series == {"f.csv|A": (2, pytest.approx(8.0)), "f.csv|B": (1, 2.0)}
    assert fa.series_rate("f.csv|A") == pytest.approx(0.25)
    assert fa.rate == pytest.approx(3 / 10)


def test_no_calm_time_gives_no_rate() -> None:
    """A series whose whole span is excluded has no false-alarm rate rather than a division
    by zero."""
    s = _series(_bars(24))
    fa = inc.false_alarms([s], [_label(DAY0 + 10 * H, DAY0 + D)], [("v/X", DAY0 + H, "critical")])
    assert fa.per_series == {"f.csv|X": (0, 0.0)} and fa.rate is None


# ---------------------------------------------------------------------------- baselines


def test_episode_grouper_opens_on_alarm_and_closes_after_five_quiet_points() -> None:
    """An alarm opens an episode unless one is open; five quiet points in a row close it."""
    g = inc.EpisodeGrouper("k")
    for i, alarm in enumerate([1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]):
        g.feed(i, bool(alarm))
    assert g.episodes == [("k", 0, "critical"), ("k", 9, "critical")]


def _noisy_closes(n: int, jump_at: int | None = None) -> list[float]:
    closes, c = [], 100.0
    for i in range(n):
        c *= math.exp(0.001 * math.sin(i * 1.7) + 0.0005 * math.cos(i * 0.3))
        if i == jump_at:
            c *= 0.9
        closes.append(c)
    return closes


def test_zscore_flags_a_jump_after_warm_up_only() -> None:
    """The z-score baseline opens one critical episode at a 10 % drop after warm-up, and
    none for the same drop inside the first 60 bars."""
    late = _series(_bars(200, closes=_noisy_closes(200, jump_at=150)))
    assert inc.zscore_episodes(late) == [("v/X", late.records[150].ts, "critical")]
    early = _series(_bars(200, closes=_noisy_closes(200, jump_at=30)))
    assert inc.zscore_episodes(early) == []


def test_zscore_on_book_depth_alarms_on_a_bid_depth_collapse() -> None:
    """On book depth, the -1 % bid depth's log change is an alarm source of its own."""
    recs = []
    for i in range(120):
        bid = 1000.0 * (1 + 0.01 * math.sin(i)) if i < 100 else 17.0
        recs.append(BookDepth(id=f"d@{i}", venue="v", instrument="X", ts=DAY0 + i * 30 * NS,
                              bands_pct=[1.0], bid_depth=[bid],
                              ask_depth=[1000.0 * (1 + 0.01 * math.cos(i))], mid=100.0))
    s = _series(recs, step=30 * NS)
    assert inc.zscore_episodes(s) == [("v/X", recs[100].ts, "critical")]


def test_the_onset_rule_alarms_on_a_low_five_percent_below_the_previous_close() -> None:
    """Day 1 closes at 100; on day 2 a low of 95.1 (a 4.9 % fall) is quiet and the next
    bar's 94.9 alarms; a volatility index gives no episodes."""
    closes = [100.0] * 24 + [95.2, 95.0, 95.0] + [95.0] * 10
    bars = _bars(len(closes), closes=closes)
    assert (bars[24].low, bars[25].low) == (pytest.approx(95.1048), pytest.approx(94.905))
    assert inc.onset_rule_episodes(_series(bars)) == [("v/X", bars[25].ts, "critical")]
    vol = [msgspec.structs.replace(b, measure=Measure.VOLATILITY) for b in bars]
    assert inc.onset_rule_episodes(_series(vol)) == []


def test_zscore_gives_no_return_across_a_gap() -> None:
    """A bar that does not start where the previous closed gives no return, so a price
    move across a gap raises nothing."""
    closes = _noisy_closes(200)
    bars = _bars(200, closes=closes)
    shifted = bars[:150]
    for b in bars[150:]:
        shifted.append(Bar(id=b.id, venue=b.venue, instrument=b.instrument, ts=b.ts + D,
                           start=b.start + D, interval_ns=b.interval_ns, open=b.open * 0.8,
                           high=b.high * 0.8, low=b.low * 0.8, close=b.close * 0.8))
    assert inc.zscore_episodes(_series(shifted)) == []


def test_hst_baseline_gives_critical_episodes_only_after_warm_up() -> None:
    """The HalfSpaceTrees baseline's episodes are critical and none opens in the first 60
    bars: with a cut-off every score passes (HalfSpaceTrees scores 0 in its first window),
    the one episode opens at bar 61 and stays open; with a cut-off none passes, none opens."""
    s = _series(_bars(300, closes=_noisy_closes(300)))
    assert inc.hst_episodes(s, threshold=-1.0) == [("v/X", s.records[60].ts, "critical")]
    assert inc.hst_episodes(s, threshold=1.0) == []
    eps = inc.hst_episodes(s)
    assert eps and all(sev == "critical" and ts > s.records[59].ts for _, ts, sev in eps)


def test_format_table_shows_missed_delays_and_rates() -> None:
    """``format_table`` writes a missed detection as ``missed`` and rates to 3 decimals."""
    rows = [{"kind": "delay_min", "file": "f.csv", "name": "crash", "series": "X", "key": "v/X",
             "zscore": 5.0, "hst": None},
            {"kind": "false_per_day", "file": "(all files)", "name": "", "series": "(all)",
             "key": "", "zscore": 0.25, "hst": None}]
    text = inc.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["zscore", "hst"]
    assert lines[1].split()[-2:] == ["5", "missed"]
    assert lines[2].split()[-2:] == ["0.250", "-"]


def test_module_docstring_examples_run() -> None:
    """The module's >>> examples produce the output they show."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in doctest.DocTestFinder(exclude_empty=True).find(inc, "incidents"):
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def _move(ts: int, phase: str, severity: str, episode: str = "k#move1") -> object:
    from riskguard.schemas import AnomalySignal, Scope, ScopeKind, Severity

    return AnomalySignal(id=f"{episode}-{ts}-{phase}", kind="price_move", phase=phase,
                         key="v/X", scope=Scope(kind=ScopeKind.INSTRUMENT, value="X",
                                                venue="v"),
                         ts=ts, score=2.0, threshold=1.0, severity=Severity(severity),
                         episode_id=episode, model="MoveBands", model_version="1")


def test_a_deescalated_episode_is_two_critical_stretches_and_one_episode() -> None:
    """The real-data bench: critical time ends where an episode de-escalates and starts
    again where it rises back, but the false-episode count takes the episode once."""
    real = _bench_module("detection_real")
    signals = [_move(10, "open", "critical"), _move(20, "deescalate", "warn"),
               _move(30, "escalate", "critical"), _move(40, "close", "critical"),
               _move(50, "open", "critical", "k#move2")]
    assert real.critical_spans(signals) == [("v/X", 10, 20), ("v/X", 30, 40),
                                            ("v/X", 50, None)]
    assert real.critical_episodes(signals) == [("v/X", 10, "critical"),
                                               ("v/X", 50, "critical")]


# ---------------------------------------------------------------------------- real data


def test_every_label_loads_a_series_spanning_its_onset() -> None:
    """On the real incident files: no row is bad, and every label's series loads, has the
    label's key, and has records before and after its onset."""
    reason = shared_data.missing_reason(shared_data.incidents_dir())
    if reason:
        pytest.skip(reason)
    labels = inc.load_labels()
    loaded = inc.load_all()
    assert loaded.bad_rows == []
    assert len({rec.id for s in loaded.series for rec in s.records}) == \
        sum(len(s.records) for s in loaded.series)
    for lb in labels:
        s = loaded.find(lb.file, lb.series)
        assert s is not None, lb
        assert s.key == inc.label_key(lb)
        assert s.records[0].ts <= lb.onset_ns < s.records[-1].ts, lb
        assert all(a.ts < b.ts for a, b in zip(s.records, s.records[1:], strict=False))


def _own_labelled_folder(folder: Path) -> None:
    """Three days of a desk's own 5-minute bars (venue, symbol, timestamp_s, ...), calm
    until a 15 % fall in ten minutes, and a ``labels.toml`` naming that incident."""
    import random
    from datetime import UTC, datetime

    rng = random.Random(2)
    t0 = 1_700_006_400  # 2023-11-15 00:00 UTC
    rows = ["venue,symbol,timestamp_s,datetime_utc,open,high,low,close,volume_base"]
    p = 100.0
    for i in range(3 * 288):
        o = p
        p *= math.exp(rng.gauss(0.0, 0.001) + (-0.08 if i in (700, 701) else 0.0))
        t = t0 + i * 300
        when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"desk,COINUSDT,{t},{when},{o},{max(o, p)},{min(o, p)},{p},10")
    (folder / "desk_coin_5m.csv").write_text("\n".join(rows) + "\n")
    onset = datetime.fromtimestamp(t0 + 700 * 300, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = datetime.fromtimestamp(t0 + 800 * 300, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (folder / "labels.toml").write_text(
        f'[[incident]]\nfile = "desk_coin_5m.csv"\nname = "my_crash"\n'
        f'series = "desk:COINUSDT"\nonset = "{onset}"\nend = "{end}"\nresolution = "5m"\n')


def test_the_real_data_bench_reads_a_desks_own_labelled_folder(tmp_path: Path) -> None:
    """``bench/detection_real.py --data DIR`` on a folder of one's own: a venue table of
    5-minute bars and its labels. The crash is critical and mitigated on its bar, and the
    false-alarm table has one row, for 5-minute bars, with the onset rule and both
    baselines beside the guard's detectors."""
    real = _bench_module("detection_real")
    _own_labelled_folder(tmp_path)
    lines = real.incident_report(tmp_path)
    row = next(line for line in lines if line.startswith("my_crash"))
    assert row.split()[3:5] == ["5", "5"], row  # critical and reduce-only on the first bar
    assert any("within goal" in line and "1 of 1" in line for line in lines)
    versus = next(i for i, line in enumerate(lines) if "against the z-score at each" in line)
    assert lines[versus + 1].startswith("    5m: guard sooner on "), lines[versus + 1]
    header = next(i for i, line in enumerate(lines) if "by bar resolution" in line)
    assert lines[header + 1].split()[:3] == ["bar", "days", "guard"]
    assert "onset rule" in lines[header + 1] and "zscore" in lines[header + 1]
    assert lines[header + 2].split()[0] == "5m"
    assert lines[header + 3].startswith("price_move's false critical episodes by the rule")
    assert lines[header + 4].split()[:3] == ["5m", "fast_fall", "0,"], lines[header + 4]
    assert lines[header + 5].startswith("false critical episodes per calm instrument-day, by")
