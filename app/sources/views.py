"""/v1/images/sources: parse, call a service, serialize."""

from __future__ import annotations

from flask import Blueprint

from app import errors
from app.hubs.auth import current, requires
from app.hubs.models import Capability
from app.idempotency.requests import idempotent
from app.jobs.documents import JobDescriptorDocument
from app.jobs.views import accepted
from app.openapi import documented
from app.sources import services
from app.sources.documents import SourceDocument, SourceListDocument, source_list
from app.sources.models import ImageSource, SourceState
from app.sources.schemas import SourceCreate, SourceUpdate
from app.web import ListParameters, db_session, fetch_page, parse_body

blueprint = Blueprint("sources", __name__, url_prefix="/v1/images/sources")

ONE_SOURCE = ListParameters(includes={"creators", "integrations"}, metas={"images_count"})
SOURCES = ListParameters(
    states=SourceState, filters={"identifier": "Sources with this identifier.",
                                 "search": "A substring of the name, or an id."},
    sorts=services.SOURCE_SORTS, includes=ONE_SOURCE.includes, metas=ONE_SOURCE.metas)


@blueprint.get("")
@documented("List the hub's image sources", SourceListDocument, query=SOURCES)
@requires(Capability.IMAGES_SOURCES_VIEW)
def list_sources():
    q = SOURCES.parse()
    query = services.sources_query(current().hub_id, q.filters, q.states())
    sources = fetch_page(query, q, ImageSource.id.desc())
    return source_list(db_session(), current().hub_id, sources, q.include, q.meta)


@blueprint.post("")
@idempotent
@documented("Create an image source", SourceDocument, status=201, body=SourceCreate)
@requires(Capability.IMAGES_SOURCES_MANAGE)
def create_source():
    body = parse_body(SourceCreate)
    session = db_session()
    source = services.create_source(session, current().hub_id, current().creator, body)
    session.commit()
    return SourceDocument.of(source)


@blueprint.get("/<source_id>")
@documented("Get an image source", SourceDocument, query=ONE_SOURCE,
            errors=(errors.SourceNotFound,))
@requires(Capability.IMAGES_SOURCES_VIEW)
def get_source(source_id: str):
    q = ONE_SOURCE.parse()
    source = services.get_source(db_session(), current().hub_id, source_id)
    listed = source_list(db_session(), current().hub_id, [source], q.include, q.meta)
    return SourceDocument(data=listed.data[0], includes=listed.includes)


@blueprint.patch("/<source_id>")
@documented("Change an image source (an origin sent back with blank secrets keeps them)",
            SourceDocument, body=SourceUpdate, errors=(errors.SourceNotFound, errors.InvalidState))
@requires(Capability.IMAGES_SOURCES_MANAGE)
def update_source(source_id: str):
    body = parse_body(SourceUpdate)
    session = db_session()
    source = services.update_source(session, current().hub_id, source_id, body)
    session.commit()
    return SourceDocument.of(source)


@blueprint.delete("/<source_id>")
@idempotent
@documented("Delete an image source and its images (a job)", JobDescriptorDocument, status=202,
            errors=(errors.SourceNotFound, errors.InvalidState))
@requires(Capability.IMAGES_SOURCES_MANAGE)
def delete_source(source_id: str):
    session = db_session()
    return accepted(session, services.delete_source(session, current().hub_id, current().creator,
                                                    source_id))
