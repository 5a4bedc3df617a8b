"""Following a job to its end with the API's follow endpoints: the job by long poll (each answer
as soon as it changed), and its image's build log as Server-Sent Events on a thread of its own.

Ctrl-C asks whether to cancel the job or just stop following; without a terminal to ask on, it
stops following.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from app.client.api import Api, ApiError, ClientError, parse_event
from app.client.render import Display
from app.client.steps import ENDED, job_state

# How long the build log may take to say its last words once the job ended.
LOG_GRACE_SECONDS = 15
# A followed log whose connection was lost is taken up again this many times in a row.
LOG_RECONNECTS = 5


@dataclass
class Outcome:
    job: dict[str, Any]
    stopped: bool  # the person stopped following before the job ended


def follow_job(api: Api, job_id: str, display: Display, build_log_of: str | None = None
               ) -> Outcome:
    """Show the job's every change (and the build log of image `build_log_of`) until it ends."""
    interrupts = _Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    try:
        return _follow(api, job_id, display, build_log_of, interrupts)
    finally:
        signal.signal(signal.SIGINT, previous)


class _Interrupts:
    """Ctrl-C lands only while waiting (on the API, or for an answer): one pressed while the
    display draws is kept for the next wait, so no drawing is left half done."""

    def __init__(self) -> None:
        self.pending = False
        self.waiting = False

    def handle(self, signum: int, frame: object) -> None:
        if self.waiting:
            raise KeyboardInterrupt
        self.pending = True

    @contextmanager
    def allowed(self) -> Iterator[None]:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False


def _follow(api: Api, job_id: str, display: Display, build_log_of: str | None,
            interrupts: _Interrupts) -> Outcome:
    log = _BuildLog(api, build_log_of, display) if build_log_of else None
    if log:
        log.start()
    seen: str | None = None
    shown: dict[str, Any] | None = None
    wait = 0.0  # the first answer at once: the job as it is now
    while True:
        try:
            with interrupts.allowed():
                document, seen = api.job(job_id, seen, wait)
            wait = 30.0
            if document != shown:
                shown = document
                display.job(document)
            if job_state(document["data"]) in ENDED:
                break
        except KeyboardInterrupt:
            if _cancel_asked(api, job_id, display, interrupts):
                continue
            if log:
                log.stopping.set()
            return Outcome(shown["data"] if shown else {"id": job_id}, stopped=True)
    if log:
        log.join(LOG_GRACE_SECONDS)
        log.stopping.set()
    return Outcome(shown["data"], stopped=False)


def _cancel_asked(api: Api, job_id: str, display: Display, interrupts: _Interrupts) -> bool:
    """After Ctrl-C: True to go on following (the job was asked to cancel, or could not be),
    False to stop following and leave the job be."""
    if not sys.stdin.isatty():
        return False
    with display.paused():
        try:
            with interrupts.allowed():
                cancel = click.confirm(
                    f"\nCancel job {job_id}? (No stops following; the job goes on)",
                    default=False, err=True)
        except (click.Abort, KeyboardInterrupt, EOFError):
            cancel = False
    if not cancel:
        return False
    try:
        api.cancel_job(job_id)
    except ClientError as exc:
        display.note(f"job {job_id} was not cancelled: {exc}")
        return True
    display.note(f"cancelling job {job_id}")
    return True


class _BuildLog(threading.Thread):
    """An image's build log as it grows, shown until its `end` event (or told to stop)."""

    def __init__(self, api: Api, image_id: str, display: Display):
        super().__init__(name=f"build-log-{image_id}", daemon=True)
        self.api, self.image_id, self.display = api, image_id, display
        self.stopping = threading.Event()

    def run(self) -> None:
        offset, failures = 0, 0
        while not self.stopping.is_set():
            try:
                for event in self.api.build_log_events(self.image_id, offset):
                    if self.stopping.is_set() or event.event == "end":
                        return
                    chunk = parse_event(event)
                    text = str(chunk.get("text", ""))
                    offset = int(chunk.get("offset", offset)) + len(text)
                    self.display.log(text)
                    failures = 0
            except ApiError as exc:  # the image went away, or the key cannot read it
                self.display.note(f"the build log cannot be followed: {exc}")
                return
            except ClientError as exc:
                failures += 1
                if failures > LOG_RECONNECTS:
                    self.display.note(f"stopped following the build log: {exc}")
                    return
            # The stream closed without its end (an API process stopping): take it up again
            # where it was.
            self.stopping.wait(min(2.0, 0.2 * 2 ** failures))
