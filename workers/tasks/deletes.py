"""Delete: remove an image from the engine of the node that holds it (the node's own queue).

An image some container uses is not removed, and the job says which containers hold it. Only
the image's own tag is removed; the engine frees the layers once nothing else holds them, so
nothing the request did not own is touched. A `dry_run` reports without removing.
"""

from __future__ import annotations

from celery import shared_task

from app.config import get_settings
from app.images import (
    lifecycle,  # noqa: F401  (registers the image job kinds)
    steps,
)
from app.images.models import Image, ImageState
from app.images.services import upload_path
from app.jobs import execution as jobs
from app.jobs.actions import Action
from workers.engine import Engine
from workers.faults import JobFailed
from workers.runner import JobRun, run


@shared_task(name=Action.IMAGE_DELETE.task_name)
def delete_image(job_id: str) -> None:
    run(job_id, _delete)


def _delete(job_run: JobRun) -> None:
    node_id = get_settings().node_id
    with job_run.write() as (session, job):
        image = session.get(Image, job.input["image_id"], with_for_update=True)
        dry_run = bool(job.input.get("dry_run"))
        if image is None or image.state == ImageState.DELETED:
            # The step ran and found nothing to remove: shown taken, not skipped.
            job_run.step(job, steps.REMOVE, "Nothing to remove: the image is already deleted")
            jobs.complete(session, job, {"result": "already deleted"})
            return
        if image.factory_node_id and image.factory_node_id != node_id:
            raise JobFailed(f"The image is held by node {image.factory_node_id}, but this job "
                            f"reached node {node_id}; it was not removed.")
        if not dry_run and image.state != ImageState.DELETING:
            image.move_to(ImageState.DELETING)
        file_name, file_id, image_id = image.backend_file_name, image.backend_file_id, image.id
        job_run.step(job, steps.REMOVE, f"Removing {file_name or 'the image'} from node {node_id}"
                     + (" (dry run)" if dry_run else ""))

    if file_id:
        with Engine() as engine:  # its faults are `JobFailed`s: the runner records them
            users = engine.containers_using(file_id, file_name)
            if users:
                reason = (f"used by container(s) {', '.join(users)} on node {node_id}")
                if not dry_run:
                    raise JobFailed(f"The image is {reason}; it was not removed.")
                return _finish(job_run, image_id, f"would be kept: {reason}", dry_run)
            if not dry_run:
                engine.untag(file_name)
    _finish(job_run, image_id, "would be removed" if dry_run else "removed", dry_run)


def _finish(job_run: JobRun, image_id: str, result: str, dry_run: bool) -> None:
    with job_run.write() as (session, job):
        if not dry_run:
            session.get(Image, image_id, with_for_update=True).move_to(ImageState.DELETED)
        jobs.complete(session, job, {"result": result})
    if not dry_run:
        # An upload no worker loaded yet: its import will find the image deleted.
        upload_path(image_id).unlink(missing_ok=True)
