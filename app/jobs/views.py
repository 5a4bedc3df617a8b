"""/v1/jobs: a hub's jobs, to poll."""

from __future__ import annotations

from flask import Blueprint, Response, after_this_request, request
from sqlalchemy.orm import Session

from app import errors
from app.db import autocommit_session
from app.events import follow, listener
from app.hubs.auth import authenticate, current, requires
from app.hubs.models import Capability
from app.idempotency.requests import idempotent
from app.jobs import control, documents, kinds, services
from app.jobs.models import Job, JobState
from app.jobs.schemas import JobTaskRequest
from app.openapi import EXTENSION, documented, query_parameter
from app.web import ListParameters, db_session, fetch_page, parse_body

blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

JOBS = ListParameters(
    states=JobState,
    filters={"search": "A substring of the caption, a job id or the id of the resource it works "
                       "on.",
             "range-start": "Jobs queued at or after this time.",
             "range-end": "Jobs queued at or before this time."},
    sorts=services.JOB_SORTS, includes={"creators"})


# The newest jobs of a hub, at most this many: what a dashboard shows first.
LATEST_JOBS = 20
LATEST = ListParameters(includes=JOBS.includes)


def accepted(session: Session, job: Job) -> documents.JobDescriptorDocument:
    """The answer of a job-creating call: commit, then publish (Postgres hears first), describe."""
    session.commit()
    with autocommit_session() as note:
        services.publish(note, job)
    return documents.JobDescriptorDocument.of(job)


@blueprint.get("")
@documented("List the hub's jobs", documents.JobListDocument, query=JOBS)
@requires(Capability.JOBS_VIEW)
def list_jobs():
    q = JOBS.parse()
    query = services.jobs_query(current().hub_id, q.filters, q.states())
    jobs = fetch_page(query, q, Job.id.desc())
    return documents.job_list(db_session(), current().hub_id, jobs, q.include)


@blueprint.get("/latest")
@documented(f"The hub's {LATEST_JOBS} most recent jobs, newest first", documents.JobListDocument,
            query=LATEST, extension=True)
@requires(Capability.JOBS_VIEW)
def latest_jobs():
    q = LATEST.parse()
    jobs = db_session().scalars(services.jobs_query(current().hub_id, {}, []).order_by(
        Job.id.desc()).limit(LATEST_JOBS)).all()
    return documents.job_list(db_session(), current().hub_id, jobs, q.include)


WAIT = {**query_parameter(
    "wait", {"type": "number", "minimum": 0, "maximum": follow.MAX_WAIT_SECONDS},
    "Long poll: answer as soon as the job differs from the version in `If-None-Match` (the "
    "`ETag` of an earlier answer; without it, from the job as it is now), or after this many "
    "seconds as it is then."), **EXTENSION}


@blueprint.get("/<job_id>")
@documented("Get a job", documents.JobDocument, parameters=(WAIT,),
            errors=(errors.JobNotFound, errors.InvalidArgument))
@requires(Capability.JOBS_VIEW)
def get_job(job_id: str):
    """Every answer carries an `ETag`; `If-None-Match` with it answers 304 while the job is the
    same, or, with `?wait=`, waits for it to change."""
    hub_id = current().hub_id
    seconds = follow.wait_seconds()
    seen = request.headers.get("If-None-Match")

    def read() -> documents.JobDocument:
        with autocommit_session() as session:
            return documents.JobDocument(data=documents.Job.of(
                services.get_job(session, hub_id, job_id)))

    if seconds:
        db_session().close()  # no pooled connection is held while the job is waited for
        document = follow.long_poll(listener.job(job_id), read, _version, seen, seconds)
    else:
        document = documents.JobDocument(data=documents.Job.of(
            services.get_job(db_session(), hub_id, job_id)))
        if seen is not None and seen == _version(document):
            return Response(status=304, headers={"ETag": seen})
    tag = _version(document)

    @after_this_request
    def tagged(response: Response) -> Response:
        response.headers["ETag"] = tag
        return response

    return document


def _version(document: documents.JobDocument) -> str:
    return follow.etag(document.answer())


@blueprint.post("/<job_id>/tasks")
@idempotent
@documented("Retry a job that ended in error or expired (a new job), or cancel a queued job or "
            "a running import",
            documents.JobDescriptorDocument, status=202, body=JobTaskRequest,
            errors=(errors.JobNotFound, errors.InvalidState, errors.ImageNotFound,
                    errors.SourceNotFound, errors.InvalidArgument), extension=True)
@requires(Capability.JOBS_VIEW)
def create_job_task(job_id: str):
    """Retrying or cancelling a job also needs the capability of the call that makes such jobs
    (`images-import` for an import, `images-manage` for a delete or a prune...).

    A cancelled queued job ends in `error` at once. A running import (a pull, a build or an
    upload's load) is stopped by its worker within a few seconds and then ends in `error`, its
    image put back as a failed import leaves it; the answer comes before that, with the job still
    `running`. A running delete or prune cannot be cancelled (`403.invalid-state`): stopped
    half-way it would leave its images worse off than letting it end. Cancelling again is
    answered as the first time; a job that ended otherwise is `403.invalid-state`."""
    body = parse_body(JobTaskRequest)
    session = db_session()
    job = control.locked(session, current().hub_id, job_id)
    capability = kinds.of(job.action).capability
    if capability is not None:
        authenticate(Capability(capability))
    if body.action == "retry":
        return accepted(session, control.retry(session, job, current().creator))
    control.cancel(session, job, current().key_id)
    session.commit()
    return documents.JobDescriptorDocument.of(job)
