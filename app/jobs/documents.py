"""Jobs as the spec's documents: Job and JobDescriptor."""

from __future__ import annotations

from typing import Any

from app.db import rfc3339
from app.jobs.models import Job


def job_document(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "hub_id": job.hub_id,
        "queue": job.queue,
        "caption": job.caption,
        "events": {"queued": rfc3339(job.queued_at), "started": rfc3339(job.started_at),
                   "completed": rfc3339(job.completed_at)},
        "schedule": rfc3339(job.schedule),
        "expires": rfc3339(job.expires),
        "tasks": job.tasks,
        "hash": job.hash,
        "limit_duplicates": job.limit_duplicates,
        "creator": {"id": job.creator_id, "type": job.creator_type},
        "state": {
            "current": job.state,
            "changed": rfc3339(job.state_changed),
            "error": {"message": job.error_message} if job.error_message else None,
        },
    }


def job_descriptor(job: Job) -> dict[str, Any]:
    """What every job-creating call answers (202): the action and the job it queued."""
    return {
        "action": job.tasks[0]["header"],
        "job": {
            "id": job.id,
            "accepted": True,
            "queue": job.queue,
            "schedule": rfc3339(job.schedule),
            "parallel": {"sub_queue": None, "tasks": False},
            "tasks": [{"caption": t["caption"], "header": t["header"], "input": t["input"],
                       "steps": t["steps"]} for t in job.tasks],
        },
    }
