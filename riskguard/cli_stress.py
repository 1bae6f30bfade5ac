"""``riskguard stress``: run bundled or custom stress scenarios through the guard."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


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
    out = Path(args.out)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rg-stress-"))
    failed = 0
    t_all = time.perf_counter()
    summary = []
    for name in names:
        sc = stress.load_scenario(stress.scenario_path(name))
        if args.runs:
            mc = stress.monte_carlo(sc, work, runs=args.runs, seed=args.seed, playbook=playbook)
            (out / sc.name).mkdir(parents=True, exist_ok=True)
            (out / sc.name / "monte_carlo.json").write_text(json.dumps(mc, indent=1) + "\n")
            d = mc["detection_delay_s"]
            m = mc["mitigation_delay_s"]
            print(f"{sc.name}: {args.runs} runs, ends safe in {mc['safe_share']:.0%}, all "
                  f"checks pass in {mc['pass_share']:.0%}; detection delay p50 "
                  f"{d.get('p50')} p95 {d.get('p95')} s; first mitigation p50 {m.get('p50')} "
                  f"p95 {m.get('p95')} s")
            failed += mc["safe_share"] < 1.0 or (args.strict and mc["pass_share"] < 1.0)
            summary.append(mc | {"per_run": None})
            continue
        t0 = time.perf_counter()
        o = stress.run_scenario(sc, work, playbook=playbook, out_dir=out / sc.name)
        bad = [c for c in o.checks if c.result == "FAIL" or (args.strict and c.result == "GAP")]
        verdict = "PASS" if not bad else "FAIL"
        print(f"{verdict} {sc.name}  ({o.result.n_events:,} events, "
              f"{time.perf_counter() - t0:.1f}s)  report {out / sc.name / 'report.html'}")
        for c in o.checks:
            dl = "" if c.deadline_s is None else f" deadline {c.deadline_s:g}s"
            print(f"  {c.result:<4} {c.action:<19} {c.scope:<46} actual {_fmt(c.actual_s)}{dl}")
            if c.result != "PASS":
                print(f"       {c.detail}")
        failed += bool(bad)
        summary.append({"scenario": sc.name, "passed": not bad,
                        "checks": [c.as_dict() for c in o.checks]})
    wall = time.perf_counter() - t_all
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"scenarios": summary, "wall_s": round(wall, 2)},
                                                 indent=1) + "\n")
    print(f"{len(names) - failed}/{len(names)} scenarios passed in {wall:.1f}s")
    return 1 if failed else 0


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
    r.add_argument("--runs", type=int, default=0, help="Monte Carlo: perturbed runs per scenario")
    r.add_argument("--seed", type=int, default=1, help="Monte Carlo seed")
    r.add_argument("--strict", action="store_true",
                   help="count known gaps (GAP) as failures")
    r.set_defaults(func=_run)
    lst = ss.add_parser("list", help="list the bundled scenarios")
    lst.set_defaults(func=_list)
