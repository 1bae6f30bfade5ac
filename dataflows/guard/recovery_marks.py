"""The marks a guard leaves in its recovery directory: whose store it is (replicas never
share one) and the highest trust-file serial it ran on (an older file is refused).

Both the CLI (``riskguard run -- -r DIR``) and ``python -m bytewax.run
riskguard.dataflows.guard -r DIR`` (the Kubernetes entrypoint) claim the directory
before the flow reads anything: :func:`recovery_dir_of_run` finds it in the
arguments bytewax.run was given, or in ``$BYTEWAX_RECOVERY_DIRECTORY``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from riskguard.operators.signing.trust import check_trust_serial

from riskguard.atomic import write_atomic
from riskguard.errors import ConfigError

REPLICA_MARK = "riskguard-replica"


def claim_recovery(folder: Path, replica: str, trust_serial: int | None) -> None:
    """What a guard process checks of its recovery store before it reads a record: that
    bytewax initialised it (:func:`check_recovery_store`), that it is ``replica``'s
    (:func:`claim_recovery_store`) and, for a process with a trust file, that its serial
    is not older than the store ran on (:func:`claim_trust_serial`)."""
    check_recovery_store(folder)
    claim_recovery_store(folder, replica)
    if trust_serial is not None:
        claim_trust_serial(folder, trust_serial)


def check_recovery_store(folder: Path | str) -> None:
    """Raise ``ConfigError`` (naming the command that makes one) unless ``folder`` is a
    recovery store bytewax has initialised: a missing or empty folder stops start-up
    here, not with bytewax's ``NoPartitionsError`` once the flow runs.

    >>> try:
    ...     check_recovery_store("/")
    ... except ConfigError as err:
    ...     print(err.found)
    /: no recovery partition in it
    """
    if not any(Path(folder).glob("part-*.sqlite3")):
        found = "no recovery partition in it" if Path(folder).is_dir() else "no such folder"
        raise ConfigError("-r", f"a recovery directory bytewax has initialised (mkdir -p "
                          f"{folder} && python -m bytewax.recovery {folder} 1)",
                          f"{folder}: {found}")


def claim_recovery_store(folder: Path, replica: str) -> None:
    """Mark ``folder`` as ``replica``'s recovery store (empty name: a single guard), or
    refuse it if another replica's mark is there: replicas never share one store.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> claim_recovery_store(d, "a"); claim_recovery_store(d, "a")
    >>> try:
    ...     claim_recovery_store(d, "b")
    ... except ConfigError as err:
    ...     print(str(err)[:46])
    -r: the recovery directory of replica 'b' (eac
    """
    mark = folder / REPLICA_MARK
    if mark.is_file():
        owner = mark.read_text().strip()
        if owner != replica:
            raise ConfigError("-r", f"the recovery directory of replica {replica!r} (each "
                              "replica keeps its own)",
                              f"the recovery directory of replica {owner!r}")
        return
    write_atomic(mark, (replica + "\n").encode())


TRUST_MARK = "riskguard-trust-serial"


def claim_trust_serial(folder: Path, serial: int) -> None:
    """Refuse a trust file older than the one the recovery store in ``folder`` last ran
    on (a lower serial may list keys since revoked); else remember ``serial`` there, the
    highest seen.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> claim_trust_serial(d, 3); claim_trust_serial(d, 4)
    >>> try:
    ...     claim_trust_serial(d, 3)
    ... except ConfigError as err:
    ...     print(str(err)[:44])
    keys.trust_file: a trust file of serial 4 or
    """
    mark = folder / TRUST_MARK
    try:
        seen = int(mark.read_text().strip()) if mark.is_file() else None
    except ValueError:
        raise ConfigError(str(mark), "the highest trust-file serial this store ran on",
                          mark.read_text()[:40]) from None
    if seen is not None:
        check_trust_serial(serial, seen, "this recovery directory")
    if seen is None or serial > seen:
        write_atomic(mark, f"{serial}\n".encode())


def recovery_dir_of_run(argv: Sequence[str], env: Mapping[str, str]) -> Path | None:
    """The recovery directory ``python -m bytewax.run`` was given: ``-r DIR``,
    ``--recovery-directory DIR`` or ``=DIR`` in ``argv``, else
    ``$BYTEWAX_RECOVERY_DIRECTORY``; None without one.

    >>> recovery_dir_of_run(["m", "-r", "/rec", "-s", "5"], {})
    PosixPath('/rec')
    >>> recovery_dir_of_run(["m", "--recovery-directory=/x"], {}), recovery_dir_of_run(["m"], {})
    (PosixPath('/x'), None)
    """
    found = env.get("BYTEWAX_RECOVERY_DIRECTORY") or None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("-r", "--recovery-directory") and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--recovery-directory="):
            found = arg.split("=", 1)[1]
    return Path(found) if found else None
