"""Waking the API's followers when Postgres says something changed, with no polling.

One connection per process LISTENs on the channels of migration 0008's triggers and wakes the
requests that watch what a notification names: a hub (its events), a job, an image's build log.
A follower watches before it reads, so a change between its read and its wait still wakes it.
Under gunicorn's gevent worker the listener and the followers are greenlets, and a follower
waiting holds neither a thread nor a database connection.

Notifications are hints: a follower always reads Postgres again. After the listener loses its
connection it wakes every follower once it is back, since it may have missed some.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

from app.config import get_settings
from app.events import stream

log = logging.getLogger("imagejobs.events")

HUB, JOB, LOG = "imagejobs_events", "imagejobs_jobs", "imagejobs_logs"
Key = tuple[str, str]  # (channel, the id a notification on it names)

# How long a wait for notifications lasts before the connection is checked again.
_IDLE_SECONDS = 10.0
_RECONNECT_SECONDS = 1.0


class Listener:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[Key, set[threading.Event]] = defaultdict(set)
        self._pid: int | None = None
        self.connected = threading.Event()
        # The process is stopping: followers answer or end now (a stream's client reconnects
        # with Last-Event-ID to another process) instead of holding the stop.
        self.stopping = threading.Event()

    @contextmanager
    def watch(self, *keys: Key) -> Iterator[threading.Event]:
        """An event set whenever one of `keys` may have changed (clear it before each read)."""
        self._start()
        changed = threading.Event()
        with self._lock:
            for key in keys:
                self._watchers[key].add(changed)
        if self.stopping.is_set():
            changed.set()
        try:
            yield changed
        finally:
            with self._lock:
                for key in keys:
                    watchers = self._watchers.get(key)
                    if watchers is not None:
                        watchers.discard(changed)
                        if not watchers:
                            del self._watchers[key]

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own
            self._watchers.clear()
        threading.Thread(target=self._listen_forever, name="imagejobs-listener",
                         daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self._wake(None)

    def _wake(self, keys: set[Key] | None) -> None:
        with self._lock:
            if keys is None:
                woken = [w for watchers in self._watchers.values() for w in watchers]
            else:
                woken = [w for key in keys for w in self._watchers.get(key, ())]
        for watcher in woken:
            watcher.set()

    def _listen_forever(self) -> None:
        while True:
            try:
                self._listen()
            except Exception as exc:  # the database is away: wait, then listen again
                log.warning("event listener: %s; listening again in %.0f s",
                            type(exc).__name__, _RECONNECT_SECONDS)
            self.connected.clear()
            threading.Event().wait(_RECONNECT_SECONDS)

    def _listen(self) -> None:
        url = make_url(get_settings().database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=10) as connection:
            for channel in (HUB, JOB, LOG):
                connection.execute(f"LISTEN {channel}")
            self.connected.set()
            self._tell({HUB: set()}, everyone=True)
            while True:
                notes = list(connection.notifies(timeout=_IDLE_SECONDS, stop_after=1))
                if not notes:
                    connection.execute("SELECT 1")  # a connection gone quietly fails here
                    continue
                # All that is already here, told in one go (one numbering for many events).
                notes += connection.notifies(timeout=0)
                named: dict[str, set[str]] = defaultdict(set)
                for note in notes:
                    named[note.channel].add(note.payload)
                self._tell(named)

    def _tell(self, named: dict[str, set[str]], everyone: bool = False) -> None:
        if HUB in named:
            # Numbered before the followers read: they read by number.
            stream.sequence()
        self._wake(None if everyone else
                   {(channel, payload) for channel, payloads in named.items()
                    for payload in payloads})


_listener = Listener()


def watch(*keys: Key):
    """See `Listener.watch`: this process's listener."""
    return _listener.watch(*keys)


def stop_following() -> None:
    """End every follower of this process: it is stopping."""
    _listener.stop()


def stopping() -> bool:
    return _listener.stopping.is_set()


def hub(hub_id: str) -> Key:
    return HUB, hub_id


def job(job_id: str) -> Key:
    return JOB, job_id


def build_log(image_id: str) -> Key:
    return LOG, image_id
