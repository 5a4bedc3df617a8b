"""Request bodies of the image endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.sources.origins import HttpUrl, ImageTarget


def _no_nul(value: str) -> str:
    # Postgres cannot store U+0000 in text or JSONB: refuse it here rather than fail the insert.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


NoNul = AfterValidator(_no_nul)
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256), NoNul]
BuildArgName = Annotated[str, StringConstraints(min_length=1, max_length=256), NoNul]
BuildArgValue = Annotated[str, StringConstraints(max_length=4096), NoNul]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Build(Strict):
    args: dict[BuildArgName, BuildArgValue] | None = Field(default=None, max_length=100)
    use_disk: bool | None = None


class Override(Strict):
    target: Annotated[ImageTarget, NoNul] | None = None
    targz_url: Annotated[HttpUrl, NoNul] | None = None


class ImageCreate(Strict):
    name: Name | None = None
    source_id: Id
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
    source_ids: list[Id] = Field(min_length=1, max_length=100)
    dry_run: bool = False


ImagesTask.model_rebuild()
