"""/v1/images: parse, call a service, serialize."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, request

from app import errors
from app.db import autocommit_session
from app.events import follow, listener
from app.hubs.auth import authenticate, current, requires
from app.hubs.models import Capability
from app.idempotency.requests import idempotent, idempotent_upload
from app.images import services
from app.images.documents import (
    NONE_HERE,
    BuildLogDocument,
    ImageDocument,
    ImageListDocument,
    image_list,
)
from app.images.models import Image, ImageState
from app.images.schemas import ImageCreate, ImagesTask, ImageTask, ImageUpdate
from app.jobs.documents import JobDescriptorDocument
from app.jobs.views import accepted
from app.openapi import EXTENSION, documented, query_parameter
from app.serve import off_the_hub
from app.web import ListParameters, db_session, fetch_page, parse_body, receive_upload

blueprint = Blueprint("images", __name__, url_prefix="/v1/images")

ONE_IMAGE = ListParameters(includes={"creators", "sources", *NONE_HERE})
IMAGES = ListParameters(
    states=ImageState,
    filters={"source_id": "Images of this source.",
             "source_type": "Only `direct` sources exist.",
             "identifier": "Images of sources with this identifier.",
             "search": "A substring of the name or the engine's tag, or an id."},
    sorts=services.IMAGE_SORTS, includes=ONE_IMAGE.includes)


def _check_includes(include: set[str]) -> None:
    """Included sources are whole source documents: they need the key to view sources too."""
    if "sources" in include:
        authenticate(Capability.IMAGES_SOURCES_VIEW)


@blueprint.get("")
@documented("List the hub's images", ImageListDocument, query=IMAGES)
@requires(Capability.IMAGES_VIEW)
def list_images():
    q = IMAGES.parse()
    _check_includes(q.include)
    query = services.images_query(current().hub_id, q.filters, q.states())
    images = fetch_page(query, q, Image.id.desc())
    return image_list(db_session(), current().hub_id, images, q.include)


@blueprint.post("")
@idempotent
@documented("Create an image from a source (state `new`)", ImageDocument, status=201,
            body=ImageCreate, errors=(errors.SourceNotFound, errors.InvalidState))
@requires(Capability.IMAGES_MANAGE)
def create_image():
    body = parse_body(ImageCreate)
    session = db_session()
    image, upload_token = services.create_image(session, current().hub_id, current().creator,
                                                body)
    session.commit()
    return ImageDocument.of(image, upload_token)


@blueprint.get("/<image_id:image_id>")
@documented("Get an image", ImageDocument, query=ONE_IMAGE, errors=(errors.ImageNotFound,))
@requires(Capability.IMAGES_VIEW)
def get_image(image_id: str):
    q = ONE_IMAGE.parse()
    _check_includes(q.include)
    image = services.get_image(db_session(), current().hub_id, image_id)
    listed = image_list(db_session(), current().hub_id, [image], q.include)
    return ImageDocument(data=listed.data[0], includes=listed.includes)


@blueprint.patch("/<image_id:image_id>")
@documented("Rename an image", ImageDocument, body=ImageUpdate, errors=(errors.ImageNotFound,))
@requires(Capability.IMAGES_MANAGE)
def update_image(image_id: str):
    body = parse_body(ImageUpdate)
    session = db_session()
    image = services.rename_image(session, current().hub_id, image_id, body.name)
    session.commit()
    return ImageDocument.of(image)


@blueprint.delete("/<image_id:image_id>")
@idempotent
@documented("Delete an image from the node holding it (a job)", JobDescriptorDocument,
            status=202, errors=(errors.ImageNotFound, errors.InvalidState))
@requires(Capability.IMAGES_MANAGE)
def delete_image(image_id: str):
    session = db_session()
    return accepted(session, services.delete_image(session, current().hub_id, current().creator,
                                                    image_id))


@blueprint.post("/<image_id:image_id>/tasks")
@idempotent
@documented("Import an image: pull, build or load it (a job)", JobDescriptorDocument, status=202,
            body=ImageTask,
            errors=(errors.ImageNotFound, errors.InvalidState, errors.InvalidArgument))
@requires(Capability.IMAGES_IMPORT)
def create_image_task(image_id: str):
    parse_body(ImageTask)
    session = db_session()
    return accepted(session, services.import_image(session, current().hub_id, current().creator,
                                                    image_id))


@blueprint.post("/tasks")
@idempotent
@documented("Prune the images of some sources (a job)", JobDescriptorDocument, status=202,
            body=ImagesTask, errors=(errors.SourceNotFound,))
@requires(Capability.IMAGES_MANAGE)
def create_images_task():
    body = parse_body(ImagesTask)
    session = db_session()
    return accepted(session, services.prune_images(
        session, current().hub_id, current().creator, body.contents.source_ids,
        body.contents.dry_run))


_TAR = {"type": "string", "format": "binary"}


@blueprint.post("/<image_id:image_id>/upload")
@idempotent_upload
@documented(
    "Upload a cycle-upload image's tar, authenticated by its single-use token (a job)",
    JobDescriptorDocument, status=202,
    parameters=(query_parameter("token", {"type": "string"},
                                "The token the image was created with.", required=True),
                query_parameter("hub-id", {"type": "string"},
                                "The hub, when `X-Hub-Id` is not sent."),
                {"name": "X-Hub-Id", "in": "header", "required": False,
                 "schema": {"type": "string"}, "description": "The image's hub."}),
    request_body={"required": True, "content": {
        "application/octet-stream": {"schema": _TAR},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file.tar"],
                                           "properties": {"file.tar": _TAR}}}}},
    errors=(errors.InvalidSyntax, errors.AuthInvalid, errors.Expired, errors.InvalidState,
            errors.PayloadTooLarge, errors.MissingArgument, errors.InvalidInput))
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
@documented("An image's build log, from `offset` on", BuildLogDocument,
            parameters=(query_parameter(
                "offset", {"type": "integer", "minimum": 0, "maximum": 10**12 - 1},
                "Characters to skip: `meta.next_offset` of the last answer."),
                {**query_parameter(
                    "follow", {"type": "boolean"},
                    "Stream the log as Server-Sent Events (also with `Accept: "
                    "text/event-stream`): each event's data is `{\"offset\", \"text\"}` and its "
                    "`id` the offset after it (send it back as `Last-Event-ID` to resume); a "
                    "last `end` event follows once the build ended."), **EXTENSION}),
            errors=(errors.ImageNotFound, errors.BuildLogNotFound, errors.InvalidArgument),
            stream="With `?follow=true` or `Accept: text/event-stream`: the log as it grows.")
@requires(Capability.IMAGES_VIEW)
def get_build_log(image_id: str):
    """The build log; `?offset=N` gives only what follows its first N characters.

    `meta.next_offset` is the offset to ask for next time, so following a build costs little;
    `?follow=true` streams it as it is written instead, until the build ends.
    """
    offset = _offset()
    session = db_session()
    image = services.get_image(session, current().hub_id, image_id)
    if request.args.get("follow") == "true" or follow.wants_event_stream():
        offset = _offset("Last-Event-ID", request.headers.get("Last-Event-ID", str(offset)))
        session.close()  # no pooled connection is held while the build is followed
        return follow.server_sent_events(_growing_log(image.hub_id, image.id, offset))
    build_log = services.build_log(session, image, offset)
    if build_log is None:
        raise errors.BuildLogNotFound("This image has no build log: it was not built from a "
                                      "Dockerfile, or its build has not started.")
    return BuildLogDocument.of(build_log, offset, services.building(session, image))


def _growing_log(hub_id: str, image_id: str, offset: int) -> Iterator[str]:
    """The log past `offset` as it is written, then an `end` event once the build ended (or
    nothing more when the process stops: the client reconnects, with Last-Event-ID, elsewhere)."""
    for read in follow.wakes(listener.build_log(image_id), listener.hub(hub_id)):
        if not read:
            yield follow.KEEPALIVE
            continue
        with autocommit_session() as session:
            image = session.get(Image, image_id)
            # Asked before the log is read: a log read after the build ended is whole.
            going = image is not None and services.building(session, image)
            build_log = services.build_log(session, image, offset) if image else None
            if image is not None and not going:
                # Read before its import was seen ended: the state it ended in is newer.
                session.refresh(image)
        if build_log is not None and build_log.text:
            yield follow.frame({"offset": offset, "text": build_log.text}, build_log.length)
            offset = build_log.length
        if not going:
            yield follow.frame({"state": image.state if image else ImageState.DELETED},
                               event="end")
            return


def _offset(name: str = "offset", raw: str | None = None) -> int:
    raw = request.args.get("offset", "0") if raw is None else raw
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # isdigit() alone takes `²`
        raise errors.InvalidArgument(f"`{name}` must be a whole number of characters, 0 or more.",
                                     source=name)
    return int(raw)
