"""Topic naming (``<env>.riskguard.<stream>.v<major>``), provisioning, and the reachability
probe every command runs before it talks to Kafka."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import msgspec
from riskguard.connectors.settings import KafkaSettings, as_settings, with_logger
from riskguard.schemas import (
    AnomalySignal,
    Balance,
    Bar,
    BookDepth,
    DetectProgress,
    Fill,
    FundingRate,
    IndexPrice,
    OpenInterest,
    OpenOrders,
    OptionQuote,
    PositionSnapshot,
    PremiumIndexBar,
    Quote,
    SignedEnvelope,
    Trade,
    Valuation,
    VenueStatus,
)

from riskguard.errors import BrokerError, ConfigError

PROBE_TIMEOUT_S = 5.0

MARKET = (Trade, Quote, Bar, BookDepth, OptionQuote, IndexPrice, FundingRate, OpenInterest,
          PremiumIndexBar)
TRADING = (Fill, PositionSnapshot, Balance, OpenOrders)
TradingRecord = Fill | PositionSnapshot | Balance | OpenOrders
# Everything the guard core consumes; any other record type (a bare, unsigned command
# included) is a dead letter.
HANDLED = (*MARKET, VenueStatus, *TRADING, SignedEnvelope)
INPUT_STREAMS = ("market", "venue_status", "fills", "positions", "balances", "limit_updates",
                 "acks")
# The topic market processes write for the firm process, and what it carries
DETECTIONS = "detections"
DETECTED = (AnomalySignal, DetectProgress, Valuation)
Detection = AnomalySignal | DetectProgress | Valuation
# What a market process reads (the market topic split by underlying, the others whole),
# and what the firm process reads
MARKET_STREAMS = ("market", "venue_status", "fills", "positions", "balances")
FIRM_STREAMS = ("venue_status", "limit_updates", "acks", DETECTIONS)
# What each input topic may carry: any other record on it is a wrong_topic dead letter
# (whoever may write market data must not move positions, nor sign anything)
STREAM_TYPES: dict[str, tuple[type, ...]] = {
    "market": MARKET,
    "venue_status": (VenueStatus,),
    "fills": (Fill,),
    "positions": (PositionSnapshot,),
    "balances": (Balance, OpenOrders),
    "limit_updates": (SignedEnvelope,),
    "acks": (SignedEnvelope,),  # executors' signed acks (their payload type says so)
    DETECTIONS: DETECTED,
}

DAY_MS = 24 * 3600 * 1000

# Retention when [topics] retention_ms does not say: raw inputs are replayable for a week,
# decisions and rejections for 30 days, the audit log forever (-1), limit updates compacted.
DEFAULT_RETENTION_MS = {
    "market": 7 * DAY_MS, "fills": 30 * DAY_MS, "positions": 7 * DAY_MS,
    "balances": 7 * DAY_MS, "venue_status": 7 * DAY_MS, "features": 2 * DAY_MS,
    "signals": 30 * DAY_MS, "exposures": 7 * DAY_MS, "commands": 30 * DAY_MS,
    "acks": 30 * DAY_MS,
    "audit": -1, "rejections": 30 * DAY_MS, "dead_letters": 30 * DAY_MS,
    "detections": 2 * DAY_MS,
}
COMPACTED = ("limit_updates",)
# Never lose an acknowledged command, an executor's ack or an audit record to an
# out-of-sync leader.
STRICT = ("commands", "acks", "audit", "limit_updates")

Stream = Literal[
    "market", "fills", "positions", "balances", "venue_status", "limit_updates",
    "features", "signals", "exposures", "commands", "acks", "audit", "rejections", "dead_letters",
    "detections",
]
"""A stream's name (a key of the ``[topics]`` tables)."""
STREAMS: tuple[Stream, ...] = get_args(Stream)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def topic_name(env: str, stream: str, major: int = 1) -> str:
    """The topic for ``stream`` in ``env``.

    >>> topic_name("prod", "commands")
    'prod.riskguard.commands.v1'
    """
    for what, value in (("env", env), ("stream", stream)):
        if not _NAME.match(value):
            raise ConfigError(what, "lowercase letters, digits, '_' or '-'", value)
    return f"{env}.riskguard.{stream}.v{major}"


class TopicsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Partition counts and settings per stream (``topics.partitions.<stream>``)."""

    # stream -> its partition count, over default_partitions
    partitions: dict[Stream, Annotated[int, msgspec.Meta(ge=1)]] = {}
    default_partitions: Annotated[int, msgspec.Meta(ge=1)] = 2
    # copies of each partition the brokers keep
    replication_factor: Annotated[int, msgspec.Meta(ge=1)] = 1
    # the topics' min.insync.replicas, at most replication_factor (unset: replication_factor
    # - 1, at least 1)
    min_insync_replicas: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # stream -> its retention.ms (-1: forever; unset: a week for inputs, 30 days for decisions,
    # forever for the audit log)
    retention_ms: dict[Stream, Annotated[int, msgspec.Meta(ge=-1)]] = {}

    def __post_init__(self) -> None:
        rf, min_isr = self.replication_factor, self.min_insync_replicas
        if min_isr is not None and min_isr > rf:  # no write could ever be acknowledged
            raise ConfigError("topics.min_insync_replicas", "at most "
                              f"topics.replication_factor ({rf})", min_isr)


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create, with its settings."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def topic_specs(env: str, t: TopicsConfig) -> list[TopicSpec]:
    """One spec per riskguard stream, with partitions, replication and retention from config.

    >>> specs = {s.name: s for s in topic_specs("prod", TopicsConfig())}
    >>> dict(specs["prod.riskguard.limit_updates.v1"].config)["cleanup.policy"]
    'compact'
    >>> dict(specs["prod.riskguard.audit.v1"].config)["retention.ms"]
    '-1'
    """
    rf = t.replication_factor
    min_isr = t.min_insync_replicas if t.min_insync_replicas is not None else max(1, rf - 1)
    specs = []
    for stream in STREAMS:
        settings: dict[str, str] = {"min.insync.replicas": str(min_isr)}
        if stream in COMPACTED:
            settings["cleanup.policy"] = "compact"
            settings["min.compaction.lag.ms"] = str(3600 * 1000)
        else:
            settings["cleanup.policy"] = "delete"
            retention = t.retention_ms.get(stream, DEFAULT_RETENTION_MS.get(stream, 7 * DAY_MS))
            settings["retention.ms"] = str(retention)
        if stream in STRICT:
            settings["unclean.leader.election.enable"] = "false"
        specs.append(TopicSpec(
            topic_name(env, stream), partitions=t.partitions.get(stream, t.default_partitions),
            replication_factor=rf, config=settings,
        ))
    return specs


def create_topics(
    client_config: Mapping[str, Any], specs: Iterable[TopicSpec], timeout_s: float = 15.0
) -> dict[str, str]:
    """Create topics; returns name -> ``created`` or ``exists``. Raises BrokerError otherwise."""
    from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient(with_logger(client_config))
    specs = list(specs)
    if not specs:
        return {}
    where = client_config.get("bootstrap.servers", "?")
    futures = admin.create_topics(
        [
            NewTopic(s.name, num_partitions=s.partitions,
                     replication_factor=s.replication_factor, config=dict(s.config))
            for s in specs
        ],
        request_timeout=timeout_s,
    )
    result: dict[str, str] = {}
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            result[name] = "created"
        except KafkaException as err:
            if err.args and err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
                continue
            msg = f"could not create topic {name!r}: {err.args[0].str() if err.args else err}"
            raise BrokerError(msg) from None
        except concurrent.futures.TimeoutError:
            msg = (f"Kafka at {where} did not answer within {timeout_s:g} s while creating "
                   f"topic {name!r}; is the broker up and reachable from here?")
            raise BrokerError(msg) from None
    return result


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a bootstrap list (``PLAINTEXT://`` prefixes allowed).

    >>> _addresses("PLAINTEXT://a:9092, b:9093,[::1]:9094")
    [('a', 9092), ('b', 9093), ('::1', 9094)]
    """
    out = []
    for part in bootstrap.split(","):
        hostport = part.strip().rpartition("://")[2]
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError("kafka.bootstrap", "host:port[,host:port...]", bootstrap)
        out.append((host.strip("[]"), int(port)))
    return out


def probe(brokers: str | KafkaSettings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check that Kafka answers at ``brokers`` before any work starts.

    First a plain TCP connect to each bootstrap address (a closed port fails at
    once), then an ``AdminClient.list_topics`` with the full client config
    (TLS, SASL). Raises :class:`BrokerError` starting "cannot reach Kafka at
    <bootstrap>" within about ``2 * timeout_s``; librdkafka's own log lines go
    to the ``riskguard.kafka`` logger, never to the terminal.

    >>> probe("127.0.0.1:1", timeout_s=1)
    Traceback (most recent call last):
    riskguard.errors.BrokerError: cannot reach Kafka at 127.0.0.1:1: connection refused
    """
    settings = as_settings(brokers)
    deadline = time.monotonic() + timeout_s
    why = ""
    for host, port in _addresses(settings.bootstrap):
        left = max(0.1, deadline - time.monotonic())
        try:
            with socket.create_connection((host, port), timeout=left):
                break
        except socket.gaierror:
            why = f"unknown host {host!r}"
        except TimeoutError:
            why = f"no answer within {timeout_s:g} s"
        except ConnectionRefusedError:
            why = "connection refused"
        except OSError as err:
            why = (err.strerror or str(err)).lower()
    else:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {why}")
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415  (keep CLI start fast)

    admin = AdminClient(settings.client_config())
    try:
        admin.list_topics(timeout=timeout_s)
    except Exception as err:
        reason = err.args[0].str() if err.args and hasattr(err.args[0], "str") else str(err)
        msg = (f"cannot reach Kafka at {settings.bootstrap}: no metadata within "
               f"{timeout_s:g} s ({reason}); check the address and the [kafka] security "
               "settings")
        raise BrokerError(msg) from None
