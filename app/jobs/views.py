"""/v1/jobs: a hub's jobs, to poll."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy.orm import Session

from app.db import autocommit_session
from app.hubs.auth import current, requires
from app.hubs.documents import creators_include
from app.hubs.models import Capability
from app.jobs import services
from app.jobs.documents import job_descriptor, job_document
from app.jobs.models import Job
from app.web import db_session, fetch_page, list_query

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def accepted(session: Session, job: Job) -> tuple[dict[str, Any], int]:
    """The 202 of a job-creating call: commit, then publish (Postgres hears first), describe."""
    session.commit()
    with autocommit_session() as note:
        services.publish(note, job)
    return {"data": job_descriptor(job)}, 202


@blueprint.get("")
@requires(Capability.JOBS_VIEW)
def list_jobs():
    q = list_query(filters={"state", "search", "range-start", "range-end"},
                   sorts=set(services.JOB_SORTS),
                   includes={"creators"})
    query = services.jobs_query(current().hub_id, q.filters, q.states())
    jobs = fetch_page(query, q, services.JOB_SORTS, Job.id.desc())
    result = {"data": [job_document(j) for j in jobs]}
    if "creators" in q.include:
        result["includes"] = {"creators": creators_include(
            db_session(), current().hub_id, {j.creator_id for j in jobs})}
    return result


@blueprint.get("/<job_id>")
@requires(Capability.JOBS_VIEW)
def get_job(job_id: str):
    return {"data": job_document(services.get_job(db_session(), current().hub_id, job_id))}
