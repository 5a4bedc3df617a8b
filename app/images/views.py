"""/v1/images: parse, call a service, serialize."""

from __future__ import annotations

from flask import Blueprint, request

from app import errors
from app.hubs.auth import authenticate, current, requires
from app.hubs.models import Capability
from app.images import services
from app.images.documents import BuildLogDocument, ImageDocument, image_list
from app.images.models import Image
from app.images.schemas import ImageCreate, ImagesTask, ImageTask, ImageUpdate
from app.jobs.views import accepted
from app.serve import off_the_hub
from app.web import db_session, fetch_page, list_query, parse_body, receive_upload

blueprint = Blueprint("images", __name__, url_prefix="/v1/images")

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
    return image_list(db_session(), current().hub_id, images, q.include).answer()


@blueprint.post("")
@requires(Capability.IMAGES_MANAGE)
def create_image():
    body = parse_body(ImageCreate)
    session = db_session()
    image, upload_token = services.create_image(session, current().hub_id, current().creator,
                                                body)
    session.commit()
    return ImageDocument.of(image, upload_token).answer(), 201


@blueprint.get("/<image_id:image_id>")
@requires(Capability.IMAGES_VIEW)
def get_image(image_id: str):
    q = list_query(includes=INCLUDES)
    _check_includes(q.include)
    image = services.get_image(db_session(), current().hub_id, image_id)
    listed = image_list(db_session(), current().hub_id, [image], q.include)
    return ImageDocument(data=listed.data[0], includes=listed.includes).answer()


@blueprint.patch("/<image_id:image_id>")
@requires(Capability.IMAGES_MANAGE)
def update_image(image_id: str):
    body = parse_body(ImageUpdate)
    session = db_session()
    image = services.rename_image(session, current().hub_id, image_id, body.name)
    session.commit()
    return ImageDocument.of(image).answer()


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
    return BuildLogDocument.of(build_log, offset).answer()


def _offset() -> int:
    raw = request.args.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # isdigit() alone takes `²`
        raise errors.InvalidArgument("`offset` must be a whole number of characters, 0 or more.",
                                     source="offset")
    return int(raw)
