"""Prometheus metrics shared by every riskguard operator and connector.

They register on prometheus-client's default registry, served by bytewax's Dataflow API
server (``BYTEWAX_DATAFLOW_API_ENABLED=true``: one ``/metrics`` per process, the one to
use in a deployment) or by :func:`start_metrics_server` for processes that are not
bytewax runs (``RISKGUARD_METRICS_PORT``: :func:`start_metrics_server_from_env`); see
docs/operations.md.

Label values are bounded: streams (topics), reasons, actions, scope kinds,
key *classes* (``market``, ``option``, ``venue`` ...), configured limit paths
and venues; never per-record ids or per-instrument keys.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from riskguard.operators.core.http_limits import BoundedConnections, ConnectionDeadline

from riskguard.environment import METRICS_ADDR, METRICS_PORT
from riskguard.errors import ConfigError

# -- boundary: in, out, dead letters, Kafka delivery ------------------------------------------
EVENTS_IN = Counter(
    "riskguard_events_in_total", "Records decoded at the input boundary", ["stream"]
)
DEAD_LETTERS = Counter(
    "riskguard_dead_letters_total", "Records sent to the dead-letter stream", ["stream", "reason"]
)
EVENTS_OUT = Counter(
    "riskguard_events_out_total", "Records written by riskguard sinks", ["stream"]
)
DELIVERY_ERRORS = Counter(
    "riskguard_kafka_delivery_errors_total", "Kafka messages the broker did not acknowledge",
    ["stream"],
)
CONSUMER_LAG = Gauge(
    "riskguard_kafka_consumer_lag",
    "Messages between the high watermark and the next offset this process reads",
    ["stream", "partition"],
)

# -- detection ---------------------------------------------------------------------------------
SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 50.0, 100.0)
ANOMALY_SCORE = Histogram(
    "riskguard_anomaly_score", "Anomaly scores of emitted signals, per key class",
    ["key_class"], buckets=SCORE_BUCKETS,
)
ANOMALY_THRESHOLD = Histogram(
    "riskguard_anomaly_threshold", "Thresholds in force for emitted signals, per key class",
    ["key_class"], buckets=SCORE_BUCKETS,
)
ANOMALY_SIGNALS = Counter(
    "riskguard_anomaly_signals_total", "Anomaly signals by key class, kind and phase",
    ["key_class", "kind", "phase"],
)
EPISODES_OPEN = Gauge(
    "riskguard_episodes_open", "Anomaly episodes currently open, per key class", ["key_class"]
)
RISK_ALERTS = Counter(
    "riskguard_risk_alerts_total", "Discrete risk alerts by kind and severity",
    ["kind", "severity"],
)

# -- limits ------------------------------------------------------------------------------------
UTILIZATION = Gauge(
    "riskguard_limit_utilization",
    "Exposure / effective limit (1.0 = at the limit), per counterparty, limit path and kind",
    ["counterparty", "limit", "kind"],
)
BREACHES = Counter(
    "riskguard_limit_breaches_total", "Limit level changes at or from breach, by kind and level",
    ["kind", "level"],
)

# -- commands ----------------------------------------------------------------------------------
DETECTION_TO_COMMAND = Histogram(
    "riskguard_detection_to_command_seconds",
    "From the triggering event's receive time to the signed command's emit time",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
COMMANDS = Counter(
    "riskguard_commands_total", "Signed mitigation commands emitted", ["action", "scope_kind"]
)
COMMAND_ACKS = Counter(
    "riskguard_command_acks_total",
    "Executors' verified acknowledgements of commands, by action and outcome "
    "(applied, already_applied, refused, failed)", ["action", "outcome"],
)
LAST_COMMAND = Gauge(
    "riskguard_last_command_timestamp_seconds",
    "Wall time of the last signed command, per action and scope kind",
    ["action", "scope_kind"],
)

# -- subscribers -------------------------------------------------------------------------------
SUBSCRIBER_REJECTIONS = Counter(
    "riskguard_subscriber_rejections_total", "Command messages a subscriber refused, by reason",
    ["reason"],
)
SUBSCRIBER_GAPS = Counter(
    "riskguard_subscriber_gaps_total", "Command sequence gaps a subscriber detected", ["issuer"]
)
SUBSCRIBER_DUPLICATES = Counter(
    "riskguard_subscriber_duplicates_total",
    "Copies of an executed decision a subscriber dropped (another guard replica's), by issuer",
    ["issuer"],
)
SUBSCRIBER_CONFLICTS = Counter(
    "riskguard_subscriber_conflicts_total",
    "Commands carrying an executed decision's id with another action, scope or params, or "
    "not from a guard replica, by issuer",
    ["issuer"],
)

# -- audit, recovery, feeds --------------------------------------------------------------------
AUDIT_LAST_CHECKPOINT = Gauge(
    "riskguard_audit_last_checkpoint_timestamp_seconds",
    "Event time of the last signed audit checkpoint seen by this process",
)
AUDIT_CHECKPOINT_AGE = Gauge(
    "riskguard_audit_checkpoint_age_seconds",
    "Seconds since the last audit checkpoint (since process start if none yet)",
)
SNAPSHOT_SECONDS = Histogram(
    "riskguard_snapshot_duration_seconds", "Time to take one logic snapshot, per step",
    ["step"], buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
SNAPSHOT_BYTES = Histogram(
    "riskguard_snapshot_size_bytes", "Pickled size of one logic snapshot, per step",
    ["step"], buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
REORDER = Counter(
    "riskguard_reorder_total",
    "Signals (playbook) or records (valuation) that waited for the slower processes' "
    "watermark (held), and those applied after the longest wait without it (forced: "
    "that process's exposure path fell behind)",
    ["step", "outcome"],
)
FEED_ON_BACKUP = Gauge(
    "riskguard_feed_failover_state", "Feed in use per venue: 0 primary, 1 backup", ["venue"]
)
FEED_STALE = Gauge(
    "riskguard_feed_stale", "1 while a venue's heartbeat is lost or its marks are stale",
    ["venue"],
)

_checkpoint_lock = threading.Lock()
_checkpoint: dict[str, Any] = {"last_s": time.time(), "seen": False}  # start until the first


def _checkpoint_age() -> float:
    with _checkpoint_lock:
        return max(time.time() - _checkpoint["last_s"], 0.0)


AUDIT_CHECKPOINT_AGE.set_function(_checkpoint_age)


def events_in_total() -> float:
    """The records this process decoded at its input boundary, over every stream, read
    from :data:`EVENTS_IN` alone: a poll of it costs the same however many partitions the
    process reads, where collecting the whole registry walks the lag gauge of each one.

    >>> before = events_in_total()
    >>> EVENTS_IN.labels("doc").inc(3)
    >>> events_in_total() - before
    3.0
    """
    return sum(s.value for family in EVENTS_IN.collect() for s in family.samples
               if s.name == "riskguard_events_in_total")


def record_checkpoint(ts_ns: int) -> None:
    """Note an audit checkpoint's event time (the age gauge counts from the newest one)."""
    seconds = ts_ns / 1e9
    with _checkpoint_lock:
        if not _checkpoint["seen"] or seconds > _checkpoint["last_s"]:
            _checkpoint["last_s"] = seconds
            _checkpoint["seen"] = True
        AUDIT_LAST_CHECKPOINT.set(_checkpoint["last_s"])


