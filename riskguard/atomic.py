"""Writing a state file whole or not at all.

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "mark"
>>> write_atomic(p, b"1\\n"); write_atomic(p, b"2\\n"); p.read_bytes()
b'2\\n'
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file in its folder, fsynced, renamed
    over it, the folder fsynced. A write cut short (a full disk, a crash) leaves the old
    file as it was; an existing file's mode is kept."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666  # less the umask, as a new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if target.exists():
                os.fchmod(fh.fileno(), mode)  # the umask must not narrow it
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
