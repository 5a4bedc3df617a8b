"""Retrying an ended job and cancelling a queued or running one, through each kind's own hooks
(app/jobs/kinds.py): a retry asks the domain for the work again as the original call did, and a
cancel ends the job as a failure does, its subject put back at rest."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.db import is_id, utcnow
from app.jobs import execution, kinds
from app.jobs.models import JOB_STATES, Job, JobState

RETRYABLE = (JobState.ERROR, JobState.EXPIRED)


def locked(session: Session, hub_id: str, job_id: str) -> Job:
    """The hub's job, locked against the worker's claim and the sweeper until the commit."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.hub_id == hub_id)
                         .with_for_update().execution_options(populate_existing=True)
                         ) if is_id(job_id) else None  # some, NUL, Postgres would refuse
    if job is None:
        raise errors.JobNotFound(f"No job `{job_id[:64]}` in this hub.")
    return job


def retry(session: Session, job: Job, creator: dict[str, str]) -> Job:
    """A new job doing the ended job's work again (or the equal job already queued)."""
    if job.state not in RETRYABLE:
        raise errors.InvalidState(
            f"Only a job that ended in `error` or `expired` can be retried; this one is "
            f"`{job.state}`" + (": it has not ended yet." if job.state not in JOB_STATES.final
                                else "."))
    again = kinds.of(job.action).again
    if again is None:
        raise errors.InvalidState(f"`{job.action}` jobs cannot be retried.")
    new = again(session, job, creator)
    if new.retry_of is None and new.id != job.id:
        new.retry_of = job.id
    return new


def cancel(session: Session, job: Job, key_id: str) -> Job:
    """Cancel a job, the request recorded on it: a queued one (never started, or waiting to be
    tried again) ends in `error` at once, and a worker that gets its message finds it not
    claimable; a running one of a kind that allows it is stopped by its worker within a few
    seconds (workers/runner.py), which then ends it. Either way what it worked on is put back at
    rest. Asking again is answered as the first time."""
    if job.cancel_requested_at is not None and job.state in (JobState.RUNNING, JobState.ERROR):
        return job
    if job.state in JOB_STATES.final:
        raise errors.InvalidState(f"The job already ended (`{job.state}`): there is nothing to "
                                  "cancel.")
    if job.state == JobState.RUNNING:
        kind = kinds.of(job.action)
        if not kind.cancellable_while_running:
            raise errors.InvalidState(f"A running `{job.action}` job cannot be cancelled: "
                                      f"{kind.running_cancel_refused}. Wait for it to end.")
        job.cancel_requested_by, job.cancel_requested_at = key_id, utcnow()
        return job
    if job.state != JobState.QUEUED:
        raise errors.InvalidState(f"A `{job.state}` job cannot be cancelled.")
    job.cancel_requested_by, job.cancel_requested_at = key_id, utcnow()
    execution.fail(session, job, f"Cancelled by API key {key_id} before it "
                   + ("started." if job.attempt == 0 else "was tried again."))
    return job
