"""Running one job on a worker: claim it, keep its lease alive, record steps, finish or fail it.

A task body is a thin call into `run`; the handler it passes does the work through a `JobRun`,
which owns every state change of the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.orm import Session

from app import logs
from app.config import get_settings
from app.jobs import execution as jobs
from app.jobs.execution import Cancelled, Claim, LeaseLost
from app.jobs.models import Job
from app.jobs.steps import Step
from workers import cancellation
from workers.cancellation import CancelToken
from workers.faults import JobFailed

log = logging.getLogger("imagejobs.worker")


def worker_name() -> str:
    return f"{get_settings().node_id}/{socket.gethostname()}/{os.getpid()}"


class JobRun:
    """One claimed attempt at a job."""

    def __init__(self, claim: Claim):
        self.claim = claim

    @contextmanager
    def write(self) -> Iterator[tuple[Session, Job]]:
        """A fenced transaction: it commits only while this attempt still holds the job."""
        with jobs.fenced(self.claim) as (session, job):
            yield session, job

    @staticmethod
    def step(job: Job, step: Step, description: str | None = None,
             at: datetime | None = None) -> None:
        """Complete the current step (if any) and start the planned `step`, inside a `write()`:
        now, or `at`, for a step that began before this write (recorded with the next write the
        job makes). `description` says more than the plan's, when the run knows more."""
        jobs.start_step(job, step.caption, description or step.description, at)


# How often a running attempt looks whether its job was asked to cancel.
CANCEL_POLL_SECONDS = 1.0


class _LeaseKeeper(threading.Thread):
    """Renews the lease every third of its length until stopped or the lease is lost, and looks
    every second whether the job was asked to cancel, setting the attempt's token if so."""

    def __init__(self, claim: Claim, token: CancelToken):
        super().__init__(name=f"lease-{claim.job_id}", daemon=True)
        self.claim = claim
        self.token = token
        self.stopped = threading.Event()
        self.lost = False
        self.log_context = logs.current()  # its lines belong to the job too

    def run(self) -> None:
        self.log_context.run(self._renew_until_stopped)

    def _renew_until_stopped(self) -> None:
        interval = max(1.0, get_settings().lease_seconds / 3)
        renewal = time.monotonic() + interval
        while not self.stopped.wait(CANCEL_POLL_SECONDS):
            try:
                # The lease first: losing it costs the attempt. Due within half a poll counts as
                # due, so that a wake a moment early does not put it off by a whole second.
                if time.monotonic() >= renewal - CANCEL_POLL_SECONDS / 2:
                    renewal = time.monotonic() + interval
                    if not jobs.renew(self.claim):
                        self.lost = True
                        log.warning("job %s: lease lost on attempt %d", self.claim.job_id,
                                    self.claim.attempt)
                        return
                if not self.token.cancelled:
                    self._look_for_cancel()
            except Exception as exc:  # the database is away: keep trying until the lease lapses
                log.warning("job %s: lease renewal or cancel check failed: %s", self.claim.job_id,
                            type(exc).__name__)

    def _look_for_cancel(self) -> None:
        message = jobs.cancel_requested(self.claim)
        if message is not None:
            log.info("job %s: asked to cancel; stopping attempt %d", self.claim.job_id,
                     self.claim.attempt)
            self.token.cancel(message)


def run(job_id: str, handler: Callable[[JobRun], None]) -> None:
    """Claim `job_id` and run `handler`; a job that is not ours (any more) is left alone.

    Every line logged meanwhile, by this worker or a library, carries the job's id, hub, attempt
    and node (the JSON log format shows them).
    """
    with logs.context(job_id=job_id, node_id=get_settings().node_id):
        claim = jobs.claim(job_id, worker_name())
        if claim is None:
            log.info("job %s: not claimable (already running, finished, or expired)", job_id)
            return
        with logs.context(hub_id=claim.hub_id, attempt=claim.attempt):
            _run_claimed(claim, handler)


def _run_claimed(claim: Claim, handler: Callable[[JobRun], None]) -> None:
    job_id = claim.job_id
    log.info("job %s: claimed (%s, attempt %d)", job_id, claim.action, claim.attempt)
    token = CancelToken()
    keeper = _LeaseKeeper(claim, token)
    keeper.start()
    try:
        with cancellation.running(token):
            handler(JobRun(claim))
        log.info("job %s: completed", job_id)
    except LeaseLost:
        log.warning("job %s: another worker holds it now; this attempt stops", job_id)
    except Cancelled as exc:
        _fail(claim, exc.message)
    except JobFailed as exc:
        _fail(claim, exc.message, exc.transient)
    except Exception as exc:
        if token.cancelled:  # what a cut connection raises where no one expected it
            log.info("job %s: stopped by its cancel (%s)", job_id, type(exc).__name__)
            _fail(claim, token.message or "")
            return
        # Unexpected, so perhaps passing (the database restarting): tried again, a bounded
        # number of times, like any temporary fault.
        log.exception("job %s: unexpected error", job_id)
        _fail(claim, f"The job failed on an unexpected error in the worker "
                     f"({type(exc).__name__}); the worker log has the details under job {job_id}.",
              transient=True)
    finally:
        keeper.stopped.set()


def _fail(claim: Claim, message: str, transient: bool = False) -> None:
    """End the attempt: the job queued again after a transient fault, else ended in error. A job
    asked to cancel ends in error with the cancel's message, whatever its attempt met on the way
    out (a connection cut by the cancel, most often)."""
    limit = get_settings().max_attempts
    try:
        with jobs.fenced(claim, ending=True) as (session, job):
            if job.cancel_requested_at is not None:
                log.info("job %s: cancelled by API key %s", claim.job_id,
                         job.cancel_requested_by)
                jobs.fail(session, job, jobs.cancel_message(job.cancel_requested_by))
                return
            if transient and claim.attempt < limit:
                delay = get_settings().retry_seconds * 3 ** (claim.attempt - 1)
                message = (f"{message} (a temporary fault: attempt {claim.attempt} of {limit}; "
                           f"trying again in {delay} s)")
                log.info("job %s: will retry: %s", claim.job_id, message)
                jobs.retry_later(session, job, message, delay)
                return
            if transient:
                message = f"{message} (a temporary fault: given up after {claim.attempt} attempts)"
            else:
                message = f"{message} (not retried: trying again would not help)"
            log.info("job %s: error: %s", claim.job_id, message)
            jobs.fail(session, job, message)
    except LeaseLost:
        log.warning("job %s: could not record its error; another worker holds it", claim.job_id)
