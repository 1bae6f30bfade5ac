"""Shared fixtures: the real dev broker (or $RISKGUARD_KAFKA_BOOTSTRAP), fresh topics, and
the default guard config for backtests."""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.topics import TopicSpec, create_topics
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.guard import load_guard_config

from riskguard.toml_text import dump_toml


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka-protocol broker for this test session.

    Uses ``$RISKGUARD_KAFKA_BOOTSTRAP`` when set; otherwise starts the Tansu
    dev broker on 127.0.0.1 and stops it at the end of the session.
    """
    external = os.environ.get("RISKGUARD_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = DevBroker(tmp_path_factory.mktemp("broker"))
    info = broker.start()
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a fresh, uniquely named topic: ``new_topic(partitions=1, prefix="t")``."""

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        create_topics(
            {"bootstrap.servers": kafka_bootstrap}, [TopicSpec(name, partitions=partitions)]
        )
        return name

    return make


@pytest.fixture
def recovery_dir(tmp_path: Path) -> Callable[[int], Path]:
    """``recovery_dir(n_parts)`` makes an initialised bytewax recovery directory."""
    import subprocess
    import sys

    def make(parts: int = 1) -> Path:
        d = tmp_path / f"recovery-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(d), str(parts)], check=True,
            capture_output=True,
        )
        return d

    return make


@pytest.fixture(scope="module")
def default_config(tmp_path_factory: pytest.TempPathFactory):
    """The default guard config: keys and the bundled playbook, nothing else (no venues
    listed: they come from the data)."""
    work = tmp_path_factory.mktemp("default_config")
    keys = init_keys(work)
    playbook = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]
    doc = {"env": "bt", "playbook": playbook,
           "keys": {"issuer": "riskguard-guard", "signing_key": keys.signing_key.name,
                    "trust_file": keys.trust_file.name, "roots_file": keys.roots_file.name}}
    path = Path(work) / "guard.toml"
    path.write_text(dump_toml(doc))
    return load_guard_config(path)
