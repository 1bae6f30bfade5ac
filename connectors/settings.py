"""Kafka client settings shared by every riskguard client, with SASL/TLS pass-through.

Secrets (SASL password, TLS key password) are kept out of ``repr``, logs and
exceptions: :meth:`KafkaSettings.redacted` is what may be printed.

>>> s = KafkaSettings(bootstrap="127.0.0.1:9092", security_protocol="SASL_SSL",
...                   sasl_mechanism="PLAIN", sasl_username="rg", sasl_password="hunter2")
>>> s.client_config()["sasl.password"]
'hunter2'
>>> "hunter2" in repr(s) or "hunter2" in str(s.redacted())
False

librdkafka's own log lines (``%3|...|FAIL|...`` on stderr by default) go to the
Python logger :data:`KAFKA_LOGGER` instead: every config built here carries it
as ``logger``, and it is quiet unless logging is turned on
(:func:`configure_logging`, ``RISKGUARD_LOG``).

>>> s.client_config()["logger"].name
'riskguard.kafka'
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from riskguard.environment import LOG
from riskguard.errors import ConfigError

KAFKA_LOGGER = "riskguard.kafka"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "off": None}
_handler: logging.Handler | None = None
_level = "off"

PRIVATE_KEY_FILES = ("ssl.key.location", "ssl.keystore.location")
"""librdkafka settings naming a file with this client's private key."""
SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})
REDACTED = "***"
PYTHON_CALLBACKS = frozenset({"logger", "error_cb", "throttle_cb", "stats_cb", "oauth_cb",
                              "on_delivery", "on_commit"})
"""Settings the Python client takes as callables, never as text (riskguard sets ``logger``)."""
_END_OF_CHECK = "riskguard.end.of.check"
"""No librdkafka property: a check's last key, refused before any client is built."""


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

    bootstrap: str  # the brokers to connect to first: host:port, comma-separated
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # with SASL_PLAINTEXT or SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None  # the SASL user name
    sasl_password: str | None = None
    # the CA certificate (PEM) the brokers' certificates are checked against
    ssl_ca_location: str | None = None
    # this client's certificate (PEM), for brokers that ask for one (mutual TLS)
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None  # this client's private key (PEM); others must not read it
    ssl_key_password: str | None = None  # the password of ssl_key_location, if it has one
    # the client.id the guard's Kafka clients send (the brokers' logs and quotas name it)
    client_id: str = "riskguard"
    # any other librdkafka setting (for consumers, producers or both); one librdkafka does
    # not take is refused at start-up
    extra: dict[str, str] = {}

    def __post_init__(self) -> None:
        for name, value in self.extra.items():
            check_librdkafka_property(name, value)
        check_private_key_file("kafka.ssl_key_location", self.ssl_key_location)
        for name in PRIVATE_KEY_FILES:  # the same files, passed through extra
            check_private_key_file(f"kafka.extra.{name}", self.extra.get(name))

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
        return with_logger(cfg)

    def redacted(self) -> dict[str, Any]:
        """``client_config()`` with every secret replaced by ``***`` (and no logger)."""
        return {
            k: (REDACTED if looks_secret(k) else v)
            for k, v in self.client_config().items() if k != "logger"
        }


def check_librdkafka_property(name: str, value: str) -> None:
    """Refuse a ``[kafka] extra`` setting librdkafka does not take (a misspelt property,
    a value of the wrong kind): a :class:`ConfigError` naming ``kafka.extra.<name>``,
    at start-up rather than when the first client is built.

    The Python client hands each property to librdkafka in order and raises at the
    first it refuses, before it builds a client; the check ends with a key that is no
    property, so no client is ever built. A property of consumers only (or producers
    only) passes: librdkafka ignores it in the other kind of client.

    >>> check_librdkafka_property("linger.ms", "5")
    >>> try:
    ...     check_librdkafka_property("linger.mss", "5")
    ... except ConfigError as err:
    ...     print(err.path)
    kafka.extra.linger.mss
    """
    from confluent_kafka import KafkaException, Producer  # noqa: PLC0415

    if name in PYTHON_CALLBACKS:
        reason = "a Python callback of the client, not a librdkafka property"
    else:
        try:
            Producer({name: value, _END_OF_CHECK: ""})
        except KafkaException as err:
            text = err.args[0].str() if err.args else str(err)
            if text == f'No such configuration property: "{_END_OF_CHECK}"':
                return
            reason = f"librdkafka: {text}"
        except (TypeError, ValueError) as err:  # a setting the Python client reads itself
            reason = f"the Kafka client: {err}"
        else:
            reason = "librdkafka took a property that does not exist, so none is checked"
    secret = looks_secret(name)
    if secret:
        reason = reason.replace(value, REDACTED) if value else reason
    raise ConfigError(f"kafka.extra.{name}", f"a librdkafka property and a value it takes "
                      f"({reason})", REDACTED if secret else value)


