"""Config mistakes at the edges: each stops start-up with a ConfigError that names the
key, never an unexpected error or a value quietly ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from riskguard.dataflows.guard import load_guard_config

from riskguard.errors import ConfigError


@pytest.mark.parametrize(("variable", "table", "text"), [
    ("RISKGUARD_TIER_INDEX", "tier", "tier = 5\n"),
    ("RISKGUARD_REPLICA_ID", "replica", 'replica = "a"\n'),
])
def test_a_variable_overriding_a_key_of_a_table_that_is_no_table_names_the_table(
        monkeypatch, tmp_path: Path, variable: str, table: str, text: str) -> None:
    """``tier = 5`` with ``$RISKGUARD_TIER_INDEX`` set is the config's error, not a
    TypeError out of the override."""
    path = tmp_path / "guard.toml"
    path.write_text(text)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError, match=rf"^{table}: must be object") as err:
        load_guard_config(path)
    assert err.value.path == table


@pytest.mark.parametrize("table", ["partitions", "retention_ms"])
def test_a_misspelt_stream_in_a_topics_table_is_refused(table: str) -> None:
    """``partitions = { markett = 8 }`` would leave the market topic at the default
    count: the stream's name is checked, with the one meant."""
    from riskguard.config import CommonConfig, decode_section

    with pytest.raises(ConfigError, match=rf"^topics\.{table}\.markett: .*`market`") as err:
        decode_section({"topics": {table: {"markett": 8}}}, CommonConfig)
    assert err.value.path == f"topics.{table}.markett"
    good = decode_section({"topics": {table: {"market": 8, "audit": 9}}}, CommonConfig)
    assert getattr(good.topics, table) == {"market": 8, "audit": 9}
