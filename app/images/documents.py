"""Images and their build logs as the spec's documents: each described once, answered and
documented alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import rfc3339
from app.documents import Creator, Document, Events, Id, Time, extension, optional, stored
from app.hubs.documents import CreatorsInclude, creators_include
from app.images import models
from app.images.models import ImageState
from app.images.schemas import Build, Override
from app.images.services import BuildLogSlice
from app.sources.documents import ImageSource
from app.sources.models import ImageSource as SourceRow
from app.sources.origins import Origin
from app.sources.schemas import About


class ImageStateError(Document):
    message: str
    time: Time


class ImageStatus(Document):
    current: ImageState
    changed: Time
    error: ImageStateError | None = optional("Present only when there is one.")


class Backend(Document):
    provider: str = Field(description="`docker` once imported, empty before.")
    size: int
    file_name: str = Field(description="The image's tag in the engine of the node holding it.")
    file_id: str = Field(description="The engine's image id.")


class Requires(Document):
    nvidia_gpu: bool


class Port(Document):
    host: int
    container: int
    type: str


class Volume(Document):
    path: str
    mode: str


class ImageConfig(Document):
    user: str
    ports: list[Port]
    env: dict[str, str]
    labels: dict[str, str]
    command: list[str]
    entrypoint: list[str]
    volumes: list[Volume]
    workdir: str
    signal_stop: str


class ImageSourceDetails(Document):
    id: Id
    origin: stored(Origin) = Field(
        description="The source's origin when the image was made; for a cycle-upload image its "
                    "upload token, shown only in the answer that created the image.")


class ImageSourceRef(Document):
    type: Literal["direct"]
    details: ImageSourceDetails
    override: stored(Override) = optional("Only when the image has one.")


class Factory(Document):
    node_id: str
    cached: Time
    acknowledged: Time


class Image(Document):
    id: Id
    hub_id: Id
    name: str
    size: int
    about: stored(About)
    backend: Backend
    requires: Requires
    build: stored(Build | None)
    builder: None
    config: stored(ImageConfig)
    source: ImageSourceRef
    creator: Creator
    factory: Factory | None
    state: ImageStatus
    events: Events

    @classmethod
    def of(cls, image: models.Image, upload_token: str | None = None) -> Image:
        """An upload token appears only in the answer that created the image."""
        origin: dict[str, Any] = image.origin
        if image.origin_type == "cycle-upload":
            origin = {"type": "cycle-upload", "details": {
                "expires": rfc3339(image.upload_expires), "token": upload_token or ""}}
        return cls(
            id=image.id, hub_id=image.hub_id, name=image.name, size=image.size,
            about={"description": image.about_description},
            backend=Backend(provider=image.backend_provider, size=image.size,
                            file_name=image.backend_file_name, file_id=image.backend_file_id),
            requires=Requires(nvidia_gpu=False), build=image.build, builder=None,
            config=image.config,
            source=ImageSourceRef(type="direct",
                                  details=ImageSourceDetails(id=image.source_id, origin=origin),
                                  override=image.override or None),
            creator=Creator.of(image),
            factory=Factory(node_id=image.factory_node_id,
                            cached=rfc3339(image.factory_cached),
                            acknowledged=rfc3339(image.factory_acknowledged))
            if image.factory_node_id else None,
            state=ImageStatus(current=image.state, changed=rfc3339(image.state_changed),
                              error=ImageStateError(message=image.state_error,
                                                    time=rfc3339(image.state_error_time))
                              if image.state_error else None),
            events=Events.of(image))


# Stacks, their builds and integrations are Cycle's and imagejobs has none: asked for, each is an
# empty map, which is what Cycle answers for an image no stack uses.
NONE_HERE = ("stack_builds", "stacks", "integrations")


class ImageIncludes(Document):
    creators: CreatorsInclude | None = optional()
    sources: dict[str, ImageSource] | None = optional()
    stack_builds: dict[str, dict[str, Any]] | None = optional("Always empty: no stacks here.")
    stacks: dict[str, dict[str, Any]] | None = optional("Always empty: no stacks here.")
    integrations: dict[str, dict[str, Any]] | None = optional("Always empty: no integrations "
                                                              "here.")


class ImageDocument(Document):
    data: Image
    includes: ImageIncludes | None = optional("Only with `include=...`.")

    @classmethod
    def of(cls, image: models.Image, upload_token: str | None = None) -> ImageDocument:
        return cls(data=Image.of(image, upload_token))


class ImageListDocument(Document):
    data: list[Image]
    includes: ImageIncludes | None = optional()


def image_list(session: Session, hub_id: str, images: Sequence[models.Image], include: set[str]
               ) -> ImageListDocument:
    """The images with what `include` asks for."""
    includes = ImageIncludes()
    if "creators" in include:
        includes.creators = creators_include(session, hub_id, {i.creator_id for i in images})
    if "sources" in include:
        wanted = {i.source_id for i in images}
        sources = session.scalars(select(SourceRow).where(
            SourceRow.id.in_(wanted), SourceRow.hub_id == hub_id)) if wanted else []
        includes.sources = {s.id: ImageSource.of(s) for s in sources}
    for name in include & set(NONE_HERE):
        setattr(includes, name, {})
    return ImageListDocument(data=[Image.of(i) for i in images],
                             includes=includes if include else None)


class BuildLogMeta(Document):
    offset: int = Field(description="The offset asked for.")
    next_offset: int = Field(description="Where to ask from next time.")
    truncated: bool


class ImageBuildLog(Document):
    id: Id
    hub_id: Id
    image_id: Id
    log: str = Field(description="The log past `offset`.")
    events: Events
    meta: BuildLogMeta
    building: bool | None = extension("Whether the log may still grow: the image is building, "
                                      "or an import of it is queued. `?follow=true` streams it.")


class BuildLogDocument(Document):
    data: ImageBuildLog

    @classmethod
    def of(cls, build_log: BuildLogSlice, offset: int, building: bool) -> BuildLogDocument:
        return cls(data=ImageBuildLog(
            id=build_log.id, hub_id=build_log.hub_id, image_id=build_log.image_id,
            log=build_log.text, events=Events.of(build_log),
            meta=BuildLogMeta(offset=offset, next_offset=build_log.length,
                              truncated=build_log.truncated), building=building))
