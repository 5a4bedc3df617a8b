"""Image sources as the spec's documents: each described once, answered and documented alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field
from sqlalchemy.orm import Session

from app.db import rfc3339
from app.documents import Creator, Document, Events, Id, StateError, Time, optional, stored
from app.hubs.documents import CreatorsInclude, creators_include
from app.sources import models, services
from app.sources.models import SourceState
from app.sources.origins import Origin
from app.sources.schemas import About, Acl, Builder


class SourceStatus(Document):
    current: SourceState
    changed: Time
    error: StateError | None = optional("Present only when there is one.")


class ImagesCount(Document):
    total: int
    state: dict[str, int]


class SourceMeta(Document):
    images_count: ImagesCount


class ImageSource(Document):
    id: Id
    identifier: str
    type: Literal["direct"]
    hub_id: Id
    name: str
    about: stored(About)
    origin: stored(Origin) = Field(
        description="Secrets (tokens, passwords, keys) show as empty strings.")
    builder: stored(Builder | None)
    creator: Creator
    acl: stored(Acl | None)
    state: SourceStatus
    events: Events
    meta: SourceMeta | None = optional("Only with `meta=images_count`.")

    @classmethod
    def of(cls, source: models.ImageSource) -> ImageSource:
        return cls(
            id=source.id, identifier=source.identifier, type=source.type, hub_id=source.hub_id,
            name=source.name, about={"description": source.about_description},
            origin=source.origin, builder=source.builder, creator=Creator.of(source),
            acl=source.acl,
            state=SourceStatus(current=source.state, changed=rfc3339(source.state_changed),
                               error=StateError.of(source.state_error)),
            events=Events.of(source))


class SourceIncludes(Document):
    creators: CreatorsInclude | None = optional()
    # Cycle's hub integrations; imagejobs has none, so asked for it is an empty map.
    integrations: dict[str, dict[str, Any]] | None = optional("Always empty: no integrations "
                                                              "here.")


class SourceDocument(Document):
    data: ImageSource
    includes: SourceIncludes | None = optional("Only with `include=...`.")

    @classmethod
    def of(cls, source: models.ImageSource) -> SourceDocument:
        return cls(data=ImageSource.of(source))


class SourceListDocument(Document):
    data: list[ImageSource]
    includes: SourceIncludes | None = optional()


def source_list(session: Session, hub_id: str, sources: Sequence[models.ImageSource],
                include: set[str], meta: set[str]) -> SourceListDocument:
    """The sources with what `include` and `meta` ask for."""
    data = [ImageSource.of(s) for s in sources]
    if "images_count" in meta:
        counts = services.images_count(session, [s.id for s in sources])
        for document in data:
            document.meta = SourceMeta(images_count=counts[document.id])
    includes = SourceIncludes()
    if "creators" in include:
        includes.creators = creators_include(session, hub_id, {s.creator_id for s in sources})
    if "integrations" in include:
        includes.integrations = {}
    return SourceListDocument(data=data, includes=includes if include else None)
