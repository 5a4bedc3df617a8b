"""/v1/jobs: a hub's jobs, to poll."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy.orm import Session

from app.hubs.auth import current, requires
from app.hubs.models import Capability
from app.jobs import documents, services
from app.jobs.models import Job
from app.web import db_session, fetch_page, list_query

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def accepted(session: Session, job: Job) -> tuple[dict[str, Any], int]:
    """The 202 of a job-creating call: commit, then publish (Postgres hears first), describe."""
    session.commit()
    services.publish(session, job)
    session.commit()
    return documents.JobDescriptorDocument.of(job).answer(), 202


@blueprint.get("")
@requires(Capability.JOBS_VIEW)
def list_jobs():
    q = list_query(filters={"state", "search", "range-start", "range-end"},
                   sorts=set(services.JOB_SORTS),
                   includes={"creators"})
    query = services.jobs_query(current().hub_id, q.filters, q.states())
    jobs = fetch_page(query, q, services.JOB_SORTS, Job.id.desc())
    return documents.job_list(db_session(), current().hub_id, jobs, q.include).answer()


@blueprint.get("/<job_id>")
@requires(Capability.JOBS_VIEW)
def get_job(job_id: str):
    job = services.get_job(db_session(), current().hub_id, job_id)
    return documents.JobDocument(data=documents.Job.of(job)).answer()
