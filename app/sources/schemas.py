"""Request bodies of the image source endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from app.sources.origins import Origin
from app.validation import Name, Strict

Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                              max_length=256, pattern=r"^[a-z0-9][a-z0-9._-]*$")]


class About(Strict):
    description: Annotated[str, StringConstraints(max_length=4096)] | None


class Builder(Strict):
    integration_id: Annotated[str, StringConstraints(max_length=256)] | None = None


class AclEntry(Strict):
    view: bool
    modify: bool
    manage: bool


class Acl(Strict):
    roles: dict[str, AclEntry] | None = Field(default=None, max_length=100)


class SourceCreate(Strict):
    name: Name | None = None
    identifier: Identifier | None = None
    acl: Acl | None = None
    builder: Builder | None = None
    type: Literal["direct"] = Field(description="Only `direct` sources exist in this service.")
    origin: Origin
    about: About | None = None


class SourceUpdate(Strict):
    name: Name | None = None
    identifier: Identifier | None = None
    origin: Origin | None = None
    builder: Builder | None = None
    about: About | None = None

    def given(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set}
