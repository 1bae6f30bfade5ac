"""The public API of riskguard.operators: what each package exports, and docs/api.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest
import riskguard.operators

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("audit", "core", "detection", "exposure", "mitigation", "signing")


def _package(name: str) -> ModuleType:
    return importlib.import_module(f"riskguard.operators.{name}" if name else "riskguard.operators")


def _is_operator(obj: object) -> bool:
    """A bytewax ``@operator`` function (bytewax marks each with its operator class)."""
    return inspect.isfunction(obj) and hasattr(obj, "_op_cls")


def _defined_operators() -> dict[str, object]:
    """Every @operator defined in a module of riskguard.operators, by name."""
    found: dict[str, object] = {}
    for info in pkgutil.walk_packages(riskguard.operators.__path__, "riskguard.operators."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if _is_operator(obj) and obj.__module__ == info.name:
                found[name] = obj
    return found


@pytest.mark.parametrize("package", ["", *DOMAINS])
def test_every_name_in_all_is_importable_public_and_listed_once(package: str) -> None:
    """Each package's __all__ names only public names, each once, each importable."""
    module = _package(package)
    names = module.__all__
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert [n for n in names if n.startswith("_")] == []
    for name in names:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    assert set(names) <= set(namespace)


def test_every_public_operator_is_exported_from_riskguard_operators() -> None:
    """Like bytewax.operators: each @operator of every domain is one import away."""
    defined = _defined_operators()
    assert {"extract_features", "detect_anomalies", "aggregate_exposure", "enforce_limits",
            "plan_mitigation", "sign_commands", "audit_log"} <= set(defined)
    top = riskguard.operators
    missing = sorted(set(defined) - set(top.__all__))
    assert missing == []
    for name, fn in defined.items():
        assert getattr(top, name) is fn, name


def test_each_domain_exports_the_operators_defined_in_it() -> None:
    """A domain package's __all__ holds the operators of its own modules."""
    for name, fn in _defined_operators().items():
        domain = fn.__module__.split(".")[2]  # type: ignore[attr-defined]
        assert name in _package(domain).__all__, (domain, name)


def test_the_config_and_output_types_of_every_operator_are_exported() -> None:
    """Whatever a public operator takes as ``config`` and returns as a dataclass of
    streams can be imported from riskguard.operators too."""
    top = riskguard.operators
    for name, fn in _defined_operators().items():
        hints = typing.get_type_hints(fn.__wrapped__)  # type: ignore[attr-defined]
        wanted = [hints.get("config"), hints.get("return")]
        for hint in wanted:
            for t in (*typing.get_args(hint), hint):
                cls = typing.get_origin(t) or t
                if inspect.isclass(cls) and cls.__module__.startswith("riskguard.operators"):
                    assert getattr(top, cls.__name__, None) is cls, (name, cls.__name__)


def test_a_bare_import_of_riskguard_operators_gives_the_operators() -> None:
    """`import riskguard.operators` alone, in a fresh interpreter, is enough to build
    a flow (no submodule import needed first)."""
    code = ("import riskguard.operators as ro; "
            "print(ro.detect_anomalies.__name__, ro.aggregate_exposure.__name__, "
            "ro.FeatureConfig.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["detect_anomalies", "aggregate_exposure", "FeatureConfig"]


def _api_doc() -> str:
    return (ROOT / "docs" / "api.md").read_text()


def test_docs_api_lists_every_name_riskguard_operators_exports() -> None:
    """docs/api.md has a line for each operator and config riskguard.operators exports."""
    doc = _api_doc()
    listed = set(re.findall(r"^\| `(\w+)`", doc, re.M))
    assert sorted(set(riskguard.operators.__all__) - listed) == []
    assert sorted(listed - set(riskguard.operators.__all__)) == []


def test_the_docs_api_example_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    """The example in docs/api.md runs as written and prints its `# prints:` lines."""
    code = re.search(r"```python\n(.*?)```", _api_doc(), re.S)
    assert code
    said = code.group(1).split("# prints:\n", 1)[1]
    expected = [line.removeprefix("# ") for line in said.strip().splitlines()]
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True,
                         text=True, timeout=300, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == expected
