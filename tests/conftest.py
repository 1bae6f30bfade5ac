"""Shared fixtures: the real dev broker (or $RISKGUARD_KAFKA_BOOTSTRAP) and fresh topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.topics import TopicSpec, create_topics


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
