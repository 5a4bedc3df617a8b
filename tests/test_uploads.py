"""cycle-upload images: a single-use token, a streamed tar upload, and an import that loads it."""

from __future__ import annotations

import http.client
import io
import json
import os
import tarfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import docker.errors
import pytest
import requests
from sqlalchemy import update

from app.config import get_settings
from app.db import new_id, transaction, utcnow
from app.images.services import accept_upload
from app.jobs import services as jobs_services
from app.models import Image, Job
from tests.api_calls import Api, assert_error, create_image, create_source, get_image
from tests.image_builds import dockerfile_context
from tests.services import ROOT
from workers.uploads import sweep_uploads

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


def manifest_of(saved: dict) -> list:
    with tarfile.open(fileobj=io.BytesIO(saved["tar"])) as tar:
        return json.load(tar.extractfile("manifest.json"))


def with_manifest(saved: dict, manifest: bytes | None) -> bytes:
    """The saved image's tar with `manifest.json` replaced (by a folder, for None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(saved["tar"])) as source, \
            tarfile.open(fileobj=buffer, mode="w") as target:
        for member in source:
            if member.name != "manifest.json":
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("manifest.json")
        if manifest is None:
            info.type = tarfile.DIRTYPE
        else:
            info.size = len(manifest)
        target.addfile(info, io.BytesIO(manifest or b""))
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
    (lambda saved: with_manifest(saved, b"{not json"), "not JSON"),
    (lambda saved: with_manifest(saved, b"\xff\xfe\x00garbage"), "not JSON"),
    (lambda saved: with_manifest(saved, b"[" * 100_000), "not JSON"),
    (lambda saved: with_manifest(saved, b'{"Config": "c.json"}'), "list of images"),
    (lambda saved: with_manifest(saved, b'[{"Config": "c.json"}]'), "`Layers` list"),
    (lambda saved: with_manifest(saved, b'[{"Config": "absent.json", "Layers": []}]'),
     "not a file in the archive"),
    (lambda saved: with_manifest(saved, b'[{"Config": "../etc/passwd", "Layers": []}]'),
     "not a file in the archive"),
    (lambda saved: with_manifest(saved, json.dumps(manifest_of(saved) * 2).encode()),
     "lists 2 images"),
    (lambda saved: with_manifest(saved, b" " * (1024 * 1024 + 1)), "at most"),
    (lambda saved: with_manifest(saved, None), "regular file"),
], ids=["no-manifest", "truncated", "escaping-member", "not-a-tar", "manifest-not-json",
        "manifest-not-text", "manifest-nested-too-deep", "manifest-not-a-list",
        "manifest-without-layers", "manifest-names-a-missing-file",
        "manifest-names-a-file-outside", "manifest-of-two-images", "manifest-too-large",
        "manifest-a-folder"])
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


# --- headers and members are read under bounds ---------------------------------------------------


def extended_header(kind: bytes, size: int) -> bytes:
    """One raw 512-byte tar header announcing an extended header of `size` bytes, and zeros
    behind it: a tiny body that would have a reader hold `size` bytes."""
    info = tarfile.TarInfo("././@LongLink" if kind in (b"L", b"K") else "PaxHeader")
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.USTAR_FORMAT if kind in (b"x", b"g") else tarfile.GNU_FORMAT
                      )[:512] + bytes(64 * 1024)


@pytest.mark.parametrize("kind, size", [
    (tarfile.GNUTYPE_LONGNAME, 1024**3), (tarfile.GNUTYPE_LONGLINK, 1024**3),
    (tarfile.XHDTYPE, 600 * 1024**2), (tarfile.XGLTYPE, 600 * 1024**2),
], ids=["gnu-long-name", "gnu-long-link", "pax", "global-pax"])
def test_an_upload_announcing_a_huge_extended_header_is_refused(api, kind, size):
    image, token = new_upload_image(api)

    error = assert_error(upload(api, image["id"], token, extended_header(kind, size),
                                multipart=False), 422, "422.invalid-input", source="/file.tar")

    assert f"extended header of {size} bytes" in error["detail"]


def test_the_api_reads_an_uploaded_layer_in_blocks_not_whole(tmp_path, saved_image):
    """A layer of 64 MiB passes the check while Python holds a small part of it at most."""
    import tracemalloc

    from app.images.services import check_image_tar

    archive = tmp_path / "big.tar"
    with open(archive, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
        layer = tarfile.TarInfo("big/layer.tar")
        layer.size = 64 * 1024**2
        tar.addfile(layer, _Zeros(layer.size))
        for name, data in (("config.json", b"{}"), ("manifest.json", json.dumps(
                [{"Config": "config.json", "Layers": ["big/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    tracemalloc.start()
    try:
        check_image_tar(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 8 * 1024**2, f"{peak} bytes held at once"


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in whatever blocks the reader asks for."""

    def __init__(self, size: int):
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


# --- the worker, and the files an upload leaves -------------------------------------------------


def upload_folder() -> Path:
    return Path(get_settings().upload_dir)


