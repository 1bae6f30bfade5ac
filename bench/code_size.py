"""How much code riskguard asks a reader to carry, against an earlier revision's.

Run ``python bench/code_size.py [--base REV]``. It counts the Python files git tracks,
apart from ``tests/``, ``bench/`` and ``docs/``, in this working tree (uncommitted
changes included) and at ``--base`` (default ``fae549e``, the code of 2026-11-27 the
size goal was set on), and prints, for each top-level folder and in all:

- ``lines``: every line, as ``wc -l`` counts them (the figure the goal is set in);
- ``non-blank``: the lines with anything on them;
- ``code``: the non-blank lines that are neither a comment nor part of a docstring.

Each total is printed with its ratio to the base's, measured in the same run, and the
lines with the goal (at most 31,000). The biggest modules follow, so where the lines
are is on the same screen.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
LEFT_OUT = ("tests/", "bench/", "docs/")
GOAL_LINES = 31_000
KINDS = ("lines", "non-blank", "code")


def docstring_lines(source: str) -> set[int]:
    """The line numbers the module's, classes' and functions' docstrings take."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def measure(source: str) -> Counter[str]:
    """One file's lines, non-blank lines and code lines.

    >>> dict(measure('\"\"\"Doc.\"\"\"\\n\\nx = 1  # one\\n# alone\\n'))
    {'lines': 4, 'non-blank': 3, 'code': 1}
    """
    text = source.splitlines()
    docs = docstring_lines(source)
    non_blank = [n for n, line in enumerate(text, 1) if line.strip()]
    code = [n for n in non_blank if n not in docs and not text[n - 1].lstrip().startswith("#")]
    return Counter({"lines": len(text), "non-blank": len(non_blank), "code": len(code)})


def counted(path: str) -> bool:
    return path.endswith(".py") and not path.startswith(LEFT_OUT)


def working_tree() -> dict[str, str]:
    """Every counted file git tracks, as it is on disk."""
    names = subprocess.run(["git", "-C", str(HERE), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.split()
    return {n: (HERE / n).read_text() for n in names if counted(n) and (HERE / n).exists()}


def at_revision(rev: str) -> dict[str, str]:
    """Every counted file as it was at ``rev``."""
    names = subprocess.run(["git", "-C", str(HERE), "ls-tree", "-r", "--name-only", rev],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(HERE), "show", f"{rev}:{n}"],
                              capture_output=True, text=True, check=True).stdout
            for n in names if counted(n)}


def by_folder(files: dict[str, str]) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    """Each top-level folder's counts, and each file's."""
    folders: dict[str, Counter[str]] = {}
    per_file = {name: measure(source) for name, source in files.items()}
    for name, counts in per_file.items():
        folders.setdefault(Path(name).parts[0], Counter()).update(counts)
    return folders, per_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="fae549e", help="the revision to compare with")
    parser.add_argument("--largest", type=int, default=12, help="how many modules to list")
    args = parser.parse_args()
    now, now_files = by_folder(working_tree())
    base, _ = by_folder(at_revision(args.base))
    print(f"{'folder':<12}" + "".join(f"{k:>12}" for k in KINDS)
          + f"   (at {args.base}: " + ", ".join(KINDS) + ")")
    for folder in sorted(set(now) | set(base)):
        row, was = now.get(folder, Counter()), base.get(folder, Counter())
        print(f"{folder:<12}" + "".join(f"{row[k]:>12,}" for k in KINDS)
              + "   (" + ", ".join(f"{was[k]:,}" for k in KINDS) + ")")
    total: Counter[str] = sum(now.values(), Counter())
    total_base: Counter[str] = sum(base.values(), Counter())
    for kind in KINDS:
        goal = f"; goal <= {GOAL_LINES:,}" if kind == "lines" else ""
        print(f"{kind}: {total[kind]:,} against {total_base[kind]:,} at {args.base} "
              f"(ratio {total[kind] / total_base[kind]:.2f}x{goal})")
    print(f"largest modules ({KINDS[0]}):")
    for name, counts in sorted(now_files.items(), key=lambda kv: -kv[1]["lines"])[:args.largest]:
        print(f"  {counts['lines']:>5} {name}")


if __name__ == "__main__":
    main()
