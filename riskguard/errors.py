"""The one exception hierarchy of riskguard.

Every error riskguard raises on purpose derives from :class:`RiskguardError`;
each subclass is also the matching built-in, so callers may catch either.
Messages follow "where: what was expected; got what", and the offending values
ride along as attributes.
"""

from __future__ import annotations

import errno
from typing import Any


class RiskguardError(Exception):
    """Base class of every error riskguard raises on purpose."""


class ConfigError(RiskguardError, ValueError):
    """A configuration value is missing or wrong.

    >>> err = ConfigError("limits.counterparty.okx.gross_notional", "must be > 0", -5)
    >>> str(err)
    'limits.counterparty.okx.gross_notional: must be > 0; got -5'
    >>> err.path, err.found
    ('limits.counterparty.okx.gross_notional', -5)
    """

    file: str | None = None
    """The file the bad value is in, where it is not the file the command was given (a
    playbook file a config names)."""

    def __init__(self, path: str, expected: str, found: Any = None, *,
                 found_text: str | None = None) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        if found_text is None:
            found_text = "nothing" if found is None else repr(found)
        super().__init__(f"{path}: {expected}; got {found_text}")


class SnapshotError(RiskguardError, ValueError):
    """A recovery snapshot this riskguard does not restore: another version of a state,
    a state it does not know, or one pickled by riskguard 0.1. Re-initialise the
    recovery store and replay the retained topics (docs/scaling.md).

    >>> err = SnapshotError("riskguard.playbook", "version 3 only", "version 2")
    >>> print(err)
    snapshot 'riskguard.playbook': this riskguard restores version 3 only; got version 2
    """

    def __init__(self, name: str, expected: str, found: Any) -> None:
        self.name = name
        self.expected = expected
        self.found = found
        super().__init__(f"snapshot {name!r}: this riskguard restores {expected}; got {found}")


class DeliveryError(RiskguardError, RuntimeError):
    """A Kafka message was not acknowledged by the broker."""

    def __init__(self, message: str, *, undelivered: int, reasons: list[str]) -> None:
        self.undelivered = undelivered
        self.reasons = reasons
        super().__init__(message)


class BrokerError(RiskguardError, RuntimeError):
    """The Kafka broker could not be reached or refused an admin request."""


class SigningError(RiskguardError, RuntimeError):
    """A signing key is missing, unreadable or invalid; nothing was signed."""


class VerificationError(RiskguardError, ValueError):
    """A signed message failed verification.

    ``reason`` is a short machine-readable code such as ``bad_signature``; ``message``
    the decoded message when verification got as far as decoding it (what it claims:
    its issuer, id and seq name the refusal), else None.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.message: object = None
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TrustError(RiskguardError, ValueError):
    """The trust file is malformed, unsigned or lacks its root threshold."""


class StateError(RiskguardError, RuntimeError):
    """Durable state cannot be used as it is: lost, or rolled back behind its high-water
    mark. The message says how to recover."""


class AuditError(RiskguardError, ValueError):
    """An audit log failed verification; ``index`` names the first bad record."""

    def __init__(self, reason: str, *, chain: str = "", index: int | None = None) -> None:
        self.reason = reason
        self.chain = chain
        self.index = index
        where = f"chain {chain!r} record {index}: " if index is not None else ""
        super().__init__(f"{where}{reason}")


_OS_HINTS = {
    errno.ENOENT: "check the path (to write a file there, its folder must exist)",
    errno.EEXIST: "riskguard does not overwrite it: choose another path",
    errno.EACCES: "check the file's owner and mode",
    errno.EPERM: "check the file's owner and mode",
    errno.EISDIR: "give the path of a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EROFS: "choose a writable place",
    errno.ENOSPC: "free some space or choose another place",
}


def describe_os_error(err: OSError) -> str:
    """One line for a file the CLI could not read or write: where, why, what to do.

    >>> describe_os_error(PermissionError(13, "Permission denied", "/etc/k.key"))
    "/etc/k.key: Permission denied; check the file's owner and mode"
    """
    where = f"{err.filename}: " if err.filename else ""
    why = err.strerror or str(err) or type(err).__name__
    hint = _OS_HINTS.get(err.errno or 0)
    return f"{where}{why}; {hint}" if hint else f"{where}{why}"
