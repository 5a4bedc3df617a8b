"""Image jobs as job execution sees them (app/jobs/kinds.py): what an import, a delete and a
prune put their image in, and how each is put back when its job does not succeed."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.hubs.models import Capability
from app.images import services
from app.images.models import IMPORTING, TRANSITIONAL, Image, ImageState
from app.jobs import execution, kinds
from app.jobs.actions import Action
from app.jobs.models import Job


def _releases(held: frozenset[ImageState]) -> kinds.Release:
    """Put the job's image back at rest, its error shown, from `held` (the in-between states this
    job's work puts it in) or from a resting state. An image another job is working on (a delete,
    while a stale import gives up) is that job's to release: this one leaves it alone."""

    def release(session: Session, job: Job, message: str) -> None:
        image = session.get(Image, job.subject_id, with_for_update=True)
        if image is not None and image.state != ImageState.DELETED and (
                image.state in held or image.state not in TRANSITIONAL):
            image.fail(message)

    return release


def _release_delete(session: Session, job: Job, message: str) -> None:
    # A dry run only judges: it puts the image in no state of its own.
    held = frozenset() if job.input.get("dry_run") else frozenset({ImageState.DELETING})
    _releases(held)(session, job, message)


def summary(outcome: dict[str, str], task_input: dict) -> str:
    """A prune's (or a source deletion's) result in a line, from what became of each image."""
    removed = sum(1 for v in outcome.values() if v in ("removed", "would be removed"))
    verb = "would be removed" if task_input.get("dry_run") else "removed"
    return f"{removed} image(s) {verb}, {len(outcome) - removed} kept"


def _prune_ended(session: Session, job: Job, outcome: dict[str, str]) -> None:
    execution.complete(session, job, {**outcome, "summary": summary(outcome, job.input)})


def _import_again(session: Session, job: Job, creator: dict[str, str]) -> Job:
    return services.import_image(session, job.hub_id, creator, job.subject_id)


def _delete_again(session: Session, job: Job, creator: dict[str, str]) -> Job:
    return services.delete_image(session, job.hub_id, creator, job.subject_id)


def _prune_again(session: Session, job: Job, creator: dict[str, str]) -> Job:
    return services.prune_images(session, job.hub_id, creator, job.input["source_ids"],
                                 job.input.get("dry_run", False))


# An import's work is all undone when it stops (its staging names removed, the image put back
# where it was), so it may be cancelled while it runs; a delete or prune half-done may not.
IMPORT = kinds.register(kinds.JobKind(Action.IMAGE_IMPORT, release=_releases(IMPORTING),
                                      capability=Capability.IMAGES_IMPORT, again=_import_again,
                                      cancellable_while_running=True))
DELETE = kinds.register(kinds.JobKind(
    Action.IMAGE_DELETE, release=_release_delete, capability=Capability.IMAGES_MANAGE,
    again=_delete_again, running_cancel_refused="it is short, and a delete stopped half-way "
    "could leave the image neither kept whole nor removed"))
PRUNE = kinds.register(kinds.JobKind(
    Action.IMAGES_PRUNE, children_ended=_prune_ended, capability=Capability.IMAGES_MANAGE,
    again=_prune_again, running_cancel_refused="its images are being deleted by jobs of their "
    "own, and a prune stopped half-way would have removed some of them and kept others"))
