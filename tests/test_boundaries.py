"""Module boundaries hold: no module imports another's underscore names, and no lower
layer imports a higher one (STYLE.md 25, "public means public")."""

from __future__ import annotations

import ast
import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# From the bottom up; a module may import its own layer and those below it. A module's
# layer is that of the longest prefix of its name listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("riskguard", "riskguard.errors", "riskguard.validation", "riskguard.environment"),
    ("riskguard.schemas",),
    ("riskguard.operators.core",),
    ("riskguard.operators.signing",),
    ("riskguard.operators.detection", "riskguard.operators.exposure",
     "riskguard.operators.mitigation", "riskguard.operators.audit"),
    ("riskguard.operators",),
    ("riskguard.connectors", "riskguard.executors"),
    ("riskguard.config", "riskguard.progress"),
    ("riskguard.dataflows",),
    ("riskguard.flink",),
    ("riskguard.cli", "riskguard.cli_", "riskguard.config_docs"),
)
PACKAGES = {"riskguard": "riskguard", "schemas": "riskguard.schemas",
            "operators": "riskguard.operators", "connectors": "riskguard.connectors",
            "dataflows": "riskguard.dataflows", "executors": "riskguard.executors",
            "flink": "riskguard.flink"}


def module_name(path: str) -> str:
    """The import name of a source file (the folders are riskguard's subpackages)."""
    top, *rest = path[:-3].split("/")
    parts = [PACKAGES[top], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    best, found = -1, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = (module == prefix or module.startswith(prefix + ".")
                      or (prefix.endswith("_") and module.startswith(prefix)))
            if inside and len(prefix) > best:
                best, found = len(prefix), rank
    assert found >= 0, f"{module} is in no layer"
    return found


@functools.cache
def imports(tops: frozenset[str] = frozenset(PACKAGES)) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, imported module, names taken from it) for every riskguard import in
    the files under the top-level folders ``tops``."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    out = []
    for path in files:
        if path.split("/")[0] not in tops:
            continue
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("riskguard"):
                out.append((path, node.lineno, node.module or "", [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out.extend((path, node.lineno, a.name, []) for a in node.names
                           if a.name.startswith("riskguard"))
    return out


def test_no_module_imports_another_modules_underscore_names() -> None:
    """A name another module needs is public; a leading underscore means this module only."""
    found = [f"{path}:{line}: {name} from {module}"
             for path, line, module, names in imports()
             for name in names
             if name.startswith("_") and module != module_name(path)]
    assert found == []


def test_tests_and_benches_use_only_public_names() -> None:
    """What a test or a bench needs from riskguard is public too: it reads the product
    as its users do."""
    found = [f"{path}:{line}: {name} from {module}"
             for path, line, module, names in imports(frozenset({"tests", "bench"}))
             for name in names if name.startswith("_") and not name.endswith("__")]
    assert found == []


def test_no_lower_layer_imports_a_higher_one() -> None:
    """schemas < operators.core < signing < the other domains < operators < connectors and
    executors < config < dataflows < flink < the CLI."""
    found = []
    for path, line, module, names in imports():
        me = module_name(path)
        targets = [f"{module}.{n}" for n in names] if names else [module]
        for target in targets:
            # ``from pkg import name``: a submodule or a name; the package decides the layer
            # unless the name is a submodule of a higher layer
            if layer(target) > layer(me) and layer(module) > layer(me):
                found.append(f"{path}:{line}: {me} imports {module}")
                break
    assert found == []


def test_the_layers_are_checked_on_the_real_tree() -> None:
    """The checks above read the package's files: every one of them is in a layer."""
    names = {module_name(path) for path, *_ in imports()}
    assert "riskguard.operators.core.base" in names
    assert layer("riskguard.operators.core.base") < layer("riskguard.operators.exposure.limits")
    assert layer("riskguard.dataflows.demo") < layer("riskguard.cli_topics")
