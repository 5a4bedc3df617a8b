"""The API's own OpenAPI 3.1 document, served at `GET /v1/openapi.json`.

Paths and methods come from Flask's url_map, capabilities from `requires`, and the rest from what
each view declares beside itself with `@documented`: its summary and status, the models of its
request body and of its answer (the same that validate the one and serialise the other), its
query parameters (the `ListParameters` it parses) and the errors it answers. The document is
public: it describes the API and holds nothing of any hub.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import errors
from app.config import get_settings
from app.documents import ErrorEnvelope
from app.web import MAX_FILTER_LENGTH, MAX_PAGE_NUMBER, ListParameters

blueprint = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
ID_PATTERN = r"^[0-9a-f]{24}$"
# Methods Flask adds by itself: HEAD beside every GET (OPTIONS is turned off in the app factory).
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Operation:
    """What the document says of one view beyond what its route and capability tell."""

    summary: str
    status: int
    response: type[BaseModel] | None  # None: the answer is this OpenAPI document
    body: type[BaseModel] | None = None
    query: ListParameters | None = None
    parameters: tuple[dict[str, Any], ...] = ()  # any others, as OpenAPI parameter objects
    request_body: dict[str, Any] | None = None  # a body that is not JSON, as OpenAPI describes it
    errors: tuple[type[errors.ApiError], ...] = ()
    extension: bool = False  # not in Cycle's API: marked `x-imagejobs-extension`
    # What the view answers as Server-Sent Events, when asked to (an extension), if it can.
    stream: str | None = None


# The mark of what imagejobs adds to Cycle's API: an operation, a parameter or a field.
EXTENSION = {"x-imagejobs-extension": True}


def documented(summary: str, response: type[BaseModel] | None, *, status: int = 200,
               body: type[BaseModel] | None = None, query: ListParameters | None = None,
               parameters: tuple[dict[str, Any], ...] = (),
               request_body: dict[str, Any] | None = None,
               errors: tuple[type[errors.ApiError], ...] = (), extension: bool = False,
               stream: str | None = None) -> Callable:
    """Declare, beside a view, what the document says of it; every view under /v1 needs one.

    The view returns a `response` document, answered with `status` (or, where its description
    says so, a streamed `Response`). The errors of its query, its
    body, its authentication and the server are added by themselves: list only those of the
    view's own doing.
    """
    operation = Operation(summary, status, response, body, query, parameters, request_body,
                          errors, extension, stream)

    def decorate(view: Callable) -> Callable:
        if response is None:  # this document itself, answered as built
            view.operation = operation  # type: ignore[attr-defined]
            return view

        @functools.wraps(view)
        def answer(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], int]:
            document = view(*args, **kwargs)
            if isinstance(document, Response):  # a stream the view's description tells of
                return document
            if type(document) is not response:
                raise TypeError(f"{view.__name__} answered a {type(document).__name__}, "
                                f"documented as a {response.__name__}")
            return document.answer(), status

        answer.operation = operation  # type: ignore[attr-defined]
        return answer

    return decorate


def query_parameter(name: str, schema: dict[str, Any], description: str, required: bool = False
                    ) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _listed(names: Any) -> str:
    """A pattern for a comma-separated list of `names`."""
    one = "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"
    return f"^{one}(?:,{one})*$"


def _include_meta(query: ListParameters) -> list[dict[str, Any]]:
    found = []
    for name, offered in (("include", query.includes), ("meta", query.metas)):
        if offered:
            found.append(query_parameter(name, {"type": "string", "pattern": _listed(offered)},
                                         f"Comma-separated: {', '.join(sorted(offered))}."))
    return found


def _query_parameters(query: ListParameters) -> list[dict[str, Any]]:
    """filter[...], sort, page[number], page[size] of a list, then include and meta."""
    if query.states is None:
        return _include_meta(query)
    text = {"type": "string", "maxLength": MAX_FILTER_LENGTH}
    found = [query_parameter(
        "filter[state]", {**text, "pattern": _listed(s.value for s in query.states)},
        "Comma-separated states; without it, every state but `deleted`.")]
    for name, description in query.filters.items():
        schema = {**text, "format": "date-time"} if name.startswith("range-") else text
        found.append(query_parameter(f"filter[{name}]", schema, description))
    one_sort = "[-+]?(?:" + "|".join(sorted(query.sorts)) + ")"
    found += [
        query_parameter("sort", {"type": "string", "pattern": f"^{one_sort}(?:,{one_sort})*$"},
                        "Comma-separated fields, `-field` for descending."),
        query_parameter("page[number]",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_NUMBER}, "From 1."),
        query_parameter("page[size]", {"type": "integer", "minimum": 1,
                                       "maximum": get_settings().page_size_max},
                        "20 when not given."),
    ]
    return [*found, *_include_meta(query)]


_BODY_ERRORS = (errors.InvalidSyntax, errors.PayloadTooLarge, errors.InvalidContentType,
                errors.MissingArgument, errors.InvalidInput)
_LIST_ERRORS = (errors.InvalidArgument, errors.MaxExceeded)
_AUTH_ERRORS = (errors.AuthInvalid, errors.WrongHub, errors.PermissionDenied)
# Any request may meet these: the database away or failing, or a bug (the trace stays in the log).
_SERVER_ERRORS = (errors.DatabaseError, errors.ApiError, errors.NotReady)


def operations(app: Flask) -> dict[str, Operation]:
    """Every documented view of `app` by endpoint name."""
    return {endpoint: view.operation for endpoint, view in app.view_functions.items()
            if hasattr(view, "operation")}


def _error_codes() -> dict[int, list[str]]:
    """Every error code the API answers with, by HTTP status."""
    found: dict[int, list[str]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.ApiError):
            found.setdefault(value.status, []).append(value.code)
    return found


def _responses(operation: Operation, capability: Any) -> dict[str, Any]:
    if operation.response is None:
        schema: dict[str, Any] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    else:
        schema = {"$ref": REF.format(model=operation.response.__name__)}
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if operation.stream is not None:
        # No schema: the events' data are described in the operation's words.
        content["text/event-stream"] = {"schema": {"description": operation.stream},
                                        **EXTENSION}
    responses: dict[str, Any] = {str(operation.status): {
        "description": operation.summary, "content": content}}
    kinds = [*operation.errors, *_SERVER_ERRORS]
    if capability is not None:
        kinds += _AUTH_ERRORS
    if operation.body is not None:
        kinds += _BODY_ERRORS
    if operation.query is not None:
        kinds += _LIST_ERRORS if operation.query.states else (errors.InvalidArgument,)
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
    described = operations(app)
    models = {m for o in described.values() for m in (o.body, o.response) if m is not None}
    _, top = models_json_schema([(m, "validation") for m in sorted(
        {*models, ErrorEnvelope}, key=lambda m: m.__name__)], ref_template=REF)
    schemas = top["$defs"]
    codes = _error_codes()
    schemas["ErrorDetail"]["properties"]["code"]["enum"] = sorted(c for v in codes.values()
                                                                  for c in v)
    schemas["ErrorDetail"]["properties"]["status"]["enum"] = sorted(codes)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        if rule.endpoint not in described:
            raise KeyError(f"{rule.endpoint} ({rule.rule}) has no @documented")
        operation = described[rule.endpoint]
        capability = getattr(app.view_functions[rule.endpoint], "capability", None)
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": ID_PATTERN}}
                      for name in sorted(rule.arguments)]
        entry: dict[str, Any] = {
            "operationId": rule.endpoint,
            "summary": operation.summary,
            "tags": [rule.endpoint.partition(".")[0]] if "." in rule.endpoint else ["service"],
            "parameters": [*parameters,
                           *(_query_parameters(operation.query) if operation.query else ()),
                           *operation.parameters],
            "security": [{"ApiKey": [], "HubId": []}] if capability is not None else [],
            "responses": _responses(operation, capability),
        }
        if operation.extension:
            entry.update(EXTENSION)
        if capability is not None:
            entry["description"] = f"Needs the `{capability.value}` capability."
            entry["x-capability"] = capability.value
        if operation.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model=operation.body.__name__)}}}}
        elif operation.request_body is not None:
            entry["requestBody"] = operation.request_body
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
@documented("This document", None)
def openapi_document():
    """This API's OpenAPI document, built once per process."""
    if "imagejobs.openapi" not in current_app.extensions:
        current_app.extensions["imagejobs.openapi"] = build(current_app)
    return current_app.extensions["imagejobs.openapi"]
