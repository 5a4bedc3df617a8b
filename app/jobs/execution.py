"""The worker side of jobs, in Postgres: claim, lease, fenced writes, finish, and the sweeper.

Postgres is the authority; the broker only carries hints that a job may be ready. A claim is one
conditional update; every later write checks the claim's attempt number, so a worker whose lease
lapsed (it froze, or lost the database) can no longer change the job or what it works on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import autocommit_session, rfc3339, transaction, utcnow
from app.jobs import counters, kinds, services, steps
from app.jobs.models import JOB_STATES, Job, JobState

log = logging.getLogger("imagejobs.jobs")

_SWEEP_LOCK = 712_004_117  # any constant, the same in every sweeper


class LeaseLost(Exception):
    """Another worker holds the job now (or it ended); this worker must stop touching it."""


class Cancelled(Exception):
    """The job was asked to cancel (POST /v1/jobs/{id}/tasks) while this attempt ran: it may not
    complete, only end in error with `message`."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def cancel_message(key_id: str | None) -> str:
    """The error of a running job ended by the cancel request of API key `key_id`."""
    return f"Cancelled by API key {key_id} while it was running."


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    action: str
    hub_id: str | None = None


def claim(job_id: str, owner: str) -> Claim | None:
    """Move a queued job to running for this worker, or None if it is not ours to run."""
    settings = get_settings()
    with transaction() as session:
        now = utcnow()
        job = session.scalars(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED, Job.expires > now,
                   Job.schedule <= now)
            .values(state=JobState.RUNNING, state_changed=now, attempt=Job.attempt + 1,
                    lease_owner=owner, lease_expires=now + timedelta(seconds=settings.lease_seconds),
                    started_at=func.coalesce(Job.started_at, now))
            .returning(Job), execution_options={"populate_existing": True}
        ).first()
        if job is None:
            _expire_if_due(session, job_id)
            return None
        _set_task(job, state="running", started=True)
        # Progress reads from zero again for the attempt that runs; an earlier attempt's error
        # stays in the task and the job's state until this one ends.
        _change_steps(job, steps.restarted)
        return Claim(job_id=job_id, attempt=job.attempt, action=job.action, hub_id=job.hub_id)


def renew(claim: Claim) -> bool:
    """Extend the lease; False once the job is no longer this claim's."""
    with transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == claim.job_id, Job.attempt == claim.attempt,
                   Job.state == JobState.RUNNING, Job.lease_expires.is_not(None))
            .values(lease_expires=utcnow() + timedelta(seconds=get_settings().lease_seconds)))
        return result.rowcount == 1


@contextmanager
def holding_locks() -> Iterator[Session]:
    """A transaction whose locks others wait for, which Postgres ends once it sits idle for a lease.

    A worker frozen (or stuck) inside it would otherwise hold a job row, or the sweep, for as long
    as it is frozen; this way its session dies, the locks go, and its own commit fails later.
    Every connection of the process carries that limit (`app.db.get_engine`).
    """
    with transaction() as session:
        yield session


def take_sweep_lock(session: Session) -> bool:
    """True if this transaction may sweep: one sweeper at a time, until it ends."""
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _SWEEP_LOCK}))


@contextmanager
def fenced(claim: Claim, *, ending: bool = False) -> Iterator[tuple[Session, Job]]:
    """A transaction in which the job is locked and still this claim's, or LeaseLost.

    A job asked to cancel raises Cancelled instead, so that its attempt cannot complete once the
    request was accepted; only the write that ends it in error (`ending`) goes ahead. A job
    waiting for its children is no longer its worker's: they finish it.
    """
    with holding_locks() as session:
        job = session.scalar(select(Job).where(
            Job.id == claim.job_id, Job.attempt == claim.attempt, Job.state == JobState.RUNNING,
            Job.lease_expires.is_not(None)
        ).with_for_update())
        if job is None:
            raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} is no longer ours")
        if job.cancel_requested_at is not None and not ending:
            raise Cancelled(cancel_message(job.cancel_requested_by))
        yield session, job


def cancel_requested(claim: Claim) -> str | None:
    """The error to end the attempt with if its job was asked to cancel, else None: one cheap
    read, which a running attempt makes about once a second (without a transaction's round
    trips)."""
    with autocommit_session() as session:
        key_id = session.scalar(select(Job.cancel_requested_by).where(
            Job.id == claim.job_id, Job.attempt == claim.attempt,
            Job.cancel_requested_at.is_not(None)))
    return None if key_id is None else cancel_message(key_id)


