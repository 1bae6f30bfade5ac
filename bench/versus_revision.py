"""One bench figure of this checkout against the same figure of an earlier revision, now.

Run ``python bench/versus_revision.py --rev REV --figure REGEX [--rounds 5] -- SCRIPT
[ARGS...]``, for example::

    python bench/versus_revision.py --rev fa82af5 --rounds 5 \\
        --figure '1 s bars: .*\\(ratio ([0-9.]+)' -- anomaly_speed.py --rates 4

The machine the figures in ``docs/`` come from is shared, and its speed moves by a fifth
and more within an hour, so a figure measured on another day is no baseline for today's:
whether a change made a bench slower is answered by running both versions side by side.
This checks REV out into a git worktree with a venv of its own (the project installed
editable with the ``demo`` extra, so the benches that start a dev broker run; about a
minute, kept for the next call under ``--keep DIR``), then runs ``bench/SCRIPT ARGS``
in REV's checkout and in this one, alternately, in a fresh process each, ``--rounds``
times. From each run's output it reads the first match of ``--figure`` (its first
group is the number). It prints each round's two figures and their ratio (this
checkout over REV) and the median ratio: above 1, this checkout's figure is the larger.
Each checkout runs its own copy of the script; when the two differ, their diff's size
is printed, and the figure means the same only if the difference leaves it alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def checkout(rev: str, where: Path) -> Path:
    """The Python of a venv over a worktree of ``rev`` in ``where``, made if missing."""
    src, venv = where / "src", where / "venv"
    python = venv / "bin" / "python"
    if not src.exists():
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-f",
                        str(src), rev], check=True, capture_output=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{src}[demo]"],
                       check=True, capture_output=True)
    return python


def figure(python: Path, root: Path, script: list[str], pattern: re.Pattern[str]) -> float:
    """The first match of ``pattern`` in one run's output of ``bench/script``."""
    out = subprocess.run([str(python), str(root / "bench" / script[0]), *script[1:]],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    found = pattern.search(out)
    if found is None:
        raise SystemExit(f"versus_revision: no match for {pattern.pattern!r} in the output "
                         f"of {script[0]} in {root}:\n{out}")
    return float(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the earlier revision (any git rev)")
    ap.add_argument("--figure", required=True, metavar="REGEX",
                    help="where the figure is in the script's output: group 1 is the number")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each checkout")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep REV's worktree and venv here (reused when present)")
    ap.add_argument("script", nargs="+", help="-- SCRIPT [ARGS]: a script in bench/")
    args = ap.parse_args(argv)
    pattern = re.compile(args.figure)
    where = args.keep or Path(tempfile.mkdtemp(prefix="rg-versus-"))
    old_python = checkout(args.rev, where)
    name = args.script[0]
    diff = subprocess.run(["git", "-C", str(HERE), "diff", "--shortstat", args.rev, "--",
                           f"bench/{name}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    rev = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", args.rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"bench/{' '.join(args.script)}: this checkout against {rev}, {args.rounds} rounds, "
          "alternating, a fresh process each")
    if diff:
        print(f"  the script differs between the two: {diff}")
    ratios = []
    for n in range(1, args.rounds + 1):
        old = figure(old_python, where / "src", args.script, pattern)
        new = figure(Path(sys.executable), HERE, args.script, pattern)
        ratios.append(new / old)
        print(f"  round {n}: {rev} {old:g}, this checkout {new:g} ({new / old:.3f}x)",
              flush=True)
    print(f"median ratio, this checkout over {rev}: {statistics.median(ratios):.3f}x "
          f"(from {min(ratios):.3f}x to {max(ratios):.3f}x)")
    if args.keep is None:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                        str(where / "src")], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
