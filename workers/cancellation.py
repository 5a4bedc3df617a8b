"""A running attempt's cancellation: set once its job is asked to cancel, it cuts the transfers
the attempt has open so that the work stops within moments, wherever it was waiting.

The runner (workers/runner.py) makes one `CancelToken` per attempt, makes it current for the
attempt's thread, and sets it when the database says the job was asked to cancel. Every
`Deadline` (workers/deadline.py) entered under it is cut then (an engine call, a context
download), and slower work polls `cancelled` (a git clone, workers/context.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from workers.faults import JobFailed


class Cuttable(Protocol):
    def cut(self) -> None: ...


class CancelToken:
    """One attempt's cancellation: what it cuts when set, and the message it was set with."""

    def __init__(self) -> None:
        self.message: str | None = None
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._watched: list[Cuttable] = []

    @property
    def cancelled(self) -> bool:
        return self._set.is_set()

    def cancel(self, message: str) -> None:
        """Set the token (once) and cut everything it watches."""
        with self._lock:
            if self._set.is_set():
                return
            self.message = message
            self._set.set()
            watched = list(self._watched)
        for item in watched:
            item.cut()

    def watch(self, item: Cuttable) -> None:
        """Cut `item` when the token is set; at once if it already is."""
        with self._lock:
            self._watched.append(item)
            already = self._set.is_set()
        if already:
            item.cut()

    def forget(self, item: Cuttable) -> None:
        with self._lock:
            if item in self._watched:
                self._watched.remove(item)


_current: ContextVar[CancelToken | None] = ContextVar("imagejobs_cancel_token", default=None)


def current() -> CancelToken | None:
    """The token of the attempt this thread runs, if any."""
    return _current.get()


@contextmanager
def running(token: CancelToken) -> Iterator[CancelToken]:
    """Make `token` the current one for the work done inside."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def stopped(what: str) -> JobFailed:
    """The failure of work its attempt's cancellation cut short, `what` naming it ("The build");
    the runner ends the job with the cancel's own message."""
    return JobFailed(f"{what} was stopped: the job was cancelled.")
