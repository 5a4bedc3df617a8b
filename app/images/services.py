"""Images: create from a source, read, rename, and queue their import."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app import errors
from app.archives import ArchiveRefused
from app.config import get_settings
from app.db import is_id, like_pattern, utcnow
from app.filters import by_state
from app.images.imagetar import BrokenTar, read_image_tar
from app.images.models import TRANSITIONAL, BuildLog, BuildLogChunk, Image, ImageState
from app.images.schemas import ImageCreate
from app.images.steps import DELETE_STEPS, REMOVE_IMAGES_STEPS
from app.jobs import queueing
from app.jobs.actions import Action
from app.jobs.models import ACTIVE, Job
from app.jobs.services import NewTask, create_job
from app.sources.models import ImageSource, SourceState
from app.sources.origins import (
    PULL_TYPES,
    CycleUploadOrigin,
    OriginKind,
    UnreadableOrigin,
    registry_of,
    stored_origin,
)
from app.sources.services import get_source


def create_image(session: Session, hub_id: str, creator: dict[str, str], body: ImageCreate
                 ) -> tuple[Image, str | None]:
    """A new image in state `new`, and for a cycle-upload source its upload token (shown once)."""
    source = get_source(session, hub_id, body.source_id)
    if source.state != SourceState.LIVE:
        raise errors.InvalidState(f"The image source is {source.state}; no image can be made "
                                  "from it.", source="/source_id")
    override = body.override.model_dump(exclude_none=True) if body.override else {}
    if "target" in override and source.origin_type not in PULL_TYPES:
        raise errors.InvalidInput("`override.target` is for sources that pull from a registry.",
                                  source="/override/target")
    if "target" in override and source.origin_type == "docker-hub":
        wanted, given = registry_of(override["target"]), registry_of(source.origin["details"]["target"])
        if wanted != given:
            # The source's credentials, if any, go with the pull: to the source's registry alone.
            raise errors.InvalidInput(f"`override.target` names the registry {wanted}, but the "
                                      f"image source pulls from {given}; an override changes "
                                      "the image, not the registry.", source="/override/target")
    if "targz_url" in override and source.origin_type != "docker-file":
        raise errors.InvalidInput("`override.targz_url` is for `docker-file` sources.",
                                  source="/override/targz_url")
    image = Image(
        hub_id=hub_id, source_id=source.id, name=body.name or source.name,
        origin=source.origin, origin_secrets=source.origin_secrets, override=override or None,
        build=body.build.model_dump(exclude_none=True) if body.build else None,
        creator_type=creator["type"], creator_id=creator["id"], state=ImageState.NEW,
    )
    token = issue_upload_token(image) if source.origin_type == "cycle-upload" else None
    session.add(image)
    session.flush()
    return image, token


def issue_upload_token(image: Image) -> str:
    """A fresh single-use upload token for a cycle-upload image; only its hash is kept."""
    token = secrets.token_urlsafe(32)
    image.upload_token_hash = _token_hash(token)
    image.upload_expires = utcnow() + timedelta(seconds=get_settings().upload_token_seconds)
    image.upload_received = None
    return token


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_image(session: Session, hub_id: str, image_id: str, *, lock: bool = False) -> Image:
    if not is_id(image_id):
        # No such id can exist; and Postgres refuses some strings (NUL) outright.
        raise errors.ImageNotFound(f"No image `{image_id[:64]}` in this hub.")
    query = select(Image).where(Image.id == image_id, Image.hub_id == hub_id)
    image = session.scalar(query.with_for_update() if lock else query)
    if image is None:
        raise errors.ImageNotFound(f"No image `{image_id[:64]}` in this hub.")
    return image


def rename_image(session: Session, hub_id: str, image_id: str, name: str | None) -> Image:
    image = get_image(session, hub_id, image_id, lock=True)
    if image.state in (ImageState.DELETING, ImageState.DELETED):
        raise errors.InvalidState(f"The image is {image.state}; it can no longer change.")
    if name is not None:
        image.name = name
    session.flush()
    return image


def import_image(session: Session, hub_id: str, creator: dict[str, str], image_id: str) -> Job:
    """Queue the import of an image; an import already queued or running is returned instead."""
    image = get_image(session, hub_id, image_id, lock=True)
    _refuse_if_deleting(image, "imported")
    try:
        origin = stored_origin(image.origin)
    except UnreadableOrigin as exc:
        raise errors.InvalidArgument(str(exc)) from None
    refusal = origin.nothing_to_import(image.override or {})
    if refusal:
        raise errors.InvalidArgument(refusal)
    return _import_job(session, image, creator, type(origin), {"image_id": image.id})


def _import_job(session: Session, image: Image, creator: dict[str, str],
                origin: type[OriginKind], task_input: dict[str, str]) -> Job:
    """An import job on the queue of the image's kind of origin, planned with its steps."""
    return create_job(session, hub_id=image.hub_id, creator=creator, action=Action.IMAGE_IMPORT,
                      queue=origin.import_queue, caption=f"Import image {image.name}",
                      subject_id=image.id,
                      task=NewTask(header="import", caption="Import image", input=task_input,
                                   steps=origin.import_steps))


