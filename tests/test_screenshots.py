"""docs/screenshots.py takes the report and status-page screenshots in docs/img: run here
into a scratch folder, the pages it opens in headless Chromium at 1280 and 1920 px have
no legend entry or cell that overflows and never scroll sideways, and it writes one
whole-page PNG per page and width, as wide as the window."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _script():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "docs" / "screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y "
                    "chromium; .ci/run does)")
@pytest.mark.slow
@pytest.mark.kafka
def test_the_screenshot_script_measures_both_pages_and_writes_them_whole(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    shots = _script()
    found = shots.make(tmp_path, bootstrap=kafka_bootstrap)
    for name in ("report", "status"):
        for width in shots.WIDTHS:
            m = found[name][width]
            assert m["over"] == [], (name, width, m["over"])
            assert m["doc_scroll"] <= m["doc_client"], (name, width)
            w, h = _png_size(tmp_path / f"{name}-{width}.png")
            assert w == width and h == min(m["height"], shots.MAX_HEIGHT) and h > 800
    legends = found["report"][1280]["legends"]
    assert "shaded: each bar's high-low range" not in legends  # the sample has no bars
    assert {"threshold", "critical"} <= set(legends)


def test_the_docs_hold_the_screenshots_the_script_writes() -> None:
    """docs/img has each page at each width, as wide as its name says."""
    shots = _script()
    for name in ("report", "status"):
        for width in shots.WIDTHS:
            assert _png_size(ROOT / "docs" / "img" / f"{name}-{width}.png")[0] == width