def start_step(job: Job, caption: str, description: str, at: datetime | None = None) -> None:
    """Complete the step being worked on and start the planned step `caption`, now or `at` (when
    it began before this write); the description may say more than the plan's. A caption the
    plan lacks is added at the end, as for a job made before steps were planned."""
    _change_steps(job, lambda s: steps.started(s, caption, description, rfc3339(at or utcnow())))


def complete_step(job: Job, at: datetime | None = None) -> None:
    """Complete the step being worked on, now or `at`."""
    _change_steps(job, lambda s: steps.completed(s, rfc3339(at or utcnow())))


def note_progress(job: Job, done: int, total: int, unit: str) -> None:
    """Note how far the step being worked on is (`done` of `total` `unit`)."""
    _change_steps(job, lambda s: steps.with_progress(s, done, total, unit))


def _change_steps(job: Job, change: Callable[[list[dict]], list[dict]]) -> None:
    task = dict(job.tasks[0])
    task["steps"] = change(task["steps"])
    job.tasks = [task, *job.tasks[1:]]


def complete(session: Session, job: Job, output: dict[str, str] | None = None) -> None:
    """End the job in success, its last step completed.

    A planned step the job never started is dropped: a job that ends early (a delete that finds
    its image already gone) lists the steps it took, each complete, never a step it skipped.
    """
    complete_step(job)
    _change_steps(job, steps.taken)
    job.move_to(JobState.COMPLETED)
    job.error_message = None  # a fault an earlier attempt met is over
    _set_task(job, state="completed", completed=True, output=output, error=None)
    _tell_parent(session, job)


def fail(session: Session, job: Job, message: str) -> None:
    """End the job in error and put what it worked on back in a resting state, error shown.

    The step it failed on keeps its zero `completed` time, and the steps after it stay unstarted.
    """
    job.move_to(JobState.ERROR, error=message)
    _set_task(job, state="error", completed=True, error=message)
    _release_subject(session, job, message)
    _tell_parent(session, job)


def wait_for_children(session: Session, job: Job, outcome: dict[str, str]) -> None:
    """Leave the job running, but held by no worker, until its last child job ends.

    A prune (or a source deletion) hands its images to delete jobs on the nodes that hold them.
    Waiting in a worker would hold a pool slot, and prunes filling every slot would wait for ever
    for deletes that no slot is left to run. The child that ends last finishes the parent, in
    its own transaction. `outcome` is what was decided without a child, per image id; each
    child's result joins it in the task's output as it ends.
    """
    job.lease_owner = job.lease_expires = None  # out of the sweeper's reach: no lease to lapse
    _set_task(job, state="running", output=outcome)
    _fan_in(session, job)


def _tell_parent(session: Session, child: Job) -> None:
    if child.parent_id is None:
        return
    parent = session.scalar(select(Job).where(
        Job.id == child.parent_id, Job.state == JobState.RUNNING, Job.lease_expires.is_(None)
    ).with_for_update().execution_options(populate_existing=True))
    if parent is not None:
        _fan_in(session, parent)


def _fan_in(session: Session, parent: Job) -> None:
    """Gather the results of the parent's ended children; finish it when none is left."""
    output = dict(parent.tasks[0].get("output") or {})
    pending = False
    for child in session.scalars(select(Job).where(Job.parent_id == parent.id)):
        if child.state not in JOB_STATES.final:
            pending = True
            continue
        output[child.subject_id] = ((child.tasks[0].get("output") or {}).get("result")
                                    or f"kept: {child.error_message}")
    if pending:
        _set_task(parent, state="running", output=output)
        return
    children_ended = kinds.of(parent.action).children_ended
    assert children_ended is not None, f"{parent.action} jobs have no children"
    children_ended(session, parent, output)


def retry_later(session: Session, job: Job, message: str, delay_seconds: float) -> None:
    """Queue the job again after a temporary fault, to be claimed no sooner than the delay.

    Its steps stay as the attempt left them, the failed one not completed, until the next claim.
    """
    job.move_to(JobState.QUEUED, error=message)
    job.schedule = utcnow() + timedelta(seconds=delay_seconds)
    job.lease_owner = job.lease_expires = job.published_at = None
    _set_task(job, state="pending", error=message)
    _release_subject(session, job, message)
    counters.add(session, counters.RETRY, job.action)


def _release_subject(session: Session, job: Job, message: str) -> None:
    """Put what the job worked on back at rest, as its kind says (app/jobs/kinds.py)."""
    if job.subject_id is not None:
        kinds.of(job.action).release(session, job, message)


