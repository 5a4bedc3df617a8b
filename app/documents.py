"""What every response document shares: the model base, ids, times, creators and the error envelope.

Each domain describes its documents in its own `documents.py`, once: the views answer by dumping
those models (`answer`), and `app.openapi` documents the API from the same models. A field a view
sets that its model does not describe fails validation, so no answer drifts from its description.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from app.db import rfc3339

Id = Annotated[str, Field(pattern=r"^[0-9a-f]{24}$", description="24 hex characters, time first.")]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                            description="RFC 3339, UTC; `0001-01-01T00:00:00Z` for an event "
                                        "that has not happened.")]


def optional(description: str | None = None) -> Any:
    """A field the document carries only sometimes (typed `X | None`): absent when None, never
    null."""
    return Field(default=None, description=description, exclude_if=_is_none,
                 json_schema_extra=_absent_not_null)


def extension(description: str) -> Any:
    """An optional field Cycle's documents lack, marked so in the OpenAPI document."""
    return Field(default=None, description=description, exclude_if=_is_none,
                 json_schema_extra=_absent_not_null_extension)


def _absent_not_null_extension(schema: dict[str, Any]) -> None:
    _absent_not_null(schema)
    schema["x-imagejobs-extension"] = True


def _is_none(value: Any) -> bool:
    return value is None


def _absent_not_null(schema: dict[str, Any]) -> None:
    """Document the field as its type alone: None is its absence, never a value it carries."""
    schema.pop("default", None)
    variants = [v for v in schema.pop("anyOf", []) if v != {"type": "null"}]
    if len(variants) == 1:
        schema.update(variants[0])
    elif variants:
        schema["anyOf"] = variants


def stored(shape: Any) -> Any:
    """A value this service wrote from a model of `shape` (an origin, a build, a job's tasks):
    answered as stored, without validating it again, and documented as `shape`."""
    return Annotated[Any, PlainValidator(_as_stored, json_schema_input_type=shape)]


def _as_stored(value: Any) -> Any:
    return value


def _untitle_stored(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """No title on a stored field holding a model (or None), as pydantic leaves none on a field
    holding a model itself."""
    for name, field in model.model_fields.items():
        if any(getattr(m, "func", None) is _as_stored for m in field.metadata):
            described = schema["properties"][name]
            if "$ref" in described or any("$ref" in v for v in described.get("anyOf", ())):
                described.pop("title", None)


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_untitle_stored)

    def answer(self) -> dict[str, Any]:
        """The JSON body of a response: optional fields left out when None, nulls kept."""
        return self.model_dump(mode="json")


class Creator(Document):
    id: str
    type: str

    @classmethod
    def of(cls, row: Any) -> Creator:
        return cls(id=row.creator_id, type=row.creator_type)


class StateError(Document):
    message: str

    @classmethod
    def of(cls, message: str | None) -> StateError | None:
        """The error a state shows, or none when no message was recorded."""
        return cls(message=message) if message else None


class Events(Document):
    created: Time
    updated: Time
    deleted: Time

    @classmethod
    def of(cls, row: Any) -> Events:
        return cls(created=rfc3339(row.created), updated=rfc3339(row.updated),
                   deleted=rfc3339(row.deleted))


class ErrorDetail(Document):
    status: int
    code: str
    title: str
    detail: str | None = optional()
    source: str | None = optional("A JSON pointer into the body, or the query parameter at fault.")
    extra: dict[str, Any] | None = optional("`capability` on 403.permissions.")


class ErrorEnvelope(Document):
    error: ErrorDetail
    data: None
