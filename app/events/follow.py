"""Answering when something changes: a long poll of one document, and Server-Sent Events.

Both wait on the process's listener (app/events/listener.py), never by reading in a loop, and
hold no database connection while they wait: each read takes one for its own length.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from flask import Response, request, stream_with_context

from app import errors, metrics
from app.events import listener

T = TypeVar("T")

MAX_WAIT_SECONDS = 60
# A comment line this often keeps proxies from closing a quiet stream, and finds a client gone.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = ": keepalive\n\n"  # a comment line, which event stream clients skip


def wait_seconds() -> float:
    """`?wait=S`: how long a GET may wait for a change, 0 (the default) to answer at once."""
    raw = request.args.get("wait", "0")
    try:
        seconds = float(raw) if len(raw) < 20 else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # NaN is refused too
        raise errors.InvalidArgument(f"`wait` must be a number of seconds from 0 to "
                                     f"{MAX_WAIT_SECONDS}.", source="wait")
    return seconds


def etag(answer: Any) -> str:
    """A version of a JSON answer: equal answers, equal tags."""
    digest = hashlib.sha256(json.dumps(answer, sort_keys=True, separators=(",", ":")).encode())
    return f'"{digest.hexdigest()[:32]}"'


def long_poll(key: listener.Key, read: Callable[[], T], version: Callable[[T], str],
              seen: str | None, seconds: float) -> T:
    """`read()` once it differs from version `seen` (from the first read when None), or after
    `seconds` as it is then."""
    deadline = time.monotonic() + seconds
    metrics.not_timed()
    with listener.watch(key) as changed:
        while True:
            changed.clear()  # before the read: a change during it ends the wait below at once
            current = read()
            now = version(current)
            if seen is None:
                seen = now
            remaining = deadline - time.monotonic()
            if now != seen or remaining <= 0 or listener.stopping():
                return current
            changed.wait(remaining)


def wakes(*keys: listener.Key) -> Iterator[bool]:
    """A stream's turns: True to read (at once, then whenever one of `keys` may have changed),
    False after `KEEPALIVE_SECONDS` without a change; over when the process stops. The watch is
    cleared before each read, so a change during the read wakes the next wait at once, and a
    quiet stream reads nothing: the listener wakes everyone after a lost connection."""
    with listener.watch(*keys) as changed:
        while True:
            changed.clear()
            yield True
            while not (listener.stopping() or changed.wait(KEEPALIVE_SECONDS)):
                yield False
            if listener.stopping():
                return


def server_sent_events(frames: Iterable[str]) -> Response:
    return Response(stream_with_context(frames), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def frame(data: Any, event_id: int | None = None, event: str | None = None) -> str:
    """One Server-Sent Event."""
    head = "" if event_id is None else f"id: {event_id}\n"
    head += "" if event is None else f"event: {event}\n"
    return f"{head}data: {json.dumps(data)}\n\n"


def wants_event_stream() -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")
