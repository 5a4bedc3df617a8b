"""Prune, and the deletion of a source: remove the images of some sources, on every node.

The job plans on the maintenance queue and hands each image an engine holds to a delete job on
the queue of that node. It then waits for them without holding a worker: the delete that ends
last finishes it (`app.jobs.execution.wait_for_children`), with per image what was removed and
what was kept, and why. Images no engine holds are removed by the job itself.
"""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import transaction
from app.images import lifecycle as _images  # noqa: F401  (registers the prune)
from app.images import steps
from app.images.models import TRANSITIONAL, Image, ImageState
from app.images.services import queue_delete
from app.jobs import execution as jobs
from app.jobs.actions import Action
from app.jobs.models import ACTIVE, Job
from app.jobs.services import publish
from app.sources import lifecycle as _sources  # noqa: F401  (registers the source's deletion)
from workers.runner import JobRun, run

log = logging.getLogger("imagejobs.worker")


@shared_task(name=Action.IMAGES_PRUNE.task_name)
def prune_images(job_id: str) -> None:
    run(job_id, _prune)


@shared_task(name=Action.SOURCE_DELETE.task_name)
def delete_source(job_id: str) -> None:
    run(job_id, _delete_source)


def _prune(job_run: JobRun) -> None:
    with job_run.write() as (_, job):
        source_ids, dry_run = job.input["source_ids"], bool(job.input.get("dry_run"))
    remove_images(job_run, source_ids, dry_run)


def _delete_source(job_run: JobRun) -> None:
    with job_run.write() as (_, job):
        source_id = job.input["source_id"]
    remove_images(job_run, [source_id], dry_run=False)


def remove_images(job_run: JobRun, source_ids: list[str], dry_run: bool) -> None:
    """Delete (or, dry, judge) every image of these sources, then wait for the nodes' deletes."""
    outcome: dict[str, str] = {}
    children: list[str] = []
    with job_run.write() as (session, job):
        job_run.step(job, steps.PLAN)
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
                # No engine holds it: nothing for a node to do.
                outcome[image.id] = "would be removed" if dry_run else "removed"
                if not dry_run:
                    image.move_to(ImageState.DELETING)
                    image.move_to(ImageState.DELETED)
            else:
                child = queue_delete(session, image, creator, {
                    "image_id": image.id, "dry_run": dry_run, "requested_by": job.id},
                    parent_id=job.id)
                children.append(child.id)
                if not dry_run:
                    image.move_to(ImageState.DELETING)
        job_run.step(job, steps.HAND_OUT, f"{len(children)} image(s) handed to the nodes that hold them"
                     + (" (dry run)" if dry_run else ""))
        jobs.wait_for_children(session, job, outcome)
    # Committed before published: a child the broker never hears of is published by the sweeper.
    with transaction() as session:
        for child in session.scalars(select(Job).where(Job.id.in_(children))):
            publish(session, child)
    if children:
        log.info("job %s: waiting for %d delete job(s)", job_run.claim.job_id, len(children))


def _awaiting_import(session: Session, image_ids: list[str]) -> set[str]:
    """Images someone asked to import whose import has not ended: a prune leaves them be.

    The images are locked, and asking for an import locks its image too, so none can slip in.
    """
    return set(session.scalars(select(Job.subject_id).where(
        Job.action == Action.IMAGE_IMPORT, Job.subject_id.in_(image_ids), Job.state.in_(ACTIVE))))
