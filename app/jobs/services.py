"""Creating jobs (with duplicate suppression), publishing them after commit, and reading them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app import errors
from app.config import get_settings
from app.db import is_id, like_pattern, new_id, rfc3339, utcnow
from app.filters import by_state
from app.jobs import queueing
from app.jobs.models import ACTIVE, UNFINISHED_DUPLICATES, Job, JobState
from app.jobs.steps import Step, plan


@dataclass(frozen=True)
class NewTask:
    """The one task of a new job, with every step it will take (its domain's plan)."""

    header: str
    caption: str
    input: dict[str, Any]
    steps: tuple[Step, ...] = ()


def job_hash(hub_id: str, action: str, task_input: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([hub_id, action, task_input], sort_keys=True).encode()
                          ).hexdigest()


def create_job(session: Session, *, hub_id: str, creator: dict[str, str], action: str,
               queue: str, caption: str, subject_id: str | None, task: NewTask,
               parent_id: str | None = None) -> Job:
    """A queued job, or the equal job still unfinished (same hub, action and input).

    The caller commits, then calls `publish`: a job is in Postgres before the broker hears of it.
    """
    digest = job_hash(hub_id, action, task.input)
    now = utcnow()
    values = dict(
        id=new_id(), hub_id=hub_id, action=action, queue=queue, caption=caption,
        subject_id=subject_id, parent_id=parent_id, input=task.input, hash=digest,
        limit_duplicates=True,
        creator_type=creator["type"], creator_id=creator["id"], state=JobState.QUEUED,
        state_changed=now, queued_at=now, schedule=now,
        expires=now + timedelta(seconds=get_settings().job_ttl_seconds),
        tasks=[{
            "id": new_id(), "caption": task.caption, "header": task.header,
            "events": {"queued": rfc3339(now), "started": rfc3339(None),
                       "completed": rfc3339(None)},
            "steps": plan(task.steps), "state": {"current": "pending", "changed": rfc3339(now)},
            "input": task.input, "output": None, "error": None,
        }],
    )
    for _ in range(3):
        # An equal job is looked for first: the insert would wait on it while a worker holds it
        # (to learn whether the row it conflicts with stays), and that worker may be waiting on
        # a row this request holds (a source being deleted), a deadlock.
        job = (_active_with_hash(session, digest)
               or session.scalars(_INSERT_UNLESS_DUPLICATE, values).first())
        if job is None:
            job = _active_with_hash(session, digest)
        if job is not None:
            return job
        # The equal job finished between the insert and the look: insert again.
    raise RuntimeError(f"job {digest} could neither be inserted nor found")


# One statement decides it: the insert, or nothing when an equal job is unfinished. Its values
# are parameters, so it is compiled once.
_INSERT_UNLESS_DUPLICATE = (
    pg_insert(Job)
    .on_conflict_do_nothing(index_elements=["hash"], index_where=text(UNFINISHED_DUPLICATES))
    .returning(Job))


def _active_with_hash(session: Session, digest: str) -> Job | None:
    return session.scalar(select(Job).where(Job.hash == digest, Job.limit_duplicates,
                                            Job.state.in_(ACTIVE)))


def publish(session: Session, job: Job) -> bool:
    """Publish a committed job and note when (the caller commits that note).

    If the broker is down the job stays unpublished and the sweeper publishes it later.
    """
    if job.state != JobState.QUEUED or job.published_at is not None:
        return False
    if not queueing.publish(job.action, job.id, job.queue):
        return False
    session.execute(update(Job).where(Job.id == job.id).values(published_at=utcnow()))
    return True


def get_job(session: Session, hub_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.hub_id == hub_id)
                         ) if is_id(job_id) else None
    if job is None:
        raise errors.JobNotFound(f"No job `{job_id[:64]}` in this hub.")
    return job


JOB_SORTS = {"id": Job.id, "created": Job.id, "state": Job.state, "queued": Job.queued_at,
             "started": Job.started_at, "completed": Job.completed_at, "caption": Job.caption}


def jobs_query(hub_id: str, filters: dict[str, str], states: list[str]) -> Select[tuple[Job]]:
    query = by_state(select(Job).where(Job.hub_id == hub_id), Job.state, states, JobState, "job")
    if "range-start" in filters:
        query = query.where(Job.queued_at >= _time_filter(filters, "range-start"))
    if "range-end" in filters:
        # Times are shown to the millisecond: an end copied from a job must include that job.
        end = _time_filter(filters, "range-end")
        with contextlib.suppress(OverflowError):  # an end in year 9999's last millisecond: no bound
            query = query.where(Job.queued_at < end + timedelta(milliseconds=1))
    search = filters.get("search")
    if search:
        query = query.where(Job.caption.ilike(like_pattern(search)) | (Job.id == search)
                            | (Job.subject_id == search))
    return query


def _time_filter(filters: dict[str, str], name: str) -> datetime:
    try:
        value = datetime.fromisoformat(filters[name])
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise errors.InvalidArgument(f"`filter[{name}]` must be an RFC 3339 time such as "
                                     "2026-01-30T08:30:00Z.", source=f"filter[{name}]")
    return value
