"""An upload of hub B cannot move hub A's engine tag, whatever the tar it sends says.

Hub A holds a live uploaded image. Hub B uploads its own `docker save` tar rewritten as an
attacker would: its manifest naming A's engine tag under another spelling of the member's name
or of the key, through a link, twice, or in the other files an engine reads tags from. After each
try A's engine tag still holds A's image, and B's upload was either refused at the API or loaded
as B's image under B's own tag.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import docker.errors
import pytest

from tests.api_calls import Api, assert_error, get_image, make_tenant
from tests.image_builds import dockerfile_context
from tests.test_uploads import new_upload_image, upload


@dataclass(frozen=True)
class Saved:
    image_id: str
    tar: bytes


def saved(docker_client, marker: str) -> Saved:
    """An image built here, as `docker save` writes it, then removed from the engine."""
    tag = f"imagejobs-tests/isolation-{marker}:{uuid.uuid4().hex[:8]}"
    context = dockerfile_context(f"FROM imagejobs/busybox:latest\nLABEL hub={marker}\n"
                                 f"RUN echo {tag} > /made-for\n", compress=False)
    image, _ = docker_client.images.build(fileobj=io.BytesIO(context), custom_context=True,
                                          tag=tag)
    data = b"".join(image.save(named=True))
    docker_client.images.remove(tag)
    return Saved(image.id, data)


@dataclass(frozen=True)
class Victim:
    """Hub A's live uploaded image: its engine tag and the engine id it must keep holding."""

    api: Api
    image_id: str
    file_name: str
    file_id: str


@pytest.fixture(scope="module")
def victim(app, worker, docker_client) -> Victim:
    api = Api(app.test_client(), make_tenant())
    image, token = new_upload_image(api)
    response = upload(api, image["id"], token, saved(docker_client, "a").tar)
    assert response.status_code == 202, response.get_json()
    assert api.wait_for_job(response.get_json()["data"]["job"]["id"])["state"]["current"] == \
        "completed"
    live = get_image(api, image["id"])
    yield Victim(api, image["id"], live["backend"]["file_name"], live["backend"]["file_id"])
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(live["backend"]["file_name"])


@pytest.fixture(scope="module")
def attacker_content(docker_client) -> Saved:
    return saved(docker_client, "b")


# --- rewriting a tar as the attacker does --------------------------------------------------------


Member = tuple[tarfile.TarInfo, bytes | None]


def members_of(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def file(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def tar_of(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def rewritten(content: bytes, tag: str, how: Callable[[list[Member], list[dict], str],
                                                      list[Member]]) -> bytes:
    members = members_of(content)
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    others = [(m, d) for m, d in members if m.name not in ("manifest.json", "repositories")]
    return tar_of(how(others, manifest, tag))


def tagged(manifest: list[dict], tag: str) -> bytes:
    return json.dumps([{**entry, "RepoTags": [tag]} for entry in manifest]).encode()


def untagged(manifest: list[dict]) -> bytes:
    return json.dumps([{k: v for k, v in e.items() if k != "RepoTags"} for e in manifest]).encode()


def index_naming(tag: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "0" * 64, "size": 2,
        "annotations": {"io.containerd.image.name": tag,
                        "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}}]}).encode()


ACCEPTED = {
    "dot-slash-dot-slash-name": lambda o, m, t: [*o, file("././manifest.json", tagged(m, t))],
    "double-slash-name": lambda o, m, t: [*o, file(".//manifest.json", tagged(m, t))],
    # The engine's JSON decoder matches keys without regard to case; the last one wins.
    "repotags-respelled": lambda o, m, t: [*o, file("manifest.json", json.dumps(
        [{"RepoTags": [], **{k: v for k, v in e.items() if k != "RepoTags"}, "repotags": [t]}
         for e in m]).encode())],
    "repositories-file": lambda o, m, t: [*o, file("manifest.json", untagged(m)), file(
        "repositories", json.dumps({t.rpartition(":")[0]: {"latest": "0" * 64}}).encode())],
    "oci-index": lambda o, m, t: [*o, file("manifest.json", untagged(m)),
                                  file("index.json", index_naming(t)),
                                  file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')],
}

REFUSED = {
    "two-manifests": (lambda o, m, t: [*o, file("manifest.json", untagged(m)),
                                       file("././manifest.json", tagged(m, t))], "twice"),
    "manifest-symlink": (lambda o, m, t: [*o, file("tags.json", tagged(m, t)),
                                          link("manifest.json", "tags.json")], "regular file"),
    "manifest-hard-link": (lambda o, m, t: [*o, file("tags.json", tagged(m, t)),
                                            link("manifest.json", "tags.json", tarfile.LNKTYPE)],
                           "regular file"),
    # Written through the link `d`, `d/manifest.json` would replace the manifest checked.
    "manifest-through-a-folder-link": (lambda o, m, t: [
        *o, file("manifest.json", untagged(m)), link("d", "."),
        file("d/manifest.json", tagged(m, t))], "under the link"),
    "index-through-a-folder-link": (lambda o, m, t: [
        *o, file("manifest.json", untagged(m)), link("d", "."),
        file("d/index.json", index_naming(t))], "under the link"),
}


def attack(api, victim: Victim, content: Saved, how) -> tuple[dict, object]:
    """A new upload image of hub B, and the answer to uploading `content` rewritten by `how`."""
    image, token = new_upload_image(api)
    return image, upload(api, image["id"], token, rewritten(content.tar, victim.file_name, how))


def assert_victim_intact(victim: Victim, docker_client) -> None:
    assert docker_client.images.get(victim.file_name).id == victim.file_id
    assert get_image(victim.api, victim.image_id)["backend"]["file_id"] == victim.file_id


@pytest.mark.parametrize("how", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_tag_named_in_an_upload_is_dropped_and_the_upload_loads_as_its_own_image(
        api, worker, docker_client, victim, attacker_content, how):
    image, response = attack(api, victim, attacker_content, how)

    assert response.status_code == 202, response.get_json()
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])
    assert job["state"]["current"] == "completed", job
    live = get_image(api, image["id"])
    try:
        assert live["backend"]["file_id"] == attacker_content.image_id
        assert docker_client.images.get(live["backend"]["file_name"]).id == \
            attacker_content.image_id
        assert_victim_intact(victim, docker_client)
    finally:
        docker_client.images.remove(live["backend"]["file_name"])


@pytest.mark.parametrize("how, words", REFUSED.values(), ids=REFUSED.keys())
def test_an_upload_whose_tar_the_engine_would_read_otherwise_is_refused(
        api, docker_client, victim, attacker_content, how, words):
    image, response = attack(api, victim, attacker_content, how)

    error = assert_error(response, 422, "422.invalid-input", source="/file.tar")
    assert words in error["detail"], error
    assert get_image(api, image["id"])["state"]["current"] == "new"
    assert_victim_intact(victim, docker_client)
