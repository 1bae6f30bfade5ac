"""``riskguard backtest``: replay files through the guard core, write reports."""

from __future__ import annotations

import argparse
import sys


def _backtest(args: argparse.Namespace) -> int:
    from riskguard.dataflows.backtest import backtest_files  # noqa: PLC0415  (heavy imports)

    rep = backtest_files(args.config, args.data, labels=args.labels, out_dir=args.out,
                         venue=args.venue, instrument=args.instrument,
                         batch_size=args.batch_size)
    s, ep = rep["summary"], rep["episodes"]["all"]
    dd = rep["detection_delay_s"]
    out = sys.stdout
    out.write(f"events {s['events']:,}  commands {s['commands']}  signals {s['signals']}  "
              f"dead letters {s['dead_letters']}  ({rep['run']['events_per_s']} events/s)\n")
    if s["labels"]:
        out.write(f"incidents {ep['labels']}  detected {ep['detected']}  precision "
                  f"{ep['precision']}  recall {ep['recall']}  F1 {ep['f1']}  delay p50 "
                  f"{dd['p50']} s p95 {dd['p95']} s\n")
    for action, n in rep["commands"]["by_action"].items():
        out.write(f"  {action:<20} {n}\n")
    out.write(f"report: {args.out}/report.html, {args.out}/report.json; commands: "
              f"{args.out}/commands.jsonl\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser("backtest", help="replay historical files through the guard, report")
    p.add_argument("--config", required=True, help="guard TOML config (its [keys] sign)")
    p.add_argument("--data", nargs="+", required=True,
                   help="JSONL (wire contract) or Binance kline/trade/funding CSV files")
    p.add_argument("--labels", help="labels JSON: {\"incidents\": [{kind, scope, start, end}]}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--venue", default="file", help="venue name for CSV rows")
    p.add_argument("--instrument", default="unknown", help="instrument name for CSV rows")
    p.add_argument("--batch-size", type=int, default=100,
                   help="input batch (the event clock's resolution); default 100")
    p.set_defaults(func=_backtest)
