"""Retrying an ended job and cancelling a queued one, through each kind's own hooks
(app/jobs/kinds.py): a retry asks the domain for the work again as the original call did, and a
cancel ends the job as a failure does, its subject put back at rest."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.db import is_id
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
    """End a queued job in `error` at once; a worker that gets its message finds it not
    claimable (the claim needs `queued`), and what it was to work on is put back at rest."""
    if job.state == JobState.RUNNING:
        raise errors.InvalidState("A running job cannot be cancelled yet: only a queued job can "
                                  "be. Wait for it to end.")
    if job.state in JOB_STATES.final:
        raise errors.InvalidState(f"The job already ended (`{job.state}`): there is nothing to "
                                  "cancel.")
    if job.state != JobState.QUEUED:
        raise errors.InvalidState(f"A `{job.state}` job cannot be cancelled.")
    execution.fail(session, job, f"Cancelled by API key {key_id} before it started.")
    return job
