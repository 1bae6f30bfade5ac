"""Monte Carlo over a stress scenario: perturbed shock sizes and onsets, run many times,
with the distribution of detection and mitigation delays and the share of runs that
end safe."""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

import msgspec
from riskguard.dataflows.report import alarms_of, scope_related
from riskguard.dataflows.stress import (
    NS,
    START_NS,
    Scenario,
    run_scenario,
    shock_labels,
)


def perturb(sc: Scenario, rng: random.Random, size_jitter: float = 0.3,
            time_jitter_s: float = 20.0) -> Scenario:
    """A Monte Carlo variant: shock sizes x U(1 - j, 1 + j), onsets +- U(0, t) seconds."""
    shocks = []
    for s in sc.shocks:
        mag = s.magnitude
        if s.kind == "depeg":
            mag = 1.0 - (1.0 - mag) * rng.uniform(1 - size_jitter, 1 + size_jitter)
        elif s.kind != "storm":
            mag *= rng.uniform(1 - size_jitter, 1 + size_jitter)
            if s.kind in ("price", "index_diverge", "cascade"):
                mag = max(mag, -0.99)  # a fall jittered past -100 % stays a price
        qty = s.qty * rng.uniform(1 - size_jitter / 2, 1 + size_jitter)
        onset = max(60.0, s.onset_s + rng.uniform(-time_jitter_s, time_jitter_s))
        shocks.append(msgspec.structs.replace(s, magnitude=mag, onset_s=round(onset, 3),
                                              qty=qty))
    return msgspec.structs.replace(sc, shocks=tuple(shocks), seed=rng.randrange(1 << 30))


def monte_carlo(sc: Scenario, workdir: str | Path, *, runs: int, seed: int,
                playbook: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``runs`` perturbed variants; the distribution of delays and the safe share."""
    rng = random.Random(seed)
    det: list[float] = []
    mit: list[float] = []
    safe = passed = strict = 0
    rows = []
    for i in range(runs):
        var = perturb(sc, rng)
        o = run_scenario(var, workdir, playbook=playbook)
        onset = START_NS + int(var.shocks[0].onset_s * NS) if var.shocks else START_NS
        labs = shock_labels(var, var.shocks[0]) if var.shocks else []
        first = next((a for a in alarms_of(o.result.signals) if a[0] >= onset and (
            not labs or any(scope_related(lab.scope, a[2]) for lab in labs))), None)
        d = (first[0] - onset) / NS if first else None
        firsts = [c.actual_s for c in o.checks if c.actual_s is not None]
        mdel = min(firsts) if firsts else None
        if d is not None:
            det.append(d)
        if mdel is not None:
            mit.append(mdel)
        gaps = [f"{c.action} {c.scope}" for c in o.checks if c.result == "GAP"]
        safe += o.safe
        passed += o.passed
        strict += o.passed and not gaps
        rows.append({"run": i, "detection_delay_s": d, "mitigation_delay_s": mdel,
                     "safe": o.safe, "passed": o.passed,
                     "failed": [f"{c.action} {c.scope}" for c in o.checks
                                if c.result == "FAIL"], "gaps": gaps})
    return {"scenario": sc.name, "runs": runs, "seed": seed,
            "safe_share": round(safe / runs, 4) if runs else None,
            "pass_share": round(passed / runs, 4) if runs else None,
            # known gaps (GAP) counted as failures, as --strict counts them
            "strict_pass_share": round(strict / runs, 4) if runs else None,
            "detection_delay_s": _dist(det), "mitigation_delay_s": _dist(mit), "per_run": rows}


def _dist(xs: list[float]) -> dict[str, Any]:
    from riskguard.dataflows.report import pct  # noqa: PLC0415 (small helper)

    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": round(min(xs), 3), "p50": pct(xs, 50), "p95": pct(xs, 95),
            "max": round(max(xs), 3), "mean": round(statistics.fmean(xs), 3)}
