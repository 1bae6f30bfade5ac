"""Results several tests read, computed once a test session: with xdist, the workers
share the temp root, so the first to take the lock computes and the others read."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def once_a_session(tmp_path_factory: pytest.TempPathFactory, name: str,
                   make: Callable[[Path], Any]) -> Any:
    """``make(work)``'s result (JSON, read back as JSON reads it), ``work`` a fresh
    folder all workers can read, computed by the first worker to ask for ``name``."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / f"{name}.json"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            result = json.dumps(make(tmp_path_factory.mktemp(name)))
            out.write_text(result)
    return json.loads(out.read_text())
