"""Prune, and the deletion of a source: remove the images of some sources, on every node.

The job plans on the maintenance queue, hands each image an engine holds to a delete job on the
queue of that node, waits for them, and reports per image what was removed and what was kept, and
why. Images no engine holds are removed by the job itself.
"""

from __future__ import annotations

import time

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import transaction
from app.images.models import TRANSITIONAL, Image, ImageState
from app.images.services import queue_delete
from app.jobs import engine as jobs
from app.jobs.models import ACTIVE, JOB_STATES, Job
from app.jobs.services import publish
from app.sources.models import ImageSource, SourceState
from workers.runner import JobFailed, JobRun, run

POLL_SECONDS = 0.5


@shared_task(name="imagejobs.images.prune")
def prune_images(job_id: str) -> None:
    run(job_id, _prune)


@shared_task(name="imagejobs.source.delete")
def delete_source(job_id: str) -> None:
    run(job_id, _delete_source)


def _prune(job_run: JobRun) -> None:
    with job_run.write() as (_, job):
        source_ids, dry_run = job.input["source_ids"], bool(job.input.get("dry_run"))
    outcome = remove_images(job_run, source_ids, dry_run)
    with job_run.write() as (session, job):
        jobs.complete(session, job, {**outcome, "summary": summary(outcome, dry_run)})


def _delete_source(job_run: JobRun) -> None:
    with job_run.write() as (_, job):
        source_id = job.input["source_id"]
    outcome = remove_images(job_run, [source_id], dry_run=False)
    kept = {k: v for k, v in outcome.items() if not v.startswith(("removed", "already deleted"))}
    if kept:
        raise JobFailed(f"The source was not deleted: {len(kept)} of its images remain ("
                        + "; ".join(f"{k}: {v}" for k, v in sorted(kept.items())) + ").")
    with job_run.write() as (session, job):
        source = session.get(ImageSource, source_id, with_for_update=True)
        if source.state == SourceState.LIVE:  # an earlier attempt's fault put it back
            source.move_to(SourceState.DELETING)
        if source.state != SourceState.DELETED:
            source.move_to(SourceState.DELETED)
        jobs.complete(session, job, {**outcome, "summary": summary(outcome, False)})


def remove_images(job_run: JobRun, source_ids: list[str], dry_run: bool) -> dict[str, str]:
    """Delete (or, dry, judge) every image of these sources; per image id, what became of it."""
    outcome: dict[str, str] = {}
    children: dict[str, str] = {}
    with job_run.write() as (session, job):
        jobs.start_step(job, "Plan", "Finding the images of the sources")
        images = list(session.scalars(select(Image).where(
            Image.hub_id == job.hub_id, Image.source_id.in_(source_ids),
            Image.state != ImageState.DELETED).order_by(Image.id).with_for_update()))
        creator = {"id": job.creator_id, "type": job.creator_type}
        importing = _awaiting_import(session, [image.id for image in images])
        for image in images:
            if image.state == ImageState.DELETING:
                outcome[image.id] = "kept: another job is deleting it"
            elif image.state in TRANSITIONAL:
                outcome[image.id] = f"kept: it is {image.state} (an import is running)"
            elif image.id in importing:
                outcome[image.id] = "kept: an import of it is queued"
            elif not image.factory_node_id:
                # No engine holds it: nothing for a node to do, and no child job for this one
                # to wait on (a pool full of waiting prunes would wait for ever).
                outcome[image.id] = "would be removed" if dry_run else "removed"
                if not dry_run:
                    image.move_to(ImageState.DELETING)
                    image.move_to(ImageState.DELETED)
            else:
                child = queue_delete(session, image, creator, {
                    "image_id": image.id, "dry_run": dry_run, "requested_by": job.id})
                children[image.id] = child.id
                if not dry_run:
                    image.move_to(ImageState.DELETING)
        job_run.step(job, "Remove", f"{len(children)} image(s) handed to the nodes that hold them"
                     + (" (dry run)" if dry_run else ""))
    with transaction() as session:
        for child in session.scalars(select(Job).where(Job.id.in_(children.values()))):
            publish(session, child)
    outcome.update(_wait_for(job_run, children))
    return outcome


def _awaiting_import(session: Session, image_ids: list[str]) -> set[str]:
    """Images someone asked to import whose import has not ended: a prune leaves them be.

    The images are locked, and asking for an import locks its image too, so none can slip in.
    """
    return set(session.scalars(select(Job.subject_id).where(
        Job.action == "image.import", Job.subject_id.in_(image_ids), Job.state.in_(ACTIVE))))


def _wait_for(job_run: JobRun, children: dict[str, str]) -> dict[str, str]:
    results: dict[str, str] = {}
    while len(results) < len(children):
        time.sleep(POLL_SECONDS)
        with job_run.write():  # still ours? (LeaseLost ends this attempt otherwise)
            pass
        with transaction() as session:
            for image_id, job_id in children.items():
                child = session.get(Job, job_id)
                if image_id in results or child.state not in JOB_STATES.final:
                    continue
                task = child.tasks[0]
                results[image_id] = ((task.get("output") or {}).get("result")
                                     or f"kept: {child.error_message}")
    return results


def summary(outcome: dict[str, str], dry_run: bool) -> str:
    removed = sum(1 for v in outcome.values() if v in ("removed", "would be removed"))
    verb = "would be removed" if dry_run else "removed"
    return f"{removed} image(s) {verb}, {len(outcome) - removed} kept"
