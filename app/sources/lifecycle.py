"""A source's deletion as job execution sees it (app/jobs/kinds.py): it holds its source in
`deleting`, and is done only once its images' deletes all removed them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.hubs.models import Capability
from app.images.lifecycle import summary
from app.jobs import execution, kinds
from app.jobs.actions import Action
from app.jobs.models import Job
from app.sources import services
from app.sources.models import ImageSource, SourceState


def _release(session: Session, job: Job, message: str) -> None:
    source = session.get(ImageSource, job.subject_id, with_for_update=True)
    if source is not None and source.state == SourceState.DELETING:
        source.move_to(SourceState.LIVE, error=message)


def _images_deleted(session: Session, job: Job, outcome: dict[str, str]) -> None:
    kept = {k: v for k, v in outcome.items() if not v.startswith(("removed", "already deleted"))}
    if kept:
        execution.fail(session, job, f"The source was not deleted: {len(kept)} of its images "
                    "remain (" + "; ".join(f"{k}: {v}" for k, v in sorted(kept.items())) + ").")
        return
    source = session.get(ImageSource, job.subject_id, with_for_update=True)
    if source.state == SourceState.LIVE:  # an earlier attempt's fault put it back
        source.move_to(SourceState.DELETING)
    if source.state != SourceState.DELETED:
        source.move_to(SourceState.DELETED)
    execution.complete(session, job, {**outcome, "summary": summary(outcome, job.input)})


def _delete_again(session: Session, job: Job, creator: dict[str, str]) -> Job:
    return services.delete_source(session, job.hub_id, creator, job.subject_id)


DELETE = kinds.register(kinds.JobKind(Action.SOURCE_DELETE, release=_release,
                                      children_ended=_images_deleted,
                                      capability=Capability.IMAGES_SOURCES_MANAGE,
                                      again=_delete_again,
                                      running_cancel_refused="its images are being deleted by "
                                      "jobs of their own, and stopping it half-way would leave "
                                      "the source with only some of them"))