def record_command(action: str, scope_kind: str, recv_ts_ns: int | None, now_ns: int) -> None:
    """Count one signed command and its detection-to-command latency.

    ``now_ns`` is the processing clock at emit time; ``recv_ts_ns`` the
    triggering event's receive time (``None`` for manual commands).
    """
    COMMANDS.labels(action, scope_kind).inc()
    LAST_COMMAND.labels(action, scope_kind).set(now_ns / 1e9)
    if recv_ts_ns is not None:
        DETECTION_TO_COMMAND.observe(max(now_ns - recv_ts_ns, 0) / 1e9)


def reorder_counter(step: str) -> Callable[[str, int], None]:
    """``count(outcome, n)`` for a logic's ``on_reorder`` hook: adds ``n`` to
    ``riskguard_reorder_total{step, outcome}`` (``held`` or ``forced``)."""

    def count(outcome: str, n: int) -> None:
        REORDER.labels(step, outcome).inc(n)

    return count


_SNAPSHOT_SECONDS_OF: dict[str, Any] = {}


def measured_snapshot(step: str, take: Callable[[], Any], *, size: bool = True) -> Any:
    """Call ``take()`` (a logic's ``snapshot``) and record its duration and, with ``size``,
    its pickled size (that pickles it once more: sample it on hot paths)."""
    start = time.perf_counter()
    state = take()
    seconds = _SNAPSHOT_SECONDS_OF.get(step)
    if seconds is None:  # labels() locks and hashes: once per step, not per key
        seconds = _SNAPSHOT_SECONDS_OF[step] = SNAPSHOT_SECONDS.labels(step)
    seconds.observe(time.perf_counter() - start)
    if size:
        SNAPSHOT_BYTES.labels(step).observe(len(pickle.dumps(state, pickle.HIGHEST_PROTOCOL)))
    return state


