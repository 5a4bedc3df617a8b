"""Image sources: create, read, update, and the start of their deletion."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app import errors, vault
from app.db import is_id, like_pattern
from app.filters import by_state
from app.images.models import Image, ImageState
from app.images.steps import REMOVE_IMAGES_STEPS
from app.jobs import queueing
from app.jobs.actions import Action
from app.jobs.models import Job
from app.jobs.services import NewTask, create_job
from app.sources.models import ImageSource, SourceState
from app.sources.origins import (
    destinations,
    keep_unchanged_secrets,
    origin_document,
    split_secrets,
)
from app.sources.schemas import SourceCreate, SourceUpdate


def slug(text: str) -> str:
    longest = ImageSource.identifier.type.length
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:longest].strip("-") or "source"


def _default_name(origin: dict[str, Any]) -> str:
    """The origin's target or URL, cut to fit a name (with `…` to show where) when longer."""
    details = origin.get("details") or {}
    name = details.get("target") or details.get("targz_url") or \
        (details.get("repo") or {}).get("url") or f"{origin['type']} source"
    longest = ImageSource.name.type.length
    return name if len(name) <= longest else name[:longest - 1] + "…"


def create_source(session: Session, hub_id: str, creator: dict[str, str],
                  body: SourceCreate) -> ImageSource:
    origin, sealed = _seal_origin(body.origin, previous=None)
    name = body.name or _default_name(origin)
    source = ImageSource(
        hub_id=hub_id, name=name, identifier=body.identifier or slug(name), type=body.type,
        about_description=body.about.description if body.about else None,
        origin=origin, origin_secrets=sealed,
        builder=body.builder.model_dump() if body.builder else None,
        acl=body.acl.model_dump(exclude_none=True) if body.acl else None,
        creator_type=creator["type"], creator_id=creator["id"], state=SourceState.LIVE,
    )
    session.add(source)
    session.flush()
    return source


def _seal_origin(origin_model: Any, previous: ImageSource | None) -> tuple[dict, bytes | None]:
    public, secrets = split_secrets(origin_document(origin_model))
    if previous is not None and previous.origin_type == public["type"]:
        try:
            stored = vault.unseal(previous.origin_secrets)
        except vault.UnreadableSecrets as exc:
            if not secrets:
                raise errors.InvalidInput(f"{exc} Send the origin's secrets again.",
                                          source="/origin") from None
            stored = {}  # no process can read them: the secrets sent now take their place
        kept = keep_unchanged_secrets(secrets, public, stored)
        if kept != secrets and destinations(public) != destinations(previous.origin):
            # A blank secret keeps its stored value only for the same destination: otherwise
            # anyone who may edit the source could send the secret to a server of their own.
            where = "/origin" + sorted(set(kept) - set(secrets))[0]
            raise errors.InvalidInput(f"`{where}` is blank but the origin's `url` or registry "
                                      "changed; send the secret again for the new address.",
                                      source=where)
        secrets = kept
    return public, vault.seal(secrets)


def get_source(session: Session, hub_id: str, source_id: str, *, lock: bool = False
               ) -> ImageSource:
    if not is_id(source_id):
        # No such id can exist; and Postgres refuses some strings (NUL) outright.
        raise errors.SourceNotFound(f"No image source `{source_id[:64]}` in this hub.")
    query = select(ImageSource).where(ImageSource.id == source_id, ImageSource.hub_id == hub_id)
    source = session.scalar(query.with_for_update() if lock else query)
    if source is None:
        raise errors.SourceNotFound(f"No image source `{source_id[:64]}` in this hub.")
    return source


def update_source(session: Session, hub_id: str, source_id: str, body: SourceUpdate
                  ) -> ImageSource:
    source = get_source(session, hub_id, source_id, lock=True)
    if source.state != SourceState.LIVE:
        raise errors.InvalidState(f"The image source is {source.state}; it can no longer change.")
    given = body.given()
    if given.get("name") is not None:
        source.name = body.name  # type: ignore[assignment]
    if given.get("identifier") is not None:
        source.identifier = body.identifier  # type: ignore[assignment]
    if "about" in given:
        source.about_description = body.about.description if body.about else None
    if "builder" in given:
        source.builder = body.builder.model_dump() if body.builder else None
    if given.get("origin") is not None:
        source.origin, source.origin_secrets = _seal_origin(body.origin, previous=source)
    session.flush()
    return source


SOURCE_SORTS = {"id": ImageSource.id, "created": ImageSource.id, "name": ImageSource.name,
                "identifier": ImageSource.identifier, "state": ImageSource.state,
                "updated": ImageSource.updated}


def sources_query(hub_id: str, filters: dict[str, str], states: list[str]
                  ) -> Select[tuple[ImageSource]]:
    query = by_state(select(ImageSource).where(ImageSource.hub_id == hub_id), ImageSource.state,
                     states, SourceState, "image source", hidden=SourceState.DELETED)
    if "identifier" in filters:
        query = query.where(ImageSource.identifier == filters["identifier"])
    if filters.get("search"):
        pattern = like_pattern(filters["search"])
        query = query.where(ImageSource.name.ilike(pattern)
                            | ImageSource.identifier.ilike(pattern)
                            | (ImageSource.id == filters["search"]))
    return query


def images_count(session: Session, source_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per source, its images by state (the spec's `images_count` meta)."""
    counts: dict[str, dict[str, Any]] = {}
    for source_id in source_ids:
        # Every state an image counted in `total` may be in, even at zero.
        counts[source_id] = {"total": 0, "state": {s.value: 0 for s in ImageState
                                                   if s != ImageState.DELETED}}
    if not source_ids:
        return counts
    rows = session.execute(select(Image.source_id, Image.state, func.count())
                           .where(Image.source_id.in_(source_ids))
                           .group_by(Image.source_id, Image.state))
    for source_id, state, count in rows:
        entry = counts[source_id]
        entry["state"][state] = entry["state"].get(state, 0) + count
        if state != ImageState.DELETED:
            entry["total"] += count
    return counts


def delete_source(session: Session, hub_id: str, creator: dict[str, str], source_id: str) -> Job:
    """Queue the deletion of a source; it is done once none of its images remains."""
    source = get_source(session, hub_id, source_id, lock=True)
    if source.state == SourceState.DELETED:
        raise errors.InvalidState("The image source is already deleted.")
    job = create_job(session, hub_id=hub_id, creator=creator, action=Action.SOURCE_DELETE,
                     queue=queueing.MAINTENANCE_QUEUE, caption=f"Delete image source {source.name}",
                     subject_id=source.id,
                     task=NewTask(header="delete", caption="Delete image source",
                                  input={"source_id": source.id}, steps=REMOVE_IMAGES_STEPS))
    if source.state == SourceState.LIVE:
        source.move_to(SourceState.DELETING)
    return job
