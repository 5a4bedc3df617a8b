"""A deadline over a whole transfer, however its other end paces its bytes, which the attempt's
cancellation (workers/cancellation.py) also cuts.

Socket timeouts bound each read, not a transfer: a peer that sends a byte now and then never
trips them. Used for context downloads (workers/context.py, through workers/netguard.py) and
for pulls, builds and loads (workers/engine.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from workers import cancellation


class Deadline:
    """Shuts the connections it watches at a moment, so that a read blocked then returns at once.

    Socket timeouts bound each read, not a download: a server that sends a byte now and then
    (in the headers or the body, or in a TLS handshake) never trips them. At the deadline a
    timer shuts each watched socket down; the blocked read sees the connection end, and
    `passed` says why. Entered while an attempt runs, it is cut as well when the attempt is
    cancelled, and `cancelled` says so. Use it as a context manager around the whole transfer;
    `seconds=None` sets no time, only the cancellation.
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.passed = False
        self.cancelled = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire) if seconds is not None else None
        if self._timer is not None:
            self._timer.daemon = True
        self._token = cancellation.current()

    @property
    def cut_short(self) -> bool:
        """Whether the watched connections were shut, by the time or by a cancel."""
        return self.passed or self.cancelled

    def __enter__(self) -> Deadline:
        if self._timer is not None:
            self._timer.start()
        if self._token is not None:
            self._token.watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._token is not None:
            self._token.forget(self)
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
            if self.cut_short:
                _shut(copy)

    def cut(self) -> None:
        """Shut the watched connections now: the attempt was cancelled."""
        with self._lock:
            self.cancelled = True
            self._shut_all()

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            self._shut_all()

    def _shut_all(self) -> None:
        for sock in self._sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other end
        sock.shutdown(socket.SHUT_RDWR)
