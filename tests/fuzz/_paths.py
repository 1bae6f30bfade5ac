"""Put ``tests/`` (the signing fixtures) and ``tests/fuzz/`` on ``sys.path``.

The fuzz scripts run as plain files (``python tests/fuzz/targets.py``); importing
this module first lets them import the test fixtures and each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
TESTS = FUZZ.parent
for _p in (str(FUZZ), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
