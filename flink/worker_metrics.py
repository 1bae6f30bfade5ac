"""The guard's own Prometheus metrics, served from each Flink Python worker.

On Flink the guard's logic runs in Python worker processes that the TaskManagers start
(one a slot), not in the process that submits the job, so each worker serves the
``riskguard_*`` series it counts itself: the process that submits the job counts
nothing. A worker serves prometheus-client's default registry on
``$RISKGUARD_METRICS_PORT`` (and ``$RISKGUARD_METRICS_ADDR``, ``0.0.0.0`` by default),
or, where another worker on the same host holds that port (a TaskManager of several
slots, a local mini-cluster at parallelism 2), on the first free port of the
:data:`WORKER_PORTS` above it: a TaskManager of ``S`` slots serves on ``PORT`` to
``PORT + S - 1``, a fixed set of ports a scrape job can list. The deployment in
``ops/k8s/flink/`` runs one slot a TaskManager with ``$RISKGUARD_METRICS_PORTS=1``, so
every TaskManager pod serves on ``PORT`` itself (docs/operations.md).

A worker started while its predecessor in the slot is still going away (a restart after
a failure) waits for ``PORT`` a while before it takes the next one, so the ports stay
the same across restarts; with ``$RISKGUARD_METRICS_PORTS=1`` it waits for ``PORT``
however long that takes. It binds in a thread of its own: the operator's start does
not wait for it. This module does not import Flink.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

from riskguard.operators.core.metrics import (
    metrics_addr_from_env,
    metrics_port_from_env,
    start_metrics_server,
)

from riskguard.environment import METRICS_PORT, METRICS_PORTS
from riskguard.errors import ConfigError

WORKER_PORTS = 16
"""How many ports from ``$RISKGUARD_METRICS_PORT`` up a worker may take: one a slot of
a TaskManager. ``$RISKGUARD_METRICS_PORTS`` (1 to this) narrows it to the slots a
TaskManager has: with 1, a worker waits for the port itself rather than moving to one
that no NetworkPolicy or scrape job lists."""

FIRST_WAIT_S = 10.0
"""How long a worker waits for ``$RISKGUARD_METRICS_PORT`` itself before it takes the
next free port (a predecessor in its slot going away frees it within this)."""

RETRY_S = 5.0
"""How long a worker that found every port of its range taken waits before it tries
them all again."""

_log = logging.getLogger(__name__)


class Served:
    """Where this process serves its metrics: :attr:`bound` is set once it does, and
    :attr:`port` then says on which port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.bound = threading.Event()
        self.port: int | None = None


served = Served()
"""This process's :class:`Served`."""


def serve_worker_metrics(env: Mapping[str, str] | None = None, *,
                         first_wait_s: float = FIRST_WAIT_S,
                         retry_s: float = RETRY_S) -> threading.Thread | None:
    """Serve this worker's metrics as the module docstring says, if
    ``$RISKGUARD_METRICS_PORT`` is set: the thread that binds (once a process; None
    without the variable). A value that is not a port, or an address not of this host,
    is a :class:`ConfigError` now."""
    env = os.environ if env is None else env
    base = metrics_port_from_env(env)
    if base is None:
        return None
    raw = env[METRICS_PORT]
    ports = worker_ports_from_env(env)
    if not 1 <= base <= 65535 - ports + 1:
        raise ConfigError(METRICS_PORT,
                          f"a TCP port 1..{65535 - ports + 1} (a worker may take the "
                          f"{ports - 1} above it)", raw)
    addr = metrics_addr_from_env(env)
    with served.lock:
        if served.thread is None:
            served.thread = threading.Thread(
                target=_bind, args=(base, ports, addr, first_wait_s, retry_s),
                name="riskguard-worker-metrics", daemon=True)
            served.thread.start()
        return served.thread


def worker_ports_from_env(env: Mapping[str, str]) -> int:
    """``$RISKGUARD_METRICS_PORTS``: how many ports from the base a worker may take,
    1 to :data:`WORKER_PORTS` (that when unset); other text is a :class:`ConfigError`.

    >>> worker_ports_from_env({}), worker_ports_from_env({METRICS_PORTS: "1"})
    (16, 1)
    """
    raw = env.get(METRICS_PORTS) or str(WORKER_PORTS)
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= WORKER_PORTS):
        raise ConfigError(METRICS_PORTS, f"how many ports a TaskManager's workers take, "
                          f"1..{WORKER_PORTS} (its slots)", raw)
    return int(raw)


def _try(at: int, addr: str) -> bool:
    try:
        served.port = start_metrics_server(at, addr)
    except OSError:
        return False
    served.bound.set()
    _log.info("riskguard metrics of this Flink Python worker (pid %d) on %s:%d",
              os.getpid(), addr, served.port)
    return True


def _bind(base: int, ports: int, addr: str, first_wait_s: float, retry_s: float) -> None:
    deadline = time.monotonic() + first_wait_s
    while True:
        if _try(base, addr):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, first_wait_s))
    while True:
        for at in range(base + 1, base + ports):
            if _try(at, addr):
                return
        if _try(base, addr):
            return
        _log.warning("ports %d to %d are all taken: this Flink Python worker's riskguard "
                     "metrics are not served yet", base, base + ports - 1)
        time.sleep(retry_s)
