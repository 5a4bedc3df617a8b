"""Work on an image goes to the node that holds it: two workers, two engines, two node ids.

This runs its own API and workers on a Redis database of their own, so that which worker may
take which queue is entirely the test's choice.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import docker
import docker.errors
import pytest
import requests

from tests.api_calls import make_tenant, registry_origin, repository_path
from tests.processes import api_server, imagejobs

ENGINE_B = "unix:///var/run/imagejobs/docker-b.sock"
NODES = {"node-a": os.environ["DOCKER_HOST"], "node-b": ENGINE_B}
REDIS = "redis://127.0.0.1:6379/7"


def stack_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": REDIS, **extra}


@contextmanager
def worker(node: str, queues: str):
    env = stack_env(IMAGEJOBS_NODE_ID=node, DOCKER_HOST=NODES[node])
    with imagejobs(f"nodes-{node}", "worker", "--queues", queues, "--concurrency", "1",
                   env=env) as (child, log):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield


@pytest.fixture
def stack(docker_client, pushed_image):
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    with api_server("nodes-api", env=stack_env()) as base:
        tenant = make_tenant()
        session = requests.Session()
        session.headers.update(tenant.headers)
        yield base, session


def call(session, method: str, url: str, status: int, **kwargs) -> dict:
    response = session.request(method, url, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    return response.json()["data"]


def wait(session, base: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := call(session, "GET", f"{base}/v1/jobs/{job_id}", 200))["state"]["current"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def engine_holds(node: str, reference: str) -> bool:
    client = docker.DockerClient(base_url=NODES[node], version="auto")
    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def test_deletes_go_to_the_node_that_holds_the_image(stack, pushed_image):
    base, session = stack
    source = call(session, "POST", f"{base}/v1/images/sources", 201, json={
        "type": "direct", "origin": registry_origin(repository_path(pushed_image.public))})

    def imported() -> dict:
        image = call(session, "POST", f"{base}/v1/images", 201, json={"source_id": source["id"]})
        job = call(session, "POST", f"{base}/v1/images/{image['id']}/tasks", 202,
                   json={"action": "import"})
        assert wait(session, base, job["job"]["id"])["state"]["current"] == "completed"
        return call(session, "GET", f"{base}/v1/images/{image['id']}", 200)

    with worker("node-b", "imagejobs-pull,imagejobs-node-node-b"):
        on_b = imported()
    with worker("node-a", "imagejobs-pull,imagejobs-node-node-a"):
        on_a = imported()
        assert (on_a["factory"]["node_id"], on_b["factory"]["node_id"]) == ("node-a", "node-b")
        assert engine_holds("node-a", on_a["backend"]["file_name"])
        assert not engine_holds("node-a", on_b["backend"]["file_name"])
        assert engine_holds("node-b", on_b["backend"]["file_name"])

        delete_b = call(session, "DELETE", f"{base}/v1/images/{on_b['id']}", 202)
        assert delete_b["job"]["queue"] == "imagejobs-node-node-b"
        delete_a = call(session, "DELETE", f"{base}/v1/images/{on_a['id']}", 202)
        assert wait(session, base, delete_a["job"]["id"])["state"]["current"] == "completed"
        time.sleep(2)  # node A's worker is idle, yet node B's delete waits for node B
        waiting = call(session, "GET", f"{base}/v1/jobs/{delete_b['job']['id']}", 200)
        assert waiting["state"]["current"] == "queued"
        assert not engine_holds("node-a", on_a["backend"]["file_name"])

    with worker("node-b", "imagejobs-node-node-b"):
        done = wait(session, base, delete_b["job"]["id"])
    assert done["state"]["current"] == "completed", done
    assert not engine_holds("node-b", on_b["backend"]["file_name"])
    assert call(session, "GET", f"{base}/v1/images/{on_b['id']}", 200)["state"]["current"] == \
        "deleted"
