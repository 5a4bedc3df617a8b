"""/v1/images/sources: parse, call a service, serialize."""

from __future__ import annotations

from flask import Blueprint

from app.hubs.auth import current, requires
from app.hubs.models import Capability
from app.jobs.views import accepted
from app.sources import services
from app.sources.documents import SourceDocument, source_list
from app.sources.models import ImageSource
from app.sources.schemas import SourceCreate, SourceUpdate
from app.web import db_session, fetch_page, list_query, parse_body

blueprint = Blueprint("sources", __name__, url_prefix="/v1/images/sources")


@blueprint.get("")
@requires(Capability.IMAGES_SOURCES_VIEW)
def list_sources():
    q = list_query(filters={"identifier", "search", "state"}, sorts=set(services.SOURCE_SORTS),
                   includes={"creators"}, metas={"images_count"})
    query = services.sources_query(current().hub_id, q.filters, q.states())
    sources = fetch_page(query, q, services.SOURCE_SORTS, ImageSource.id.desc())
    return source_list(db_session(), current().hub_id, sources, q.include, q.meta).answer()


@blueprint.post("")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def create_source():
    body = parse_body(SourceCreate)
    session = db_session()
    source = services.create_source(session, current().hub_id, current().creator, body)
    session.commit()
    return SourceDocument.of(source).answer(), 201


@blueprint.get("/<source_id>")
@requires(Capability.IMAGES_SOURCES_VIEW)
def get_source(source_id: str):
    q = list_query(includes={"creators"}, metas={"images_count"})
    source = services.get_source(db_session(), current().hub_id, source_id)
    listed = source_list(db_session(), current().hub_id, [source], q.include, q.meta)
    return SourceDocument(data=listed.data[0], includes=listed.includes).answer()


@blueprint.patch("/<source_id>")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def update_source(source_id: str):
    body = parse_body(SourceUpdate)
    session = db_session()
    source = services.update_source(session, current().hub_id, source_id, body)
    session.commit()
    return SourceDocument.of(source).answer()


@blueprint.delete("/<source_id>")
@requires(Capability.IMAGES_SOURCES_MANAGE)
def delete_source(source_id: str):
    session = db_session()
    return accepted(session, services.delete_source(session, current().hub_id, current().creator,
                                                    source_id))
