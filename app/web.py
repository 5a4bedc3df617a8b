"""What every view shares: the request's session, body parsing, list queries and the error envelope."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, g, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from app import errors
from app.config import get_settings
from app.db import autocommit_session, new_session
from app.serve import off_the_hub

log = logging.getLogger("imagejobs.api")
Model = TypeVar("Model", bound=BaseModel)


class ImageIdConverter(BaseConverter):
    """An image id in a path, never the words of the routes beside it (`sources`, `tasks`), so
    that `DELETE /v1/images/sources` is a wrong method, not a search for an image "sources"."""

    regex = r"(?!(?:sources|tasks)(?:/|$))[^/]+"


def db_session() -> Session:
    """The request's session, opened on first use and closed when the request ends. A GET or
    HEAD only reads, so its statements skip the round trips of a transaction."""
    if "db" not in g:
        g.db = autocommit_session() if request.method in ("GET", "HEAD") else new_session()
    return g.db


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def pointer(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a JSON pointer.

    Pydantic puts the chosen member of a discriminated union (`origin`, `auth`) into the
    location, right after the field; that tag is not a field of the body, so it is dropped.
    """
    parts: list[str] = []
    for index, part in enumerate(loc):
        if isinstance(part, str) and (part.startswith("function-") or (
                index > 0 and loc[index - 1] in _DISCRIMINATED_FIELDS)):
            continue
        parts.append(str(part))
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


# Fields holding a discriminated union, after which pydantic inserts the member's tag.
_DISCRIMINATED_FIELDS = {"origin", "auth"}


def validation_error(exc: ValidationError, where: str = "body") -> errors.ApiError:
    first = exc.errors(include_url=False, include_input=False)[0]
    source = pointer(first["loc"])
    if first["type"] == "json_invalid":
        return errors.InvalidSyntax(f"The {where} is not valid JSON: {first['msg']}.")
    if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
        # The fault is in the discriminator field (`type`), not in the object holding it.
        source = source.rstrip("/") + "/" + str(first.get("ctx", {}).get("discriminator", "type")
                                                ).strip("'")
    if first["type"] in ("missing", "union_tag_not_found"):
        return errors.MissingArgument(f"`{source}` is required.", source=source)
    message = first["msg"].removeprefix("Value error, ")
    return errors.InvalidInput(f"`{source}`: {message}.", source=source)


def parse_body(model: type[Model]) -> Model:
    """The JSON body validated by `model`; any fault becomes a 4xx in the envelope."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise errors.InvalidContentType("Send the body as `Content-Type: application/json`.")
    try:
        data = request.get_data()
        if request.stream.read(1):  # werkzeug stops a chunked body at the limit, silently
            raise errors.PayloadTooLarge(f"A JSON body may be at most "
                                         f"{get_settings().max_body_bytes} bytes.")
        parsed = model.model_validate_json(data or b"")
    except ValidationError as exc:
        raise validation_error(exc) from None
    where = _nul_at(parsed.model_dump(mode="json"))
    if where is not None:
        raise errors.InvalidInput(f"`{where}` contains a NUL character.", source=where)
    return parsed


def _nul_at(value: Any, path: str = "") -> str | None:
    """The JSON pointer of the first string (or key) holding U+0000, which Postgres cannot store."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        where = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
        if "\x00" in str(key):
            return where
        found = _nul_at(item, where)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ListParameters:
    """The query parameters a view takes (filter[...], sort, page[...], include, meta), declared
    once beside it: `parse()` reads them and app.openapi documents them."""

    # A paged list of resources in these states (`filter[state]`); None: one resource.
    states: type[StrEnum] | None = None
    filters: Mapping[str, str] = field(default_factory=dict)  # name → description
    sorts: Mapping[str, Any] = field(default_factory=dict)  # name → column
    includes: AbstractSet[str] = frozenset()
    metas: AbstractSet[str] = frozenset()

    def filter_names(self) -> set[str]:
        return {*self.filters, "state"} if self.states else set(self.filters)

    def parse(self) -> ListQuery:
        """Parse and check the request's parameters against what the view offers."""
        query = ListQuery(sorts=self.sorts)
        filters = self.filter_names()
        for name, value in request.args.items(multi=True):
            if "\x00" in name or "\x00" in value:
                raise errors.InvalidArgument("Query parameters may not contain NUL characters.",
                                             source=name.replace("\x00", ""))
            match = _BRACKETED.match(name)
            if match and match[1] == "filter":
                if match[2] not in filters:
                    raise errors.InvalidArgument(f"Unknown filter `{match[2]}`; this list can be "
                                                 f"filtered by {_listed(filters)}.", source=name)
                if len(value) > MAX_FILTER_LENGTH:
                    raise errors.MaxExceeded(f"`{name}` is longer than {MAX_FILTER_LENGTH} "
                                             "characters.", source=name)
                query.filters[match[2]] = value
            elif (match and match[1] == "page" or name == "sort") and self.states is None:
                # One resource: Cycle's clients send their list defaults along; nothing to order.
                continue
            elif match and match[1] == "page":
                _set_page(query, match[2], value)
            elif name == "sort":
                query.sort += [_sort_key(item, self.sorts) for item in value.split(",")
                               if item.strip()]
            elif name in ("include", "meta"):
                allowed = self.includes if name == "include" else self.metas
                wanted = {v.strip() for v in value.split(",") if v.strip()}
                unknown = wanted - allowed
                if unknown:
                    raise errors.InvalidArgument(
                        f"Unknown {name} `{sorted(unknown)[0]}`; this endpoint offers "
                        f"{_listed(allowed)}.", source=name)
                getattr(query, name).update(wanted)
        return query