def files_of(image_id: str) -> list[str]:
    return sorted(p.name for p in upload_folder().glob(f"{image_id}.*"))


def accept_as_an_older_api(api, data: bytes, *, hold: bool = False) -> tuple[dict, str]:
    """An upload accepted without today's check of the tar (as an older API, or storage that
    damaged the file, would leave it): the image and its import job's id. `hold`: the job is
    scheduled a day ahead, so that no worker loads the tar meanwhile."""
    image, token = new_upload_image(api)
    received = upload_folder() / f"{image['id']}.tar.1.1.part"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_bytes(data)
    with transaction() as session:
        job = accept_upload(session, image["id"], api.tenant.hub_id, token, received)
        if hold:
            job.schedule = utcnow() + timedelta(days=1)
    if not hold:
        with transaction() as session:
            assert jobs_services.publish(session, session.get(Job, job.id))
    return image, job.id


def test_a_tar_the_worker_cannot_read_fails_its_import_at_once_and_is_removed(api, worker,
                                                                               saved_image):
    image, job_id = accept_as_an_older_api(api, with_manifest(saved_image, b"{not json"))

    job = api.wait_for_job(job_id)

    assert job["state"]["current"] == "error", job
    message = job["state"]["error"]["message"]
    assert "not JSON" in message and "temporary" not in message, message
    with transaction() as session:
        assert session.get(Job, job_id).attempt == 1  # a fault of the archive is not retried
    assert get_image(api, image["id"])["state"]["error"]["message"] == message
    assert files_of(image["id"]) == []


def test_deleting_an_image_removes_the_upload_no_worker_loaded_yet(api, worker, saved_image):
    image, job_id = accept_as_an_older_api(api, saved_image["tar"], hold=True)
    assert files_of(image["id"]) == [f"{image['id']}.tar"]

    response = api.delete(f"/v1/images/{image['id']}")

    assert response.status_code == 202, response.get_json()
    assert api.wait_for_job(response.get_json()["data"]["job"]["id"])["state"]["current"] == \
        "completed"
    assert files_of(image["id"]) == []
    with transaction() as session:  # and its import, let go (the sweeper publishes it), fails
        session.get(Job, job_id).schedule = utcnow()
    job = api.wait_for_job(job_id)
    assert job["state"]["current"] == "error" and "deleted" in job["state"]["error"]["message"]


def aged(path: Path, seconds: float) -> Path:
    """`path` created (empty) as if last written `seconds` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


TOKEN_TTL, JOB_TTL = get_settings().upload_token_seconds, get_settings().job_ttl_seconds
HOUR = 3600


@pytest.mark.parametrize("whose, name, age, kept", [
    ("waiting", "{id}.tar", 2 * JOB_TTL, True),
    ("orphan", "{id}.tar", 0, False),
    ("orphan", "{id}.tar.10.20.part", 0, True),
    ("orphan", "{id}.tar.10.20.part", TOKEN_TTL + 2 * 60, False),
    ("unknown", "{id}.tar", JOB_TTL - HOUR, True),
    ("unknown", "{id}.tar.10.20.part", JOB_TTL - HOUR, True),
    ("unknown", "{id}.tar", JOB_TTL + 2 * 60, False),
    ("unknown", "{id}.tar.10.20.part", JOB_TTL + 2 * 60, False),
    ("unknown", "{id}.notes", 2 * JOB_TTL, True),
], ids=["queued-import", "no-import", "part-streaming",
        "part-of-a-dead-api", "other-database-young", "other-database-part-young",
        "other-database-old", "other-database-part-old", "not-an-upload"])
def test_the_upload_sweep_removes_only_what_no_import_can_need(api, saved_image, whose, name,
                                                               age, kept):
    if whose == "waiting":
        image_id = accept_as_an_older_api(api, saved_image["tar"], hold=True)[0]["id"]
    elif whose == "orphan":  # known here, no import: its job ended, or its API died
        image_id = new_upload_image(api)[0]["id"]
    else:  # an image of another database sharing the folder
        image_id = new_id()
    path = aged(upload_folder() / name.format(id=image_id), age)

    sweep_uploads()

    assert path.exists() == kept


def test_the_upload_sweep_leaves_the_tar_of_an_upload_being_accepted(api):
    image, _ = new_upload_image(api)
    path = aged(upload_folder() / f"{image['id']}.tar", 0)
    with transaction() as session:  # as the API holds it between renaming the tar and queueing
        session.get(Image, image["id"], with_for_update=True)
        sweep_uploads()
        assert path.exists()
    sweep_uploads()
    assert not path.exists()


def test_the_workers_sweeper_removes_forgotten_uploads(api, worker):
    path = aged(upload_folder() / f"{new_upload_image(api)[0]['id']}.tar", 0)
    deadline = time.monotonic() + 60
    while path.exists():
        assert time.monotonic() < deadline, f"{path.name} is still there"
        time.sleep(0.2)


# --- nothing waits for an upload while it streams ------------------------------------------------


class SlowUpload:
    """A raw-body upload to a real API over its own connection, its body sent when the test says."""

    def __init__(self, base: str, image_id: str, token: str, body: bytes):
        address = urlsplit(base)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        self.connection.putrequest("POST", f"/v1/images/{image_id}/upload?token={token}")
        self.connection.putheader("Content-Type", "application/x-tar")
        self.connection.putheader("Content-Length", str(len(body)))
        self.connection.endheaders()
        self.rest = body

    def send(self, size: int) -> SlowUpload:
        self.connection.send(self.rest[:size])
        self.rest = self.rest[size:]
        return self

    def finish(self) -> tuple[int, dict]:
        """Send what is left; the answer's status and document."""
        self.send(len(self.rest))
        response = self.connection.getresponse()
        document = json.loads(response.read())
        self.connection.close()
        return response.status, document


