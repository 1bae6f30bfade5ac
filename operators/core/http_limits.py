"""Limits for the small HTTP servers riskguard runs (metrics, the status page), so that
idle, slow or many clients cannot take every thread of the process they run in.

:class:`BoundedConnections` serves each connection in a thread of its own, at most
``max_connections`` at once: one more is closed at once (and counted in ``refused``).
:class:`ConnectionDeadline` closes a connection that sends nothing for ``timeout``
seconds, or is still open three times that long however it trickles its bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, ClassVar


class BoundedConnections(ThreadingMixIn):
    """Server mixin: a daemon thread per connection, at most ``max_connections`` at once."""

    daemon_threads = True
    max_connections = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ConnectionDeadline:
    """Request-handler mixin (before a ``StreamRequestHandler``): ``timeout`` bounds each
    read, and the whole connection is cut at three times it."""

    timeout: ClassVar[float | None] = 10.0
    connection: socket.socket

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self._deadline = threading.Timer(3 * (self.timeout or 10.0), self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(OSError):
            super().finish()  # type: ignore[misc]
