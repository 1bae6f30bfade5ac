"""The guard under junk keys: memory, speed and the real crash's commands with 0, 2,000
and 50,000 made-up instruments (or counterparties) arriving just before a real crash.

Method. The bundled ``flash_crash`` scenario (okx BTC-USDT falls 30 % in 5 minutes) runs
through the guard core as a backtest (``run_backtest``, event clock, one worker), once
clean and once per junk count, each in a fresh process so its memory is its own. Junk:
``--per-key`` trades (``--kind instruments``: made-up instruments ``JUNK-<n>`` on the
crash's venue, with prices jumping 20 % between trades) or fills (``--kind
counterparties``: made-up counterparties on the crash's venue) spread over the
``--before-s`` seconds before the crash's onset.

Per run:

- **memory**: the process's peak RSS, and its growth over the run (peak RSS minus the
  RSS once the input is built: the input list itself is not the guard's state);
- **wall**: the backtest's wall time;
- **crash commands**: every command the clean run issued on the crash's venue (its
  action and scope, first issue) is looked up in the junk run: *lost* if missing,
  else its *delay* (``issued_at``, event time, minus the clean run's);
- **junk commands**: commands on junk scopes; **dead letters** by reason (names past
  the admission caps are ``too_many_*``).

Ratios are to the clean run measured in the same invocation. ``--no-caps`` raises the
admission caps out of reach, to show what the guard does without them.

    python bench/junk_keys.py [--keys 0,2000,50000] [--kind instruments|counterparties]
                              [--per-key 2] [--before-s 10] [--no-caps]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, run_main
from riskguard.dataflows.backtest import backtest_flow, deep_merge
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.dataflows.stress import (
    generate_market,
    guard_config_doc,
    load_scenario,
    scenario_keys,
    scenario_path,
)
from riskguard.dataflows.stress_checks import NS, START_NS
from riskguard.operators.signing import decode_command
from riskguard.schemas import Fill, Side, Trade

from riskguard.toml_text import dump_toml

SCENARIO = "flash_crash"
CRASH_VENUE = "okx"
NO_CAPS = {"admission": {"max_venues": 1_000_000, "max_instruments_per_venue": 1_000_000,
                         "max_market_keys": 1_000_000, "max_counterparties": 1_000_000}}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Counting(StatelessSinkPartition[Any]):
    def __init__(self, reasons: dict[str, int]) -> None:
        self.reasons = reasons

    def write_batch(self, items: list[Any]) -> None:
        for d in items:
            self.reasons[d.reason] = self.reasons.get(d.reason, 0) + 1


class _Count(DynamicSink[Any]):
    """Counts dead letters by reason."""

    def __init__(self, reasons: dict[str, int]) -> None:
        self.reasons = reasons

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Counting:
        return _Counting(self.reasons)


def junk(kind: str, n: int, per_key: int, start_ns: int, span_ns: int,
         seed: int = 5) -> list[Any]:
    """``n`` made-up keys, ``per_key`` records each, spread over ``[start, start+span)``."""
    rnd = random.Random(seed)
    out: list[Any] = []
    total = max(1, n * per_key)
    for j in range(per_key):
        for i in range(n):
            ts = start_ns + (j * n + i) * span_ns // total
            if kind == "instruments":
                out.append(Trade(id=f"junk{j}-{i}", venue=CRASH_VENUE, instrument=f"JUNK-{i}",
                                 ts=ts, recv_ts=ts, price=100.0 * (1.2 if j % 2 else 1.0)
                                 * (1 + rnd.random() / 100), qty=1.0, side="buy"))
            else:
                out.append(Fill(id=f"junkfill{j}-{i}", venue=CRASH_VENUE,
                                counterparty=f"junk-cp{i}", instrument="BTC-USDT",
                                side=Side.BUY, qty=0.01, price=65_000.0, ts=ts, recv_ts=ts))
    return out


def child(n: int, kind: str, per_key: int, before_s: float, caps: bool) -> dict[str, Any]:
    sc = load_scenario(scenario_path(SCENARIO))
    recs = generate_market(sc)
    onset = START_NS + int(sc.shocks[0].onset_s * NS)
    if n:
        span = int(before_s * NS)
        recs = sorted([*recs, *junk(kind, n, per_key, onset - span, span)],
                      key=lambda r: r.ts)
    work = Path(tempfile.mkdtemp(prefix="junk-keys-"))
    doc = guard_config_doc(sc, scenario_keys(work), None)
    if not caps:
        doc = deep_merge(doc, NO_CAPS)
    (work / "guard.toml").write_text(dump_toml(doc))
    cfg, digest = load_guard_config(work / "guard.toml")
    signer, trust = load_keys(cfg)
    envs: list[Any] = []
    reasons: dict[str, int] = {}

    # dead letters are counted, not kept: a live guard writes them out
    flow = backtest_flow(cfg, digest, signer=signer, trust=trust, records=recs,
                         batch_size=20, sinks={"commands": TestingSink(envs),
                                               "dead_letters": _Count(reasons)})
    rss0 = _rss_kb()
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cmds = [(c.action.value, c.scope.label(), c.issued_at)
            for c in map(decode_command, envs)]
    return {"n": n, "records": len(recs), "wall_s": wall, "peak_rss_mb": peak / 1024,
            "growth_mb": (peak - rss0) / 1024, "commands": cmds, "dead_letters": reasons}


def _first(cmds: list[list[Any]]) -> dict[tuple[str, str], int]:
    first: dict[tuple[str, str], int] = {}
    for action, scope, at in cmds:
        first.setdefault((action, scope), at)
    return first


def _crash(scope: str) -> bool:
    return scope == f"venue:{CRASH_VENUE}" or scope.startswith(f"instrument:{CRASH_VENUE}/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="0,2000,50000")
    ap.add_argument("--kind", choices=("instruments", "counterparties"), default="instruments")
    ap.add_argument("--per-key", type=int, default=2)
    ap.add_argument("--before-s", type=float, default=10.0)
    ap.add_argument("--no-caps", action="store_true")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.kind, args.per_key, args.before_s,
                               not args.no_caps)))
        return 0
    counts = sorted({0, *(int(k) for k in args.keys.split(","))})
    runs: dict[int, dict[str, Any]] = {}
    for n in counts:
        cmd = [sys.executable, __file__, "--child", str(n), "--kind", args.kind,
               "--per-key", str(args.per_key), "--before-s", str(args.before_s)]
        if args.no_caps:
            cmd.append("--no-caps")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": "0"})
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    clean = runs[0]
    ref = {k: v for k, v in _first(clean["commands"]).items() if _crash(k[1])}
    print(f"scenario {SCENARIO}, junk {args.kind} on {CRASH_VENUE} ({args.per_key} records "
          f"each) in the {args.before_s:g} s before the crash; admission caps "
          f"{'off' if args.no_caps else 'on'}; {len(ref)} crash commands in the clean run")
    print(f"{'junk':>7} {'records':>8} {'wall s':>7} {'x':>5} {'peak MB':>8} {'x':>5} "
          f"{'growth MB':>9} {'x':>5} {'lost':>4} {'max delay s':>11} {'junk cmds':>9}  "
          "dead letters")
    for n in counts:
        r = runs[n]
        got = _first(r["commands"])
        lost = [k for k in ref if k not in got]
        delays = [(got[k] - at) / NS for k, at in ref.items() if k in got]
        junk_cmds = sum(1 for _a, scope, _t in r["commands"] if "JUNK-" in scope
                        or "junk-cp" in scope)
        print(f"{n:>7} {r['records']:>8} {r['wall_s']:>7.1f} "
              f"{r['wall_s'] / clean['wall_s']:>5.2f} {r['peak_rss_mb']:>8.0f} "
              f"{r['peak_rss_mb'] / clean['peak_rss_mb']:>5.2f} {r['growth_mb']:>9.0f} "
              f"{r['growth_mb'] / max(clean['growth_mb'], 1):>5.2f} {len(lost):>4} "
              f"{max(delays, default=0.0):>11.1f} {junk_cmds:>9}  {r['dead_letters']}")
        for k in lost:
            print(f"        lost: {k[0]} on {k[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
