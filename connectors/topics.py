"""Topic naming (``<env>.riskguard.<stream>.v<major>``) and provisioning."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from riskguard.errors import BrokerError, ConfigError

STREAMS = (
    "market", "fills", "positions", "balances", "venue_status", "limit_updates",
    "features", "signals", "exposures", "commands", "audit", "rejections", "dead_letters",
    "detections",
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def topic_name(env: str, stream: str, major: int = 1) -> str:
    """The topic for ``stream`` in ``env``.

    >>> topic_name("prod", "commands")
    'prod.riskguard.commands.v1'
    """
    for what, value in (("env", env), ("stream", stream)):
        if not _NAME.match(value):
            raise ConfigError(f"topics.{what}", "lowercase letters, digits, '_' or '-'", value)
    return f"{env}.riskguard.{stream}.v{major}"


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create, with its settings."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def create_topics(
    client_config: Mapping[str, Any], specs: Iterable[TopicSpec], timeout_s: float = 15.0
) -> dict[str, str]:
    """Create topics; returns name -> ``created`` or ``exists``. Raises BrokerError otherwise."""
    from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient(dict(client_config))
    specs = list(specs)
    if not specs:
        return {}
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
    return result
