"""The package type-checks (mypy) and lints (ruff) clean, as installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_and_ruff_report_nothing() -> None:
    """ops/typecheck mirrors the installed riskguard.* layout and runs mypy and ruff."""
    r = subprocess.run(["bash", str(ROOT / "ops" / "typecheck")], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Success: no issues found" in r.stdout