@dataclass
class ListQuery:
    """The list parameters of one request, parsed."""

    filters: dict[str, str] = field(default_factory=dict)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    page_number: int = 1
    page_size: int = 20
    include: set[str] = field(default_factory=set)
    meta: set[str] = field(default_factory=set)
    sorts: Mapping[str, Any] = field(default_factory=dict)  # what `sort` may name, and its column

    @property
    def offset(self) -> int:
        return (self.page_number - 1) * self.page_size

    def states(self) -> list[str]:
        raw = self.filters.get("state", "")
        return [s.strip() for s in raw.split(",") if s.strip()]


_BRACKETED = re.compile(r"^(filter|page)\[(.*)\]$", re.DOTALL)
MAX_FILTER_LENGTH = 256
# Far beyond any real list, and small enough that the row offset fits Postgres' bigint.
MAX_PAGE_NUMBER = 1_000_000_000
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


def _set_page(query: ListQuery, key: str, value: str) -> None:
    if key not in ("number", "size"):
        raise errors.InvalidArgument(f"Unknown page parameter `page[{key}]`.", source=f"page[{key}]")
    if not _WHOLE_NUMBER.fullmatch(value):  # int() would also take `٣`, `1_0` and ` 2 `
        raise errors.InvalidArgument(f"`page[{key}]` must be a whole number (digits 0-9).",
                                     source=f"page[{key}]")
    # A number this long is past every limit below; int() refuses very long ones.
    number = int(value) if len(value) <= 20 else float(value)
    if number < 1:
        raise errors.InvalidArgument(f"`page[{key}]` must be 1 or more.", source=f"page[{key}]")
    if key == "size":
        limit = get_settings().page_size_max
        if number > limit:
            raise errors.MaxExceeded(f"`page[size]` may be at most {limit}.", source="page[size]")
        query.page_size = number
    else:
        if number > MAX_PAGE_NUMBER:
            raise errors.MaxExceeded(f"`page[number]` may be at most {MAX_PAGE_NUMBER}.",
                                     source="page[number]")
        query.page_number = number


def _sort_key(item: str, sorts: Mapping[str, Any]) -> tuple[str, bool]:
    item = item.strip()
    descending = item.startswith("-")
    name = item.lstrip("-+")
    if name not in sorts:
        raise errors.InvalidArgument(f"Cannot sort by `{name}`; sort by {_listed(sorts)}.",
                                     source="sort")
    return name, descending


def _listed(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names)) or "nothing"


def _render(exc: errors.ApiError) -> tuple[dict[str, Any], int]:
    return exc.envelope(), exc.status


_HTTP_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.InvalidSyntax, 404: errors.UriNotFound, 405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge, 415: errors.InvalidContentType,
}


def _render_http(exc: HTTPException) -> tuple[dict[str, Any], int]:
    kind = _HTTP_ERRORS.get(exc.code or 500)
    if kind is None:
        return _render(errors.ApiError())
    return _render(kind())


def _render_database(exc: DBAPIError) -> tuple[dict[str, Any], int]:
    log.error("database error: %s", type(exc.orig).__name__ if exc.orig else exc)
    if exc.connection_invalidated or "connect" in str(exc.orig).lower():
        return _render(errors.NotReady("The database is not reachable; try again shortly."))
    return _render(errors.DatabaseError())


def _render_unexpected(exc: Exception) -> tuple[dict[str, Any], int]:
    # The trace goes to our log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _render(errors.ApiError())


def register(app: Flask) -> None:
    app.teardown_appcontext(_close_session)
    app.register_error_handler(errors.ApiError, _render)
    app.register_error_handler(HTTPException, _render_http)
    app.register_error_handler(DBAPIError, _render_database)
    app.register_error_handler(Exception, _render_unexpected)


def fetch_page(query: Select, q: ListQuery, default: Any) -> list[Any]:
    """One page of `query`, ordered as asked (then by the default order, for a stable paging)."""
    order = [q.sorts[name].desc() if descending else q.sorts[name].asc()
             for name, descending in q.sort]
    order.append(default)
    return list(db_session().scalars(query.order_by(*order).offset(q.offset).limit(q.page_size)))


def receive_upload(final: Path) -> Path:
    """Stream the request's file (multipart `file.tar`, or the raw body) to a file beside `final`.

    Bounded by IMAGEJOBS_UPLOAD_MAX_BYTES (413 past it); never held whole in memory.
    """
    limit = get_settings().upload_max_bytes
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"An upload may be at most {limit} bytes.")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("file.tar")
            if upload is None:
                raise errors.MissingArgument("Send the image tar as the multipart field "
                                             "`file.tar`.", source="/file.tar")
            off_the_hub(upload.save, partial)  # a disk copy of up to the whole upload
        else:
            received = 0
            with open(partial, "wb") as out:
                while block := request.stream.read(1024 * 1024):
                    received += len(block)
                    if received > limit:
                        raise errors.PayloadTooLarge(f"An upload may be at most {limit} bytes.")
                    out.write(block)
        if partial.stat().st_size == 0:
            raise errors.MissingArgument("The upload is empty.", source="/file.tar")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial
