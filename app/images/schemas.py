"""Request bodies of the image endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from app.sources.origins import HttpUrl, ImageTarget
from app.validation import Name, Strict

BuildArgName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
BuildArgValue = Annotated[str, StringConstraints(max_length=4096)]


class Build(Strict):
    args: dict[BuildArgName, BuildArgValue] | None = Field(default=None, max_length=100)
    use_disk: bool | None = None


class Override(Strict):
    target: ImageTarget | None = None
    targz_url: HttpUrl | None = None


class ImageCreate(Strict):
    name: Name | None = None
    source_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    build: Build | None = None
    override: Override | None = None


class ImageUpdate(Strict):
    name: Name | None = None


class ImageTask(Strict):
    action: Literal["import"]


class ImagesTask(Strict):
    action: Literal["prune"]
    contents: PruneContents


class PruneContents(Strict):
    source_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=100)
    dry_run: bool = False


ImagesTask.model_rebuild()
