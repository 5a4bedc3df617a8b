"""The API's own OpenAPI 3.1 document, served at `GET /v1/openapi.json`.

Paths and methods come from Flask's url_map, request bodies from the pydantic models that validate
them, response documents from the models the views answer with (each domain's `documents.py`),
capabilities from the views themselves. What a route does not tell (its query parameters, its
success status, the errors it answers) is in `_operations()`, one entry per view. The document is
public: it describes the API and holds nothing of any hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import errors
from app.config import get_settings
from app.documents import ErrorEnvelope
from app.images.documents import BuildLogDocument, ImageDocument, ImageListDocument
from app.images.models import ImageState
from app.images.schemas import ImageCreate, ImagesTask, ImageTask, ImageUpdate
from app.images.services import IMAGE_SORTS
from app.jobs.documents import JobDescriptorDocument, JobDocument, JobListDocument
from app.jobs.models import JobState
from app.jobs.services import JOB_SORTS
from app.ready import HealthDocument, ReadyDocument
from app.sources.documents import SourceDocument, SourceListDocument
from app.sources.models import SourceState
from app.sources.schemas import SourceCreate, SourceUpdate
from app.sources.services import SOURCE_SORTS
from app.web import MAX_FILTER_LENGTH, MAX_PAGE_NUMBER

blueprint = Blueprint("openapi", __name__)

REQUEST_BODIES: tuple[type[BaseModel], ...] = (
    SourceCreate, SourceUpdate, ImageCreate, ImageUpdate, ImageTask, ImagesTask)
RESPONSE_DOCUMENTS: tuple[type[BaseModel], ...] = (
    SourceDocument, SourceListDocument, ImageDocument, ImageListDocument, BuildLogDocument,
    JobDocument, JobListDocument, JobDescriptorDocument, ErrorEnvelope, HealthDocument,
    ReadyDocument)
REF = "#/components/schemas/{model}"
ID_PATTERN = r"^[0-9a-f]{24}$"
# Methods Flask adds by itself: HEAD beside every GET (OPTIONS is turned off in the app factory).
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Operation:
    """What the document says of one view beyond what its route and models tell."""

    summary: str
    status: int
    document: type[BaseModel] | None  # None: the answer is this OpenAPI document
    body: type[BaseModel] | None = None
    query: tuple[dict[str, Any], ...] = ()
    errors: tuple[type[errors.ApiError], ...] = ()


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False
           ) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _listed(names: Any) -> str:
    """A pattern for a comma-separated list of `names`."""
    one = "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"
    return f"^{one}(?:,{one})*$"


def _include_meta(includes: set[str], metas: set[str] = frozenset()) -> tuple[dict[str, Any], ...]:
    found = [_query("include", {"type": "string", "pattern": _listed(includes)},
                    f"Comma-separated: {', '.join(sorted(includes))}.")]
    if metas:
        found.append(_query("meta", {"type": "string", "pattern": _listed(metas)},
                            f"Comma-separated: {', '.join(sorted(metas))}."))
    return tuple(found)


def _list(states: type[StrEnum], filters: dict[str, str], sorts: dict[str, Any],
          includes: set[str], metas: set[str] = frozenset()) -> tuple[dict[str, Any], ...]:
    """The list parameters: filter[...], sort, page[number], page[size], include, meta."""
    text = {"type": "string", "maxLength": MAX_FILTER_LENGTH}
    found = [_query("filter[state]", {**text, "pattern": _listed(s.value for s in states)},
                    "Comma-separated states; without it, every state but `deleted`.")]
    for name, description in filters.items():
        schema = {**text, "format": "date-time"} if name.startswith("range-") else text
        found.append(_query(f"filter[{name}]", schema, description))
    one_sort = "[-+]?(?:" + "|".join(sorted(sorts)) + ")"
    found += [
        _query("sort", {"type": "string", "pattern": f"^{one_sort}(?:,{one_sort})*$"},
               "Comma-separated fields, `-field` for descending."),
        _query("page[number]", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_NUMBER},
               "From 1."),
        _query("page[size]", {"type": "integer", "minimum": 1,
                              "maximum": get_settings().page_size_max}, "20 when not given."),
    ]
    return (*found, *_include_meta(includes, metas))


_SEARCH = "A substring of the name, or an id."
_BODY_ERRORS = (errors.InvalidSyntax, errors.PayloadTooLarge, errors.InvalidContentType,
                errors.MissingArgument, errors.InvalidInput)
_QUERY_ERRORS = (errors.InvalidArgument, errors.MaxExceeded)
_AUTH_ERRORS = (errors.AuthInvalid, errors.WrongHub, errors.PermissionDenied)
# Any request may meet these: the database away or failing, or a bug (the trace stays in the log).
_SERVER_ERRORS = (errors.DatabaseError, errors.ApiError, errors.NotReady)


def _operations() -> dict[str, Operation]:
    """Every view by endpoint name (read at request time: page[size]'s maximum is a setting)."""
    return {
        "sources.list_sources": Operation(
            "List the hub's image sources", 200, SourceListDocument,
            query=_list(SourceState, {"identifier": "Sources with this identifier.",
                                      "search": _SEARCH}, SOURCE_SORTS, {"creators"},
                        {"images_count"}), errors=_QUERY_ERRORS),
        "sources.create_source": Operation(
            "Create an image source", 201, SourceDocument, body=SourceCreate),
        "sources.get_source": Operation(
            "Get an image source", 200, SourceDocument,
            query=_include_meta({"creators"}, {"images_count"}),
            errors=(errors.SourceNotFound, errors.InvalidArgument)),
        "sources.update_source": Operation(
            "Change an image source (an origin sent back with blank secrets keeps them)", 200,
            SourceDocument, body=SourceUpdate,
            errors=(errors.SourceNotFound, errors.InvalidState)),
        "sources.delete_source": Operation(
            "Delete an image source and its images (a job)", 202, JobDescriptorDocument,
            errors=(errors.SourceNotFound, errors.InvalidState)),
        "images.list_images": Operation(
            "List the hub's images", 200, ImageListDocument,
            query=_list(ImageState, {"source_id": "Images of this source.",
                                     "source_type": "Only `direct` sources exist.",
                                     "identifier": "Images of sources with this identifier.",
                                     "search": "A substring of the name or the engine's tag, or "
                                               "an id."},
                        IMAGE_SORTS, {"creators", "sources"}), errors=_QUERY_ERRORS),
        "images.create_image": Operation(
            "Create an image from a source (state `new`)", 201, ImageDocument,
            body=ImageCreate, errors=(errors.SourceNotFound, errors.InvalidState)),
        "images.get_image": Operation(
            "Get an image", 200, ImageDocument, query=_include_meta({"creators", "sources"}),
            errors=(errors.ImageNotFound, errors.InvalidArgument)),
        "images.update_image": Operation(
            "Rename an image", 200, ImageDocument, body=ImageUpdate,
            errors=(errors.ImageNotFound,)),
        "images.delete_image": Operation(
            "Delete an image from the node holding it (a job)", 202, JobDescriptorDocument,
            errors=(errors.ImageNotFound, errors.InvalidState)),
        "images.create_image_task": Operation(
            "Import an image: pull, build or load it (a job)", 202, JobDescriptorDocument,
            body=ImageTask,
            errors=(errors.ImageNotFound, errors.InvalidState, errors.InvalidArgument)),
        "images.create_images_task": Operation(
            "Prune the images of some sources (a job)", 202, JobDescriptorDocument,
            body=ImagesTask, errors=(errors.SourceNotFound,)),
        "images.upload_image": Operation(
            "Upload a cycle-upload image's tar, authenticated by its single-use token (a job)",
            202, JobDescriptorDocument,
            query=(_query("token", {"type": "string"}, "The token the image was created with.",
                          required=True),
                   _query("hub-id", {"type": "string"}, "The hub, when `X-Hub-Id` is not sent."),
                   {"name": "X-Hub-Id", "in": "header", "required": False,
                    "schema": {"type": "string"}, "description": "The image's hub."}),
            errors=(errors.InvalidSyntax, errors.AuthInvalid, errors.Expired, errors.InvalidState,
                    errors.PayloadTooLarge, errors.MissingArgument, errors.InvalidInput)),
        "images.get_build_log": Operation(
            "An image's build log, from `offset` on", 200, BuildLogDocument,
            query=(_query("offset", {"type": "integer", "minimum": 0, "maximum": 10**12 - 1},
                          "Characters to skip: `meta.next_offset` of the last answer."),),
            errors=(errors.ImageNotFound, errors.BuildLogNotFound, errors.InvalidArgument)),
        "jobs.list_jobs": Operation(
            "List the hub's jobs", 200, JobListDocument,
            query=_list(JobState, {"search": "A substring of the caption, a job id or the id of "
                                             "the resource it works on.",
                                   "range-start": "Jobs queued at or after this time.",
                                   "range-end": "Jobs queued at or before this time."},
                        JOB_SORTS, {"creators"}), errors=_QUERY_ERRORS),
        "jobs.get_job": Operation("Get a job", 200, JobDocument, errors=(errors.JobNotFound,)),
        "health": Operation("Whether the API answers", 200, HealthDocument),
        "ready.ready": Operation("Whether the API reaches Postgres and Redis; 503 names those "
                                 "it cannot reach", 200, ReadyDocument),
        "openapi.openapi_document": Operation("This document", 200, None),
    }


def _upload_body() -> dict[str, Any]:
    tar = {"type": "string", "format": "binary"}
    return {"required": True, "content": {
        "application/octet-stream": {"schema": tar},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file.tar"],
                                           "properties": {"file.tar": tar}}},
    }}


