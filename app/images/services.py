"""Images: create from a source, read, rename, and queue their import."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app import errors
from app.db import is_id, like_pattern
from app.images.models import BuildLog, Image, ImageState
from app.images.schemas import ImageCreate
from app.jobs import queueing
from app.jobs.models import Job
from app.jobs.services import NewTask, create_job
from app.sources.models import ImageSource, SourceState
from app.sources.origins import PULL_TYPES
from app.sources.services import get_source


def create_image(session: Session, hub_id: str, creator: dict[str, str], body: ImageCreate
                 ) -> Image:
    source = get_source(session, hub_id, body.source_id)
    if source.state != SourceState.LIVE:
        raise errors.InvalidState(f"The image source is {source.state}; no image can be made "
                                  "from it.", source="/source_id")
    override = body.override.model_dump(exclude_none=True) if body.override else {}
    if "target" in override and source.origin_type not in PULL_TYPES:
        raise errors.InvalidInput("`override.target` is for sources that pull from a registry.",
                                  source="/override/target")
    if "targz_url" in override and source.origin_type != "docker-file":
        raise errors.InvalidInput("`override.targz_url` is for `docker-file` sources.",
                                  source="/override/targz_url")
    image = Image(
        hub_id=hub_id, source_id=source.id, name=body.name or source.name,
        origin=source.origin, origin_secrets=source.origin_secrets, override=override or None,
        build=body.build.model_dump(exclude_none=True) if body.build else None,
        creator_type=creator["type"], creator_id=creator["id"], state=ImageState.NEW,
    )
    session.add(image)
    session.flush()
    return image


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
    if name is not None:
        image.name = name
    session.flush()
    return image


def import_image(session: Session, hub_id: str, creator: dict[str, str], image_id: str) -> Job:
    """Queue the import of an image; an import already queued or running is returned instead."""
    image = get_image(session, hub_id, image_id, lock=True)
    if image.state in (ImageState.DELETING, ImageState.DELETED):
        raise errors.InvalidState(f"The image is {image.state}; it cannot be imported.")
    kind = image.origin_type
    if kind == "none":
        raise errors.InvalidArgument("The image's source has origin `none`: there is nothing "
                                     "to import.")
    if kind == "cycle-upload":
        raise errors.InvalidArgument("Images of `cycle-upload` sources are imported by "
                                     "uploading their tar, not by an import task.")
    if kind == "docker-file":
        details = image.origin.get("details") or {}
        if not (details.get("repo") or details.get("targz_url")
                or (image.override or {}).get("targz_url")):
            raise errors.InvalidArgument("The image's `docker-file` source has neither a `repo` "
                                         "nor a `targz_url`, and the image no "
                                         "`override.targz_url`: there is nothing to build.")
    queue = queueing.BUILD_QUEUE if kind == "docker-file" else queueing.PULL_QUEUE
    return create_job(session, hub_id=hub_id, creator=creator, action="image.import",
                      queue=queue, caption=f"Import image {image.name}",
                      subject_id=image.id,
                      task=NewTask(header="import", caption="Import image",
                                   input={"image_id": image.id}))


IMAGE_SORTS = {"id": Image.id, "created": Image.id, "name": Image.name, "state": Image.state,
               "size": Image.size, "updated": Image.updated}


def images_query(hub_id: str, filters: dict[str, str], states: list[str]) -> Select[tuple[Image]]:
    query = select(Image).where(Image.hub_id == hub_id)
    if states:
        unknown = set(states) - {s.value for s in ImageState}
        if unknown:
            raise errors.InvalidArgument(f"Unknown image state `{sorted(unknown)[0]}`.",
                                         source="filter[state]")
        query = query.where(Image.state.in_(states))
    else:
        query = query.where(Image.state != ImageState.DELETED)
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


def build_log(session: Session, image: Image, offset: int) -> BuildLogSlice | None:
    row = session.execute(
        select(BuildLog.id, BuildLog.hub_id, BuildLog.image_id,
               func.substr(BuildLog.log, offset + 1).label("text"),
               func.length(BuildLog.log).label("length"), BuildLog.truncated, BuildLog.created,
               BuildLog.updated, BuildLog.deleted)
        .where(BuildLog.image_id == image.id)).first()
    return BuildLogSlice(**row._mapping) if row else None
