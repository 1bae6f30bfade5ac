"""Config errors name the key path; the CLI answers --help and --version; topics get created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from riskguard.connectors.settings import KafkaSettings

from riskguard import __version__
from riskguard.config import CommonConfig, decode_section, load_common, read_toml
from riskguard.errors import ConfigError


class _Limit(msgspec.Struct, frozen=True, kw_only=True):
    gross_notional: float = msgspec.field(default=1.0)


class _Limits(msgspec.Struct, frozen=True, kw_only=True):
    counterparty: dict[str, dict[str, float]] = {}


def edited_example(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """``guard.example.toml`` (with its playbook file) in ``tmp_path`` as ``guard.toml``,
    each ``(old, new)`` of ``edits`` replaced once (``old`` must be in it)."""
    from importlib import resources

    src = resources.files("riskguard.dataflows").joinpath("guard.example.toml")
    text = src.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    (tmp_path / "playbook.toml").write_text(src.parent.joinpath("playbook.toml").read_text())
    path = tmp_path / "guard.toml"
    path.write_text(text)
    return path


def test_constraint_error_names_path_expectation_and_value() -> None:
    """A negative limit is reported as 'limits....gross_notional: must be > 0; got -5'."""
    class Limits(msgspec.Struct, frozen=True):
        counterparty: dict[str, dict[str, Annotated[float, msgspec.Meta(gt=0)]]]

    with pytest.raises(ConfigError) as err:
        decode_section({"counterparty": {"okx": {"gross_notional": -5}}}, Limits, "limits")
    assert str(err.value) == "limits.counterparty.okx.gross_notional: must be > 0; got -5"
    assert err.value.path == "limits.counterparty.okx.gross_notional" and err.value.found == -5


def test_wrong_type_and_missing_and_unknown_keys_are_named(tmp_path: Path) -> None:
    """Type errors, missing keys and unknown keys each name the key path."""
    with pytest.raises(ConfigError, match=r"^kafka\.bootstrap: must be str; got 9092$"):
        decode_section({"kafka": {"bootstrap": 9092}}, CommonConfig)
    with pytest.raises(ConfigError, match=r"^kafka\.bootstrap: is required"):
        decode_section({"kafka": {}}, CommonConfig)
    with pytest.raises(ConfigError, match=r"^topics\.partitionz: is not a known setting"):
        decode_section({"topics": {"partitionz": {}}}, CommonConfig)


def test_toml_syntax_error_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """Unreadable config files stop start-up with the file named."""
    bad = tmp_path / "bad.toml"
    bad.write_text("env = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        read_toml(tmp_path / "missing.toml")


def test_secrets_never_appear_in_repr_or_redacted_config() -> None:
    """SASL and TLS secrets pass through to clients but are masked everywhere printable."""
    s = KafkaSettings(bootstrap="b:1", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                      sasl_password="s3cret", ssl_key_password="k3y",
                      extra={"sasl.oauthbearer.client.secret": "t0ken-value"})
    cfg = s.client_config()
    assert cfg["sasl.password"] == "s3cret" and cfg["ssl.key.password"] == "k3y"
    for text in (repr(s), str(s), str(s.redacted())):
        assert "s3cret" not in text and "k3y" not in text and "t0ken-value" not in text


def test_cli_help_and_version() -> None:
    """`riskguard --version` prints the version; `--help` lists subcommands."""
    v = subprocess.run([sys.executable, "-m", "riskguard.cli", "--version"],
                       capture_output=True, text=True, check=True)
    assert v.stdout.strip() == f"riskguard {__version__}"
    h = subprocess.run([sys.executable, "-m", "riskguard.cli", "--help"],
                       capture_output=True, text=True, check=True)
    assert "broker" in h.stdout and "topics" in h.stdout


@pytest.mark.kafka
def test_topics_create_makes_every_stream_topic_with_configured_partitions(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`riskguard topics create` creates <env>.riskguard.<stream>.v1 with partition counts
    from config."""
    import uuid

    from riskguard.connectors.kafka import list_partitions

    env = f"t{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'env = "{env}"\n[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        '[topics]\ndefault_partitions = 1\npartitions = { market = 3 }\n'
    )
    assert load_common(cfg).env == env
    create = [sys.executable, "-m", "riskguard.cli", "topics", "create", "--config", str(cfg)]
    r = subprocess.run(create, capture_output=True, text=True, check=True)
    assert f"{env}.riskguard.commands.v1" in r.stdout
    s = KafkaSettings(bootstrap=kafka_bootstrap)
    assert len(list_partitions(s, f"{env}.riskguard.market.v1")) == 3
    assert len(list_partitions(s, f"{env}.riskguard.commands.v1")) == 1
    again = subprocess.run(create, capture_output=True, text=True, check=True)
    assert "exists" in again.stdout


