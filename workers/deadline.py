"""A deadline over a whole transfer, however its other end paces its bytes.

Socket timeouts bound each read, not a transfer: a peer that sends a byte now and then never
trips them. Used for context downloads (workers/context.py, through workers/netguard.py) and
for builds (workers/engine.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Deadline:
    """Shuts the connections it watches at a moment, so that a read blocked then returns at once.

    Socket timeouts bound each read, not a download: a server that sends a byte now and then
    (in the headers or the body, or in a TLS handshake) never trips them. At the deadline a
    timer shuts each watched socket down; the blocked read sees the connection end, and
    `passed` says why. Use it as a context manager around the whole transfer.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def watch(self, sock: socket.socket) -> None:
        # A descriptor of our own: the connection cannot be closed and its number reused by
        # another socket of this process before the deadline shuts it.
        copy = sock.dup()
        with self._lock:
            self._sockets.append(copy)
            if self.passed:
                _shut(copy)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other end
        sock.shutdown(socket.SHUT_RDWR)
