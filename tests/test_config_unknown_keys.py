"""A misspelt config key stops start-up naming its full path (with the key meant), in
every section of the guard config, its playbook file and a stress scenario; the shipped
configs still load."""

from __future__ import annotations

import re
import shutil
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml
from riskguard.dataflows import stress
from riskguard.dataflows.guard import GuardConfig, load_guard_config
from riskguard.operators.mitigation.playbook import PlaybookConfig

from riskguard.config import check_known_keys, decode_section, read_playbook_file
from riskguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATAFLOWS = Path(str(resources.files("riskguard.dataflows")))
KEYS = '\n[keys]\nsigning_key = "k.pem"\ntrust_file = "trust.toml"\nroots_file = "roots.toml"\n'


def _typo(name: str) -> str:
    """A near miss of ``name``: its last character dropped (or one added to a short one)."""
    return name[:-1] if len(name) > 3 else name + "x"


def _sections(t: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every table of the config tree: (its key path, its struct type info). A table of
    named entries contributes its entries (key ``x``, or the first of the names its keys
    must be), an array of tables its first one."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        return [s for m in t.types for s in _sections(m, path)]
    if isinstance(t, mi.StructType):
        out = [(path, t)]
        for f in t.fields:
            out += _sections(f.type, (*path, f.encode_name))
        return out
    if isinstance(t, mi.DictType):
        keys = t.key_type
        key = str(keys.values[0]) if isinstance(keys, mi.LiteralType) else "x"
        return _sections(t.value_type, (*path, key))
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return _sections(t.item_type, (*path, "[0]"))
    return []


def _nest(path: tuple[str, ...], leaf: dict[str, Any]) -> Any:
    out: Any = leaf
    for part in reversed(path):
        out = [out] if part == "[0]" else {part: out}
    return out


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[0]", "[0]")


SECTIONS = _sections(mi.type_info(GuardConfig))


def test_the_walk_reaches_every_operator_section() -> None:
    """The sections below include each operator's table, its nested tables, tables of
    named entries and arrays of tables (so the typo test covers them all)."""
    paths = {_dotted(p) for p, _ in SECTIONS}
    assert {"", "kafka", "topics", "keys", "input", "feeds", "feeds.venues.x", "features",
            "detector", "detector.bands", "detector.cross", "exposure",
            "exposure.instruments.instruments.x", "limits", "limits.counterparties.x",
            "playbook", "playbook.rules[0]", "playbook.rules[0].ladder[0]", "sign", "audit",
            "tier"} <= paths


@pytest.mark.parametrize(("path", "struct"), SECTIONS, ids=[_dotted(p) or "(root)"
                                                          for p, _ in SECTIONS])
def test_a_misspelt_key_in_every_section_is_refused_with_its_path(path, struct) -> None:
    """For each table, its first setting misspelt is refused, the error naming the full
    key path and the setting meant, not decoded to the default."""
    field = struct.fields[0].encode_name
    bad = _typo(field)
    with pytest.raises(ConfigError) as err:
        decode_section(_nest(path, {bad: 1}), GuardConfig)
    where = _dotted((*path, bad))
    assert err.value.path == where
    assert str(err.value).startswith(f"{where}: is not a known setting")
    assert f"did you mean `{field}`?" in str(err.value)


@pytest.mark.parametrize(("section", "good", "bad"), [
    ("[detector]", "warmup_events = 300", "warmup_event = 300"),
    ("[feeds.venues.binance]", "max_gap_ns = 3_000_000_000", "max_gapns = 3_000_000_000"),
    ("[tier]", 'role = "whole"', 'rolle = "whole"'),
])
def test_the_example_config_with_a_typo_does_not_start(tmp_path, section, good, bad) -> None:
    """guard.example.toml loads; one misspelt key in it stops load_guard_config (what
    ``riskguard run`` calls first) naming the key and the one meant."""
    shutil.copy(DATAFLOWS / "playbook.toml", tmp_path / "playbook.toml")
    text = (DATAFLOWS / "guard.example.toml").read_text()
    assert section in text and good in text
    path = tmp_path / "guard.toml"
    path.write_text(text)
    load_guard_config(path)
    path.write_text(text.replace(good, bad, 1))
    with pytest.raises(ConfigError, match=r"is not a known setting \(did you mean") as err:
        load_guard_config(path)
    assert err.value.path.endswith(bad.split(" ")[0])
    assert err.value.path.startswith(section.strip("[]").split(".")[0])


def test_a_secret_under_a_misspelt_key_is_not_printed() -> None:
    """A password under a misspelt key is named, its value masked."""
    with pytest.raises(ConfigError) as err:
        decode_section({"kafka": {"bootstrap": "b:1", "sasl_passwrod": "hunter2"}},
                       GuardConfig)
    assert err.value.path == "kafka.sasl_passwrod"
    assert "hunter2" not in str(err.value) and "sasl_password" in str(err.value)


class _Cat(msgspec.Struct, tag="cat", forbid_unknown_fields=True):
    lives: int = 9


class _Dog(msgspec.Struct, tag="dog"):
    tricks: list[str] = []


class _Pets(msgspec.Struct):
    pets: list[_Cat | _Dog] = []
    best: _Dog | None = None


def test_tagged_union_and_optional_members_are_checked() -> None:
    """A table in a tagged union is checked against the member its tag names; an
    optional table against its struct."""
    assert decode_section({"pets": [{"type": "dog", "tricks": ["sit"]}]}, _Pets).pets
    with pytest.raises(ConfigError, match=r"^pets\[1\]\.trick: is not a known setting "
                                          r"\(did you mean `tricks`\?\)"):
        decode_section({"pets": [{"type": "cat"}, {"type": "dog", "trick": []}]}, _Pets)
    with pytest.raises(ConfigError, match=r"^best\.trickz: "):
        decode_section({"best": {"trickz": []}}, _Pets)


def test_a_playbook_file_holds_its_one_table(tmp_path) -> None:
    """A playbook file whose table is misspelt is refused (it would run with no rules);
    so is a config that names a playbook file and has a [playbook] of its own."""
    shutil.copy(DATAFLOWS / "playbook.toml", tmp_path / "playbook.toml")
    guard = tmp_path / "guard.toml"
    guard.write_text((DATAFLOWS / "guard.example.toml").read_text())
    assert load_guard_config(guard)[0].playbook.rules
    (tmp_path / "playbook.toml").write_text(
        (DATAFLOWS / "playbook.toml").read_text().replace("[playbook]", "[playbok]", 1)
        .replace("[[playbook.rules]]", "[[playbok.rules]]"))
    with pytest.raises(ConfigError, match=r"playbok: is not a known setting of a playbook "
                                          r"file .*did you mean `playbook`"):
        load_guard_config(guard)
    shutil.copy(DATAFLOWS / "playbook.toml", tmp_path / "playbook.toml")
    guard.write_text(guard.read_text() + '\n[playbook]\nissuer = "x"\n')
    with pytest.raises(ConfigError, match=r"^playbook_file: either playbook_file or"):
        load_guard_config(guard)


def test_a_misspelt_rung_param_table_and_scenario_key_are_refused(tmp_path) -> None:
    """A rung's misspelt key in the playbook and a scenario's misspelt key are refused
    with their paths."""
    doc = tomllib.loads((DATAFLOWS / "playbook.toml").read_text())["playbook"]
    doc["rules"][0]["ladder"][1]["parms"] = doc["rules"][0]["ladder"][1].pop("params")
    with pytest.raises(ConfigError, match=r"^playbook\.rules\[0\]\.ladder\[1\]\.parms: is not "
                                          r"a known setting \(did you mean `params`\?\)"):
        decode_section(doc, PlaybookConfig, "playbook")
    text = (DATAFLOWS / "scenarios" / "flash_crash.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(text.replace("duration_s =", "durations_s =", 1))
    with pytest.raises(ConfigError, match=r"^durations_s: is not a known setting \(did you "
                                          r"mean `duration_s`\?\)"):
        stress.load_scenario(path)


# -- the shipped configs -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["guard.example.toml", "demo.toml"])
def test_the_shipped_guard_configs_load(tmp_path, name) -> None:
    """The example and demo configs (the demo with the [keys] it is given) load."""
    shutil.copy(DATAFLOWS / "playbook.toml", tmp_path / "playbook.toml")
    text = (DATAFLOWS / name).read_text()
    (tmp_path / name).write_text(text if "\n[keys]" in text else text + KEYS)
    cfg, _ = load_guard_config(tmp_path / name)
    assert cfg.playbook.rules


def test_the_bundled_playbook_and_scenarios_load(tmp_path) -> None:
    """playbook.toml holds only [playbook] and decodes; every bundled scenario and the
    guard config it makes hold only known keys."""
    decode_section(read_playbook_file(DATAFLOWS / "playbook.toml"), PlaybookConfig, "playbook")
    keys = stress.init_keys(tmp_path)
    for name in stress.bundled():
        sc = stress.load_scenario(stress.scenario_path(name))
        check_known_keys(stress.guard_config_doc(sc, keys), GuardConfig)


def test_the_k8s_configmap_guard_configs_hold_only_known_keys() -> None:
    """Each guard TOML embedded in ops/k8s/configmap.yaml holds only known settings."""
    data = yaml.safe_load((ROOT / "ops" / "k8s" / "configmap.yaml").read_text())["data"]
    guards = {k: v for k, v in data.items() if k.startswith("guard") and k.endswith(".toml")}
    assert len(guards) >= 3
    for text in guards.values():
        check_known_keys(tomllib.loads(text), GuardConfig)


def test_the_readme_and_docs_config_snippets_hold_only_known_keys() -> None:
    """Every ```toml block of the README and docs/ is part of a guard config, a trust
    file (it has ``[[keys]]``) holding only the keys a trust file takes, or an
    executor's market map (```toml markets.toml) that loads, or the detection bench's
    labels (```toml labels.toml)."""
    from riskguard.executors.scopes import MarketMap
    from riskguard.operators.signing import trust

    blocks = [(m.group(1).strip(), m.group(2))
              for md in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
              for m in re.finditer(r"```toml([^\n]*)\n(.*?)```", md.read_text(), re.S)]
    assert blocks
    assert any(name == "markets.toml" for name, _ in blocks)
    for name, block in blocks:
        data = tomllib.loads(block)
        if name == "markets.toml":
            MarketMap.from_dict(data)
            continue
        if name == "labels.toml":  # the detection bench's labels of one's own files
            fields = {"file", "name", "series", "onset", "end", "resolution", "rule", "note"}
            assert set(data) == {"incident"}, block
            assert all(set(i) <= fields and {"file", "series", "onset", "end"} <= set(i)
                       for i in data["incident"]), block
            continue
        if "keys" in data and isinstance(data["keys"], list):
            assert set(data) <= set(trust.TrustFile.__struct_fields__), block
            key_fields = set(trust.KeyEntry.__struct_fields__)
            assert all(set(k) <= key_fields for k in data["keys"]), block
            two_person_fields = set(trust.TwoPersonEntry.__struct_fields__)
            assert set(data.get("two_person", {})) <= two_person_fields, block
            assert set(data.get("max_ttl_s", {})) <= trust.TTL_ACTIONS | {"default"}, block
            continue
        check_known_keys(data, GuardConfig)


# -- bad values --------------------------------------------------------------------------


@pytest.mark.parametrize(("good", "bad", "key"), [
    ("peg_critical_bps = 200.0", "peg_critical_bps = nan", "exposure.peg_critical_bps"),
    ("peg_critical_bps = 200.0", "peg_critical_bps = inf", "exposure.peg_critical_bps"),
    ("peg_warn_bps = 50.0", "peg_warn_bps = inf", "exposure.peg_warn_bps"),
    ("dedup_window = 4096", "dedup_window = 0", "exposure.dedup_window"),
    ("dedup_window = 4096", "dedup_window = -5", "exposure.dedup_window"),
    ("drift_delta = 0.0001", "drift_delta = nan", "detector.drift_delta"),
    ("drift_delta = 0.0001", "drift_delta = -1.0", "detector.drift_delta"),
    ("drift_delta = 0.0001", "drift_delta = 5.0", "detector.drift_delta"),
    ("warn_excess = 0.05", "warn_excess = nan", "detector.warn_excess"),
    ("warn_excess = 0.05", "warn_excess = 0.5", "detector.warn_excess"),
    ("critical_excess = 0.15", "critical_excess = nan", "detector.critical_excess"),
    ("warn_duration_ns = 10_000_000_000", "warn_duration_ns = -1", "detector.warn_duration_ns"),
    ("protect_max_episodes = 3.0", "protect_max_episodes = nan",
     "detector.protect_max_episodes"),
    ("squash_scale = 8.0", "squash_scale = inf", "detector.squash_scale"),
    ("tail_min_z = 4.0", "tail_min_z = inf", "detector.tail_min_z"),
    ("critical_ratio = 1.25", "critical_ratio = inf", "detector.bands.critical_ratio"),
    ("critical_ratio = 2.0", "critical_ratio = inf", "detector.cross.critical_ratio"),
    ("# threshold_floor = 0.5", "threshold_floor = nan", "detector.threshold_floor"),
    ("gc_gen0_threshold = 50_000", "gc_gen0_threshold = 1_099_511_627_776",
     "gc_gen0_threshold"),
    ("tick_ns = 1_000_000_000", "tick_ns = 4_611_686_018_427_387_904", "tick_ns"),
    ("default_partitions = 4", "default_partitions = -1", "topics.default_partitions"),
    ("replication_factor = 3", "replication_factor = 0", "topics.replication_factor"),
    ("min_insync_replicas = 2", "min_insync_replicas = 0", "topics.min_insync_replicas"),
    ("audit = -1", "audit = -2", "topics.retention_ms.audit"),
])
def test_a_bad_value_in_the_example_config_does_not_start(tmp_path, good, bad, key) -> None:
    """A value that would crash the guard or silently turn a check off (nan, inf, 0 or a
    negative where none is meant) stops load_guard_config naming its key."""
    shutil.copy(DATAFLOWS / "playbook.toml", tmp_path / "playbook.toml")
    text = (DATAFLOWS / "guard.example.toml").read_text()
    assert good in text
    path = tmp_path / "guard.toml"
    path.write_text(text.replace(good, bad, 1))
    with pytest.raises(ConfigError) as err:
        load_guard_config(path)
    assert err.value.path == key, str(err.value)
