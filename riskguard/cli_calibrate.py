"""``riskguard calibrate``: choose thresholds on labelled history (time-ordered splits).

One shot writes ``calibrated.toml`` and ``calibration.json``. With ``--every``
it reruns over the latest ``--window`` of the data on a schedule and writes
proposals only: a calibrated config per round and LimitUpdate envelopes
signed by the ``limit-admin`` key. It never changes a running flow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from riskguard.cli_args import positive_int, seconds
from riskguard.errors import ConfigError
from riskguard.progress import Progress

MAX_WINDOW_S = 100 * 366 * 86_400.0
"""The longest ``--window``: a century of data (more is no window)."""


def read_grid(text: str) -> Any:
    """``--grid``: inline JSON (a value starting with ``{``) or the path of a JSON file.

    >>> read_grid('{"detector.warmup_events": [60, 300]}')
    {'detector.warmup_events': [60, 300]}
    """
    inline = text.lstrip().startswith("{")
    source = "--grid" if inline else f"--grid {text}"
    if inline:
        raw = text
    else:
        try:
            raw = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise ConfigError(source, "a readable JSON file, or inline JSON starting with {",
                              reason) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(source, "valid JSON", str(err)) from None


def dead_letter_note(rep: dict[str, Any]) -> str | None:
    """The warning line for the rows a calibration refused (dead letters), by reason;
    None when it refused none.

    >>> print(dead_letter_note({"dead_letters": {"count": 2, "rows": 10,
    ...                                          "by_reason": {"validation": 2}}}))
    riskguard calibrate: warning: 2 of 10 rows refused as dead letters (validation 2); ...
    """
    d = rep.get("dead_letters") or {}
    if not d.get("count"):
        return None
    reasons = ", ".join(f"{k} {v:,}" for k, v in d["by_reason"].items())
    return (f"riskguard calibrate: warning: {d['count']:,} of {d['rows']:,} rows refused as "
            f"dead letters ({reasons}); calibrated on the rest")


def _warn_dead_letters(rep: dict[str, Any]) -> None:
    note = dead_letter_note(rep)
    if note:
        sys.stderr.write(note + "\n")


def _calibrate(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except OSError as err:  # a data, labels or output file; one line, no traceback
        name = f" {err.filename}" if err.filename else ""
        raise ConfigError(f"calibrate{name}", "a readable file or writable directory",
                          err.strerror or str(err)) from None


def _run(args: argparse.Namespace) -> int:
    from riskguard.cli_backtest import with_sample  # noqa: PLC0415
    from riskguard.dataflows import calibrate as cal  # noqa: PLC0415  (heavy imports)

    if args.sample:
        from riskguard.dataflows.guard import load_guard_config  # noqa: PLC0415

        with_sample(args, "calibrate", load_guard_config(args.config)[0])
    else:
        with_sample(args, "calibrate")

    if args.objective == "recall" and args.fa_budget is None:
        sys.stderr.write("riskguard calibrate: --objective recall needs --fa-budget N (false "
                         "alarms per instrument-day): recall alone is won by alarming "
                         "all the time\n")
        return 2
    grid = cal.check_grid(read_grid(args.grid)) if args.grid else None
    kw = {"grid": grid, "train_frac": args.train_frac, "objective": args.objective,
          "fa_budget": args.fa_budget,
          "read": {"venue": args.venue, "instrument": args.instrument, "format": args.format,
                   "market": args.market, "contract_size": args.contract_size,
                   "measure": args.measure}}
    out = Path(args.out)
    if args.every is None:
        return _run_once(args, cal, grid, out, kw)
    if not args.admin_key or not args.window:
        sys.stderr.write("riskguard calibrate --every: needs --window and --admin-key\n")
        return 2

    def round_(i: int) -> None:
        rep = cal.propose(args.config, args.data, args.labels, out_dir=out,
                          admin_key=args.admin_key, window_s=args.window,
                          now_ns=time.time_ns(), iteration=i, **kw)
        _warn_dead_letters(rep)
        print(f"round {i}: thresholds {rep.get('chosen') or 'unchanged'}; "
              f"{rep['limit_updates']} signed limit update(s) -> {rep['limit_updates_file']}",
              flush=True)

    cal.run_every(args.every, args.iterations, round_)
    return 0


def _run_once(args: argparse.Namespace, cal: Any, grid: dict[str, list[Any]] | None,
              out: Path, kw: dict[str, Any]) -> int:
    """One calibration on labelled files, with a progress bar over its backtests."""
    if not args.labels:
        sys.stderr.write("riskguard calibrate: --labels is required (one-shot mode)\n")
        return 2
    runs = 1 + len(cal.expand_grid(grid if grid is not None else cal.DEFAULT_GRID)) + 2
    with Progress("calibrate", total=runs, unit="backtests") as bar:
        def runner(*a: Any, **k: Any) -> Any:
            res = cal.run_backtest(*a, **k)
            bar.advance()
            return res

        bar.update(0)
        rep = cal.calibrate_files(args.config, args.data, args.labels, out_dir=out,
                                  runner=runner, **kw)
    _warn_dead_letters(rep)
    _print_held_out(rep)
    print(f"wrote {out / 'calibrated.toml'} and {out / 'calibration.json'}")
    return 0


def _print_held_out(rep: dict[str, Any]) -> None:
    h = rep["held_out"]
    print(f"chosen {rep['chosen'] or 'the defaults'} (train {rep['train_records']:,} of "
          f"{rep['records']:,} records; split at {rep['split_ns']} ns)")
    for name in ("defaults", "chosen"):
        s = h[name]
        if s["f1"] is None:
            print(f"  held-out {name:<8} {s['note']}: no F1; false alarms/instrument-day "
                  f"{s['false_alarms_per_instrument_day']}")
            continue
        print(f"  held-out {name:<8} F1 {s['f1']}  precision {s['precision']}  recall "
              f"{s['recall']}  false alarms/instrument-day "
              f"{s['false_alarms_per_instrument_day']}")


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser("calibrate", help="calibrate thresholds on labelled history")
    p.add_argument("--config", required=True, help="guard TOML config")
    p.add_argument("--data", nargs="+", help="JSONL (wire contract), Binance public data "
                   "dumps, Tardis.dev CSVs or OHLCV CSV files; plain, .gz or .zip "
                   "(docs/formats.md)")
    p.add_argument("--sample", action="store_true",
                   help="calibrate on the sample data shipped with riskguard (and its "
                   "labels, unless --labels)")
    p.add_argument("--labels", help="labels: a JSON file of incident windows, or an "
                   "incidents TOML file ([[incident]] file, name, series, onset, end)")
    p.add_argument("--out", required=True, help="output directory")
    from riskguard.cli_backtest import add_format_options  # noqa: PLC0415
    from riskguard.connectors.formats import FORMATS, MARKETS  # noqa: PLC0415

    add_format_options(p, FORMATS, MARKETS)
    p.add_argument("--grid", metavar="FILE|JSON",
                   help="the values to try: a JSON file, or inline JSON starting with '{', "
                   "of dotted config keys to lists, e.g. "
                   "'{\"detector.target_alarm_rate\": [0.0002, 0.001]}' (keys are checked "
                   "against the guard config; default: a small built-in grid)")
    p.add_argument("--train-frac", type=float, default=0.7,
                   help="fraction of the time span used for the search (default 0.7)")
    p.add_argument("--objective", choices=("f1", "recall"), default="f1",
                   help="what the search maximises: f1 (default), or recall within "
                   "--fa-budget false alarms per instrument-day")
    p.add_argument("--fa-budget", type=float,
                   help="with --objective recall: max false alarms per instrument-day")
    p.add_argument("--every", type=seconds(), help="continuous: rerun every SECONDS")
    p.add_argument("--window", type=seconds(MAX_WINDOW_S),
                   help="continuous: latest SECONDS of the data")
    p.add_argument("--iterations", type=positive_int, help="continuous: stop after N rounds")
    p.add_argument("--admin-key", help="continuous: the limit-admin private key file")
    p.set_defaults(func=_calibrate)
