"""Snapshots taken by the previous detector release resume unchanged in this one.

``tests/vectors/detector_state_v2.pkl`` was written by the detector before the
array HST kept leaf-only counts and per-leaf score tables (commit e70af8f): a
``DetectorState`` (version 2) taken after 300 vectors, past several HST window
pivots with the drift detector running, and the signals that release emitted for
vectors 300..700 of the same uninterrupted run.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path

import msgspec
from riskguard.operators.core.clock import ManualClock
from riskguard.operators.detection.detector import DetectorConfig, DetectorLogic
from riskguard.schemas import FeatureVector, Scope, ScopeKind

NS = 1_000_000_000
FIXTURE = Path(__file__).parent / "vectors" / "detector_state_v2.pkl"
CONFIG = DetectorConfig(features=("a", "b", "c"), hst_window=50, warmup_events=100,
                        warmup_ns=0, blend_points=50, drift_cooldown_points=20,
                        threshold_margin=0.15, close_quiet_points=5)
SPLIT = 300
SCOPE = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")


class _FlatPath(pickle.Unpickler):
    """The fixture names the detector's module by the flat path it had then
    (``riskguard.operators.detector``); riskguard no longer imports it there."""

    def find_class(self, module: str, name: str) -> object:
        if module == "riskguard.operators.detector":
            module = "riskguard.operators.detection.detector"
        return super().find_class(module, name)


def vectors(n: int = 700) -> list[FeatureVector]:
    """Seeded vectors with spikes and a level shift, so episodes and drift both occur."""
    rng = random.Random(21)
    out = []
    for i in range(n):
        level = 0.0 if i < 450 else 4.0
        vals = {"a": rng.gauss(level, 1.0), "b": rng.gauss(10.0, 0.5), "c": rng.random()}
        if i % 97 == 60:
            vals["a"] += 25.0
        out.append(FeatureVector(key="okx/BTC-USDT", scope=SCOPE, ts=i * NS, values=vals,
                                 evidence_ids=[f"e{i}"]))
    return out


def _episode_events(signals: list[dict]) -> list[tuple]:
    return [(s["kind"], s["phase"], s["ts"], s["severity"], s["episode_id"],
             s["top_features"][0]["feature"], s["evidence_ids"]) for s in signals]


def test_a_previous_release_snapshot_resumes_with_the_same_episodes() -> None:
    """Resuming the stored v2 snapshot gives the episodes the previous release emitted:
    the same opens and closes, at the same vectors, with the same severity, episode ids,
    top feature and evidence. (Their threshold and score differ: the threshold of
    Half-Space Trees now stays reachable, its margin a share of the room below 1.)"""
    fixture = _FlatPath(io.BytesIO(FIXTURE.read_bytes())).load()  # our own checked-in file
    logic = DetectorLogic(CONFIG, ManualClock(), fixture["state"])
    got = [msgspec.json.decode(msgspec.json.encode(o))
           for v in vectors()[SPLIT:] for o in logic.on_event(v)]
    want = [msgspec.json.decode(b) for b in fixture["signals"]]
    assert len(want) >= 2
    assert _episode_events(got) == _episode_events(want)
