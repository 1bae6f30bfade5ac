"""Kafka client settings shared by every riskguard client, with SASL/TLS pass-through.

Secrets (SASL password, TLS key password) are kept out of ``repr``, logs and
exceptions: :meth:`KafkaSettings.redacted` is what may be printed.

>>> s = KafkaSettings(bootstrap="127.0.0.1:9092", security_protocol="SASL_SSL",
...                   sasl_mechanism="PLAIN", sasl_username="rg", sasl_password="hunter2")
>>> s.client_config()["sasl.password"]
'hunter2'
>>> "hunter2" in repr(s) or "hunter2" in str(s.redacted())
False
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})
REDACTED = "***"


def looks_secret(name: str) -> bool:
    """Does a setting's name say it holds a secret (a password, a client secret)?

    Their values are never printed, not even in an error about a misspelt key.

    >>> looks_secret("sasl_passwrod"), looks_secret("sasl.password"), looks_secret("bootstrap")
    (True, True, False)
    """
    low = name.lower()
    return name in SECRET_KEYS or any(w in low for w in ("secret", "passw", "token"))


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True, repr_omit_defaults=True,
                    forbid_unknown_fields=True):
    """Where the cluster is and how to authenticate to it."""

    bootstrap: str
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    client_id: str = "riskguard"
    extra: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"KafkaSettings({self.redacted()!r})"

    def client_config(self) -> dict[str, Any]:
        """The librdkafka config for any client (consumer, producer, admin)."""
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        pairs = (
            ("sasl.mechanism", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password),
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
            ("ssl.key.password", self.ssl_key_password),
        )
        cfg.update({k: v for k, v in pairs if v is not None})
        cfg.update(self.extra)
        return cfg

    def redacted(self) -> dict[str, Any]:
        """``client_config()`` with every secret replaced by ``***``."""
        return {
            k: (REDACTED if looks_secret(k) else v)
            for k, v in self.client_config().items()
        }


def as_settings(brokers: str | KafkaSettings) -> KafkaSettings:
    """Accept a bootstrap string or full settings."""
    return brokers if isinstance(brokers, KafkaSettings) else KafkaSettings(bootstrap=brokers)
