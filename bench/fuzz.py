"""Long coverage-guided fuzzing runs of every parser and verifier (atheris, libFuzzer).

Run: ``python bench/fuzz.py [--runs 1000000] [--only codec,audit] [--workdir DIR]``
(``pip install -e '.[fuzz]'`` first). Each target of ``tests/fuzz/targets.py``
runs for ``--runs`` inputs in its own process, one at a time (libFuzzer
``-jobs`` is never used), from the seed corpus of ``tests/fuzz/seeds.py`` and
its dictionary. A broken invariant does not stop a run: the first input of
each distinct failure is kept in ``<workdir>/findings-<target>/`` and every
occurrence is counted. Printed per target: inputs run, inputs per second,
crashes and false accepts (occurrences, and distinct failures), the corpus
libFuzzer kept, and its coverage counters (``cov``: code edges reached;
``ft``: features, edges with hit counts). Exits 1 if any target broke an
invariant, hung or ran out of memory.

``--runs-for NAME=N`` runs one target for another count (the signing and the
config targets run a few hundred inputs a second, see ``docs/fuzzing.md``).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz"
TARGETS = ("codec", "envelope", "resign", "trust", "config", "audit", "proof", "formats")
MAX_LEN = {"codec": 16384, "envelope": 8192, "resign": 4096, "trust": 16384,
           "config": 32768, "audit": 32768, "proof": 16384, "formats": 8192}
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


@dataclass
class Result:
    target: str
    runs: int = 0
    seconds: float = 0.0
    exec_per_s: float = 0.0
    crashes: int = 0
    false_accepts: int = 0
    distinct: int = 0
    corpus: int = 0
    corpus_size: str = ""
    cov: int = 0
    ft: int = 0
    exit_code: int = 0
    artifacts: tuple[str, ...] = ()

    @property
    def broken(self) -> bool:
        return bool(self.crashes or self.false_accepts or self.exit_code or self.artifacts)


def run_target(name: str, runs: int, workdir: Path, python: str) -> Result:
    """Fuzz one target for ``runs`` inputs; parse what libFuzzer and the harness report."""
    corpus = workdir / f"corpus-{name}"
    findings = workdir / f"findings-{name}"
    log = workdir / f"{name}.log"
    subprocess.run([python, str(FUZZ / "seeds.py"), str(workdir / "seeds"), name], check=True,
                   capture_output=True)
    if not corpus.exists():
        corpus.mkdir()
        for seed in (workdir / "seeds" / name).iterdir():
            (corpus / seed.name).write_bytes(seed.read_bytes())
    subprocess.run([python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import seeds,"
                    " pathlib; seeds.write_dictionary(pathlib.Path(sys.argv[2]), sys.argv[3])",
                    str(FUZZ), str(workdir / f"{name}.dict"), name], check=True)
    cmd = [python, str(FUZZ / "targets.py"), name, f"-runs={runs}", f"-max_len={MAX_LEN[name]}",
           f"-dict={workdir / f'{name}.dict'}", "-timeout=60", "-rss_limit_mb=4096",
           "-print_final_stats=1", "-print_pcs=0", f"-artifact_prefix={workdir}/{name}-",
           str(corpus)]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "RISKGUARD_FUZZ_FINDINGS": str(findings)})
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    res = Result(target=name, seconds=seconds, exit_code=proc.returncode)
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    res.runs = stats.get("number_of_executed_units", 0)
    # libFuzzer's own rate counts whole seconds of the fuzzing loop: exact enough on a
    # long run; a short one is rated over the process's time, start-up included
    res.exec_per_s = (stats.get("average_exec_per_sec", 0) if seconds >= 60
                      else res.runs / seconds)
    if status := _STATUS.findall(text):
        _n, cov, ft, corp, size = status[-1]
        res.cov, res.ft, res.corpus, res.corpus_size = int(cov), int(ft), int(corp), size
    tsv = findings / "findings.tsv"
    if tsv.exists():
        with tsv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        res.crashes = sum(1 for r in rows if r[1] == "crash")
        res.false_accepts = sum(1 for r in rows if r[1] == "false_accept")
        res.distinct = len({r[2] for r in rows})
    res.artifacts = tuple(sorted(p.name for p in workdir.glob(f"{name}-*") if p.is_file()))
    return res


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def report(results: list[Result], runs: int, when: datetime, workdir: Path) -> str:
    from importlib.metadata import version

    lines = [
        f"riskguard fuzzing, {when:%Y-%m-%d %H:%M} UTC: {runs:,} inputs per target asked",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, atheris {version('atheris')}, one target at a time",
        "",
        f"{'target':<9} {'inputs':>10} {'exec/s':>7} {'time':>8} {'crashes':>8} "
        f"{'false acc':>9} {'distinct':>8} {'corpus':>13} {'cov':>5} {'ft':>6}",
    ]
    for r in results:
        lines.append(
            f"{r.target:<9} {r.runs:>10,} {r.exec_per_s:>7,.0f} {_duration(r.seconds):>8} "
            f"{r.crashes:>8} {r.false_accepts:>9} {r.distinct:>8} "
            f"{f'{r.corpus} ({r.corpus_size})':>13} {r.cov:>5} {r.ft:>6}")
    broken = [r for r in results if r.broken]
    lines.append("")
    for r in broken:
        why = [f"exit {r.exit_code}"] if r.exit_code else []
        why += [f"input kept: {a}" for a in r.artifacts]
        lines.append(f"{r.target}: BROKEN ({', '.join(why) or 'see findings'}); inputs in "
                     f"{workdir}/findings-{r.target}/, log {workdir}/{r.target}.log")
    for r in results:
        if r.runs and r.runs < 1_000_000 and r.seconds >= 60:
            lines.append(f"{r.target}: 1,000,000 inputs take about "
                         f"{1_000_000 / max(r.exec_per_s, 1) / 60:,.0f} min at this rate")
    lines.append("no invariant broken" if not broken else f"{len(broken)} target(s) broken")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--runs-for", action="append", default=[], metavar="NAME=N",
                    help="another input count for one target")
    ap.add_argument("--only", default=",".join(TARGETS), help="comma-separated targets")
    ap.add_argument("--workdir", type=Path, help="keep corpora, logs and findings here")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    per = dict(kv.split("=", 1) for kv in args.runs_for)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="riskguard-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC)
    results = []
    for name in names:
        n = int(per.get(name, args.runs))
        sys.stderr.write(f"fuzzing {name}: {n:,} inputs ...\n")
        results.append(run_target(name, n, workdir, sys.executable))
        r = results[-1]
        sys.stderr.write(f"  {r.runs:,} inputs, {r.exec_per_s:,.0f}/s, {r.crashes} crashes, "
                         f"{r.false_accepts} false accepts\n")
    print(report(results, args.runs, when, workdir))
    return 1 if any(r.broken for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
