"""Jobs as the spec's documents, Job and Job Descriptor: each described once, answered and
documented alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.db import rfc3339
from app.documents import Creator, Document, Id, StateError, Time, extension, optional, stored
from app.hubs.documents import CreatorsInclude, creators_include
from app.jobs import models
from app.jobs.models import JobState


class JobEvents(Document):
    queued: Time
    started: Time
    completed: Time


class StepProgress(Document):
    done: int
    total: int
    unit: Literal["bytes", "steps"]


class JobStep(Document):
    caption: str
    description: str
    started: Time
    completed: Time
    progress: StepProgress | None = extension(
        "How far the step being worked on is: for a pull, the bytes of its layers downloaded "
        "(the total grows as layers are announced); for a build, the Dockerfile's steps finished. "
        "A completed step shows `done` equal to `total` where the total is known.")


class TaskState(Document):
    current: Literal["pending", "running", "completed", "error"]
    changed: Time


class JobTask(Document):
    id: Id
    caption: str
    header: str
    events: JobEvents
    steps: list[JobStep]
    state: TaskState
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: StateError | None


class JobStatus(Document):
    current: JobState
    changed: Time
    error: StateError | None


class Job(Document):
    id: Id
    hub_id: Id
    queue: str
    caption: str
    events: JobEvents
    schedule: Time
    expires: Time
    # Kept whole with the job and written only by the job engine: answered as stored.
    tasks: stored(list[JobTask])
    hash: str
    limit_duplicates: bool
    creator: Creator
    state: JobStatus
    retry_of: Id | None = extension("The ended job whose work this one does again.")

    @classmethod
    def of(cls, job: models.Job) -> Job:
        return cls(
            id=job.id, hub_id=job.hub_id, queue=job.queue, caption=job.caption,
            events=JobEvents(queued=rfc3339(job.queued_at), started=rfc3339(job.started_at),
                             completed=rfc3339(job.completed_at)),
            schedule=rfc3339(job.schedule), expires=rfc3339(job.expires), tasks=job.tasks,
            hash=job.hash, limit_duplicates=job.limit_duplicates, creator=Creator.of(job),
            state=JobStatus(current=job.state, changed=rfc3339(job.state_changed),
                            error=StateError.of(job.error_message)),
            retry_of=job.retry_of)


class JobIncludes(Document):
    creators: CreatorsInclude


class JobDocument(Document):
    data: Job


class JobListDocument(Document):
    data: list[Job]
    includes: JobIncludes | None = optional("Only with `include=creators`.")


def job_list(session: Session, hub_id: str, jobs: Sequence[models.Job], include: set[str]
             ) -> JobListDocument:
    """The jobs with what `include` asks for."""
    includes = None
    if "creators" in include:
        includes = JobIncludes(creators=creators_include(session, hub_id,
                                                         {j.creator_id for j in jobs}))
    return JobListDocument(data=[Job.of(j) for j in jobs], includes=includes)


class Parallel(Document):
    sub_queue: None
    tasks: bool


class DescribedTask(Document):
    caption: str
    header: str
    input: stored(dict[str, Any])
    steps: stored(list[JobStep])


class QueuedJob(Document):
    id: Id
    accepted: bool
    queue: str
    schedule: Time
    parallel: Parallel
    tasks: list[DescribedTask]


class JobDescriptor(Document):
    action: str
    job: QueuedJob


class JobDescriptorDocument(Document):
    data: JobDescriptor

    @classmethod
    def of(cls, job: models.Job) -> JobDescriptorDocument:
        """What every job-creating call answers (202): the action and the job it queued."""
        return cls(data=JobDescriptor(action=job.tasks[0]["header"], job=QueuedJob(
            id=job.id, accepted=True, queue=job.queue, schedule=rfc3339(job.schedule),
            parallel=Parallel(sub_queue=None, tasks=False),
            tasks=[DescribedTask(caption=t["caption"], header=t["header"], input=t["input"],
                                 steps=t["steps"]) for t in job.tasks])))