def _refuse_if_deleting(image: Image, what: str) -> None:
    if image.state in (ImageState.DELETING, ImageState.DELETED):
        raise errors.InvalidState(f"The image is {image.state}; it cannot be {what}.")


def upload_path(image_id: str) -> Path:
    """Where an image's accepted upload waits for its import (`.part` files beside it stream)."""
    return Path(get_settings().upload_dir) / f"{image_id}.tar"


def check_upload_token(session: Session, image_id: str, hub_id: str | None, token: str, *,
                       lock: bool = False) -> Image:
    """The cycle-upload image this token opens; refused when wrong, used, expired, or when the
    image takes no upload now. `lock` holds the image row until the transaction ends."""
    query = select(Image).where(Image.id == image_id)
    if hub_id is not None:
        query = query.where(Image.hub_id == hub_id)
    image = session.scalar(query.with_for_update() if lock else query) if is_id(image_id) else None
    if image is None or image.upload_token_hash is None or not hmac.compare_digest(
            image.upload_token_hash, _token_hash(token)):
        # One answer for every miss: a token must not tell which images exist.
        raise errors.AuthInvalid("The upload token is not valid for this image.")
    if image.upload_received is not None:
        raise errors.Expired("This upload token was used already; a token works for one upload.")
    if image.upload_expires is None or image.upload_expires < utcnow():
        raise errors.Expired("The upload token has expired.")
    _refuse_if_deleting(image, "uploaded")
    if image.state not in (ImageState.NEW, ImageState.LIVE):
        raise errors.InvalidState(f"The image is {image.state}; wait for its import to end.")
    return image


def accept_upload(session: Session, image_id: str, hub_id: str | None, token: str,
                  archive: Path) -> Job:
    """Spend the token and queue the import of a received and checked tar.

    The token is checked again under the image's lock: it may have been spent, or the image
    deleted, while the tar streamed in without holding anything.
    """
    image = check_upload_token(session, image_id, hub_id, token, lock=True)
    image.upload_received = utcnow()
    final = upload_path(image.id)
    archive.replace(final)
    return _import_job(session, image, {"id": image.creator_id, "type": image.creator_type},
                       CycleUploadOrigin, {"image_id": image.id, "upload": final.name})


def check_image_tar(archive: Path) -> None:
    """An image tar as `docker save` writes it, read as the worker will read it (imagetar)."""
    try:
        with open(archive, "rb") as stream:
            read_image_tar(stream)
    except FileNotFoundError:
        # Removed by the upload cleanup: nothing was written to it for as long as a token lives.
        raise errors.Expired("The upload token expired while the tar was on its way.") from None
    except BrokenTar as exc:
        raise errors.InvalidInput(exc.message, source="/file.tar") from None
    except ArchiveRefused as exc:
        raise errors.InvalidInput(f"The upload is refused: {exc.message}", source="/file.tar"
                                  ) from None


def delete_image(session: Session, hub_id: str, creator: dict[str, str], image_id: str) -> Job:
    """Queue the removal of an image from the node that holds it."""
    image = get_image(session, hub_id, image_id, lock=True)
    if image.state == ImageState.DELETED:
        raise errors.InvalidState("The image is already deleted.")
    if image.state == ImageState.DELETING:
        raise errors.InvalidState("The image is already being deleted.")
    if image.state in TRANSITIONAL:
        raise errors.InvalidState(f"The image is {image.state}; wait for its import to end.")
    job = queue_delete(session, image, creator, {"image_id": image.id})
    image.move_to(ImageState.DELETING)
    return job


