"""Helpers of the docs tests: Markdown sections and blocks, and lines as the docs show
them (any digits, ``...`` for anything)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"```(\w*)[^\n]*\n(.*?)```", re.S)


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown text."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return BLOCK.findall(text)


def shown(line: str) -> re.Pattern[str]:
    """A line as the docs show it, as a pattern for a line of a real run: any digits
    where it has digits (times, scores, ids), anything where it has ``...``, any run of
    spaces where it has spaces."""
    parts = re.split(r"(\.\.\.|\d+)", " ".join(line.split()))
    return re.compile("".join(".*?" if p == "..." else r"\d+" if p.isdigit() else re.escape(p)
                              for p in parts))


def unmatched(expected: list[str], got: list[str]) -> list[str]:
    """The expected lines no distinct line of ``got`` matches (modulo digits)."""
    left = [" ".join(g.split()) for g in got]
    missing = []
    for line in expected:
        pat = shown(line)
        hit = next((i for i, g in enumerate(left) if pat.fullmatch(g)), None)
        if hit is None:
            missing.append(line)
        else:
            del left[hit]
    return missing


def bin_env(tmp: Path) -> dict[str, str]:
    """This interpreter's scripts (riskguard, python) first on PATH, and a dev-broker
    state folder of the test's own."""
    return {**os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RISKGUARD_BROKER_DIR": str(tmp / "broker-state")}


def unlike_the_readmes_demo(out: list[str]) -> tuple[list[str], list[str]]:
    """The lines of the README's demo output that no line of a real run's ``out``
    matches, and the command, rejection, summary and audit lines of ``out`` that the
    README does not show. (A signal's episode may close after the scenario's end, so the
    signals shown are checked one way only.)"""
    sample = next(body for lang, body in blocks(section(README.read_text(), "Run the demo"))
                  if not lang).splitlines()
    shown_lines = [line for line in sample if line.strip()]
    key = re.compile(r" COMMAND |REJECTED|verified and executed|^(ok|FAIL) ")
    patterns = [shown(line) for line in shown_lines]
    not_shown = [line for line in out if key.search(line)
                 and not any(p.fullmatch(" ".join(line.split())) for p in patterns)]
    return unmatched(shown_lines, out), not_shown
