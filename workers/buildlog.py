"""The build log, written to Postgres while the build runs: in batches, bounded, fenced.

The build's stream hands lines to `append`, which never touches the database; a background thread
flushes what gathered about twice a second as one chunk of new text, so a long build costs
Postgres each byte once. Past the limit the log gets one clear marker and nothing more, while the
last lines are still kept in memory for the job's error.
"""

from __future__ import annotations

import collections
import logging
import threading

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app import logs
from app.config import get_settings
from app.db import transaction
from app.images.models import BuildLog, BuildLogChunk, Image
from app.jobs import counters
from app.jobs.execution import Claim

log = logging.getLogger("imagejobs.buildlog")

# One flush: the log's length grows and the new text is inserted as a chunk at the old end,
# only while this claim still holds the job. Postgres writes the new text and one small row,
# never the text already there.
_APPEND = text("""
    WITH grown AS (
        UPDATE image_build_logs
        SET length = length + :length, truncated = :truncated, updated = now()
        WHERE image_id = :image_id AND EXISTS (
            SELECT 1 FROM jobs WHERE id = :job_id AND attempt = :attempt AND state = 'running')
        RETURNING length)
    INSERT INTO image_build_log_chunks (image_id, start, text)
    SELECT :image_id, length - :length, :chunk FROM grown
""")


def open_log(session: Session, image: Image, attempt: int, header: str) -> int:
    """Start the log of an attempt with `header`: a new import's first attempt starts a fresh
    log, a retried one keeps what the last printed. Returns the log's length after it."""
    build_log = session.scalar(select(BuildLog).where(BuildLog.image_id == image.id)
                               .with_for_update())
    if build_log is None:
        build_log = BuildLog(hub_id=image.hub_id, image_id=image.id, length=0)
        session.add(build_log)
    elif attempt == 1:
        session.execute(delete(BuildLogChunk).where(BuildLogChunk.image_id == image.id))
        build_log.length, build_log.truncated = 0, False
    session.add(BuildLogChunk(image_id=image.id, start=build_log.length, text=header))
    build_log.length += len(header)
    return build_log.length


class BuildLogWriter:
    """Appends to one image's build log on behalf of one claim of its job."""

    def __init__(self, claim: Claim, image_id: str, already: int = 0):
        settings = get_settings()
        self.claim = claim
        self.image_id = image_id
        self.limit = settings.build_log_max_chars
        self.interval = settings.build_log_flush_seconds
        self.size = already  # characters the log holds (or will, once flushed)
        self.truncated = False
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._pending: list[str] = []
        self._partial = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Run in the job's log context: its lines carry the job's fields.
        self._thread = threading.Thread(target=logs.current().run, args=(self._flush_forever,),
                                        name="build-log", daemon=True)
        self.flushes = 0

    def __enter__(self) -> BuildLogWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def append(self, chunk: str) -> None:
        """Add text as the engine printed it (any number of lines, or part of one)."""
        if not chunk:
            return
        # Postgres text cannot hold NUL, which a build's own output may print.
        chunk = chunk.replace("\x00", "\ufffd")
        with self._lock:
            lines = (self._partial + chunk).split("\n")
            self._partial = lines.pop()
            self.tail.extend(line for line in lines if line.strip())
            if self.truncated:
                return
            room = self.limit - self.size
            if len(chunk) > room:
                marker = (f"\n[imagejobs: the build log is cut here, at its limit of {self.limit} "
                          "characters; the build went on]\n")
                self._pending.append(chunk[:max(room, 0)] + marker)
                self.size += max(room, 0) + len(marker)
                self.truncated = True
            else:
                self._pending.append(chunk)
                self.size += len(chunk)

    def last_lines(self, count: int = 10) -> list[str]:
        with self._lock:
            lines = list(self.tail)
            if self._partial.strip():
                lines.append(self._partial)
        return lines[-count:]

    def flush(self) -> None:
        with self._lock:
            chunk, self._pending = "".join(self._pending), []
            truncated = self.truncated
        if not chunk:
            return
        try:
            with transaction() as session:
                appended = session.execute(_APPEND, {
                    "chunk": chunk, "length": len(chunk), "truncated": truncated,
                    "image_id": self.image_id, "job_id": self.claim.job_id,
                    "attempt": self.claim.attempt}).rowcount
                if appended:  # bytes as Postgres stores them (UTF-8)
                    counters.add(session, counters.BUILD_LOG_BYTES, self.claim.action,
                                 len(chunk.encode()))
        except Exception:
            with self._lock:  # kept, in order, for the next flush
                self._pending.insert(0, chunk)
            raise
        self.flushes += 1

    def _flush_forever(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # the database is away: the lines wait for the next try
                log.warning("build log of image %s: flush failed (%s)", self.image_id,
                            type(exc).__name__)
