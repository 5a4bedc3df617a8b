"""Cancelling a running import end to end: a real worker stops a build and a pull on the real
engine within seconds of POST /v1/jobs/{id}/tasks {"action": "cancel"}, and leaves nothing of them
behind; the job ends in error naming the key, the image back as a failed import leaves it."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from app.images.models import engine_tag
from tests.api_calls import (
    assert_failed,
    get_image,
    image_from,
    import_image,
    registry_origin,
)
from tests.image_builds import dockerfile_context
from tests.servers import FileServer, ThrottledRegistry
from tests.services import BASE_IMAGE, REGISTRY
from workers import cancellation
from workers.engine import Engine
from workers.faults import JobFailed

# Generous: the worker looks about once a second, but these machines are shared.
STOPS_WITHIN_SECONDS = 20


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def cancel(api, job_id: str) -> float:
    """Cancel the job; returns when the request was answered."""
    response = api.post(f"/v1/jobs/{job_id}/tasks", json={"action": "cancel"})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["data"]["job"]["id"] == job_id
    return time.monotonic()


def ended(api, job_id: str, since: float) -> dict:
    """The job once it ended, which must be soon after `since`."""
    while True:
        job = api.get(f"/v1/jobs/{job_id}").get_json()["data"]
        if job["state"]["current"] not in ("queued", "running"):
            return job
        assert time.monotonic() - since < STOPS_WITHIN_SECONDS, (
            f"the job is still {job['state']['current']} {STOPS_WITHIN_SECONDS} s after the cancel")
        time.sleep(0.2)


def engine_names(docker_client, image_id: str) -> list[str]:
    """Every name the engine holds under the image's repository (its tag, an attempt's)."""
    repository, _ = engine_tag(image_id)
    return [tag for image in docker_client.images.list(name=repository) for tag in image.tags]


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


def sleeping_build(marker: str) -> bytes:
    return dockerfile_context(f"FROM {BASE_IMAGE}\nRUN echo {marker}-started && sleep 60\n")


def cancel_the_sleeping_step(api, docker_client, image_id: str, marker: str) -> dict:
    """Import the image, whose build sleeps, and cancel it once the step sleeps; returns the
    ended job, once the step's container is gone from the engine too."""
    job_id = import_image(api, image_id)["job"]["id"]

    wait_until(lambda: f"\n{marker}-started\n" in build_log(api, image_id),
               "the sleeping step to start")
    asked = cancel(api, job_id)
    job = ended(api, job_id, asked)

    assert job["state"]["error"]["message"] == (
        f"Cancelled by API key {api.tenant.key_id} while it was running.")
    log = build_log(api, image_id)
    assert log.rstrip("\n").rsplit("\n", 1)[-1] == (
        "ERROR: The build was stopped: the job was cancelled."), log[-500:]

    def build_containers() -> list[str]:
        # One list call: listing with the high-level client inspects each container after, and
        # one the engine removes in between fails that inspect.
        return [c["Id"] for c in docker_client.api.containers(all=True)
                if marker in c.get("Command", "")]

    # The engine kills and removes the step's container once the build's client went away.
    wait_until(lambda: not build_containers(), "the build's container to go", timeout=30)
    return job


def build_log(api, image_id: str) -> str:
    response = api.get(f"/v1/images/{image_id}/build-log")
    return response.get_json()["data"]["log"] if response.status_code == 200 else ""


def test_cancelling_a_build_stops_its_running_step(api, worker, docker_client, files):
    marker = uuid.uuid4().hex
    url = files.add(f"/{marker}.tar.gz", sleeping_build(marker))
    image = image_from(api, {"type": "docker-file", "details": {"targz_url": url}})

    job = cancel_the_sleeping_step(api, docker_client, image["id"], marker)

    assert_failed(job, get_image(api, image["id"]), job["state"]["error"]["message"])
    assert engine_names(docker_client, image["id"]) == []  # no `:attempt-1` left