_server_lock = threading.Lock()
_servers: dict[tuple[str, int], Any] = {}

METRICS_MAX_CONNECTIONS = 16
"""Scrapes :func:`start_metrics_server` serves at once; one more is closed at once."""
METRICS_IDLE_TIMEOUT_S = 10.0
"""A scrape connection silent this long is closed, and any still open at three times it."""


class _Handler(ConnectionDeadline, WSGIRequestHandler):
    timeout = METRICS_IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # base signature
        return


def _serve_registry(port: int, addr: str) -> WSGIServer:
    """prometheus-client's ``/metrics`` app for the default registry in a daemon thread,
    with bounded connections and deadlines (idle or slow clients cannot pile up threads
    in the process the guard runs in)."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]

    class Server(BoundedConnections, WSGIServer):
        address_family = family
        max_connections = METRICS_MAX_CONNECTIONS

    server = make_server(addr, port, make_wsgi_app(REGISTRY), Server, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="riskguard-metrics",
                     daemon=True).start()
    return server


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> int:  # pods expose metrics
    """Serve the default registry on ``http://addr:port/metrics``; returns the bound port.

    Idempotent per process: a second call with the same address does nothing,
    so every worker thread may call it. ``port=0`` picks a free port. At most
    :data:`METRICS_MAX_CONNECTIONS` connections are served at once, each closed when
    idle :data:`METRICS_IDLE_TIMEOUT_S` or open three times that.
    """
    if not 0 <= port <= 65535:
        raise ConfigError("metrics.port", "must be a TCP port 0..65535", port)
    with _server_lock:
        if (addr, port) in _servers and port != 0:
            return int(_servers[(addr, port)].server_port)
        server = _serve_registry(port, addr)
        bound = int(server.server_port)
        _servers[(addr, port)] = server
        _servers[(addr, bound)] = server
        return bound


def metrics_port_from_env(env: Any = None) -> int | None:
    """``$RISKGUARD_METRICS_PORT`` as a number (None: not set); any other text is a
    :class:`ConfigError`."""
    env = os.environ if env is None else env
    raw = env.get(METRICS_PORT)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(METRICS_PORT, "a TCP port number", raw) from None


def metrics_addr_from_env(env: Any = None) -> str:
    """``$RISKGUARD_METRICS_ADDR`` (``0.0.0.0`` unset): an address of this host to bind,
    else a :class:`ConfigError` now (not a bind that fails like a port in use)."""
    env = os.environ if env is None else env
    addr = env.get(METRICS_ADDR) or "0.0.0.0"
    try:
        family = socket.getaddrinfo(addr, 0, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((addr, 0))
    except (OSError, UnicodeError) as err:
        raise ConfigError(METRICS_ADDR, "an address of this host to bind "
                          f"(0.0.0.0, 127.0.0.1, ::): {err}", addr) from None
    return str(addr)


def start_metrics_server_from_env(env: Any = None) -> int | None:
    """Start :func:`start_metrics_server` on ``$RISKGUARD_METRICS_PORT`` if set."""
    env = os.environ if env is None else env
    port = metrics_port_from_env(env)
    if port is None:
        return None
    return start_metrics_server(port, metrics_addr_from_env(env))
