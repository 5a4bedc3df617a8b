"""The progress of the step a job is working on: read from what the engine prints, and written
to the job about once a second.

A pull counts bytes (the engine adapter sums its layers, `workers.engine.PullProgress`); a build
counts the Dockerfile's steps, read here from the lines the classic builder prints. The writer
keeps the last count in memory and a background thread writes it, fenced by the attempt, when
it changed; the block's end writes the last one, so the step shows where it ended even when it
failed.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING

from app import logs
from app.jobs import execution as jobs

if TYPE_CHECKING:
    from workers.runner import JobRun

log = logging.getLogger("imagejobs.worker")

PROGRESS_SECONDS = 1.0

# `Step 3/7 : RUN make`, as the classic builder starts each instruction of a Dockerfile.
_BUILD_STEP = re.compile(r"^Step (\d+)/(\d+) : ", re.MULTILINE)


class BuildSteps:
    """How many of a build's Dockerfile steps are finished, from the text the build prints.

    A step is finished once the next one starts; the last one, once the build ends (completing
    the job's step shows it done). Text may come in any pieces: a line is read once it is whole.
    """

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self._partial = ""

    def feed(self, text: str) -> bool:
        """Read printed text; True when the count changed."""
        whole, _, self._partial = (self._partial + text).rpartition("\n")
        changed = False
        for match in _BUILD_STEP.finditer(whole):
            done, total = int(match[1]) - 1, int(match[2])
            if (done, total) != (self.done, self.total):
                self.done, self.total, changed = done, total, True
        return changed


class StepProgressWriter:
    """Writes the progress of the job's current step, counted in `unit`, while a block runs."""

    def __init__(self, job_run: JobRun, unit: str, interval: float = PROGRESS_SECONDS):
        self.job_run = job_run
        self.unit = unit
        self.interval = interval
        self._latest: tuple[int, int] | None = None
        self._written: tuple[int, int] | None = None
        self._lock = threading.Lock()  # one write at a time, the thread's or the block end's
        self._stop = threading.Event()
        # Run in the job's log context: its lines carry the job's fields.
        self._thread = threading.Thread(target=logs.current().run, args=(self._write_forever,),
                                        name="step-progress", daemon=True)

    def __enter__(self) -> StepProgressWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write_latest()

    def update(self, done: int, total: int) -> None:
        """The step is `done` of `total`; never touches the database (the engine's stream may
        call it for every event)."""
        self._latest = (done, total)

    def _write_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_latest()

    def _write_latest(self) -> None:
        """Write the latest count if it changed. Progress only informs: a write that fails is
        logged, and the job's next write of its own finds out whether the attempt still holds it."""
        with self._lock:
            latest = self._latest
            if latest is None or latest == self._written:
                return
            try:
                with self.job_run.write() as (_, job):
                    jobs.note_progress(job, *latest, self.unit)
            except Exception as exc:
                log.warning("job %s: progress not written (%s)", self.job_run.claim.job_id,
                            type(exc).__name__)
                return
            self._written = latest
