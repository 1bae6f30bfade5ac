"""Config mistakes at the edges: each stops start-up with a ConfigError that names the
key, never an unexpected error or a value quietly ignored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from riskguard.dataflows.guard import load_guard_config

from riskguard.errors import ConfigError

BIN = Path(sys.executable).parent


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


KEYS = {"keys": {"signing_key": "k", "trust_file": "t", "roots_file": "r"}}
RUNG = {"action": "alert"}
SECONDS = [
    ("playbook.ttl_s", {"playbook": {"ttl_s": "X"}}),
    ("playbook.rate_window_s", {"playbook": {"rate_window_s": "X"}}),
    ("playbook.reorder_slack_s", {"playbook": {"reorder_slack_s": "X"}}),
    ("playbook.max_hold_s", {"playbook": {"max_hold_s": "X"}}),
    ("playbook.acks.timeout_s", {"playbook": {"acks": {"timeout_s": "X"}}}),
    ("playbook.rules[0].quiet_s", {"playbook": {"rules": [
        {"name": "r", "signal": "anomaly", "ladder": [RUNG], "quiet_s": "X"}]}}),
    ("playbook.rules[0].repeat_window_s", {"playbook": {"rules": [
        {"name": "r", "signal": "anomaly", "ladder": [RUNG], "repeat_window_s": "X"}]}}),
    ("playbook.rules[0].ladder[0].after_s", {"playbook": {"rules": [
        {"name": "r", "signal": "anomaly", "ladder": [{**RUNG, "after_s": "X"}]}]}}),
    ("input.idle_eof_s", {"input": {"idle_eof_s": "X"}}),
    ("input.align_skew_s", {"input": {"align_skew_s": "X"}}),
    ("sink_delivery_timeout_s", {"sink_delivery_timeout_s": "X"}),
    ("detector.bands.drawdown_s", {"detector": {"bands": {"drawdown_s": "X"}}}),
    ("detector.bands.fast_s", {"detector": {"bands": {"fast_s": "X"}}}),
    ("detector.bands.deescalate_quiet_s", {"detector": {"bands": {"deescalate_quiet_s": "X"}}}),
    ("detector.bands.vol_halflife_s", {"detector": {"bands": {"vol_halflife_s": "X"}}}),
    ("detector.bands.volatility.drawdown_s",
     {"detector": {"bands": {"volatility": {"drawdown_s": "X"}}}}),
    ("detector.bands.horizons_s[1]", {"detector": {"bands": {"horizons_s": [60.0, "X"]}}}),
    ("detector.cross.halflife_s", {"detector": {"cross": {"halflife_s": "X"}}}),
    ("detector.confirm.join_s", {"detector": {"confirm": {"join_s": "X"}}}),
]


def _with(doc: object, value: float) -> object:
    if isinstance(doc, dict):
        return {k: _with(v, value) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_with(v, value) for v in doc]
    return value if doc == "X" else doc


@pytest.mark.parametrize(("path", "doc"), SECONDS, ids=[p for p, _ in SECONDS])
def test_a_span_in_seconds_beyond_a_year_and_a_day_is_refused(path: str, doc: dict) -> None:
    """``quiet_s = 1e300`` decoded, then overflowed when turned into nanoseconds: the
    guard stopped with an unexpected OverflowError, or its dataflow at the first
    incident that closed. A span of seconds is now at most a year and a day."""
    from riskguard.dataflows.guard import GuardConfig

    from riskguard.config import decode_section

    for big in (1e300, 366 * 86_400.0 + 1):
        with pytest.raises(ConfigError, match=r"must be <= 31622400") as err:
            decode_section({**KEYS, **_with(doc, big)}, GuardConfig)
        assert err.value.path == path
    decode_section({**KEYS, **_with(doc, 366 * 86_400.0)}, GuardConfig)


def _riskguard(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it, with ``env`` set over this one's."""
    clean = {k: v for k, v in os.environ.items() if k != "RISKGUARD_LOG"}
    return subprocess.run([str(BIN / "riskguard"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("text", ["", " ", "off", " Debug "])
def test_a_blank_or_named_log_level_starts_the_command(text: str) -> None:
    """``RISKGUARD_LOG=" "`` is unset, as for the Kafka clients: it used to end every
    command in a KeyError traceback."""
    done = _riskguard("stress", "list", RISKGUARD_LOG=text)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_log_level_that_names_no_level_is_one_line_naming_the_variable() -> None:
    done = _riskguard("stress", "list", RISKGUARD_LOG="warn")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "riskguard stress list: RISKGUARD_LOG: one of debug, info, warning, error, off; "
        "got 'warn'"], done.stderr


@pytest.mark.parametrize("env", ["", "Prod", "a b/c"])
def test_an_env_that_cannot_name_a_topic_names_the_key_env(tmp_path: Path, env: str) -> None:
    """The error named ``topics.env``, a key no config has: it is the top-level ``env``."""
    path = tmp_path / "guard.toml"
    path.write_text(f'env = "{env}"\n[keys]\nsigning_key = "k"\ntrust_file = "t"\n'
                    'roots_file = "r"\n')
    with pytest.raises(ConfigError, match=r"^env: lowercase letters") as err:
        load_guard_config(path)
    assert err.value.path == "env"


@pytest.mark.parametrize(("text", "key", "meant"), [
    ('[topic]\ndefault_partitions = 8\n', "topic", "topics"),
    ('[kafak]\nbootstrap = "k:9093"\n', "kafak", "kafka"),
    ('envv = "prod"\n', "envv", "env"),
])
def test_a_command_reading_the_shared_tables_refuses_a_misspelt_table(
        tmp_path: Path, text: str, key: str, meant: str) -> None:
    """``topics create --config guard.toml`` with ``[topic]`` created the topics with the
    defaults: a top-level key no guard config has is refused, naming it."""
    from riskguard.config import load_common

    path = tmp_path / "guard.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{key}: is not a known setting \(did you mean "
                                          rf"`{meant}`\?\)") as err:
        load_common(path)
    assert err.value.path == key
    done = _riskguard("topics", "create", "--dry-run", "--config", str(path))
    assert done.returncode == 2 and f"{key}: is not a known setting" in done.stderr


def test_the_shared_tables_reader_knows_every_top_level_key_of_the_guard_config(
        tmp_path: Path) -> None:
    """The guard config's own keys all pass (the example config loads whole)."""
    from riskguard.dataflows.guard import GuardConfig

    from riskguard.config import GUARD_KEYS, load_common

    assert set(GUARD_KEYS) == set(GuardConfig.__struct_encode_fields__)
    from importlib import resources

    example = resources.files("riskguard.dataflows").joinpath("guard.example.toml")
    assert load_common(Path(str(example))).env == "prod"


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    """``min_insync_replicas = 3`` with ``replication_factor = 2`` was lowered to 2 when
    the topics were created: the durability asked for was quietly not the one given."""
    from riskguard.connectors.topics import topic_specs

    from riskguard.config import CommonConfig, decode_section

    doc = {"topics": {"replication_factor": 2, "min_insync_replicas": 3}}
    with pytest.raises(ConfigError, match=r"^topics\.min_insync_replicas: .*"
                       r"topics\.replication_factor \(2\); got 3$") as err:
        decode_section(doc, CommonConfig)
    assert err.value.path == "topics.min_insync_replicas"
    good = decode_section({"topics": {"replication_factor": 3, "min_insync_replicas": 3}},
                          CommonConfig)
    assert {s.config["min.insync.replicas"] for s in topic_specs("prod", good.topics)} == {"3"}


@pytest.mark.parametrize("name", ["fetch.wait.max.mss", "socket.keepalive", "acks.all"])
def test_a_misspelt_librdkafka_property_in_kafka_extra_is_refused(name: str) -> None:
    """``[kafka] extra`` reaches librdkafka, which refuses a property it does not know
    only when a client is built, after start-up; now start-up refuses it, naming it."""
    from riskguard.config import CommonConfig, decode_section

    doc = {"kafka": {"bootstrap": "b:1", "extra": {"linger.ms": "5", name: "1"}}}
    with pytest.raises(ConfigError, match=rf"^kafka\.extra\.{name}: .*librdkafka") as err:
        decode_section(doc, CommonConfig)
    assert err.value.path == f"kafka.extra.{name}"


def test_a_bad_value_of_a_librdkafka_property_in_kafka_extra_is_refused() -> None:
    from riskguard.config import CommonConfig, decode_section

    doc = {"kafka": {"bootstrap": "b:1", "extra": {"acks": "sometimes"}}}
    with pytest.raises(ConfigError, match=r"^kafka\.extra\.acks: ") as err:
        decode_section(doc, CommonConfig)
    assert err.value.found == "sometimes"


def test_a_secret_in_a_refused_kafka_extra_property_is_not_shown() -> None:
    from riskguard.config import CommonConfig, decode_section

    doc = {"kafka": {"bootstrap": "b:1", "extra": {"sasl.passwd": "hunter2"}}}
    with pytest.raises(ConfigError, match=r"^kafka\.extra\.sasl\.passwd: ") as err:
        decode_section(doc, CommonConfig)
    assert "hunter2" not in str(err.value)


def test_kafka_extra_keeps_properties_of_only_consumers_or_only_producers() -> None:
    """One ``extra`` table serves consumers, producers and admin clients: a property of
    one kind of client is valid (librdkafka ignores it in the others)."""
    from riskguard.config import CommonConfig, decode_section

    extra = {"fetch.wait.max.ms": "100", "auto.offset.reset": "earliest", "linger.ms": "5",
             "acks": "all", "socket.keepalive.enable": "true", "compression.type": "lz4"}
    cfg = decode_section({"kafka": {"bootstrap": "b:1", "extra": extra}}, CommonConfig)
    assert cfg.kafka.extra == extra


def _ns_fields(t: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key path of every integer ``_ns`` setting of the config tree under ``t``."""
    import msgspec.inspect as mi

    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        ints = [m for m in t.types if isinstance(getattr(m, "type", m), mi.IntType)]
        if ints and path[-1].endswith("_ns"):
            return [path]
        return [p for m in t.types for p in _ns_fields(m, path)]
    if isinstance(t, mi.IntType):
        return [path] if path and path[-1].endswith("_ns") else []
    if isinstance(t, mi.StructType):
        return [p for f in t.fields for p in _ns_fields(f.type, (*path, f.encode_name))]
    if isinstance(t, mi.DictType):
        keys = t.key_type
        key = str(keys.values[0]) if isinstance(keys, mi.LiteralType) else "x"
        return _ns_fields(t.value_type, (*path, key))
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return _ns_fields(t.item_type, (*path, "[0]"))
    return []


def _ns_doc(path: tuple[str, ...], value: int) -> object:
    doc: object = value
    for part in reversed(path):
        doc = [doc] if part == "[0]" else {part: doc}
    return doc


def _guard_ns_fields() -> list[tuple[str, ...]]:
    import msgspec.inspect as mi
    from riskguard.dataflows.guard import GuardConfig

    return _ns_fields(mi.type_info(GuardConfig))


NS_FIELDS = _guard_ns_fields()


def test_the_ns_walk_reaches_the_nested_settings() -> None:
    dotted = {".".join(p).replace(".[0]", "[0]") for p in NS_FIELDS}
    assert {"tick_ns", "input.max_lead_ns", "feeds.venues.x.max_gap_ns", "features.bar_ns",
            "detector.warmup_ns", "exposure.max_hold_ns",
            "limits.counterparties.x.limits.collateral.unvalued_grace_ns",
            "audit.checkpoint_interval_ns"} <= dotted, sorted(dotted)


@pytest.mark.parametrize("path", NS_FIELDS,
                         ids=[".".join(p).replace(".[0]", "[0]") for p in NS_FIELDS])
def test_a_span_in_nanoseconds_that_would_overflow_is_refused(path: tuple[str, ...]) -> None:
    """``warmup_ns = 10**30`` decoded, then overflowed the 64-bit event times it is added
    to; every integer ``_ns`` setting is now bounded (a year and a day at most)."""
    from riskguard.dataflows.guard import GuardConfig

    from riskguard.config import decode_section

    where = ".".join(path).replace(".[0]", "[0]")
    for big in (10**30, 2**63, 366 * 86_400 * 1_000_000_000 + 1):
        with pytest.raises(ConfigError, match=r"must be <= ") as err:
            decode_section({**KEYS, **_ns_doc(path, big)}, GuardConfig)
        assert err.value.path == where