_KEEP = object()  # leave the task's error as it is


def _set_task(job: Job, *, state: str, started: bool = False, completed: bool = False,
              output: dict[str, str] | None = None, error: object = _KEEP) -> None:
    now = rfc3339(utcnow())
    task = dict(job.tasks[0])
    task["state"] = {"current": state, "changed": now}
    events = dict(task["events"])
    if started and events["started"] == rfc3339(None):
        events["started"] = now
    if completed:
        events["completed"] = now
    task["events"] = events
    if output is not None:
        task["output"] = output
    if error is not _KEEP:
        task["error"] = {"message": error} if error else None
    job.tasks = [task, *job.tasks[1:]]


def _expire_if_due(session: Session, job_id: str) -> None:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.state == JobState.QUEUED,
                                           Job.expires <= utcnow()).with_for_update())
    if job is not None:
        _expire(session, job)


def _expire(session: Session, job: Job) -> None:
    message = "The job was not started before it expired."
    job.move_to(JobState.EXPIRED, error=message)
    _set_task(job, state="error", completed=True, error=message)
    # A delete queued for a node that never came leaves its image as it was, error shown.
    _release_subject(session, job, message)
    _tell_parent(session, job)


@dataclass
class SweepReport:
    expired: int = 0
    requeued: int = 0
    abandoned: int = 0
    cancelled: int = 0
    published: int = 0


def sweep() -> SweepReport:
    """Expire, take back lapsed leases, and republish jobs the broker may have lost.

    One sweeper at a time across all workers (an advisory lock); safe to run anywhere, any time.
    """
    settings = get_settings()
    report = SweepReport()
    to_publish: list[Job] = []
    requeued: list[Job] = []
    lapsed: Counter[tuple[str, str]] = Counter()
    with holding_locks() as session:
        if not take_sweep_lock(session):
            return report
        now = utcnow()
        for job in _locked(session, Job.state == JobState.QUEUED, Job.expires <= now):
            _expire(session, job)
            report.expired += 1
        for job in _locked(session, Job.state == JobState.RUNNING, Job.lease_expires < now):
            if job.cancel_requested_at is not None:
                # Its worker stopped before it could end the job as asked: the sweeper does.
                log.warning("job %s: lease of %s lapsed after a cancel request; ending it",
                            job.id, job.lease_owner)
                fail(session, job, cancel_message(job.cancel_requested_by))
                report.cancelled += 1
            elif job.attempt >= settings.max_attempts:
                fail(session, job, f"The job was given up after {job.attempt} attempts: each "
                     "time, the worker running it stopped responding (it crashed, was killed, "
                     "or lost its connection).")
                lapsed[counters.LEASE_ABANDONED, job.action] += 1
                report.abandoned += 1
            else:
                log.warning("job %s: lease of %s lapsed on attempt %d; queueing it again",
                            job.id, job.lease_owner, job.attempt)
                job.move_to(JobState.QUEUED)
                job.lease_owner = job.lease_expires = None
                job.published_at = None
                _set_task(job, state="pending")
                # What it worked on rests until the next attempt picks it up again.
                _release_subject(session, job, f"The worker running attempt {job.attempt} "
                                 "stopped responding; the job was queued again.")
                lapsed[counters.LEASE_REQUEUED, job.action] += 1
                requeued.append(job)
                report.requeued += 1
        for (event, action), number in sorted(lapsed.items()):
            counters.add(session, event, action, number)
        stale = now - timedelta(seconds=settings.republish_seconds)
        orphaned = now - timedelta(seconds=settings.publish_grace_seconds)
        unpublished = Job.published_at.is_(None) & (Job.state_changed < orphaned)
        to_publish = requeued + _locked(session, Job.state == JobState.QUEUED,
                                        Job.schedule <= now,
                                        unpublished | (Job.published_at < stale), limit=500)
    for job in to_publish:
        with transaction() as session:
            fresh = session.get(Job, job.id)
            if fresh is not None and fresh.state == JobState.QUEUED:
                fresh.published_at = None
                if services.publish(session, fresh):
                    counters.add(session, counters.SWEEPER_PUBLISHED, fresh.action)
                    report.published += 1
    return report


def _locked(session: Session, *conditions, limit: int = 1000) -> list[Job]:
    return list(session.scalars(select(Job).where(*conditions).order_by(Job.id).limit(limit)
                                .with_for_update(skip_locked=True)))
