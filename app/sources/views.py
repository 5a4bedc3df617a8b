"""/v1/images/sources: parse, call a service, serialize."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app.db import rfc3339
from app.hubs.auth import current, requires
from app.hubs.documents import creators_include
from app.hubs.models import Capability
from app.jobs.views import accepted
from app.sources import services
from app.sources.models import ImageSource
from app.sources.schemas import SourceCreate, SourceUpdate
from app.web import db_session, fetch_page, list_query, parse_body

blueprint = Blueprint("sources", __name__, url_prefix="/v1/images/sources")


def source_document(source: ImageSource) -> dict[str, Any]:
    state: dict[str, Any] = {"current": source.state, "changed": rfc3339(source.state_changed)}
    if source.state_error:
        state["error"] = {"message": source.state_error}
    return {
        "id": source.id,
        "identifier": source.identifier,
        "type": source.type,
        "hub_id": source.hub_id,
        "name": source.name,
        "about": {"description": source.about_description},
        "origin": source.origin,
        "builder": source.builder,
        "creator": {"id": source.creator_id, "type": source.creator_type},
        "acl": source.acl,
        "state": state,
        "events": {"created": rfc3339(source.created), "updated": rfc3339(source.updated),
                   "deleted": rfc3339(source.deleted)},
    }


def _documents(sources: list[ImageSource], include: set[str], meta: set[str]
               ) -> dict[str, Any]:
    data = [source_document(s) for s in sources]
    if "images_count" in meta:
        counts = services.images_count(db_session(), [s.id for s in sources])
        for document in data:
            document["meta"] = {"images_count": counts[document["id"]]}
    result: dict[str, Any] = {"data": data}
    if "creators" in include:
        result["includes"] = {"creators": creators_include(
            db_session(), current().hub_id, {s.creator_id for s in sources})}
    return result


@blueprint.get("")
@requires(Capability.IMAGES_SOURCES_VIEW)
def list_sources():
    q = list_query(filters={"identifier", "search", "state"}, sorts=set(services.SOURCE_SORTS),
                   includes={"creators"}, metas={"images_count"})
    query = services.sources_query(current().hub_id, q.filters, q.states())
    sources = fetch_page(query, q, services.SOURCE_SORTS, ImageSource.id.desc())
    return _documents(sources, q.include, q.meta)


@blueprint.post("")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def create_source():
    body = parse_body(SourceCreate)
    session = db_session()
    source = services.create_source(session, current().hub_id, current().creator, body)
    session.commit()
    return {"data": source_document(source)}, 201


@blueprint.get("/<source_id>")
@requires(Capability.IMAGES_SOURCES_VIEW)
def get_source(source_id: str):
    q = list_query(includes={"creators"}, metas={"images_count"})
    source = services.get_source(db_session(), current().hub_id, source_id)
    result = _documents([source], q.include, q.meta)
    result["data"] = result["data"][0]
    return result


@blueprint.patch("/<source_id>")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def update_source(source_id: str):
    body = parse_body(SourceUpdate)
    session = db_session()
    source = services.update_source(session, current().hub_id, source_id, body)
    session.commit()
    return {"data": source_document(source)}


@blueprint.delete("/<source_id>")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def delete_source(source_id: str):
    session = db_session()
    return accepted(session, services.delete_source(session, current().hub_id, current().creator,
                                                    source_id))
