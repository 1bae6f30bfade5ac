"""``riskguard stress``: run bundled or custom stress scenarios through the guard."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from riskguard.cli_args import non_negative_int
from riskguard.progress import Progress


def outcome(c: Any) -> tuple[str, str]:
    """How one check reads: what was checked, and what happened.

    An expectation gives the time its command took (and the deadline), a
    ``never`` expectation whether the forbidden command was issued, an
    invariant whether it held.

    >>> from riskguard.dataflows.stress import Check
    >>> outcome(Check("alert", "venue:okx", 60.0, 2.5, "PASS", ""))
    ('alert', 'after 2.5s (deadline 60s)')
    >>> outcome(Check("halt_trading", "venue:binance", None, None, "PASS", "", never=True))
    ('never halt_trading', 'not issued')
    >>> outcome(Check("invariant", "ends in a safe state", None, None, "FAIL", "x"))
    ('invariant', 'violated')
    """
    if c.action == "invariant":
        return "invariant", "holds" if c.result == "PASS" else "violated"
    if getattr(c, "never", False):
        return f"never {c.action}", "not issued" if c.result == "PASS" else "issued"
    deadline = "no deadline" if c.deadline_s is None else f"deadline {c.deadline_s:g}s"
    if c.actual_s is None:
        return c.action, f"not issued ({deadline})"
    return c.action, f"after {c.actual_s:.1f}s ({deadline})"


def _run(args: argparse.Namespace) -> int:
    import tempfile  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    from riskguard.config import read_playbook_file  # noqa: PLC0415
    from riskguard.dataflows import stress  # noqa: PLC0415  (heavy imports)

    names = stress.bundled() if args.all else args.scenario
    if not names:
        sys.stderr.write("riskguard stress run: name a scenario or pass --all\n")
        return 2
    playbook = None
    if args.playbook:  # its one [playbook] table; anything else in it is refused
        playbook = read_playbook_file(args.playbook)
    if args.no_escalation:
        from importlib import resources  # noqa: PLC0415

        base = playbook or tomllib.loads(resources.files("riskguard.dataflows").joinpath(
            "playbook.toml").read_text())["playbook"]
        playbook = stress.disable_escalation(base)
    if args.workdir:
        return _run_in(args, names, playbook, Path(args.workdir))
    work = Path(tempfile.mkdtemp(prefix="rg-stress-"))
    try:  # the work dir holds generated keys: never left behind
        return _run_in(args, names, playbook, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _delays(d: dict[str, Any]) -> str:
    """``p50 1.2 p95 3.4 s``, or ``none`` when no run had one.

    >>> _delays({"p50": 1.2, "p95": 3.4}), _delays({"p50": None})
    ('p50 1.2 p95 3.4 s', 'none')
    """
    if d.get("p50") is None:
        return "none"
    return f"p50 {d['p50']} p95 {d.get('p95')} s"


def _run_in(args: argparse.Namespace, names: list[str], playbook: Any, work: Path) -> int:
    out = Path(args.out)
    failed = 0
    t_all = time.perf_counter()
    summary: list[Any] = []
    with Progress("stress", total=len(names), unit="scenarios") as bar:
        for name in names:
            bar.note(f"running {name}")
            failed += _one(args, name, playbook, work, out, summary, bar)
            bar.advance()
    wall = time.perf_counter() - t_all
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"scenarios": summary, "wall_s": round(wall, 2)},
                                                 indent=1) + "\n")
    print(f"{len(names) - failed}/{len(names)} scenarios passed in {wall:.1f}s")
    return 1 if failed else 0


def _one(args: argparse.Namespace, name: str, playbook: Any, work: Path, out: Path,
         summary: list[Any], bar: Progress) -> int:
    """Run one scenario (or its Monte Carlo runs), print its lines; 1 if it failed."""
    from riskguard.dataflows import stress  # noqa: PLC0415  (heavy imports)
    from riskguard.dataflows.monte_carlo import monte_carlo  # noqa: PLC0415

    failed = 0
    sc = stress.load_scenario(stress.scenario_path(name))
    if args.runs:
        mc = monte_carlo(sc, work, runs=args.runs, seed=args.seed, playbook=playbook)
        (out / sc.name).mkdir(parents=True, exist_ok=True)
        (out / sc.name / "monte_carlo.json").write_text(json.dumps(mc, indent=1) + "\n")
        d = mc["detection_delay_s"]
        m = mc["mitigation_delay_s"]
        bar.clear()  # the scenario's lines, then the bar again
        share = mc["strict_pass_share"] if args.strict else mc["pass_share"]
        gaps = " (known gaps failing)" if args.strict else ""
        print(f"{sc.name}: {args.runs} runs, ends safe in {mc['safe_share']:.0%}, all "
              f"checks pass{gaps} in {share:.0%}; detection delay {_delays(d)}; "
              f"first mitigation {_delays(m)}")
        failed += mc["safe_share"] < 1.0 or (args.strict and share < 1.0)
        summary.append(mc | {"per_run": None})
        return int(failed)
    t0 = time.perf_counter()
    o = stress.run_scenario(sc, work, playbook=playbook, out_dir=out / sc.name)
    bad = [c for c in o.checks if c.result == "FAIL" or (args.strict and c.result == "GAP")]
    verdict = "PASS" if not bad else "FAIL"
    bar.clear()
    print(f"{verdict} {sc.name}  ({o.result.n_events:,} events, "
          f"{time.perf_counter() - t0:.1f}s)  report {out / sc.name / 'report.html'}")
    for c in o.checks:
        what, happened = outcome(c)
        print(f"  {c.result:<4} {what:<25} {c.scope:<46} {happened}")
        if c.result != "PASS":
            print(f"       {c.detail}")
    failed += bool(bad)
    summary.append({"scenario": sc.name, "passed": not bad,
                    "checks": [c.as_dict() for c in o.checks]})
    return int(failed)


def _list(_args: argparse.Namespace) -> int:
    from riskguard.dataflows import stress  # noqa: PLC0415

    for name in stress.bundled():
        sc = stress.load_scenario(stress.scenario_path(name))
        print(f"{name:<22} {sc.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser("stress", help="stress scenarios through the guard")
    ss = p.add_subparsers(dest="stress_cmd", required=True)
    r = ss.add_parser("run", help="run scenarios; exit 1 on any failed expectation")
    r.add_argument("scenario", nargs="*", help="bundled name or a scenario TOML path")
    r.add_argument("--all", action="store_true", help="every bundled scenario")
    r.add_argument("--out", default="stress-out", help="report directory (default stress-out)")
    r.add_argument("--workdir", help="keys and generated configs (default: a temp dir)")
    r.add_argument("--playbook", help="TOML file whose [playbook] replaces the default")
    r.add_argument("--no-escalation", action="store_true",
                   help="break the playbook on purpose: keep only each ladder's first rung")
    r.add_argument("--runs", type=non_negative_int, default=0,
                   help="Monte Carlo: perturbed runs per scenario")
    r.add_argument("--seed", type=int, default=1, help="Monte Carlo seed")
    r.add_argument("--strict", action="store_true",
                   help="count known gaps (GAP) as failures")
    r.set_defaults(func=_run)
    lst = ss.add_parser("list", help="list the bundled scenarios")
    lst.set_defaults(func=_list)