def queue_delete(session: Session, image: Image, creator: dict[str, str],
                 task_input: dict[str, Any], parent_id: str | None = None) -> Job:
    """A delete job, on the queue of the node whose engine holds the image."""
    queue = (queueing.node_queue(image.factory_node_id) if image.factory_node_id
             else queueing.MAINTENANCE_QUEUE)
    return create_job(session, hub_id=image.hub_id, creator=creator, action=Action.IMAGE_DELETE,
                      queue=queue, caption=f"Delete image {image.name}", subject_id=image.id,
                      task=NewTask(header="delete", caption="Delete image", input=task_input,
                                   steps=DELETE_STEPS),
                      parent_id=parent_id)


def prune_images(session: Session, hub_id: str, creator: dict[str, str], source_ids: list[str],
                 dry_run: bool) -> Job:
    """Queue a prune of the images of these sources (each must be the hub's)."""
    wanted = sorted(set(source_ids))
    for source_id in wanted:
        try:
            get_source(session, hub_id, source_id)
        except errors.SourceNotFound as exc:
            exc.source = f"/contents/source_ids/{source_ids.index(source_id)}"
            raise
    return create_job(session, hub_id=hub_id, creator=creator, action=Action.IMAGES_PRUNE,
                      queue=queueing.MAINTENANCE_QUEUE,
                      caption=f"Prune the images of {len(wanted)} source(s)"
                              + (" (dry run)" if dry_run else ""), subject_id=None,
                      task=NewTask(header="prune", caption="Prune images",
                                   input={"source_ids": wanted, "dry_run": dry_run},
                                   steps=REMOVE_IMAGES_STEPS))


IMAGE_SORTS = {"id": Image.id, "created": Image.id, "name": Image.name, "state": Image.state,
               "size": Image.size, "updated": Image.updated}


def images_query(hub_id: str, filters: dict[str, str], states: list[str]) -> Select[tuple[Image]]:
    query = by_state(select(Image).where(Image.hub_id == hub_id), Image.state, states,
                     ImageState, "image", hidden=ImageState.DELETED)
    if "identifier" in filters:  # images answer to their source's identifier
        query = query.where(Image.source_id.in_(select(ImageSource.id).where(
            ImageSource.hub_id == hub_id, ImageSource.identifier == filters["identifier"])))
    if "source_id" in filters:
        query = query.where(Image.source_id == filters["source_id"])
    if "source_type" in filters and filters["source_type"] != "direct":
        query = query.where(False)  # every source here is `direct`
    if filters.get("search"):
        pattern = like_pattern(filters["search"])
        query = query.where(Image.name.ilike(pattern) | (Image.id == filters["search"])
                            | Image.backend_file_name.ilike(pattern))
    return query


@dataclass(frozen=True)
class BuildLogSlice:
    """A build log read from an offset: only the text past it leaves the database."""

    id: str
    hub_id: str
    image_id: str
    text: str
    length: int
    truncated: bool
    created: datetime
    updated: datetime
    deleted: datetime | None


def building(session: Session, image: Image) -> bool:
    """Whether the image's build log may still grow: it is building, or an import of it waits."""
    return image.state == ImageState.BUILDING or bool(session.scalar(
        select(Job.id).where(Job.subject_id == image.id, Job.action == Action.IMAGE_IMPORT,
                             Job.state.in_(ACTIVE)).limit(1)))


def build_log(session: Session, image: Image, offset: int) -> BuildLogSlice | None:
    """The log from `offset` on, reading only the chunks that reach past it."""
    row = session.execute(
        select(BuildLog.id, BuildLog.hub_id, BuildLog.image_id, BuildLog.length,
               BuildLog.truncated, BuildLog.created, BuildLog.updated, BuildLog.deleted)
        .where(BuildLog.image_id == image.id)).first()
    if row is None:
        return None
    text = ""
    if offset < row.length:
        # The chunk holding `offset` is the last one starting at or before it.
        first = (select(func.max(BuildLogChunk.start))
                 .where(BuildLogChunk.image_id == image.id, BuildLogChunk.start <= offset)
                 .scalar_subquery())
        chunks = session.execute(
            select(BuildLogChunk.start, BuildLogChunk.text)
            .where(BuildLogChunk.image_id == image.id,
                   BuildLogChunk.start >= func.coalesce(first, 0))
            .order_by(BuildLogChunk.start)).all()
        if chunks:
            text = "".join(chunk.text for chunk in chunks)[offset - chunks[0].start:]
    return BuildLogSlice(text=text, **row._mapping)