def check_private_key_file(setting: str, path: str | None) -> None:
    """Refuse a private key file anyone on the host may read or write (its group may,
    as with ``ssl-cert``): a :class:`ConfigError` naming ``setting``. A file not there
    (yet) is the client's to report when it opens it.

    >>> import os, tempfile
    >>> fd, key = tempfile.mkstemp(); os.close(fd); os.chmod(key, 0o644)
    >>> try:
    ...     check_private_key_file("kafka.ssl_key_location", key)
    ... except ConfigError as err:
    ...     print(str(err).split(";")[0])
    kafka.ssl_key_location: a private key file others cannot read (chmod o-rwx)
    >>> os.chmod(key, 0o640); check_private_key_file("kafka.ssl_key_location", key)
    """
    if not path:
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & stat.S_IRWXO:
        raise ConfigError(setting, "a private key file others cannot read (chmod o-rwx)",
                          f"{path} with mode {mode:04o}")


def as_settings(brokers: str | KafkaSettings) -> KafkaSettings:
    """Accept a bootstrap string or full settings."""
    return brokers if isinstance(brokers, KafkaSettings) else KafkaSettings(bootstrap=brokers)


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's log lines go to (``riskguard.kafka``): quiet (a
    ``NullHandler``) unless ``$RISKGUARD_LOG`` or the CLI's ``-v`` turns logging on.
    A ``$RISKGUARD_LOG`` that names no level is a :class:`ConfigError`, as in the CLI.
    """
    log = logging.getLogger(KAFKA_LOGGER)
    if not log.handlers:
        level = log_level(os.environ.get(LOG))
        log.addHandler(logging.NullHandler())
        if LOG_LEVELS.get(level) is not None and _handler is None:
            configure_logging(level)
    return log


def with_logger(config: Mapping[str, Any]) -> dict[str, Any]:
    """A librdkafka client config with its log lines routed to :func:`kafka_logger`.

    The Python client forwards them when the client is polled or flushed.

    >>> with_logger({"bootstrap.servers": "b:1"})["logger"].name
    'riskguard.kafka'
    """
    return {"logger": kafka_logger(), **config}


def log_level(text: str | None) -> str:
    """The level of :data:`LOG_LEVELS` that ``text`` (``$RISKGUARD_LOG``, or a level
    given in code) names, case and spaces aside; unset or blank: ``off``. Any other
    text is a :class:`ConfigError` naming the variable: a typo never turns the log
    lines off.

    >>> log_level(" Warning "), log_level(None), log_level(" ")
    ('warning', 'off', 'off')
    """
    name = (text or "").strip().lower() or "off"
    if name not in LOG_LEVELS:
        raise ConfigError(LOG, "one of " + ", ".join(LOG_LEVELS), text)
    return name


def debug_logging() -> bool:
    """Whether :func:`configure_logging` was last asked for ``debug`` (a command's own
    choice, whatever level the embedding process gave the root logger)."""
    return _level == "debug"


def configure_logging(level: str | None) -> str:
    """Show riskguard's log lines (librdkafka's included) on stderr from ``level`` up.

    ``level`` is one of :data:`LOG_LEVELS` (``off`` or None: nothing shown).
    Calling it again replaces the earlier choice; returns that earlier choice.

    >>> before = configure_logging("warning"); configure_logging(before)
    'warning'
    """
    global _handler, _level  # one stderr handler per process  # noqa: PLW0603
    name = log_level(level)
    previous = _level
    root = logging.getLogger("riskguard")
    if _handler is not None:
        root.removeHandler(_handler)
        _handler = None
    _level = name
    value = LOG_LEVELS[name]
    if value is None:
        root.setLevel(logging.NOTSET)
        return previous
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("riskguard %(levelname)s %(name)s: %(message)s"))
    root.addHandler(_handler)
    root.setLevel(value)
    return previous


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)
