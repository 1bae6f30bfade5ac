"""What the whole guard leaves in a bytewax recovery store: data, never a pickled
riskguard class, so that moving or renaming any module keeps every snapshot readable."""

from __future__ import annotations

import pickle
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from riskguard.dataflows.backtest import backtest_flow
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.dataflows.demo_scenario import build_scenario
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.operators.core.snapshot import decode_snapshot

START_NS = 1_795_500_000 * 10**9
MODULE_PATHS = tuple(f"riskguard.{pkg}".encode()
                     for pkg in ("operators", "schemas", "connectors", "dataflows", "flink"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, bytes]]:
    """Every (step, key, stored bytes) of the demo scenario's backtest flow, snapshotted
    at every epoch."""
    work = tmp_path_factory.mktemp("recovery-store")
    config = write_config(work, "127.0.0.1:9", init_keys(work), "store")
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    flow = backtest_flow(cfg, digest, signer=signer, trust=trust,
                         records=build_scenario(START_NS).events)
    db = work / "db"
    db.mkdir()
    init_db_dir(db, 1)
    run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=RecoveryConfig(str(db)))
    rows: list[tuple[str, str, bytes]] = []
    for part in Path(db).glob("*.sqlite3"):
        with sqlite3.connect(part) as conn:
            rows += conn.execute("SELECT step_id, state_key, ser_change FROM snaps "
                                 "WHERE ser_change IS NOT NULL").fetchall()
    return rows


def test_no_snapshot_in_the_store_names_a_riskguard_module(
        stored: list[tuple[str, str, bytes]]) -> None:
    """Each stored snapshot is plain data (offsets, counters) or a versioned snapshot's
    bytes; none holds a riskguard module path, as a pickled class would."""
    steps = {step for step, _key, _data in stored}
    assert len(steps) >= 12
    named = sorted({step for step, _key, data in stored
                    if any(path in data for path in MODULE_PATHS)})
    assert named == []


def test_every_stored_snapshot_decodes(stored: list[tuple[str, str, bytes]]) -> None:
    """What the adapter stored comes back through the decoder a resumed run uses."""
    for _step, _key, data in stored:
        decode_snapshot(pickle.loads(data))