def test_a_cancelled_import_of_a_live_image_leaves_it_live_as_it_was(api, worker, docker_client,
                                                                     files):
    marker = uuid.uuid4().hex
    url = files.add(f"/{marker}.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo {marker} > /built.txt\n"))
    image = image_from(api, {"type": "docker-file", "details": {"targz_url": url}})
    assert api.wait_for_job(import_image(api, image["id"])["job"]["id"])["state"]["current"] == (
        "completed")
    live = get_image(api, image["id"])
    files.add(f"/{marker}.tar.gz", sleeping_build(marker))  # its next build sleeps

    job = cancel_the_sleeping_step(api, docker_client, image["id"], marker)

    rested = get_image(api, image["id"])
    assert rested["state"]["current"] == "live"
    assert rested["state"]["error"]["message"] == job["state"]["error"]["message"]
    assert rested["backend"] == live["backend"]
    assert engine_names(docker_client, image["id"]) == [":".join(engine_tag(image["id"]))]
    docker_client.images.remove(":".join(engine_tag(image["id"])))


@pytest.fixture(scope="module")
def large_image(docker_client) -> str:
    """A reference in the open registry to an image with a layer of its own (2 MB that do not
    compress), which the engine does not hold: pulling it downloads that layer."""
    tag = uuid.uuid4().hex[:12]
    reference = f"{REGISTRY}/tests/cancel-pull:{tag}"
    context = io.BytesIO(dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN head -c 2000000 /dev/urandom > /noise-{tag}\n", compress=False))
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, tag=reference,
                                          rm=True)
    repository, _, version = reference.rpartition(":")
    for event in docker_client.api.push(repository, version, stream=True, decode=True):
        assert "error" not in event, event
    docker_client.images.remove(reference)
    return reference


def test_cancelling_a_pull_stops_it_in_the_engine(api, worker, docker_client, large_image):
    registry = ThrottledRegistry(REGISTRY)
    host = f"127.0.0.1:{registry.httpd.server_port}"
    try:
        target = large_image.partition("/")[2]
        image = image_from(api, registry_origin(target, host))
        job_id = import_image(api, image["id"])["job"]["id"]
        wait_until(lambda: registry.blobs_started, "the pull to download a layer")
        asked = cancel(api, job_id)
        job = ended(api, job_id, asked)

        message = f"Cancelled by API key {api.tenant.key_id} while it was running."
        assert_failed(job, get_image(api, image["id"]), message)
        assert job["state"]["error"]["message"] == message
        # The engine gave the download up: the paced layer (over a minute long) was cut off.
        wait_until(lambda: registry.blobs_cut, "the engine to give the download up", timeout=15)
        assert not docker_client.images.list(name=f"{host}/{target}")
        assert engine_names(docker_client, image["id"]) == []
    finally:
        registry.close()


def test_an_engine_client_whose_pull_a_cancel_cut_pulls_again(large_image, pushed_image):
    """Pulls share their process's engine client: the connection a cancel cut must not break
    the next pull made with it."""
    registry = ThrottledRegistry(REGISTRY)
    host = f"127.0.0.1:{registry.httpd.server_port}"
    token = cancellation.CancelToken()
    failures: list[BaseException] = []
    engine = Engine()
    shared = engine.client

    def pull() -> None:
        with cancellation.running(token):
            try:
                engine.pull(f"{host}/{large_image.partition('/')[2]}", None)
            except JobFailed as exc:
                failures.append(exc)

    try:
        puller = threading.Thread(target=pull)
        puller.start()
        wait_until(lambda: registry.blobs_started, "the pull to download a layer")
        token.cancel("cancelled by the test")
        puller.join(timeout=STOPS_WITHIN_SECONDS)
        assert not puller.is_alive()
        assert [f.message for f in failures] == ["The pull was stopped: the job was cancelled."]
    finally:
        registry.close()

    assert engine.client is shared  # the cut pull used the process's client, not one of its own
    with Engine() as again:
        assert again.client is shared
        assert again.pull(pushed_image.public, None).image_id == pushed_image.image_id
