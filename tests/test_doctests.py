"""Every docstring example in the package runs (imported by its real riskguard.* name),
subpackages (riskguard.operators.core ...) included."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import riskguard

PACKAGES = ("riskguard", "riskguard.schemas", "riskguard.connectors", "riskguard.operators",
            "riskguard.dataflows")


def _modules() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names.extend(info.name for info in pkgutil.walk_packages(pkg.__path__, f"{pkg_name}."))
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    """The module's >>> examples produce the output they show."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


assert riskguard.__version__
