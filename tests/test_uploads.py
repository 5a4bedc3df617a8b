"""cycle-upload images: a single-use token, a streamed tar upload, and an import that loads it."""

from __future__ import annotations

import io
import tarfile
import uuid
from datetime import timedelta

import docker.errors
import pytest
from sqlalchemy import update

from app.db import transaction, utcnow
from app.models import Image
from tests.conftest import ROOT
from tests.helpers import assert_error, create_image, create_source, get_image
from tests.support import dockerfile_context

UPLOAD_ORIGIN = {"type": "cycle-upload"}


@pytest.fixture(scope="module")
def saved_image(docker_client):
    """A locally built image as `docker save` writes it, then removed from the engine."""
    tag = f"imagejobs-tests/upload:{uuid.uuid4().hex[:8]}"
    context = dockerfile_context(f"FROM imagejobs/busybox:latest\nRUN echo {tag} > /made-for\n"
                                 "LABEL purpose=upload\n", compress=False)
    image, _ = docker_client.images.build(fileobj=io.BytesIO(context), custom_context=True,
                                          tag=tag)
    data = b"".join(image.save(named=True))
    docker_client.images.remove(tag)
    return {"tag": tag, "id": image.id, "tar": data}


def new_upload_image(api) -> tuple[dict, str]:
    image = create_image(api, create_source(api, UPLOAD_ORIGIN)["id"])
    return image, image["source"]["details"]["origin"]["details"]["token"]


def upload(api, image_id: str, token: str, data: bytes, multipart: bool = True):
    path = f"/v1/images/{image_id}/upload?token={token}"
    if multipart:
        return api.post(path, data={"file.tar": (io.BytesIO(data), "image.tar")},
                        content_type="multipart/form-data")
    return api.post(path, data=data, content_type="application/x-tar")


def tar_of(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name.replace("__", "/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw-body"])
def test_an_uploaded_image_goes_live_with_the_same_image_id(api, worker, docker_client,
                                                            saved_image, multipart):
    image, token = new_upload_image(api)

    response = upload(api, image["id"], token, saved_image["tar"], multipart)

    assert response.status_code == 202, response.get_json()
    descriptor = response.get_json()["data"]
    assert descriptor["action"] == "import"
    job = api.wait_for_job(descriptor["job"]["id"])
    assert job["state"]["current"] == "completed", job
    assert [s["caption"] for s in job["tasks"][0]["steps"]] == ["Load", "Verify", "Save"]
    live = get_image(api, image["id"])
    assert live["state"]["current"] == "live"
    assert live["backend"]["file_id"] == saved_image["id"]
    assert live["config"]["labels"] == {"purpose": "upload"}
    assert docker_client.images.get(live["backend"]["file_name"]).id == saved_image["id"]
    with pytest.raises(docker.errors.ImageNotFound):  # the tar's own tag was not applied
        docker_client.images.get(saved_image["tag"])
    docker_client.images.remove(live["backend"]["file_name"])


def test_a_token_works_for_one_upload_only(api, worker, saved_image):
    image, token = new_upload_image(api)
    first = upload(api, image["id"], token, saved_image["tar"])
    assert first.status_code == 202
    assert_error(upload(api, image["id"], token, saved_image["tar"]), 403, "403.expired")
    api.wait_for_job(first.get_json()["data"]["job"]["id"])


def test_a_wrong_or_missing_token_is_refused(api, saved_image):
    image, token = new_upload_image(api)
    assert_error(upload(api, image["id"], token[::-1], saved_image["tar"]), 401, "401.auth-invalid")
    assert_error(upload(api, image["id"], "", saved_image["tar"]), 401, "401.auth-invalid")
    other, _ = new_upload_image(api)
    assert_error(upload(api, other["id"], token, saved_image["tar"]), 401, "401.auth-invalid")


def test_an_expired_token_is_refused(api, saved_image):
    image, token = new_upload_image(api)
    with transaction() as session:
        session.execute(update(Image).where(Image.id == image["id"])
                        .values(upload_expires=utcnow() - timedelta(seconds=1)))
    assert_error(upload(api, image["id"], token, saved_image["tar"]), 403, "403.expired")


def test_the_token_is_shown_once_and_kept_only_hashed(api):
    image, token = new_upload_image(api)
    assert token not in str(api.get(f"/v1/images/{image['id']}").get_json())
    with transaction() as session:
        row = session.get(Image, image["id"])
        assert token not in (row.upload_token_hash or "")


@pytest.mark.parametrize("make, words", [
    (lambda saved: tar_of(**{"layer.tar": b"x"}), "manifest.json"),
    (lambda saved: saved["tar"][: len(saved["tar"]) // 2], "complete tar"),
    (lambda saved: tar_of(**{"manifest.json": b"[]", "..__evil": b"x"}), "outside"),
    (lambda saved: b"this is not a tar at all" * 100, "complete tar"),
], ids=["no-manifest", "truncated", "escaping-member", "not-a-tar"])
def test_a_bad_upload_is_refused_and_the_token_survives(api, saved_image, make, words):
    image, token = new_upload_image(api)

    error = assert_error(upload(api, image["id"], token, make(saved_image)), 422,
                         "422.invalid-input")

    assert words in error["detail"]
    assert get_image(api, image["id"])["state"]["current"] == "new"
    with transaction() as session:
        assert session.get(Image, image["id"]).upload_received is None


def test_an_empty_upload_is_refused(api):
    image, token = new_upload_image(api)
    assert_error(upload(api, image["id"], token, b"", multipart=False), 422,
                 "422.missing-argument")


def test_a_multipart_upload_without_the_file_field_is_refused(api):
    image, token = new_upload_image(api)
    response = api.post(f"/v1/images/{image['id']}/upload?token={token}",
                        data={"other": (io.BytesIO(b"x"), "x.tar")},
                        content_type="multipart/form-data")
    assert_error(response, 422, "422.missing-argument", source="/file.tar")


def test_an_upload_over_the_limit_is_refused_with_413(api, saved_image):
    """An API of its own, started with a small upload limit; the tar is larger."""
    import os

    import requests

    from tests.processes import api_server

    env = {**os.environ, "IMAGEJOBS_UPLOAD_MAX_BYTES": "4096"}
    with api_server("uploads-api", env=env) as base:
        for multipart in (True, False):
            image, token = new_upload_image(api)
            url = f"{base}/v1/images/{image['id']}/upload?token={token}"
            # Just over the limit: a much larger body could still be on its way when the 413
            # closes the connection, and the client would see a reset instead of the answer.
            body = saved_image["tar"][:6000]
            response = (requests.post(url, files={"file.tar": body}) if multipart
                        else requests.post(url, data=body))
            assert response.status_code == 413, response.text
            assert response.json()["error"]["status"] == 413
            assert get_image(api, image["id"])["state"]["current"] == "new"
        log = (ROOT / ".test-logs" / "uploads-api.log").read_text()
        assert token not in log  # the access log shows paths without their query
