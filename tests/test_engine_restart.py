"""The Docker engine restarting under a worker: its import is retried and completes once the
engine is back, and the job says what happened meanwhile.

Engine B of deploy/local-services.sh is stopped for real (SIGTERM to its dockerd) and started
again by the same script. Its own API and worker, on a database and a Redis database of their
own, so that only this worker, the one on engine B, takes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.api_calls import registry_origin, repository_path
from tests.processes import ApiClient, api_server, imagejobs, own_database
from tests.services import ROOT, TEST_DATABASE

ENGINE_B = "unix:///var/run/imagejobs/docker-b.sock"
ENGINE_B_PIDFILE = Path("/var/run/imagejobs/docker-b.pid")
ENV = {"REDIS_URL": "redis://127.0.0.1:6379/4", "DOCKER_HOST": ENGINE_B,
       "IMAGEJOBS_NODE_ID": "node-b", "IMAGEJOBS_RETRY_SECONDS": "2",
       "IMAGEJOBS_MAX_ATTEMPTS": "5"}

pytestmark = pytest.mark.docker


def running(pid: int) -> bool:
    """A live process, not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def stop_engine_b() -> None:
    pid = int(ENGINE_B_PIDFILE.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while running(pid):
        assert time.monotonic() < deadline, f"dockerd {pid} did not stop within 60 s"
        time.sleep(0.2)


def start_engine_b() -> None:
    result = subprocess.run(["bash", "deploy/local-services.sh"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def stack(docker_client) -> Iterator[ApiClient]:
    import redis

    redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
    env, headers = own_database(f"{TEST_DATABASE}_engine_restart", {**os.environ, **ENV})
    with api_server("engine-restart-api", env=env) as base, \
            imagejobs("engine-restart-worker", "worker", "--concurrency", "1",
                      env=env) as (worker, log):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield ApiClient(base, headers)


def test_an_import_waits_out_an_engine_restart_and_completes(stack, pushed_image):
    source = stack.call("POST", "/v1/images/sources", json={
        "type": "direct", "origin": registry_origin(repository_path(pushed_image.public))})
    image = stack.call("POST", "/v1/images", json={"source_id": source["id"]})

    stop_engine_b()
    try:
        job_id = stack.call("POST", f"/v1/images/{image['id']}/tasks",
                            json={"action": "import"})["job"]["id"]
        waiting = stack.wait_for(
            lambda: (job := stack.job(job_id))["state"]["error"] and job, "a failed attempt")
        resting = stack.call("GET", f"/v1/images/{image['id']}")
    finally:
        start_engine_b()
    job = stack.wait_for(lambda: (job := stack.job(job_id))["state"]["current"] not in (
        "queued", "running") and job, "the job to end")

    message = waiting["state"]["error"]["message"]
    assert waiting["state"]["current"] == "queued", waiting["state"]
    assert f"The Docker engine at {ENGINE_B} is not reachable" in message
    assert "a temporary fault: attempt 1 of 5; trying again in 2 s" in message
    assert resting["state"]["current"] == "new"  # at rest while the engine is away
    assert resting["state"]["error"]["message"] == message
    assert job["state"]["current"] == "completed", job["state"]
    assert job["state"]["error"] is None
    image = stack.call("GET", f"/v1/images/{image['id']}")
    assert image["state"]["current"] == "live"
    assert "error" not in image["state"]  # the retried fault is behind it
    engine_b = docker.DockerClient(base_url=ENGINE_B, version="auto")
    try:
        held = engine_b.images.get(image["backend"]["file_name"])
        assert held.id == image["backend"]["file_id"] == pushed_image.image_id
        assert image["factory"]["node_id"] == "node-b"
        engine_b.images.remove(image["backend"]["file_name"], noprune=True)
    finally:
        engine_b.close()
