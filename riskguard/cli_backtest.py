"""``riskguard backtest``: replay files through the guard core, write reports."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from riskguard.cli_args import positive_int
from riskguard.config import no_rules_note
from riskguard.connectors.settings import debug_logging
from riskguard.errors import ConfigError, RiskguardError
from riskguard.progress import Progress


def add_format_options(p: argparse.ArgumentParser, formats: tuple[str, ...],
                       markets: tuple[str, ...]) -> None:
    """``--format``, ``--venue``, ``--instrument``, ``--market``, ``--contract-size``,
    ``--measure``: how to read data files (docs/formats.md); publish and backtest share
    them."""
    p.add_argument("--format", choices=formats, default="auto", metavar="FORMAT",
                   help="file format: auto (from each file's name and header; the default), "
                   "jsonl, binance_<kind>, tardis_<kind> or ohlcv_csv; the list: "
                   "docs/formats.md")
    p.add_argument("--venue", default="file",
                   help="venue name for CSV rows (default: from a Binance file's name; a "
                   "Tardis row's exchange; an OHLCV row's venue, else a CryptoDataDownload "
                   "name's exchange: Binance_ETHUSDT_1h.csv)")
    p.add_argument("--instrument", default="unknown",
                   help="instrument name for CSV rows (default: from a Binance file's name; "
                   "an OHLCV file's symbol column)")
    p.add_argument("--market", choices=markets, default="auto",
                   help="Binance market: spot, um (USDT-M), cm (COIN-M); default: from the "
                   "file's name, folders and header")
    p.add_argument("--contract-size", type=float, default=None, metavar="USD",
                   help="USD per COIN-M contract (default: 100 for BTC, 10 for others)")
    p.add_argument("--measure", choices=("price", "volatility"), default="price",
                   help="what an OHLCV file's bars measure where its rows do not say: "
                   "prices (the default) or a volatility index")


def count_lines(paths: list[str]) -> int | None:
    """Rows in ``paths`` (a progress bar's total), or None if one cannot be read or is
    compressed (counting it would read it twice)."""
    from riskguard.connectors.formats.core import is_compressed  # noqa: PLC0415

    try:
        n = 0
        for p in paths:
            if is_compressed(p):
                return None
            with Path(p).open("rb") as fh:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return n
    except OSError:
        return None  # the backtest itself reports the file


def with_sample(args: argparse.Namespace, prog: str, cfg: Any = None) -> None:
    """``--sample``: the shipped sample data (and its labels, unless ``--labels``); a
    config (``cfg``) whose instruments the sample does not cover is refused, naming them."""
    if args.sample:
        from riskguard.dataflows.sample_data import (  # noqa: PLC0415
            check_covers,
            sample_files,
        )

        if cfg is not None:
            check_covers(cfg, "--sample")
        data, labels = sample_files()
        args.data = [*(args.data or []), str(data)]
        args.labels = args.labels or str(labels)
    if not args.data:
        raise ConfigError(f"{prog} --data", "files to replay, or --sample (the shipped "
                          "sample data)", "neither")


def _backtest(args: argparse.Namespace) -> int:
    from riskguard.cli import STARTED, one_line  # noqa: PLC0415  (imports this module)
    from riskguard.cli_run import innermost, without_panic_reports  # noqa: PLC0415
    from riskguard.dataflows.backtest import backtest_files  # noqa: PLC0415  (heavy imports)
    from riskguard.dataflows.guard import load_guard_config  # noqa: PLC0415

    loaded = load_guard_config(args.config)
    with_sample(args, "backtest", loaded[0])
    debug = debug_logging()
    try:
        with (without_panic_reports(not debug),
              Progress("backtest", total=count_lines(args.data), unit="events") as bar):
            rep = backtest_files(loaded, args.data, labels=args.labels, out_dir=args.out,
                                 venue=args.venue, instrument=args.instrument,
                                 batch_size=args.batch_size, fmt=args.format,
                                 market=args.market, contract_size=args.contract_size,
                                 measure=args.measure,
                                 progress=(lambda _rec: bar.advance()) if bar.enabled
                                 else None)
    except Exception as err:
        cause = innermost(err)
        if cause is err or isinstance(cause, (RiskguardError, KeyboardInterrupt)):
            raise cause from None  # one line, as every command error
        if debug:
            traceback.print_exception(err, file=sys.stderr)
        sys.stderr.write(one_line(f"riskguard backtest: the dataflow stopped: "
                                  f"{type(cause).__name__}: {cause}") + "\n")
        return 1
    for line in result_lines(rep, time.perf_counter() - STARTED):
        sys.stdout.write(line + "\n")
    if not loaded[0].playbook.rules:
        sys.stdout.write(no_rules_note() + "\n")
    out = Path(args.out)
    sys.stdout.write(f"report: {out / 'report.html'}, {out / 'report.json'}; commands: "
                     f"{out / 'commands.jsonl'}\n")
    return 0


def result_lines(rep: dict[str, Any], total_s: float) -> list[str]:
    """What a backtest says when it ends: counts, the scores (or that there are none),
    the commands, how its time went, and which detectors could fire."""
    s, run = rep["summary"], rep["run"]
    out = [f"events {s['events']:,}  instruments {s['instruments']}  commands {s['commands']}  "
           f"signals {s['signals']}  dead letters {s['dead_letters']}"]
    if rep["labelled"]:
        ep, dd = rep["episodes"]["all"], rep["detection_delay_s"]
        out.append(f"incidents {ep['labels']}  detected {ep['detected']}  precision "
                   f"{ep['precision']}  recall {ep['recall']}  F1 {ep['f1']}  delay p50 "
                   f"{dd['p50']} s p95 {dd['p95']} s")
    else:
        out.append(f"alarms {s['alarms']} unlabelled: without --labels no alarm is counted "
                   "true or false (docs/backtests.md says how to label incidents)")
    out.extend(f"  {action:<20} {n}" for action, n in rep["commands"]["by_action"].items())
    rate = run["events_per_s"]
    out.append(f"time {total_s:.1f} s: processing {run['process_s']:.1f} s"
               f"{f' ({rate:,.0f} events/s)' if rate else ''}; the rest start-up (imports, "
               "config, keys, the flow) and the report")
    if rep.get("readiness"):
        out.extend(rep["readiness"]["lines"])
    return out


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser("backtest", help="replay historical files through the guard, report")
    p.add_argument("--config", required=True,
                   help="guard TOML config (its [keys] signing_key signs the commands)")
    p.add_argument("--data", nargs="+",
                   help="JSONL (wire contract), Binance public data dumps, Tardis.dev CSVs "
                   "or OHLCV CSV files; plain, .gz or .zip (docs/formats.md)")
    p.add_argument("--sample", action="store_true",
                   help="replay the sample data shipped with riskguard (five minutes, three "
                   "labelled incidents; its labels unless --labels)")
    p.add_argument("--labels", help="labels: a JSON file ({\"incidents\": [{kind, scope, start, "
                   "end}]}), or an incidents TOML file ([[incident]] file, name, series, "
                   "onset, end)")
    p.add_argument("--out", required=True, help="output directory")
    from riskguard.connectors.formats import FORMATS, MARKETS  # noqa: PLC0415

    add_format_options(p, FORMATS, MARKETS)
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="input batch (the event clock's resolution); default 100")
    p.set_defaults(func=_backtest)