def _error_codes() -> dict[int, list[str]]:
    """Every error code the API answers with, by HTTP status."""
    found: dict[int, list[str]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.ApiError):
            found.setdefault(value.status, []).append(value.code)
    return found


def _responses(operation: Operation, capability: Any) -> dict[str, Any]:
    if operation.document is None:
        schema: dict[str, Any] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    else:
        schema = {"$ref": REF.format(model=operation.document.__name__)}
    responses: dict[str, Any] = {str(operation.status): {
        "description": operation.summary, "content": {"application/json": {"schema": schema}}}}
    kinds = [*operation.errors, *_SERVER_ERRORS]
    if capability is not None:
        kinds += _AUTH_ERRORS
    if operation.body is not None:
        kinds += _BODY_ERRORS
    by_status: dict[int, list[str]] = {}
    for kind in kinds:
        if kind.code not in by_status.setdefault(kind.status, []):
            by_status[kind.status].append(kind.code)
    for status, codes in sorted(by_status.items()):
        codes.sort()
        responses[str(status)] = {
            "description": ", ".join(f"`{c}`" for c in codes),
            "content": {"application/json": {"schema": {"allOf": [
                {"$ref": REF.format(model="ErrorEnvelope")},
                {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}}}}
    return responses


def openapi_path(rule: str) -> str:
    """`/v1/images/<image_id:image_id>/tasks` → `/v1/images/{image_id}/tasks`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every route under /v1 of `app`."""
    operations = _operations()
    models = [*REQUEST_BODIES, *RESPONSE_DOCUMENTS]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas = top["$defs"]
    codes = _error_codes()
    schemas["ErrorDetail"]["properties"]["code"]["enum"] = sorted(c for v in codes.values()
                                                                  for c in v)
    schemas["ErrorDetail"]["properties"]["status"]["enum"] = sorted(codes)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        if rule.endpoint not in operations:
            raise KeyError(f"{rule.endpoint} ({rule.rule}) is not described in app.openapi")
        operation = operations[rule.endpoint]
        capability = getattr(app.view_functions[rule.endpoint], "capability", None)
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": ID_PATTERN}}
                      for name in sorted(rule.arguments)]
        entry: dict[str, Any] = {
            "operationId": rule.endpoint,
            "summary": operation.summary,
            "tags": [rule.endpoint.partition(".")[0]] if "." in rule.endpoint else ["service"],
            "parameters": [*parameters, *operation.query],
            "security": [{"ApiKey": [], "HubId": []}] if capability is not None else [],
            "responses": _responses(operation, capability),
        }
        if capability is not None:
            entry["description"] = f"Needs the `{capability.value}` capability."
            entry["x-capability"] = capability.value
        if operation.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model=operation.body.__name__)}}}}
        elif rule.endpoint == "images.upload_image":
            entry["requestBody"] = _upload_body()
        for method in sorted(rule.methods - IMPLICIT_METHODS):
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "imagejobs", "version": _version(), "description": _DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas, "securitySchemes": {
            "ApiKey": {"type": "http", "scheme": "bearer",
                       "description": "An API key (`imagejobs key create`); its secret is shown "
                                      "once."},
            "HubId": {"type": "apiKey", "in": "header", "name": "X-Hub-Id",
                      "description": "The id of the hub the key belongs to."},
        }},
    }


_DESCRIPTION = (
    "The Images part of the Cycle.io platform API. Every call that creates a job answers 202 with "
    "a Job Descriptor; poll the job. Every error comes in the envelope `{\"error\": {...}, "
    "\"data\": null}`; a path that is not served answers `404.uri`, a method that is not served "
    "`405.method-not-allowed`.")


def _version() -> str:
    try:
        return version("imagejobs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


@blueprint.get("/v1/openapi.json")
def openapi_document():
    """This API's OpenAPI document, built once per process."""
    if "imagejobs.openapi" not in current_app.extensions:
        current_app.extensions["imagejobs.openapi"] = build(current_app)
    return current_app.extensions["imagejobs.openapi"]