def test_cli_broker_start_status_stop(tmp_path: Path) -> None:
    """`riskguard broker start` prints an address that answers; `stop` ends only that broker."""
    base = [sys.executable, "-m", "riskguard.cli", "broker"]
    started = subprocess.run([*base, "start", "--state-dir", str(tmp_path)],
                             capture_output=True, text=True, check=True)
    address = started.stdout.strip()
    assert address.startswith("127.0.0.1:")
    status = subprocess.run([*base, "status", "--state-dir", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert status.returncode == 0 and status.stdout.strip() == address
    subprocess.run([*base, "stop", "--state-dir", str(tmp_path)], check=True, capture_output=True)
    after = subprocess.run([*base, "status", "--state-dir", str(tmp_path)],
                           capture_output=True, text=True, check=False)
    assert after.returncode == 1


def test_the_documented_example_config_loads_and_names_every_setting() -> None:
    """dataflows/guard.example.toml decodes and validates as a GuardConfig, and every
    field of every config section is a key in it or in the playbook file it includes,
    set or commented out (``# name = ...``), so the example cannot fall behind the code."""
    import re
    import tomllib
    from importlib import resources

    import msgspec
    from riskguard.dataflows.guard import GuardConfig, load_guard_config

    path = resources.files("riskguard.dataflows").joinpath("guard.example.toml")
    cfg, _ = load_guard_config(str(path))
    assert cfg.env == "prod" and cfg.playbook.rules and cfg.exposure.pegs
    texts = [path.read_text(), path.parent.joinpath("playbook.toml").read_text()]

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    named = {k for t in texts for k in keys(tomllib.loads(t))}
    named |= {m for t in texts for m in re.findall(r"^#\s*([a-z_]+)\s*=", t, flags=re.M)}

    def fields(t: type, where: str) -> list[str]:
        out = []
        for f in msgspec.structs.fields(t):
            out.append(f"{where}{f.name}")
            if isinstance(f.default, msgspec.Struct):
                out += fields(type(f.default), f"{where}{f.name}.")
        return out

    missing = [p for p in fields(GuardConfig, "") if p.rsplit(".", 1)[-1] not in named
               and p != "audit.config_hash"]
    assert missing == [], f"guard.example.toml does not document: {missing}"


def test_a_market_process_refuses_an_index_source_with_a_feed_failover_pair(
    tmp_path: Path,
) -> None:
    """Each market process routes its own copy of an index price around feed selection,
    so an index source with a [feeds.venues] pair stops a market process's start-up
    naming the setting and the venue; the whole guard takes it."""
    from riskguard.dataflows.guard import load_guard_config

    binance = ('index_sources = ["index"]', 'index_sources = ["binance"]')
    assert load_guard_config(edited_example(tmp_path, binance))[0].tier.role == "whole"
    path = edited_example(tmp_path, binance, ('role = "whole"', 'role = "market"'))
    with pytest.raises(ConfigError, match=r"^tier\.role: .*binance"):
        load_guard_config(path)


def test_a_market_process_takes_its_index_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RISKGUARD_TIER_INDEX`` (set from a pod's ordinal) overrides ``tier.index``, so a
    StatefulSet of market processes shares one config file; an index that names no
    market process, or is not a number, stops start-up naming where it came from."""
    from riskguard.dataflows.guard import load_guard_config

    path = edited_example(tmp_path, ('role = "whole"', 'role = "market"'),
                          ("market_processes = 1 ", "market_processes = 3 "))
    monkeypatch.setenv("RISKGUARD_TIER_INDEX", "2")
    assert load_guard_config(path)[0].tier.index == 2
    monkeypatch.setenv("RISKGUARD_TIER_INDEX", "3")
    with pytest.raises(ConfigError,
                       match=r"^tier\.index: .*below market_processes \(3\); got 3$"):
        load_guard_config(path)
    monkeypatch.setenv("RISKGUARD_TIER_INDEX", "two")
    with pytest.raises(ConfigError, match=r"^RISKGUARD_TIER_INDEX: .*got 'two'$"):
        load_guard_config(path)


def test_the_guards_fetch_wait_reaches_its_consumer_and_is_bounded(tmp_path: Path) -> None:
    """``input.fetch_wait_max_ms`` is the guard consumer's ``fetch.wait.max.ms`` (which
    ``kafka.extra`` cannot set: the source's own value comes last); 0 stops start-up
    naming the setting."""
    from bytewax.dataflow import Dataflow
    from riskguard.connectors.kafka import KafkaInput
    from riskguard.dataflows import guard

    path = edited_example(tmp_path, ("fetch_wait_max_ms = 10 ", "fetch_wait_max_ms = 0  "))
    with pytest.raises(ConfigError, match=r"^input\.fetch_wait_max_ms: must be >= 1; got 0$"):
        guard.load_guard_config(path)
    path = edited_example(tmp_path, ("fetch_wait_max_ms = 10 ", "fetch_wait_max_ms = 250"))
    cfg = guard.load_guard_config(path)[0]
    flow = Dataflow("fetch_wait")
    guard.kafka_io.guard_input(flow, cfg, ("market", "fills"), lambda: 0)

    def steps(step: object) -> list[object]:
        return [step, *(s for sub in getattr(step, "substeps", []) for s in steps(sub))]

    sources = [s.source for s in steps(flow) if isinstance(getattr(s, "source", None),
                                                           KafkaInput)]
    assert [s.consumer_config()["fetch.wait.max.ms"] for s in sources] == [250]


def test_a_brokers_flag_changes_only_the_address(tmp_path: Path) -> None:
    """``--config`` with TLS and ``--brokers``/``--bootstrap``: every command line that
    takes both keeps the config's TLS settings and topic settings, and the flags win."""
    from riskguard.config import common_config

    path = tmp_path / "guard.toml"
    path.write_text('env = "prod"\n[kafka]\nbootstrap = "k:9093"\nsecurity_protocol = "SSL"\n')
    cfg = common_config(str(path), brokers="x:1")
    assert (cfg.env, cfg.kafka.bootstrap, cfg.kafka.security_protocol) == ("prod", "x:1", "SSL")
    cfg = common_config(str(path), env="uat")
    assert (cfg.env, cfg.kafka.bootstrap) == ("uat", "k:9093")


@pytest.mark.parametrize(("edit", "key", "meant"), [
    (('"BTC-PERP"]\ngross_notional', '"BTC-PREP"]\ngross_notional'),
     "limits.counterparties.binance.instruments.BTC-PREP", "BTC-PERP"),
    (("[limits.counterparties.binance.assets.ETH]", "[limits.counterparties.binance.assets.ETHH]"),
     "limits.counterparties.binance.assets.ETHH", "ETH"),
    (("[limits.firm_assets.BTC]", "[limits.firm_assets.XBT]"), "limits.firm_assets.XBT", "BTC"),
    (('underlying = "BTC", ref_vol', 'underlying = "BTCC", ref_vol'),
     "limits.counterparties.binance.limits.delta.vol_scaling.underlying", "BTC"),
])
def test_a_limit_on_a_name_the_instruments_do_not_declare_stops_start_up(
        tmp_path: Path, edit: tuple[str, str], key: str, meant: str) -> None:
    """A limit on an instrument, asset or volatility underlying no instrument declares
    measured 0 (or the missing-vol factor) for ever; it stops start-up, naming its key."""
    from riskguard.dataflows.guard import load_guard_config

    with pytest.raises(ConfigError) as err:
        load_guard_config(edited_example(tmp_path, edit))
    assert err.value.path == key
    assert f"did you mean `{meant}`" in str(err.value)
