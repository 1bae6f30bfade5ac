"""A misspelt ``RISKGUARD_*`` variable stops the start and names itself, as an unknown
config key does: the CLI, ``python -m bytewax.run riskguard.dataflows.guard`` and
``python -m riskguard.flink.guard`` check the environment before anything else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from riskguard import environment
from riskguard.environment import VARIABLES, check_environment, markdown_table
from riskguard.errors import ConfigError

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
PORT_TYPO = "RISKGUARD_METRICS_PROT"  # deliberate misspellings, in no registry
TIER_TYPO = "RISKGUARD_TEIR_INDEX"


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without ``RISKGUARD_LOG``, with ``extra`` set over it."""
    return {k: v for k, v in os.environ.items() if k != "RISKGUARD_LOG"} | extra


def test_the_installed_cli_refuses_a_misspelt_variable_in_one_line() -> None:
    """``riskguard stress list`` (a command that needs nothing else) with
    ``RISKGUARD_METRICS_PROT`` set: exit 2, one line naming it and the name meant."""
    done = subprocess.run([str(BIN / "riskguard"), "stress", "list"],
                          env=_clean_env(**{PORT_TYPO: "3030"}), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"riskguard stress list: {PORT_TYPO}: "), done.stderr
    assert "(did you mean `RISKGUARD_METRICS_PORT`?)" in done.stderr, done.stderr
    assert "3030" not in done.stderr  # an unknown variable's value may be a secret
    ok = subprocess.run([str(BIN / "riskguard"), "stress", "list"], env=_clean_env(),
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_the_flow_factory_refuses_a_misspelt_variable(monkeypatch) -> None:
    """``python -m bytewax.run riskguard.dataflows.guard`` takes the module's ``flow``:
    with ``RISKGUARD_TEIR_INDEX`` set it is a ConfigError naming it, before the config
    (here none) is read."""
    from riskguard.dataflows import guard

    monkeypatch.delenv("RISKGUARD_CONFIG", raising=False)
    monkeypatch.setenv(TIER_TYPO, "1")
    with pytest.raises(ConfigError, match=TIER_TYPO) as err:
        _ = guard.flow
    assert "(did you mean `RISKGUARD_TIER_INDEX`?)" in str(err.value)


def test_bytewax_run_of_the_guard_stops_naming_a_misspelt_variable(tmp_path) -> None:
    """The same as a pod runs it: ``python -m bytewax.run`` exits, naming the variable."""
    env = _clean_env(**{TIER_TYPO: "1", "RISKGUARD_CONFIG": str(tmp_path / "none.toml")})
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert TIER_TYPO in done.stderr and "RISKGUARD_TIER_INDEX" in done.stderr, \
        done.stderr[-2000:]


def test_the_flink_job_refuses_a_misspelt_variable(monkeypatch, tmp_path) -> None:
    """``python -m riskguard.flink.guard``'s main checks before it loads anything."""
    from riskguard.flink.guard import main

    monkeypatch.setenv(PORT_TYPO, "9250")
    with pytest.raises(ConfigError, match=PORT_TYPO):
        main(["--config", str(tmp_path / "none.toml")])


# -- the check itself


def test_every_variable_riskguard_reads_passes_and_others_are_ignored() -> None:
    check_environment(dict.fromkeys(VARIABLES, "x") | {"HOME": "/root", "PATH": "/bin"})


@pytest.mark.parametrize(("name", "meant"), [
    (PORT_TYPO, "RISKGUARD_METRICS_PORT"),
    (TIER_TYPO, "RISKGUARD_TIER_INDEX"),
    ("riskguard_log", "RISKGUARD_LOG"),  # names are case-sensitive: read as unset
    ("RISKGUARD_METRICS_PORT_", "RISKGUARD_METRICS_PORT"),
    ("RISKGUARD_FLINK_REST_PORT", None),  # a link variable without its Service's host
])
def test_an_unknown_name_is_refused_by_name_with_the_name_meant(name: str,
                                                                 meant: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        check_environment({"RISKGUARD_LOG": "debug", name: "s3cret"})
    assert err.value.path == name
    assert str(err.value).startswith(f"{name}: is not a variable riskguard reads")
    if meant is not None:
        assert f"(did you mean `{meant}`?)" in str(err.value)
    assert "s3cret" not in str(err.value) + "".join(err.value.__notes__)
    assert "docs/operations.md" in "".join(err.value.__notes__)


def test_the_first_unknown_name_is_named() -> None:
    with pytest.raises(ConfigError, match=f"^{PORT_TYPO}:"):
        check_environment({TIER_TYPO: "1", PORT_TYPO: "1"})


def test_the_variables_kubernetes_sets_for_a_service_pass() -> None:
    """The Flink operator's REST Service ``riskguard-flink-rest`` (a cluster IP) gives
    every later pod of the namespace its link variables; they are not riskguard's."""
    links = {
        "RISKGUARD_FLINK_REST_SERVICE_HOST": "10.0.0.7",
        "RISKGUARD_FLINK_REST_SERVICE_PORT": "8081",
        "RISKGUARD_FLINK_REST_SERVICE_PORT_REST": "8081",
        "RISKGUARD_FLINK_REST_PORT": "tcp://10.0.0.7:8081",
        "RISKGUARD_FLINK_REST_PORT_8081_TCP": "tcp://10.0.0.7:8081",
        "RISKGUARD_FLINK_REST_PORT_8081_TCP_PROTO": "tcp",
        "RISKGUARD_FLINK_REST_PORT_8081_TCP_PORT": "8081",
        "RISKGUARD_FLINK_REST_PORT_8081_TCP_ADDR": "10.0.0.7",
        "RISKGUARD_SERVICE_HOST": "10.0.0.8",  # a Service named riskguard
        "RISKGUARD_PORT": "tcp://10.0.0.8:3030",
    }
    check_environment({"RISKGUARD_CONFIG": "/etc/riskguard/guard.toml"} | links)
    with pytest.raises(ConfigError, match="RISKGUARD_FLINK_REST_PROT"):
        check_environment(links | {"RISKGUARD_FLINK_REST_PROT": "8081"})


# -- the registry is every name, and only names in use


NAME = re.compile(r"\bRISKGUARD_[A-Z][A-Z0-9_]*")
NOT_VARIABLES = {
    PORT_TYPO, TIER_TYPO,  # misspellings shown as such
    # Kubernetes link variables of a Service named riskguard-flink-rest (examples)
    "RISKGUARD_FLINK_REST_SERVICE_HOST", "RISKGUARD_FLINK_REST_SERVICE_PORT",
    "RISKGUARD_FLINK_REST_SERVICE_PORT_REST", "RISKGUARD_FLINK_REST_PORT",
    "RISKGUARD_FLINK_REST_PORT_8081_TCP", "RISKGUARD_FLINK_REST_PORT_8081_TCP_PROTO",
    "RISKGUARD_FLINK_REST_PORT_8081_TCP_PORT", "RISKGUARD_FLINK_REST_PORT_8081_TCP_ADDR",
    "RISKGUARD_FLINK_REST_PROT", "RISKGUARD_FLINK_RESTPORT",
    "RISKGUARD_SERVICE_HOST", "RISKGUARD_PORT", "RISKGUARD_METRICS_PORT_",
}


def _tracked() -> dict[str, str]:
    """Every file of the clone git tracks (source, tests, benches, ops/, docs/), by path."""
    paths = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    out = {}
    for path in filter(None, paths):
        try:
            out[path] = (ROOT / path).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    return out


def test_every_riskguard_name_in_the_tree_is_in_the_registry() -> None:
    """A ``RISKGUARD_*`` name anywhere (code, tests, benches, manifests, docs) is one
    riskguard reads: a name the code reads but the check would refuse is caught here."""
    files = _tracked()
    assert {"ops/k8s/entrypoint.sh", "docs/operations.md", "riskguard/cli_run.py",
            "tests/conftest.py"} <= set(files)
    unknown = sorted({f"{path}: {name}" for path, text in files.items()
                      for name in NAME.findall(text)
                      if name not in VARIABLES and name not in NOT_VARIABLES})
    assert unknown == []
    assert not NOT_VARIABLES & set(VARIABLES)


def test_every_registry_entry_is_used_somewhere() -> None:
    """Each variable in the registry is read or set outside it (by its name, or by its
    constant imported from riskguard.environment), not only listed in docs."""
    files = {p: t for p, t in _tracked().items()
             if not p.endswith(".md") and p not in ("riskguard/environment.py",
                                                    "tests/test_environment.py")}
    unused = []
    for name in VARIABLES:
        const = name.removeprefix(environment.PREFIX)
        assert getattr(environment, const) == name  # the constant of each name
        by_const = re.compile(rf"\b{const}\b")
        if not any(name in text or ("riskguard.environment" in text and by_const.search(text))
                   for text in files.values()):
            unused.append(name)
    assert unused == []


def test_no_module_spells_a_name_constant_of_its_own() -> None:
    """``LOG_ENV``, ``JARS_ENV`` ... are the registry's constants, never a second
    spelling of the name."""
    own = re.compile(r"^\w+(?::[^=]*)?\s*=\s*[\"']RISKGUARD_", re.M)
    found = sorted(p for p, t in _tracked().items()
                   if p.endswith(".py") and own.search(t)
                   and p not in ("riskguard/environment.py", "tests/test_environment.py"))
    assert found == []


def test_no_module_gives_a_registry_name_a_second_name() -> None:
    """``LOG_ENV = LOG``: two names for one variable; every module uses the registry's."""
    consts = "|".join(sorted(n.removeprefix(environment.PREFIX) for n in VARIABLES))
    alias = re.compile(rf"^\w+(?::[^=\n]*)?[ \t]*=[ \t]*(?:environment\.)?(?:{consts})[ \t]*$",
                       re.M)
    found = sorted(f"{p}: {m.group(0)}" for p, t in _tracked().items()
                   if p.endswith(".py") and p != "riskguard/environment.py"
                   for m in alias.finditer(t))
    assert found == []


def test_the_docs_table_is_the_registry() -> None:
    """docs/operations.md lists the variables as the registry does (regenerate with
    ``python -c "from riskguard.environment import markdown_table as t; print(t())"``)."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert markdown_table() in docs, markdown_table()
