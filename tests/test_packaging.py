"""The built wheel installs and imports cleanly in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_imports_cleanly_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The wheel holds riskguard.{operators,connectors,dataflows,schemas} with their
    subpackages, the JSON schemas and py.typed, never a bare top-level `operators`, and
    imports in a new venv, old flat module paths included."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(dist.glob("riskguard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("riskguard-")}
    assert tops == {"riskguard"}, tops
    for must in ("riskguard/operators/__init__.py", "riskguard/connectors/kafka/source.py",
                 "riskguard/dataflows/__init__.py", "riskguard/schemas/json/trade.v1.json",
                 "riskguard/py.typed", "riskguard/dataflows/guard/core.py",
                 "riskguard/dataflows/data/sample.jsonl",  # backtest/calibrate --sample
                 "riskguard/dataflows/data/sample_labels.json"):
        assert must in names, must
    packaged = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    for top in ("operators", "connectors", "dataflows", "schemas"):
        for init in (ROOT / top).glob("**/__init__.py"):
            folder = init.parent.relative_to(ROOT).as_posix()
            assert f"riskguard/{folder}" in packaged, folder  # listed in pyproject

    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    # Runtime dependencies come from this interpreter's site-packages; the wheel itself is
    # unpacked into the fresh venv, so imports must resolve from the wheel, not the source tree.
    site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import riskguard, riskguard.schemas, riskguard.connectors.kafka, "
        "riskguard.operators.core.base, riskguard.operators.core.snapshot, "
        "riskguard.dataflows.passthrough, riskguard.cli; "
        "assert 'site-packages' in riskguard.schemas.__file__ and str(riskguard.schemas.__file__)"
        ".startswith(" + repr(str(site)) + "); "
        "import importlib.util as u; assert u.find_spec('operators') is None; print('ok')"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
