"""/v1/images: parse, call a service, serialize."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from sqlalchemy import select

from app import errors
from app.db import rfc3339
from app.hubs.auth import authenticate, current, requires
from app.hubs.documents import creators_include
from app.hubs.models import Capability
from app.images import services
from app.images.models import Image
from app.images.schemas import ImageCreate, ImagesTask, ImageTask, ImageUpdate
from app.jobs.views import accepted
from app.serve import off_the_hub
from app.sources.models import ImageSource
from app.sources.views import source_document
from app.web import db_session, fetch_page, list_query, parse_body, receive_upload

blueprint = Blueprint("images", __name__, url_prefix="/v1/images")


def image_document(image: Image, upload_token: str | None = None) -> dict[str, Any]:
    """The spec's Image; an upload token appears only in the answer that created it."""
    state: dict[str, Any] = {"current": image.state, "changed": rfc3339(image.state_changed)}
    if image.state_error:
        state["error"] = {"message": image.state_error, "time": rfc3339(image.state_error_time)}
    origin = image.origin
    if image.origin_type == "cycle-upload":
        origin = {"type": "cycle-upload", "details": {
            "expires": rfc3339(image.upload_expires), "token": upload_token or ""}}
    source: dict[str, Any] = {"type": "direct",
                              "details": {"id": image.source_id, "origin": origin}}
    if image.override:
        source["override"] = image.override
    factory = None
    if image.factory_node_id:
        factory = {"node_id": image.factory_node_id,
                   "cached": rfc3339(image.factory_cached),
                   "acknowledged": rfc3339(image.factory_acknowledged)}
    return {
        "id": image.id,
        "hub_id": image.hub_id,
        "name": image.name,
        "size": image.size,
        "about": {"description": image.about_description},
        "backend": {"provider": image.backend_provider, "size": image.size,
                    "file_name": image.backend_file_name, "file_id": image.backend_file_id},
        "requires": {"nvidia_gpu": False},
        "build": image.build,
        "builder": None,
        "config": image.config,
        "source": source,
        "creator": {"id": image.creator_id, "type": image.creator_type},
        "factory": factory,
        "state": state,
        "events": {"created": rfc3339(image.created), "updated": rfc3339(image.updated),
                   "deleted": rfc3339(image.deleted)},
    }


def _documents(images: list[Image], include: set[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"data": [image_document(i) for i in images]}
    includes: dict[str, Any] = {}
    hub_id = current().hub_id
    if "creators" in include:
        includes["creators"] = creators_include(db_session(), hub_id,
                                                {i.creator_id for i in images})
    if "sources" in include:
        wanted = {i.source_id for i in images}
        sources = db_session().scalars(select(ImageSource).where(
            ImageSource.id.in_(wanted), ImageSource.hub_id == hub_id)) if wanted else []
        includes["sources"] = {s.id: source_document(s) for s in sources}
    if includes:
        result["includes"] = includes
    return result


INCLUDES = {"creators", "sources"}


def _check_includes(include: set[str]) -> None:
    """Included sources are whole source documents: they need the key to view sources too."""
    if "sources" in include:
        authenticate(Capability.IMAGES_SOURCES_VIEW)


@blueprint.get("")
@requires(Capability.IMAGES_VIEW)
def list_images():
    q = list_query(filters={"state", "source_id", "search", "source_type", "identifier"},
                   sorts=set(services.IMAGE_SORTS), includes=INCLUDES)
    _check_includes(q.include)
    query = services.images_query(current().hub_id, q.filters, q.states())
    images = fetch_page(query, q, services.IMAGE_SORTS, Image.id.desc())
    return _documents(images, q.include)


@blueprint.post("")
@requires(Capability.IMAGES_MANAGE)
def create_image():
    body = parse_body(ImageCreate)
    session = db_session()
    image, upload_token = services.create_image(session, current().hub_id, current().creator,
                                                body)
    session.commit()
    return {"data": image_document(image, upload_token)}, 201


@blueprint.get("/<image_id:image_id>")
@requires(Capability.IMAGES_VIEW)
def get_image(image_id: str):
    q = list_query(includes=INCLUDES)
    _check_includes(q.include)
    image = services.get_image(db_session(), current().hub_id, image_id)
    result = _documents([image], q.include)
    result["data"] = result["data"][0]
    return result


@blueprint.patch("/<image_id:image_id>")
@requires(Capability.IMAGES_MANAGE)
def update_image(image_id: str):
    body = parse_body(ImageUpdate)
    session = db_session()
    image = services.rename_image(session, current().hub_id, image_id, body.name)
    session.commit()
    return {"data": image_document(image)}


@blueprint.delete("/<image_id:image_id>")
@requires(Capability.IMAGES_MANAGE)
def delete_image(image_id: str):
    session = db_session()
    return accepted(session, services.delete_image(session, current().hub_id, current().creator,
                                                    image_id))


@blueprint.post("/<image_id:image_id>/tasks")
@requires(Capability.IMAGES_IMPORT)
def create_image_task(image_id: str):
    parse_body(ImageTask)
    session = db_session()
    return accepted(session, services.import_image(session, current().hub_id, current().creator,
                                                    image_id))


@blueprint.post("/tasks")
@requires(Capability.IMAGES_MANAGE)
def create_images_task():
    body = parse_body(ImagesTask)
    session = db_session()
    return accepted(session, services.prune_images(
        session, current().hub_id, current().creator, body.contents.source_ids,
        body.contents.dry_run))


@blueprint.post("/<image_id:image_id>/upload")
def upload_image(image_id: str):
    """Take a cycle-upload image's tar (multipart `file.tar`, or the raw body), streamed to disk.

    The single-use token of the image authenticates the call, as in Cycle's factory. Nothing is
    locked while the tar streams in and is checked: the token is spent, under the image's lock,
    only once the tar is whole and sound.
    """
    session = db_session()
    hub_id = request.headers.get("X-Hub-Id") or request.args.get("hub-id")
    token = request.args.get("token", "")
    image_id = services.check_upload_token(session, image_id, hub_id, token).id
    session.rollback()  # no transaction (nor connection) stays open while the body streams
    received = receive_upload(services.upload_path(image_id))
    try:
        # Reading a large tar takes seconds: on a thread, so the process serves others meanwhile.
        off_the_hub(services.check_image_tar, received)
        return accepted(session, services.accept_upload(session, image_id, hub_id, token,
                                                        received))
    finally:
        received.unlink(missing_ok=True)


@blueprint.get("/<image_id:image_id>/build-log")
@requires(Capability.IMAGES_VIEW)
def get_build_log(image_id: str):
    """The build log; `?offset=N` gives only what follows its first N characters.

    `meta.next_offset` is the offset to ask for next time, so following a build costs little.
    """
    offset = _offset()
    session = db_session()
    image = services.get_image(session, current().hub_id, image_id)
    build_log = services.build_log(session, image, offset)
    if build_log is None:
        raise errors.BuildLogNotFound("This image has no build log: it was not built from a "
                                      "Dockerfile, or its build has not started.")
    return {"data": {
        "id": build_log.id, "hub_id": build_log.hub_id, "image_id": build_log.image_id,
        "log": build_log.text,
        "events": {"created": rfc3339(build_log.created), "updated": rfc3339(build_log.updated),
                   "deleted": rfc3339(build_log.deleted)},
        "meta": {"offset": offset, "next_offset": build_log.length,
                 "truncated": build_log.truncated},
    }}


def _offset() -> int:
    raw = request.args.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # isdigit() alone takes `²`
        raise errors.InvalidArgument("`offset` must be a whole number of characters, 0 or more.",
                                     source="offset")
    return int(raw)
