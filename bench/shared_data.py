"""Where the development data lives: ``shared/data`` beside the clone.

The real incident files and the streaming-anomaly benchmark part are for
development only and are never copied into the project. Benches read them
from ``<clone>/../shared/data`` or from ``$RISKGUARD_SHARED_DATA``; tests that
need them skip with a reason when they are missing.

>>> shared_data_dir().name
'data'
"""

from __future__ import annotations

import os
from pathlib import Path

from riskguard.environment import SHARED_DATA


def shared_data_dir() -> Path:
    """``$RISKGUARD_SHARED_DATA``, else ``shared/data`` beside the clone."""
    env = os.environ.get(SHARED_DATA)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def incidents_dir() -> Path:
    """The real incident files, ``labels.toml`` and ``SOURCES.md``."""
    return shared_data_dir() / "incidents"


def nab_dir() -> Path:
    """The streaming-anomaly benchmark part: ``data/``, ``labels/``, ``config/``."""
    return shared_data_dir() / "nab"


def missing_reason(path: Path) -> str | None:
    """Why a test must skip (the folder is missing), or None."""
    if path.is_dir():
        return None
    return f"development data not found at {path} (set ${SHARED_DATA} to the shared/data folder)"
