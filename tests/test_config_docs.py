"""docs/configuration.md is generated from the config structs (every key, its type,
default and comment), and the errors it shows are what `riskguard run` prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from riskguard.connectors.topics import topic_name
from riskguard.dataflows.guard import load_guard_config

from riskguard import config_docs
from tests.docs_helpers import DOCS, ROOT, bin_env, blocks, section


def test_the_configuration_reference_is_generated_from_the_config_structs() -> None:
    """docs/configuration.md is exactly what `python -m riskguard.config_docs` prints:
    every key of every table, with its type, default and comment, so it cannot drift."""
    page = (DOCS / "configuration.md").read_text()
    assert page == config_docs.render(), (
        "docs/configuration.md is stale: python -m riskguard.config_docs > "
        "docs/configuration.md")


def test_the_reference_has_a_row_for_every_key_and_a_section_for_every_table() -> None:
    """Each struct reached from GuardConfig has its section, and each of its fields a row
    whose type and default come from the struct."""
    from riskguard.dataflows.guard import GuardConfig, InputConfig

    page = (DOCS / "configuration.md").read_text()
    found = config_docs.sections(GuardConfig)
    assert len(found) >= 20
    for path, cls, _also in found:
        assert (f"## `{path}`" if path else "## Top level") in page, path
        for key, *_ in config_docs.rows(cls):
            assert f"| `{key}` |" in page, (path, key)
    rows = {r.key: (r.type, r.default) for r in config_docs.rows(InputConfig)}
    assert rows["fetch_wait_max_ms"] == ("int, >= 1, <= 60_000", "10")
    assert rows["idle_eof_s"] == ("float, > 0.0, <= 31_622_400.0 (366 days) (optional)", "unset")


def test_a_field_comment_in_the_code_is_its_description() -> None:
    """The comment above a field in the struct is what the reference says it does; the
    example config's comment is only the fallback."""
    from riskguard.dataflows.guard import InputConfig

    notes = {r.key: r.note for r in config_docs.rows(InputConfig)}
    assert notes["fair_reads"].startswith("Live, latency first: each read takes at most")
    assert notes["max_lateness_ns"].startswith("older than the source's watermark")


def _every_row() -> list[tuple[str, config_docs.Row]]:
    from riskguard.dataflows.guard import GuardConfig

    return [(path or "(top level)", row) for path, cls, _also in config_docs.sections(GuardConfig)
            for row in config_docs.rows(cls)]


def test_every_key_in_the_reference_says_what_it_does() -> None:
    """No row of docs/configuration.md has an empty description: each key's comes from
    its field's comment, the example config's comment or its struct's docstring."""
    empty = [f"{path}.{row.key}" for path, row in _every_row() if not row.note.strip()]
    assert empty == []


def test_every_key_in_the_reference_says_more_than_its_values() -> None:
    """Each description is a phrase a newcomer can act on, at least four words (not
    ``an index`` or ``keep | reset | blend``), unless it names the key it inherits
    (``unset: detector.bands.hysteresis``) or the key holds a table (its section says)."""
    terse = [f"{path}.{row.key}: {row.note}" for path, row in _every_row()
             if len(row.note.split()) < 4 and not row.note.startswith("unset: ")
             and row.default != "(table)"]
    assert terse == []


def test_every_key_in_the_reference_has_an_example_that_is_toml() -> None:
    """Every row shows how to write the key: a `key = value` line (or a table header) that
    TOML reads, taken from the shipped example configs (a table that overrides another
    takes that one's example; a key neither sets, its default)."""
    import tomllib

    missing, broken = [], []
    for path, row in _every_row():
        if not row.example:
            missing.append(f"{path}.{row.key}")
            continue
        # a table header, then the key's line (with any inline table around it)
        m = re.match(r"^(\[\[?[^\]]+\]\]?)\s*(.*)$", row.example)
        text = f"{m.group(1)}\n{m.group(2)}" if m else row.example
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            broken.append(row.example)
    assert missing == []
    assert broken == []


def test_fx_index_is_described_with_its_syntax() -> None:
    """`fx_index`, which every USDT-quoted instrument needs, says what it is and shows
    its syntax."""
    from riskguard.operators.exposure.instruments import InstrumentsConfig

    row = next(r for r in config_docs.rows(InstrumentsConfig) if r.key == "fx_index")
    assert "USDT" in row.note and "reporting currency" in row.note
    assert row.example.startswith('fx_index = { USDT = "USDT-USD"')


def test_a_config_error_that_needs_a_value_shows_one(tmp_path: Path) -> None:
    """A missing key and a USDT-quoted instrument without `fx_index` each stop start-up
    with an example of the value to write, on their one line."""
    config = tmp_path / "guard.toml"
    config.write_text('[keys]\ntrust_file = "t.toml"\nroots_file = "r.toml"\n')
    r = subprocess.run([sys.executable, "-m", "riskguard.cli", "run", "--config", str(config)],
                       capture_output=True, text=True, timeout=120, check=False,
                       env=bin_env(tmp_path))
    assert r.returncode == 2
    assert 'keys.signing_key: is required; got nothing; e.g. [keys] signing_key = "' in r.stderr
    config.write_text('[keys]\nsigning_key = "k.pem"\ntrust_file = "t.toml"\n'
                      'roots_file = "r.toml"\n[exposure.instruments.instruments]\n'
                      '"BTCUSDT" = { kind = "spot", base = "BTC", quote = "USDT" }\n')
    r = subprocess.run([sys.executable, "-m", "riskguard.cli", "run", "--config", str(config)],
                       capture_output=True, text=True, timeout=120, check=False,
                       env=bin_env(tmp_path))
    assert r.returncode == 2
    assert "exposure.instruments.fx_index.USDT" in r.stderr
    assert 'e.g. fx_index = { USDT = "USDT-USD" } in [exposure.instruments]' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("what", "old", "new"), config_docs.ERROR_EXAMPLES)
def test_the_documented_config_errors_are_what_riskguard_run_prints(
    tmp_path: Path, what: str, old: str, new: str,
) -> None:
    """guard.example.toml with the documented edit makes `riskguard run` print exactly
    the line docs/configuration.md shows, and exit 2."""
    page = section((DOCS / "configuration.md").read_text(), "Errors")
    at = page.index(f"{what} (`{new}`)")
    line = blocks(page[at:])[0][1].strip()
    config = config_docs.edited_example(tmp_path, old, new)
    r = subprocess.run([sys.executable, "-m", "riskguard.cli", "run", "--config", str(config)],
                       capture_output=True, text=True, timeout=120, check=False,
                       env=bin_env(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().replace(str(tmp_path), config_docs.CONFIG_DIR) == line


def test_the_example_config_names_the_real_topics_and_trust_file() -> None:
    """guard.example.toml's comments name the topics as topic_name makes them, and its
    trust file is TOML, as every verifier reads it."""
    path = ROOT / "dataflows" / "guard.example.toml"
    text = path.read_text()
    env_line = next(line for line in text.splitlines() if line.startswith("env = "))
    real = topic_name("x", "y")  # x.riskguard.y.v1
    assert real.replace("x", "<env>", 1).replace("y", "<stream>", 1) in env_line
    cfg, _ = load_guard_config(path)
    assert cfg.keys.trust_file.endswith(".toml") and cfg.keys.roots_file.endswith(".toml")
    assert "README" not in text