def wait_for_parts(image_id: str, count: int) -> None:
    """Until `count` uploads of the image stream into the folder at once."""
    deadline = time.monotonic() + 30
    while len([n for n in files_of(image_id) if n.endswith(".part")]) < count:
        assert time.monotonic() < deadline, f"{count} uploads never streamed at once"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def upload_api() -> str:
    from tests.processes import api_server

    with api_server("uploads-streaming-api") as base:
        yield base


def test_an_image_can_be_renamed_while_its_upload_streams(api, saved_image, upload_api):
    image, token = new_upload_image(api)
    upload = SlowUpload(upload_api, image["id"], token, saved_image["tar"]).send(4096)
    wait_for_parts(image["id"], 1)

    renamed = requests.patch(f"{upload_api}/v1/images/{image['id']}", json={"name": "renamed"},
                             headers=api.tenant.headers, timeout=60)

    assert renamed.status_code == 200, renamed.text  # answered before the upload ended
    status, document = upload.finish()
    assert status == 202, document
    assert get_image(api, image["id"])["name"] == "renamed"


def test_an_image_deleted_while_its_upload_streams_refuses_the_upload(api, saved_image,
                                                                     upload_api):
    image, token = new_upload_image(api)
    upload = SlowUpload(upload_api, image["id"], token, saved_image["tar"]).send(4096)
    wait_for_parts(image["id"], 1)

    deleted = requests.delete(f"{upload_api}/v1/images/{image['id']}", headers=api.tenant.headers,
                              timeout=60)

    assert deleted.status_code == 202, deleted.text
    status, document = upload.finish()
    assert status == 403 and document["error"]["code"] == "403.invalid-state", document
    assert files_of(image["id"]) == []


def test_two_uploads_with_one_token_at_once_queue_one_import(api, saved_image, upload_api):
    image, token = new_upload_image(api)
    uploads = [SlowUpload(upload_api, image["id"], token, saved_image["tar"]).send(4096)
               for _ in range(2)]
    wait_for_parts(image["id"], 2)

    answers = [upload.finish() for upload in uploads]

    assert [status for status, _ in answers] == [202, 403], answers
    assert answers[1][1]["error"]["code"] == "403.expired"
    assert "used already" in answers[1][1]["error"]["detail"]
    assert files_of(image["id"]) == [f"{image['id']}.tar"]


def test_an_upload_sent_again_with_its_idempotency_key_gets_the_first_answer(api, saved_image):
    image, token = new_upload_image(api)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    path = f"/v1/images/{image['id']}/upload?token={token}"

    def send(headers, url=path):
        return api.post(url, data=saved_image["tar"], content_type="application/x-tar",
                        headers=headers)

    first = send(key)
    assert first.status_code == 202, first.get_json()
    again = send(key)
    assert (again.status_code, again.get_json()) == (202, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(send({}), 403, "403.expired")  # without the key: the token was spent
    # Another request with the key is answered as without it: the token was spent.
    other = send(key, f"{path}&hub-id={api.tenant.hub_id}")
    assert_error(other, 403, "403.expired")


def test_an_upload_naming_another_hub_learns_nothing_of_that_hub_s_keys(
        api, client, other_tenant, saved_image):
    """The upload's hub is only claimed (its token proves it): a hostile upload that names
    another hub and one of its keys gets neither that hub's answer nor word that the key
    exists, only what it would get without a key."""
    image, token = new_upload_image(api)
    key = str(uuid.uuid4())
    first = api.post(f"/v1/images/{image['id']}/upload?token={token}", data=saved_image["tar"],
                     content_type="application/x-tar", headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.get_json()

    hostile = Api(client, other_tenant)
    own, own_token = new_upload_image(hostile)
    for path in (f"/v1/images/{own['id']}/upload?token={own_token}",  # its own image
                 f"/v1/images/{image['id']}/upload?token=not-the-token"):  # the victim's
        answer = client.post(path, data=saved_image["tar"], content_type="application/x-tar",
                             headers={"Idempotency-Key": key, "X-Hub-Id": api.tenant.hub_id})
        assert "Idempotent-Replayed" not in answer.headers
        assert answer.get_json() != first.get_json()
        assert (answer.get_json().get("error") or {}).get("code") != "422.already-exists"
