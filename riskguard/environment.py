"""Every environment variable riskguard reads, in one place.

A ``RISKGUARD_*`` variable that is not here is a misspelling (``RISKGUARD_METRICS_PROT``
would leave the metrics port closed, ``RISKGUARD_TEIR_INDEX`` would run a market pod as
another process): :func:`check_environment` refuses it by name, as an unknown config key
is refused, wherever a process starts (the CLI, the guard under ``python -m
bytewax.run``, the Flink job). Variables that Kubernetes sets for a Service whose name
starts ``riskguard-`` (``<NAME>_SERVICE_HOST``, ``<NAME>_PORT``, ...) are not
riskguard's and pass. docs/operations.md lists the variables (:func:`markdown_table`).

>>> check_environment({"RISKGUARD_LOG": "debug", "HOME": "/root"})
>>> try:
...     check_environment({"RISKGUARD_METRICS_PROT": "3030"})
... except ConfigError as err:
...     print(err)
RISKGUARD_METRICS_PROT: is not a variable riskguard reads
(did you mean `RISKGUARD_METRICS_PORT`?); got it set
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from riskguard.errors import ConfigError
from riskguard.validation import did_you_mean

PREFIX = "RISKGUARD_"

CONFIG = "RISKGUARD_CONFIG"
LOG = "RISKGUARD_LOG"
TIER_INDEX = "RISKGUARD_TIER_INDEX"
REPLICA_ID = "RISKGUARD_REPLICA_ID"
NEW_CONFIG = "RISKGUARD_NEW_CONFIG"
METRICS_PORT = "RISKGUARD_METRICS_PORT"
METRICS_ADDR = "RISKGUARD_METRICS_ADDR"
METRICS_PORTS = "RISKGUARD_METRICS_PORTS"
FLINK_PYTHON = "RISKGUARD_FLINK_PYTHON"
FLINK_JARS = "RISKGUARD_FLINK_JARS"
FLINK_TRACE = "RISKGUARD_FLINK_TRACE"
BROKER_DIR = "RISKGUARD_BROKER_DIR"
ENTRYPOINT_DRY_RUN = "RISKGUARD_ENTRYPOINT_DRY_RUN"
KAFKA_BOOTSTRAP = "RISKGUARD_KAFKA_BOOTSTRAP"
SHARED_DATA = "RISKGUARD_SHARED_DATA"
FUZZ_FINDINGS = "RISKGUARD_FUZZ_FINDINGS"


@dataclass(frozen=True)
class Variable:
    """One variable: its name, what reads it, and what it does (one line)."""

    name: str
    read_by: str  # "riskguard", "ops/k8s/entrypoint.sh", "tests", "benches", ...
    does: str


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable(CONFIG, "riskguard", "the guard's TOML config under `python -m bytewax.run "
             "riskguard.dataflows.guard` (`riskguard run` sets it)"),
    Variable(LOG, "riskguard", "log level: `debug`, `info`, `warning`, `error` or `off` "
             "(unset: off; the CLI's `-v` too)"),
    Variable(TIER_INDEX, "riskguard", "this market process's index, over `[tier] index` "
             "(ops/k8s/entrypoint.sh sets the pod's ordinal)"),
    Variable(REPLICA_ID, "riskguard", "this replica's id, over `[replica] id` (one "
             "config for every replica)"),
    Variable(NEW_CONFIG, "riskguard", "`1`: start this replica on a config its peers "
             "do not run yet (`riskguard run --new-config` sets it)"),
    Variable(METRICS_PORT, "riskguard", "serve the `riskguard_*` metrics on this port "
             "(the guard, the subscriber, `replicas watch`, each Flink worker)"),
    Variable(METRICS_ADDR, "riskguard", "the address the metrics port binds (unset: "
             "`0.0.0.0`)"),
    Variable(METRICS_PORTS, "riskguard", "how many ports from `RISKGUARD_METRICS_PORT` "
             "up a Flink worker may take (1 to 16; unset: 16)"),
    Variable(FLINK_PYTHON, "riskguard", "the interpreter that runs the Flink job for "
             "`riskguard run --engine flink`"),
    Variable(FLINK_JARS, "riskguard", "`;`-separated jar URLs the Flink job loads (the "
             "Kafka connector), unless `--jars`"),
    Variable(FLINK_TRACE, "riskguard", "a file the Flink job notes its start-up and "
             "first records in (the engine benches set it)"),
    Variable(BROKER_DIR, "riskguard", "where the dev broker keeps its pid file, "
             "address and log"),
    Variable(ENTRYPOINT_DRY_RUN, "ops/k8s/entrypoint.sh", "`1`: print the guard's "
             "command instead of running it"),
    Variable(KAFKA_BOOTSTRAP, "tests, benches", "a Kafka cluster to run against "
             "instead of starting the dev broker"),
    Variable(SHARED_DATA, "tests, benches", "the development data folder (unset: "
             "`shared/data` beside the clone)"),
    Variable(FUZZ_FINDINGS, "tests (fuzzing)", "fuzzing goes on past a broken "
             "invariant, saving its input in this folder"),
)}

_PORT_LINK = re.compile(r"_PORT_\d+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?")


def service_link(name: str, env: Mapping[str, str]) -> bool:
    """Whether ``name`` is one of the variables Kubernetes sets for a Service of the
    namespace (``<NAME>_SERVICE_HOST`` marks that Service's).

    >>> env = {"RISKGUARD_FLINK_REST_SERVICE_HOST": "10.0.0.7"}
    >>> service_link("RISKGUARD_FLINK_REST_PORT_8081_TCP_ADDR", env)
    True
    >>> service_link("RISKGUARD_FLINK_RESTPORT", env)
    False
    """
    for other in env:
        service = other.removesuffix("_SERVICE_HOST")
        if service == other or not name.startswith(service + "_"):
            continue
        rest = name[len(service):]
        if (rest in ("_SERVICE_HOST", "_SERVICE_PORT", "_PORT")
                or rest.startswith("_SERVICE_PORT_") or _PORT_LINK.fullmatch(rest)):
            return True
    return False


def check_environment(env: Mapping[str, str]) -> None:
    """Raise a :class:`ConfigError` naming the first (by name) ``RISKGUARD_*`` variable
    of ``env`` that riskguard does not read, with the name meant if one is close. The
    value is not shown: a variable riskguard does not know may hold a secret."""
    for name in sorted(env):
        if not name.upper().startswith(PREFIX) or name in VARIABLES:
            continue
        if service_link(name, env):
            continue
        hint = did_you_mean(name.upper(), VARIABLES)
        err = ConfigError(name, f"is not a variable riskguard reads{hint}",
                          found_text="it set")
        err.add_note("correct its name or unset it (docs/operations.md, Environment "
                     "variables, lists those riskguard reads)")
        raise err


def markdown_table() -> str:
    """The variables as the Markdown table docs/operations.md holds."""
    rows = ["| Variable | Read by | What it does |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.read_by} | {v.does} |" for v in VARIABLES.values()]
    return "\n".join(rows) + "\n"
